//! The freeze strategy: any client, snapshotted while it runs (DESIGN §17).
//!
//! Every interval (and on SIGUSR1, and a client's request) the client's processes are stopped
//! — the cgroup freezer when the host manages a cgroup for the client, else `SIGSTOP` to its
//! process group — the region's data extents are copied into the staging (anonymous memory),
//! the client is resumed, and only then is the staged image written, synced and renamed. The
//! snapshot is exactly what a SIGKILL of the client at that instant would leave: the exit
//! strategy's image (its footer says `exit`, so `inspect`, `verify`, `restore`, replicas and
//! a later `--strategy exit` treat both alike). After the client exits, its final snapshot
//! is taken without a freeze, as the exit strategy does.
//!
//! `--max-pause` bounds the stop: a freeze not complete by then, or a copy that would run
//! past it, is abandoned — the client resumes, a warning is logged and counted
//! (`shmsnap_freeze_abandoned_total{reason}`), nothing is persisted, the previous snapshot
//! stays. The pause (stop request to resume request) is the `pause` phase of
//! `shmsnap_snapshot_phase_duration_seconds` and part of the snapshot log line.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::Pid;
use shmsnap_linux::freeze::{CgroupFreezer, Freezer, ProcessGroup, Staging};
use shmsnap_linux::Mapping;
use tracing::{debug, info, warn};

use super::{Cx, OnUsr1, Schedule, Strategy, StrategyKind};
use crate::flow::{Outcome, Report};
use crate::metrics::Metrics;

/// Test only: milliseconds the host sleeps inside each pause, with the client frozen, so a
/// test can SIGKILL the host mid-pause. Never set it in production: the client stays stopped
/// that long (and longer than `--max-pause` abandons every snapshot).
pub const PAUSE_HOOK_ENV: &str = "SHMSNAP_TEST_PAUSE_MS";

/// The freeze strategy.
///
/// Invariant: the client is never left stopped when [`Strategy::take`] returns, unwinds or
/// fails (the freeze module's guard thaws on every path).
#[derive(Debug)]
pub struct Freeze {
    /// `--max-pause`: the longest the client is stopped for one snapshot.
    max_pause: Duration,
    /// The client's cgroup, when the host manages one (then frozen instead of signalled).
    cgroup: Option<PathBuf>,
    /// The region's data, staged during the pause; its memory is kept between snapshots.
    staging: Staging,
    /// For the abandoned-freeze counter.
    metrics: Option<Metrics>,
    /// [`PAUSE_HOOK_ENV`], read once.
    test_pause: Option<Duration>,
}

impl Freeze {
    /// The strategy with `--max-pause` `max_pause`.
    pub fn new(max_pause: Duration) -> Self {
        let test_pause = std::env::var(PAUSE_HOOK_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        if let Some(d) = test_pause {
            warn!("{PAUSE_HOOK_ENV} is set: every pause sleeps {d:?} with the client frozen (a test hook)");
        }
        Freeze {
            max_pause,
            cgroup: None,
            staging: Staging::new(),
            metrics: None,
            test_pause,
        }
    }

    /// How the running client `pid` is stopped.
    fn freezer(&self, pid: Pid) -> Freezer {
        match &self.cgroup {
            Some(dir) => Freezer::Cgroup(CgroupFreezer::new(dir)),
            // The client leads its own process group (the supervisor starts it so).
            None => Freezer::Signal(ProcessGroup::new(pid)),
        }
    }

    /// Stops the client, stages the region, resumes it, then persists the staged image.
    fn take_frozen(&mut self, cx: &Cx<'_>, pid: Pid) -> io::Result<Outcome> {
        let len = cx.memfd.len()?;
        let freezer = self.freezer(pid);
        let frozen = match freezer.freeze(self.max_pause) {
            Ok(f) => f,
            Err(e) => return Ok(self.abandon(e.reason(), freezer.name(), &e.to_string())),
        };
        if let Some(d) = self.test_pause {
            info!("test hook ({PAUSE_HOOK_ENV}): sleeping {d:?} with the client frozen");
            std::thread::sleep(d);
        }
        let until = frozen.since() + self.max_pause;
        let staged = self.staging.capture(cx.memfd, cx.map, len, Some(until));
        let froze_in = frozen.froze_in();
        let pause = frozen.thaw()?;
        match staged {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                let why = format!(
                    "copying {len} bytes would stop the client longer than --max-pause {:?}",
                    self.max_pause
                );
                return Ok(self.abandon("copy_timeout", freezer.name(), &why));
            }
            Err(e) => return Err(e),
        }
        debug!(
            mechanism = freezer.name(),
            froze_ms = froze_in.as_secs_f64() * 1e3,
            pause_ms = pause.as_secs_f64() * 1e3,
            "client resumed"
        );
        let t = Instant::now();
        let tmp = cx.persister.begin()?;
        let (_, copy) = self.staging.write_snapshot(tmp.file(), cx.meta)?;
        let written = t.elapsed();
        let stats = tmp.commit_durable()?;
        Ok(Outcome::Persisted(Report {
            pause: Some(pause),
            ..super::exit::raw_report(cx, copy.bytes, written, &stats)
        }))
    }

    /// An abandoned attempt (the client is running again): warned (a client that exited
    /// meanwhile only at debug level: its final snapshot follows), counted, skipped.
    fn abandon(&self, reason: &'static str, mechanism: &str, why: &str) -> Outcome {
        if let Some(m) = &self.metrics {
            m.freeze_abandoned(reason);
        }
        let line = format!(
            "freeze snapshot abandoned ({mechanism} freeze): {why}; the client runs on, the \
             previous snapshot stays"
        );
        if reason == "gone" {
            debug!("{line}");
        } else {
            warn!("{line}");
        }
        Outcome::Skipped(line)
    }
}

impl Strategy for Freeze {
    fn kind(&self) -> StrategyKind {
        // The image is the exit strategy's: the region as a SIGKILL would leave it.
        StrategyKind::Exit
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            ticks: true,
            on_usr1: OnUsr1::Snapshot,
            final_at_exit: true,
        }
    }

    fn attach_metrics(&mut self, metrics: &Metrics) {
        self.metrics = Some(metrics.clone());
    }

    fn attach_cgroup(&mut self, dir: Option<&std::path::Path>) {
        self.cgroup = dir.map(std::path::Path::to_path_buf);
    }

    fn unchanged(&self, _map: &Mapping) -> bool {
        // No written-page signal for an unmodified program here (soft-dirty is not built
        // into every kernel): every request copies.
        false
    }

    fn take(&mut self, cx: Cx<'_>) -> io::Result<Outcome> {
        match (cx.client_alive, cx.client) {
            (true, Some(pid)) => self.take_frozen(&cx, pid),
            // Nobody runs: the exit strategy's copy, straight from the region.
            (false, _) => super::exit::Exit.take(cx),
            (true, None) => Ok(Outcome::Skipped(
                "the client's pid is unknown (merged requests of two clients)".into(),
            )),
        }
    }
}
