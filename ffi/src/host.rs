//! The host side for embedders: a runtime in C can be its own host over memory it owns.
//!
//! - Queue: `shmsnap_snapshot_begin` (pre) → the caller copies the region
//!   (`shmsnap_region_read`) → `shmsnap_snapshot_finish` (fence, post, `next_seq`, retain on
//!   the copy). The order is the core's [`PreCopy`] stamp, consumed by finish: the handle is
//!   the stamp, and finish frees it (DESIGN §5.3).
//! - Triple: `shmsnap_triple_host_open` → `shmsnap_triple_host_freeze` → copy the frozen
//!   buffer (`shmsnap_frozen_copy`) and write the image meta (`shmsnap_frozen_image_meta`) →
//!   persist → `shmsnap_frozen_release` (DESIGN §6).
//!
//! What the caller does with an image (write it to a file, send it away) is its own business;
//! restoring it is `shmsnap_region_write` into the region before any writer or client opens.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shmsnap_core::triple::{Frozen, TripleHost};
use shmsnap_core::{Descriptor, LayoutError, PreCopy, Region};

use crate::entry::{self, bytes_mut, handle_out, put, Handle, Owned};
use crate::region::{Lease, RegionHandle};
use crate::status::{
    Error, SHMSNAP_E_BAD_HEADER, SHMSNAP_E_CLAIMED, SHMSNAP_E_NOT_FOUND, SHMSNAP_E_STARVED,
    SHMSNAP_E_UNCONFIGURED,
};

/// What `shmsnap_snapshot_begin` saw.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotInfo {
    /// Valid entries before the copy (0: nothing to snapshot; abort and try later).
    pub pre: u64,
    /// Bytes at the start of the image that `shmsnap_snapshot_finish` rewrites: the header
    /// and descriptor ring. The image passed to finish must hold at least these.
    pub meta_len: u64,
    /// Length of the region to copy: the image is these bytes.
    pub region_len: u64,
}

/// What `shmsnap_snapshot_finish` kept.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Retained {
    /// Entries kept: in both pre and post, unchanged, so their bytes in the image are exactly
    /// what was committed.
    pub kept: u64,
    /// Valid entries before the copy.
    pub pre: u64,
    /// Valid entries after the copy.
    pub post: u64,
    /// Seq of the newest kept entry (0: none).
    pub newest_seq: u64,
    /// The image's `next_seq` hint: above every seq the host saw.
    pub next_seq: u64,
}

/// A queue snapshot in progress: the descriptors read before the copy (pre), waiting for the
/// copy to end. Only `shmsnap_snapshot_finish` (or `_abort`) ends it, and frees it.
///
/// Thread safety: one thread at a time. Any number of snapshots of a region may be open.
#[derive(Debug)]
pub struct SnapshotHandle {
    /// The core stamp, borrowing `_pre` and `_post` and the lease's words (`None` only inside
    /// finish); declared first, so it is dropped before them.
    stamp: Option<PreCopy<'static, 'static, [AtomicU64]>>,
    info: SnapshotInfo,
    poisoned: AtomicBool,
    /// Descriptor storage for the stamp (pre, and post after finish).
    _pre: Owned<[Descriptor]>,
    _post: Owned<[Descriptor]>,
    _lease: Lease,
}

