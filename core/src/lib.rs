//! The shmsnap protocol: consistent snapshots of a shared-memory region that a client keeps
//! committing to, without the client ever waiting.
//!
//! `#![no_std]`, no allocation. The protocol is written once, as state machines over an
//! [atomic word memory](WordMemory): real shared memory (`[AtomicU64]`) in production, loom's
//! atomics in the model checker — the same code in both.
//!
//! # Contents
//!
//! - [`memory`](WordMemory): the word-memory seam; [`atomic_words`] views a byte slice as words.
//! - [`claim`]: one writer per region, enforced at run time (the claim word, [`ClaimId`]).
//! - [`format`]: the format vocabulary — header and descriptor word indices, ring addressing,
//!   the typed [`Strategy`] code (`docs/FORMAT.md`).
//! - [`layout`](Layout): validating a header and deriving where everything lies.
//! - [`descriptor`](Descriptor): the sequence-descriptor ring and its seqlock read.
//! - [`writer`](Writer): the client's wait-free commit, [`Transaction`]s and attach/recovery.
//! - [`reader`](Region): valid entries, the newest entry, payload and tail reads.
//! - [`units`](UnitTable): frozen tail units and their sequence-keyed reclamation.
//! - [`host`](PreCopy): the host's snapshot as a type — [`PreCopy::read`] (pre), the copy,
//!   [`PreCopy::finish`] (fence, post, `next_seq`, [`retain`]).
//! - [`triple`]: the triple-buffer strategy (client, host, snapshot-image meta).
//! - [`status`]: the host status area (what is durable) and the client's snapshot request.
//!
//! Test support (the reference model, fuzz entry points) lives in the separate, unpublished
//! `shmsnap-testkit` crate; this crate holds only the protocol.
//!
//! # Embedding the core
//!
//! `core/examples/embedding.rs` runs the whole protocol over memory a custom runtime provides
//! (a heap buffer made into words with [`atomic_words`]): a writer thread commits while the host
//! takes a snapshot with [`PreCopy`], then the snapshot is restored and attached. The test
//! `core/tests/embedding.rs` runs it.
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use shmsnap_core::{AttachError, ClaimId, LayoutRequest, Writer};
//!
//! // Any 8-byte aligned shared memory will do; here, 64 KiB of ordinary memory.
//! let mem: Vec<AtomicU64> = (0..8192).map(|_| AtomicU64::new(0)).collect();
//! let request = LayoutRequest { entries: 16, data_size: 4096 };
//! // Who writes: one writer per region, enforced by the region's claim (pid 42, nonce 1).
//! let me = ClaimId::from_pid(42, 1).unwrap();
//! let mut writer = Writer::open_or_init(&mem[..], request, me).unwrap();
//! let seq = writer.commit(b"state v1").unwrap();
//! // A second writer is refused, and told who holds the region.
//! let other = ClaimId::from_pid(43, 1).unwrap();
//! assert!(matches!(Writer::attach(&mem[..], other), Err(AttachError::Claimed { holder }) if holder == me));
//!
//! // After a restart (or a restore), attach and read the newest state back.
//! drop(writer); // releases the claim
//! let writer = Writer::attach(&mem[..], other).unwrap();
//! let newest = writer.region().newest().unwrap();
//! let mut buf = [0u8; 64];
//! let n = writer.region().read_payload(&newest, &mut buf).unwrap();
//! assert_eq!((newest.seq, &buf[..n]), (seq, &b"state v1"[..]));
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod claim;
mod descriptor;
pub mod format;
mod host;
mod layout;
mod memory;
mod reader;
pub mod status;
pub mod triple;
mod units;
mod writer;

pub use claim::{ClaimError, ClaimId};
pub use descriptor::{read_descriptor, read_descriptor_bytes, Descriptor, MAX_SEQ, MAX_STREAM};
pub use format::{
    Strategy, DESCRIPTOR_BYTES, FORMAT_VERSION, MAGIC, MAX_DATA_SIZE, MAX_ENTRIES, PAGE_SIZE,
};
pub use host::{
    image_entries, retain, retain_where, DescriptorSet, PreCopy, RetainError, Retained,
};
pub use layout::{header_checksum, Hints, Layout, LayoutError, LayoutRequest};
pub use memory::{atomic_words, WordMemory, WordsError};
pub use reader::{ReadError, Region};
pub use status::Status;
pub use units::{UnitError, UnitGrant, UnitState, UnitTable};
pub use writer::{AttachError, CommitError, Transaction, Writer};

impl core::error::Error for WordsError {}
impl core::error::Error for LayoutError {}
impl core::error::Error for ReadError {}
impl core::error::Error for UnitError {}
impl core::error::Error for CommitError {}
impl core::error::Error for RetainError {}
impl core::error::Error for AttachError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            AttachError::Layout(e) => Some(e),
            _ => None,
        }
    }
}
