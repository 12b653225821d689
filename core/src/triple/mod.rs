//! The triple-buffer strategy (DESIGN §6): whole-state handoff between one client and one host.
//!
//! The region holds `N >= 3` equal, page-aligned buffers, each with a **state word**:
//!
//! ```text
//!   FREE ──take──▶ WRITING(client epoch) ──publish──▶ READY(seq) ──freeze──▶ FROZEN(host epoch)
//!    ▲                                                  │   ▲                        │
//!    └────────────── take (a stale READY) ◀─────────────┘   └──────── release ───────┘
//! ```
//!
//! - The **client** ([`TripleClient`]) takes a FREE buffer, or a READY one older than its newest
//!   publication, fills it through a [`WriteGrant`] and publishes it `READY(seq)`. It never
//!   touches its newest buffer, nor a buffer whose state word it read as FROZEN, so its newest
//!   state stays intact in the region.
//! - The **host** ([`TripleHost`]) freezes the newest READY buffer (compare-exchange from the
//!   READY value it read to `FROZEN(its epoch)`), copies it, and releases it back to the READY
//!   value it had (compare-exchange from the FROZEN value it wrote), so the newest state is
//!   never lost from the live region. A host never copies a buffer it did not freeze, and uses
//!   a copy only if its release succeeded (below).
//! - **Crashes**: a new client bumps the client epoch and frees every WRITING buffer (only one
//!   client runs at a time, so they are all a dead client's); a new host bumps the host epoch
//!   and returns every FROZEN buffer of another epoch to `READY(seq)` (its seq word), so a dead
//!   host's freeze — also one inherited with the region from the systemd fd store — is undone.
//!
//! Who writes what (the whole soundness argument rests on it): the client stores into FREE,
//! WRITING and stale READY state words (the host never writes FREE or WRITING); the host only
//! compare-exchanges READY and FROZEN words and stores its epoch word. The client writes
//! buffers; the host only reads them.
//!
//! **No locked instruction on the client's common path.** A take is a load and a store (one
//! pass of loads if the first candidate is not free), a publication three stores; nothing
//! waits and nothing retries on the host's account.
//!
//! **The reclaim race, and why a copy is validated.** The client takes a stale READY buffer
//! with a plain store, not a compare-exchange. A host may freeze that buffer between the
//! client's load of `READY(s)` and its store of WRITING (a host whose scan did not yet see the
//! newest publication picks a stale buffer); the store then overwrites the host's FROZEN and
//! the client writes a buffer the host is copying. The host detects it, seqlock-style: the
//! client's WRITING store is followed by a `Release` fence before any write into the buffer;
//! the host issues an `Acquire` fence after its copy and then compare-exchanges its FROZEN
//! back to READY. If the copy read any word the client wrote after the take, the two fences
//! synchronize, the WRITING store happens before the compare-exchange, and the
//! compare-exchange fails ([`TripleError::Reclaimed`]): the copy is dropped. If it succeeds,
//! the copy read only the state published as `s` — whole. The race needs the freeze to land
//! in the few instructions between the client's load and store, so it is rare, and the host
//! just tries again at its next snapshot; the client never notices. (Before, the take
//! compare-exchanged the stale READY and publication was a `SeqCst` store: two locked
//! instructions per publication to keep the host from a race it can detect — measured at
//! 0.5–2 ns of a 17–19 ns 64-byte publication on an AMD EPYC, benches/README.md.) An older
//! host, which treats a lost release as a protocol violation, also drops the copy — it only
//! reports the race as a fault.
//!
//! **Wait-freedom of the client.** [`TripleClient::take`] tries the buffer after its newest,
//! then makes one pass of `Acquire` loads over the other candidates (the `N - 1` buffers
//! other than the newest), taking the first FREE or stale READY one with a store. A load may
//! read a value the host already replaced (C11 lets an `Acquire` load read an older value: a
//! freeze the host released since, say), so a pass that finds nothing is not final: the
//! **fallback** issues a `SeqCst` fence and makes at most two passes ([`TAKE_PASSES`]) of
//! compare-exchanges, which read the newest value of each word — the take of the first
//! design. At most `N + 2 (N - 1)` loads and compare-exchanges, never an unbounded retry.
//! The fallback's bound: its fence orders the client's last publication before every host
//! scan that follows it in the single total order (the host's scans and compare-exchanges are
//! `SeqCst`), and such a scan freezes that publication, not a candidate; a host runs one
//! snapshot at a time, so during the fallback at most **one** freeze per host incarnation —
//! by a scan before the fence — can hit a candidate, and at most one buffer is FROZEN at any
//! time (a new host undoes stale freezes before it freezes). Of the `N - 1 >= 2` candidates
//! at least one is FREE or a stale READY no freeze can reach any more: the first fallback pass
//! finds a buffer, unless the host restarts during it (a dead host's freeze seen before the
//! new host undid it, then the new host's — found by the loom crash model); the second pass
//! then finds one unless the host restarts again. `take` never waits: it returns
//! [`TripleError::NoFreeBuffer`] instead, which needs two host restarts within one `take`.
//! (The loom twin without the fallback fails: with two snapshots the pass of loads can see
//! both candidates FROZEN.)
//!
//! **What a host scan sees.** The client's READY store is a `Release`, the host's scan loads
//! are `SeqCst` (so `Acquire`): a scan that reads `READY(s)` sees the buffer, its seq word and
//! the `NEXT_SEQ` hint stored before it. A scan may miss the newest publication (with no
//! `SeqCst` store on the client, C11 lets the load read an older value; and a pass over N
//! words is not one moment); the host then copies an older, whole state — or loses the
//! reclaim race — and tries again at its next snapshot. A host that must see a given
//! publication (durability feedback) learns of it through the request word, whose `Release`
//! store the client makes after publishing and the host loads with `Acquire` before it scans:
//! that scan reads `READY(s)` or a later value of that buffer's word. Because one pass is not
//! one moment, [`TripleHost::survey`] repeats the pass until two agree before it judges the
//! client's seqs to have gone backwards ([`Survey::settled`]).
//!
//! [`WriteGrant::publish`] is three stores (seq word, the `Release` READY store, the hint).
//!
//! Every word the host reads is hostile input: an unknown state value is never frozen, every
//! index comes from a [`TripleLayout`] validated once at attach, and every loop is bounded by
//! `N <= MAX_BUFFERS`.
//!
//! `docs/FORMAT.md` ("Triple-buffer layout") is the normative description of the layout.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::Ordering;

