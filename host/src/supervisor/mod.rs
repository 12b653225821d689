//! `shmsnap run`: the supervisor.
//!
//! | module | idea |
//! |---|---|
//! | [`setup`] | region, snapshotter, service manager, signal thread, first client |
//! | [`client`] | the client process: command, spawn, reap, descendants |
//! | [`restart`] | the restart policy (`--restart`, backoff) |
//! | [`worker`] | the snapshot thread and the merging of requests |
//!
//! Four threads: the signal thread forwards signals, the snapshot thread runs snapshots, the
//! request watcher turns a client's request into a job on the snapshot thread's queue
//! directly ([`worker::Requests`]: one thread hop, not three — issue 27), and this one — the
//! event loop — owns the client and decides. The signal and snapshot threads report on one
//! channel; the loop sleeps in `recv_timeout` between events (an idle host costs a wake-up per
//! interval), keeps the queue's view of the client current, and never waits for a copy,
//! except for the rules that keep snapshots consistent:
//!
//! - after the client exits, its final snapshot is taken (after any snapshot already running)
//!   before it is restarted — a restarted client would write into the region during the copy;
//! - the host exits only after that final snapshot, and lets a running snapshot finish.
//!
//! Operations: the [`Metrics`] are created and served (`--metrics`) at setup, before
//! `READY=1`; the snapshot thread records every attempt, [`client`] every start and exit. With
//! systemd's `WATCHDOG_USEC`, the loop wakes for the [`Watchdog`] and pings it at the end of
//! each iteration — so pings stop when the loop is stuck, and [`Watchdog::tick`] withholds
//! them while one snapshot has run longer than the interval ([`Worker::busy_since`]).

mod client;
mod restart;
pub mod setup;
mod worker;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use shmsnap_linux::Memfd;
use signal_hook::consts::{SIGCHLD, SIGUSR1};
use tracing::{debug, error, info, warn};

use self::client::{Client, ClientSpec};
use self::restart::RestartPolicy;
use self::worker::{Done, Job, Requests, Why, Worker};
use crate::cgroup::ClientCgroup;
use crate::durable::Watcher;
use crate::exit::{requested_stop_status, Code, Failure, FinalSnapshot};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::snap::Tally;
use crate::strategy::{OnUsr1, Schedule};
use crate::watchdog::Watchdog;

/// How long the loop sleeps when nothing is scheduled.
const IDLE: Duration = Duration::from_secs(3600);

/// What the loop hears about.
#[derive(Debug)]
pub enum Event {
    /// A signal (from the signal thread).
    Signal(i32),
    /// A snapshot request finished (from the snapshot thread).
    Snapshot(Done),
    /// The replica's lease is this run's no more (from the lease thread, DESIGN §12).
    LeaseLost(crate::replica::keeper::Loss),
}

impl From<Done> for Event {
    fn from(d: Done) -> Self {
        Event::Snapshot(d)
    }
}

/// Whether the loop goes on.
enum Flow {
    Continue,
    /// Exit with this status.
    Exit(i32),
}

/// The supervisor's state between events.
#[derive(Debug)]
pub struct Supervisor {
    /// Starts the client (through the exec shim, region at fd 3, into `cgroup`); rebuilt
    /// from `spec` when the region moves to a fresh memfd.
    cmd: Command,
    /// What `cmd` starts.
    spec: ClientSpec,
    /// The client-request watcher on the current region's header page (DESIGN §14).
    watcher: Watcher,
    /// Where the request watcher sends the client's requests: the snapshot thread's queue.
    requests: Requests,
    /// The strategy's region has a status area (request word, status words).
    status_area: bool,
    /// The client's own cgroup (`--cgroup`), killed whole with the client; `None`: none
    /// manageable or `--cgroup off`.
    cgroup: Option<ClientCgroup>,
    client: Client,
    worker: Worker,
    events: Receiver<Event>,
    notifier: Notifier,
    /// The strategy's answers.
    schedule: Schedule,
    restart: RestartPolicy,
    interval: Duration,
    stop_timeout: Duration,
    /// The next interval tick; `None` without ticks. Ticks fall at a fixed rate (start + k ×
    /// interval), whatever a snapshot took: see [`Ticks::after`].
    next_tick: Option<Instant>,
    /// Set once a stop was requested: when the client is SIGKILLed if it has not exited.
    stop_deadline: Option<Instant>,
    /// Shared with the snapshot thread and the metrics server.
    metrics: Metrics,
    /// systemd's watchdog, when it asked for one (`WATCHDOG_USEC`).
    watchdog: Option<Watchdog>,
    /// How the latest snapshot attempt went: a requested stop exits with
    /// [`requested_stop_status`] of it.
    saved: FinalSnapshot,
    /// `--on-lease-loss stop`: a lost lease stops the client.
    stop_on_lease_loss: bool,
    /// The lease was lost and the client stopped for it: [`setup::run`] exits 75 or starts
    /// again as a standby.
    lease_lost: Option<crate::replica::keeper::Loss>,
}

