//! Fixtures of the `incremental` group (issue 13): write tracking and delta chains, each
//! against its reference in the same run.
//!
//! Every tracked region here is a memfd mapped **once** in this process, read-write; the bench
//! process is the client: it registers that mapping with [`Tracker::register`], validates its
//! own advertisement ([`track::validate`] against `/proc/self/maps`: the one mapping of the
//! region) and scans its own `/proc/self/pagemap` with a [`Scanner`]. The host-side code reads
//! descriptors through the same mapping (it only loads).
//!
//! - **scan** ([`ScanBench`]): [`Scanner::scan`] of a 256 MiB fully touched region with nothing
//!   written, and with 1 % of its pages (random) written before each scan (the writes are not
//!   timed). Reported per GiB.
//! - **first write** ([`FirstWrite`]): one word store to each of a run of pages that the last
//!   scan write-protected (the async write-protect fault), against the same stores into a
//!   plain, untracked, resident mapping. The re-protecting scan is not timed.
//! - **delta snapshot** ([`DeltaFixture`], [`DeltaBench`]): after 1 % or 10 % of the pages of a
//!   256 MiB fully touched queue region were written (random, not timed),
//!   [`take_delta`] — the host's own call: scan, pre, copy of the runs, post/retain — then
//!   [`PendingDelta::commit`] (`fdatasync`, rename, dir `fsync`). References: the same number
//!   of pages `pread` from the memfd and `pwrite`n into a fresh file, `fdatasync` (the raw cost
//!   of making those pages durable); and today's full snapshot of the region ([`take_queue`] +
//!   commit).
//! - **chain restore**: [`restore_chain`] of a base + 10 deltas (1 % each) into a memfd, against
//!   a raw sparse copy back of one full image of the same state.
//! - **starvation** ([`starvation`]): a thread commits 512 KiB payloads flat out into a
//!   64-entry ring (32 MiB data ring) of a 64 MiB fully touched region while the host takes N
//!   snapshots back to back, all full, or incremental (the base taken before the committer
//!   starts; then deltas, each carrying the scans of the starved attempts before it and the
//!   pages the previous delta left out, as the host does); counts starved attempts, kept
//!   entries, and what the deltas planned, copied and left out.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use shmsnap_core::{Layout, LayoutRequest, Strategy, Writer};
use shmsnap_linux::chain::{chain_dir, restore_chain, At, CompactionPolicy, Tip};
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch, Starved};
use shmsnap_linux::take_delta::{
    take_delta, Carry, ChainSize, DeltaFigures, DeltaRequest, DeltaSnapshot, PendingDelta,
};
use shmsnap_linux::track::{self, Advertisement, Scanner, TrackedRange, Tracker, WrittenPages};

use crate::sys::{copy_sparse, Mapping, Memfd, Persister, Protection, SnapshotMeta};
use crate::Bench;

/// Region of the scan, delta and restore rows.
pub const REGION: u64 = 256 << 20;
/// Page size of the tracking (the kernel's base page here).
pub const PAGE: u64 = 4096;
/// Fractions of pages written between two delta snapshots, in percent.
pub const DELTA_PERCENTS: [u64; 2] = [1, 10];
/// Data ring of the starvation row: 64 payloads of [`STARVE_PAYLOAD`] fill it exactly.
pub const STARVE_RING: u64 = 32 << 20;
/// Payload of the starvation row's committer.
pub const STARVE_PAYLOAD: usize = 512 << 10;
/// Deltas on the base in the restore row.
pub const RESTORE_DELTAS: u64 = 10;

/// A core or tracking error (`Display` only) as an I/O error.
fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// xorshift64: the random page choices (reproducible run to run).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    fn below(&mut self, m: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % m
    }
}

/// A queue region in a memfd, mapped once in this process, fully touched, filled with live
/// entries, and registered for write tracking.
#[derive(Debug)]
pub struct TrackedRegion {
    memfd: Memfd,
    /// The only mapping of the memfd in this process (the tracker lives in it).
    map: Mapping,
    range: TrackedRange,
    /// This process's pagemap (a lock: the fixtures share the region with a writer thread).
    scanner: Mutex<Scanner>,
    layout: Layout,
    len: u64,
    /// Value of the last dirtying store (every store changes its page).
    stamp: AtomicU64,
}

