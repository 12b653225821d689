//! The queue strategy: continuous consistent snapshots of a shmsnap-core queue (the
//! pre/copy/post sandwich, keeping only entries proven unmodified during the copy), as a chain
//! of full bases and incremental deltas ([`take_delta`]).
//!
//! A snapshot is a delta only while write tracking vouches for every other page (the same
//! client process, an unchanged [`Advertisement`], the previous snapshot durable from such a
//! scan and still the chain's tip, the compaction policy agreeing), and a base arms the next
//! delta with a scan only once [`track::prove`] showed no store can bypass the tracked mapping;
//! otherwise it is a base (counted in `shmsnap_incremental_unproven_total{reason}`). The rules
//! and why they make a delta sound: docs/DESIGN.md §5 and §11 ("Who can write the region").
//! A delta attempt that starved keeps its scan in the chain's [`Carry`]: the next delta onto
//! the same tip copies the union of every complete scan since the tip's image (DESIGN §11,
//! "An attempt that is not kept"), instead of a base that would starve in turn. A delta copies
//! the newest entries first and may leave planned pages out; the carry its commit returns
//! holds them, and is the one the chain keeps (DESIGN §11, "The newest entries first").
//! Deltas whose base left the kept generations are removed only after a base is durable
//! ([`chain::remove_superseded`]).

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::Pid;
use shmsnap_core::format::word;
use shmsnap_core::{Hints, Region};
use shmsnap_linux::chain::{self, CompactionPolicy, Tip};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot;
use shmsnap_linux::take::{take_queue, Figures, QueueSnapshot, Scratch, Skip, Starved};
use shmsnap_linux::take_delta::{
    take_delta, Carry, ChainSize, DeltaFigures, DeltaRequest, DeltaSnapshot, PendingDelta,
};
use shmsnap_linux::track::{self, Advertisement, Census, FileId, Scanner, TrackedRange};
use shmsnap_linux::{Mapping, Memfd};
use tracing::{debug, info, warn};

use super::{warn_on_foreign, Cx, OnUsr1, Schedule, Strategy, StrategyKind};
use crate::flow::{Origin, Outcome, Point, Report};

/// The queue strategy's memory between snapshots.
#[derive(Debug, Default)]
pub struct Queue {
    /// `(epoch, next_seq)` of the region when the last snapshot was persisted (or at a restore,
    /// or when an empty region was seen); `None` until then.
    last_mark: Option<(u64, u64)>,
    /// Buffers reused by every attempt.
    scratch: Scratch,
    /// A region without valid entries was reported (info, once); reset when one is persisted.
    told_empty: bool,
    /// The compaction policy; `None`: full bases only (`--incremental off`).
    policy: Option<CompactionPolicy>,
    /// The chain this host may extend with a delta. Invariant: `Some` only while this host
    /// made its tip durable, nothing but the client wrote the region since, and its carry
    /// holds every complete scan since the tip's image (then `tracking.vouched` is `Some`);
    /// taken (`None`) by every attempt that ends neither in a durable snapshot nor in a kept
    /// carry (a starved or skipped delta attempt whose registration held).
    chain: Option<Chain>,
    /// Write tracking of the current client process.
    tracking: Option<Tracking>,
    /// Why the previous snapshot was a base (logged once per change, at info).
    last_base_cause: Option<String>,
    /// Why the last proof failed (logged once per change, at warn).
    last_unproven: Option<String>,
    /// A census could not read some processes' maps (logged once per run, at info).
    told_unreadable: bool,
}

/// How long a failed proof stands before the census runs again (the other writer may be
/// gone by then); a proof that held stands for the registration's life.
const RETRY_UNPROVEN: Duration = Duration::from_secs(10);

/// The chain on disk, as this host last made it durable.
#[derive(Debug, Clone)]
struct Chain {
    /// The pages scanned since its newest link's image by attempts that committed nothing;
    /// [`Carry::tip`] is that link.
    carry: Carry,
    /// Bytes of data the base's copy moved.
    base_bytes: u64,
    /// Deltas after the base.
    deltas: u64,
    /// Their bytes, together.
    delta_bytes: u64,
    /// The tip image's `next_seq` hint.
    next_seq: u64,
}

/// One client process's write tracking, as the host sees it.
#[derive(Debug)]
struct Tracking {
    /// The client process the scanner reads.
    pid: Pid,
    /// Its `/proc/PID/pagemap`.
    scanner: Scanner,
    /// The advertisement of the scan that preceded the last durable snapshot, and of every
    /// scan carried since; `None` when an attempt could not vouch for its scan (the next
    /// snapshot must then be a base). Invariant: `Some(a)` only while `proof` holds for `a`.
    vouched: Option<Advertisement>,
    /// The proof (or its failure) for the registration last armed.
    proof: Option<Proof>,
}

