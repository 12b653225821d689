//! The host's validation of a snapshot: the pre/post sandwich (DESIGN §5.3).
//!
//! ```text
//! pre  = read_pre(live)            valid descriptors before the copy
//! copy the region (kernel copy or word by word)
//! post = read_post(live)           Acquire fence, then valid descriptors after the copy
//! retain(copy, pre, post, ...)     keep pre ∩ post, empty every other descriptor, fix hints
//! ```
//!
//! An entry in `pre` was published before the copy began, so the copy saw its bytes or later
//! ones. Any later store into its bytes is preceded, in the writer, by emptying its seq and a
//! Release fence; if the copy saw such a store, the Acquire fence in [`read_post`] makes that
//! emptying visible, so the entry is not in `post`. Hence every kept entry's bytes in the copy
//! are exactly what was committed — and the same holds for tail units frozen by it.

use core::fmt;
use core::sync::atomic::Ordering;

use crate::descriptor::{read_descriptor_bytes, Descriptor};
use crate::format::{desc, header_words, word, write_word};
use crate::layout::{Hints, Layout, LayoutError};
use crate::memory::WordMemory;
use crate::reader::Region;

/// Why a descriptor set or an image could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetainError {
    /// The caller's descriptor buffer is smaller than the entry count.
    BufferTooSmall {
        /// Entries needed (E).
        needed: u64,
        /// Buffer length.
        got: usize,
    },
    /// The copied image's header is not valid.
    Layout(LayoutError),
    /// The copied image's layout differs from the live region's.
    LayoutChanged,
    /// The image is shorter than header and descriptor ring.
    ImageTooShort {
        /// Bytes needed.
        needed: u64,
        /// Bytes given.
        got: usize,
    },
}

impl fmt::Display for RetainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetainError::BufferTooSmall { needed, got } => write!(
                f,
                "descriptor buffer holds {got} descriptors but the region has {needed}"
            ),
            RetainError::Layout(e) => write!(f, "copied image: {e}"),
            RetainError::LayoutChanged => write!(
                f,
                "the copied image's layout differs from the live region's (was the region re-initialised during the copy?)"
            ),
            RetainError::ImageTooShort { needed, got } => write!(
                f,
                "image of {got} bytes is shorter than its header and descriptor ring ({needed} bytes)"
            ),
        }
    }
}

/// A set of descriptors read from a region, indexed by slot (`seq == 0`: no valid entry).
///
/// Backed by caller storage of at least `E` descriptors, so the host never allocates.
#[derive(Debug)]
pub struct DescriptorSet<'a> {
    slots: &'a mut [Descriptor],
    /// Number of non-empty slots.
    valid: u64,
}

impl<'a> DescriptorSet<'a> {
    /// The descriptors, by slot.
    pub fn slots(&self) -> &[Descriptor] {
        self.slots
    }

    /// Number of valid descriptors.
    pub fn valid(&self) -> u64 {
        self.valid
    }

    /// The valid descriptor with the highest seq.
    pub fn newest(&self) -> Option<Descriptor> {
        self.slots
            .iter()
            .filter(|d| d.seq != 0)
            .max_by_key(|d| d.seq)
            .copied()
    }
}

fn read_set<'a, M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    buf: &'a mut [Descriptor],
) -> Result<DescriptorSet<'a>, RetainError> {
    let e = region.layout().entries;
    let got = buf.len();
    let slots = buf
        .get_mut(..e as usize)
        .ok_or(RetainError::BufferTooSmall { needed: e, got })?;
    let mut valid = 0;
    for (slot, out) in slots.iter_mut().enumerate() {
        *out = region
            .read_descriptor(slot as u64)
            .unwrap_or(Descriptor::EMPTY);
        valid += u64::from(out.seq != 0);
    }
    Ok(DescriptorSet { slots, valid })
}

/// Reads the valid descriptors of the live region before the copy.
///
/// # Errors
///
/// [`RetainError::BufferTooSmall`] if `buf` holds fewer than `E` descriptors.
pub fn read_pre<'a, M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    buf: &'a mut [Descriptor],
) -> Result<DescriptorSet<'a>, RetainError> {
    read_set(region, buf)
}

/// Issues the Acquire fence that ends the copy, then reads the valid descriptors again.
///
/// # Errors
///
/// [`RetainError::BufferTooSmall`] if `buf` holds fewer than `E` descriptors.
pub fn read_post<'a, M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    buf: &'a mut [Descriptor],
) -> Result<DescriptorSet<'a>, RetainError> {
    // Acquire: if the copy read any byte stored after a writer's Release fence, every
    // eviction before that fence is visible to the descriptor loads below.
    region.mem().fence(Ordering::Acquire);
    read_set(region, buf)
}

/// What [`retain`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Entries kept (in both pre and post, unchanged).
    pub kept: u64,
    /// Valid entries before the copy.
    pub pre: u64,
    /// Valid entries after the copy.
    pub post: u64,
    /// The newest kept entry.
    pub newest: Option<Descriptor>,
    /// The hints written into the image.
    pub hints: Hints,
}