use crate::claim::{ClaimError, ClaimId};
use crate::format::{word, Strategy, FORMAT_VERSION, MAGIC, PAGE_SIZE};
use crate::layout::{header_checksum, LayoutError};
use crate::memory::WordMemory;

mod client;
mod host;

pub use client::{TripleClient, WriteGrant, TAKE_PASSES};
pub use host::{
    read_image, Frozen, Judgement, PersistedSeq, Refused, Survey, TripleHost, TripleImage,
    FREEZE_ATTEMPTS,
};

/// Largest sequence number (exclusive) a triple region hands out: seqs are `1..MAX_SEQ` and fit
/// the 62 value bits of a READY word.
pub const MAX_SEQ: u64 = VALUE_MASK;
/// Largest buffer count (the state page holds one 64-byte line per buffer).
pub const MAX_BUFFERS: u64 = PAGE_SIZE / STATE_STRIDE;
/// Largest buffer size in bytes.
pub const MAX_BUFFER_SIZE: u64 = 1 << 40;
/// Bytes between the state lines of two buffers (one cache line each: the client and the host
/// work on different buffers' lines).
pub const STATE_STRIDE: u64 = 64;

const TAG_SHIFT: u32 = 62;
const VALUE_MASK: u64 = (1 << TAG_SHIFT) - 1;
const TAG_WRITING: u64 = 1 << TAG_SHIFT;
const TAG_READY: u64 = 2 << TAG_SHIFT;
const TAG_FROZEN: u64 = 3 << TAG_SHIFT;

