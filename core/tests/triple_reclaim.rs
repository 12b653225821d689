//! The lock-free take of the triple client (issue 27) and what the host does about it:
//! the release validates the copy and tells the reclaim race (the client took the frozen
//! buffer back) from a foreign writer; the take falls back to compare-exchanges when its pass
//! of loads saw nothing takable; a survey gives a "went backwards" verdict only when two
//! passes agree.
//!
//! The concurrent interleavings themselves are loom model 5 (`loom-tests/tests/triple.rs`);
//! here each outcome is produced deterministically, through a memory that changes or hides
//! state words at chosen accesses.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::triple::{
    BufferState, Judgement, PersistedSeq, TripleClient, TripleError, TripleHost, TripleLayout,
    TripleRequest,
};
use shmsnap_core::WordMemory;
use shmsnap_testkit::claim_id;

const REQ: TripleRequest = TripleRequest {
    buffers: 3,
    buffer_size: 4096,
};

fn region() -> Vec<AtomicU64> {
    let layout = TripleLayout::new(REQ).unwrap();
    (0..layout.region_len as usize / 8)
        .map(|_| AtomicU64::new(0))
        .collect()
}

fn layout() -> TripleLayout {
    TripleLayout::new(REQ).unwrap()
}

/// A host froze the newest buffer; its state word is then overwritten with `found` — as the
/// client's racing store, or a foreign writer, would — and the release says what it found.
fn release_after(found: u64) -> Result<(), TripleError> {
    let mem = region();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    for _ in 0..4 {
        c.publish(b"state").unwrap();
    }
    let host = TripleHost::attach(&mem[..]).unwrap();
    let f = host.freeze(0).unwrap().expect("a READY buffer");
    assert_eq!(f.seq(), 4);
    let sw = layout().state_word(f.buffer());
    mem[sw].store(found, Ordering::Relaxed);
    let r = f.release();
    assert_eq!(mem[sw].load(Ordering::Relaxed), found, "left as found");
    r
}

fn enc(s: BufferState) -> u64 {
    s.encode().unwrap()
}

#[test]
fn a_release_that_finds_the_client_took_the_buffer_back_is_the_reclaim_race() {
    for found in [
        enc(BufferState::Writing { epoch: 2 }),
        enc(BufferState::Free),
        enc(BufferState::Ready { seq: 5 }),
    ] {
        let r = release_after(found);
        assert_eq!(r, Err(TripleError::Reclaimed { found }), "{found:#x}");
    }
}

#[test]
fn a_release_that_finds_a_value_no_client_writes_is_a_violation() {
    for found in [
        enc(BufferState::Frozen { epoch: 999 }),
        enc(BufferState::Ready { seq: 4 }),
        enc(BufferState::Ready { seq: 1 }),
        0x0000_0000_0000_0007, // invalid
    ] {
        let r = release_after(found);
        assert_eq!(r, Err(TripleError::ReleaseLost { found }), "{found:#x}");
    }
}

/// A memory whose loads return `alter(word, ordering, value)` instead of the value; stores and
/// compare-exchanges go through unchanged.
struct Altered<'a> {
    mem: &'a [AtomicU64],
    alter: &'a dyn Fn(usize, Ordering, u64) -> u64,
}

// SAFETY: forwards every access to the slice (which upholds the trait); only the values of
// loads are altered, never which word is accessed.
unsafe impl WordMemory for Altered<'_> {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load(&self, i: usize, o: Ordering) -> u64 {
        (self.alter)(i, o, self.mem.load(i, o))
    }
    fn store(&self, i: usize, v: u64, o: Ordering) {
        self.mem.store(i, v, o)
    }
    fn compare_exchange(
        &self,
        i: usize,
        c: u64,
        n: u64,
        s: Ordering,
        f: Ordering,
    ) -> Result<u64, u64> {
        self.mem.compare_exchange(i, c, n, s, f)
    }
    fn fence(&self, o: Ordering) {
        self.mem.fence(o)
    }
}

/// `Acquire` loads of state words read FROZEN (a stale view of a freeze the host released
/// since) while `stale` lasts; compare-exchanges see the truth.
fn stale_frozen(stale: &Cell<u32>) -> impl Fn(usize, Ordering, u64) -> u64 + '_ {
    let l = layout();
    move |i, o, v| {
        let state = (0..l.buffers).any(|b| l.state_word(b) == i);
        if state && o == Ordering::Acquire && stale.get() > 0 {
            stale.set(stale.get() - 1);
            return enc(BufferState::Frozen { epoch: 1 });
        }
        v
    }
}

