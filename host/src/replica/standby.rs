//! `run --replica URL --standby`: before the client starts, take the lease if it is free;
//! otherwise follow the bucket (its chain kept as the local state) and watch the lease
//! ([`Observer`]) until it may be taken over; then bring the local state to the bucket's
//! newest point ([`reconcile`]) while the lease read-back waits, and return: the normal
//! start-up path restores the region from the local state (base + chain) and the host
//! becomes the primary.
//!
//! Following: every [`LIST_EVERY`] the bucket is listed; when its newest point is not the
//! one applied, [`follow::advance`] brings the local chain to it — only the new deltas of
//! the generation held, or a new generation's base once — verifying base + chain before
//! anything is renamed into the state. An object that fails a check is never applied: the
//! standby stays at its last sound point, logs it and counts it, and tries again at the next
//! listing.
//!
//! Local state that is not in the bucket (a former primary's commits after a takeover) is
//! moved aside to `<state>.diverged.<unix-time>/`, never deleted ([`reconcile`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmsnap_linux::chain::{self, ChainListing};
use shmsnap_linux::persist::Persister;
use tracing::{info, warn};

use super::fetch;
use super::follow;
use super::layout::{Listing, PointId};
use super::lease::{self, Holder, Lease, LeaseError, Timing};
use super::observe::{Observer, Reading, Verdict};
use super::store::Replica;
use crate::exit::{Code, Failure};
use crate::metrics::{Metrics, Role};
use crate::notify::Notifier;
use crate::time::ms;

/// How often a standby lists the bucket.
pub const LIST_EVERY: Duration = Duration::from_millis(500);

/// A failing request is logged at most this often (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The status line (log, sd_notify) is written this often while standing by.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A stop (SIGTERM, SIGINT) requested before the client runs. While a host stands by — and
/// until its signal thread takes over the signals — SIGTERM and SIGINT only set this flag
/// (`signal_hook::flag`), and every step of standing by checks it: a standby told to stop
/// never takes the lease afterwards, exits 0 at once (holding nothing but its state file's
/// lock), and a host that took the lease and has not started its client releases it first,
/// so the next standby takes over at once. (Before, the signal's default action ended a
/// standby — status "killed by SIGTERM" — and a host between its takeover and its client
/// left the lease to expire.)
#[derive(Debug, Clone)]
pub struct Stop(Arc<AtomicUsize>);

impl Stop {
    /// Registers SIGTERM and SIGINT: from now on they set the flag (the signal's number)
    /// instead of ending the process.
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if a handler cannot be installed.
    pub fn register() -> Result<Stop, Failure> {
        let flag = Arc::new(AtomicUsize::new(0));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // `sig` is positive: the cast keeps its value.
            signal_hook::flag::register_usize(sig, flag.clone(), sig as usize).map_err(|e| {
                Failure::new(Code::OsErr, format!("cannot install signal handlers: {e}"))
            })?;
        }
        Ok(Stop(flag))
    }

    /// The signal that asked to stop, if one did.
    pub fn signal(&self) -> Option<i32> {
        // Relaxed: the flag publishes nothing but itself (signal-hook stores it SeqCst).
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            s => i32::try_from(s).ok(),
        }
    }

    /// `true` once a stop was requested.
    pub fn requested(&self) -> bool {
        self.signal().is_some()
    }

    /// Sleeps `d`, or less if a stop is requested meanwhile (checked every 20 ms); `true` if
    /// one was.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.requested() {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// Logs the stop (`what` the host held: "no lease", "the lease, released").
    pub fn log(&self, what: &str) {
        let name = match self.signal() {
            Some(2) => "SIGINT",
            _ => "SIGTERM",
        };
        info!("{name} while standing by: stopping ({what}; the client was not started)");
    }
}

