//! Sparse copy: only the source's data extents move, holes stay holes on both sides.
//!
//! Extents are found with `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)`, which work on memfds and
//! ext4. Each extent is copied with `copy_file_range`; where the kernel refuses (between a
//! memfd and ext4 it fails with `EXDEV` in both directions, measured on kernel 6.18) it falls
//! back to `sendfile`, and if that is refused too, to `pread`/`pwrite` through a small buffer.
//! None of these reads the source through a mapping, so the source's holes are never
//! allocated (reading a memfd hole through a mapping allocates it; `pread` does not — see the
//! `pread_of_memfd_holes_allocates_nothing` test).

use std::io;
use std::os::fd::AsFd;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::{retry_on_intr, Errno};

/// What a sparse copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Bytes of data extents copied (holes excluded).
    pub bytes: u64,
    /// Number of data extents copied.
    pub extents: u64,
    /// The mechanism that copied the last extent.
    pub method: CopyMethod,
}

/// The syscall a copy ended up using.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyMethod {
    /// `copy_file_range` (in-kernel, may share blocks on reflink filesystems).
    #[default]
    CopyFileRange,
    /// `sendfile` (in-kernel through the page cache).
    Sendfile,
    /// `pread` + `pwrite` through a buffer in this process.
    Buffer,
}

/// Largest count handed to one syscall (Linux caps a transfer at `0x7ffff000` bytes anyway).
const MAX_CHUNK: u64 = 1 << 30;
/// Buffer size of the last-resort `pread`/`pwrite` path.
const BUF_LEN: usize = 1 << 20;

/// `lseek(SEEK_DATA/SEEK_HOLE)` + `copy_file_range`/`sendfile`—copies bytes `0..len` of `src`
/// into `dst` at the same offsets, data extents only.
///
/// Before copying, `dst` is prepared so that its bytes `0..len` read as zeros without being
/// allocated: if it has any content, `fallocate(PUNCH_HOLE | KEEP_SIZE)` frees `0..len`;
/// if it is shorter than `len`, `ftruncate` extends it. `dst` is never shrunk (a sealed memfd
/// could not be), so bytes of `dst` past `len` are left as they were.
///
/// Moves the file positions of `src` (the `lseek` walk) and `dst` (`sendfile` writes at the
/// position). `EINTR` is retried; short transfers are continued.
///
/// # References
///  - [Linux `lseek` (`SEEK_DATA`, `SEEK_HOLE`)](https://man7.org/linux/man-pages/man2/lseek.2.html)
///  - [Linux `copy_file_range`](https://man7.org/linux/man-pages/man2/copy_file_range.2.html)
///  - [Linux `sendfile`](https://man7.org/linux/man-pages/man2/sendfile.2.html)
///  - [Linux `fallocate`](https://man7.org/linux/man-pages/man2/fallocate.2.html)
///
/// # Errors
///
/// `UnexpectedEof` if `src` ends (or shrinks) before `len`; the syscalls' errors otherwise
/// (`ENOSPC`, `EIO`, `EOPNOTSUPP` from hole punching on a filesystem without it, ...).
pub fn copy_sparse(src: impl AsFd, dst: impl AsFd, len: u64) -> io::Result<CopyStats> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    let src_len = file_len(src)?;
    if src_len < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("cannot copy {len} bytes from a file of {src_len} bytes"),
        ));
    }
    let dst_len = file_len(dst)?;
    if dst_len > 0 {
        let punch = dst_len.min(len);
        if punch > 0 {
            retry_on_intr(|| {
                rustix::fs::fallocate(
                    dst,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    0,
                    punch,
                )
            })?;
        }
    }
    if dst_len < len {
        retry_on_intr(|| rustix::fs::ftruncate(dst, len))?;
    }

    copy_extents(src, dst, 0..len)
}

