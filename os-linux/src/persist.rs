//! Atomic replacement of a file, keeping N previous generations, by one process at a time.
//!
//! A [`Persister`] owns an fd of the target's directory and an exclusive `flock` on
//! `<name>.lock` beside the target (created if missing, never written, never deleted). The
//! lock belongs to the open file description, so it dies with the process — a SIGKILLed
//! host leaves no stale lock — and a second `Persister` of the same target, in this process
//! or another, fails with [`StateError::Locked`]. Everything that assumes a single writer
//! (the generation shuffle, [`Persister::remove_stale_temps`]) is a method of `Persister`, so
//! it cannot run without the lock. (A child forked by any thread of the holder shares the
//! lock's open file description until its `exec`, where close-on-exec drops it: a lock
//! released just then stays held for that moment.)
//!
//! One persist is:
//!
//! 1. `openat(dir, ".<name>.tmp.<16 random hex>", O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
//!    O_RDWR, 0600)` — a [`TempFile`] guard that unlinks the file if dropped uncommitted;
//! 2. the caller writes the new content into it;
//! 3. `fdatasync(temp)`;
//! 4. the generation shuffle, by `renameat` and `linkat` between *generation names* only
//!    (`<name>.<i>`), so that every old generation has a generation name at every instant:
//!    the i-th newest existing backup moves to `<name>.<i+1>` (closing any gap a cut left),
//!    the one that leaves the set moves to `<name>.<keep+1>` (a generation name, never a temp
//!    name), then `linkat(<name>, <name>.1)`;
//! 5. `renameat(temp, <name>)` — the atomic switch;
//! 6. `fsync(dir)` — makes the switch durable;
//! 7. `unlinkat` of the generations past `keep`, *after* the durable point: freeing a large
//!    file's blocks (45–60 ms for 256 MiB on ext4) never delays the switch, and `rename` over
//!    the target never frees blocks because `<name>.1` still holds them.
//!    [`TempFile::commit`] runs it at once; [`TempFile::commit_durable`] returns at the
//!    durable point (step 6) and leaves it for [`Persister::drop_old`], so that a caller can
//!    tell who waits for the new file first (the host publishes its status, DESIGN §14). A
//!    generation left pending is unlinked by the next persist before it plans its shuffle.
//!
//! A cut at any point leaves `<name>` as the complete old or the complete new file, and every
//! generation `--keep` promised under a generation name (possibly with one gap, or one extra
//! generation past `keep`; the next persist closes the gap and removes the extra). A cut
//! between the link of step 4 and the switch leaves `<name>.1` as a second name of `<name>`;
//! the next persist sees that (same inode) and does not shuffle again. What a cut may leave
//! besides are `.<name>.tmp.*` files: uncommitted new content, never a generation, which
//! [`Persister::remove_stale_temps`] deletes.
//!
//! Why a named temp file and not `O_TMPFILE` + `linkat`: `linkat` cannot replace an existing
//! name, so an `O_TMPFILE` would still need a named link before the `rename`, via
//! `/proc/self/fd` (needs `/proc`) or `AT_EMPTY_PATH` (needs `CAP_DAC_READ_SEARCH`), and not
//! every filesystem supports `O_TMPFILE`. A random name created with `O_EXCL | O_NOFOLLOW`
//! cannot be pre-planted as a symlink, and the stale-temp sweep covers crashes.
//!
//! A target that is a symbolic link is refused ([`StateError::Symlink`]): replacing it
//! atomically would silently turn the link into a regular file. Name the real file instead.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::{retry_on_intr, Errno};

use crate::atomic_file::{crash_point, AtomicFile, Rule};
use crate::noreplace::NoReplace;

/// The largest `keep` a [`Persister`] accepts: a bound on the renames of one persist.
pub const MAX_KEEP: usize = 1000;

