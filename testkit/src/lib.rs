//! Test support for shmsnap: the reference model of the queue, the fuzz targets' entry points,
//! and helpers the tests, loom models, simulator and benches share. Not part of the product:
//! `shmsnap-core` carries none of this.
//!
//! # Contents
//!
//! - [`imports`]: the module import graph of a crate's `src/` and its cycles.
//! - [`model`]: [`QueueModel`], a `VecDeque` reference model of the queue, and
//!   [`check_entries`], which compares a region with it.
//! - [`payload`]: [`payload_for`] (bytes that encode their seq) and [`check_image_payloads`].
//! - [`words`]: plain word memories ([`zeroed_words`], [`from_bytes`], [`to_bytes`]).
//! - [`trace`]: [`Recording`], a writer memory that records its [`Store`]s for the
//!   interleaving simulators to replay.
//! - [`host`]: [`host_snapshot`], core's `PreCopy` around a caller's copy, with the broken twin
//!   [`Host::PreAsPost`].
//! - Fuzz entry points (each accepts *any* bytes and panics only on a violated invariant; the
//!   `fuzz/` targets are one-line calls into them, and `tests/fuzz_replay.rs` replays their
//!   corpus on stable):
//!   - [`attach_and_read()`]: a region image decoded from bytes → open, reads, attach/recovery,
//!     fresh commits, re-attach.
//!   - [`retain_arbitrary()`]: an image plus arbitrary `pre`/`post` sets → core's `retain`.
//!   - [`ops()`]: a client/host session (commits, evictions, re-attaches, transactions with
//!     frozen tail units, snapshots and restores) checked against the model after every step.
//!   - [`snapshot_file`]: footer, verify and restore over arbitrary snapshot files, against an
//!     independent CRC-32C oracle and core's whole-image checks.
//!   - [`triple_host`](triple_host::triple_host): the triple-buffer host over arbitrary state,
//!     seq, hint and header words.
//!   - [`chain_agreement`](chain_agreement::chain_agreement): a base and deltas from arbitrary
//!     runs and bytes (CRC-valid garbage meta, zeroed images, damaged, missing and linked
//!     files): `verify` and `restore` end the chain at the same link, which the oracle names,
//!     and the restored image is that point's.
//!
//! - [`lines`]: [`Lines`](lines::Lines), a child's output collected by a thread (end-to-end
//!   tests wait for a line).
//! - [`require`](require::require): a test that needs a tool or kernel feature runs or fails,
//!   never passes silently (unless `SHMSNAP_TEST_ALLOW_MISSING` names what may be missing).
//!
//! Tests claim regions with [`CLIENT`] (or [`claim_id`]`(n)` for several claimants).
//!
//! Fuzz inputs are decoded by a cursor that yields zeros past the end (`input`), and region
//! images are built from them in `image`; decoders prefer values near the protocol's limits
//! (`MAX_SEQ`, `MAX_STREAM`, the ring size) so the fuzzer reaches the edges.

pub mod attach_and_read;
pub mod chain_agreement;
pub mod host;
mod image;
pub mod imports;
mod input;
pub mod lines;
pub mod model;
pub mod ops;
pub mod payload;
pub mod require;
pub mod retain_arbitrary;
pub mod snapshot_file;
pub mod trace;
pub mod triple_host;
pub mod words;

pub use attach_and_read::attach_and_read;
pub use host::{host_snapshot, Host, HostSnapshot};
pub use model::{check_entries, ModelEntry, QueueModel};
pub use ops::ops;
pub use payload::{check_image_payloads, payload_for};
pub use retain_arbitrary::retain_arbitrary;
pub use trace::{Landing, Recording, Replay, Store};
pub use words::{from_bytes, to_bytes, zeroed_words};

use shmsnap_core::ClaimId;

/// A claim id for tests and fuzz targets: "pid" `n` (nonzero) with the nonce `0x7e57`.
///
/// # Panics
///
/// For `n == 0` (pid 0 is not a process).
pub const fn claim_id(n: u32) -> ClaimId {
    match ClaimId::from_pid(n, 0x7e57) {
        Some(id) => id,
        None => panic!("claim_id(0): pid 0 is not a process"),
    }
}

/// The claim id of the one client in a test or fuzz session ([`claim_id`]`(1)`).
pub const CLIENT: ClaimId = claim_id(1);
