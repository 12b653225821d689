//! Replicas in S3-compatible object storage (issue 14, DESIGN §12): every persisted point is
//! shipped to a bucket by its own thread; a new machine starts from the bucket.
//!
//! | module | idea |
//! |---|---|
//! | `mod` (here) | [`start`]: `run --replica` before the client starts (probe, lease, restore) |
//! | [`store`] | [`Replica`]: a URL opened as an `object_store` store plus the key prefix |
//! | [`layout`] | object names (`PREFIX/g/<gen>/base`, `PREFIX/g/<gen>/d/<index>`), listing |
//! | [`probe`] | at start: does the store honour conditional writes? |
//! | [`lease`] | one writer per prefix: the lease object, taken, renewed, doubts resolved |
//! | [`observe`] | a standby's view of the lease: unchanged for its TTL, by the monotonic clock |
//! | [`keeper`] | the lease's own thread: renews it on its own schedule, reports its loss |
//! | [`standby`] | `run --standby`: follow the bucket, take the lease over, catch up |
//! | [`upload`] | the uploader thread and its bounded backlog of points ([`Shipper`]) |
//! | [`follow`] | a standby's local chain: only new deltas (or a new base) downloaded, verified, applied |
//! | [`fetch`] | `restore --from URL` and the restore at start: a point of the bucket as a standalone snapshot file |
//! | [`inspect`] | `inspect --replica URL` |
//!
//! `object_store` is async; the host is not. Each user of a [`Replica`] runs a current-thread
//! tokio runtime ([`runtime`]) on its own thread and `block_on`s one request at a time.
//!
//! Byte layout of the bucket: `docs/FORMAT.md`, "Replica layout".

pub mod fetch;
pub mod follow;
pub mod inspect;
pub mod keeper;
pub mod layout;
pub mod lease;
pub mod multipart;
pub mod observe;
pub mod probe;
pub mod standby;
pub mod store;
pub mod upload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmsnap_linux::persist::Persister;
use tracing::{info, warn};

use crate::config::Keep;
use crate::exit::{Code, Failure};
use crate::metrics::{Metrics, Role};
use keeper::{Keeper, LeaseState};
use lease::{Holder, Lease, LeaseError, Timing};
use probe::ProbeError;
use store::{is_refused, refused, runtime, Replica};
use upload::Shipper;

/// What `run` asks of its replica.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// What the bucket keeps (`--replica-keep`).
    pub keep: Keep,
    /// The lease's TTL (`--lease-ttl`).
    pub ttl: Duration,
    /// Take part in failover (`--standby`).
    pub standby: bool,
}

/// A replica opened by `run` before the client starts: the store probed and the lease taken
/// and kept by its thread (or neither, if the replica was unreachable), ready for the
/// uploader thread.
#[derive(Debug)]
pub struct Started {
    replica: Replica,
    rt: tokio::runtime::Runtime,
    keeper: Keeper,
    keep: Keep,
    target: std::path::PathBuf,
    /// Every new base must be above this generation (the bucket's newest, after a takeover).
    floor: Option<u64>,
    /// A `--standby` host that took the lease from another host (not its own state file's).
    took_over: bool,
}

