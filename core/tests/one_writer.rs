//! One writer per region, enforced at run time (issue 20, finding 3): a second `Writer` or
//! `TripleClient` on a region is refused with the holder's id and touches nothing; dropping
//! releases the claim; a dead holder's claim is reclaimed and the next client attaches.

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::claim::{self, Claim};
use shmsnap_core::triple::{TripleClient, TripleError, TripleRequest};
use shmsnap_core::{AttachError, LayoutError, LayoutRequest, Writer};
use shmsnap_testkit::{claim_id, to_bytes, zeroed_words};

const QUEUE: LayoutRequest = LayoutRequest {
    entries: 8,
    data_size: 1024,
};
const TRIPLE: TripleRequest = TripleRequest {
    buffers: 3,
    buffer_size: 4096,
};

#[test]
fn a_second_writer_is_refused_naming_the_first_and_touches_nothing() {
    let mem = zeroed_words(64 * 1024);
    let (a, b) = (claim_id(100), claim_id(200));
    let mut first = Writer::open_or_init(&mem[..], QUEUE, a).unwrap();
    first.commit(b"first writer's state").unwrap();
    let before = to_bytes(&mem[..]);
    for second in [
        Writer::attach(&mem[..], b),
        Writer::open_or_init(&mem[..], QUEUE, b),
        Writer::init(&mem[..], QUEUE, b),
        // The same id cannot hold a region twice either.
        Writer::attach(&mem[..], a),
    ] {
        assert_eq!(second.unwrap_err(), AttachError::Claimed { holder: a });
        assert!(
            to_bytes(&mem[..]) == before,
            "a refused writer changed the region"
        );
    }
    let text = Writer::attach(&mem[..], b).unwrap_err().to_string();
    assert!(
        text.contains("pid 100"),
        "the error names the holder: {text}"
    );
    // The first writer is undisturbed; dropping it releases the claim.
    assert_eq!(first.commit(b"more"), Ok(2));
    drop(first);
    assert_eq!(claim::holder(&mem[..]), None);
    let mut second = Writer::attach(&mem[..], b).unwrap();
    assert_eq!(second.commit(b"second writer"), Ok(3));
    assert_eq!(second.claim_id(), b);
}

#[test]
fn two_concurrent_inits_cannot_both_configure_the_region() {
    let mem = zeroed_words(64 * 1024);
    // The first init has taken the claim and not yet stored anything else.
    let held = Claim::take(&mem[..], claim_id(1)).unwrap();
    let before = to_bytes(&mem[..]);
    assert_eq!(
        Writer::init(&mem[..], QUEUE, claim_id(2)).unwrap_err(),
        AttachError::Claimed {
            holder: claim_id(1)
        }
    );
    assert_eq!(
        TripleClient::init(&mem[..], TRIPLE, claim_id(2)).unwrap_err(),
        TripleError::Claimed {
            holder: claim_id(1)
        }
    );
    assert!(
        to_bytes(&mem[..]) == before,
        "a refused init configured the region"
    );
    drop(held);
    Writer::init(&mem[..], QUEUE, claim_id(2)).unwrap();
}

/// Issue 20, finding 3, as reported: two `TripleClient::attach` on one region both got buffer
/// 0 and seq 1, and the newest state read back as one generation written over another. Now
/// the second attach is refused and the first client's state stays whole.
#[test]
fn two_triple_clients_on_one_region_the_second_is_refused() {
    let words = (2 * 4096 + 3 * 4096) / 8;
    let mem: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
    drop(TripleClient::init(&mem[..], TRIPLE, claim_id(1)).unwrap());
    let mut a = TripleClient::attach(&mem[..], claim_id(10)).unwrap();
    let b = TripleClient::attach(&mem[..], claim_id(20));
    assert_eq!(
        b.unwrap_err(),
        TripleError::Claimed {
            holder: claim_id(10)
        }
    );
    // The first client's publications are whole.
    for g in 1..=3u64 {
        let state: Vec<u8> = (0..4096).map(|i| (g as u8) ^ (i as u8)).collect();
        a.publish(&state).unwrap();
    }
    let mut out = vec![0u8; 4096];
    let seq = a.read_newest(0, &mut out).unwrap();
    assert_eq!(seq, Some(3));
    let wrong = (0..4096).filter(|&i| out[i] != 3 ^ (i as u8)).count();
    assert_eq!(
        wrong, 0,
        "{wrong} bytes of the newest state are another writer's"
    );
    drop(a);
    assert!(TripleClient::attach(&mem[..], claim_id(20)).is_ok());
}

#[test]
fn a_dead_holders_claim_is_reclaimed_and_the_next_client_recovers() {
    let mem = zeroed_words(64 * 1024);
    let mut w = Writer::open_or_init(&mem[..], QUEUE, claim_id(7)).unwrap();
    w.commit(b"before the crash").unwrap();
    // SIGKILL: the claim is never released.
    std::mem::forget(w);
    assert!(matches!(
        Writer::attach(&mem[..], claim_id(8)),
        Err(AttachError::Claimed { holder }) if holder == claim_id(7)
    ));
    // Only the dead holder's claim is cleared.
    assert_eq!(
        claim::reclaim(&mem[..], claim_id(9)),
        Err(Some(claim_id(7)))
    );
    claim::reclaim(&mem[..], claim_id(7)).unwrap();
    let w = Writer::attach(&mem[..], claim_id(8)).unwrap();
    let newest = w.region().newest().unwrap();
    let mut buf = [0u8; 16];
    w.region().read_payload(&newest, &mut buf).unwrap();
    assert_eq!(&buf, b"before the crash");
}

#[test]
fn a_memory_too_short_for_the_claim_word_is_a_layout_error() {
    let mem = zeroed_words(256);
    assert!(matches!(
        Writer::init(&mem[..], QUEUE, claim_id(1)),
        Err(AttachError::Layout(LayoutError::TooSmall { .. }))
    ));
    assert!(matches!(
        TripleClient::attach(&mem[..], claim_id(1)),
        Err(TripleError::Layout(LayoutError::TooSmall { .. }))
    ));
    assert!(mem.iter().all(|w| w.load(Ordering::Relaxed) == 0));
}