/// Word indices of the triple header fields and hints (page 0). Words 0..=2, 10 and 11 are
/// shared with every strategy (see [`Layout`](crate::Layout) and `docs/FORMAT.md`).
pub mod words {
    /// Buffer count N (`3..=MAX_BUFFERS`).
    pub const BUFFERS: usize = 3;
    /// Buffer size B (a non-zero multiple of the page size).
    pub const BUFFER_SIZE: usize = 4;
    /// Byte offset of the state page (one page; `PAGE_SIZE`).
    pub const STATE_OFFSET: usize = 5;
    /// Byte offset of buffer 0 (`2 * PAGE_SIZE`); buffer `i` starts `i * B` later.
    pub const BUFFER_OFFSET: usize = 6;
    /// Reserved, 0.
    pub const RESERVED_7: usize = 7;
    /// Reserved, 0.
    pub const RESERVED_8: usize = 8;
    /// Region length: `BUFFER_OFFSET + N * B`.
    pub const REGION_LEN: usize = 9;
    /// Hint: at least the next seq the client will publish (never decreases; the client stores
    /// it after each publication, a snapshot image carries the host's bound).
    pub const NEXT_SEQ: usize = 16;
    /// The client epoch: bumped by each client at attach; its WRITING words carry it.
    pub const CLIENT_EPOCH: usize = 17;
    /// The host epoch: bumped by each host at attach; its FROZEN words carry it.
    pub const HOST_EPOCH: usize = 18;
    /// Offset of a buffer's state word within its 8-word state line.
    pub const LINE_STATE: usize = 0;
    /// Offset of a buffer's seq word within its state line: the seq last published into the
    /// buffer, stored by the client before the READY store (read for FROZEN buffers).
    pub const LINE_SEQ: usize = 1;
}

/// The decoded value of a buffer's state word.
///
/// Encoding (64-bit, little-endian in the region): the top two bits are the tag, the low 62
/// bits the value. `FREE = 0`; `WRITING(e) = 1 << 62 | e`; `READY(s) = 2 << 62 | s` with
/// `1 <= s < MAX_SEQ`; `FROZEN(e) = 3 << 62 | e`. Everything else (tag 0 with a non-zero value,
/// READY with seq 0 or `MAX_SEQ`) is [`BufferState::Invalid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferState {
    /// Nobody uses the buffer; the client may take it.
    Free,
    /// The client with this epoch is writing the buffer.
    Writing {
        /// The writing client's epoch (62 bits).
        epoch: u64,
    },
    /// A complete state, published with this seq.
    Ready {
        /// The publication's seq.
        seq: u64,
    },
    /// The host with this epoch is copying the buffer; its seq is in the buffer's seq word.
    Frozen {
        /// The freezing host's epoch (62 bits).
        epoch: u64,
    },
    /// Not a value the protocol writes.
    Invalid(u64),
}

impl BufferState {
    /// Decodes a state word (never fails: unknown values are [`BufferState::Invalid`]).
    pub const fn decode(v: u64) -> BufferState {
        let value = v & VALUE_MASK;
        match v >> TAG_SHIFT {
            0 if value == 0 => BufferState::Free,
            1 => BufferState::Writing { epoch: value },
            2 if value != 0 && value < MAX_SEQ => BufferState::Ready { seq: value },
            3 => BufferState::Frozen { epoch: value },
            _ => BufferState::Invalid(v),
        }
    }

    /// Encodes a state; `None` for values that do not fit (an epoch or seq of 62 bits or more,
    /// READY with seq 0) and for `Invalid`.
    pub const fn encode(self) -> Option<u64> {
        match self {
            BufferState::Free => Some(0),
            BufferState::Writing { epoch } if epoch <= VALUE_MASK => Some(TAG_WRITING | epoch),
            BufferState::Ready { seq } if seq != 0 && seq < MAX_SEQ => Some(TAG_READY | seq),
            BufferState::Frozen { epoch } if epoch <= VALUE_MASK => Some(TAG_FROZEN | epoch),
            _ => None,
        }
    }
}