/// `run --replica URL`, before the client starts: opens the replica, checks that the store
/// honours conditional writes ([`probe`]), takes its lease, and if the state file has no
/// generation, restores the newest sound point of the replica into it (with `fallback`, an
/// older one past a corrupt object).
///
/// # Errors
///
/// 78 for a missing bucket, refused credentials or a store that ignores conditional writes;
/// 75 if another host holds the lease (named with its holder), or if the state file is
/// missing and the replica cannot be read (the client is not started empty over a replica
/// that may hold its state); 65 for a corrupt replica without `fallback`; the URL's errors.
/// An unreachable replica with a local state is not an error: it is logged, and the lease
/// thread keeps trying.
///
/// With `--standby`, `stop` (registered by the caller) ends standing by: `Ok(None)` if a stop
/// was requested before the client could start (logged; no lease held: one taken meanwhile
/// was released).
pub fn start(
    url: &str,
    opts: Options,
    persister: &Persister,
    fallback: bool,
    metrics: &Metrics,
    stop: Option<&standby::Stop>,
) -> Result<Option<Started>, Failure> {
    let timing = Timing { ttl: opts.ttl };
    let replica = Replica::open_with(url, timing.request_timeout())?;
    let rt = runtime()?;
    let holder = Holder::this(&persister.target());
    if let (true, Some(stop)) = (opts.standby, stop) {
        return start_standby(replica, rt, holder, opts, persister, metrics, stop);
    }
    if replica.local {
        warn!(
            "replica {url}: file:// has no conditional update: the lease is a read, compare \
             and overwrite, so two hosts racing for it can both write; use it from one machine"
        );
    }
    let probed = match rt.block_on(probe::probe(&replica, &holder.run_id)) {
        Ok(()) => true,
        Err(ProbeError::Store(e)) if is_refused(&e) => return Err(refused(url, &e)),
        Err(ProbeError::Store(e)) => {
            warn!("replica {url} is unreachable ({e}); local snapshots go on, uploads are retried");
            false
        }
        Err(e) => return Err(Failure::new(Code::Config, e.to_string())),
    };
    let lease = if probed {
        take_at_start(&rt, &replica, &holder, opts.ttl)?
    } else {
        None
    };
    let empty = persister
        .generations()
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot list the state files: {e}")))?
        .is_empty();
    if empty {
        restore_at_start(&rt, &replica, persister, lease.is_some(), fallback)?;
    }
    if lease.is_some() {
        multipart::sweep_logged(&rt, &replica);
        metrics.role(Role::Primary);
    }
    let keeper = Keeper::spawn(
        replica.clone(),
        lease,
        holder,
        opts.ttl,
        probed,
        metrics.clone(),
    )?;
    Ok(Some(Started {
        replica,
        rt,
        keeper,
        keep: opts.keep,
        target: persister.target(),
        floor: None,
        took_over: false,
    }))
}

/// `run --standby`: the store must pass the probe (retried while it is unreachable: a
/// standby never follows or takes over without it); then the lease is taken, at once if it
/// is free or after following the bucket until its holder stops renewing; then the local
/// state is brought to the bucket's newest point. `None`: stopped by `stop` first.
fn start_standby(
    replica: Replica,
    rt: tokio::runtime::Runtime,
    holder: Holder,
    opts: Options,
    persister: &Persister,
    metrics: &Metrics,
    stop: &standby::Stop,
) -> Result<Option<Started>, Failure> {
    let url = replica.url.clone();
    if replica.local {
        return Err(Failure::new(
            Code::Config,
            format!(
                "replica {url}: --standby needs a store with conditional updates, and file:// \
                 has none (two hosts could both take the lease); use an s3:// replica"
            ),
        ));
    }
    let mut last_warn: Option<Instant> = None;
    loop {
        match rt.block_on(probe::probe(&replica, &holder.run_id)) {
            Ok(()) => break,
            Err(ProbeError::Store(e)) if is_refused(&e) => return Err(refused(&url, &e)),
            Err(ProbeError::Store(e)) => {
                metrics.replica_error();
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    warn!(
                        "replica {url} is unreachable ({e}); --standby: waiting for it (the \
                         client is not started before the lease is known)"
                    );
                    last_warn = Some(Instant::now());
                }
                if stop.sleep(Duration::from_secs(1)) {
                    stop.log("no lease held");
                    return Ok(None);
                }
            }
            Err(e) => return Err(Failure::new(Code::Config, e.to_string())),
        }
    }
    let Some((lease, ours, caught_up)) =
        standby::acquire(&rt, &replica, &holder, opts.ttl, persister, metrics, stop)?
    else {
        stop.log("no lease held");
        return Ok(None);
    };
    if stop.requested() {
        // Taken while the signal arrived: given back, so the next standby need not wait.
        match rt.block_on(lease.release(&replica)) {
            Ok(()) => stop.log("the lease it had just taken, released"),
            Err(e) => stop.log(&format!(
                "the lease it had just taken could not be released ({e}): it expires by itself"
            )),
        }
        return Ok(None);
    }
    // The keeper renews from here on, while the state catches up.
    let keeper = Keeper::spawn(
        replica.clone(),
        Some(lease),
        holder,
        opts.ttl,
        true,
        metrics.clone(),
    )?;
    // A takeover caught up before its lease read-back; a lease taken at start did not.
    let floor = match caught_up {
        Some(floor) => floor,
        None => standby::reconcile(&rt, &replica, persister, standby::Goal::Lead, ours)?,
    };
    if stop.requested() {
        // The keeper releases the lease as it ends.
        drop(keeper);
        stop.log("the lease, released");
        return Ok(None);
    }
    multipart::sweep_logged(&rt, &replica);
    metrics.role(Role::Primary);
    info!("replica {url}: primary (new bases above generation {floor}, the bucket's newest)");
    Ok(Some(Started {
        replica,
        rt,
        keeper,
        keep: opts.keep,
        target: persister.target(),
        floor: Some(floor),
        took_over: !ours,
    }))
}

