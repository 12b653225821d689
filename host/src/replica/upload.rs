//! The uploader: its own thread, a bounded backlog of points, retries with backoff, the lease,
//! retention, and durability feedback once a point is in the bucket.
//!
//! # The backlog (what reaches the bucket is always a restorable chain)
//!
//! [`Shipper::offer`] runs on the snapshot worker right after a point is persisted: it opens
//! the point's file (a base is renamed to `FILE.1` by the next snapshot, a delta is removed
//! with its chain; the open fd keeps the bytes) and pushes it into the [`Backlog`] under a
//! mutex that is never held across a request, so the worker never waits for the network.
//!
//! - A **base** supersedes everything pending (it restores on its own): the pending points
//!   are dropped, and an upload in progress of an older point is abandoned at its next retry.
//! - A **delta** is useless without its base and every delta before it. It is queued behind
//!   them; if the backlog is full ([`MAX_PENDING`]), the chain is **cut**: this delta and every
//!   later delta of its generation are dropped until the next base. The uploader also uploads
//!   a delta only right after its predecessor reached the bucket (`shipped`), so the bucket
//!   holds, per generation, a base and a gapless prefix of its deltas.
//!
//! Memory is bounded by [`MAX_PENDING`] open fds; disk by the files the host already keeps
//! (a dropped fd releases a rotated-out file).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use shmsnap_linux::chain;
use tracing::{debug, error, info, warn};

use super::layout::{point_key, Listing, PointId};
use super::lease::{now_ms, Holder, Lease, LeaseError};
use super::Replica;
use crate::durable::SharedPublisher;
use crate::exit::{Code, Failure};
use crate::metrics::Metrics;
use crate::snap::Point;

/// Points waiting for the uploader, at most.
pub const MAX_PENDING: usize = 16;

/// Objects up to this size are one PUT; larger ones a multipart upload of parts this size.
const PART: usize = 16 << 20;

/// First pause after a failed request; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A failing replica is logged at most this often (each failure is counted in the metrics).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How long a stopping host keeps trying to ship what is pending.
const DRAIN: Duration = Duration::from_secs(10);

/// How many generations, or how old, the bucket keeps (`--replica-keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The newest N base generations, each with its deltas (N >= 1).
    Generations(u64),
    /// Generations whose base is younger than this (the newest is always kept).
    Age(Duration),
}

impl Default for Keep {
    fn default() -> Self {
        Keep::Generations(3)
    }
}

/// Parses `--replica-keep`: a count (1 or more) or a duration (`7d`, `12h`).
///
/// # Errors
///
/// A message for clap.
pub fn parse_keep(s: &str) -> Result<Keep, String> {
    if let Ok(n) = s.parse::<u64>() {
        return if n >= 1 {
            Ok(Keep::Generations(n))
        } else {
            Err("keep at least 1 generation".into())
        };
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Keep::Age(d)),
        _ => Err("expected a number of generations (e.g. 3) or a duration (e.g. 7d, 12h)".into()),
    }
}

/// A persisted point waiting for upload.
#[derive(Debug)]
pub struct Offer {
    /// Which point.
    pub point: PointId,
    /// Its file, opened when it was offered.
    pub file: File,
    /// Its length.
    pub len: u64,
    /// The newest seq it holds (published as `REPLICA_SEQ` once it is in the bucket).
    pub seq: u64,
    /// When it was offered (for the lag).
    pub at: Instant,
}

/// The points waiting for upload. Invariant: `pending` is in offer order and each delta in it
/// follows its predecessor (in `pending`, in flight, or already in the bucket).
#[derive(Debug, Default)]
pub struct Backlog {
    pending: VecDeque<Offer>,
    /// A generation whose chain was cut: its later deltas are dropped until the next base.
    cut: Option<u64>,
    /// The host is stopping.
    stop: bool,
    /// When a stopping host gives up on what is still pending.
    stop_by: Option<Instant>,
    /// When the oldest point not yet in the bucket was offered (in flight or pending).
    behind_since: Option<Instant>,
    /// The generation of the newest base offered.
    newest_base: Option<u64>,
}

impl Backlog {
    /// `true` once a stopping host's drain time is over.
    fn drained(&self) -> bool {
        self.stop_by.is_some_and(|t| Instant::now() >= t)
    }
}

impl Backlog {
    /// Adds a point; returns how many pending points it dropped (superseded or cut).
    pub fn push(&mut self, offer: Offer) -> usize {
        let p = offer.point;
        self.behind_since.get_or_insert(offer.at);
        if p.index == 0 {
            let dropped = self.pending.len();
            self.pending.clear();
            self.cut = None;
            self.newest_base = Some(p.generation);
            self.pending.push_back(offer);
            return dropped;
        }
        if self.cut == Some(p.generation) {
            return 1;
        }
        if self.pending.len() >= MAX_PENDING {
            self.cut = Some(p.generation);
            return 1;
        }
        self.pending.push_back(offer);
        0
    }

