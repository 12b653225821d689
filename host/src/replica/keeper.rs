//! The lease's own thread: takes the lease (after the store probe) when the replica was
//! unreachable at start, renews it every TTL/3, resolves doubtful renewals
//! ([`Lease::renew`]), and publishes until when the lease is surely held ([`LeaseState`],
//! a monotonic instant).
//!
//! It runs apart from the uploader, on its own current-thread runtime, so that a long upload
//! never delays a renewal; its requests go through the replica's lease client, whose timeout
//! (TTL/10) is well under the TTL, so a network black hole is reported within a renewal
//! period and two timeouts (each failed renewal is logged with how long the lease is still
//! held). A held lease that lapses without a renewal, or is found taken, is lost for this run
//! for good: uploads stop and the supervisor is told ([`LeaseState::on_loss`]).

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::lease::{Holder, Lease, LeaseError, Renewed, Timing};
use super::probe::{self, ProbeError};
use super::store::Replica;
use crate::exit::{Code, Failure};
use crate::metrics::{Metrics, ReplicaState};

/// Pause after a failed lease request (taking or renewing) before the next try: a tenth of
/// the TTL, within 100 ms..=1 s.
fn retry_after(timing: Timing) -> Duration {
    (timing.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Why a held lease is this run's no more.
#[derive(Debug, Clone)]
pub struct Loss {
    /// For the log.
    pub why: String,
    /// Who took it (`None`: it lapsed without a renewal, nobody is known to hold it).
    pub holder: Option<Holder>,
}

/// Told once when a held lease is lost (the supervisor stops its client).
pub type OnLoss = Box<dyn Fn(Loss) + Send>;

/// What the keeper knows, shared with the uploader.
#[derive(Default)]
pub struct LeaseState {
    inner: Mutex<Inner>,
    wake: Condvar,
}

impl std::fmt::Debug for LeaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseState").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Until when the lease is surely this run's (`None`: not held).
    valid_until: Option<Instant>,
    /// The TTL's consequences (renewal, margin).
    timing: Option<Timing>,
    /// The loss, once it happened (final).
    lost: Option<Loss>,
    /// Told of the loss.
    on_loss: Option<OnLoss>,
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

    /// A state for a lease of `ttl` (not held yet).
    pub fn new(ttl: Duration) -> LeaseState {
        let s = LeaseState::default();
        s.lock().timing = Some(Timing { ttl });
        s
    }

    /// How long the lease is surely held from now (zero if not held), by the monotonic clock.
    pub fn valid_for(&self) -> Duration {
        self.lock().valid_until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// An upload (or part) starts only while the lease holds this much longer (TTL/6).
    pub fn margin(&self) -> Duration {
        self.lock()
            .timing
            .map_or(Duration::from_secs(5), Timing::upload_margin)
    }

    /// `f` is told of the loss of the lease (at once if it was lost already).
    pub fn on_loss(&self, f: OnLoss) {
        let mut g = self.lock();
        if let Some(l) = g.lost.clone() {
            drop(g);
            f(l);
            return;
        }
        g.on_loss = Some(f);
    }

    /// Stops uploads for good: another writer was found on the prefix.
    pub fn fence(&self, why: &str) {
        let mut g = self.lock();
        g.stopped.get_or_insert_with(|| why.to_owned());
        g.valid_until = None;
    }

    /// Sets the validity (tests of the fencing rule).
    #[cfg(test)]
    pub fn set_valid_until(&self, t: Option<Instant>) {
        self.lock().valid_until = t;
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
        self.lock().valid_until = Some(lease.valid_until());
    }

    /// Sleeps until `due` (`None`: until the stop) or the stop; `true` on the stop.
    fn sleep_until(&self, due: Option<Instant>) -> bool {
        let mut g = self.lock();
        while !g.stop {
            let left = match due {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            g = self
                .wake
                .wait_timeout(g, left)
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
        ttl: Duration,
        probed: bool,
        metrics: Metrics,
    ) -> Result<Keeper, Failure> {
        let state = Arc::new(LeaseState::new(ttl));
        if let Some(l) = &lease {
            state.held(l);
        }
        let rt = super::store::runtime()?;
        let mut run = Run {
            replica,
            lease,
            holder,
            timing: Timing { ttl },
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
    timing: Timing,
    probed: bool,
    metrics: Metrics,
    state: Arc<LeaseState>,
    last_warn: Option<Instant>,
}

impl Run {
    async fn run(&mut self) {
        let retry = retry_after(self.timing);
        loop {
            let due = match &self.lease {
                _ if self.state.stopped().is_some() => None,
                Some(l) if self.last_warn.is_none() => Some(l.renew_due().min(l.valid_until())),
                Some(l) => Some((Instant::now() + retry).min(l.valid_until())),
                None => Some(Instant::now() + retry),
            };
            if self.state.sleep_until(due) {
                break;
            }
            match self.lease.take() {
                // Checked before any renewal: a lease that lapsed (the host was paused, the
                // store unreachable for the TTL) may have been taken over meanwhile; a
                // renewal that succeeds now would not undo what this run must assume.
                Some(l) if Instant::now() >= l.valid_until() => self.lose(Loss {
                    why: format!(
                        "the lease lapsed: not renewed within its TTL of {:.1} s (the host was \
                         paused or the store unreachable); another host may hold it now",
                        self.timing.ttl.as_secs_f64()
                    ),
                    holder: None,
                }),
                Some(mut l) => match l.renew(&self.replica).await {
                    Ok(r) => self.kept(l, r),
                    Err(LeaseError::Store(e)) => {
                        self.doubtful(&format!("cannot renew the lease: {e}"));
                        self.lease = Some(l);
                    }
                    Err(LeaseError::Lost { key, holder }) => self.lose(Loss {
                        why: format!("lost the lease {key}: {holder} took it"),
                        holder: Some(holder),
                    }),
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
        match Lease::take(&self.replica, self.holder.clone(), self.timing.ttl, true).await {
            Ok(l) => {
                info!("replica {}: lease taken", self.replica.url);
                self.kept(l, Renewed::Held);
            }
            Err(LeaseError::Store(e)) => self.doubtful(&format!("cannot take the lease: {e}")),
            Err(e) => self.stop(&e.to_string()),
        }
    }

    /// A request failed without an answer that settles anything: retried after a tenth of the TTL;
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
                 {:.1} s; local snapshots go on)",
                self.replica.url,
                left.as_secs_f64(),
                retry_after(self.timing).as_secs_f64()
            );
            self.last_warn = Some(Instant::now());
        }
    }

    /// A held lease is this run's no more: uploads stop, and the supervisor is told.
    fn lose(&mut self, loss: Loss) {
        self.stop(&loss.why);
        let mut g = self.state.lock();
        g.lost = Some(loss.clone());
        let f = g.on_loss.take();
        drop(g);
        if let Some(f) = f {
            f(loss);
        }
    }

    /// The lease is lost or the store refused: no more uploads, for good.
    fn stop(&mut self, why: &str) {
        self.metrics.replica_error();
        let mut g = self.state.lock();
        g.stopped = Some(why.to_owned());
        g.valid_until = None;
        drop(g);
        self.lease = None;
        self.metrics.replica_state(
            ReplicaState::Stopped,
            &format!("{why}; uploads stopped until the host restarts (local snapshots go on)"),
        );
    }
}
