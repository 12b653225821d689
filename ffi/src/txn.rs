//! Transactions with frozen tail units (DESIGN §5.4): a unit table, and a transaction handle
//! that holds the core [`Transaction`] across calls.
//!
//! The core ties a transaction to a `&mut` borrow of its writer and a unit grant to the
//! transaction's lifetime, so a frozen unit cannot be written through the safe Rust API. A C
//! handle cannot carry a lifetime; the same rules are kept at run time: the writer refuses
//! its writing calls and its close while a transaction is open (`txn_open`), a transaction
//! writes only units it allocated itself (it keeps their grants) and only with the unit table
//! it allocated them from, and commit or abort ends it and frees its handle.

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use shmsnap_core::{Transaction, UnitGrant, UnitState, UnitTable};

use crate::entry::{self, bytes, handle_out, out, put, Handle, Owned};
use crate::status::Error;
use crate::writer::WriterHandle;

/// A unit is free (never written, or reclaimed).
pub const SHMSNAP_UNIT_FREE: c_int = 0;
/// A unit is in use: written by a commit, possibly referenced by a live entry (frozen).
pub const SHMSNAP_UNIT_IN_USE: c_int = 1;
/// A unit is retired as of a seq: reusable once the oldest live entry is at or after it.
pub const SHMSNAP_UNIT_RETIRED: c_int = 2;

/// A table of tail units of one size, in the client's private memory (not in the region):
/// which units are free, in use (frozen) or retired as of a seq. After a restart, rebuild it
/// from the restored root with `shmsnap_units_mark_in_use`.
///
/// Thread safety: not thread-safe; use it with its writer, one thread at a time.
#[derive(Debug)]
pub struct UnitsHandle {
    /// The core table over `states`; declared first, dropped before `states` is freed.
    table: UnsafeCell<UnitTable<'static>>,
    /// This table's identity for the grants of a transaction: unique in the process, so a
    /// table closed and another one allocated at the same address is never taken for it.
    id: u64,
    poisoned: AtomicBool,
    /// The table's storage.
    _states: Owned<[u64]>,
}

impl Handle for UnitsHandle {
    const NAME: &'static str = "units";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl UnitsHandle {
    /// The core table, exclusively.
    ///
    /// # Safety
    ///
    /// No other reference to the table is live (the handle's contract: one thread at a time;
    /// no call keeps one across calls).
    #[allow(clippy::mut_from_ref)] // exclusivity is the handle's contract
    unsafe fn table(&self) -> &mut UnitTable<'static> {
        // SAFETY: the caller's contract.
        unsafe { &mut *self.table.get() }
    }
}

/// The next unit table's id. Relaxed: only uniqueness matters, which `fetch_add` gives.
static NEXT_UNITS_ID: AtomicU64 = AtomicU64::new(1);

/// Creates a unit table of `count` units of `unit_size` bytes, all free. Only units that fit
/// in the tail are ever handed out (`shmsnap_writer_unit_count`).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (`unit_size` is not a nonzero multiple of 8).
/// Does not block; allocates `8 * count` bytes.
///
/// # Safety
///
/// `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_units_new(
    count: usize,
    unit_size: usize,
    out: *mut *mut UnitsHandle,
) -> c_int {
    entry::run(|_| {
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        let mut states = Owned::new(vec![0u64; count].into_boxed_slice());
        // SAFETY: borrowed once, by the table that the handle below keeps in a field declared
        // before `_states`.
        let table = UnitTable::new(unsafe { states.borrow_mut() }, unit_size)?;
        let h = UnitsHandle {
            table: UnsafeCell::new(table),
            id: NEXT_UNITS_ID.fetch_add(1, Ordering::Relaxed),
            poisoned: AtomicBool::new(false),
            _states: states,
        };
        out.set(Box::into_raw(Box::new(h)));
        Ok(())
    })
}

/// Frees a unit table. (Transactions do not keep it: it may be closed at any time.)
///
/// Errors: `SHMSNAP_E_NULL`. Does not block.
///
/// # Safety
///
/// `units` is NULL or a live unit table not used by another thread during the call, nor
/// again after `SHMSNAP_OK`.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_units_close(units: *mut UnitsHandle) -> c_int {
    entry::run(|_| {
        if units.is_null() {
            return Err(Error::null(UnitsHandle::NAME));
        }
        // SAFETY: made by `Box::into_raw` in `shmsnap_units_new` (contract), not used again.
        drop(unsafe { Box::from_raw(units) });
        Ok(())
    })
}

