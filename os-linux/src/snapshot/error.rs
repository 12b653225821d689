//! [`SnapshotError`]: what is wrong with a snapshot file, and which file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use shmsnap_core::LayoutError;

/// The footer's magic: the last 56 bytes of every snapshot file start with it.
pub const MAGIC: [u8; 8] = *b"SHMSNAPF";
/// The footer version this crate writes and the newest it reads.
pub const FOOTER_VERSION: u64 = 1;

/// Why a file is not a usable snapshot (or could not be written): the file, when known, and
/// what went wrong ([`SnapshotErrorKind`], matchable through [`SnapshotError::kind`]).
///
/// Functions that take a path name it in every error; functions that take a bare fd cannot,
/// and their callers name the file with [`SnapshotError::at`]. `Display` reads
/// `snapshot <path>: <what went wrong>`.
#[derive(Debug)]
pub struct SnapshotError {
    /// The file the error is about; `None` only for errors of fd-based functions whose caller
    /// has not named the file.
    path: Option<PathBuf>,
    /// What went wrong.
    kind: SnapshotErrorKind,
}

/// What went wrong with a snapshot file (the part of [`SnapshotError`] that code matches on).
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotErrorKind {
    /// An I/O error while reading or writing the file or the region.
    Io(io::Error),
    /// The path names something other than a regular file (a FIFO, a device, a directory,
    /// a socket): it is refused without being read.
    NotRegularFile {
        /// What it is instead ("FIFO", "directory", ...).
        file_type: &'static str,
    },
    /// The file is shorter than a footer, or than the image plus footer it announces.
    Truncated {
        /// Actual file length.
        len: u64,
        /// Length needed.
        needed: u64,
    },
    /// The last 56 bytes do not start with [`MAGIC`]: not a snapshot (or cut short).
    BadMagic,
    /// A footer version newer than this build understands (or the invalid version 0).
    FutureVersion {
        /// The version found.
        version: u64,
    },
    /// The footer's own CRC does not match: the footer is corrupt.
    FooterChecksum {
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over footer bytes 0..52.
        computed: u32,
    },
    /// The footer's image length is zero or not a multiple of 8 bytes: no region can be
    /// mapped at that size, so the image could never be restored.
    ImageLength {
        /// Image length recorded in the footer.
        image_len: u64,
    },
    /// The file holds more bytes before the footer than the footer's image length.
    ImageLengthMismatch {
        /// Bytes before the footer in the file.
        file: u64,
        /// Image length recorded in the footer.
        footer: u64,
    },
    /// The image's CRC does not match: the image is corrupt.
    ImageChecksum {
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over the image.
        computed: u32,
    },
    /// A queue image whose region header is unusable (bad checksum, inconsistent fields,
    /// a layout longer than the image, never configured).
    Layout(LayoutError),
    /// A queue image with a descriptor that is neither empty nor valid for its slot.
    BadDescriptor {
        /// The descriptor's slot.
        slot: u64,
    },
    /// A queue image with an entry at or above the header's `next_seq` hint (the writer
    /// would hand out its seq again).
    EntryPastNextSeq {
        /// The entry's seq.
        seq: u64,
        /// The header's `next_seq` hint.
        next_seq: u64,
    },
    /// A triple-buffer image whose meta (header, state page) is not what a host writes.
    TripleImage(shmsnap_core::triple::TripleError),
    /// The image does not fit in the region it should be restored into.
    RegionTooSmall {
        /// Image length.
        image: u64,
        /// Region length.
        region: u64,
    },
}

impl SnapshotError {
    /// An error of `kind` about an unnamed file.
    pub(crate) fn new(kind: SnapshotErrorKind) -> Self {
        SnapshotError { path: None, kind }
    }

    /// An I/O error about an unnamed file.
    pub(crate) fn io(source: io::Error) -> Self {
        Self::new(SnapshotErrorKind::Io(source))
    }

    /// This error, about the file at `path` (replacing any path it named).
    #[must_use]
    pub fn at(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }

    /// The file this error is about, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &SnapshotErrorKind {
        &self.kind
    }

    /// What went wrong, by value.
    pub fn into_kind(self) -> SnapshotErrorKind {
        self.kind
    }
}

impl From<SnapshotErrorKind> for SnapshotError {
    fn from(kind: SnapshotErrorKind) -> Self {
        Self::new(kind)
    }
}

impl From<io::Error> for SnapshotError {
    fn from(source: io::Error) -> Self {
        Self::io(source)
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "snapshot {}: {}", p.display(), self.kind),
            None => write!(f, "snapshot: {}", self.kind),
        }
    }
}

impl fmt::Display for SnapshotErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(source) => write!(f, "I/O error: {source}"),
            Self::NotRegularFile { file_type } => write!(
                f,
                "is a {file_type}, not a regular file; refusing to read it as a snapshot"
            ),
            Self::Truncated { len, needed } => write!(
                f,
                "truncated: the file has {len} bytes but needs {needed} \
                 (an interrupted copy? use an older generation)"
            ),
            Self::BadMagic => write!(
                f,
                "no shmsnap footer at the end (magic {:?} missing): not a snapshot file, \
                 or cut short",
                std::str::from_utf8(&MAGIC).unwrap_or("SHMSNAPF")
            ),
            Self::FutureVersion { version } => write!(
                f,
                "footer version {version} is newer than this build understands \
                 (up to {FOOTER_VERSION}); upgrade shmsnap"
            ),
            Self::FooterChecksum { stored, computed } => write!(
                f,
                "footer is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}"
            ),
            Self::ImageLength { image_len } => write!(
                f,
                "image length {image_len} is not a nonzero multiple of 8 bytes: \
                 no region of that size can be mapped, so it cannot be restored"
            ),
            Self::ImageLengthMismatch { file, footer } => write!(
                f,
                "the file holds {file} image bytes but the footer says {footer}"
            ),
            Self::ImageChecksum { stored, computed } => write!(
                f,
                "image is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}"
            ),
            Self::Layout(LayoutError::Unconfigured) => write!(
                f,
                "queue image: the region was never configured by a client \
                 (no magic in its header)"
            ),
            Self::Layout(e) => write!(f, "queue image: {e}"),
            Self::BadDescriptor { slot } => write!(
                f,
                "queue image: descriptor {slot} is neither empty nor valid"
            ),
            Self::EntryPastNextSeq { seq, next_seq } => write!(
                f,
                "queue image: entry {seq} is not below the next_seq hint {next_seq}"
            ),
            Self::TripleImage(e) => write!(f, "triple image: {e}"),
            Self::RegionTooSmall { image, region } => write!(
                f,
                "the image ({image} bytes) does not fit the region ({region} bytes); \
                 start with a region of at least {image} bytes"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            SnapshotErrorKind::Io(source) => Some(source),
            SnapshotErrorKind::Layout(e) => Some(e),
            SnapshotErrorKind::TripleImage(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> io::Error {
        let kind = match &e.kind {
            SnapshotErrorKind::Io(source) => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