/// What [`track::prove`] said about one registration of the client over one region.
#[derive(Debug)]
struct Proof {
    advert: Advertisement,
    region: FileId,
    /// `Err`: the reason's metric label and text.
    verdict: Result<(), (&'static str, String)>,
    at: Instant,
}

impl Tracking {
    /// Whether only the tracked mapping can write `memfd` from now on: the standing proof of
    /// this registration, or a new one ([`track::prove`]; it seals the region if needed).
    /// `Ok(Some(census))` when a census ran now.
    fn prove(
        &mut self,
        memfd: &Memfd,
        range: &TrackedRange,
        advert: Advertisement,
    ) -> Result<Option<Census>, (&'static str, String)> {
        let region = FileId::of(memfd)
            .map_err(|e| ("census_failed", format!("fstat of the region: {e}")))?;
        if let Some(p) = self.proof.as_ref().filter(|p| {
            p.advert == advert
                && p.region == region
                && (p.verdict.is_ok() || p.at.elapsed() < RETRY_UNPROVEN)
        }) {
            return p.verdict.clone().map(|()| None);
        }
        let result = track::prove(memfd, self.pid, range).map_err(|u| (u.label(), u.to_string()));
        self.proof = Some(Proof {
            advert,
            region,
            verdict: result.as_ref().map(|_| ()).map_err(Clone::clone),
            at: Instant::now(),
        });
        result.map(Some)
    }

    /// The proof of `advert` over `memfd` held, and the seal it rests on is there (seals are
    /// never removed: this re-reads it only as a guard).
    fn proven(&self, memfd: &Memfd, advert: Advertisement) -> bool {
        self.proof.as_ref().is_some_and(|p| {
            p.advert == advert
                && p.verdict.is_ok()
                && FileId::of(memfd).is_ok_and(|id| id == p.region)
                && memfd.is_write_sealed().unwrap_or(false)
        })
    }
}

impl Queue {
    /// A queue strategy taking deltas under `policy` (`None`: full bases only).
    pub fn new(policy: Option<CompactionPolicy>) -> Self {
        Queue {
            policy,
            ..Queue::default()
        }
    }
}

fn mark(h: Hints) -> (u64, u64) {
    (h.epoch, h.next_seq)
}

/// The live hints, if the region's header is valid.
fn live_mark(map: &Mapping) -> Option<(u64, u64)> {
    Region::open(map.words()).ok().map(|r| mark(r.hints()))
}

/// Reads the client's tracking advertisement (header words 40..44): hostile input, decoded
/// and checked by the caller.
fn read_advert(map: &Mapping) -> Result<Advertisement, String> {
    let words = map
        .words()
        .get(word::TRACK)
        .ok_or("the region is too small for a tracking advertisement")?;
    // Acquire: pairs with the client's Release stores of the record (listen::start_tracking),
    // so the words read belong to the registration whose generation they show; the caller
    // trusts them only if a second read after the scan is equal.
    let w = std::array::from_fn(|i| words[i].load(Ordering::Acquire));
    Advertisement::decode(w).map_err(|e| e.to_string())
}

/// `true` if `chain`'s tip is still what is on disk: the base file carries its generation and
/// image CRC and, for a delta tip, the delta file exists.
fn on_disk(persister: &Persister, chain: &Chain) -> bool {
    let tip = chain.carry.tip();
    let base_ok = snapshot::read_footer_path(&persister.target()).is_ok_and(|i| {
        i.meta.generation == tip.base_generation && i.image_crc == tip.base_image_crc
    });
    base_ok
        && (tip.index == 0
            || chain::chain_dir(&persister.target())
                .join(chain::delta_name(tip.base_generation, tip.index))
                .exists())
}

/// What the tracking of this attempt allows.
enum Plan {
    /// A delta onto the chain.
    Delta(TrackedRange, Advertisement),
    /// A base; with a range, preceded by a scan so that the next snapshot can be a delta.
    Base(Option<(TrackedRange, Advertisement)>, String),
}

impl Strategy for Queue {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Queue
    }

