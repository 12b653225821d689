//! Broken-twin wrappers around a word memory: [`Weakened`] (every ordering `Relaxed`, no
//! fences), [`LateEviction`] (evictions land after the data stores), [`LoadThenStore`] (a
//! compare-exchange that is a load and a store), [`PlainRelease`] (a compare-exchange to 0
//! that is a plain store), [`RelaxedRelease`] (a compare-exchange to 0 without `Release`), and
//! [`Crashing`] (not a twin: the writer stops at its N-th store).

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use shmsnap_core::{Layout, WordMemory};

use crate::words::Image;

/// Broken twin: every ordering weakened to `Relaxed`, every fence dropped (no release fence
/// before the data stores, no acquire fence in the readers, no release publication).
#[derive(Debug)]
pub struct Weakened<M>(pub M);

// SAFETY: forwards every index to `M`, which upholds the trait's guarantees; only the
// orderings are weakened, which the trait allows for broken twins (the protocol may then
// fail, never cause undefined behaviour: all accesses stay atomic).
unsafe impl<M: WordMemory> WordMemory for Weakened<M> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, i: usize, _: Ordering) -> u64 {
        self.0.load(i, Ordering::Relaxed)
    }
    fn store(&self, i: usize, v: u64, _: Ordering) {
        self.0.store(i, v, Ordering::Relaxed)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        _: Ordering,
        _: Ordering,
    ) -> Result<u64, u64> {
        self.0
            .compare_exchange(i, current, new, Ordering::Relaxed, Ordering::Relaxed)
    }
    fn fence(&self, _: Ordering) {}
}

impl<M: Image> Image for Weakened<M> {
    fn image(&self) -> Vec<u8> {
        self.0.image()
    }
}

/// Broken twin "eviction after the data stores": stores of 0 into descriptor seq words (the
/// evictions) are held back and land just before the writer's next `Release` store (the
/// publication of the next entry), i.e. after the payload, tail and descriptor field stores.
/// The writer's own loads of a held-back word see the 0 (store forwarding).
#[derive(Debug)]
pub struct LateEviction<M> {
    inner: M,
    layout: Layout,
    pending: Mutex<Vec<(usize, loom::thread::ThreadId)>>,
}

impl<M> LateEviction<M> {
    /// Wraps `inner`, whose region has `layout`.
    pub fn new(inner: M, layout: Layout) -> Self {
        LateEviction {
            inner,
            layout,
            pending: Mutex::new(Vec::new()),
        }
    }
}

impl<M: WordMemory> LateEviction<M> {
    fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        for (w, _) in pending {
            self.inner.store(w, 0, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every index to `M`; held-back stores are performed later on the same
// words, so every access stays an atomic access of a valid word.
unsafe impl<M: WordMemory> WordMemory for LateEviction<M> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        let me = loom::thread::current().id();
        let held = self
            .pending
            .lock()
            .unwrap()
            .iter()
            .any(|&(w, t)| w == i && t == me);
        if held {
            0
        } else {
            self.inner.load(i, order)
        }
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        if v == 0 && self.layout.is_seq_word(i) && order != Ordering::Release {
            let me = loom::thread::current().id();
            self.pending.lock().unwrap().push((i, me));
            return;
        }
        if order == Ordering::Release {
            self.flush();
        }
        self.inner.store(i, v, order)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self.flush();
        self.inner
            .compare_exchange(i, current, new, success, failure)
    }
    fn fence(&self, order: Ordering) {
        self.inner.fence(order)
    }
}

impl<M: Image> Image for LateEviction<M> {
    fn image(&self) -> Vec<u8> {
        self.inner.image()
    }
}

/// Broken twin "claim by load-then-store": every compare-exchange is a load, a compare and a
/// separate store — two claimants can both load 0 and both store their id.
#[derive(Debug)]
pub struct LoadThenStore<M>(pub M);

// SAFETY: forwards every index to `M`, which upholds the trait; the compare-exchange is split
// into a load and a store of the same word (a broken twin: still only atomic accesses).
unsafe impl<M: WordMemory> WordMemory for LoadThenStore<M> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.0.load(i, order)
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.0.store(i, v, order)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        _: Ordering,
        _: Ordering,
    ) -> Result<u64, u64> {
        // Acquire/Release: this twin is broken only in not being atomic, not in its orderings.
        let found = self.0.load(i, Ordering::Acquire);
        if found != current {
            return Err(found);
        }
        self.0.store(i, new, Ordering::Release);
        Ok(found)
    }
    fn fence(&self, order: Ordering) {
        self.0.fence(order)
    }
}