impl TrackedRegion {
    /// A region of `len` bytes with `request`'s rings, `fill` payloads of `payload` bytes
    /// committed, every page of the tail written, then tracked and scanned once (clean).
    ///
    /// # Errors
    ///
    /// The syscalls' errors; tracking unavailable (`Other`, naming why).
    pub fn new(len: u64, request: LayoutRequest, fill: u64, payload: usize) -> io::Result<Self> {
        let memfd = Memfd::create("bench-incremental", len)?;
        memfd.seal_against_shrink()?;
        let mut map = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        let layout = {
            let mut w = Writer::init(map.words(), request, crate::CLIENT).map_err(err)?;
            for seq in 1..=fill {
                let mut p = vec![0x5au8; payload];
                p[..8].copy_from_slice(&seq.to_le_bytes());
                w.commit(&p).map_err(err)?;
            }
            *w.layout()
        };
        let words = map.words();
        for off in (layout.tail_offset..len).step_by(PAGE as usize) {
            words[(off / 8) as usize].store(off | 1, Ordering::Relaxed);
        }
        let tracker = Tracker::register(&map).map_err(err)?;
        let advert = Advertisement {
            addr: tracker.addr(),
            len: tracker.len(),
            generation: 0,
        };
        map.set_tracker(tracker)?;
        let pid = rustix::process::getpid();
        let range = track::validate(&advert, pid, &memfd, len).map_err(err)?;
        let scanner = Scanner::open(pid).map_err(err)?;
        let r = Self {
            memfd,
            map,
            range,
            scanner: Mutex::new(scanner),
            layout,
            len,
            stamp: AtomicU64::new(1),
        };
        r.scan()?;
        Ok(r)
    }

    /// One scan of the whole region (reports and re-protects the written pages).
    ///
    /// # Errors
    ///
    /// Any [`ScanError`](shmsnap_linux::track::ScanError), as `Other`.
    pub fn scan(&self) -> io::Result<WrittenPages> {
        self.scanner().scan(&self.range).map_err(err)
    }

    fn scanner(&self) -> MutexGuard<'_, Scanner> {
        self.scanner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of tail pages (the pages [`dirty`](Self::dirty) writes).
    pub fn tail_pages(&self) -> u64 {
        (self.len - self.layout.tail_offset) / PAGE
    }

    /// `n` distinct random tail pages (offsets, sorted), not written.
    pub fn pick(&self, rng: &mut Rng, n: u64) -> Vec<u64> {
        let tail = self.tail_pages();
        let mut pages = BTreeSet::new();
        while (pages.len() as u64) < n.min(tail) {
            pages.insert(self.layout.tail_offset + rng.below(tail) * PAGE);
        }
        pages.into_iter().collect()
    }

    /// Writes one word into each of `n` distinct random tail pages; returns their offsets,
    /// sorted.
    pub fn dirty(&self, rng: &mut Rng, n: u64) -> Vec<u64> {
        let pages = self.pick(rng, n);
        let words = self.map.words();
        for &off in &pages {
            let v = self.stamp.fetch_add(1, Ordering::Relaxed) + 1;
            words[(off / 8) as usize + 1].store(v, Ordering::Relaxed);
        }
        pages
    }

    /// Stores one word into each page of the tail from page `first`, `n` pages (wrapping).
    fn store_pages(&self, first: u64, n: u64) {
        let words = self.map.words();
        let tail = self.tail_pages();
        for i in 0..n {
            let off = self.layout.tail_offset + ((first + i) % tail) * PAGE;
            words[(off / 8) as usize + 2].store(i, Ordering::Relaxed);
        }
    }
}

/// The scan row: a scan with nothing written, or after `dirty` random pages were written.
#[derive(Debug)]
pub struct ScanBench {
    region: TrackedRegion,
    dirty: u64,
    rng: Rng,
}

impl ScanBench {
    /// A 256 MiB fully touched tracked region; each scan follows `dirty` random page writes.
    /// Sanity: a scan after `dirty` writes reports exactly those pages, none unknown.
    ///
    /// # Errors
    ///
    /// As [`TrackedRegion::new`].
    ///
    /// # Panics
    ///
    /// If the sanity check fails.
    pub fn new(dirty: u64) -> io::Result<Self> {
        let request = LayoutRequest {
            entries: 64,
            data_size: 64 << 10,
        };
        let region = TrackedRegion::new(REGION, request, 64, 1024)?;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ dirty);
        let pages = region.dirty(&mut rng, dirty.max(1));
        let w = region.scan()?;
        assert_eq!(
            w.pages(),
            pages.len() as u64,
            "the scan reports the pages written"
        );
        assert_eq!(w.unknown_pages(), 0);
        assert_eq!(region.scan()?.pages(), 0, "a second scan finds nothing");
        Ok(Self { region, dirty, rng })
    }
}

