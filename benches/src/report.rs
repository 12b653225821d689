//! The interleaved runner of the `compare` report and the machine description.
//!
//! Noise on a shared 2-core machine comes in bursts (another engineer's build), so sides of a
//! comparison run alternately (A B A B …) in short batches and each side's *median* batch is
//! reported; the ratio of two medians taken over the same stretch of time is far more stable
//! than either absolute figure.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::Bench;

/// Median of per-operation times, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Median {
    /// Median nanoseconds per operation over the rounds.
    pub ns: f64,
    /// Operations per batch.
    pub iters: u64,
    /// Number of batches.
    pub rounds: usize,
}

/// Finds a batch size whose run takes about `target`.
pub fn calibrate(bench: &mut dyn Bench, target: Duration) -> u64 {
    let mut iters = 1u64;
    loop {
        let t = bench.run(iters);
        if t >= target / 4 || iters >= 1 << 30 {
            let per = t.as_secs_f64() / iters as f64;
            return ((target.as_secs_f64() / per.max(1e-12)) as u64).clamp(1, 1 << 32);
        }
        iters *= 4;
    }
}

/// Runs every bench alternately, `rounds` batches each; returns their medians in order.
///
/// `iters[i]` is the batch size of bench `i` (use [`calibrate`], or 1 for slow operations).
pub fn interleave(benches: &mut [&mut dyn Bench], iters: &[u64], rounds: usize) -> Vec<Median> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); benches.len()];
    for _ in 0..rounds {
        for (i, b) in benches.iter_mut().enumerate() {
            let t = b.run(iters[i]);
            samples[i].push(t.as_secs_f64() * 1e9 / iters[i] as f64);
        }
    }
    samples
        .into_iter()
        .zip(iters)
        .map(|(s, &iters)| Median {
            ns: median(s),
            iters,
            rounds,
        })
        .collect()
}

/// Calibrates every bench to about `batch`, then [`interleave`]s them.
pub fn compare(benches: &mut [&mut dyn Bench], batch: Duration, rounds: usize) -> Vec<Median> {
    let iters: Vec<u64> = benches.iter_mut().map(|b| calibrate(*b, batch)).collect();
    interleave(benches, &iters, rounds)
}

/// Median of a sample (mean of the middle two for an even count); NaN for none.
pub fn median(mut s: Vec<f64>) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The `q`-quantile (0..=1) of `s` by nearest rank (`NaN` for no samples): the value at or
/// below which a fraction `q` of the samples lie.
pub fn quantile(mut s: Vec<f64>, q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Formats nanoseconds with a unit a reader can compare at a glance.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Times one call of `f`.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// The machine a report ran on: CPU model and count, kernel, and the filesystem of `dir`.
pub fn machine(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let u = rustix::system::uname();
    let kernel = format!(
        "{} {} {}",
        u.sysname().to_string_lossy(),
        u.release().to_string_lossy(),
        u.machine().to_string_lossy()
    );
    format!(
        "{cores} cores ({cpu}), {kernel}, temp dir {} on {}",
        dir.display(),
        fs_type(dir)
    )
}

/// Name of the filesystem `dir` lives on (from `statfs`'s magic number).
pub fn fs_type(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        Ok(s) => match s.f_type as u64 {
            0xef53 => "ext2/3/4".into(),
            0x0102_1994 => "tmpfs".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683e => "btrfs".into(),
            0x794c_7630 => "overlayfs".into(),
            other => format!("fs magic {other:#x}"),
        },
        Err(e) => format!("unknown ({e})"),
    }
}

/// `true` if `dir` is on a memory filesystem, where `fdatasync` costs nothing and the
/// snapshot figures would mean little.
pub fn is_tmpfs(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok_and(|s| s.f_type as u64 == 0x0102_1994)
}
