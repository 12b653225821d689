//! Region layout (format 1): the header and where the descriptor ring, data ring and tail lie.
//!
//! `docs/FORMAT.md` is the normative description; this module implements it. All fields are
//! little-endian `u64` words (the region is accessed as atomic words, and the protocol runs on
//! little-endian machines only — see FORMAT.md).

use core::fmt;
use core::sync::atomic::Ordering;

use crate::format::{
    desc, read_word, word, HeaderWords, Strategy, DESCRIPTOR_BYTES, FORMAT_VERSION, MAGIC,
    MAX_DATA_SIZE, MAX_ENTRIES, PAGE_SIZE,
};
use crate::memory::WordMemory;

/// Checks the header words every strategy shares (`docs/FORMAT.md`): magic, version,
/// checksum, page size, and that the strategy code is `expected`.
///
/// # Errors
///
/// [`LayoutError::Unconfigured`] for a zero magic (the magic is stored last, with Release, by
/// a client's init: a zero magic means no init ever completed — a fresh region, or an init
/// cut short by a crash, after which no commit can have happened; it may be configured
/// afresh), then the first problem found; [`LayoutError::Strategy`] names a known strategy
/// that is not `expected`.
pub(crate) fn check_shared_header(w: &HeaderWords, expected: Strategy) -> Result<(), LayoutError> {
    if w[word::MAGIC] == 0 {
        return Err(LayoutError::Unconfigured);
    }
    if w[word::MAGIC] != MAGIC {
        return Err(LayoutError::BadMagic {
            found: w[word::MAGIC],
        });
    }
    if w[word::VERSION] != FORMAT_VERSION {
        return Err(LayoutError::UnsupportedVersion {
            found: w[word::VERSION],
        });
    }
    let mut stat = [0u64; word::STATIC];
    stat.copy_from_slice(&w[..word::STATIC]);
    let computed = header_checksum(&stat);
    if computed != w[word::CHECKSUM] {
        return Err(LayoutError::Checksum {
            stored: w[word::CHECKSUM],
            computed,
        });
    }
    let field = |field: &'static str, idx: usize| LayoutError::Field {
        field,
        value: w[idx],
    };
    if w[word::PAGE_SIZE] != PAGE_SIZE {
        return Err(field("page_size", word::PAGE_SIZE));
    }
    let strategy =
        Strategy::from_code(w[word::STRATEGY]).ok_or(field("strategy", word::STRATEGY))?;
    if strategy != expected {
        return Err(LayoutError::Strategy { found: strategy });
    }
    Ok(())
}

/// What a client asks for when it configures a fresh region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutRequest {
    /// Descriptor count E: a power of two, `1..=MAX_ENTRIES`.
    pub entries: u64,
    /// Data-ring size S in bytes: a power of two, at least 8, at most `MAX_DATA_SIZE`.
    pub data_size: u64,
}

/// A validated layout of a queue region. Every field has been checked against the others and
/// against the size of the memory it describes, so indices derived from it are in bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Descriptor count E (power of two).
    pub entries: u64,
    /// Data-ring size S in bytes (power of two, multiple of 8).
    pub data_size: u64,
    /// Byte offset of the descriptor ring (one page).
    pub desc_offset: u64,
    /// Byte offset of the data ring (page aligned).
    pub data_offset: u64,
    /// Byte offset of the tail (page aligned).
    pub tail_offset: u64,
    /// Length of the tail in bytes.
    pub tail_len: u64,
    /// Total length of the region the layout describes (a prefix of the memory).
    pub region_len: u64,
}

