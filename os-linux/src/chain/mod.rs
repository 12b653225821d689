//! The snapshot chain on disk: a base (today's snapshot file) plus delta segments, each holding
//! the page runs written since the previous link, chained to it by generation and CRC.
//!
//! | module | idea |
//! |---|---|
//! | `format` | the delta's bytes: [`DeltaFooter`] (128 bytes), the run table, [`plan_runs`], names |
//! | `write` | [`DeltaWriter`]: temp → runs → footer → `fdatasync` → `rename` → dir `fsync`; [`remove_superseded`] |
//! | `listing` | [`ChainListing`]: base footer + every delta's footer, table and links, up to the first bad one |
//! | `points` | [`ChainListing::check_points`]: where the chain ends and why — data CRCs and the image check of every point |
//! | `restore` | [`restore_chain`] into a memfd and [`materialize`] a point as a standalone file, CRCs checked while copying; [`verify_chain`] |
//! | `policy` | [`CompactionPolicy`]: delta or new base |
//! | `error` | [`ChainError`] = the file's path + a matchable [`ChainErrorKind`] |
//!
//! Byte-by-byte layout: `docs/FORMAT.md`, "Snapshot chain".
//!
//! # On disk
//!
//! ```text
//! state.snap                  base, generation g (a snapshot file: image + 56-byte footer)
//! state.snap.1                previous base (the persister's generations), generation g'
//! state.snap.d/               the chain directory (mode 0700, created on the first delta)
//!   0000…000g-00000001.delta  delta 1 of base g: runs of the image written since the base
//!   0000…000g-00000002.delta  delta 2 of base g, chained to delta 1
//!   0000…00g'-00000001.delta  delta 1 of base g' (kept while state.snap.1 is)
//!   .delta.tmp.<random>       a delta being written (never read; removed by the cleanup)
//! ```
//!
//! Names are `<base generation: 20 digits>-<position: 8 digits>.delta`: they sort in chain
//! order, and a delta finds its base by generation, not by file name (the persister renames
//! bases as generations rotate). Deltas live in their own directory so that the persister's
//! `state.snap.<i>` namespace and its temp-file sweep stay untouched, and a delta's rename and
//! directory `fsync` touch only the chain directory.
//!
//! # The chain
//!
//! A delta's footer records the base's generation, image length, strategy and image CRC, its
//! position, and `parent_crc` = the footer CRC of the link before it (the base's for position
//! 1). Each footer's own CRC covers `parent_crc`, so the footers form a hash chain: a delta
//! from another chain, a stale delta of a reused generation, or one whose predecessor was
//! replaced, does not link and ends the chain. The state is **the newest complete, correctly
//! chained prefix whose every point passes the image check**: a reader walks positions 1, 2,
//! … and stops at the first delta that is missing, not a regular file, torn (no footer),
//! corrupt (a CRC), does not link, or yields an image that fails the image check
//! ([`ChainListing::stop`] names it and why; [`ChainListing::check_points`] is the one place
//! that decides it, for `verify`, `inspect` and every restore); everything after it is
//! ignored, never applied.
//!
//! # Durability
//!
//! A delta is written under a temp name, `fdatasync`ed, renamed to its name with
//! `RENAME_NOREPLACE` (an existing name is never overwritten: the host writes a base instead;
//! on a file system without the flag, the fallback of [`crate::noreplace`]),
//! and the chain directory is `fsync`ed: when [`DeltaWriter::commit`] returns, the delta is
//! durable. A crash before the rename leaves only a temp file; between the rename and the
//! directory sync the rename may be undone, and the delta's data was already synced, so it is
//! either absent or complete. Either way the chain restores to the old or the new state.
//!
//! A chain is superseded when its base leaves the persister's kept generations; the persister
//! removes an old base only after the new one is durable, and [`remove_superseded`] removes
//! only deltas whose base is gone: nothing is deleted before its replacement is durable.
//!
//! # How the host uses this
//!
//! The host's queue strategy takes one incremental snapshot with
//! [`take_delta`](crate::take_delta::take_delta) — pre, scan, copy the planned runs into a
//! [`DeltaWriter`], post/retain on the copied meta pages — and commits the pending delta, whose
//! [`DeltaInfo::tip`] the next delta chains onto. It takes a full base instead (then
//! `Tip::of_base` and [`remove_superseded`]) whenever tracking cannot vouch for a page, when
//! [`CompactionPolicy::decide`] says so, or when a commit fails (e.g.
//! [`ChainErrorKind::Occupied`]): a wrong delta is data loss, a full base is only slower. A
//! delta attempt that starves is not a reason for a base: its scan is carried into
//! the next delta ([`Carry`](crate::take_delta::Carry)). At
//! start it restores with [`restore_chain`] (newest base first, falling back to older
//! generations on [`ChainErrorKind::Base`]); `shmsnap restore` is [`materialize`] into an
//! [`AtomicFile`](crate::atomic_file::AtomicFile). docs/DESIGN.md §11 says why each step is
//! where it is.

mod error;
mod format;
mod listing;
mod points;
mod policy;
mod restore;
mod write;

pub use error::{ChainError, ChainErrorKind};
pub use format::{
    check_runs, decode_delta_footer, decode_table, delta_name, encode_delta_footer, encode_table,
    parse_delta_name, plan_runs, table_len, DeltaFooter, Run, CHAIN_DIR_SUFFIX, DELTA_FOOTER_LEN,
    DELTA_MAGIC, DELTA_VERSION, GRANULE, RUN_BYTES,
};
pub use listing::{check_link, open_delta, read_delta, At, ChainListing, DeltaEntry};
pub use points::DataCrc;
pub use policy::{BaseReason, CompactionPolicy, Next};
pub use restore::{materialize, restore_chain, verify_chain, RestoreReport};
pub use write::{
    chain_dir, highest_generation, remove_superseded, Cleanup, DeltaInfo, DeltaMeta, DeltaStats,
    DeltaWriter, Tip, MAX_INDEX,
};

#[cfg(test)]
mod tests;