impl Bench for ScanBench {
    fn run(&mut self, iters: u64) -> Duration {
        let mut t = Duration::ZERO;
        for _ in 0..iters {
            self.region.dirty(&mut self.rng, self.dirty);
            let start = Instant::now();
            let w = self.region.scan().expect("scan");
            t += start.elapsed();
            assert_eq!(w.pages(), self.dirty);
        }
        t
    }
}

/// The first-write row: stores to pages protected by the last scan, or to a plain mapping.
#[derive(Debug)]
pub struct FirstWrite {
    region: TrackedRegion,
    /// `false`: the region's tracker is dropped: plain stores into resident pages.
    tracked: bool,
    next: u64,
}

impl FirstWrite {
    /// A 64 MiB fully touched region, tracked or not.
    ///
    /// # Errors
    ///
    /// As [`TrackedRegion::new`].
    pub fn new(tracked: bool) -> io::Result<Self> {
        let request = LayoutRequest {
            entries: 64,
            data_size: 64 << 10,
        };
        let mut region = TrackedRegion::new(64 << 20, request, 64, 1024)?;
        if !tracked {
            region.map.drop_tracker();
            // Make every page writable again in the page tables (the registration protected
            // them): the plain side measures stores into resident, writable pages.
            region.store_pages(0, region.tail_pages());
        }
        Ok(Self {
            region,
            tracked,
            next: 0,
        })
    }

    /// Pages a batch may touch before it must re-protect (all of the tail).
    pub fn batch_pages(&self) -> u64 {
        self.region.tail_pages()
    }
}

impl Bench for FirstWrite {
    fn run(&mut self, iters: u64) -> Duration {
        let mut t = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(self.batch_pages());
            if self.tracked {
                self.region.scan().expect("scan");
            }
            let start = Instant::now();
            self.region.store_pages(self.next, n);
            t += start.elapsed();
            self.next += n;
            left -= n;
        }
        t
    }
}

/// Where one committed delta's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeltaPhases {
    /// `PAGEMAP_SCAN`.
    pub scan: Duration,
    /// Copy of the runs into the temp file.
    pub copy: Duration,
    /// Post read, retain, meta write-back.
    pub validate: Duration,
    /// Table and data read back for their CRCs, footer written.
    pub footer: Duration,
    /// `fdatasync` of the delta.
    pub sync: Duration,
    /// `rename` + `fsync` of the chain directory.
    pub publish: Duration,
}

/// The chain the delta fixture extends.
#[derive(Debug, Clone)]
struct Chain {
    /// The pages earlier attempts scanned since the tip's image; its tip is the chain's.
    carry: Carry,
    next_seq: u64,
    base_bytes: u64,
    deltas: u64,
    delta_bytes: u64,
}

/// The delta, raw-pages, full-snapshot and chain-restore rows over one 256 MiB region.
#[derive(Debug)]
pub struct DeltaFixture {
    region: Arc<TrackedRegion>,
    /// The chain's base file (its deltas in `chain_dir(target)`).
    chain_persister: Persister,
    /// Today's full snapshots.
    full_persister: Persister,
    dir: OwnedFd,
    scratch: Scratch,
    chain: Option<Chain>,
    rng: Rng,
    /// Where restores go (same length, sealed).
    restore: Memfd,
    raw_image: String,
    raw_pages_tmp: String,
    generation: u64,
    /// Phases of every committed delta, in order.
    pub phases: Vec<DeltaPhases>,
}