impl Retained {
    /// Entries seen before the copy but not kept: evicted or overwritten during the copy.
    pub fn dropped(&self) -> u64 {
        self.pre - self.kept
    }

    /// `true` if entries existed before the copy but none survived it: the ring is too small
    /// for the copy time at the current commit rate. Keep the previous snapshot.
    pub fn is_starved(&self) -> bool {
        self.kept == 0 && self.pre > 0
    }
}

/// Rewrites the header and descriptor ring of a copied image so that it holds only entries
/// proven unmodified during the copy.
///
/// `meta` is the start of the image, at least [`Layout::meta_len`] bytes (header and
/// descriptor ring; the data ring and tail are not touched). Every slot gets the descriptor
/// from `pre` if `pre` and `post` agree on it, else is emptied. The static header is rewritten
/// from `layout` and the hints are set: `next_seq` above `live_next_seq` (read from the live
/// header after the copy) and above every valid seq in `pre` and `post`, `data_head` past the newest kept
/// entry, `epoch` as in the copy.
///
/// # Errors
///
/// [`RetainError`] if the image is too short, has a corrupt header or another layout than the
/// live region, or if `pre`/`post` do not cover the ring. Nothing is written then.
pub fn retain(
    meta: &mut [u8],
    layout: &Layout,
    pre: &[Descriptor],
    post: &[Descriptor],
    live_next_seq: u64,
) -> Result<Retained, RetainError> {
    let e = layout.entries;
    let needed = layout.meta_len();
    if (meta.len() as u64) < needed {
        return Err(RetainError::ImageTooShort {
            needed,
            got: meta.len(),
        });
    }
    for set in [pre, post] {
        if (set.len() as u64) < e {
            return Err(RetainError::BufferTooSmall {
                needed: e,
                got: set.len(),
            });
        }
    }
    // The static header is read from the image only to check it; it is then rewritten.
    // In bounds: `meta_len` covers at least the header page.
    let static_words = header_words(meta).unwrap_or_default();
    let found =
        Layout::from_header_words(&static_words, layout.region_len).map_err(RetainError::Layout)?;
    if found != *layout {
        return Err(RetainError::LayoutChanged);
    }
    let mut kept = 0;
    let mut newest: Option<Descriptor> = None;
    let mut n_pre = 0;
    let mut n_post = 0;
    // 1 + the highest seq seen published, before or after the copy.
    let mut seen = 0;
    for slot in 0..e {
        let p = pre.get(slot as usize).copied().unwrap_or_default();
        let q = post.get(slot as usize).copied().unwrap_or_default();
        let p_ok = p.is_valid_for(layout, slot);
        let q_ok = q.is_valid_for(layout, slot);
        n_pre += u64::from(p_ok);
        n_post += u64::from(q_ok);
        for (ok, d) in [(p_ok, p), (q_ok, q)] {
            if ok {
                seen = seen.max(d.seq + 1);
            }
        }
        let keep = p_ok && p == q;
        let d = if keep { p } else { Descriptor::EMPTY };
        if keep {
            kept += 1;
            if newest.is_none_or(|n| d.seq > n.seq) {
                newest = Some(d);
            }
        }
        let w = layout.desc_word(slot);
        write_word(meta, w + desc::SEQ, d.seq);
        write_word(meta, w + desc::OFFSET, d.offset);
        write_word(meta, w + desc::LENGTH, d.length);
        write_word(meta, w + desc::RESERVED, 0);
    }
    for (i, v) in layout.header_words().into_iter().enumerate() {
        write_word(meta, i, v);
    }
    let copied = Hints::read_bytes(meta);
    let hints = Hints {
        // Every seq the host saw published stays used after a restore. The live hint alone is
        // not enough: the writer stores it only after publishing, so `post` may hold a seq the
        // hint read after the copy does not cover yet (found by the loom crash model).
        next_seq: live_next_seq
            .max(newest.map_or(0, |d| d.seq + 1))
            .max(seen)
            .max(copied.next_seq)
            .max(1),
        data_head: newest.map_or(0, |d| d.end()),
        epoch: copied.epoch,
    };
    write_word(meta, word::NEXT_SEQ, hints.next_seq);
    write_word(meta, word::DATA_HEAD, hints.data_head);
    write_word(meta, word::EPOCH, hints.epoch);
    // Zero the rest of the header page (reserved words), so the image is canonical.
    for i in word::RESERVED {
        write_word(meta, i, 0);
    }
    Ok(Retained {
        kept,
        pre: n_pre,
        post: n_post,
        newest,
        hints,
    })
}

/// The valid entries of an image (for inspection and verification), in slot order.
pub fn image_entries<'a>(
    image: &'a [u8],
    layout: &'a Layout,
) -> impl Iterator<Item = Descriptor> + 'a {
    (0..layout.entries).filter_map(move |slot| read_descriptor_bytes(image, layout, slot))
}