/// Why a layout could not be derived or a header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// The header's magic is zero: no client has configured this region yet (or its
    /// configuration was interrupted before the magic, which is written last).
    Unconfigured,
    /// The first word is not the shmsnap magic: this is not a shmsnap region.
    BadMagic {
        /// The first word found.
        found: u64,
    },
    /// The format version is not one this crate knows.
    UnsupportedVersion {
        /// The version found.
        found: u64,
    },
    /// The header checksum does not match its fields (corrupt, or being written right now).
    Checksum {
        /// Checksum stored in the header.
        stored: u64,
        /// Checksum computed over the fields.
        computed: u64,
    },
    /// A header field is out of range or inconsistent with the others.
    Field {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The header names a known strategy other than the queue: this layout cannot read it.
    Strategy {
        /// The strategy the header names.
        found: Strategy,
    },
    /// The requested entry count is not a power of two in range.
    Entries {
        /// The requested count.
        entries: u64,
    },
    /// The requested data size is not a power of two in range.
    DataSize {
        /// The requested size.
        data_size: u64,
    },
    /// The memory is too small for the layout.
    TooSmall {
        /// Bytes the layout needs.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::Unconfigured => {
                write!(f, "region is not configured yet (its header has no magic)")
            }
            LayoutError::BadMagic { found } => write!(
                f,
                "not a shmsnap region: first word is {found:#018x}, expected {MAGIC:#018x}"
            ),
            LayoutError::UnsupportedVersion { found } => write!(
                f,
                "region format version {found} is not supported (this build reads version {FORMAT_VERSION})"
            ),
            LayoutError::Checksum { stored, computed } => write!(
                f,
                "region header checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the header is corrupt"
            ),
            LayoutError::Field { field, value } => {
                write!(f, "region header field `{field}` has an invalid value {value}")
            }
            LayoutError::Strategy { found: Strategy::Exit } => write!(
                f,
                "region header names the `exit` strategy, which only snapshot footers use: the header is corrupt"
            ),
            LayoutError::Strategy { found } => write!(
                f,
                "region is configured for the `{found}` strategy, not `queue`: it must be read with that strategy's layout"
            ),
            LayoutError::Entries { entries } => write!(
                f,
                "entry count {entries} must be a power of two between 1 and {MAX_ENTRIES}"
            ),
            LayoutError::DataSize { data_size } => write!(
                f,
                "data ring size {data_size} must be a power of two between 8 and {MAX_DATA_SIZE} bytes"
            ),
            LayoutError::TooSmall { needed, available } => write!(
                f,
                "region of {available} bytes is too small for this layout, which needs at least {needed} bytes"
            ),
        }
    }
}

