//! `durable` group: commit-to-durable latency (a client waiting with a prompt request vs. the
//! host's interval) and the throughput of a client that waits on every N-th commit. See
//! `shmsnap_benches::durable`.
//!
//! Files go to `$SHMSNAP_BENCH_DIR`, else `target/shmsnap-bench` (a disk filesystem).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use shmsnap_benches::durable::DurableFixture;

fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    dir
}

fn durable(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = c.benchmark_group("durable");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(3));
    // The fixture checks one prompt acknowledgement before timing.
    let mut f = DurableFixture::new(&dir, Duration::from_millis(20)).expect("durable fixture");
    g.bench_function("commit-to-durable/prompt-request", |b| {
        b.iter_custom(|n| f.prompt(n).expect("prompt"))
    });
    g.bench_function("commit-to-durable/interval-20ms", |b| {
        b.iter_custom(|n| f.interval(n).expect("interval"))
    });
    for every in [0u64, 256, 16, 1] {
        g.bench_function(BenchmarkId::new("1024-commits/wait-every", every), |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| f.throughput(1024, every).expect("throughput"))
                    .sum()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, durable);
criterion_main!(benches);