/// Marks `unit` in use: when rebuilding the table after a restart, for every unit the
/// restored root refers to.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (`unit` is outside the table). Does not block.
///
/// # Safety
///
/// `units` is NULL or a live unit table (one thread at a time).
#[no_mangle]
pub unsafe extern "C" fn shmsnap_units_mark_in_use(units: *mut UnitsHandle, unit: usize) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live unit table (contract).
        let u = unsafe { p.handle(units.cast_const()) }?;
        // SAFETY: one thread at a time (contract).
        unsafe { u.table() }.mark_in_use(unit)?;
        Ok(())
    })
}

/// Retires `unit` as of seq `as_of`: no entry with seq `>= as_of` refers to it (typically the
/// seq of the commit whose root stopped referring to it). It is reused only once every entry
/// that could refer to it has been evicted.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (outside the table, not in use, or `as_of`
/// is 0). Does not block.
///
/// # Safety
///
/// `units` is NULL or a live unit table (one thread at a time).
#[no_mangle]
pub unsafe extern "C" fn shmsnap_units_retire(
    units: *mut UnitsHandle,
    unit: usize,
    as_of: u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live unit table (contract).
        let u = unsafe { p.handle(units.cast_const()) }?;
        // SAFETY: one thread at a time (contract).
        unsafe { u.table() }.retire(unit, as_of)?;
        Ok(())
    })
}

/// Stores the state of `unit` in `*state` (`SHMSNAP_UNIT_FREE`, `_IN_USE` or `_RETIRED`) and,
/// if retired, its retire point in `*as_of` (if not NULL; 0 otherwise).
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (outside the table). Does not block.
///
/// # Safety
///
/// `units` is NULL or a live unit table (one thread at a time); `state` is NULL or valid for a
/// write; `as_of` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_units_state(
    units: *const UnitsHandle,
    unit: usize,
    state: *mut c_int,
    as_of: *mut u64,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live unit table (contract).
        let u = unsafe { p.handle(units) }?;
        // SAFETY: NULL or valid for a write (contract).
        let state = unsafe { out(state, "state") }?;
        // SAFETY: one thread at a time (contract).
        let s = unsafe { u.table() }
            .state(unit)
            .ok_or_else(|| Error::invalid(format_args!("tail unit {unit} does not exist")))?;
        let (code, point) = match s {
            UnitState::Free => (SHMSNAP_UNIT_FREE, 0),
            UnitState::InUse => (SHMSNAP_UNIT_IN_USE, 0),
            UnitState::Retired { as_of } => (SHMSNAP_UNIT_RETIRED, as_of),
        };
        state.set(code);
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(as_of, point) };
        Ok(())
    })
}

/// A commit in progress: the evictions are done and fenced; tail units may be allocated and
/// written, then the payload is committed. Ended by `shmsnap_txn_commit` or
/// `shmsnap_txn_abort`, which free it.
///
/// Thread safety: a transaction and its writer form one unit: one thread at a time.
#[derive(Debug)]
pub struct TxnHandle {
    /// The transaction's state, changed by its calls (one thread at a time).
    inner: UnsafeCell<TxnInner>,
    /// The writer; its `txn_open` is cleared when the transaction ends.
    writer: NonNull<WriterHandle>,
    poisoned: AtomicBool,
}

