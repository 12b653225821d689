//! The triple-buffer client handle (DESIGN §6) and its write grants.
//!
//! As with transactions (`txn.rs`), the core's borrow of the client by a [`WriteGrant`] is
//! kept at run time: the client refuses its other calls and its close while a grant is open
//! (`grant_open`), and publishing or aborting the grant frees it.

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shmsnap_core::triple::{TripleClient, TripleLayout, TripleRequest, WriteGrant};

use crate::construct::{self, Claim};
use crate::entry::{self, bytes_mut, handle_out, out, put, Handle};
use crate::region::RegionHandle;
use crate::status::{Error, SHMSNAP_E_NOT_FOUND};

/// The layout a client asks for when it configures a triple region (`docs/FORMAT.md`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TripleLayoutRequest {
    /// Buffer count N: 3 to 64.
    pub buffers: u64,
    /// Buffer size B in bytes: a nonzero multiple of 4096, at most 2^40.
    pub buffer_size: u64,
}

/// A triple region's layout (`shmsnap_triple_layout`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TripleInfo {
    /// Buffer count N.
    pub buffers: u64,
    /// Buffer size B in bytes: the size of one published state.
    pub buffer_size: u64,
    /// Length of the region the layout describes: `8192 + N * B`.
    pub region_len: u64,
}

/// The single client of a triple-buffer region (one per region: a second writer or client
/// gets `SHMSNAP_E_CLAIMED`).
///
/// Thread safety: not thread-safe: one thread at a time (the handle may move between
/// threads), its grant included.
#[derive(Debug)]
pub struct TripleHandle {
    /// The core client; borrowed mutably by a call, or by an open grant across calls
    /// (`grant_open`). Declared before `claim`, so it is dropped before its words' lease.
    client: UnsafeCell<TripleClient<'static, [AtomicU64]>>,
    /// The layout validated at open.
    layout: TripleLayout,
    /// `true` while a grant holds `client` mutably.
    grant_open: AtomicBool,
    poisoned: AtomicBool,
    /// The region's single-writer claim (with its lease).
    _claim: Claim,
}

impl Handle for TripleHandle {
    const NAME: &'static str = "triple client";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl TripleHandle {
    /// The core client, exclusively.
    ///
    /// # Safety
    ///
    /// The handle's contract: no concurrent call on it. An open grant is refused here.
    #[allow(clippy::mut_from_ref)] // exclusivity is the handle's contract, checked here
    unsafe fn client(&self) -> Result<&mut TripleClient<'static, [AtomicU64]>, Error> {
        // Relaxed: set and cleared by this handle's own calls, which its contract orders.
        if self.grant_open.load(Ordering::Relaxed) {
            return Err(Error::busy(
                "the triple client has an open grant: publish or abort it first",
            ));
        }
        // SAFETY: no grant borrows the client (checked) and no other call runs (contract).
        Ok(unsafe { &mut *self.client.get() })
    }
}

/// Opens the region's triple client. With `layout` NULL it attaches to a configured region;
/// with a layout it also configures a fresh one, and refuses a region configured with another
/// layout. Attaching bumps the client epoch and frees a dead client's buffers; the newest
/// published state (after a restore, the restored one) is `shmsnap_triple_read_newest`'s.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (a layout the format does not allow or the
/// region cannot hold); `SHMSNAP_E_CLAIMED`; `SHMSNAP_E_UNCONFIGURED` (NULL layout, fresh
/// region); `SHMSNAP_E_BAD_HEADER`; `SHMSNAP_E_MISMATCH`; `SHMSNAP_E_EXHAUSTED`. Does not
/// block; O(N).
///
/// # Safety
///
/// `region` is NULL or a live region handle; `layout` is NULL or valid for a read; `out` is
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_open(
    region: *const RegionHandle,
    layout: *const TripleLayoutRequest,
    out: *mut *mut TripleHandle,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        // SAFETY: NULL or valid for a read (contract).
        let request = unsafe { layout.as_ref() }.map(|l| TripleRequest {
            buffers: l.buffers,
            buffer_size: l.buffer_size,
        });
        let (client, claim) = construct::triple_client(r, request)?;
        let h = TripleHandle {
            layout: *client.layout(),
            client: UnsafeCell::new(client),
            grant_open: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            _claim: claim,
        };
        out.set(Box::into_raw(Box::new(h)));
        Ok(())
    })
}

