//! The word memory the Python `Writer` commits through: core's `[AtomicU64]`, except that a
//! payload is stored with `memcpy` (`store_le_bytes_exclusive`) instead of word by word.
//!
//! Core stores a payload with `Relaxed` word stores because a reader *in the same process* may
//! read the ring concurrently through its seqlock, and a plain copy would race with it
//! (benches/README.md, change request 1). In this binding no such reader exists: every access
//! to the region's data ring in this process is a call of the one `Writer` (its reads too:
//! `newest()`), made with the GIL held and through PyO3's exclusive borrow of the writer; the
//! calls that run without the GIL (`wait_persisted`, the asyncio helper) touch only the header
//! page's status words, which no payload store reaches; and no view of region memory is ever
//! handed to Python. So the precondition of `store_le_bytes_exclusive` — no other thread of
//! this process accesses the words during the call — holds for every payload store. Other
//! processes (the host) are outside Rust's memory model; the protocol's argument needs no
//! atomicity of payload words (DESIGN §5.3: the host copies them with the kernel).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::WordMemory;

/// `[AtomicU64]` whose `store_le_bytes` is the exclusive `memcpy` (module docs).
#[repr(transparent)]
pub(crate) struct WriterWords([AtomicU64]);

impl WriterWords {
    /// Views `words` as the writer's word memory.
    pub(crate) fn new(words: &[AtomicU64]) -> &WriterWords {
        let ptr = std::ptr::from_ref(words) as *const WriterWords;
        // SAFETY: `WriterWords` is a `repr(transparent)` wrapper of `[AtomicU64]`, so the
        // (fat) pointer cast keeps address, length and layout; the borrow's lifetime is kept.
        unsafe { &*ptr }
    }
}

// SAFETY: every method forwards to `[AtomicU64]`'s implementation with the same index and
// orderings, which upholds the trait's guarantees, except `store_le_bytes`, which makes the
// same stores through `store_le_bytes_exclusive` — whose precondition holds for every caller
// in this crate (module docs); the trait's safety bullets (length, valid aligned words,
// load/store/compare_exchange/fence semantics) are unchanged.
unsafe impl WordMemory for WriterWords {
    #[inline]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.0.load(i, order)
    }
    #[inline]
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.0.store(i, v, order)
    }
    #[inline]
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self.0.compare_exchange(i, current, new, success, failure)
    }
    #[inline]
    fn fence(&self, order: Ordering) {
        self.0.fence(order)
    }
    #[inline]
    fn store_le_bytes(&self, first: usize, bytes: &[u8]) {
        // SAFETY: no other thread of this process accesses these words during the call
        // (module docs).
        unsafe { self.0.store_le_bytes_exclusive(first, bytes) }
    }
    #[inline]
    unsafe fn store_le_bytes_exclusive(&self, first: usize, bytes: &[u8]) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.0.store_le_bytes_exclusive(first, bytes) }
    }
}