/// The changing part of a [`TxnHandle`].
#[derive(Debug)]
struct TxnInner {
    /// Grants of the units this transaction allocated, with the id of the table each came
    /// from.
    grants: Vec<(UnitGrant<'static>, u64)>,
    /// The core transaction, borrowing the writer's core writer mutably until it ends
    /// (`None` only inside `shmsnap_txn_commit`, once committed).
    tx: Option<Transaction<'static, 'static, [AtomicU64]>>,
}

impl Handle for TxnHandle {
    const NAME: &'static str = "transaction";
    fn poison(&self) -> &AtomicBool {
        &self.poisoned
    }
}

impl TxnHandle {
    /// The transaction's state, exclusively.
    ///
    /// # Safety
    ///
    /// No other reference to it is live (one thread at a time; no call keeps one).
    #[allow(clippy::mut_from_ref)] // exclusivity is the handle's contract
    unsafe fn inner(&self) -> &mut TxnInner {
        // SAFETY: the caller's contract.
        unsafe { &mut *self.inner.get() }
    }
}

impl Drop for TxnHandle {
    fn drop(&mut self) {
        // SAFETY: the writer cannot be closed while this transaction is open (its close checks
        // `txn_open`), so the pointer is valid.
        let w = unsafe { self.writer.as_ref() };
        // Relaxed: see `WriterHandle::writer_mut`. The fields (grants, then the transaction's
        // borrow of the writer) are dropped right after this body, before any later call.
        w.txn_open.store(false, Ordering::Relaxed);
    }
}

/// The error of a transaction whose core transaction is gone (cannot happen: only commit
/// takes it, and commit frees the handle).
fn ended() -> Error {
    Error::invalid("the transaction has already ended")
}

/// Begins a transaction that will commit a payload of at most `len` bytes: evicts what the
/// new entry displaces and fences, so units may be written. Dropping (aborting) it publishes
/// nothing and consumes no seq.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_BUSY` (a transaction is already open);
/// `SHMSNAP_E_PAYLOAD_SIZE` (`len` is 0 or larger than the data ring); `SHMSNAP_E_EXHAUSTED`.
/// Wait-free (allocates the handle).
///
/// # Safety
///
/// `writer` is NULL or a live writer handle (writing calls not concurrent); `out` is NULL or
/// valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_txn_begin(
    writer: *mut WriterHandle,
    len: usize,
    out: *mut *mut TxnHandle,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live writer (contract).
        let h = unsafe { p.handle(writer.cast_const()) }?;
        // SAFETY: NULL or valid for a write (contract).
        let out = unsafe { handle_out(out, "out") }?;
        // SAFETY: no concurrent writing call (contract); an open transaction is refused.
        let w = unsafe { h.writer_mut() }?;
        // The borrow outlives this call: `txn_open` (set below) keeps every other use of the
        // writer away until the transaction's handle is dropped, and the writer cannot be
        // closed meanwhile, so the `'static` lifetime is never exceeded.
        let w: *mut _ = w;
        // SAFETY: see above; `w` is the writer's only live reference.
        let tx = unsafe { &mut *w }.begin(len)?;
        // Relaxed: see `WriterHandle::writer_mut`.
        h.txn_open.store(true, Ordering::Relaxed);
        let t = TxnHandle {
            inner: UnsafeCell::new(TxnInner {
                grants: Vec::new(),
                tx: Some(tx),
            }),
            writer: NonNull::from(h),
            poisoned: AtomicBool::new(false),
        };
        out.set(Box::into_raw(Box::new(t)));
        Ok(())
    })
}

/// Stores the seq this transaction will publish in `*seq` (to retire units as of it).
///
/// Errors: `SHMSNAP_E_NULL`. Does not block.
///
/// # Safety
///
/// `txn` is NULL or a live transaction; `seq` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_txn_seq(txn: *const TxnHandle, seq: *mut u64) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live transaction (contract).
        let t = unsafe { p.handle(txn) }?;
        // SAFETY: NULL or valid for a write (contract).
        let seq = unsafe { out(seq, "seq") }?;
        // SAFETY: one thread at a time (contract).
        let inner = unsafe { t.inner() };
        seq.set(inner.tx.as_ref().ok_or_else(ended)?.seq());
        Ok(())
    })
}

/// Allocates a tail unit from `units` that no live entry can refer to (free, or retired as of
/// a seq at or before the oldest live entry) and stores its index in `*unit`. Its old
/// contents are unspecified; only this transaction may write it.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_NO_UNIT` (none available: abort, retire units or
/// evict older entries, and retry). Does not block.
///
/// # Safety
///
/// `txn` is NULL or a live transaction; `units` is NULL or a live unit table (both used by one
/// thread at a time); `unit` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_txn_alloc_unit(
    txn: *mut TxnHandle,
    units: *mut UnitsHandle,
    unit: *mut usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live transaction (contract).
        let t = unsafe { p.handle(txn.cast_const()) }?;
        // SAFETY: one thread at a time (contract).
        let t = unsafe { t.inner() };
        // SAFETY: NULL or a live unit table (contract).
        let u = unsafe { p.handle(units.cast_const()) }?;
        // SAFETY: NULL or valid for a write (contract).
        let unit = unsafe { out(unit, "unit") }?;
        let tx = t.tx.as_mut().ok_or_else(ended)?;
        // SAFETY: one thread at a time (contract).
        let g = tx.alloc_unit(unsafe { u.table() })?;
        unit.set(g.unit());
        t.grants.push((g, u.id));
        Ok(())
    })
}

