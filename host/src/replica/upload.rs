//! The uploader: its own thread, a bounded backlog of points ([`Shipper::offer`] opens each
//! point's file on the snapshot worker and queues it; a base supersedes what is pending, a
//! delta over a full backlog ([`MAX_PENDING`]) cuts its chain until the next base), retries
//! with backoff, retention, durability feedback once a point is in the bucket, and the check
//! that the bucket still holds the chain a delta extends (put back from local files, or cut).
//! The lease is kept by its own thread ([`super::keeper`]). Why the bucket always holds a
//! restorable chain: docs/DESIGN.md §12.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use shmsnap_linux::{chain, packed};
use tracing::{debug, error, info, warn};

use super::keeper::{Keeper, LeaseState};
use super::layout::{point_key, Listing, PointId};
use super::store::Replica;
use crate::config::Keep;
use crate::durable::SharedPublisher;
use crate::exit::{Code, Failure};
use crate::flow::{Point, Report, Sink};
use crate::metrics::{Metrics, Phase, ReplicaState};

mod lag;
pub use lag::Lag;

/// Points waiting for the uploader, at most.
pub const MAX_PENDING: usize = 16;

/// Parts of a multipart upload are this size.
const PART: usize = 16 << 20;

/// Objects up to this size are one PUT (S3 takes up to 5 GiB in one; this bounds the memory
/// of one upload), larger ones a multipart upload of [`PART`]-byte parts. Above `PART`, so
/// that a base of 16 MiB of data (plus its run table) is still one request.
const SINGLE_PUT_MAX: u64 = 32 << 20;

/// First pause after a failed request; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A failing replica is logged at most this often (each failure is counted in the metrics).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How long a stopping host keeps trying to ship what is pending.
const DRAIN: Duration = Duration::from_secs(10);

/// A persisted point waiting for upload.
#[derive(Debug)]
pub struct Offer {
    /// Which point.
    pub point: PointId,
    /// Its file, opened when it was offered (shared: the newest base's is kept to rebuild
    /// a wiped chain).
    pub file: Arc<File>,
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
    /// The points persisted and not (yet) in the bucket: the lag.
    lag: Lag,
    /// The generation of the newest base offered.
    newest_base: Option<u64>,
}

impl Offer {
    /// Another handle on the same point and file.
    fn clone_handle(&self) -> Offer {
        Offer {
            point: self.point,
            file: self.file.clone(),
            len: self.len,
            seq: self.seq,
            at: self.at,
        }
    }
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
        self.lag.persisted(p, offer.at);
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

/// The snapshot worker's handle on the uploader thread (and, through it, the lease thread).
#[derive(Debug)]
pub struct Shipper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Dropped after the uploader ended: releases the lease.
    keeper: Option<Keeper>,
    metrics: Metrics,
}

/// The replica as a [`Sink`]: every persisted point is offered to the uploader.
impl Sink for Shipper {
    fn persisted(&self, report: &Report, target: &Path) {
        self.offer(report.point, target, report.newest_seq);
    }
}

