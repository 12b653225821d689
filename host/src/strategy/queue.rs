//! The queue strategy: continuous consistent snapshots of a shmsnap-core queue.
//!
//! The client commits through core's writer; the host runs the pre/copy/post sandwich
//! ([`take_queue`]) on every tick, on SIGUSR1 and after the client exits, keeping only entries
//! it proves unmodified during the copy. "Nothing changed" is the live `(epoch, next_seq)`
//! hint pair being the one of the last persisted snapshot: every commit raises `next_seq`,
//! every attach or init raises `epoch`.

use std::io;

use shmsnap_core::{Hints, Region};
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch, Skip};
use shmsnap_linux::Mapping;

use super::{warn_on_foreign, Code, Cx, OnUsr1, Origin, Schedule, Strategy};
use crate::snap::{Outcome, Point, Report};

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
}

fn mark(h: Hints) -> (u64, u64) {
    (h.epoch, h.next_seq)
}

/// The live hints, if the region's header is valid.
fn live_mark(map: &Mapping) -> Option<(u64, u64)> {
    Region::open(map.words()).ok().map(|r| mark(r.hints()))
}

impl Strategy for Queue {
    fn code(&self) -> Code {
        Code::Queue
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
        warn_on_foreign(self.code(), origin);
        // A restored (or empty) region is exactly what is on disk; an inherited one may hold
        // commits that never were persisted, so it is not marked.
        if !matches!(origin, Origin::FdStore) {
            self.last_mark = live_mark(map);
        }
    }

    fn unchanged(&self, map: &Mapping) -> bool {
        self.last_mark.is_some() && live_mark(map) == self.last_mark
    }

    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome> {
        let taken = take_queue(cx.memfd, cx.map, cx.persister, cx.meta, &mut self.scratch)?;
        let (file, f) = match taken {
            QueueSnapshot::Written { file, figures } => (file, figures),
            QueueSnapshot::Skipped(Skip::NoEntries { hints }) => {
                self.last_mark = Some(mark(hints));
                let reason = Skip::NoEntries { hints }.to_string();
                if std::mem::replace(&mut self.told_empty, true) {
                    return Ok(Outcome::Skipped(reason));
                }
                return Ok(Outcome::Notice(reason));
            }
            QueueSnapshot::Skipped(s @ Skip::InvalidHeader(_)) => {
                return Ok(Outcome::Invalid(s.to_string()))
            }
            QueueSnapshot::Skipped(s) => return Ok(Outcome::Skipped(s.to_string())),
            QueueSnapshot::Starved(s) => {
                return Ok(Outcome::Starved {
                    copy: s.copy_time,
                    commits_during_copy: s.commits_during_copy,
                    pre: s.pre,
                })
            }
        };
        let stats = file.commit()?;
        self.last_mark = Some(mark(f.hints_before));
        self.told_empty = false;
        Ok(Outcome::Persisted(Report {
            point: Point::Base {
                generation: cx.meta.generation,
            },
            generation: cx.meta.generation,
            bytes: f.copy.bytes,
            kept: f.retained.kept,
            dropped: f.retained.dropped(),
            newest_seq: f.retained.newest.map_or(0, |d| d.seq),
            copy: f.copy_time,
            validate: f.validate_time,
            sync: stats.sync,
            rename: stats.rename + stats.dir_sync,
        }))
    }
}
