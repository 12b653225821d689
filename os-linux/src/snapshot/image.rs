//! The image check: what an image must satisfy, beyond its CRC, for a restore to be usable.
//!
//! One function, [`check_image`], that [`verify`](super::verify) (and through it
//! [`restore_into`](super::restore_into)) runs after the CRC, so a file that verifies is a file
//! that restores into a region a client can attach to. A queue image (footer strategy
//! [`Strategy::Queue`]) must have a valid region header that fits the image, and every
//! non-empty descriptor must be valid for its slot and below the header's `next_seq` hint.
//! A triple image ([`Strategy::Triple`]) must have meta that core's `triple::read_image`
//! accepts (a triple header that fits the image, exactly one READY buffer with a matching seq
//! word, every other state line zero). Any other image (the exit strategy's raw bytes, an
//! unknown code) is opaque: footer and CRC
//! are all there is to check.
//!
//! The descriptor ring is read in chunks of [`DESCRIPTOR_CHUNK_SLOTS`] descriptors, so memory
//! stays bounded whatever the entry count (up to 2^24 descriptors, 512 MiB of ring).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use shmsnap_core::format::{self, desc};
use shmsnap_core::triple::read_image;
use shmsnap_core::{Descriptor, Hints, Layout, LayoutError, Strategy, DESCRIPTOR_BYTES, PAGE_SIZE};

use super::error::{SnapshotError, SnapshotErrorKind};
use super::footer::SnapshotInfo;
use crate::copy::read_full_at;

/// Where [`check_image`] reads an image: positional reads of its bytes. A file (an fd) is
/// one; a chain's point, read through its base and deltas without being written anywhere,
/// is another (`chain::check_points`).
pub(crate) trait ImageBytes {
    /// Reads image bytes at `at` into `buf`; returns how many were read (fewer than
    /// `buf.len()` only at the end of the file).
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize>;
}

impl ImageBytes for BorrowedFd<'_> {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        read_full_at(self, buf, at)
    }
}

/// Descriptors read per `pread` by [`check_image`] (2048 × 32 bytes = 64 KiB).
pub const DESCRIPTOR_CHUNK_SLOTS: u64 = 2048;

/// What [`check_image`] found in a sound image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageSummary {
    /// An image this crate does not interpret (exit strategy, unknown strategy code).
    Opaque,
    /// A triple-buffer image (validated by `shmsnap_core::triple::read_image`).
    Triple(shmsnap_core::triple::TripleImage),
    /// A queue image.
    Queue {
        /// Its validated layout.
        layout: Layout,
        /// The header's hints.
        hints: Hints,
        /// Number of valid entries.
        entries: u64,
        /// The entry with the highest seq, if any.
        newest: Option<Descriptor>,
    },
}

/// Checks the image of a snapshot file whose footer is `info`: for a queue image, the region
/// header (checksum, fields, layout within `info.image_len`) and every descriptor; calls
/// `on_entry(slot, descriptor)` for each valid entry, in slot order. Other images pass as
/// [`ImageSummary::Opaque`]. Reads at most [`DESCRIPTOR_CHUNK_SLOTS`] descriptors (or one
/// page) at a time.
///
/// Does not check the footer or the CRC: [`verify`](super::verify) runs those first, then
/// this.
///
/// # Errors
///
/// [`SnapshotErrorKind::Layout`], [`SnapshotErrorKind::BadDescriptor`] or
/// [`SnapshotErrorKind::EntryPastNextSeq`] for the first problem in slot order;
/// [`SnapshotErrorKind::Io`] if the file cannot be read (all without a path).
pub fn check_image(
    file: impl AsFd,
    info: &SnapshotInfo,
    on_entry: impl FnMut(u64, Descriptor),
) -> Result<ImageSummary, SnapshotError> {
    check_image_in(&file.as_fd(), info, on_entry)
}