/// Takes the lease: at once if it is free (none, released, this machine's state path), or
/// after following the bucket until the holder stops renewing. Returns the lease, held, and
/// whether it was this state path's before (then every point in the bucket since is from
/// this state's own history: see [`reconcile`]); `None` if a stop was requested first (no
/// lease held: one taken meanwhile was released).
///
/// # Errors
///
/// 65 for a lease object that is not a lease (or names a TTL out of bounds); I/O errors of
/// the local state.
pub fn acquire(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    holder: &Holder,
    ttl: Duration,
    persister: &Persister,
    metrics: &Metrics,
    stop: &Stop,
) -> Result<Option<(Lease, bool, Option<u64>)>, Failure> {
    let mut last_warn: Option<Instant> = None;
    loop {
        if stop.requested() {
            return Ok(None);
        }
        let ours = matches!(
            rt.block_on(lease::read(replica)),
            Ok(Some((b, _))) if holder.same_place(&b.holder)
        );
        match rt.block_on(Lease::take(replica, holder.clone(), ttl, false)) {
            Ok(l) => {
                info!(
                    "replica {}: lease taken ({}): primary",
                    replica.url,
                    if ours {
                        "it was held by this machine's state file"
                    } else {
                        "it was free"
                    }
                );
                return Ok(Some((l, ours, None)));
            }
            Err(LeaseError::Held { body, .. }) => {
                info!(
                    "replica {}: the lease is held by {} (TTL {:.1} s): standby, following \
                     the bucket",
                    replica.url,
                    body.holder,
                    body.ttl().as_secs_f64()
                );
                metrics.role(Role::Standby);
                reconcile(rt, replica, persister, Goal::Follow, false)?;
                let mut s = Standby {
                    rt,
                    replica,
                    holder,
                    ttl,
                    persister,
                    metrics,
                    notifier: Notifier::from_env(),
                    observer: Observer::default(),
                    holder_ttl: body.ttl(),
                    applied: None,
                    behind_since: None,
                    last_list: None,
                    last_status: Instant::now(),
                    last_warn: None,
                    failed_points: 0,
                    repaired: None,
                    downloaded: 0,
                    stop,
                };
                return Ok(s.run()?.map(|(l, floor)| (l, false, Some(floor))));
            }
            Err(LeaseError::Store(e)) => {
                metrics.replica_error();
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    warn!(
                        "replica {}: cannot read the lease ({e}); retrying (the client is not \
                         started while the lease is unknown)",
                        replica.url
                    );
                    last_warn = Some(Instant::now());
                }
                stop.sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(Failure::new(
                    Code::DataErr,
                    format!("replica {}: {e}", replica.url),
                ))
            }
        }
    }
}

/// A standby's loop state.
struct Standby<'a> {
    rt: &'a tokio::runtime::Runtime,
    replica: &'a Replica,
    holder: &'a Holder,
    /// This host's TTL (for its own lease once it takes over).
    ttl: Duration,
    persister: &'a Persister,
    metrics: &'a Metrics,
    notifier: Notifier,
    observer: Observer,
    /// The TTL of the lease last read (how often it is read: TTL/20, at most 500 ms).
    holder_ttl: Duration,
    /// The bucket's point the local state holds (`None`: not fetched by this run yet).
    applied: Option<PointId>,
    /// Since when a point in the bucket is not applied (the lag); `None`: caught up.
    behind_since: Option<Instant>,
    last_list: Option<Instant>,
    last_status: Instant,
    last_warn: Option<Instant>,
    /// Points that could not be applied (a download or a check failed).
    failed_points: u64,
    /// The newest point for which a base was downloaded again and still did not get past a
    /// bad object: the local chain is not repaired again for it (`None`: repair allowed).
    repaired: Option<PointId>,
    /// Bytes downloaded while following (in the status line).
    downloaded: u64,
    /// Checked before every step: after a stop request the lease is never taken.
    stop: &'a Stop,
}

