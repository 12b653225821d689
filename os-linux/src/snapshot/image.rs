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
//! The one reader of a queue image's parts is here too: [`read_queue_header`] (layout and
//! hints) and [`QueueSlots`] (each slot of the descriptor ring with its raw seq word and its
//! decoded descriptor, or why not); [`check_image`] and the host's `inspect` both read through
//! them. The ring is read in chunks of [`DESCRIPTOR_CHUNK_SLOTS`] descriptors, so memory
//! stays bounded whatever the entry count (up to 2^24 descriptors, 512 MiB of ring).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use shmsnap_core::format;
use shmsnap_core::triple::read_image;
use shmsnap_core::{Descriptor, Hints, Layout, LayoutError, Strategy, DESCRIPTOR_BYTES, PAGE_SIZE};

use super::error::{SnapshotError, SnapshotErrorKind};
use super::footer::SnapshotInfo;
use crate::copy::read_full_at;

/// Where [`check_image`] reads an image: positional reads of its bytes. A file (an fd) is
/// one; a chain's point, read through its base and deltas without being written anywhere,
/// is another (`chain::check_points`).
pub trait ImageBytes {
    /// Reads image bytes at `at` into `buf`; returns how many were read (fewer than
    /// `buf.len()` only at the end of the file).
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize>;
}

impl ImageBytes for BorrowedFd<'_> {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        read_full_at(self, buf, at)
    }
}

