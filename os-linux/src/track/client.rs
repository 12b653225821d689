//! Client side: register the client's own mapping with a `userfaultfd` in async
//! write-protect mode.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use linux_raw_sys::general::{
    uffdio_api, uffdio_range, uffdio_register, uffdio_writeprotect, _UFFDIO_REGISTER,
    _UFFDIO_WRITEPROTECT, UFFDIO_REGISTER_MODE_WP, UFFD_API, UFFD_FEATURE_WP_ASYNC,
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM, UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
};
use rustix::io::Errno;
use rustix::ioctl::{ioctl, Opcode, Updater};
use rustix::mm::UserfaultfdFlags;

use crate::mapping::Mapping;

/// The features tracking needs, all three: async faults (no handler thread), write-protect on
/// shmem (the region is a memfd), and markers on empty entries (pages the client never
/// touched are protected too, so an empty entry later means "zapped after a write").
const FEATURES: u64 =
    (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED) as u64;

/// `UFFDIO_WRITEPROTECT_MODE_WP` (`(__u64)1 << 0` in `linux/userfaultfd.h`; bindgen skips it).
const WRITEPROTECT_MODE_WP: u64 = 1;

/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: Opcode = linux_raw_sys::ioctl::UFFDIO_API as Opcode;
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: Opcode = linux_raw_sys::ioctl::UFFDIO_REGISTER as Opcode;
/// `UFFDIO_WRITEPROTECT`: `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: Opcode = linux_raw_sys::ioctl::UFFDIO_WRITEPROTECT as Opcode;

/// Why the client could not set tracking up.
#[derive(Debug)]
pub enum TrackError {
    /// This kernel or sandbox cannot track writes; the host must take full snapshots. The
    /// message names what is missing.
    Unavailable(String),
    /// An unexpected error from a tracking syscall.
    Io {
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for TrackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(
                f,
                "write tracking is unavailable ({why}); every snapshot will copy the whole region"
            ),
            Self::Io { op, source } => write!(f, "write tracking: {op} failed: {source}"),
        }
    }
}

impl std::error::Error for TrackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Unavailable(_) => None,
        }
    }
}

/// Write tracking of one mapping in this process; dropping it ends tracking (RAII).
///
/// Holds the `userfaultfd` whose registration marks the range. Keep it alive as long as the
/// mapping it was made for (the field order of an owning struct should drop it first; dropping
/// it later is harmless: the kernel dropped the registration with the mapping).
#[derive(Debug)]
pub struct Tracker {
    /// The `userfaultfd` (`O_CLOEXEC | O_NONBLOCK`, user-mode faults only); nothing is ever
    /// read from it in async mode. Closing it unregisters the range.
    uffd: OwnedFd,
    /// Start address of the registered range, page-aligned.
    addr: u64,
    /// Length of the registered range in bytes: a nonzero multiple of the page size.
    len: u64,
}

impl Tracker {
    /// `userfaultfd(UFFD_USER_MODE_ONLY | O_CLOEXEC | O_NONBLOCK)`, `UFFDIO_API` (async
    /// write-protect features), `UFFDIO_REGISTER` (`MODE_WP`) over the mapping rounded up to
    /// whole pages, then `UFFDIO_WRITEPROTECT` of the whole range.
    ///
    /// The initial write-protect is not optional: with `WP_UNPOPULATED` it gives every empty
    /// entry a marker, so that an empty entry seen by a later scan means "written, then
    /// zapped" and is reported (see the [module docs](super)). It costs 25–65 ms per GiB on
    /// 6.18 (page tables for the whole range are allocated). The host still treats its first
    /// scan of a registration as "copy everything": stores made before this call returned are
    /// not tracked.
    ///
    /// Never write-protect the range again from the client after this: a client-side protect
    /// would hide the pages written since the host's last scan.
    ///
    /// # References
    ///  - [Linux `userfaultfd`](https://man7.org/linux/man-pages/man2/userfaultfd.2.html)
    ///  - [`ioctl_userfaultfd`](https://man7.org/linux/man-pages/man2/ioctl_userfaultfd.2.html)
    ///  - [Documentation/admin-guide/mm/userfaultfd.rst](https://docs.kernel.org/admin-guide/mm/userfaultfd.html)
    ///
    /// # Errors
    ///
    /// [`TrackError::Unavailable`] if the kernel has no `userfaultfd`, refuses it here
    /// (`EPERM` from a sandbox), lacks one of the features (named in the message), or refuses
    /// to register this mapping; [`TrackError::Io`] for anything else.
    pub fn register(map: &Mapping) -> Result<Self, TrackError> {
        let page = super::page_size();
        let addr = map.words().as_ptr() as u64;
        let len = (map.len() as u64).div_ceil(page) * page;
        let uffd = open_uffd()?;
        handshake(&uffd)?;
        register_wp(&uffd, addr, len)?;
        write_protect(&uffd, addr, len)?;
        Ok(Self { uffd, addr, len })
    }

