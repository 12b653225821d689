//! The one durable write of a whole file: create a temp file in a directory, write it, then
//! commit = `fdatasync(temp)` + rename with a chosen replace rule + `fsync(dir)`.
//!
//! Every file shmsnap makes durable goes through an [`AtomicFile`]: the persister's new state
//! file ([`persist`](crate::persist)), a delta of a chain ([`chain`](crate::chain)) and the
//! output of the host's `restore` command. Each step is a method, so a caller that must act
//! between them (the persister shuffles its generations between the data sync and the rename)
//! still uses this one writer; [`AtomicFile::commit`] runs the three in a row.
//!
//! The temp file is `<prefix><16 random hex>` created with `O_CREAT | O_EXCL | O_NOFOLLOW |
//! O_CLOEXEC | O_RDWR`, mode 0600: a random name cannot be pre-planted as a symlink, and the
//! sweepers of the callers (`Persister::remove_stale_temps`, `chain::remove_superseded`) know
//! the prefixes (`.<name>.tmp.`, `.delta.tmp.`). Dropping the value before the rename unlinks
//! the temp file (unless a test cut "stopped the machine": see the `crash_point` module).
//! docs/DESIGN.md §7 says why the order is data sync → rename → directory sync.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::{retry_on_intr, Errno};

use crate::noreplace::{Exclusive, NoReplace};

/// How the commit's rename treats an existing file at the final name.
#[derive(Clone, Copy, Debug)]
pub enum Rule<'n> {
    /// `renameat`: an existing file is replaced atomically.
    Replace,
    /// [`NoReplace::rename`]: an existing file is never replaced (the rename fails with
    /// `AlreadyExists`); `Exclusive` says which fallbacks are sound for this caller.
    NoReplace(&'n NoReplace, Exclusive),
}

/// The step of a commit that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `fdatasync` of the temp file: nothing is visible yet.
    SyncData,
    /// The rename: nothing is visible yet (`AlreadyExists` under [`Rule::NoReplace`]).
    Rename,
    /// `fsync` of the directory: the file is visible under its name but maybe not durable.
    SyncDir,
}

