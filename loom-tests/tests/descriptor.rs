//! Model 2: descriptor and payload reads (core's `Region::read_descriptor` and
//! `Region::read_payload`) against a commit that evicts the entry in the slot being read and
//! reuses both the slot and the entry's ring bytes.
//!
//! Checked in every interleaving: a descriptor read returns `None` or a (seq, offset, length)
//! that was committed together; `read_payload` returns an error or exactly the bytes committed
//! under the seq. Twins: no orderings/fences, evictions after the data stores.

use std::sync::Arc;

use shmsnap_core::{Descriptor, LayoutRequest, Region, WordMemory, Writer};
use shmsnap_loom_tests::{
    expect_violation, explore, plan, LateEviction, LoomWords, Plan, Weakened, WordMap,
    NEVER_COMMITTED, PAYLOAD_TORN,
};
use shmsnap_testkit::payload_for;

const REQUEST: LayoutRequest = LayoutRequest {
    entries: 2,
    data_size: 16,
};
const WORDS: usize = 3 * 512;

/// Setup: commits 1 (slot 0, ring 0..8) and 2 (slot 1, ring 8..16). Concurrent: `commits`
/// more 8-byte commits; the first evicts commit 1 and reuses slot 0 and ring bytes 0..8.
fn plan_of(commits: usize) -> Plan {
    plan(
        WORDS,
        |m| {
            let mut w = Writer::init(m, REQUEST, shmsnap_testkit::CLIENT).unwrap();
            for seq in 1..=2 {
                w.commit(&payload_for(seq, 8)).unwrap();
            }
        },
        |m| writer(m, commits),
    )
}

fn writer<M: WordMemory + ?Sized>(m: &M, commits: usize) {
    let mut w = Writer::attach(m, shmsnap_testkit::CLIENT).expect("attach");
    for _ in 0..commits {
        let seq = w.next_seq();
        w.commit(&payload_for(seq, 8)).expect("commit");
    }
}

/// What the reader reads.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// `read_descriptor(0)`, then `read_payload` of what it returned.
    DescriptorThenPayload,
    /// Every valid entry (`Region::entries`), then `read_payload` of each.
    Entries,
    /// `read_descriptor(0)` only (so a twin fails in the descriptor read, not later).
    DescriptorOnly,
    /// `read_payload` of commit 1's descriptor, known from before (a stale handle).
    StalePayload,
}

fn read_checked<M: WordMemory>(mem: &M, plan: &Plan, read: Read) -> bool {
    let region = Region::open(mem).expect("header");
    if let Read::Entries = read {
        let mut ok = false;
        for d in region.entries() {
            ok |= check_one(&region, plan, d, read);
        }
        return ok;
    }
    let d = match read {
        Read::DescriptorThenPayload | Read::DescriptorOnly => match region.read_descriptor(0) {
            Some(d) => d,
            None => return false,
        },
        Read::StalePayload => plan.committed(1).unwrap(),
        Read::Entries => unreachable!(),
    };
    check_one(&region, plan, d, read)
}

fn check_one<M: WordMemory>(
    region: &Region<'_, M>,
    plan: &Plan,
    d: Descriptor,
    read: Read,
) -> bool {
    assert!(
        plan.committed(d.seq) == Some(d),
        "{NEVER_COMMITTED}: read {d:?}; committed: {:?}",
        plan.committed
    );
    if let Read::DescriptorOnly = read {
        return true;
    }
    let mut buf = [0u8; 16];
    match region.read_payload(&d, &mut buf) {
        Ok(n) => {
            assert!(
                buf[..n] == payload_for(d.seq, d.length as usize)[..],
                "{PAYLOAD_TORN}: {d:?} read as {:?}",
                &buf[..n]
            );
            true
        }
        Err(_) => false,
    }
}

fn model<M>(
    commits: usize,
    read: Read,
    wrap: fn(LoomWords, &Plan) -> M,
    ok_reads: Arc<std::sync::atomic::AtomicU64>,
) -> impl Fn() + Send + Sync
where
    M: WordMemory + Send + Sync + 'static,
{
    let plan = Arc::new(plan_of(commits));
    let map = WordMap::new(&plan, &[]);
    move || {
        let mem = Arc::new(wrap(LoomWords::new(&map), &plan));
        let reader = {
            let (mem, plan) = (mem.clone(), plan.clone());
            loom::thread::spawn(move || read_checked(&*mem, &plan, read))
        };
        writer(&*mem, commits);
        if reader.join().unwrap() {
            ok_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn plain(m: LoomWords, _: &Plan) -> LoomWords {
    m
}
fn weakened(m: LoomWords, _: &Plan) -> Weakened<LoomWords> {
    Weakened(m)
}
fn late_eviction(m: LoomWords, p: &Plan) -> LateEviction<LoomWords> {
    LateEviction::new(m, p.layout)
}

const BOUND: Option<usize> = Some(3);

fn sound(name: &str, commits: usize, read: Read, bound: Option<usize>) {
    let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stats = explore(name, bound, model(commits, read, plain, ok.clone()));
    // Not vacuous: some interleavings read successfully, others are rejected.
    let ok = ok.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ok > 0 && (ok as usize) < stats.iterations,
        "{ok} of {} reads succeeded",
        stats.iterations
    );
}

#[test]
fn descriptor_reads_never_mix_fields_of_two_commits() {
    sound(
        "descriptor/read-then-payload",
        1,
        Read::DescriptorThenPayload,
        BOUND,
    );
}

#[test]
fn entry_scans_never_mix_fields_with_two_concurrent_commits() {
    // The reader scans both slots while commits 3 and 4 reuse both. (loom's partial-order
    // reduction only interleaves conflicting accesses, so a reader of slot 0 alone would
    // explore nothing more with a second commit, which touches only slot 1.)
    sound("descriptor/scan-two-commits", 2, Read::Entries, BOUND);
}

#[test]
fn stale_payload_reads_fail_instead_of_returning_new_bytes() {
    sound("descriptor/stale-payload", 1, Read::StalePayload, BOUND);
}

fn ignore() -> Arc<std::sync::atomic::AtomicU64> {
    Arc::new(std::sync::atomic::AtomicU64::new(0))
}

#[test]
fn twin_without_fences_mixes_descriptor_fields() {
    expect_violation(
        "descriptor/relaxed",
        BOUND,
        NEVER_COMMITTED,
        model(1, Read::DescriptorOnly, weakened, ignore()),
    );
}

#[test]
fn twin_without_fences_returns_foreign_payload() {
    expect_violation(
        "descriptor/relaxed-payload",
        BOUND,
        PAYLOAD_TORN,
        model(1, Read::StalePayload, weakened, ignore()),
    );
}

#[test]
fn twin_with_late_eviction_mixes_descriptor_fields() {
    expect_violation(
        "descriptor/late-eviction",
        BOUND,
        NEVER_COMMITTED,
        model(1, Read::DescriptorOnly, late_eviction, ignore()),
    );
}

#[test]
fn twin_with_late_eviction_returns_foreign_payload() {
    expect_violation(
        "descriptor/late-eviction-payload",
        BOUND,
        PAYLOAD_TORN,
        model(1, Read::StalePayload, late_eviction, ignore()),
    );
}
