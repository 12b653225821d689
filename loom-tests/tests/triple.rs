//! Model 5: the triple-buffer handoff (DESIGN §6), core's real `TripleClient` and
//! `TripleHost` against every interleaving.
//!
//! Setup (sequential): three one-page buffers, seq 1 published into buffer 0. Concurrently, a
//! client attaches and publishes seqs 2, 3, 4 (the third publication reclaims buffer 0, which
//! a host may be freezing), while a host attaches and snapshots (freeze, copy, release).
//! A variant host snapshots twice. Crash variants: the client dies mid-write and a new client reclaims its buffer; the host
//! dies holding a freeze and a new host undoes it.
//!
//! Checked in every interleaving: the client's `take` never fails (wait-free, never
//! starved); every host copy whose release succeeded is exactly the state published under the
//! frozen seq; a release fails only as the reclaim race (`TripleError::Reclaimed`: the client
//! took back a stale buffer the host froze) — and then only for a buffer that was not the
//! newest at the end; afterwards a new client reads the last publication as the newest state,
//! `check_invariants` passes and no buffer is left FROZEN or WRITING.
//! Twins: a client whose publication is not a release (all orderings `Relaxed`); a client
//! whose take has no compare-exchange fallback (it believes a stale FROZEN); a host that uses
//! its copy without validating it by the release; a host that copies the newest READY buffer
//! without freezing it.
//!
//! Not modelled: the `Release` fence after the take's WRITING store and the host's `Acquire`
//! fence before its release. loom runs each thread's stores in program order and lets only
//! loads read older values, so a store reordered before an earlier one — what the fences
//! forbid — never happens here (a twin without them was tried: not caught in 10 746
//! interleavings). Their argument is in `core::triple`'s module docs ("The reclaim race").
//! State-word stores are swaps in this model (`TripleWords::store`), for the reason given
//! there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use loom::thread;
use shmsnap_core::triple::{BufferState, TripleClient, TripleError, TripleHost};
use shmsnap_core::WordMemory;
use shmsnap_loom_tests::triple::{
    loom_index, seed, setup_published, state_of, CasLoses, TripleWords, COPY_TORN, NEWEST_LOST,
    RELEASE_LOST, STATE_BYTES, TAKE_FAILED,
};
use shmsnap_loom_tests::{expect_violation, explore, Weakened};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Publishes 2, 3, 4.
    Sound,
    /// Publishes 2, dies while writing 3, a new client attaches and publishes 3.
    CrashMidWrite,
    /// Twin: publishes through a view with every ordering `Relaxed`.
    Relaxed,
    /// Twin: every compare-exchange it makes on a state word loses (so its take has no
    /// fallback: a pass of stale loads that saw every candidate FROZEN is final).
    NoFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    /// attach, freeze, copy, release.
    Sound,
    /// attach, then two snapshots (the second only of something newer than the first).
    Twice,
    /// attach, freeze, copy, dies; a new host attaches, freezes, copies, releases.
    CrashHoldingFreeze,
    /// Twin: copies the newest READY buffer without freezing it.
    CopiesUnfrozen,
    /// Twin: freezes and copies, but uses the copy whatever its release says.
    TrustsFreeze,
}

/// What the host threads of one model did, over all its interleavings (plain atomics, outside
/// loom: they only count). A model whose host never validated a copy would check nothing.
#[derive(Debug, Default)]
struct Counts {
    /// Copies whose release succeeded (each checked against the published state).
    validated: AtomicUsize,
    /// Releases that found the buffer reclaimed (copy dropped).
    reclaimed: AtomicUsize,
}

impl Counts {
    fn new() -> Arc<Counts> {
        Arc::new(Counts::default())
    }

    /// Prints the counts and checks the model reached validated copies (and, if
    /// `reclaims`, the reclaim race).
    fn check(&self, name: &str, reclaims: bool) {
        let (v, r) = (
            self.validated.load(Ordering::Relaxed),
            self.reclaimed.load(Ordering::Relaxed),
        );
        println!("loom model {name}: {v} validated copies, {r} reclaimed");
        assert!(v > 0, "{name}: no interleaving validated a copy");
        assert!(
            !reclaims || r > 0,
            "{name}: no interleaving reached the reclaim race"
        );
    }
}

fn check_copy(seq: u64, copy: &[u8; STATE_BYTES]) {
    assert!(
        *copy == state_of(seq),
        "{COPY_TORN}: seq {seq}, copied {copy:02x?}"
    );
}

fn publish<M: WordMemory + ?Sized>(c: &mut TripleClient<'_, M>, seq: u64) {
    let mut g = c.take().unwrap_or_else(|e| panic!("{TAKE_FAILED}: {e}"));
    assert_eq!(g.seq(), seq);
    g.write(0, &state_of(seq)).unwrap();
    g.publish();
}

