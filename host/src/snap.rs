//! Taking snapshots of the live region, and restoring one at start.
//!
//! A [`Snapshotter`] owns everything a snapshot needs (region, mapping, persister, the
//! strategy) and runs on the snapshot worker thread; what one attempt does is the strategy's
//! ([`Strategy::take`]). Nothing is persisted that was not verified: a starved or failed
//! attempt drops its temp file and the previous snapshot stays. A region that fails
//! validation after its client exited is set aside and re-restored ([`repair`]).

mod repair;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::process::Pid;
use shmsnap_linux::chain;
use shmsnap_linux::persist::{Persister, StateError};
use shmsnap_linux::snapshot::{self, SnapshotInfo, SnapshotMeta};
use shmsnap_linux::{Mapping, Memfd};
use tracing::{debug, info, warn};

use shmsnap_core::PAGE_SIZE;

use crate::exit::{io_code, persister_code, snapshot_code, Code, Failure, FinalSnapshot};
use crate::progress;
use crate::strategy::{Cx, Origin, Strategy};

/// What one snapshot attempt did.
#[derive(Debug)]
pub enum Outcome {
    /// A snapshot was persisted.
    Persisted(Report),
    /// Nothing was persisted, for a harmless reason.
    Skipped(String),
    /// Nothing was persisted, for a harmless reason worth one info line (the strategy returns
    /// it once, then [`Outcome::Skipped`] for the same reason).
    Notice(String),
    /// Nothing was persisted because the region is not what the strategy expects.
    Invalid(String),
    /// Entries existed but none survived the copy: the ring is too small for the copy time.
    Starved {
        /// Copy time.
        copy: Duration,
        /// Commits made during the copy.
        commits_during_copy: u64,
        /// Valid entries before the copy.
        pre: u64,
    },
}

/// Which file a persisted snapshot wrote: the point of the chain it added.
///
/// The file is found by name right after the snapshot is persisted, on the worker thread,
/// before the next snapshot can rotate generations: a base is the persister's target
/// (`--state FILE`), a delta is `chain::delta_name(base_generation, index)` in
/// `chain::chain_dir(target)`. Whoever ships points elsewhere (replicas) opens the file then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A full snapshot file (a base of the chain), generation `generation`.
    Base {
        /// The base's generation (its footer's).
        generation: u64,
    },
    /// Delta `index` (1, 2, …) of the base of generation `base_generation`.
    Delta {
        /// The generation of the base the delta extends.
        base_generation: u64,
        /// The delta's position in its chain (1 = right after the base).
        index: u32,
    },
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Base { generation } => write!(f, "base {generation}"),
            Point::Delta {
                base_generation,
                index,
            } => write!(f, "delta {index} of base {base_generation}"),
        }
    }
}

/// The warning for a starved attempt: what happened, what is on disk, how to size the ring.
fn starved_line(why: &str, pre: u64, copy: Duration, commits: u64, on_disk: &str) -> String {
    format!(
        "snapshot starved ({why}): all {pre} entries were overwritten during the {copy_ms:.1} ms \
         copy ({commits} commits happened meanwhile); {on_disk}. Size the ring to hold the \
         commits of one copy: more entries (E > {commits}) and a data ring larger than those \
         commits' payload bytes",
        copy_ms = ms(copy),
    )
}

/// Figures of a persisted snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// What was written: a new base or a delta on the current one.
    pub point: Point,
    /// Generation number.
    pub generation: u64,
    /// Bytes of data extents copied.
    pub bytes: u64,
    /// Entries kept (queue strategy).
    pub kept: u64,
    /// Entries dropped because they changed during the copy.
    pub dropped: u64,
    /// Newest kept seq.
    pub newest_seq: u64,
    /// Phase timings.
    pub copy: Duration,
    /// Validation (post read, retain, footer with CRC).
    pub validate: Duration,
    /// fdatasync of the temp file.
    pub sync: Duration,
    /// Generation shuffle, rename and directory fsync.
    pub rename: Duration,
}

/// The snapshotter's running totals, for the `STATUS=` line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// When the last snapshot was persisted.
    pub last_persisted: Option<Instant>,
    /// Number of starved attempts since start.
    pub starved: u64,
    /// How the latest attempt went, as a requested stop's exit status counts it
    /// ([`crate::exit::requested_stop_status`]); `None` before the first attempt.
    pub last: Option<FinalSnapshot>,
}