    /// Start address of the tracked range (page-aligned), for the [`Advertisement`](super::Advertisement).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length of the tracked range in bytes (whole pages), for the
    /// [`Advertisement`](super::Advertisement).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`: a tracker covers at least one page. Here for clippy.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsFd for Tracker {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.uffd.as_fd()
    }
}

/// `userfaultfd(UFFD_USER_MODE_ONLY | O_CLOEXEC | O_NONBLOCK)`.
fn open_uffd() -> Result<OwnedFd, TrackError> {
    let flags = UserfaultfdFlags::CLOEXEC
        | UserfaultfdFlags::NONBLOCK
        | UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
    // SAFETY: creating the fd is harmless; what a userfaultfd can do to this process's memory
    // is limited here to async write-protect tracking (set up below), which never blocks a
    // fault and never changes what a load or store observes.
    match unsafe { rustix::mm::userfaultfd(flags) } {
        Ok(fd) => Ok(fd),
        Err(e) if e == Errno::NOSYS => Err(TrackError::Unavailable(
            "the kernel has no userfaultfd (CONFIG_USERFAULTFD)".into(),
        )),
        Err(e) if e == Errno::PERM || e == Errno::ACCESS => Err(TrackError::Unavailable(format!(
            "userfaultfd is not permitted here ({e}); check vm.unprivileged_userfaultfd or \
             the seccomp policy"
        ))),
        Err(e) if e == Errno::INVAL => Err(TrackError::Unavailable(
            "the kernel does not know UFFD_USER_MODE_ONLY (Linux 5.11+)".into(),
        )),
        Err(e) => Err(TrackError::Io {
            op: "userfaultfd",
            source: e.into(),
        }),
    }
}

/// `UFFDIO_API` asking for [`FEATURES`]; on refusal, asks a fresh fd what is supported to
/// name the missing features.
fn handshake(uffd: &OwnedFd) -> Result<(), TrackError> {
    let mut api = uffdio_api {
        api: UFFD_API as u64,
        features: FEATURES,
        ioctls: 0,
    };
    // SAFETY: `UFFDIO_API` reads and writes exactly one `struct uffdio_api`, which `api` is
    // (the linux-raw-sys binding of the kernel's struct).
    match unsafe { updater::<UFFDIO_API, _>(uffd, &mut api) } {
        Ok(()) => {}
        Err(e) if e == Errno::INVAL => {
            return Err(TrackError::Unavailable(missing_features()));
        }
        Err(e) => {
            return Err(TrackError::Io {
                op: "UFFDIO_API",
                source: e.into(),
            })
        }
    }
    if api.features & FEATURES != FEATURES || api.ioctls & (1 << _UFFDIO_REGISTER) == 0 {
        return Err(TrackError::Unavailable(format!(
            "UFFDIO_API granted features {:#x}, ioctls {:#x}; needed features {FEATURES:#x}",
            api.features, api.ioctls
        )));
    }
    Ok(())
}

