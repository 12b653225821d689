//! The snapshot worker: one thread owns the [`Snapshotter`]; the event loop sends it requests
//! and receives the results as events, so signals, reaping and restarts never wait for a copy.
//!
//! At most one request is with the thread at a time. Requests made meanwhile are merged into
//! one pending request, sent when the result of the running one comes back: a snapshot asked
//! for during a copy is taken after that copy, never skipped, and never more than once.

use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use tracing::error;

use crate::exit::{Code, Failure};
use crate::snap::{Snapshotter, Tally};

/// Why a snapshot is requested; a later variant outranks an earlier one when requests merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// The interval elapsed.
    Interval,
    /// SIGUSR1.
    Usr1,
    /// The final snapshot after the client exited (before a restart or the host's exit).
    ClientExited,
}

impl Why {
    /// For log lines.
    fn label(self) -> &'static str {
        match self {
            Why::Interval => "interval",
            Why::Usr1 => "SIGUSR1",
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
}

impl Job {
    fn merge(self, other: Job) -> Job {
        Job {
            why: self.why.max(other.why),
            client_alive: self.client_alive && other.client_alive,
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// The request (merged) that was run.
    pub job: Job,
    /// The snapshotter's totals after it.
    pub tally: Tally,
}

/// The event loop's handle on the snapshot thread.
#[derive(Debug)]
pub struct Worker {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
    /// A job was sent whose [`Done`] has not come back yet.
    busy: bool,
    /// Requests made while busy, merged into one.
    pending: Option<Job>,
}

impl Worker {
    /// Starts the thread; each result is sent to `events` as `E::from(done)`.
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the thread cannot be started.
    pub fn spawn<E: From<Done> + Send + 'static>(
        mut snap: Snapshotter,
        events: Sender<E>,
    ) -> Result<Self, Failure> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                for job in rx {
                    run_one(&mut snap, job);
                    let done = Done {
                        job,
                        tally: snap.tally(),
                    };
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
            jobs,
            thread,
            busy: false,
            pending: None,
        })
    }

    /// Asks for a snapshot: now if the thread is idle, else after the running one (merged
    /// with any other request made meanwhile).
    ///
    /// # Errors
    ///
    /// [`Code::Software`] if the thread is gone.
    pub fn request(&mut self, job: Job) -> Result<(), Failure> {
        if self.busy {
            self.pending = Some(self.pending.map_or(job, |p| p.merge(job)));
            return Ok(());
        }
        self.jobs
            .send(job)
            .map_err(|_| Failure::new(Code::Software, "the snapshot thread stopped"))?;
        self.busy = true;
        Ok(())
    }

    /// Records that the running request finished, and sends the pending one.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn finished(&mut self) -> Result<(), Failure> {
        self.busy = false;
        match self.pending.take() {
            Some(job) => self.request(job),
            None => Ok(()),
        }
    }

    /// `true` while a request runs or waits.
    pub fn busy(&self) -> bool {
        self.busy || self.pending.is_some()
    }

    /// Waits for the running request (a snapshot is never cut short by the host's exit) and
    /// ends the thread; pending requests are dropped.
    pub fn stop(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            error!("the snapshot thread panicked");
        }
    }
}

/// Runs one request; a panic is logged and the thread carries on (the temp file of the
/// attempt is removed by its guard, the previous snapshot stays).
fn run_one(snap: &mut Snapshotter, job: Job) {
    let run = std::panic::AssertUnwindSafe(|| snap.take_and_log(job.client_alive, job.why.label()));
    if std::panic::catch_unwind(run).is_err() {
        error!(
            "snapshot ({}) panicked; previous snapshot kept",
            job.why.label()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker whose jobs go to the returned receiver instead of a snapshot thread.
    fn fake() -> (Worker, mpsc::Receiver<Job>) {
        let (jobs, rx) = mpsc::channel();
        let worker = Worker {
            jobs,
            thread: std::thread::spawn(|| {}),
            busy: false,
            pending: None,
        };
        (worker, rx)
    }

    #[test]
    fn requests_during_a_snapshot_run_once_after_it_merged_and_none_is_lost() {
        let (mut w, rx) = fake();
        let tick = Job {
            why: Why::Interval,
            client_alive: true,
        };
        w.request(tick).unwrap();
        assert_eq!(
            rx.try_recv(),
            Ok(tick),
            "an idle worker gets the job at once"
        );
        // While it runs: another tick, SIGUSR1, then the client's exit.
        for why in [Why::Interval, Why::Usr1] {
            w.request(Job {
                why,
                client_alive: true,
            })
            .unwrap();
        }
        w.request(Job {
            why: Why::ClientExited,
            client_alive: false,
        })
        .unwrap();
        assert!(rx.try_recv().is_err(), "nothing is sent while one runs");
        assert!(w.busy());
        w.finished().unwrap();
        assert_eq!(
            rx.try_recv(),
            Ok(Job {
                why: Why::ClientExited,
                client_alive: false
            }),
            "the merged request is sent when the running one is done"
        );
        assert!(rx.try_recv().is_err(), "exactly once");
        w.finished().unwrap();
        assert!(!w.busy());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn merged_requests_keep_the_strongest_reason_and_a_dead_client() {
        let tick = Job {
            why: Why::Interval,
            client_alive: true,
        };
        let exit = Job {
            why: Why::ClientExited,
            client_alive: false,
        };
        assert_eq!(tick.merge(exit), exit);
        assert_eq!(exit.merge(tick), exit);
        let usr1 = Job {
            why: Why::Usr1,
            client_alive: true,
        };
        assert_eq!(tick.merge(usr1), usr1);
    }
}
