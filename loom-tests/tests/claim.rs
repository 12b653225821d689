//! Model 6: one writer per region — core's real `claim` (take, release on drop, reclaim)
//! against every interleaving (`core/src/claim.rs`, DESIGN §5.1).
//!
//! Scenarios, each with the holders' region stores modelled as two `Relaxed` stores into
//! words the claim protects:
//!
//! 1. **race**: two claimants take the claim at once and keep it: exactly one wins, its two
//!    stores are never interleaved with the other's, and the loser is told the winner's id.
//! 2. **handover**: a holder stores and releases while a second claimant tries once; if the
//!    second wins, it sees both of the first holder's stores.
//! 3. **reclaim**: a holder stores and dies (never releases); its supervisor, having joined it
//!    (the model's `waitpid`), reclaims; a new claimant that wins sees the dead holder's stores.
//! 4. **zombie**: a supervisor wrongly reclaims a live holder and a new claimant takes the
//!    region; the old holder's release must not free the new holder's claim.
//!
//! Broken twins: a claim taken by load-then-store (race: two holders); every ordering
//! `Relaxed`, and only the release and reclaim `Relaxed` (handover and reclaim: stale
//! stores); a release by plain store (zombie: the new holder's claim freed).

use std::sync::Arc;

use loom::thread;
use shmsnap_core::claim::{self, Claim, ClaimError, ClaimId};
use shmsnap_core::WordMemory;
use shmsnap_loom_tests::claim::{ClaimWords, FREED_OTHER, STALE, TWO_HOLDERS, WRONG_HOLDER};
use shmsnap_loom_tests::{
    expect_violation, explore, LoadThenStore, PlainRelease, RelaxedRelease, Weakened,
};

const A: ClaimId = ClaimId::from_pid(10, 1).unwrap();
const B: ClaimId = ClaimId::from_pid(20, 2).unwrap();

/// How the model's memory is seen: sound, or through a broken twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Sound,
    LoadThenStore,
    Relaxed,
    PlainRelease,
    RelaxedRelease,
}

/// Runs `f` on `mem` as `view` sees it.
fn with_view<R>(mem: &ClaimWords, view: View, f: impl FnOnce(&dyn WordMemory) -> R) -> R {
    match view {
        View::Sound => f(mem),
        View::LoadThenStore => f(&LoadThenStore(mem)),
        View::Relaxed => f(&Weakened(mem)),
        View::PlainRelease => f(&PlainRelease(mem)),
        View::RelaxedRelease => f(&RelaxedRelease(mem)),
    }
}

/// A claimant that keeps the claim if it wins: `Ok(())` after its region stores, or the
/// holder it was refused by.
fn claim_and_keep(mem: &dyn WordMemory, id: ClaimId) -> Result<(), ClaimId> {
    match Claim::take(mem, id) {
        Ok(held) => {
            ClaimWords::store_data(mem, id.get());
            let seen = ClaimWords::data(mem);
            assert!(
                seen == [id.get(); 2],
                "{TWO_HOLDERS}: {id} stored its id, then read {seen:x?}"
            );
            std::mem::forget(held); // kept to the end of the model
            Ok(())
        }
        Err(ClaimError::Claimed { holder }) => Err(holder),
        Err(e) => panic!("claim: {e}"),
    }
}

fn race(view: View) -> impl Fn() + Send + Sync + 'static {
    move || {
        let mem = Arc::new(ClaimWords::new());
        let m = mem.clone();
        let b = thread::spawn(move || with_view(&m, view, |w| claim_and_keep(w, B)));
        let a = with_view(&mem, view, |w| claim_and_keep(w, A));
        let b = b.join().unwrap();
        let (winner, refused) = match (a, b) {
            (Ok(()), Err(h)) => (A, h),
            (Err(h), Ok(())) => (B, h),
            (Ok(()), Ok(())) => panic!("{TWO_HOLDERS}: both claimants won"),
            (Err(x), Err(y)) => panic!("VIOLATION claim: nobody won ({x}, {y})"),
        };
        assert!(refused == winner, "{WRONG_HOLDER}: {refused}, not {winner}");
        assert_eq!(claim::holder(&*mem), Some(winner));
        assert_eq!(ClaimWords::data(&*mem), [winner.get(); 2]);
    }
}

/// A new holder, if it wins, checks that it sees `expect` in both region words.
fn take_and_check(mem: &dyn WordMemory, id: ClaimId, expect: u64) -> bool {
    let Ok(held) = Claim::take(mem, id) else {
        return false;
    };
    let seen = ClaimWords::data(mem);
    assert!(
        seen == [expect; 2],
        "{STALE}: saw {seen:x?}, the previous holder stored {expect:x}"
    );
    drop(held);
    true
}

