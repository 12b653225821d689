//! Runs one benchmarked operation in a loop, for a profiler to watch:
//!
//! ```text
//! perf record -e cpu-clock -g target/release/profile commit ours 4096 advancing 3
//! valgrind --tool=callgrind target/release/profile commit ours 64 hot 0.2
//! valgrind --tool=callgrind --toggle-collect='*Bench*run*' target/release/profile abi c 64 0.3
//! target/release/profile snapshot host 256 1/16 5
//! ```
//!
//! Arguments: `commit {ours|memcpy|words|upstream} BYTES {hot|advancing} [SECONDS]`,
//! `snapshot {host|raw|restore|raw-restore} MIB {full|1/16} [SECONDS]`,
//! `recover ENTRIES [SECONDS]`, `triple {write|exclusive|crate} BYTES [SECONDS]`,
//! `abi {rust|rust-call|c} BYTES [SECONDS]` (a hot commit: `Writer::commit` inlined, the same
//! out of line behind a function pointer, `shmsnap_writer_commit` behind one; the fixtures of
//! `compare --only abi`).
//!
//! Under callgrind, `--toggle-collect='*Bench*run*'` counts the timed loops only; divide the
//! instructions by the operation count printed at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shmsnap_benches::abi::{self, Side};
use shmsnap_benches::commit::{Dest, Limit, Ours, Raw, Upstream};
use shmsnap_benches::recover::Recover;
use shmsnap_benches::snapshot::{SnapshotFixture, Touch};
use shmsnap_benches::triple;
use shmsnap_benches::{Bench, FnBench};

fn usage() -> ! {
    eprintln!(
        "usage: profile commit {{ours|memcpy|words|upstream}} BYTES {{hot|advancing}} [SECONDS]\n\
         \x20      profile snapshot {{host|raw|restore|raw-restore}} MIB {{full|1/16}} [SECONDS]\n\
         \x20      profile recover ENTRIES [SECONDS]\n\
         \x20      profile triple {{write|exclusive|crate}} BYTES [SECONDS]\n\
         \x20      profile abi {{rust|rust-call|c}} BYTES [SECONDS]"
    );
    std::process::exit(2)
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or_else(|| usage());
    let secs = |i: usize| {
        a.get(i)
            .map_or(Ok(3.0), |s| s.parse::<f64>())
            .unwrap_or_else(|_| usage())
    };
    let (mut bench, seconds): (Box<dyn Bench>, f64) = match arg(0) {
        "commit" => {
            let n: usize = arg(2).parse().unwrap_or_else(|_| usage());
            let dest = match arg(3) {
                "hot" => Dest::Hot,
                "advancing" => Dest::Advancing,
                _ => usage(),
            };
            let b: Box<dyn Bench> = match arg(1) {
                "ours" => Box::new(Ours::new(n, dest).expect("fixture")),
                "memcpy" => Box::new(Raw::new(n, dest, Limit::Memcpy).expect("fixture")),
                "words" => Box::new(Raw::new(n, dest, Limit::Words).expect("fixture")),
                "upstream" => Box::new(Upstream::new(n, dest).expect("fixture")),
                _ => usage(),
            };
            (b, secs(4))
        }
        "triple" => {
            let n: usize = arg(2).parse().unwrap_or_else(|_| usage());
            let b: Box<dyn Bench> = match arg(1) {
                "write" => Box::new(triple::Ours::new(n, false).expect("fixture")),
                "exclusive" => Box::new(triple::Ours::new(n, true).expect("fixture")),
                "crate" => Box::new(triple::Crate::new(n)),
                _ => usage(),
            };
            (b, secs(3))
        }
        "abi" => {
            let n: usize = arg(2).parse().unwrap_or_else(|_| usage());
            let side = match arg(1) {
                "rust" => Side::Rust,
                "rust-call" => Side::RustCall,
                "c" => Side::Abi,
                _ => usage(),
            };
            let f = abi::Commit::new(n, side).expect("fixture");
            (Box::new(f.timed_by(abi::Clock::Wall)), secs(3))
        }
        "recover" => {
            let e: u64 = arg(1).parse().unwrap_or_else(|_| usage());
            (Box::new(Recover::new(e).expect("fixture")), secs(2))
        }
        "snapshot" => {
            let mib: u64 = arg(2).parse().unwrap_or_else(|_| usage());
            let touch = match arg(3) {
                "full" => Touch::Full,
                "1/16" => Touch::Sixteenth,
                _ => usage(),
            };
            let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
                PathBuf::from,
            );
            std::fs::create_dir_all(&dir).expect("bench directory");
            let f: &'static SnapshotFixture = Box::leak(Box::new(
                SnapshotFixture::new(&dir, mib << 20, touch).expect("fixture"),
            ));
            let b: Box<dyn Bench> = match arg(1) {
                "host" => Box::new(FnBench(|| {
                    f.host_snapshot().expect("host snapshot");
                })),
                "raw" => Box::new(FnBench(|| f.raw_snapshot().expect("raw"))),
                "restore" => Box::new(FnBench(|| f.restore().expect("restore"))),
                "raw-restore" => Box::new(FnBench(|| f.raw_restore().expect("raw restore"))),
                _ => usage(),
            };
            (b, secs(4))
        }
        _ => usage(),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut ops, mut spent, mut iters) = (0u64, Duration::ZERO, 1u64);
    while Instant::now() < deadline {
        spent += bench.run(iters);
        ops += iters;
        if spent < Duration::from_millis(50) {
            iters *= 2;
        }
    }
    println!(
        "{ops} operations, {:.1} ns each",
        spent.as_secs_f64() * 1e9 / ops as f64
    );
}
