//! The command line.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cgroup::CgroupMode;
use crate::config::{Restart, RestoreRequest, RunConfig, Source};
use crate::exit::EXIT_CODES_HELP;
use crate::logging::LogFormat;
use shmsnap_core::Strategy as StrategyKind;
use shmsnap_linux::chain::CompactionPolicy;

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
    /// Describe a snapshot file: layout, entries, footer, age, checksum, and its chain.
    #[command(after_help = CHAIN_HELP)]
    Inspect(InspectArgs),
    /// Check a snapshot file and its chain; exit 0 if and only if all of it is sound.
    #[command(after_help = CHAIN_HELP)]
    Verify(VerifyArgs),
    /// Write one point of a state's chain or of a replica (the newest, or one in the past)
    /// as a standalone snapshot file.
    #[command(after_help = RESTORE_HELP)]
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
  freeze Any program, snapshotted while it runs: every --interval (and on SIGUSR1, and when
         the client exits) shmsnap stops the client's processes, copies the region's data,
         resumes them, then writes and syncs the snapshot. A snapshot is exactly what a
         SIGKILL of the client at that instant would leave (the exit strategy's promise,
         every interval): a program that survives kill -9 under the exit strategy survives
         a crash of shmsnap or the machine, losing at most one interval (plus the snapshot
         time). The client is stopped by the cgroup freezer when shmsnap manages a cgroup for
         it (--cgroup auto; invisible to the client except as lost time), else by SIGSTOP /
         SIGCONT to its process group (visible: a parent sees the stop and the continue
         through waitpid/SIGCHLD, a tracer sees them, a SIGCONT handler runs; processes
         that left the group with setsid/setpgid are not stopped). --max-pause bounds the
         stop: an attempt that would exceed it (a task in uninterruptible sleep, a copy too
         long) is abandoned — the client resumes, a warning is logged and counted
         (shmsnap_freeze_abandoned_total), the previous snapshot stays. The pause is logged
         with each snapshot and exported as shmsnap_snapshot_phase_duration_seconds
         {phase=\"pause\"}. Snapshot files are the exit strategy's (footer strategy \"exit\").
         Nothing can stop a device or io_uring writing into the region. A shmsnap killed
         during a pause never leaves the client stopped: with signals, PDEATHSIG kills it;
         with the cgroup, the client dies with shmsnap and the next shmsnap thaws and kills
         what is left in the cgroup.

Signals:
  SIGUSR1          take a snapshot now (queue, triple and freeze strategies)
  SIGTERM, SIGINT  forwarded to the client; after it exits (or --stop-timeout, then SIGKILL),
                   a final snapshot, then shmsnap exits: 0 when the final snapshot was
                   persisted or there was nothing new to persist (a requested stop that saved
                   the state is a success, also for systemd), 74 when the final snapshot failed
                   (the previous snapshot stays on disk). A --standby host before its client
                   started exits 0 at once and never takes the lease after the signal; one
                   that had just taken it releases it first (the next standby takes over)

State file:
  FILE is replaced atomically (temp file, fdatasync, rename, directory fsync); FILE.1 ..
  FILE.N keep the previous generations (--keep). A cut (crash, power loss) at any moment
  leaves FILE complete, old or new, and every generation --keep promised.
  FILE.lock (created beside FILE, never deleted, always empty) carries an flock held for the
  host's life: a second host on the same FILE exits at once with status 75; the lock dies
  with the process, so a killed host leaves no stale lock.
  A symbolic link at FILE is refused (replacing it would turn the link into a regular file):
  pass the real file.
  Generations never repeat: each new base gets 1 + the highest generation of FILE, FILE.N,
  FILE.d and the bases set aside; a state holding generation 18446744073709551615 (u64::MAX,
  only a forged footer gets there) has none left: run exits 65 at start, naming it.

Which state is restored at start (the same answer as verify, inspect and restore):
  The newest generation's base plus its deltas up to the first one that is missing, torn,
  corrupt, does not link, is not a regular file, or yields an image that fails the image
  check (queue header and descriptors, triple meta); that delta is named in a warning.
  If the newest generation yields no point because its base is corrupt (footer, CRC or image
  check), it is skipped: the newest restorable point of an older generation (FILE.1's chain,
  then FILE.2's, ...) is restored, and the skipped base is renamed to FILE.corrupt-<time>
  (kept, never deleted; out of the rotation), with a warning naming what was skipped and
  what is used. A base that cannot be read (I/O error, not a regular file) or is of a newer
  format version stops the host (65/66/74) unless --fallback, which skips it the same way.
  If no generation yields a point, the host exits 65 and nothing is renamed. The same rules
  restore a region found corrupt after its client exited (any unusable base is skipped).

Incremental snapshots (queue strategy, --incremental auto):
  The client's shmsnap-linux registers write tracking over its mapping (userfaultfd async
  write-protect; only when the host sets SHMSNAP_TRACK=1, which it does under this mode) and
  advertises it in the region header. The host then scans the pages the
  client wrote since the previous snapshot (PAGEMAP_SCAN) and writes a delta holding only
  those pages and the queue's meta pages into FILE.d/, chained by CRC to the base FILE.
  A full base is written instead whenever tracking cannot vouch for every page: the first
  snapshot, a new client process, no tracking (old kernel, sandbox), a scan error, after the
  host wrote the region (restore, repair), after a failed delta, and for compaction. A delta
  attempt that starves keeps what its scan reported: the next snapshot is still a delta,
  carrying those pages too, not a base that would starve in turn.
  Tracking vouches only for one process writing through one mapping: the client library
  makes that mapping the only writer (a forked child does not inherit it: SIGSEGV if it
  touches it; the region is sealed, so write/pwrite through any fd and new writable mappings
  fail with EPERM). The host checks this before it relies on tracking (the mapping is not
  inherited, the region is sealed — it seals it itself if needed — and no other process maps
  it writable, found through /proc); otherwise every snapshot is a full base, the reason is
  logged once and counted in shmsnap_incremental_unproven_total{reason}. A sealed region is
  moved into a fresh memfd (a copy: its data exists twice meanwhile) before the client is
  restarted, and at start when it comes from the fd store, whose entry is replaced.
  Compaction: when the deltas would total more than --compact-ratio percent of the base's
  bytes, or the chain holds --compact-deltas deltas, the next snapshot is a new base (a full
  copy of the live region, not a merge of the old chain); the superseded chain is removed
  only after the new base is durable. --keep counts bases: each kept base keeps its deltas.
  At start, the newest base plus every sound delta is restored (see Which state is
  restored at start, above; CRCs checked while copying).
  Deltas are named with renameat2(RENAME_NOREPLACE); on a file system without it (some FUSE
  and network file systems) the host says so once at warn, naming the file system, and
  uses link + unlink instead (or, without hard links, a check then rename under FILE.lock):
  never a second write or sync per snapshot.

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
  One writer per region: a queue or triple client's writer claims the region with its pid
  (a second writer is refused, naming that pid). A client killed by a signal leaves its
  claim behind; after its final snapshot, and before restarting it, shmsnap clears it (its
  process tree is dead by then), logs the pid at info and counts it in
  shmsnap_claims_reclaimed_total; at start it clears a claim left in a region from the fd
  store (the previous client died with its host).
Examples:
  shmsnap run --state /var/lib/app/state.snap --size 64M -- ./app --flag
  shmsnap run --state primes.snap --strategy queue --interval 200ms -- shmsnap example primes
  shmsnap run --state life.snap --strategy triple --interval 200ms -- shmsnap example life";

/// Snapshot chains, for `inspect`, `verify` and `restore`.
const CHAIN_HELP: &str = "\
Snapshot chains:
  With incremental snapshots a state file FILE is a base, and FILE.d/ holds deltas: each
  carries only the pages written since the point before it and is chained to it by CRC. The
  state is the base plus its deltas up to the first one that is missing, torn, corrupt,
  does not link, is not a regular file (links are never followed), or whose point fails the
  image check (queue header and descriptors, triple meta: what a restore checks); that one
  and every later one are never applied. verify exits 65 naming it and what a restore would
  use; inspect lists where it stops; restore and run use the point before it.
  A kept generation FILE.1 (FILE.2, ...) has its own deltas in FILE.d/ too (listed by
  inspect). Everything is read only: nothing of FILE's is modified.";

const RESTORE_HELP: &str = "\
Snapshot chains:
  With incremental snapshots a state file FILE is a base, and FILE.d/ holds deltas: each
  carries only the pages written since the point before it and is chained to it by CRC.
  Every base and delta is a point; restore writes one point as a standalone snapshot file
  that `shmsnap verify` accepts and `shmsnap run --state OUT` restores.

Which point:
  (default)     the newest sound point of FILE's chain: its deltas up to the first one
                that is missing, torn, corrupt, does not link, is not a regular file, or
                yields an image that fails the image check (verify names the same one);
                that one and every later one are left out, with a warning
  --at TIME     the newest point taken at or before TIME, in FILE's chain or, if FILE's base
                is newer, in the chain of the newest kept generation (FILE.1, ...) that has
                one. TIME is RFC 3339 (2026-11-25T21:00:00Z, 2026-11-25T22:00:00+01:00; no
                zone = UTC) or @UNIX_SECONDS (@1795734000)
  --seq N       queue strategy: the newest point holding no entry with a seq above N, i.e.
                whose next_seq is at most N+1: the state right after commit N if a point
                was taken then, else the newest one before it (searched like --at)
  A point past a bad delta (its time or seq unknown) is refused, not guessed.
  A chain whose base is corrupt (footer, CRC, image check) holds no point: the point is
  taken from the next older generation that holds one, with a warning naming what was
  skipped and what is used (nothing is renamed: restore only reads the state). A base that
  cannot be read or is of a newer format version exits 65/66/74 unless --fallback.

Output:
  OUT is written atomically and durably (temp file in OUT's directory, fdatasync, rename,
  directory fsync). An existing OUT is kept unless --force (exit 73); OUT naming FILE, a
  kept generation, FILE.lock or FILE.d is refused (exit 64). A point older than every kept
  base exits 66, listing what exists; a corrupt base or a point past a bad delta exits 65;
  a running host that rotated the generations while they were read exits 75 (run again).

From a replica (--from URL, instead of --state):
  The newest point in the bucket, or with --at the newest taken at or before TIME. Every
  object is downloaded and its CRC checked before use; a corrupt or missing object exits 65
  naming its key, unless --fallback, which takes the newest sound older point. Network
  errors exit 74. --seq is not available with --from.

Examples:
  shmsnap restore --state /var/lib/app/state.snap --to /tmp/now.snap
  shmsnap restore --state state.snap --to before.snap --at 2026-11-25T21:00:00Z
  shmsnap restore --state state.snap --to at-seq.snap --seq 41500
  shmsnap restore --from s3://bucket/app --to /var/lib/app/state.snap";

/// How the region is coordinated and snapshotted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Snapshot when the client exits (any client).
    Exit,
    /// Continuous consistent snapshots of a shmsnap-core queue.
    Queue,
    /// The newest whole state published into a shmsnap-core triple buffer.
    Triple,
    /// Any client, snapshotted while it runs: every interval the client is stopped (cgroup
    /// freezer, else SIGSTOP), its region copied, and it is resumed; see "Freeze strategy".
    Freeze,
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
    /// Snapshot interval for the queue, triple and freeze strategies, e.g. 100ms, 2s.
    /// Snapshots start at a fixed rate, one per interval from the start; a tick that falls
    /// while a snapshot still runs is skipped (shmsnap_snapshot_ticks_skipped_total). Work lost
    /// to a crash of the host or machine: at most one interval plus one snapshot's duration
    /// (plus another interval per tick skipped when snapshots take longer than the interval).
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration, default_value = "1s")]
    pub interval: Duration,
    /// Freeze strategy: the longest the client may be stopped for one snapshot (freeze +
    /// copy). An attempt that would stop it longer is abandoned: the client resumes, a
    /// warning is logged and counted, nothing is persisted.
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration, default_value = "1s")]
    pub max_pause: Duration,
    /// When to restart the client.
    #[arg(long, value_enum, default_value_t = RestartArg::OnFailure)]
    pub restart: RestartArg,
    /// Previous snapshot generations to keep (FILE.1 newest .. FILE.N oldest), 0 to 1000.
    /// Older generations are removed once a new snapshot is durable.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_keep)]
    pub keep: usize,
    /// Also skip a newest base that cannot be read (I/O error, not a regular file) or is of a
    /// newer format version, as a corrupt one always is: restore an older generation and
    /// rename the skipped base aside (never deleted). See "Which state is restored at start" in the help.
    #[arg(long)]
    pub fallback: bool,
    /// Name of the fd in LISTEN_FDNAMES (clients look for it; also the fd-store name).
    #[arg(long, value_name = "NAME", default_value = shmsnap_linux::listen::DEFAULT_FD_NAME)]
    pub fd_name: String,
    /// How long to wait for the client to exit after forwarding SIGTERM/SIGINT, before SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration, default_value = "10s")]
    pub stop_timeout: Duration,
    /// Longest pause between restarts: the pause starts at 100ms and doubles after each quick
    /// failure (a run shorter than 10s), up to exactly this value.
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration, default_value = "10s")]
    pub max_backoff: Duration,
    /// Run the client in a child cgroup of shmsnap's own (cgroup v2), killed whole; see
    /// "Processes" below.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = CgroupMode::Auto)]
    pub cgroup: CgroupMode,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9187 (port 0: any
    /// free port, logged at start).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// Incremental snapshots (queue strategy): auto = the client tracks its writes (when the
    /// kernel allows) and most snapshots are deltas holding only the pages written since the
    /// previous one; off = the client does not track, every snapshot is a full base.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = IncrementalArg::Auto)]
    pub incremental: IncrementalArg,
    /// Compaction: a new base instead of a delta when the chain's deltas would total more
    /// than PERCENT of the base's bytes.
    #[arg(long, value_name = "PERCENT", default_value_t = CompactionPolicy::default().max_ratio_percent,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub compact_ratio: u64,
    /// Compaction: a new base instead of a delta once the chain holds N deltas.
    #[arg(long, value_name = "N", default_value_t = CompactionPolicy::default().max_deltas,
          value_parser = clap::value_parser!(u64).range(1..=shmsnap_linux::chain::MAX_INDEX))]
    pub compact_deltas: u64,
    /// Ship every persisted snapshot to object storage: s3://BUCKET/PREFIX (configured by
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL; plain http
    /// only with AWS_ALLOW_HTTP=true) or file:///ABS/PATH. When FILE is missing, the newest
    /// point of the replica is restored before the client starts.
    #[arg(long, value_name = "URL")]
    pub replica: Option<String>,
    /// What the replica keeps: N base generations (with their deltas), or those younger than
    /// a DURATION (e.g. 7d); the newest is always kept.
    #[arg(long, value_name = "N|DURATION", default_value = "3", requires = "replica",
          value_parser = crate::config::parse_keep)]
    pub replica_keep: crate::config::Keep,
    /// How long the replica's lease lasts without a renewal (2s..1h). It is renewed every
    /// TTL/3, each lease request times out after TTL/10, no upload starts unless the lease
    /// holds TTL/6 longer, and a standby takes over once it saw the lease unchanged for the
    /// holder's TTL: the failover time is about TTL plus the catch-up.
    #[arg(long, value_name = "DURATION", default_value = "30s", requires = "replica",
          value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,
    /// Take part in failover (needs an s3:// replica with conditional writes): take the lease
    /// if it is free, else stand by — follow the bucket without starting the client, and take
    /// over when the primary stops renewing for its TTL. A primary that loses its lease
    /// then becomes a standby (its commits not in the bucket are moved to
    /// FILE.diverged.TIME/).
    #[arg(long, requires = "replica")]
    pub standby: bool,
    /// What a primary does when its lease is lost (taken by another host, or not renewed
    /// within its TTL): stop = stop the client (as on SIGTERM: final local snapshot), then
    /// exit 75 — or, with --standby, become a standby; continue = keep the client running
    /// with local snapshots only (uploads stop either way).
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = LeaseLossArg::Stop, requires = "replica")]
    pub on_lease_loss: LeaseLossArg,
    /// The client command and its arguments.
    #[arg(trailing_var_arg = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// The plain configuration of these arguments.
    pub fn into_config(self) -> RunConfig {
        RunConfig {
            incremental: self.strategy == StrategyArg::Queue
                && self.incremental == IncrementalArg::Auto,
            compaction: CompactionPolicy {
                max_ratio_percent: self.compact_ratio,
                max_deltas: self.compact_deltas,
            },
            strategy: match self.strategy {
                StrategyArg::Exit => StrategyKind::Exit,
                StrategyArg::Queue => StrategyKind::Queue,
                StrategyArg::Triple => StrategyKind::Triple,
                // A freeze snapshot is the image a SIGKILL of the client would leave.
                StrategyArg::Freeze => StrategyKind::Exit,
            },
            freeze_max_pause: (self.strategy == StrategyArg::Freeze).then_some(self.max_pause),
            restart: match self.restart {
                RestartArg::Never => Restart::Never,
                RestartArg::OnFailure => Restart::OnFailure,
                RestartArg::Always => Restart::Always,
            },
            state: self.state,
            size: self.size,
            interval: self.interval,
            keep: self.keep,
            fallback: self.fallback,
            fd_name: self.fd_name,
            stop_timeout: self.stop_timeout,
            max_backoff: self.max_backoff,
            cgroup: self.cgroup,
            metrics: self.metrics,
            replica: self.replica,
            replica_keep: self.replica_keep,
            lease_ttl: self.lease_ttl,
            standby: self.standby,
            stop_on_lease_loss: self.on_lease_loss == LeaseLossArg::Stop,
            command: self.command,
        }
    }
}

