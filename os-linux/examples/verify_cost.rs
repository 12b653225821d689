//! What the image check of every point costs `verify`: a 256 MiB queue region, a base and 64
//! deltas, verified the way `verify` did before issue 20 (the base completely, then every
//! delta's footer, table, link and data CRC) and the way it does now (`verify_chain`: the
//! same plus the image check of each point, through a view of its links), in one run, as a
//! ratio.
//!
//! ```text
//! cargo run -p shmsnap-linux --release --example verify_cost -- [DIR] [ITERATIONS]
//! ```
//!
//! Each delta carries 200 random tail pages (0.3 % of the region; 64 of them stay under the
//! default 25 % compaction ratio), the data ring and the meta pages (header + descriptor
//! ring), as the host writes it; the ring has 4096 entries (a 128 KiB ring) and 65536 entries
//! (2 MiB). Medians; the page cache is warm (everything read was just written).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shmsnap_core::{LayoutRequest, Writer};
use shmsnap_linux::chain::{self, ChainListing, DeltaMeta, DeltaWriter, Run, Tip};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotMeta};
use shmsnap_linux::{Mapping, Memfd, Protection};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const REGION: u64 = 256 * MIB;
const DELTAS: u64 = 64;
const PAGES_PER_DELTA: u64 = 200;
/// The data ring (carried whole by every delta: commits land anywhere in it).
const DATA: u64 = 64 << 10;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn pwrite_all(fd: impl std::os::fd::AsFd, buf: &[u8], at: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        done += rustix::io::pwrite(&fd, &buf[done..], at + done as u64)?;
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Builds the chain in a fresh directory under `dir`; returns the state file.
fn build(dir: &Path, entries: u64) -> io::Result<PathBuf> {
    let target = dir.join(format!("verify-cost-{entries}.snap"));
    let persister = Persister::new(&target, 1)?;
    let region = Memfd::create("verify-cost", REGION)?;
    region.seal_against_shrink()?;
    let map = Mapping::of_memfd(&region, Protection::ReadWrite)?;
    let request = LayoutRequest {
        entries,
        data_size: DATA,
    };
    let id = shmsnap_core::ClaimId::from_pid(std::process::id(), 1).expect("a pid is nonzero");
    let mut w = Writer::open_or_init(map.words(), request, id).map_err(io::Error::other)?;
    let layout = *w.region().layout();
    let mut rng = Rng(entries | 1);
    // A fully written tail, so the base has data everywhere.
    let chunk: Vec<u8> = (0..MIB).map(|_| rng.next() as u8).collect();
    let mut at = layout.tail_offset;
    while at < REGION {
        let n = (REGION - at).min(MIB);
        pwrite_all(&region, &chunk[..n as usize], at)?;
        at += n;
    }
    for i in 0..entries.min(1000) {
        w.commit(&i.to_le_bytes()).map_err(io::Error::other)?;
    }
    let meta = SnapshotMeta {
        strategy: shmsnap_core::Strategy::Queue.code(),
        generation: 1,
        unix_time_ns: 1,
    };
    let ((info, _), _) =
        persister.persist_with(|f| snapshot::write_snapshot(&region, f, REGION, meta))?;
    let mut tip = Tip::of_base(&info);
    let tail_pages = (REGION - layout.tail_offset) / PAGE;
    for d in 0..DELTAS {
        let mut runs = vec![Run {
            offset: layout.data_offset,
            len: DATA.div_ceil(PAGE) * PAGE,
        }];
        let page = vec![d as u8; PAGE as usize];
        for _ in 0..PAGES_PER_DELTA {
            let p = layout.tail_offset + (rng.next() % tail_pages) * PAGE;
            pwrite_all(&region, &page, p)?;
            runs.push(Run {
                offset: p,
                len: PAGE,
            });
        }
        for _ in 0..10 {
            w.commit(&d.to_le_bytes()).map_err(io::Error::other)?;
        }
        let runs = chain::plan_runs(runs, layout.meta_len(), REGION);
        let mut dw = DeltaWriter::begin(&persister, &tip, &runs, layout.meta_len())?;
        dw.copy_from(&region)?;
        tip = dw
            .commit(DeltaMeta {
                next_seq_before: 0,
                next_seq: 0,
                unix_time_ns: d + 2,
            })?
            .tip();
    }
    Ok(target)
}

/// `verify` as it was: the base completely, the deltas' footers, tables and links, and each
/// delta's data once for its CRC.
fn verify_before(target: &Path) -> io::Result<usize> {
    snapshot::verify_path(target).map_err(io::Error::other)?;
    let listing =
        ChainListing::load(target, &chain::chain_dir(target)).map_err(io::Error::other)?;
    let mut buf = vec![0u8; MIB as usize];
    for d in &listing.deltas {
        let f = chain::open_delta(&d.path).map_err(io::Error::other)?;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        let (mut at, end) = (
            d.footer.table_len(),
            d.footer.table_len() + d.footer.data_len,
        );
        while at < end {
            let n = (end - at).min(MIB) as usize;
            let got = rustix::io::pread(&f, &mut buf[..n], at)?;
            assert!(got > 0, "short delta");
            digest.update(&buf[..got]);
            at += got as u64;
        }
        assert_eq!(digest.finalize() as u32, d.footer.data_crc, "data CRC");
    }
    Ok(listing.deltas.len())
}

/// `verify` now.
fn verify_after(target: &Path) -> io::Result<usize> {
    let listing =
        chain::verify_chain(target, &chain::chain_dir(target)).map_err(io::Error::other)?;
    assert!(listing.stop.is_none(), "{:?}", listing.stop);
    Ok(listing.deltas.len())
}

/// A restore of the newest point into a fresh memfd, and the part of it that decides where the
/// chain ends (`check_points` with the data CRCs left to the sweep): the restore's added cost.
fn restore_and_points(target: &Path) -> io::Result<(Duration, Duration)> {
    let dir = chain::chain_dir(target);
    let back = Memfd::create("verify-cost-back", REGION)?;
    let t = Instant::now();
    let r =
        chain::restore_chain(target, &dir, &back, chain::At::Latest).map_err(io::Error::other)?;
    let restore = t.elapsed();
    assert_eq!(r.listing.deltas.len(), DELTAS as usize);
    let t = Instant::now();
    let mut listing = ChainListing::load(target, &dir).map_err(io::Error::other)?;
    listing
        .check_points(chain::DataCrc::AtRestore)
        .map_err(io::Error::other)?;
    let points = t.elapsed();
    assert_eq!(listing.deltas.len(), DELTAS as usize);
    Ok((restore, points))
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/tmp", String::as_str));
    let iterations: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let work = tempfile::Builder::new()
        .prefix("verify-cost-")
        .tempdir_in(&dir)?;
    println!(
        "| ring entries | verify before (ms) | verify now (ms) | now/before | restore now (ms) | \
         of which the point checks (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for entries in [4096u64, 65536] {
        let target = build(work.path(), entries)?;
        let (mut before, mut after, mut restore, mut points) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iterations {
            let t = Instant::now();
            assert_eq!(verify_before(&target)?, DELTAS as usize);
            before.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(verify_after(&target)?, DELTAS as usize);
            after.push(t.elapsed());
            let (r, p) = restore_and_points(&target)?;
            restore.push(r);
            points.push(p);
        }
        let (b, a) = (median(&mut before), median(&mut after));
        println!(
            "| {entries} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} |",
            ms(b),
            ms(a),
            a.as_secs_f64() / b.as_secs_f64(),
            ms(median(&mut restore)),
            ms(median(&mut points)),
        );
    }
    Ok(())
}