impl Shipper {
    /// Starts the uploader thread on `rt`; `keeper` keeps the lease. `target` is the state
    /// file (its chain directory holds the deltas a rebuilt chain needs).
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the thread cannot be started.
    pub fn spawn(
        replica: Replica,
        rt: tokio::runtime::Runtime,
        keeper: Keeper,
        keep: Keep,
        target: std::path::PathBuf,
        metrics: Metrics,
        status: SharedPublisher,
    ) -> Result<Shipper, Failure> {
        let shared = Arc::new(Shared::default());
        let lease = keeper.state();
        if lease.valid_for().is_zero() {
            metrics.replica_state(ReplicaState::Waiting, "the lease is not taken yet");
        } else {
            metrics.replica_state(ReplicaState::Uploading, "the lease is held");
        }
        let seen_recreated = lease.recreated();
        let uploader = Uploader {
            replica,
            shared: shared.clone(),
            lease,
            seen_recreated,
            keep,
            target,
            metrics: metrics.clone(),
            status,
            shipped: None,
            newest_base: None,
            bucket_newest: None,
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
            keeper: Some(keeper),
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
        let at = Instant::now();
        let opened = File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
        let (len, file) = match opened {
            Ok(x) => x,
            Err(e) => {
                warn!(
                    "replica: cannot open {} to upload {id}: {e}",
                    path.display()
                );
                self.metrics.replica_error();
                self.shared.lock().lag.persisted(id, at);
                return;
            }
        };
        let offer = Offer {
            point: id,
            file: Arc::new(file),
            len,
            seq,
            at,
        };
        let mut backlog = self.shared.lock();
        let dropped = backlog.push(offer);
        if dropped > 0 {
            debug!("replica: {dropped} pending point(s) dropped behind {id}");
        }
        self.metrics.replica_backlog(backlog.len());
        self.metrics
            .replica_behind_since(backlog.lag.behind_since());
        drop(backlog);
        self.shared.wake.notify_one();
    }
}

impl Drop for Shipper {
    /// Stops the uploader: it ships what is pending for at most [`DRAIN`], then ends; then
    /// the lease thread releases the lease.
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
        drop(self.keeper.take());
    }
}

