//! Delta write and chain restore of a fully touched 256 MiB region, against raw references in
//! the same run.
//!
//! ```text
//! cargo run -p shmsnap-linux --release --example chain_bench -- [DIR] [ITERATIONS]
//! ```
//!
//! - **delta**: 1 % and 10 % of the region's pages (random) rewritten, then one delta of them
//!   persisted: `DeltaWriter::begin` + `copy_from` (pread region, pwrite delta) + `commit`
//!   (CRCs, footer, `fdatasync`, `rename`, directory `fsync`); against **raw**: `pwrite` of
//!   the same pages' bytes (already in memory) at their offsets into a fresh file +
//!   `fdatasync`. And one full snapshot persist of the same region (today's cost).
//! - **restore**: base + 10 deltas (of 1 %, and of 10 %) into a fresh memfd with every CRC
//!   checked while copying, against a raw sparse copy back of the base file alone
//!   (`copy_sparse`, no CRC) and today's `snapshot::restore_path` (verify, then copy).
//!
//! Medians; the page cache is warm (everything read was just written).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shmsnap_linux::chain::{self, At, DeltaMeta, DeltaWriter, Run, Tip};
use shmsnap_linux::copy::copy_sparse;
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotMeta};
use shmsnap_linux::Memfd;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const REGION: u64 = 256 * MIB;
const PAGES: u64 = REGION / PAGE;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn pwrite_all(fd: impl std::os::fd::AsFd, buf: &[u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += rustix::io::pwrite(&fd, &buf[done..], at + done as u64)?;
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Rewrites `pct` % of the region's pages (random, distinct) with `stamp`; returns the runs.
fn rewrite(region: &Memfd, rng: &mut Rng, pct: u64, stamp: u8) -> io::Result<Vec<Run>> {
    let n = PAGES * pct / 100;
    let mut picked = vec![false; PAGES as usize];
    let mut runs = Vec::with_capacity(n as usize);
    let page = vec![stamp; PAGE as usize];
    while (runs.len() as u64) < n {
        let p = rng.next() % PAGES;
        if !std::mem::replace(&mut picked[p as usize], true) {
            pwrite_all(region, &page, p * PAGE)?;
            runs.push(Run {
                offset: p * PAGE,
                len: PAGE,
            });
        }
    }
    Ok(chain::plan_runs(runs, 0, REGION))
}

fn base(p: &Persister, region: &Memfd, generation: u64) -> io::Result<(Tip, Duration)> {
    let meta = SnapshotMeta {
        strategy: 0,
        generation,
        unix_time_ns: 0,
    };
    let t = Instant::now();
    let ((info, _), _) = p.persist_with(|f| snapshot::write_snapshot(region, f, REGION, meta))?;
    Ok((Tip::of_base(&info), t.elapsed()))
}

fn delta(p: &Persister, region: &Memfd, tip: &Tip, runs: &[Run]) -> io::Result<(Tip, Duration)> {
    let t = Instant::now();
    let mut w = DeltaWriter::begin(p, tip, runs, 0)?;
    w.copy_from(region)?;
    let copied = t.elapsed();
    let info = w.commit(DeltaMeta::default())?;
    if std::env::var_os("CHAIN_BENCH_PHASES").is_some() {
        let s = info.stats;
        println!(
            "    begin+copy {:.2} ms, crc+footer {:.2}, fdatasync {:.2}, rename+dir fsync {:.2}",
            ms(copied),
            ms(s.footer),
            ms(s.sync),
            ms(s.publish)
        );
    }
    Ok((info.tip(), t.elapsed()))
}

/// `pwrite` of the runs' bytes (`bytes`, already in memory) into a fresh file + `fdatasync`.
fn raw(dir: &Path, runs: &[Run], bytes: &[u8]) -> io::Result<Duration> {
    let path = dir.join("raw.bin");
    let _ = std::fs::remove_file(&path);
    let f = std::fs::File::create_new(&path)?;
    let t = Instant::now();
    let mut at = 0;
    for r in runs {
        pwrite_all(&f, &bytes[at..at + r.len as usize], r.offset)?;
        at += r.len as usize;
    }
    rustix::fs::fdatasync(&f)?;
    let d = t.elapsed();
    std::fs::remove_file(&path)?;
    Ok(d)
}

fn run_bytes(region: &Memfd, runs: &[Run]) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; runs.iter().map(|r| r.len as usize).sum()];
    let mut at = 0;
    for r in runs {
        let n = rustix::io::pread(region, &mut v[at..at + r.len as usize], r.offset)?;
        assert_eq!(n as u64, r.len);
        at += n;
    }
    Ok(v)
}

