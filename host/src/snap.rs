//! Taking snapshots of the live region (the start-up restore is [`crate::startup`]).
//!
//! A [`Snapshotter`] owns everything a snapshot needs (region, mapping, persister, the
//! strategy) and runs on the snapshot worker thread; what one attempt does is the strategy's
//! ([`Strategy::take`]). Nothing is persisted that was not verified: a starved or failed
//! attempt drops its temp file and the previous snapshot stays. A region that fails
//! validation after its client exited is set aside and re-restored ([`repair`]).
//!
//! A region its client sealed against other writers (write tracking, DESIGN §11) cannot be
//! mapped writable by the next client: after the client's exit the snapshotter moves it into
//! a fresh memfd ([`Snapshotter::rehome_if_sealed`]; a repair restores into a fresh one) and
//! hands the new region to the supervisor ([`Snapshotter::take_new_region`]), which passes it
//! to the next client and the service manager's fd store.

mod repair;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Pid;
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::SnapshotMeta;
use shmsnap_linux::{Mapping, Memfd};
use tracing::{debug, error, info, warn};

use shmsnap_core::PAGE_SIZE;

use crate::exit::{Code, Failure, FinalSnapshot};
use crate::flow::{Origin, Outcome, Sink};
use crate::startup::{fresh_region, newest, REGION_NAME};
use crate::strategy::{Cx, Strategy};
use crate::time::{ms, now_ns};

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
    /// Told about every persisted snapshot, in order: the status area, then any attached
    /// ([`Snapshotter::attach_sink`]; the replica uploader, dropped with the snapshotter at the
    /// end of the worker thread, ships what is pending first).
    sinks: Vec<Box<dyn Sink>>,
    /// `memfd` replaced the region the supervisor hands to clients and to the fd store
    /// (moved out of a sealed one, or repaired into a fresh one); cleared by
    /// [`Snapshotter::take_new_region`].
    replaced: bool,
    /// The host's metrics, once attached ([`Snapshotter::attach_metrics`]).
    metrics: Option<crate::metrics::Metrics>,
    /// Dead clients' claims cleared before the metrics were attached (at start).
    reclaimed_early: u64,
}