impl Supervisor {
    fn event_loop(&mut self) -> Result<i32, Failure> {
        loop {
            let wait = self.next_wake().saturating_duration_since(Instant::now());
            let flow = match self.events.recv_timeout(wait) {
                Ok(Event::Signal(SIGCHLD)) => self.on_sigchld()?,
                Ok(Event::Signal(SIGUSR1)) => self.snapshot_now(Why::Usr1)?,
                Ok(Event::Signal(sig)) => self.on_stop(sig),
                Ok(Event::Snapshot(done)) => self.on_snapshot(done)?,
                Ok(Event::LeaseLost(loss)) => self.on_lease_lost(loss),
                Err(RecvTimeoutError::Timeout) => Flow::Continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Failure::new(Code::Software, "the signal thread stopped"));
                }
            };
            if let Flow::Exit(code) = flow {
                return Ok(code);
            }
            self.on_time()?;
            // Reached only when this iteration's event and timers were handled: that is the
            // loop's progress.
            if let Some(w) = &mut self.watchdog {
                w.tick(Instant::now(), true, self.worker.busy_since());
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + IDLE;
        if let Some(t) = self.next_tick {
            wake = wake.min(t);
        }
        if let Some(w) = &self.watchdog {
            wake = wake.min(w.next_deadline());
        }
        if let Client::Waiting { until } = self.client {
            wake = wake.min(until);
        }
        // Only a running client has a deadline (a past one would make this loop spin while
        // a final snapshot is taken).
        if let (Some(d), Client::Running { .. }) = (self.stop_deadline, self.client) {
            wake = wake.min(d);
        }
        wake
    }

    /// Reaps; if the client exited, asks for its final snapshot (the restart waits for it).
    fn on_sigchld(&mut self) -> Result<Flow, Failure> {
        let Some((code, ran)) = client::reap(&self.client, &self.metrics) else {
            return Ok(Flow::Continue);
        };
        self.worker.client_gone();
        client::kill_tree(self.cgroup.as_ref());
        self.client = Client::Exited {
            code,
            ran,
            at: Instant::now(),
        };
        if !self.schedule.final_at_exit {
            return Ok(self.after_final());
        }
        self.worker.request(Job {
            why: Why::ClientExited,
            client_alive: false,
            client: None,
            stopping: self.stop_deadline.is_some(),
        })?;
        Ok(Flow::Continue)
    }

    /// SIGUSR1 or a client's request: a snapshot now (merged with one in flight), if the
    /// strategy takes snapshots on demand.
    fn snapshot_now(&mut self, why: Why) -> Result<Flow, Failure> {
        match self.schedule.on_usr1 {
            OnUsr1::Snapshot => self.worker.request(Job {
                why,
                client_alive: self.client.alive(),
                client: self.client.pid(),
                stopping: false,
            })?,
            OnUsr1::Ignore(line) => info!("{line}"),
        }
        Ok(Flow::Continue)
    }

    /// SIGTERM or SIGINT: forward, then wait for the client (and its final snapshot) with a
    /// deadline.
    fn on_stop(&mut self, sig: i32) -> Flow {
        self.notifier.stopping();
        match self.client {
            Client::Running { pid, .. } => {
                info!(
                    "forwarding signal {sig} to the client (pid {})",
                    pid.as_raw_pid()
                );
                let sig = Signal::from_named_raw(sig).unwrap_or(Signal::TERM);
                let _ = rustix::process::kill_process(pid, sig);
            }
            Client::Exited { .. } => {
                info!("stop requested; exiting after the client's final snapshot");
            }
            Client::Waiting { .. } => {
                // Its final snapshot was taken before the restart was scheduled.
                info!("stop requested while the client was not running");
                return Flow::Exit(self.stop_status());
            }
        }
        self.stop_deadline
            .get_or_insert(Instant::now() + self.stop_timeout);
        Flow::Continue
    }

