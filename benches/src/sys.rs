//! The OS pieces the benchmarks need: memfd, shared mapping, sparse copy.
//!
//! STOPGAP: `shmsnap-linux` (os-linux/) is being written concurrently; until it builds, this
//! module provides the same names and signatures (`Memfd::create`, `seal_against_shrink`,
//! `Mapping::of_memfd`, `words`, `copy_sparse`) with rustix directly, so switching is a
//! change of `use` lines only.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use rustix::fs::{MemfdFlags, SealFlags, SeekFrom};
use rustix::io::{retry_on_intr, Errno};
use rustix::mm::{MapFlags, ProtFlags};

/// An owned memfd.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
}

impl Memfd {
    /// `memfd_create` + `ftruncate`: an all-holes memfd of `len` bytes.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    pub fn create(name: &str, len: u64) -> io::Result<Self> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len)?;
        Ok(Self { fd })
    }

    /// `fcntl(F_ADD_SEALS, F_SEAL_SHRINK)`.
    ///
    /// # Errors
    ///
    /// The syscall's errors.
    pub fn seal_against_shrink(&self) -> io::Result<()> {
        rustix::fs::fcntl_add_seals(&self.fd, SealFlags::SHRINK)?;
        Ok(())
    }

    /// `fstat(fd).st_size`.
    ///
    /// # Errors
    ///
    /// The syscall's errors.
    pub fn len(&self) -> io::Result<u64> {
        Ok(u64::try_from(rustix::fs::fstat(&self.fd)?.st_size).unwrap_or(0))
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Access mode of a [`Mapping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// `PROT_READ`.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// An owned `MAP_SHARED` mapping of a whole memfd; `munmap` on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<AtomicU64>,
    len: usize,
}

impl Mapping {
    /// `mmap(MAP_SHARED)` of a memfd sealed against shrinking.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the memfd is not sealed or its length is not a nonzero multiple of 8;
    /// `mmap`'s errors.
    pub fn of_memfd(memfd: &Memfd, prot: Protection) -> io::Result<Self> {
        if !rustix::fs::fcntl_get_seals(memfd)?.contains(SealFlags::SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "memfd not sealed",
            ));
        }
        let len = usize::try_from(memfd.len()?).map_err(io::Error::other)?;
        if len == 0 || len % 8 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad length"));
        }
        let flags = match prot {
            Protection::ReadOnly => ProtFlags::READ,
            Protection::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a null hint maps fresh address space; F_SEAL_SHRINK (checked above) keeps
        // the file at least `len` bytes long for the life of the mapping.
        let ptr = unsafe {
            rustix::mm::mmap(std::ptr::null_mut(), len, flags, MapFlags::SHARED, memfd, 0)?
        };
        let ptr = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("null"))?;
        Ok(Self { ptr, len })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapping as atomic words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: page-aligned, `len` bytes mapped until drop, which outlives `&self`;
        // `AtomicU64` permits concurrent modification.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range mmap returned; no borrow of `words()` outlives `&self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`, falling back to `sendfile`: copies bytes
/// `0..len` of `src` to the same offsets of `dst` (which is punched/extended to `len` first).
///
/// # Errors
///
/// The syscalls' errors.
pub fn copy_sparse(src: impl AsFd, dst: impl AsFd, len: u64) -> io::Result<u64> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    let dst_len = u64::try_from(rustix::fs::fstat(dst)?.st_size).unwrap_or(0);
    if dst_len > 0 {
        retry_on_intr(|| {
            rustix::fs::fallocate(
                dst,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                dst_len.min(len),
            )
        })?;
    }
    if dst_len < len {
        rustix::fs::ftruncate(dst, len)?;
    }
    let mut off = 0;
    let mut copied = 0;
    let mut use_cfr = true;
    while off < len {
        let data = match rustix::fs::seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= len {
            break;
        }
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(len);
        let mut at = data;
        while at < hole {
            let want = usize::try_from(hole - at).unwrap_or(1 << 30).min(1 << 30);
            let n = if use_cfr {
                let (mut i, mut o) = (at, at);
                match rustix::fs::copy_file_range(src, Some(&mut i), dst, Some(&mut o), want) {
                    Ok(n) => n,
                    Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                        use_cfr = false;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                rustix::fs::seek(dst, SeekFrom::Start(at))?;
                let mut i = at;
                retry_on_intr(|| rustix::fs::sendfile(dst, src, Some(&mut i), want))?
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            at += n as u64;
            copied += n as u64;
        }
        off = hole;
    }
    Ok(copied)
}
