//! Durability feedback (DESIGN §14): how long after a commit `persisted()` covers it, and what
//! waiting costs a client's throughput.
//!
//! A [`DurableFixture`] runs the host in a thread exactly as `shmsnap run` does it for the
//! queue: it sleeps on the request word (`RequestWatch::wait`) for at most the interval, then
//! takes one snapshot (`take_queue`, `TempFile::commit_durable`: fdatasync, rename, directory
//! fsync), publishes it (`StatusPublisher::publish`) and then unlinks the dropped generation
//! (`Persister::drop_old`). The client commits 64-byte payloads.
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
use std::sync::{Arc, Mutex, PoisonError};
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
/// The host's answer to a starved attempt, as `shmsnap run` gives it (host/src/supervisor:
/// a client's request whose snapshot starved is retried at once, this many times).
pub const HOST_RETRIES: OnStarved = OnStarved::Retry(3);
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

/// What the fixture's host does after a starved attempt (DESIGN §14, "Prompt snapshots").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStarved {
    /// The host before issue 27's acknowledgement work: the cycle ends, the next snapshot
    /// comes with the next change of the request word or the next interval tick.
    Wait,
    /// The host now: a starved attempt made for a request is retried at once, at most this
    /// many times in a row; then the next request or tick.
    Retry(u32),
}

/// One attempt of a host cycle, timed (the hop log of [`busy_ack`]).
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    /// `take_queue` minus its copy and post phases: the `pre` read and the temp file.
    pub pre: Duration,
    /// The sparse copy (`pre` .. `post` is `copy` plus the meta read-back).
    pub copy: Duration,
    /// Post read, retain, meta write-back and footer (CRC of the image).
    pub post: Duration,
    /// Nothing survived the copy.
    pub starved: bool,
}

/// One host cycle: woken (by a request or the interval), one or more attempts, the persist
/// and the publish.
#[derive(Clone, Debug)]
pub struct Cycle {
    /// When the host's wait returned.
    pub woke: Instant,
    /// Whether a change of the request word woke it (else the interval).
    pub requested: bool,
    /// The attempts, in order.
    pub attempts: Vec<Attempt>,
    /// `TempFile::commit_durable` (fdatasync, rename, directory fsync) of the persisted
    /// attempt.
    pub sync: Option<Duration>,
    /// When the publish (status stores and futex wake) returned, and the seq it published.
    pub published: Option<(Instant, u64)>,
}

/// The hop log: `None` when nobody reads it (the idle benchmarks).
type Log = Option<Arc<Mutex<Vec<Cycle>>>>;

impl Host {
    /// One snapshot attempt and, if it persisted, its commit and publish; `Ok(false)` if
    /// nothing was persisted (starved).
    fn cycle(&mut self, log: &mut Cycle) -> io::Result<bool> {
        let meta = SnapshotMeta {
            strategy: Strategy::Queue.code(),
            generation: self.generation + 1,
            unix_time_ns: 0,
        };
        let t = Instant::now();
        let taken = take_queue(
            &self.memfd,
            &self.map,
            &self.persister,
            meta,
            &mut self.scratch,
        )?;
        let total = t.elapsed();
        let (copy, post, starved) = match &taken {
            QueueSnapshot::Written { figures, .. } => {
                (figures.copy_time, figures.validate_time, false)
            }
            QueueSnapshot::Starved(s) => (s.copy_time, Duration::ZERO, true),
            QueueSnapshot::Skipped(_) => (Duration::ZERO, Duration::ZERO, false),
        };
        log.attempts.push(Attempt {
            pre: total.saturating_sub(copy + post),
            copy,
            post,
            starved,
        });
        let QueueSnapshot::Written { file, figures } = taken else {
            return Ok(false);
        };
        let t = Instant::now();
        file.commit_durable()?;
        log.sync = Some(t.elapsed());
        self.generation += 1;
        let seq = figures.retained.newest.map_or(0, |d| d.seq);
        self.publisher.publish(Status {
            seq,
            generation: self.generation,
            replica_seq: 0,
        })?;
        log.published = Some((Instant::now(), seq));
        // As the host: the dropped generation is unlinked after the publish.
        self.persister.drop_old()?;
        Ok(true)
    }

