//! Fuzz target `ops`: a client/host session decoded from bytes, checked against the
//! [`QueueModel`] after every step (DESIGN §5).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use shmsnap_core::{
    CommitError, Layout, LayoutRequest, Region, UnitError, UnitState, UnitTable, WordMemory, Writer,
};

use crate::host::{host_snapshot, Host};
use crate::image::placement;
use crate::input::Input;
use crate::model::{ModelEntry, QueueModel};
use crate::payload::{check_image_payloads, payload_for};
use crate::words::{from_bytes, to_bytes, zeroed_words};
use crate::CLIENT;

// ------------------------------------------------------------------------------------------
// ops
// ------------------------------------------------------------------------------------------

/// The client's view of its frozen tail units, kept beside the [`QueueModel`].
#[derive(Debug, Clone, Default)]
struct Units {
    /// Units the client's current state refers to (in use in the table), with their bytes.
    current: BTreeMap<usize, Vec<u8>>,
    /// For each committed seq: the units its state refers to and their bytes at commit.
    refs: BTreeMap<u64, Vec<(usize, Vec<u8>)>>,
}

/// What a host snapshot saved: the retained image and the client's state at that time.
impl Units {
    /// Records that entry `seq` was committed referring to the units currently in use.
    fn committed(&mut self, seq: u64) {
        let refs = self.current.iter().map(|(u, b)| (*u, b.clone())).collect();
        self.refs.insert(seq, refs);
    }
}

#[derive(Debug)]
struct Snapshot {
    image: Vec<u8>,
    model: QueueModel,
    units: Units,
}

