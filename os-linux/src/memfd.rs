//! The region's file: a `memfd` that can grow but, once sealed, never shrink.
//!
//! A client holding a writable mapping of the region must not be able to make the host's own
//! mapping fault with `SIGBUS` by truncating the file; [`Memfd::seal_against_shrink`] adds
//! `F_SEAL_SHRINK`, which the kernel enforces for every holder of the fd, forever.
//!
//! `F_SEAL_SEAL` is deliberately *not* added by default. It does not block growing (only
//! `F_SEAL_GROW` does), but it forbids adding any further seal, and the host may later want to
//! add `F_SEAL_GROW` once a region's size is final. The price: a client holding the fd can add
//! seals too (e.g. `F_SEAL_GROW`, making the host's next [`Memfd::grow`] fail with `EPERM`,
//! which is reported, never undefined behaviour). A host that wants to close that door calls
//! [`Memfd::seal_seals`] once the size is final.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, MemfdFlags, SealFlags};

/// An owned memfd (or another regular, memfd-like file) holding a shared-memory region.
///
/// The region's size is the file's size; it only ever grows through this type.
#[derive(Debug)]
pub struct Memfd {
    fd: OwnedFd,
}

impl Memfd {
    /// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)` then `ftruncate(fd, len)`.
    ///
    /// The new file is all holes: nothing is allocated until a page is written (or read
    /// through a mapping).
    ///
    /// # References
    ///  - [Linux `memfd_create`](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
    ///  - [Linux `ftruncate`](https://man7.org/linux/man-pages/man2/ftruncate.2.html)
    ///
    /// # Errors
    ///
    /// The syscalls' errors: `EINVAL` for a name longer than 249 bytes or containing a NUL,
    /// `EMFILE`/`ENFILE`, `ENOMEM`, `EFBIG` for an impossible size.
    pub fn create(name: &str, len: u64) -> io::Result<Self> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len)?;
        Ok(Self { fd })
    }

    /// `fstat(fd)`—adopts an existing fd (e.g. one passed through `LISTEN_FDS`) as a region.
    ///
    /// The fd must be a regular file (memfds are regular files) of nonzero size. Whether it is
    /// actually a memfd and whether it is sealed is not required here; [`Memfd::seals`] tells.
    ///
    /// # References
    ///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the fd is not a regular file or is empty; `fstat`'s errors.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let st = rustix::fs::fstat(&fd)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the region fd is a {kind:?}, not a regular file or memfd"),
            ));
        }
        if st.st_size <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the region fd is an empty file (size 0); the host must size it first",
            ));
        }
        Ok(Self { fd })
    }

    /// `fstat(fd).st_size`—the region's current length in bytes.
    ///
    /// # References
    ///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
    ///
    /// # Errors
    ///
    /// `fstat`'s errors.
    pub fn len(&self) -> io::Result<u64> {
        let st = rustix::fs::fstat(&self.fd)?;
        // st_size of a regular file is never negative.
        Ok(u64::try_from(st.st_size).unwrap_or(0))
    }

    /// `fstat(fd).st_size == 0`.
    ///
    /// # Errors
    ///
    /// `fstat`'s errors.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// `fstat(fd).st_blocks * 512`—bytes actually allocated (pages touched).
    ///
    /// # References
    ///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
    ///
    /// # Errors
    ///
    /// `fstat`'s errors.
    pub fn allocated(&self) -> io::Result<u64> {
        allocated_bytes(&self.fd)
    }

    /// `ftruncate(fd, new_len)` if `new_len` is larger than the current length; never shrinks.
    ///
    /// Growing is allowed under `F_SEAL_SHRINK`; the new tail is holes.
    ///
    /// # References
    ///  - [Linux `ftruncate`](https://man7.org/linux/man-pages/man2/ftruncate.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `new_len` is smaller than the current length; `EPERM` if someone added
    /// `F_SEAL_GROW`; `ftruncate`'s other errors.
    pub fn grow(&self, new_len: u64) -> io::Result<()> {
        let cur = self.len()?;
        if new_len < cur {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot shrink the region from {cur} to {new_len} bytes (grow only)"),
            ));
        }
        if new_len > cur {
            rustix::fs::ftruncate(&self.fd, new_len)?;
        }
        Ok(())
    }

    /// `fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)`—nobody can make the file smaller, ever.
    ///
    /// # References
    ///  - [Linux `memfd_create` (sealing)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
    ///  - [Linux `fcntl` (file sealing)](https://man7.org/linux/man-pages/man2/fcntl.2.html)
    ///
    /// # Errors
    ///
    /// `EINVAL` if the file does not support sealing (not a memfd); `EPERM` if `F_SEAL_SEAL`
    /// is already set (and `F_SEAL_SHRINK` is not).
    pub fn seal_against_shrink(&self) -> io::Result<()> {
        if self.seals()?.contains(SealFlags::SHRINK) {
            return Ok(());
        }
        rustix::fs::fcntl_add_seals(&self.fd, SealFlags::SHRINK)?;
        Ok(())
    }

    /// `fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL)`—no further seals can be added by anyone.
    ///
    /// See the [module docs](self) for why this is not part of
    /// [`seal_against_shrink`](Memfd::seal_against_shrink).
    ///
    /// # References
    ///  - [Linux `fcntl` (file sealing)](https://man7.org/linux/man-pages/man2/fcntl.2.html)
    ///
    /// # Errors
    ///
    /// `EINVAL` if the file does not support sealing.
    pub fn seal_seals(&self) -> io::Result<()> {
        if self.seals()?.contains(SealFlags::SEAL) {
            return Ok(());
        }
        rustix::fs::fcntl_add_seals(&self.fd, SealFlags::SEAL)?;
        Ok(())
    }

    /// `fcntl(fd, F_GET_SEALS)`—the seals currently set.
    ///
    /// # References
    ///  - [Linux `fcntl` (file sealing)](https://man7.org/linux/man-pages/man2/fcntl.2.html)
    ///
    /// # Errors
    ///
    /// `EINVAL` if the file does not support sealing (not a memfd).
    pub fn seals(&self) -> io::Result<SealFlags> {
        Ok(rustix::fs::fcntl_get_seals(&self.fd)?)
    }

    /// Gives up the owned fd.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Memfd> for OwnedFd {
    fn from(m: Memfd) -> OwnedFd {
        m.fd
    }
}