/// Why a [`Persister`] cannot be made for a target; carried inside the `io::Error` that
/// [`Persister::new`] returns (find it with [`StateError::of`]).
#[derive(Debug)]
pub enum StateError {
    /// Another `Persister` — usually another host process — holds the target's lock.
    Locked {
        /// The lock file (`<target>.lock`).
        lock: PathBuf,
        /// The holder's pid, from `/proc/locks`, when it can be found.
        holder: Option<u32>,
    },
    /// The target is a symbolic link (refused: see the [module docs](self)).
    Symlink {
        /// The target.
        path: PathBuf,
        /// Where the link points.
        points_to: PathBuf,
    },
    /// The target (or its lock file) exists but is not a regular file (a FIFO, a directory...).
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: FileType,
    },
    /// `keep` is larger than [`MAX_KEEP`].
    KeepTooLarge {
        /// The requested value.
        keep: usize,
    },
}

impl StateError {
    /// The `StateError` inside an `io::Error` from [`Persister::new`], if that is what it is.
    pub fn of(e: &io::Error) -> Option<&StateError> {
        e.get_ref()?.downcast_ref::<StateError>()
    }

    fn into_io(self) -> io::Error {
        let kind = match self {
            StateError::Locked { .. } => io::ErrorKind::WouldBlock,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, self)
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Locked { lock, holder } => {
                write!(f, "{} is locked by ", lock.display())?;
                match holder {
                    Some(pid) => write!(f, "process {pid}")?,
                    None => f.write_str("another process")?,
                }
                f.write_str(
                    ": another shmsnap host is using this state file; stop it first, or use \
                     another --state",
                )
            }
            StateError::Symlink { path, points_to } => write!(
                f,
                "{} is a symbolic link (to {}); shmsnap replaces the state file atomically and \
                 does not follow links: pass the real file as --state",
                path.display(),
                points_to.display()
            ),
            StateError::NotRegular { path, kind } => write!(
                f,
                "{} is a {kind:?}, not a regular file; move it away or use another --state",
                path.display()
            ),
            StateError::KeepTooLarge { keep } => {
                write!(f, "keep {keep} is larger than the maximum, {MAX_KEEP}")
            }
        }
    }
}

impl std::error::Error for StateError {}

/// Atomic replacement of one target file in one directory, by the holder of its lock.
#[derive(Debug)]
pub struct Persister {
    dir: OwnedFd,
    dir_path: PathBuf,
    name: OsString,
    /// Previous generations kept; `<= MAX_KEEP`.
    keep: usize,
    /// `<name>.lock`, holding our exclusive `flock` for the life of this value (released by
    /// the kernel when the fd closes, also when the process dies).
    _lock: OwnedFd,
    /// How names are given without replacing (the chain's deltas), detected once for the
    /// life of this value: this persister holds the lock, so it may use every fallback.
    no_replace: NoReplace,
    /// Generations past `keep` that a [`TempFile::commit_durable`] parked and did not unlink
    /// (step 7), by index; empty after [`Persister::drop_old`]. Invariant: each is past `keep`
    /// since the durable point of that commit — never a promised generation, never the target.
    pending: Mutex<Vec<usize>>,
}

/// Timings of one persist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// `fdatasync` of the temp file.
    pub sync: Duration,
    /// Generation shuffle + `rename` over the target.
    pub rename: Duration,
    /// `fsync` of the directory.
    pub dir_sync: Duration,
    /// `unlink` of the dropped generations (after the durable point).
    pub drop_old: Duration,
}

/// One existing generation of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// 0 for the target itself, `i` for `<target>.i`.
    pub index: usize,
    /// Full path.
    pub path: PathBuf,
}

