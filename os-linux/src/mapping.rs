//! Owned RAII `MAP_SHARED` mapping of a region, seen only as atomic 64-bit words.
//!
//! The region is shared with other processes that change it concurrently, so this module never
//! hands out `&[u8]`/`&mut [u8]` into it: the only view is `&[AtomicU64]`
//! ([`Mapping::words`]), which core's `WordMemory` accepts directly.
//!
//! This is the one module that maps memory, hence `#![allow(unsafe_code)]` here only.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::memfd::Memfd;
use crate::track::Tracker;

/// Access mode of a [`Mapping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// `PROT_READ`: only atomic *loads* are allowed on [`Mapping::words`]; a store or
    /// read-modify-write faults (`SIGSEGV`, the process dies — no undefined behaviour, since
    /// atomic loads on read-only memory are allowed and stores simply trap).
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// An owned shared mapping of the first `len` bytes of a file; `munmap` on drop.
///
/// The mapping keeps the file alive by itself (the kernel holds a reference), so the fd it was
/// made from may be closed.
#[derive(Debug)]
pub struct Mapping {
    /// Start of the mapping; page-aligned, hence 8-byte aligned. Invariant: `len` bytes from
    /// here are mapped `MAP_SHARED` until `drop`.
    ptr: NonNull<AtomicU64>,
    /// Length in bytes, a nonzero multiple of 8.
    len: usize,
    prot: Protection,
    /// Write tracking of this mapping (client side), if registered
    /// ([`Mapping::set_tracker`]). Invariant: registered over exactly this mapping; dropped
    /// (closing the `userfaultfd`, which unregisters the range) before the `munmap` in `drop`.
    tracker: Option<Tracker>,
}

// SAFETY: the mapping is only accessed through `&[AtomicU64]`, and `AtomicU64` is `Sync`;
// the pointer is owned (no aliasing `Mapping`), and `munmap` may run on any thread.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only gives out `&[AtomicU64]`, which is safe to share between threads.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `mmap(NULL, len, prot, MAP_SHARED, fd, 0)` of a whole memfd sealed against shrinking.
    ///
    /// This is safe because the `F_SEAL_SHRINK` seal (checked here; seals can never be removed)
    /// guarantees the file stays at least as long as the mapping, so no access can `SIGBUS`,
    /// and the only view handed out is atomic words.
    ///
    /// # References
    ///  - [Linux `mmap`](https://man7.org/linux/man-pages/man2/mmap.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the memfd is not sealed against shrinking, or its length is zero or
    /// not a multiple of 8, or does not fit in `usize`; `PermissionDenied` for a read-write
    /// mapping of a region sealed against writes (its tracked writer sealed it, see
    /// [`Memfd::seal_future_write`]); `mmap`'s errors (`EACCES` for a read-write mapping of a
    /// read-only fd, `ENOMEM`).
    pub fn of_memfd(memfd: &Memfd, prot: Protection) -> io::Result<Self> {
        let seals = memfd.seals()?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "refusing to map a region that is not sealed against shrinking \
                 (F_SEAL_SHRINK): a truncation would make every access fault with SIGBUS",
            ));
        }
        if prot == Protection::ReadWrite
            && seals.intersects(SealFlags::FUTURE_WRITE | SealFlags::WRITE)
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the region is sealed against new writable mappings (F_SEAL_FUTURE_WRITE): \
                 the client that tracks its writes already has it open for writing",
            ));
        }
        let len = usize::try_from(memfd.len()?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        // SAFETY: F_SEAL_SHRINK (checked above, irrevocable) keeps the file at least `len`
        // bytes long for the life of the mapping; the memory is only exposed as atomics.
        unsafe { Self::from_fd(memfd, len, prot) }
    }

    /// `mmap(NULL, len, prot, MAP_SHARED, fd, 0)`—maps the first `len` bytes of any file.
    ///
    /// # Safety
    ///
    /// Mirrors rustix's `mmap`: the caller is responsible for the Rust reference invariants of
    /// the memory handed out. Concretely:
    ///
    /// - the file must stay at least `len` bytes long for as long as the returned value (or any
    ///   `&[AtomicU64]` borrowed from it) lives; otherwise accesses fault with `SIGBUS`;
    /// - every other access to the mapped bytes, in this process or another, must be atomic
    ///   (or word-sized stores the protocol tolerates racing with these atomic loads); no
    ///   `&[u8]`/`&mut [u8]` to the same memory may exist in this process.
    ///
    /// # References
    ///  - [Linux `mmap`](https://man7.org/linux/man-pages/man2/mmap.2.html)
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `len` is zero or not a multiple of 8, or larger than the file;
    /// `mmap`'s errors.
    pub unsafe fn from_fd(fd: impl AsFd, len: usize, prot: Protection) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mapping length {len} must be a nonzero multiple of 8 bytes"),
            ));
        }
        let file_len = rustix::fs::fstat(&fd)?.st_size;
        if u64::try_from(file_len).unwrap_or(0) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot map {len} bytes of a file of only {file_len} bytes"),
            ));
        }
        let flags = match prot {
            Protection::ReadOnly => ProtFlags::READ,
            Protection::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a null hint lets the kernel pick fresh address space, so no existing Rust
        // memory is affected; the caller upholds the invariants for the new memory.
        let ptr =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, flags, MapFlags::SHARED, fd, 0)? };
        let ptr = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned a null pointer"))?;
        Ok(Self {
            ptr,
            len,
            prot,
            tracker: None,
        })
    }

    /// Length of the mapping in bytes (a nonzero multiple of 8).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping is never empty. Here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How the memory is mapped.
    pub fn protection(&self) -> Protection {
        self.prot
    }

    /// Keeps `tracker` (registered over this mapping by [`Tracker::register`]) alive as long
    /// as the mapping, and drops it before unmapping. Replaces (drops) a previous tracker.
    ///
    /// # Errors
    ///
    /// `InvalidInput` (and `tracker` is dropped) if it does not cover exactly this mapping.
    pub fn set_tracker(&mut self, tracker: Tracker) -> io::Result<()> {
        let page = rustix::param::page_size();
        let expected = self.len.div_ceil(page) * page;
        if tracker.addr() != self.ptr.as_ptr() as u64 || tracker.len() != expected as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the tracker was registered over another range than this mapping",
            ));
        }
        self.tracker = Some(tracker);
        Ok(())
    }

    /// `madvise(MADV_DONTFORK)` over the whole mapping: a child forked from this process
    /// does not inherit it (the range is unmapped there; touching it is `SIGSEGV`). For the
    /// client's tracked mapping: a child's stores would bypass the parent's write tracking
    /// (DESIGN §11). Shows as `dc` in `/proc/PID/smaps` `VmFlags`.
    ///
    /// # References
    ///  - [Linux `madvise`](https://man7.org/linux/man-pages/man2/madvise.2.html)
    ///
    /// # Errors
    ///
    /// `madvise`'s errors (`EINVAL` where the kernel does not know the advice).
    pub fn dont_fork(&self) -> io::Result<()> {
        // SAFETY: `ptr`/`len` are exactly this live mapping (the field invariant); DONTFORK
        // changes only what a future fork copies, nothing any reference in this process sees.
        unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                rustix::mm::Advice::LinuxDontFork,
            )
        }?;
        Ok(())
    }

    /// The write tracker of this mapping, if one is registered.
    pub fn tracker(&self) -> Option<&Tracker> {
        self.tracker.as_ref()
    }

    /// Drops the write tracker (unregistering the range), if any; returns whether there was one.
    pub fn drop_tracker(&mut self) -> bool {
        self.tracker.take().is_some()
    }

    /// The region as `len() / 8` atomic words, for core's `WordMemory`.
    ///
    /// For a [`Protection::ReadOnly`] mapping only atomic loads may be used.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is page-aligned (so aligned for AtomicU64) and `len` bytes = len/8
        // words are mapped until `drop`, which the borrow of `self` outlives; the memory may
        // change concurrently, which `AtomicU64` (interior mutability) permits.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len / 8) }
    }
}