    fn status_area(&self) -> bool {
        true
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            ticks: true,
            on_usr1: OnUsr1::Snapshot,
            final_at_exit: true,
        }
    }

    fn accept(&mut self, map: &Mapping, origin: Origin<'_>) {
        warn_on_foreign(self.kind(), origin);
        // A restored (or empty) region is exactly what is on disk; an inherited one may hold
        // commits that never were persisted, so it is not marked.
        if !matches!(origin, Origin::FdStore) {
            self.last_mark = live_mark(map);
        }
        // The host wrote the region (or it comes from elsewhere): tracking vouches for
        // nothing, the next snapshot is a base.
        self.chain = None;
        self.tracking = None;
    }

    fn unchanged(&self, map: &Mapping) -> bool {
        self.last_mark.is_some() && live_mark(map) == self.last_mark
    }

    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome> {
        let cause = match self.plan(&cx) {
            Plan::Delta(range, advert) => match self.delta(&cx, range, advert) {
                Ok(outcome) => return Ok(outcome),
                // A rebase, or a failure: a base now (with a new scan), which drops the chain.
                Err(cause) => {
                    let again = self.tracked(&cx).ok();
                    return self.base(&cx, again, cause);
                }
            },
            Plan::Base(scan, cause) => (scan, cause),
        };
        self.base(&cx, cause.0, cause.1)
    }
}

impl Queue {
    /// Decides between a delta and a base (see the [module docs](self)).
    fn plan(&mut self, cx: &Cx<'_>) -> Plan {
        let tracked = match self.tracked(cx) {
            Ok(t) => t,
            Err(cause) => return Plan::Base(None, cause),
        };
        let vouched = self.tracking.as_ref().and_then(|t| t.vouched);
        let proven = self
            .tracking
            .as_ref()
            .is_some_and(|t| t.proven(cx.memfd, tracked.1));
        let cause = match &self.chain {
            _ if vouched.is_none() => {
                "a new client process, or the last attempt was not a snapshot from a scan"
            }
            _ if vouched != Some(tracked.1) => "the client changed its tracking registration",
            _ if !proven => "the proof that only the client's mapping writes the region is gone",
            None => "no chain of this run to extend",
            Some(c) if !on_disk(cx.persister, c) => "the chain's tip is no longer on disk",
            Some(_) => return Plan::Delta(tracked.0, tracked.1),
        };
        Plan::Base(Some(tracked), cause.into())
    }

    /// The client's validated tracked range and advertisement, opening a scanner for a new
    /// client process; `Err` says why tracking cannot be used.
    fn tracked(&mut self, cx: &Cx<'_>) -> Result<(TrackedRange, Advertisement), String> {
        if self.policy.is_none() {
            return Err("incremental snapshots are off".into());
        }
        let pid = cx.client.ok_or("the client is not running")?;
        let advert = read_advert(cx.map).map_err(|e| format!("no usable tracking: {e}"))?;
        let len = cx.memfd.len().map_err(|e| e.to_string())?;
        let range = track::validate(&advert, pid, cx.memfd, len)
            .map_err(|e| format!("tracking refused: {e}"))?;
        if self.tracking.as_ref().map(|t| t.pid) != Some(pid) {
            self.tracking = None;
            let scanner = Scanner::open(pid).map_err(|e| e.to_string())?;
            self.tracking = Some(Tracking {
                pid,
                scanner,
                vouched: None,
                proof: None,
            });
        }
        Ok((range, advert))
    }

    /// One delta; `Err` gives the reason a base must be taken now instead.
    fn delta(
        &mut self,
        cx: &Cx<'_>,
        range: TrackedRange,
        advert: Advertisement,
    ) -> Result<Outcome, String> {
        // Taken: only a committed delta, or an attempt whose scan the carry keeps, puts them
        // back.
        let (Some(mut chain), Some(t), Some(policy)) =
            (self.chain.take(), self.tracking.as_mut(), self.policy)
        else {
            return Err("no chain to extend".into());
        };
        t.vouched = None;
        let req = DeltaRequest {
            memfd: cx.memfd,
            map: cx.map,
            scanner: &mut t.scanner,
            range,
            carry: &mut chain.carry,
            parent_next_seq: chain.next_seq,
            chain: ChainSize {
                base_bytes: chain.base_bytes,
                deltas: chain.deltas,
                delta_bytes: chain.delta_bytes,
            },
            policy,
            unix_time_ns: cx.meta.unix_time_ns,
        };
        let (pending, f) = match take_delta(cx.persister, req, &mut self.scratch) {
            Ok(DeltaSnapshot::Written { delta, figures }) => (delta, figures),
            // Skipped before its scan (nothing changed) or starved after it (the carry holds
            // the scan): the chain goes on.
            Ok(DeltaSnapshot::Skipped(s)) => {
                self.keep(cx, chain, advert);
                return Ok(self.skipped(s));
            }
            Ok(DeltaSnapshot::Starved(s)) => {
                self.keep(cx, chain, advert);
                return Ok(starved(s));
            }
            // A base now (which drops the chain).
            Ok(DeltaSnapshot::Rebase(r)) => return Err(r.to_string()),
            // A base now, as after any failure (it drops the chain).
            Err(e) => return Err(e.to_string()),
        };
        if read_advert(cx.map).ok() != Some(advert) {
            return Err("the client changed its tracking registration during the scan".into());
        }
        self.commit_delta(pending, f, chain, advert)
    }

