//! The writer against the reference model: random commit sizes, evictions and re-attaches.

use proptest::prelude::*;
use shmsnap_core::format::desc;
use shmsnap_core::{CommitError, LayoutRequest, Writer};
use shmsnap_testkit::{payload_for, zeroed_words, QueueModel};

#[derive(Debug, Clone)]
enum Op {
    Commit(usize),
    EvictBefore(u64),
    Reattach,
}

fn op(max_len: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1..=max_len).prop_map(Op::Commit),
        1 => (0u64..6).prop_map(Op::EvictBefore),
        1 => Just(Op::Reattach),
    ]
}

fn run(entries: u64, data_size: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mem = zeroed_words(64 * 1024);
    let req = LayoutRequest { entries, data_size };
    let mut writer = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    let mut model = QueueModel::new(entries, data_size);
    for op in ops {
        match *op {
            Op::Commit(len) => {
                let seq = writer.next_seq();
                let got = writer.commit(&payload_for(seq, len)).unwrap();
                prop_assert_eq!(got, model.commit(&payload_for(seq, len)));
            }
            Op::EvictBefore(back) => {
                let t = writer.next_seq().saturating_sub(back);
                writer.evict_before(t);
                model.evict_before(t);
            }
            Op::Reattach => {
                drop(writer); // the client restarts: its claim is released
                writer = Writer::attach(&mem[..], shmsnap_testkit::CLIENT).unwrap();
                prop_assert_eq!(writer.next_seq(), model.next_seq());
            }
        }
        writer
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
        model
            .check(writer.region())
            .map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn live_entries_and_bytes_match_the_model(
        e_log in 0u32..5,
        s_log in 3u32..10,
        ops in prop::collection::vec(op(600), 1..80),
    ) {
        let data_size = 1u64 << s_log;
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|o| match o {
                Op::Commit(l) => Op::Commit((l - 1) % data_size as usize + 1),
                o => o,
            })
            .collect();
        run(1 << e_log, data_size, &ops)?;
    }
}

#[test]
fn payload_larger_than_the_ring_or_empty_is_refused() {
    let mem = zeroed_words(64 * 1024);
    let req = LayoutRequest {
        entries: 4,
        data_size: 64,
    };
    let mut writer = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(
        writer.commit(&[0; 65]),
        Err(CommitError::PayloadSize { len: 65, max: 64 })
    );
    assert_eq!(
        writer.commit(&[]),
        Err(CommitError::PayloadSize { len: 0, max: 64 })
    );
    assert_eq!(writer.commit(&[7; 64]), Ok(1));
}

#[test]
fn seqs_never_repeat_across_reattach_after_everything_was_evicted() {
    let mem = zeroed_words(64 * 1024);
    let req = LayoutRequest {
        entries: 2,
        data_size: 64,
    };
    let mut writer = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    for i in 0..10u8 {
        writer.commit(&[i; 8]).unwrap();
    }
    // Empty every descriptor behind the writer's back: only the hint remembers the seqs.
    let layout = *writer.layout();
    for slot in 0..layout.entries {
        mem[layout.desc_word(slot) + desc::SEQ].store(0, std::sync::atomic::Ordering::Relaxed);
    }
    drop(writer);
    let mut writer = Writer::attach(&mem[..], shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(writer.commit(&[1; 8]), Ok(11));
}

#[test]
fn init_refuses_a_configured_region_and_open_or_init_checks_the_layout() {
    let mem = zeroed_words(64 * 1024);
    let req = LayoutRequest {
        entries: 8,
        data_size: 1024,
    };
    let mut w = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    w.commit(b"x").unwrap();
    drop(w);
    assert_eq!(
        Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap_err(),
        shmsnap_core::AttachError::AlreadyConfigured
    );
    let other = LayoutRequest {
        entries: 16,
        data_size: 1024,
    };
    assert!(matches!(
        Writer::open_or_init(&mem[..], other, shmsnap_testkit::CLIENT),
        Err(shmsnap_core::AttachError::Mismatch { .. })
    ));
    let w = Writer::open_or_init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(w.next_seq(), 2);
    assert_eq!(w.region().hints().epoch, 2);
}

#[test]
fn an_init_interrupted_before_its_magic_is_configured_afresh() {
    let mem = zeroed_words(64 * 1024);
    let req = LayoutRequest {
        entries: 8,
        data_size: 1024,
    };
    {
        let mut w = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
        w.commit(b"lost with the crash").unwrap();
    }
    // A crash inside `init`: every field but the magic (stored last) written; garbage left in
    // the descriptor ring from an earlier life of the memory.
    mem[0].store(0, std::sync::atomic::Ordering::Relaxed);
    let mut w = Writer::open_or_init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(w.region().entries().count(), 0);
    assert_eq!(w.commit(b"fresh"), Ok(1));
    w.check_invariants().unwrap();
}

/// A region whose seqs or stream offsets are about to run out, through its header and
/// descriptors (as a restore of a long-lived region could leave it): the commits that still
/// fit succeed, the next fails typed, and a failed commit stores nothing.
#[test]
fn commits_fail_typed_when_seqs_or_stream_offsets_run_out() {
    use shmsnap_core::format::word;
    use shmsnap_core::{MAX_SEQ, MAX_STREAM};
    use std::sync::atomic::Ordering::Relaxed;
    let req = LayoutRequest {
        entries: 4,
        data_size: 64,
    };

    // Seqs: the next_seq hint one below the limit.
    let mem = zeroed_words(64 * 1024);
    let w = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    drop(w);
    mem[word::NEXT_SEQ].store(MAX_SEQ - 1, Relaxed);
    let mut w = Writer::attach(&mem[..], shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(w.commit(&[1; 8]), Ok(MAX_SEQ - 1));
    refused_as_exhausted(&mem, &mut w, &[2; 8]);

    // Stream offsets: one live entry 64 bytes below the limit, so 56 bytes remain.
    let mem = zeroed_words(64 * 1024);
    let w = Writer::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    let layout = *w.layout();
    drop(w);
    let d = layout.desc_word(layout.slot_of(1));
    mem[d + desc::OFFSET].store(MAX_STREAM - 64, Relaxed);
    mem[d + desc::LENGTH].store(8, Relaxed);
    mem[d + desc::SEQ].store(1, Relaxed);
    let mut w = Writer::attach(&mem[..], shmsnap_testkit::CLIENT).unwrap();
    assert_eq!(w.commit(&[3; 41]), Ok(2)); // [MAX - 56, MAX - 15), padded to MAX - 8
    assert_eq!(w.commit(&[4; 8]), Ok(3)); // [MAX - 8, MAX): ends exactly at the limit
    refused_as_exhausted(&mem, &mut w, &[5; 1]);
    assert_eq!(w.region().newest().map(|d| d.seq), Some(3));
}

/// Asserts that committing `payload` (and beginning a transaction of its length) fails with
/// [`CommitError::Exhausted`] and stores nothing in `mem`, and that the writer is still sound.
fn refused_as_exhausted(
    mem: &[std::sync::atomic::AtomicU64],
    w: &mut Writer<'_, [std::sync::atomic::AtomicU64]>,
    payload: &[u8],
) {
    use std::sync::atomic::Ordering::Relaxed;
    let words = || mem.iter().map(|x| x.load(Relaxed)).collect::<Vec<u64>>();
    let before = words();
    assert_eq!(w.commit(payload), Err(CommitError::Exhausted));
    assert!(matches!(
        w.begin(payload.len()),
        Err(CommitError::Exhausted)
    ));
    assert!(before == words(), "a refused commit stored something");
    w.check_invariants().unwrap();
}
