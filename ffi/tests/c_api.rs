//! The C API's rules, checked through the `extern "C"` functions themselves (the rlib): NULLs
//! refused by name, one writer per region, handles that refuse to close under their children,
//! transactions and grants that end exactly once, entries checked against the region, the
//! snapshot that starves, the triple host's one frozen buffer, durability waits.
//!
//! Each test is a script of calls into the C API under one contract — handles made by the
//! test and used until they end, buffers of the lengths passed — stated once per `unsafe`
//! block rather than once per call.
#![allow(clippy::multiple_unsafe_ops_per_block)]

use std::ffi::{c_int, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::AtomicU64;

use shmsnap::host::*;
use shmsnap::region::*;
use shmsnap::status::*;
use shmsnap::triple::*;
use shmsnap::txn::*;
use shmsnap::writer::*;

/// The thread's last error text.
fn message() -> String {
    // SAFETY: `shmsnap_error_message` returns a NUL-terminated string valid until the next
    // failing call on this thread.
    unsafe { CStr::from_ptr(shmsnap_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// `rc` is `code`, and the error text contains `text`.
#[track_caller]
fn expect(rc: c_int, code: c_int, text: &str) {
    assert_eq!(rc, code, "{}", message());
    if code != SHMSNAP_OK {
        assert!(message().contains(text), "{text:?} not in {:?}", message());
    }
}

/// Caller memory of `len` bytes (8-aligned), attached as a region.
struct Mem {
    words: Vec<AtomicU64>,
    region: *mut RegionHandle,
}

impl Mem {
    fn new(len: usize) -> Mem {
        let mut words: Vec<AtomicU64> = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
        let mut region = null_mut();
        // SAFETY: the vector outlives the region (closed in `drop` before the vector).
        let rc = unsafe { shmsnap_region_attach(words.as_mut_ptr().cast(), len, &mut region) };
        expect(rc, SHMSNAP_OK, "");
        Mem { words, region }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: the region made in `new`; every test closes its handles first.
        let rc = unsafe { shmsnap_region_close(self.region) };
        if !std::thread::panicking() {
            expect(rc, SHMSNAP_OK, "");
        }
        let _ = &self.words;
    }
}

const QUEUE: QueueLayout = QueueLayout {
    entries: 4,
    data_size: 256,
};

fn open_writer(m: &Mem) -> *mut WriterHandle {
    let mut w = null_mut();
    // SAFETY: a live region; a valid layout and output.
    expect(
        unsafe { shmsnap_writer_open(m.region, &QUEUE, &mut w) },
        SHMSNAP_OK,
        "",
    );
    w
}

#[test]
fn nulls_are_refused_by_name_and_outputs_are_cleared() {
    let mut out = std::ptr::NonNull::<RegionHandle>::dangling().as_ptr();
    // SAFETY: NULL memory with a valid output pointer.
    expect(
        unsafe { shmsnap_region_attach(null_mut(), 64, &mut out) },
        SHMSNAP_E_NULL,
        "mem is NULL",
    );
    assert!(
        out.is_null(),
        "a failed call leaves NULL in its handle output"
    );
    // SAFETY: NULL handles and outputs are what is being tested.
    unsafe {
        expect(
            shmsnap_writer_open(null(), &QUEUE, &mut null_mut()),
            SHMSNAP_E_NULL,
            "region is NULL",
        );
        expect(
            shmsnap_writer_commit(null_mut(), null(), 0, null_mut()),
            SHMSNAP_E_NULL,
            "writer is NULL",
        );
        expect(
            shmsnap_region_close(null_mut()),
            SHMSNAP_E_NULL,
            "region is NULL",
        );
        expect(
            shmsnap_txn_abort(null_mut()),
            SHMSNAP_E_NULL,
            "transaction is NULL",
        );
        expect(
            shmsnap_grant_abort(null_mut()),
            SHMSNAP_E_NULL,
            "grant is NULL",
        );
        expect(
            shmsnap_frozen_release(null_mut()),
            SHMSNAP_E_NULL,
            "frozen buffer is NULL",
        );
        expect(
            shmsnap_snapshot_finish(null_mut(), null_mut(), 0, null_mut()),
            SHMSNAP_E_NULL,
            "snapshot is NULL",
        );
    }
    let m = Mem::new(64 * 1024);
    let w = open_writer(&m);
    // SAFETY: a live writer; NULL payloads and outputs are what is being tested.
    unsafe {
        expect(
            shmsnap_writer_commit(w, null(), 8, null_mut()),
            SHMSNAP_E_NULL,
            "payload is NULL",
        );
        expect(
            shmsnap_writer_commit(w, null(), 0, null_mut()),
            SHMSNAP_E_PAYLOAD_SIZE,
            "0 bytes",
        );
        expect(
            shmsnap_writer_newest(w, null_mut()),
            SHMSNAP_E_NULL,
            "entry is NULL",
        );
        expect(
            shmsnap_region_persisted(m.region, null_mut()),
            SHMSNAP_E_NULL,
            "status is NULL",
        );
        expect(shmsnap_writer_close(w), SHMSNAP_OK, "");
    }
}

#[test]
fn misaligned_or_odd_memory_and_bad_layouts_are_invalid() {
    let mut buf = vec![0u64; 1024];
    let base: *mut u8 = buf.as_mut_ptr().cast();
    let mut r = null_mut();
    // SAFETY: inside `buf`; refused before use.
    unsafe {
        expect(
            shmsnap_region_attach(base.add(1).cast(), 64, &mut r),
            SHMSNAP_E_INVALID,
            "8-byte boundary",
        );
        expect(
            shmsnap_region_attach(base.cast(), 12, &mut r),
            SHMSNAP_E_INVALID,
            "multiple of 8",
        );
        expect(
            shmsnap_region_attach(base.cast(), 0, &mut r),
            SHMSNAP_E_INVALID,
            "nonzero",
        );
    }
    let m = Mem::new(64 * 1024);
    let mut w = null_mut();
    let bad = QueueLayout {
        entries: 3,
        data_size: 256,
    };
    let huge = QueueLayout {
        entries: 4,
        data_size: 1 << 20,
    };
    // SAFETY: a live region, valid pointers.
    unsafe {
        expect(
            shmsnap_writer_open(m.region, &bad, &mut w),
            SHMSNAP_E_INVALID,
            "power of two",
        );
        expect(
            shmsnap_writer_open(m.region, &huge, &mut w),
            SHMSNAP_E_INVALID,
            "too small",
        );
        expect(
            shmsnap_writer_open(m.region, null(), &mut w),
            SHMSNAP_E_UNCONFIGURED,
            "not configured",
        );
        let mut t = null_mut();
        let tl = TripleLayoutRequest {
            buffers: 2,
            buffer_size: 4096,
        };
        expect(
            shmsnap_triple_open(m.region, &tl, &mut t),
            SHMSNAP_E_INVALID,
            "buffers",
        );
    }
}

#[test]
fn one_writer_per_region_and_the_claim_is_released_on_close() {
    let m = Mem::new(64 * 1024);
    let w = open_writer(&m);
    let (mut w2, mut t) = (null_mut(), null_mut());
    let tl = TripleLayoutRequest {
        buffers: 3,
        buffer_size: 4096,
    };
    // SAFETY: live handles, valid pointers.
    unsafe {
        expect(
            shmsnap_writer_open(m.region, null(), &mut w2),
            SHMSNAP_E_CLAIMED,
            "held by pid",
        );
        assert!(w2.is_null());
        expect(
            shmsnap_triple_open(m.region, &tl, &mut t),
            SHMSNAP_E_CLAIMED,
            "one writer per region",
        );
        // The region refuses to close (or be overwritten) under its writer.
        expect(
            shmsnap_region_close(m.region),
            SHMSNAP_E_BUSY,
            "1 handle(s)",
        );
        expect(
            shmsnap_region_write(m.region, 0, [0u8; 8].as_ptr().cast(), 8),
            SHMSNAP_E_BUSY,
            "still open",
        );
        expect(
            shmsnap_writer_commit(w, b"one".as_ptr().cast(), 3, null_mut()),
            SHMSNAP_OK,
            "",
        );
        expect(shmsnap_writer_close(w), SHMSNAP_OK, "");
        // Released: a new writer attaches and finds the entry.
        let w3 = open_writer(&m);
        let mut e = Entry::default();
        expect(shmsnap_writer_newest(w3, &mut e), SHMSNAP_OK, "");
        assert_eq!((e.seq, e.length), (1, 3));
        // A triple client on a queue region: claimed while the writer lives, the wrong
        // strategy once it is gone.
        expect(shmsnap_writer_close(w3), SHMSNAP_OK, "");
        expect(
            shmsnap_triple_open(m.region, null(), &mut t),
            SHMSNAP_E_BAD_HEADER,
            "configured for the `queue` strategy",
        );
    }
}

#[test]
fn reads_check_entries_against_the_region_and_report_lengths() {
    let m = Mem::new(64 * 1024);
    let w = open_writer(&m);
    let mut e = Entry::default();
    let mut buf = [0u8; 64];
    let mut len = 0usize;
    // SAFETY: a live writer, valid buffers.
    unsafe {
        expect(
            shmsnap_writer_newest(w, &mut e),
            SHMSNAP_E_NOT_FOUND,
            "no entry",
        );
        let mut seq = 0;
        expect(
            shmsnap_writer_commit(w, b"0123456789".as_ptr().cast(), 10, &mut seq),
            SHMSNAP_OK,
            "",
        );
        assert_eq!(seq, 1);
        expect(shmsnap_writer_newest(w, &mut e), SHMSNAP_OK, "");
        expect(
            shmsnap_writer_read(w, &e, buf.as_mut_ptr().cast(), 4, &mut len),
            SHMSNAP_E_BUFFER_TOO_SMALL,
            "10 bytes",
        );
        assert_eq!(len, 10, "the length needed");
        expect(
            shmsnap_writer_read(w, &e, buf.as_mut_ptr().cast(), 64, &mut len),
            SHMSNAP_OK,
            "",
        );
        assert_eq!(&buf[..len], b"0123456789");
        let invented = Entry {
            seq: 1,
            offset: 8,
            length: 10,
        };
        expect(
            shmsnap_writer_read(w, &invented, buf.as_mut_ptr().cast(), 64, &mut len),
            SHMSNAP_E_EVICTED,
            "evicted",
        );
        let foreign = Entry {
            seq: 2,
            offset: 0,
            length: 10,
        };
        expect(
            shmsnap_writer_read(w, &foreign, buf.as_mut_ptr().cast(), 64, &mut len),
            SHMSNAP_E_EVICTED,
            "",
        );
        let broken = Entry {
            seq: 1,
            offset: 3,
            length: 10,
        };
        expect(
            shmsnap_writer_read(w, &broken, buf.as_mut_ptr().cast(), 64, &mut len),
            SHMSNAP_E_INVALID,
            "does not describe",
        );
        expect(shmsnap_writer_entry(w, 1, &mut e), SHMSNAP_OK, "");
        expect(
            shmsnap_writer_entry(w, 7, &mut e),
            SHMSNAP_E_NOT_FOUND,
            "entry 7 is not live",
        );
        expect(
            shmsnap_writer_commit(w, buf.as_ptr().cast(), 257, null_mut()),
            SHMSNAP_E_PAYLOAD_SIZE,
            "257 bytes",
        );
        expect(
            shmsnap_writer_read_tail(w, u64::MAX, buf.as_mut_ptr().cast(), 8),
            SHMSNAP_E_INVALID,
            "outside the tail",
        );
        expect(shmsnap_writer_close(w), SHMSNAP_OK, "");
    }
}

#[test]
fn a_transaction_holds_its_writer_and_ends_exactly_once() {
    let m = Mem::new(64 * 1024);
    let w = open_writer(&m);
    let (mut units, mut other, mut txn) = (null_mut(), null_mut(), null_mut());
    let (mut unit, mut seq) = (0usize, 0u64);
    // SAFETY: live handles, valid buffers; each transaction handle is used only until it ends.
    unsafe {
        expect(shmsnap_units_new(2, 64, &mut units), SHMSNAP_OK, "");
        expect(shmsnap_units_new(2, 64, &mut other), SHMSNAP_OK, "");
        expect(
            shmsnap_units_new(2, 12, &mut null_mut()),
            SHMSNAP_E_INVALID,
            "multiple of 8",
        );
        expect(shmsnap_txn_begin(w, 16, &mut txn), SHMSNAP_OK, "");
        expect(shmsnap_txn_seq(txn, &mut seq), SHMSNAP_OK, "");
        assert_eq!(seq, 1);
        // The writer is busy while the transaction is open.
        expect(
            shmsnap_writer_commit(w, b"x".as_ptr().cast(), 1, null_mut()),
            SHMSNAP_E_BUSY,
            "open transaction",
        );
        expect(
            shmsnap_txn_begin(w, 16, &mut null_mut()),
            SHMSNAP_E_BUSY,
            "open transaction",
        );
        expect(shmsnap_writer_close(w), SHMSNAP_E_BUSY, "open transaction");
        expect(
            shmsnap_txn_alloc_unit(txn, units, &mut unit),
            SHMSNAP_OK,
            "",
        );
        let data = [7u8; 64];
        expect(
            shmsnap_txn_write_unit(txn, units, unit, 0, data.as_ptr().cast(), 64),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_txn_write_unit(txn, units, unit, 8, data.as_ptr().cast(), 64),
            SHMSNAP_E_INVALID,
            "does not fit",
        );
        expect(
            shmsnap_txn_write_unit(txn, units, unit + 1, 0, data.as_ptr().cast(), 8),
            SHMSNAP_E_INVALID,
            "not allocated by this transaction",
        );
        expect(
            shmsnap_txn_write_unit(txn, other, unit, 0, data.as_ptr().cast(), 8),
            SHMSNAP_E_INVALID,
            "from this unit table",
        );
        // Too long for the reservation: the commit fails and still ends the transaction.
        expect(
            shmsnap_txn_commit(txn, data.as_ptr().cast(), 17, &mut seq),
            SHMSNAP_E_PAYLOAD_SIZE,
            "17 bytes exceeds the 16",
        );
        // The writer is free again; the next transaction publishes seq 1 (none was consumed).
        expect(shmsnap_txn_begin(w, 8, &mut txn), SHMSNAP_OK, "");
        expect(
            shmsnap_txn_alloc_unit(txn, units, &mut unit),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_txn_alloc_unit(txn, units, &mut unit),
            SHMSNAP_E_NO_UNIT,
            "no tail unit is free",
        );
        let root = (unit as u64).to_le_bytes();
        expect(
            shmsnap_txn_commit(txn, root.as_ptr().cast(), 8, &mut seq),
            SHMSNAP_OK,
            "",
        );
        assert_eq!(seq, 1);
        let (mut state, mut as_of) = (0, 0);
        expect(shmsnap_units_retire(units, unit, 2), SHMSNAP_OK, "");
        expect(
            shmsnap_units_state(units, unit, &mut state, &mut as_of),
            SHMSNAP_OK,
            "",
        );
        assert_eq!((state, as_of), (SHMSNAP_UNIT_RETIRED, 2));
        expect(
            shmsnap_units_retire(units, unit, 2),
            SHMSNAP_E_INVALID,
            "not in use",
        );
        // An aborted transaction publishes nothing.
        expect(shmsnap_txn_begin(w, 8, &mut txn), SHMSNAP_OK, "");
        expect(shmsnap_txn_abort(txn), SHMSNAP_OK, "");
        expect(shmsnap_writer_next_seq(w, &mut seq), SHMSNAP_OK, "");
        assert_eq!(seq, 2);
        expect(shmsnap_units_close(units), SHMSNAP_OK, "");
        expect(shmsnap_units_close(other), SHMSNAP_OK, "");
        expect(shmsnap_writer_close(w), SHMSNAP_OK, "");
    }
}

#[test]
fn a_grant_holds_its_triple_client_and_an_aborted_grant_publishes_nothing() {
    let m = Mem::new(64 * 1024);
    let tl = TripleLayoutRequest {
        buffers: 3,
        buffer_size: 4096,
    };
    let (mut c, mut g) = (null_mut(), null_mut());
    let mut seq = 0u64;
    let mut buf = [0u8; 16];
    // SAFETY: live handles, valid buffers; each grant is used only until it ends.
    unsafe {
        expect(shmsnap_triple_open(m.region, &tl, &mut c), SHMSNAP_OK, "");
        expect(
            shmsnap_triple_read_newest(c, 0, buf.as_mut_ptr().cast(), 16, &mut seq),
            SHMSNAP_E_NOT_FOUND,
            "nothing was published",
        );
        expect(shmsnap_triple_take(c, &mut g), SHMSNAP_OK, "");
        expect(
            shmsnap_triple_take(c, &mut null_mut()),
            SHMSNAP_E_BUSY,
            "open grant",
        );
        expect(shmsnap_triple_close(c), SHMSNAP_E_BUSY, "open grant");
        expect(
            shmsnap_grant_write(g, 4090, b"too long".as_ptr().cast(), 8),
            SHMSNAP_E_INVALID,
            "do not fit",
        );
        expect(
            shmsnap_grant_write(g, 0, b"aborted!".as_ptr().cast(), 8),
            SHMSNAP_OK,
            "",
        );
        expect(shmsnap_grant_abort(g), SHMSNAP_OK, "");
        expect(
            shmsnap_triple_read_newest(c, 0, buf.as_mut_ptr().cast(), 16, &mut seq),
            SHMSNAP_E_NOT_FOUND,
            "",
        );
        expect(shmsnap_triple_take(c, &mut g), SHMSNAP_OK, "");
        let (mut s, mut len) = (0, 0);
        expect(shmsnap_grant_info(g, &mut s, &mut len), SHMSNAP_OK, "");
        assert_eq!((s, len), (1, 4096));
        expect(
            shmsnap_grant_write(g, 0, b"published".as_ptr().cast(), 9),
            SHMSNAP_OK,
            "",
        );
        expect(shmsnap_grant_publish(g, &mut seq), SHMSNAP_OK, "");
        assert_eq!(seq, 1);
        expect(
            shmsnap_triple_read_newest(c, 0, buf.as_mut_ptr().cast(), 9, &mut seq),
            SHMSNAP_OK,
            "",
        );
        assert_eq!((&buf[..9], seq), (&b"published"[..], 1));
        expect(
            shmsnap_triple_publish(c, b"again".as_ptr().cast(), 5, &mut seq),
            SHMSNAP_OK,
            "",
        );
        assert_eq!(seq, 2);
        let big = vec![0u8; 4097];
        expect(
            shmsnap_triple_publish(c, big.as_ptr().cast(), 4097, &mut seq),
            SHMSNAP_E_INVALID,
            "do not fit",
        );
        expect(shmsnap_triple_close(c), SHMSNAP_OK, "");
    }
}

#[test]
fn a_snapshot_keeps_what_survived_the_copy_and_a_starved_one_says_so() {
    let m = Mem::new(64 * 1024);
    let w = open_writer(&m);
    let mut image = vec![0u8; 64 * 1024];
    let (mut snap, mut info, mut kept) = (null_mut(), SnapshotInfo::default(), Retained::default());
    // SAFETY: live handles; `image` holds the region's bytes.
    unsafe {
        let commit = |i: u64| {
            let v = i.to_le_bytes();
            expect(
                shmsnap_writer_commit(w, v.as_ptr().cast(), 8, null_mut()),
                SHMSNAP_OK,
                "",
            );
        };
        (1..=3).for_each(commit);
        expect(
            shmsnap_snapshot_begin(m.region, &mut snap, &mut info),
            SHMSNAP_OK,
            "",
        );
        assert_eq!((info.pre, info.region_len), (3, 64 * 1024));
        commit(4); // evicts nothing yet: E = 4
        let len = info.region_len as usize;
        expect(
            shmsnap_region_read(m.region, 0, image.as_mut_ptr().cast(), len),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_snapshot_finish(snap, image.as_mut_ptr().cast(), 100, &mut kept),
            SHMSNAP_E_BUFFER_TOO_SMALL,
            "shorter than its header",
        );
        // The failed finish freed the snapshot; a new one.
        expect(
            shmsnap_snapshot_begin(m.region, &mut snap, &mut info),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_region_read(m.region, 0, image.as_mut_ptr().cast(), len),
            SHMSNAP_OK,
            "",
        );
        commit(5); // evicts seq 1, after the copy: not kept
        expect(
            shmsnap_snapshot_finish(snap, image.as_mut_ptr().cast(), len, &mut kept),
            SHMSNAP_OK,
            "",
        );
        assert_eq!((kept.kept, kept.pre, kept.newest_seq), (3, 4, 4));
        assert!(kept.next_seq >= 6, "{kept:?}");
        // Every entry seen before the copy is overwritten during it: starved.
        expect(
            shmsnap_snapshot_begin(m.region, &mut snap, &mut info),
            SHMSNAP_OK,
            "",
        );
        (6..=9).for_each(commit);
        expect(
            shmsnap_region_read(m.region, 0, image.as_mut_ptr().cast(), len),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_snapshot_finish(snap, image.as_mut_ptr().cast(), len, &mut kept),
            SHMSNAP_E_STARVED,
            "keep the previous snapshot",
        );
        assert_eq!((kept.kept, kept.pre), (0, 4));
        // A snapshot may be abandoned; the writer's region refuses to close under it.
        expect(
            shmsnap_snapshot_begin(m.region, &mut snap, &mut info),
            SHMSNAP_OK,
            "",
        );
        expect(shmsnap_writer_close(w), SHMSNAP_OK, "");
        expect(shmsnap_region_close(m.region), SHMSNAP_E_BUSY, "still open");
        expect(shmsnap_snapshot_abort(snap), SHMSNAP_OK, "");
    }
}

#[test]
fn a_triple_host_freezes_one_buffer_at_a_time_and_its_image_restores() {
    let m = Mem::new(64 * 1024);
    let tl = TripleLayoutRequest {
        buffers: 3,
        buffer_size: 4096,
    };
    let (mut c, mut h, mut h2, mut f) = (null_mut(), null_mut(), null_mut(), null_mut());
    let mut info = FrozenInfo::default();
    // SAFETY: live handles; buffers of the stated lengths.
    unsafe {
        expect(
            shmsnap_triple_host_open(m.region, &mut h),
            SHMSNAP_E_UNCONFIGURED,
            "not configured",
        );
        expect(shmsnap_triple_open(m.region, &tl, &mut c), SHMSNAP_OK, "");
        expect(shmsnap_triple_host_open(m.region, &mut h), SHMSNAP_OK, "");
        expect(
            shmsnap_triple_host_open(m.region, &mut h2),
            SHMSNAP_E_CLAIMED,
            "one host per region",
        );
        expect(
            shmsnap_triple_host_freeze(h, 0, &mut f, &mut info),
            SHMSNAP_E_NOT_FOUND,
            "nothing newer than seq 0",
        );
        expect(
            shmsnap_triple_publish(c, b"state one".as_ptr().cast(), 9, null_mut()),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_triple_host_freeze(h, 0, &mut f, &mut info),
            SHMSNAP_OK,
            "",
        );
        assert_eq!((info.seq, info.len, info.meta_len), (1, 4096, 8192));
        expect(
            shmsnap_triple_host_freeze(h, 0, &mut null_mut(), null_mut()),
            SHMSNAP_E_BUSY,
            "already has a frozen buffer",
        );
        expect(
            shmsnap_triple_host_close(h),
            SHMSNAP_E_BUSY,
            "frozen buffer",
        );
        // The client publishes on while the buffer is frozen.
        expect(
            shmsnap_triple_publish(c, b"state two".as_ptr().cast(), 9, null_mut()),
            SHMSNAP_OK,
            "",
        );
        let mut image = vec![0u8; info.region_len as usize];
        let at = info.offset as usize;
        expect(
            shmsnap_frozen_copy(f, image[at..].as_mut_ptr().cast(), 4097),
            SHMSNAP_E_INVALID,
            "4097 bytes",
        );
        expect(
            shmsnap_frozen_copy(f, image[at..].as_mut_ptr().cast(), 4096),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_frozen_image_meta(f, image.as_mut_ptr().cast(), 100),
            SHMSNAP_E_BUFFER_TOO_SMALL,
            "",
        );
        expect(
            shmsnap_frozen_image_meta(f, image.as_mut_ptr().cast(), 8192),
            SHMSNAP_OK,
            "",
        );
        expect(shmsnap_frozen_release(f), SHMSNAP_OK, "");
        expect(
            shmsnap_triple_host_freeze(h, 1, &mut f, &mut info),
            SHMSNAP_OK,
            "",
        );
        assert_eq!(info.seq, 2);
        expect(shmsnap_frozen_release(f), SHMSNAP_OK, "");
        expect(shmsnap_triple_close(c), SHMSNAP_OK, "");
        expect(shmsnap_triple_host_close(h), SHMSNAP_OK, "");
        // The image of seq 1, restored into fresh memory, reads back as state one.
        let m2 = Mem::new(64 * 1024);
        expect(
            shmsnap_region_write(m2.region, 0, image.as_ptr().cast(), image.len()),
            SHMSNAP_OK,
            "",
        );
        expect(
            shmsnap_triple_open(m2.region, null(), &mut c),
            SHMSNAP_OK,
            "",
        );
        let (mut buf, mut seq) = ([0u8; 9], 0);
        expect(
            shmsnap_triple_read_newest(c, 0, buf.as_mut_ptr().cast(), 9, &mut seq),
            SHMSNAP_OK,
            "",
        );
        assert_eq!((&buf, seq), (b"state one", 1));
        expect(shmsnap_triple_close(c), SHMSNAP_OK, "");
    }
}

#[test]
fn waits_time_out_until_the_status_covers_the_seq() {
    let m = Mem::new(8192);
    let mut p = Persisted::default();
    // SAFETY: a live region and valid outputs.
    unsafe {
        expect(shmsnap_region_persisted(m.region, &mut p), SHMSNAP_OK, "");
        assert_eq!((p.seq, p.generation), (0, 0));
        expect(
            shmsnap_region_wait_persisted(m.region, 3, 20),
            SHMSNAP_E_TIMEOUT,
            "not durable within 20 ms",
        );
        expect(
            shmsnap_region_wait_persisted(m.region, 0, 0),
            SHMSNAP_OK,
            "",
        );
        expect(shmsnap_region_request_snapshot(m.region), SHMSNAP_OK, "");
    }
    assert_eq!(shmsnap_core::status::request_count(&m.words[..]), 1);

    // The host's own publisher (a read-write mapping of page 0, a futex wake) wakes a waiter
    // blocked in another thread.
    let memfd = shmsnap_linux::Memfd::create("wait", 8192).unwrap();
    memfd.seal_against_shrink().unwrap();
    let map =
        shmsnap_linux::Mapping::of_memfd(&memfd, shmsnap_linux::Protection::ReadWrite).unwrap();
    let mut region = null_mut();
    // SAFETY: the mapping outlives the region (closed below, before the mapping is dropped).
    let rc =
        unsafe { shmsnap_region_attach(map.words().as_ptr().cast_mut().cast(), 8192, &mut region) };
    expect(rc, SHMSNAP_OK, "");
    let mut publisher = shmsnap_linux::status::StatusPublisher::new(&memfd).unwrap();
    std::thread::scope(|s| {
        let r = region as usize;
        // SAFETY: the region outlives the scope; its durability calls are thread-safe.
        let waiter = s.spawn(move || unsafe {
            shmsnap_region_wait_persisted(r as *const RegionHandle, 3, 60_000)
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        let covers_2 = shmsnap_core::status::Status {
            seq: 2,
            generation: 8,
            replica_seq: 0,
        };
        publisher.publish(covers_2).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "seq 2 does not cover 3");
        let covers_3 = shmsnap_core::status::Status {
            seq: 3,
            generation: 9,
            replica_seq: 0,
        };
        publisher.publish(covers_3).unwrap();
        expect(waiter.join().unwrap(), SHMSNAP_OK, "");
    });
    // SAFETY: a live region and a valid output.
    unsafe {
        expect(shmsnap_region_persisted(region, &mut p), SHMSNAP_OK, "");
        assert_eq!((p.seq, p.generation), (3, 9));
        expect(shmsnap_region_close(region), SHMSNAP_OK, "");
    }
    let short = Mem::new(64);
    // SAFETY: a live region.
    unsafe {
        expect(
            shmsnap_region_wait_persisted(short.region, 1, 0),
            SHMSNAP_E_INVALID,
            "header page",
        );
        expect(
            shmsnap_region_persisted(short.region, &mut p),
            SHMSNAP_OK,
            "",
        );
    }
}

#[test]
fn replica_waits_end_only_when_the_replica_seq_covers_the_seq() {
    let memfd = shmsnap_linux::Memfd::create("wait-replica", 8192).unwrap();
    memfd.seal_against_shrink().unwrap();
    let map =
        shmsnap_linux::Mapping::of_memfd(&memfd, shmsnap_linux::Protection::ReadWrite).unwrap();
    let mut region = null_mut();
    // SAFETY: the mapping outlives the region (closed below, before the mapping is dropped).
    let rc =
        unsafe { shmsnap_region_attach(map.words().as_ptr().cast_mut().cast(), 8192, &mut region) };
    expect(rc, SHMSNAP_OK, "");
    let mut publisher = shmsnap_linux::status::StatusPublisher::new(&memfd).unwrap();
    // Durable locally up to seq 5, nothing in the replica (a host without --replica).
    let local = shmsnap_core::status::Status {
        seq: 5,
        generation: 2,
        replica_seq: 0,
    };
    publisher.publish(local).unwrap();
    // SAFETY: a live region.
    unsafe {
        expect(shmsnap_region_wait_persisted(region, 5, 0), SHMSNAP_OK, "");
        expect(
            shmsnap_region_wait_replicated(region, 3, 20),
            SHMSNAP_E_TIMEOUT,
            "commit 3 was not in the replica within 20 ms",
        );
        expect(shmsnap_region_wait_replicated(region, 0, 0), SHMSNAP_OK, "");
    }
    std::thread::scope(|s| {
        let r = region as usize;
        // SAFETY: the region outlives the scope; its durability calls are thread-safe.
        let waiter = s.spawn(move || unsafe {
            shmsnap_region_wait_replicated(r as *const RegionHandle, 3, 60_000)
        });
        // More local snapshots, the replica still behind: the waiter is woken, re-checks and
        // sleeps on.
        for seq in 6..=8 {
            publisher
                .publish(shmsnap_core::status::Status {
                    seq,
                    replica_seq: 2,
                    ..local
                })
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "persisted is not replicated");
        // The uploader put a point up to seq 3.
        publisher
            .publish(shmsnap_core::status::Status {
                seq: 8,
                replica_seq: 3,
                ..local
            })
            .unwrap();
        expect(waiter.join().unwrap(), SHMSNAP_OK, "");
    });
    let mut p = Persisted::default();
    // SAFETY: a live region and a valid output.
    unsafe {
        expect(shmsnap_region_persisted(region, &mut p), SHMSNAP_OK, "");
        assert_eq!((p.seq, p.replica_seq), (8, 3));
        expect(shmsnap_region_close(region), SHMSNAP_OK, "");
    }
    let short = Mem::new(64);
    // SAFETY: a live region.
    unsafe {
        expect(
            shmsnap_region_wait_replicated(short.region, 1, 0),
            SHMSNAP_E_INVALID,
            "header page",
        );
        expect(
            shmsnap_region_wait_replicated(null(), 1, 0),
            SHMSNAP_E_NULL,
            "",
        );
    }
}

#[test]
fn the_version_and_the_fixed_messages_are_static() {
    // SAFETY: static NUL-terminated strings.
    let v = unsafe { CStr::from_ptr(shmsnap::shmsnap_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(shmsnap_strerror(SHMSNAP_E_CLAIMED)) };
    assert!(s.to_str().unwrap().contains("one writer per region"));
    let _: *const c_void = null();
}
