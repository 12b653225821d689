//! Model 5: durability feedback (DESIGN §14). The host takes a snapshot (core's `PreCopy`
//! around a word-by-word copy), makes it durable (appends it to a modelled disk under a loom
//! mutex) and publishes the status with core's `status::publish`; concurrently the client
//! commits and reads the status with core's `status::persisted`, as an acknowledging client
//! does after each commit.
//!
//! Checked in every interleaving: whenever the client reads a status `(seq, generation)` with
//! `seq > 0`, the disk already holds snapshot `generation` and its newest kept seq is at least
//! `seq` — "every seq the client saw as persisted is in the image", at the very moment it could
//! acknowledge it (a power cut then keeps exactly the disk). Coverage: the client sees a
//! publish in some interleavings.
//!
//! Broken twins: a host that publishes before the snapshot is durable; a host that publishes
//! the live newest seq (read after the copy) instead of the newest kept one; the status words
//! written and read without release/acquire (`Weakened`).
//!
//! Model 5b: the replica seq (`wait_replicated`). The host's uploader puts a point into a
//! modelled bucket and publishes its seq with an unchanged local seq (core's `status::publish`,
//! as `durable::replicated` does); concurrently the client takes one step of the wait loop:
//! `wake_count`, then `persisted`. Checked in every interleaving: a client that sees the seq
//! replicated finds it in the bucket; a client that read the uploader's counter value reads at
//! least the uploader's replica seq — otherwise it would sleep on the new counter value and
//! miss that publish's wake-up. The replica seq's own load stays Relaxed (the value is the
//! message, `core/src/status.rs`); the wake counter's Release/Acquire pair is what the second
//! check needs. Broken twins: publish before the upload; the status words `Weakened`.

use std::sync::atomic::{AtomicU64 as StdU64, Ordering};
use std::sync::Arc;

use loom::sync::Mutex;
use shmsnap_core::format::word;
use shmsnap_core::status::{self, Status};
use shmsnap_core::{LayoutRequest, Writer};
use shmsnap_loom_tests::{
    check_kept, expect_violation, explore, plan, snapshot, Host, LoomWords, Plan, Weakened, WordMap,
};

/// The status words: loom atomics in both models.
const STATUS_WORDS: [usize; 4] = [
    word::PERSISTED_SEQ,
    word::PERSISTED_GENERATION,
    word::REPLICA_SEQ,
    word::STATUS_WAKE,
];
use shmsnap_testkit::payload_for;

/// Assertion: the client saw a seq as persisted that the disk does not hold.
const NOT_DURABLE: &str = "VIOLATION status ahead of the disk";

/// E = 2, S = 16, 8-byte payloads; commit 1 before the model, commit 2 concurrent with the
/// host (in the copy or not: the live seq after the copy is then 2 while the newest kept is 1).
/// The snapshot models (1–4) cover eviction and reuse; this one needs only a commit the
/// snapshot may miss.
const REQUEST: LayoutRequest = LayoutRequest {
    entries: 2,
    data_size: 16,
};
const WARMUP: &[usize] = &[8];
const COMMITS: &[usize] = &[8];
const WORDS: usize = 3 * 512;

/// How the host publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Persist, then publish the newest kept seq (the real host's order).
    AfterDurable,
    /// Broken: publish the newest kept seq, then persist.
    BeforeDurable,
    /// Broken: persist, then publish the newest seq valid after the copy (the live seq).
    LiveSeq,
}

/// The modelled disk: `(generation, newest kept seq)` of every durable snapshot.
type Disk = Arc<Mutex<Vec<(u64, u64)>>>;

fn plan_of() -> Plan {
    let commit = |w: &mut Writer<'_, _>, lens: &[usize]| {
        for &len in lens {
            let seq = w.next_seq();
            w.commit(&payload_for(seq, len)).expect("commit");
        }
    };
    plan(
        WORDS,
        |m| {
            commit(
                &mut Writer::init(m, REQUEST, shmsnap_testkit::CLIENT).unwrap(),
                WARMUP,
            )
        },
        |m| {
            commit(
                &mut Writer::attach(m, shmsnap_testkit::CLIENT).unwrap(),
                COMMITS,
            )
        },
    )
}

