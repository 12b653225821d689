//! Atomic replacement of a file, keeping N previous generations.
//!
//! A [`Persister`] owns an fd of the target's directory. One persist is:
//!
//! 1. `openat(dir, ".<name>.tmp.<16 random hex>", O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
//!    O_RDWR, 0600)` — a [`TempFile`] guard that unlinks the file if dropped uncommitted;
//! 2. the caller writes the new content into it;
//! 3. `fdatasync(temp)`;
//! 4. generations: the oldest kept one (`<name>.<keep>`, or with `keep == 0` the target
//!    itself, through a hard link) is moved aside to a temp name, `<name>.<i>` →
//!    `<name>.<i+1>` for `i = keep-1 .. 1`, then `linkat(<name>, <name>.1)`; the target itself
//!    is never missing;
//! 5. `renameat(temp, <name>)` — the atomic switch;
//! 6. `fsync(dir)` — makes the switch durable;
//! 7. `unlinkat` of the dropped generation, *after* the durable point: freeing a large file's
//!    blocks (45–60 ms for 256 MiB on ext4) never delays the switch, and `rename` over the
//!    target never frees blocks because `<name>.1` (or the aside link) still holds them.
//!
//! A crash at any point leaves `<name>` as the complete old or the complete new file; what it
//! may leave behind are `.<name>.tmp.*` files, which [`Persister::remove_stale_temps`] deletes.
//!
//! Why a named temp file and not `O_TMPFILE` + `linkat`: `linkat` cannot replace an existing
//! name, so an `O_TMPFILE` would still need a named link before the `rename`, via
//! `/proc/self/fd` (needs `/proc`) or `AT_EMPTY_PATH` (needs `CAP_DAC_READ_SEARCH`), and not
//! every filesystem supports `O_TMPFILE`. A random name created with `O_EXCL | O_NOFOLLOW`
//! cannot be pre-planted as a symlink, and the stale-temp sweep covers crashes.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::{retry_on_intr, Errno};