/// Closes a triple client and releases the region's claim. The published states stay.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` while a grant is open. Does not block.
///
/// # Safety
///
/// `client` is NULL or a live triple client not used by another thread during the call, nor
/// again after `SHMSNAP_OK`.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_close(client: *mut TripleHandle) -> c_int {
    entry::run(|_| {
        // SAFETY: NULL or a live client (contract); a poisoned one may still be closed.
        let c = unsafe { client.as_ref() }.ok_or_else(|| Error::null(TripleHandle::NAME))?;
        // SAFETY: no concurrent call (contract); only the grant check is made.
        unsafe { c.client() }?;
        // SAFETY: made by `Box::into_raw` in `shmsnap_triple_open`, no grant refers to it
        // (checked), not used again (contract).
        drop(unsafe { Box::from_raw(client) });
        Ok(())
    })
}

/// Stores the region's layout in `*info`.
///
/// Errors: `SHMSNAP_E_NULL`. Does not block.
///
/// # Safety
///
/// `client` is NULL or a live triple client; `info` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_layout(
    client: *const TripleHandle,
    info: *mut TripleInfo,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live client (contract).
        let c = unsafe { p.handle(client) }?;
        // SAFETY: NULL or valid for a write (contract).
        let info = unsafe { out(info, "info") }?;
        info.set(TripleInfo {
            buffers: c.layout.buffers,
            buffer_size: c.layout.buffer_size,
            region_len: c.layout.region_len,
        });
        Ok(())
    })
}

/// Copies `len` bytes at `offset` of the newest published state (after open: the restored
/// one) into `buf` and stores its seq in `*seq` (if not NULL).
///
/// Returns `SHMSNAP_E_NOT_FOUND` if nothing was ever published. Errors: `SHMSNAP_E_NULL`;
/// `SHMSNAP_E_INVALID` (the range does not fit in a buffer); `SHMSNAP_E_BUSY` (a grant is
/// open). Does not block.
///
/// # Safety
///
/// `client` is NULL or a live triple client (one thread at a time); `buf` is valid for writes
/// of `len` bytes and not inside the region; `seq` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_read_newest(
    client: *mut TripleHandle,
    offset: usize,
    buf: *mut c_void,
    len: usize,
    seq: *mut u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live client (contract).
        let h = unsafe { p.handle(client.cast_const()) }?;
        // SAFETY: valid for writes of `len` bytes (contract).
        let buf = unsafe { bytes_mut(buf.cast(), len, "buf") }?;
        // SAFETY: one thread at a time (contract); an open grant is refused.
        let c = unsafe { h.client() }?;
        let s = c.read_newest(offset, buf)?.ok_or_else(|| {
            Error::new(
                SHMSNAP_E_NOT_FOUND,
                "nothing was published in this region yet",
            )
        })?;
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Publishes `len` bytes at `bytes` as the newest state: takes a buffer, writes them at its
/// start (the rest of the buffer is left as it was: write whole states), publishes it, and
/// stores the seq in `*seq` (if not NULL).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (`len` larger than a buffer);
/// `SHMSNAP_E_BUSY` (a grant is open); `SHMSNAP_E_EXHAUSTED`; `SHMSNAP_E_PROTOCOL` (no free
/// buffer: another client or host breaks the protocol). **Wait-free**: usually one load and
/// a few stores; at most N loads and 2(N - 1) compare-exchanges, never a lock or system call.
///
/// # Safety
///
/// `client` is NULL or a live triple client (one thread at a time); `bytes` is valid for
/// reads of `len` bytes and not inside the region; `seq` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_publish(
    client: *mut TripleHandle,
    bytes: *const c_void,
    len: usize,
    seq: *mut u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live client (contract).
        let h = unsafe { p.handle(client.cast_const()) }?;
        // SAFETY: valid for reads of `len` bytes (contract).
        let data = unsafe { crate::entry::bytes(bytes.cast(), len, "bytes") }?;
        // SAFETY: one thread at a time (contract); an open grant is refused.
        let c = unsafe { h.client() }?;
        let s = c.publish(data)?;
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// A buffer taken for writing (`shmsnap_triple_take`): only it can write the buffer until it
/// is published or aborted, which frees it.
///
/// Thread safety: a grant and its client form one unit: one thread at a time.
#[derive(Debug)]
pub struct GrantHandle {
    /// The core grant, borrowing the client mutably (`None` only inside publish).
    grant: UnsafeCell<Option<WriteGrant<'static, 'static, [AtomicU64]>>>,
    /// The client; its `grant_open` is cleared when the grant ends.
    client: NonNull<TripleHandle>,
    poisoned: AtomicBool,
}