/// Names the features of [`FEATURES`] this kernel lacks (a zero-feature `UFFDIO_API` on a
/// fresh fd reports every supported feature).
fn missing_features() -> String {
    let probe = || -> Result<u64, TrackError> {
        let fd = open_uffd()?;
        let mut api = uffdio_api {
            api: UFFD_API as u64,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: as in `handshake`: one `struct uffdio_api`, read and written by the kernel.
        unsafe { updater::<UFFDIO_API, _>(&fd, &mut api) }.map_err(|e| TrackError::Io {
            op: "UFFDIO_API",
            source: e.into(),
        })?;
        Ok(api.features)
    };
    let Ok(have) = probe() else {
        return "the kernel refused the userfaultfd API handshake".into();
    };
    let names = [
        (UFFD_FEATURE_WP_ASYNC, "UFFD_FEATURE_WP_ASYNC (Linux 6.7+)"),
        (
            UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            "UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux 5.19+)",
        ),
        (
            UFFD_FEATURE_WP_UNPOPULATED,
            "UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4+)",
        ),
    ];
    let missing: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| have & u64::from(*bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        format!("the kernel refused features {FEATURES:#x} although it lists them ({have:#x})")
    } else {
        format!("the kernel lacks {}", missing.join(", "))
    }
}

/// `UFFDIO_REGISTER` of `[addr, addr + len)` in write-protect mode.
fn register_wp(uffd: &OwnedFd, addr: u64, len: u64) -> Result<(), TrackError> {
    let mut reg = uffdio_register {
        range: uffdio_range { start: addr, len },
        mode: u64::from(UFFDIO_REGISTER_MODE_WP),
        ioctls: 0,
    };
    // SAFETY: `UFFDIO_REGISTER` reads and writes one `struct uffdio_register`, which `reg`
    // is; the range is a live mapping of this process (the caller's `&Mapping`).
    match unsafe { updater::<UFFDIO_REGISTER, _>(uffd, &mut reg) } {
        Ok(()) => {}
        Err(e) if e == Errno::INVAL => {
            return Err(TrackError::Unavailable(format!(
                "the kernel refused to write-protect-register this mapping \
                 ({addr:#x}+{len:#x}: EINVAL)"
            )))
        }
        Err(e) => {
            return Err(TrackError::Io {
                op: "UFFDIO_REGISTER",
                source: e.into(),
            })
        }
    }
    if reg.ioctls & (1 << _UFFDIO_WRITEPROTECT) == 0 {
        return Err(TrackError::Unavailable(
            "the registered range does not support UFFDIO_WRITEPROTECT".into(),
        ));
    }
    Ok(())
}

/// `UFFDIO_WRITEPROTECT` of `[addr, addr + len)` with `MODE_WP`.
fn write_protect(uffd: &OwnedFd, addr: u64, len: u64) -> Result<(), TrackError> {
    let mut wp = uffdio_writeprotect {
        range: uffdio_range { start: addr, len },
        mode: WRITEPROTECT_MODE_WP,
    };
    // SAFETY: `UFFDIO_WRITEPROTECT` reads (and may write back) one `struct
    // uffdio_writeprotect`, which `wp` is; protecting only changes page-table bits, and in
    // async mode a later store is resolved by the kernel without blocking.
    let r = unsafe { updater::<UFFDIO_WRITEPROTECT, _>(uffd, &mut wp) };
    r.map_err(|e| TrackError::Io {
        op: "UFFDIO_WRITEPROTECT",
        source: e.into(),
    })
}

/// `ioctl(fd, OP, arg)` for an ioctl that reads and writes back one `T`.
///
/// # Safety
///
/// - `OP` must be an ioctl of the fd's kind whose argument is a pointer to exactly one `T`
///   (the kernel's struct of that name, as bound by linux-raw-sys);
/// - the ioctl must not affect memory other than `*arg` in a way Rust can observe.
unsafe fn updater<const OP: Opcode, T>(fd: &OwnedFd, arg: &mut T) -> rustix::io::Result<()> {
    // SAFETY: the caller guarantees `OP` takes a pointer to one `T`.
    let call = unsafe { Updater::<OP, T>::new(arg) };
    // SAFETY: as above; `arg` is a live, exclusive `&mut T` for the duration of the call.
    unsafe { ioctl(fd, call) }
}
