//! The values that flow between the host's parts on a snapshot: where the region came from
//! ([`Origin`]), what an attempt did ([`Outcome`], [`Report`], [`Point`]), and who is told
//! once a snapshot is persisted ([`Sink`]). This module imports nothing from the host, so
//! every part may use it; the direction of the flow is drawn in docs/DESIGN.md §2.

use std::path::Path;
use std::time::Duration;

use shmsnap_linux::snapshot::SnapshotInfo;

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

/// What one snapshot attempt did.
#[derive(Debug)]
pub enum Outcome {
    /// A snapshot was persisted.
    Persisted(Report),
    /// Nothing was persisted, for a harmless reason.
    Skipped(String),
    /// Nothing was persisted, for a harmless reason worth one info line (the strategy returns
    /// it once, then [`Outcome::Skipped`] for the same reason).
    Notice(String),
    /// Nothing was persisted because the region is not what the strategy expects.
    Invalid(String),
    /// Entries existed but none survived the copy: the ring is too small for the copy time.
    Starved {
        /// Copy time.
        copy: Duration,
        /// Commits made during the copy.
        commits_during_copy: u64,
        /// Valid entries before the copy.
        pre: u64,
    },
}

/// Which file a persisted snapshot wrote: the point of the chain it added.
///
/// The file is found by name right after the snapshot is persisted, on the worker thread,
/// before the next snapshot can rotate generations: a base is the persister's target
/// (`--state FILE`), a delta is `chain::delta_name(base_generation, index)` in
/// `chain::chain_dir(target)`. Whoever ships points elsewhere (replicas) opens the file then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A full snapshot file (a base of the chain), generation `generation`.
    Base {
        /// The base's generation (its footer's).
        generation: u64,
    },
    /// Delta `index` (1, 2, …) of the base of generation `base_generation`.
    Delta {
        /// The generation of the base the delta extends.
        base_generation: u64,
        /// The delta's position in its chain (1 = right after the base).
        index: u32,
    },
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Base { generation } => write!(f, "base {generation}"),
            Point::Delta {
                base_generation,
                index,
            } => write!(f, "delta {index} of base {base_generation}"),
        }
    }
}

/// Figures of a persisted snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// What was written: a new base or a delta on the current one.
    pub point: Point,
    /// Generation number.
    pub generation: u64,
    /// Bytes of data extents copied.
    pub bytes: u64,
    /// Entries kept (queue strategy).
    pub kept: u64,
    /// Entries dropped because they changed during the copy.
    pub dropped: u64,
    /// Newest kept seq.
    pub newest_seq: u64,
    /// The write-tracking scan before the copy (incremental snapshots: a delta's, or the
    /// arming scan before a base), when one ran.
    pub scan: Option<Duration>,
    /// Phase timings.
    pub copy: Duration,
    /// Validation (post read, retain, footer with CRC).
    pub validate: Duration,
    /// fdatasync of the temp file.
    pub sync: Duration,
    /// Generation shuffle, rename and directory fsync.
    pub rename: Duration,
    /// For a base the queue strategy took because it could not prove that only the client's
    /// tracked mapping writes the region: why (`track::Unproven::label`, for the metrics).
    pub unproven: Option<&'static str>,
}

/// One of the parties told about every persisted snapshot (the status area, a replica): the
/// snapshotter calls each, in order, right after the commit returned and before the next
/// snapshot can rotate the file away.
pub trait Sink: Send + std::fmt::Debug {
    /// `report` was persisted into the chain of the state file `target`.
    fn persisted(&self, report: &Report, target: &Path);
}
