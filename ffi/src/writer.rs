//! The queue writer handle: open, commit, read the newest entry (the restored state), evict.
//!
//! The handle keeps the core [`Writer`] in an [`UnsafeCell`] (a transaction borrows it
//! mutably across calls, `txn.rs`) and a copy of its [`Region`] for reads, so a read never
//! touches the writer: reads are allowed while a transaction is open, and from any thread.

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shmsnap_core::{Descriptor, LayoutRequest, Region, Writer};

use crate::construct::{self, Claim};
use crate::entry::{self, bytes, bytes_mut, handle_out, out, put, Handle};
use crate::region::RegionHandle;
use crate::status::{Error, SHMSNAP_E_BUFFER_TOO_SMALL, SHMSNAP_E_NOT_FOUND};

/// The layout a client asks for when it configures a queue region (`docs/FORMAT.md`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    /// Descriptor count E: a power of two, 1 to 2^24. At most E entries are live.
    pub entries: u64,
    /// Data ring size S in bytes: a power of two, 8 to 2^40. A payload is 1 to S bytes.
    pub data_size: u64,
}

/// Where a queue region's parts lie (`shmsnap_writer_layout`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueInfo {
    /// Descriptor count E.
    pub entries: u64,
    /// Data ring size S in bytes: the largest payload.
    pub data_size: u64,
    /// Bytes of the tail (the client's frozen units), after the data ring.
    pub tail_len: u64,
    /// Length of the region the layout describes.
    pub region_len: u64,
}

/// A committed entry: its seq and where its payload lies (`shmsnap_writer_newest`). Pass it
/// back to `shmsnap_writer_read`, which checks it against the region (a changed or invented
/// entry is refused, never trusted).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry {
    /// Sequence number, from 1; never repeats in a region.
    pub seq: u64,
    /// Stream offset of the payload.
    pub offset: u64,
    /// Payload length in bytes.
    pub length: u64,
}

impl From<Descriptor> for Entry {
    fn from(d: Descriptor) -> Entry {
        Entry {
            seq: d.seq,
            offset: d.offset,
            length: d.length,
        }
    }
}

/// The single writer of a queue region (one per region: a second one gets
/// `SHMSNAP_E_CLAIMED`).
///
/// Thread safety: the writing calls (`shmsnap_writer_commit`, `shmsnap_txn_begin`,
/// `shmsnap_writer_evict_before`, `shmsnap_writer_next_seq`, `shmsnap_writer_close`) must not
/// run concurrently with each other; the handle may move between threads. The reading calls
/// (`shmsnap_writer_layout`, `_newest`, `_entry`, `_read`, `_read_tail`, `_unit_count`) may
/// run on any thread, concurrently with everything but `shmsnap_writer_close`.
#[derive(Debug)]
pub struct WriterHandle {
    /// The core writer. Borrowed mutably by a commit, or by an open transaction across calls
    /// (`txn_open`); declared before `claim`, so it is dropped before its words' lease.
    pub(crate) writer: UnsafeCell<Writer<'static, [AtomicU64]>>,
    /// A copy of the writer's region (validated layout, same words), for the reading calls.
    pub(crate) view: Region<'static, [AtomicU64]>,
    /// `true` while a transaction holds `writer` mutably: the writing calls refuse then.
    pub(crate) txn_open: AtomicBool,
    poisoned: AtomicBool,
    /// The region's single-writer claim (with its lease).
    _claim: Claim,
}

impl Handle for WriterHandle {
    const NAME: &'static str = "writer";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl WriterHandle {
    /// The core writer, for a writing call.
    ///
    /// # Safety
    ///
    /// No other reference to the writer is live: the handle's contract (no concurrent writing
    /// calls) and no open transaction (checked here).
    #[allow(clippy::mut_from_ref)] // exclusivity is the handle's contract, checked here
    pub(crate) unsafe fn writer_mut(&self) -> Result<&mut Writer<'static, [AtomicU64]>, Error> {
        // Relaxed: set and cleared by this handle's own calls, which its contract orders.
        if self.txn_open.load(Ordering::Relaxed) {
            return Err(Error::busy(
                "the writer has an open transaction: commit or abort it first",
            ));
        }
        // SAFETY: no transaction borrows the writer (checked) and no other writing call runs
        // (contract), so this is the only reference.
        Ok(unsafe { &mut *self.writer.get() })
    }
}

