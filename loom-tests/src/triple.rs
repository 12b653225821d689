//! loom support for the triple-buffer models (`tests/triple.rs`): a word memory whose racing
//! words are loom atomics, the scenario's states, and the broken-twin wrappers.
//!
//! The region (header page, state page, three 4 KiB buffers: 2 560 words) is seeded from a
//! sequential setup on plain memory. The words the models' threads store — the hint and epoch
//! words, every state and seq word, and the first two words of every buffer (the models'
//! "state" is those 16 bytes) — are loom atomics; the claim word, which only the client
//! thread touches (and the main thread after joining it), is a plain atomic, as in
//! [`LoomWords`](crate::LoomWords); every other word is a constant, and a store
//! to a constant panics ([`CONST_STORE`]), so a model that writes more cannot pass silently.
//! The host copies only the 16 bytes, so a constant word is never even read by the copy.

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering};
use std::sync::Arc;

use shmsnap_core::triple::{words, TripleClient, TripleLayout, TripleRequest};
use shmsnap_core::WordMemory;

/// Panic message of a store into a word the model did not make a loom atomic.
pub const CONST_STORE: &str = "store into a constant (non-loom) word of the triple model";
/// Assertion: a host copy is not the state published under the frozen seq.
pub const COPY_TORN: &str =
    "VIOLATION frozen buffer: copy is not the state published under its seq";
/// Assertion: the state word of a frozen buffer changed under the host.
pub const RELEASE_LOST: &str = "VIOLATION frozen buffer: state word changed under the host";
/// Common prefix of [`COPY_TORN`] and [`RELEASE_LOST`].
pub const FROZEN_VIOLATION: &str = "VIOLATION frozen buffer";
/// Assertion: the client found no buffer to take.
pub const TAKE_FAILED: &str = "VIOLATION client could not take a buffer";
/// Assertion: after the model, the newest state is not the last publication.
pub const NEWEST_LOST: &str = "VIOLATION newest state lost";

/// The models' request: three one-page buffers.
pub const REQUEST: TripleRequest = TripleRequest {
    buffers: 3,
    buffer_size: 4096,
};
/// Words of the models' region.
pub const WORDS: usize = (2 * 4096 + 3 * 4096) / 8;
/// Bytes of state the models write and copy (the first two words of a buffer).
pub const STATE_BYTES: usize = 16;

/// The state published under `seq`: two words that name it.
pub fn state_of(seq: u64) -> [u8; STATE_BYTES] {
    let mut b = [0u8; STATE_BYTES];
    b[..8].copy_from_slice(&(0xa000_0000 + seq).to_le_bytes());
    b[8..].copy_from_slice(&(0xb000_0000 + seq).to_le_bytes());
    b
}

/// The seed image after `setup` ran on plain memory, and the region's layout.
pub fn seed(setup: impl FnOnce(&[StdAtomicU64])) -> (Arc<[u64]>, TripleLayout) {
    let mem: Vec<StdAtomicU64> = (0..WORDS).map(|_| StdAtomicU64::new(0)).collect();
    setup(&mem[..]);
    let layout = TripleLayout::read(&mem[..]).expect("setup configured the region");
    let seed: Arc<[u64]> = mem.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    (seed, layout)
}

/// Setup: configure the region and publish seqs `1..=n` (each [`state_of`]).
pub fn setup_published(n: u64) -> impl FnOnce(&[StdAtomicU64]) {
    move |mem| {
        let mut c = TripleClient::init(mem, REQUEST, shmsnap_testkit::CLIENT).expect("init");
        for s in 1..=n {
            assert_eq!(c.publish(&state_of(s)).expect("publish"), s);
        }
    }
}

/// Which words are loom atomics: index into the atomics, or `u32::MAX` for a constant.
pub fn loom_index(layout: &TripleLayout) -> Arc<[u32]> {
    let mut racing = vec![words::NEXT_SEQ, words::CLIENT_EPOCH, words::HOST_EPOCH];
    for i in 0..layout.buffers {
        racing.push(layout.state_word(i));
        racing.push(layout.seq_word(i));
        let first = (layout.buffer_range(i).start / 8) as usize;
        racing.push(first);
        racing.push(first + 1);
    }
    let mut index = vec![u32::MAX; WORDS];
    for (k, w) in racing.into_iter().enumerate() {
        index[w] = k as u32;
    }
    index.into()
}

/// The loom word memory of the triple models (see the module docs).
#[derive(Debug)]
pub struct TripleWords {
    /// The claim word: only the client thread uses it (module docs).
    claim: StdAtomicU64,
    seed: Arc<[u64]>,
    index: Arc<[u32]>,
    atoms: Vec<loom::sync::atomic::AtomicU64>,
    /// Word index of buffer 0's state word and the buffer count: the state words are
    /// `first_state + 8 i`, `i < buffers` (see `store`).
    first_state: usize,
    buffers: usize,
}

