//! The host's validation of a snapshot: the pre/post sandwich (DESIGN §5.3).
//!
//! ```text
//! pre  = PreCopy::read(live)       valid descriptors before the copy
//! copy the region (kernel copy or word by word)
//! pre.finish(copy):                Acquire fence, then valid descriptors after the copy (post),
//!                                  the live next_seq hint, and
//!   retain(copy, pre, post, ...)   keep pre ∩ post, empty every other descriptor, fix hints
//! ```
//!
//! An entry in `pre` was published before the copy began, so the copy saw its bytes or later
//! ones. Any later store into its bytes is preceded, in the writer, by emptying its seq and a
//! Release fence; if the copy saw such a store, the Acquire fence in [`PreCopy::finish`] makes
//! that emptying visible, so the entry is not in `post`. Hence every kept entry's bytes in the
//! copy are exactly what was committed — and the same holds for tail units frozen by it.
//!
//! The order is a type: [`PreCopy`] is the only way to read `pre`, and only its `finish` reads
//! `post`, so a caller cannot read `post` before the copy, skip the fence, or forget the post
//! check. [`retain`] stays public as the pure rewrite of a copied image over arbitrary
//! `pre`/`post` sets: the fuzz target `retain_arbitrary` drives it with hostile input, and the
//! broken-twin models use it to build a host without the post check.

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

/// A snapshot in progress: the descriptors read before the copy (`pre`), waiting for the copy
/// to end. Only [`finish`](PreCopy::finish) consumes it, and `finish` takes every later step
/// itself in the order the proof needs — the way a seqlock's optimistic-read stamp is consumed
/// by its validation (crossbeam's `SeqLock::optimistic_read` / `validate_read`).
///
/// ```text
/// let pre = PreCopy::read(&region, &mut pre_buf, &mut post_buf)?;   // pre
/// copy the region (kernel copy, word by word, ...) into an image
/// let kept = pre.finish(&mut image[..meta_len])?;    // Acquire fence, post, next_seq, retain
/// ```
///
/// Dropping it abandons the snapshot; nothing was written anywhere.
#[derive(Debug)]
#[must_use = "a snapshot proves nothing until `finish` has read `post` and run `retain`"]
pub struct PreCopy<'m, 'b, M: WordMemory + ?Sized> {
    region: Region<'m, M>,
    /// Valid descriptors before the copy, by slot.
    pre: DescriptorSet<'b>,
    /// Storage for the descriptors read after the copy (at least `E`, checked by `read`).
    post_buf: &'b mut [Descriptor],
}

impl<'m, 'b, M: WordMemory + ?Sized> PreCopy<'m, 'b, M> {
    /// Reads the valid descriptors of the live region before the copy (`pre`).
    ///
    /// `pre_buf` and `post_buf` are caller storage of at least `E` descriptors each (the host
    /// never allocates); after [`finish`](PreCopy::finish), `post_buf` holds the descriptors
    /// read after the copy, by slot.
    ///
    /// # Errors
    ///
    /// [`RetainError::BufferTooSmall`] if either buffer holds fewer than `E` descriptors
    /// (checked before anything is read, so a snapshot never fails after its copy for that).
    pub fn read(
        region: &Region<'m, M>,
        pre_buf: &'b mut [Descriptor],
        post_buf: &'b mut [Descriptor],
    ) -> Result<Self, RetainError> {
        let e = region.layout().entries;
        if (post_buf.len() as u64) < e {
            return Err(RetainError::BufferTooSmall {
                needed: e,
                got: post_buf.len(),
            });
        }
        let pre = read_set(region, pre_buf)?;
        Ok(PreCopy {
            region: *region,
            pre,
            post_buf,
        })
    }

