//! The loom word memory: loom atomics for the words the model's writer stores, constants for
//! every other word (the crate docs say why that is sound), and the host's word-by-word copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use shmsnap_core::format::word;
use shmsnap_core::WordMemory;

use crate::plan::Plan;
use crate::NON_LOOM_STORE;

/// A host's word-by-word copy of a live memory.
pub trait Image {
    /// Loads every word in address order (`Relaxed`) and returns the little-endian bytes.
    fn image(&self) -> Vec<u8>;
}

const CONSTANT: u32 = u32::MAX;

/// The loom implementation of [`WordMemory`]: loom atomics for the words the model's writer
/// stores, constants for every other word (see the crate docs for why that is sound).
///
/// The claim word ([`word::CLAIM`]) is a plain atomic, not a loom one: in these models only
/// the writer thread takes and releases the claim (a host copy loads it, and `retain` zeroes
/// it in every image), so it has no race for loom to explore, while two more yield points
/// per writer more than double the interleavings of every model. The claim's own orderings
/// are checked by the claim model (`tests/claim.rs`).
///
/// Create it inside the loom model (loom atomics belong to one execution).
#[derive(Debug)]
pub struct LoomWords {
    /// The claim word (see above).
    claim: std::sync::atomic::AtomicU64,
    /// Values of the constant words (and the initial values of the loom words).
    seed: Arc<[u64]>,
    /// Per word: index into `atoms`, or `CONSTANT`.
    index: Arc<[u32]>,
    atoms: Vec<loom::sync::atomic::AtomicU64>,
}

/// The per-word index of a plan, shared by every iteration of a model.
#[derive(Debug, Clone)]
pub struct WordMap {
    seed: Arc<[u64]>,
    index: Arc<[u32]>,
    loom_words: Arc<[usize]>,
}

impl WordMap {
    /// The map of `plan`: its loom words plus `extra` words (e.g. words only a reader loads but
    /// that should still be branch points).
    pub fn new(plan: &Plan, extra: &[usize]) -> Self {
        let mut words: Vec<usize> = plan
            .loom_words
            .iter()
            .chain(extra)
            .copied()
            .filter(|&w| w != word::CLAIM)
            .collect();
        words.sort_unstable();
        words.dedup();
        let mut index = vec![CONSTANT; plan.seed.len()];
        for (k, &w) in words.iter().enumerate() {
            index[w] = u32::try_from(k).expect("few loom words");
        }
        WordMap {
            seed: plan.seed.clone(),
            index: index.into(),
            loom_words: words.into(),
        }
    }

    /// Number of loom-backed words.
    pub fn loom_len(&self) -> usize {
        self.loom_words.len()
    }
}

impl LoomWords {
    /// Fresh loom atomics for one model iteration, holding the plan's seed values.
    pub fn new(map: &WordMap) -> Self {
        LoomWords {
            claim: std::sync::atomic::AtomicU64::new(
                map.seed.get(word::CLAIM).copied().unwrap_or(0),
            ),
            seed: map.seed.clone(),
            index: map.index.clone(),
            atoms: map
                .loom_words
                .iter()
                .map(|&w| loom::sync::atomic::AtomicU64::new(map.seed[w]))
                .collect(),
        }
    }

    fn atom(&self, i: usize) -> Option<&loom::sync::atomic::AtomicU64> {
        match self.index[i] {
            CONSTANT => None,
            k => Some(&self.atoms[k as usize]),
        }
    }

    fn constant(&self, i: usize) -> ! {
        panic!("{NON_LOOM_STORE} {i}: the plan's loom word set is incomplete")
    }
}

// SAFETY: the length is the seed's, fixed at construction; every index below it is either a
// loom atomic or a constant that is only ever read (stores to it panic); loads, stores,
// and CASes forward to loom's atomics with the orderings given, and `fence` to loom's
// fence, so loom checks the protocol under the C++ memory model.
unsafe impl WordMemory for LoomWords {
    fn len(&self) -> usize {
        self.seed.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        if i == word::CLAIM && i < self.seed.len() {
            return self.claim.load(order);
        }
        match self.atom(i) {
            Some(a) => a.load(order),
            None => self.seed[i],
        }
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        if i == word::CLAIM && i < self.seed.len() {
            return self.claim.store(v, order);
        }
        match self.atom(i) {
            Some(a) => a.store(v, order),
            None => self.constant(i),
        }
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        if i == word::CLAIM && i < self.seed.len() {
            return self.claim.compare_exchange(current, new, success, failure);
        }
        match self.atom(i) {
            Some(a) => a.compare_exchange(current, new, success, failure),
            None => self.constant(i),
        }
    }
    fn fence(&self, order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

impl Image for LoomWords {
    fn image(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.seed.len() * 8);
        for (i, &v) in self.seed.iter().enumerate() {
            let v = match self.atom(i) {
                Some(a) => a.load(Ordering::Relaxed),
                None if i == word::CLAIM => self.claim.load(Ordering::Relaxed),
                None => v,
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}