impl DeltaFixture {
    /// The 256 MiB region (E = 4096, a 256 KiB ring full of live entries, tail fully touched,
    /// tracked) and a base of it.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let request = LayoutRequest {
            entries: 4096,
            data_size: 256 << 10,
        };
        let region = TrackedRegion::new(REGION, request, 4096, 64)?;
        let mut f = Self::with_region(dir, region, "256m")?;
        f.base()?;
        Ok(f)
    }

    /// Pages of the region.
    pub fn pages(&self) -> u64 {
        self.region.len / PAGE
    }

    fn next_meta(&mut self) -> SnapshotMeta {
        self.generation += 1;
        SnapshotMeta {
            strategy: Strategy::Queue.code(),
            generation: self.generation,
            unix_time_ns: self.generation,
        }
    }

    /// A new base of the chain, as the host takes it: scan first (so the next can be a
    /// delta), then today's full snapshot.
    ///
    /// # Errors
    ///
    /// Any I/O error; `Other` if the snapshot persisted nothing.
    pub fn base(&mut self) -> io::Result<()> {
        self.region.scan()?;
        let meta = self.next_meta();
        let r = &self.region;
        let s = take_queue(
            &r.memfd,
            &r.map,
            &self.chain_persister,
            meta,
            &mut self.scratch,
        )?;
        let QueueSnapshot::Written { file, figures } = s else {
            return Err(io::Error::other(format!("no base written: {s:?}")));
        };
        file.commit()?;
        self.chain = Some(Chain {
            carry: Carry::new(Tip::of_base(&figures.info)),
            next_seq: figures.retained.hints.next_seq,
            base_bytes: figures.copy.bytes,
            deltas: 0,
            delta_bytes: 0,
        });
        Ok(())
    }

    /// Writes `n` random tail pages (the client's work between two snapshots).
    pub fn dirty(&mut self, n: u64) -> Vec<u64> {
        self.region.dirty(&mut self.rng, n)
    }

    /// `n` random tail pages, not written.
    pub fn pick(&mut self, n: u64) -> Vec<u64> {
        self.region.pick(&mut self.rng, n)
    }

    /// One delta onto the chain through the host's [`take_delta`], committed.
    ///
    /// # Errors
    ///
    /// Any error of the attempt; `Other` if it wrote no delta.
    pub fn delta(&mut self) -> io::Result<DeltaFigures> {
        self.delta_attempt()?
            .map_err(|_| io::Error::other("the delta attempt starved"))
    }

    /// One delta attempt onto the chain through the host's [`take_delta`]; `Err` with the
    /// figures of the starved attempt and the bytes its carry now holds if it starved (the
    /// chain goes on: its carry holds the attempt's scan, as in the host).
    ///
    /// # Errors
    ///
    /// Any error of the attempt; `Other` for an outcome other than written or starved.
    pub fn delta_attempt(&mut self) -> io::Result<Result<DeltaFigures, (Starved, u64)>> {
        let mut chain = self
            .chain
            .take()
            .ok_or_else(|| io::Error::other("no base"))?;
        let r = Arc::clone(&self.region);
        let mut scanner = r.scanner();
        let req = DeltaRequest {
            memfd: &r.memfd,
            map: &r.map,
            scanner: &mut scanner,
            range: r.range,
            carry: &mut chain.carry,
            parent_next_seq: chain.next_seq,
            chain: ChainSize {
                base_bytes: chain.base_bytes,
                deltas: chain.deltas,
                delta_bytes: chain.delta_bytes,
            },
            policy: CompactionPolicy {
                max_ratio_percent: u64::MAX,
                max_deltas: u64::MAX,
            },
            unix_time_ns: 0,
        };
        let (delta, figures) = match take_delta(&self.chain_persister, req, &mut self.scratch) {
            Ok(DeltaSnapshot::Written { delta, figures }) => (delta, figures),
            Ok(DeltaSnapshot::Starved(s)) => {
                let carried = chain.carry.bytes();
                self.chain = Some(chain);
                return Ok(Err((s, carried)));
            }
            Ok(other) => return Err(io::Error::other(format!("no delta written: {other:?}"))),
            Err(e) => return Err(err(e)),
        };
        let committed = PendingDelta::commit(delta).map_err(err)?;
        let info = committed.info;
        self.phases.push(DeltaPhases {
            scan: figures.scan_time,
            copy: figures.copy_time,
            validate: figures.validate_time,
            footer: info.stats.footer,
            sync: info.stats.sync,
            publish: info.stats.publish,
        });
        self.chain = Some(Chain {
            carry: committed.carry,
            next_seq: figures.retained.hints.next_seq,
            deltas: chain.deltas + 1,
            delta_bytes: chain.delta_bytes + figures.bytes,
            ..chain
        });
        Ok(Ok(figures))
    }

    /// Today's full snapshot of the region ([`take_queue`] + commit), into its own file.
    ///
    /// # Errors
    ///
    /// Any I/O error; `Other` if it persisted nothing.
    pub fn full_snapshot(&mut self) -> io::Result<()> {
        let meta = self.next_meta();
        let r = &self.region;
        let s = take_queue(
            &r.memfd,
            &r.map,
            &self.full_persister,
            meta,
            &mut self.scratch,
        )?;
        let QueueSnapshot::Written { file, .. } = s else {
            return Err(io::Error::other(format!("no snapshot written: {s:?}")));
        };
        file.commit()?;
        Ok(())
    }

    /// The raw reference of a delta: `pages` read from the memfd and written into a fresh
    /// file, one after the other, then `fdatasync`. The unlink is not timed.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn raw_pages(&self, pages: &[u64]) -> io::Result<Duration> {
        let start = Instant::now();
        let fd = rustix::fs::openat(
            &self.dir,
            self.raw_pages_tmp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        )?;
        let out = File::from(fd);
        let mut buf = vec![0u8; PAGE as usize];
        for (i, &off) in pages.iter().enumerate() {
            pread_exact(&self.region.memfd, &mut buf, off)?;
            out.write_all_at(&buf, i as u64 * PAGE)?;
        }
        rustix::fs::fdatasync(&out)?;
        let t = start.elapsed();
        rustix::fs::unlinkat(
            &self.dir,
            self.raw_pages_tmp.as_str(),
            rustix::fs::AtFlags::empty(),
        )?;
        Ok(t)
    }

    /// A base (a new one unless the chain is a bare base) plus `deltas` deltas of `percent` %
    /// random pages each, and a raw full image of the same state. Sanity: the chain restores byte for byte to the live region.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    ///
    /// # Panics
    ///
    /// If the restored region differs from the live one.
    pub fn build_chain(&mut self, deltas: u64, percent: u64) -> io::Result<()> {
        if self.chain.as_ref().is_none_or(|c| c.deltas > 0) {
            self.base()?;
        }
        for _ in 0..deltas {
            let n = self.pages() * percent / 100;
            let pages = self.dirty(n);
            let f = self.delta()?;
            assert_eq!(
                f.written_pages,
                pages.len() as u64,
                "the delta holds the pages written"
            );
        }
        crate::sys::raw_snapshot(
            &self.dir,
            ".inc-raw-image.tmp",
            &self.raw_image,
            &self.region.memfd,
            REGION,
        )?;
        let report = self.restore_chain()?;
        assert_eq!(report, deltas, "every delta applied");
        assert!(same_bytes(&self.restore, &self.region.memfd, REGION)?);
        Ok(())
    }

    /// [`restore_chain`] of the newest state into the restore memfd; returns the deltas
    /// applied.
    ///
    /// # Errors
    ///
    /// Any error of the restore.
    pub fn restore_chain(&self) -> io::Result<u64> {
        let target = self.chain_persister.target();
        let report =
            restore_chain(&target, &chain_dir(&target), &self.restore, At::Latest).map_err(err)?;
        Ok(report.listing.deltas.len() as u64)
    }

    /// The raw reference of a restore: a sparse copy of one full image back into the memfd.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn raw_restore(&self) -> io::Result<()> {
        let fd = rustix::fs::openat(
            &self.dir,
            self.raw_image.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        copy_sparse(&fd, &self.restore, REGION)?;
        Ok(())
    }
}

