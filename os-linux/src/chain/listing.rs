//! Reading a chain: the base's footer, then each delta's footer, table and links, in order,
//! up to the first one that is missing, torn, corrupt or chained elsewhere.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use shmsnap_core::{Hints, Strategy, PAGE_SIZE};

use super::error::{ChainError, ChainErrorKind};
use super::format::{
    decode_delta_footer, decode_table, delta_name, parse_delta_name, DeltaFooter, Run,
    DELTA_FOOTER_LEN,
};
use super::write::{open_chain_dir, Tip};
use crate::copy::{file_len, read_full_at};
use crate::persist::dir_names;
use crate::snapshot::{self, file_type_name, SnapshotInfo};

/// Which checks a reader makes. Everything public makes all of them; tests turn one off to
/// show that a test catches its absence (the broken twins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checks {
    /// A delta's base fields and parent CRC must match the link before it.
    pub(crate) link: bool,
    /// A delta's data must match its data CRC.
    pub(crate) data_crc: bool,
}

impl Checks {
    pub(crate) const ALL: Checks = Checks {
        link: true,
        data_crc: true,
    };
}

/// One delta of a chain: its file, footer and (validated) runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaEntry {
    /// The file.
    pub path: PathBuf,
    /// Its footer.
    pub footer: DeltaFooter,
    /// Its runs.
    pub runs: Vec<Run>,
}

impl DeltaEntry {
    /// Pages of data it carries (granules of 4096 bytes, rounded up).
    pub fn pages(&self) -> u64 {
        self.footer.data_len.div_ceil(PAGE_SIZE)
    }
}

/// A base and the correctly chained prefix of its deltas, as far as footers, tables and
/// links tell; [`check_points`](ChainListing::check_points) then ends it at the first link
/// whose data CRC or point's image check fails (what `verify`, `inspect` and every restore
/// use).
#[derive(Debug)]
pub struct ChainListing {
    /// The base snapshot file.
    pub base_path: PathBuf,
    /// Its footer (the image CRC is checked at restore and by `verify_chain`).
    pub base: SnapshotInfo,
    /// The base image's `next_seq` hint for a queue image (read from its header, not yet
    /// verified), else 0.
    pub base_next_seq: u64,
    /// Deltas 1..=n of the chain, each chained to the one before.
    pub deltas: Vec<DeltaEntry>,
    /// Why the chain ends after `deltas` (naming the file); `None` if no later delta of this
    /// base exists.
    pub stop: Option<ChainError>,
    /// Deltas of this base after the stop: never applied.
    pub ignored: Vec<PathBuf>,
}

/// A point of a chain: which state to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// The newest state (the whole correctly chained prefix).
    Latest,
    /// The base and its first `n` deltas (at most the chain's length).
    Deltas(u64),
    /// The newest state holding no entry with a seq above this one (by the `next_seq` hints).
    Seq(u64),
    /// The newest state taken at or before this wall-clock time (ns since the Unix epoch).
    Time(u64),
}