impl Handle for GrantHandle {
    const NAME: &'static str = "grant";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl Drop for GrantHandle {
    fn drop(&mut self) {
        // An unpublished grant returns its buffer to FREE (the core grant's own drop), before
        // the client may be used again.
        drop(self.grant.get_mut().take());
        // SAFETY: the client cannot be closed while this grant is open (its close checks
        // `grant_open`), so the pointer is valid.
        let c = unsafe { self.client.as_ref() };
        // Relaxed: see `TripleHandle::client`.
        c.grant_open.store(false, Ordering::Relaxed);
    }
}

impl GrantHandle {
    /// The core grant.
    ///
    /// # Safety
    ///
    /// One thread at a time; no call keeps a reference.
    #[allow(clippy::mut_from_ref)] // exclusivity is the handle's contract
    unsafe fn grant(&self) -> Result<&mut WriteGrant<'static, 'static, [AtomicU64]>, Error> {
        // SAFETY: the caller's contract.
        let g = unsafe { &mut *self.grant.get() };
        g.as_mut()
            .ok_or_else(|| Error::invalid("the grant has already ended"))
    }
}

/// Takes a buffer for writing: a free one, or one older than the newest publication. Its old
/// contents are unspecified: write the whole state. Write it with `shmsnap_grant_write`, then
/// `shmsnap_grant_publish` (or `shmsnap_grant_abort`).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` (a grant is already open);
/// `SHMSNAP_E_EXHAUSTED`; `SHMSNAP_E_PROTOCOL` (no free buffer: another client or host breaks
/// the protocol). **Wait-free** (allocates the grant handle).
///
/// # Safety
///
/// `client` is NULL or a live triple client (one thread at a time); `out` is NULL or valid for
/// a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_take(
    client: *mut TripleHandle,
    out: *mut *mut GrantHandle,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live client (contract).
        let h = unsafe { p.handle(client.cast_const()) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        // SAFETY: one thread at a time (contract); an open grant is refused.
        let c: *mut _ = unsafe { h.client() }?;
        // SAFETY: `c` is the client's only live reference; `grant_open` (set below) keeps
        // every other use away until the grant's handle is dropped, and the client cannot be
        // closed meanwhile, so the `'static` borrow is never exceeded.
        let g = unsafe { &mut *c }.take()?;
        // Relaxed: see `TripleHandle::client`.
        h.grant_open.store(true, Ordering::Relaxed);
        let gh = GrantHandle {
            grant: UnsafeCell::new(Some(g)),
            client: NonNull::from(h),
            poisoned: AtomicBool::new(false),
        };
        out.set(Box::into_raw(Box::new(gh)));
        Ok(())
    })
}

