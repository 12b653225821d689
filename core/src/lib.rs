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
//! - [`layout`](Layout): the region header and where everything lies (`docs/FORMAT.md`).
//! - [`descriptor`](Descriptor): the sequence-descriptor ring and its seqlock read.
//! - [`writer`](Writer): the client's wait-free commit, [`Transaction`]s and attach/recovery.
//! - [`reader`](Region): valid entries, the newest entry, payload and tail reads.
//! - [`units`](UnitTable): frozen tail units and their sequence-keyed reclamation.
//! - [`host`](retain): the host's pre/post validation of a copied image.
//! - [`triple`]: the triple-buffer strategy (client, host, snapshot-image meta).
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use shmsnap_core::{LayoutRequest, Writer};
//!
//! // Any 8-byte aligned shared memory will do; here, 64 KiB of ordinary memory.
//! let mem: Vec<AtomicU64> = (0..8192).map(|_| AtomicU64::new(0)).collect();
//! let request = LayoutRequest { entries: 16, data_size: 4096 };
//! let mut writer = Writer::open_or_init(&mem[..], request).unwrap();
//! let seq = writer.commit(b"state v1").unwrap();
//!
//! // After a restart (or a restore), attach and read the newest state back.
//! drop(writer);
//! let writer = Writer::attach(&mem[..]).unwrap();
//! let newest = writer.region().newest().unwrap();
//! let mut buf = [0u8; 64];
//! let n = writer.region().read_payload(&newest, &mut buf).unwrap();
//! assert_eq!((newest.seq, &buf[..n]), (seq, &b"state v1"[..]));
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(any(test, feature = "model"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

mod descriptor;
#[cfg(any(test, feature = "model"))]
pub mod fuzzing;
mod host;
mod layout;
mod memory;
#[cfg(any(test, feature = "model"))]
pub mod model;
mod reader;
pub mod triple;
mod units;
// AttachError::Mismatch carries two Layouts (136 bytes) now that Strategy has two variants
// and is no longer zero-sized; attach errors are rare and cold.
#[allow(clippy::result_large_err)]
mod writer;

pub use descriptor::{read_descriptor, read_descriptor_bytes, Descriptor, MAX_SEQ, MAX_STREAM};
pub use host::{image_entries, read_post, read_pre, retain, DescriptorSet, RetainError, Retained};
pub use layout::{
    header_checksum, Hints, Layout, LayoutError, LayoutRequest, Strategy, DESCRIPTOR_BYTES,
    FORMAT_VERSION, MAGIC, MAX_DATA_SIZE, MAX_ENTRIES, PAGE_SIZE,
};
pub use memory::{atomic_words, WordMemory, WordsError};
pub use reader::{ReadError, Region};
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