impl Drop for DeltaFixture {
    /// Removes the snapshot files, deltas and raw files this fixture wrote.
    fn drop(&mut self) {
        for p in [&self.chain_persister, &self.full_persister] {
            let _ = std::fs::remove_dir_all(chain_dir(&p.target()));
            if let Ok(gens) = p.generations() {
                for g in gens {
                    let _ = std::fs::remove_file(g.path);
                }
            }
            let _ = p.remove_stale_temps();
        }
        let _ = rustix::fs::unlinkat(
            &self.dir,
            self.raw_image.as_str(),
            rustix::fs::AtFlags::empty(),
        );
    }
}

/// Which side of the delta row a [`DeltaBench`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaSide {
    /// `take_delta` + commit after the pages were written.
    Delta,
    /// `pread` + `pwrite` of as many pages into a fresh file + `fdatasync`.
    RawPages,
    /// `take_queue` + commit of the whole region.
    Full,
}

/// One side of the delta row; one operation = one snapshot after `percent` % of the pages
/// were written (the writes are not timed).
#[derive(Debug)]
pub struct DeltaBench<'f> {
    /// The fixture (shared by the three sides, which run alternately).
    pub fixture: &'f std::cell::RefCell<DeltaFixture>,
    /// What is timed.
    pub side: DeltaSide,
    /// Percent of the region's pages written before each operation.
    pub percent: u64,
}

