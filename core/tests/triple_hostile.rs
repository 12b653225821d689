//! The triple host treats the client's state words as hostile (issue 20, findings 4 and 5):
//! a re-initialised region is recognised and the last persisted seq reset; a READY seq above
//! what the client published is refused and never pins the last persisted seq; seqs going
//! backwards within one client epoch are refused; `read_image` refuses an image whose READY
//! seq is not below its `next_seq`.

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::format::word;
use shmsnap_core::triple::{
    read_image, words, BufferState, Judgement, PersistedSeq, Refused, TripleClient, TripleError,
    TripleHost, TripleLayout, TripleRequest,
};
use shmsnap_testkit::claim_id;

const REQ: TripleRequest = TripleRequest {
    buffers: 3,
    buffer_size: 4096,
};

/// The seq finding 5 saw persisted: a scribbled READY word.
const SCRIBBLED: u64 = 2_868_291_872_060_729_160;

fn region() -> Vec<AtomicU64> {
    let layout = TripleLayout::new(REQ).unwrap();
    (0..layout.region_len as usize / 8)
        .map(|_| AtomicU64::new(0))
        .collect()
}

/// One host snapshot as the host strategy takes it: attach, survey, judge, freeze above the
/// last persisted seq, release. Returns the judgement and the persisted seq, if any.
fn snapshot(mem: &[AtomicU64], cursor: &mut PersistedSeq) -> (Judgement, Option<u64>) {
    let host = TripleHost::attach(mem).unwrap();
    let judgement = cursor.judge(&host.survey());
    let seq = host.freeze(cursor.seq()).unwrap().map(|f| {
        let seq = f.seq();
        f.release().unwrap();
        seq
    });
    if let Some(s) = seq {
        cursor.persisted(s);
    }
    (judgement, seq)
}

/// Finding 4 as reported: the client zeroes word 0 and calls `TripleClient::init`; seqs
/// restart at 1. The host used to skip every snapshot until the new seqs passed its old last
/// persisted seq; now the next snapshot persists.
#[test]
fn a_client_that_zeroes_its_header_and_inits_again_is_snapshotted_at_once() {
    let mem = region();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    let mut cursor = PersistedSeq::new();
    for _ in 0..30 {
        c.publish(b"old life").unwrap();
    }
    assert_eq!(snapshot(&mem, &mut cursor), (Judgement::Normal, Some(30)));
    let old_epoch = c.epoch();
    drop(c);
    mem[word::MAGIC].store(0, Ordering::Relaxed);
    let mut c = TripleClient::init(&mem[..], REQ, claim_id(1)).unwrap();
    assert_ne!(c.epoch(), old_epoch, "init must start a new client epoch");
    assert_eq!(c.publish(b"new life").unwrap(), 1);
    let (judgement, persisted) = snapshot(&mem, &mut cursor);
    assert_eq!(
        judgement,
        Judgement::Reinitialised {
            from_epoch: old_epoch,
            to_epoch: c.epoch(),
            last_seq: 30,
            newest: 1
        }
    );
    assert_eq!(
        persisted,
        Some(1),
        "the first publication after init is persisted"
    );
    assert_eq!(c.publish(b"newer").unwrap(), 2);
    assert_eq!(snapshot(&mem, &mut cursor), (Judgement::Normal, Some(2)));
}

/// Finding 4's documented way back: `TripleClient::reinit` on a region whose state words were
/// scribbled so that `take` fails; the host recognises the new epoch and persists at once.
#[test]
fn reinit_recovers_a_damaged_region_and_the_host_resumes_at_once() {
    let mem = region();
    let layout = TripleLayout::new(REQ).unwrap();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    let mut cursor = PersistedSeq::new();
    for _ in 0..9 {
        c.publish(b"x").unwrap();
    }
    assert_eq!(snapshot(&mem, &mut cursor).1, Some(9));
    // Every state word scribbled: nothing is FREE or a stale READY any more.
    for i in 0..layout.buffers {
        mem[layout.state_word(i)].store(1 << 62 | 12345, Ordering::Relaxed);
    }
    assert_eq!(c.take().unwrap_err(), TripleError::NoFreeBuffer);
    drop(c);
    let mut c = TripleClient::reinit(&mem[..], REQ, claim_id(1)).unwrap();
    c.check_invariants().unwrap();
    assert_eq!(c.newest(), None, "reinit discards the state");
    assert_eq!(c.publish(b"fresh").unwrap(), 1);
    assert!(matches!(
        snapshot(&mem, &mut cursor),
        (Judgement::Reinitialised { last_seq: 9, .. }, Some(1))
    ));
}