/// A client/host session decoded from bytes, checked against the [`QueueModel`] after every
/// step.
///
/// Operations: commit of `n` bytes; `evict_before`; re-attach; a transaction that allocates,
/// writes and retires tail units and then commits, aborts, or is refused (payload longer than
/// reserved, or empty); a host snapshot ([`PreCopy::read`](shmsnap_core::PreCopy::read), copy, [`PreCopy::finish`](shmsnap_core::PreCopy::finish),
/// no concurrency: everything is kept) followed by a restore of the copy into fresh memory,
/// which must hold exactly the model's live entries; and a restore of the last snapshot into
/// the live region (the client crashed and the host restored).
///
/// After every step: [`Writer::check_invariants`], the model's live entries with their exact
/// bytes, and every unit a live entry refers to still holds the bytes it had when that entry
/// was committed (frozen units are never written).
///
/// # Panics
///
/// Only on a violated invariant.
pub fn ops(data: &[u8]) {
    let mut input = Input::new(data);
    let entries = 1u64 << (input.u8() % 5);
    let data_size = 1u64 << (3 + input.u8() % 8);
    let unit_size = 8 * (1 + usize::from(input.u8() % 8));
    let units = usize::from(input.u8() % 9);
    // The table may be larger than the tail: only units that fit are handed out.
    let table_len = units + usize::from(input.u8() % 3);
    let request = LayoutRequest { entries, data_size };
    let tail_offset = match Layout::new(u64::MAX, request) {
        Ok(l) => l.tail_offset as usize,
        Err(e) => panic!("fuzz harness: request {request:?} should be valid: {e}"),
    };
    let mem = zeroed_words(tail_offset + units * unit_size);
    let mut writer = match Writer::init(&mem[..], request, CLIENT) {
        Ok(w) => w,
        Err(e) => panic!("Writer::init of a zeroed region failed: {e}"),
    };
    assert_eq!(
        writer.unit_count(unit_size),
        units,
        "unit count of the tail"
    );
    let mut model = QueueModel::new(entries, data_size);
    let mut client = Units::default();
    let mut states = vec![0u64; table_len];
    let mut table = match UnitTable::new(&mut states, unit_size) {
        Ok(t) => t,
        Err(e) => panic!("fuzz harness: unit size {unit_size}: {e}"),
    };
    let mut last_snapshot: Option<Snapshot> = None;
    let mut step = 0usize;
    while !input.is_empty() {
        step += 1;
        let op = input.u8();
        match op % 8 {
            0..=2 => {
                let len = (u64::from(input.u16()) % data_size + 1) as usize;
                let seq = writer.next_seq();
                let payload = payload_for(seq, len);
                match writer.commit(&payload) {
                    Ok(got) => assert_eq!(got, model.commit(&payload), "commit seq"),
                    Err(e) => panic!("step {step}: commit of {len} bytes failed: {e}"),
                }
                client.committed(seq);
            }
            3 => {
                let back = u64::from(input.u8() % (entries as u8 + 2));
                let t = writer.next_seq().saturating_sub(back);
                writer.evict_before(t);
                model.evict_before(t);
            }
            4 => {
                // The client restarts: the old writer is dropped (releasing the claim).
                drop(writer);
                writer = match Writer::attach(&mem[..], CLIENT) {
                    Ok(w) => w,
                    Err(e) => panic!("step {step}: re-attach failed: {e}"),
                };
                assert_eq!(
                    writer.next_seq(),
                    model.next_seq(),
                    "next_seq after re-attach"
                );
            }
            5 | 6 => transaction(
                &mut input,
                &mem[..],
                &mut writer,
                &mut table,
                &mut model,
                &mut client,
                step,
            ),
            _ if op & 0x80 == 0 || last_snapshot.is_none() => {
                last_snapshot = Some(snapshot(&mem[..], &writer, &model, &client, unit_size));
            }
            _ => {
                // The client crashed and the host restored the last snapshot into the region.
                let Some(snap) = &last_snapshot else {
                    unreachable!("checked by the guard above")
                };
                // A crash: the writer never releases its claim; the restored image carries
                // none (retain zeroes the claim word), so the next attach takes it.
                std::mem::forget(writer);
                for (w, chunk) in mem.iter().zip(snap.image.chunks(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    w.store(u64::from_le_bytes(b), Ordering::Relaxed);
                }
                writer = match Writer::attach(&mem[..], CLIENT) {
                    Ok(w) => w,
                    Err(e) => panic!("step {step}: attach after restore failed: {e}"),
                };
                model = snap.model.clone();
                client = rebuild_units(&snap.units, &model);
                // The client rebuilds its unit table from the entries it finds (§5.4): units
                // of the newest entry are in use; units only older live entries refer to are
                // retired as of the newest seq; everything else is free.
                table = match UnitTable::new(&mut states, unit_size) {
                    Ok(t) => t,
                    Err(e) => panic!("fuzz harness: unit size {unit_size}: {e}"),
                };
                let newest = model.live().back().map(|e| e.seq);
                for entry in model.live() {
                    for (u, _) in client.refs.get(&entry.seq).into_iter().flatten() {
                        if table.state(*u) == Some(UnitState::InUse) {
                            continue;
                        }
                        if let Err(e) = table.mark_in_use(*u) {
                            panic!("rebuilding the unit table: unit {u}: {e}");
                        }
                        if Some(entry.seq) != newest && !client.current.contains_key(u) {
                            let as_of = newest.unwrap_or(1);
                            if let Err(e) = table.retire(*u, as_of) {
                                panic!("rebuilding the unit table: retire {u}: {e}");
                            }
                        }
                    }
                }
                assert_eq!(
                    writer.next_seq(),
                    model.next_seq(),
                    "next_seq after restore"
                );
            }
        }
        check_step(&writer, &model, &mut client, unit_size, step);
    }
}

/// The client state after a restore: the newest live entry's units are current.
fn rebuild_units(saved: &Units, model: &QueueModel) -> Units {
    let mut refs = saved.refs.clone();
    let live: BTreeSet<u64> = model.live().iter().map(|e| e.seq).collect();
    refs.retain(|seq, _| live.contains(seq));
    let current = model
        .live()
        .back()
        .and_then(|e| refs.get(&e.seq))
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    Units { current, refs }
}

fn check_step<M: WordMemory + ?Sized>(
    writer: &Writer<'_, M>,
    model: &QueueModel,
    client: &mut Units,
    unit_size: usize,
    step: usize,
) {
    if let Err(e) = writer.check_invariants() {
        panic!("step {step}: check_invariants: {e}");
    }
    if let Err(e) = model.check(writer.region()) {
        panic!("step {step}: region differs from the model: {e}");
    }
    let oldest = model.live().front().map_or(u64::MAX, |e| e.seq);
    client.refs.retain(|&seq, _| seq >= oldest);
    check_frozen(
        writer.region(),
        model.live().iter(),
        client,
        unit_size,
        step,
    );
}

/// Every unit a live entry refers to still holds the bytes it had when the entry committed.
fn check_frozen<'a, M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    live: impl Iterator<Item = &'a ModelEntry>,
    client: &Units,
    unit_size: usize,
    step: usize,
) {
    let mut buf = vec![0u8; unit_size];
    for entry in live {
        for (u, bytes) in client.refs.get(&entry.seq).into_iter().flatten() {
            if let Err(e) = region.read_tail((u * unit_size) as u64, &mut buf) {
                panic!("step {step}: unit {u} of entry {}: {e}", entry.seq);
            }
            assert_eq!(
                &buf, bytes,
                "step {step}: unit {u}, frozen by live entry {}, was written",
                entry.seq
            );
        }
    }
}