/// [`check_image`] over any [`ImageBytes`]: the one image check, whoever holds the bytes.
pub(crate) fn check_image_in(
    file: &impl ImageBytes,
    info: &SnapshotInfo,
    mut on_entry: impl FnMut(u64, Descriptor),
) -> Result<ImageSummary, SnapshotError> {
    match Strategy::from_code(info.meta.strategy) {
        Some(Strategy::Queue) => {}
        Some(Strategy::Triple) => return check_triple(file, info.image_len),
        _ => return Ok(ImageSummary::Opaque),
    }
    let image_len = info.image_len;
    let (layout, hints) = read_header(file, image_len)?;
    let chunk = DESCRIPTOR_CHUNK_SLOTS.min(layout.entries);
    // At most 64 KiB: `chunk <= DESCRIPTOR_CHUNK_SLOTS`.
    let mut buf = vec![0u8; (chunk * DESCRIPTOR_BYTES) as usize];
    let (mut entries, mut newest) = (0u64, None::<Descriptor>);
    let mut first = 0;
    while first < layout.entries {
        let n = chunk.min(layout.entries - first);
        let bytes = &mut buf[..(n * DESCRIPTOR_BYTES) as usize];
        // In the image: a valid layout's ring ends at `data_offset <= region_len <= image_len`.
        read_exact(file, bytes, layout.desc_offset + first * DESCRIPTOR_BYTES)?;
        for (i, desc) in bytes.chunks_exact(DESCRIPTOR_BYTES as usize).enumerate() {
            // Most slots of a big ring are empty: their seq word alone says so.
            if word(desc, desc::SEQ) == 0 {
                continue;
            }
            let slot = first + i as u64;
            let d = descriptor(desc);
            if !d.is_valid_for(&layout, slot) {
                return Err(SnapshotErrorKind::BadDescriptor { slot }.into());
            }
            if d.seq >= hints.next_seq {
                return Err(SnapshotErrorKind::EntryPastNextSeq {
                    seq: d.seq,
                    next_seq: hints.next_seq,
                }
                .into());
            }
            entries += 1;
            if newest.is_none_or(|m| d.seq > m.seq) {
                newest = Some(d);
            }
            on_entry(slot, d);
        }
        first += n;
    }
    Ok(ImageSummary::Queue {
        layout,
        hints,
        entries,
        newest,
    })
}

/// A triple image: its meta (header page and state page, two pages) through core's
/// `read_image`, with the whole image's length as the region the header must fit.
fn check_triple(file: &impl ImageBytes, image_len: u64) -> Result<ImageSummary, SnapshotError> {
    let mut meta = vec![0u8; (2 * PAGE_SIZE).min(image_len) as usize];
    read_exact(file, &mut meta, 0)?;
    read_image(&meta, image_len)
        .map(ImageSummary::Triple)
        .map_err(|e| SnapshotErrorKind::TripleImage(e).into())
}

/// The layout and hints of a queue image: `Layout::read_bytes` over the image's first page,
/// with the whole image's length as the memory available (the region must fit the image,
/// not the page).
fn read_header(file: &impl ImageBytes, image_len: u64) -> Result<(Layout, Hints), SnapshotError> {
    let mut page = vec![0u8; PAGE_SIZE.min(image_len) as usize];
    read_exact(file, &mut page, 0)?;
    let words =
        format::header_words(&page).ok_or(SnapshotErrorKind::Layout(LayoutError::TooSmall {
            needed: PAGE_SIZE,
            available: image_len,
        }))?;
    let layout = Layout::from_header_words(&words, image_len).map_err(SnapshotErrorKind::Layout)?;
    Ok((layout, Hints::read_bytes(&page)))
}

/// A descriptor from its 32 image bytes (words named by `shmsnap_core::format::desc`; core's
/// `read_descriptor_bytes` reads the same words from a whole image).
fn descriptor(b: &[u8]) -> Descriptor {
    Descriptor {
        seq: word(b, desc::SEQ),
        offset: word(b, desc::OFFSET),
        length: word(b, desc::LENGTH),
    }
}

/// Little-endian word `i` of `b` (0 past its end): `format::read_word`, inlined here because
/// the descriptor loop runs it for every slot of the ring (for every point of a chain).
#[inline]
fn word(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes)
}

fn read_exact(file: &impl ImageBytes, buf: &mut [u8], at: u64) -> Result<(), SnapshotError> {
    let got = file.read_at(buf, at).map_err(SnapshotError::io)?;
    if got < buf.len() {
        return Err(SnapshotError::io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ends at {} inside the image", at + got as u64),
        )));
    }
    Ok(())
}
