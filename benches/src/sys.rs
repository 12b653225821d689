//! The OS pieces the benchmarks use, all from `shmsnap-linux` (the same code the host runs),
//! plus [`raw_snapshot`], the reference the host's snapshots are measured against.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};

pub use shmsnap_linux::copy::{copy_sparse, CopyStats};
pub use shmsnap_linux::persist::{PersistStats, Persister};
pub use shmsnap_linux::snapshot::{image_crc32c, restore_into, verify, SnapshotMeta};
pub use shmsnap_linux::{Mapping, Memfd, Protection};

/// The limit a snapshot is measured against: `open(O_CREAT|O_EXCL)` of `tmp` in `dir`, a
/// sparse copy of `len` bytes of `src`, `fdatasync`, `rename` over `name` (which frees the
/// previous file's blocks inside `rename`), directory `fsync`.
///
/// # Errors
///
/// Any I/O error.
pub fn raw_snapshot(
    dir: impl AsFd,
    tmp: &str,
    name: &str,
    src: &Memfd,
    len: u64,
) -> io::Result<()> {
    let dir = dir.as_fd();
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDWR,
        Mode::RUSR | Mode::WUSR,
    )?;
    copy_sparse(src, &fd, len)?;
    rustix::fs::fdatasync(&fd)?;
    rustix::fs::renameat(dir, tmp, dir, name)?;
    rustix::fs::fsync(dir)?;
    Ok(())
}
