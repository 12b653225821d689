//! The region handle: the shared memory, opened the systemd way or attached to the caller's
//! memory; durability feedback; word-atomic copies in and out.
//!
//! Every other handle holds a `Lease` on the region it was made from, and
//! `shmsnap_region_close` refuses while any lease is out: that is what makes the `'static`
//! word slices the other handles keep (`Lease::words`) sound.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use shmsnap_core::format::word;
use shmsnap_core::status as core_status;
use shmsnap_linux::listen::{open_client_region, DEFAULT_FD_NAME};
use shmsnap_linux::reclaim::{self, ReclaimError};
use shmsnap_linux::{status, Mapping, Memfd};

use crate::entry::{self, bytes, bytes_mut, handle_out, out, Handle};
use crate::status::{Error, SHMSNAP_E_TIMEOUT};

/// A shared-memory region: the region the host passed (`shmsnap_region_open`) or memory the
/// caller owns (`shmsnap_region_attach`).
///
/// Thread safety: every function taking a `const shmsnap_region *` may be called from any
/// thread, concurrently with each other and with the calls on handles made from the region.
/// `shmsnap_region_write` and `shmsnap_region_close` must not run concurrently with any other
/// call on the region or its handles.
///
/// Fork: the region is opened once per process and is not inherited by `fork`: a child must
/// not use any shmsnap handle of its parent (the mapping is not carried into the child).
#[derive(Debug)]
pub struct RegionHandle {
    backing: Backing,
    /// Handles made from this region and not yet closed. `shmsnap_region_close` refuses while
    /// it is nonzero.
    users: AtomicUsize,
    /// `true` while a writer or triple client of this handle is open (`construct`).
    pub(crate) claimed: AtomicBool,
    /// `true` while a triple host of this handle is open (`host`).
    pub(crate) hosted: AtomicBool,
    poisoned: AtomicBool,
}

/// Where the words are.
#[derive(Debug)]
enum Backing {
    /// The memfd the host passed at fd 3, mapped (and write-tracked) by `open_client_region`.
    /// The mapping is dropped (unmapped) with the handle.
    Listen { _memfd: Memfd, map: Mapping },
    /// Caller memory. Invariant: `ptr` is 8-byte aligned and valid for `words` atomic words
    /// until the handle is closed (the contract of `shmsnap_region_attach`).
    Caller {
        ptr: NonNull<AtomicU64>,
        words: usize,
    },
}

impl Handle for RegionHandle {
    const NAME: &'static str = "region";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl RegionHandle {
    fn new(backing: Backing) -> RegionHandle {
        RegionHandle {
            backing,
            users: AtomicUsize::new(0),
            claimed: AtomicBool::new(false),
            hosted: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        }
    }

    /// The region as atomic words.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        match &self.backing {
            Backing::Listen { map, .. } => map.words(),
            // SAFETY: the `Caller` invariant: aligned and valid for `words` words until the
            // handle is closed, which `&self` outlives.
            Backing::Caller { ptr, words } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *words)
            },
        }
    }

    /// A lease for a handle made from this region.
    pub(crate) fn lease(&self) -> Lease {
        // Relaxed: an increment made by a call that holds the region; close, which reads the
        // count, never runs concurrently with it (the region's thread-safety contract).
        self.users.fetch_add(1, Ordering::Relaxed);
        Lease(NonNull::from(self))
    }

    /// `Err(busy)` while handles made from this region are open.
    fn check_unused(&self, what: &str) -> Result<(), Error> {
        // Acquire: pairs with the Release decrement in `Lease::drop`, so everything a closed
        // handle did happens before what the caller does next (unmap, overwrite).
        match self.users.load(Ordering::Acquire) {
            0 => Ok(()),
            n => Err(Error::busy(format_args!(
                "cannot {what}: {n} handle(s) made from this region are still open; close them first"
            ))),
        }
    }
}

/// A handle's hold on its region: the region stays open while a lease exists.
#[derive(Debug)]
pub(crate) struct Lease(NonNull<RegionHandle>);

impl Lease {
    /// The region.
    pub(crate) fn region(&self) -> &RegionHandle {
        // SAFETY: the region cannot be closed while this lease exists (`check_unused`), so the
        // pointer stays valid for the lease's life.
        unsafe { self.0.as_ref() }
    }

