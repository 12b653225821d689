//! Running models: [`explore`] counts and times the interleavings of a sound model;
//! [`expect_violation`] checks that a broken twin fails with the expected assertion.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