    /// The lease is lost: uploads stopped already; the client is stopped as on SIGTERM
    /// (final local snapshot) unless `--on-lease-loss continue` — two running clients are
    /// two truths.
    fn on_lease_lost(&mut self, loss: crate::replica::keeper::Loss) -> Flow {
        if !self.stop_on_lease_loss {
            warn!(
                "{}; --on-lease-loss continue: the client keeps running, local snapshots only",
                loss.why
            );
            return Flow::Continue;
        }
        error!(
            "{}; stopping the client (final local snapshot): another primary may run",
            loss.why
        );
        self.lease_lost = Some(loss);
        self.on_stop(rustix::process::Signal::TERM.as_raw())
    }

    /// A job is done (the snapshot thread has already taken any request merged meanwhile).
    fn on_snapshot(&mut self, done: Done) -> Result<Flow, Failure> {
        if let Some(region) = done.region {
            self.new_region(region)?;
        }
        status_line(&self.notifier, done.tally);
        self.saved = done.tally.last.unwrap_or(FinalSnapshot::NothingToPersist);
        let final_done = done.job.why == Why::ClientExited;
        if final_done && matches!(self.client, Client::Exited { .. }) {
            return Ok(self.after_final());
        }
        Ok(Flow::Continue)
    }

    /// The client exited and its final snapshot is done: restart it (after the backoff pause,
    /// counted from its exit) or exit with its status.
    fn after_final(&mut self) -> Flow {
        let Client::Exited { code, ran, at } = self.client else {
            return Flow::Continue;
        };
        let stopping = self.stop_deadline.is_some();
        match self.restart.after_exit(code, ran, stopping) {
            None if stopping => Flow::Exit(self.stop_status()),
            None => Flow::Exit(code),
            Some(pause) => {
                info!("restarting the client in {pause:?}");
                self.client = Client::Waiting { until: at + pause };
                Flow::Continue
            }
        }
    }

    /// The snapshotter moved to a fresh memfd (the old one was sealed, or repaired into a
    /// fresh one): the next client, the fd store and the request watcher get it, the old one
    /// goes once nothing holds it.
    fn new_region(&mut self, region: std::io::Result<Memfd>) -> Result<(), Failure> {
        let memfd = match region {
            Ok(m) => m,
            Err(e) => {
                error!("cannot pass the new region on ({e}); the next client gets the old one");
                return Ok(());
            }
        };
        self.cmd = client::command(&self.spec, &memfd, self.cgroup.as_ref())?;
        self.notifier.replace_fd(&memfd, &self.spec.fd_name);
        let requests = self.requests.clone();
        self.watcher = crate::durable::watch_requests(&memfd, self.status_area, move || {
            requests.client_request(Instant::now())
        })
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot start the request thread: {e}")))?;
        if let Ok(len) = memfd.len() {
            self.metrics.set_region_size(len);
        }
        Ok(())
    }

    /// The exit status of a requested stop (SIGTERM/SIGINT): 0 when the state is safe on
    /// disk, 74 when the final snapshot failed; the client's own status is logged only.
    fn stop_status(&self) -> i32 {
        if self.saved == FinalSnapshot::Failed {
            warn!("stop requested, but the final snapshot failed: the state on disk is older than the client's");
        }
        i32::from(requested_stop_status(self.saved))
    }

    /// What is due: the stop deadline, a restart, an interval snapshot.
    fn on_time(&mut self) -> Result<(), Failure> {
        let now = Instant::now();
        if let (Some(d), Client::Running { pid, .. }) = (self.stop_deadline, self.client) {
            if now >= d {
                warn!(
                    "the client did not exit within {:?}; killing it",
                    self.stop_timeout
                );
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
                let _ = rustix::process::kill_process(pid, Signal::KILL);
                self.stop_deadline = Some(now + IDLE);
            }
        }
        if let Client::Waiting { until } = self.client {
            if now >= until {
                self.worker.client_starting();
                self.client = client::spawn(&mut self.cmd, &self.metrics)?;
                self.worker.client_running(self.client.pid());
            }
        }
        if let Some(due) = self.next_tick.filter(|&t| now >= t) {
            let ticks = Ticks::after(due, now, self.interval);
            self.next_tick = Some(ticks.next);
            // A tick that falls while a snapshot runs is skipped, not queued behind it: the
            // next snapshot starts at the next tick, so snapshots keep the fixed rate.
            let skipped = ticks.missed + u64::from(self.worker.busy());
            if !self.worker.busy() {
                self.worker.request(Job {
                    why: Why::Interval,
                    client_alive: self.client.alive(),
                    client: self.client.pid(),
                    stopping: false,
                })?;
            }
            if skipped > 0 {
                debug!("{skipped} interval tick(s) skipped: a snapshot was still running");
                self.metrics.ticks_skipped(skipped);
            }
        }
        Ok(())
    }
}