#[test]
fn a_take_whose_loads_see_only_frozen_buffers_falls_back_and_takes_one() {
    let mem = region();
    let stale = Cell::new(0);
    let alter = stale_frozen(&stale);
    let view = Altered {
        mem: &mem[..],
        alter: &alter,
    };
    let mut c = TripleClient::open_or_init(&view, REQ, claim_id(1)).unwrap();
    for _ in 0..3 {
        c.publish(b"state").unwrap();
    }
    let (newest, _) = c.newest().unwrap();
    // The first try and the whole pass of loads (N - 1 = 2 candidates) read FROZEN.
    stale.set(3);
    let g = c
        .take()
        .expect("the fallback's compare-exchange reads the truth");
    assert_eq!(stale.get(), 0, "the pass of loads ran first");
    assert_ne!(g.buffer(), newest);
    let b = g.buffer();
    assert_eq!(g.publish(), 4);
    assert_eq!(c.newest(), Some((b, 4)));
    c.check_invariants().unwrap();
}

#[test]
fn a_take_never_takes_a_frozen_buffer_through_its_fallback() {
    let mem = region();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    for _ in 0..3 {
        c.publish(b"state").unwrap();
    }
    // Really frozen: a host holds the two candidates' words as FROZEN (one of them a dead
    // host's freeze). The fallback compare-exchanges find FROZEN and give up.
    let l = layout();
    let (newest, _) = c.newest().unwrap();
    for b in (0..l.buffers).filter(|&b| b != newest) {
        mem[l.state_word(b)].store(
            BufferState::Frozen { epoch: 7 + b }.encode().unwrap(),
            Ordering::Relaxed,
        );
    }
    let e = c.take().map(|g| g.buffer()).unwrap_err();
    assert_eq!(e, TripleError::NoFreeBuffer);
    for b in (0..l.buffers).filter(|&b| b != newest) {
        assert_eq!(
            mem[l.state_word(b)].load(Ordering::Relaxed),
            BufferState::Frozen { epoch: 7 + b }.encode().unwrap(),
            "a FROZEN word is never written by the client"
        );
    }
}

/// The words of the preemption of DESIGN §6: the host persisted seq 3 from buffer 2; a pass
/// then read buffers 0 and 1 before the client published 4 and 5 into them, and buffer 2
/// after the client took it back (WRITING). Returns the region and the client epoch.
fn mixed_view() -> (Vec<AtomicU64>, u64) {
    let mem = region();
    let mut c = TripleClient::open_or_init(&mem[..], REQ, claim_id(1)).unwrap();
    for _ in 0..3 {
        c.publish(b"s").unwrap();
    }
    assert_eq!(c.newest(), Some((2, 3)));
    let epoch = c.epoch();
    drop(c);
    let l = layout();
    mem[l.state_word(2)].store(enc(BufferState::Writing { epoch }), Ordering::Relaxed);
    // The hint of the client that published 4 and 5.
    mem[shmsnap_core::triple::words::NEXT_SEQ].store(6, Ordering::Relaxed);
    (mem, epoch)
}

/// A survey whose passes never agree (the client keeps changing buffer 2) and whose last pass
/// is the mixed view gives no verdict, and changes nothing.
#[test]
fn a_survey_of_a_moving_client_gives_no_backwards_verdict() {
    let (mem, epoch) = mixed_view();
    let l = layout();
    // The client keeps taking and dropping buffer 2 while the host surveys: its word
    // alternates between WRITING and FREE from one load to the next.
    let loads = Cell::new(0usize);
    let values = [enc(BufferState::Writing { epoch }), enc(BufferState::Free)];
    let flicker = |i: usize, _: Ordering, v: u64| {
        if i != l.state_word(2) {
            return v;
        }
        let n = loads.get();
        loads.set(n + 1);
        values[n % 2]
    };
    let view = Altered {
        mem: &mem[..],
        alter: &flicker,
    };
    let host = TripleHost::attach(&view).unwrap();
    let survey = host.survey();
    assert!(!survey.settled, "the passes read different words");
    assert_eq!(survey.newest.map(|(_, s)| s), Some(2));
    let mut cursor = PersistedSeq::restored(3, epoch);
    assert_eq!(
        cursor.judge(&survey),
        Judgement::Unsettled {
            newest: 2,
            last_seq: 3
        }
    );
    assert_eq!(cursor.seq(), 3, "nothing changed");
    // The freeze never persists anything at or below the last persisted seq.
    assert!(host.freeze(cursor.seq()).unwrap().is_none());
}

/// The twin: the same mixed view held still — what one pass of the old survey judged — is
/// "backwards". So the verdict above comes from the passes disagreeing, not from the words.
#[test]
fn the_same_view_held_still_is_judged_backwards() {
    let (mem, epoch) = mixed_view();
    let host = TripleHost::attach(&mem[..]).unwrap();
    let survey = host.survey();
    assert!(survey.settled, "still words: the passes agree");
    let mut cursor = PersistedSeq::restored(3, epoch);
    assert_eq!(
        cursor.judge(&survey),
        Judgement::Backwards {
            newest: 2,
            last_seq: 3
        }
    );
}