impl Snapshotter {
    /// A snapshotter of `memfd` into `persister`: maps the region as the strategy wants and
    /// lets the strategy [`accept`](Strategy::accept) it; the generation count continues
    /// above every generation the state holds ([`generation_floor`]).
    ///
    /// # Errors
    ///
    /// [`Code::OsErr`] if the region cannot be mapped; [`Code::DataErr`] if the state holds
    /// generation `u64::MAX` (no new base could ever be written); [`Code::IoErr`] if the
    /// state's directories cannot be listed.
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
            strategy.kind(),
            None,
            "at start",
        ));
        strategy.accept(&map, origin);
        let status = std::sync::Arc::new(std::sync::Mutex::new(
            crate::durable::publisher_at_start(&memfd, &map, origin, strategy.status_area()),
        ));
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(crate::durable::StatusSink(status.clone()))];
        let on_disk = generation_floor(&persister, origin)?;
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
            sinks,
            replaced: false,
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
            self.strategy.kind(),
            self.metrics.as_ref(),
            "after the client exited",
        );
    }

    /// The status publisher, shared with the replica uploader.
    pub fn status(&self) -> crate::durable::SharedPublisher {
        self.status.clone()
    }

    /// The newest seq published in the status area (0 without one): what the region was
    /// restored with, before the first snapshot.
    pub fn published_seq(&self) -> u64 {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |p| p.last().seq)
    }

    /// Tells `sink` about every persisted snapshot from now on (after the status area and
    /// the sinks attached before).
    pub fn attach_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
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

    /// Every new base from now on gets a generation above `floor` too (a new primary: above
    /// every generation in the bucket, so that its history never mixes with the old one's).
    pub fn raise_generation_floor(&mut self, floor: u64) {
        self.on_disk = self.on_disk.max(Some(floor));
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
        let generation = next_generation(self.on_disk).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                generations_exhausted(&self.target()),
            )
        })?;
        let meta = SnapshotMeta {
            strategy: self.strategy.kind().code(),
            generation,
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
        let outcome = self.strategy.take(cx);
        if let Some(notice) = self.persister.no_replace().take_notice() {
            // Once per run: the first rename that needed the fallback (DESIGN §7).
            warn!("{notice}");
        }
        if let Ok(Outcome::Persisted(r)) = &outcome {
            // Only now: a strategy returns `Persisted` after its commit reached the durable
            // point (`TempFile::commit_durable`); and now, before the next snapshot can rotate
            // the file away.
            let t = Instant::now();
            let target = self.persister.target();
            for sink in &self.sinks {
                sink.persisted(r, &target);
            }
            debug!(
                sinks_us = t.elapsed().as_micros(),
                "persisted snapshot published"
            );
            self.on_disk = Some(r.generation);
            self.tally.last_persisted = Some(Instant::now());
        }
        // After the publish: the generation that left the `--keep` set is unlinked only now,
        // off the acknowledgement's path (issue 27). Whatever the outcome — a strategy that
        // failed after its commit leaves it pending too. A failure leaves it under its name
        // past `--keep`, which the next persist removes.
        match self.persister.drop_old() {
            Ok(took) if !took.is_zero() => {
                debug!(
                    drop_old_us = took.as_micros(),
                    "dropped generation unlinked"
                )
            }
            Ok(_) => {}
            Err(e) => {
                warn!("cannot remove the generation past --keep ({e}); the next snapshot retries")
            }
        }
        let outcome = outcome?;
        if let Outcome::Starved { .. } = outcome {
            self.tally.starved += 1;
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
                strategy: self.strategy.kind().code(),
                generation: 0,
                unix_time_ns: now_ns(),
            };
            self.repair(meta);
        }
        result
    }

    /// Sets the corrupt region aside and restores the newest sound snapshot ([`repair`]):
    /// into the same memfd, or into a fresh one if the client sealed it against writes.
    fn repair(&mut self, meta: SnapshotMeta) {
        let sealed = self.memfd.is_write_sealed().unwrap_or(true);
        if sealed {
            info!(
                "the corrupt region is sealed against writes (its client tracked them): \
                 restoring into a fresh memfd instead"
            );
        }
        let fresh = if sealed {
            match self.memfd.len().and_then(fresh_region) {
                Ok(m) => Some(m),
                Err(e) => {
                    error!("cannot create a fresh region to repair the sealed one into: {e}");
                    return;
                }
            }
        } else {
            None
        };
        let target = fresh.as_ref().unwrap_or(&self.memfd);
        let restored = repair::repair(&self.persister, &self.memfd, target, meta);
        let origin = restored.as_ref().map_or(Origin::Empty, Origin::Restored);
        if let Some(fresh) = fresh {
            // The new region says what it holds on disk, as at start (not the last status:
            // the repair may have fallen back to an older generation).
            if let Err(e) = self.replace_region(fresh, Some(origin)) {
                error!(
                    "cannot map the repaired region: {e}; the client restarts on the corrupt one"
                );
                return;
            }
        }
        self.strategy.accept(&self.map, origin);
        self.region_len = self.memfd.len().unwrap_or(self.region_len);
    }

    /// If the region is sealed against writes (its client tracked its writes), copies it into
    /// a fresh memfd and snapshots that one from now on: the next client must be able to map
    /// it writable. Call it only while no client runs. Returns whether it moved the region.
    ///
    /// # Errors
    ///
    /// The copy's or the mapping's errors (`ENOMEM`: the region's data exists twice until
    /// the old memfd is dropped); the old region stays in use.
    pub fn rehome_if_sealed(&mut self) -> io::Result<bool> {
        if !self.memfd.is_write_sealed()? {
            return Ok(false);
        }
        let t = Instant::now();
        let (fresh, stats) = self.memfd.fresh_copy(REGION_NAME)?;
        self.replace_region(fresh, None)?;
        info!(
            data_bytes = stats.bytes,
            ms = ms(t.elapsed()),
            "moved the region into a fresh memfd: its client had sealed it against other \
             writers (write tracking), and the next client must be able to map it writable"
        );
        Ok(true)
    }

    /// Snapshots `fresh` from now on instead of the current region: maps it, moves the status
    /// publisher to it, and marks the region replaced. The publisher re-publishes the last
    /// status (`origin` `None`: the same bytes moved) or what `origin` says the new region
    /// holds. The strategy is told by the caller if the contents changed.
    fn replace_region(&mut self, fresh: Memfd, origin: Option<Origin<'_>>) -> io::Result<()> {
        let map = Mapping::of_memfd(&fresh, self.strategy.protection())?;
        {
            let mut guard = self
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(old) = guard.take() {
                let status = origin.map_or(old.last(), |o| crate::durable::status_of(&map, o));
                *guard = crate::durable::publisher_moved(&fresh, status);
            }
        }
        self.map = map;
        let old = std::mem::replace(&mut self.memfd, fresh);
        // The old region may be the one inherited at fd 3, which must stay occupied.
        if let Err(e) = shmsnap_linux::handover::close_keeping_fd3(old.into_fd()) {
            warn!("closing the old region: {e}");
        }
        self.region_len = self.memfd.len()?;
        self.replaced = true;
        Ok(())
    }

    /// The region that replaced the one the supervisor knows, once (a duplicate fd of it),
    /// or `None` if it did not change since the last call.
    pub fn take_new_region(&mut self) -> Option<io::Result<Memfd>> {
        if !std::mem::take(&mut self.replaced) {
            return None;
        }
        let dup = rustix::io::fcntl_dupfd_cloexec(&self.memfd, 0).map_err(io::Error::from);
        Some(dup.and_then(Memfd::from_fd))
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
                "snapshot persisted ({why}){} to {}",
                r.pause.map_or(String::new(), |p| format!(
                    " after a {:.3} ms pause of the client",
                    ms(p)
                )),
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

/// The generation after `on_disk`; `None` after `u64::MAX`: generations never repeat
/// (FORMAT.md), so there is none (a forged footer must not wrap the count to 0, reuse
/// `u64::MAX`, nor panic in a debug build).
fn next_generation(on_disk: Option<u64>) -> Option<u64> {
    on_disk.map_or(Some(1), |g| g.checked_add(1))
}

/// The highest generation the state holds, which every new base must exceed: the restored
/// base's, and every generation found on disk ([`newest::highest_generation`]: kept
/// generations, the chain directory's delta names, bases set aside), whatever the region
/// came from.
///
/// # Errors
///
/// [`Code::DataErr`] if it is `u64::MAX`: no new base could be written (the host refuses to
/// start rather than run without snapshots); the listing's errors.
fn generation_floor(persister: &Persister, origin: Origin<'_>) -> Result<Option<u64>, Failure> {
    let restored = match origin {
        Origin::Restored(info) => Some(info.meta.generation),
        Origin::Empty | Origin::FdStore => None,
    };
    let floor = restored.max(newest::highest_generation(persister)?);
    if floor == Some(u64::MAX) {
        return Err(Failure::new(
            Code::DataErr,
            generations_exhausted(&persister.target()),
        ));
    }
    Ok(floor)
}

/// The message for a state whose generations are used up.
fn generations_exhausted(target: &Path) -> String {
    format!(
        "the state {} holds generation {} (u64::MAX), the last one: generations never repeat, \
         so no new base can be written (only a forged or foreign footer gets there). Move the \
         state file, its generations (.N) and its chain directory (.d) away to start a new \
         state",
        target.display(),
        u64::MAX
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::open_persister;
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

    /// A region its client sealed moves into a fresh, writable memfd with the same bytes; the
    /// status publisher follows (the last status re-published there), the new region is handed
    /// out once, and an unsealed region is left alone.
    #[test]
    fn a_sealed_region_moves_once_with_its_bytes_and_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let persister = open_persister(&dir.path().join("m.snap"), 1).unwrap();
        let memfd = Memfd::create("moving", 1 << 20).unwrap();
        memfd.seal_against_shrink().unwrap();
        let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        let mut w = Writer::open_or_init(
            rw.words(),
            LayoutRequest {
                entries: 8,
                data_size: 4096,
            },
            crate::examples::TEST_CLIENT,
        )
        .unwrap();
        w.commit(b"persisted").unwrap();
        let dup = Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(&memfd, 0).unwrap()).unwrap();
        let strategy = crate::strategy::choose::from_kind(shmsnap_core::Strategy::Queue);
        // Not marked as persisted: the first attempt snapshots at once.
        let mut snap = Snapshotter::new(persister, strategy, dup, Origin::FdStore).unwrap();
        assert!(matches!(
            snap.take(true, None).unwrap(),
            Outcome::Persisted(_)
        ));
        assert!(
            !snap.rehome_if_sealed().unwrap(),
            "an unsealed region stays"
        );
        assert!(snap.take_new_region().is_none());
        w.commit(b"after").unwrap();
        drop(w); // the client ends (its claim released), as a dead one's is by the host
        memfd.seal_future_write().unwrap(); // as the client's library does
        drop(rw);
        assert!(snap.rehome_if_sealed().unwrap());
        let fresh = snap.take_new_region().expect("handed out").unwrap();
        assert!(snap.take_new_region().is_none(), "once");
        assert!(!fresh.is_write_sealed().unwrap());
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        rustix::io::pread(&memfd, &mut a, 0).unwrap();
        rustix::io::pread(&fresh, &mut b, 0).unwrap();
        // The re-publish bumped the futex wake counter in the fresh region, nothing else.
        let wake = shmsnap_core::format::word::STATUS_WAKE * 8;
        assert!(a[wake..wake + 4] != b[wake..wake + 4], "re-published");
        a[wake..wake + 8].copy_from_slice(&b[wake..wake + 8]);
        assert!(a == b, "the moved region differs");
        let map = Mapping::of_memfd(&fresh, Protection::ReadWrite).unwrap();
        let status = shmsnap_core::status::persisted(map.words());
        assert_eq!((status.seq, status.generation), (1, 1), "{status:?}");
        // The snapshotter works on the new region from now on.
        let mut w = Writer::attach(map.words(), crate::examples::TEST_CLIENT).unwrap();
        w.commit(b"in the fresh region").unwrap();
        assert!(matches!(
            snap.take(true, None).unwrap(),
            Outcome::Persisted(_)
        ));
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
            crate::strategy::choose::from_kind(shmsnap_core::Strategy::Queue),
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
