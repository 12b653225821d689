//! `replica` group: a 256 MiB snapshot file to an in-process S3 server and back — the raw
//! multipart upload and the raw download (the references), the replica's packed upload of a
//! full and of a sparse base, and `shmsnap restore --from`. See `shmsnap_benches::replica`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shmsnap_benches::replica::ReplicaFixture;

fn replica(c: &mut Criterion) {
    let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("bench directory");
    // The fixture checks that the uploaded object downloads byte for byte.
    let f = ReplicaFixture::new(&dir).expect("replica fixture");
    let mut g = c.benchmark_group("replica");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(f.bytes().expect("size")));
    g.bench_function("raw multipart upload", |b| {
        b.iter(|| f.raw_upload().expect("raw upload"))
    });
    g.bench_function("replica upload", |b| {
        b.iter(|| f.replica_upload().expect("replica upload"))
    });
    g.bench_function("replica upload, 16 MiB of data in 256 MiB", |b| {
        b.iter(|| f.sparse_upload().expect("sparse upload"))
    });
    g.bench_function("raw PUT of 16 MiB", |b| {
        b.iter(|| f.raw_put_16m().expect("raw put"))
    });
    g.bench_function("raw download", |b| {
        b.iter(|| f.raw_download().expect("raw download"))
    });
    match f.restore() {
        Some(Ok(())) => {
            g.bench_function("shmsnap restore --from", |b| {
                b.iter(|| f.restore().unwrap().expect("restore"))
            });
        }
        Some(Err(e)) => eprintln!("replica: restore row skipped: {e}"),
        None => eprintln!("replica: restore row skipped: the shmsnap binary is not built"),
    }
    g.finish();
}

criterion_group!(benches, replica);
criterion_main!(benches);
