//! `replica` group: a 256 MiB snapshot file to a local `s3s-fs` and back — the raw multipart
//! upload and the raw download (the references), the replica's upload (once wired) and
//! `shmsnap restore --from`. See `shmsnap_benches::replica`. Skipped without s3s-fs.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shmsnap_benches::replica::{s3s_fs_binary, ReplicaFixture};

fn replica(c: &mut Criterion) {
    let Some(bin) = s3s_fs_binary() else {
        eprintln!("replica: skipped: s3s-fs not found (set SHMSNAP_S3S_FS)");
        return;
    };
    let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("bench directory");
    // The fixture checks that the uploaded object downloads byte for byte.
    let f = ReplicaFixture::new(&dir, &bin).expect("replica fixture");
    let mut g = c.benchmark_group("replica");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(f.bytes().expect("size")));
    g.bench_function("raw multipart upload", |b| {
        b.iter(|| f.raw_upload().expect("raw upload"))
    });
    if f.replica_upload().is_some() {
        g.bench_function("replica upload", |b| {
            b.iter(|| f.replica_upload().unwrap().expect("replica upload"))
        });
    }
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