impl Handle for SnapshotHandle {
    const NAME: &'static str = "snapshot";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

/// Descriptor storage for `e` entries.
fn descriptor_buffer(e: usize) -> Owned<[Descriptor]> {
    Owned::new(vec![Descriptor::EMPTY; e].into_boxed_slice())
}

/// A header error of a live region: not configured yet, or not a valid queue header.
fn header_error(e: LayoutError) -> Error {
    let code = match e {
        LayoutError::Unconfigured => SHMSNAP_E_UNCONFIGURED,
        _ => SHMSNAP_E_BAD_HEADER,
    };
    Error::new(code, e)
}

/// Begins a snapshot of a queue region: validates its header and reads the valid
/// descriptors (pre), and stores what it saw in `*info` (if not NULL). Then copy the region's
/// `region_len` bytes (`shmsnap_region_read`: atomic loads, safe while the writer commits)
/// and call `shmsnap_snapshot_finish` on the copy.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_UNCONFIGURED` (nothing to snapshot yet);
/// `SHMSNAP_E_BAD_HEADER`. Does not block; O(E); allocates two descriptor buffers.
///
/// # Safety
///
/// `region` is NULL or a live region handle; `out` is NULL or valid for a write; `info` is
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_snapshot_begin(
    region: *const RegionHandle,
    out: *mut *mut SnapshotHandle,
    info: *mut SnapshotInfo,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        let lease = r.lease();
        // SAFETY: the stamp holding these words lives in the handle beside the lease, and is
        // dropped first (`Drop`).
        let words = unsafe { lease.words() };
        let live = Region::open(words).map_err(header_error)?;
        let layout = *live.layout();
        let e = usize::try_from(layout.entries).unwrap_or(usize::MAX);
        let (mut pre, mut post) = (descriptor_buffer(e), descriptor_buffer(e));
        // SAFETY: borrowed once, by the stamp that the handle below keeps in a field declared
        // before `_pre`.
        let pre_buf = unsafe { pre.borrow_mut() };
        // SAFETY: as `pre_buf`, before `_post`.
        let post_buf = unsafe { post.borrow_mut() };
        // Buffers of E descriptors each: `read` cannot refuse them.
        let stamp = PreCopy::read(&live, pre_buf, post_buf)?;
        let s = SnapshotHandle {
            info: SnapshotInfo {
                pre: stamp.pre().valid(),
                meta_len: layout.meta_len(),
                region_len: layout.region_len,
            },
            stamp: Some(stamp),
            poisoned: AtomicBool::new(false),
            _pre: pre,
            _post: post,
            _lease: lease,
        };
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(info, s.info) };
        out.set(Box::into_raw(Box::new(s)));
        Ok(())
    })
}

/// Ends a snapshot on the copy the caller made since `shmsnap_snapshot_begin`: `image` holds
/// the region's bytes (at least `meta_len`; the whole `region_len` to restore it later).
/// Issues the fence, reads the descriptors again (post), and rewrites the image's header and
/// descriptor ring so it keeps only entries present before and unchanged after the copy — their
/// bytes in the image are exactly what was committed. Stores what it kept in `*retained` (if
/// not NULL). **Frees the snapshot whatever it returns** (unless `snapshot` is NULL).
///
/// Returns `SHMSNAP_E_STARVED` if entries existed but none survived (the image must not be
/// persisted; `*retained` is still written). Errors: `SHMSNAP_E_NULL`;
/// `SHMSNAP_E_BUFFER_TOO_SMALL` (the image is shorter than `meta_len`); `SHMSNAP_E_IMAGE`
/// (the copy's header is corrupt, or the region was re-initialised during the copy). Nothing
/// is written into the image on an error other than starvation. Does not block; O(E).
///
/// # Safety
///
/// `snapshot` is NULL or a live snapshot, not used again after this call; `image` is valid for
/// reads and writes of `image_len` bytes and not inside the region; `retained` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_snapshot_finish(
    snapshot: *mut SnapshotHandle,
    image: *mut c_void,
    image_len: usize,
    retained: *mut Retained,
) -> c_int {
    // No poison flag is registered: the handle is freed inside the body.
    entry::run(|_| {
        // SAFETY: NULL or a live snapshot (contract).
        let checked = unsafe { SnapshotHandle::from_ptr(snapshot) }.map(|_| ());
        if snapshot.is_null() {
            return checked;
        }
        // SAFETY: made by `Box::into_raw` in begin; not used again (contract). Dropped at
        // every return below.
        let mut s = unsafe { Box::from_raw(snapshot) };
        checked?;
        // SAFETY: valid for reads and writes of `image_len` bytes (contract).
        let image = unsafe { bytes_mut(image.cast(), image_len, "image") }?;
        let Some(stamp) = s.stamp.take() else {
            return Err(Error::invalid("the snapshot has already ended"));
        };
        let kept = stamp.finish(image)?;
        let r = Retained {
            kept: kept.kept,
            pre: kept.pre,
            post: kept.post,
            newest_seq: kept.newest.map_or(0, |d| d.seq),
            next_seq: kept.hints.next_seq,
        };
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(retained, r) };
        if kept.is_starved() {
            return Err(Error::new(
                SHMSNAP_E_STARVED,
                format_args!(
                    "none of the {} entries seen before the copy survived it: keep the previous \
                     snapshot (the ring holds too few commits for the copy time)",
                    kept.pre
                ),
            ));
        }
        Ok(())
    })
}

