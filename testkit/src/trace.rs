//! A writer's memory that records every store in order, for the interleaving simulators
//! (`core/tests/interleaving.rs`, `core/tests/incremental.rs`): the real writer runs against a
//! [`Recording`] first, and the simulators then replay its [`Store`]s between the host's loads.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::WordMemory;

/// One recorded writer store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    /// The word stored to.
    pub word: usize,
    /// The value stored.
    pub value: u64,
    /// Whether the store was `Release` (the writer's publishing store of a seq).
    pub release: bool,
}

/// The writer's memory: a private shadow that records every store in order.
#[derive(Debug)]
pub struct Recording {
    /// The memory as the writer sees it (every recorded store applied).
    pub shadow: Vec<AtomicU64>,
    /// Every store, in program order.
    pub trace: RefCell<Vec<Store>>,
}

impl Recording {
    /// A zeroed recording memory of `bytes` bytes (rounded up to words).
    pub fn zeroed(bytes: usize) -> Self {
        Recording {
            shadow: crate::zeroed_words(bytes),
            trace: RefCell::new(Vec::new()),
        }
    }
}

// SAFETY: forwards to a Vec of AtomicU64 of fixed length; every index is bounds-checked by the
// slice indexing (a panic in a test, never undefined behaviour).
unsafe impl WordMemory for Recording {
    fn len(&self) -> usize {
        self.shadow.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.shadow[i].load(order)
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.trace.borrow_mut().push(Store {
            word: i,
            value: v,
            release: order == Ordering::Release,
        });
        self.shadow[i].store(v, order)
    }
    fn compare_exchange(
        &self,
        _: usize,
        _: u64,
        _: u64,
        _: Ordering,
        _: Ordering,
    ) -> Result<u64, u64> {
        unimplemented!("the queue writer does not use CAS")
    }
    fn fence(&self, _: Ordering) {}
}