/// The uploader thread's state.
struct Uploader {
    replica: Replica,
    shared: Arc<Shared>,
    /// The lease thread's word on the lease.
    lease: Arc<LeaseState>,
    /// How many re-creations of the lease this thread has answered (by checking the chain).
    seen_recreated: u64,
    keep: Keep,
    /// The state file.
    target: std::path::PathBuf,
    metrics: Metrics,
    status: SharedPublisher,
    /// The newest point this host put into the bucket (and checked there since).
    shipped: Option<PointId>,
    /// The newest base offered (its open file): a wiped chain is rebuilt from it.
    newest_base: Option<Arc<Offer>>,
    /// The newest generation in the bucket before this host's first upload (`None`: not
    /// listed yet). Bases not above it are not uploaded: they belong to another history.
    bucket_newest: Option<u64>,
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
            let (next, stopping, drained) = {
                let mut b = self.shared.wait(Duration::from_secs(1));
                let next = b.pop();
                (next, b.stop, b.drained())
            };
            self.update_gauges();
            let stopped = self.lease.stopped().is_some();
            if stopping && (next.is_none() || drained || stopped) {
                return;
            }
            if stopped {
                continue;
            }
            if self.lease.recreated() != self.seen_recreated {
                self.after_recreate().await;
            }
            if let Some(offer) = next {
                if offer.point.index == 0 {
                    self.newest_base = Some(Arc::new(offer.clone_handle()));
                }
                self.ship(offer).await;
            }
        }
    }

    fn update_gauges(&self) {
        let b = self.shared.lock();
        self.metrics.replica_backlog(b.len());
        self.metrics.replica_behind_since(b.lag.behind_since());
    }

    /// The lease was found gone and created again: the prefix was probably wiped. The newest
    /// point this host shipped is looked up; if it is gone, its chain is put back.
    async fn after_recreate(&mut self) {
        let Some(p) = self.shipped else {
            self.seen_recreated = self.lease.recreated();
            return;
        };
        match self.chain_present(p).await {
            Ok(true) => self.seen_recreated = self.lease.recreated(),
            Ok(false) => {
                warn!(
                    "replica {}: {p} is no longer in the bucket (the prefix was wiped?); \
                     uploading its chain again",
                    self.replica.url
                );
                match self.rebuild(p).await {
                    Ok(true) => self.seen_recreated = self.lease.recreated(),
                    Ok(false) => {
                        self.shipped = None;
                        self.seen_recreated = self.lease.recreated();
                    }
                    Err(e) => self.failed(&format!("cannot put the chain back: {e}")),
                }
            }
            Err(e) => self.failed(&format!("cannot check the bucket: {e}")),
        }
    }

    /// Counts a failure and logs it, at most every [`WARN_EVERY`].
    fn failed(&mut self, what: &str) {
        self.metrics.replica_error();
        self.metrics
            .replica_state(ReplicaState::Waiting, &format!("{what} (retrying)"));
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
            if let Some(why) = self.lease.stopped() {
                debug!("replica: {} not uploaded: {why}", offer.point);
                return;
            }
            let left = self.lease.valid_for();
            let result = if left < self.lease.margin() {
                Err(format!(
                    "the lease is not surely held ({:.1} s left); waiting for its renewal",
                    left.as_secs_f64()
                ))
            } else {
                let shared = self.shared.clone();
                tokio::select! {
                    r = self.try_ship(&offer) => r,
                    () = drained(&shared) => Err("the host is stopping".to_owned()),
                }
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
                    self.pause();
                    self.update_gauges();
                }
            }
        }
    }

    /// Sleeps the backoff (woken early by the stop), doubling it.
    fn pause(&mut self) {
        self.shared.nap(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
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
        if p.index > 0 && !self.predecessor_ready(p).await? {
            return Ok(Shipped::Skipped);
        }
        self.put_new(offer).await
    }

    /// For delta `p`: `true` once its base and predecessor are in the bucket (put back from
    /// local files if they were removed); `false` if the chain cannot be made whole (cut).
    async fn predecessor_ready(&mut self, p: PointId) -> Result<bool, String> {
        let before = PointId {
            index: p.index - 1,
            ..p
        };
        if self
            .shipped
            .is_some_and(|s| s.generation == p.generation && s >= before)
        {
            if self
                .chain_present(before)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(true);
            }
            warn!(
                "replica {}: {before} is no longer in the bucket (the prefix was wiped, or \
                 objects deleted); uploading its chain again before {p}",
                self.replica.url
            );
        }
        if self.rebuild(before).await? {
            return Ok(true);
        }
        debug!("replica: {p} not uploaded: its chain cannot be put in the bucket");
        self.shared.lock().cut.get_or_insert(p.generation);
        Ok(false)
    }

    /// `true` if `p`'s base and `p` itself are in the bucket.
    async fn chain_present(&self, p: PointId) -> object_store::Result<bool> {
        let base = PointId { index: 0, ..p };
        for q in [base, p] {
            match self.replica.store.head(&point_key(&self.replica, q)).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
            if p.index == 0 {
                break;
            }
        }
        Ok(true)
    }

    /// Puts the chain up to `upto` into the bucket from local files: the base from the fd
    /// kept of the newest base, the deltas from the chain directory; objects already there
    /// are kept. `Ok(false)` if the local files no longer hold that chain.
    async fn rebuild(&mut self, upto: PointId) -> Result<bool, String> {
        let Some(base) = self.newest_base.clone() else {
            return Ok(false);
        };
        if base.point.generation != upto.generation || !self.base_is_ours(&base).await? {
            return Ok(false);
        }
        let mut points = vec![(*base).clone_handle()];
        let dir = chain::chain_dir(&self.target);
        for i in 1..=upto.index {
            let path = dir.join(chain::delta_name(upto.generation, u64::from(i)));
            let Ok(file) = File::open(&path) else {
                return Ok(false);
            };
            let len = file.metadata().map_err(|e| e.to_string())?.len();
            points.push(Offer {
                point: PointId { index: i, ..upto },
                file: Arc::new(file),
                len,
                seq: 0,
                at: Instant::now(),
            });
        }
        for o in &points {
            self.put_new(o).await?;
        }
        info!(
            "replica {}: chain up to {upto} put back into the bucket",
            self.replica.url
        );
        self.shipped = Some(upto);
        Ok(true)
    }

    /// `true` if the bucket has no object at `base`'s key, or one of the size this host would
    /// upload. Another size is another history's base (a host that started empty next to
    /// it), or this base as an older version uploaded it (byte for byte): deltas are not
    /// chained onto it, the chain waits for the next base (logged).
    async fn base_is_ours(&self, base: &Offer) -> Result<bool, String> {
        let key = point_key(&self.replica, base.point);
        let size = match self.replica.store.head(&key).await {
            Ok(m) => m.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e.to_string()),
        };
        let ours = Body::of(base).map_err(|e| e.to_string())?.len();
        if size != ours {
            warn!(
                "replica {}: {key} exists with {size} bytes, not the {ours} of this host's \
                 {}: not chaining deltas onto it; waiting for the next base",
                self.replica.url, base.point
            );
        }
        Ok(size == ours)
    }

    /// Puts `offer` under its key unless an object is there already (never replaced).
    async fn put_new(&mut self, offer: &Offer) -> Result<Shipped, String> {
        let key = point_key(&self.replica, offer.point);
        match self.replica.store.head(&key).await {
            Ok(_) => {
                // Never replace an object: another history's point, or ours from a previous
                // run (or put back before).
                debug!("replica: {key} already exists; not replaced");
                return Ok(Shipped::Skipped);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let started = Instant::now();
        let bytes = match upload(&self.replica, &key, offer, &self.lease).await {
            Ok(b) => b,
            Err(object_store::Error::AlreadyExists { .. }) => {
                // The `HEAD` above found nothing: the object appeared during this upload.
                // Either this very PUT was applied and its answer lost (object_store retried
                // it, and the retry's create-only put was refused), or another host wrote the
                // key. The object tells: byte for byte this point, or not.
                if let Some(len) = self.holds_this(&key, offer).await? {
                    info!(
                        "replica {}: {key} was refused as existing, and holds this point byte \
                         for byte: an earlier answer was lost; uploaded",
                        self.replica.url
                    );
                    len
                } else {
                    self.fenced(&key);
                    return Ok(Shipped::Skipped);
                }
            }
            Err(e) => return Err(e.to_string()),
        };
        self.metrics.replica_uploaded(bytes);
        self.metrics.record_phase(Phase::Upload, started.elapsed());
        debug!("replica: {key} uploaded ({bytes} bytes)");
        Ok(Shipped::Done)
    }

    /// Another host wrote `key` while this one uploaded it: a second writer on this prefix;
    /// this one stops uploading (fenced).
    fn fenced(&mut self, key: &object_store::path::Path) {
        let why = format!(
            "{key} was written by another host while this one uploaded it: another writer on \
             this prefix; uploads stop (fenced)"
        );
        error!("replica {}: {why}", self.replica.url);
        self.lease.fence(&why);
        self.metrics.replica_state(ReplicaState::Stopped, &why);
    }

    /// The object's size if the object at `key` is `offer`'s object byte for byte (as
    /// [`upload`] puts it), `None` if it is another.
    async fn holds_this(
        &self,
        key: &object_store::path::Path,
        offer: &Offer,
    ) -> Result<Option<u64>, String> {
        let got = self
            .replica
            .store
            .get(key)
            .await
            .map_err(|e| e.to_string())?;
        let theirs = got.bytes().await.map_err(|e| e.to_string())?;
        let body = Body::of(offer).map_err(|e| e.to_string())?;
        if theirs.len() as u64 != body.len() {
            return Ok(None);
        }
        let ours = body.read(0, theirs.len()).map_err(|e| e.to_string())?;
        Ok((theirs[..] == ours[..]).then_some(body.len()))
    }

    /// After a point reached the bucket: feedback, metrics, retention.
    ///
    /// Fencing: `REPLICA_SEQ` is published only if the success answer arrived while the
    /// lease was still valid. Such an object was committed before the lease's validity
    /// ended, so before any standby could take over, so the new primary's listing after its
    /// takeover sees it: a client acknowledging replicated commits never acknowledges one a
    /// takeover drops (docs/DESIGN.md §12).
    async fn done(&mut self, offer: &Offer) {
        let p = offer.point;
        if self.lease.valid_for().is_zero() {
            warn!(
                "replica {}: {p} reached the bucket only after the lease's validity ended: not \
                 reported as replicated (a new primary may not have seen it)",
                self.replica.url
            );
            self.metrics.replica_error();
            return;
        }
        self.shipped = Some(p);
        self.bucket_newest = Some(self.bucket_newest.unwrap_or(0).max(p.generation));
        crate::durable::replicated(&self.status, offer.seq);
        let behind = {
            let mut b = self.shared.lock();
            b.lag.uploaded(p);
            b.lag.behind_since()
        };
        self.metrics.replica_behind_since(behind);
        self.metrics
            .replica_state(ReplicaState::Uploading, "points reach the bucket");
        if p.index == 0 {
            if let Err(e) = retain(&self.replica, self.keep, p.generation).await {
                self.failed(&format!("retention skipped: {e}"));
            }
        }
    }
}

/// Resolves once a stopping host's drain time is over: an upload still under way then is
/// dropped (an unfinished multipart upload is aborted at the next start, [`super::multipart`]).
async fn drained(shared: &Shared) {
    while !shared.lock().drained() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts the offer's object at `key` (a base packed, a delta as is; returns its size): one PUT
/// up to [`SINGLE_PUT_MAX`], else a multipart upload (the object appears only when it completes). A multipart upload is aborted on every error, and
/// each part waits for the lease to be surely held.
async fn upload(
    replica: &Replica,
    key: &object_store::path::Path,
    offer: &Offer,
    lease: &LeaseState,
) -> object_store::Result<u64> {
    let body = Body::of(offer)?;
    let len = body.len();
    if len <= SINGLE_PUT_MAX {
        let bytes = body.read(0, len as usize)?;
        // Create-only: an object that appeared since the `HEAD` is another writer's.
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        replica
            .store
            .put_opts(key, PutPayload::from(bytes), opts)
            .await?;
        return Ok(len);
    }
    let mut up = replica.store.put_multipart(key).await?;
    let result = async {
        let mut inflight = futures_util::stream::FuturesOrdered::new();
        let mut at = 0;
        while at < len {
            if lease.valid_for() < lease.margin() {
                return Err(object_store::Error::Generic {
                    store: "replica",
                    source: "the lease is not surely held: upload abandoned".into(),
                });
            }
            let n = (len - at).min(PART as u64) as usize;
            let chunk = body.read(at, n)?;
            inflight.push_back(up.put_part(PutPayload::from(chunk)));
            if inflight.len() >= 2 {
                futures_util::StreamExt::next(&mut inflight)
                    .await
                    .transpose()?;
            }
            at += n as u64;
        }
        while let Some(r) = futures_util::StreamExt::next(&mut inflight).await {
            r?;
        }
        if lease.valid_for() < lease.margin() {
            return Err(object_store::Error::Generic {
                store: "replica",
                source: "the lease is not surely held: upload abandoned before completing".into(),
            });
        }
        Ok(())
    }
    .await;
    let result = match result {
        Ok(()) => up.complete().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        if let Err(a) = up.abort().await {
            warn!("replica: cannot abort the multipart upload of {key} ({a}); it is aborted at the next start");
        }
        return Err(e);
    }
    Ok(len)
}

/// An object's bytes: a base packed ([`shmsnap_linux::packed`]: its data extents and a run
/// table, so that its size follows the data), a delta as its file.
enum Body<'a> {
    Raw(&'a File, u64),
    Packed(&'a File, packed::Plan),
}

fn local_err(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local file",
        source: Box::new(e),
    }
}

impl<'a> Body<'a> {
    fn of(offer: &'a Offer) -> object_store::Result<Body<'a>> {
        if offer.point.index > 0 {
            return Ok(Body::Raw(&offer.file, offer.len));
        }
        let plan = packed::Plan::of(&*offer.file).map_err(local_err)?;
        Ok(Body::Packed(&offer.file, plan))
    }

    fn len(&self) -> u64 {
        match self {
            Body::Raw(_, len) => *len,
            Body::Packed(_, plan) => plan.len(),
        }
    }

    fn read(&self, at: u64, n: usize) -> object_store::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        match self {
            Body::Raw(file, _) => file.read_exact_at(&mut buf, at),
            Body::Packed(file, plan) => plan.read_at(file, at, &mut buf),
        }
        .map_err(local_err)?;
        Ok(buf)
    }
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
