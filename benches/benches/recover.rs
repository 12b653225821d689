//! `recover` group: `Writer::attach` + `newest` on regions whose E = 256 / 4096 descriptors
//! all hold live entries (what a restarted client does first). See `shmsnap_benches::recover`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmsnap_benches::recover::{Recover, ENTRIES};
use shmsnap_benches::Bench;

fn recover(c: &mut Criterion) {
    let mut g = c.benchmark_group("recover");
    for e in ENTRIES {
        g.throughput(Throughput::Elements(e));
        // The fixture asserts every entry is live and attach finds the newest.
        let mut r = Recover::new(e).expect("recover fixture");
        g.bench_function(BenchmarkId::new("attach+newest", e), |b| {
            b.iter_custom(|iters| r.run(iters))
        });
    }
    g.finish();
}

criterion_group!(benches, recover);
criterion_main!(benches);
