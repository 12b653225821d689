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
//! | [`keeper`] | the lease's own thread: renews it on its own schedule |
//! | [`upload`] | the uploader thread and its bounded backlog of points ([`Shipper`]) |
//! | [`fetch`] | `restore --from URL` and the restore at start: a point of the bucket as a standalone snapshot file |
//! | [`inspect`] | `inspect --replica URL` |
//!
//! `object_store` is async; the host is not. Each user of a [`Replica`] runs a current-thread
//! tokio runtime ([`runtime`]) on its own thread and `block_on`s one request at a time.
//!
//! Byte layout of the bucket: `docs/FORMAT.md`, "Replica layout".

pub mod fetch;
pub mod inspect;
pub mod keeper;
pub mod layout;
pub mod lease;
pub mod multipart;
pub mod probe;
pub mod store;
pub mod upload;

use shmsnap_linux::persist::Persister;
use tracing::{info, warn};

use crate::config::Keep;
use crate::exit::{Code, Failure};
use lease::{Holder, Lease, LeaseError};
use probe::ProbeError;
use store::{is_refused, refused, runtime, Replica};
use upload::Shipper;

/// A replica opened by `run` before the client starts: the store probed and the lease taken
/// (or neither, if the replica was unreachable), ready to become the lease and uploader
/// threads.
#[derive(Debug)]
pub struct Started {
    replica: Replica,
    rt: tokio::runtime::Runtime,
    lease: Option<Lease>,
    holder: Holder,
    probed: bool,
    keep: Keep,
    target: std::path::PathBuf,
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
pub fn start(
    url: &str,
    keep: Keep,
    persister: &Persister,
    fallback: bool,
) -> Result<Started, Failure> {
    let replica = Replica::open(url)?;
    let rt = runtime()?;
    let holder = Holder::this(&persister.target());
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
        take_at_start(&rt, &replica, &holder)?
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
    }
    Ok(Started {
        replica,
        rt,
        lease,
        holder,
        probed,
        keep,
        target: persister.target(),
    })
}

/// Takes the lease at start: `None` if the store did not answer (the lease thread retries).
fn take_at_start(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    holder: &Holder,
) -> Result<Option<Lease>, Failure> {
    let url = &replica.url;
    match rt.block_on(Lease::take(replica, holder.clone())) {
        Ok(l) => Ok(Some(l)),
        Err(LeaseError::Store(e)) if is_refused(&e) => Err(refused(url, &e)),
        Err(LeaseError::Store(e)) => {
            warn!("replica {url} is unreachable ({e}); local snapshots go on, uploads are retried");
            Ok(None)
        }
        Err(e @ (LeaseError::Held { .. } | LeaseError::Lost { .. })) => {
            Err(Failure::new(Code::TempFail, format!("replica {url}: {e}")))
        }
        Err(e @ LeaseError::Foreign { .. }) => {
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
    /// Starts the lease thread and the uploader thread.
    ///
    /// # Errors
    ///
    /// As [`Shipper::spawn`].
    pub fn spawn(
        self,
        metrics: crate::metrics::Metrics,
        status: crate::durable::SharedPublisher,
    ) -> Result<Shipper, Failure> {
        let keeper = keeper::Keeper::spawn(
            self.replica.clone(),
            self.lease,
            self.holder,
            self.probed,
            metrics.clone(),
        )?;
        Shipper::spawn(
            self.replica,
            self.rt,
            keeper,
            self.keep,
            self.target,
            metrics,
            status,
        )
    }
}