/// Writes `len` bytes at `offset` within `unit`, which this transaction allocated from
/// `units` (the same table). The bytes are published by the commit.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_INVALID` (a unit this transaction did not allocate
/// from this table, or a write that does not fit in the unit). Does not block.
///
/// # Safety
///
/// `txn` is NULL or a live transaction; `units` is NULL or a live unit table (both used by one
/// thread at a time); `bytes` is valid for reads of `len` bytes and not inside the region.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_txn_write_unit(
    txn: *mut TxnHandle,
    units: *const UnitsHandle,
    unit: usize,
    offset: usize,
    bytes: *const c_void,
    len: usize,
) -> c_int {
    entry::run(|p| {
        // SAFETY: NULL or a live transaction (contract).
        let t = unsafe { p.handle(txn.cast_const()) }?;
        // SAFETY: one thread at a time (contract).
        let t = unsafe { t.inner() };
        // SAFETY: NULL or a live unit table (contract).
        let u = unsafe { p.handle(units) }?;
        // SAFETY: valid for reads of `len` bytes (contract).
        let data = unsafe { crate::entry::bytes(bytes.cast(), len, "bytes") }?;
        let grant = t
            .grants
            .iter()
            .find(|(g, from)| g.unit() == unit && *from == u.id)
            .map(|(g, _)| g)
            .ok_or_else(|| {
                Error::invalid(format_args!(
                    "tail unit {unit} was not allocated by this transaction from this unit table"
                ))
            })?;
        let tx = t.tx.as_mut().ok_or_else(ended)?;
        // SAFETY: one thread at a time (contract); the table is only read here.
        tx.write_unit(unsafe { u.table() }, grant, offset, data)?;
        Ok(())
    })
}

/// Commits `len` bytes at `payload` (at most the length given to `shmsnap_txn_begin`) as the
/// entry, publishing it with every unit written, and stores its seq in `*seq` (if not NULL).
/// **Ends the transaction and frees its handle whatever it returns** (as LMDB's
/// `mdb_txn_commit` does), unless `txn` itself is NULL; on failure nothing was published.
///
/// Errors: `SHMSNAP_E_NULL`; `SHMSNAP_E_PAYLOAD_SIZE`. Wait-free.
///
/// # Safety
///
/// `txn` is NULL or a live transaction, not used again after this call; `payload` is valid
/// for reads of `len` bytes and not inside the region; `seq` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_txn_commit(
    txn: *mut TxnHandle,
    payload: *const c_void,
    len: usize,
    seq: *mut u64,
) -> c_int {
    // No poison flag is registered: the handle is freed inside the body, so a panic must not
    // touch it afterwards.
    entry::run(|_| {
        // SAFETY: NULL or a live transaction (contract); a poisoned one is refused, and freed
        // below like any other.
        let checked = unsafe { TxnHandle::from_ptr(txn) }.map(|_| ());
        if txn.is_null() {
            return checked;
        }
        // SAFETY: made by `Box::into_raw` in `shmsnap_txn_begin`; not used again (contract).
        // Dropping it (at every return below) ends the transaction: its `Drop` clears the
        // writer's flag.
        let mut t = unsafe { Box::from_raw(txn) };
        checked?;
        // SAFETY: valid for reads of `len` bytes (contract).
        let payload = unsafe { bytes(payload.cast(), len, "payload") }?;
        let inner = t.inner.get_mut();
        inner.grants.clear();
        let tx = inner.tx.take().ok_or_else(ended)?;
        let s = tx.commit(payload)?;
        // SAFETY: NULL or valid for a write (contract).
        unsafe { put(seq, s) };
        Ok(())
    })
}

/// Aborts a transaction and frees its handle: nothing is published and no seq is consumed.
/// Units it allocated stay marked in use in their table (retire them to reuse them).
///
/// Errors: `SHMSNAP_E_NULL`. Does not block.
///
/// # Safety
///
/// `txn` is NULL or a live transaction, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn shmsnap_txn_abort(txn: *mut TxnHandle) -> c_int {
    entry::run(|_| {
        if txn.is_null() {
            return Err(Error::null(TxnHandle::NAME));
        }
        // SAFETY: made by `Box::into_raw` in `shmsnap_txn_begin`; not used again (contract).
        // A poisoned transaction may be aborted too. Its `Drop` clears the writer's flag.
        drop(unsafe { Box::from_raw(txn) });
        Ok(())
    })
}
