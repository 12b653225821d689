//! loom models of the shmsnap protocol, running `shmsnap-core`'s real code.
//!
//! The protocol is written once over [`WordMemory`]; this crate implements that trait with
//! loom's atomics and loom's [`fence`](loom::sync::atomic::fence) ([`LoomWords`]), so the
//! models in `tests/` check the code that ships. Nothing of the protocol is re-implemented
//! here: writer, host and reader are core's functions.
//!
//! # Contents
//!
//! - [`plan`]: runs a scenario once on plain memory to find the seed image, the words the
//!   concurrent phase stores (they become loom atomics) and every descriptor committed.
//! - [`LoomWords`]: the hybrid word memory (loom atomics where the protocol races, constant
//!   plain words elsewhere) and its word-by-word host copy ([`Image`]).
//! - Broken-twin wrappers: [`Weakened`] (every ordering `Relaxed`, no fences),
//!   [`LateEviction`] (evictions land after the data stores), [`Crashing`] (the writer stops
//!   at its N-th store).
//! - [`snapshot`]: the host's pre / copy / post / retain sandwich, sound or broken
//!   ([`Host::PreAsPost`]).
//! - [`explore`] and [`expect_violation`]: run a model, count interleavings, time it; run a
//!   broken twin and check that it fails with the expected assertion.
//!
//! # Why a hybrid memory is sound
//!
//! The smallest region is header page + descriptor page + data page (+ tail): over 1536
//! words. Making every word a loom atomic and copying all of them would only add branch
//! points: a word that no thread stores while the model runs has exactly one value in every
//! execution, so a plain read of it is indistinguishable from a loom load. [`plan`] finds the
//! words the writer stores during the concurrent phase by running the same writer code once
//! on a recording memory (the writer is the only thread that stores, and it reads only its
//! own stores, so it stores the same words in every interleaving); those words become loom
//! atomics. Every other word is a constant seeded from the image before the model; a store to
//! one panics ([`NON_LOOM_STORE`]), so an incomplete word set cannot go unnoticed.

pub mod triple;

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmsnap_core::model::check_image_payloads;
use shmsnap_core::{
    image_entries, read_post, read_pre, retain, Descriptor, Layout, Region, Retained, WordMemory,
};

/// Panic message of a store into a word the model did not make a loom atomic.
pub const NON_LOOM_STORE: &str = "store into a constant (non-loom) word";
/// Assertion: a kept entry's bytes in the image were never committed under its seq.
pub const TORN: &str = "VIOLATION torn entry";
/// Assertion: a descriptor that was never committed (seq, offset, length together).
pub const NEVER_COMMITTED: &str = "VIOLATION never-committed descriptor";
/// Assertion: an entry evicted before the copy began survived in the image.
pub const EVICTED_SURVIVES: &str = "VIOLATION evicted entry survives";
/// Assertion: a tail unit referred to by a kept entry holds another commit's bytes.
pub const UNIT_TORN: &str = "VIOLATION unit of a kept entry holds bytes of another commit";
/// Assertion: a payload read returned bytes not committed under the seq it reported.
pub const PAYLOAD_TORN: &str = "VIOLATION read_payload returned foreign bytes";
/// Assertion: a recovered or restored region could repeat a published seq.
pub const SEQ_REPEAT: &str = "VIOLATION next seq does not exceed a published seq";
/// Assertion: recovery left the region in an invalid state.
pub const RECOVERY: &str = "VIOLATION recovery";

/// Number of the header's hint words: next_seq, data_head, epoch live at words 16..19.
pub const HINT_WORDS: core::ops::Range<usize> = 16..19;

// ---------------------------------------------------------------------------------------------
// Planning: a dry run on plain memory.
// ---------------------------------------------------------------------------------------------

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
    fn swap(&self, i: usize, v: u64, order: Ordering) -> u64 {
        self.trace.borrow_mut().push(Store {
            word: i,
            value: v,
            order,
        });
        self.words[i].swap(v, order)
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
        is_seq_word(&self.layout, i)
    }
}

/// `true` if word `i` is the seq word of a descriptor of `layout`.
pub fn is_seq_word(layout: &Layout, i: usize) -> bool {
    let first = (layout.desc_offset / 8) as usize;
    let end = first + 4 * layout.entries as usize;
    (first..end).contains(&i) && (i - first).is_multiple_of(4)
}

