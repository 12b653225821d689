//! `snapshot` and `restore` groups: the full host snapshot cycle (pre, sparse copy, post,
//! retain, footer with CRC, fdatasync, rename, dir fsync) of 16 MiB and 256 MiB regions,
//! fully and 1/16 touched, against the raw limit (sparse copy + fdatasync + rename of the same
//! memfd), and the move of a sealed region into a fresh memfd a client restart costs
//! (`region-move`); restore (verify + sparse copy back) against a raw sparse copy back. See
//! `shmsnap_benches::snapshot`.
//!
//! Files go to `$SHMSNAP_BENCH_DIR`, else `target/shmsnap-bench` (a disk filesystem).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use shmsnap_benches::snapshot::{SnapshotFixture, Touch, SIZES};

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    dir
}

fn snapshot(c: &mut Criterion) {
    let dir = bench_dir();
    for len in SIZES {
        for touch in [Touch::Full, Touch::Sixteenth] {
            // The fixture snapshots and restores once each way and checks the results.
            let f = SnapshotFixture::new(&dir, len, touch).expect("snapshot fixture");
            let case = format!("{}MiB-{}", len >> 20, touch.name().replace('/', "of"));
            let mut g = c.benchmark_group("snapshot");
            g.sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_secs(if len > 64 << 20 { 10 } else { 3 }))
                .throughput(Throughput::Bytes(len));
            g.bench_function(BenchmarkId::new("host-cycle", &case), |b| {
                b.iter(|| f.host_snapshot().expect("host snapshot"))
            });
            g.bench_function(BenchmarkId::new("raw-copy-sync-rename", &case), |b| {
                b.iter(|| f.raw_snapshot().expect("raw snapshot"))
            });
            // A sealed region's move into a fresh memfd before a client restart (DESIGN §11).
            let moved = f.move_region().expect("move");
            assert!(moved >= f.touched() && moved <= len, "moved {moved} bytes");
            g.bench_function(BenchmarkId::new("region-move", &case), |b| {
                b.iter(|| f.move_region().expect("move"))
            });
            g.finish();
            let mut g = c.benchmark_group("restore");
            g.sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_secs(3))
                .throughput(Throughput::Bytes(len));
            g.bench_function(BenchmarkId::new("verify+copy-back", &case), |b| {
                b.iter(|| f.restore().expect("restore"))
            });
            g.bench_function(BenchmarkId::new("raw-copy-back", &case), |b| {
                b.iter(|| f.raw_restore().expect("raw restore"))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