/// Where the fixed-rate tick schedule goes after a tick that fell due at `due` is handled
/// at `now` (`now >= due`).
#[derive(Debug, PartialEq, Eq)]
struct Ticks {
    /// The next tick: `due + k × interval`, the first after `now`.
    next: Instant,
    /// Ticks between `due` and `next` that passed unhandled (the loop was late by more than
    /// an interval).
    missed: u64,
}

impl Ticks {
    fn after(due: Instant, now: Instant, interval: Duration) -> Ticks {
        // A zero interval would never advance: one tick per wake-up then.
        let step = interval.max(Duration::from_millis(1));
        let late = now.saturating_duration_since(due);
        let missed = u64::try_from(late.as_nanos() / step.as_nanos()).unwrap_or(u64::MAX);
        // `missed + 1` steps after `due` is after `now`; saturate rather than overflow.
        let ahead = u32::try_from(missed.saturating_add(1)).unwrap_or(u32::MAX);
        let next = step
            .checked_mul(ahead)
            .and_then(|d| due.checked_add(d))
            .unwrap_or(now + step);
        Ticks { next, missed }
    }
}

/// The metrics, served on `addr` if given (the region's size is set once the region exists):
/// called at setup, before the replica (a standby serves its role and lag) and before
/// `READY=1`, so a scraper finds the endpoint as soon as systemd reports the unit started.
///
/// # Errors
///
/// [`Code::Config`] if `addr` cannot be bound (in use, not a local address, a privileged
/// port): the operator chose it, and restarting does not fix it.
fn start_metrics(addr: Option<SocketAddr>) -> Result<Metrics, Failure> {
    let metrics = Metrics::new();
    if let Some(addr) = addr {
        metrics.serve(addr).map_err(|e| {
            Failure::new(
                Code::Config,
                format!("cannot serve metrics on {addr}: {e}; choose another --metrics address"),
            )
        })?;
    }
    Ok(metrics)
}

fn status_line(notifier: &Notifier, tally: Tally) {
    if notifier.enabled() {
        let age = tally
            .last_persisted
            .map_or("no snapshot yet".to_owned(), |t| {
                format!("last snapshot {:.1}s ago", t.elapsed().as_secs_f64())
            });
        notifier.status(&format!("{age}; {} starved attempts", tally.starved));
    }
}

#[cfg(test)]
mod tick_tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_next_tick_is_counted_from_the_due_time_not_from_now() {
        let t0 = Instant::now();
        // Handled 30 ms late (a snapshot took that long): the next tick stays on the grid.
        let t = Ticks::after(t0, t0 + 30 * MS, 100 * MS);
        assert_eq!(
            t,
            Ticks {
                next: t0 + 100 * MS,
                missed: 0
            }
        );
        // On time.
        assert_eq!(Ticks::after(t0, t0, 100 * MS).next, t0 + 100 * MS);
    }

    #[test]
    fn ticks_the_loop_slept_through_are_counted_and_the_grid_kept() {
        let t0 = Instant::now();
        let t = Ticks::after(t0, t0 + 250 * MS, 100 * MS);
        assert_eq!(
            t,
            Ticks {
                next: t0 + 300 * MS,
                missed: 2
            }
        );
        // Exactly on a later tick: that one counts as missed, the next is ahead.
        let t = Ticks::after(t0, t0 + 200 * MS, 100 * MS);
        assert_eq!(
            t,
            Ticks {
                next: t0 + 300 * MS,
                missed: 2
            }
        );
    }

    #[test]
    fn a_zero_interval_still_advances() {
        let t0 = Instant::now();
        let t = Ticks::after(t0, t0, Duration::ZERO);
        assert!(t.next > t0);
    }
}
