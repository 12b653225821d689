//! The snapshot worker: one thread owns the [`Snapshotter`] and takes its jobs from a
//! [`Queue`]; the results go to the event loop as events, so signals, reaping and restarts
//! never wait for a copy.
//!
//! At most one job runs at a time. Requests made meanwhile are merged into one pending job,
//! which the thread takes as soon as the running one is done: a snapshot asked for during a
//! copy is taken after that copy, never skipped, and never more than once. A starved attempt
//! that someone waits for (a client's request, SIGUSR1) is retried at once, at most
//! [`STARVED_RETRIES`] times ([`run_job`]).
//!
//! Requests come from the event loop (ticks, SIGUSR1, the client's exit) and straight from the
//! request watcher ([`Requests`], DESIGN §14): a client's request reaches the snapshot thread
//! in one thread hop, not three (watcher → loop → worker before, issue 27). The loop keeps
//! the queue's view of the client current ([`Worker::client_starting`],
//! [`Worker::client_gone`]), so a job the watcher makes says what the loop's would.
//!
//! The thread records every attempt in the [`Metrics`] and publishes when the attempt it is
//! in started ([`Worker::busy_since`]), so the event loop withholds systemd watchdog pings
//! while one snapshot is wedged (see [`crate::watchdog`]).

use std::io;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use rustix::process::Pid;

use tracing::{debug, error};

use shmsnap_linux::Memfd;

use crate::exit::{Code, Failure};
use crate::flow::Outcome;
use crate::metrics::{Metrics, Phase, SnapshotRecord, SnapshotResult};
use crate::snap::{Snapshotter, Tally};

/// When the snapshot thread started the attempt it is running; `None` while it waits for a
/// request. Written only by the snapshot thread (set before an attempt, cleared after it), read
/// by the event loop; a mutex around an `Option<Instant>` because nothing here is hot (two
/// writes per snapshot, one read per watchdog tick) and it is never held across a snapshot.
type BusySince = Arc<Mutex<Option<Instant>>>;

/// Why a snapshot is requested; a later variant outranks an earlier one when requests merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// The interval elapsed.
    Interval,
    /// SIGUSR1.
    Usr1,
    /// The client asked for a prompt snapshot (its request word, DESIGN §14).
    ClientRequest,
    /// The final snapshot after the client exited (before a restart or the host's exit).
    ClientExited,
}

impl Why {
    /// For log lines.
    fn label(self) -> &'static str {
        match self {
            Why::Interval => "interval",
            Why::Usr1 => "SIGUSR1",
            Why::ClientRequest => "client request",
            Why::ClientExited => "client exited",
        }
    }
}

/// One snapshot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Why.
    pub why: Why,
    /// Whether the client may be writing the region when the copy starts. Merged requests
    /// are alive only if all of them were.
    pub client_alive: bool,
    /// The client process when the request was made, if it was running: incremental
    /// snapshots scan its page tables. Merged requests keep it only if all name the same.
    pub client: Option<Pid>,
    /// A stop was requested: no client follows this snapshot, so a sealed region is not
    /// moved to a fresh memfd after it (the next host start does that). Merged: any.
    pub stopping: bool,
}

impl Job {
    fn merge(self, other: Job) -> Job {
        Job {
            why: self.why.max(other.why),
            client_alive: self.client_alive && other.client_alive,
            client: if self.client == other.client {
                self.client
            } else {
                None
            },
            stopping: self.stopping || other.stopping,
        }
    }
}

/// A finished request.
#[derive(Debug)]
pub struct Done {
    /// The request (merged) that was run.
    pub job: Job,
    /// The snapshotter's totals after it.
    pub tally: Tally,
    /// The region, when it changed to a fresh memfd during this request (a duplicate fd):
    /// the next client and the fd store must get this one.
    pub region: Option<io::Result<Memfd>>,
}

