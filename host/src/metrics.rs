//! Prometheus metrics: the families the supervisor updates and a tiny HTTP server for them.
//!
//! The supervisor owns a [`Metrics`] (cheap to clone: every family is shared) and calls
//! [`Metrics::record_snapshot`], [`Metrics::client_started`], [`Metrics::client_exited`] and
//! [`Metrics::set_region_size`]; with `--metrics ADDR`, [`Metrics::serve`] answers
//! `GET /metrics` from one std thread (the host has no async runtime and needs none for a
//! scrape every few seconds).
//!
//! Everything here takes plain values, not the snapshotter's types, so the snapshotter can
//! change without touching the metrics.
//!
//! Every metric is listed in `README.md` ("Operations").

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tracing::{debug, info, warn};

/// How a snapshot attempt ended (the `result` label of `shmsnap_snapshots_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotResult {
    /// A new snapshot file is durable on disk.
    Persisted,
    /// Nothing was committed since the last snapshot: nothing written.
    Skipped,
    /// No entry could be proven unmodified during the copy: nothing written.
    Starved,
    /// An error (I/O, validation): nothing written; the previous snapshot stays.
    Failed,
}

impl SnapshotResult {
    fn label(self) -> &'static str {
        match self {
            SnapshotResult::Persisted => "persisted",
            SnapshotResult::Skipped => "skipped",
            SnapshotResult::Starved => "starved",
            SnapshotResult::Failed => "failed",
        }
    }
}

/// A timed part of a snapshot (the `phase` label of `shmsnap_snapshot_phase_duration_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Finding the written pages (incremental snapshots).
    Scan,
    /// Copying the region into the temporary file.
    Copy,
    /// Checking which entries survived the copy unmodified.
    Validate,
    /// `fdatasync` of the file (and its directory).
    Sync,
    /// The `rename` that publishes it (and the rotation of older generations).
    Rename,
    /// Sending it to a replica (recorded by the uploader, [`Metrics::record_phase`]).
    Upload,
    /// The time the client was stopped (freeze strategy): freeze, copy into the staging,
    /// thaw.
    Pause,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Scan => "scan",
            Phase::Copy => "copy",
            Phase::Validate => "validate",
            Phase::Sync => "sync",
            Phase::Rename => "rename",
            Phase::Upload => "upload",
            Phase::Pause => "pause",
        }
    }
}

/// One snapshot attempt, as the snapshotter reports it (plain values only).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotRecord {
    /// How it ended; `None` counts nothing (a default record is inert).
    pub result: Option<SnapshotResult>,
    /// Time spent in each phase that ran (a phase may appear once; skipped phases are absent).
    pub phases: Vec<(Phase, Duration)>,
    /// Bytes copied out of the region.
    pub bytes_copied: u64,
    /// Entries proven unmodified and kept in the file.
    pub entries_kept: u64,
    /// Entries dropped because they may have changed during the copy.
    pub entries_dropped: u64,
    /// The generation of the persisted file, if one was persisted.
    pub generation: Option<u64>,
    /// A full base taken because the host could not prove that only the client's tracked
    /// mapping writes the region: why (`track::Unproven::label`).
    pub unproven: Option<&'static str>,
}

/// The reasons of `shmsnap_incremental_unproven_total` (`track::Unproven::label`), each
/// present at 0 from the first scrape.
const UNPROVEN_REASONS: [&str; 4] = [
    "not_sealed",
    "registration",
    "other_writer",
    "census_failed",
];

/// The reasons of `shmsnap_freeze_abandoned_total`, each present at 0 from the first scrape:
/// `timeout` (not stopped within --max-pause), `copy_timeout` (the copy would have run past
/// it), and the freeze module's `io`, `unreadable`, `gone`.
pub const FREEZE_ABANDON_REASONS: [&str; 5] =
    ["timeout", "copy_timeout", "io", "unreadable", "gone"];

/// Why the client stopped (the `cause` and `code` labels of `shmsnap_client_exits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientExit {
    /// It exited with this status.
    Code(i32),
    /// A signal (by number) killed it.
    Signal(i32),
    /// It could not be started (exec failed).
    SpawnFailed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    /// `exit`, `signal` or `spawn_failed`.
    cause: &'static str,
    /// The exit status (`0`..`255`), the signal's name (`SIGKILL`), or empty.
    code: String,
}