impl Persister {
    /// `open(dir, O_DIRECTORY)`, `openat(dir, "<name>.lock", O_CREAT | O_NOFOLLOW)` and
    /// `flock(LOCK_EX | LOCK_NB)`—prepares atomic replacement of `target`, keeping `keep`
    /// previous generations (`<target>.1` newest .. `<target>.<keep>` oldest), as the only
    /// writer of `target`.
    ///
    /// # References
    ///  - [Linux `open`](https://man7.org/linux/man-pages/man2/open.2.html)
    ///  - [Linux `flock`](https://man7.org/linux/man-pages/man2/flock.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `target` has no file name (or it is `..`); a [`StateError`] inside
    /// the `io::Error` ([`StateError::of`]) if the target is locked (kind `WouldBlock`), is a
    /// symlink or not a regular file, or `keep > MAX_KEEP`; `open`'s errors for the directory
    /// and the lock file (`ENOENT`, `EACCES`, `ENOTDIR`, `EROFS`), naming the path.
    pub fn new(target: &Path, keep: usize) -> io::Result<Self> {
        if keep > MAX_KEEP {
            return Err(StateError::KeepTooLarge { keep }.into_io());
        }
        let name = match target.file_name() {
            Some(n) if n != ".." => n.to_os_string(),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} does not name a file", target.display()),
                ))
            }
        };
        let dir_path = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = rustix::fs::open(
            &dir_path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| annotate(e.into(), "open directory", &dir_path))?;
        check_regular_or_missing(&dir, &dir_path, &name)?;
        let mut lock_name = name.clone();
        lock_name.push(".lock");
        let lock = take_lock(&dir, &dir_path.join(&lock_name), &lock_name)?;
        Ok(Self {
            dir,
            dir_path,
            name,
            keep,
            _lock: lock,
            no_replace: NoReplace::new(),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The no-replace renamer of this state file's directories (`RENAME_NOREPLACE` or the
    /// fallback detected at its first failure). Its [`take_notice`](NoReplace::take_notice)
    /// says once that a fallback is in use, for the caller to log.
    pub fn no_replace(&self) -> &NoReplace {
        &self.no_replace
    }

    /// The target's path.
    pub fn target(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }

    fn generation_name(&self, i: usize) -> OsString {
        let mut n = self.name.clone();
        if i > 0 {
            n.push(format!(".{i}"));
        }
        n
    }

    fn temp_prefix(&self) -> OsString {
        let mut n = OsString::from(".");
        n.push(&self.name);
        n.push(".tmp.");
        n
    }

    /// `openat(dir, ".<name>.tmp.<random>", O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
    /// O_RDWR, 0600)`—starts a persist; write the new content into [`TempFile::file`], then
    /// [`TempFile::commit`]. Dropping the guard uncommitted removes the temp file.
    ///
    /// # References
    ///  - [Linux `openat`](https://man7.org/linux/man-pages/man2/openat.2.html)
    ///  - [Linux `getrandom`](https://man7.org/linux/man-pages/man2/getrandom.2.html)
    ///
    /// # Errors
    ///
    /// `openat`'s errors (`EACCES`, `ENOSPC`, `EROFS`, ...), naming the directory.
    pub fn begin(&self) -> io::Result<TempFile<'_>> {
        let inner = AtomicFile::create(self.dir.as_fd(), &self.dir_path, &self.temp_prefix())
            .map_err(|e| annotate(e, "create a temp file in", &self.dir_path))?;
        Ok(TempFile {
            persister: self,
            inner,
        })
    }

    /// Runs `write` on a new temp file and commits it if `write` succeeds; on any error the temp
    /// file is removed and the target is untouched.
    ///
    /// # Errors
    ///
    /// `write`'s error, or the errors of [`begin`](Persister::begin) and
    /// [`commit`](TempFile::commit).
    pub fn persist_with<T, E: From<io::Error>>(
        &self,
        write: impl FnOnce(&File) -> Result<T, E>,
    ) -> Result<(T, PersistStats), E> {
        let tmp = self.begin()?;
        let t = write(tmp.file())?;
        let stats = tmp.commit()?;
        Ok((t, stats))
    }

    /// `unlinkat` of every `.<name>.tmp.*` in the directory—leftovers of a crashed persist.
    /// Returns how many were removed.
    ///
    /// Only uncommitted new content ever carries a temp name (the generation shuffle moves
    /// generations between generation names only), so this never removes a generation. It
    /// is a method of the lock holder: no other process can be writing a temp file of the
    /// same target meanwhile.
    ///
    /// # References
    ///  - [Linux `getdents64`](https://man7.org/linux/man-pages/man2/getdents64.2.html)
    ///  - [Linux `unlinkat`](https://man7.org/linux/man-pages/man2/unlinkat.2.html)
    ///
    /// # Errors
    ///
    /// Errors reading the directory or unlinking (other than `ENOENT`).
    pub fn remove_stale_temps(&self) -> io::Result<usize> {
        let prefix = self.temp_prefix();
        let mut n = 0;
        for name in self.dir_names()? {
            if name.as_bytes().starts_with(prefix.as_bytes()) {
                match rustix::fs::unlinkat(&self.dir, name.as_os_str(), AtFlags::empty()) {
                    Ok(()) => n += 1,
                    Err(Errno::NOENT) => {}
                    Err(e) => {
                        return Err(annotate(
                            e.into(),
                            "remove stale temp file in",
                            &self.dir_path,
                        ))
                    }
                }
            }
        }
        Ok(n)
    }

    /// The existing generations, newest first: the target (index 0), then `<target>.1`, ...
    /// (gaps are skipped; names past `keep`, left by an earlier, larger `keep` or by a cut
    /// persist, are listed too until the next persist removes them).
    ///
    /// # Errors
    ///
    /// Errors reading the directory.
    pub fn generations(&self) -> io::Result<Vec<Generation>> {
        let names = generation_names(&self.dir, &self.name)
            .map_err(|e| annotate(e, "read directory", &self.dir_path))?;
        Ok(names
            .into_iter()
            .map(|(index, entry)| Generation {
                index,
                path: self.dir_path.join(entry),
            })
            .collect())
    }

    fn dir_names(&self) -> io::Result<Vec<OsString>> {
        dir_names(&self.dir).map_err(|e| annotate(e, "read directory", &self.dir_path))
    }

    /// `(st_dev, st_ino)` of generation `i`, `None` if it does not exist.
    fn identity(&self, i: usize) -> io::Result<Option<(u64, u64)>> {
        match rustix::fs::statat(
            &self.dir,
            self.generation_name(i).as_os_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some((st.st_dev, st.st_ino))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(annotate(e.into(), "stat a generation in", &self.dir_path)),
        }
    }

    /// The generation shuffle of step 4 for the current directory contents.
    fn plan(&self) -> io::Result<Plan> {
        let backups: Vec<usize> = self
            .generations()?
            .iter()
            .map(|g| g.index)
            .filter(|&i| i > 0)
            .collect();
        let target = self.identity(0)?;
        let one_is_target = target.is_some() && target == self.identity(1)?;
        Ok(Plan::new(
            self.keep,
            &backups,
            target.is_some(),
            one_is_target,
        ))
    }

    fn apply(&self, op: Op) -> io::Result<()> {
        let (what, r) = match op {
            Op::Rename(from, to) => (
                "rename a generation in",
                rustix::fs::renameat(
                    &self.dir,
                    self.generation_name(from).as_os_str(),
                    &self.dir,
                    self.generation_name(to).as_os_str(),
                ),
            ),
            Op::LinkTargetToOne => (
                "link the old target to .1 in",
                rustix::fs::linkat(
                    &self.dir,
                    self.generation_name(0).as_os_str(),
                    &self.dir,
                    self.generation_name(1).as_os_str(),
                    AtFlags::empty(),
                ),
            ),
            Op::Unlink(i) => (
                "remove a generation in",
                match rustix::fs::unlinkat(
                    &self.dir,
                    self.generation_name(i).as_os_str(),
                    AtFlags::empty(),
                ) {
                    Err(Errno::NOENT) => Ok(()),
                    r => r,
                },
            ),
        };
        r.map_err(|e| annotate(e.into(), what, &self.dir_path))?;
        crash_point::step()
    }

    /// Step 7 of the [module docs](self) for the last [`TempFile::commit_durable`]:
    /// `unlinkat` of the generations it left past `keep`. Returns how long it took (zero when
    /// nothing was pending). Call it once waiters were told the new file is durable; the next
    /// persist calls it too, before it plans, so nothing is left for long.
    ///
    /// # References
    ///  - [Linux `unlinkat`](https://man7.org/linux/man-pages/man2/unlinkat.2.html)
    ///
    /// # Errors
    ///
    /// `unlinkat`'s errors (other than `ENOENT`), naming the directory; the generations not
    /// yet removed stay past `keep` under their names, and the next persist's plan removes
    /// them (it unlinks every name past `keep`).
    pub fn drop_old(&self) -> io::Result<Duration> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if pending.is_empty() {
            return Ok(Duration::ZERO);
        }
        let t = Instant::now();
        for i in pending {
            self.apply(Op::Unlink(i))?;
        }
        Ok(t.elapsed())
    }

    /// Steps 4–6 of the module docs, for the synced temp file `tmp`; the unlinks of step 7
    /// are left pending ([`Persister::drop_old`]).
    fn switch(
        &self,
        tmp: &mut AtomicFile<BorrowedFd<'_>>,
        stats: &mut PersistStats,
    ) -> io::Result<()> {
        // A pending unlink of the last persist first: the plan must not see it as a backup
        // (it would rename over it and free its blocks before the switch).
        self.drop_old()?;
        let t = Instant::now();
        let plan = self.plan()?;
        for &op in &plan.before {
            self.apply(op)?;
        }
        tmp.rename(self.generation_name(0).as_os_str(), Rule::Replace)
            .map_err(|e| annotate(e, "rename the new snapshot into", &self.dir_path))?;
        stats.rename = t.elapsed();

        let t = Instant::now();
        tmp.sync_dir()
            .map_err(|e| annotate(e, "fsync directory", &self.dir_path))?;
        stats.dir_sync = t.elapsed();
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = plan.after;
        Ok(())
    }
}