/// The header checksum: FNV-1a (64-bit) over the little-endian bytes of the static words.
///
/// It guards against a torn or corrupted header, not against an adversary.
pub fn header_checksum(static_words: &[u64; word::STATIC]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in static_words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl Layout {
    /// The strategy this layout belongs to: a header naming another one is refused with
    /// [`LayoutError::Strategy`].
    pub const STRATEGY: Strategy = Strategy::Queue;

    /// Derives the layout of a region of `region_len` bytes for `request`.
    ///
    /// # Errors
    ///
    /// [`LayoutError::Entries`] or [`LayoutError::DataSize`] for a bad request,
    /// [`LayoutError::TooSmall`] if the header, rings and an empty tail do not fit.
    pub fn new(region_len: u64, request: LayoutRequest) -> Result<Layout, LayoutError> {
        let LayoutRequest { entries, data_size } = request;
        if !entries.is_power_of_two() || entries > MAX_ENTRIES {
            return Err(LayoutError::Entries { entries });
        }
        if !data_size.is_power_of_two() || !(8..=MAX_DATA_SIZE).contains(&data_size) {
            return Err(LayoutError::DataSize { data_size });
        }
        // No overflow: entries <= 2^24 and data_size <= 2^40.
        let desc_offset = PAGE_SIZE;
        let data_offset =
            desc_offset + (entries * DESCRIPTOR_BYTES).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let tail_offset = data_offset + data_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if region_len < tail_offset {
            return Err(LayoutError::TooSmall {
                needed: tail_offset,
                available: region_len,
            });
        }
        Ok(Layout {
            entries,
            data_size,
            desc_offset,
            data_offset,
            tail_offset,
            tail_len: region_len - tail_offset,
            region_len,
        })
    }

    /// The static header words of this layout, checksum included.
    pub fn header_words(&self) -> HeaderWords {
        let mut w = [0u64; word::HEADER];
        w[word::MAGIC] = MAGIC;
        w[word::VERSION] = FORMAT_VERSION;
        w[word::PAGE_SIZE] = PAGE_SIZE;
        w[word::ENTRIES] = self.entries;
        w[word::DATA_SIZE] = self.data_size;
        w[word::DESC_OFFSET] = self.desc_offset;
        w[word::DATA_OFFSET] = self.data_offset;
        w[word::TAIL_OFFSET] = self.tail_offset;
        w[word::TAIL_LEN] = self.tail_len;
        w[word::REGION_LEN] = self.region_len;
        w[word::STRATEGY] = Layout::STRATEGY.code();
        let mut stat = [0u64; word::STATIC];
        stat.copy_from_slice(&w[..word::STATIC]);
        w[word::CHECKSUM] = header_checksum(&stat);
        w
    }

    /// Validates static header words read from somewhere (a live region or a file) against
    /// `available` bytes of memory.
    ///
    /// # Errors
    ///
    /// Any [`LayoutError`] but `Entries`/`DataSize`, naming the first problem found.
    pub fn from_header_words(w: &HeaderWords, available: u64) -> Result<Layout, LayoutError> {
        check_shared_header(w, Layout::STRATEGY)?;
        let field = |field: &'static str, idx: usize| LayoutError::Field {
            field,
            value: w[idx],
        };
        let region_len = w[word::REGION_LEN];
        if region_len > available {
            return Err(LayoutError::TooSmall {
                needed: region_len,
                available,
            });
        }
        let request = LayoutRequest {
            entries: w[word::ENTRIES],
            data_size: w[word::DATA_SIZE],
        };
        let derived = match Layout::new(region_len, request) {
            Ok(l) => l,
            Err(LayoutError::Entries { .. }) => return Err(field("entries", word::ENTRIES)),
            Err(LayoutError::DataSize { .. }) => return Err(field("data_size", word::DATA_SIZE)),
            Err(_) => return Err(field("region_len", word::REGION_LEN)),
        };
        // Every derived field must match what the header says.
        let expect = derived.header_words();
        for (idx, name) in [
            (word::DESC_OFFSET, "desc_offset"),
            (word::DATA_OFFSET, "data_offset"),
            (word::TAIL_OFFSET, "tail_offset"),
            (word::TAIL_LEN, "tail_len"),
        ] {
            if w[idx] != expect[idx] {
                return Err(field(name, idx));
            }
        }
        Ok(derived)
    }

    /// Reads and validates the header of a live region.
    ///
    /// The magic is loaded with `Acquire`, pairing with the `Release` store of the magic in
    /// `Layout::write_header` (called by [`Writer::init`](crate::Writer::init)), so a fully written header is seen whole; a header being
    /// written right now fails the checksum instead.
    ///
    /// # Errors
    ///
    /// As [`Layout::from_header_words`]; [`LayoutError::TooSmall`] if the memory cannot hold
    /// even a header page.
    pub fn read<M: WordMemory + ?Sized>(mem: &M) -> Result<Layout, LayoutError> {
        let available = (mem.len() as u64).saturating_mul(8);
        if available < PAGE_SIZE {
            return Err(LayoutError::TooSmall {
                needed: PAGE_SIZE,
                available,
            });
        }
        let mut w = [0u64; word::HEADER];
        // Acquire: pairs with the Release store of MAGIC in `write_header`.
        w[word::MAGIC] = mem.load(word::MAGIC, Ordering::Acquire);
        for (i, slot) in w.iter_mut().enumerate().skip(1) {
            *slot = mem.load(i, Ordering::Relaxed);
        }
        Layout::from_header_words(&w, available)
    }

    /// Parses the header from the first bytes of an image (a copy, not live memory).
    ///
    /// # Errors
    ///
    /// As [`Layout::from_header_words`], with `available` the image length.
    pub fn read_bytes(image: &[u8]) -> Result<Layout, LayoutError> {
        let w = crate::format::header_words(image).ok_or(LayoutError::TooSmall {
            needed: PAGE_SIZE,
            available: image.len() as u64,
        })?;
        Layout::from_header_words(&w, image.len() as u64)
    }

    /// Writes the static header of this layout into `mem`; the magic goes last, with
    /// `Release`, so a reader that sees the magic sees every field.
    pub(crate) fn write_header<M: WordMemory + ?Sized>(&self, mem: &M) {
        let w = self.header_words();
        for (i, v) in w.iter().enumerate().skip(1) {
            mem.store(i, *v, Ordering::Relaxed);
        }
        // Release: publishes the fields stored above; pairs with the Acquire in `read`.
        mem.store(word::MAGIC, w[word::MAGIC], Ordering::Release);
    }
}