impl Bench for DeltaBench<'_> {
    fn run(&mut self, iters: u64) -> Duration {
        let mut f = self.fixture.borrow_mut();
        let n = f.pages() * self.percent / 100;
        let mut t = Duration::ZERO;
        for _ in 0..iters {
            t += match self.side {
                DeltaSide::Delta => {
                    let pages = f.dirty(n);
                    let start = Instant::now();
                    let figures = f.delta().expect("delta");
                    let t = start.elapsed();
                    assert_eq!(figures.written_pages, pages.len() as u64);
                    t
                }
                // The references write nothing into the region: the next delta's scan
                // reports exactly the pages its own side wrote.
                DeltaSide::RawPages => {
                    let pages = f.pick(n);
                    f.raw_pages(&pages).expect("raw pages")
                }
                DeltaSide::Full => {
                    let start = Instant::now();
                    f.full_snapshot().expect("full snapshot");
                    start.elapsed()
                }
            };
        }
        t
    }
}

/// `pread` until `buf` is full.
fn pread_exact(fd: impl AsFd, buf: &mut [u8], mut off: u64) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = rustix::io::pread(&fd, &mut buf[got..], off)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
        off += n as u64;
    }
    Ok(())
}

/// `true` if the first `len` bytes of `a` and `b` are equal (compared in 1 MiB chunks).
fn same_bytes(a: &Memfd, b: &Memfd, len: u64) -> io::Result<bool> {
    let chunk = 1 << 20;
    let (mut x, mut y) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut off = 0;
    while off < len {
        let n = chunk.min((len - off) as usize);
        pread_exact(a, &mut x[..n], off)?;
        pread_exact(b, &mut y[..n], off)?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// What N snapshots of a region under a flat-out committer did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Starvation {
    /// Snapshot attempts.
    pub attempts: u64,
    /// Attempts that kept entries and were persisted (bases and deltas).
    pub persisted: u64,
    /// Of those, deltas.
    pub deltas: u64,
    /// Attempts where entries existed but none survived the copy.
    pub starved: u64,
    /// Of those, delta attempts.
    pub starved_deltas: u64,
    /// Copy time of the starved attempts, summed.
    pub starved_copy: Duration,
    /// Commits made during the copies of the starved attempts, summed.
    pub starved_commits: u64,
    /// Bytes the carries held after the starved delta attempts (what each had to copy,
    /// besides the meta pages), summed.
    pub starved_carry_bytes: u64,
    /// Copy time of the persisted attempts, summed.
    pub persisted_copy: Duration,
    /// Persisted deltas whose copy stopped at an entry that was gone (newest entries first,
    /// DESIGN §11).
    pub stopped_deltas: u64,
    /// Bytes the persisted deltas planned (their scan, carry and meta pages), summed.
    pub persisted_planned_bytes: u64,
    /// Bytes the persisted deltas carry, summed.
    pub persisted_bytes: u64,
    /// Bytes the persisted deltas left out (into the next delta's carry), summed.
    pub left_bytes: u64,
    /// Entries kept, summed over the persisted attempts.
    pub kept: u64,
    /// Commits the writer made during the run.
    pub commits: u64,
    /// Wall time of the N attempts.
    pub time: Duration,
}

/// A thread commits [`STARVE_PAYLOAD`] payloads as fast as it can into a 64-entry ring
/// ([`STARVE_RING`]) of a 64 MiB fully touched tracked region, while this thread takes
/// `snapshots` snapshot attempts back to back: all full (`incremental == false`), or
/// incremental: a base taken before the committer starts, then deltas, each carrying the
/// scans of the starved attempts before it (as the host does; DESIGN §11).
///
/// # Errors
///
/// Any I/O error.
pub fn starvation(dir: &Path, snapshots: u64, incremental: bool) -> io::Result<Starvation> {
    let request = LayoutRequest {
        entries: 64,
        data_size: STARVE_RING,
    };
    let region = TrackedRegion::new(64 << 20, request, 64, STARVE_PAYLOAD)?;
    let mut f = DeltaFixture::with_region(dir, region, "starve")?;
    if incremental {
        // The chain's first base, taken while the region is quiet (under the committer a base
        // starves like any full snapshot, and a delta needs a base).
        f.try_full(&mut Starvation::default(), true)?;
    }
    let stop = AtomicBool::new(false);
    let shared = Arc::clone(&f.region);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let words = shared.map.words();
            let mut w = Writer::attach(words, crate::CLIENT).expect("attach");
            let mut p = vec![0x3cu8; STARVE_PAYLOAD];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                p[..8].copy_from_slice(&w.next_seq().to_le_bytes());
                w.commit(&p).expect("commit");
                n += 1;
            }
            n
        });
        let out = f.starve_loop(snapshots, incremental);
        stop.store(true, Ordering::Relaxed);
        let commits = writer.join().expect("writer thread");
        out.map(|o| Starvation { commits, ..o })
    })
}

