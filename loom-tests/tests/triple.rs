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
//! starved); every host copy is exactly the state published under the frozen seq; the host's
//! release finds its FROZEN value; afterwards a new client reads the last publication as the
//! newest state, `check_invariants` passes and no buffer is left FROZEN or WRITING.
//! Twins: a client whose publication is not a release (all orderings `Relaxed`); a host that
//! copies the newest READY buffer without freezing it; a client that reuses a FROZEN buffer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use loom::thread;
use shmsnap_core::triple::{BufferState, TripleClient, TripleHost};
use shmsnap_core::WordMemory;
use shmsnap_loom_tests::triple::{
    loom_index, seed, setup_published, state_of, FrozenLooksFree, TripleWords, COPY_TORN,
    FROZEN_VIOLATION, NEWEST_LOST, RELEASE_LOST, STATE_BYTES, TAKE_FAILED,
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
    /// Twin: sees FROZEN state words as FREE.
    ReusesFrozen,
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
    may_refuse: bool,
) -> u64 {
    let Some(f) = host.freeze(last).expect("freeze") else {
        assert!(last > 0 || may_refuse, "seq 1 or later is READY");
        return last;
    };
    let seq = f.seq();
    assert!(seq > last);
    let mut copy = [0u8; STATE_BYTES];
    f.copy_to(&mut copy).unwrap();
    check_copy(seq, &copy);
    if die {
        std::mem::forget(f);
        return seq;
    }
    if let Err(e) = f.release() {
        panic!("{RELEASE_LOST}: {e}");
    }
    seq
}

fn host<M: WordMemory + ?Sized>(mem: &M, how: Host, may_refuse: bool) {
    let h = TripleHost::attach(mem).expect("host attach");
    let snapshot = |h: &TripleHost<'_, M>, last, die| snapshot(h, last, die, may_refuse);
    match how {
        Host::Sound => {
            snapshot(&h, 0, false);
        }
        Host::Twice => {
            let first = snapshot(&h, 0, false);
            snapshot(&h, first, false);
        }
        Host::CrashHoldingFreeze => {
            snapshot(&h, 0, true);
            let h2 = TripleHost::attach(mem).expect("new host");
            assert_eq!(
                h2.adopted(),
                1,
                "the new host undoes the dead host's freeze"
            );
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
fn model(c: Client, h: Host) -> impl Fn() + Send + Sync + 'static {
    let (seed, layout) = seed(setup_published(1));
    let index = loom_index(&layout);
    move || {
        let mem = Arc::new(TripleWords::new(&seed, &index));
        let m2 = mem.clone();
        let host_thread = thread::spawn(move || host(&*m2, h, c == Client::Relaxed));
        let last = match c {
            Client::Relaxed => client(&Weakened(&*mem), c),
            Client::ReusesFrozen => client(&FrozenLooksFree(&*mem, layout), c),
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
    explore("triple handoff", Some(3), model(Client::Sound, Host::Sound));
}

#[test]
fn handoff_with_two_snapshots_never_starves_the_client() {
    // Unbounded by hand: did not finish in 25 minutes (see `handoff_copies_...`).
    explore(
        "triple handoff, two snapshots",
        Some(3),
        model(Client::Sound, Host::Twice),
    );
}

#[test]
fn a_crashed_clients_buffer_is_reclaimed() {
    // Unbounded by hand: 114 337 interleavings, 27 s.
    explore(
        "triple client crash mid-write",
        Some(3),
        model(Client::CrashMidWrite, Host::Sound),
    );
}

#[test]
fn a_crashed_hosts_freeze_is_undone_by_the_next_host() {
    explore(
        "triple host crash holding a freeze",
        // Bound 3 by hand: 306 536 interleavings, 133 s on a loaded machine (before the hint
        // check: unbounded 1 141 210, 134 s); bound 2 keeps CI short.
        Some(2),
        model(Client::Sound, Host::CrashHoldingFreeze),
    );
}

#[test]
fn twin_publish_without_release_is_caught() {
    expect_violation(
        "triple publish without release",
        Some(3),
        COPY_TORN,
        model(Client::Relaxed, Host::Sound),
    );
}

#[test]
fn twin_host_copying_an_unfrozen_buffer_is_caught() {
    expect_violation(
        "triple host copies unfrozen READY",
        Some(3),
        COPY_TORN,
        model(Client::Sound, Host::CopiesUnfrozen),
    );
}

#[test]
fn twin_client_reusing_a_frozen_buffer_is_caught() {
    expect_violation(
        "triple client reuses FROZEN",
        Some(3),
        FROZEN_VIOLATION,
        model(Client::ReusesFrozen, Host::Sound),
    );
}