/// Takes the lease at start: `None` if the store did not answer (the lease thread retries).
fn take_at_start(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    holder: &Holder,
    ttl: Duration,
) -> Result<Option<Lease>, Failure> {
    let url = &replica.url;
    match rt.block_on(Lease::take(replica, holder.clone(), ttl, true)) {
        Ok(l) => Ok(Some(l)),
        Err(LeaseError::Store(e)) if is_refused(&e) => Err(refused(url, &e)),
        Err(LeaseError::Store(e)) => {
            warn!("replica {url} is unreachable ({e}); local snapshots go on, uploads are retried");
            Ok(None)
        }
        Err(e @ (LeaseError::Held { .. } | LeaseError::Lost { .. })) => {
            Err(Failure::new(Code::TempFail, format!("replica {url}: {e}")))
        }
        Err(e @ (LeaseError::Foreign { .. } | LeaseError::BadTtl { .. })) => {
            Err(Failure::new(Code::DataErr, format!("replica {url}: {e}")))
        }
    }
}

/// The state file is missing: restores the replica's newest point, or starts empty only if
/// the replica says it holds none. Anything else (unreachable, an error listing it) refuses
/// to start: an empty client would go on as if it had no state, and its first base would
/// hide the replica's.
fn restore_at_start(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    persister: &Persister,
    reachable: bool,
    fallback: bool,
) -> Result<(), Failure> {
    let target = persister.target();
    let cannot = |why: &str| {
        Failure::new(
            Code::TempFail,
            format!(
                "{} is missing and replica {} cannot be read ({why}): not starting the client \
                 empty over a replica that may hold its state; start again once the replica \
                 answers (or remove --replica to start empty)",
                target.display(),
                replica.url
            ),
        )
    };
    if !reachable {
        return Err(cannot("unreachable"));
    }
    match fetch::fetch_into(rt, replica, persister, None, fallback) {
        Ok(f) => {
            info!(
                "{} was missing: restored {} from replica {} (taken {})",
                target.display(),
                f.point,
                replica.url,
                crate::time::rfc3339(f.unix_time_ns)
            );
            Ok(())
        }
        Err(f) if f.code == Code::NoInput => {
            info!(
                "replica {} holds no snapshot yet: starting empty",
                replica.url
            );
            Ok(())
        }
        Err(f) if f.code == Code::IoErr => Err(cannot(&f.message)),
        Err(f) => Err(f),
    }
}

impl Started {
    /// Every new base must be above this generation (`None`: no constraint beyond the
    /// local state's).
    pub fn floor(&self) -> Option<u64> {
        self.floor
    }

    /// `true` for a `--standby` host that took the lease from another host: its local
    /// region (fd store) is not the bucket's history.
    pub fn took_over(&self) -> bool {
        self.took_over
    }

    /// The lease thread's state (for [`LeaseState::on_loss`]).
    pub fn lease_state(&self) -> Arc<LeaseState> {
        self.keeper.state()
    }

    /// Starts the uploader thread.
    ///
    /// # Errors
    ///
    /// As [`Shipper::spawn`].
    pub fn spawn(
        self,
        metrics: crate::metrics::Metrics,
        status: crate::durable::SharedPublisher,
    ) -> Result<Shipper, Failure> {
        Shipper::spawn(
            self.replica,
            self.rt,
            self.keeper,
            self.keep,
            self.target,
            metrics,
            status,
        )
    }
}
