//! What the commands are asked to do, as plain values: the CLI ([`crate::cli`]) turns its
//! clap arguments into these, and nothing below the CLI sees clap (docs/DESIGN.md §2).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shmsnap_core::Strategy as StrategyKind;
use shmsnap_linux::chain::CompactionPolicy;

use crate::cgroup::CgroupMode;

/// `shmsnap run`: see its `--help` for each value.
#[derive(Debug)]
pub struct RunConfig {
    /// The state file (`--state`).
    pub state: PathBuf,
    /// The region's minimum size, whole pages (`--size`); `None`: the snapshot's, or 64M.
    pub size: Option<u64>,
    /// The kind of image the strategy writes (`--strategy`; `freeze` writes `Exit` images).
    pub strategy: StrategyKind,
    /// `--strategy freeze`: the longest the client may be stopped (`--max-pause`); `None`
    /// for the other strategies.
    pub freeze_max_pause: Option<Duration>,
    /// Snapshot interval (`--interval`).
    pub interval: Duration,
    /// When the client is restarted (`--restart`).
    pub restart: Restart,
    /// Previous generations kept, 0 to `MAX_KEEP` (`--keep`).
    pub keep: usize,
    /// Skip unreadable or newer-format bases at start too (`--fallback`).
    pub fallback: bool,
    /// The fd's name in `LISTEN_FDNAMES` and the fd store (`--fd-name`).
    pub fd_name: String,
    /// Wait for the client's exit after a forwarded stop signal (`--stop-timeout`).
    pub stop_timeout: Duration,
    /// Longest pause between restarts (`--max-backoff`).
    pub max_backoff: Duration,
    /// The client's own cgroup (`--cgroup`).
    pub cgroup: CgroupMode,
    /// Where metrics are served (`--metrics`).
    pub metrics: Option<SocketAddr>,
    /// Snapshots may be deltas: the queue strategy with `--incremental auto`; the client
    /// then tracks its writes.
    pub incremental: bool,
    /// When a new base replaces a delta (`--compact-ratio`, `--compact-deltas`).
    pub compaction: CompactionPolicy,
    /// The replica's URL (`--replica`).
    pub replica: Option<String>,
    /// What the replica keeps (`--replica-keep`).
    pub replica_keep: Keep,
    /// The lease's TTL (`--lease-ttl`).
    pub lease_ttl: Duration,
    /// Take part in failover (`--standby`).
    pub standby: bool,
    /// Stop the client when the lease is lost (`--on-lease-loss stop`, the default).
    pub stop_on_lease_loss: bool,
    /// The client command and its arguments (never empty).
    pub command: Vec<OsString>,
}

/// When to restart the client after it exits (`--restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Never: shmsnap exits with the client's status.
    Never,
    /// When the client exits with a non-zero status or is killed by a signal.
    OnFailure,
    /// Always, whatever its status.
    Always,
}

/// `shmsnap restore`: one point written as a standalone snapshot file.
#[derive(Debug)]
pub struct RestoreRequest {
    /// Where the point comes from.
    pub source: Source,
    /// The snapshot file to write (`--to`).
    pub to: PathBuf,
    /// The newest point taken at or before this time, ns since the epoch (`--at`).
    pub at: Option<u64>,
    /// The newest point with no entry past this seq (`--seq`, not with a replica).
    pub seq: Option<u64>,
    /// Skip what cannot be read and restore an older sound point (`--fallback`).
    pub fallback: bool,
    /// Replace `to` if it exists (`--force`).
    pub force: bool,
}

/// Where `restore` reads from.
#[derive(Debug)]
pub enum Source {
    /// A state file's chains (`--state`).
    State(PathBuf),
    /// A replica's URL (`--from`).
    Replica(String),
}

/// How many generations, or how old, the bucket keeps (`--replica-keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The newest N base generations, each with its deltas (N >= 1).
    Generations(u64),
    /// Generations whose base is younger than this (the newest is always kept).
    Age(Duration),
}

impl Default for Keep {
    fn default() -> Self {
        Keep::Generations(3)
    }
}

/// Parses `--replica-keep`: a count (1 or more) or a duration (`7d`, `12h`).
///
/// # Errors
///
/// A message for clap.
pub fn parse_keep(s: &str) -> Result<Keep, String> {
    if let Ok(n) = s.parse::<u64>() {
        return if n >= 1 {
            Ok(Keep::Generations(n))
        } else {
            Err("keep at least 1 generation".into())
        };
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Keep::Age(d)),
        _ => Err("expected a number of generations (e.g. 3) or a duration (e.g. 7d, 12h)".into()),
    }
}
