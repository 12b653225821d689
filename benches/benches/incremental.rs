//! `incremental` groups (issue 13): the write-tracking scan of a 256 MiB fully touched region
//! (clean, 1 % written), the first write to a write-protected page against a plain store,
//! delta snapshots (1 %, 10 % of pages written) against a raw `pwrite` + `fdatasync` of the
//! same number of pages and against today's full snapshot, and the restore of a base + 10
//! deltas against a raw copy back of one full image. See `shmsnap_benches::incremental`. (The
//! starvation comparison counts outcomes, not time: it is in `compare --only incremental`.)
//!
//! Files go to `$SHMSNAP_BENCH_DIR`, else `target/shmsnap-bench` (a disk filesystem).

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use shmsnap_benches::incremental::{
    DeltaBench, DeltaFixture, DeltaSide, FirstWrite, ScanBench, DELTA_PERCENTS, PAGE, REGION,
    RESTORE_DELTAS,
};
use shmsnap_benches::Bench;

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    dir
}

fn scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("incremental-scan-256MiB");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for (name, dirty) in [("clean", 0), ("1pct-written", REGION / PAGE / 100)] {
        let mut b = ScanBench::new(dirty).expect("scan fixture");
        g.bench_function(name, |x| x.iter_custom(|iters| b.run(iters)));
    }
    g.finish();
}

fn first_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("incremental-first-write");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for (name, tracked) in [("write-protected", true), ("plain", false)] {
        let mut b = FirstWrite::new(tracked).expect("first-write fixture");
        g.bench_function(name, |x| x.iter_custom(|iters| b.run(iters)));
    }
    g.finish();
}

fn delta(c: &mut Criterion) {
    let f = RefCell::new(DeltaFixture::new(&bench_dir()).expect("delta fixture"));
    let mut g = c.benchmark_group("incremental-delta-256MiB");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(10));
    for percent in DELTA_PERCENTS {
        for (name, side) in [
            ("take-delta+commit", DeltaSide::Delta),
            ("raw-pwrite+fdatasync", DeltaSide::RawPages),
            ("full-snapshot", DeltaSide::Full),
        ] {
            let mut b = DeltaBench {
                fixture: &f,
                side,
                percent,
            };
            g.bench_function(BenchmarkId::new(name, format!("{percent}pct")), |x| {
                x.iter_custom(|iters| b.run(iters))
            });
        }
    }
    g.finish();
    f.borrow_mut()
        .build_chain(RESTORE_DELTAS, 1)
        .expect("chain of deltas");
    let f = f.borrow();
    let mut g = c.benchmark_group("incremental-restore-256MiB");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function(format!("restore-chain-base+{RESTORE_DELTAS}-deltas"), |x| {
        x.iter(|| f.restore_chain().expect("chain restore"))
    });
    g.bench_function("raw-copy-back-full-image", |x| {
        x.iter(|| f.raw_restore().expect("raw restore"))
    });
    g.finish();
}

criterion_group!(benches, scan, first_write, delta);
criterion_main!(benches);