/// `i` if `name` is `<target>.<i>`, the name of generation `i` of the state file named
/// `target`: decimal, `i >= 1`, no leading zero, fits `usize`.
pub fn generation_index(target: &[u8], name: &[u8]) -> Option<usize> {
    parse_index(name.strip_prefix(target)?.strip_prefix(b".")?)
}

/// The generations of the file `name` in `dir` — `(0, name)` if it exists, `(i, <name>.<i>)`
/// for each `<name>.<i>` — by index.
fn generation_names(dir: impl AsFd, name: &OsStr) -> io::Result<Vec<(usize, OsString)>> {
    let name = name.as_bytes();
    let mut out: Vec<(usize, OsString)> = dir_names(dir)?
        .into_iter()
        .filter_map(|entry| {
            let e = entry.as_bytes();
            let index = if e == name {
                Some(0)
            } else {
                generation_index(name, e)
            };
            Some((index?, entry))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The generations of `target` (the file itself, then `<target>.1`, `<target>.2`, … by
/// index), those that exist, read without a [`Persister`]'s lock (a host may rotate them
/// meanwhile: a reader checks what it read). Paths are `target` with the generation's file
/// name.
///
/// # Errors
///
/// Errors opening or reading `target`'s directory.
pub fn generations_of(target: &Path) -> io::Result<Vec<Generation>> {
    let Some(name) = target.file_name() else {
        let exists = target.symlink_metadata().is_ok();
        return Ok(exists
            .then(|| Generation {
                index: 0,
                path: target.to_path_buf(),
            })
            .into_iter()
            .collect());
    };
    let dir_path = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        dir_path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(generation_names(&dir, name)?
        .into_iter()
        .map(|(index, entry)| Generation {
            index,
            path: target.with_file_name(entry),
        })
        .collect())
}

/// The names in a directory.
///
/// # Errors
///
/// `getdents64`'s errors.
pub(crate) fn dir_names(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = d.read() {
        names.push(OsStr::from_bytes(entry?.file_name().to_bytes()).to_os_string());
    }
    Ok(names)
}

/// Parses the `<i>` of `<name>.<i>`: decimal, no leading zero, fits `usize`.
fn parse_index(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits[0] == b'0' {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Refuses a target that exists as anything but a regular file, without opening it (a FIFO
/// would block `open`).
fn check_regular_or_missing(dir: &OwnedFd, dir_path: &Path, name: &OsStr) -> io::Result<()> {
    let path = dir_path.join(name);
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(annotate(e.into(), "stat", &path)),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(()),
            FileType::Symlink => {
                let points_to = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map(|l| PathBuf::from(OsStr::from_bytes(l.as_bytes())))
                    .unwrap_or_else(|_| PathBuf::from("?"));
                Err(StateError::Symlink { path, points_to }.into_io())
            }
            kind => Err(StateError::NotRegular { path, kind }.into_io()),
        },
    }
}

/// Opens (creating it if missing) the lock file `name` in `dir` and takes an exclusive,
/// non-blocking `flock` on it.
fn take_lock(dir: &OwnedFd, path: &Path, name: &OsStr) -> io::Result<OwnedFd> {
    // O_NONBLOCK: a FIFO planted at the lock's name must not block the open.
    let fd = retry_on_intr(|| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
    })
    .map_err(|e| annotate(e.into(), "open the lock file", path))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| annotate(e.into(), "stat", path))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(StateError::NotRegular {
            path: path.to_path_buf(),
            kind,
        }
        .into_io());
    }
    match retry_on_intr(|| rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive)) {
        Ok(()) => Ok(fd),
        Err(Errno::WOULDBLOCK) => Err(StateError::Locked {
            lock: path.to_path_buf(),
            holder: lock_holder(st.st_dev, st.st_ino),
        }
        .into_io()),
        Err(e) => Err(annotate(e.into(), "lock", path)),
    }
}

/// The pid holding an `flock` on the file `(dev, ino)`, from `/proc/locks` (lines like
/// `1: FLOCK  ADVISORY  WRITE 1234 fe:00:5359136 0 EOF`); `None` if it cannot be found.
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let id = format!(
        "{:02x}:{:02x}:{ino}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Waiters are shown as `1: -> FLOCK ...`: skip them.
        if f.get(1) != Some(&"FLOCK") || f.get(5) != Some(&id.as_str()) {
            return None;
        }
        f.get(4)?.parse::<u32>().ok().filter(|&p| p > 0)
    })
}

