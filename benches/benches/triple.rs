//! `triple` group: a triple-buffer publication of 64 B, 4 KiB and 1 MiB — ours vs. the
//! `triple_buffer` crate's write + publish vs. `memcpy` of the same bytes. See
//! `shmsnap_benches::triple`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmsnap_benches::commit::{Dest, Limit, Raw};
use shmsnap_benches::triple::{Crate, Ours, SIZES};
use shmsnap_benches::Bench;

fn triple(c: &mut Criterion) {
    let mut g = c.benchmark_group("triple/publish");
    for n in SIZES {
        g.throughput(Throughput::Bytes(n as u64));
        // Fixtures check a publication reads back before anything is timed.
        for (name, exclusive) in [("ours-write", false), ("ours-write_exclusive", true)] {
            let mut ours = Ours::new(n, exclusive).expect("ours fixture");
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_custom(|iters| ours.run(iters))
            });
        }
        let mut rival = Crate::new(n);
        g.bench_function(BenchmarkId::new("triple_buffer-9", n), |b| {
            b.iter_custom(|iters| rival.run(iters))
        });
        drop(rival);
        let mut memcpy = Raw::new(n, Dest::Hot, Limit::Memcpy).expect("memcpy fixture");
        g.bench_function(BenchmarkId::new("memcpy", n), |b| {
            b.iter_custom(|iters| memcpy.run(iters))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = triple
}
criterion_main!(benches);