impl ImageBytes for std::fs::File {
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
    let (layout, hints) =
        read_queue_header(file, image_len).map_err(|e| e.into_snapshot(image_len))?;
    let (mut entries, mut newest) = (0u64, None::<Descriptor>);
    // Chunk by chunk rather than through `QueueSlots`' iterator: the same decode and checks
    // (`slot_state`), without building a `QueueSlot` per descriptor — this walk is most of a
    // small restore's work above the raw copy (benches/README.md, "the restore row").
    let mut slots = QueueSlots::new(file, layout, 0, layout.entries);
    while let Some(chunk) = slots.next_chunk() {
        let (first, bytes) = chunk.map_err(SnapshotError::io)?;
        for (slot, b) in (first..).zip(bytes.chunks_exact(DESCRIPTOR_BYTES as usize)) {
            let d = match slot_state(b, &layout, slot) {
                SlotState::Empty => continue,
                SlotState::NotValid => return Err(SnapshotErrorKind::BadDescriptor { slot }.into()),
                SlotState::Valid(d) => d,
            };
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

/// Why the header of a queue image gives no layout.
#[derive(Debug)]
pub enum HeaderError {
    /// The image is shorter than a region header.
    Short,
    /// The header's fields make no valid layout within the image.
    Layout(LayoutError),
    /// The file could not be read.
    Io(io::Error),
}

impl HeaderError {
    fn into_snapshot(self, image_len: u64) -> SnapshotError {
        match self {
            HeaderError::Short => SnapshotErrorKind::Layout(LayoutError::TooSmall {
                needed: PAGE_SIZE,
                available: image_len,
            })
            .into(),
            HeaderError::Layout(e) => SnapshotErrorKind::Layout(e).into(),
            HeaderError::Io(e) => SnapshotError::io(e),
        }
    }
}

/// The layout and hints of the queue image in `file` (an image of `image_len` bytes at offset
/// 0): `Layout::from_header_words` over the image's first page, with the whole image's length
/// as the memory available (the region must fit the image, not the page).
///
/// # Errors
///
/// [`HeaderError`]: short image, invalid layout, read error.
pub fn read_queue_header(
    file: &impl ImageBytes,
    image_len: u64,
) -> Result<(Layout, Hints), HeaderError> {
    let mut page = vec![0u8; PAGE_SIZE.min(image_len) as usize];
    read_exact_io(file, &mut page, 0).map_err(HeaderError::Io)?;
    let words = format::header_words(&page).ok_or(HeaderError::Short)?;
    let layout = Layout::from_header_words(&words, image_len).map_err(HeaderError::Layout)?;
    Ok((layout, Hints::read_bytes(&page)))
}

/// What a slot of the descriptor ring holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Seq word 0: no entry.
    Empty,
    /// A descriptor valid for its slot (`Descriptor::is_valid_for`).
    Valid(Descriptor),
    /// A non-zero seq word, but the descriptor is not valid for its slot (unsound image).
    NotValid,
}

/// One slot of a queue image's descriptor ring as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSlot {
    /// The slot, `< layout.entries`.
    pub slot: u64,
    /// Its raw seq word.
    pub seq_word: u64,
    /// Its descriptor, or why there is none.
    pub state: SlotState,
}

/// The slots `first, first + 1, ...` (`count` of them, at most `entries`, wrapping at
/// `entries`) of a queue image's descriptor ring, read in chunks of at most
/// [`DESCRIPTOR_CHUNK_SLOTS`] descriptors. After a read error it yields that error and ends.
#[derive(Debug)]
pub struct QueueSlots<'f, F: ImageBytes + ?Sized> {
    file: &'f F,
    /// A validated layout: its ring lies inside the image, before the data ring.
    layout: Layout,
    /// Next slot, as an index `0..count` from `first`.
    next: u64,
    first: u64,
    /// `<= layout.entries`.
    count: u64,
    /// The chunk read last, and the index of its first slot.
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'f, F: ImageBytes + ?Sized> QueueSlots<'f, F> {
    /// The slots from `first` (taken modulo `entries`), `count` of them, of the image in
    /// `file` whose validated layout is `layout`.
    pub fn new(file: &'f F, layout: Layout, first: u64, count: u64) -> Self {
        QueueSlots {
            file,
            layout,
            next: 0,
            first: first.checked_rem(layout.entries).unwrap_or(0),
            count: count.min(layout.entries),
            buf: Vec::new(),
            buf_at: 0,
        }
    }

    /// The rest of the current chunk (read first if none is buffered), and the slot of its
    /// first descriptor; the iterator moves past it. The chunk's slots are consecutive (a
    /// chunk never wraps at `entries`); decode each 32-byte descriptor with [`slot_state`].
    /// After a read error it yields that error and ends, like the iterator.
    pub fn next_chunk(&mut self) -> Option<io::Result<(u64, &[u8])>> {
        let (slot, at) = match self.position()? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        self.next = self.buf_at + self.buf.len() as u64 / DESCRIPTOR_BYTES;
        Some(Ok((slot, &self.buf[at..])))
    }

    /// The slot of index `self.next` and where its descriptor starts in `buf` (its chunk read
    /// first if it is not buffered); `None` at the end. A read error ends the walk.
    fn position(&mut self) -> Option<io::Result<(u64, usize)>> {
        if self.next >= self.count {
            return None;
        }
        let in_buf = (self.next - self.buf_at) * DESCRIPTOR_BYTES;
        if self.buf.is_empty() || in_buf >= self.buf.len() as u64 {
            if let Err(e) = self.fill() {
                self.next = self.count;
                return Some(Err(e));
            }
        }
        let at = ((self.next - self.buf_at) * DESCRIPTOR_BYTES) as usize;
        Some(Ok(((self.first + self.next) % self.layout.entries, at)))
    }

    /// Reads the chunk that starts at index `self.next`: up to [`DESCRIPTOR_CHUNK_SLOTS`]
    /// slots, not past the end of the ring (the next chunk starts again at slot 0).
    fn fill(&mut self) -> io::Result<()> {
        let slot = (self.first + self.next) % self.layout.entries;
        let n = DESCRIPTOR_CHUNK_SLOTS
            .min(self.count - self.next)
            .min(self.layout.entries - slot);
        // At most 64 KiB: `n <= DESCRIPTOR_CHUNK_SLOTS`.
        self.buf.resize((n * DESCRIPTOR_BYTES) as usize, 0);
        read_exact_io(
            self.file,
            &mut self.buf,
            self.layout.desc_offset + slot * DESCRIPTOR_BYTES,
        )?;
        self.buf_at = self.next;
        Ok(())
    }
}

impl<F: ImageBytes + ?Sized> Iterator for QueueSlots<'_, F> {
    type Item = io::Result<QueueSlot>;

    fn next(&mut self) -> Option<Self::Item> {
        let (slot, at) = match self.position()? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let bytes = &self.buf[at..at + DESCRIPTOR_BYTES as usize];
        self.next += 1;
        let seq_word = Descriptor::from_bytes(bytes).seq;
        let state = slot_state(bytes, &self.layout, slot);
        Some(Ok(QueueSlot {
            slot,
            seq_word,
            state,
        }))
    }
}

/// What the 32-byte descriptor `bytes` read from `slot` of an image with `layout` holds.
#[inline]
pub fn slot_state(bytes: &[u8], layout: &Layout, slot: u64) -> SlotState {
    let d = Descriptor::from_bytes(bytes);
    if d.seq == 0 {
        SlotState::Empty
    } else if d.is_valid_for(layout, slot) {
        SlotState::Valid(d)
    } else {
        SlotState::NotValid
    }
}

fn read_exact_io(file: &(impl ImageBytes + ?Sized), buf: &mut [u8], at: u64) -> io::Result<()> {
    let got = file.read_at(buf, at)?;
    if got < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ends at {} inside the image", at + got as u64),
        ));
    }
    Ok(())
}

fn read_exact(file: &impl ImageBytes, buf: &mut [u8], at: u64) -> Result<(), SnapshotError> {
    read_exact_io(file, buf, at).map_err(SnapshotError::io)
}