/// Descriptors published by a trace: each Release store of a non-zero value into a seq word,
/// with the offset and length stored into that descriptor last before it.
fn published(layout: &Layout, trace: &[Store]) -> Vec<Descriptor> {
    let mut out = Vec::new();
    for (k, s) in trace.iter().enumerate() {
        if s.value != 0 && is_seq_word(layout, s.word) {
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
                offset: last(s.word + 1),
                length: last(s.word + 2),
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

// ---------------------------------------------------------------------------------------------
// The loom word memory.
// ---------------------------------------------------------------------------------------------

/// A host's word-by-word copy of a live memory.
pub trait Image {
    /// Loads every word in address order (`Relaxed`) and returns the little-endian bytes.
    fn image(&self) -> Vec<u8>;
}

const CONSTANT: u32 = u32::MAX;

/// The loom implementation of [`WordMemory`]: loom atomics for the words the model's writer
/// stores, constants for every other word (see the crate docs for why that is sound).
///
/// Create it inside the loom model (loom atomics belong to one execution).
#[derive(Debug)]
pub struct LoomWords {
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
        let mut words: Vec<usize> = plan.loom_words.iter().chain(extra).copied().collect();
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
// swaps and CASes forward to loom's atomics with the orderings given, and `fence` to loom's
// fence, so loom checks the protocol under the C++ memory model.
unsafe impl WordMemory for LoomWords {
    fn len(&self) -> usize {
        self.seed.len()
    }
    fn load(&self, i: usize, order: Ordering) -> u64 {
        match self.atom(i) {
            Some(a) => a.load(order),
            None => self.seed[i],
        }
    }
    fn store(&self, i: usize, v: u64, order: Ordering) {
        match self.atom(i) {
            Some(a) => a.store(v, order),
            None => self.constant(i),
        }
    }
    fn swap(&self, i: usize, v: u64, order: Ordering) -> u64 {
        match self.atom(i) {
            Some(a) => a.swap(v, order),
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
                None => v,
            };
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Broken-twin wrappers.
// ---------------------------------------------------------------------------------------------

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
    fn swap(&self, i: usize, v: u64, _: Ordering) -> u64 {
        self.0.swap(i, v, Ordering::Relaxed)
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
        if v == 0 && is_seq_word(&self.layout, i) && order != Ordering::Release {
            let me = loom::thread::current().id();
            self.pending.lock().unwrap().push((i, me));
            return;
        }
        if order == Ordering::Release {
            self.flush();
        }
        self.inner.store(i, v, order)
    }
    fn swap(&self, i: usize, v: u64, order: Ordering) -> u64 {
        self.flush();
        self.inner.swap(i, v, order)
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
        if ok && v != 0 && is_seq_word(&self.layout, i) {
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
    fn swap(&self, i: usize, v: u64, order: Ordering) -> u64 {
        if self.admit(i, v) {
            self.inner.swap(i, v, order)
        } else {
            self.inner.load(i, order)
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
            Err(self.inner.load(i, failure))
        }
    }
    fn fence(&self, order: Ordering) {
        self.inner.fence(order)
    }
}

// ---------------------------------------------------------------------------------------------
// The host.
// ---------------------------------------------------------------------------------------------

/// Which host runs the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The real sandwich: pre, copy, post, retain(pre, post).
    Sound,
    /// Broken twin: passes `pre` as `post` (no post check).
    PreAsPost,
}

/// The outcome of one host snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// The copied image after `retain`.
    pub image: Vec<u8>,
    /// Descriptors read before the copy.
    pub pre: Vec<Descriptor>,
    /// Descriptors read after the copy (really read, even by the broken host).
    pub post: Vec<Descriptor>,
    /// What `retain` kept.
    pub retained: Retained,
    /// The value `before_copy` returned.
    pub probe: u64,
}

/// One host snapshot of the live region in `mem`, with core's `read_pre`, a word-by-word copy,
/// core's `read_post`, a `Relaxed` read of the live `next_seq` hint, and core's `retain`.
/// `before_copy` runs between the pre read and the copy (an instrumentation probe).
///
/// # Panics
///
/// If the region's header cannot be read or `retain` rejects the image (the models never
/// change the header, so either is a bug in the model or in core).
pub fn snapshot<M: WordMemory + Image>(
    mem: &M,
    host: Host,
    before_copy: impl FnOnce() -> u64,
) -> Snapshot {
    let region = Region::open(mem).expect("the live header is valid");
    let layout = *region.layout();
    let e = layout.entries as usize;
    let mut pre_buf = vec![Descriptor::EMPTY; e];
    let mut post_buf = vec![Descriptor::EMPTY; e];
    let pre = read_pre(&region, &mut pre_buf).unwrap().slots().to_vec();
    let probe = before_copy();
    let mut image = mem.image();
    let post = read_post(&region, &mut post_buf).unwrap().slots().to_vec();
    let live_next_seq = region.hints().next_seq;
    let post_used = match host {
        Host::Sound => &post,
        Host::PreAsPost => &pre,
    };
    let retained = retain(&mut image, &layout, &pre, post_used, live_next_seq)
        .expect("retain accepts an image of an unchanged layout");
    Snapshot {
        image,
        pre,
        post,
        retained,
        probe,
    }
}

/// Checks the kept entries of a retained image: each is a descriptor that was committed
/// exactly so, and carries exactly the payload committed under its seq.
///
/// # Panics
///
/// With [`NEVER_COMMITTED`] or [`TORN`].
pub fn check_kept(plan: &Plan, image: &[u8]) {
    for d in image_entries(image, &plan.layout) {
        assert!(
            plan.committed(d.seq) == Some(d),
            "{NEVER_COMMITTED}: image keeps {d:?}; committed: {:?}",
            plan.committed
        );
    }
    if let Err(e) = check_image_payloads(image, &plan.layout) {
        panic!("{TORN}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Running models.
// ---------------------------------------------------------------------------------------------

/// What a model run explored.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Executions (interleavings) loom ran.
    pub iterations: usize,
    /// Wall-clock time.
    pub elapsed: Duration,
}

fn builder(bound: Option<usize>) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // An explicit LOOM_MAX_PREEMPTIONS in the environment wins (to explore deeper by hand).
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = bound;
    }
    b.max_branches = 100_000;
    b
}

/// The bound a run really uses, for printing.
fn bound_name(bound: Option<usize>) -> String {
    match std::env::var("LOOM_MAX_PREEMPTIONS") {
        Ok(v) => format!("{v} (from LOOM_MAX_PREEMPTIONS)"),
        Err(_) => bound.map_or("none".into(), |b| b.to_string()),
    }
}

/// Runs `model` under loom with the given preemption bound, counting the interleavings
/// explored, and prints `name`, the count, the time and the bound.
pub fn explore<F>(name: &str, bound: Option<usize>, model: F) -> Stats
where
    F: Fn() + Send + Sync + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let start = Instant::now();
    builder(bound).check(move || {
        c.fetch_add(1, Ordering::Relaxed);
        model()
    });
    let stats = Stats {
        iterations: count.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    };
    println!(
        "loom model {name}: {} interleavings, {:.2?}, preemption bound {}",
        stats.iterations,
        stats.elapsed,
        bound_name(bound)
    );
    stats
}

/// Runs a broken twin under loom and checks that some interleaving fails with a panic whose
/// message contains `expected` (so it fails for the right reason). Prints after how many
/// interleavings it was caught.
///
/// # Panics
///
/// If loom explores every interleaving without a failure, or the failure is another one.
pub fn expect_violation<F>(name: &str, bound: Option<usize>, expected: &str, model: F) -> Stats
where
    F: Fn() + Send + Sync + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let start = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder(bound).check(move || {
            c.fetch_add(1, Ordering::Relaxed);
            model()
        })
    }));
    let stats = Stats {
        iterations: count.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    };
    let payload = match result {
        Ok(()) => panic!(
            "broken twin {name} was NOT caught: loom explored {} interleavings without a violation",
            stats.iterations
        ),
        Err(p) => p,
    };
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains(expected),
        "broken twin {name} failed for another reason than `{expected}`: {msg}"
    );
    println!(
        "loom twin {name}: caught ({expected}) after {} interleavings, {:.2?}, preemption bound {}",
        stats.iterations,
        stats.elapsed,
        bound_name(bound)
    );
    stats
}

