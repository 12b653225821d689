//! The command line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cgroup::CgroupMode;
use crate::exit::EXIT_CODES_HELP;
use crate::logging::LogFormat;

/// Keep a program's in-memory state safe on disk, consistent even across SIGKILL.
///
/// shmsnap runs your program (the client) with a shared-memory file (a memfd) at fd 3, passed
/// the systemd way (LISTEN_FDS=1, LISTEN_FDNAMES=SHM_SHARED_FD, LISTEN_PID). Before the client
/// starts, shmsnap restores the newest snapshot into it; while the client runs, it snapshots
/// the memory to disk; when the client dies — even by SIGKILL — the memory survives in
/// shmsnap, gets a final snapshot, and the restarted client finds its state intact.
#[derive(Debug, Parser)]
#[command(name = "shmsnap", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Log lines on stderr: text for people, json (one object per line) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a client under supervision, with its state restored and snapshotted.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Describe a snapshot file: layout, entries, footer, age, checksum.
    Inspect(InspectArgs),
    /// Check a snapshot file; exit 0 if and only if it is sound.
    Verify(VerifyArgs),
    /// Write a point of a replica as a standalone snapshot file.
    Restore(RestoreArgs),
    /// Show what shmsnap does: run the bundled primes client, SIGKILL it a few times, and
    /// check after every restart that its primes survived and are correct.
    Demo(DemoArgs),
    /// Run a bundled example client (they expect to be started by `shmsnap run`).
    Example(ExampleArgs),
    /// Print the completion script for a shell, e.g. `shmsnap completions bash`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write every page into a directory with --dir.
    Man(ManArgs),
    /// Internal: exec shim that sets LISTEN_PID to its own pid, then execs the client.
    #[command(name = "__exec", hide = true)]
    Exec {
        /// The cgroup v2 directory to join before the exec (the client's cgroup).
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
        /// The client command.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<OsString>,
    },
}

const RUN_HELP: &str = "\
Strategies:
  exit   Snapshot only when the client exits (or is killed). Works for any program, whatever
         it keeps in the memfd. A SIGKILL of shmsnap itself loses the work since the last
         client exit.
  queue  The client commits through the shmsnap-core writer (a wait-free ring of sequence
         descriptors). shmsnap snapshots continuously, keeping only entries it proves were
         not modified during the copy, and skips a snapshot when nothing was committed.
  triple The client publishes whole states into N >= 3 buffers (shmsnap-core's triple
         buffer). shmsnap persists the newest published buffer at every interval (never
         starved: it copies one frozen buffer, not the region), skips when nothing new was
         published, and maps the region read-write (it flips the buffers' state words).

Signals:
  SIGUSR1          take a snapshot now (queue and triple strategies)
  SIGTERM, SIGINT  forwarded to the client; after it exits (or --stop-timeout, then SIGKILL),
                   a final snapshot, then shmsnap exits: 0 when the final snapshot was
                   persisted or there was nothing new to persist (a requested stop that saved
                   the state is a success, also for systemd), 74 when the final snapshot failed
                   (the previous snapshot stays on disk)

State file:
  FILE is replaced atomically (temp file, fdatasync, rename, directory fsync); FILE.1 ..
  FILE.N keep the previous generations (--keep). A cut (crash, power loss) at any moment
  leaves FILE complete, old or new, and every generation --keep promised.
  FILE.lock (created beside FILE, never deleted, always empty) carries an flock held for the
  host's life: a second host on the same FILE exits at once with status 75; the lock dies
  with the process, so a killed host leaves no stale lock.
  A symbolic link at FILE is refused (replacing it would turn the link into a regular file):
  pass the real file.

Processes:
  The client gets PDEATHSIG=SIGKILL and its own process group; shmsnap is a child subreaper.
  While shmsnap lives, everything the client started is killed when the client exits and
  when shmsnap exits. A SIGKILL of shmsnap itself kills only the client (PDEATHSIG): its
  descendants run on. With --cgroup auto (the default), when shmsnap runs in a cgroup v2
  subtree it may manage (not the root cgroup; under systemd only with Delegate=yes; a
  container's own cgroup; Linux 5.14+), the client runs in a child cgroup,
  <shmsnap's cgroup>/shmsnap-<hash of FILE>, killed whole (cgroup.kill) when the client
  exits and when shmsnap exits, then removed; after a SIGKILL of shmsnap, the next shmsnap
  on the same FILE kills what is left in it before it starts the client. Without such a
  cgroup (--cgroup off, or none manageable: the mode is logged at start), a SIGKILLed
  shmsnap leaves the client's descendants running.
Examples:
  shmsnap run --state /var/lib/app/state.snap --size 64M -- ./app --flag
  shmsnap run --state primes.snap --strategy queue --interval 200ms -- shmsnap example primes
  shmsnap run --state life.snap --strategy triple --interval 200ms -- shmsnap example life";

/// How the region is coordinated and snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Snapshot when the client exits (any client).
    Exit,
    /// Continuous consistent snapshots of a shmsnap-core queue.
    Queue,
    /// The newest whole state published into a shmsnap-core triple buffer.
    Triple,
}

/// When to restart the client after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    /// Never: shmsnap exits with the client's status.
    Never,
    /// When the client exits with a non-zero status or is killed by a signal.
    OnFailure,
    /// Always, whatever its status.
    Always,
}