/// Abandons a snapshot and frees it; nothing was written anywhere.
///
/// Errors: `SHMSNAP_E_NULL`. Does not block.
///
/// # Safety
///
/// `snapshot` is NULL or a live snapshot, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_snapshot_abort(snapshot: *mut SnapshotHandle) -> c_int {
    entry::run(|_| {
        if snapshot.is_null() {
            return Err(Error::null(SnapshotHandle::NAME));
        }
        // SAFETY: made by `Box::into_raw` in begin; not used again (contract).
        drop(unsafe { Box::from_raw(snapshot) });
        Ok(())
    })
}

/// The host side of a triple-buffer region: freezes the newest published buffer for a copy.
/// One per region handle (a second gets `SHMSNAP_E_CLAIMED`), and only one frozen buffer at a
/// time.
///
/// Thread safety: one thread at a time, its frozen buffer included. The client may run in any
/// thread or process.
#[derive(Debug)]
pub struct TripleHostHandle {
    /// The core host; shared-borrowed by an open [`FrozenHandle`]. Declared before the
    /// lease, so it is dropped first.
    host: TripleHost<'static, [AtomicU64]>,
    /// `true` while a frozen buffer is open.
    frozen_open: AtomicBool,
    poisoned: AtomicBool,
    lease: Lease,
}

impl Handle for TripleHostHandle {
    const NAME: &'static str = "triple host";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl Drop for TripleHostHandle {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `shmsnap_triple_host_open`, so a later host of
        // this region handle sees everything this one did.
        self.lease.region().hosted.store(false, Ordering::Release);
    }
}

/// Opens the host side of a configured triple region: bumps the host epoch and returns every
/// buffer a dead host left frozen to its published state.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_UNCONFIGURED` (the client has not configured it yet:
/// try again later); `SHMSNAP_E_BAD_HEADER`; `SHMSNAP_E_CLAIMED` (this region handle already
/// has a triple host). Does not block; O(N).
///
/// # Safety
///
/// `region` is NULL or a live region handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_host_open(
    region: *const RegionHandle,
    out: *mut *mut TripleHostHandle,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        let lease = r.lease();
        // Acquire: pairs with the Release in `TripleHostHandle::drop`.
        if r.hosted
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(Error::new(
                SHMSNAP_E_CLAIMED,
                "this region handle already has a triple host: one host per region",
            ));
        }
        // SAFETY: the host lives in the handle beside the lease and is dropped first.
        let words = unsafe { lease.words() };
        let host = match TripleHost::attach(words) {
            Ok(h) => h,
            Err(e) => {
                // Release: as in `drop` (nothing was done).
                r.hosted.store(false, Ordering::Release);
                return Err(e.into());
            }
        };
        let h = TripleHostHandle {
            host,
            frozen_open: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            lease,
        };
        out.set(Box::into_raw(Box::new(h)));
        Ok(())
    })
}