impl ChainListing {
    /// Reads the footer of `base` and every delta of its generation in `chain_dir`
    /// ([`chain_dir`](super::chain_dir) of the target), checking each delta's footer, table
    /// and links, stopping at the first bad one.
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::Base`] if the base's footer is unusable; I/O errors reading the
    /// chain directory. A bad delta is no error: it ends the chain ([`ChainListing::stop`]).
    pub fn load(base: &Path, chain_dir: &Path) -> Result<ChainListing, ChainError> {
        Self::load_with(base, chain_dir, Checks::ALL)
    }

    pub(crate) fn load_with(
        base: &Path,
        chain_dir: &Path,
        checks: Checks,
    ) -> Result<ChainListing, ChainError> {
        let file = snapshot::open(base)?;
        let info = snapshot::read_footer(&file).map_err(|e| e.at(base))?;
        let base_next_seq = base_next_seq(&file, &info).map_err(|e| ChainError::io(e).at(base))?;
        let mut listing = ChainListing {
            base_path: base.to_path_buf(),
            base: info,
            base_next_seq,
            deltas: Vec::new(),
            stop: None,
            ignored: Vec::new(),
        };
        let dir = match open_chain_dir(chain_dir, false) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(ChainError::io(e).at(chain_dir)),
        };
        let mut found: Vec<(u64, PathBuf)> = dir_names(&dir)
            .map_err(|e| ChainError::io(e).at(chain_dir))?
            .into_iter()
            .filter_map(|n| {
                let (g, i) = parse_delta_name(n.as_bytes())?;
                (g == info.meta.generation).then(|| (i, chain_dir.join(&n)))
            })
            .collect();
        found.sort();
        let mut tip = Tip::of_base(&info);
        for (n, (index, path)) in found.iter().enumerate() {
            let expected = tip.index + 1;
            let step = if *index != expected {
                let missing = chain_dir.join(delta_name(info.meta.generation, expected));
                Err(ChainError::from(ChainErrorKind::Missing { index: expected }).at(&missing))
            } else {
                read_link(path, &tip, checks)
            };
            match step {
                Ok(entry) => {
                    tip = Tip::of_delta(&entry.footer);
                    listing.deltas.push(entry);
                }
                Err(e) => {
                    listing.stop = Some(e);
                    listing.ignored = found[n..].iter().map(|(_, p)| p.clone()).collect();
                    break;
                }
            }
        }
        Ok(listing)
    }

    /// The snapshot time (ns since the Unix epoch) of the point after `k` deltas: the base's
    /// for 0, delta `k`'s footer time otherwise; `None` for a `k` past the listed deltas.
    pub fn point_time(&self, k: usize) -> Option<u64> {
        match k.checked_sub(1) {
            None => Some(self.base.meta.unix_time_ns),
            Some(j) => self.deltas.get(j).map(|d| d.footer.unix_time_ns),
        }
    }

    /// The snapshot time of the newest listed point (the base with every listed delta).
    pub fn newest_time(&self) -> u64 {
        self.deltas
            .last()
            .map_or(self.base.meta.unix_time_ns, |d| d.footer.unix_time_ns)
    }

    /// The tip of the listed chain (what a new delta would chain onto).
    pub fn tip(&self) -> Tip {
        self.deltas
            .last()
            .map_or_else(|| Tip::of_base(&self.base), |d| Tip::of_delta(&d.footer))
    }

    /// How many deltas the state at `at` applies.
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::NotInChain`] if even the base is past `at` (or `Deltas(n)` asks for
    /// more deltas than the chain has).
    pub fn select(&self, at: At) -> Result<usize, ChainError> {
        let none = || {
            ChainError::from(ChainErrorKind::NotInChain {
                at: format!("{at:?}"),
            })
            .at(&self.base_path)
        };
        let states = self.deltas.iter().map(|d| &d.footer);
        match at {
            At::Latest => Ok(self.deltas.len()),
            At::Deltas(n) => usize::try_from(n)
                .ok()
                .filter(|&n| n <= self.deltas.len())
                .ok_or_else(none),
            At::Seq(seq) => {
                let ok = |next: u64| next <= seq.saturating_add(1);
                if !ok(self.base_next_seq) {
                    return Err(none());
                }
                Ok(states.take_while(|f| ok(f.next_seq)).count())
            }
            At::Time(t) => {
                if self.base.meta.unix_time_ns > t {
                    return Err(none());
                }
                Ok(states.take_while(|f| f.unix_time_ns <= t).count())
            }
        }
    }

    /// Ends the chain before delta position `j` (0-based in `deltas`) because of `why`.
    pub(crate) fn cut(&mut self, j: usize, why: ChainError) {
        let mut later: Vec<PathBuf> = self.deltas.drain(j..).map(|d| d.path).collect();
        later.append(&mut self.ignored);
        self.ignored = later;
        self.stop = Some(why);
    }
}

/// `true` if `e` says this process ran out of file descriptors (every delta of a chain is
/// open while it is checked or restored): then the chain is not cut there, the whole
/// operation fails, rather than silently dropping the newer deltas.
pub(crate) fn out_of_fds(e: &ChainError) -> bool {
    let no_fds = [Errno::MFILE, Errno::NFILE].map(|n| Some(n.raw_os_error()));
    matches!(e.kind(), ChainErrorKind::Io(io) if no_fds.contains(&io.raw_os_error()))
}

/// `open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)` then `fstat`—opens a delta
/// for reading, refusing anything but a regular file without blocking or reading it: a
/// symbolic link is not followed (a delta is a file of the chain directory, not whatever a
/// link there points to), a FIFO does not block the open (`O_NONBLOCK`), a directory or
/// device is refused by type ([`ChainErrorKind::NotRegularFile`]). Errors name the file.
///
/// # References
///  - [Linux `open`](https://man7.org/linux/man-pages/man2/open.2.html)
///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
///
/// # Errors
///
/// [`ChainErrorKind::NotRegularFile`]; [`ChainErrorKind::Io`] if it cannot be opened or
/// stat'ed.
pub fn open_delta(path: &Path) -> Result<File, ChainError> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let not_regular = |t: FileType| {
        ChainError::from(ChainErrorKind::NotRegularFile {
            file_type: file_type_name(t),
        })
        .at(path)
    };
    let fd = match rustix::io::retry_on_intr(|| rustix::fs::open(path, flags, Mode::empty())) {
        Ok(fd) => fd,
        // ELOOP: the last component is a symbolic link (or a path of too many links).
        Err(Errno::LOOP) => {
            return Err(match rustix::fs::lstat(path) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    not_regular(FileType::Symlink)
                }
                _ => ChainError::io(Errno::LOOP.into()).at(path),
            })
        }
        Err(e) => return Err(ChainError::io(e.into()).at(path)),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| ChainError::io(e.into()).at(path))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(File::from(fd)),
        other => Err(not_regular(other)),
    }
}

