//! The triple strategy: the client hands over whole states in N ≥ 3 buffers; the host persists
//! the newest one it can freeze.
//!
//! The client publishes through core's [`TripleClient`](shmsnap_core::triple::TripleClient);
//! on every tick, on SIGUSR1 and after the client exits the host runs [`take_triple`]: freeze
//! the newest READY buffer, copy that buffer alone, release it — the release validates the
//! copy. A snapshot does not starve (the client skips a buffer it reads FROZEN; only a freeze
//! that lands between its load and its store of a stale buffer — the reclaim race, DESIGN §6
//! — makes the release fail, and that copy is dropped and retried at the next tick) and is
//! skipped when nothing newer than the last persisted seq was published.
//!
//! The state words are hostile input (DESIGN §6). Before each freeze the host surveys them
//! and core's [`PersistedSeq`] judges the survey against what it persisted last: a READY seq
//! above the client's published `NEXT_SEQ` is refused (never frozen: it cannot be the
//! client's); a newest seq below the last persisted one is a re-initialised region when the
//! client epoch changed (the last persisted seq is reset, so the new publications persist at
//! once) and refused otherwise. Refusals are counted (`shmsnap_triple_refused_states_total`)
//! and logged when they change; a re-initialisation is logged once.
//!
//! The host maps the region read-write (it compare-exchanges state words) and attaches anew
//! for every attempt: [`TripleHost::attach`] validates the layout once per attempt, so a
//! client that rewrites its header between attempts cannot move an index out of bounds, and
//! it undoes freezes of any other host epoch (a dead host's, also one inherited from the fd
//! store). Each attach takes a new host epoch; this host's previous freeze is always released
//! (or dropped, which releases) before the next attach, so only a foreign freeze is adopted.

use std::io;

use shmsnap_core::triple::{Judgement, PersistedSeq, Refused, Survey, TripleError, TripleHost};
use shmsnap_core::LayoutError;
use shmsnap_linux::take_triple::{take_triple, TripleSnapshot};
use shmsnap_linux::{Mapping, Protection};
use tracing::{debug, info, warn};

use super::{warn_on_foreign, Cx, OnUsr1, Schedule, Strategy, StrategyKind};
use crate::flow::{Origin, Outcome, Point, Report};
use crate::metrics::Metrics;

/// The triple strategy's memory between snapshots.
#[derive(Debug, Default)]
pub struct Triple {
    /// The seq of the state in the newest persisted snapshot (or the restored one; 0 until
    /// then) and the client epoch it was judged under: only a newer READY buffer is
    /// persisted, and a re-initialised region resets it.
    persisted: PersistedSeq,
    /// The refused READY word reported last (logged when it changes).
    refused: Option<Refused>,
    /// The backwards `(newest, last persisted)` reported last (logged when it changes).
    backwards: Option<(u64, u64)>,
    /// Where refusals are counted, once the host attached its metrics.
    metrics: Option<Metrics>,
    /// Whether an attach succeeded already: stale freezes are expected at the first one (a
    /// dead host's), and a sign of a second host at a later one.
    attached: bool,
    /// The image meta of the current attempt, kept to avoid an allocation per snapshot.
    scratch: Vec<u8>,
}

/// Why the host cannot attach, as an outcome: a harmless skip while the client has not
/// configured the region yet, an invalid region otherwise.
fn attach_failure(e: TripleError) -> Outcome {
    match e {
        TripleError::Layout(LayoutError::Unconfigured) => {
            Outcome::Skipped("the client has not configured the region yet".into())
        }
        e => Outcome::Invalid(format!(
            "the region is not a usable triple-buffer region ({e})"
        )),
    }
}

