//! Model 1: writer commits (with eviction, slot reuse and data-ring reuse) against one host
//! snapshot — core's `PreCopy::read`, a word-by-word copy, core's `PreCopy::finish`.
//!
//! Checked in every interleaving: every entry kept in the image is a descriptor that was
//! committed exactly so and carries exactly its committed payload; an entry whose eviction
//! happened before the copy began never survives. Twins: a host without the post check, a
//! memory without release/acquire orderings and fences, evictions landing after the data
//! stores.

use std::sync::atomic::{AtomicU64 as StdU64, Ordering};
use std::sync::Arc;

use loom::sync::atomic::AtomicU64;
use shmsnap_core::{image_entries, LayoutRequest, WordMemory, Writer};
use shmsnap_loom_tests::{
    check_kept, expect_violation, explore, plan, snapshot, Host, Image, LateEviction, LoomWords,
    Plan, Weakened, WordMap, EVICTED_SURVIVES, TORN,
};
use shmsnap_testkit::payload_for;

/// A scenario: layout, warm-up commits (before the host starts), concurrent commits.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    request: LayoutRequest,
    warmup: &'static [usize],
    commits: &'static [usize],
}

/// E = 2, S = 16, 8-byte payloads: commit 3 evicts commit 1 and reuses its slot 0 and its
/// ring bytes 0..8.
const SLOT_REUSE: Scenario = Scenario {
    request: LayoutRequest {
        entries: 2,
        data_size: 16,
    },
    warmup: &[8, 8],
    commits: &[8],
};

/// As `SLOT_REUSE`, with commits 2 and 3 both concurrent with the host (commit 2 publishes
/// into an empty slot, commit 3 evicts commit 1).
const TWO_COMMITS: Scenario = Scenario {
    request: LayoutRequest {
        entries: 2,
        data_size: 16,
    },
    warmup: &[8],
    commits: &[8, 8],
};

/// E = 4, S = 32, payloads of 12, 20, 9 bytes: each payload would cross the end of the ring,
/// skips to its start and overwrites its predecessor (eviction by overlap, not by slot count;
/// partial words merged with a load). Commit 3 is concurrent with the host.
const WRAP: Scenario = Scenario {
    request: LayoutRequest {
        entries: 4,
        data_size: 32,
    },
    warmup: &[12, 20],
    commits: &[9],
};

/// Region size: header page, descriptor page, data page, no tail.
const WORDS: usize = 3 * 512;

fn commit_all<M: WordMemory + ?Sized>(w: &mut Writer<'_, M>, lens: &[usize], after: impl Fn(u64)) {
    for &len in lens {
        let seq = w.next_seq();
        w.commit(&payload_for(seq, len)).expect("commit");
        after(w.oldest_live());
    }
}

fn plan_of(s: Scenario) -> Plan {
    plan(
        WORDS,
        |m| {
            let mut w = Writer::init(m, s.request, shmsnap_testkit::CLIENT).unwrap();
            commit_all(&mut w, s.warmup, |_| {});
        },
        |m| {
            let mut w = Writer::attach(m, shmsnap_testkit::CLIENT).unwrap();
            commit_all(&mut w, s.commits, |_| {});
        },
    )
}

/// Coverage: the sound model must see both kept and dropped entries, or it proves little.
#[derive(Debug, Default)]
struct Coverage {
    kept: StdU64,
    dropped: StdU64,
}

fn run<M>(s: Scenario, host: Host, wrap: fn(LoomWords, &Plan) -> M) -> impl Fn() + Send + Sync
where
    M: WordMemory + Image + Send + Sync + 'static,
{
    run_cov(s, host, wrap, Arc::new(Coverage::default()))
}

fn run_cov<M>(
    s: Scenario,
    host: Host,
    wrap: fn(LoomWords, &Plan) -> M,
    cov: Arc<Coverage>,
) -> impl Fn() + Send + Sync
where
    M: WordMemory + Image + Send + Sync + 'static,
{
    let plan = Arc::new(plan_of(s));
    let map = WordMap::new(&plan, &[]);
    move || {
        let mem = Arc::new(wrap(LoomWords::new(&map), &plan));
        // Instrumentation, not part of the protocol: the writer publishes its oldest live seq
        // (Release) after each commit; the host reads it (Acquire) just before copying. Every
        // seq below the value read was evicted before the copy began.
        let progress = Arc::new(AtomicU64::new(0));
        let mut writer = Writer::attach(&*mem, shmsnap_testkit::CLIENT).expect("attach");
        let host_thread = {
            let (mem, progress) = (mem.clone(), progress.clone());
            loom::thread::spawn(move || snapshot(&*mem, host, || progress.load(Ordering::Acquire)))
        };
        commit_all(&mut writer, s.commits, |oldest| {
            progress.store(oldest, Ordering::Release)
        });
        let snap = host_thread.join().unwrap();
        check_kept(&plan, &snap.image);
        for d in image_entries(&snap.image, &plan.layout) {
            assert!(
                d.seq >= snap.probe,
                "{EVICTED_SURVIVES}: entry {} kept, but every seq below {} was evicted before the copy",
                d.seq,
                snap.probe
            );
        }
        cov.kept.fetch_add(snap.retained.kept, Ordering::Relaxed);
        cov.dropped
            .fetch_add(snap.retained.dropped(), Ordering::Relaxed);
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

/// Preemption bound of the one-commit models (see README: 2 preemptions already reach every
/// tear; 3 leaves a margin).
const BOUND: Option<usize> = Some(3);

fn sound(name: &str, s: Scenario, bound: Option<usize>) {
    let cov = Arc::new(Coverage::default());
    explore(name, bound, run_cov(s, Host::Sound, plain, cov.clone()));
    let (kept, dropped) = (
        cov.kept.load(Ordering::Relaxed),
        cov.dropped.load(Ordering::Relaxed),
    );
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
}

#[test]
fn kept_entries_match_committed_bytes_under_slot_reuse() {
    sound("snapshot/slot-reuse", SLOT_REUSE, BOUND);
}

#[test]
fn kept_entries_match_committed_bytes_with_two_concurrent_commits() {
    // Two concurrent commits: bound 1 keeps this under ten seconds (bound 2: 2.7 million
    // interleavings, over two minutes); the one-commit models cover deeper preemption.
    sound("snapshot/two-commits", TWO_COMMITS, Some(1));
}

#[test]
fn kept_entries_match_committed_bytes_under_ring_wrap() {
    sound("snapshot/wrap", WRAP, BOUND);
}

#[test]
fn twin_without_post_check_keeps_torn_entries() {
    expect_violation(
        "snapshot/pre-as-post",
        BOUND,
        TORN,
        run(SLOT_REUSE, Host::PreAsPost, plain),
    );
}

#[test]
fn twin_without_fences_keeps_torn_entries() {
    expect_violation(
        "snapshot/relaxed",
        BOUND,
        TORN,
        run(SLOT_REUSE, Host::Sound, weakened),
    );
}

#[test]
fn twin_with_late_eviction_keeps_torn_entries() {
    expect_violation(
        "snapshot/late-eviction",
        BOUND,
        TORN,
        run(SLOT_REUSE, Host::Sound, late_eviction),
    );
}
