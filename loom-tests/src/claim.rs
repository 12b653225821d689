//! loom support for the claim model (`tests/claim.rs`): a small word memory whose claim word
//! and two "region" words are loom atomics, and the model's assertions.
//!
//! The claim functions touch only [`word::CLAIM`]; the model's threads store into the two
//! words after it ([`DATA`]) as a holder's region stores. Every other word is a constant 0 and
//! a store to one panics, so a model that writes more cannot pass silently.

use std::sync::atomic::Ordering;

use shmsnap_core::format::word;
use shmsnap_core::WordMemory;

/// The two words the holders store into, as the region a claim protects.
pub const DATA: [usize; 2] = [word::CLAIM + 1, word::CLAIM + 2];
/// Common prefix of every claim assertion.
pub const CLAIM_VIOLATION: &str = "VIOLATION claim";
/// Assertion: two claimants held the claim at the same time (their region stores interleaved,
/// or both were told they won).
pub const TWO_HOLDERS: &str = "VIOLATION claim: two holders at once";
/// Assertion: a refused claimant was not told the holder.
pub const WRONG_HOLDER: &str = "VIOLATION claim: the refusal names another holder";
/// Assertion: a new holder does not see the stores of the holder before it.
pub const STALE: &str = "VIOLATION claim: a new holder does not see the previous holder's stores";
/// Assertion: a release (or reclaim) cleared a claim another holder holds.
pub const FREED_OTHER: &str = "VIOLATION claim: a release freed another holder's claim";

/// The claim model's memory: loom atomics for the claim word and [`DATA`], constant zeros
/// elsewhere. Create it inside the loom model.
#[derive(Debug)]
pub struct ClaimWords {
    /// The claim word, then the two data words.
    atoms: [loom::sync::atomic::AtomicU64; 3],
}

impl ClaimWords {
    /// All zero: unclaimed, nothing stored.
    pub fn new() -> Self {
        ClaimWords {
            atoms: std::array::from_fn(|_| loom::sync::atomic::AtomicU64::new(0)),
        }
    }

    fn atom(&self, i: usize) -> Option<&loom::sync::atomic::AtomicU64> {
        i.checked_sub(word::CLAIM).and_then(|k| self.atoms.get(k))
    }

    /// A holder's region stores: `v` into both data words (`Relaxed`, like a writer's data
    /// stores; the claim is what orders them).
    pub fn store_data<M: WordMemory + ?Sized>(mem: &M, v: u64) {
        for w in DATA {
            mem.store(w, v, Ordering::Relaxed);
        }
    }

    /// Both data words (`Relaxed`).
    pub fn data<M: WordMemory + ?Sized>(mem: &M) -> [u64; 2] {
        DATA.map(|w| mem.load(w, Ordering::Relaxed))
    }
}

impl Default for ClaimWords {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the length is fixed (the claim word plus two); indices at or above `word::CLAIM` are
// loom atomics, lower ones constant zeros that are only read (stores to them panic); every
// access forwards to loom with the ordering given.
unsafe impl WordMemory for ClaimWords {
    fn len(&self) -> usize {
        word::CLAIM + self.atoms.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.atom(i).map_or(0, |a| a.load(order))
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.atom(i)
            .unwrap_or_else(|| panic!("store into constant word {i} of the claim model"))
            .store(v, order)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self.atom(i)
            .unwrap_or_else(|| panic!("compare-exchange of constant word {i} of the claim model"))
            .compare_exchange(current, new, success, failure)
    }
    fn fence(&self, order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}
