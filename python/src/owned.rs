//! Core's borrowing types — `Writer<'m>`, `TripleClient<'m>` and its `WriteGrant<'c, 'm>` —
//! kept inside Python objects, which cannot carry lifetimes.
//!
//! Each handle owns an `Arc` of the [`Memory`] its core value borrows, and the borrow's
//! lifetime is erased to `'static` here and nowhere else. What makes that sound:
//! - the memory's address and length never change while any `Arc<Memory>` lives (a mapping
//!   is unmapped, an export released, only when the `Memory` drops);
//! - each handle drops its core value *before* its `Arc` (declaration order, or explicitly in
//!   `Drop`), so the borrow never outlives the memory;
//! - no `'static` reference leaves this module: the methods return owned values or
//!   references tied to `&self`/`&mut self`.
//!
//! A grant borrows its client mutably: [`TripleHandle`] keeps the client behind a raw pointer
//! it owns and hands out `&TripleClient` only while no grant is open — the borrow checker's
//! rule, checked at run time.
#![allow(unsafe_code)]

use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use pyo3::prelude::*;
use shmsnap_core::triple::{TripleClient, TripleLayout, TripleRequest, WriteGrant};
use shmsnap_core::{LayoutRequest, Writer};

use crate::memory::Memory;
use crate::open;
use crate::writer_words::WriterWords;

/// `mem`'s words with the lifetime of the `Arc` erased.
///
/// # Safety
///
/// The caller keeps a clone of `mem` alive for as long as the returned slice (or anything
/// borrowing it) is used, and drops every such user before that clone.
unsafe fn erase(mem: &Arc<Memory>) -> &'static [AtomicU64] {
    let words: *const [AtomicU64] = mem.words();
    // SAFETY: the words live (at a fixed address) as long as the `Memory` (module docs), which
    // the caller keeps alive for every use of the result.
    unsafe { &*words }
}

/// The queue writer's memory type.
pub(crate) type QueueWriter = Writer<'static, WriterWords>;

/// A queue `Writer` and the memory it writes.
pub(crate) struct QueueHandle {
    /// Borrows `mem`'s words (erased); dropped in `Drop`, before `mem`.
    writer: ManuallyDrop<QueueWriter>,
    mem: Arc<Memory>,
}

impl QueueHandle {
    /// Opens the writer of `mem` ([`open::queue_writer`]).
    ///
    /// # Errors
    ///
    /// As [`open::queue_writer`].
    pub fn open(py: Python<'_>, mem: Arc<Memory>, request: LayoutRequest) -> PyResult<Self> {
        // SAFETY: `mem` is moved into the handle next to the writer, which drops first.
        let words = WriterWords::new(unsafe { erase(&mem) });
        let writer = ManuallyDrop::new(open::queue_writer(py, words, request)?);
        Ok(QueueHandle { writer, mem })
    }

    /// The writer. Nothing borrowed from it may be kept past the borrow of `self`.
    pub fn writer(&mut self) -> &mut QueueWriter {
        &mut self.writer
    }

    /// The writer, shared.
    pub fn get(&self) -> &QueueWriter {
        &self.writer
    }

    /// The memory.
    pub fn mem(&self) -> &Arc<Memory> {
        &self.mem
    }
}

/// A `TripleClient`, its open `WriteGrant` if any, and the memory they work on.
pub(crate) struct TripleHandle {
    /// The open grant; borrows `*client` mutably and `mem`'s words (both erased). Dropped
    /// before the client is freed.
    grant: Option<WriteGrant<'static, 'static, [AtomicU64]>>,
    /// The client, owned (`Box::into_raw`, freed in `Drop`). Invariant: while `grant` is
    /// `Some`, the grant holds the only reference to it.
    client: NonNull<TripleClient<'static, [AtomicU64]>>,
    /// The client's layout (fixed for its life).
    layout: TripleLayout,
    mem: Arc<Memory>,
}

