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

pub mod exit;
pub mod freeze;
pub mod queue;
pub mod triple;

use std::fmt;
use std::io;

use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{SnapshotInfo, SnapshotMeta};
use shmsnap_linux::{Mapping, Memfd, Protection};
use tracing::warn;

use rustix::process::Pid;
use shmsnap_linux::chain::CompactionPolicy;

use crate::cli::{RunArgs, StrategyArg};
use crate::snap::Outcome;

/// The strategy codes of snapshot footers and region headers, typed (core's one vocabulary).
pub use shmsnap_core::Strategy as Code;

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

/// Where the region the host starts with came from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A fresh region, no snapshot on disk.
    Empty,
    /// Restored from this snapshot file: the region holds exactly what is on disk.
    Restored(&'a SnapshotInfo),
    /// Inherited from the service manager's fd store: it may hold commits never persisted.
    FdStore,
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
    /// The strategy, as written into snapshot footers (its name, `Code::name`, is what users
    /// type after `--strategy`).
    fn code(&self) -> Code;

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
        warn_on_foreign(self.code(), origin);
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

    /// Takes one snapshot. Runs on the snapshot worker thread.
    ///
    /// # Errors
    ///
    /// I/O errors of the copy or the persist; the previous snapshot stays in place.
    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome>;
}

/// The strategy chosen on the command line (the one place a [`StrategyArg`] becomes a
/// strategy and its [`Code`]).
#[cfg(test)]
pub fn from_arg(arg: StrategyArg) -> Box<dyn Strategy> {
    from_arg_with(arg, Some(CompactionPolicy::default()))
}

/// The strategy of `shmsnap run`'s arguments (`--strategy`, `--incremental`,
/// `--compact-ratio`, `--compact-deltas`).
pub fn from_run_args(args: &RunArgs) -> Box<dyn Strategy> {
    if args.strategy == StrategyArg::Freeze {
        return Box::new(freeze::Freeze::new(args.max_pause));
    }
    from_arg_with(args.strategy, args.incremental().then(|| args.compaction()))
}

/// The strategy `arg`; the queue strategy takes deltas under `policy` (`None`: bases only).
fn from_arg_with(arg: StrategyArg, policy: Option<CompactionPolicy>) -> Box<dyn Strategy> {
    match arg {
        StrategyArg::Exit => Box::new(exit::Exit),
        StrategyArg::Queue => Box::new(queue::Queue::new(policy)),
        StrategyArg::Triple => Box::new(triple::Triple::default()),
        StrategyArg::Freeze => Box::new(freeze::Freeze::new(freeze::DEFAULT_MAX_PAUSE)),
    }
}

/// Warns if a restored snapshot was taken with another strategy than `ours`.
pub fn warn_on_foreign(ours: Code, origin: Origin<'_>) {
    if let Some(line) = foreign(ours, origin) {
        warn!("{line}");
    }
}

/// The warning for a restored snapshot of another strategy than `ours`, naming both.
fn foreign(ours: Code, origin: Origin<'_>) -> Option<String> {
    let Origin::Restored(info) = origin else {
        return None;
    };
    let theirs = match Code::from_code(info.meta.strategy) {
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
    use shmsnap_linux::snapshot::SnapshotMeta;

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
        let i = info(Code::Exit.code());
        let line = foreign(Code::Queue, Origin::Restored(&i)).unwrap();
        assert!(line.contains("the exit strategy"), "{line}");
        assert!(line.contains("the queue strategy"), "{line}");
        assert!(!line.contains(char::is_numeric), "{line}");
        let same = info(Code::Queue.code());
        assert_eq!(foreign(Code::Queue, Origin::Restored(&same)), None);
        assert_eq!(foreign(Code::Queue, Origin::Empty), None);
        let odd = info(99);
        let line = foreign(Code::Exit, Origin::Restored(&odd)).unwrap();
        assert!(line.contains("unknown strategy (footer code 99)"), "{line}");
    }

    #[test]
    fn each_command_line_strategy_has_its_own_code() {
        assert_eq!(from_arg(StrategyArg::Exit).code(), Code::Exit);
        assert_eq!(from_arg(StrategyArg::Queue).code(), Code::Queue);
        assert_eq!(from_arg(StrategyArg::Triple).code(), Code::Triple);
    }
}
