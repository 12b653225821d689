//! loom models of the shmsnap protocol, running `shmsnap-core`'s real code.
//!
//! The protocol is written once over [`WordMemory`](shmsnap_core::WordMemory); this crate implements that trait with
//! loom's atomics and loom's [`fence`](loom::sync::atomic::fence) ([`LoomWords`]), so the
//! models in `tests/` check the code that ships. Nothing of the protocol is re-implemented
//! here: writer, host and reader are core's functions.
//!
//! # Contents (one module per part)
//!
//! - `plan.rs` — [`plan`]: runs a scenario once on plain memory to find the seed image, the
//!   words the concurrent phase stores (they become loom atomics) and every descriptor
//!   committed.
//! - `words.rs` — [`LoomWords`]: the hybrid word memory (loom atomics where the protocol
//!   races, constant plain words elsewhere) and its word-by-word host copy ([`Image`]).
//! - `twins.rs` — broken-twin wrappers: [`Weakened`] (every ordering `Relaxed`, no fences),
//!   [`LateEviction`] (evictions land after the data stores), [`Crashing`] (the writer stops
//!   at its N-th store).
//! - `host.rs` — [`snapshot`]: core's `PreCopy` around a word-by-word copy, sound or broken
//!   ([`Host::PreAsPost`], from `shmsnap-testkit`); [`check_kept`].
//! - `run.rs` — [`explore`] and [`expect_violation`]: run a model, count interleavings, time
//!   it; run a broken twin and check that it fails with the expected assertion.
//! - `recovery.rs` — [`check_recovery`]: attach after a crash or a restore and check the
//!   region.
//! - `claim.rs` — [`claim`]: the claim model's memory ([`claim::ClaimWords`]) and
//!   assertions; its broken twins are [`LoadThenStore`], [`PlainRelease`] and
//!   [`RelaxedRelease`] (and [`Weakened`]).
//!
//! # Why a hybrid memory is sound
//!
//! The smallest region is header page + descriptor page + data page (+ tail): over 1536
//! words. Making every word a loom atomic and copying all of them would only add branch
//! points: a word that no thread stores while the model runs has exactly one value in every
//! execution, so a plain read of it is indistinguishable from a loom load. [`plan`] finds the
//! words the writer stores during the concurrent phase by running the same writer code once
//! on a recording memory (the writer is the only thread that stores, and it reads only its
//! own stores, so it stores the same words in every interleaving); those words become loom
//! atomics. Every other word is a constant seeded from the image before the model; a store to
//! one panics ([`NON_LOOM_STORE`]), so an incomplete word set cannot go unnoticed.

pub mod claim;
mod host;
mod plan;
mod recovery;
mod run;
pub mod triple;
mod twins;
mod words;

pub use host::{check_kept, snapshot, Snapshot};
pub use plan::{plan, Plan, Recording, Store};
pub use recovery::check_recovery;
pub use run::{expect_violation, explore, Stats};
pub use shmsnap_testkit::Host;
pub use twins::{Crashing, LateEviction, LoadThenStore, PlainRelease, RelaxedRelease, Weakened};
pub use words::{Image, LoomWords, WordMap};

/// Panic message of a store into a word the model did not make a loom atomic.
pub const NON_LOOM_STORE: &str = "store into a constant (non-loom) word";
/// Assertion: a kept entry's bytes in the image were never committed under its seq.
pub const TORN: &str = "VIOLATION torn entry";
/// Assertion: a descriptor that was never committed (seq, offset, length together).
pub const NEVER_COMMITTED: &str = "VIOLATION never-committed descriptor";
/// Assertion: an entry evicted before the copy began survived in the image.
pub const EVICTED_SURVIVES: &str = "VIOLATION evicted entry survives";
/// Assertion: a tail unit referred to by a kept entry holds another commit's bytes.
pub const UNIT_TORN: &str = "VIOLATION unit of a kept entry holds bytes of another commit";
/// Assertion: a payload read returned bytes not committed under the seq it reported.
pub const PAYLOAD_TORN: &str = "VIOLATION read_payload returned foreign bytes";
/// Assertion: a recovered or restored region could repeat a published seq.
pub const SEQ_REPEAT: &str = "VIOLATION next seq does not exceed a published seq";
/// Assertion: recovery left the region in an invalid state.
pub const RECOVERY: &str = "VIOLATION recovery";