/// Finding 5: a client that scribbles only the state page makes a READY word claim seq
/// 2868291872060729160. It is refused (never frozen), reported, and the host's last
/// persisted seq is not pinned: later honest publications persist.
#[test]
fn a_scribbled_ready_seq_is_refused_and_never_pins_the_last_persisted_seq() {
    let mem = region();
    let layout = TripleLayout::new(REQ).unwrap();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    let mut cursor = PersistedSeq::new();
    c.publish(b"one").unwrap();
    c.publish(b"two").unwrap();
    let (newest, _) = c.newest().unwrap();
    let victim = (0..layout.buffers).find(|&i| i != newest).unwrap();
    let ready = BufferState::Ready { seq: SCRIBBLED }.encode().unwrap();
    mem[layout.state_word(victim)].store(ready, Ordering::Relaxed);

    let host = TripleHost::attach(&mem[..]).unwrap();
    let survey = host.survey();
    assert_eq!(
        survey.refused,
        Some(Refused {
            buffer: victim,
            seq: SCRIBBLED
        })
    );
    assert_eq!(survey.newest, Some((newest, 2)));
    assert_eq!(survey.published, 3);
    assert_eq!(host.newest_ready(), 2);
    assert_eq!(snapshot(&mem, &mut cursor), (Judgement::Normal, Some(2)));
    // Honest publications go on being persisted.
    c.publish(b"three").unwrap();
    assert_eq!(snapshot(&mem, &mut cursor), (Judgement::Normal, Some(3)));
    assert_eq!(cursor.seq(), 3);
}

/// Within one client epoch the newest publication cannot go back: a state page rewritten to
/// older seqs is refused and the last persisted seq is kept.
#[test]
fn seqs_going_back_within_one_epoch_are_refused() {
    let mem = region();
    let layout = TripleLayout::new(REQ).unwrap();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    let mut cursor = PersistedSeq::new();
    for _ in 0..5 {
        c.publish(b"s").unwrap();
    }
    assert_eq!(snapshot(&mem, &mut cursor).1, Some(5));
    for i in 0..layout.buffers {
        let v = if i == 0 {
            BufferState::Ready { seq: 2 }.encode().unwrap()
        } else {
            0
        };
        mem[layout.state_word(i)].store(v, Ordering::Relaxed);
    }
    assert_eq!(
        snapshot(&mem, &mut cursor),
        (
            Judgement::Backwards {
                newest: 2,
                last_seq: 5
            },
            None
        )
    );
    assert_eq!(cursor.seq(), 5);
}

/// A client stores a hint covering its next publication before publishing it: the hint is
/// the bound the host checks READY seqs against.
#[test]
fn attach_stores_the_next_seq_hint_before_any_publication() {
    let mem = region();
    let c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    assert_eq!(mem[words::NEXT_SEQ].load(Ordering::Relaxed), c.next_seq());
    drop(c);
    mem[words::NEXT_SEQ].store(0, Ordering::Relaxed);
    let c = TripleClient::attach(&mem[..], claim_id(1)).unwrap();
    assert_eq!(mem[words::NEXT_SEQ].load(Ordering::Relaxed), 1);
    assert_eq!(c.next_seq(), 1);
}

/// `verify`'s image check: a READY seq at or above the image's `next_seq` is not an image a
/// host writes (the scribbled seq of finding 5 persisted by an old host had `next_seq` above
/// it; an image claiming more than the client published is refused).
#[test]
fn an_image_whose_ready_seq_is_not_below_next_seq_is_refused() {
    let mem = region();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    c.publish(b"state").unwrap();
    let host = TripleHost::attach(&mem[..]).unwrap();
    let f = host.freeze(0).unwrap().unwrap();
    let layout = *host.layout();
    let mut meta = vec![0u8; layout.meta_len() as usize];
    f.image_meta(&mut meta).unwrap();
    f.release().unwrap();
    let len = layout.region_len;
    let img = read_image(&meta, len).unwrap();
    assert_eq!((img.seq, img.next_seq), (1, 2));
    // The client holds the live region's claim; the image is claimed by nobody.
    assert_eq!(shmsnap_core::claim::holder(&mem[..]), Some(claim_id(1)));
    assert_eq!(shmsnap_core::format::read_word(&meta, word::CLAIM), Some(0));
    let at = 8 * words::NEXT_SEQ;
    for next in [0u64, 1] {
        meta[at..at + 8].copy_from_slice(&next.to_le_bytes());
        assert_eq!(
            read_image(&meta, len).unwrap_err(),
            TripleError::ImageSeq {
                seq: 1,
                next_seq: next
            }
        );
    }
}