/// The client thread; returns the last seq it published.
fn client<M: WordMemory + ?Sized>(mem: &M, how: Client) -> u64 {
    let mut c = TripleClient::attach(mem, shmsnap_testkit::CLIENT).expect("attach");
    match how {
        Client::CrashMidWrite => {
            publish(&mut c, 2);
            let mut g = c.take().unwrap_or_else(|e| panic!("{TAKE_FAILED}: {e}"));
            g.write(0, &[0xee; 8]).unwrap();
            std::mem::forget(g); // the client dies here, holding the claim
            let dead = c.claim_id();
            std::mem::forget(c);
            // Its supervisor, knowing it is dead, reclaims the claim; a new client attaches.
            shmsnap_core::claim::reclaim(mem, dead).expect("the dead client's claim");
            let mut c = TripleClient::attach(mem, shmsnap_testkit::claim_id(2)).expect("re-attach");
            publish(&mut c, 3);
            3
        }
        _ => {
            for seq in 2..=4 {
                publish(&mut c, seq);
            }
            4
        }
    }
}

/// One snapshot by `host` of a state newer than `last`: freeze, copy, release (or die holding
/// the freeze); returns the seq, or `last` if nothing newer was READY.
///
/// Seq 1 is READY from the setup, so a sound client's host always freezes something. A client
/// whose publication is not a release (the `Relaxed` twin) may have every READY refused: the
/// host cannot see the hint that covers it, so it cannot tell the seq is the client's — the
/// refusal is right, and the twin is caught by a torn copy in other interleavings.
fn snapshot<M: WordMemory + ?Sized>(
    host: &TripleHost<'_, M>,
    last: u64,
    die: bool,
    trusting: bool,
    counts: &Counts,
) -> u64 {
    let Some(f) = host.freeze(last).expect("freeze") else {
        // Allowed: with Acquire loads and Release stores a pass over the words may read a
        // reclaimed buffer's WRITING and the others' older values (no READY at all); the
        // host then snapshots at its next tick. `Counts::validated` shows the models do
        // reach validated copies.
        return last;
    };
    let seq = f.seq();
    assert!(seq > last);
    let mut copy = [0u8; STATE_BYTES];
    f.copy_to(&mut copy).unwrap();
    if trusting {
        // The broken twin: the copy is used before (and whatever) the release says.
        check_copy(seq, &copy);
    }
    if die {
        // A dead host's copy is never used.
        std::mem::forget(f);
        return last;
    }
    match f.release() {
        Ok(()) => {
            check_copy(seq, &copy);
            counts.validated.fetch_add(1, Ordering::Relaxed);
            seq
        }
        // The reclaim race: the copy is dropped, nothing was persisted.
        Err(TripleError::Reclaimed { .. }) => {
            counts.reclaimed.fetch_add(1, Ordering::Relaxed);
            last
        }
        Err(e) => panic!("{RELEASE_LOST}: {e}"),
    }
}

fn host<M: WordMemory + ?Sized>(mem: &M, how: Host, counts: &Counts) {
    let h = TripleHost::attach(mem).expect("host attach");
    let trusting = how == Host::TrustsFreeze;
    let snapshot = |h: &TripleHost<'_, M>, last, die| snapshot(h, last, die, trusting, counts);
    match how {
        Host::Sound | Host::TrustsFreeze => {
            snapshot(&h, 0, false);
        }
        Host::Twice => {
            let first = snapshot(&h, 0, false);
            snapshot(&h, first, false);
        }
        Host::CrashHoldingFreeze => {
            snapshot(&h, 0, true);
            let h2 = TripleHost::attach(mem).expect("new host");
            // The dead host's freeze is undone, unless the client already took that buffer
            // back (the reclaim race: then nothing is FROZEN any more).
            assert!(h2.adopted() <= 1, "at most one stale freeze to undo");
            snapshot(&h2, 0, false);
        }
        Host::CopiesUnfrozen => {
            let layout = *h.layout();
            let mut best = None;
            for i in 0..layout.buffers {
                // Acquire: this twin is broken only in not freezing, not in its orderings.
                let v = mem.load(layout.state_word(i), Ordering::Acquire);
                if let BufferState::Ready { seq } = BufferState::decode(v) {
                    if best.is_none_or(|(_, s)| seq > s) {
                        best = Some((i, seq));
                    }
                }
            }
            let (i, seq) = best.expect("seq 1 or later is READY");
            let first = (layout.buffer_range(i).start / 8) as usize;
            let mut copy = [0u8; STATE_BYTES];
            copy[..8].copy_from_slice(&mem.load(first, Ordering::Relaxed).to_le_bytes());
            copy[8..].copy_from_slice(&mem.load(first + 1, Ordering::Relaxed).to_le_bytes());
            check_copy(seq, &copy);
        }
    }
}