    /// The next point to upload.
    pub fn pop(&mut self) -> Option<Offer> {
        self.pending.pop_front()
    }

    /// `true` if a base newer than `p`'s generation was offered (`p` is then superseded).
    pub fn superseded(&self, p: PointId) -> bool {
        self.newest_base.is_some_and(|g| g > p.generation)
    }

    /// Points waiting (not counting one in flight).
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

/// The state the worker and the uploader share.
#[derive(Debug, Default)]
struct Shared {
    backlog: Mutex<Backlog>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps `d`, woken early by the stop; a stopping host still sleeps up to a second, so
    /// that its last retries are not a tight loop. Blocking is fine: the uploader's runtime
    /// is its thread's alone.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut guard = self.lock();
        // New offers notify the same condvar: keep sleeping through them, not the stop.
        while !guard.stop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = self
                .wake
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(guard);
        std::thread::sleep(d.min(Duration::from_secs(1)));
    }

    /// Waits up to `timeout` for a point or the stop; returns the guard.
    fn wait(&self, timeout: Duration) -> MutexGuard<'_, Backlog> {
        let guard = self.lock();
        if !guard.pending.is_empty() || guard.stop {
            return guard;
        }
        self.wake
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

/// The snapshot worker's handle on the uploader thread.
#[derive(Debug)]
pub struct Shipper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    metrics: Metrics,
}

impl Shipper {
    /// Starts the uploader thread on `rt` with the lease taken at start (`None` if the
    /// replica was unreachable then: the thread takes it before its first upload).
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the thread cannot be started.
    pub fn spawn(
        replica: Replica,
        rt: tokio::runtime::Runtime,
        lease: Option<Lease>,
        holder: Holder,
        keep: Keep,
        metrics: Metrics,
        status: SharedPublisher,
    ) -> Result<Shipper, Failure> {
        let shared = Arc::new(Shared::default());
        let uploader = Uploader {
            replica,
            shared: shared.clone(),
            lease,
            holder,
            keep,
            metrics: metrics.clone(),
            status,
            shipped: None,
            bucket_newest: None,
            lost: false,
            last_warn: None,
            backoff: MIN_BACKOFF,
        };
        let thread = std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || rt.block_on(uploader.run()))
            .map_err(|e| {
                Failure::new(Code::OsErr, format!("cannot start the replica thread: {e}"))
            })?;
        Ok(Shipper {
            shared,
            thread: Some(thread),
            metrics,
        })
    }

    /// Offers a persisted point: opens its file (`target` is the state file) and queues it.
    /// Never waits for the network. A file that cannot be opened is logged and skipped.
    pub fn offer(&self, point: Point, target: &Path, seq: u64) {
        let (id, path) = match point {
            Point::Base { generation } => (
                PointId {
                    generation,
                    index: 0,
                },
                target.to_path_buf(),
            ),
            Point::Delta {
                base_generation,
                index,
            } => (
                PointId {
                    generation: base_generation,
                    index,
                },
                chain::chain_dir(target).join(chain::delta_name(base_generation, u64::from(index))),
            ),
        };
        let opened = File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (len, file) = match opened {
            Ok(x) => x,
            Err(e) => {
                warn!(
                    "replica: cannot open {} to upload {id}: {e}",
                    path.display()
                );
                self.metrics.replica_error();
                return;
            }
        };
        let offer = Offer {
            point: id,
            file,
            len,
            seq,
            at: Instant::now(),
        };
        let mut backlog = self.shared.lock();
        let dropped = backlog.push(offer);
        if dropped > 0 {
            debug!("replica: {dropped} pending point(s) dropped behind {id}");
        }
        self.metrics.replica_backlog(backlog.len());
        drop(backlog);
        self.shared.wake.notify_one();
    }
}

impl Drop for Shipper {
    /// Stops the uploader: it ships what is pending for at most [`DRAIN`], then ends.
    fn drop(&mut self) {
        let mut b = self.shared.lock();
        b.stop = true;
        b.stop_by = Some(Instant::now() + DRAIN);
        drop(b);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("the replica thread panicked");
            }
        }
    }
}

/// The uploader thread's state.
struct Uploader {
    replica: Replica,
    shared: Arc<Shared>,
    /// `None` until taken (the replica may be unreachable at start).
    lease: Option<Lease>,
    holder: Holder,
    keep: Keep,
    metrics: Metrics,
    status: SharedPublisher,
    /// The newest point this host put into the bucket; a delta goes up only right after its
    /// predecessor.
    shipped: Option<PointId>,
    /// The newest generation in the bucket before this host's first upload (`None`: not
    /// listed yet). Bases not above it are not uploaded: they belong to another history.
    bucket_newest: Option<u64>,
    /// The lease was lost or refused: nothing more is uploaded.
    lost: bool,
    last_warn: Option<Instant>,
    backoff: Duration,
}

