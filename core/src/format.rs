//! The format vocabulary: where every header word and descriptor word lies, how a stream
//! offset maps into the data ring, and the typed strategy code.
//!
//! This module is the code's reference for `docs/FORMAT.md`. Everything that reads a region or
//! an image — core itself, the host's `inspect`, fuzz targets, loom models, simulators and
//! benches — names words through it instead of recomputing offsets by hand. It is read-only:
//! constants and pure functions (the ring addressing on a [`Layout`](crate::Layout) is in
//! `layout.rs`).
//!
//! # Words shared by every strategy
//!
//! Header words 0–2 (magic, version, page size), 10 (strategy) and 11 (checksum over words
//! 0..=10) mean the same for every strategy; words 3–9 belong to the strategy named in word 10
//! (the queue's layout is [`word::ENTRIES`] ..= [`word::REGION_LEN`]; the triple-buffer
//! strategy defines its own).
//!
//! # Example
//!
//! ```
//! use shmsnap_core::format::{desc, word, Strategy};
//! use shmsnap_core::{Layout, LayoutRequest};
//!
//! let layout = Layout::new(1 << 20, LayoutRequest { entries: 64, data_size: 1 << 16 }).unwrap();
//! let header = layout.header_words();
//! assert_eq!(Strategy::from_code(header[word::STRATEGY]), Some(Strategy::Queue));
//! // Descriptor 3's seq word, and where stream offset 70000 lies in the data ring.
//! assert_eq!(layout.desc_word(3) + desc::SEQ, 4096 / 8 + 3 * 4);
//! assert_eq!(layout.ring_byte(70_000), 8192 + (70_000 % 65_536));
//! ```

use core::fmt;
use core::ops::Range;

/// Page size the layout is expressed in.
pub const PAGE_SIZE: u64 = 4096;
/// `"shmsnap\0"` as a little-endian word: the first word of a configured region.
pub const MAGIC: u64 = u64::from_le_bytes(*b"shmsnap\0");
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// Bytes per descriptor ([`desc::WORDS`] words: seq, offset, length, reserved).
pub const DESCRIPTOR_BYTES: u64 = 8 * desc::WORDS as u64;
/// Largest descriptor count a layout may have.
pub const MAX_ENTRIES: u64 = 1 << 24;
/// Largest data-ring size a layout may have.
pub const MAX_DATA_SIZE: u64 = 1 << 40;

/// Word indices of the header fields (page 0).
pub mod word {
    use core::ops::Range;

    /// `"shmsnap\0"`; stored last, with `Release`. Shared by every strategy.
    pub const MAGIC: usize = 0;
    /// Format version. Shared by every strategy.
    pub const VERSION: usize = 1;
    /// Page size of the format (4096). Shared by every strategy.
    pub const PAGE_SIZE: usize = 2;
    /// Queue: descriptor count E.
    pub const ENTRIES: usize = 3;
    /// Queue: data-ring size S.
    pub const DATA_SIZE: usize = 4;
    /// Queue: byte offset of the descriptor ring.
    pub const DESC_OFFSET: usize = 5;
    /// Queue: byte offset of the data ring.
    pub const DATA_OFFSET: usize = 6;
    /// Queue: byte offset of the tail.
    pub const TAIL_OFFSET: usize = 7;
    /// Queue: tail length in bytes.
    pub const TAIL_LEN: usize = 8;
    /// Queue: region length in bytes.
    pub const REGION_LEN: usize = 9;
    /// Strategy code ([`Strategy`](super::Strategy)). Shared by every strategy.
    pub const STRATEGY: usize = 10;
    /// Checksum over words `0..CHECKSUM`. Shared by every strategy.
    pub const CHECKSUM: usize = 11;
    /// Number of static words covered by the checksum (words `0..CHECKSUM`).
    pub const STATIC: usize = CHECKSUM;
    /// Number of static header words, checksum included (words `0..HEADER`).
    pub const HEADER: usize = CHECKSUM + 1;
    /// Reserved words between the static header and the hints: zero in a canonical image.
    pub const RESERVED: Range<usize> = HEADER..NEXT_SEQ;
    /// Hint: at least every seq ever used. The hints sit on their own cache line.
    pub const NEXT_SEQ: usize = 16;
    /// Hint: stream offset past the newest payload.
    pub const DATA_HEAD: usize = 17;
    /// Hint: incremented at every writer init or attach.
    pub const EPOCH: usize = 18;
    /// The hint words (`NEXT_SEQ..=EPOCH`).
    pub const HINTS: Range<usize> = NEXT_SEQ..EPOCH + 1;