impl From<ClientExit> for ExitLabels {
    fn from(e: ClientExit) -> Self {
        match e {
            ClientExit::Code(c) => ExitLabels {
                cause: "exit",
                code: c.to_string(),
            },
            ClientExit::Signal(s) => ExitLabels {
                cause: "signal",
                code: signal_name(s),
            },
            ClientExit::SpawnFailed => ExitLabels {
                cause: "spawn_failed",
                code: String::new(),
            },
        }
    }
}

/// `SIGKILL` for 9; the number for signals without a well-known name (the label set stays
/// bounded: there are at most 64 signals).
fn signal_name(n: i32) -> String {
    const NAMES: [&str; 16] = [
        "", "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
        "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
    ];
    match usize::try_from(n).ok().and_then(|i| NAMES.get(i)) {
        Some(name) if !name.is_empty() => (*name).to_owned(),
        _ => format!("SIG{n}"),
    }
}

/// Snapshot durations: 0.5 ms doubling to about 16 s (a 256 MiB snapshot takes ~50–250 ms).
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

/// The age of the newest persisted snapshot, computed at scrape time.
#[derive(Debug)]
struct SnapshotAge {
    /// When the last snapshot was persisted, or when the host started if none was yet (so an
    /// alert on the age fires for a host that never persists anything).
    since: Mutex<Instant>,
}

impl SnapshotAge {
    fn touch(&self, now: Instant) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    fn seconds(&self) -> f64 {
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.elapsed().as_secs_f64()
    }
}