/// The model: client and host concurrently, then the checks after both finished.
fn model(c: Client, h: Host, counts: &Arc<Counts>) -> impl Fn() + Send + Sync + 'static {
    let (seed, layout) = seed(setup_published(1));
    let index = loom_index(&layout);
    let counts = counts.clone();
    move || {
        let mem = Arc::new(TripleWords::new(&seed, &index));
        let m2 = mem.clone();
        let counts = counts.clone();
        let host_thread = thread::spawn(move || host(&*m2, h, &counts));
        let last = match c {
            Client::Relaxed => client(&Weakened(&*mem), c),
            Client::NoFallback => client(&CasLoses(&*mem, layout), c),
            _ => client(&*mem, c),
        };
        host_thread.join().unwrap();
        let after = TripleClient::attach(&*mem, shmsnap_testkit::CLIENT).expect("attach after");
        let mut state = [0u8; STATE_BYTES];
        let seq = after.read_newest(0, &mut state).unwrap();
        assert!(
            seq == Some(last) && state == state_of(last),
            "{NEWEST_LOST}: newest {seq:?} {state:02x?}, last published {last}"
        );
        after
            .check_invariants()
            .unwrap_or_else(|e| panic!("VIOLATION invariants after the model: {e}"));
        for i in 0..layout.buffers {
            let v = mem.load(layout.state_word(i), Ordering::Relaxed);
            assert!(
                !matches!(BufferState::decode(v), BufferState::Frozen { .. }),
                "VIOLATION buffer {i} left FROZEN"
            );
        }
    }
}

#[test]
fn handoff_copies_exactly_the_frozen_state() {
    // Unbounded by hand: 312 859 interleavings (112 s on a loaded machine); since the host
    // checks READY seqs against the client's NEXT_SEQ hint (a racing Relaxed load with one
    // branch per value it may read) an unbounded run no longer fits CI.
    let counts = Counts::new();
    explore(
        "triple handoff",
        Some(3),
        model(Client::Sound, Host::Sound, &counts),
    );
    // The third publication reclaims buffer 0, which the host may be freezing: the race.
    counts.check("triple handoff", true);
}

#[test]
fn handoff_with_two_snapshots_never_starves_the_client() {
    // Unbounded by hand: did not finish in 25 minutes (see `handoff_copies_...`).
    let counts = Counts::new();
    explore(
        "triple handoff, two snapshots",
        Some(3),
        model(Client::Sound, Host::Twice, &counts),
    );
    counts.check("triple handoff, two snapshots", true);
}

#[test]
fn a_crashed_clients_buffer_is_reclaimed() {
    // Unbounded by hand: 114 337 interleavings, 27 s.
    let counts = Counts::new();
    explore(
        "triple client crash mid-write",
        Some(3),
        model(Client::CrashMidWrite, Host::Sound, &counts),
    );
    counts.check("triple client crash mid-write", false);
}

#[test]
fn a_crashed_hosts_freeze_is_undone_by_the_next_host() {
    let counts = Counts::new();
    explore(
        "triple host crash holding a freeze",
        // Bound 3 by hand: 306 536 interleavings, 133 s on a loaded machine (before the hint
        // check: unbounded 1 141 210, 134 s); bound 2 keeps CI short.
        Some(2),
        model(Client::Sound, Host::CrashHoldingFreeze, &counts),
    );
    counts.check("triple host crash holding a freeze", false);
}

#[test]
fn twin_publish_without_release_is_caught() {
    expect_violation(
        "triple publish without release",
        Some(3),
        COPY_TORN,
        model(Client::Relaxed, Host::Sound, &Counts::new()),
    );
}

#[test]
fn twin_host_copying_an_unfrozen_buffer_is_caught() {
    expect_violation(
        "triple host copies unfrozen READY",
        Some(3),
        COPY_TORN,
        model(Client::Sound, Host::CopiesUnfrozen, &Counts::new()),
    );
}

#[test]
fn twin_take_without_its_fallback_is_caught() {
    // The fast pass's Acquire loads may read a freeze the host already released: with two
    // snapshots the client can see both candidates FROZEN. Only the compare-exchange
    // fallback (which reads the newest values) takes a buffer then.
    expect_violation(
        "triple take without its compare-exchange fallback",
        Some(3),
        TAKE_FAILED,
        model(Client::NoFallback, Host::Twice, &Counts::new()),
    );
}

#[test]
fn twin_host_using_an_unvalidated_copy_is_caught() {
    // The sound client's take may overwrite a buffer the host froze (the reclaim race): a
    // host that uses its copy without the release's verdict persists a torn state.
    expect_violation(
        "triple host trusts its freeze",
        Some(3),
        COPY_TORN,
        model(Client::Sound, Host::TrustsFreeze, &Counts::new()),
    );
}