/// What happened to one point.
enum Shipped {
    Done,
    Skipped,
}

impl Uploader {
    async fn run(mut self) {
        loop {
            let wait = Duration::from_millis(
                self.lease
                    .as_ref()
                    .map_or(1000, |l| l.renew_due_ms().saturating_sub(now_ms()).max(10)),
            );
            let (next, stopping, drained, waiting) = {
                let mut b = self.shared.wait(wait);
                let next = b.pop();
                if next.is_none() {
                    b.behind_since = None;
                }
                (next, b.stop, b.drained(), b.len())
            };
            self.metrics.replica_backlog(waiting);
            self.update_lag();
            if stopping && (next.is_none() || drained || self.lost) {
                self.release().await;
                return;
            }
            self.keep_lease().await;
            if let Some(offer) = next {
                if self.lost {
                    continue;
                }
                self.ship(offer).await;
            }
        }
    }

    /// Gives the lease up as the host stops (unless it was lost).
    async fn release(&mut self) {
        if let (Some(l), false) = (self.lease.take(), self.lost) {
            match l.release(&self.replica).await {
                Ok(()) => info!("replica {}: lease released", self.replica.url),
                Err(e) => warn!(
                    "replica {}: cannot release the lease ({e}); it expires by itself",
                    self.replica.url
                ),
            }
        }
    }

    fn update_lag(&self) {
        let since = self.shared.lock().behind_since;
        self.metrics.replica_behind_since(since);
    }

    /// Renews the lease when due, takes it if not held yet.
    async fn keep_lease(&mut self) {
        if self.lost {
            return;
        }
        let result = match &mut self.lease {
            Some(l) if now_ms() >= l.renew_due_ms() => l.renew(&self.replica).await,
            Some(_) => return,
            None => match Lease::take(&self.replica, self.holder.clone()).await {
                Ok(l) => {
                    info!("replica {}: lease taken", self.replica.url);
                    self.lease = Some(l);
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {}
            Err(LeaseError::Store(e)) => {
                self.failed(&format!("cannot renew or take the lease: {e}"))
            }
            Err(e) => {
                self.lost = true;
                self.metrics.replica_error();
                error!(
                    "replica {}: {e}; uploads stopped (local snapshots go on)",
                    self.replica.url
                );
            }
        }
    }

    /// Counts a failure and logs it, at most every [`WARN_EVERY`].
    fn failed(&mut self, what: &str) {
        self.metrics.replica_error();
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                "replica {}: {what} (retrying with backoff; local snapshots go on)",
                self.replica.url
            );
            self.last_warn = Some(Instant::now());
        }
    }

    /// Uploads one point, retrying until it is in the bucket, superseded, or the host stops.
    async fn ship(&mut self, offer: Offer) {
        loop {
            if self.shared.lock().superseded(offer.point) {
                debug!("replica: {} superseded by a newer base", offer.point);
                return;
            }
            if self.lease.is_none() && !self.lost {
                self.keep_lease().await;
            }
            if self.lost {
                return;
            }
            let result = match &self.lease {
                // Renews failed for a whole lifetime: another host may write now; upload
                // nothing until a renew (If-Match) proves the lease is still ours.
                Some(l) if l.expired() => Err("the lease expired; renewing it first".to_owned()),
                Some(_) => self.try_ship(&offer).await,
                None => Err("no lease yet".to_owned()),
            };
            match result {
                Ok(Shipped::Done) => {
                    self.backoff = MIN_BACKOFF;
                    self.done(&offer).await;
                    return;
                }
                Ok(Shipped::Skipped) => return,
                Err(e) => {
                    self.failed(&format!("cannot upload {}: {e}", offer.point));
                    if self.shared.lock().drained() {
                        return;
                    }
                    self.pause().await;
                }
            }
        }
    }

