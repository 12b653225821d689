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

/// PROPOSAL (not used by the host cycle): CRC-32C of bytes `0..len` of `fd` like
/// `shmsnap_linux::snapshot::image_crc32c`, but a hole of `n` bytes costs `O(log n)` CRC
/// combines instead of streaming `n` zero bytes through the CRC, and (with `mapped`) data
/// extents are read through a read-only mapping of the file instead of `pread` into a
/// buffer (no copy out of the page cache).
///
/// # Errors
///
/// `UnexpectedEof` if the file is shorter than `len`; the syscalls' errors.
pub fn image_crc32c_skipping_holes(fd: impl AsFd, len: u64, mapped: bool) -> io::Result<u32> {
    use crc_fast::{checksum_combine, CrcAlgorithm::Crc32Iscsi, Digest};
    use rustix::fs::SeekFrom;
    let fd = fd.as_fd();
    if u64::try_from(rustix::fs::fstat(fd)?.st_size).unwrap_or(0) < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut crc = crc_fast::checksum(Crc32Iscsi, b"");
    let mut buf = if mapped {
        Vec::new()
    } else {
        vec![0u8; 1 << 20]
    };
    let mut off = 0;
    while off < len {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(off)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        if data > off {
            crc = checksum_combine(Crc32Iscsi, crc, zeros_crc(data - off), data - off);
        }
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(fd, SeekFrom::Hole(data))?.min(len);
        let mut d = Digest::new(Crc32Iscsi);
        if mapped {
            // Page-aligned: SEEK_DATA/SEEK_HOLE report block boundaries (4 KiB here).
            let n = usize::try_from(hole - data).map_err(io::Error::other)?;
            // SAFETY: a fresh read-only private mapping of `n` bytes at `data` (within the
            // file, checked above); the benchmark's snapshot files are not truncated or
            // written while this function runs, so no access faults and the bytes do not
            // change while the slice below exists; unmapped before returning.
            let p = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    n,
                    rustix::mm::ProtFlags::READ,
                    rustix::mm::MapFlags::PRIVATE,
                    fd,
                    data,
                )?
            };
            // SAFETY: `p` is `n` readable bytes, unchanged while the slice lives (above).
            d.update(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) });
            // SAFETY: exactly the mapping created above; the slice is gone.
            unsafe { rustix::mm::munmap(p, n)? };
        } else {
            let mut at = data;
            while at < hole {
                let want = usize::try_from(hole - at)
                    .unwrap_or(buf.len())
                    .min(buf.len());
                pread_exact(fd, &mut buf[..want], at)?;
                d.update(&buf[..want]);
                at += want as u64;
            }
        }
        crc = checksum_combine(Crc32Iscsi, crc, d.finalize(), hole - data);
        off = hole;
    }
    Ok(crc as u32)
}

/// CRC-32C of `n` zero bytes in `O(log n)` combines (binary decomposition of `n`).
fn zeros_crc(n: u64) -> u64 {
    use crc_fast::{checksum_combine, CrcAlgorithm::Crc32Iscsi};
    const BASE: u64 = 4096;
    static ZEROS: [u8; BASE as usize] = [0; BASE as usize];
    // `acc` covers the `n % BASE` remainder; `pow` covers `pow_len = BASE * 2^k` zeros.
    let mut acc = crc_fast::checksum(Crc32Iscsi, &ZEROS[..(n % BASE) as usize]);
    let mut pow = crc_fast::checksum(Crc32Iscsi, &ZEROS);
    let mut pow_len = BASE;
    let mut blocks = n / BASE;
    while blocks > 0 {
        if blocks & 1 == 1 {
            acc = checksum_combine(Crc32Iscsi, acc, pow, pow_len);
        }
        blocks >>= 1;
        if blocks > 0 {
            pow = checksum_combine(Crc32Iscsi, pow, pow, pow_len);
            pow_len *= 2;
        }
    }
    acc
}