/// The mutable hints kept in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hints {
    /// At least the next sequence number the writer will use (never decreases).
    pub next_seq: u64,
    /// Stream offset just past the newest committed payload.
    pub data_head: u64,
    /// Incremented each time a writer attaches or initialises the region.
    pub epoch: u64,
}

impl Hints {
    /// Reads the hints of a live region (`Relaxed`: they are hints, never trusted alone).
    pub fn read<M: WordMemory + ?Sized>(mem: &M) -> Hints {
        if mem.len() <= word::EPOCH {
            return Hints::default();
        }
        Hints {
            next_seq: mem.load(word::NEXT_SEQ, Ordering::Relaxed),
            data_head: mem.load(word::DATA_HEAD, Ordering::Relaxed),
            epoch: mem.load(word::EPOCH, Ordering::Relaxed),
        }
    }

    /// Reads the hints of an image; zeros where the image is too short.
    pub fn read_bytes(image: &[u8]) -> Hints {
        Hints {
            next_seq: read_word(image, word::NEXT_SEQ).unwrap_or(0),
            data_head: read_word(image, word::DATA_HEAD).unwrap_or(0),
            epoch: read_word(image, word::EPOCH).unwrap_or(0),
        }
    }
}

/// Ring addressing of a queue layout.
///
/// The arithmetic wraps instead of panicking: for a validated layout every result is in
/// bounds; for a hand-made inconsistent one, callers that take a layout from outside
/// bounds-check the result.
impl Layout {
    /// Word index of the first word of descriptor `slot` (`slot < entries`); add a
    /// [`desc`] offset for a field.
    #[inline]
    pub fn desc_word(&self, slot: u64) -> usize {
        (self
            .desc_offset
            .wrapping_add(slot.wrapping_mul(DESCRIPTOR_BYTES))
            / 8) as usize
    }

    /// Which descriptor word `i` is: `(slot, field)` with `field` a [`desc`] offset, or `None`
    /// if word `i` is outside the descriptor ring's `entries` descriptors.
    pub fn desc_field(&self, i: usize) -> Option<(u64, usize)> {
        let first = (self.desc_offset / 8) as usize;
        let k = i.checked_sub(first)?;
        let slot = (k / desc::WORDS) as u64;
        (slot < self.entries).then_some((slot, k % desc::WORDS))
    }

    /// `true` if word `i` is the seq word of a descriptor.
    pub fn is_seq_word(&self, i: usize) -> bool {
        matches!(self.desc_field(i), Some((_, desc::SEQ)))
    }

    /// Position of stream offset `off` within the data ring (`off mod S`).
    #[inline]
    pub fn ring_pos(&self, off: u64) -> u64 {
        off & self.data_size.wrapping_sub(1)
    }

    /// Byte offset in the region of stream offset `off` (its position in the data ring).
    #[inline]
    pub fn ring_byte(&self, off: u64) -> usize {
        self.data_offset.wrapping_add(self.ring_pos(off)) as usize
    }

