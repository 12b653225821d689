//! A writer's memory that records every store in order, for the interleaving simulators
//! (`core/tests/interleaving.rs`, `core/tests/incremental.rs`): the real writer runs against a
//! [`Recording`] first, and the simulators then replay its [`Store`]s between the host's loads
//! through a [`Replay`].

use std::cell::{Cell, RefCell};
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
    /// The writer's only compare-exchanges are on its claim word (taken at attach, released
    /// on drop): single-threaded here, so a load, a compare and — on success — a recorded
    /// store.
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        _: Ordering,
    ) -> Result<u64, u64> {
        let found = self.shadow[i].load(Ordering::Relaxed);
        if found != current {
            return Err(found);
        }
        let order = match success {
            Ordering::Release | Ordering::AcqRel | Ordering::SeqCst => Ordering::Release,
            _ => Ordering::Relaxed,
        };
        self.store(i, new, order);
        Ok(found)
    }
    fn fence(&self, _: Ordering) {}
}

/// How one store of a [`Replay`]'s trace lands ([`Replay::with_landing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// Through the tracked mapping: it lands and marks its page written.
    Tracked,
    /// Around the page tracker (another mapping, a `pwrite`, a forked child's store): it
    /// lands and marks nothing.
    Untracked,
    /// Refused (its writer could not get at the region): it does not land.
    Refused,
}

/// Decides how store `n` of the trace lands, when it is its turn.
pub type LandingFn<'a> = &'a dyn Fn(usize) -> Landing;

/// The live region as a simulated host sees it: before each host load (and each other host
/// step the simulator takes, [`Replay::step`]), the schedule lets the writer stores it puts
/// there land. With [`Replay::with_pages`], every landing store also marks its page *written*
/// (the incremental simulator's page tracker); [`Replay::with_landing`] lets some stores
/// bypass the tracker or be refused.
pub struct Replay<'a> {
    live: Vec<AtomicU64>,
    trace: &'a [Store],
    /// Index of the next writer store to land.
    next: Cell<usize>,
    /// Host steps to take before each writer store (`gaps[n]` before store `n`; 1 past the end).
    gaps: &'a [u16],
    gap_left: Cell<u16>,
    /// Words per page of the marks; 0: no page marks.
    words_per_page: usize,
    /// Per page: a store landed on it since its mark was last taken. Invariant: a page whose
    /// live bytes changed through a [`Landing::Tracked`] store since [`Replay::take_mark`] last
    /// cleared it is marked.
    written: RefCell<Vec<bool>>,
    /// How each store lands; `None`: every store is [`Landing::Tracked`].
    landing: Option<LandingFn<'a>>,
}

impl std::fmt::Debug for Replay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("words", &self.live.len())
            .field("next", &self.next.get())
            .field("stores", &self.trace.len())
            .field("landing", &self.landing.is_some())
            .finish()
    }
}

impl<'a> Replay<'a> {
    /// The memory `live`, with `trace` to land between host steps as `gaps` says.
    pub fn new(live: Vec<AtomicU64>, trace: &'a [Store], gaps: &'a [u16]) -> Self {
        Replay {
            live,
            trace,
            next: Cell::new(0),
            gaps,
            gap_left: Cell::new(gaps.first().copied().unwrap_or(0)),
            words_per_page: 0,
            written: RefCell::new(Vec::new()),
            landing: None,
        }
    }

    /// Asks `landing` how each store lands, when its turn comes (the decision may depend on
    /// what the host did meanwhile, e.g. a seal).
    #[must_use]
    pub fn with_landing(mut self, landing: LandingFn<'a>) -> Self {
        self.landing = Some(landing);
        self
    }

    /// Also marks the page (of `words_per_page` words) each landing store falls on.
    #[must_use]
    pub fn with_pages(mut self, words_per_page: usize) -> Self {
        let pages = self.live.len().div_ceil(words_per_page.max(1));
        self.words_per_page = words_per_page;
        self.written = RefCell::new(vec![false; pages]);
        self
    }

    /// One host step: lets the writer stores the schedule puts here land.
    pub fn step(&self) {
        loop {
            let n = self.next.get();
            if n >= self.trace.len() {
                return;
            }
            if self.gap_left.get() > 0 {
                self.gap_left.set(self.gap_left.get() - 1);
                return;
            }
            let s = self.trace[n];
            let how = self.landing.map_or(Landing::Tracked, |f| f(n));
            if how != Landing::Refused {
                self.live[s.word].store(s.value, Ordering::Relaxed);
            }
            if how == Landing::Tracked {
                if let Some(page) = s.word.checked_div(self.words_per_page) {
                    self.written.borrow_mut()[page] = true;
                }
            }
            self.next.set(n + 1);
            self.gap_left
                .set(self.gaps.get(n + 1).copied().unwrap_or(1));
        }
    }

    /// Reports and clears page `page`'s mark in one step (a scan's report-and-re-protect).
    pub fn take_mark(&self, page: usize) -> bool {
        std::mem::take(&mut self.written.borrow_mut()[page])
    }
}

// SAFETY: forwards to a Vec of AtomicU64 of fixed length; orderings are irrelevant in this
// single-threaded, sequentially consistent simulation.
unsafe impl WordMemory for Replay<'_> {
    fn len(&self) -> usize {
        self.live.len()
    }
    fn load(&self, i: usize, _: Ordering) -> u64 {
        self.step();
        self.live[i].load(Ordering::Relaxed)
    }
    fn store(&self, _: usize, _: u64, _: Ordering) {
        unreachable!("the host never stores into the live region")
    }
    fn compare_exchange(
        &self,
        _: usize,
        _: u64,
        _: u64,
        _: Ordering,
        _: Ordering,
    ) -> Result<u64, u64> {
        unreachable!("the host never stores into the live region")
    }
    fn fence(&self, _: Ordering) {}
}