    /// Commits a written delta and records the new tip.
    fn commit_delta(
        &mut self,
        pending: PendingDelta<'_>,
        f: DeltaFigures,
        chain: Chain,
        advert: Advertisement,
    ) -> Result<Outcome, String> {
        let committed = pending
            .commit()
            .map_err(|e| format!("the delta could not be committed: {e}"))?;
        let info = committed.info;
        let tip = info.tip();
        self.chain = Some(Chain {
            // The pages the delta's copy left out (DESIGN §11, "The newest entries first").
            carry: committed.carry,
            deltas: chain.deltas + 1,
            delta_bytes: chain.delta_bytes.saturating_add(f.bytes),
            next_seq: f.retained.hints.next_seq,
            ..chain
        });
        if let Some(t) = self.tracking.as_mut() {
            t.vouched = Some(advert);
        }
        self.last_mark = Some(mark(f.hints_before));
        self.told_empty = false;
        self.last_base_cause = None;
        debug!(
            written_pages = f.written_pages,
            carried_scans = f.carried_scans,
            runs = f.runs,
            planned_bytes = f.planned_bytes,
            left_bytes = f.left_bytes,
            stopped = f.stopped,
            scan_ms = f.scan_time.as_secs_f64() * 1e3,
            "delta {} written",
            info.path.display()
        );
        Ok(Outcome::Persisted(Report {
            point: Point::Delta {
                base_generation: tip.base_generation,
                // MAX_INDEX (99,999,999) fits.
                index: u32::try_from(tip.index).unwrap_or(u32::MAX),
            },
            generation: tip.base_generation,
            bytes: f.bytes,
            kept: f.retained.kept,
            dropped: f.retained.dropped(),
            newest_seq: f.retained.newest.map_or(0, |d| d.seq),
            scan: Some(f.scan_time),
            copy: f.copy_time,
            validate: f.validate_time,
            sync: info.stats.sync,
            rename: info.stats.publish,
            unproven: None,
            pause: None,
        }))
    }

    /// A full base; with `scan`, preceded by a scan so that the next snapshot can be a delta.
    fn base(
        &mut self,
        cx: &Cx<'_>,
        scan: Option<(TrackedRange, Advertisement)>,
        cause: String,
    ) -> io::Result<Outcome> {
        // A base attempt that commits nothing drops the chain (its arming scan is not carried:
        // a base is taken when the chain cannot be extended anyway, DESIGN §11).
        self.chain = None;
        if self.last_base_cause.as_ref() != Some(&cause) {
            if self.policy.is_some() {
                info!("full snapshot: {cause}");
            }
            self.last_base_cause = Some(cause);
        }
        let (armed, unproven, scanned) = self.arm(cx, scan);
        let taken = take_queue(cx.memfd, cx.map, cx.persister, cx.meta, &mut self.scratch)?;
        let (file, f) = match taken {
            QueueSnapshot::Written { file, figures } => (file, figures),
            QueueSnapshot::Skipped(s) => return Ok(self.skipped(s)),
            QueueSnapshot::Starved(s) => return Ok(starved(s)),
        };
        let stats = file.commit_durable()?;
        self.after_base(cx, &f, armed);
        Ok(Outcome::Persisted(Report {
            point: Point::Base {
                generation: cx.meta.generation,
            },
            generation: cx.meta.generation,
            bytes: f.copy.bytes,
            kept: f.retained.kept,
            dropped: f.retained.dropped(),
            newest_seq: f.retained.newest.map_or(0, |d| d.seq),
            scan: scanned,
            copy: f.copy_time,
            validate: f.validate_time,
            sync: stats.sync,
            rename: stats.rename + stats.dir_sync,
            unproven,
            pause: None,
        }))
    }