    /// The region's words, for a core value that the lease's owner keeps beside the lease.
    ///
    /// # Safety
    ///
    /// The returned slice must not be used after this lease is dropped: the owner declares
    /// the value holding it before the lease, so it is dropped first.
    pub(crate) unsafe fn words(&self) -> &'static [AtomicU64] {
        let w = self.region().words();
        // SAFETY: the words stay mapped while the region is open, which this lease
        // guarantees; the caller keeps every use within the lease's life.
        unsafe { &*std::ptr::from_ref(w) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Release: pairs with the Acquire load in `check_unused` (see there).
        self.region().users.fetch_sub(1, Ordering::Release);
    }
}

/// Opens the region the host passed to this process the systemd way: the fd named `name`
/// (NULL: `"SHM_SHARED_FD"`, the host's name) among `LISTEN_FDS`, meant for this pid
/// (`LISTEN_PID`). Maps it read-write and registers write tracking so the host can take
/// incremental snapshots (unless `SHMSNAP_TRACK=0`). Removes `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` from the environment, so children do not inherit them.
///
/// Call it once per process, early in `main`, before starting threads: it changes the
/// environment, and another thread calling `getenv` meanwhile is undefined behaviour in libc.
/// The region is not inherited by `fork`.
///
/// Errors: `SHMSNAP_E_NULL` (`out`); `SHMSNAP_E_INVALID` (`name` not UTF-8);
/// `SHMSNAP_E_LISTEN` (no region passed, meant for another pid, no fd of that name, already
/// opened by this process, or not a usable region). Does not block.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_open(
    name: *const c_char,
    out: *mut *mut RegionHandle,
) -> c_int {
    entry::run(|_| {
        // SAFETY: `out` is NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        let name = if name.is_null() {
            DEFAULT_FD_NAME
        } else {
            // SAFETY: non-NULL and NUL-terminated (contract).
            let c = unsafe { CStr::from_ptr(name) };
            c.to_str()
                .map_err(|_| Error::invalid("the fd name is not UTF-8"))?
        };
        let (memfd, map) = open_client_region(name)?;
        let r = RegionHandle::new(Backing::Listen { _memfd: memfd, map });
        out.set(Box::into_raw(Box::new(r)));
        Ok(())
    })
}

/// Attaches to `len` bytes of memory the caller owns at `mem` (the embedding case: a
/// runtime's own shared memory, an `mmap`, a static buffer). Nothing is written.
///
/// `mem` must be 8-byte aligned and `len` a nonzero multiple of 8. While the region is open,
/// the memory must stay valid and mapped, and every access to it — by this process or
/// another — must go through shmsnap or be an atomic 64-bit access: a plain `memcpy` into or
/// out of it while a writer, client or host uses it is a data race (use
/// `shmsnap_region_read` and `shmsnap_region_write`).
///
/// Errors: `SHMSNAP_E_NULL` (`mem` or `out`); `SHMSNAP_E_INVALID` (misaligned, or a length
/// that is zero or not a multiple of 8). Does not block.
///
/// # Safety
///
/// `mem` is valid for reads and writes of `len` bytes until `shmsnap_region_close` returns
/// `SHMSNAP_OK` for the returned handle, and is only accessed as described above; `out` is
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_attach(
    mem: *mut c_void,
    len: usize,
    out: *mut *mut RegionHandle,
) -> c_int {
    entry::run(|_| {
        // SAFETY: `out` is NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        let ptr = NonNull::new(mem.cast::<AtomicU64>()).ok_or_else(|| Error::null("mem"))?;
        let misalignment = ptr.as_ptr() as usize % 8;
        if misalignment != 0 {
            return Err(Error::invalid(format_args!(
                "region memory must start at an 8-byte boundary (address is {misalignment} bytes past one)"
            )));
        }
        if len == 0 || !len.is_multiple_of(8) || len > isize::MAX as usize {
            return Err(Error::invalid(format_args!(
                "region length {len} must be a nonzero multiple of 8 bytes"
            )));
        }
        let r = RegionHandle::new(Backing::Caller {
            ptr,
            words: len / 8,
        });
        out.set(Box::into_raw(Box::new(r)));
        Ok(())
    })
}

/// Closes a region: unmaps the region the host passed (the memfd stays with the host), or
/// forgets the caller's memory (which is the caller's again).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` while writers, clients, transactions, hosts or
/// snapshots made from it are open (nothing is closed then). Does not block.
///
/// # Safety
///
/// `region` is NULL or a live region handle; no other thread uses it or its handles during
/// the call; it is not used again after `SHMSNAP_OK`.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_close(region: *mut RegionHandle) -> c_int {
    entry::run(|_| {
        // SAFETY: NULL or a live region (contract); a poisoned one may still be closed.
        let r = unsafe { region.as_ref() }.ok_or_else(|| Error::null(RegionHandle::NAME))?;
        r.check_unused("close the region")?;
        // SAFETY: made by `Box::into_raw` in open/attach, no lease refers to it (checked), and
        // the caller does not use it again.
        drop(unsafe { Box::from_raw(region) });
        Ok(())
    })
}