/// Takes snapshots of one region into one state file.
#[derive(Debug)]
pub struct Snapshotter {
    persister: Persister,
    strategy: Box<dyn Strategy>,
    memfd: Memfd,
    /// The host's mapping of `memfd`, with the strategy's protection.
    map: Mapping,
    /// Generation of the newest snapshot file on disk; `None` while there is none.
    on_disk: Option<u64>,
    /// The region's length when last looked at (a change is logged: the client grew it).
    region_len: u64,
    /// The reason of the current run of [`Outcome::Invalid`] attempts, and their count.
    invalid: Option<(String, u64)>,
    tally: Tally,
    /// Durability feedback: publishes each persisted snapshot (DESIGN §14).
    status: crate::durable::SharedPublisher,
    /// Replica uploader (`--replica`): offered every persisted point; dropped with the
    /// snapshotter (at the end of the worker thread), which ships what is pending first.
    replica: Option<crate::replica::upload::Shipper>,
    /// The host's metrics, once attached ([`Snapshotter::attach_metrics`]).
    metrics: Option<crate::metrics::Metrics>,
    /// Dead clients' claims cleared before the metrics were attached (at start).
    reclaimed_early: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Snapshotter {
    /// A snapshotter of `memfd` into `persister`: maps the region as the strategy wants and
    /// lets the strategy [`accept`](Strategy::accept) it; the generation count continues the
    /// restored snapshot's.
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the region cannot be mapped.
    pub fn new(
        persister: Persister,
        mut strategy: Box<dyn Strategy>,
        memfd: Memfd,
        origin: Origin<'_>,
    ) -> Result<Self, Failure> {
        let map = Mapping::of_memfd(&memfd, strategy.protection())
            .map_err(|e| Failure::new(Code::OsErr, format!("cannot map the region: {e}")))?;
        // Before the first client: an inherited region's claim is its dead client's (the
        // previous host's client was killed with it; leftovers in the client cgroup were
        // killed at setup); an image carries none, except under the exit strategy.
        let reclaimed_early = u64::from(crate::claim::reclaim(
            &memfd,
            strategy.code(),
            None,
            "at start",
        ));
        strategy.accept(&map, origin);
        let status = std::sync::Arc::new(std::sync::Mutex::new(
            crate::durable::publisher_at_start(&memfd, &map, origin, strategy.status_area()),
        ));
        let on_disk = match origin {
            Origin::Restored(info) => Some(info.meta.generation),
            Origin::Empty => None,
            // Not restored from it, but the next generation continues the file's count.
            Origin::FdStore => snapshot::read_footer_path(&persister.target())
                .ok()
                .map(|i| i.meta.generation),
        };
        let region_len = memfd
            .len()
            .map_err(|e| Failure::new(Code::OsErr, format!("cannot stat the region: {e}")))?;
        Ok(Snapshotter {
            persister,
            strategy,
            memfd,
            map,
            on_disk,
            region_len,
            invalid: None,
            tally: Tally::default(),
            status,
            replica: None,
            metrics: None,
            reclaimed_early,
        })
    }

    /// Counts from now on in `metrics` what the snapshotter and its strategy count
    /// themselves (claims of dead clients cleared, refused triple state words).
    pub fn attach_metrics(&mut self, metrics: &crate::metrics::Metrics) {
        for _ in 0..std::mem::take(&mut self.reclaimed_early) {
            metrics.claim_reclaimed();
        }
        self.strategy.attach_metrics(metrics);
        self.metrics = Some(metrics.clone());
    }

    /// After the final snapshot of a client that exited, before its restart: clears the
    /// claim it left on the region ([`crate::claim::reclaim`]). Its process tree is dead (it
    /// was reaped, its descendants killed), so the claim can only be stale.
    pub fn reclaim_claim(&self) {
        crate::claim::reclaim(
            &self.memfd,
            self.strategy.code(),
            self.metrics.as_ref(),
            "after the client exited",
        );
    }

    /// The status publisher, shared with the replica uploader.
    pub fn status(&self) -> crate::durable::SharedPublisher {
        self.status.clone()
    }

    /// Ships every persisted point to a replica from now on; offers the snapshot the region
    /// was restored from (generation `restored`) first, so that a bucket missing it gets it
    /// even if the client never commits again (one already there is not replaced).
    pub fn attach_replica(
        &mut self,
        shipper: crate::replica::upload::Shipper,
        restored: Option<u64>,
    ) {
        if let Some(generation) = restored {
            let seq = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .map_or(0, |p| p.last().seq);
            shipper.offer(Point::Base { generation }, &self.target(), seq);
        }
        self.replica = Some(shipper);
    }

    /// The state file.
    pub fn target(&self) -> PathBuf {
        self.persister.target()
    }

    /// The region's file.
    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    /// The running totals.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// Takes one snapshot according to the strategy. `client_alive` tells whether the client
    /// may still be writing, `client` which process it is (when running).
    ///
    /// # Errors
    ///
    /// I/O errors of the copy or the persist (the previous snapshot stays in place).
    pub fn take(&mut self, client_alive: bool, client: Option<Pid>) -> io::Result<Outcome> {
        if let Some(skip) = self.fit_region(client_alive)? {
            return Ok(skip);
        }
        if self.strategy.unchanged(&self.map) {
            return Ok(Outcome::Skipped(
                "nothing was committed since the last snapshot".into(),
            ));
        }
        let meta = SnapshotMeta {
            strategy: self.strategy.code().code(),
            generation: next_generation(self.on_disk),
            unix_time_ns: now_ns(),
        };
        let cx = Cx {
            memfd: &self.memfd,
            map: &self.map,
            persister: &self.persister,
            meta,
            client_alive,
            client,
        };
        let outcome = self.strategy.take(cx)?;
        match &outcome {
            Outcome::Persisted(r) => {
                // Only now: a strategy returns `Persisted` after its commit returned.
                crate::durable::published(&self.status, r);
                if let Some(shipper) = &self.replica {
                    // Now, before the next snapshot can rotate the file away.
                    shipper.offer(r.point, &self.persister.target(), r.newest_seq);
                }
                self.on_disk = Some(r.generation);
                self.tally.last_persisted = Some(Instant::now());
            }
            Outcome::Starved { .. } => self.tally.starved += 1,
            Outcome::Skipped(_) | Outcome::Notice(_) | Outcome::Invalid(_) => {}
        }
        Ok(outcome)
    }

    /// Logs a change of the region's length (a client may grow its memfd), and pads a length
    /// that is not whole pages (`echo hello >> /proc/self/fd/3`) with zeros up to the next
    /// page: a snapshot must have a length that restores. Growing is allowed under the
    /// shrink seal; it is done only once the client has exited (a running client may be
    /// resizing the file itself), else the attempt is skipped.
    fn fit_region(&mut self, client_alive: bool) -> io::Result<Option<Outcome>> {
        let len = self.memfd.len()?;
        if len != self.region_len {
            info!(
                "the client grew the region from {} to {len} bytes",
                self.region_len
            );
            self.region_len = len;
        }
        if len % PAGE_SIZE == 0 {
            return Ok(None);
        }
        if client_alive {
            return Ok(Some(Outcome::Skipped(format!(
                "the region is {len} bytes, not whole pages; it is padded when the client exits"
            ))));
        }
        let padded = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        self.memfd.grow(padded)?;
        info!(
            "the region is {len} bytes, not a whole number of pages: grew it with zeros to \
             {padded} bytes so that its snapshot restores"
        );
        self.region_len = padded;
        Ok(None)
    }

    /// What the state file holds, for messages.
    fn on_disk_text(&self) -> String {
        match self.on_disk {
            None => format!("no snapshot persisted yet to {}", self.target().display()),
            Some(g) => format!(
                "previous snapshot generation {g} kept at {}",
                self.target().display()
            ),
        }
    }

    /// Takes a snapshot and logs what happened (the host's one call site for logging).
    /// A region the strategy rejects after the client exited is set aside and replaced by
    /// the newest sound snapshot ([`repair`]) before the client restarts.
    /// Returns the result for the metrics.
    pub fn take_and_log(
        &mut self,
        client_alive: bool,
        client: Option<Pid>,
        why: &str,
    ) -> io::Result<Outcome> {
        let result = self.take(client_alive, client);
        self.tally.last = Some(saved(&result));
        let corrupt = !client_alive && matches!(result, Ok(Outcome::Invalid(_)));
        self.log(&result, why);
        if corrupt {
            let meta = SnapshotMeta {
                strategy: self.strategy.code().code(),
                generation: 0,
                unix_time_ns: now_ns(),
            };
            if let Some(info) = repair::repair(&self.persister, &self.memfd, meta) {
                self.strategy.accept(&self.map, Origin::Restored(&info));
            } else {
                self.strategy.accept(&self.map, Origin::Empty);
            }
            self.region_len = self.memfd.len().unwrap_or(self.region_len);
        }
        result
    }

    /// Logs a run of [`Outcome::Invalid`] attempts: at the first, when the reason changes,
    /// and at 10, 100, 1000, ... in a row, with the count (not at every interval).
    fn log_invalid(&mut self, reason: String, why: &str) {
        let n = match &mut self.invalid {
            Some((r, n)) if *r == reason => {
                *n += 1;
                *n
            }
            _ => {
                self.invalid = Some((reason.clone(), 1));
                1
            }
        };
        let disk = self.on_disk_text();
        if n == 1 {
            warn!("{reason}; snapshot skipped ({why}); {disk}");
        } else if n.checked_ilog10().is_some_and(|l| 10u64.pow(l) == n) {
            warn!("{reason}: still, {n} attempts in a row; {disk}");
        } else {
            debug!("{reason}; snapshot skipped ({why}), {n} attempts in a row");
        }
    }

    fn log(&mut self, result: &io::Result<Outcome>, why: &str) {
        if let Ok(Outcome::Invalid(reason)) = result {
            return self.log_invalid(reason.clone(), why);
        }
        if let Some((_, n)) = self.invalid.take() {
            info!("the region is valid again after {n} invalid snapshot attempt(s)");
        }
        match result {
            Ok(Outcome::Persisted(r)) => info!(
                point = %r.point,
                generation = r.generation,
                bytes = r.bytes,
                kept = r.kept,
                dropped = r.dropped,
                newest_seq = r.newest_seq,
                copy_ms = ms(r.copy),
                validate_ms = ms(r.validate),
                sync_ms = ms(r.sync),
                rename_ms = ms(r.rename),
                "snapshot persisted ({why}) to {}",
                self.target().display()
            ),
            Ok(Outcome::Skipped(reason)) => debug!("snapshot skipped ({why}): {reason}"),
            Ok(Outcome::Notice(reason)) => info!("snapshot skipped ({why}): {reason}"),
            Ok(Outcome::Invalid(_)) => {}
            Ok(Outcome::Starved {
                copy,
                commits_during_copy,
                pre,
            }) => warn!(
                starved_total = self.tally.starved,
                "{}",
                starved_line(why, *pre, *copy, *commits_during_copy, &self.on_disk_text())
            ),
            Err(e) => warn!(
                "snapshot of {} failed ({why}): {e}; {}",
                self.target().display(),
                self.on_disk_text()
            ),
        }
    }
}

/// At the host's exit (the worker thread drops the snapshotter last): says so if nothing
/// was persisted during this run, and what the state file then holds.
impl Drop for Snapshotter {
    fn drop(&mut self) {
        if self.tally.last_persisted.is_some() {
            return;
        }
        match self.on_disk {
            None => warn!(
                "no snapshot was ever persisted to {}: nothing of this run is on disk",
                self.target().display()
            ),
            Some(g) => info!(
                "no snapshot was persisted during this run; {} holds generation {g} from before",
                self.target().display()
            ),
        }
    }
}

/// The generation after `on_disk`: saturates at `u64::MAX` (a hostile or absurd footer must
/// not wrap the count to 0, nor panic in a debug build and lose the snapshot).
fn next_generation(on_disk: Option<u64>) -> u64 {
    on_disk.map_or(1, |g| g.saturating_add(1))
}

/// Whether an attempt left the region's state safe on disk.
///
/// A region that is not what the strategy expects ([`Outcome::Invalid`], e.g. a queue header
/// that is invalid) counts as failed: whatever the client held there was not saved, and the
/// file on disk (if any) is older — an operator must hear about it, also after a stop.
/// Likewise a starved attempt: entries existed and none were persisted.
fn saved(result: &io::Result<Outcome>) -> FinalSnapshot {
    match result {
        Ok(Outcome::Persisted(_)) => FinalSnapshot::Persisted,
        Ok(Outcome::Skipped(_) | Outcome::Notice(_)) => FinalSnapshot::NothingToPersist,
        Ok(Outcome::Invalid(_) | Outcome::Starved { .. }) | Err(_) => FinalSnapshot::Failed,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The region the host runs with, and where it came from.
#[derive(Debug)]
pub struct Prepared {
    /// The memfd.
    pub memfd: Memfd,
    /// The snapshot restored into it, if any.
    pub restored: Option<SnapshotInfo>,
}

/// Takes the state file's lock, checks that its directory exists and is writable, and (under
/// the lock) removes temp files a crashed earlier run left behind.
///
/// # Errors
///
/// [`Code::TempFail`] if another host holds the lock, [`Code::Usage`] for a `keep` beyond the
/// maximum, [`Code::CantCreat`] otherwise ([`persister_code`]); the message names the file.
pub fn open_persister(state: &Path, keep: usize) -> Result<Persister, Failure> {
    let dir_msg = |e: &io::Error| {
        let dir = state
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Failure::new(
            Code::CantCreat,
            format!(
                "cannot use state directory {} for {}: {e}",
                dir.display(),
                state.display()
            ),
        )
    };
    let persister = Persister::new(state, keep).map_err(|e| match persister_code(&e) {
        // The lock, --keep and the file type have messages of their own, naming the file.
        code @ (Code::TempFail | Code::Usage) => Failure::new(code, e.to_string()),
        _ if StateError::of(&e).is_some() => Failure::new(Code::CantCreat, e.to_string()),
        _ => dir_msg(&e),
    })?;
    // Probe writability now rather than at the first snapshot.
    drop(persister.begin().map_err(|e| dir_msg(&e))?);
    match persister.remove_stale_temps() {
        Ok(0) => {}
        Ok(n) => info!("removed {n} temp file(s) left by an interrupted snapshot"),
        Err(e) => warn!("could not remove stale temp files: {e}"),
    }
    Ok(persister)
}

/// Creates the region and restores the newest sound snapshot into it.
///
/// With `fallback`, an unusable newest file is renamed aside (never deleted) and the newest
/// sound older generation is restored; without it, the error stops the host and every file
/// is left untouched.
///
/// # Errors
///
/// A [`Failure`] naming the file and the problem.
pub fn prepare_region(
    persister: &Persister,
    size: Option<u64>,
    fallback: bool,
) -> Result<Prepared, Failure> {
    let target = persister.target();
    let Choice { chosen, newest_bad } = choose(persister, fallback)?;
    let size = region_size(size, chosen.as_ref())?;
    let memfd = Memfd::create("shmsnap-region", size).map_err(|e| {
        Failure::new(
            Code::OsErr,
            format!("cannot create a {size}-byte memfd: {e}"),
        )
    })?;
    memfd
        .seal_against_shrink()
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot seal the memfd: {e}")))?;
    let Some((path, info)) = chosen else {
        if let Some((bad, _)) = newest_bad {
            return Err(Failure::new(
                Code::DataErr,
                format!("no sound snapshot generation to fall back to ({} is unusable); nothing was changed", bad.display()),
            ));
        }
        info!(
            "no snapshot at {}; starting with an empty {size}-byte region",
            target.display()
        );
        return Ok(Prepared {
            memfd,
            restored: None,
        });
    };
    if let Some((bad, e)) = &newest_bad {
        set_aside(bad, e, &path)?;
    }
    restore(&path, &info, &memfd, size)?;
    Ok(Prepared {
        memfd,
        restored: Some(info),
    })
}

/// The snapshot to restore, and the newest generation if it is unusable.
struct Choice {
    chosen: Option<(PathBuf, SnapshotInfo)>,
    newest_bad: Option<(PathBuf, snapshot::SnapshotError)>,
}

/// Picks the newest snapshot (or, with `fallback`, the newest sound generation).
fn choose(persister: &Persister, fallback: bool) -> Result<Choice, Failure> {
    let generations = persister.generations().map_err(|e| {
        Failure::new(
            io_code(&e),
            format!(
                "cannot list snapshots of {}: {e}",
                persister.target().display()
            ),
        )
    })?;
    let mut newest_bad = None;
    for g in &generations {
        // Without --fallback only the newest file counts, and its footer is enough to size
        // the region: `restore_into` verifies the whole file before copying anything.
        // With --fallback, each candidate is verified completely to choose the newest sound one.
        let checked = if fallback {
            snapshot::verify_path(&g.path)
        } else {
            snapshot::read_footer_path(&g.path)
        };
        match checked {
            Ok(info) => {
                return Ok(Choice {
                    chosen: Some((g.path.clone(), info)),
                    newest_bad,
                })
            }
            Err(e) => {
                if g.index == 0 && !fallback {
                    return Err(unusable(&g.path, &e));
                }
                warn!("{}: unusable snapshot: {e}", g.path.display());
                if g.index == 0 {
                    newest_bad = Some((g.path.clone(), e));
                }
            }
        }
        if !fallback {
            break;
        }
    }
    Ok(Choice {
        chosen: None,
        newest_bad,
    })
}

/// The region's size: `--size` is a minimum, a larger snapshot is restored at its own size
/// (a client may have grown its region); without `--size`, the snapshot's size or
/// [`DEFAULT_SIZE`]. The choice is logged when a snapshot overrides `--size`.
fn region_size(
    size: Option<u64>,
    chosen: Option<&(PathBuf, SnapshotInfo)>,
) -> Result<u64, Failure> {
    let size = match (size, chosen) {
        (Some(s), Some((path, info))) if s < info.image_len => {
            info!(
                "{} is {} bytes, larger than --size {s}: the region is {} bytes",
                path.display(),
                info.image_len,
                info.image_len
            );
            info.image_len
        }
        (Some(s), _) => s,
        (None, Some((_, info))) => info.image_len,
        (None, None) => DEFAULT_SIZE,
    };
    // A footer's image length is checked by `read_footer` (a nonzero multiple of 8), and
    // `--size` by the command line; this guards the invariant, not user input.
    if size == 0 {
        return Err(Failure::new(Code::Software, "region size 0"));
    }
    Ok(size)
}

/// Renames the unusable newest snapshot `bad` aside (never deletes it).
fn set_aside(bad: &Path, e: &snapshot::SnapshotError, instead: &Path) -> Result<(), Failure> {
    let aside = bad.with_extension(format!(
        "{}corrupt-{}",
        bad.extension()
            .map_or(String::new(), |x| format!("{}.", x.to_string_lossy())),
        now_ns() / 1_000_000_000
    ));
    std::fs::rename(bad, &aside).map_err(|re| {
        Failure::new(
            io_code(&re),
            format!("cannot move unusable {} aside: {re}", bad.display()),
        )
    })?;
    warn!(
        "{} is unusable ({e}); renamed it to {} and restoring {} instead",
        bad.display(),
        aside.display(),
        instead.display()
    );
    Ok(())
}

/// Restores the chain of base `path` into `memfd` ([`chain::restore_chain`]): the base, then
/// every complete, correctly chained delta of its generation in the chain directory, every CRC
/// checked while copying (the memfd is private until the client starts: a mismatch drops
/// nothing that matters). A torn or corrupt delta ends the chain there and is named in a
/// warning; the deltas after it are not applied. The base was read once to size the region:
/// if it changed since, the restore is refused as a data problem rather than trusted.
fn restore(path: &Path, info: &SnapshotInfo, memfd: &Memfd, size: u64) -> Result<(), Failure> {
    let t = Instant::now();
    let cannot = |e: &chain::ChainError| {
        Failure::new(
            chain_code(e),
            format!("cannot restore {}: {e}", path.display()),
        )
    };
    // Opened without blocking, regular files only (a FIFO planted at the path never blocks);
    // here only for the progress bar: the chain restore opens its files the same way.
    let file = snapshot::open(path).map_err(|e| cannot(&e.into()))?;
    let label = format!("restoring {}", path.display());
    let dir = chain::chain_dir(path);
    let report = progress::reading_file(&file, 1, &label, || {
        chain::restore_chain(path, &dir, memfd, chain::At::Latest)
    })
    .map_err(|e| cannot(&e))?;
    let base = &report.listing.base;
    if base.image_len != info.image_len || base.meta != info.meta {
        return Err(Failure::new(
            Code::DataErr,
            format!(
                "{} changed while it was being restored (image {} bytes, then {}); is another \
                 process writing it? Nothing was started",
                path.display(),
                info.image_len,
                base.image_len
            ),
        ));
    }
    let applied = report.listing.deltas.len();
    if let Some(stop) = &report.listing.stop {
        warn!(
            "the chain of {} ends early: {stop}; restored the base and the {applied} delta(s) \
             before it, {} later delta file(s) not applied",
            path.display(),
            report.listing.ignored.len()
        );
    }
    info!(
        base_generation = info.meta.generation,
        deltas = applied,
        image_bytes = info.image_len,
        data_bytes = report.bytes,
        ms = ms(t.elapsed()),
        "restored {} (base generation {}) plus {applied} delta(s) into a {size}-byte region \
         ({} bytes of data copied; holes skipped)",
        path.display(),
        info.meta.generation,
        report.bytes
    );
    Ok(())
}

/// The exit code for a chain restore error.
fn chain_code(e: &chain::ChainError) -> Code {
    match e.kind() {
        chain::ChainErrorKind::Base(b) => snapshot_code(b),
        chain::ChainErrorKind::Io(e) => io_code(e),
        chain::ChainErrorKind::RegionTooSmall { .. } => Code::Config,
        _ => Code::DataErr,
    }
}

/// The error for an unusable newest snapshot without `--fallback`: nothing was changed.
fn unusable(path: &Path, e: &snapshot::SnapshotError) -> Failure {
    Failure::new(
        snapshot_code(e),
        format!(
            "cannot restore {}: {e}. Nothing was changed; move the file away to start empty, \
             or pass --fallback to restore an older generation",
            path.display()
        ),
    )
}

/// Region size when neither `--size` nor a snapshot says otherwise.
pub const DEFAULT_SIZE: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_core::{LayoutRequest, Writer};
    use shmsnap_linux::Protection;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The starved warning once printed "during the p ms copy" (a positional `{:.1}` took the
    /// on-disk text); every figure must land in its place.
    #[test]
    fn the_starved_warning_puts_each_figure_in_its_place() {
        let line = starved_line(
            "interval",
            64,
            Duration::from_micros(21_190),
            98,
            "previous snapshot generation 3",
        );
        assert!(line.contains("all 64 entries"), "{line}");
        assert!(line.contains("during the 21.2 ms copy"), "{line}");
        assert!(line.contains("(98 commits happened meanwhile)"), "{line}");
        assert!(line.contains("; previous snapshot generation 3."), "{line}");
        assert!(line.contains("E > 98"), "{line}");
    }

    /// A ring of 2 entries overrun during a 48 MiB copy: the attempt is counted as starved and
    /// persists nothing (the e2e tests cannot reach this: the client chooses the layout).
    #[test]
    fn an_overrun_ring_is_counted_as_starved_and_nothing_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let persister = open_persister(&state, 1).unwrap();
        let memfd = Memfd::create("starve", 64 << 20).unwrap();
        memfd.seal_against_shrink().unwrap();
        let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        let request = LayoutRequest {
            entries: 2,
            data_size: 64,
        };
        let mut w =
            Writer::open_or_init(rw.words(), request, crate::examples::TEST_CLIENT).unwrap();
        w.commit(&1u64.to_le_bytes()).unwrap();
        // Non-zero data for the sparse copy to spend time on.
        let junk = vec![0xa5u8; 1 << 20];
        for i in 16..64u64 {
            rustix::io::pwrite(&memfd, &junk, i << 20).unwrap();
        }
        let mut snap = Snapshotter::new(
            persister,
            crate::strategy::from_arg(crate::cli::StrategyArg::Queue),
            Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(&memfd, 0).unwrap()).unwrap(),
            // Not marked as persisted: the first attempt copies at once.
            Origin::FdStore,
        )
        .unwrap();
        let stop = AtomicBool::new(false);
        let mut outcomes = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut n = 2u64;
                while !stop.load(Ordering::Relaxed) {
                    w.commit(&n.to_le_bytes()).unwrap();
                    n += 1;
                }
            });
            for _ in 0..20 {
                let before = std::fs::read(&state).ok();
                let o = snap.take(true, None).unwrap();
                if matches!(o, Outcome::Starved { .. }) {
                    assert_eq!(
                        std::fs::read(&state).ok(),
                        before,
                        "a starved attempt persisted"
                    );
                }
                outcomes.push(o);
                if snap.tally().starved >= 3 {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(snap.tally().starved >= 1, "never starved: {outcomes:?}");
        assert_eq!(
            snap.tally().starved,
            outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Starved { .. }))
                .count() as u64
        );
        // No temp file left behind by the dropped attempts.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.starts_with("s.snap")), "{names:?}");
    }
}