/// The state word of `READY(seq)` (`1 <= seq < MAX_SEQ`, checked by callers).
#[inline]
pub(crate) const fn ready(seq: u64) -> u64 {
    TAG_READY | (seq & VALUE_MASK)
}

/// The state word of `WRITING(epoch)`.
#[inline]
pub(crate) const fn writing(epoch: u64) -> u64 {
    TAG_WRITING | (epoch & VALUE_MASK)
}

/// The state word of `FROZEN(epoch)`.
#[inline]
pub(crate) const fn frozen(epoch: u64) -> u64 {
    TAG_FROZEN | (epoch & VALUE_MASK)
}

/// The epoch after `old` (62 bits, never 0, so a zeroed region's epoch words never match).
#[inline]
pub(crate) const fn next_epoch(old: u64) -> u64 {
    let e = old.wrapping_add(1) & VALUE_MASK;
    if e == 0 {
        1
    } else {
        e
    }
}

/// What a client asks for when it configures a fresh triple region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripleRequest {
    /// Buffer count N: `3..=MAX_BUFFERS`.
    pub buffers: u64,
    /// Buffer size B in bytes: a non-zero multiple of `PAGE_SIZE`, at most `MAX_BUFFER_SIZE`.
    pub buffer_size: u64,
}

/// A validated triple-buffer layout: every index derived from it lies inside the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripleLayout {
    /// Buffer count N (`3..=MAX_BUFFERS`).
    pub buffers: u64,
    /// Buffer size B (a non-zero multiple of `PAGE_SIZE`, `<= MAX_BUFFER_SIZE`).
    pub buffer_size: u64,
    /// Byte offset of the state page (`PAGE_SIZE`).
    pub state_offset: u64,
    /// Byte offset of buffer 0 (`2 * PAGE_SIZE`).
    pub buffer_offset: u64,
    /// Region length: `buffer_offset + N * B`.
    pub region_len: u64,
}

/// Why a triple-buffer operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TripleError {
    /// The header is missing, invalid, or not a triple-buffer header.
    Layout(LayoutError),
    /// `init` was asked to configure a region that already has a header.
    AlreadyConfigured,
    /// The region is configured with another layout than the one requested.
    Mismatch {
        /// The layout found in the region.
        found: TripleLayout,
        /// The layout requested.
        requested: TripleLayout,
    },
    /// Sequence numbers are exhausted; the region must be re-initialised.
    Exhausted,
    /// No buffer is FREE or a stale READY: the protocol guarantees one to a single client
    /// working with a single host, so another client or host is writing state words.
    NoFreeBuffer,
    /// A read or write does not fit in the buffer.
    OutOfBounds {
        /// Offset within the buffer.
        offset: usize,
        /// Bytes to read or write.
        len: usize,
        /// The buffer size B.
        buffer_size: u64,
    },
    /// The host's freeze lost its compare-exchange this many times in a row (the client kept
    /// publishing and reclaiming); try again at the next snapshot.
    Contended {
        /// Attempts made.
        attempts: u32,
    },
    /// The host's release found that the client took the frozen buffer back (its state word
    /// is WRITING, FREE or READY with a newer seq): the client read the buffer's READY value
    /// just before the host froze it (the reclaim race, [module docs](self)). The copy may
    /// be torn and must be dropped; the word was left as found. Part of the protocol: retry at
    /// the next snapshot.
    Reclaimed {
        /// The value found.
        found: u64,
    },
    /// The host's release found the state word changed from the FROZEN value it wrote to a
    /// value no client writes there: someone else writes state words. The word was left as
    /// found.
    ReleaseLost {
        /// The value found.
        found: u64,
    },
    /// A buffer (or meta buffer) given by the caller has the wrong length.
    BufferLength {
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        got: usize,
    },
    /// A snapshot image's state page is not what a host writes: exactly one `READY(seq)`
    /// buffer whose seq word is `seq`, every other state line zero.
    ImageState {
        /// The first offending buffer.
        buffer: u64,
        /// Its state word.
        state: u64,
    },
    /// A snapshot image's READY seq is not below its `next_seq`: the image says the client
    /// never published that seq (a host never writes such an image).
    ImageSeq {
        /// The READY buffer's seq.
        seq: u64,
        /// The image's `NEXT_SEQ` word.
        next_seq: u64,
    },
    /// Another client holds the region's claim (one client per region,
    /// [`claim`](crate::claim)).
    Claimed {
        /// The holder's id (under the documented encoding, its pid: [`ClaimId::pid`]).
        holder: ClaimId,
    },
}

