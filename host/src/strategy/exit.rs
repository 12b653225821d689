//! The exit strategy: the whole region, copied once the client has exited.
//!
//! Works for any client, whatever it keeps in the memfd: nobody writes the region while the
//! host copies it, so a raw sparse copy is consistent. There are no interval snapshots, and
//! nothing tells whether the region changed, so every client exit gets a snapshot.

use std::io;
use std::time::{Duration, Instant};

use shmsnap_linux::snapshot;
use shmsnap_linux::Mapping;

use super::{Cx, OnUsr1, Schedule, Strategy, StrategyKind};
use crate::flow::{Outcome, Point, Report};

/// The exit strategy (no state: every exit is snapshotted).
#[derive(Debug, Default)]
pub struct Exit;

impl Strategy for Exit {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Exit
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            ticks: false,
            on_usr1: OnUsr1::Ignore("SIGUSR1: the exit strategy snapshots when the client exits"),
            final_at_exit: true,
        }
    }

    fn unchanged(&self, _map: &Mapping) -> bool {
        // A client may write anything anywhere: there is no mark to compare.
        false
    }

    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome> {
        if cx.client_alive {
            // A copy of a region being written is torn: never persist one.
            return Ok(Outcome::Skipped(
                "the exit strategy snapshots only when the client has exited".into(),
            ));
        }
        let len = cx.memfd.len()?;
        let t = Instant::now();
        let tmp = cx.persister.begin()?;
        let (_, copy) = snapshot::write_snapshot(cx.memfd, tmp.file(), len, cx.meta)?;
        let copied = t.elapsed();
        let stats = tmp.commit_durable()?;
        Ok(Outcome::Persisted(raw_report(
            &cx, copy.bytes, copied, &stats,
        )))
    }
}

/// The report of a raw image (exit and freeze strategies) persisted as generation
/// `cx.meta.generation`: `bytes` of data written in `copy`, then committed with `stats`.
pub(super) fn raw_report(
    cx: &Cx<'_>,
    bytes: u64,
    copy: Duration,
    stats: &shmsnap_linux::persist::PersistStats,
) -> Report {
    Report {
        point: Point::Base {
            generation: cx.meta.generation,
        },
        generation: cx.meta.generation,
        bytes,
        kept: 0,
        dropped: 0,
        newest_seq: 0,
        copy,
        validate: Duration::ZERO,
        sync: stats.sync,
        rename: stats.rename + stats.dir_sync,
        scan: None,
        unproven: None,
        pause: None,
    }
}
