//! Model 4: a writer that stops at any point (its N-th store and every later one never land),
//! then `Writer::attach` recovers the region.
//!
//! Checked for every crash point N: attach succeeds, `check_invariants` passes, every valid
//! entry is a committed descriptor carrying exactly its committed bytes, and the next seq is
//! larger than every seq ever published. Sequentially (a plain loop over N, including a second
//! crash inside the recovering attach) over a longer scenario, and under loom with a
//! concurrent host snapshot, whose retained image must itself restore to a valid region.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shmsnap_core::format::word;
use shmsnap_core::{image_entries, LayoutRequest, WordMemory, Writer};
use shmsnap_loom_tests::{
    check_kept, check_recovery, explore, plan, snapshot, Crashing, Host, Image, LoomWords, Plan,
    WordMap, SEQ_REPEAT,
};
use shmsnap_testkit::{from_bytes, payload_for};

const REQUEST: LayoutRequest = LayoutRequest {
    entries: 2,
    data_size: 16,
};
const WORDS: usize = 3 * 512;

fn commits<M: WordMemory + ?Sized>(m: &M, lens: &[usize]) {
    let mut w = Writer::attach(m, shmsnap_testkit::CLIENT).expect("attach");
    for &len in lens {
        let seq = w.next_seq();
        w.commit(&payload_for(seq, len)).expect("commit");
    }
}

fn plan_of(warmup: &'static [usize], lens: &'static [usize]) -> Plan {
    plan(
        WORDS,
        |m| {
            let mut w = Writer::init(m, REQUEST, shmsnap_testkit::CLIENT).unwrap();
            for &len in warmup {
                w.commit(&payload_for(w.next_seq(), len)).unwrap();
            }
        },
        |m| commits(m, lens),
    )
}

fn plain_copy(seed: &[u64]) -> Vec<AtomicU64> {
    seed.iter().map(|&v| AtomicU64::new(v)).collect()
}

/// Setup: commit 1. Then attach and commits of 8, 16 (evicts everything, the newest
/// included, by overlap), 8, 12 (skips to the ring start), 8, 8 bytes.
const WARMUP: &[usize] = &[8];
const LENS: &[usize] = &[8, 16, 8, 12, 8, 8];

#[test]
fn attach_recovers_from_a_crash_at_every_store() {
    let plan = plan_of(WARMUP, LENS);
    let setup_max = plan.setup_seqs.iter().copied().max().unwrap_or(0);
    let stores = plan.phase_trace.len();
    let mut double = 0;
    for n in 0..=stores {
        let mem = plain_copy(&plan.seed);
        let crashing = Crashing::new(&mem[..], plan.layout, n);
        commits(&crashing, LENS);
        let published = crashing.max_published().max(setup_max);
        // The dead writer's claim (if its release did not land) is reclaimed by its
        // supervisor before any restart.
        if let Some(dead) = shmsnap_core::claim::holder(&mem[..]) {
            shmsnap_core::claim::reclaim(&mem[..], dead).unwrap();
        }
        // Recovery, then a second crash at every store of the recovering attach, then a
        // clean attach and one more commit.
        let snapshot_after_crash: Vec<u64> =
            mem.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        let next = check_recovery(&plan, &mem[..], published).next_seq();
        let attach_stores = {
            let m = plain_copy(&snapshot_after_crash);
            let c = Crashing::new(&m[..], plan.layout, usize::MAX);
            Writer::attach(&c, shmsnap_testkit::CLIENT).unwrap();
            c.attempted()
        };
        for k in 0..attach_stores {
            let m = plain_copy(&snapshot_after_crash);
            let c = Crashing::new(&m[..], plan.layout, k);
            let _ = Writer::attach(&c, shmsnap_testkit::CLIENT).unwrap();
            let mut w = check_recovery(&plan, &m[..], published.max(c.max_published()));
            let seq = w.commit(&payload_for(w.next_seq(), 8)).unwrap();
            assert!(
                seq > published,
                "{SEQ_REPEAT}: committed {seq} after {published}"
            );
            w.check_invariants().unwrap();
            double += 1;
        }
        let mut w = check_recovery(&plan, &mem[..], published);
        assert_eq!(w.next_seq(), next, "recovery is idempotent");
        let seq = w.commit(&payload_for(next, 8)).unwrap();
        assert!(
            seq > published,
            "{SEQ_REPEAT}: committed {seq} after {published}"
        );
        w.check_invariants().unwrap();
    }
    println!(
        "crash/sequential: {} crash points, {double} second crashes inside attach",
        stores + 1
    );
}

/// Loom: the writer (attach + `LOOM_LENS`) crashes at store N while a host snapshots.
const LOOM_WARMUP: &[usize] = &[8, 8];
/// 16 bytes after two 8-byte entries: evicts both (the newest by overlap), then publishes.
const LOOM_LENS: &[usize] = &[16];