impl DeltaFixture {
    fn with_region(dir: &Path, region: TrackedRegion, tag: &str) -> io::Result<Self> {
        let region = Arc::new(region);
        let restore = Memfd::create("bench-chain-restore", region.len)?;
        restore.seal_against_shrink()?;
        Ok(Self {
            region,
            chain_persister: Persister::new(&dir.join(format!("inc-{tag}-chain.snap")), 1)?,
            full_persister: Persister::new(&dir.join(format!("inc-{tag}-full.snap")), 1)?,
            dir: rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?,
            scratch: Scratch::default(),
            chain: None,
            rng: Rng(0x2545_f491_4f6c_dd1d),
            restore,
            raw_image: format!("inc-{tag}-raw-image.snap"),
            raw_pages_tmp: format!(".inc-{tag}-raw-pages.tmp"),
            generation: 0,
            phases: Vec::new(),
        })
    }

    /// `snapshots` attempts, full or incremental, under the committing thread.
    fn starve_loop(&mut self, snapshots: u64, incremental: bool) -> io::Result<Starvation> {
        let mut out = Starvation::default();
        let start = Instant::now();
        for _ in 0..snapshots {
            out.attempts += 1;
            let kept = if incremental && self.chain.is_some() {
                self.try_delta(&mut out)?
            } else if incremental {
                self.try_full(&mut out, true)?
            } else {
                self.try_full(&mut out, false)?
            };
            out.kept += kept;
        }
        out.time = start.elapsed();
        Ok(out)
    }

    /// One delta attempt; a starved one keeps the chain, its scan carried.
    fn try_delta(&mut self, out: &mut Starvation) -> io::Result<u64> {
        Ok(match self.delta_attempt()? {
            Ok(f) => {
                out.persisted += 1;
                out.deltas += 1;
                out.persisted_copy += f.copy_time;
                out.stopped_deltas += u64::from(f.stopped);
                out.persisted_planned_bytes += f.planned_bytes;
                out.persisted_bytes += f.bytes;
                out.left_bytes += f.left_bytes;
                f.retained.kept
            }
            Err((s, carried)) => {
                out.starved += 1;
                out.starved_deltas += 1;
                out.starved_copy += s.copy_time;
                out.starved_commits += s.commits_during_copy;
                out.starved_carry_bytes += carried;
                0
            }
        })
    }

    /// One full attempt (a base of the chain if `base`, with its scan first).
    fn try_full(&mut self, out: &mut Starvation, base: bool) -> io::Result<u64> {
        if base {
            self.region.scan()?;
        }
        let meta = self.next_meta();
        let r = &self.region;
        let p = if base {
            &self.chain_persister
        } else {
            &self.full_persister
        };
        match take_queue(&r.memfd, &r.map, p, meta, &mut self.scratch)? {
            QueueSnapshot::Written { file, figures } => {
                file.commit()?;
                out.persisted += 1;
                out.persisted_copy += figures.copy_time;
                if base {
                    self.chain = Some(Chain {
                        carry: Carry::new(Tip::of_base(&figures.info)),
                        next_seq: figures.retained.hints.next_seq,
                        base_bytes: figures.copy.bytes,
                        deltas: 0,
                        delta_bytes: 0,
                    });
                }
                Ok(figures.retained.kept)
            }
            QueueSnapshot::Starved(s) => {
                out.starved += 1;
                out.starved_copy += s.copy_time;
                out.starved_commits += s.commits_during_copy;
                Ok(0)
            }
            // No entry yet (the committer has not committed): nothing to keep.
            QueueSnapshot::Skipped(_) => Ok(0),
        }
    }
}