// SAFETY: the handle owns the client the pointer points to (nothing else refers to it), and
// the client and grant only hold references to atomic words, which are `Send` and `Sync`.
// Access goes through `&mut self` for every change (PyO3's borrow flag) and `&self` reads
// only while no grant is open.
unsafe impl Send for TripleHandle {}
// SAFETY: as above; `&TripleHandle` gives out `&TripleClient` (Sync: atomic words) only.
unsafe impl Sync for TripleHandle {}

impl TripleHandle {
    /// Opens the client of `mem` ([`open::triple_client`]).
    ///
    /// # Errors
    ///
    /// As [`open::triple_client`].
    pub fn open(py: Python<'_>, mem: Arc<Memory>, request: TripleRequest) -> PyResult<Self> {
        // SAFETY: `mem` is moved into the handle, whose `Drop` frees the client (and any grant)
        // before the `Arc` field drops.
        let words = unsafe { erase(&mem) };
        let client = open::triple_client(py, words, request)?;
        let layout = *client.layout();
        let client = NonNull::from(Box::leak(Box::new(client)));
        Ok(TripleHandle {
            grant: None,
            client,
            layout,
            mem,
        })
    }

    /// The client, unless a grant is open (then it is the grant's alone).
    pub fn client(&self) -> Option<&TripleClient<'static, [AtomicU64]>> {
        match self.grant {
            // SAFETY: no grant is open, so nothing holds a mutable reference to the client;
            // the shared borrow is tied to `&self`, which excludes a `begin` meanwhile.
            None => Some(unsafe { self.client.as_ref() }),
            Some(_) => None,
        }
    }

    /// The client's layout.
    pub fn layout(&self) -> TripleLayout {
        self.layout
    }

    /// Whether a grant is open.
    pub fn grant_open(&self) -> bool {
        self.grant.is_some()
    }

    /// Opens a grant (`TripleClient::take`): a buffer for writing. Returns its seq.
    ///
    /// # Errors
    ///
    /// `Err(None)` if a grant is already open; `Err(Some(e))` from `take`.
    pub fn begin(&mut self) -> Result<u64, Option<shmsnap_core::triple::TripleError>> {
        if self.grant.is_some() {
            return Err(None);
        }
        // SAFETY: no grant is open and `&mut self` excludes every other use of the handle, so
        // this is the only reference to the client; the grant that keeps it is stored in
        // `self.grant`, dropped or consumed before the client is freed (`Drop`), and until
        // then `client()` hands out nothing.
        let client: &'static mut TripleClient<'static, [AtomicU64]> =
            unsafe { &mut *self.client.as_ptr() };
        let grant = client.take().map_err(Some)?;
        let seq = grant.seq();
        self.grant = Some(grant);
        Ok(seq)
    }

    /// The open grant.
    pub fn grant(&mut self) -> Option<&mut WriteGrant<'static, 'static, [AtomicU64]>> {
        self.grant.as_mut()
    }

    /// Publishes the open grant; returns its seq (`None` if no grant is open).
    pub fn publish(&mut self) -> Option<u64> {
        self.grant.take().map(WriteGrant::publish)
    }

    /// Discards the open grant (its buffer goes back to FREE); `false` if none was open.
    pub fn discard(&mut self) -> bool {
        self.grant.take().is_some()
    }

    /// The memory.
    pub fn mem(&self) -> &Arc<Memory> {
        &self.mem
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        if self.mem.owned_here() {
            // SAFETY: dropped once, here, before `mem` (a field, dropped after this body).
            unsafe { ManuallyDrop::drop(&mut self.writer) };
        }
        // Otherwise a forked child's copy: a writer's drop may store into the region (a
        // claim release), which is the parent's. The small value is leaked.
    }
}

impl Drop for TripleHandle {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            if self.mem.owned_here() {
                // Back to FREE, as any dropped grant.
                drop(grant);
            } else {
                // A forked child's copy: its drop would store into the parent's region (or
                // fault, if the region is not mapped in the child). Leak the small value.
                std::mem::forget(grant);
            }
        }
        // SAFETY: the pointer came from `Box::leak` in `open`, is freed only here, and the
        // grant that borrowed it is gone (dropped or forgotten above: a forgotten grant is
        // never used again).
        drop(unsafe { Box::from_raw(self.client.as_ptr()) });
    }
}