fn crash_model(plan: Arc<Plan>, n: usize) -> impl Fn() + Send + Sync {
    let map = WordMap::new(&plan, &[]);
    let setup_max = plan.setup_seqs.iter().copied().max().unwrap_or(0);
    move || {
        let mem = Arc::new(LoomWords::new(&map));
        let host = {
            let mem = mem.clone();
            loom::thread::spawn(move || snapshot(&*mem, Host::Sound, || 0))
        };
        let crashing = Crashing::new(mem.clone(), plan.layout, n);
        commits(&crashing, LOOM_LENS);
        let snap = host.join().unwrap();
        let published = crashing.max_published().max(setup_max);
        // The live region the dead writer left, recovered by the next client.
        let live = from_bytes(&mem.image());
        check_recovery(&plan, &live[..], published);
        // The host's image, restored into a fresh region: kept entries are exact, and the
        // restored writer starts above every kept seq (and above every seq the host saw: see
        // `restored_image_never_repeats_a_seq_the_host_saw`).
        check_kept(&plan, &snap.image);
        let seen = image_entries(&snap.image, &plan.layout)
            .chain(snap.pre.iter().copied())
            .chain(snap.post.iter().copied())
            .map(|d| d.seq)
            .max()
            .unwrap_or(0);
        let restored = from_bytes(&snap.image);
        assert_eq!(
            shmsnap_core::claim::holder(&restored[..]),
            None,
            "VIOLATION the image carries the dead writer's claim"
        );
        check_recovery(&plan, &restored[..], seen);
    }
}

/// Preemption bound of the loom crash models: 13 models (one per crash point); bound 2 takes
/// over four minutes in all (2.3 million interleavings for the last point alone).
const CRASH_BOUND: Option<usize> = Some(1);

#[test]
fn attach_recovers_from_a_crash_at_every_store_under_a_concurrent_snapshot() {
    let plan = Arc::new(plan_of(LOOM_WARMUP, LOOM_LENS));
    let stores = plan.phase_trace.len();
    let mut total = 0;
    let start = std::time::Instant::now();
    for n in 0..=stores {
        let stats = explore(
            &format!("crash/snapshot N={n}"),
            CRASH_BOUND,
            crash_model(plan.clone(), n),
        );
        total += stats.iterations;
    }
    println!(
        "loom model crash/snapshot: {} crash points, {total} interleavings in all, {:.2?}, preemption bound {}",
        stores + 1,
        start.elapsed(),
        CRASH_BOUND.unwrap_or(usize::MAX)
    );
}

/// Broken twin of the sequential crash model: the recovering client loses the `next_seq`
/// hint (as if the writer never maintained it). After a crash between the evictions of a
/// commit that evicts every entry and its publication, nothing in the region remembers the
/// published seqs, and recovery must repeat one — the check has to catch that.
#[test]
fn twin_without_next_seq_hint_repeats_a_seq() {
    let plan = plan_of(WARMUP, LENS);
    let setup_max = plan.setup_seqs.iter().copied().max().unwrap_or(0);
    let mut caught = 0;
    for n in 0..=plan.phase_trace.len() {
        let mem = plain_copy(&plan.seed);
        let crashing = Crashing::new(&mem[..], plan.layout, n);
        commits(&crashing, LENS);
        let published = crashing.max_published().max(setup_max);
        mem[word::NEXT_SEQ].store(0, Ordering::Relaxed);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_recovery(&plan, &mem[..], published);
        }));
        if let Err(p) = r {
            let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains(SEQ_REPEAT), "failed for another reason: {msg}");
            caught += 1;
        }
    }
    assert!(caught > 0, "a recovery without the hint was not caught");
    println!("crash/no-hint twin: caught at {caught} crash points");
}

/// A restored image never repeats a seq the host saw published. The writer stores the
/// `next_seq` hint only after publishing, so the host can see seq `s` in `post` (not kept, as
/// it was not in `pre`) while the hint it reads after the copy still says `s`; `retain` must
/// therefore also take 1 + the highest valid seq of `pre` and `post`. (This model found that
/// bug in core's `retain`, which had only the hint and the kept entries.)
#[test]
fn restored_image_never_repeats_a_seq_the_host_saw() {
    let plan = Arc::new(plan_of(&[8], &[8]));
    let map = WordMap::new(&plan, &[]);
    explore("restore/next-seq", Some(2), move || {
        let mem = Arc::new(LoomWords::new(&map));
        let host = {
            let mem = mem.clone();
            loom::thread::spawn(move || snapshot(&*mem, Host::Sound, || 0))
        };
        commits(&*mem, &[8]);
        let snap = host.join().unwrap();
        // The host persists only images with entries before the copy and something kept.
        if snap.retained.pre == 0 || snap.retained.is_starved() {
            return;
        }
        let seen = snap
            .pre
            .iter()
            .chain(&snap.post)
            .map(|d| d.seq)
            .max()
            .unwrap_or(0);
        let restored = from_bytes(&snap.image);
        assert_eq!(
            shmsnap_core::claim::holder(&restored[..]),
            None,
            "VIOLATION the image carries the dead writer's claim"
        );
        check_recovery(&plan, &restored[..], seen);
    });
}
