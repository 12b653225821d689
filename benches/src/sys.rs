//! The OS pieces the benchmarks use, all from `shmsnap-linux` (the same code the host runs),
//! plus the two positioned-I/O loops the host cycle needs that `shmsnap-linux` keeps private.

use std::io;
use std::os::fd::AsFd;

use rustix::io::retry_on_intr;
pub use shmsnap_linux::copy::{copy_sparse, CopyStats};
pub use shmsnap_linux::persist::{PersistStats, Persister};
pub use shmsnap_linux::snapshot::{image_crc32c, restore_into, verify, write_footer, SnapshotMeta};
pub use shmsnap_linux::{Mapping, Memfd, Protection};

/// `pread` until `buf` is full.
///
/// # Errors
///
/// `UnexpectedEof` if the file ends first; `pread`'s errors.
pub fn pread_exact(fd: impl AsFd, buf: &mut [u8], mut off: u64) -> io::Result<()> {
    let fd = fd.as_fd();
    let mut done = 0;
    while done < buf.len() {
        let n = retry_on_intr(|| rustix::io::pread(fd, &mut buf[done..], off))?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
        off += n as u64;
    }
    Ok(())
}

/// `pwrite` until all of `buf` is written.
///
/// # Errors
///
/// `pwrite`'s errors.
pub fn pwrite_all(fd: impl AsFd, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    let fd = fd.as_fd();
    while !buf.is_empty() {
        let n = retry_on_intr(|| rustix::io::pwrite(fd, buf, off))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}
