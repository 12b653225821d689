//! The snapshot file: the region image followed by a fixed 56-byte footer.
//!
//! Byte-by-byte layout and compatibility rules: `os-linux/FOOTER.md`. In short (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"SHMSNAPF"` |
//! | 8 | 8 | footer version (1) |
//! | 16 | 8 | image length in bytes (a nonzero multiple of 8) |
//! | 24 | 8 | strategy code (0 exit/raw, 1 queue, 2 triple) |
//! | 32 | 8 | generation |
//! | 40 | 8 | wall-clock time, ns since the Unix epoch |
//! | 48 | 4 | CRC-32C of the image |
//! | 52 | 4 | CRC-32C of footer bytes 0..52 |
//!
//! | module | idea |
//! |---|---|
//! | `footer` | the footer's fields: [`encode_footer`], [`decode_footer`], [`image_len_ok`] |
//! | `crc` | [`image_crc32c`]: CRC-32C over data extents, holes folded in, bounded memory |
//! | `image` | [`check_image`]: the one image check (queue header and descriptors), streamed |
//! | `file` | [`open`] without blocking, [`write_snapshot`], [`verify`], [`restore_into`] |
//! | `error` | [`SnapshotError`] = the file's path + a matchable [`SnapshotErrorKind`] |
//!
//! [`verify`] checks everything without writing anything — footer, image CRC, then
//! [`check_image`] — and [`restore_into`] runs the same checks in the same order while it
//! copies (one read of the data: each chunk is CRC'd and written to the memfd), emptying the
//! memfd again if any fails, so every file `verify` accepts is one `restore_into` restores and
//! a file it refuses leaves nothing applied.
//! Nothing here panics on file content: every malformed file is a [`SnapshotError`], and the
//! `*_path` functions name the file in every error.

mod crc;
mod error;
mod file;
mod footer;
mod image;

pub(crate) use crc::{crc32c_combine, zeros_crc32c};
pub use crc::{image_crc32c, CRC_CHUNK};
pub use error::{SnapshotError, SnapshotErrorKind};
pub(crate) use file::file_type_name;
pub use file::{
    open, read_footer, read_footer_path, restore_into, restore_path, verify, verify_entries,
    verify_path, write_footer, write_snapshot,
};
pub use footer::{
    decode_footer, encode_footer, image_len_ok, SnapshotInfo, SnapshotMeta, FOOTER_LEN,
    FOOTER_VERSION, MAGIC,
};
pub(crate) use image::check_image_in;
pub use image::{
    check_image, read_queue_header, slot_state, HeaderError, ImageBytes, ImageSummary, QueueSlot,
    QueueSlots, SlotState, DESCRIPTOR_CHUNK_SLOTS,
};