/// `fstat(fd).st_blocks * 512`—bytes allocated to any file.
///
/// # References
///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
///
/// # Errors
///
/// `fstat`'s errors.
pub fn allocated_bytes(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    Ok(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_grows_but_never_shrinks() {
        let m = Memfd::create("t", 4096).unwrap();
        assert_eq!(m.len().unwrap(), 4096);
        assert_eq!(m.allocated().unwrap(), 0, "a new memfd is all holes");
        m.seal_against_shrink().unwrap();
        m.seal_against_shrink().unwrap(); // idempotent
        assert!(m.seals().unwrap().contains(SealFlags::SHRINK));
        assert!(!m.seals().unwrap().contains(SealFlags::SEAL));
        m.grow(8192).unwrap();
        assert_eq!(m.len().unwrap(), 8192);
        let e = m.grow(4096).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // Bypass our API: the kernel itself refuses.
        let e = rustix::fs::ftruncate(&m, 4096).unwrap_err();
        assert_eq!(e, rustix::io::Errno::PERM);
        assert_eq!(m.len().unwrap(), 8192);
        m.seal_seals().unwrap();
        assert_eq!(
            rustix::fs::fcntl_add_seals(&m, SealFlags::GROW).unwrap_err(),
            rustix::io::Errno::PERM
        );
    }

    #[test]
    fn adopting_rejects_empty_and_non_regular_fds() {
        let m = Memfd::create("t", 0).unwrap();
        let e = Memfd::from_fd(m.into_fd()).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let dir = std::fs::File::open("/").unwrap();
        let e = Memfd::from_fd(dir.into()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let m = Memfd::create("t", 64).unwrap();
        let m = Memfd::from_fd(m.into_fd()).unwrap();
        assert_eq!(m.len().unwrap(), 64);
    }
}