/// The client as the event loop sees it, for jobs made by other threads. Invariant: never
/// less cautious than the loop's own view — `alive` is set before the client is spawned and
/// cleared only after it was reaped; `pid` is `None` unless it names the running client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ClientNow {
    alive: bool,
    pid: Option<Pid>,
}

/// What the queue's mutex guards.
#[derive(Debug, Default)]
struct State {
    /// The next job (every request since the thread last took one, merged), with when the
    /// first of them was made and whether a job was running then.
    pending: Option<(Job, Instant, bool)>,
    /// The thread runs a job (taken, its [`Done`] not yet sent).
    running: bool,
    /// No job is taken any more; the thread ends after the running one (pending is dropped).
    stopped: bool,
    /// See [`ClientNow`].
    client: ClientNow,
}

/// The snapshot thread's jobs: the pending (merged) request and whether one runs. Shared by
/// the event loop, the request watcher and the snapshot thread; the mutex is held only to
/// merge, take or flag (never across a snapshot), the condition variable wakes the thread.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a request made at `at`, merged with any pending one, and wakes the thread.
    fn request(&self, job: Job, at: Instant) {
        let mut s = self.lock();
        let running = s.running;
        s.pending = Some(match s.pending {
            None => (job, at, running),
            Some((p, first, behind)) => (p.merge(job), first, behind),
        });
        drop(s);
        self.ready.notify_one();
    }

    /// A client's request (the request watcher saw its word change at `seen`), as the event
    /// loop would make it from the client it knows. `false` once the queue stopped.
    fn client_request(&self, seen: Instant) -> bool {
        let (client, stopped) = {
            let s = self.lock();
            (s.client, s.stopped)
        };
        if stopped {
            return false;
        }
        self.request(
            Job {
                why: Why::ClientRequest,
                client_alive: client.alive,
                client: client.pid,
                stopping: false,
            },
            seen,
        );
        true
    }

    /// The pending job, marking it running; `None` if there is none or the queue stopped.
    #[cfg(test)]
    fn try_take(&self) -> Option<(Job, Instant, bool)> {
        let mut s = self.lock();
        Self::take_locked(&mut s)
    }

    fn take_locked(s: &mut State) -> Option<(Job, Instant, bool)> {
        if s.stopped {
            return None;
        }
        let job = s.pending.take()?;
        s.running = true;
        Some(job)
    }

    /// Waits for a job and takes it; `None` once the queue stopped.
    fn take(&self) -> Option<(Job, Instant, bool)> {
        let mut s = self.lock();
        loop {
            if s.stopped {
                return None;
            }
            if let Some(job) = Self::take_locked(&mut s) {
                return Some(job);
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The running job is done (called before its [`Done`] is sent).
    fn finished(&self) {
        self.lock().running = false;
    }

    fn busy(&self) -> bool {
        let s = self.lock();
        s.running || s.pending.is_some()
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.ready.notify_one();
    }
}

/// The snapshot thread's queue as the request watcher holds it (cheap to clone); made before
/// the thread ([`Worker::spawn`] takes it), so the watcher can start while the setup still
/// owns the [`Snapshotter`].
#[derive(Debug, Clone, Default)]
pub struct Requests(Arc<Queue>);

impl Requests {
    /// The client's request word changed (seen at `seen`): a snapshot now, or right after
    /// the running one, merged with every other request made meanwhile. `false` once the
    /// worker stopped (the watcher ends then).
    pub fn client_request(&self, seen: Instant) -> bool {
        self.0.client_request(seen)
    }
}

/// The event loop's handle on the snapshot thread.
#[derive(Debug)]
pub struct Worker {
    queue: Arc<Queue>,
    thread: JoinHandle<()>,
    /// See [`BusySince`].
    busy_since: BusySince,
}

impl Worker {
    /// Starts the thread, taking its jobs from `requests`' queue; each attempt is recorded in
    /// `metrics`, each result is sent to `events` as `E::from(done)`.
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the thread cannot be started.
    pub fn spawn<E: From<Done> + Send + 'static>(
        mut snap: Snapshotter,
        events: Sender<E>,
        metrics: Metrics,
        requests: &Requests,
    ) -> Result<Self, Failure> {
        let queue = requests.0.clone();
        let jobs = queue.clone();
        let busy_since = BusySince::default();
        let busy = busy_since.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                while let Some((job, asked, behind)) = jobs.take() {
                    let start = Instant::now();
                    set_busy(&busy, Some(start));
                    let attempts = run_job(job, || {
                        let record = run_one(&mut snap, job);
                        metrics.record_snapshot(&record);
                        record.result == Some(SnapshotResult::Starved)
                    });
                    debug!(
                        why = job.why.label(),
                        request_to_worker_us = start.saturating_duration_since(asked).as_micros(),
                        behind_running = behind,
                        attempts,
                        job_us = start.elapsed().as_micros(),
                        "snapshot job done"
                    );
                    after_exit(&mut snap, job);
                    set_busy(&busy, None);
                    let done = Done {
                        job,
                        tally: snap.tally(),
                        region: snap.take_new_region(),
                    };
                    jobs.finished();
                    if events.send(E::from(done)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| {
                Failure::new(
                    Code::OsErr,
                    format!("cannot start the snapshot thread: {e}"),
                )
            })?;
        Ok(Worker {
            queue,
            thread,
            busy_since,
        })
    }

    /// Asks for a snapshot: now if the thread is idle, else after the running one (merged
    /// with any other request made meanwhile).
    ///
    /// # Errors
    ///
    /// [`Code::Software`] if the thread is gone.
    pub fn request(&mut self, job: Job) -> Result<(), Failure> {
        if self.thread.is_finished() {
            return Err(Failure::new(Code::Software, "the snapshot thread stopped"));
        }
        self.queue.request(job, Instant::now());
        Ok(())
    }

    /// Call right before spawning a client: from now on a request the watcher makes says the
    /// client may be writing (its pid follows with [`client_running`](Self::client_running)).
    pub fn client_starting(&self) {
        self.queue.lock().client = ClientNow {
            alive: true,
            pid: None,
        };
    }

    /// The client spawned as `pid` runs.
    pub fn client_running(&self, pid: Option<Pid>) {
        self.queue.lock().client = ClientNow { alive: true, pid };
    }

    /// Call once the client was reaped (or could not be spawned): requests the watcher makes
    /// say no client writes.
    pub fn client_gone(&self) {
        self.queue.lock().client = ClientNow::default();
    }

    /// `true` while a request runs or waits.
    pub fn busy(&self) -> bool {
        self.queue.busy()
    }

    /// When the snapshot thread started the attempt it is in, `None` while it is idle.
    pub fn busy_since(&self) -> Option<Instant> {
        *self
            .busy_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the running request (a snapshot is never cut short by the host's exit) and
    /// ends the thread; pending requests are dropped.
    pub fn stop(self) {
        self.queue.stop();
        if self.thread.join().is_err() {
            error!("the snapshot thread panicked");
        }
    }
}

fn set_busy(busy: &BusySince, since: Option<Instant>) {
    *busy.lock().unwrap_or_else(PoisonError::into_inner) = since;
}

/// After the final snapshot of a client that exited, unless the host is stopping: a region the
/// client sealed against writes moves to a fresh memfd, which the next client can map.
fn after_exit(snap: &mut Snapshotter, job: Job) {
    if job.why != Why::ClientExited || job.stopping {
        return;
    }
    if let Err(e) = snap.rehome_if_sealed() {
        error!(
            "cannot move the sealed region into a fresh memfd ({e}); the next client cannot \
             open it for writing, and its exit will retry the move"
        );
    }
    // The final snapshot is done and the restart waits for this job: clear the claim the
    // dead client left (DESIGN §8), in the fresh memfd if the region just moved (a sealed one
    // cannot be mapped writable again). A stopping host leaves it to the next host, which
    // clears it at start.
    snap.reclaim_claim();
}

/// How many times a starved attempt made for a waiting request (a client's request word,
/// SIGUSR1) is retried at once, in a row, before the job ends (DESIGN §14, "Prompt
/// snapshots"). Bounded: a ring too small for one copy's worth of commits starves every
/// attempt (the warning says how to size it), and the host must not spin on it.
pub const STARVED_RETRIES: u32 = 3;

/// Runs `attempt` (one snapshot attempt; `true` if it starved) for `job`: once, and again at
/// once after a starved attempt while someone waits for this snapshot ([`Why::Usr1`],
/// [`Why::ClientRequest`]), at most [`STARVED_RETRIES`] times. Returns the number of
/// attempts. Before, a starved request waited for the next request or interval tick — under
/// a busy writer, up to `--interval` (issue 27's acknowledgements under load).
fn run_job(job: Job, mut attempt: impl FnMut() -> bool) -> u32 {
    let waited_for = matches!(job.why, Why::Usr1 | Why::ClientRequest);
    let mut attempts = 1;
    while attempt() && waited_for && attempts <= STARVED_RETRIES {
        attempts += 1;
    }
    attempts
}

/// Runs one request and says what it did for the metrics; a panic is logged (and counted as
/// failed) and the thread carries on (the temp file of the attempt is removed by its guard,
/// the previous snapshot stays).
fn run_one(snap: &mut Snapshotter, job: Job) -> SnapshotRecord {
    let run = std::panic::AssertUnwindSafe(|| {
        snap.take_and_log(job.client_alive, job.client, job.why.label())
    });
    match std::panic::catch_unwind(run) {
        Ok(result) => record(&result),
        Err(_) => {
            error!(
                "snapshot ({}) panicked; previous snapshot kept",
                job.why.label()
            );
            SnapshotRecord {
                result: Some(SnapshotResult::Failed),
                ..SnapshotRecord::default()
            }
        }
    }
}

/// An attempt's outcome in the metrics' terms. A region the strategy cannot snapshot
/// ([`Outcome::Invalid`]: e.g. a damaged header) counts as failed: nothing was persisted and
/// it will not fix itself.
fn record(result: &io::Result<Outcome>) -> SnapshotRecord {
    let only = |r| SnapshotRecord {
        result: Some(r),
        ..SnapshotRecord::default()
    };
    match result {
        Ok(Outcome::Persisted(r)) => SnapshotRecord {
            result: Some(SnapshotResult::Persisted),
            phases: r
                .scan
                .map(|s| (Phase::Scan, s))
                .into_iter()
                .chain([
                    (Phase::Copy, r.copy),
                    (Phase::Validate, r.validate),
                    (Phase::Sync, r.sync),
                    (Phase::Rename, r.rename),
                ])
                .chain(r.pause.map(|p| (Phase::Pause, p)))
                .collect(),
            bytes_copied: r.bytes,
            entries_kept: r.kept,
            entries_dropped: r.dropped,
            generation: Some(r.generation),
            unproven: r.unproven,
        },
        Ok(Outcome::Skipped(_) | Outcome::Notice(_)) => only(SnapshotResult::Skipped),
        Ok(Outcome::Starved { copy, pre, .. }) => SnapshotRecord {
            phases: vec![(Phase::Copy, *copy)],
            entries_dropped: *pre,
            ..only(SnapshotResult::Starved)
        },
        Ok(Outcome::Invalid(_)) | Err(_) => only(SnapshotResult::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(why: Why, client_alive: bool) -> Job {
        Job {
            why,
            client_alive,
            client: None,
            stopping: false,
        }
    }

    #[test]
    fn requests_during_a_snapshot_run_once_after_it_merged_and_none_is_lost() {
        let q = Queue::default();
        let t0 = Instant::now();
        let tick = job(Why::Interval, true);
        q.request(tick, t0);
        assert_eq!(
            q.try_take(),
            Some((tick, t0, false)),
            "an idle worker gets the job at once"
        );
        assert!(q.try_take().is_none());
        // While it runs: another tick, SIGUSR1, then the client's exit.
        let later = Instant::now();
        for why in [Why::Interval, Why::Usr1] {
            q.request(job(why, true), later);
        }
        q.request(job(Why::ClientExited, false), Instant::now());
        assert!(q.busy());
        q.finished();
        assert!(q.busy(), "a merged request waits");
        assert_eq!(
            q.try_take(),
            Some((job(Why::ClientExited, false), later, true)),
            "the merged request is taken when the running one is done, timed from its first \
             part, made while one ran"
        );
        assert!(q.try_take().is_none(), "exactly once");
        q.finished();
        assert!(!q.busy());
        // A stopped queue hands out nothing, even a pending request.
        q.request(tick, t0);
        q.stop();
        assert!(q.try_take().is_none() && q.take().is_none());
    }

    #[test]
    fn a_client_request_from_the_watcher_says_what_the_loop_knows_of_the_client() {
        let q = Queue::default();
        let pid = Pid::from_raw(4242);
        let seen = Instant::now();
        // No client yet: nothing may be assumed alive... until the loop is about to spawn.
        assert!(q.client_request(seen));
        assert_eq!(
            q.try_take().map(|j| j.0),
            Some(job(Why::ClientRequest, false))
        );
        q.finished();
        let w = |c: ClientNow| q.lock().client = c;
        w(ClientNow {
            alive: true,
            pid: None,
        });
        assert!(q.client_request(seen));
        assert_eq!(
            q.try_take().map(|j| j.0),
            Some(job(Why::ClientRequest, true))
        );
        q.finished();
        w(ClientNow { alive: true, pid });
        assert!(q.client_request(seen));
        assert_eq!(
            q.try_take().map(|j| j.0),
            Some(Job {
                client: pid,
                ..job(Why::ClientRequest, true)
            })
        );
        q.finished();
        // Reaped: a request merged with the final snapshot's is not alive.
        w(ClientNow::default());
        q.request(job(Why::ClientExited, false), seen);
        assert!(q.client_request(seen));
        assert_eq!(
            q.try_take().map(|j| j.0),
            Some(job(Why::ClientExited, false))
        );
    }

    #[test]
    fn the_thread_wakes_for_a_request_made_by_another_thread() {
        let q = Arc::new(Queue::default());
        let requests = Requests(q.clone());
        // `take` in another thread; its answer within a bound, so a lost wake-up fails the
        // test instead of hanging it.
        let taker = || {
            let (tx, rx) = std::sync::mpsc::channel();
            let q = q.clone();
            std::thread::spawn(move || {
                let _ = tx.send(q.take());
            });
            rx
        };
        let bound = std::time::Duration::from_secs(10);
        let rx = taker();
        // Let the taker reach its wait (otherwise it may find the job without a wake-up).
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(requests.client_request(Instant::now()));
        let (got, _, behind) = rx
            .recv_timeout(bound)
            .expect("the request wakes the thread")
            .expect("a job");
        assert_eq!(got.why, Why::ClientRequest);
        assert!(!behind);
        q.finished();
        let rx = taker();
        std::thread::sleep(std::time::Duration::from_millis(100));
        q.stop();
        let after_stop = rx.recv_timeout(bound).expect("stop wakes the thread");
        assert!(after_stop.is_none(), "stop ends the queue");
        assert!(!requests.client_request(Instant::now()), "the watcher ends");
    }

    #[test]
    fn a_starved_attempt_someone_waits_for_is_retried_at_once_and_bounded() {
        let job = |why| Job {
            why,
            client_alive: true,
            client: None,
            stopping: false,
        };
        // Starves twice, then persists: a waited-for request gets its snapshot in this job.
        for why in [Why::ClientRequest, Why::Usr1] {
            let mut calls = 0;
            let n = run_job(job(why), || {
                calls += 1;
                calls <= 2
            });
            assert_eq!((n, calls), (3, 3), "{why:?}");
        }
        // A ring that starves every attempt: at most 1 + STARVED_RETRIES attempts, no spin.
        let mut calls = 0;
        let n = run_job(job(Why::ClientRequest), || {
            calls += 1;
            true
        });
        assert_eq!((n, calls), (1 + STARVED_RETRIES, 1 + STARVED_RETRIES));
        // Nobody waits for an interval tick or a final snapshot: one attempt, as before.
        for why in [Why::Interval, Why::ClientExited] {
            let mut calls = 0;
            assert_eq!(
                run_job(job(why), || {
                    calls += 1;
                    true
                }),
                1,
                "{why:?}"
            );
        }
        // A persisted attempt ends the job.
        assert_eq!(run_job(job(Why::ClientRequest), || false), 1);
    }

    #[test]
    fn every_outcome_is_recorded_with_its_result_phases_and_figures() {
        use crate::flow::{Point, Report};
        use std::time::Duration;
        let ms = Duration::from_millis;
        let persisted = Ok(Outcome::Persisted(Report {
            point: Point::Base { generation: 7 },
            generation: 7,
            bytes: 4096,
            kept: 3,
            dropped: 1,
            newest_seq: 9,
            scan: Some(ms(6)),
            copy: ms(1),
            validate: ms(2),
            sync: ms(3),
            rename: ms(4),
            unproven: Some("other_writer"),
            pause: None,
        }));
        assert_eq!(
            record(&persisted),
            SnapshotRecord {
                result: Some(SnapshotResult::Persisted),
                phases: vec![
                    (Phase::Scan, ms(6)),
                    (Phase::Copy, ms(1)),
                    (Phase::Validate, ms(2)),
                    (Phase::Sync, ms(3)),
                    (Phase::Rename, ms(4)),
                ],
                bytes_copied: 4096,
                entries_kept: 3,
                entries_dropped: 1,
                generation: Some(7),
                unproven: Some("other_writer"),
            }
        );
        let starved = Ok(Outcome::Starved {
            copy: ms(5),
            commits_during_copy: 100,
            pre: 8,
        });
        let r = record(&starved);
        assert_eq!(r.result, Some(SnapshotResult::Starved));
        assert_eq!(r.phases, [(Phase::Copy, ms(5))]);
        assert_eq!((r.entries_dropped, r.generation), (8, None));
        let result = |o: io::Result<Outcome>| record(&o).result;
        assert_eq!(
            result(Ok(Outcome::Skipped("idle".into()))),
            Some(SnapshotResult::Skipped)
        );
        assert_eq!(
            result(Ok(Outcome::Invalid("bad header".into()))),
            Some(SnapshotResult::Failed)
        );
        assert_eq!(
            result(Err(io::Error::other("disk"))),
            Some(SnapshotResult::Failed)
        );
    }

    #[test]
    fn merged_requests_keep_the_strongest_reason_and_a_dead_client() {
        let tick = Job {
            why: Why::Interval,
            client_alive: true,
            client: None,
            stopping: false,
        };
        let exit = Job {
            why: Why::ClientExited,
            client_alive: false,
            client: None,
            stopping: false,
        };
        assert_eq!(tick.merge(exit), exit);
        assert_eq!(exit.merge(tick), exit);
        let usr1 = Job {
            why: Why::Usr1,
            client_alive: true,
            client: None,
            stopping: false,
        };
        assert_eq!(tick.merge(usr1), usr1);
        // A stop requested by any merged request holds for the merge (no region move).
        let stop = Job {
            stopping: true,
            ..exit
        };
        assert!(tick.merge(stop).stopping && stop.merge(tick).stopping);
        assert!(!tick.merge(exit).stopping);
    }
}