impl TripleWords {
    /// A fresh memory for one model iteration: loom atomics seeded from `seed`.
    pub fn new(seed: &Arc<[u64]>, index: &Arc<[u32]>) -> Self {
        let mut atoms: Vec<(u32, u64)> = index
            .iter()
            .enumerate()
            .filter(|(_, &k)| k != u32::MAX)
            .map(|(w, &k)| (k, seed[w]))
            .collect();
        atoms.sort_unstable();
        TripleWords {
            first_state: (seed[words::STATE_OFFSET] / 8) as usize,
            buffers: seed[words::BUFFERS] as usize,
            claim: StdAtomicU64::new(seed[shmsnap_core::format::word::CLAIM]),
            seed: seed.clone(),
            index: index.clone(),
            atoms: atoms
                .into_iter()
                .map(|(_, v)| loom::sync::atomic::AtomicU64::new(v))
                .collect(),
        }
    }

    fn atom(&self, i: usize) -> Option<&loom::sync::atomic::AtomicU64> {
        let k = self.index[i];
        (k != u32::MAX).then(|| &self.atoms[k as usize])
    }

    fn is_state_word(&self, i: usize) -> bool {
        i >= self.first_state
            && (i - self.first_state).is_multiple_of(8)
            && (i - self.first_state) / 8 < self.buffers
    }

    fn claim(&self, i: usize) -> Option<&StdAtomicU64> {
        (i == shmsnap_core::format::word::CLAIM).then_some(&self.claim)
    }
}

// SAFETY: the length is the seed's, fixed for the value's life; every index below it is either
// a loom atomic or a constant read without any memory access to shared state; out-of-range
// indices panic (slice indexing).
unsafe impl WordMemory for TripleWords {
    fn len(&self) -> usize {
        self.seed.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        if let Some(c) = self.claim(i) {
            return c.load(order);
        }
        match self.atom(i) {
            Some(a) => a.load(order),
            None => self.seed[i],
        }
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        if let Some(c) = self.claim(i) {
            return c.store(v, order);
        }
        let atom = self.atom(i).expect(CONST_STORE);
        if self.is_state_word(i) {
            // A state word is both stored (the client's take and publication) and
            // compare-exchanged (the host). C11 puts all of them in one total modification
            // order, and a compare-exchange reads the value just before it in that order;
            // loom 0.7 keeps the modification order as vector clocks, so a plain store and a
            // compare-exchange of another thread stay unordered, and the compare-exchange may
            // read a value the store already overwrote — and a later load the older of the
            // two (an execution C11 forbids: found as "newest state lost" with a release
            // writing READY(1) over the client's READY(4)). A swap is a store placed at the
            // end of the modification order, as C11 places every store; its read part
            // synchronizes with nothing (a store's ordering: never Acquire), and the release
            // sequence it continues is only of stores this thread already ordered before it.
            atom.swap(v, order);
        } else {
            atom.store(v, order)
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
        if let Some(c) = self.claim(i) {
            return c.compare_exchange(current, new, success, failure);
        }
        self.atom(i)
            .expect(CONST_STORE)
            .compare_exchange(current, new, success, failure)
    }
    fn fence(&self, order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

/// Broken twin "a take without its fallback": every compare-exchange on a state word fails
/// (returns the word's value, changes nothing), so the client's take has only its pass of
/// loads. (The client's `attach` compare-exchanges only WRITING or invalid words, which the
/// models' sound setups never leave.)
#[derive(Debug)]
pub struct CasLoses<'a, M: ?Sized>(pub &'a M, pub TripleLayout);

// SAFETY: forwards every access to `M`, which upholds the trait; compare-exchanges on state
// words are turned into loads (a broken twin), never which word is accessed.
unsafe impl<M: WordMemory + ?Sized> WordMemory for CasLoses<'_, M> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, i: usize, o: Ordering) -> u64 {
        self.0.load(i, o)
    }
    fn store(&self, i: usize, v: u64, o: Ordering) {
        self.0.store(i, v, o)
    }
    fn compare_exchange(
        &self,
        i: usize,
        c: u64,
        n: u64,
        s: Ordering,
        f: Ordering,
    ) -> Result<u64, u64> {
        if (0..self.1.buffers).any(|b| self.1.state_word(b) == i) {
            return Err(self.0.load(i, f));
        }
        self.0.compare_exchange(i, c, n, s, f)
    }
    fn fence(&self, o: Ordering) {
        self.0.fence(o)
    }
}