/// Broken twin "release by plain store": a compare-exchange to 0 (a claim's release, a
/// reclaim) stores 0 whatever the word holds — a holder whose claim was reclaimed frees the
/// next holder's claim.
#[derive(Debug)]
pub struct PlainRelease<M>(pub M);

// SAFETY: forwards every index to `M`, which upholds the trait; only the compare-exchange to 0
// becomes a store of the same word (a broken twin: still only atomic accesses).
unsafe impl<M: WordMemory> WordMemory for PlainRelease<M> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.0.load(i, order)
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.0.store(i, v, order)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        if new != 0 {
            return self.0.compare_exchange(i, current, new, success, failure);
        }
        // Release: broken only in not comparing.
        self.0.store(i, 0, Ordering::Release);
        Ok(current)
    }
    fn fence(&self, order: Ordering) {
        self.0.fence(order)
    }
}

/// Broken twin "release without Release": a compare-exchange to 0 (a claim's release, a
/// reclaim) is `Relaxed` — the next claimant's `Acquire` take then synchronises with nothing.
#[derive(Debug)]
pub struct RelaxedRelease<M>(pub M);

// SAFETY: forwards every access to `M`, which upholds the trait; only an ordering is weakened
// (a broken twin: still only atomic accesses).
unsafe impl<M: WordMemory> WordMemory for RelaxedRelease<M> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.0.load(i, order)
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.0.store(i, v, order)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        let success = if new == 0 { Ordering::Relaxed } else { success };
        self.0.compare_exchange(i, current, new, success, failure)
    }
    fn fence(&self, order: Ordering) {
        self.0.fence(order)
    }
}

/// A writer that stops at an arbitrary point: the first `budget` stores land, every later
/// one is silently dropped (the process died there; nothing it does afterwards reaches the
/// region). Records the highest seq it published.
///
/// `M` is a pointer to the memory (`&[AtomicU64]`, `Arc<LoomWords>`), so the region outlives
/// the dead writer and can be recovered.
#[derive(Debug)]
pub struct Crashing<M> {
    inner: M,
    layout: Layout,
    budget: usize,
    done: AtomicUsize,
    published: AtomicU64,
}

impl<M> Crashing<M> {
    /// Wraps `inner` (a region with `layout`), letting `budget` stores through.
    pub fn new(inner: M, layout: Layout, budget: usize) -> Self {
        Crashing {
            inner,
            layout,
            budget,
            done: AtomicUsize::new(0),
            published: AtomicU64::new(0),
        }
    }

    /// Stores attempted so far (landed or dropped).
    pub fn attempted(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// `true` once a store has been dropped.
    pub fn crashed(&self) -> bool {
        self.attempted() > self.budget
    }

    /// The highest seq whose publication landed (0 if none).
    pub fn max_published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn admit(&self, i: usize, v: u64) -> bool {
        let n = self.done.fetch_add(1, Ordering::Relaxed);
        let ok = n < self.budget;
        if ok && v != 0 && self.layout.is_seq_word(i) {
            self.published.fetch_max(v, Ordering::Relaxed);
        }
        ok
    }
}

// SAFETY: forwards every index to the pointee, which upholds the trait's guarantees (its
// length is fixed for as long as the pointer lives); dropping a store performs no access.
unsafe impl<M> WordMemory for Crashing<M>
where
    M: Deref,
    M::Target: WordMemory,
{
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.inner.load(i, order)
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        if self.admit(i, v) {
            self.inner.store(i, v, order)
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
        if self.admit(i, new) {
            self.inner
                .compare_exchange(i, current, new, success, failure)
        } else {
            // The process is dead from here on: it may believe the compare-exchange landed
            // (its claim taken, say); nothing it does later lands either.
            Ok(current)
        }
    }
    fn fence(&self, order: Ordering) {
        self.inner.fence(order)
    }
}