    /// Sleeps the backoff (woken early by the stop), doubling it.
    async fn pause(&mut self) {
        self.shared.nap(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.keep_lease().await;
        self.update_lag();
    }

    /// One attempt. `Ok(Skipped)` for a point that must not go up (logged).
    async fn try_ship(&mut self, offer: &Offer) -> Result<Shipped, String> {
        let p = offer.point;
        let newest = match self.bucket_newest {
            Some(g) => g,
            None => {
                let l = Listing::load(&self.replica)
                    .await
                    .map_err(|e| e.to_string())?;
                *self.bucket_newest.insert(l.newest_generation())
            }
        };
        if p.index == 0 && p.generation < newest {
            error!(
                "replica {}: the bucket holds generation {newest}, newer than this host's {p}: \
                 the local state is not from this replica (started empty while it was \
                 unreachable?); not uploading — restore from the replica or use another prefix",
                self.replica.url
            );
            return Ok(Shipped::Skipped);
        }
        if p.index > 0
            && self.shipped
                != Some(PointId {
                    index: p.index - 1,
                    ..p
                })
        {
            debug!("replica: {p} not uploaded: its predecessor is not in the bucket");
            self.shared.lock().cut.get_or_insert(p.generation);
            return Ok(Shipped::Skipped);
        }
        let key = point_key(&self.replica, p);
        match self.replica.store.head(&key).await {
            Ok(_) => {
                // Never replace an object: another history's point, or ours from a previous
                // run. Deltas may follow only a base this host uploaded.
                info!("replica: {key} already exists; not replaced");
                self.shipped = None;
                return Ok(Shipped::Skipped);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        upload(&self.replica, &key, offer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Shipped::Done)
    }

    /// After a point reached the bucket: feedback, metrics, retention.
    async fn done(&mut self, offer: &Offer) {
        let p = offer.point;
        self.shipped = Some(p);
        self.bucket_newest = Some(self.bucket_newest.unwrap_or(0).max(p.generation));
        self.metrics.replica_uploaded(offer.len);
        crate::durable::replicated(&self.status, offer.seq);
        debug!("replica: {p} uploaded ({} bytes)", offer.len);
        if p.index == 0 {
            if let Err(e) = retain(&self.replica, self.keep, p.generation).await {
                self.failed(&format!("retention skipped: {e}"));
            }
        }
    }
}

/// Puts the offer's bytes at `key`: one PUT up to [`PART`], else a multipart upload (the
/// object appears only when it completes).
async fn upload(
    replica: &Replica,
    key: &object_store::path::Path,
    offer: &Offer,
) -> object_store::Result<()> {
    let read = |at: u64, n: usize| -> object_store::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        offer
            .file
            .read_exact_at(&mut buf, at)
            .map_err(|e| object_store::Error::Generic {
                store: "local file",
                source: Box::new(e),
            })?;
        Ok(buf)
    };
    if offer.len <= PART as u64 {
        let bytes = read(0, offer.len as usize)?;
        replica.store.put(key, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut w = WriteMultipart::new_with_chunk_size(replica.store.put_multipart(key).await?, PART);
    let mut at = 0;
    while at < offer.len {
        let n = (offer.len - at).min(PART as u64) as usize;
        let chunk = match read(at, n) {
            Ok(c) => c,
            Err(e) => {
                let _ = w.abort().await;
                return Err(e);
            }
        };
        w.wait_for_capacity(2).await?;
        w.write(&chunk);
        at += n as u64;
    }
    w.finish().await?;
    Ok(())
}

/// Deletes the generations `keep` no longer covers, never `newest` (the base just uploaded)
/// nor anything newer; runs only on a complete listing. Returns the generations deleted.
///
/// # Errors
///
/// The store's errors (what was deleted stays deleted; each generation goes newest delta
/// first, so what is left of it is still a chain prefix).
pub async fn retain(replica: &Replica, keep: Keep, newest: u64) -> object_store::Result<Vec<u64>> {
    let listing = Listing::load(replica).await?;
    let victims = victims(&listing, keep, newest, chrono::Utc::now());
    for g in &victims {
        for key in listing.generations[g].deletion_order() {
            match replica.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        info!("replica {}: retention removed generation {g}", replica.url);
    }
    Ok(victims)
}

/// The generations retention removes: older than `newest`, and beyond the newest N bases or
/// with a base older than the age; a generation without a base older than the oldest kept one.
pub fn victims(
    listing: &Listing,
    keep: Keep,
    newest: u64,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<u64> {
    let mut kept = 0u64;
    let mut out = Vec::new();
    let mut oldest_kept = newest;
    for (&g, generation) in listing.generations.range(..=newest).rev() {
        let Some(base) = &generation.base else {
            continue;
        };
        let keep_it = g == newest
            || match keep {
                Keep::Generations(n) => kept < n,
                Keep::Age(d) => (now - base.modified).to_std().is_ok_and(|age| age <= d),
            };
        if keep_it {
            kept += 1;
            oldest_kept = g;
        } else {
            out.push(g);
        }
    }
    // Orphaned deltas (their base is gone) older than every kept base.
    out.extend(
        listing
            .generations
            .range(..oldest_kept)
            .filter(|(_, g)| g.base.is_none())
            .map(|(&g, _)| g),
    );
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests;