fn handover(view: View) -> impl Fn() + Send + Sync + 'static {
    move || {
        let mem = Arc::new(ClaimWords::new());
        let m = mem.clone();
        with_view(&mem, view, |w| {
            // A holds the region from the start.
            let held = Claim::take(w, A).expect("unclaimed at start");
            let b = thread::spawn(move || with_view(&m, view, |w| take_and_check(w, B, 7)));
            ClaimWords::store_data(w, 7);
            drop(held); // core's release
            b.join().unwrap();
        });
    }
}

fn reclaim_after_death(view: View) -> impl Fn() + Send + Sync + 'static {
    move || {
        let mem = Arc::new(ClaimWords::new());
        // The holder process has taken the region (before the model's threads start)...
        with_view(&mem, view, |w| {
            std::mem::forget(Claim::take(w, A).expect("unclaimed at start"));
        });
        let m = mem.clone();
        // ... stores, and dies without releasing.
        let holder = thread::spawn(move || with_view(&m, view, |w| ClaimWords::store_data(w, 7)));
        let m = mem.clone();
        let next = thread::spawn(move || with_view(&m, view, |w| take_and_check(w, B, 7)));
        // The supervisor: learns of the death (join: the model's waitpid), then reclaims.
        // The new client may have tried already and been refused (which leaves the claim).
        holder.join().unwrap();
        with_view(&mem, view, |w| {
            claim::reclaim(w, A).expect("the dead holder's claim");
        });
        next.join().unwrap();
    }
}

fn zombie(view: View) -> impl Fn() + Send + Sync + 'static {
    move || {
        let mem = Arc::new(ClaimWords::new());
        let m = mem.clone();
        let b_won = with_view(&mem, view, |w| {
            let held = Claim::take(w, A).expect("unclaimed at start");
            // The supervisor wrongly believes A dead: reclaims, and B takes the region.
            let b = thread::spawn(move || {
                with_view(&m, view, |w| {
                    // (A may have released already: then there is nothing to reclaim.)
                    let _ = claim::reclaim(w, A);
                    Claim::take(w, B).map(std::mem::forget).is_ok()
                })
            });
            // A, still alive, ends: core's release of its claim.
            drop(held);
            b.join().unwrap()
        });
        if b_won {
            let now = claim::holder(&*mem);
            assert!(
                now == Some(B),
                "{FREED_OTHER}: B holds the region, the claim word says {now:?}"
            );
        }
    }
}

#[test]
fn two_racing_claimants_exactly_one_wins_and_the_loser_sees_the_holder() {
    explore("claim/race", None, race(View::Sound));
}

#[test]
fn a_new_holder_sees_the_stores_of_the_holder_that_released() {
    explore("claim/handover", None, handover(View::Sound));
}

#[test]
fn a_holder_after_a_reclaim_sees_the_dead_holders_stores() {
    explore("claim/reclaim", None, reclaim_after_death(View::Sound));
}

#[test]
fn a_reclaimed_holders_release_never_frees_the_next_holder() {
    explore("claim/zombie", None, zombie(View::Sound));
}

#[test]
fn twin_claim_by_load_then_store_lets_two_holders_in() {
    expect_violation(
        "claim by load-then-store",
        None,
        TWO_HOLDERS,
        race(View::LoadThenStore),
    );
}

#[test]
fn twin_relaxed_claim_hands_over_stale_stores() {
    expect_violation(
        "claim with every ordering Relaxed (handover)",
        None,
        STALE,
        handover(View::Relaxed),
    );
}

#[test]
fn twin_relaxed_reclaim_hands_over_stale_stores() {
    expect_violation(
        "claim with every ordering Relaxed (reclaim)",
        None,
        STALE,
        reclaim_after_death(View::Relaxed),
    );
}

#[test]
fn twin_release_by_plain_store_frees_the_next_holder() {
    expect_violation(
        "claim released by plain store",
        None,
        FREED_OTHER,
        zombie(View::PlainRelease),
    );
}

#[test]
fn twin_release_without_release_ordering_hands_over_stale_stores() {
    expect_violation(
        "claim release without Release",
        None,
        STALE,
        handover(View::RelaxedRelease),
    );
}

#[test]
fn twin_reclaim_without_release_ordering_hands_over_stale_stores() {
    expect_violation(
        "claim reclaim without Release",
        None,
        STALE,
        reclaim_after_death(View::RelaxedRelease),
    );
}