/// The client's check after reading `s`: the disk holds generation `s.generation` with a
/// newest kept seq of at least `s.seq`.
fn check_durable(disk: &Disk, s: Status) {
    if s.seq == 0 {
        return;
    }
    let held = disk
        .lock()
        .unwrap()
        .iter()
        .find(|(g, _)| *g == s.generation)
        .copied();
    assert!(
        held.is_some_and(|(_, newest)| newest >= s.seq),
        "{NOT_DURABLE}: client read {s:?}, the disk holds {held:?} for that generation"
    );
}

fn model(
    publish: Publish,
    weak_status: bool,
    seen: Arc<StdU64>,
) -> impl Fn() + Send + Sync + 'static {
    let plan = Arc::new(plan_of());
    // The status words are stored by the host while the model runs: loom atomics too.
    let map = WordMap::new(&plan, &STATUS_WORDS);
    move || {
        let mem = Arc::new(LoomWords::new(&map));
        let disk: Disk = Arc::new(Mutex::new(Vec::new()));
        let host = {
            let (mem, disk, plan) = (mem.clone(), disk.clone(), plan.clone());
            loom::thread::spawn(move || {
                let snap = snapshot(&*mem, Host::Sound, || 0);
                check_kept(&plan, &snap.image);
                if snap.retained.is_starved() {
                    return;
                }
                let kept = snap.retained.newest.map_or(0, |d| d.seq);
                let live = snap.post.iter().map(|d| d.seq).max().unwrap_or(0);
                let status = Status {
                    seq: if publish == Publish::LiveSeq {
                        live
                    } else {
                        kept
                    },
                    generation: 1,
                    replica_seq: 0,
                };
                let persist = || disk.lock().unwrap().push((1, kept));
                let publish_now = || {
                    if weak_status {
                        status::publish(&Weakened(&*mem), status, 1)
                    } else {
                        status::publish(&*mem, status, 1)
                    }
                };
                if publish == Publish::BeforeDurable {
                    publish_now();
                    persist();
                } else {
                    persist();
                    publish_now();
                }
            })
        };
        let read = || {
            if weak_status {
                status::persisted(&Weakened(&*mem))
            } else {
                status::persisted(&*mem)
            }
        };
        let mut writer = Writer::attach(&*mem, shmsnap_testkit::CLIENT).expect("attach");
        for &len in COMMITS {
            let seq = writer.next_seq();
            writer.commit(&payload_for(seq, len)).expect("commit");
            let s = read();
            check_durable(&disk, s);
            if s.seq > 0 {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        host.join().unwrap();
    }
}

/// Preemption bound: a counterexample needs the host preempted once between its steps (or
/// the client between commit and read); 2 leaves a margin.
const BOUND: Option<usize> = Some(2);

#[test]
fn every_seq_the_client_saw_as_persisted_is_on_disk() {
    let seen = Arc::new(StdU64::new(0));
    explore(
        "status/after-durable",
        BOUND,
        model(Publish::AfterDurable, false, seen.clone()),
    );
    assert!(
        seen.load(Ordering::Relaxed) > 0,
        "the client never saw a publish: the model proves nothing"
    );
}

#[test]
fn twin_publishing_before_the_snapshot_is_durable_is_caught() {
    expect_violation(
        "status/before-durable",
        BOUND,
        NOT_DURABLE,
        model(Publish::BeforeDurable, false, Arc::default()),
    );
}

#[test]
fn twin_publishing_the_live_seq_instead_of_the_kept_one_is_caught() {
    expect_violation(
        "status/live-seq",
        BOUND,
        NOT_DURABLE,
        model(Publish::LiveSeq, false, Arc::default()),
    );
}

#[test]
fn twin_with_relaxed_status_words_is_caught() {
    expect_violation(
        "status/relaxed",
        BOUND,
        NOT_DURABLE,
        model(Publish::AfterDurable, true, Arc::default()),
    );
}

/// Assertion: the client saw a seq as replicated that the bucket does not hold.
const NOT_UPLOADED: &str = "VIOLATION replica seq ahead of the bucket";
/// Assertion: the client read the uploader's wake counter, then an older replica seq.
const STALE_REPLICA: &str = "VIOLATION replica seq older than the wake counter read before it";

/// How the uploader publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    /// Put the point, then publish its seq (the real uploader's order, `durable::replicated`
    /// after the put returned).
    ThenPublish,
    /// Broken: publish the seq, then put the point.
    PublishFirst,
}