    /// The slot that holds sequence number `seq` (`seq >= 1`).
    #[inline]
    pub fn slot_of(&self, seq: u64) -> u64 {
        seq.wrapping_sub(1) & self.entries.wrapping_sub(1)
    }

    /// Size of the part of an image that [`retain`](crate::retain) rewrites: header and
    /// descriptor ring.
    pub fn meta_len(&self) -> u64 {
        self.data_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: LayoutRequest = LayoutRequest {
        entries: 64,
        data_size: 1 << 16,
    };

    #[test]
    fn layout_places_rings_on_page_boundaries() {
        let l = Layout::new(1 << 20, REQ).unwrap();
        assert_eq!(l.desc_offset, 4096);
        assert_eq!(l.data_offset, 4096 + 4096);
        assert_eq!(l.tail_offset, 8192 + 65536);
        assert_eq!(l.tail_len, (1 << 20) - l.tail_offset);
        let small = Layout::new(
            3 * 4096,
            LayoutRequest {
                entries: 1,
                data_size: 8,
            },
        )
        .unwrap();
        assert_eq!(small.tail_offset, 3 * 4096);
        assert_eq!(small.tail_len, 0);
    }

    #[test]
    fn bad_requests_are_rejected() {
        assert_eq!(
            Layout::new(1 << 20, LayoutRequest { entries: 3, ..REQ }),
            Err(LayoutError::Entries { entries: 3 })
        );
        assert_eq!(
            Layout::new(
                1 << 20,
                LayoutRequest {
                    data_size: 4,
                    ..REQ
                }
            ),
            Err(LayoutError::DataSize { data_size: 4 })
        );
        assert!(matches!(
            Layout::new(4096, REQ),
            Err(LayoutError::TooSmall { .. })
        ));
    }

    #[test]
    fn header_round_trips_and_every_field_is_checked() {
        let l = Layout::new(1 << 20, REQ).unwrap();
        let w = l.header_words();
        assert_eq!(Layout::from_header_words(&w, 1 << 20), Ok(l));
        assert_eq!(
            Layout::from_header_words(&w, (1 << 20) - 8),
            Err(LayoutError::TooSmall {
                needed: 1 << 20,
                available: (1 << 20) - 8
            })
        );
        // Changing any static word without fixing the checksum is caught; fixing the
        // checksum is caught by the field checks.
        for i in 0..word::STATIC {
            let mut bad = w;
            bad[i] ^= 0x100;
            assert!(
                Layout::from_header_words(&bad, 1 << 21).is_err(),
                "word {i}"
            );
            if i > word::VERSION {
                let mut stat = [0u64; word::STATIC];
                stat.copy_from_slice(&bad[..word::STATIC]);
                bad[word::CHECKSUM] = header_checksum(&stat);
                assert!(
                    Layout::from_header_words(&bad, 1 << 21).is_err(),
                    "word {i} with fixed checksum"
                );
            }
        }
        // A known strategy other than the queue is refused by name.
        for s in [Strategy::Exit, Strategy::Triple] {
            let mut other = w;
            other[word::STRATEGY] = s.code();
            let mut stat = [0u64; word::STATIC];
            stat.copy_from_slice(&other[..word::STATIC]);
            other[word::CHECKSUM] = header_checksum(&stat);
            let err = Layout::from_header_words(&other, 1 << 20).unwrap_err();
            assert_eq!(err, LayoutError::Strategy { found: s });
            assert!(std::format!("{err}").contains(s.name()), "{err}");
        }
        assert_eq!(
            Layout::from_header_words(&[0; word::HEADER], 1 << 20),
            Err(LayoutError::Unconfigured)
        );
        // An init interrupted before its last store (the magic) leaves an unconfigured region.
        let mut interrupted = w;
        interrupted[word::MAGIC] = 0;
        assert_eq!(
            Layout::from_header_words(&interrupted, 1 << 20),
            Err(LayoutError::Unconfigured)
        );
    }
}