    fn run(
        mut self,
        interval: Duration,
        on_starved: OnStarved,
        log: &Log,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut next = Instant::now() + interval;
        while !stop.load(Ordering::Relaxed) {
            let left = next.saturating_duration_since(Instant::now());
            let requested = !left.is_zero() && self.watch.wait(left)?;
            if requested || Instant::now() >= next {
                let mut cycle = Cycle {
                    woke: Instant::now(),
                    requested,
                    attempts: Vec::new(),
                    sync: None,
                    published: None,
                };
                // An unchanged region is skipped by the real host too; here `take_queue`
                // would rewrite it, so only snapshot when something was committed.
                let live = shmsnap_core::Region::open(self.map.words())
                    .map(|r| r.newest().map_or(0, |d| d.seq))
                    .unwrap_or(0);
                if live > self.publisher.last().seq {
                    let retries = match on_starved {
                        OnStarved::Retry(n) if requested => n,
                        _ => 0,
                    };
                    for _ in 0..=retries {
                        if self.cycle(&mut cycle)? || stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                if let Some(log) = log {
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(cycle);
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
        Self::with(dir, interval, HOST_RETRIES, None)
    }

    /// As [`new`](Self::new), with the host's answer to a starved attempt and a hop log.
    fn with(dir: &Path, interval: Duration, on_starved: OnStarved, log: Log) -> io::Result<Self> {
        let memfd = Memfd::create("bench-durable", LEN)?;
        memfd.seal_against_shrink()?;
        let client = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        Writer::init(client.words(), REQUEST, crate::CLIENT).map_err(err)?;
        let tag = format!(
            "{}ms{}",
            interval.as_millis(),
            if log.is_some() { "-busy" } else { "" }
        );
        let host = Host {
            map: Mapping::of_memfd(&memfd, Protection::ReadOnly)?,
            persister: Persister::new(&dir.join(format!("durable-{tag}.snap")), 1)?,
            publisher: StatusPublisher::new(&memfd)?,
            watch: RequestWatch::new(&memfd)?,
            scratch: Scratch::default(),
            generation: 0,
            memfd,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || host.run(interval, on_starved, &log, &s));
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

/// One acknowledgement under load: what [`busy_ack`] measured for one request.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The commit → `wait_persisted` returned (the acknowledgement latency).
    pub latency: Duration,
    /// The commit → the acknowledger's request (its wake-up from the writer's handover).
    pub to_request: Duration,
    /// Request → the host's wake for the cycle that covered it; zero when the covering cycle
    /// woke before the request (a snapshot in flight served it).
    pub to_wake: Duration,
    /// Host cycles woken after the request that published nothing (every attempt starved).
    pub empty_cycles: u32,
    /// Attempts of the covering cycle (1 if the first persisted).
    pub attempts: u32,
    /// The covering cycle's persisted attempt.
    pub attempt: Attempt,
    /// Its `TempFile::commit_durable` (fdatasync, rename, directory fsync).
    pub sync: Duration,
    /// Publish returned → the waiter's `wait_persisted` returned.
    pub to_waiter: Duration,
}

/// What [`busy_ack`] measured.
#[derive(Clone, Debug)]
pub struct Busy {
    /// One per acknowledgement, in order.
    pub acks: Vec<Ack>,
    /// The writer's commits per second over the run.
    pub commits_per_s: f64,
    /// Host attempts that starved, over the run (every cycle, requested or not).
    pub starved: u64,
    /// Host attempts over the run.
    pub attempts: u64,
}

/// Acknowledgements under load (issue 27): a writer thread commits 64-byte payloads into the
/// fixture's region (at most `rate` per second, flat out if `None`); every `period`, if the
/// acknowledging thread is idle, the writer hands it the seq it just committed and the
/// commit's time, and that thread requests a snapshot and waits until `persisted()` covers
/// the seq — `samples` times. The latency runs from the commit to the wait's return (the
/// acknowledger's own scheduling included). The host answers starved attempts with
/// `on_starved` and snapshots every `interval` besides. Each acknowledgement is attributed to
/// the host cycle that published a seq covering it, with that cycle's hops.
///
/// # Errors
///
/// I/O errors, a host that does not publish within 30 s, a hop log that names no covering
/// cycle.
pub fn busy_ack(
    dir: &Path,
    interval: Duration,
    on_starved: OnStarved,
    rate: Option<u64>,
    period: Duration,
    samples: usize,
) -> io::Result<Busy> {
    let log: Arc<Mutex<Vec<Cycle>>> = Arc::default();
    let f = DurableFixture::with(dir, interval, on_starved, Some(log.clone()))?;
    let drain = || std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner));
    drain();
    let done = AtomicBool::new(false);
    let mut acks = Vec::with_capacity(samples);
    let mut cycles: Vec<Cycle> = Vec::new();
    let (mut starved, mut attempts) = (0u64, 0u64);
    let mut count = |new: Vec<Cycle>, cycles: &mut Vec<Cycle>| {
        for a in new.iter().flat_map(|c| &c.attempts) {
            starved += u64::from(a.starved);
            attempts += 1;
        }
        cycles.extend(new);
    };
    // Rendezvous: the writer hands a commit over only while the acknowledger waits for one.
    let (handover, commits_rx) = std::sync::mpsc::sync_channel::<(u64, Instant)>(0);
    let (commits, elapsed) = std::thread::scope(|s| -> io::Result<(u64, Duration)> {
        let writer = s.spawn(|| -> io::Result<(u64, Duration)> {
            let mut w = f.writer()?;
            let t0 = Instant::now();
            let mut next_ack = t0 + period;
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let seq = w.commit(&f.payload).map_err(err)?;
                n += 1;
                let now = Instant::now();
                if now >= next_ack && handover.try_send((seq, now)).is_ok() {
                    next_ack = now + period;
                }
                if let Some(r) = rate {
                    // Paced: commit n is due at t0 + n / rate.
                    let due = Duration::from_nanos(n.saturating_mul(1_000_000_000) / r.max(1));
                    while t0.elapsed() < due && !done.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                }
            }
            Ok((n, t0.elapsed()))
        });
        let mut run = || -> io::Result<()> {
            while acks.len() < samples {
                let (seq, committed) = commits_rx.recv().map_err(|_| err("the writer stopped"))?;
                let asked = Instant::now();
                status::request_snapshot(f.client.words())?;
                f.wait(seq)?;
                let acked = Instant::now();
                // The host logs a cycle after its publish: wait for the entry.
                let (ack, covering) = loop {
                    count(drain(), &mut cycles);
                    match attribute(&cycles, seq, committed, asked, acked) {
                        Ok(found) => break found,
                        Err(e) if acked.elapsed() > Duration::from_secs(1) => return Err(e),
                        Err(_) => std::thread::sleep(Duration::from_micros(50)),
                    }
                };
                acks.push(ack);
                // Cycles before the covering one published less than `seq`: they cannot
                // cover a later request.
                cycles.drain(..covering);
            }
            Ok(())
        };
        let r = run();
        done.store(true, Ordering::Relaxed);
        drop(commits_rx);
        let w = writer.join().map_err(|_| err("the writer panicked"))?;
        r?;
        w
    })?;
    count(drain(), &mut cycles);
    Ok(Busy {
        acks,
        commits_per_s: commits as f64 / elapsed.as_secs_f64(),
        starved,
        attempts,
    })
}

/// The hops of the acknowledgement of `seq`, committed at `committed`, requested at `asked`,
/// acknowledged at `acked`:
/// the first cycle that published a seq `>= seq` covered it.
/// Returns the hops and the covering cycle's index.
fn attribute(
    cycles: &[Cycle],
    seq: u64,
    committed: Instant,
    asked: Instant,
    acked: Instant,
) -> io::Result<(Ack, usize)> {
    let i = cycles
        .iter()
        .position(|c| c.published.is_some_and(|(_, s)| s >= seq))
        .ok_or_else(|| err(format!("no logged cycle published seq {seq}")))?;
    let c = &cycles[i];
    let (published, _) = c.published.expect("found above");
    let empty_cycles = cycles[..i]
        .iter()
        .filter(|c| c.woke >= asked && c.published.is_none())
        .count();
    let ack = Ack {
        latency: acked - committed,
        to_request: asked - committed,
        to_wake: c.woke.saturating_duration_since(asked),
        empty_cycles: u32::try_from(empty_cycles).unwrap_or(u32::MAX),
        attempts: u32::try_from(c.attempts.len()).unwrap_or(u32::MAX),
        attempt: *c
            .attempts
            .last()
            .expect("a cycle that published made an attempt"),
        sync: c.sync.unwrap_or_default(),
        to_waiter: acked.saturating_duration_since(published),
    };
    Ok((ack, i))
}

/// The floor of the host's sync hop: `n` times, a fresh file of `len` bytes in `dir` written,
/// `fdatasync`ed, renamed over a target and the directory `fsync`ed — what `TempFile::commit`
/// must do for any durable image — each timed from the `fdatasync` on.
///
/// # Errors
///
/// The file system's errors.
pub fn raw_sync(dir: &Path, len: usize, n: usize) -> io::Result<Vec<Duration>> {
    use std::io::Write as _;
    let (tmp, target) = (dir.join("raw-sync.tmp"), dir.join("raw-sync"));
    let data = vec![7u8; len];
    let dir_file = std::fs::File::open(dir)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&data)?;
        let t = Instant::now();
        f.sync_data()?;
        std::fs::rename(&tmp, &target)?;
        dir_file.sync_all()?;
        out.push(t.elapsed());
    }
    std::fs::remove_file(&target)?;
    Ok(out)
}