/// Opens the region's queue writer. With `layout` NULL it attaches to a configured region
/// (after a restart or a restore); with a layout it also configures a fresh one, and refuses
/// a region configured with another layout. Attaching recovers the cursor from the region
/// (treated as hostile: invalid entries are emptied) and bumps its epoch: the newest entry is
/// the restored state (`shmsnap_writer_newest`).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (a layout the format does not allow or the
/// region cannot hold); `SHMSNAP_E_CLAIMED` (the region already has a writer or triple
/// client); `SHMSNAP_E_UNCONFIGURED` (NULL layout, fresh region); `SHMSNAP_E_BAD_HEADER`;
/// `SHMSNAP_E_MISMATCH`; `SHMSNAP_E_EXHAUSTED`. Does not block; O(E).
///
/// # Safety
///
/// `region` is NULL or a live region handle; `layout` is NULL or valid for a read; `out` is
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_open(
    region: *const RegionHandle,
    layout: *const QueueLayout,
    out: *mut *mut WriterHandle,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live region (contract).
        let r = unsafe { p.handle(region) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        // SAFETY: NULL or valid for a read (contract).
        let request = unsafe { layout.as_ref() }.map(|l| LayoutRequest {
            entries: l.entries,
            data_size: l.data_size,
        });
        let (writer, claim) = construct::queue_writer(r, request)?;
        let h = WriterHandle {
            view: *writer.region(),
            writer: UnsafeCell::new(writer),
            txn_open: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            _claim: claim,
        };
        out.set(Box::into_raw(Box::new(h)));
        Ok(())
    })
}

/// Closes a writer and releases the region's claim. Everything committed stays in the region.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` while a transaction is open (nothing is closed
/// then). Does not block.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle that no other thread uses during the call; it is
/// not used again after `SHMSNAP_OK`.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_close(writer: *mut WriterHandle) -> c_int {
    entry::run(|_| {
        // SAFETY: NULL or a live writer (contract); a poisoned one may still be closed.
        let w = unsafe { writer.as_ref() }.ok_or_else(|| Error::null(WriterHandle::NAME))?;
        // Relaxed: see `writer_mut`.
        if w.txn_open.load(Ordering::Relaxed) {
            return Err(Error::busy(
                "the writer has an open transaction: commit or abort it first",
            ));
        }
        // SAFETY: made by `Box::into_raw` in `shmsnap_writer_open`; no transaction refers to
        // it (checked); the caller does not use it again.
        drop(unsafe { Box::from_raw(writer) });
        Ok(())
    })
}

/// Commits `len` bytes at `payload` as the next entry and stores its seq in `*seq` (if `seq`
/// is not NULL). One call, one copy of the payload into the region; the host snapshots it.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_PAYLOAD_SIZE` (`len` is 0 or larger than the data
/// ring); `SHMSNAP_E_BUSY` (a transaction is open); `SHMSNAP_E_EXHAUSTED`. **Wait-free**: no
/// system call, no lock, bounded steps; never blocks.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle (writing calls not concurrent); `payload` is valid
/// for reads of `len` bytes and not inside the region; `seq` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_commit(
    writer: *mut WriterHandle,
    payload: *const c_void,
    len: usize,
    seq: *mut u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer.cast_const()) }?;
        // SAFETY: valid for reads of `len` bytes (contract).
        let payload = unsafe { bytes(payload.cast(), len, "payload") }?;
        // SAFETY: no concurrent writing call (contract); an open transaction is refused.
        let w = unsafe { h.writer_mut() }?;
        let s = w.commit(payload)?;
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Stores the seq the next commit will get in `*seq`.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` (a transaction is open: `shmsnap_txn_seq` has
/// its seq). Does not block.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle (writing calls not concurrent); `seq` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_next_seq(
    writer: *mut WriterHandle,
    seq: *mut u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer.cast_const()) }?;
        // SAFETY: NULL or valid for a write (contract).
        let seq = unsafe { out(seq, "seq") }?;
        // SAFETY: no concurrent writing call (contract); an open transaction is refused.
        let w = unsafe { h.writer_mut() }?;
        seq.set(w.next_seq());
        Ok(())
    })
}

/// Evicts every live entry older than `seq` (never the newest entry), so tail units retired
/// as of `seq` or earlier become reusable by the next transaction. Bounded by E.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` (a transaction is open). Wait-free.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle (writing calls not concurrent).
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_evict_before(writer: *mut WriterHandle, seq: u64) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer.cast_const()) }?;
        // SAFETY: no concurrent writing call (contract); an open transaction is refused.
        let w = unsafe { h.writer_mut() }?;
        w.evict_before(seq);
        Ok(())
    })
}

/// Stores the region's layout in `*info`.
///
/// Errors: `SHMSNAP_E_NULL`. Thread-safe; does not block.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle; `info` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_layout(
    writer: *const WriterHandle,
    info: *mut QueueInfo,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer) }?;
        // SAFETY: NULL or valid for a write (contract).
        let info = unsafe { out(info, "info") }?;
        let l = h.view.layout();
        info.set(QueueInfo {
            entries: l.entries,
            data_size: l.data_size,
            tail_len: l.tail_len,
            region_len: l.region_len,
        });
        Ok(())
    })
}