/// `shmsnap run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The snapshot file (created if missing; restored from if present).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// Minimum size of the shared memory, e.g. 64M (K, M, G suffixes; binary units): a
    /// multiple of the page size, 4096 (other values are refused, not rounded). The region is
    /// at least SIZE; a larger snapshot is restored at its own size. Default: the snapshot's
    /// size, or 64M without a snapshot.
    #[arg(long, value_name = "SIZE", value_parser = parse_region_size)]
    pub size: Option<u64>,
    /// How snapshots are taken.
    #[arg(long, value_enum, default_value_t = StrategyArg::Exit)]
    pub strategy: StrategyArg,
    /// Snapshot interval for the queue and triple strategies, e.g. 100ms, 2s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// When to restart the client.
    #[arg(long, value_enum, default_value_t = RestartArg::OnFailure)]
    pub restart: RestartArg,
    /// Previous snapshot generations to keep (FILE.1 newest .. FILE.N oldest), 0 to 1000.
    /// Older generations are removed once a new snapshot is durable.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_keep)]
    pub keep: usize,
    /// If the newest snapshot is unusable, restore the newest sound older generation instead
    /// of stopping (the unusable file is renamed aside, never deleted).
    #[arg(long)]
    pub fallback: bool,
    /// Name of the fd in LISTEN_FDNAMES (clients look for it; also the fd-store name).
    #[arg(long, value_name = "NAME", default_value = shmsnap_linux::listen::DEFAULT_FD_NAME)]
    pub fd_name: String,
    /// How long to wait for the client to exit after forwarding SIGTERM/SIGINT, before SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub stop_timeout: Duration,
    /// Longest pause between restarts: the pause starts at 100ms and doubles after each quick
    /// failure (a run shorter than 10s), up to exactly this value.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub max_backoff: Duration,
    /// Run the client in a child cgroup of shmsnap's own (cgroup v2), killed whole; see
    /// "Processes" below.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = CgroupMode::Auto)]
    pub cgroup: CgroupMode,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9187 (port 0: any
    /// free port, logged at start).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// Ship every persisted snapshot to object storage: s3://BUCKET/PREFIX (configured by
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL; plain http
    /// only with AWS_ALLOW_HTTP=true) or file:///ABS/PATH. When FILE is missing, the newest
    /// point of the replica is restored before the client starts.
    #[arg(long, value_name = "URL")]
    pub replica: Option<String>,
    /// What the replica keeps: N base generations (with their deltas), or those younger than
    /// a DURATION (e.g. 7d); the newest is always kept.
    #[arg(long, value_name = "N|DURATION", default_value = "3", requires = "replica",
          value_parser = crate::replica::upload::parse_keep)]
    pub replica_keep: crate::replica::upload::Keep,
    /// The client command and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `shmsnap restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The replica: s3://BUCKET/PREFIX or file:///ABS/PATH (as for `run --replica`).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The snapshot file to write (atomically: temp file, fsync, rename, directory fsync).
    #[arg(long, value_name = "OUT")]
    pub to: PathBuf,
    /// The newest point taken at or before TIME (RFC 3339, e.g. 2026-11-25T21:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = crate::replica::restore::parse_time)]
    pub at: Option<u64>,
    /// If an object is corrupt or missing, restore the newest sound older point instead.
    #[arg(long)]
    pub fallback: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

/// `shmsnap completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `shmsnap man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The page of this subcommand (shmsnap-SUBCOMMAND(1)) instead of shmsnap(1).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
    /// Write every page (shmsnap.1, shmsnap-run.1, ...) into DIR instead of printing one.
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub dir: Option<PathBuf>,
}