/// `--on-lease-loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeaseLossArg {
    /// Stop the client (and exit 75, or become a standby with --standby).
    Stop,
    /// Keep the client running, local snapshots only.
    Continue,
}

/// Parses `--lease-ttl`: a duration within the lease's bounds.
fn parse_lease_ttl(s: &str) -> Result<Duration, String> {
    use crate::replica::lease::{ttl_in_bounds, MAX_TTL, MIN_TTL};
    let d = crate::time::parse_duration(s)?;
    if ttl_in_bounds(d) {
        Ok(d)
    } else {
        Err(format!(
            "the lease TTL must be within {}..{} s",
            MIN_TTL.as_secs(),
            MAX_TTL.as_secs()
        ))
    }
}

/// `--incremental`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IncrementalArg {
    /// Deltas when the client's write tracking vouches for them, full bases otherwise.
    Auto,
    /// Full bases only; the client does not track its writes.
    Off,
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
    /// The snapshot file (a state file, or a kept generation FILE.N).
    #[arg(required_unless_present = "replica", conflicts_with = "replica")]
    pub file: Option<PathBuf>,
    /// Describe a replica instead: generations, points, the lease, the newest point.
    #[arg(long, value_name = "URL")]
    pub replica: Option<String>,
    /// With --replica: download every point and check it as restore would (base CRC and
    /// image check, each delta's footer, link and data CRC); bad points are listed as bad
    /// and the exit status is 65 if there is one.
    #[arg(long, requires = "replica")]
    pub verify: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `shmsnap verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The snapshot file (a state file, or a kept generation FILE.N).
    pub file: PathBuf,
}

/// `shmsnap restore`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["state", "from"])))]
pub struct RestoreArgs {
    /// The state file whose chain to restore from (as given to `run --state`); read only.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Restore from a replica instead: s3://BUCKET/PREFIX or file:///ABS/PATH (configured as
    /// for `run --replica`).
    #[arg(long, value_name = "URL", conflicts_with = "seq")]
    pub from: Option<String>,
    /// The snapshot file to write.
    #[arg(long, value_name = "OUT")]
    pub to: PathBuf,
    /// The newest point taken at or before TIME (RFC 3339 or @UNIX_SECONDS); see below.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse_time, conflicts_with = "seq")]
    pub at: Option<u64>,
    /// The newest point whose next_seq is at most N+1 (no entry past seq N); see below.
    #[arg(long, value_name = "N")]
    pub seq: Option<u64>,
    /// With --from: if an object is corrupt or missing, restore the newest sound older point
    /// instead (the log names what was skipped). With --state: also skip a base that cannot
    /// be read or is of a newer format version, as a corrupt one always is.
    #[arg(long)]
    pub fallback: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

impl RestoreArgs {
    /// The plain request of these arguments.
    pub fn into_request(self) -> RestoreRequest {
        let source = match (self.state, self.from) {
            (Some(state), _) => Source::State(state),
            (None, Some(url)) => Source::Replica(url),
            (None, None) => unreachable!("clap requires --state or --from"),
        };
        RestoreRequest {
            source,
            to: self.to,
            at: self.at,
            seq: self.seq,
            fallback: self.fallback,
            force: self.force,
        }
    }
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
        #[arg(long, value_parser = crate::time::parse_duration, default_value = "0s")]
        pause: Duration,
        /// Primes per commit (one tail unit each).
        #[arg(long, default_value_t = 64)]
        batch: u64,
        /// After reaching --limit, stay alive (idle) this long before exiting, e.g. 1h.
        #[arg(long, value_parser = crate::time::parse_duration, default_value = "0s")]
        linger: Duration,
        /// Every N commits, ask the host for a snapshot, wait until it is durable and print
        /// "acknowledged COUNT" (0: never). Needs `--strategy queue` (the host's status area).
        #[arg(long, default_value_t = 0)]
        ack: u64,
        /// Like --ack, but the acknowledgement waits until the commit is in the host's replica
        /// (`run --replica URL`): COUNT survives losing the machine and a standby's takeover.
        /// Under a host without --replica nothing is ever acknowledged: the client says so on
        /// stderr every 2 s while it waits.
        #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "ack")]
        ack_replicated: u64,
    },
    /// Conway's Game of Life on a triple buffer: verifies the restored board on start, then
    /// publishes every generation (run it with `--strategy triple`).
    Life {
        /// Generations to step before exiting (0: forever).
        #[arg(long, default_value_t = 0)]
        generations: u64,
        /// Pause between generations, e.g. 1ms.
        #[arg(long, value_parser = crate::time::parse_duration, default_value = "0s")]
        pause: Duration,
        /// Board side in cells (the board is SIDE x SIDE, a multiple of 8, 8 to 4096).
        #[arg(long, default_value_t = 256, value_parser = crate::examples::life::parse_side)]
        side: u32,
        /// Seed of the initial board.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Test hook: right after publishing this generation, re-initialise the region
        /// (`--reinit-by`) and go on publishing from seq 1 (the board goes on).
        #[arg(long, hide = true, value_name = "GEN")]
        reinit_at: Option<u64>,
        /// How `--reinit-at` re-initialises: `reinit` (the documented `TripleClient::reinit`)
        /// or `zero-magic` (zero header word 0, then `TripleClient::init`).
        #[arg(long, hide = true, value_enum, default_value = "reinit")]
        reinit_by: crate::examples::life::Reinit,
    },
    /// Test writer (standby trials): 4 KiB pages in copy-on-write tail units, PERCENT of them
    /// rewritten every INTERVAL in COMMITS commits; verifies every restored page on start.
    #[command(hide = true)]
    Pages {
        /// The period in which PERCENT of the pages are rewritten.
        #[arg(long, value_parser = crate::time::parse_duration, default_value = "1s")]
        interval: Duration,
        /// Share of the pages rewritten per interval.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
        percent: u32,
        /// Commits per interval.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        commits: u32,
        /// Stop after this many commits (0: never).
        #[arg(long, default_value_t = 0)]
        limit: u64,
    },
    /// A persistent key-value map with copy-on-write nodes in reclaimed tail units.
    Kv {
        /// Operations to perform before exiting.
        #[arg(long, default_value_t = 1000)]
        ops: u64,
        /// Pause between operations, e.g. 1ms.
        #[arg(long, value_parser = crate::time::parse_duration, default_value = "0s")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_accept_suffixes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
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