/// A failed commit step and its error.
#[derive(Debug)]
pub struct CommitError {
    /// Which step.
    pub step: Step,
    /// The syscall's error (or a test cut's).
    pub error: io::Error,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.step {
            Step::SyncData => "fdatasync the temp file",
            Step::Rename => "rename the temp file",
            Step::SyncDir => "fsync the directory",
        };
        write!(f, "cannot {what}: {}", self.error)
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A temp file in a directory, on its way to a final name; removed on drop unless renamed.
#[derive(Debug)]
#[must_use = "dropping an AtomicFile discards it; commit it to give it its name"]
pub struct AtomicFile<D: AsFd> {
    /// The directory (owned or borrowed); the temp file and the final name are in it.
    dir: D,
    /// The directory's path, for messages.
    dir_path: PathBuf,
    /// The temp file's name in `dir`.
    name: OsString,
    /// `Some` until renamed (then the temp name is gone: nothing to remove on drop).
    file: Option<File>,
    /// Test twin: skip the `fdatasync` (a writer that must fail the crash tests).
    #[cfg(test)]
    pub(crate) skip_datasync: bool,
}

impl<D: AsFd> AtomicFile<D> {
    /// `openat(dir, "<prefix><16 random hex>", O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
    /// O_RDWR, 0600)`—a new empty temp file in `dir` (`dir_path` names it in messages).
    ///
    /// # References
    ///  - [Linux `openat`](https://man7.org/linux/man-pages/man2/openat.2.html)
    ///  - [Linux `getrandom`](https://man7.org/linux/man-pages/man2/getrandom.2.html)
    ///
    /// # Errors
    ///
    /// `openat`'s and `getrandom`'s errors (`EACCES`, `ENOSPC`, `EROFS`, ...), unannotated:
    /// the caller names the directory its own way.
    pub fn create(dir: D, dir_path: &Path, prefix: &OsStr) -> io::Result<Self> {
        loop {
            let mut name = prefix.to_os_string();
            name.push(random_hex()?);
            match rustix::fs::openat(
                &dir,
                name.as_os_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDWR,
                Mode::RUSR | Mode::WUSR,
            ) {
                Ok(fd) => {
                    return Ok(AtomicFile {
                        dir,
                        dir_path: dir_path.to_path_buf(),
                        name,
                        file: Some(File::from(fd)),
                        #[cfg(test)]
                        skip_datasync: false,
                    })
                }
                // 2^-64 odds; pick another name.
                Err(Errno::EXIST | Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The open temp file (read-write, empty at first).
    ///
    /// # Panics
    ///
    /// After a successful [`rename`](Self::rename) (a bug of the caller).
    pub fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("AtomicFile used after its rename")
    }

    /// The temp file's name in the directory.
    pub fn temp_name(&self) -> &OsStr {
        &self.name
    }

    /// The temp file's path (for messages).
    pub fn temp_path(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }

    /// `fdatasync(temp)`: the content is durable (not yet visible under its name).
    ///
    /// # References
    ///  - [Linux `fdatasync`](https://man7.org/linux/man-pages/man2/fdatasync.2.html)
    ///
    /// # Errors
    ///
    /// `fdatasync`'s errors (`EIO`, `ENOSPC`, ...); a test cut.
    pub fn sync_data(&self) -> io::Result<()> {
        #[cfg(test)]
        let sync = !self.skip_datasync;
        #[cfg(not(test))]
        let sync = true;
        if sync {
            retry_on_intr(|| rustix::fs::fdatasync(self.file()))?;
            crash_point::synced();
        }
        crash_point::step()
    }

    /// Renames the temp file to `to` in the same directory by `rule`. On success the temp name
    /// is gone and [`file`](Self::file) may no longer be used.
    ///
    /// # References
    ///  - [Linux `rename`](https://man7.org/linux/man-pages/man2/rename.2.html)
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if `to` exists under [`Rule::NoReplace`] (nothing changed); the
    /// syscalls' other errors; a test cut (after the rename happened).
    pub fn rename(&mut self, to: &OsStr, rule: Rule<'_>) -> io::Result<()> {
        match rule {
            Rule::Replace => rustix::fs::renameat(&self.dir, &self.name, &self.dir, to)?,
            Rule::NoReplace(no_replace, exclusive) => {
                no_replace.rename(self.dir.as_fd(), &self.dir_path, &self.name, to, exclusive)?
            }
        }
        // Renamed: the temp name is gone, nothing to remove on drop.
        self.file = None;
        crash_point::step()
    }

    /// `fsync(dir)`: the rename is durable.
    ///
    /// # References
    ///  - [Linux `fsync`](https://man7.org/linux/man-pages/man2/fsync.2.html)
    ///
    /// # Errors
    ///
    /// `fsync`'s errors: the file is visible under its name but maybe not durable; a test cut.
    pub fn sync_dir(&self) -> io::Result<()> {
        retry_on_intr(|| rustix::fs::fsync(&self.dir))?;
        crash_point::step()
    }

    /// [`sync_data`](Self::sync_data), [`rename`](Self::rename) to `to` by `rule`,
    /// [`sync_dir`](Self::sync_dir): when this returns `Ok`, the file is durable under `to`.
    ///
    /// # Errors
    ///
    /// The failed step and its error; the temp file is removed if the rename did not happen.
    pub fn commit(mut self, to: &OsStr, rule: Rule<'_>) -> Result<(), CommitError> {
        let at = |step| move |error| CommitError { step, error };
        self.sync_data().map_err(at(Step::SyncData))?;
        self.rename(to, rule).map_err(at(Step::Rename))?;
        self.sync_dir().map_err(at(Step::SyncDir))
    }
}

impl<D: AsFd> Drop for AtomicFile<D> {
    fn drop(&mut self) {
        if self.file.take().is_some() && !crash_point::crashed() {
            // Best effort: a failure leaves a temp file for the caller's sweeper.
            let _ = rustix::fs::unlinkat(&self.dir, self.name.as_os_str(), AtFlags::empty());
        }
    }
}

/// 16 random hex digits (`getrandom`), for temp names no one can guess or pre-plant.
///
/// # Errors
///
/// `getrandom`'s errors.
pub(crate) fn random_hex() -> io::Result<String> {
    let mut r = [0u8; 8];
    let mut got = 0;
    while got < r.len() {
        got += retry_on_intr(|| {
            rustix::rand::getrandom(&mut r[got..], rustix::rand::GetRandomFlags::empty())
        })?;
    }
    Ok(format!("{:016x}", u64::from_ne_bytes(r)))
}

/// The one test-only cut of every durable write: after `n` more steps (each commit step of an
/// [`AtomicFile`], each generation move of the persister, the chain's table and footer
/// writes), the next one fails as if the machine had stopped there; nothing after it runs and
/// a "crashed" [`AtomicFile`]'s drop leaves its temp file, as a real crash would. Also counts
/// the `fdatasync`s. No-op outside tests.
pub(crate) mod crash_point {
    #[cfg(test)]
    thread_local! {
        static LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
        static CRASHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static SYNCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Counts an `fdatasync` (tests read the count with [`syncs`]).
    #[cfg(test)]
    pub(crate) fn synced() {
        SYNCS.with(|c| c.set(c.get() + 1));
    }

    /// `fdatasync`s of durable writes made by this thread so far.
    #[cfg(test)]
    pub(crate) fn syncs() -> usize {
        SYNCS.with(|c| c.get())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn synced() {}

    /// Cut after `n` more steps (`None`: never); clears the crashed flag.
    #[cfg(test)]
    pub(crate) fn arm(n: Option<usize>) {
        LEFT.with(|l| l.set(n));
        CRASHED.with(|c| c.set(false));
    }

    /// Called after each step; fails once the armed count is used up.
    #[cfg(test)]
    pub(crate) fn step() -> std::io::Result<()> {
        LEFT.with(|l| match l.get() {
            Some(0) => {
                CRASHED.with(|c| c.set(true));
                Err(std::io::Error::other("injected cut"))
            }
            Some(n) => {
                l.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }

    /// `true` after an injected cut (until the next `arm`).
    #[cfg(test)]
    pub(crate) fn crashed() -> bool {
        CRASHED.with(|c| c.get())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn step() -> std::io::Result<()> {
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(crate) fn crashed() -> bool {
        false
    }
}