fn replica_model(
    upload: Upload,
    weak_status: bool,
    seen: Arc<StdU64>,
) -> impl Fn() + Send + Sync + 'static {
    let plan = Arc::new(plan_of());
    let map = WordMap::new(&plan, &STATUS_WORDS);
    move || {
        let mem = Arc::new(LoomWords::new(&map));
        // Before the uploader runs: a local snapshot up to seq 1 is durable and published
        // (wake counter 1), nothing is in the bucket.
        let local = Status {
            seq: 1,
            generation: 1,
            replica_seq: 0,
        };
        status::publish(&*mem, local, 1);
        // The modelled bucket: the newest seq of a point in it.
        let bucket = Arc::new(Mutex::new(0u64));
        let uploader = {
            let (mem, bucket) = (mem.clone(), bucket.clone());
            loom::thread::spawn(move || {
                let put = || *bucket.lock().unwrap() = 1;
                let replicated = Status {
                    replica_seq: 1,
                    ..local
                };
                let publish_now = || {
                    if weak_status {
                        status::publish(&Weakened(&*mem), replicated, 2)
                    } else {
                        status::publish(&*mem, replicated, 2)
                    }
                };
                if upload == Upload::PublishFirst {
                    publish_now();
                    put();
                } else {
                    put();
                    publish_now();
                }
            })
        };
        // One step of the client's wait loop (`wait_status` in shmsnap-linux): counter, then
        // status.
        let (wake, s) = if weak_status {
            let m = Weakened(&*mem);
            (status::wake_count(&m), status::persisted(&m))
        } else {
            (status::wake_count(&*mem), status::persisted(&*mem))
        };
        if s.replicated(1) {
            let held = *bucket.lock().unwrap();
            assert!(
                held >= 1,
                "{NOT_UPLOADED}: client read {s:?}, the bucket holds {held}"
            );
        }
        if wake == 2 {
            assert!(
                s.replicated(1),
                "{STALE_REPLICA}: counter 2 (the uploader's), then {s:?}"
            );
            seen.fetch_add(1, Ordering::Relaxed);
        }
        uploader.join().unwrap();
    }
}

#[test]
fn every_seq_the_client_saw_as_replicated_is_in_the_bucket_and_no_wake_up_is_lost() {
    let seen = Arc::new(StdU64::new(0));
    explore(
        "status/replica",
        BOUND,
        replica_model(Upload::ThenPublish, false, seen.clone()),
    );
    assert!(
        seen.load(Ordering::Relaxed) > 0,
        "the client never read the uploader's counter: the model proves nothing"
    );
}

#[test]
fn twin_publishing_the_replica_seq_before_the_upload_is_caught() {
    expect_violation(
        "status/replica-before-upload",
        BOUND,
        NOT_UPLOADED,
        replica_model(Upload::PublishFirst, false, Arc::default()),
    );
}

#[test]
fn twin_with_relaxed_status_words_loses_the_replica_wake_up() {
    expect_violation(
        "status/replica-relaxed",
        BOUND,
        STALE_REPLICA,
        replica_model(Upload::ThenPublish, true, Arc::default()),
    );
}