impl Drop for Mapping {
    /// Drops the tracker, then `munmap(ptr, len)`.
    fn drop(&mut self) {
        // Unregister before unmapping (the field's invariant). First mark the advertisement
        // "changing" (odd generation, the protocol of `track::Advertisement`): a host scan
        // racing this drop then distrusts itself. Release: orders the client's earlier
        // stores before the mark, as every advertisement store.
        if let Some(t) = self.tracker.take() {
            let g = self.words().get(shmsnap_core::format::word::TRACK.end - 1);
            if let Some(g) = g.filter(|_| self.prot == Protection::ReadWrite) {
                g.fetch_or(1, std::sync::atomic::Ordering::Release);
            }
            drop(t);
        }
        // SAFETY: `ptr`/`len` are exactly what mmap returned; no borrow of `words()` can
        // outlive `&self`, so nothing refers to the memory any more.
        let r = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        debug_assert!(r.is_ok(), "munmap failed: {r:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn words_written_through_one_mapping_are_seen_through_another() {
        let m = Memfd::create("t", 8 * 1024).unwrap();
        m.seal_against_shrink().unwrap();
        let rw = Mapping::of_memfd(&m, Protection::ReadWrite).unwrap();
        let ro = Mapping::of_memfd(&m, Protection::ReadOnly).unwrap();
        assert_eq!(rw.len(), 8192);
        assert_eq!(rw.words().len(), 1024);
        assert_eq!(ro.protection(), Protection::ReadOnly);
        for (i, w) in rw.words().iter().enumerate() {
            w.store(i as u64 * 3 + 1, Ordering::Relaxed);
        }
        for (i, w) in ro.words().iter().enumerate() {
            assert_eq!(w.load(Ordering::Relaxed), i as u64 * 3 + 1);
        }
        // And through the file (pread), never through a byte slice of the mapping.
        let mut buf = [0u8; 8];
        rustix::io::pread(&m, &mut buf, 8 * 5).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 16);
        drop(rw);
        drop(m);
        assert_eq!(
            ro.words()[7].load(Ordering::Relaxed),
            22,
            "mapping outlives the fd"
        );
    }

    #[test]
    fn unsealed_or_odd_sized_regions_are_refused() {
        let m = Memfd::create("t", 4096).unwrap();
        let e = Mapping::of_memfd(&m, Protection::ReadOnly).unwrap_err();
        assert!(e.to_string().contains("F_SEAL_SHRINK"), "{e}");
        let m = Memfd::create("t", 12).unwrap();
        m.seal_against_shrink().unwrap();
        assert!(Mapping::of_memfd(&m, Protection::ReadOnly).is_err());
        // SAFETY: the memfd is sealed against shrinking; the call fails before mapping.
        let e = unsafe { Mapping::from_fd(&m, 16, Protection::ReadOnly) }.unwrap_err();
        assert!(e.to_string().contains("only 12 bytes"), "{e}");
    }
}