fn deltas(dir: &Path, iters: usize) -> io::Result<()> {
    let region = Memfd::create("region", REGION)?;
    let fill: Vec<u8> = (0..MIB).map(|i| (i * 7 + 1) as u8).collect();
    for i in 0..REGION / MIB {
        pwrite_all(&region, &fill, i * MIB)?;
    }
    let target = dir.join("bench.snap");
    let p = Persister::new(&target, 1)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut full = Vec::new();
    let mut tip = Tip::of_base(&snapshot::SnapshotInfo {
        version: 1,
        image_len: REGION,
        meta: SnapshotMeta {
            strategy: 0,
            generation: 0,
            unix_time_ns: 0,
        },
        image_crc: 0,
    });
    for g in 0..iters as u64 {
        let (t, d) = base(&p, &region, g + 1)?;
        tip = t;
        full.push(d);
    }
    let full = median(&mut full);
    println!(
        "full snapshot persist of 256 MiB (fully touched): {:7.1} ms",
        ms(full)
    );
    let mut stamp = 1u8;
    for pct in [1, 10] {
        let (mut d, mut r, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iters {
            stamp = stamp.wrapping_add(1);
            let runs = rewrite(&region, &mut rng, pct, stamp)?;
            let bytes = run_bytes(&region, &runs)?;
            r.push(raw(dir, &runs, &bytes)?);
            let one = [Run {
                offset: 0,
                len: bytes.len() as u64,
            }];
            c.push(raw(dir, &one, &bytes)?);
            let (t, took) = delta(&p, &region, &tip, &runs)?;
            tip = t;
            d.push(took);
        }
        let (d, r, c) = (median(&mut d), median(&mut r), median(&mut c));
        println!(
            "delta of {pct:2} % of pages ({:4} MiB): delta {:7.2} ms; raw pwrite at the pages' \
             offsets + fdatasync {:7.2} ms (ratio {:.2}x); raw contiguous pwrite + fdatasync \
             {:7.2} ms (ratio {:.2}x); full snapshot / delta {:.1}x",
            PAGES * pct / 100 * PAGE / MIB,
            ms(d),
            ms(r),
            d.as_secs_f64() / r.as_secs_f64(),
            ms(c),
            d.as_secs_f64() / c.as_secs_f64(),
            full.as_secs_f64() / d.as_secs_f64()
        );
    }
    for pct in [1, 10] {
        // A fresh chain: a base and 10 deltas.
        let (t, _) = base(&p, &region, 1000 + pct)?;
        tip = t;
        for _ in 0..10 {
            stamp = stamp.wrapping_add(1);
            let runs = rewrite(&region, &mut rng, pct, stamp)?;
            tip = delta(&p, &region, &tip, &runs)?.0;
        }
        let (mut chain_t, mut raw_t, mut today_t) = (Vec::new(), Vec::new(), Vec::new());
        let mut base_t = Vec::new();
        for _ in 0..iters {
            let back = Memfd::create("base", REGION)?;
            let t = Instant::now();
            chain::restore_chain(&target, &chain::chain_dir(&target), &back, At::Deltas(0))?;
            base_t.push(t.elapsed());
            drop(back);
            let back = Memfd::create("back", REGION)?;
            let t = Instant::now();
            let rep = chain::restore_chain(&target, &chain::chain_dir(&target), &back, At::Latest)?;
            chain_t.push(t.elapsed());
            assert_eq!(rep.listing.deltas.len(), 10);
            drop(back);
            let back = Memfd::create("raw", REGION)?;
            let f = std::fs::File::open(&target)?;
            let t = Instant::now();
            copy_sparse(&f, &back, REGION)?;
            raw_t.push(t.elapsed());
            drop(back);
            let back = Memfd::create("today", REGION)?;
            let t = Instant::now();
            snapshot::restore_path(&target, &back)?;
            today_t.push(t.elapsed());
        }
        let (c, r, t) = (
            median(&mut chain_t),
            median(&mut raw_t),
            median(&mut today_t),
        );
        let b = median(&mut base_t);
        println!(
            "restore of the base alone through the chain (CRC while copying): {:7.1} ms ({:.2}x raw)",
            ms(b),
            b.as_secs_f64() / r.as_secs_f64()
        );
        println!(
            "restore base + 10 deltas of {pct:2} %: {:7.1} ms (CRCs checked while copying); raw \
             copy back of the base {:7.1} ms, ratio {:.2}x; today's verify+copy of one base \
             {:7.1} ms ({:.2}x)",
            ms(c),
            ms(r),
            c.as_secs_f64() / r.as_secs_f64(),
            ms(t),
            t.as_secs_f64() / r.as_secs_f64()
        );
    }
    for g in p.generations()? {
        std::fs::remove_file(g.path)?;
    }
    std::fs::remove_dir_all(chain::chain_dir(&target))?;
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.first().map_or("target/chain_bench", String::as_str));
    let iters = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    std::fs::create_dir_all(&dir)?;
    println!("dir {} ({iters} iterations, medians)", dir.display());
    deltas(&dir, iters)
}
