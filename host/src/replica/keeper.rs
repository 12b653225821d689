//! The lease's own thread: takes the lease (after the store probe) when the replica was
//! unreachable at start, renews it every `TTL/3`, resolves doubtful renewals
//! ([`Lease::renew`]), and publishes until when the lease is surely held ([`LeaseState`]).
//!
//! It runs apart from the uploader, on its own current-thread runtime, so that a long upload
//! never delays a renewal; its requests go through the replica's lease client, whose timeout
//! (3 s) is well under the TTL (30 s), so a network black hole is reported within a renewal
//! period and two timeouts (at most 16 s)
//! (each failed renewal is logged with how long the lease is still held).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::lease::{now_ms, Holder, Lease, LeaseError, Renewed};
use super::probe::{self, ProbeError};
use super::store::Replica;
use crate::exit::{Code, Failure};
use crate::metrics::{Metrics, ReplicaState};

/// Pause after a failed lease request (taking or renewing) before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// What the keeper knows, shared with the uploader.
#[derive(Debug, Default)]
pub struct LeaseState {
    inner: Mutex<Inner>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// Unix ms until which the lease is surely this run's (0: not held).
    valid_until_ms: u64,
    /// How many times the lease object was found gone and created again.
    recreated: u64,
    /// Why nothing may be uploaded any more (lease lost, store refused): for good.
    stopped: Option<String>,
    /// The host is stopping: release the lease and end.
    stop: bool,
}

impl LeaseState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the lease is surely held from now (zero if not held).
    pub fn valid_for(&self) -> Duration {
        Duration::from_millis(self.lock().valid_until_ms.saturating_sub(now_ms()))
    }

    /// How many times the lease object was created again (a wiped prefix).
    pub fn recreated(&self) -> u64 {
        self.lock().recreated
    }

    /// Why uploads stopped for good, if they did.
    pub fn stopped(&self) -> Option<String> {
        self.lock().stopped.clone()
    }

    fn held(&self, lease: &Lease) {
        self.lock().valid_until_ms = lease.valid_until_ms();
    }

    /// Sleeps until Unix ms `due` or the stop; `true` on the stop.
    fn sleep_until(&self, due: u64) -> bool {
        let mut g = self.lock();
        while !g.stop {
            let left = due.saturating_sub(now_ms());
            if left == 0 {
                return false;
            }
            g = self
                .wake
                .wait_timeout(g, Duration::from_millis(left))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// The keeper thread's handle.
#[derive(Debug)]
pub struct Keeper {
    state: Arc<LeaseState>,
    thread: Option<JoinHandle<()>>,
}

impl Keeper {
    /// Starts the thread with the lease taken at start (`None`: the replica was unreachable;
    /// the thread probes the store, if `probed` is false, and takes the lease).
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the thread or its runtime cannot be started.
    pub fn spawn(
        replica: Replica,
        lease: Option<Lease>,
        holder: Holder,
        probed: bool,
        metrics: Metrics,
    ) -> Result<Keeper, Failure> {
        let state = Arc::new(LeaseState::default());
        if let Some(l) = &lease {
            state.held(l);
        }
        let rt = super::store::runtime()?;
        let mut run = Run {
            replica,
            lease,
            holder,
            probed,
            metrics,
            state: state.clone(),
            last_warn: None,
        };
        let thread = std::thread::Builder::new()
            .name("replica-lease".into())
            .spawn(move || rt.block_on(run.run()))
            .map_err(|e| {
                Failure::new(Code::OsErr, format!("cannot start the lease thread: {e}"))
            })?;
        Ok(Keeper {
            state,
            thread: Some(thread),
        })
    }

    /// The shared state.
    pub fn state(&self) -> Arc<LeaseState> {
        self.state.clone()
    }
}

impl Drop for Keeper {
    /// Releases the lease (unless lost) and ends the thread.
    fn drop(&mut self) {
        self.state.lock().stop = true;
        self.state.wake.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the replica lease thread panicked");
            }
        }
    }
}

struct Run {
    replica: Replica,
    lease: Option<Lease>,
    holder: Holder,
    probed: bool,
    metrics: Metrics,
    state: Arc<LeaseState>,
    last_warn: Option<Instant>,
}

impl Run {
    async fn run(&mut self) {
        loop {
            let due = match &self.lease {
                _ if self.state.stopped().is_some() => u64::MAX,
                Some(l) if self.last_warn.is_none() => l.renew_due_ms(),
                _ => now_ms() + RETRY.as_millis() as u64,
            };
            if self.state.sleep_until(due) {
                break;
            }
            match self.lease.take() {
                Some(mut l) => match l.renew(&self.replica).await {
                    Ok(r) => self.kept(l, r),
                    Err(LeaseError::Store(e)) => {
                        self.doubtful(&format!("cannot renew the lease: {e}"));
                        self.lease = Some(l);
                    }
                    Err(e) => self.stop(&e.to_string()),
                },
                None => self.take().await,
            }
        }
        if let (Some(l), None) = (self.lease.take(), self.state.stopped()) {
            match l.release(&self.replica).await {
                Ok(()) => info!("replica {}: lease released", self.replica.url),
                Err(e) => warn!(
                    "replica {}: cannot release the lease ({e}); it expires by itself",
                    self.replica.url
                ),
            }
        }
    }

    /// A renewal (or a take) succeeded.
    fn kept(&mut self, l: Lease, r: Renewed) {
        self.state.held(&l);
        if r == Renewed::Recreated {
            self.state.lock().recreated += 1;
        }
        if self.last_warn.take().is_some() {
            info!("replica {}: the lease is renewed again", self.replica.url);
        }
        self.lease = Some(l);
    }

    /// Probes the store (once) and takes the lease.
    async fn take(&mut self) {
        if !self.probed {
            match probe::probe(&self.replica, &self.holder.run_id).await {
                Ok(()) => self.probed = true,
                Err(ProbeError::Store(e)) => {
                    return self.doubtful(&format!("cannot check the store: {e}"));
                }
                Err(e) => return self.stop(&e.to_string()),
            }
        }
        match Lease::take(&self.replica, self.holder.clone()).await {
            Ok(l) => {
                info!("replica {}: lease taken", self.replica.url);
                self.kept(l, Renewed::Held);
            }
            Err(LeaseError::Store(e)) => self.doubtful(&format!("cannot take the lease: {e}")),
            Err(e) => self.stop(&e.to_string()),
        }
    }

    /// A request failed without an answer that settles anything: retried in [`RETRY`];
    /// logged at once the first time, then at most every 30 s.
    fn doubtful(&mut self, what: &str) {
        self.metrics.replica_error();
        let left = self.state.valid_for();
        if left.is_zero() {
            self.metrics.replica_state(
                ReplicaState::Waiting,
                &format!("the lease is not held ({what})"),
            );
        }
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            warn!(
                "replica {}: {what}; the lease is surely held for {:.1} s more (retrying every \
                 {} s; local snapshots go on)",
                self.replica.url,
                left.as_secs_f64(),
                RETRY.as_secs()
            );
            self.last_warn = Some(Instant::now());
        }
    }

    /// The lease is lost or the store refused: no more uploads, for good.
    fn stop(&mut self, why: &str) {
        self.metrics.replica_error();
        let mut g = self.state.lock();
        g.stopped = Some(why.to_owned());
        g.valid_until_ms = 0;
        drop(g);
        self.lease = None;
        self.metrics.replica_state(
            ReplicaState::Stopped,
            &format!("{why}; uploads stopped until the host restarts (local snapshots go on)"),
        );
    }
}