/// Stores in `*count` how many tail units of `unit_size` bytes fit in the tail (0 for a
/// `unit_size` of 0).
///
/// Errors: `SHMSNAP_E_NULL`. Thread-safe; does not block.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle; `count` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_unit_count(
    writer: *const WriterHandle,
    unit_size: usize,
    count: *mut usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer) }?;
        // SAFETY: NULL or valid for a write (contract).
        let count = unsafe { out(count, "count") }?;
        let tail = h.view.layout().tail_len;
        let n = tail.checked_div(unit_size as u64).unwrap_or(0);
        count.set(usize::try_from(n).unwrap_or(usize::MAX));
        Ok(())
    })
}

/// Stores the newest live entry in `*entry`: after open, the restored state.
///
/// Returns `SHMSNAP_E_NOT_FOUND` if the region holds no entry. Errors: `SHMSNAP_E_NULL`.
/// Thread-safe; does not block; O(E).
///
/// # Safety
///
/// `writer` is NULL or a live writer handle; `entry` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_newest(
    writer: *const WriterHandle,
    entry: *mut Entry,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer) }?;
        // SAFETY: NULL or valid for a write (contract).
        let entry = unsafe { out(entry, "entry") }?;
        let d = h
            .view
            .newest()
            .ok_or_else(|| Error::new(SHMSNAP_E_NOT_FOUND, "the region holds no entry"))?;
        entry.set(d.into());
        Ok(())
    })
}

/// Stores the live entry with seq `seq` in `*entry`.
///
/// Returns `SHMSNAP_E_NOT_FOUND` if it is not live (never committed, or evicted). Errors:
/// `SHMSNAP_E_NULL`. Thread-safe; does not block; O(1).
///
/// # Safety
///
/// `writer` is NULL or a live writer handle; `entry` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_entry(
    writer: *const WriterHandle,
    seq: u64,
    entry: *mut Entry,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer) }?;
        // SAFETY: NULL or valid for a write (contract).
        let entry = unsafe { out(entry, "entry") }?;
        let slot = h.view.layout().slot_of(seq);
        let d = h
            .view
            .read_descriptor(slot)
            .filter(|d| d.seq == seq && seq != 0)
            .ok_or_else(|| {
                Error::new(SHMSNAP_E_NOT_FOUND, format_args!("entry {seq} is not live"))
            })?;
        entry.set(d.into());
        Ok(())
    })
}

/// Copies the payload of `entry` into `buf` (`cap` bytes) and stores its length in `*len`.
/// The entry is checked against the region first, and again after the copy (a seqlock): a
/// payload evicted meanwhile is never returned as if it were whole.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (`entry` does not describe an entry of this
/// region); `SHMSNAP_E_BUFFER_TOO_SMALL` (`*len` then holds the payload length);
/// `SHMSNAP_E_EVICTED` (read the newest entry again). Thread-safe; does not block.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle; `entry` is NULL or valid for a read; `buf` is
/// valid for writes of `cap` bytes and not inside the region; `len` is NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_read(
    writer: *const WriterHandle,
    entry: *const Entry,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer) }?;
        // SAFETY: NULL or valid for a read (contract).
        let e = unsafe { entry.as_ref() }.ok_or_else(|| Error::null("entry"))?;
        // SAFETY: valid for writes of `cap` bytes (contract).
        let buf = unsafe { bytes_mut(buf.cast(), cap, "buf") }?;
        // SAFETY: NULL or valid for a write (contract).
        let len = unsafe { out(len, "len") }?;
        let d = Descriptor {
            seq: e.seq,
            offset: e.offset,
            length: e.length,
        };
        match h.view.read_payload(&d, buf) {
            Ok(n) => {
                len.set(n);
                Ok(())
            }
            Err(err) => {
                let err = Error::from(err);
                if err.code == SHMSNAP_E_BUFFER_TOO_SMALL {
                    len.set(usize::try_from(d.length).unwrap_or(usize::MAX));
                }
                Err(err)
            }
        }
    })
}

/// Copies `len` bytes of the tail at byte `offset` (counted from the tail's start) into `buf`:
/// the client reading its own frozen units.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (the range is not inside the tail).
/// Thread-safe; does not block.
///
/// # Safety
///
/// `writer` is NULL or a live writer handle; `buf` is valid for writes of `len` bytes and not
/// inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_writer_read_tail(
    writer: *const WriterHandle,
    offset: u64,
    buf: *mut c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer) }?;
        // SAFETY: valid for writes of `len` bytes (contract).
        let buf = unsafe { bytes_mut(buf.cast(), len, "buf") }?;
        h.view.read_tail(offset, buf)?;
        Ok(())
    })
}