    /// The descriptors read before the copy (for example, to skip a region with no entry).
    pub fn pre(&self) -> &DescriptorSet<'b> {
        &self.pre
    }

    /// The layout of the live region.
    pub fn layout(&self) -> &Layout {
        self.region.layout()
    }

    /// Ends the snapshot once the copy is complete: issues the Acquire fence that ends the
    /// copy, reads the descriptors again (`post`), reads the live `next_seq` hint, and runs
    /// [`retain`] on `meta`, the start of the copied image (at least [`Layout::meta_len`]
    /// bytes: header and descriptor ring).
    ///
    /// Every entry kept in `meta` was in `pre` and unchanged in `post`, so its bytes in the copy
    /// (and those of tail units frozen by it) are exactly what was committed (module docs).
    ///
    /// # Errors
    ///
    /// As [`retain`]: the image is too short, its header is corrupt, or its layout is not the
    /// live region's. Nothing is written into `meta` then.
    pub fn finish(self, meta: &mut [u8]) -> Result<Retained, RetainError> {
        self.finish_where(meta, |_| true)
    }

    /// [`finish`](PreCopy::finish) for a copy that may have left some entries' bytes out (an
    /// incremental snapshot that copied the newest entries first and stopped, DESIGN §11):
    /// an entry of `pre ∩ post` is kept only if `copied` says every byte of it in the image is
    /// one this copy read (or one the caller can vouch for otherwise); the others are emptied
    /// like entries `post` dropped. The fence, `post` and the hint are read exactly as in
    /// `finish`, and every seq seen in `pre` and `post` still bounds `next_seq` from below.
    ///
    /// # Errors
    ///
    /// As [`finish`](PreCopy::finish).
    pub fn finish_where(
        self,
        meta: &mut [u8],
        copied: impl Fn(&Descriptor) -> bool,
    ) -> Result<Retained, RetainError> {
        let PreCopy {
            region,
            pre,
            post_buf,
        } = self;
        // Acquire: if the copy read any byte stored after a writer's Release fence (in
        // `Writer::begin`), every eviction before that fence is visible to the descriptor
        // loads below, so a slot whose bytes the copy may have seen overwritten is not in
        // `post` with its old descriptor.
        // (The Acquire fence inside each seqlock descriptor read would also order the copy
        // before the re-load of seq: removing this one is not caught by the models. This
        // fence is the proof's step, stated where the proof needs it, at one per snapshot.)
        region.mem().fence(Ordering::Acquire);
        let post = read_set(&region, post_buf)?;
        // Relaxed: a hint, read after `post`; `retain` also covers every seq seen in `pre` and
        // `post`, since the writer stores the hint only after publishing.
        let live_next_seq = region.hints().next_seq;
        retain_where(
            meta,
            region.layout(),
            pre.slots(),
            post.slots(),
            live_next_seq,
            copied,
        )
    }
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
    /// The live `next_seq` hint read after the copy (compared with the hint before the copy,
    /// the commits made during it).
    pub live_next_seq: u64,
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
/// A host takes snapshots with [`PreCopy`], whose `finish` reads `post` and `live_next_seq` in
/// the order the proof needs and then calls this; `retain` itself is the pure rewrite, for
/// fuzzing over arbitrary sets and for models of broken hosts.
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
    retain_where(meta, layout, pre, post, live_next_seq, |_| true)
}

/// [`retain`] that also empties every entry of `pre ∩ post` for which `copied` is `false`
/// (its bytes were not all copied: [`PreCopy::finish_where`]). `copied` only ever removes
/// entries: the hints are computed as in `retain` (every seq seen in `pre` and `post`
/// still bounds `next_seq`), with `data_head` past the newest entry kept.
///
/// # Errors
///
/// As [`retain`].
pub fn retain_where(
    meta: &mut [u8],
    layout: &Layout,
    pre: &[Descriptor],
    post: &[Descriptor],
    live_next_seq: u64,
    copied: impl Fn(&Descriptor) -> bool,
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
        let keep = p_ok && p == q && copied(&p);
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
    // Zero the reserved words, the host status area, the request word and the claim word, so
    // the image is canonical: an image says nothing about durability (the restoring host
    // publishes what it holds, DESIGN §14), a stale request must not outlive a restore, and
    // the writer that held the live region does not hold the restored one.
    for i in word::RESERVED.chain(crate::status::canonical_words()) {
        write_word(meta, i, 0);
    }
    Ok(Retained {
        kept,
        pre: n_pre,
        post: n_post,
        newest,
        hints,
        live_next_seq,
    })
}

/// The valid entries of an image (for inspection and verification), in slot order.
pub fn image_entries<'a>(
    image: &'a [u8],
    layout: &'a Layout,
) -> impl Iterator<Item = Descriptor> + 'a {
    (0..layout.entries).filter_map(move |slot| read_descriptor_bytes(image, layout, slot))
}