    /// Host status: newest seq contained in a durable local snapshot (0: none known). Only the
    /// host writes the status words (after the snapshot is durable); the client only reads
    /// them. The status words sit alone in bytes 256..384 (a 128-byte-aligned pair of cache
    /// lines), away from the hints the client writes on every commit. Shared by every
    /// strategy (for the triple buffer: its buffer seq).
    pub const PERSISTED_SEQ: usize = 32;
    /// Host status: generation of a durable snapshot at least as new as the one
    /// [`PERSISTED_SEQ`] was published for (0: none).
    pub const PERSISTED_GENERATION: usize = 33;
    /// Host status: newest seq contained in a point this host put into its replica (0: none
    /// yet, or no replica).
    pub const REPLICA_SEQ: usize = 34;
    /// Host status: the futex word. Low 32 bits: a wake counter the host bumps after every
    /// publish; high 32 bits: always 0.
    pub const STATUS_WAKE: usize = 35;
    /// The host status words (`PERSISTED_SEQ..=STATUS_WAKE`).
    pub const STATUS: Range<usize> = PERSISTED_SEQ..STATUS_WAKE + 1;
    /// Client-written write-tracking advertisement (4 words: magic/version, address, length,
    /// generation; `shmsnap_linux::track::Advertisement`): where the client's mapping of the
    /// region is, so the host can scan the pages it wrote. All zero: the client does not track
    /// (the host takes full snapshots). Only the client writes these words, after it mapped
    /// the region; core's init and attach paths never touch them, and the host treats them
    /// as hostile input (validated against the client's `/proc/PID/maps` before every scan).
    pub const TRACK: Range<usize> = 40..44;
    /// Client-written snapshot request: the client bumps it (and futex-wakes its low 32 bits)
    /// to ask for a prompt snapshot. On its own cache line pair (bytes 384..512). The host
    /// treats it as hostile: only "changed since I last looked" matters.
    pub const SNAPSHOT_REQUEST: usize = 48;
    /// The claim word: 0 = unclaimed, otherwise the [`ClaimId`](crate::claim::ClaimId) of the
    /// one writer using the region ([`claim`](crate::claim)). Taken by a client
    /// (compare-exchange 0 → id) before it touches anything else, released on drop; cleared by
    /// the host only for a client it knows is dead. Snapshot images carry 0. Same index for
    /// every strategy; alone on the cache-line pair 512..640 (written once per attach).
    pub const CLAIM: usize = 64;
}

/// Word offsets within a descriptor (add to [`Layout::desc_word`](crate::Layout::desc_word)).
pub mod desc {
    /// `0` = empty; otherwise `(seq - 1) mod E == slot`, never repeated.
    pub const SEQ: usize = 0;
    /// Stream offset of the payload, a multiple of 8.
    pub const OFFSET: usize = 1;
    /// Payload bytes, `1..=S`, and `offset mod S + length <= S`.
    pub const LENGTH: usize = 2;
    /// Always 0.
    pub const RESERVED: usize = 3;
    /// Words per descriptor.
    pub const WORDS: usize = 4;
}

/// The static header words (`0..word::HEADER`), as read from a region or an image.
pub type HeaderWords = [u64; word::HEADER];

/// The coordination strategy: header word [`word::STRATEGY`] and the snapshot footer's
/// strategy field use these codes.
///
/// Not `#[non_exhaustive]` on purpose: a new strategy is a format change, and every place that
/// matches on a strategy (host strategies, inspect) should have to handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The host copies the region only after the client exited (no concurrent commits).
    /// Appears only in snapshot footers: a region header never says `Exit`.
    Exit,
    /// The queue strategy (DESIGN §5): descriptor ring + data ring + frozen tail units.
    Queue,
    /// The triple-buffer strategy (`core/src/triple.rs`, which defines its header words 3–9).
    Triple,
}

impl Strategy {
    /// Every strategy, in code order.
    pub const ALL: [Strategy; 3] = [Strategy::Exit, Strategy::Queue, Strategy::Triple];

    /// The code of this strategy (header word 10, footer strategy field).
    pub const fn code(self) -> u64 {
        match self {
            Strategy::Exit => 0,
            Strategy::Queue => 1,
            Strategy::Triple => 2,
        }
    }

    /// The strategy for a code, if it is one.
    pub const fn from_code(code: u64) -> Option<Strategy> {
        match code {
            0 => Some(Strategy::Exit),
            1 => Some(Strategy::Queue),
            2 => Some(Strategy::Triple),
            _ => None,
        }
    }