/// The entries `begin(n)` evicts from the model's live queue (DESIGN §5.1): the front while
/// its seq is `E` or more below the new one or its bytes overlap the new payload.
fn evictions_for(model: &QueueModel, entries: u64, s: u64, n: u64) -> usize {
    let head = model
        .live()
        .back()
        .map_or(0, |e| e.offset + e.payload.len() as u64);
    let Some((_, end)) = placement(head, n, s) else {
        return model.live().len();
    };
    let seq = model.next_seq();
    model
        .live()
        .iter()
        .take_while(|f| seq - f.seq >= entries || f.offset + s < end)
        .count()
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy)]
enum TxEnd {
    Commit,
    Abort,
    TooLong,
    Empty,
}

#[allow(clippy::too_many_arguments)]
fn transaction<M: WordMemory + ?Sized>(
    input: &mut Input<'_>,
    mem: &M,
    writer: &mut Writer<'_, M>,
    table: &mut UnitTable<'_>,
    model: &mut QueueModel,
    client: &mut Units,
    step: usize,
) {
    let layout = *writer.layout();
    let s = layout.data_size;
    let unit_size = table.unit_size();
    let unit_limit = writer.unit_count(unit_size).min(table.len());
    let len = (u64::from(input.u16()) % s + 1) as usize;
    let mut end = match input.u8() % 8 {
        0 => TxEnd::Abort,
        1 => TxEnd::TooLong,
        2 => TxEnd::Empty,
        _ => TxEnd::Commit,
    };
    // An aborted begin still evicts what the entry would have displaced; the model can
    // express that only if the newest entry survives (evict_before keeps it).
    let evicted = evictions_for(model, layout.entries, s, len as u64);
    if !matches!(end, TxEnd::Commit) && evicted >= model.live().len() && evicted > 0 {
        end = TxEnd::Commit;
    }
    let seq = writer.next_seq();
    let reader = match Region::open(mem) {
        Ok(r) => r,
        Err(e) => panic!("step {step}: the live region does not open: {e}"),
    };
    let mut tx = match writer.begin(len) {
        Ok(tx) => tx,
        Err(e) => panic!("step {step}: begin({len}) failed: {e}"),
    };
    assert_eq!(tx.seq(), seq, "transaction seq");
    let mut allocated: Vec<(usize, UnitState)> = Vec::new();
    let mut exhausted: Option<Vec<Option<UnitState>>> = None;
    let mut grants = Vec::new();
    for _ in 0..input.u8() % 4 {
        let before: Vec<Option<UnitState>> = (0..unit_limit).map(|u| table.state(u)).collect();
        match tx.alloc_unit(table) {
            Ok(g) => {
                let u = g.unit();
                assert!(u < unit_limit, "step {step}: unit {u} is outside the tail");
                let was = before[u].unwrap_or(UnitState::InUse);
                assert!(
                    !client.current.contains_key(&u),
                    "step {step}: unit {u}, in use by the client, was allocated again"
                );
                let mut bytes = vec![0u8; unit_size];
                if let Err(e) = reader.read_tail((u * unit_size) as u64, &mut bytes) {
                    panic!("step {step}: unit {u} is not readable: {e}");
                }
                client.current.insert(u, bytes);
                allocated.push((u, was));
                grants.push(g);
            }
            Err(UnitError::Exhausted) => exhausted = Some(before),
            Err(e) => panic!("step {step}: alloc_unit failed: {e}"),
        }
    }
    for _ in 0..input.u8() % 4 {
        let Some(g) = grants.get(usize::from(input.u8()) % grants.len().max(1)) else {
            break;
        };
        let offset = usize::from(input.u8()) % (unit_size + 8);
        let n = usize::from(input.u8()) % (unit_size + 1);
        let bytes: Vec<u8> = (0..n)
            .map(|i| (seq as u8) ^ (g.unit() as u8).wrapping_mul(31) ^ (i as u8) ^ 0xa5)
            .collect();
        let fits = offset + n <= unit_size;
        match tx.write_unit(table, g, offset, &bytes) {
            Ok(()) => {
                assert!(fits, "step {step}: write of {n} bytes at {offset} accepted");
                if let Some(cur) = client.current.get_mut(&g.unit()) {
                    cur[offset..offset + n].copy_from_slice(&bytes);
                }
            }
            Err(UnitError::WriteOutOfBounds { .. }) => {
                assert!(!fits, "step {step}: write of {n} bytes at {offset} refused")
            }
            Err(e) => panic!("step {step}: write_unit failed: {e}"),
        }
    }
    for _ in 0..input.u8() % 3 {
        let u = usize::from(input.u8()) % (table.len() + 1);
        let as_of = if input.u8() == 0xff { 0 } else { seq };
        let result = table.retire(u, as_of);
        if as_of == 0 {
            assert_eq!(result, Err(UnitError::BadRetirePoint), "retire as of 0");
        } else if u >= table.len() {
            assert_eq!(result, Err(UnitError::OutOfRange { unit: u }), "retire {u}");
        } else if client.current.remove(&u).is_some() {
            assert_eq!(result, Ok(()), "step {step}: retire of in-use unit {u}");
        } else {
            assert_eq!(result, Err(UnitError::NotInUse { unit: u }), "retire {u}");
        }
    }
    drop(grants);
    match end {
        TxEnd::Commit => {
            let payload = payload_for(seq, len);
            match tx.commit(&payload) {
                Ok(got) => assert_eq!(got, model.commit(&payload), "transaction seq"),
                Err(e) => panic!("step {step}: commit of a {len}-byte transaction failed: {e}"),
            }
            client.committed(seq);
        }
        TxEnd::Abort | TxEnd::TooLong | TxEnd::Empty => {
            let result = match end {
                TxEnd::Abort => {
                    drop(tx);
                    None
                }
                TxEnd::TooLong => Some((
                    tx.commit(&payload_for(seq, len + 1)),
                    CommitError::ExceedsReservation {
                        len: len + 1,
                        reserved: len,
                    },
                )),
                _ => Some((tx.commit(&[]), CommitError::PayloadSize { len: 0, max: s })),
            };
            if let Some((got, want)) = result {
                assert_eq!(got, Err(want), "step {step}: refused transaction");
            }
            assert_eq!(
                writer.next_seq(),
                seq,
                "an unpublished transaction consumed its seq"
            );
            if evicted > 0 {
                let first_kept = model.live()[evicted].seq;
                model.evict_before(first_kept);
            }
        }
    }
    // The allocator's choices, checked against the oldest live seq of the transaction.
    let oldest = writer.oldest_live();
    let reclaimable = |st: Option<UnitState>| match st {
        Some(UnitState::Free) => true,
        Some(UnitState::Retired { as_of }) => as_of <= oldest,
        _ => false,
    };
    for &(u, was) in &allocated {
        assert!(
            reclaimable(Some(was)),
            "step {step}: unit {u} was allocated in state {was:?} with oldest live seq {oldest}"
        );
        for entry in model.live().iter().filter(|e| e.seq != seq) {
            let refers = client
                .refs
                .get(&entry.seq)
                .is_some_and(|r| r.iter().any(|(x, _)| *x == u));
            assert!(
                !refers,
                "step {step}: unit {u} was allocated while live entry {} refers to it",
                entry.seq
            );
        }
    }
    if let Some(before) = exhausted {
        if let Some(u) = before.iter().position(|&st| reclaimable(st)) {
            panic!(
                "step {step}: alloc_unit reported exhaustion, but unit {u} was {:?} with oldest live seq {oldest}",
                before[u]
            );
        }
    }
}