/// `shmsnap inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The snapshot file.
    #[arg(required_unless_present = "replica", conflicts_with = "replica")]
    pub file: Option<PathBuf>,
    /// Describe a replica instead: generations, points, the lease, the newest point.
    #[arg(long, value_name = "URL")]
    pub replica: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `shmsnap verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The snapshot file.
    pub file: PathBuf,
}

/// `shmsnap demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many times to SIGKILL the client.
    #[arg(long, default_value_t = 3)]
    pub kills: u32,
    /// Keep the demo's directory instead of removing it.
    #[arg(long)]
    pub keep_dir: bool,
}

/// `shmsnap example`.
#[derive(Debug, Args)]
pub struct ExampleArgs {
    /// Which example.
    #[command(subcommand)]
    pub which: Example,
}

/// The bundled example clients.
#[derive(Debug, Subcommand)]
pub enum Example {
    /// Appends primes into frozen tail units; verifies every restored prime on start.
    Primes {
        /// Stop after this many primes (0: until the tail is full).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Pause between commits, e.g. 1ms (0 for none).
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        pause: Duration,
        /// Primes per commit (one tail unit each).
        #[arg(long, default_value_t = 64)]
        batch: u64,
        /// After reaching --limit, stay alive (idle) this long before exiting, e.g. 1h.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        linger: Duration,
        /// Every N commits, ask the host for a snapshot, wait until it is durable and print
        /// "acknowledged COUNT" (0: never). Needs `--strategy queue` (the host's status area).
        #[arg(long, default_value_t = 0)]
        ack: u64,
    },
    /// Conway's Game of Life on a triple buffer: verifies the restored board on start, then
    /// publishes every generation (run it with `--strategy triple`).
    Life {
        /// Generations to step before exiting (0: forever).
        #[arg(long, default_value_t = 0)]
        generations: u64,
        /// Pause between generations, e.g. 1ms.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        pause: Duration,
        /// Board side in cells (the board is SIDE x SIDE, a multiple of 8, 8 to 4096).
        #[arg(long, default_value_t = 256, value_parser = crate::examples::life::parse_side)]
        side: u32,
        /// Seed of the initial board.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A persistent key-value map with copy-on-write nodes in reclaimed tail units.
    Kv {
        /// Operations to perform before exiting.
        #[arg(long, default_value_t = 1000)]
        ops: u64,
        /// Pause between operations, e.g. 1ms.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        pause: Duration,
    },
}

/// Parses sizes like `4096`, `64K`, `64M`, `1G`, `1GiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (use e.g. 4096, 64K, 16M, 1G)"))
}

/// Parses a `--size`: [`parse_size()`], then a nonzero multiple of the page size (the region
/// format's unit), refused otherwise with the nearest valid sizes.
pub fn parse_region_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    let page = shmsnap_core::PAGE_SIZE;
    if n == 0 {
        return Err(format!("the size must be at least one page ({page} bytes)"));
    }
    if !n.is_multiple_of(page) {
        let down = n / page * page;
        let up = down.saturating_add(page);
        let hint = if down == 0 {
            format!("{up}")
        } else {
            format!("{down} or {up}")
        };
        return Err(format!(
            "{n} bytes is not a multiple of the page size ({page} bytes); use e.g. {hint}"
        ));
    }
    Ok(n)
}

/// Parses a `--keep`: 0 to [`MAX_KEEP`](shmsnap_linux::persist::MAX_KEEP).
pub fn parse_keep(s: &str) -> Result<usize, String> {
    let max = shmsnap_linux::persist::MAX_KEEP;
    match s.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("expected a number of generations from 0 to {max}")),
    }
}

/// Parses durations like `100ms`, `2s`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 100ms, 2s, 1m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_durations_accept_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn region_sizes_are_whole_pages() {
        assert_eq!(parse_region_size("64M"), Ok(64 << 20));
        assert_eq!(parse_region_size("8192"), Ok(8192));
        let e = parse_region_size("1000001").unwrap_err();
        assert!(
            e.contains("page size") && e.contains("999424 or 1003520"),
            "{e}"
        );
        assert!(parse_region_size("4102").is_err());
        assert!(parse_region_size("100").unwrap_err().contains("4096"));
        assert!(parse_region_size("0")
            .unwrap_err()
            .contains("at least one page"));
    }

    #[test]
    fn keep_is_bounded() {
        assert_eq!(parse_keep("0"), Ok(0));
        assert_eq!(parse_keep("1000"), Ok(1000));
        for bad in ["1001", "18446744073709551615", "-1", "many"] {
            assert!(parse_keep(bad).unwrap_err().contains("0 to 1000"), "{bad}");
        }
    }
}