/// A directory operation of the shuffle (indices: 0 = the target, `i` = `<target>.i`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `renameat(<i>, <j>)`.
    Rename(usize, usize),
    /// `linkat(<target>, <target>.1)`.
    LinkTargetToOne,
    /// `unlinkat(<i>)` (a missing file is not an error).
    Unlink(usize),
}

/// The shuffle of one persist: `before` the switch, and generations to unlink `after` it.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    before: Vec<Op>,
    after: Vec<usize>,
}

impl Plan {
    /// `backups`: indices of the existing `<target>.i`, ascending (so the r-th, 1-based, is
    /// the r-th newest). Invariant of the result: no op overwrites or unlinks a backup of rank
    /// below `keep` or the target before the switch, every old generation keeps a generation
    /// name throughout, and after `before` the r-th newest backup (r < keep) is at `r + 1`.
    fn new(keep: usize, backups: &[usize], target_exists: bool, one_is_target: bool) -> Self {
        let mut before = Vec::new();
        let mut after = BTreeSet::new();
        if one_is_target {
            // A cut persist already shuffled and linked: `<target>.1` is the old target.
            after.extend(backups.iter().skip(keep.max(1)));
            if keep == 0 {
                after.insert(1);
            }
        } else if keep == 0 {
            // Nothing promised but the target: park it at .1 so the switch frees no blocks.
            if target_exists {
                if backups.first() == Some(&1) {
                    before.push(Op::Unlink(1));
                }
                before.push(Op::LinkTargetToOne);
                after.insert(1);
            }
            after.extend(backups.iter().copied());
        } else {
            // Ranks 1..=p sit at their own index (n_r == r): they move up, oldest first.
            let p = backups
                .iter()
                .enumerate()
                .take_while(|&(r, &n)| n == r + 1)
                .count();
            if let Some(&n_keep) = backups.get(keep - 1) {
                // The backup that leaves the set, parked at keep+1 until after the switch.
                if p >= keep {
                    before.push(Op::Rename(keep, keep + 1));
                    after.insert(keep + 1);
                } else {
                    after.insert(n_keep);
                }
                after.extend(backups.iter().skip(keep).copied());
            }
            for r in (1..=p.min(keep - 1)).rev() {
                before.push(Op::Rename(r, r + 1));
            }
            // The rest, past a gap, move down to close it, newest first.
            for r in p + 1..keep {
                match backups.get(r - 1) {
                    Some(&n) if n != r + 1 => before.push(Op::Rename(n, r + 1)),
                    _ => {}
                }
            }
            if target_exists {
                before.push(Op::LinkTargetToOne);
            }
        }
        Plan {
            before,
            after: after.into_iter().collect(),
        }
    }
}