/// Stores the region's length in bytes in `*len`.
///
/// Errors: `SHMSNAP_E_NULL`. Thread-safe; does not block.
///
/// # Safety
///
/// `region` is NULL or a live region handle; `len` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_len(region: *const RegionHandle, len: *mut usize) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: NULL or valid for a write (contract).
        let len = unsafe { out(len, "len") }?;
        len.set(r.words().len() * 8);
        Ok(())
    })
}

/// What the host has made durable (`shmsnap_region_persisted`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Persisted {
    /// Newest seq contained in a durable local snapshot: commit `c` is durable iff
    /// `c <= seq`. 0: nothing known to be durable.
    pub seq: u64,
    /// Generation of a durable snapshot at least as new as the one `seq` was published for.
    pub generation: u64,
    /// Newest seq contained in the host's replica (0: none, or no replica).
    pub replica_seq: u64,
}

/// Reads the host's status area: which commits a durable snapshot covers. Three loads; a
/// region shorter than its header page reads as all zeros.
///
/// Errors: `SHMSNAP_E_NULL`. Thread-safe; wait-free; does not block.
///
/// # Safety
///
/// `region` is NULL or a live region handle; `status` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_persisted(
    region: *const RegionHandle,
    status: *mut Persisted,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: NULL or valid for a write (contract).
        let status = unsafe { out(status, "status") }?;
        let s = core_status::persisted(r.words());
        status.set(Persisted {
            seq: s.seq,
            generation: s.generation,
            replica_seq: s.replica_seq,
        });
        Ok(())
    })
}

/// `Err` unless the region holds the header page (status and request words).
fn check_header_page(r: &RegionHandle) -> Result<(), Error> {
    if r.words().len() <= word::SNAPSHOT_REQUEST {
        return Err(Error::invalid(
            "the region is shorter than its 4096-byte header page, which holds the status area",
        ));
    }
    Ok(())
}

/// Blocks until a durable snapshot covers commit `seq` (the status area's seq reaches it) or
/// `timeout_ms` milliseconds pass (`UINT64_MAX`: no limit). Sleeps in `futex(FUTEX_WAIT)` on
/// the host's wake counter; never on the commit path. Pair it with
/// `shmsnap_region_request_snapshot` to have the host snapshot now rather than at its next
/// interval.
///
/// Returns `SHMSNAP_OK` once covered (at once if already), `SHMSNAP_E_TIMEOUT` at the timeout.
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (a region without a header page);
/// `SHMSNAP_E_IO` (an unexpected `futex` error). Thread-safe. **Blocks** up to the timeout.
///
/// # Safety
///
/// `region` is NULL or a live region handle.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_wait_persisted(
    region: *const RegionHandle,
    seq: u64,
    timeout_ms: u64,
) -> c_int {
    // SAFETY: NULL or a live region (this function's contract, passed on).
    unsafe { wait(region, seq, timeout_ms, Durable::Locally) }
}

/// Blocks until commit `seq` is in the host's replica — a point holding it is durable in the
/// object store (`shmsnap run --replica URL`; the status area's `replica_seq` reaches it) — or
/// `timeout_ms` milliseconds pass (`UINT64_MAX`: no limit). The same futex wait as
/// `shmsnap_region_wait_persisted`: the host's uploader wakes the waiters at every point it
/// put. A client that acknowledges only replicated commits loses none of them with the
/// machine, nor on a standby's takeover.
///
/// A host without a replica never publishes a replica seq: every wait for `seq > 0` then
/// ends at its timeout. The status area cannot tell that from a slow upload: read
/// `shmsnap_region_persisted` (a `seq` covering the commit with a `replica_seq` of 0) to say
/// so. The host uploads persisted points only: pair it with `shmsnap_region_request_snapshot`.
///
/// Returns `SHMSNAP_OK` once replicated (at once if already; seq 0 always),
/// `SHMSNAP_E_TIMEOUT` at the timeout. Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (a
/// region without a header page); `SHMSNAP_E_IO` (an unexpected `futex` error).
/// Thread-safe. **Blocks** up to the timeout.
///
/// # Safety
///
/// `region` is NULL or a live region handle.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_wait_replicated(
    region: *const RegionHandle,
    seq: u64,
    timeout_ms: u64,
) -> c_int {
    // SAFETY: NULL or a live region (this function's contract, passed on).
    unsafe { wait(region, seq, timeout_ms, Durable::InReplica) }
}