/// Closes a triple host.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` while a frozen buffer is open. Does not block.
///
/// # Safety
///
/// `host` is NULL or a live triple host, not used by another thread during the call, nor again
/// after `SHMSNAP_OK`.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_host_close(host: *mut TripleHostHandle) -> c_int {
    entry::run(|_| {
        // SAFETY: NULL or a live host (contract); a poisoned one may still be closed.
        let h = unsafe { host.as_ref() }.ok_or_else(|| Error::null(TripleHostHandle::NAME))?;
        // Relaxed: set and cleared by this handle's own calls, which its contract orders.
        if h.frozen_open.load(Ordering::Relaxed) {
            return Err(Error::busy(
                "the triple host has a frozen buffer: release it first",
            ));
        }
        // SAFETY: made by `Box::into_raw` in open; no frozen buffer refers to it (checked);
        // not used again (contract).
        drop(unsafe { Box::from_raw(host) });
        Ok(())
    })
}

/// What `shmsnap_triple_host_freeze` froze.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FrozenInfo {
    /// The frozen buffer's index.
    pub buffer: u64,
    /// The seq of its state.
    pub seq: u64,
    /// Byte offset of the buffer in the region (the image holds it at the same offset).
    pub offset: u64,
    /// Length of the buffer in bytes.
    pub len: u64,
    /// Length of the image's meta part (`shmsnap_frozen_image_meta`): header and state page.
    pub meta_len: u64,
    /// Length of the whole image (the region's length).
    pub region_len: u64,
}

/// A buffer the host froze: the client does not touch it until it is released, so its copy is
/// exactly a published state. Released (and freed) by `shmsnap_frozen_release`.
///
/// Thread safety: one thread at a time, with its host.
#[derive(Debug)]
pub struct FrozenHandle {
    /// The core token, borrowing the host (`None` only inside release).
    frozen: Option<Frozen<'static, 'static, [AtomicU64]>>,
    /// The host; its `frozen_open` is cleared when this ends.
    host: NonNull<TripleHostHandle>,
    info: FrozenInfo,
    poisoned: AtomicBool,
}

impl Handle for FrozenHandle {
    const NAME: &'static str = "frozen buffer";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl Drop for FrozenHandle {
    fn drop(&mut self) {
        // An unreleased token releases itself (the core token's own drop).
        drop(self.frozen.take());
        // SAFETY: the host cannot be closed while this is open (its close checks
        // `frozen_open`), so the pointer is valid.
        let h = unsafe { self.host.as_ref() };
        // Relaxed: see `shmsnap_triple_host_close`.
        h.frozen_open.store(false, Ordering::Relaxed);
    }
}

/// Freezes the newest published buffer if its seq is above `last_persisted` (the seq of the
/// last state this host persisted; 0 at first) and stores what it froze in `*info` (if not
/// NULL). Copy it with `shmsnap_frozen_copy`, write the meta with `shmsnap_frozen_image_meta`,
/// persist, then `shmsnap_frozen_release`.
///
/// Returns `SHMSNAP_E_NOT_FOUND` if nothing newer was published (skip this snapshot). Errors:
/// `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` (a frozen buffer is already open);
/// `SHMSNAP_E_CONTENDED` (retry at the next snapshot). Does not block; bounded.
///
/// # Safety
///
/// `host` is NULL or a live triple host (one thread at a time); `out` is NULL or valid for a
/// write; `info` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_triple_host_freeze(
    host: *mut TripleHostHandle,
    last_persisted: u64,
    out: *mut *mut FrozenHandle,
    info: *mut FrozenInfo,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live host (contract).
        let h = unsafe { p.handle(host.cast_const()) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        // Relaxed: see `shmsnap_triple_host_close`.
        if h.frozen_open.load(Ordering::Relaxed) {
            return Err(Error::busy(
                "the triple host already has a frozen buffer: release it first",
            ));
        }
        // SAFETY: the host handle outlives the token (its close refuses while `frozen_open`),
        // so the borrow never exceeds it.
        let core: &'static TripleHost<'static, [AtomicU64]> =
            unsafe { &*std::ptr::from_ref(&h.host) };
        let f = core.freeze(last_persisted)?.ok_or_else(|| {
            Error::new(
                SHMSNAP_E_NOT_FOUND,
                format_args!("nothing newer than seq {last_persisted} was published"),
            )
        })?;
        let layout = core.layout();
        let range = f.byte_range();
        let fi = FrozenInfo {
            buffer: f.buffer(),
            seq: f.seq(),
            offset: range.start,
            len: range.end - range.start,
            meta_len: layout.meta_len(),
            region_len: layout.region_len,
        };
        // Relaxed: see `shmsnap_triple_host_close`.
        h.frozen_open.store(true, Ordering::Relaxed);
        let fh = FrozenHandle {
            frozen: Some(f),
            host: NonNull::from(h),
            info: fi,
            poisoned: AtomicBool::new(false),
        };
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(info, fi) };
        out.set(Box::into_raw(Box::new(fh)));
        Ok(())
    })
}

