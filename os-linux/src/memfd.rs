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
//!
//! # The write seal of a tracked region
//!
//! A client whose writes are tracked for incremental snapshots seals its region with
//! `F_SEAL_FUTURE_WRITE` ([`Memfd::seal_future_write`], DESIGN §11): its own writable mapping,
//! made before the seal, keeps working; from then on no process can `write`/`pwrite` the
//! file (through any fd, a reopened `/proc/PID/fd/N` included) or map it writable again. Seals
//! are never removed, so a sealed region cannot be handed to a *new* client: the host moves
//! it into a fresh memfd first ([`Memfd::fresh_copy`]). Growing stays allowed.

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
    /// and without `F_SEAL_WRITE` (no process could ever map it writable again).
    ///
    /// A region sealed with `F_SEAL_FUTURE_WRITE` by its tracked client is adopted: it can be
    /// read and mapped read-only; [`Memfd::is_write_sealed`] tells, and a new writable
    /// mapping of it fails ([`Mapping::of_memfd`](crate::Mapping::of_memfd) says why).
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
    /// sealing (not a memfd), lacks `F_SEAL_SHRINK`, has `F_SEAL_WRITE`, or is empty;
    /// `fstat`'s errors.
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
        if seals.contains(SealFlags::WRITE) {
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

    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` over the whole file—frees every page: the region
    /// reads as zeros, as a new one does; its size and seals are kept.
    ///
    /// # References
    ///  - [Linux `fallocate`](https://man7.org/linux/man-pages/man2/fallocate.2.html)
    ///
    /// # Errors
    ///
    /// `fstat`'s and `fallocate`'s errors.
    pub fn clear(&self) -> io::Result<()> {
        let len = self.len()?;
        if len == 0 {
            return Ok(());
        }
        rustix::io::retry_on_intr(|| {
            rustix::fs::fallocate(
                &self.fd,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                0,
                len,
            )
        })?;
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

    /// `fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE)`—from now on no process can write the
    /// file (`write`, `pwrite`, through any fd) or map it writable; mappings made before keep
    /// working (see the [module docs](self)). Idempotent.
    ///
    /// # References
    ///  - [Linux `memfd_create` (sealing)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
    ///  - [Linux `fcntl` (file sealing)](https://man7.org/linux/man-pages/man2/fcntl.2.html)
    ///
    /// # Errors
    ///
    /// `EINVAL` if the file does not support sealing (not a memfd); `EPERM` if `F_SEAL_SEAL`
    /// is set (and this seal is not).
    pub fn seal_future_write(&self) -> io::Result<()> {
        if self.is_write_sealed()? {
            return Ok(());
        }
        rustix::fs::fcntl_add_seals(&self.fd, SealFlags::FUTURE_WRITE)?;
        Ok(())
    }

    /// `fcntl(fd, F_GET_SEALS)` shows `F_SEAL_FUTURE_WRITE` (or `F_SEAL_WRITE`): no new write
    /// and no new writable mapping of the file is possible, by any process, ever.
    ///
    /// # Errors
    ///
    /// As [`Memfd::seals`].
    pub fn is_write_sealed(&self) -> io::Result<bool> {
        Ok(self
            .seals()?
            .intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE))
    }

    /// A fresh region with this one's bytes: `memfd_create`, `ftruncate` to this one's length,
    /// `F_SEAL_SHRINK`, then a copy of the data extents only (holes stay holes;
    /// [`copy_extents`](crate::copy::copy_extents)). For a region sealed against writes, which
    /// no new client could map: the copy is not sealed against writes.
    ///
    /// The caller must make sure nobody writes this region during the copy (the host calls it
    /// only while no client runs). Until this one is dropped, the region's data exists twice.
    ///
    /// # Errors
    ///
    /// [`Memfd::create`]'s and the copy's errors (`ENOMEM`/`ENOSPC` when the data does not
    /// fit twice).
    pub fn fresh_copy(&self, name: &str) -> io::Result<(Memfd, crate::copy::CopyStats)> {
        let len = self.len()?;
        let fresh = Memfd::create(name, len)?;
        fresh.seal_against_shrink()?;
        let stats = crate::copy::copy_extents(self, &fresh, 0..len)?;
        Ok((fresh, stats))
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
        // F_SEAL_WRITE: refused; F_SEAL_FUTURE_WRITE (a tracked client's seal): adopted.
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        let w = fd.try_clone().unwrap();
        rustix::fs::fcntl_add_seals(&w, SealFlags::FUTURE_WRITE).unwrap();
        let m = Memfd::from_fd(w).unwrap();
        assert!(m.is_write_sealed().unwrap());
        let full = Memfd::create("t", 64).unwrap();
        full.seal_against_shrink().unwrap();
        rustix::fs::fcntl_add_seals(&full, SealFlags::WRITE).unwrap();
        let e = Memfd::from_fd(full.into_fd()).unwrap_err();
        assert!(e.to_string().contains("sealed against writes"), "{e}");
        // A sealed memfd is adopted.
        let ok = Memfd::create("t", 64).unwrap();
        ok.seal_against_shrink().unwrap();
        let m = Memfd::from_fd(ok.into_fd()).unwrap();
        assert_eq!(m.len().unwrap(), 64);
    }

    /// What the write seal does, measured on the running kernel (DESIGN §11 relies on each
    /// line): writes through the fd and through a reopened `/proc/self/fd/N` fail, a new
    /// writable mapping fails, a read-only one works, growing works, and the seal stays.
    #[test]
    fn the_write_seal_refuses_every_new_write_path_and_stays() {
        use rustix::fs::{Mode, OFlags};
        use rustix::io::Errno;
        use std::os::fd::AsRawFd;
        let m = Memfd::create("sealed", 8192).unwrap();
        m.seal_against_shrink().unwrap();
        assert!(!m.is_write_sealed().unwrap());
        rustix::io::pwrite(&m, b"before", 0).unwrap();
        m.seal_future_write().unwrap();
        m.seal_future_write().unwrap(); // idempotent
        assert!(m.is_write_sealed().unwrap());
        assert_eq!(
            rustix::io::pwrite(&m, b"after", 0).unwrap_err(),
            Errno::PERM
        );
        assert_eq!(rustix::io::write(&m, b"after").unwrap_err(), Errno::PERM);
        let path = format!("/proc/self/fd/{}", m.as_fd().as_raw_fd());
        let reopened = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .expect("reopening a sealed memfd read-write is allowed");
        assert_eq!(
            rustix::io::pwrite(&reopened, b"after", 0).unwrap_err(),
            Errno::PERM
        );
        let e = crate::Mapping::of_memfd(&m, crate::Protection::ReadWrite).unwrap_err();
        assert!(e.to_string().contains("F_SEAL_FUTURE_WRITE"), "{e}");
        let ro = crate::Mapping::of_memfd(&m, crate::Protection::ReadOnly).unwrap();
        let first = ro.words()[0].load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(first.to_le_bytes()[..6], *b"before");
        m.grow(16384).unwrap();
        assert_eq!(m.len().unwrap(), 16384);
        // Seals are never removed: a later adoption sees it too.
        let again = Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(&m, 0).unwrap()).unwrap();
        assert!(again.is_write_sealed().unwrap());
    }

    #[test]
    fn a_fresh_copy_holds_the_same_bytes_keeps_holes_and_is_writable() {
        let m = Memfd::create("old", 1 << 20).unwrap();
        m.seal_against_shrink().unwrap();
        rustix::io::pwrite(&m, &[7u8; 4096], 3 << 16).unwrap();
        rustix::io::pwrite(&m, b"tail", (1 << 20) - 4).unwrap();
        m.seal_future_write().unwrap();
        let (fresh, stats) = m.fresh_copy("new").unwrap();
        assert_eq!(fresh.len().unwrap(), 1 << 20);
        assert!(!fresh.is_write_sealed().unwrap());
        assert!(fresh.seals().unwrap().contains(SealFlags::SHRINK));
        assert_eq!(stats.bytes, 2 * 4096, "only the two data pages move");
        assert_eq!(fresh.allocated().unwrap(), 2 * 4096, "holes stay holes");
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        crate::copy::read_full_at(&m, &mut a, 0).unwrap();
        crate::copy::read_full_at(&fresh, &mut b, 0).unwrap();
        assert!(a == b, "the copy differs");
        rustix::io::pwrite(&fresh, b"writable", 0).unwrap();
        crate::Mapping::of_memfd(&fresh, crate::Protection::ReadWrite).unwrap();
    }
}