impl From<LayoutError> for TripleError {
    fn from(e: LayoutError) -> Self {
        TripleError::Layout(e)
    }
}

impl From<ClaimError> for TripleError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Claimed { holder } => TripleError::Claimed { holder },
            ClaimError::TooSmall { words } => TripleError::Layout(LayoutError::TooSmall {
                needed: PAGE_SIZE,
                available: (words as u64).saturating_mul(8),
            }),
        }
    }
}

impl fmt::Display for TripleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TripleError::Layout(e) => e.fmt(f),
            TripleError::AlreadyConfigured => {
                write!(f, "region is already configured; attach to it instead")
            }
            TripleError::Mismatch { found, requested } => write!(
                f,
                "region is configured with {} buffers of {} bytes, but {} buffers of {} bytes were requested",
                found.buffers, found.buffer_size, requested.buffers, requested.buffer_size
            ),
            TripleError::Exhausted => write!(
                f,
                "the region's sequence numbers are exhausted; re-initialise it"
            ),
            TripleError::NoFreeBuffer => write!(
                f,
                "no triple buffer is free: another client or host is changing the state words (only one of each may run)"
            ),
            TripleError::OutOfBounds {
                offset,
                len,
                buffer_size,
            } => write!(
                f,
                "{len} bytes at offset {offset} do not fit in a {buffer_size}-byte buffer"
            ),
            TripleError::Contended { attempts } => write!(
                f,
                "could not freeze the newest buffer in {attempts} attempts (the client kept reclaiming it); retry later"
            ),
            TripleError::Reclaimed { found } => write!(
                f,
                "the client took the frozen buffer back during the copy (state word {found:#018x}); the copy was dropped, retry at the next snapshot"
            ),
            TripleError::ReleaseLost { found } => write!(
                f,
                "the frozen buffer's state word was changed to {found:#018x} behind the host's back; left as found"
            ),
            TripleError::BufferLength { needed, got } => {
                write!(f, "buffer of {got} bytes given where {needed} bytes are needed")
            }
            TripleError::ImageState { buffer, state } => write!(
                f,
                "snapshot image is inconsistent: buffer {buffer} has state word {state:#018x} (expected exactly one READY buffer with a matching seq word, all others FREE)"
            ),
            TripleError::ImageSeq { seq, next_seq } => write!(
                f,
                "snapshot image is inconsistent: its READY seq {seq} is not below its next_seq {next_seq} (no host persists a seq the client had not published)"
            ),
            TripleError::Claimed { holder } => ClaimError::Claimed { holder }.fmt(f),
        }
    }
}

impl core::error::Error for TripleError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            TripleError::Layout(e) => Some(e),
            _ => None,
        }
    }
}

/// Number of header words read and checksummed (words `0..=CHECKSUM`).
const HEADER_WORDS: usize = word::STATIC + 1;