/// Writes `len` bytes at `offset` of the granted buffer (published by `shmsnap_grant_publish`).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (the write does not fit in the buffer). Does
/// not block.
///
/// # Safety
///
/// `grant` is NULL or a live grant (one thread at a time); `bytes` is valid for reads of `len`
/// bytes and not inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_grant_write(
    grant: *mut GrantHandle,
    offset: usize,
    bytes: *const c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live grant (contract).
        let h = unsafe { p.handle(grant.cast_const()) }?;
        // SAFETY: valid for reads of `len` bytes (contract).
        let data = unsafe { crate::entry::bytes(bytes.cast(), len, "bytes") }?;
        // SAFETY: one thread at a time (contract).
        unsafe { h.grant() }?.write(offset, data)?;
        Ok(())
    })
}

/// Reads back `len` bytes at `offset` of the granted buffer (what this grant wrote, or the
/// buffer's unspecified old contents).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (the range does not fit). Does not block.
///
/// # Safety
///
/// `grant` is NULL or a live grant (one thread at a time); `buf` is valid for writes of `len`
/// bytes and not inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_grant_read(
    grant: *mut GrantHandle,
    offset: usize,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live grant (contract).
        let h = unsafe { p.handle(grant.cast_const()) }?;
        // SAFETY: valid for writes of `len` bytes (contract).
        let buf = unsafe { bytes_mut(buf.cast(), len, "buf") }?;
        // SAFETY: one thread at a time (contract).
        unsafe { h.grant() }?.read(offset, buf)?;
        Ok(())
    })
}

/// Publishes the granted buffer as the newest state and stores its seq in `*seq` (if not
/// NULL); frees the grant. Wait-free: three stores.
///
/// Errors: `SHMSNAP_E_NULL` (nothing is published or freed). Never blocks.
///
/// # Safety
///
/// `grant` is NULL or a live grant, not used again after this call; `seq` is NULL or valid for
/// a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_grant_publish(grant: *mut GrantHandle, seq: *mut u64) -> c_int {
    // No poison flag is registered: the handle is freed inside the body.
    entry::run(|_| {
        // SAFETY: NULL or a live grant (contract).
        unsafe { GrantHandle::from_ptr(grant) }?;
        // SAFETY: made by `Box::into_raw` in `shmsnap_triple_take`; not used again (contract).
        // Dropping it ends the grant (its `Drop` clears the client's flag).
        let mut g = unsafe { Box::from_raw(grant) };
        let core = g
            .grant
            .get_mut()
            .take()
            .ok_or_else(|| Error::invalid("the grant has already ended"))?;
        let s = core.publish();
        drop(g);
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Aborts a grant: its buffer goes back to free, nothing is published; frees the grant.
///
/// Errors: `SHMSNAP_E_NULL`. Never blocks.
///
/// # Safety
///
/// `grant` is NULL or a live grant, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_grant_abort(grant: *mut GrantHandle) -> c_int {
    entry::run(|_| {
        if grant.is_null() {
            return Err(Error::null(GrantHandle::NAME));
        }
        // SAFETY: made by `Box::into_raw` in `shmsnap_triple_take`; not used again (contract).
        // A poisoned grant may be aborted too.
        drop(unsafe { Box::from_raw(grant) });
        Ok(())
    })
}

/// Stores the seq the grant will publish in `*seq` and the buffer size in `*len` (either may
/// be NULL).
///
/// Errors: `SHMSNAP_E_NULL` (`grant`). Does not block.
///
/// # Safety
///
/// `grant` is NULL or a live grant; `seq` and `len` are NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_grant_info(
    grant: *mut GrantHandle,
    seq: *mut u64,
    len: *mut u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live grant (contract).
        let h = unsafe { p.handle(grant.cast_const()) }?;
        // SAFETY: one thread at a time (contract).
        let g = unsafe { h.grant() }?;
        // SAFETY: NULL or valid for writes (contract).
        unsafe { put(seq, g.seq()) };
        // SAFETY: NULL or valid for writes (contract).
        unsafe { put(len, g.len()) };
        Ok(())
    })
}
