//! The C ABI of shmsnap: clients and custom runtimes in any language.
//!
//! `libshmsnap.a` / `libshmsnap.so`, with the header `ffi/include/shmsnap.h` generated from
//! this crate by `cbindgen` (`ffi/cbindgen.toml`; CI regenerates it and fails if the
//! committed header differs). The header's comments are the reference documentation; this
//! crate's docs say how it maps onto the core (docs/DESIGN.md §16).
//!
//! | module | idea |
//! |---|---|
//! | [`status`] | status codes, the thread-local error text, `shmsnap_strerror` |
//! | [`entry`] | how every entry point runs: NULL and poison checks, caught panics, checked pointers |
//! | [`region`] | the region handle: opened from the host (`LISTEN_FDS`) or attached to caller memory; durability; word-atomic copies |
//! | [`construct`] | the only place a core `Writer` or `TripleClient` is constructed: the single-writer claim |
//! | [`writer`] | the queue writer: commit, read the newest entry, evict |
//! | [`txn`] | transactions with frozen tail units, and unit tables |
//! | [`triple`] | the triple-buffer client and its grants |
//! | [`host`] | the host side for embedders: queue pre → copy → finish, triple freeze → copy → release |
//!
//! # How the ABI maps onto the core
//!
//! - **Opaque handles own core values.** A handle is a `Box` given to C as a pointer to an
//!   opaque struct. The core's values borrow their memory (`Writer<'m, M>` over
//!   `&'m [AtomicU64]`); a handle keeps the borrowed thing alive beside the borrower instead:
//!   every handle made from a region holds a `region::Lease`, and `shmsnap_region_close`
//!   refuses while a lease is out, so the `'static` slices the handles keep never dangle.
//! - **Borrows across calls become run-time states.** A core `Transaction` borrows its
//!   `Writer` mutably; a `WriteGrant` its `TripleClient`; a `Frozen` token its `TripleHost`;
//!   a `PreCopy` stamp its descriptor buffers. In C they are handles of their own, and the
//!   parent refuses its conflicting calls and its close (`SHMSNAP_E_BUSY`) while one is open;
//!   ending the child (commit, publish, release, finish, abort) frees it. What the borrow
//!   checker proves in Rust is a flag checked at every call here.
//! - **Consumed tokens stay consumed.** `shmsnap_txn_commit`, `shmsnap_grant_publish`,
//!   `shmsnap_snapshot_finish` and `shmsnap_frozen_release` free their handle whatever they
//!   return, as the core's `commit(self)`, `publish(self)`, `finish(self)` and
//!   `release(self)` consume theirs.
//! - **One writer per region** (issue 20) is taken in [`construct`] and nowhere else; C never
//!   passes a claim id. A program that is its own host clears a dead holder's claim with
//!   `shmsnap_region_reclaim` (`shmsnap_linux::reclaim`: it checks that the holder's pid is
//!   gone or a zombie first).
//! - **Status codes, not enums.** Every function returns an `int`: `SHMSNAP_OK` or one code
//!   per kind of error ([`status`]); the details are in `shmsnap_error_message`.
//!
//! # Where the safety arguments live
//!
//! Every `unsafe` block has a `// SAFETY:` line. The recurring arguments are stated once:
//! lifetimes erased to `'static` — `region::Lease::words` and the parent flags above
//! (`writer.rs`, `txn.rs`, `triple.rs`, `host.rs`); pointers from C — [`entry`] (NULL checks,
//! lengths, the `# Safety` contract each function restates in the header); panics —
//! [`entry`] (why `catch_unwind` and poisoning rather than `panic = "abort"`); memory the
//! caller attaches — `shmsnap_region_attach`'s contract (only atomic accesses while in use).
//! The protocol's own soundness is the core's (DESIGN §5, §6): the ABI adds no path that
//! writes the region other than the core's.

pub mod construct;
pub mod entry;
pub mod host;
pub mod region;
pub mod status;
pub mod triple;
pub mod txn;
pub mod writer;

use std::ffi::c_char;

/// The library's version, `"MAJOR.MINOR.PATCH"` (the crate's). Static; thread-safe.
#[no_mangle]
pub extern "C" fn shmsnap_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
