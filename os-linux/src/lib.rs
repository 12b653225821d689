//! Linux adapters for shmsnap, built on [`rustix`]: every syscall the host and the clients make
//! goes through this crate, and every one of them through rustix (no hand-written `libc` calls).
//!
//! | module | idea |
//! |---|---|
//! | [`memfd`] | the region's file: create, grow, seal against shrinking, adopt an inherited fd |
//! | [`mapping`] | owned RAII `MAP_SHARED` mapping, seen as core's atomic words |
//! | [`client`] | client side: the region as one value ([`ClientRegion`]: memfd, mapping, claim id), its writer borrowed mutably, durability calls |
//! | [`listen`] | client side: find the region fd the systemd way (`LISTEN_FDS`) |
//! | [`copy`] | sparse copy of data extents (`SEEK_DATA`/`SEEK_HOLE`, `copy_file_range`, `sendfile`) |
//! | [`freeze`] | stop a client's processes for a copy (cgroup freezer or `SIGSTOP` to its group), thawed by an RAII guard |
//! | [`snapshot`] | snapshot file = image + footer (see `FOOTER.md`): open, write, verify (streamed, queue image checked), restore |
//! | [`atomic_file`] | the one durable write of a file: temp file, `fdatasync`, rename (replace or not), directory `fsync`, one crash hook |
//! | [`persist`] | atomic replace of a file with N kept generations |
//! | [`noreplace`] | give a file its name without replacing one: `RENAME_NOREPLACE`, or a fallback the file system has, detected once |
//! | [`reclaim`] | clear the claim of a dead holder, checked with `kill(2)` and `/proc`: for embedders without a supervisor |
//! | [`status`] | durability feedback: host status publisher, client `wait_persisted` / `wait_replicated`, snapshot requests (futex) |
//! | [`take`] | one queue snapshot of a live region: pre → copy → post → retain → footer |
//! | [`take_delta`] | one incremental queue snapshot: scan → pre → copy the written pages → post → delta |
//! | [`take_triple`] | one triple-buffer snapshot: freeze → copy one buffer → meta → release → footer |
//! | [`handover`] | start a child with the region at fd 3 and a correct `LISTEN_PID` |
//! | [`track`] | write tracking: client userfaultfd async write-protect, host `PAGEMAP_SCAN`, and the host's proof that nothing else writes the region (seal, `DONTFORK`, `/proc` census) |
//! | [`chain`] | snapshot chain: base + delta segments chained by CRC; write, list, restore, compaction policy |
//! | [`packed`] | a snapshot file's data extents with a run table (a replica's base object) and back |
//!
//! `unsafe` is denied at the crate root and allowed only in [`mapping`] (it maps memory),
//! [`listen`] (it adopts an inherited raw fd number), [`handover`] (code between `fork` and
//! `exec`), [`status`] (the 32-bit futex view of a 64-bit word, the header page mapping)
//! and [`track`] (the userfaultfd and `PAGEMAP_SCAN` ioctls); each of those modules says why.
//!
//! # The client side
//!
//! A client takes the region the host passed with [`ClientRegion::from_host`] and gets its one
//! writer from it ([`ClientRegion::writer`] for the queue, [`ClientRegion::triple`] for the
//! triple buffer), which borrows the region mutably and holds the region's claim (one writer
//! per region, named by pid when refused); [`ClientRegion::durability`] gives the
//! durability-feedback calls to any thread:
//!
//! ```no_run
//! use shmsnap_core::LayoutRequest;
//! use shmsnap_linux::ClientRegion;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut region = ClientRegion::from_host()?; // fd 3, the systemd way
//! let mut writer = region.writer(LayoutRequest { entries: 64, data_size: 4096 })?;
//! writer.commit(b"state")?; // wait-free; the host snapshots it
//! # Ok(())
//! # }
//! ```
//!
//! # Example
//!
//! A region, mapped, written through atomic words, snapshotted and verified:
//!
//! ```
//! use std::sync::atomic::Ordering;
//! use shmsnap_linux::{mapping::{Mapping, Protection}, memfd::Memfd, persist::Persister, snapshot};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let region = Memfd::create("example", 1 << 20)?;
//! region.seal_against_shrink()?;
//! let map = Mapping::of_memfd(&region, Protection::ReadWrite)?;
//! map.words()[0].store(42, Ordering::Relaxed);
//!
//! let dir = tempfile::tempdir()?;
//! let target = dir.path().join("state.snap");
//! let persister = Persister::new(&target, 1)?;
//! let meta = snapshot::SnapshotMeta {
//!     strategy: shmsnap_core::Strategy::Exit.code(), generation: 1, unix_time_ns: 0,
//! };
//! persister.persist_with(|file| -> Result<(), std::io::Error> {
//!     snapshot::write_snapshot(&region, file, region.len()?, meta)?;
//!     Ok(())
//! })?;
//!
//! let info = snapshot::verify_path(&target)?;
//! assert_eq!(info.image_len, 1 << 20);
//!
//! let fresh = Memfd::create("restored", 1 << 20)?;
//! fresh.seal_against_shrink()?;
//! snapshot::restore_into(&std::fs::File::open(&target)?, &fresh)?;
//! let back = Mapping::of_memfd(&fresh, Protection::ReadOnly)?;
//! assert_eq!(back.words()[0].load(Ordering::Relaxed), 42);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod atomic_file;
pub mod chain;
pub mod client;
pub mod copy;
pub mod freeze;
pub mod handover;
pub mod listen;
pub mod mapping;
pub mod memfd;
pub mod noreplace;
pub mod packed;
pub mod persist;
pub mod reclaim;
pub mod snapshot;
pub mod status;
pub mod take;
pub mod take_delta;
pub mod take_triple;
pub mod track;

pub use client::{ClientRegion, Durability, Durable};
pub use mapping::{Mapping, Protection};
pub use memfd::Memfd;