/// The live token of a frozen handle.
fn token(f: &FrozenHandle) -> Result<&Frozen<'static, 'static, [AtomicU64]>, Error> {
    f.frozen
        .as_ref()
        .ok_or_else(|| Error::invalid("the frozen buffer has already been released"))
}

/// Copies the first `len` bytes of the frozen buffer into `dst` (atomic loads; the buffer
/// does not change while frozen).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (`len` larger than the buffer). Does not
/// block.
///
/// # Safety
///
/// `frozen` is NULL or a live frozen buffer (one thread at a time); `dst` is valid for writes
/// of `len` bytes and not inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_frozen_copy(
    frozen: *const FrozenHandle,
    dst: *mut c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live frozen buffer (contract).
        let f = unsafe { p.handle(frozen) }?;
        // SAFETY: valid for writes of `len` bytes (contract).
        let dst = unsafe { bytes_mut(dst.cast(), len, "dst") }?;
        if len as u64 > f.info.len {
            return Err(Error::invalid(format_args!(
                "cannot copy {len} bytes of a {}-byte buffer",
                f.info.len
            )));
        }
        token(f)?.copy_to(dst)?;
        Ok(())
    })
}

/// Writes the meta part of the snapshot image (its first `meta_len` bytes: header page and a
/// state page naming only this buffer, with `next_seq` above every seq seen) into `meta`. The
/// image is then: this meta, the frozen buffer at its `offset`, zeros elsewhere. Call it after
/// the copy.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUFFER_TOO_SMALL` (`len` below `meta_len`). Does not
/// block.
///
/// # Safety
///
/// `frozen` is NULL or a live frozen buffer (one thread at a time); `meta` is valid for writes
/// of `len` bytes and not inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_frozen_image_meta(
    frozen: *const FrozenHandle,
    meta: *mut c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live frozen buffer (contract).
        let f = unsafe { p.handle(frozen) }?;
        // SAFETY: valid for writes of `len` bytes (contract).
        let meta = unsafe { bytes_mut(meta.cast(), len, "meta") }?;
        token(f)?.image_meta(meta)?;
        Ok(())
    })
}

/// Releases the frozen buffer back to its published state (the client may reuse it once it
/// has published a newer one) and frees the handle **whatever it returns** (unless `frozen`
/// is NULL).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_PROTOCOL` (the state word was changed behind the
/// host's back: another party writes state words; it was left as found). Does not block.
///
/// # Safety
///
/// `frozen` is NULL or a live frozen buffer, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_frozen_release(frozen: *mut FrozenHandle) -> c_int {
    // No poison flag is registered: the handle is freed inside the body.
    entry::run(|_| {
        // SAFETY: NULL or a live frozen buffer (contract).
        let checked = unsafe { FrozenHandle::from_ptr(frozen) }.map(|_| ());
        if frozen.is_null() {
            return checked;
        }
        // SAFETY: made by `Box::into_raw` in freeze; not used again (contract). Dropped at
        // every return below (its `Drop` clears the host's flag).
        let mut f = unsafe { Box::from_raw(frozen) };
        checked?;
        if let Some(token) = f.frozen.take() {
            token.release()?;
        }
        Ok(())
    })
}
