//! A deterministic interleaving simulator: the real host code (pre read, word-by-word copy,
//! post read, retain) runs against a memory in which the real writer's recorded stores land
//! between the host's loads, at points chosen by a schedule (proptest or a seeded sweep).
//!
//! It explores sequentially consistent interleavings at sizes loom cannot reach (dozens of
//! commits, thousands of words); loom-tests cover weak-memory orderings on small models.
//! Two broken twins — a host without the post check, and a writer whose evictions land after
//! its data stores — must be caught, which proves the simulator can fail.

use std::sync::atomic::Ordering;

use proptest::prelude::*;
use shmsnap_core::{LayoutRequest, Region, WordMemory, Writer};
use shmsnap_testkit::{
    check_image_payloads, host_snapshot, payload_for, to_bytes, Host, Recording, Replay, Store,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Twin {
    Sound,
    /// The host passes `pre` as `post`.
    NoPostCheck,
    /// The writer's evictions are moved after its payload stores (just before publishing).
    LateEviction,
}

const REQ: LayoutRequest = LayoutRequest {
    entries: 4,
    data_size: 256,
};
const REGION: usize = 4 * 4096;

struct Outcome {
    kept: u64,
    dropped: u64,
}

/// Runs one scenario: `warmup` commits land before the host starts, then `lens` commits are
/// interleaved with one host snapshot according to `gaps`.
fn simulate(warmup: &[usize], lens: &[usize], gaps: &[u16], twin: Twin) -> Result<Outcome, String> {
    let recording = Recording::zeroed(REGION);
    let mut writer = Writer::init(&recording, REQ, shmsnap_testkit::CLIENT).unwrap();
    for &len in warmup {
        writer.commit(&payload_for(writer.next_seq(), len)).unwrap();
    }
    let start = shmsnap_testkit::from_bytes(&to_bytes(&recording));
    recording.trace.borrow_mut().clear();
    for &len in lens {
        writer.commit(&payload_for(writer.next_seq(), len)).unwrap();
    }
    let layout = *writer.layout();
    // The client lives on past the host's snapshot: its claim is never released here.
    std::mem::forget(writer);
    let mut trace = recording.trace.into_inner();
    if twin == Twin::LateEviction {
        trace = delay_evictions(&trace, &layout);
    }
    // The host's view: before each host load, the schedule may let pending writer stores land.
    let host = Replay::new(start, &trace, gaps);
    let region = Region::open(&host).map_err(|e| e.to_string())?;
    assert_eq!(*region.layout(), layout);
    let host_kind = match twin {
        Twin::NoPostCheck => Host::PreAsPost,
        Twin::Sound | Twin::LateEviction => Host::Sound,
    };
    // The real host: `PreCopy::read`, a word-by-word copy through the interleaving memory,
    // `PreCopy::finish` (or, for the twin, `retain` with `pre` as `post`).
    let snap = host_snapshot(&region, host_kind, || {
        let mut image: Vec<u8> = Vec::with_capacity(REGION);
        for i in 0..host.len() {
            image.extend_from_slice(&host.load(i, Ordering::Relaxed).to_le_bytes());
        }
        image
    })
    .map_err(|e| e.to_string())?;
    let (image, r) = (snap.image, snap.retained);
    check_image_payloads(&image, &layout)?;
    Ok(Outcome {
        kept: r.kept,
        dropped: r.dropped(),
    })
}

/// The "eviction after the data stores" twin: stores of 0 into a seq word are moved to just
/// before the commit's Release store of seq.
fn delay_evictions(trace: &[Store], layout: &shmsnap_core::Layout) -> Vec<Store> {
    let is_eviction = |s: &Store| s.value == 0 && layout.is_seq_word(s.word);
    let mut out = Vec::with_capacity(trace.len());
    let mut pending = Vec::new();
    for s in trace {
        if is_eviction(s) {
            pending.push(*s);
        } else {
            if s.release {
                out.append(&mut pending);
            }
            out.push(*s);
        }
    }
    out.append(&mut pending);
    out
}

fn scenario() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<u16>)> {
    (
        prop::collection::vec(1usize..=120, 0..6),
        prop::collection::vec(1usize..=120, 1..24),
        prop::collection::vec(prop_oneof![8 => 0u16..24, 1 => 0u16..2500], 0..400),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn kept_entries_match_committed_bytes((warmup, lens, gaps) in scenario()) {
        simulate(&warmup, &lens, &gaps, Twin::Sound).map_err(TestCaseError::fail)?;
    }
}

/// A seeded sweep over schedules; returns (violations, total kept, total dropped).
fn sweep(twin: Twin, runs: u64) -> (u64, u64, u64) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let (mut bad, mut kept, mut dropped) = (0, 0, 0);
    for _ in 0..runs {
        let warmup: Vec<usize> = (0..rnd(5)).map(|_| 1 + rnd(120) as usize).collect();
        let lens: Vec<usize> = (0..1 + rnd(20)).map(|_| 1 + rnd(120) as usize).collect();
        // Mostly short gaps, sometimes a long stall of the writer (a whole copy's worth).
        let gaps: Vec<u16> = (0..rnd(400))
            .map(|_| if rnd(8) == 0 { rnd(2500) } else { rnd(24) } as u16)
            .collect();
        match simulate(&warmup, &lens, &gaps, twin) {
            Ok(o) => {
                kept += o.kept;
                dropped += o.dropped;
            }
            Err(_) => bad += 1,
        }
    }
    (bad, kept, dropped)
}

#[test]
fn sound_protocol_keeps_and_drops_entries_but_never_tears() {
    let (bad, kept, dropped) = sweep(Twin::Sound, 1500);
    assert_eq!(bad, 0);
    // The sweep must exercise both outcomes, or it proves nothing.
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
}

#[test]
fn broken_twin_without_post_check_is_caught() {
    let (bad, _, _) = sweep(Twin::NoPostCheck, 1500);
    assert!(
        bad > 0,
        "the simulator failed to catch a host without the post check"
    );
}

#[test]
fn broken_twin_with_late_eviction_is_caught() {
    let (bad, _, _) = sweep(Twin::LateEviction, 1500);
    assert!(
        bad > 0,
        "the simulator failed to catch evictions moved after the data stores"
    );
}