/// Reads and checks a delta's footer and run table (not its data): footer fields, file
/// length, table CRC, runs. Reads 128 bytes plus the table (at most one 16-byte run per
/// 4096 bytes of image, and never more than the file holds).
///
/// # Errors
///
/// [`ChainErrorKind::Truncated`], `BadMagic`, `FooterChecksum`, `FutureVersion`, `BadField`,
/// `TableChecksum`, `BadRun`, or `Io` (without a path: name it with [`ChainError::at`]).
pub fn read_delta(file: impl AsFd) -> Result<(DeltaFooter, Vec<Run>), ChainError> {
    let file = file.as_fd();
    let len = file_len(file)?;
    let flen = DELTA_FOOTER_LEN as u64;
    if len < flen {
        return Err(ChainErrorKind::Truncated { len, needed: flen }.into());
    }
    let mut b = [0u8; DELTA_FOOTER_LEN];
    if read_full_at(file, &mut b, len - flen)? < DELTA_FOOTER_LEN {
        return Err(ChainErrorKind::Truncated { len, needed: len }.into());
    }
    let footer = decode_delta_footer(&b)?;
    let needed = footer.file_len();
    if len < needed {
        return Err(ChainErrorKind::Truncated { len, needed }.into());
    }
    if len > needed {
        return Err(ChainErrorKind::BadField {
            field: "file length",
            value: len,
        }
        .into());
    }
    // At most the file's length: checked just above.
    let mut table = vec![0u8; footer.table_len() as usize];
    if read_full_at(file, &mut table, 0)? < table.len() {
        return Err(ChainErrorKind::Truncated { len, needed }.into());
    }
    let computed = crc_fast::crc32_iscsi(&table);
    if computed != footer.table_crc {
        return Err(ChainErrorKind::TableChecksum {
            stored: footer.table_crc,
            computed,
        }
        .into());
    }
    let runs = decode_table(&table, &footer)?;
    Ok((footer, runs))
}

/// Checks that the delta with `footer`, named `(generation, index)`, follows `tip`.
///
/// # Errors
///
/// [`ChainErrorKind::NameMismatch`], `WrongBase` or `WrongParent` (without a path).
pub fn check_link(tip: &Tip, footer: &DeltaFooter, name: (u64, u64)) -> Result<(), ChainError> {
    if name != (footer.base_generation, footer.index) {
        return Err(ChainErrorKind::NameMismatch {
            name,
            footer: (footer.base_generation, footer.index),
        }
        .into());
    }
    let fields = [
        ("generation", tip.base_generation, footer.base_generation),
        (
            "image CRC",
            u64::from(tip.base_image_crc),
            u64::from(footer.base_image_crc),
        ),
        ("image length", tip.image_len, footer.image_len),
        ("strategy", tip.strategy, footer.strategy),
    ];
    for (field, base, delta) in fields {
        if base != delta {
            return Err(ChainErrorKind::WrongBase { field, base, delta }.into());
        }
    }
    if footer.index != tip.index + 1 || footer.parent_crc != tip.footer_crc {
        return Err(ChainErrorKind::WrongParent {
            index: footer.index,
            expected: tip.footer_crc,
            found: footer.parent_crc,
        }
        .into());
    }
    Ok(())
}

/// Opens, reads and (with `checks.link`) links the delta at `path` after `tip`.
fn read_link(path: &Path, tip: &Tip, checks: Checks) -> Result<DeltaEntry, ChainError> {
    let file = open_delta(path)?;
    let (footer, runs) = read_delta(&file).map_err(|e| e.at(path))?;
    if checks.link {
        let name = path
            .file_name()
            .and_then(|n| parse_delta_name(n.as_bytes()))
            .unwrap_or((0, 0));
        check_link(tip, &footer, name).map_err(|e| e.at(path))?;
    }
    Ok(DeltaEntry {
        path: path.to_path_buf(),
        footer,
        runs,
    })
}

/// The `next_seq` hint in the header of a queue image (0 for other images or a short one).
fn base_next_seq(file: &File, info: &SnapshotInfo) -> io::Result<u64> {
    if Strategy::from_code(info.meta.strategy) != Some(Strategy::Queue) {
        return Ok(0);
    }
    let mut page = vec![0u8; PAGE_SIZE.min(info.image_len) as usize];
    let got = read_full_at(file, &mut page, 0)?;
    Ok(Hints::read_bytes(&page[..got]).next_seq)
}