/// A host snapshot without concurrency: every live entry must be kept, and a restore of the
/// copy must hold exactly the model's live entries.
fn snapshot<M: WordMemory + ?Sized>(
    mem: &M,
    writer: &Writer<'_, M>,
    model: &QueueModel,
    client: &Units,
    unit_size: usize,
) -> Snapshot {
    let region = writer.region();
    let layout = *region.layout();
    let (image, r) = match host_snapshot(region, Host::Sound, || to_bytes(mem)) {
        Ok(snap) => (snap.image, snap.retained),
        Err(err) => panic!("retain of a quiescent copy failed: {err}"),
    };
    let live = model.live().len() as u64;
    assert_eq!(
        (r.pre, r.post, r.kept),
        (live, live, live),
        "a snapshot without concurrency must keep every live entry"
    );
    assert!(!r.is_starved(), "a quiescent snapshot is never starved");
    assert_eq!(
        r.hints.next_seq,
        model.next_seq(),
        "next_seq hint of the snapshot"
    );
    match check_image_payloads(&image, &layout) {
        Ok(n) => assert_eq!(n, live, "entries in the snapshot image"),
        Err(err) => panic!("snapshot image: {err}"),
    }
    let restored = from_bytes(&image);
    let w = match Writer::attach(&restored[..], CLIENT) {
        Ok(w) => w,
        Err(err) => panic!("attach to a snapshot image failed: {err}"),
    };
    if let Err(err) = model.check(w.region()) {
        panic!("restored snapshot differs from the model: {err}");
    }
    assert_eq!(w.next_seq(), model.next_seq(), "next_seq after restore");
    if let Err(err) = w.check_invariants() {
        panic!("check_invariants after restore: {err}");
    }
    check_frozen(w.region(), model.live().iter(), client, unit_size, 0);
    Snapshot {
        image,
        model: model.clone(),
        units: client.clone(),
    }
}