impl TripleLayout {
    /// Derives the layout for `request`.
    ///
    /// # Errors
    ///
    /// [`LayoutError::Field`] naming `buffers` or `buffer_size` if it is out of range.
    pub fn new(request: TripleRequest) -> Result<TripleLayout, LayoutError> {
        let TripleRequest {
            buffers,
            buffer_size,
        } = request;
        if !(3..=MAX_BUFFERS).contains(&buffers) {
            return Err(LayoutError::Field {
                field: "buffers",
                value: buffers,
            });
        }
        if buffer_size == 0 || buffer_size % PAGE_SIZE != 0 || buffer_size > MAX_BUFFER_SIZE {
            return Err(LayoutError::Field {
                field: "buffer_size",
                value: buffer_size,
            });
        }
        let buffer_offset = 2 * PAGE_SIZE;
        // No overflow: buffers <= 64 and buffer_size <= 2^40.
        Ok(TripleLayout {
            buffers,
            buffer_size,
            state_offset: PAGE_SIZE,
            buffer_offset,
            region_len: buffer_offset + buffers * buffer_size,
        })
    }

    /// The static header words of this layout, checksum included.
    pub fn header_words(&self) -> [u64; HEADER_WORDS] {
        let mut w = [0u64; HEADER_WORDS];
        w[word::MAGIC] = MAGIC;
        w[word::VERSION] = FORMAT_VERSION;
        w[word::PAGE_SIZE] = PAGE_SIZE;
        w[words::BUFFERS] = self.buffers;
        w[words::BUFFER_SIZE] = self.buffer_size;
        w[words::STATE_OFFSET] = self.state_offset;
        w[words::BUFFER_OFFSET] = self.buffer_offset;
        w[words::REGION_LEN] = self.region_len;
        w[word::STRATEGY] = Strategy::Triple.code();
        let mut stat = [0u64; word::STATIC];
        stat.copy_from_slice(&w[..word::STATIC]);
        w[word::CHECKSUM] = header_checksum(&stat);
        w
    }

    /// Validates header words read from a live region or an image of `available` bytes.
    ///
    /// # Errors
    ///
    /// [`LayoutError::Unconfigured`] for a zero magic, then the first problem found: magic,
    /// version, checksum, page size, strategy (not triple), or any triple field.
    pub fn from_header_words(
        w: &[u64; HEADER_WORDS],
        available: u64,
    ) -> Result<TripleLayout, LayoutError> {
        crate::layout::check_shared_header(w, Strategy::Triple)?;
        let layout = TripleLayout::new(TripleRequest {
            buffers: w[words::BUFFERS],
            buffer_size: w[words::BUFFER_SIZE],
        })?;
        let expect = layout.header_words();
        for (idx, name) in [
            (words::STATE_OFFSET, "state_offset"),
            (words::BUFFER_OFFSET, "buffer_offset"),
            (words::RESERVED_7, "reserved"),
            (words::RESERVED_8, "reserved"),
            (words::REGION_LEN, "region_len"),
        ] {
            if w[idx] != expect[idx] {
                return Err(LayoutError::Field {
                    field: name,
                    value: w[idx],
                });
            }
        }
        if layout.region_len > available {
            return Err(LayoutError::TooSmall {
                needed: layout.region_len,
                available,
            });
        }
        Ok(layout)
    }

    /// Reads and validates the header of a live region (magic loaded with `Acquire`, pairing
    /// with the `Release` store of the magic in [`TripleClient::init`], so a complete header is
    /// seen whole and one being written fails its checksum).
    ///
    /// # Errors
    ///
    /// As [`TripleLayout::from_header_words`].
    pub fn read<M: WordMemory + ?Sized>(mem: &M) -> Result<TripleLayout, LayoutError> {
        let available = (mem.len() as u64).saturating_mul(8);
        if available < PAGE_SIZE {
            return Err(LayoutError::TooSmall {
                needed: PAGE_SIZE,
                available,
            });
        }
        let mut w = [0u64; HEADER_WORDS];
        // Acquire: pairs with the Release store of MAGIC in `write_header`.
        w[word::MAGIC] = mem.load(word::MAGIC, Ordering::Acquire);
        for (i, slot) in w.iter_mut().enumerate().skip(1) {
            *slot = mem.load(i, Ordering::Relaxed);
        }
        TripleLayout::from_header_words(&w, available)
    }