/// Which durability a wait is for.
#[derive(Clone, Copy)]
enum Durable {
    /// A durable local snapshot covers the commit.
    Locally,
    /// The host's replica holds the commit.
    InReplica,
}

/// The body of `shmsnap_region_wait_persisted` and `shmsnap_region_wait_replicated`.
///
/// # Safety
///
/// `region` is NULL or a live region handle.
unsafe fn wait(region: *const RegionHandle, seq: u64, timeout_ms: u64, what: Durable) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        check_header_page(r)?;
        let timeout = Duration::from_millis(timeout_ms);
        let (done, missing) = match what {
            Durable::Locally => (status::wait_persisted(r.words(), seq, timeout)?, "durable"),
            Durable::InReplica => (
                status::wait_replicated(r.words(), seq, timeout)?,
                "in the replica",
            ),
        };
        if done {
            return Ok(());
        }
        Err(Error::new(
            SHMSNAP_E_TIMEOUT,
            format_args!("commit {seq} was not {missing} within {timeout_ms} ms"),
        ))
    })
}

/// Asks the host for a prompt snapshot: bumps the request word and wakes the host's watcher
/// (one `futex(FUTEX_WAKE)`). Requests coalesce; the host snapshots soon after.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (a region without a header page);
/// `SHMSNAP_E_IO`. Thread-safe, but requests from two threads at the same instant may count
/// once. Does not block.
///
/// # Safety
///
/// `region` is NULL or a live region handle.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_request_snapshot(region: *const RegionHandle) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        check_header_page(r)?;
        status::request_snapshot(r.words())?;
        Ok(())
    })
}

/// Clears the region's single-writer claim if the process holding it is **dead**, so a new
/// writer or triple client can open. For programs that are their own host (memory attached
/// with `shmsnap_region_attach` and shared with other processes): under the shmsnap host, the
/// host does this itself when its client exits, and no client needs to call it.
///
/// When to call it: `shmsnap_writer_open` or `shmsnap_triple_open` returned
/// `SHMSNAP_E_CLAIMED` naming a pid, and the process that held the region has crashed or was
/// killed (a clean close releases the claim). Then reclaim and open again. The region's
/// contents are left as the dead writer left them; the next open recovers them as after any
/// crash (never torn).
///
/// **How liveness is checked.** The claim holds the holder's pid (low 32 bits of its claim
/// id). `kill(pid, 0)` failing with `ESRCH` means dead; if the pid exists,
/// `/proc/<pid>/stat` tells a zombie (exited, not yet reaped; dead) from a running process
/// (alive, also a zombie thread-group leader whose other threads still run). Any doubt — an
/// unreadable `/proc`, a pid that cannot be a pid — counts as alive. A live holder's claim is
/// never reclaimed.
///
/// **Limits.** A later process that reused the dead holder's pid looks alive: the reclaim is
/// refused until it is gone too (safe, but the region stays claimed). The pid is the one the
/// holder saw in *its* pid namespace and is looked up in the caller's: across pid namespaces
/// (containers) a live holder may look dead, so call this only for memory shared within one
/// pid namespace. Two processes reclaiming at once while a third reuses the pid within
/// microseconds could clear the third's fresh claim.
///
/// `holder_pid` may be NULL; otherwise it receives the holder's pid on `SHMSNAP_OK` (the
/// pid reclaimed) and on `SHMSNAP_E_CLAIMED` (the pid that may be alive), 0 otherwise.
///
/// Returns `SHMSNAP_OK` when the dead holder's claim was cleared. Errors: `SHMSNAP_E_NULL`;
/// `SHMSNAP_E_CLAIMED` (the holder may be alive — the text says what the kernel said — or
/// the claim was taken meanwhile); `SHMSNAP_E_NOT_FOUND` (the region is not claimed: open it
/// directly); `SHMSNAP_E_BAD_HEADER` (the memory holds neither an unconfigured region nor a
/// valid queue or triple header: not a shmsnap region, left alone); `SHMSNAP_E_INVALID` (the
/// memory is shorter than 520 bytes: the claim word is bytes 512 to 519). Nothing is changed on an error.
/// Thread-safe; does not block (one `kill` and at most one read of `/proc`).
///
/// # Safety
///
/// `region` is NULL or a live region handle; `holder_pid` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_reclaim(
    region: *const RegionHandle,
    holder_pid: *mut u32,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        let pid_out = if holder_pid.is_null() {
            None
        } else {
            // SAFETY: non-NULL and valid for a write (contract).
            Some(unsafe { out(holder_pid, "holder_pid") }?)
        };
        let result = reclaim::reclaim_if_dead(r.words());
        if let Some(o) = pid_out {
            o.set(match &result {
                Ok(holder) | Err(ReclaimError::Alive { holder, .. }) => holder.pid(),
                Err(ReclaimError::Changed { now: Some(now), .. }) => now.pid(),
                Err(_) => 0,
            });
        }
        result?;
        Ok(())
    })
}

