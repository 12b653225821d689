//! [`ChainError`]: what is wrong with a delta segment or a chain, and which file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::snapshot::SnapshotError;

/// The delta footer version this crate writes and the newest it reads (`docs/FORMAT.md`).
pub const DELTA_VERSION: u64 = 1;

/// Why a delta (or a chain) is unusable, or could not be written: the file, when known, and
/// what went wrong ([`ChainErrorKind`], matchable through [`ChainError::kind`]).
///
/// `Display` reads `delta <path>: <what went wrong>`.
#[derive(Debug)]
pub struct ChainError {
    /// The file the error is about; `None` only for errors of fd-based functions whose caller
    /// has not named the file.
    path: Option<PathBuf>,
    /// What went wrong.
    kind: ChainErrorKind,
}

/// What went wrong with a delta or a chain (the part of [`ChainError`] code matches on).
#[derive(Debug)]
#[non_exhaustive]
pub enum ChainErrorKind {
    /// An I/O error reading or writing the delta, the chain directory or the region.
    Io(io::Error),
    /// The base snapshot (or the image a restore produced) is unusable; the inner error
    /// names the file and says why. Boxed: a snapshot error is large and this one is rare.
    Base(Box<SnapshotError>),
    /// The file is shorter than a delta footer, or than the table + data + footer the footer
    /// announces (a delta cut short, e.g. by a power loss before it was synced).
    Truncated {
        /// Actual file length.
        len: u64,
        /// Length needed.
        needed: u64,
    },
    /// The last 128 bytes do not start with the delta magic `SHMSNAPD`.
    BadMagic,
    /// A delta footer version newer than this build understands (or the invalid version 0).
    FutureVersion {
        /// The version found.
        version: u64,
    },
    /// The footer's own CRC does not match: the footer is corrupt.
    FooterChecksum {
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over footer bytes 0..124.
        computed: u32,
    },
    /// A footer field out of its range (the field's name and value).
    BadField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The run table's CRC does not match.
    TableChecksum {
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over the table.
        computed: u32,
    },
    /// A run of the table is malformed (unaligned, empty, past the image, overlapping).
    BadRun {
        /// The run's index in the table.
        run: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The run data's CRC does not match: the delta is corrupt (nothing of it was kept).
    DataChecksum {
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over the data.
        computed: u32,
    },
    /// The delta belongs to another base: generation, image CRC, image length or strategy
    /// differ from the base it would be applied to.
    WrongBase {
        /// Which field differs.
        field: &'static str,
        /// The base's value.
        base: u64,
        /// The delta's value.
        delta: u64,
    },
    /// The delta does not follow its predecessor: its parent CRC is not the previous link's
    /// footer CRC (a delta from another chain of the same base generation).
    WrongParent {
        /// Position of the delta in the chain (1 = first delta).
        index: u64,
        /// The previous link's footer CRC.
        expected: u32,
        /// The parent CRC the delta records.
        found: u32,
    },
    /// The delta's name and footer disagree about its base generation or position.
    NameMismatch {
        /// `(generation, index)` from the file name.
        name: (u64, u64),
        /// `(generation, index)` from the footer.
        footer: (u64, u64),
    },
    /// The delta passes every CRC and links, but the image it yields (the point before it
    /// with its runs applied) fails the image check (`snapshot::check_image`: a queue's
    /// header and descriptors, a triple's meta): the chain ends before it, exactly as at a
    /// CRC mismatch. The inner error says what the check found (it names no file).
    Image(Box<SnapshotError>),
    /// The chain directory holds something other than a regular file at a delta's name (a
    /// symbolic link, a FIFO, a directory, ...): deltas are read only from regular files of
    /// the chain directory, never through a link, so it ends the chain.
    NotRegularFile {
        /// What it is ("symbolic link", "FIFO", "directory", ...).
        file_type: &'static str,
    },
    /// A delta is missing from the chain: a later one exists but this position does not.
    Missing {
        /// The missing position.
        index: u64,
    },
    /// The delta name the writer wants already exists (a stale file of a reused generation, or
    /// a delta written by another host): write a full base instead.
    Occupied,
    /// A delta's runs do not cover the image offsets a caller asked for.
    NotInDelta {
        /// Image offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
    },
    /// No state of this chain is at or before the point asked for (the base itself is newer):
    /// try an older base.
    NotInChain {
        /// The point asked for, as text.
        at: String,
    },
    /// The image does not fit in the region it should be restored into.
    RegionTooSmall {
        /// Image length.
        image: u64,
        /// Region length.
        region: u64,
    },
}

impl ChainError {
    /// An error of `kind` about an unnamed file.
    pub(crate) fn new(kind: ChainErrorKind) -> Self {
        ChainError { path: None, kind }
    }