/// `lseek(SEEK_DATA/SEEK_HOLE)` + `copy_file_range`/`sendfile`—copies the data extents of
/// bytes `range` of `src` into `dst` at the same offsets, without preparing `dst` (its bytes
/// in `range` should read as zeros, e.g. a fresh file extended with `ftruncate`): the part of
/// [`copy_sparse`] after the preparation, for a copy of one range.
///
/// # Errors
///
/// As [`copy_sparse`].
pub fn copy_extents(
    src: impl AsFd,
    dst: impl AsFd,
    range: std::ops::Range<u64>,
) -> io::Result<CopyStats> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    let len = range.end;
    let mut stats = CopyStats::default();
    let mut method = CopyMethod::CopyFileRange;
    let mut off = range.start;
    while off < len {
        let data = match retry_on_intr(|| rustix::fs::seek(src, SeekFrom::Data(off))) {
            Ok(d) => d,
            // ENXIO: no data at or after `off`.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = match retry_on_intr(|| rustix::fs::seek(src, SeekFrom::Hole(data))) {
            Ok(h) => h,
            Err(Errno::NXIO) => len, // the file shrank under us; the copy below reports it
            Err(e) => return Err(e.into()),
        };
        let end = hole.clamp(data + 1, len);
        copy_range(src, dst, data, end - data, &mut method)?;
        stats.bytes += end - data;
        stats.extents += 1;
        off = end;
    }
    stats.method = method;
    Ok(stats)
}