    /// Before a base: the proof, then the scan that lets the next snapshot be a delta.
    /// Returns the advertisement armed (if any), when the proof failed its metric label, and
    /// how long the scan took (if it ran).
    fn arm(
        &mut self,
        cx: &Cx<'_>,
        scan: Option<(TrackedRange, Advertisement)>,
    ) -> (
        Option<Advertisement>,
        Option<&'static str>,
        Option<Duration>,
    ) {
        let (Some((range, advert)), Some(t)) = (scan, self.tracking.as_mut()) else {
            return (None, None, None);
        };
        t.vouched = None;
        let started = Instant::now();
        let census = match t.prove(cx.memfd, &range, advert) {
            Ok(census) => {
                self.last_unproven = None;
                census
            }
            Err((label, text)) => {
                if self.last_unproven.as_ref() != Some(&text) {
                    warn!(
                        "incremental snapshots are off for this client, every snapshot is a \
                         full copy: {text}"
                    );
                    self.last_unproven = Some(text);
                }
                return (None, Some(label), None);
            }
        };
        let scan_started = Instant::now();
        let scanned = t.scanner.scan(&range);
        let scan_time = scan_started.elapsed();
        let armed = match scanned {
            Ok(_) => Some(advert),
            Err(e) => {
                debug!("{e}");
                None
            }
        };
        if let Some(c) = census {
            self.note_census(&c, started.elapsed());
        }
        (armed, None, Some(scan_time))
    }

    /// Logs what a census saw: at debug, and once per run (info) the processes it could not
    /// read, which it assumes do not hold the region.
    fn note_census(&mut self, c: &Census, took: Duration) {
        debug!(
            processes = c.processes,
            readers = c.readers,
            unreadable = c.unreadable.len(),
            ms = took.as_secs_f64() * 1e3,
            "census of the region's mappings: no other writer"
        );
        if !c.unreadable.is_empty() && !std::mem::replace(&mut self.told_unreadable, true) {
            let shown: Vec<String> = c.unreadable.iter().take(8).map(i32::to_string).collect();
            info!(
                "the census of the region's mappings could not read {} process(es) (pids {}{}); \
                 it assumes they do not hold the region: a process of another user gets it \
                 only if a holder hands it over",
                c.unreadable.len(),
                shown.join(", "),
                if c.unreadable.len() > 8 { ", ..." } else { "" }
            );
        }
    }

    /// After a durable base: the new chain, tracking armed if the advertisement held, and the
    /// superseded chains removed.
    fn after_base(&mut self, cx: &Cx<'_>, f: &Figures, armed: Option<Advertisement>) {
        self.last_mark = Some(mark(f.hints_before));
        self.told_empty = false;
        // Also with --incremental off: the deltas of an earlier run's bases go with them.
        match chain::remove_superseded(cx.persister) {
            Ok(c) if !c.removed.is_empty() => {
                debug!("removed {} delta(s) of superseded chains", c.removed.len())
            }
            Ok(_) => {}
            Err(e) => warn!("could not remove superseded deltas: {e}"),
        }
        if self.policy.is_none() {
            return;
        }
        self.chain = Some(Chain {
            carry: Carry::new(Tip::of_base(&f.info)),
            base_bytes: f.copy.bytes,
            deltas: 0,
            delta_bytes: 0,
            next_seq: f.retained.hints.next_seq,
        });
        if let (Some(a), Some(t)) = (armed, self.tracking.as_mut()) {
            if read_advert(cx.map).ok() == Some(a) {
                t.vouched = Some(a);
            }
        }
    }

    /// After a delta attempt that committed nothing and whose complete scan (if it ran)
    /// `chain`'s carry now holds: the chain goes on (the next snapshot may be a delta onto its tip) if the
    /// client's registration is still the one the scan was made under; otherwise it is
    /// dropped and the next snapshot is a base.
    fn keep(&mut self, cx: &Cx<'_>, chain: Chain, advert: Advertisement) {
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        if read_advert(cx.map).ok() != Some(advert) {
            return;
        }
        debug!(
            carried_scans = chain.carry.scans(),
            carried_bytes = chain.carry.bytes(),
            "the attempt committed nothing: its scan is carried into the next delta"
        );
        t.vouched = Some(advert);
        self.chain = Some(chain);
    }

    /// The outcome of a skipped attempt.
    fn skipped(&mut self, skip: Skip) -> Outcome {
        match skip {
            Skip::NoEntries { hints } => {
                self.last_mark = Some(mark(hints));
                let reason = skip.to_string();
                if std::mem::replace(&mut self.told_empty, true) {
                    return Outcome::Skipped(reason);
                }
                Outcome::Notice(reason)
            }
            Skip::InvalidHeader(_) => Outcome::Invalid(skip.to_string()),
            Skip::Unconfigured => Outcome::Skipped(skip.to_string()),
        }
    }
}

fn starved(s: Starved) -> Outcome {
    Outcome::Starved {
        copy: s.copy_time,
        commits_during_copy: s.commits_during_copy,
        pre: s.pre,
    }
}
