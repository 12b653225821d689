//! `commit` group: ours vs. upstream `shm-snapshot` 0.2.3 vs. the physical limits (`memcpy`
//! and atomic word stores into the same kind of mapping), for payloads of 8 B to 64 KiB, with
//! a hot destination and one advancing through a 64 MiB ring. See `shmsnap_benches::commit`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmsnap_benches::commit::{Dest, Limit, Ours, Raw, Upstream, PAYLOADS};
use shmsnap_benches::Bench;

fn commit(c: &mut Criterion) {
    for dest in [Dest::Hot, Dest::Advancing] {
        let mut g = c.benchmark_group(format!("commit/{}", dest.name()));
        for n in PAYLOADS {
            g.throughput(Throughput::Bytes(n as u64));
            // Fixtures assert a committed entry reads back before anything is timed.
            let mut ours = Ours::new(n, dest).expect("ours fixture");
            g.bench_function(BenchmarkId::new("ours", n), |b| {
                b.iter_custom(|iters| ours.run(iters))
            });
            drop(ours);
            let mut memcpy = Raw::new(n, dest, Limit::Memcpy).expect("memcpy fixture");
            g.bench_function(BenchmarkId::new("memcpy", n), |b| {
                b.iter_custom(|iters| memcpy.run(iters))
            });
            drop(memcpy);
            let mut words = Raw::new(n, dest, Limit::Words).expect("words fixture");
            g.bench_function(BenchmarkId::new("word-stores", n), |b| {
                b.iter_custom(|iters| words.run(iters))
            });
            drop(words);
            let mut upstream = Upstream::new(n, dest).expect("upstream fixture");
            g.bench_function(BenchmarkId::new("upstream-0.2.3", n), |b| {
                b.iter_custom(|iters| upstream.run(iters))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = commit
}
criterion_main!(benches);