/// Copies `count` bytes at offset `off` of `src` to the same offset of `dst`, falling back
/// from `copy_file_range` to `sendfile` to `pread`/`pwrite` as the kernel refuses.
fn copy_range(
    src: rustix::fd::BorrowedFd<'_>,
    dst: rustix::fd::BorrowedFd<'_>,
    off: u64,
    count: u64,
    method: &mut CopyMethod,
) -> io::Result<()> {
    let mut done = 0u64;
    // Whether `dst`'s file position is at `off + done` (needed by sendfile).
    let mut dst_positioned = false;
    let mut buf: Vec<u8> = Vec::new();
    while done < count {
        let chunk = usize::try_from((count - done).min(MAX_CHUNK)).unwrap_or(1 << 30);
        let r = match *method {
            CopyMethod::CopyFileRange => {
                let (mut o_in, mut o_out) = (off + done, off + done);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut o_in),
                    dst,
                    Some(&mut o_out),
                    chunk,
                ) {
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        *method = CopyMethod::Sendfile;
                        continue;
                    }
                    r => r,
                }
            }
            CopyMethod::Sendfile => {
                if !dst_positioned {
                    retry_on_intr(|| rustix::fs::seek(dst, SeekFrom::Start(off + done)))?;
                    dst_positioned = true;
                }
                let mut o_in = off + done;
                match rustix::fs::sendfile(dst, src, Some(&mut o_in), chunk) {
                    Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        *method = CopyMethod::Buffer;
                        continue;
                    }
                    r => r,
                }
            }
            CopyMethod::Buffer => {
                if buf.is_empty() {
                    buf = vec![0u8; BUF_LEN];
                }
                let n = chunk.min(BUF_LEN);
                match retry_on_intr(|| rustix::io::pread(src, &mut buf[..n], off + done)) {
                    Ok(0) => Ok(0),
                    Ok(got) => {
                        write_all_at(dst, &buf[..got], off + done)?;
                        Ok(got)
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match r {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "source ended at {} while copying an extent up to {}",
                        off + done,
                        off + count
                    ),
                ))
            }
            Ok(n) => done += n as u64,
            Err(Errno::INTR) => {
                // sendfile may or may not have moved the position; place it again.
                dst_positioned = false;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `pwrite` until all of `buf` is written at `off`, retrying `EINTR`.
pub(crate) fn write_all_at(fd: impl AsFd, mut buf: &[u8], mut off: u64) -> io::Result<()> {
    let fd = fd.as_fd();
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, off) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                off += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `pread` until `buf` is full, retrying `EINTR`; returns the bytes read (less at EOF).
pub(crate) fn read_full_at(fd: impl AsFd, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let fd = fd.as_fd();
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(fd, &mut buf[got..], off) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                off += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// `fstat(fd).st_size` as `u64`.
pub(crate) fn file_len(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Calls `f(offset, len, is_data)` for each extent of bytes `0..len` of `fd`, in order,
/// using `lseek(SEEK_DATA/SEEK_HOLE)`. Moves `fd`'s file position.
pub(crate) fn for_each_extent(
    fd: impl AsFd,
    len: u64,
    mut f: impl FnMut(u64, u64, bool) -> io::Result<()>,
) -> io::Result<()> {
    let fd = fd.as_fd();
    let mut off = 0u64;
    while off < len {
        let data = match retry_on_intr(|| rustix::fs::seek(fd, SeekFrom::Data(off))) {
            Ok(d) => d.min(len),
            Err(Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        if data > off {
            f(off, data - off, false)?;
        }
        if data >= len {
            break;
        }
        let hole = match retry_on_intr(|| rustix::fs::seek(fd, SeekFrom::Hole(data))) {
            Ok(h) => h.clamp(data + 1, len),
            Err(Errno::NXIO) => len,
            Err(e) => return Err(e.into()),
        };
        f(data, hole - data, true)?;
        off = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::{allocated_bytes, Memfd};

    const MIB: u64 = 1 << 20;

    /// Writes `len` bytes of a position-dependent pattern at `off`.
    fn touch(fd: impl AsFd, off: u64, len: u64) {
        let mut buf = vec![0u8; len as usize];
        for (i, b) in buf.iter_mut().enumerate() {
            let p = off + i as u64;
            *b = (p ^ (p >> 8) ^ (p >> 16)) as u8 | 1;
        }
        write_all_at(fd, &buf, off).unwrap();
    }

    /// Compares two files' bytes `0..len` by `pread` in chunks.
    fn assert_same_bytes(a: impl AsFd, b: impl AsFd, len: u64) {
        let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
        let mut off = 0;
        while off < len {
            let n = (len - off).min(MIB) as usize;
            assert_eq!(read_full_at(&a, &mut x[..n], off).unwrap(), n);
            assert_eq!(read_full_at(&b, &mut y[..n], off).unwrap(), n);
            assert!(x[..n] == y[..n], "bytes differ in the MiB at {off}");
            off += n as u64;
        }
    }

    #[test]
    fn pread_of_memfd_holes_allocates_nothing() {
        let m = Memfd::create("t", 64 * MIB).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        for i in 0..64 {
            read_full_at(&m, &mut buf, i * MIB).unwrap();
        }
        assert_eq!(m.allocated().unwrap(), 0);
    }

    #[test]
    fn sparse_region_copies_only_touched_extents_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let m = Memfd::create("t", 256 * MIB).unwrap();
        m.seal_against_shrink().unwrap();
        // 16 MiB touched in four separate extents, one at the very end.
        for off in [0, 37 * MIB + 4096, 128 * MIB, 252 * MIB] {
            touch(&m, off, 4 * MIB);
        }
        let touched = m.allocated().unwrap();
        assert!((16 * MIB..=17 * MIB).contains(&touched), "{touched}");

        let file = std::fs::File::create_new(dir.path().join("snap")).unwrap();
        let s = copy_sparse(&m, &file, 256 * MIB).unwrap();
        // memfd -> ext4: copy_file_range gives EXDEV on this kernel; sendfile must take over.
        assert_ne!(s.method, CopyMethod::Buffer);
        assert_eq!(s.bytes, 16 * MIB);
        assert_eq!(s.extents, 4);
        assert_eq!(file_len(&file).unwrap(), 256 * MIB);
        let on_disk = allocated_bytes(&file).unwrap();
        assert!((16 * MIB..=18 * MIB).contains(&on_disk), "{on_disk}");
        assert_eq!(
            m.allocated().unwrap(),
            touched,
            "the copy allocated memfd holes"
        );

        // Restore direction: ext4 file -> a fresh memfd.
        let back = Memfd::create("back", 256 * MIB).unwrap();
        let s = copy_sparse(&file, &back, 256 * MIB).unwrap();
        assert_eq!((s.bytes, s.extents), (16 * MIB, 4));
        assert_ne!(s.method, CopyMethod::Buffer);
        let b = back.allocated().unwrap();
        assert!((16 * MIB..=17 * MIB).contains(&b), "{b}");
        assert_same_bytes(&m, &back, 256 * MIB);
        assert_same_bytes(&m, &file, 256 * MIB);
        assert_eq!(m.allocated().unwrap(), touched);
        assert_eq!(
            back.allocated().unwrap(),
            b,
            "comparing by pread allocated holes"
        );
    }

    #[test]
    fn all_zero_region_copies_nothing_and_full_region_copies_everything() {
        let dir = tempfile::tempdir().unwrap();
        let zero = Memfd::create("zero", 8 * MIB).unwrap();
        let f = std::fs::File::create_new(dir.path().join("z")).unwrap();
        let s = copy_sparse(&zero, &f, 8 * MIB).unwrap();
        assert_eq!((s.bytes, s.extents), (0, 0));
        assert_eq!(file_len(&f).unwrap(), 8 * MIB);
        assert_eq!(allocated_bytes(&f).unwrap(), 0);

        let full = Memfd::create("full", 3 * MIB + 8).unwrap();
        touch(&full, 0, 3 * MIB + 8);
        let g = std::fs::File::create_new(dir.path().join("g")).unwrap();
        let s = copy_sparse(&full, &g, 3 * MIB + 8).unwrap();
        assert_eq!((s.bytes, s.extents), (3 * MIB + 8, 1));
        assert_same_bytes(&full, &g, 3 * MIB + 8);
        let back = Memfd::create("back", 3 * MIB + 8).unwrap();
        copy_sparse(&g, &back, 3 * MIB + 8).unwrap();
        assert_same_bytes(&full, &back, 3 * MIB + 8);
    }

    #[test]
    fn copying_into_a_dirty_destination_leaves_no_stale_data() {
        let dirty = Memfd::create("dirty", 4 * MIB).unwrap();
        dirty.seal_against_shrink().unwrap();
        touch(&dirty, 0, 4 * MIB);
        let src = Memfd::create("src", 2 * MIB).unwrap();
        touch(&src, MIB, 4096);
        copy_sparse(&src, &dirty, 2 * MIB).unwrap();
        let mut b = vec![0u8; 2 * MIB as usize];
        read_full_at(&dirty, &mut b, 0).unwrap();
        assert!(b[..MIB as usize].iter().all(|&x| x == 0));
        assert_same_bytes(&src, &dirty, 2 * MIB);
        assert_eq!(
            file_len(&dirty).unwrap(),
            4 * MIB,
            "never shrinks the destination"
        );
    }

    #[test]
    fn every_fallback_method_copies_the_same_bytes() {
        let src = Memfd::create("s", 3 * MIB).unwrap();
        touch(&src, 0, 3 * MIB);
        for start in [
            CopyMethod::CopyFileRange,
            CopyMethod::Sendfile,
            CopyMethod::Buffer,
        ] {
            let dst = Memfd::create("d", 3 * MIB).unwrap();
            let mut method = start;
            copy_range(src.as_fd(), dst.as_fd(), 4096, 3 * MIB - 8192, &mut method).unwrap();
            let mut b = vec![1u8; 4096];
            read_full_at(&dst, &mut b, 0).unwrap();
            assert!(
                b.iter().all(|&x| x == 0),
                "{start:?} wrote before the range"
            );
            let mut x = vec![0u8; (3 * MIB - 8192) as usize];
            let mut y = x.clone();
            read_full_at(&src, &mut x, 4096).unwrap();
            read_full_at(&dst, &mut y, 4096).unwrap();
            assert!(
                x == y,
                "{start:?} (ended as {method:?}) copied different bytes"
            );
        }
    }

    #[test]
    fn short_source_is_reported_not_padded() {
        let src = Memfd::create("s", 4096).unwrap();
        let dst = Memfd::create("d", 0).unwrap();
        let e = copy_sparse(&src, &dst, 8192).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