    /// An I/O error about an unnamed file.
    pub(crate) fn io(source: io::Error) -> Self {
        Self::new(ChainErrorKind::Io(source))
    }

    /// This error, about the file at `path` (replacing any path it named).
    #[must_use]
    pub fn at(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        self
    }

    /// The file this error is about, if known (for [`ChainErrorKind::Base`], the inner error
    /// names the base).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ChainErrorKind {
        &self.kind
    }

    /// What went wrong, by value.
    pub fn into_kind(self) -> ChainErrorKind {
        self.kind
    }
}

impl From<ChainErrorKind> for ChainError {
    fn from(kind: ChainErrorKind) -> Self {
        Self::new(kind)
    }
}

impl From<io::Error> for ChainError {
    fn from(source: io::Error) -> Self {
        Self::io(source)
    }
}

impl From<SnapshotError> for ChainError {
    fn from(e: SnapshotError) -> Self {
        Self::new(ChainErrorKind::Base(Box::new(e)))
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, &self.kind) {
            (_, ChainErrorKind::Base(e)) => write!(f, "{e}"),
            (Some(p), k) => write!(f, "delta {}: {k}", p.display()),
            (None, k) => write!(f, "delta: {k}"),
        }
    }
}

impl fmt::Display for ChainErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Base(e) => write!(f, "{e}"),
            Self::Truncated { len, needed } => write!(
                f,
                "truncated: the file has {len} bytes but needs {needed} (a delta cut short \
                 by a crash; it and every later delta are ignored)"
            ),
            Self::BadMagic => f.write_str(
                "no delta footer at the end (magic \"SHMSNAPD\" missing): not a delta, or cut \
                 short",
            ),
            Self::FutureVersion { version } => write!(
                f,
                "delta footer version {version} is newer than this build understands (up to \
                 {}); upgrade shmsnap",
                DELTA_VERSION
            ),
            Self::FooterChecksum { stored, computed } => write!(
                f,
                "footer is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}"
            ),
            Self::BadField { field, value } => {
                write!(f, "footer field {field} = {value} is out of range")
            }
            Self::TableChecksum { stored, computed } => write!(
                f,
                "run table is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}"
            ),
            Self::BadRun { run, why } => write!(f, "run {run} of the table: {why}"),
            Self::DataChecksum { stored, computed } => write!(
                f,
                "page data is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}; it and every later delta are ignored"
            ),
            Self::WrongBase { field, base, delta } => write!(
                f,
                "belongs to another base: its {field} is {delta:#x}, the base's is {base:#x}"
            ),
            Self::WrongParent {
                index,
                expected,
                found,
            } => write!(
                f,
                "delta {index} does not follow the previous link: its parent CRC is \
                 {found:#010x}, the previous link's footer CRC is {expected:#010x}"
            ),
            Self::NameMismatch { name, footer } => write!(
                f,
                "the name says base generation {} position {}, the footer says {} and {}",
                name.0, name.1, footer.0, footer.1
            ),
            Self::Image(e) => write!(
                f,
                "its CRCs match, but applied it gives an image that fails the image check \
                 ({}); it and every later delta are ignored",
                e.kind()
            ),
            Self::NotRegularFile { file_type } => write!(
                f,
                "is a {file_type}, not a regular file: deltas are read only from regular \
                 files of the chain directory, never through a link; it and every later \
                 delta are ignored"
            ),
            Self::Missing { index } => write!(
                f,
                "delta {index} of the chain is missing (a later one exists); the chain ends \
                 before it"
            ),
            Self::Occupied => {
                f.write_str("a file of that name already exists; write a full base instead")
            }
            Self::NotInDelta { offset, len } => write!(
                f,
                "image bytes {offset}..{} are not all inside the delta's runs",
                offset.saturating_add(*len)
            ),
            Self::NotInChain { at } => write!(
                f,
                "no state of this chain is at or before {at}; try an older base generation"
            ),
            Self::RegionTooSmall { image, region } => write!(
                f,
                "the image ({image} bytes) does not fit the region ({region} bytes)"
            ),
        }
    }
}

impl std::error::Error for ChainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ChainErrorKind::Io(e) => Some(e),
            ChainErrorKind::Base(e) | ChainErrorKind::Image(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<ChainError> for io::Error {
    fn from(e: ChainError) -> io::Error {
        let kind = match &e.kind {
            ChainErrorKind::Io(source) => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
