//! Descriptors: the entries of the sequence-descriptor ring, and their seqlock read.
//!
//! Descriptor `slot` is four words at `desc_offset + 32 * slot`:
//!
//! | word | field    | invariant                                                          |
//! |------|----------|--------------------------------------------------------------------|
//! | 0    | seq      | 0 = empty; otherwise `(seq - 1) mod E == slot`, never repeated     |
//! | 1    | offset   | stream offset of the payload, a multiple of 8                      |
//! | 2    | length   | payload bytes, `1..=S`, and `offset mod S + length <= S`           |
//! | 3    | reserved | 0                                                                  |

use core::sync::atomic::Ordering;

use crate::format::{desc, read_word, DESCRIPTOR_BYTES};
use crate::layout::Layout;
use crate::memory::WordMemory;

/// Largest sequence number the protocol hands out; a region that reaches it must be
/// re-initialised (at a billion commits a second that takes 146 years).
pub const MAX_SEQ: u64 = 1 << 62;
/// Largest stream offset (exclusive) a payload may end at.
pub const MAX_STREAM: u64 = 1 << 62;

/// A committed entry: its sequence number and where its payload lies in the data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Descriptor {
    /// Sequence number (`0` marks an empty slot in a [`DescriptorSet`](crate::DescriptorSet)).
    pub seq: u64,
    /// Stream offset of the payload (ring position is `offset mod S`).
    pub offset: u64,
    /// Payload length in bytes.
    pub length: u64,
}

impl Descriptor {
    /// The empty descriptor.
    pub const EMPTY: Descriptor = Descriptor {
        seq: 0,
        offset: 0,
        length: 0,
    };

    /// Stream offset just past the payload.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// `true` if this descriptor could have been committed into `slot` of `layout`: non-zero
    /// seq in range and belonging to the slot, payload inside the ring and contiguous.
    pub fn is_valid_for(&self, layout: &Layout, slot: u64) -> bool {
        let s = layout.data_size;
        s.is_power_of_two()
            && self.seq != 0
            && self.seq < MAX_SEQ
            && layout.slot_of(self.seq) == slot
            && self.offset.is_multiple_of(8)
            && self.length >= 1
            && self.length <= s
            && (self.offset & (s - 1)).saturating_add(self.length) <= s
            && self.offset < MAX_STREAM
            && self.offset.saturating_add(self.length) <= MAX_STREAM
    }
}

/// Reads descriptor `slot` of a live region with the seqlock protocol.
///
/// Returns `None` for an empty slot, an invalid descriptor, or one that changed during the
/// read. Because sequence numbers never repeat, equal seq loads around the field loads prove
/// the fields belong to that seq (no ABA).
pub fn read_descriptor<M: WordMemory + ?Sized>(
    mem: &M,
    layout: &Layout,
    slot: u64,
) -> Option<Descriptor> {
    if slot >= layout.entries {
        return None;
    }
    let w = layout.desc_word(slot);
    // A validated layout always passes; a hand-made inconsistent one gets `None`, not a panic.
    if w.checked_add(desc::RESERVED)
        .is_none_or(|end| end > mem.len())
    {
        return None;
    }
    // Acquire: pairs with the Release store of seq in `Transaction::commit`, so the fields
    // (and payload) stored before publication are visible to the loads below.
    let s1 = mem.load(w + desc::SEQ, Ordering::Acquire);
    if s1 == 0 {
        return None;
    }
    let offset = mem.load(w + desc::OFFSET, Ordering::Relaxed);
    let length = mem.load(w + desc::LENGTH, Ordering::Relaxed);
    // Acquire fence: if the field loads above saw stores of a later commit, the writer's
    // Release fence before those stores synchronizes with this fence, so its eviction
    // (seq := 0) is visible to the re-load below and the read is rejected.
    mem.fence(Ordering::Acquire);
    let s2 = mem.load(w + desc::SEQ, Ordering::Relaxed);
    let d = Descriptor {
        seq: s1,
        offset,
        length,
    };
    (s1 == s2 && d.is_valid_for(layout, slot)).then_some(d)
}

/// Reads descriptor `slot` from a copied image (no concurrency: plain little-endian words).
pub fn read_descriptor_bytes(image: &[u8], layout: &Layout, slot: u64) -> Option<Descriptor> {
    if slot >= layout.entries {
        return None;
    }
    let w = layout.desc_word(slot);
    let d = Descriptor::from_bytes(image.get(w * 8..)?.get(..DESCRIPTOR_BYTES as usize)?);
    d.is_valid_for(layout, slot).then_some(d)
}

impl Descriptor {
    /// Decodes a descriptor from its bytes in an image (little-endian words named by
    /// [`desc`]; a word past the end of `b` reads as 0) — the one decoding of a descriptor's
    /// bytes, for copied images and snapshot files alike. Not validated: see
    /// [`is_valid_for`](Descriptor::is_valid_for).
    pub fn from_bytes(b: &[u8]) -> Descriptor {
        let word = |f: usize| read_word(b, f).unwrap_or(0);
        Descriptor {
            seq: word(desc::SEQ),
            offset: word(desc::OFFSET),
            length: word(desc::LENGTH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutRequest;
    use core::sync::atomic::AtomicU64;

    #[test]
    fn hand_made_inconsistent_layouts_give_none_not_a_panic() {
        let good = Layout::new(
            3 * 4096,
            LayoutRequest {
                entries: 4,
                data_size: 64,
            },
        )
        .unwrap();
        let mem: std::vec::Vec<AtomicU64> = (0..3 * 512).map(|_| AtomicU64::new(1)).collect();
        let image = [1u8; 3 * 4096];
        for bad in [
            Layout {
                desc_offset: u64::MAX - 7,
                ..good
            },
            Layout {
                desc_offset: 1 << 40,
                ..good
            },
            Layout {
                entries: 1 << 40,
                ..good
            },
            Layout {
                entries: 0,
                data_size: 0,
                ..good
            },
        ] {
            for slot in [0, 1, 3, 1 << 39] {
                assert_eq!(read_descriptor(&mem[..], &bad, slot), None);
                assert_eq!(read_descriptor_bytes(&image, &bad, slot), None);
            }
            if bad.entries <= 4 {
                assert_eq!(crate::image_entries(&image, &bad).count(), 0);
            }
        }
    }
}