impl Triple {
    /// Attaches to the region and logs the freezes it undid.
    fn attach<'m>(
        &mut self,
        map: &'m Mapping,
    ) -> Result<TripleHost<'m, [std::sync::atomic::AtomicU64]>, TripleError> {
        let host = TripleHost::attach(map.words())?;
        let n = host.adopted();
        if n > 0 && !self.attached {
            info!(
                adopted = n,
                host_epoch = host.epoch(),
                "released {n} buffer(s) left frozen by a previous host"
            );
        } else if n > 0 {
            warn!(
                adopted = n,
                "released {n} buffer(s) frozen by another host epoch: is a second host using this region?"
            );
        }
        self.attached = true;
        Ok(host)
    }

    /// Judges the state words before a freeze: refuses a READY seq above what the client
    /// published and a newest seq going back within one client epoch (counted, logged when
    /// it changes), and resets the last persisted seq for a re-initialised region (logged).
    fn judge(&mut self, survey: &Survey) {
        let mut refused = false;
        if let Some(r) = survey.refused {
            refused = true;
            if self.refused != Some(r) {
                warn!(
                    buffer = r.buffer,
                    seq = r.seq,
                    published = survey.published,
                    "buffer {} is READY with seq {}, above the seq {} the client says it                      published: refused, never persisted (something other than the client                      writes the region's state words)",
                    r.buffer,
                    r.seq,
                    survey.published
                );
            }
        } else if self.refused.is_some() {
            info!("no buffer claims a seq above the client's published one any more");
        }
        self.refused = survey.refused;
        match self.persisted.judge(survey) {
            Judgement::Normal => self.backwards = None,
            Judgement::Reinitialised {
                from_epoch,
                to_epoch,
                last_seq,
                newest,
            } => {
                self.backwards = None;
                info!(
                    from_epoch,
                    to_epoch,
                    last_seq,
                    newest,
                    "the client re-initialised the region (client epoch {from_epoch} ->                      {to_epoch}, seqs start again: newest {newest}, {last_seq} persisted                      before): snapshots resume at once"
                );
            }
            Judgement::Unsettled { newest, last_seq } => {
                // The client published while the survey's passes ran: no verdict (not a
                // fault; the freeze persists nothing at or below the last persisted seq).
                debug!(
                    newest,
                    last_seq, "the state words moved during the survey: no verdict on seq {newest}"
                );
            }
            Judgement::Backwards { newest, last_seq } => {
                refused = true;
                if self.backwards != Some((newest, last_seq)) {
                    warn!(
                        newest,
                        last_seq,
                        "the newest published seq {newest} is below the {last_seq} already                          persisted, within one client epoch: refused (the client cannot do                          that; something else writes the state words); nothing older is                          persisted"
                    );
                }
                self.backwards = Some((newest, last_seq));
            }
        }
        if let (true, Some(m)) = (refused, &self.metrics) {
            m.triple_state_refused();
        }
    }
}

impl Strategy for Triple {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Triple
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            ticks: true,
            on_usr1: OnUsr1::Snapshot,
            final_at_exit: true,
        }
    }

    fn protection(&self) -> Protection {
        // The host compare-exchanges state words (freeze, release, undoing stale freezes).
        Protection::ReadWrite
    }

    fn accept(&mut self, map: &Mapping, origin: Origin<'_>) {
        warn_on_foreign(self.kind(), origin);
        let host = match self.attach(map) {
            Ok(h) => h,
            Err(TripleError::Layout(LayoutError::Unconfigured)) => return,
            Err(e) => {
                warn!("the region is not a triple-buffer region ({e}); snapshots wait until a client configures one");
                return;
            }
        };
        // A restored region is exactly what is on disk: its one READY buffer is the persisted
        // state. An inherited one may hold publications never persisted: nothing is marked.
        if let Origin::Restored(_) = origin {
            let survey = host.survey();
            let seq = survey.newest.map_or(0, |(_, s)| s);
            self.persisted = PersistedSeq::restored(seq, survey.client_epoch);
            info!(
                seq,
                "restored triple state: the next client reads seq {seq}"
            );
        }
    }

    fn attach_metrics(&mut self, metrics: &Metrics) {
        self.metrics = Some(metrics.clone());
    }

    fn unchanged(&self, _map: &Mapping) -> bool {
        // Answered by `take`: the freeze finds no READY seq above `last_seq` and skips.
        false
    }

    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome> {
        let host = match self.attach(cx.map) {
            Ok(h) => h,
            Err(e) => return Ok(attach_failure(e)),
        };
        self.judge(&host.survey());
        let taken = take_triple(
            cx.memfd,
            &host,
            cx.persister,
            cx.meta,
            self.persisted.seq(),
            &mut self.scratch,
        )?;
        let (file, f) = match taken {
            TripleSnapshot::Written { file, figures } => (file, figures),
            TripleSnapshot::Skipped(s) if s.is_violation() => {
                return Ok(Outcome::Invalid(s.to_string()))
            }
            TripleSnapshot::Skipped(s) => return Ok(Outcome::Skipped(s.to_string())),
        };
        let stats = file.commit_durable()?;
        self.persisted.persisted(f.seq);
        debug!(
            buffer = f.buffer,
            seq = f.seq,
            buffer_size = f.buffer_size,
            "triple snapshot of buffer {} (seq {})",
            f.buffer,
            f.seq
        );
        Ok(Outcome::Persisted(Report {
            point: Point::Base {
                generation: cx.meta.generation,
            },
            generation: cx.meta.generation,
            bytes: f.copy.bytes,
            kept: 1,
            dropped: 0,
            newest_seq: f.seq,
            scan: None,
            copy: f.copy_time,
            validate: f.validate_time,
            sync: stats.sync,
            rename: stats.rename + stats.dir_sync,
            unproven: None,
            pause: None,
        }))
    }
}
