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

    /// `fstat(fd)` and `fcntl(fd, F_GET_SEALS)`—adopts an existing fd (e.g. one passed
    /// through `LISTEN_FDS`) as a region, after checking, without changing anything, that it
    /// is one: a nonempty memfd (a regular file that supports sealing) already sealed against
    /// shrinking (as every region a host makes is, so no holder can make a mapping `SIGBUS`)
    /// and not sealed against writes (it could not be mapped shared and writable).
    ///
    /// A file on disk handed over by mistake is refused untouched: it is never grown,
    /// truncated or sealed here.
    ///
    /// # References
    ///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
    ///  - [Linux `fcntl` (file sealing)](https://man7.org/linux/man-pages/man2/fcntl.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput`, saying what the fd is, if it is not a regular file, does not support
    /// sealing (not a memfd), lacks `F_SEAL_SHRINK`, has `F_SEAL_WRITE`/`F_SEAL_FUTURE_WRITE`,
    /// or is empty; `fstat`'s errors.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let st = rustix::fs::fstat(&fd)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return bad(format!(
                "the region fd is a {kind:?}, not a regular file or memfd"
            ));
        }
        let seals = match rustix::fs::fcntl_get_seals(&fd) {
            Ok(s) => s,
            Err(rustix::io::Errno::INVAL) => {
                return bad(format!(
                    "the region fd is a regular file that does not support sealing (a file on \
                     disk, {} bytes?), not a memfd; left untouched",
                    st.st_size
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if !seals.contains(SealFlags::SHRINK) {
            return bad(
                "the region memfd is not sealed against shrinking (F_SEAL_SHRINK): a \
                 truncation would make every access fault with SIGBUS"
                    .to_owned(),
            );
        }
        if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
            return bad(format!(
                "the region memfd is sealed against writes ({seals:?}); it cannot be a region"
            ));
        }
        if st.st_size <= 0 {
            return bad(
                "the region fd is an empty file (size 0); the host must size it first".to_owned(),
            );
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
    fn adopting_checks_without_changing_anything() {
        let m = Memfd::create("t", 0).unwrap();
        m.seal_against_shrink().unwrap();
        let e = Memfd::from_fd(m.into_fd()).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let dir = std::fs::File::open("/").unwrap();
        let e = Memfd::from_fd(dir.into()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // A regular file on disk (issue 11, item 12: it used to be grown by the host).
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("not-a-region");
        std::fs::write(&path, [7u8; 100]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let e = Memfd::from_fd(f.into()).unwrap_err();
        assert!(e.to_string().contains("not a memfd"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), [7u8; 100], "left untouched");
        // An unsealed memfd is refused and stays unsealed.
        let m = Memfd::create("t", 64).unwrap();
        let fd = m.into_fd();
        let e = Memfd::from_fd(fd.try_clone().unwrap()).unwrap_err();
        assert!(e.to_string().contains("F_SEAL_SHRINK"), "{e}");
        assert_eq!(
            rustix::fs::fcntl_get_seals(&fd).unwrap(),
            SealFlags::empty()
        );
        // Write-sealed: refused.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let w = fd.try_clone().unwrap();
        rustix::fs::fcntl_add_seals(&w, SealFlags::FUTURE_WRITE).unwrap();
        let e = Memfd::from_fd(w).unwrap_err();
        assert!(e.to_string().contains("sealed against writes"), "{e}");
        // A sealed memfd is adopted.
        let ok = Memfd::create("t", 64).unwrap();
        ok.seal_against_shrink().unwrap();
        let m = Memfd::from_fd(ok.into_fd()).unwrap();
        assert_eq!(m.len().unwrap(), 64);
    }
}
