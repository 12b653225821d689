//! Planning: a dry run of a scenario on plain memory, to find the seed image, the words the
//! concurrent phase stores (they become loom atomics) and every descriptor committed.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shmsnap_core::format::desc;
use shmsnap_core::{Descriptor, Layout, Region, WordMemory};

/// One store the writer made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    /// Word index.
    pub word: usize,
    /// Value stored.
    pub value: u64,
    /// The ordering it was stored with.
    pub order: Ordering,
}

/// A plain word memory that records every store (the dry run's memory).
#[derive(Debug)]
pub struct Recording {
    words: Vec<AtomicU64>,
    trace: RefCell<Vec<Store>>,
}

impl Recording {
    fn new(seed: &[u64]) -> Self {
        Recording {
            words: seed.iter().map(|&v| AtomicU64::new(v)).collect(),
            trace: RefCell::new(Vec::new()),
        }
    }

    fn values(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }
}

// SAFETY: forwards to a Vec of `AtomicU64` whose length never changes; every index below
// `len()` is an aligned atomic word; out-of-range indices panic.
unsafe impl WordMemory for Recording {
    fn len(&self) -> usize {
        self.words.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.words[i].load(order)
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self.trace.borrow_mut().push(Store {
            word: i,
            value: v,
            order,
        });
        self.words[i].store(v, order)
    }
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        let r = self.words[i].compare_exchange(current, new, success, failure);
        if r.is_ok() {
            self.trace.borrow_mut().push(Store {
                word: i,
                value: new,
                order: success,
            });
        }
        r
    }
    fn fence(&self, order: Ordering) {
        std::sync::atomic::fence(order)
    }
}

/// What a model needs to know about its scenario, found by one sequential dry run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The region's layout.
    pub layout: Layout,
    /// The region's words after the setup phase: the state every model iteration starts from.
    pub seed: Arc<[u64]>,
    /// Words stored during the concurrent phase (sorted): these become loom atomics.
    pub loom_words: Vec<usize>,
    /// Every descriptor published in the setup or the concurrent phase, in seq order.
    pub committed: Vec<Descriptor>,
    /// Seqs published in the setup phase (before any model thread starts).
    pub setup_seqs: Vec<u64>,
    /// The stores of the concurrent phase, in program order.
    pub phase_trace: Vec<Store>,
}

impl Plan {
    /// The committed descriptor of `seq`, if it was committed.
    pub fn committed(&self, seq: u64) -> Option<Descriptor> {
        self.committed.iter().copied().find(|d| d.seq == seq)
    }

    /// The highest seq committed in the whole scenario.
    pub fn max_seq(&self) -> u64 {
        self.committed.iter().map(|d| d.seq).max().unwrap_or(0)
    }

    /// `true` if word `i` is the seq word of some descriptor.
    pub fn is_seq_word(&self, i: usize) -> bool {
        self.layout.is_seq_word(i)
    }
}

/// Descriptors published by a trace: each Release store of a non-zero value into a seq word,
/// with the offset and length stored into that descriptor last before it.
fn published(layout: &Layout, trace: &[Store]) -> Vec<Descriptor> {
    let mut out = Vec::new();
    for (k, s) in trace.iter().enumerate() {
        if s.value != 0 && layout.is_seq_word(s.word) {
            let last = |w: usize| {
                trace[..k]
                    .iter()
                    .rev()
                    .find(|t| t.word == w)
                    .map(|t| t.value)
                    .expect("offset and length are stored before seq")
            };
            out.push(Descriptor {
                seq: s.value,
                offset: last(s.word - desc::SEQ + desc::OFFSET),
                length: last(s.word - desc::SEQ + desc::LENGTH),
            });
        }
    }
    out
}

/// Dry-runs a scenario: `setup` runs on a zeroed memory of `words` words (typically
/// `Writer::init` and warm-up commits), then `phase` runs on the result (the code the model
/// will run concurrently, including `Writer::attach`).
///
/// # Panics
///
/// If the setup does not configure a region, or the scenario commits a seq twice.
pub fn plan(words: usize, setup: impl FnOnce(&Recording), phase: impl FnOnce(&Recording)) -> Plan {
    let zero = vec![0u64; words];
    let rec = Recording::new(&zero);
    setup(&rec);
    let layout = *Region::open(&rec)
        .expect("setup configures the region")
        .layout();
    let setup_trace = rec.trace.take();
    let seed: Arc<[u64]> = rec.values().into();
    let rec = Recording::new(&seed);
    phase(&rec);
    let phase_trace = rec.trace.take();
    let mut loom_words: Vec<usize> = phase_trace.iter().map(|s| s.word).collect();
    loom_words.sort_unstable();
    loom_words.dedup();
    let setup_pub = published(&layout, &setup_trace);
    let mut committed = setup_pub.clone();
    committed.extend(published(&layout, &phase_trace));
    let mut seqs: Vec<u64> = committed.iter().map(|d| d.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), committed.len(), "a seq was committed twice");
    Plan {
        layout,
        seed,
        loom_words,
        committed,
        setup_seqs: setup_pub.iter().map(|d| d.seq).collect(),
        phase_trace,
    }
}