/// What [`busy_chain_check`] found.
#[derive(Debug, Default, Clone)]
pub struct BusyCheck {
    /// Deltas committed (each restored and checked).
    pub deltas: u64,
    /// Of those, deltas that carried the scan of a starved attempt before them.
    pub carried: u64,
    /// Attempts (bases and deltas) that starved.
    pub starved: u64,
    /// Deltas committed whose copy stopped at an entry that was gone, leaving planned pages
    /// to the next delta's carry (DESIGN §11, "The newest entries first").
    pub stopped: u64,
    /// Entries checked in restored images.
    pub entries: u64,
    /// The first kept entry whose restored bytes are not what was committed under its seq.
    pub violation: Option<String>,
}

/// Payload of the busy check: every word holds the seq, so a page left over from an older
/// payload shows another seq.
fn busy_payload(seq: u64, out: &mut [u8]) {
    for w in out.chunks_exact_mut(8) {
        w.copy_from_slice(&seq.to_le_bytes());
    }
}

/// The pre/post argument under real tracking: a thread commits 4 KiB payloads (every word
/// = the seq) into a 256-entry, 1 MiB ring of a 64 MiB fully touched tracked region, pausing
/// ~`pause` between commits, while this thread takes `attempts` deltas through [`take_delta`]
/// (a starved attempt's scan carried into the next delta); after each committed delta the
/// chain is restored with
/// [`restore_chain`] and every kept entry's bytes are checked against its seq.
///
/// # Errors
///
/// Any I/O error.
pub fn busy_chain_check(dir: &Path, attempts: u64, pause: Duration) -> io::Result<BusyCheck> {
    const PAYLOAD: usize = 4 << 10;
    let request = LayoutRequest {
        entries: 256,
        data_size: 1 << 20,
    };
    let region = TrackedRegion::new(64 << 20, request, 0, 8)?;
    let mut f = DeltaFixture::with_region(dir, region, "busy")?;
    let stop = AtomicBool::new(false);
    let shared = Arc::clone(&f.region);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut w = Writer::attach(shared.map.words(), crate::CLIENT).expect("attach");
            let mut p = vec![0u8; PAYLOAD];
            while !stop.load(Ordering::Relaxed) {
                busy_payload(w.next_seq(), &mut p);
                w.commit(&p).expect("commit");
                let t = Instant::now();
                while t.elapsed() < pause {
                    std::hint::spin_loop();
                }
            }
        });
        let out = f.busy_loop(attempts);
        stop.store(true, Ordering::Relaxed);
        out
    })
}

impl DeltaFixture {
    fn busy_loop(&mut self, attempts: u64) -> io::Result<BusyCheck> {
        let mut out = BusyCheck::default();
        for _ in 0..attempts {
            if self.chain.is_none() {
                let mut s = Starvation::default();
                self.try_full(&mut s, true)?;
                out.starved += s.starved;
                if self.chain.is_none() {
                    // Skipped (no commit yet) or starved: let the committer move on.
                    std::thread::sleep(Duration::from_millis(2));
                }
                continue;
            }
            match self.delta_attempt()? {
                Err(_) => out.starved += 1,
                Ok(f) => {
                    out.deltas += 1;
                    out.carried += u64::from(f.carried_scans > 0);
                    out.stopped += u64::from(f.stopped && f.left_bytes > 0);
                    self.restore_chain()?;
                    let (n, bad) = check_busy_image(&self.restore)?;
                    out.entries += n;
                    if bad.is_some() {
                        out.violation = bad;
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Checks every entry of a restored busy region: each word of its payload is its seq.
fn check_busy_image(restored: &Memfd) -> io::Result<(u64, Option<String>)> {
    let map = Mapping::of_memfd(restored, Protection::ReadOnly)?;
    let region = shmsnap_core::Region::open(map.words()).map_err(err)?;
    let mut buf = vec![0u8; 4 << 10];
    let mut n = 0;
    for d in region.entries() {
        let len = region.read_payload(&d, &mut buf).map_err(err)?;
        n += 1;
        let bad = buf[..len]
            .chunks_exact(8)
            .position(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()) != d.seq);
        if let Some(word) = bad {
            let got =
                u64::from_le_bytes(buf[word * 8..word * 8 + 8].try_into().unwrap_or_default());
            return Ok((
                n,
                Some(format!(
                    "entry {} restored from the chain holds seq {got}'s bytes at byte {} \
                     (page {} of its payload)",
                    d.seq,
                    word * 8,
                    word * 8 / PAGE as usize
                )),
            ));
        }
    }
    Ok((n, None))
}
