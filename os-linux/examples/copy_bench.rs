//! Snapshot and restore timings of a 256 MiB memfd (16 MiB touched, and fully touched).
//!
//! ```text
//! cargo run -p shmsnap-linux --release --example copy_bench -- [DIR] [ITERATIONS]
//! cargo run -p shmsnap-linux --release --example copy_bench -- --once DIR   # one small persist (for strace)
//! ```
//!
//! Each iteration persists a full snapshot (sparse copy + footer with image CRC + fdatasync +
//! generation shuffle + rename + directory fsync + unlink of the dropped generation, keep = 1),
//! then verifies it and restores it into a fresh memfd. Medians are printed. The page cache is
//! warm (the restore reads the file just written).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shmsnap_linux::copy::copy_sparse;
use shmsnap_linux::memfd::{allocated_bytes, Memfd};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotMeta};

const MIB: u64 = 1 << 20;
const REGION: u64 = 256 * MIB;

fn touch(m: &Memfd, off: u64, len: u64) -> io::Result<()> {
    let buf: Vec<u8> = (0..MIB).map(|i| (i * 7 + 1) as u8).collect();
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        let w = rustix::io::pwrite(m, &buf[..n], off + done)?;
        done += w as u64;
    }
    Ok(())
}

fn region(touched: u64) -> io::Result<Memfd> {
    let m = Memfd::create("bench", REGION)?;
    m.seal_against_shrink()?;
    if touched == REGION {
        touch(&m, 0, REGION)?;
    } else {
        // Four separate extents.
        let part = touched / 4;
        for i in 0..4 {
            touch(&m, i * (REGION / 4) + 3 * MIB, part)?;
        }
    }
    Ok(m)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:7.1}", d.as_secs_f64() * 1e3)
}

fn bench(dir: &Path, touched: u64, iters: usize) -> io::Result<()> {
    let m = region(touched)?;
    let target = dir.join(format!("bench-{}.snap", touched / MIB));
    let p = Persister::new(&target, 1)?;
    let (mut copy, mut crc, mut sync, mut rename, mut dsync, mut dropt, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut raw, mut verify, mut restore) = (vec![], vec![], vec![]);
    for g in 0..iters {
        let t0 = Instant::now();
        let tc = p.persist_with(|f| -> io::Result<(Duration, Duration)> {
            let t = Instant::now();
            copy_sparse(&m, f, REGION)?;
            let c = t.elapsed();
            let t = Instant::now();
            snapshot::write_footer(
                f,
                REGION,
                SnapshotMeta {
                    strategy: shmsnap_core::Strategy::Exit.code(),
                    generation: g as u64,
                    unix_time_ns: 0,
                },
            )?;
            Ok((c, t.elapsed()))
        })?;
        total.push(t0.elapsed());
        let (c, k) = tc.0;
        copy.push(c);
        crc.push(k);
        sync.push(tc.1.sync);
        rename.push(tc.1.rename);
        dsync.push(tc.1.dir_sync);
        dropt.push(tc.1.drop_old);

        let t = Instant::now();
        snapshot::verify_path(&target).map_err(io::Error::from)?;
        verify.push(t.elapsed());
        let fresh = Memfd::create("restored", REGION)?;
        fresh.seal_against_shrink()?;
        let t = Instant::now();
        snapshot::restore_path(&target, &fresh).map_err(io::Error::from)?;
        restore.push(t.elapsed());
        let fresh2 = Memfd::create("raw", REGION)?;
        let f = std::fs::File::open(&target)?;
        let t = Instant::now();
        copy_sparse(&f, &fresh2, REGION)?;
        raw.push(t.elapsed());
        if g == 0 {
            println!(
                "  file allocated {} MiB, restored memfd allocated {} MiB, source memfd {} MiB",
                allocated_bytes(&f)? / MIB,
                fresh.allocated()? / MIB,
                m.allocated()? / MIB
            );
        }
    }
    println!(
        "touched {:3} MiB of 256 MiB, median of {iters} (ms):\n  persist total {} = copy {} + footer/crc {} + fdatasync {} + shuffle/rename {} + dir fsync {} + drop old {}\n  restore (verify incl. crc + copy) {}   of which verify {}   raw sparse copy back {}",
        touched / MIB,
        ms(median(&mut total)),
        ms(median(&mut copy)),
        ms(median(&mut crc)),
        ms(median(&mut sync)),
        ms(median(&mut rename)),
        ms(median(&mut dsync)),
        ms(median(&mut dropt)),
        ms(median(&mut restore)),
        ms(median(&mut verify)),
        ms(median(&mut raw)),
    );
    for g in p.generations()? {
        std::fs::remove_file(g.path)?;
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--once") {
        let dir = PathBuf::from(args.get(1).map_or("target/copy_bench", String::as_str));
        std::fs::create_dir_all(&dir)?;
        let m = Memfd::create("once", MIB)?;
        touch(&m, 0, 4096)?;
        let p = Persister::new(&dir.join("once.snap"), 1)?;
        for g in 0..3 {
            p.persist_with(|f| {
                snapshot::write_snapshot(
                    &m,
                    f,
                    MIB,
                    SnapshotMeta {
                        strategy: shmsnap_core::Strategy::Exit.code(),
                        generation: g,
                        unix_time_ns: 0,
                    },
                )
            })?;
        }
        return Ok(());
    }
    let dir = PathBuf::from(args.first().map_or("target/copy_bench", String::as_str));
    let iters = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(7);
    std::fs::create_dir_all(&dir)?;
    bench(&dir, 16 * MIB, iters)?;
    bench(&dir, REGION, iters)?;
    Ok(())
}
