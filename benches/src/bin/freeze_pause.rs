//! The freeze strategy's pause (DESIGN §17): staging candidates for a 256 MiB region (full and
//! 1/16 touched) against `memcpy` of the same bytes, and freeze+thaw per mechanism.
//!
//! ```text
//! cargo run -p shmsnap-benches --release --bin freeze_pause [-- --rounds N]
//! ```
//!
//! Interleaved (A B A B …) medians in one run; the ratio column is what DESIGN §17 quotes.
//! Temp files go to `$SHMSNAP_BENCH_DIR`, else `target/shmsnap-bench`. The cgroup rows need a
//! writable cgroup2 mount (root); without one they say why and are left out.

use std::path::PathBuf;

use shmsnap_benches::freeze::{
    BenchCgroup, Candidate, FreezeThaw, Memcpy, Region, StageBench, Target,
};
use shmsnap_benches::report::{fmt_ns, interleave, machine};
use shmsnap_benches::snapshot::Touch;
use shmsnap_benches::Bench;

fn main() {
    let mut rounds = 9;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds" {
            rounds = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--rounds N");
        }
    }
    let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!("{}", machine(&dir));
    println!("\n## Staging copy of a 256 MiB region (median of {rounds} interleaved rounds)\n");
    println!("| touched | staging | copy | vs memcpy |");
    println!("|---|---|---|---|");
    for touch in [Touch::Full, Touch::Sixteenth] {
        let region = Region::new(touch).expect("region");
        let mut reference = Memcpy::new(region.touched);
        let mut stages: Vec<StageBench<'_>> = Candidate::ALL
            .iter()
            .map(|c| StageBench::new(&region, *c, &dir).expect("staging"))
            .collect();
        let mut benches: Vec<&mut dyn Bench> = vec![&mut reference];
        benches.extend(stages.iter_mut().map(|s| s as &mut dyn Bench));
        let iters = vec![1; benches.len()];
        let m = interleave(&mut benches, &iters, rounds);
        let base = m[0].ns;
        println!(
            "| {} | memcpy (reference) | {} | 1.00x |",
            touch.name(),
            fmt_ns(base)
        );
        for (c, med) in Candidate::ALL.iter().zip(&m[1..]) {
            println!(
                "| {} | {} | {} | {:.2}x |",
                touch.name(),
                c.name(),
                fmt_ns(med.ns),
                med.ns / base
            );
        }
    }
    freeze_rows(rounds * 20);
}

/// Freeze + thaw per mechanism, on an idle and a busy child.
fn freeze_rows(rounds: usize) {
    println!("\n## Freeze + thaw, no copy (median of {rounds} interleaved rounds)\n");
    println!("| child | signal | cgroup |");
    println!("|---|---|---|");
    for busy in [false, true] {
        let label = if busy { "busy loop" } else { "sleeping" };
        let sig_target = Target::start(busy, None).expect("child");
        let mut sig = FreezeThaw::signal(&sig_target);
        let cg = BenchCgroup::new(if busy { "busy" } else { "idle" });
        let cg_target = cg
            .as_ref()
            .ok()
            .map(|cg| Target::start(busy, Some(&cg.0)).expect("child in cgroup"));
        let mut cgf = cg.as_ref().ok().map(FreezeThaw::cgroup);
        let cg_ns = match &mut cgf {
            Some(c) => {
                let m = interleave(&mut [&mut sig, c], &[1, 1], rounds);
                println!("| {label} | {} | {} |", fmt_ns(m[0].ns), fmt_ns(m[1].ns));
                continue;
            }
            None => cg.as_ref().err().cloned().unwrap_or_default(),
        };
        let m = interleave(&mut [&mut sig], &[1], rounds);
        println!("| {label} | {} | (no cgroup: {cg_ns}) |", fmt_ns(m[0].ns));
        drop(cg_target);
    }
}
