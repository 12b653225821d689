//! Giving a finished file its name without replacing a file of that name, also on file
//! systems without `renameat2(RENAME_NOREPLACE)`.
//!
//! `RENAME_NOREPLACE` is the mechanism: one atomic call that fails with `EEXIST` if the name
//! exists. Some FUSE and network file systems refuse the flag (`EINVAL`, `ENOSYS`,
//! `EOPNOTSUPP`). A [`NoReplace`] notices that at the first rename that fails that way (once
//! per value: the host keeps one per state file, in its `Persister`), records a one-line
//! notice naming the file system (its `statfs` type) for the caller to log once, and from then
//! on uses what the file system has:
//!
//! 1. **`link(2)` + `unlink(2)`** of the source: `linkat` fails with `EEXIST` if the name
//!    exists, so it is a no-replace rename in two steps. A cut between them leaves both names
//!    on the same complete file; the source's name is a temp name that the owner's cleanup
//!    removes. The caller's directory `fsync` afterwards makes the new name durable, as after
//!    a rename.
//! 2. Where the file system has no hard links either (`EPERM`, `EOPNOTSUPP`, `ENOSYS`):
//!    **check, then rename**: `statat(name)` must say `ENOENT`, then a
//!    plain `renameat`. That is a no-replace rename only for a caller that is the **sole
//!    writer of the directory's names**, which it says with [`Exclusive::Locked`]: the host
//!    holds the state file's `flock` (`FILE.lock`) for its whole life, and every process that
//!    creates names in the chain directory is a host of that state file (`inspect`, `verify`
//!    and `restore` only read it), so no name can appear between the check and the rename.
//!    (A file system whose `flock` is not shared between machines, e.g. some FUSE file
//!    systems, defeats that lock for two hosts on two machines as it defeats every other
//!    guarantee of the lock; DESIGN §7 lists it.) Without the lock this fallback is refused
//!    (`EOPNOTSUPP`, saying why).
//!
//! Never a second write: the file written and synced once is the one that gets the name.

use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use rustix::fs::{AtFlags, RenameFlags};
use rustix::io::Errno;

/// How a [`NoReplace`] gives a file its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `renameat2(RENAME_NOREPLACE)` (until it fails with `EINVAL`, `ENOSYS` or `EOPNOTSUPP`).
    Rename2 = 0,
    /// `linkat` + `unlinkat` of the source.
    Link = 1,
    /// `statat` (must be `ENOENT`), then `renameat`: only under [`Exclusive::Locked`].
    CheckThenRename = 2,
}

/// Whether the caller is the only process that creates names in the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusive {
    /// It holds a lock that every writer of the directory's names takes (the state's
    /// `flock`): check-then-rename is a no-replace rename for it.
    Locked,
    /// Others may create names meanwhile: only atomic mechanisms are used.
    No,
}

/// Renames without replacing, with the fallbacks of the [module docs](self), detected once.
#[derive(Debug)]
pub struct NoReplace {
    /// The [`Mechanism`] in use, as `u8` (0, 1, 2); only moves forward.
    mechanism: AtomicU8,
    /// The notice about a fallback, until [`take_notice`](NoReplace::take_notice) takes it.
    notice: Mutex<Option<String>>,
}

impl Default for NoReplace {
    fn default() -> Self {
        Self::new()
    }
}

impl NoReplace {
    /// A new detector: `RENAME_NOREPLACE` until a rename shows it is not supported.
    pub const fn new() -> Self {
        NoReplace {
            mechanism: AtomicU8::new(0),
            notice: Mutex::new(None),
        }
    }

    /// The mechanism in use now.
    pub fn mechanism(&self) -> Mechanism {
        // Relaxed: the value is a hint that only moves forward; each mechanism is complete.
        match self.mechanism.load(Ordering::Relaxed) {
            0 => Mechanism::Rename2,
            1 => Mechanism::Link,
            _ => Mechanism::CheckThenRename,
        }
    }

