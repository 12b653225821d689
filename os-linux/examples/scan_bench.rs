//! Costs of write tracking: registration (initial write-protect), `PAGEMAP_SCAN` per GiB at
//! 0 / 1 / 10 / 100 % of pages written, and the client's first store to a protected page (the
//! async fault) against a plain store to a writable page.
//!
//! ```text
//! cargo run -p shmsnap-linux --release --example scan_bench -- [MIB] [REPEATS]
//! ```
//!
//! One process plays both sides (it registers its own mapping and scans its own
//! `/proc/self/pagemap`: the same page-table walk a host does over a child). The region is a
//! memfd, fully touched through the mapping before registration. Medians of REPEATS runs
//! (default 5) over a MIB-sized region (default 256), printed per GiB. Every scan is checked
//! against the pages written (a wrong count aborts the run before any figure is printed).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::getpid;
use shmsnap_linux::track::{self, Advertisement, ScanQuery, Scanner, Tracker};
use shmsnap_linux::{Mapping, Memfd, Protection};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Pseudo-random distinct page indexes: a `frac` share of `pages`, in shuffled order.
fn pick(pages: u64, frac: f64, seed: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (0..pages).collect();
    let mut x = seed | 1;
    for i in (1..all.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        all.swap(i, (x % (i as u64 + 1)) as usize);
    }
    all.truncate(((pages as f64 * frac).round() as usize).max(1));
    all
}

/// One store per listed page; returns the time taken.
fn store(words: &[AtomicU64], wpp: usize, pages: &[u64], v: u64) -> Duration {
    let t = Instant::now();
    for &p in pages {
        words[p as usize * wpp].store(v, Ordering::Relaxed);
    }
    t.elapsed()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let repeats: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let len = mib * MIB;
    let page = track::page_size();
    let pages = len / page;
    let wpp = (page / 8) as usize;
    let per_gib = |d: Duration| d.as_secs_f64() * 1e3 * GIB / len as f64;

    let region = Memfd::create("scan-bench", len)?;
    region.seal_against_shrink()?;
    let map = Mapping::of_memfd(&region, Protection::ReadWrite)?;
    let words = map.words();
    for p in 0..pages as usize {
        words[p * wpp].store(1, Ordering::Relaxed); // fully touched, entries present
    }

    // Registration (UFFDIO_API + REGISTER + initial WRITEPROTECT of the whole range).
    let mut reg = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let tracker = Tracker::register(&map)?;
        reg.push(t.elapsed());
        drop(tracker); // unregisters, unprotects
    }
    let tracker = Tracker::register(&map)?;
    let advert = Advertisement {
        addr: tracker.addr(),
        len: tracker.len(),
        generation: 0,
    };
    let range = track::validate(&advert, getpid(), &region, len)?;
    let mut scanner = Scanner::open(getpid())?;
    println!("region {mib} MiB ({pages} pages of {page} B), {repeats} repeats, medians, per GiB");
    println!(
        "register + initial write-protect: {:8.2} ms/GiB",
        per_gib(median(reg))
    );

    println!(
        "{:>10} {:>18} {:>14} {:>14} {:>14}",
        "written", "query", "scan ms/GiB", "1st store ns", "plain ns"
    );
    for frac in [0.0, 0.01, 0.10, 1.0] {
        for query in [ScanQuery::WrittenOrUnknown, ScanQuery::WrittenOnly] {
            let (mut scans, mut faults, mut plains) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..repeats {
                scanner.scan_with(&range, query)?; // start clean
                let chosen = if frac == 0.0 {
                    Vec::new()
                } else {
                    pick(pages, frac, r as u64 + 7)
                };
                faults.push(store(words, wpp, &chosen, r as u64 + 2));
                plains.push(store(words, wpp, &chosen, r as u64 + 3));
                let t = Instant::now();
                let w = black_box(scanner.scan_with(&range, query)?);
                scans.push(t.elapsed());
                assert_eq!(
                    w.pages(),
                    chosen.len() as u64,
                    "scan missed or invented pages"
                );
            }
            let n = ((pages as f64 * frac).round() as u64).max(1) as f64;
            let ns = |d: Duration| {
                if frac == 0.0 {
                    0.0
                } else {
                    d.as_secs_f64() * 1e9 / n
                }
            };
            println!(
                "{:>9.0}% {:>18} {:>14.3} {:>14.1} {:>14.1}",
                frac * 100.0,
                format!("{query:?}"),
                per_gib(median(scans)),
                ns(median(faults)),
                ns(median(plains)),
            );
        }
    }
    drop(tracker);
    sparse(len, repeats)?;
    Ok(())
}

/// Worst case for the default query's output: every other page touched before registration,
/// so present and never-touched (marker) entries alternate and every page is its own run.
fn sparse(len: u64, repeats: usize) -> Result<(), Box<dyn std::error::Error>> {
    let page = track::page_size();
    let wpp = (page / 8) as usize;
    let region = Memfd::create("scan-bench-sparse", len)?;
    region.seal_against_shrink()?;
    let map = Mapping::of_memfd(&region, Protection::ReadWrite)?;
    for p in (0..(len / page) as usize).step_by(2) {
        map.words()[p * wpp].store(1, Ordering::Relaxed);
    }
    let tracker = Tracker::register(&map)?;
    let advert = Advertisement {
        addr: tracker.addr(),
        len: tracker.len(),
        generation: 0,
    };
    let range = track::validate(&advert, getpid(), &region, len)?;
    let mut scanner = Scanner::open(getpid())?;
    for query in [ScanQuery::WrittenOrUnknown, ScanQuery::WrittenOnly] {
        let mut scans = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            let w = black_box(scanner.scan_with(&range, query)?);
            scans.push(t.elapsed());
            assert_eq!(w.pages(), 0, "nothing was written");
        }
        let ms = median(scans).as_secs_f64() * 1e3 * GIB / len as f64;
        println!(
            "{:>10} {:>18} {:>14.3}   (every other page touched)",
            "0%",
            format!("{query:?}"),
            ms
        );
    }
    Ok(())
}