impl Standby<'_> {
    /// Follows until the lease is taken (`None`: a stop was requested first): the lease and
    /// the bucket's newest generation.
    fn run(&mut self) -> Result<Option<(Lease, u64)>, Failure> {
        loop {
            if self.stop.requested() {
                return Ok(None);
            }
            if let Some(taken) = self.watch_lease()? {
                return Ok(Some(taken));
            }
            if self.last_list.is_none_or(|t| t.elapsed() >= LIST_EVERY) {
                self.last_list = Some(Instant::now());
                self.follow();
            }
            if self.last_status.elapsed() >= STATUS_EVERY {
                self.last_status = Instant::now();
                let line = self.status();
                info!("{line}");
                self.notifier.status(&line);
            }
            self.stop.sleep(
                Timing {
                    ttl: self.holder_ttl,
                }
                .poll_every(),
            );
        }
    }

    /// `standby, N s behind` (what the status line and the periodic log say).
    fn status(&self) -> String {
        let behind = self.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        match self.applied {
            Some(p) => format!(
                "standby, {behind:.0} s behind (at {p} of {}; {:.1} MiB downloaded)",
                self.replica.url,
                self.downloaded as f64 / f64::from(1u32 << 20)
            ),
            None => format!(
                "standby, {behind:.0} s behind (no point of {} applied yet)",
                self.replica.url
            ),
        }
    }

    /// Reads the lease once; takes it over when the observer says so.
    fn watch_lease(&mut self) -> Result<Option<(Lease, u64)>, Failure> {
        let reading = match self.rt.block_on(lease::read(self.replica)) {
            Ok(None) => Reading::Absent,
            Ok(Some((body, version))) => {
                self.holder_ttl = body.ttl();
                Reading::Lease(body, version)
            }
            Err(e) => {
                self.failed(&format!("cannot read the lease: {e}"));
                Reading::Failed
            }
        };
        let decided = Instant::now();
        let (taken, why) = match self.observer.observe(decided, reading) {
            Verdict::Wait { .. } | Verdict::Unknown => return Ok(None),
            // Never a takeover after a stop request.
            _ if self.stop.requested() => return Ok(None),
            Verdict::Absent => (
                self.rt.block_on(Lease::take(
                    self.replica,
                    self.holder.clone(),
                    self.ttl,
                    false,
                )),
                "the lease object was gone".to_owned(),
            ),
            Verdict::TakeOver { seen, released } => (
                self.rt.block_on(Lease::take_over(
                    self.replica,
                    self.holder.clone(),
                    self.ttl,
                    seen,
                )),
                if released {
                    "the primary released the lease".to_owned()
                } else {
                    format!(
                        "the lease was unchanged for its TTL of {:.1} s (the primary stopped \
                         renewing)",
                        self.holder_ttl.as_secs_f64()
                    )
                },
            ),
        };
        match taken {
            Ok(l) => self.settle(l, decided, &why),
            Err(LeaseError::Held { body, .. }) => {
                info!(
                    "replica {}: another host took the lease first ({}); still standby",
                    self.replica.url, body.holder
                );
                self.observer.reset();
                Ok(None)
            }
            Err(e) => {
                self.failed(&format!("cannot take the lease over: {e}"));
                self.observer.reset();
                Ok(None)
            }
        }
    }

    /// After a takeover the store accepted (`decided`: when the observer said so): brings
    /// the local state to the bucket's newest point ([`reconcile`] for [`Goal::Lead`])
    /// *while* a lease request's timeout elapses (a racing conditional write sent at the same
    /// moment has been answered by then), and only after both reads the lease back. Another
    /// host's body there: the store let two conditional writes through (not atomic), and
    /// this host stays a standby — its caught-up state is a point of the bucket, which a
    /// standby may hold. Nothing is started or uploaded before the read-back (the lease
    /// thread, the uploader and the client all start after this returns). A mitigation, not
    /// a proof: the store's atomic conditional write is what keeps takeovers exclusive
    /// (docs/DESIGN.md §12, assumptions). Returns the lease and the bucket's newest
    /// generation (every new base goes above it).
    fn settle(
        &mut self,
        lease: Lease,
        decided: Instant,
        why: &str,
    ) -> Result<Option<(Lease, u64)>, Failure> {
        let answered = Instant::now();
        info!(
            ms = ms(answered - decided),
            "takeover phase: the lease write was answered {:.0} ms after the decision",
            ms(answered - decided)
        );
        if self.stop.requested() {
            // The caller releases the lease at once (the generation floor is not used then).
            return Ok(Some((lease, 0)));
        }
        let floor = match reconcile(self.rt, self.replica, self.persister, Goal::Lead, false) {
            Ok(f) => f,
            Err(e) => {
                // Let another standby take over at once rather than after the TTL.
                let _ = self.rt.block_on(lease.release(self.replica));
                return Err(e);
            }
        };
        info!(
            ms = ms(decided.elapsed()),
            "takeover phase: caught up {:.0} ms after the decision",
            ms(decided.elapsed())
        );
        let wait = Timing { ttl: self.ttl }.request_timeout();
        // A stop requested during the wait ends it: the caller releases the lease (a release
        // conditional on this host's write, refused if another host's write won).
        if self.stop.sleep(wait.saturating_sub(answered.elapsed())) {
            return Ok(Some((lease, floor)));
        }
        let confirmed = self.read_back();
        info!(
            ms = ms(decided.elapsed()),
            "takeover phase: the lease was read back {:.0} ms after the decision",
            ms(decided.elapsed())
        );
        if !confirmed {
            self.observer.reset();
            // The caught-up state is a bucket point; the next listing verifies it again.
            self.applied = None;
            return Ok(None);
        }
        info!(
            "replica {}: took over the lease: {why}; becoming the primary",
            self.replica.url
        );
        self.metrics.standby_behind_since(None);
        Ok(Some((lease, floor)))
    }

    /// Reads the lease back after a takeover: `false` if another host's body is there.
    fn read_back(&mut self) -> bool {
        match self.rt.block_on(lease::read(self.replica)) {
            Ok(Some((b, _))) if !self.holder.same_run(&b.holder) => {
                self.metrics.replica_error();
                warn!(
                    "replica {}: the store accepted this host's takeover, but the lease now \
                     names {}: the store let two conditional writes through (not atomic?); \
                     still standby",
                    self.replica.url, b.holder
                );
                false
            }
            _ => true,
        }
    }

    /// Lists the bucket; brings the local chain to its newest point if it is not the one
    /// applied ([`follow::advance`]: only the new deltas of the generation held, or a new
    /// generation's base once, everything verified before it is applied).
    fn follow(&mut self) {
        let listing = match self.rt.block_on(Listing::load(self.replica)) {
            Ok(l) => l,
            Err(e) => return self.failed(&format!("cannot list the bucket: {e}")),
        };
        let Some(newest) = listing.newest_point() else {
            return;
        };
        if self.applied == Some(newest) {
            self.set_behind(None);
            return;
        }
        let since = *self.behind_since.get_or_insert_with(Instant::now);
        self.set_behind(Some(since));
        let repair = self.repaired != Some(newest);
        match follow::advance(self.rt, self.replica, self.persister, newest, repair) {
            Ok(a) => {
                if self.applied.is_none() {
                    info!("replica {}: standby now at {}", self.replica.url, a.point);
                }
                self.metrics
                    .standby_applied(a.downloaded, self.applied != Some(a.point));
                self.applied = Some(a.point);
                self.downloaded += a.downloaded;
                if a.point >= newest {
                    self.set_behind(None);
                }
                if let Some(bad) = a.refused {
                    if a.base {
                        // A base downloaded again did not get past it either: the object is
                        // at fault; no new base download until the bucket changes.
                        self.repaired = Some(newest);
                    }
                    self.failed_points += 1;
                    self.failed(&format!(
                        "cannot apply {bad}; staying at {} ({} point(s) failed so far)",
                        a.point, self.failed_points
                    ));
                }
            }
            Err(e) => {
                self.failed_points += 1;
                self.failed(&format!(
                    "cannot apply {newest} ({}); staying at {} ({} point(s) failed so far)",
                    e.message,
                    self.applied
                        .map_or("no point".to_owned(), |p| p.to_string()),
                    self.failed_points
                ));
            }
        }
    }

    fn set_behind(&mut self, since: Option<Instant>) {
        self.behind_since = since;
        self.metrics.standby_behind_since(since);
    }

    fn failed(&mut self, what: &str) {
        self.metrics.replica_error();
        if self.last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!("replica {}: standby: {what}", self.replica.url);
            self.last_warn = Some(Instant::now());
        }
    }
}