/// A temp file being written; removed on drop unless [`commit`](TempFile::commit)ted.
#[derive(Debug)]
#[must_use = "dropping a TempFile discards it; call commit() to replace the target"]
pub struct TempFile<'a> {
    persister: &'a Persister,
    /// The temp file in the persister's directory (`.<name>.tmp.<random>`).
    inner: AtomicFile<BorrowedFd<'a>>,
}

impl TempFile<'_> {
    /// The open temp file (read-write, empty at first).
    pub fn file(&self) -> &File {
        self.inner.file()
    }

    /// The temp file's path (for messages).
    pub fn path(&self) -> PathBuf {
        self.inner.temp_path()
    }

    /// `fdatasync(temp)`, rotate generations, `renameat(temp, target)`, `fsync(dir)` — see the
    /// [module docs](self). On error before the rename the temp file is removed.
    ///
    /// # References
    ///  - [Linux `fdatasync`](https://man7.org/linux/man-pages/man2/fdatasync.2.html)
    ///  - [Linux `rename`](https://man7.org/linux/man-pages/man2/rename.2.html)
    ///  - [Linux `link`](https://man7.org/linux/man-pages/man2/link.2.html)
    ///
    /// # Errors
    ///
    /// The syscalls' errors, naming the directory. An error from `fsync(dir)` or later means
    /// the new file is in place but possibly not yet durable.
    pub fn commit(self) -> io::Result<PersistStats> {
        let persister = self.persister;
        let mut stats = self.commit_durable()?;
        stats.drop_old = persister.drop_old()?;
        Ok(stats)
    }

    /// As [`commit`](Self::commit), but returns at the durable point (the directory
    /// `fsync`): the generation that left the `keep` set is still there, under the
    /// generation name `<name>.<keep+1>` (or a larger one), until [`Persister::drop_old`]
    /// (or the next persist) unlinks it. A cut (SIGKILL, power loss) before that leaves one
    /// generation more than `keep`: the state every cut after the directory `fsync` leaves,
    /// which the next persist cleans up. `drop_old` of the result is zero.
    ///
    /// # Errors
    ///
    /// As [`commit`](Self::commit).
    pub fn commit_durable(mut self) -> io::Result<PersistStats> {
        let dir_path = &self.persister.dir_path;
        let mut stats = PersistStats::default();
        let t = Instant::now();
        self.inner
            .sync_data()
            .map_err(|e| annotate(e, "fdatasync temp file in", dir_path))?;
        stats.sync = t.elapsed();
        self.persister.switch(&mut self.inner, &mut stats)?;
        Ok(stats)
    }
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