// ---------------------------------------------------------------------------------------------
// Recovery.
// ---------------------------------------------------------------------------------------------

/// Attaches a writer to `mem` (a region a writer left, or a restored image) and checks the
/// recovered state: `check_invariants` passes, every valid entry is a committed descriptor
/// with exactly its committed payload, and the next seq exceeds `published`. Returns the
/// writer, ready to commit.
///
/// # Panics
///
/// With [`RECOVERY`], [`NEVER_COMMITTED`], [`TORN`] or [`SEQ_REPEAT`].
pub fn check_recovery<'m, M: WordMemory + ?Sized>(
    plan: &Plan,
    mem: &'m M,
    published: u64,
) -> shmsnap_core::Writer<'m, M> {
    let w = shmsnap_core::Writer::attach(mem)
        .unwrap_or_else(|e| panic!("{RECOVERY}: attach failed: {e}"));
    if let Err(e) = w.check_invariants() {
        panic!("{RECOVERY}: invariants after attach: {e}");
    }
    for d in w.region().entries() {
        assert!(
            plan.committed(d.seq) == Some(d),
            "{NEVER_COMMITTED}: recovered {d:?}; committed: {:?}",
            plan.committed
        );
        let mut buf = vec![0u8; d.length as usize];
        w.region()
            .read_payload(&d, &mut buf)
            .unwrap_or_else(|e| panic!("{RECOVERY}: entry {} unreadable: {e}", d.seq));
        assert!(
            buf == shmsnap_core::model::payload_for(d.seq, buf.len()),
            "{TORN}: recovered entry {} has foreign bytes",
            d.seq
        );
    }
    assert!(
        w.next_seq() > published,
        "{SEQ_REPEAT}: next seq {} after recovery, but seq {published} was published",
        w.next_seq()
    );
    w
}
