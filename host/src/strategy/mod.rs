//! Strategies: how the region is coordinated and snapshotted, one file per strategy.
//!
//! Every strategy answers the same questions through [`Strategy`]; the supervisor and the
//! snapshotter ask them and never test which strategy runs.
//!
//! | question | method |
//! |---|---|
//! | interval ticks? on SIGUSR1? a final snapshot at client exit? | [`Strategy::schedule`] |
//! | how is the region mapped? | [`Strategy::protection`] |
//! | is the region at start (restored, empty or inherited) accepted, what is already on disk? | [`Strategy::accept`] |
//! | nothing changed since the last persisted snapshot? | [`Strategy::unchanged`] |
//! | take one snapshot | [`Strategy::take`] |
//!
//! | file | strategy |
//! |---|---|
//! | [`exit`] | a raw copy of the whole region once the client has exited (any client) |
//! | [`queue`] | continuous consistent snapshots of a shmsnap-core queue (pre/copy/post) |
//! | [`triple`] | the newest whole state a client published into a triple buffer (freeze/copy/release) |
//! | [`freeze`] | any client, while it runs: stop its processes, copy the region, resume them |

pub mod choose;
pub mod exit;
pub mod freeze;
pub mod queue;
pub mod triple;

use std::fmt;
use std::io;

use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::SnapshotMeta;
use shmsnap_linux::{Mapping, Memfd, Protection};
use tracing::warn;

use rustix::process::Pid;

use crate::flow::{Origin, Outcome};

/// The strategy codes of snapshot footers and region headers, typed (core's one vocabulary).
pub use shmsnap_core::Strategy as StrategyKind;

/// When the supervisor asks for snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Snapshot every `--interval` while the host runs.
    pub ticks: bool,
    /// What SIGUSR1 does.
    pub on_usr1: OnUsr1,
    /// Take a final snapshot after the client exits, before it is restarted (or the host
    /// exits).
    pub final_at_exit: bool,
}

/// What SIGUSR1 does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUsr1 {
    /// Take a snapshot now.
    Snapshot,
    /// Nothing; log this line.
    Ignore(&'static str),
}

/// One snapshot request as the strategy sees it.
#[derive(Debug)]
pub struct Cx<'a> {
    /// The region's file.
    pub memfd: &'a Memfd,
    /// The host's mapping of it (with [`Strategy::protection`]).
    pub map: &'a Mapping,
    /// Where snapshots go.
    pub persister: &'a Persister,
    /// The footer's meta for this snapshot (its generation is the next one).
    pub meta: SnapshotMeta,
    /// Whether the client may still be writing.
    pub client_alive: bool,
    /// The running client's pid (when the snapshot was requested): incremental snapshots scan
    /// its page tables.
    pub client: Option<Pid>,
}

/// A snapshot strategy; see the [module docs](self) for the questions it answers.
///
/// A strategy lives on the snapshot worker thread (hence `Send`); the supervisor only reads
/// its [`Schedule`] and [`Protection`] before handing it over.
pub trait Strategy: Send + fmt::Debug {
    /// The strategy, as written into snapshot footers (its name, `StrategyKind::name`, is what users
    /// type after `--strategy`).
    fn kind(&self) -> StrategyKind;

    /// When snapshots are requested.
    fn schedule(&self) -> Schedule;

    /// How the host maps the region.
    fn protection(&self) -> Protection {
        Protection::ReadOnly
    }

    /// `true` if the region has core's host status area (durability feedback, DESIGN §14):
    /// the host then publishes each persisted snapshot there and watches the client's
    /// snapshot-request word.
    fn status_area(&self) -> bool {
        false
    }

    /// Looks at the region the host starts with, before the first client starts, and
    /// remembers what of it is already on disk. The default warns when a restored snapshot
    /// was taken by another strategy.
    fn accept(&mut self, _map: &Mapping, origin: Origin<'_>) {
        warn_on_foreign(self.kind(), origin);
    }

    /// Hands the strategy the host's metrics, for what it counts itself (the triple strategy:
    /// refused state words). The default counts nothing.
    fn attach_metrics(&mut self, _metrics: &crate::metrics::Metrics) {}

    /// Tells the strategy the client's own cgroup (`--cgroup`), if the host manages one (the
    /// freeze strategy freezes it). The default ignores it.
    fn attach_cgroup(&mut self, _dir: Option<&std::path::Path>) {}

    /// `true` if the region holds nothing the last persisted snapshot lacks (then no snapshot
    /// is taken).
    fn unchanged(&self, map: &Mapping) -> bool;

    /// Takes one snapshot. Runs on the snapshot worker thread. A new state file is committed
    /// with `TempFile::commit_durable` and `Outcome::Persisted` returned right after: the
    /// snapshotter publishes it, then unlinks the generation that left `--keep`
    /// (`Persister::drop_old`, DESIGN §7).
    ///
    /// # Errors
    ///
    /// I/O errors of the copy or the persist; the previous snapshot stays in place.
    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome>;
}

/// Warns if a restored snapshot was taken with another strategy than `ours`.
pub fn warn_on_foreign(ours: StrategyKind, origin: Origin<'_>) {
    if let Some(line) = foreign(ours, origin) {
        warn!("{line}");
    }
}

/// The warning for a restored snapshot of another strategy than `ours`, naming both.
fn foreign(ours: StrategyKind, origin: Origin<'_>) -> Option<String> {
    let Origin::Restored(info) = origin else {
        return None;
    };
    let theirs = match StrategyKind::from_code(info.meta.strategy) {
        Some(t) if t == ours => return None,
        Some(t) => format!("the {t} strategy (--strategy {t})"),
        // No name to give: the number is all there is.
        None => format!("an unknown strategy (footer code {})", info.meta.strategy),
    };
    Some(format!(
        "the restored snapshot was taken with {theirs}; this run uses the {ours} strategy"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_linux::snapshot::{SnapshotInfo, SnapshotMeta};

    fn info(strategy: u64) -> SnapshotInfo {
        SnapshotInfo {
            version: 1,
            image_len: 4096,
            meta: SnapshotMeta {
                strategy,
                generation: 1,
                unix_time_ns: 0,
            },
            image_crc: 0,
        }
    }

    #[test]
    fn the_strategy_mismatch_warning_names_both_strategies_without_numbers() {
        let i = info(StrategyKind::Exit.code());
        let line = foreign(StrategyKind::Queue, Origin::Restored(&i)).unwrap();
        assert!(line.contains("the exit strategy"), "{line}");
        assert!(line.contains("the queue strategy"), "{line}");
        assert!(!line.contains(char::is_numeric), "{line}");
        let same = info(StrategyKind::Queue.code());
        assert_eq!(foreign(StrategyKind::Queue, Origin::Restored(&same)), None);
        assert_eq!(foreign(StrategyKind::Queue, Origin::Empty), None);
        let odd = info(99);
        let line = foreign(StrategyKind::Exit, Origin::Restored(&odd)).unwrap();
        assert!(line.contains("unknown strategy (footer code 99)"), "{line}");
    }
}