    /// The warning to log about a fallback, once: `Some` the first time it is asked after a
    /// fallback was detected, `None` before and after.
    pub fn take_notice(&self) -> Option<String> {
        self.notice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`—or the fallback the file system
    /// needs—gives the file `from` the name `to` in `dir` (`dir_path` names it in messages),
    /// unless `to` exists.
    ///
    /// # References
    ///  - [Linux `renameat2`](https://man7.org/linux/man-pages/man2/rename.2.html)
    ///  - [Linux `linkat`](https://man7.org/linux/man-pages/man2/link.2.html)
    ///  - [Linux `statfs`](https://man7.org/linux/man-pages/man2/statfs.2.html)
    ///
    /// # Errors
    ///
    /// `AlreadyExists` (`EEXIST`) if `to` exists (nothing changed); `EOPNOTSUPP` if the file
    /// system has no mechanism this caller may use; the syscalls' other errors.
    pub fn rename(
        &self,
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        from: &OsStr,
        to: &OsStr,
        exclusive: Exclusive,
    ) -> io::Result<()> {
        loop {
            let (r, unsupported): (Result<(), Errno>, &[Errno]) = match self.mechanism() {
                Mechanism::Rename2 => (
                    inject::rename2().map_or_else(
                        || rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE),
                        Err,
                    ),
                    &[Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP],
                ),
                Mechanism::Link => (
                    link_then_unlink(dir, from, to),
                    &[Errno::PERM, Errno::OPNOTSUPP, Errno::NOSYS],
                ),
                Mechanism::CheckThenRename => return check_then_rename(dir, from, to, exclusive),
            };
            match r {
                Err(e) if unsupported.contains(&e) => self.fall_back(dir, dir_path, e),
                r => return r.map_err(Into::into),
            }
        }
    }

    /// Moves to the next mechanism after `e` showed the current one unsupported, and records
    /// the notice (once: later values of the same run replace nothing already taken).
    fn fall_back(&self, dir: BorrowedFd<'_>, dir_path: &Path, e: Errno) {
        let from = self.mechanism();
        let to = match from {
            Mechanism::Rename2 => Mechanism::Link,
            _ => Mechanism::CheckThenRename,
        };
        // Relaxed: see `mechanism`; a racing caller at most retries the failed mechanism.
        self.mechanism.fetch_max(to as u8, Ordering::Relaxed);
        let fs = fs_name(dir);
        let call = match from {
            Mechanism::Rename2 => "renameat2(RENAME_NOREPLACE)",
            _ => "link(2)",
        };
        let instead = match to {
            Mechanism::Link => {
                "link(2) + unlink of the temp file instead (link fails if the name exists: \
                 the same no-replace guarantee, no second write or sync)"
            }
            _ => {
                "a check that the name is free, then rename(2), instead (sound because only \
                 the holder of the state's lock creates names there; no second write or sync)"
            }
        };
        let line = format!(
            "the file system of {} ({fs}) does not support {call} ({e}); new files are \
             given their names with {instead}",
            dir_path.display()
        );
        let mut n = self
            .notice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *n = Some(match n.take() {
            Some(earlier) => format!("{earlier}; then {line}"),
            None => line,
        });
    }
}

/// `linkat(from, to)` then `unlinkat(from)`.
fn link_then_unlink(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> Result<(), Errno> {
    inject::link().map_or_else(
        || rustix::fs::linkat(dir, from, dir, to, AtFlags::empty()),
        Err,
    )?;
    // The new name is in place; a failure here leaves the temp name, a second name of the
    // same file, for the owner's cleanup.
    match rustix::fs::unlinkat(dir, from, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `statat(to)` = `ENOENT`, then `renameat(from, to)`: only for the sole writer.
fn check_then_rename(
    dir: BorrowedFd<'_>,
    from: &OsStr,
    to: &OsStr,
    exclusive: Exclusive,
) -> io::Result<()> {
    if exclusive != Exclusive::Locked {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the file system supports neither renameat2(RENAME_NOREPLACE) nor hard links, \
             and nothing here excludes other writers: a no-replace rename is impossible",
        ));
    }
    match rustix::fs::statat(dir, to, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => {}
        Ok(_) => return Err(Errno::EXIST.into()),
        Err(e) => return Err(e.into()),
    }
    rustix::fs::renameat(dir, from, dir, to)?;
    Ok(())
}

/// The file system of `dir`, for the notice: its name when known, and its `statfs` type.
fn fs_name(dir: BorrowedFd<'_>) -> String {
    use linux_raw_sys::general as g;
    let Ok(st) = rustix::fs::fstatfs(dir) else {
        return "file system type unknown: statfs failed".into();
    };
    // `f_type` is a signed or unsigned word depending on the architecture; the magic numbers
    // are 32-bit.
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as u64 as u32;
    let known = [
        (g::FUSE_SUPER_MAGIC, "fuse"),
        (g::NFS_SUPER_MAGIC, "nfs"),
        (g::SMB_SUPER_MAGIC, "smb"),
        (g::SMB2_SUPER_MAGIC, "smb2"),
        (g::CIFS_SUPER_MAGIC, "cifs"),
        (g::V9FS_MAGIC, "9p"),
        (g::CEPH_SUPER_MAGIC, "ceph"),
        (g::AFS_FS_MAGIC, "afs"),
        (g::OVERLAYFS_SUPER_MAGIC, "overlayfs"),
        (g::ECRYPTFS_SUPER_MAGIC, "ecryptfs"),
        (g::MSDOS_SUPER_MAGIC, "vfat"),
        (g::EXFAT_SUPER_MAGIC, "exfat"),
        (g::EXT4_SUPER_MAGIC, "ext2/3/4"),
        (g::XFS_SUPER_MAGIC, "xfs"),
        (g::BTRFS_SUPER_MAGIC, "btrfs"),
        (g::TMPFS_MAGIC, "tmpfs"),
    ];
    match known.iter().find(|(m, _)| *m == t) {
        Some((_, name)) => format!("{name}, statfs type {t:#x}"),
        None => format!("statfs type {t:#x}"),
    }
}

/// Test seam: makes the next `renameat2` / `linkat` calls of this thread fail with a chosen
/// errno (as a file system without them would), and counts the calls. No-op outside tests.
pub(crate) mod inject {
    use rustix::io::Errno;

    #[cfg(test)]
    thread_local! {
        static RENAME2: std::cell::Cell<(Option<Errno>, usize)> = const { std::cell::Cell::new((None, 0)) };
        static LINK: std::cell::Cell<(Option<Errno>, usize)> = const { std::cell::Cell::new((None, 0)) };
    }

    /// From now on in this thread, `renameat2(RENAME_NOREPLACE)` fails with `rename2` and
    /// `linkat` with `link` (`None`: the real call); resets the counts.
    #[cfg(test)]
    pub(crate) fn set(rename2: Option<Errno>, link: Option<Errno>) {
        RENAME2.with(|c| c.set((rename2, 0)));
        LINK.with(|c| c.set((link, 0)));
    }

    /// How many `renameat2` and `linkat` calls were made since [`set`].
    #[cfg(test)]
    pub(crate) fn calls() -> (usize, usize) {
        (RENAME2.with(|c| c.get().1), LINK.with(|c| c.get().1))
    }

    #[cfg(test)]
    fn hit(
        c: &'static std::thread::LocalKey<std::cell::Cell<(Option<Errno>, usize)>>,
    ) -> Option<Errno> {
        c.with(|c| {
            let (e, n) = c.get();
            c.set((e, n + 1));
            e
        })
    }

    /// The injected error of a `renameat2` call, if any.
    #[cfg(test)]
    pub(super) fn rename2() -> Option<Errno> {
        hit(&RENAME2)
    }

    /// The injected error of a `linkat` call, if any.
    #[cfg(test)]
    pub(super) fn link() -> Option<Errno> {
        hit(&LINK)
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn rename2() -> Option<Errno> {
        None
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn link() -> Option<Errno> {
        None
    }
}