    /// Parses the header from the first bytes of an image (a copy, not live memory).
    ///
    /// # Errors
    ///
    /// As [`TripleLayout::from_header_words`], with `available` the image length.
    pub fn read_bytes(image: &[u8]) -> Result<TripleLayout, LayoutError> {
        let mut w = [0u64; HEADER_WORDS];
        for (i, slot) in w.iter_mut().enumerate() {
            *slot = crate::format::read_word(image, i).ok_or(LayoutError::TooSmall {
                needed: PAGE_SIZE,
                available: image.len() as u64,
            })?;
        }
        TripleLayout::from_header_words(&w, image.len() as u64)
    }

    /// Writes the static header; the magic last, with `Release`.
    pub(crate) fn write_header<M: WordMemory + ?Sized>(&self, mem: &M) {
        let w = self.header_words();
        for (i, v) in w.iter().enumerate().skip(1) {
            mem.store(i, *v, Ordering::Relaxed);
        }
        // Release: publishes the header and the zeroed state page stored before; pairs with
        // the Acquire load of MAGIC in `read`.
        mem.store(word::MAGIC, w[word::MAGIC], Ordering::Release);
    }

    /// Word index of buffer `i`'s state word (`i < buffers`).
    #[inline]
    pub fn state_word(&self, i: u64) -> usize {
        ((self.state_offset + i * STATE_STRIDE) / 8) as usize + words::LINE_STATE
    }

    /// Word index of buffer `i`'s seq word (`i < buffers`).
    #[inline]
    pub fn seq_word(&self, i: u64) -> usize {
        ((self.state_offset + i * STATE_STRIDE) / 8) as usize + words::LINE_SEQ
    }

    /// Byte range of buffer `i` in the region (`i < buffers`): what a host copies.
    #[inline]
    pub fn buffer_range(&self, i: u64) -> Range<u64> {
        let start = self.buffer_offset + i * self.buffer_size;
        start..start + self.buffer_size
    }

    /// Length of the meta part of a snapshot image: header page and state page. The image is
    /// this meta, the frozen buffer at its range, and holes elsewhere.
    pub fn meta_len(&self) -> u64 {
        self.buffer_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_round_trip_and_garbage_is_invalid() {
        for s in [
            BufferState::Free,
            BufferState::Writing { epoch: 7 },
            BufferState::Ready { seq: 1 },
            BufferState::Ready { seq: MAX_SEQ - 1 },
            BufferState::Frozen { epoch: VALUE_MASK },
        ] {
            assert_eq!(BufferState::decode(s.encode().unwrap()), s);
        }
        assert_eq!(BufferState::decode(1), BufferState::Invalid(1));
        assert_eq!(
            BufferState::decode(TAG_READY),
            BufferState::Invalid(TAG_READY)
        );
        assert_eq!(BufferState::Ready { seq: 0 }.encode(), None);
        assert_eq!(BufferState::Ready { seq: MAX_SEQ }.encode(), None);
        assert_eq!(next_epoch(VALUE_MASK), 1);
    }

    #[test]
    fn layout_round_trips_and_rejects_every_changed_field() {
        let l = TripleLayout::new(TripleRequest {
            buffers: 3,
            buffer_size: 4096,
        })
        .unwrap();
        assert_eq!(l.region_len, 5 * 4096);
        let w = l.header_words();
        assert_eq!(TripleLayout::from_header_words(&w, l.region_len), Ok(l));
        for i in 0..word::STATIC {
            let mut bad = w;
            bad[i] ^= 0x1000;
            let mut stat = [0u64; word::STATIC];
            stat.copy_from_slice(&bad[..word::STATIC]);
            bad[word::CHECKSUM] = header_checksum(&stat);
            assert!(
                TripleLayout::from_header_words(&bad, 1 << 30).is_err(),
                "{i}"
            );
        }
        assert!(TripleLayout::new(TripleRequest {
            buffers: 2,
            buffer_size: 4096
        })
        .is_err());
        assert!(TripleLayout::new(TripleRequest {
            buffers: 3,
            buffer_size: 100
        })
        .is_err());
    }
}