    /// The lower-case name used by the CLI, `inspect` and messages: `exit`, `queue`, `triple`.
    pub const fn name(self) -> &'static str {
        match self {
            Strategy::Exit => "exit",
            Strategy::Queue => "queue",
            Strategy::Triple => "triple",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Little-endian word `i` of a byte image, if it is inside.
pub fn read_word(image: &[u8], i: usize) -> Option<u64> {
    let start = i.checked_mul(8)?;
    let bytes = image.get(start..start.checked_add(8)?)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    Some(u64::from_le_bytes(b))
}

/// The byte range of word `i` in an image (no bounds check against an image).
pub fn word_bytes(i: usize) -> Range<usize> {
    i * 8..i * 8 + 8
}

/// The static header words at the start of a byte image, if it is long enough.
pub fn header_words(image: &[u8]) -> Option<HeaderWords> {
    let mut w = [0u64; word::HEADER];
    for (i, slot) in w.iter_mut().enumerate() {
        *slot = read_word(image, i)?;
    }
    Some(w)
}

/// Stores little-endian word `i` into a byte image; `false` if it is outside.
pub(crate) fn write_word(image: &mut [u8], i: usize, v: u64) -> bool {
    let Some(start) = i.checked_mul(8) else {
        return false;
    };
    let Some(end) = start.checked_add(8) else {
        return false;
    };
    match image.get_mut(start..end) {
        Some(b) => {
            b.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Layout, LayoutRequest};

    #[test]
    fn strategy_codes_round_trip_and_are_distinct() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::from_code(s.code()), Some(s));
        }
        assert_eq!(
            Strategy::ALL.map(|s| (s.code(), s.name())),
            [(0, "exit"), (1, "queue"), (2, "triple")]
        );
        assert_eq!(Strategy::from_code(3), None);
    }

    #[test]
    fn descriptor_words_map_back_to_their_slot_and_field() {
        let l = Layout::new(
            1 << 20,
            LayoutRequest {
                entries: 8,
                data_size: 64,
            },
        )
        .unwrap();
        for slot in 0..8 {
            for f in 0..desc::WORDS {
                assert_eq!(l.desc_field(l.desc_word(slot) + f), Some((slot, f)));
            }
        }
        assert_eq!(l.desc_field(l.desc_word(0) - 1), None);
        assert_eq!(l.desc_field(l.desc_word(8)), None);
        assert!(l.is_seq_word(l.desc_word(5)) && !l.is_seq_word(l.desc_word(5) + 1));
        assert_eq!(l.ring_byte(64 + 9), l.data_offset as usize + 9);
        assert_eq!(word::HINTS, 16..19);
        assert_eq!(word::RESERVED, 12..16);
    }

    #[test]
    fn status_and_request_words_sit_on_their_own_cache_lines() {
        // 128-byte pairs (adjacent-line prefetch): hints, status and request never share one.
        let pair = |w: usize| w * 8 / 128;
        assert_eq!(word::STATUS, 32..36);
        assert!(word::STATUS
            .clone()
            .all(|w| pair(w) == pair(word::PERSISTED_SEQ)));
        assert!(word::HINTS
            .clone()
            .all(|w| pair(w) != pair(word::PERSISTED_SEQ)));
        assert_ne!(pair(word::SNAPSHOT_REQUEST), pair(word::PERSISTED_SEQ));
        assert!(word::HINTS
            .clone()
            .all(|w| pair(w) != pair(word::SNAPSHOT_REQUEST)));
        assert!(word::SNAPSHOT_REQUEST * 8 + 8 <= PAGE_SIZE as usize);
        // The tracking advertisement: its own cache line, clear of the status words, the
        // request word and the hints.
        assert_eq!(word::TRACK, 40..44);
        assert!(word::TRACK.clone().all(|w| !word::STATUS.contains(&w)
            && !word::HINTS.contains(&w)
            && w != word::SNAPSHOT_REQUEST
            && w >= word::HEADER));
        assert!(word::TRACK.end * 8 <= PAGE_SIZE as usize);
        // The claim word: on a pair of its own, inside the header page of every strategy.
        for w in word::HINTS
            .chain(word::STATUS)
            .chain(word::TRACK)
            .chain([word::SNAPSHOT_REQUEST])
        {
            assert_ne!(pair(word::CLAIM), pair(w), "word {w}");
        }
        assert!(word::CLAIM >= word::HEADER && word::CLAIM * 8 + 8 <= PAGE_SIZE as usize);
    }
}
