//! Durability feedback (DESIGN §14): how long after a commit `persisted()` covers it, and what
//! waiting costs a client's throughput.
//!
//! A [`DurableFixture`] runs the host in a thread exactly as `shmsnap run` does it for the
//! queue: it sleeps on the request word (`RequestWatch::wait`) for at most the interval, then
//! takes one snapshot (`take_queue`, `TempFile::commit`: fdatasync, rename, directory fsync)
//! and publishes it (`StatusPublisher::publish`). The client commits 64-byte payloads.
//!
//! - **prompt**: commit, `request_snapshot`, `wait_persisted` — the latency of one host cycle
//!   plus the wake-ups;
//! - **interval**: commit, `wait_persisted` without a request — the host's interval decides;
//! - **reference**: one host snapshot cycle alone, timed in the same run (the floor of
//!   "prompt");
//! - **throughput**: commits per second of a client that requests and waits on every N-th
//!   commit, against one that never waits.
//!
//! The fixture checks, before timing, that a prompt wait returns covered and that the
//! published seq is the newest commit.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmsnap_core::{status as core_status, LayoutRequest, Status, Strategy, Writer};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::SnapshotMeta;
use shmsnap_linux::status::{self, RequestWatch, StatusPublisher};
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch};
use shmsnap_linux::{Mapping, Memfd, Protection};

/// Region size (small: the snapshot cycle is dominated by the syncs, as for a small state).
pub const LEN: u64 = 1 << 20;
const REQUEST: LayoutRequest = LayoutRequest {
    entries: 256,
    data_size: 1 << 16,
};
/// Longest wait the fixture accepts before calling the host stuck.
const STUCK: Duration = Duration::from_secs(30);

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The host's side: snapshots on request or every `interval`, publishing each.
struct Host {
    memfd: Memfd,
    map: Mapping,
    persister: Persister,
    publisher: StatusPublisher,
    watch: RequestWatch,
    scratch: Scratch,
    generation: u64,
}

impl Host {
    /// One snapshot cycle and its publish; `Ok(false)` if nothing was persisted.
    fn cycle(&mut self) -> io::Result<bool> {
        let meta = SnapshotMeta {
            strategy: Strategy::Queue.code(),
            generation: self.generation + 1,
            unix_time_ns: 0,
        };
        let taken = take_queue(
            &self.memfd,
            &self.map,
            &self.persister,
            meta,
            &mut self.scratch,
        )?;
        let QueueSnapshot::Written { file, figures } = taken else {
            return Ok(false);
        };
        file.commit()?;
        self.generation += 1;
        self.publisher.publish(Status {
            seq: figures.retained.newest.map_or(0, |d| d.seq),
            generation: self.generation,
            replica_seq: 0,
        })?;
        Ok(true)
    }

    fn run(mut self, interval: Duration, stop: &AtomicBool) -> io::Result<()> {
        let mut next = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            let left = next.saturating_duration_since(Instant::now());
            let requested = !left.is_zero() && self.watch.wait(left)?;
            if requested || Instant::now() >= next {
                // An unchanged region is skipped by the real host too; here `take_queue`
                // would rewrite it, so only snapshot when something was committed.
                let live = shmsnap_core::Region::open(self.map.words())
                    .map(|r| r.newest().map_or(0, |d| d.seq))
                    .unwrap_or(0);
                if live > self.publisher.last().seq {
                    self.cycle()?;
                }
                next = Instant::now() + interval;
            }
        }
        Ok(())
    }
}

/// A region with a host thread snapshotting it (module docs).
#[derive(Debug)]
pub struct DurableFixture {
    /// The client's mapping.
    client: Mapping,
    stop: Arc<AtomicBool>,
    host: Option<JoinHandle<io::Result<()>>>,
    payload: [u8; 64],
}

impl DurableFixture {
    /// A fresh region whose host snapshots on request, or every `interval` without one;
    /// snapshot files go to `dir`. Checks one prompt acknowledgement (sanity).
    ///
    /// # Errors
    ///
    /// The syscalls' errors; `Other` if the sanity check fails.
    pub fn new(dir: &Path, interval: Duration) -> io::Result<Self> {
        let memfd = Memfd::create("bench-durable", LEN)?;
        memfd.seal_against_shrink()?;
        let client = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        Writer::init(client.words(), REQUEST, crate::CLIENT).map_err(err)?;
        let tag = interval.as_millis();
        let host = Host {
            map: Mapping::of_memfd(&memfd, Protection::ReadOnly)?,
            persister: Persister::new(&dir.join(format!("durable-{tag}ms.snap")), 1)?,
            publisher: StatusPublisher::new(&memfd)?,
            watch: RequestWatch::new(&memfd)?,
            scratch: Scratch::default(),
            generation: 0,
            memfd,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || host.run(interval, &s));
        let mut f = DurableFixture {
            client,
            stop,
            host: Some(thread),
            payload: [7; 64],
        };
        let t = f.prompt(1)?;
        let seq = Writer::attach(f.client.words(), crate::CLIENT)
            .map_err(err)?
            .next_seq()
            - 1;
        let s = core_status::persisted(f.client.words());
        if s.seq != seq || t.is_zero() {
            return Err(io::Error::other(format!(
                "sanity: published {s:?} after commit {seq}"
            )));
        }
        Ok(f)
    }

    fn writer(&self) -> io::Result<Writer<'_, [std::sync::atomic::AtomicU64]>> {
        Writer::attach(self.client.words(), crate::CLIENT).map_err(err)
    }

    fn wait(&self, seq: u64) -> io::Result<()> {
        if status::wait_persisted(self.client.words(), seq, STUCK)? {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "seq {seq} not persisted within {STUCK:?}"
            )))
        }
    }

    /// `iters` times: commit, request, wait until covered. Returns the total time.
    ///
    /// # Errors
    ///
    /// I/O errors, or a host that does not publish within 30 s.
    pub fn prompt(&mut self, iters: u64) -> io::Result<Duration> {
        let mut w = self.writer()?;
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            let seq = w.commit(&self.payload).map_err(err)?;
            status::request_snapshot(self.client.words())?;
            self.wait(seq)?;
            total += t.elapsed();
        }
        Ok(total)
    }

    /// `iters` times: commit, wait until covered, without a request. Returns the total time.
    ///
    /// # Errors
    ///
    /// As [`prompt`](Self::prompt).
    pub fn interval(&mut self, iters: u64) -> io::Result<Duration> {
        let mut w = self.writer()?;
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            let seq = w.commit(&self.payload).map_err(err)?;
            self.wait(seq)?;
            total += t.elapsed();
        }
        Ok(total)
    }

    /// `commits` commits, requesting and waiting after every `every`-th (0: never). Returns
    /// the total time.
    ///
    /// # Errors
    ///
    /// As [`prompt`](Self::prompt).
    pub fn throughput(&mut self, commits: u64, every: u64) -> io::Result<Duration> {
        let mut w = self.writer()?;
        let t = Instant::now();
        for i in 1..=commits {
            let seq = w.commit(&self.payload).map_err(err)?;
            if every > 0 && i % every == 0 {
                status::request_snapshot(self.client.words())?;
                self.wait(seq)?;
            }
        }
        Ok(t.elapsed())
    }
}

impl Drop for DurableFixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the host's wait so it sees the stop flag at once.
        let _ = status::request_snapshot(self.client.words());
        if let Some(h) = self.host.take() {
            let _ = h.join();
        }
    }
}