/// Atomic replacement of one target file in one directory.
#[derive(Debug)]
pub struct Persister {
    dir: OwnedFd,
    dir_path: PathBuf,
    name: OsString,
    keep: usize,
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
    /// `unlink` of the dropped generation (after the durable point).
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
    /// `open(dir, O_DIRECTORY | O_RDONLY | O_CLOEXEC)`—prepares atomic replacement of `target`,
    /// keeping `keep` previous generations (`<target>.1` newest .. `<target>.<keep>` oldest).
    ///
    /// # References
    ///  - [Linux `open`](https://man7.org/linux/man-pages/man2/open.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `target` has no file name (or it is `..`); `open`'s errors for the
    /// directory (`ENOENT`, `EACCES`, `ENOTDIR`).
    pub fn new(target: &Path, keep: usize) -> io::Result<Self> {
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
        Ok(Self {
            dir,
            dir_path,
            name,
            keep,
        })
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

    fn random_temp_name(&self) -> io::Result<OsString> {
        let mut r = [0u8; 8];
        let mut got = 0;
        while got < r.len() {
            got += retry_on_intr(|| {
                rustix::rand::getrandom(&mut r[got..], rustix::rand::GetRandomFlags::empty())
            })?;
        }
        let mut n = self.temp_prefix();
        n.push(format!("{:016x}", u64::from_ne_bytes(r)));
        Ok(n)
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
        loop {
            let name = self.random_temp_name()?;
            match rustix::fs::openat(
                &self.dir,
                name.as_os_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDWR,
                Mode::RUSR | Mode::WUSR,
            ) {
                Ok(fd) => {
                    return Ok(TempFile {
                        persister: self,
                        name,
                        file: Some(File::from(fd)),
                    })
                }
                Err(Errno::EXIST) => continue, // 2^-64 odds; pick another name
                Err(Errno::INTR) => continue,
                Err(e) => return Err(annotate(e.into(), "create a temp file in", &self.dir_path)),
            }
        }
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
    /// Call it only when no other process is persisting the same target (e.g. at start-up):
    /// it cannot tell a crashed writer's temp file from a live one's.
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
    /// (gaps are skipped; names past `keep` left by an earlier, larger `keep` are listed too).
    ///
    /// # Errors
    ///
    /// Errors reading the directory.
    pub fn generations(&self) -> io::Result<Vec<Generation>> {
        let name = self.name.as_bytes();
        let mut out = Vec::new();
        for entry in self.dir_names()? {
            let e = entry.as_bytes();
            let index = if e == name {
                Some(0)
            } else if e.len() > name.len() + 1 && e.starts_with(name) && e[name.len()] == b'.' {
                let digits = &e[name.len() + 1..];
                if digits.iter().all(u8::is_ascii_digit) && digits[0] != b'0' {
                    std::str::from_utf8(digits)
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(index) = index {
                out.push(Generation {
                    index,
                    path: self.dir_path.join(&entry),
                });
            }
        }
        out.sort_by_key(|g| g.index);
        Ok(out)
    }

    fn dir_names(&self) -> io::Result<Vec<OsString>> {
        let mut dir = rustix::fs::Dir::read_from(&self.dir)
            .map_err(|e| annotate(e.into(), "read directory", &self.dir_path))?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| annotate(e.into(), "read directory", &self.dir_path))?;
            names.push(OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string());
        }
        Ok(names)
    }

    /// `renameat`, treating a missing source as nothing to do. Returns whether it moved.
    fn rename_if_exists(&self, from: &OsStr, to: &OsStr) -> io::Result<bool> {
        match rustix::fs::renameat(&self.dir, from, &self.dir, to) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(annotate(e.into(), "rename a generation in", &self.dir_path)),
        }
    }

    /// Steps 4–7 of the module docs, for the synced temp file `tmp`.
    fn switch(&self, tmp: &OsStr, stats: &mut PersistStats) -> io::Result<()> {
        let t = Instant::now();
        let target = self.generation_name(0);
        // The generation that leaves the set, parked under a temp name until step 7.
        let aside = self.random_temp_name()?;
        let dropped = if self.keep == 0 {
            match rustix::fs::linkat(
                &self.dir,
                target.as_os_str(),
                &self.dir,
                aside.as_os_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => true,
                Err(Errno::NOENT) => false,
                Err(e) => {
                    return Err(annotate(
                        e.into(),
                        "link the old target aside in",
                        &self.dir_path,
                    ))
                }
            }
        } else {
            let oldest = self.generation_name(self.keep);
            let dropped = self.rename_if_exists(&oldest, &aside)?;
            for i in (1..self.keep).rev() {
                self.rename_if_exists(&self.generation_name(i), &self.generation_name(i + 1))?;
            }
            let newest = self.generation_name(1);
            match rustix::fs::linkat(
                &self.dir,
                target.as_os_str(),
                &self.dir,
                newest.as_os_str(),
                AtFlags::empty(),
            ) {
                Ok(()) | Err(Errno::NOENT) => {}
                // Left by a crash between the link and the rename: that file is the target.
                Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(annotate(
                        e.into(),
                        "link the old target to .1 in",
                        &self.dir_path,
                    ))
                }
            }
            dropped
        };
        rustix::fs::renameat(&self.dir, tmp, &self.dir, target.as_os_str())
            .map_err(|e| annotate(e.into(), "rename the new snapshot into", &self.dir_path))?;
        stats.rename = t.elapsed();

        let t = Instant::now();
        retry_on_intr(|| rustix::fs::fsync(&self.dir))
            .map_err(|e| annotate(e.into(), "fsync directory", &self.dir_path))?;
        stats.dir_sync = t.elapsed();

        let t = Instant::now();
        if dropped {
            match rustix::fs::unlinkat(&self.dir, aside.as_os_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(annotate(
                        e.into(),
                        "remove the dropped generation in",
                        &self.dir_path,
                    ))
                }
            }
        }
        stats.drop_old = t.elapsed();
        Ok(())
    }
}

/// A temp file being written; removed on drop unless [`commit`](TempFile::commit)ted.
#[derive(Debug)]
#[must_use = "dropping a TempFile discards it; call commit() to replace the target"]
pub struct TempFile<'a> {
    persister: &'a Persister,
    name: OsString,
    file: Option<File>,
}

impl TempFile<'_> {
    /// The open temp file (read-write, empty at first).
    pub fn file(&self) -> &File {
        // Always Some until commit/drop consume it.
        self.file.as_ref().expect("TempFile used after commit")
    }

    /// The temp file's path (for messages).
    pub fn path(&self) -> PathBuf {
        self.persister.dir_path.join(&self.name)
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
    pub fn commit(mut self) -> io::Result<PersistStats> {
        let mut stats = PersistStats::default();
        let t = Instant::now();
        if let Some(f) = &self.file {
            retry_on_intr(|| rustix::fs::fdatasync(f)).map_err(|e| {
                annotate(e.into(), "fdatasync temp file in", &self.persister.dir_path)
            })?;
        }
        stats.sync = t.elapsed();
        self.persister.switch(&self.name, &mut stats)?;
        // Renamed: nothing left to clean up.
        self.file = None;
        Ok(stats)
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: a failure here leaves a temp file for remove_stale_temps.
            let _ =
                rustix::fs::unlinkat(&self.persister.dir, self.name.as_os_str(), AtFlags::empty());
        }
    }
}

fn annotate(e: io::Error, what: &str, dir: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {what} {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests;