/// What [`reconcile`] brings the local state to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// A standby: keep nothing the bucket does not hold (moved aside).
    Follow,
    /// A new primary: the bucket's newest point, or the local state if it is that point or
    /// further along the same generation (this host's own commits of an outage).
    Lead,
}

/// Brings the local state in line with the bucket for `goal`; returns the bucket's newest
/// generation (every new base must be above it).
///
/// With [`Goal::Lead`], the local state is kept if it is the bucket's newest point or
/// further along its generation, or — when the lease was this state path's (`ours`: every
/// point in the bucket since is from this state's own history, e.g. after an outage) — a
/// newer generation. Local state whose point the bucket does not hold otherwise (another
/// generation, more deltas than the bucket has of it, a state that cannot be read) is moved
/// aside, never deleted; with [`Goal::Lead`] the bucket's newest point is then fetched (with
/// fallback past a corrupt object: the newest sound point, logged).
///
/// # Errors
///
/// The listing's or the fetch's errors (after a few retries), I/O errors of the move.
pub fn reconcile(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    persister: &Persister,
    goal: Goal,
    ours: bool,
) -> Result<u64, Failure> {
    let started = Instant::now();
    let listing = retry(|| {
        rt.block_on(Listing::load(replica)).map_err(|e| {
            Failure::new(
                Code::TempFail,
                format!("replica {}: cannot list the bucket: {e}", replica.url),
            )
        })
    })?;
    let target = persister.target();
    follow::remove_leftovers(&target);
    let local = follow::local_point(&target);
    let newest = listing.newest_point();
    let keep = match (&local, newest) {
        (None, _) => true,
        (Some(_), None) => goal == Goal::Lead,
        (Some(Ok(l)), Some(n)) => {
            let l = *l;
            let ahead = at_or_past(l, n, ours);
            let contained = listing
                .generations
                .get(&l.generation)
                .is_some_and(|g| g.base.is_some() && g.contiguous() >= l.index);
            (goal == Goal::Lead && ahead) || contained
        }
        (Some(Err(_)), Some(_)) => false,
    };
    if !keep {
        let what = match local {
            Some(Ok(p)) => format!("its {p}"),
            Some(Err(e)) => format!("a state that cannot be read ({e})"),
            None => String::new(),
        };
        let aside = move_aside(persister)?;
        warn!(
            "the local state {} holds {what}, which replica {} does not hold (a former \
             primary's commits after a takeover, or another history): moved to {} (never \
             deleted; restore from it by hand if those commits matter)",
            target.display(),
            replica.url,
            aside.display()
        );
    }
    let listed = started.elapsed();
    if goal == Goal::Lead {
        let current = follow::local_point(&target).and_then(Result::ok);
        let at_newest = match (current, newest) {
            (Some(c), Some(n)) => at_or_past(c, n, ours),
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if let (false, Some(n)) = (at_newest, newest) {
            let (point, unix_time_ns) = catch_up(rt, replica, persister, n)?;
            info!(
                list_ms = ms(listed),
                ms = ms(started.elapsed()),
                "caught up: {} now holds {} of replica {} (taken {}), in {:.0} ms (listing {:.0} ms)",
                target.display(),
                point,
                replica.url,
                crate::time::rfc3339(unix_time_ns),
                ms(started.elapsed()),
                ms(listed)
            );
        } else if let Some(c) = current {
            let taken = ChainListing::load(&target, &chain::chain_dir(&target))
                .ok()
                .map_or_else(
                    || "?".to_owned(),
                    |l| {
                        let t = l
                            .point_time(c.index as usize)
                            .unwrap_or(l.base.meta.unix_time_ns);
                        crate::time::rfc3339(t)
                    },
                );
            info!(
                "the local state {} holds {c}, at or past the newest point of replica {} \
                 (taken {taken}): starting from it",
                target.display(),
                replica.url
            );
        }
    }
    Ok(listing.newest_generation())
}

/// `true` if a local state at `local` may stand for the bucket's newest point `newest`: the
/// same generation at least as far, or — when the lease was this state path's (`ours`) — a
/// newer generation of this state's own history.
fn at_or_past(local: PointId, newest: PointId, ours: bool) -> bool {
    (local.generation == newest.generation && local.index >= newest.index)
        || (ours && local.generation > newest.generation)
}

/// A new primary's catch-up to the bucket's newest point `to`: the local chain advanced
/// ([`follow::advance`]: only what it lacks); past a corrupt delta, the sound point before it
/// (logged: `--fallback` semantics); past a corrupt base, the whole-point restore with
/// fallback ([`fetch::fetch_into`]: the newest sound older point, logged). Returns the point
/// and its snapshot time (ns since the Unix epoch).
fn catch_up(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    persister: &Persister,
    to: PointId,
) -> Result<(PointId, u64), Failure> {
    let advanced = retry(|| match follow::advance(rt, replica, persister, to, true) {
        // Retried: the store did not answer. Anything else is decided below.
        Err(e) if e.code == Code::IoErr => Err(e),
        r => Ok(r),
    })?;
    match advanced {
        Ok(a) => {
            if let Some(bad) = &a.refused {
                warn!(
                    "replica {}: {bad} skipped; using {}, the sound point before it",
                    replica.url, a.point
                );
            }
            Ok((a.point, a.unix_time_ns))
        }
        Err(e) if e.code == Code::DataErr => {
            warn!("{}; restoring the newest sound point instead", e.message);
            retry(|| fetch::fetch_into(rt, replica, persister, None, true))
                .map(|f| (f.point, f.unix_time_ns))
        }
        Err(e) => Err(e),
    }
}

/// Tries `f` up to 5 times, 500 ms apart, returning its last error.
fn retry<T>(mut f: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
    let mut tries = 0;
    loop {
        match f() {
            Ok(t) => return Ok(t),
            Err(e) if tries >= 4 || e.code == Code::NoInput => return Err(e),
            Err(e) => {
                warn!("{} (retrying)", e.message);
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Moves the state file, its kept generations and its chain directory into a new directory
/// `<state>.diverged.<unix-time>/` beside it (renames on one file system, then the parent
/// directory is synced). Returns the directory.
fn move_aside(persister: &Persister) -> Result<PathBuf, Failure> {
    let target = persister.target();
    let io = |what: &str, e: std::io::Error| {
        Failure::new(
            Code::IoErr,
            format!("cannot move {} aside ({what}): {e}", target.display()),
        )
    };
    let secs = crate::time::now_ns() / 1_000_000_000;
    let mut dir = PathBuf::from(format!("{}.diverged.{secs}", target.display()));
    let mut n = 0;
    while dir.exists() {
        n += 1;
        dir = PathBuf::from(format!("{}.diverged.{secs}-{n}", target.display()));
    }
    std::fs::create_dir(&dir).map_err(|e| io("create the directory", e))?;
    let mut paths: Vec<PathBuf> = persister
        .generations()
        .map_err(|e| io("list the generations", e))?
        .into_iter()
        .map(|g| g.path)
        .collect();
    let chain_dir = chain::chain_dir(&target);
    if chain_dir.exists() {
        paths.push(chain_dir);
    }
    for p in paths {
        let name = p.file_name().unwrap_or_default();
        std::fs::rename(&p, dir.join(name)).map_err(|e| io("rename", e))?;
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the directory", e))?;
    Ok(dir)
}