impl Collector for SnapshotAge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.seconds());
        let metric = encoder.encode_descriptor(
            "last_persisted_snapshot_age",
            "Seconds since the last snapshot was persisted (since the host started if none was)",
            Some(&Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// How far the replica is behind, computed at scrape time: the gauge keeps growing while an
/// upload or an outage holds the uploader up, instead of freezing at its last update.
#[derive(Debug, Default)]
struct ReplicaLag {
    /// When the oldest point not yet in the bucket was persisted locally; `None` when caught up.
    behind_since: Mutex<Option<Instant>>,
}

impl ReplicaLag {
    fn seconds(&self) -> f64 {
        let since = *self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
        since.map_or(0.0, |s| s.elapsed().as_secs_f64())
    }
}

impl Collector for ReplicaLag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(self.seconds());
        let metric = encoder.encode_descriptor(
            "replica_lag",
            "How far the replica is behind: age of the oldest locally persisted point not in the bucket (0 when the newest point is in it); grows while uploads are held up for any reason",
            Some(&Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// How far a standby is behind the bucket, computed at scrape time: since when it saw a point
/// in the bucket that it has not applied yet (`None`: caught up, or not a standby).
#[derive(Debug, Default)]
struct StandbyLag {
    behind_since: Mutex<Option<Instant>>,
}

impl Collector for StandbyLag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let since = *self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = ConstGauge::new(since.map_or(0.0, |s| s.elapsed().as_secs_f64()));
        let metric = encoder.encode_descriptor(
            "standby_lag",
            "A standby: seconds since it first saw a point in the bucket it has not applied yet (0 when caught up, and on a primary)",
            Some(&Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// A host's part in failover (`shmsnap_role{role}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease, runs the client, uploads.
    Primary,
    /// Follows the bucket, client not started.
    Standby,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// What the replica does (the `state` label of `shmsnap_replica_state`; one series is 1, the
/// others 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// The lease is held and points reach the bucket (or nothing is pending).
    Uploading,
    /// Uploads are held up, for now: no lease yet, an outage, a failed upload being retried.
    Waiting,
    /// Uploads stopped until the host restarts (the lease went to another host, the store
    /// cannot carry a lease). Local snapshots go on.
    Stopped,
}

impl ReplicaState {
    fn label(self) -> &'static str {
        match self {
            ReplicaState::Uploading => "uploading",
            ReplicaState::Waiting => "waiting",
            ReplicaState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The host's metric families. Clones share them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    snapshots: Family<ResultLabel, Counter>,
    phase_seconds: Family<PhaseLabel, Histogram, fn() -> Histogram>,
    copied_bytes: Counter,
    entries_kept: Counter,
    entries_dropped: Counter,
    /// Bases taken because only-the-tracked-writer could not be proven, by reason.
    unproven: Family<ReasonLabel, Counter>,
    generation: Gauge,
    last_persisted_unix: Gauge<f64, std::sync::atomic::AtomicU64>,
    age: Arc<SnapshotAge>,
    client_starts: Counter,
    client_exits: Family<ExitLabels, Counter>,
    region_size: Gauge,
    /// Seconds the bucket is behind: since the oldest point not yet in it was persisted.
    replica_lag: Arc<ReplicaLag>,
    replica_uploaded_bytes: Counter,
    replica_errors: Counter,
    replica_backlog: Gauge,
    /// One series per [`ReplicaState`]; only present with a replica.
    replica_state: Family<StateLabel, Gauge>,
    /// The current state (`None` before the first report), to log changes once.
    replica_state_now: Arc<Mutex<Option<ReplicaState>>>,
    /// `shmsnap_role{role}`: 1 for the current role.
    role: Family<RoleLabel, Gauge>,
    standby_lag: Arc<StandbyLag>,
    /// Bytes a standby downloaded to follow the bucket (its local chain).
    standby_downloaded_bytes: Counter,
    /// Points a standby applied to its local chain (each verified first).
    standby_points: Counter,
    /// Triple snapshot attempts that refused the client's state words.
    triple_refused: Counter,
    /// Dead clients' claims the host cleared before a restart (or at start).
    claims_reclaimed: Counter,
    /// Interval ticks that fell while a snapshot was still running (skipped, not queued).
    ticks_skipped: Counter,
    /// Freeze-strategy attempts abandoned (the client thawed, nothing persisted), by reason.
    freeze_abandoned: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, at zero; the snapshot age counts from now.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("shmsnap");
        let m = Metrics {
            registry: Arc::default(),
            snapshots: Family::default(),
            phase_seconds: Family::new_with_constructor(|| Histogram::new(duration_buckets())),
            copied_bytes: Counter::default(),
            entries_kept: Counter::default(),
            entries_dropped: Counter::default(),
            unproven: Family::default(),
            generation: Gauge::default(),
            last_persisted_unix: Gauge::default(),
            age: Arc::new(SnapshotAge {
                since: Mutex::new(Instant::now()),
            }),
            client_starts: Counter::default(),
            client_exits: Family::default(),
            region_size: Gauge::default(),
            replica_lag: Arc::default(),
            replica_uploaded_bytes: Counter::default(),
            replica_errors: Counter::default(),
            replica_backlog: Gauge::default(),
            replica_state: Family::default(),
            replica_state_now: Arc::default(),
            role: Family::default(),
            standby_lag: Arc::default(),
            standby_downloaded_bytes: Counter::default(),
            standby_points: Counter::default(),
            triple_refused: Counter::default(),
            claims_reclaimed: Counter::default(),
            ticks_skipped: Counter::default(),
            freeze_abandoned: Family::default(),
        };
        m.register_all(&mut r);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Registers every family in `r` (the names get the registry's `shmsnap_` prefix).
    fn register_all(&self, r: &mut Registry) {
        r.register(
            "build",
            "The shmsnap version (always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        self.register_snapshots(r);
        self.register_client(r);
        self.register_replica(r);
        r.register(
            "triple_refused_states",
            "Triple snapshot attempts that refused the state words: a READY seq above what the client published, or a newest seq below the last persisted one within one client epoch",
            self.triple_refused.clone(),
        );
        r.register(
            "claims_reclaimed",
            "Claims of dead clients on the region cleared by the host (before a restart, or at start for an inherited region)",
            self.claims_reclaimed.clone(),
        );
        r.register(
            "snapshot_ticks_skipped",
            "Interval ticks skipped because a snapshot was still running when they fell due (snapshots start at a fixed rate; a long snapshot skips ticks instead of queueing them)",
            self.ticks_skipped.clone(),
        );
        r.register(
            "freeze_abandoned",
            "Freeze-strategy snapshot attempts abandoned (client thawed, nothing persisted) by reason: timeout (not stopped within --max-pause), copy_timeout (the copy would have run past it), io, unreadable (/proc or cgroup.events), gone (the client exited)",
            self.freeze_abandoned.clone(),
        );
        for reason in FREEZE_ABANDON_REASONS {
            let _ = self.freeze_abandoned.get_or_create(&ReasonLabel { reason });
        }
    }

    /// The snapshot families: attempts, phases, bytes, entries, generation, last persisted.
    fn register_snapshots(&self, r: &mut Registry) {
        r.register(
            "snapshots",
            "Snapshot attempts by result: persisted, skipped (nothing committed), starved (no entry survived the copy), failed",
            self.snapshots.clone(),
        );
        // Every result appears at 0 from the first scrape, so rate() and alerts see theself.
        for result in [
            SnapshotResult::Persisted,
            SnapshotResult::Skipped,
            SnapshotResult::Starved,
            SnapshotResult::Failed,
        ] {
            let _ = self.snapshots.get_or_create(&ResultLabel {
                result: result.label(),
            });
        }
        r.register_with_unit(
            "snapshot_phase_duration",
            "Time spent in each phase of a snapshot: scan, copy, validate, sync, rename, upload; pause: the time the client was stopped (freeze strategy)",
            Unit::Seconds,
            self.phase_seconds.clone(),
        );
        r.register_with_unit(
            "snapshot_copied",
            "Bytes copied out of the region by snapshots",
            Unit::Bytes,
            self.copied_bytes.clone(),
        );
        r.register(
            "snapshot_entries_kept",
            "Entries proven unmodified during the copy and kept",
            self.entries_kept.clone(),
        );
        r.register(
            "snapshot_entries_dropped",
            "Entries dropped because they may have changed during the copy",
            self.entries_dropped.clone(),
        );
        r.register(
            "incremental_unproven",
            "Full snapshots taken (queue strategy, incremental on) because the host could not prove that only the client's tracked mapping writes the region, by reason: not_sealed, registration (no DONTFORK or no tracking on the client's mapping), other_writer (another process maps it writable), census_failed",
            self.unproven.clone(),
        );
        for reason in UNPROVEN_REASONS {
            let _ = self.unproven.get_or_create(&ReasonLabel { reason });
        }
        r.register(
            "snapshot_generation",
            "Generation of the newest persisted snapshot",
            self.generation.clone(),
        );
        r.register_with_unit(
            "last_persisted_snapshot_timestamp",
            "Unix time of the last persisted snapshot (0: none since the host started)",
            Unit::Seconds,
            self.last_persisted_unix.clone(),
        );
        r.register_collector(Box::new(self.age.clone()));
    }

    /// The client's families: starts, exits, the region's size.
    fn register_client(&self, r: &mut Registry) {
        r.register(
            "client_starts",
            "Times the client was started",
            self.client_starts.clone(),
        );
        r.register(
            "client_exits",
            "Client exits by cause (exit, signal, spawn_failed) and code (status or signal name)",
            self.client_exits.clone(),
        );
        r.register_with_unit(
            "region_size",
            "Size of the shared memory region",
            Unit::Bytes,
            self.region_size.clone(),
        );
    }

    /// The replica's families: lag, uploaded bytes, errors, backlog, state.
    fn register_replica(&self, r: &mut Registry) {
        r.register_collector(Box::new(self.replica_lag.clone()));
        r.register_collector(Box::new(self.standby_lag.clone()));
        r.register(
            "role",
            "The host's part in failover (run --replica): 1 for the current role (primary: holds the lease and runs the client; standby: follows the bucket)",
            self.role.clone(),
        );
        r.register_with_unit(
            "standby_downloaded",
            "Bytes a standby downloaded to follow the bucket (only the new deltas of the generation it holds, a new generation's base once)",
            Unit::Bytes,
            self.standby_downloaded_bytes.clone(),
        );
        r.register(
            "standby_points_applied",
            "Steps a standby made to a newer point of the bucket (each downloaded and verified before it was applied)",
            self.standby_points.clone(),
        );
        r.register_with_unit(
            "replica_uploaded",
            "Bytes of points uploaded to the replica",
            Unit::Bytes,
            self.replica_uploaded_bytes.clone(),
        );
        r.register(
            "replica_errors",
            "Failed replica requests (uploads, lease, listing, retention) and unreadable points",
            self.replica_errors.clone(),
        );
        r.register(
            "replica_backlog",
            "Points waiting for upload to the replica",
            self.replica_backlog.clone(),
        );
        r.register(
            "replica_state",
            "What the replica uploader does: uploading (lease held, points reach the bucket), waiting (held up for now: no lease, an outage, retries), stopped (until a restart: lease lost, store unusable); 1 for the current state",
            self.replica_state.clone(),
        );
    }

    /// Counts one abandoned freeze (`reason`: one of [`FREEZE_ABANDON_REASONS`]).
    pub fn freeze_abandoned(&self, reason: &'static str) {
        self.freeze_abandoned
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one snapshot attempt: its result, phase times, bytes, entries and generation.
    pub fn record_snapshot(&self, s: &SnapshotRecord) {
        let Some(result) = s.result else { return };
        self.snapshots
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .inc();
        for &(phase, d) in &s.phases {
            self.record_phase(phase, d);
        }
        self.copied_bytes.inc_by(s.bytes_copied);
        self.entries_kept.inc_by(s.entries_kept);
        self.entries_dropped.inc_by(s.entries_dropped);
        if let Some(reason) = s.unproven {
            self.unproven.get_or_create(&ReasonLabel { reason }).inc();
        }
        if result == SnapshotResult::Persisted {
            if let Some(g) = s.generation {
                self.generation.set(i64::try_from(g).unwrap_or(i64::MAX));
            }
            self.age.touch(Instant::now());
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_persisted_unix.set(unix);
        }
    }

    /// Records the time one phase of a snapshot took.
    pub fn record_phase(&self, phase: Phase, d: Duration) {
        self.phase_seconds
            .get_or_create(&PhaseLabel {
                phase: phase.label(),
            })
            .observe(d.as_secs_f64());
    }

    /// Records since when the replica is behind (`None`: caught up); the lag itself is computed
    /// at each scrape.
    pub fn replica_behind_since(&self, since: Option<Instant>) {
        *self
            .replica_lag
            .behind_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = since;
    }

    /// Sets the replica's state, logging a change with `why`. `Stopped` is final: later
    /// reports of another state are ignored.
    pub fn replica_state(&self, state: ReplicaState, why: &str) {
        let mut now = self
            .replica_state_now
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *now == Some(state) || *now == Some(ReplicaState::Stopped) {
            return;
        }
        match state {
            ReplicaState::Uploading => info!("replica: uploading ({why})"),
            ReplicaState::Waiting => warn!("replica: waiting: {why}"),
            ReplicaState::Stopped => tracing::error!("replica: stopped: {why}"),
        }
        *now = Some(state);
        for s in [
            ReplicaState::Uploading,
            ReplicaState::Waiting,
            ReplicaState::Stopped,
        ] {
            self.replica_state
                .get_or_create(&StateLabel { state: s.label() })
                .set(i64::from(s == state));
        }
    }

    /// Sets the host's role (logged by the caller, with why).
    pub fn role(&self, role: Role) {
        for r in [Role::Primary, Role::Standby] {
            self.role
                .get_or_create(&RoleLabel { role: r.label() })
                .set(i64::from(r == role));
        }
    }

    /// Records since when a standby is behind the bucket (`None`: caught up).
    pub fn standby_behind_since(&self, since: Option<Instant>) {
        *self
            .standby_lag
            .behind_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = since;
    }

    /// Counts the bytes a standby's step downloaded, and the step if it reached a newer point.
    pub fn standby_applied(&self, bytes: u64, moved: bool) {
        if moved {
            self.standby_points.inc();
        }
        self.standby_downloaded_bytes.inc_by(bytes);
    }

    /// Counts bytes uploaded to the replica.
    pub fn replica_uploaded(&self, bytes: u64) {
        self.replica_uploaded_bytes.inc_by(bytes);
    }

    /// Counts a replica failure.
    pub fn replica_error(&self) {
        self.replica_errors.inc();
    }

    /// Counts a triple snapshot attempt that refused the client's state words.
    pub fn triple_state_refused(&self) {
        self.triple_refused.inc();
    }

    /// Counts a dead client's claim the host cleared.
    pub fn claim_reclaimed(&self) {
        self.claims_reclaimed.inc();
    }

    /// Counts `n` interval ticks skipped while a snapshot ran.
    pub fn ticks_skipped(&self, n: u64) {
        self.ticks_skipped.inc_by(n);
    }

    /// Sets the number of points waiting for upload.
    pub fn replica_backlog(&self, points: usize) {
        self.replica_backlog
            .set(i64::try_from(points).unwrap_or(i64::MAX));
    }

    /// Counts a client start.
    pub fn client_started(&self) {
        self.client_starts.inc();
    }

    /// Counts a client exit by its cause.
    pub fn client_exited(&self, cause: ClientExit) {
        self.client_exits.get_or_create(&cause.into()).inc();
    }

    /// Sets the region's size in bytes (at start, and after it grows).
    pub fn set_region_size(&self, bytes: u64) {
        self.region_size
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The metrics in the Prometheus text format 0.0.4, or OpenMetrics 1.0 if `openmetrics`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        let r = match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
        };
        if let Err(e) = r {
            // Only a failing fmt::Write can fail, and a String never does.
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }

    /// Binds `addr` and answers `GET /metrics` from a thread, for the life of the process.
    /// Returns the bound address (the port is chosen when `addr` has port 0).
    ///
    /// # Errors
    ///
    /// If the address cannot be bound (in use, not local, no permission).
    pub fn serve(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            if let Err(e) = metrics.answer(stream) {
                                debug!("metrics: a scrape failed: {e}");
                            }
                        }
                        // EMFILE and friends: back off a little instead of spinning.
                        Err(e) => {
                            warn!("metrics: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        info!("serving metrics on http://{bound}/metrics");
        Ok(bound)
    }

    /// Answers one connection (then closes it). One at a time: a slow client holds the
    /// server for at most [`IO_TIMEOUT`] per read or write.
    fn answer(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let head = read_head(&mut stream)?;
        let response = match Request::parse(&head) {
            Some(req) => self.respond(&req),
            None => Response::text(400, "Bad Request", "bad request\n"),
        };
        response.write_to(&mut stream, head.starts_with(b"HEAD "))
    }

    fn respond(&self, req: &Request) -> Response {
        if req.path != "/metrics" {
            return Response::text(404, "Not Found", "not found; try /metrics\n");
        }
        if req.method != "GET" && req.method != "HEAD" {
            return Response::text(405, "Method Not Allowed", "use GET\n");
        }
        let format = if req.accepts_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        };
        Response {
            status: 200,
            reason: "OK",
            content_type: format.content_type(),
            body: self.encode(format).into_bytes(),
        }
    }
}

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (the default; what `promtool check metrics` reads).
    Prometheus,
    /// OpenMetrics 1.0 text, served when the scraper's `Accept` asks for it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` that goes with it.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Longest wait for one read or write of a scrape.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head accepted (a scraper sends a few hundred bytes).
const MAX_HEAD: usize = 8 << 10;

/// Reads up to the blank line that ends the request head, at most [`MAX_HEAD`] bytes.
fn read_head(stream: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let want = buf.len().min(MAX_HEAD - head.len());
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// The parts of a request head that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// Without the query string.
    path: String,
    accepts_openmetrics: bool,
}

impl Request {
    /// `None` for anything that is not `METHOD PATH HTTP/1.x` followed by header lines.
    fn parse(head: &[u8]) -> Option<Request> {
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split("\r\n");
        let mut parts = lines.next()?.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !version.starts_with("HTTP/1.") {
            return None;
        }
        let path = target.split('?').next().unwrap_or(target);
        let accepts_openmetrics = lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
            })
        });
        Some(Request {
            method: method.to_owned(),
            path: path.to_owned(),
            accepts_openmetrics,
        })
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
        }
    }

    fn write_to(&self, w: &mut impl Write, head_only: bool) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        w.write_all(&bytes)?;
        w.flush()
    }
}

/// Parses `--metrics ADDR`: `127.0.0.1:9187`, `[::1]:9187`, `localhost:9187` (port 0: any free
/// port, logged at start).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let hint = "(use e.g. 127.0.0.1:9187, [::1]:9187 or localhost:9187)";
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s} resolves to no address {hint}")),
        Err(e) => Err(format!("{s}: {e} {hint}")),
    }
}

#[cfg(test)]
mod tests;