/// `Err` unless `[offset, offset + len)` lies in the region.
fn check_range(r: &RegionHandle, offset: usize, len: usize) -> Result<(), Error> {
    let size = r.words().len() * 8;
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::invalid(format_args!(
            "{len} bytes at offset {offset} do not fit in the {size}-byte region"
        )));
    }
    Ok(())
}

/// Copies `len` bytes of the region at byte `offset` into `dst`, with atomic 64-bit loads:
/// the data-race-free way to copy memory a writer or client changes concurrently (what a host
/// does between `shmsnap_snapshot_begin` and `shmsnap_snapshot_finish`). The bytes are only
/// as consistent as the protocol makes them: a queue snapshot proves its kept entries with
/// `shmsnap_snapshot_finish`.
///
/// Errors: `SHMSNAP_E_NULL` (`dst` with a nonzero `len`); `SHMSNAP_E_INVALID` (the range is
/// not inside the region). Thread-safe; does not block.
///
/// # Safety
///
/// `region` is NULL or a live region handle; `dst` is valid for writes of `len` bytes and not
/// inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_read(
    region: *const RegionHandle,
    offset: usize,
    dst: *mut c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: valid for writes of `len` bytes, not inside the region (contract).
        let dst = unsafe { bytes_mut(dst.cast(), len, "dst") }?;
        check_range(r, offset, len)?;
        load_bytes(r.words(), offset, dst);
        Ok(())
    })
}

/// Copies `len` bytes from `src` into the region at byte `offset` (atomic 64-bit stores) —
/// to restore an image before any writer, client or host uses the region.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (the range is not inside the region);
/// `SHMSNAP_E_BUSY` while handles made from this region are open. Does not block.
///
/// # Safety
///
/// `region` is NULL or a live region handle that no other thread uses during the call, and no
/// other process is writing the region; `src` is valid for reads of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_region_write(
    region: *mut RegionHandle,
    offset: usize,
    src: *const c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region.cast_const()) }?;
        // SAFETY: valid for reads of `len` bytes (contract).
        let src = unsafe { bytes(src.cast(), len, "src") }?;
        check_range(r, offset, len)?;
        r.check_unused("write the region")?;
        store_bytes(r.words(), offset, src);
        Ok(())
    })
}

/// Loads `out.len()` bytes from byte `at` of `words` with Relaxed word loads (in range: checked
/// by the caller).
pub(crate) fn load_bytes(words: &[AtomicU64], at: usize, out: &mut [u8]) {
    let (mut w, mut skip) = (at / 8, at % 8);
    let mut rest = out;
    while !rest.is_empty() {
        let take = (8 - skip).min(rest.len());
        let (now, later) = rest.split_at_mut(take);
        let b = words[w].load(Ordering::Relaxed).to_le_bytes();
        now.copy_from_slice(&b[skip..skip + take]);
        (w, skip, rest) = (w + 1, 0, later);
    }
}

/// Stores `src` at byte `at` of `words` with Relaxed word stores, merging partial words (the
/// caller is the only writer; in range: checked by the caller).
fn store_bytes(words: &[AtomicU64], at: usize, src: &[u8]) {
    let (mut w, mut skip) = (at / 8, at % 8);
    let mut rest = src;
    while !rest.is_empty() {
        let take = (8 - skip).min(rest.len());
        let (now, later) = rest.split_at(take);
        let mut b = words[w].load(Ordering::Relaxed).to_le_bytes();
        b[skip..skip + take].copy_from_slice(now);
        words[w].store(u64::from_le_bytes(b), Ordering::Relaxed);
        (w, skip, rest) = (w + 1, 0, later);
    }
}
