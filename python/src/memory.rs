//! The memory behind a `Region`: the host's memfd mapping, or a buffer the program shares
//! itself; seen only as atomic 64-bit words, like everywhere else in shmsnap.
//!
//! Also the two process-local guards every use passes through:
//! - **fork**: an object made before `os.fork()` refuses to work in the child
//!   ([`Memory::check`]). The child's stores would escape the host's write tracking (issue
//!   20: a forked writer corrupts incremental restores), and once the region is mapped
//!   `MADV_DONTFORK` the child has no mapping at all — an access would be a segfault.
//! - **one writer per region in this process** ([`Memory::claim`]): a second `Writer` or
//!   `TripleClient` on the same memory is refused. Across processes, core's claim word does
//!   the same (`open.rs`).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use shmsnap_linux::{Mapping, Memfd};

use crate::errors;
use crate::pybuf::Export;

/// Number of `os.fork()`s this process descends from since the module was loaded (bumped in
/// the child by the hook `lib.rs` registers with `os.register_at_fork`).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Byte ranges `[start, end)` of the buffers attached as regions in this process: a second
/// `Region.attach` of overlapping memory is refused, so the per-memory writer claim below
/// covers every region object of this process.
static ATTACHED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Called in the child after every `os.fork()` (`os.register_at_fork(after_in_child=...)`).
pub(crate) fn after_fork_in_child() {
    // Relaxed: read back by the same (only) thread of the child; no other data depends on it.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Where the words live.
enum Backing {
    /// `Region.from_host()`: the memfd the host passed at fd 3, mapped read-write with write
    /// tracking (`open_client_region`). The mapping is sealed against shrinking, so no access
    /// faults.
    Host {
        /// Kept open for the life of the mapping (the host's fd 3).
        _memfd: Memfd,
        map: Mapping,
    },
    /// `Region.attach(buffer)`: memory the program shares itself.
    Buffer {
        /// Pins the memory (alive, in place, at its length) while the region lives.
        export: Export,
        /// Whole words in the export: `export.len() / 8`.
        words: usize,
    },
}

/// A region's memory. Shared (`Arc`) by the `Region` and every object working on it; freed
/// (unmapped, or the export released) when the last of them goes.
pub(crate) struct Memory {
    backing: Backing,
    /// Value of [`FORKS`] when this memory was opened: it belongs to this process only while
    /// they are equal.
    forks: u64,
    /// `true` while a `Writer` or `TripleClient` of this process works on the memory.
    claimed: AtomicBool,
}

impl Memory {
    /// The host's region.
    pub fn host(memfd: Memfd, map: Mapping) -> Self {
        Self::new(Backing::Host { _memfd: memfd, map })
    }

    /// A buffer the program shares itself.
    ///
    /// # Errors
    ///
    /// `LayoutError` if the buffer does not start at an 8-byte boundary or holds less than
    /// one word.
    /// `ClaimedError` if the buffer overlaps one already attached in this process.
    pub fn buffer(py: Python<'_>, export: Export) -> PyResult<Self> {
        let misalignment = export.ptr() as usize % 8;
        if misalignment != 0 {
            return Err(errors::words(shmsnap_core::WordsError::Misaligned {
                misalignment,
            }));
        }
        let words = export.len() / 8;
        if words == 0 {
            return Err(errors::words(shmsnap_core::WordsError::Length {
                len: export.len(),
            }));
        }
        let start = export.ptr() as usize;
        let range = (start, start + words * 8);
        let mut attached = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
        if attached.iter().any(|&(s, e)| s < range.1 && range.0 < e) {
            let pid = u64::from(std::process::id());
            return Err(errors::claimed(
                py,
                pid,
                &format!(
                    "this memory is already attached as a Region in this process (pid {pid}): \
                     one region object, and one writer, per region"
                ),
            ));
        }
        attached.push(range);
        Ok(Self::new(Backing::Buffer { export, words }))
    }

    fn new(backing: Backing) -> Self {
        Memory {
            backing,
            forks: FORKS.load(Ordering::Relaxed),
            claimed: AtomicBool::new(false),
        }
    }

    /// The memory as atomic words (a buffer's trailing partial word is left out: the region
    /// is a prefix of its memory, docs/FORMAT.md).
    pub fn words(&self) -> &[AtomicU64] {
        match &self.backing {
            Backing::Host { map, .. } => map.words(),
            Backing::Buffer { export, words } => {
                // SAFETY:
                // - valid: the export keeps `export.len() >= 8 * words` bytes alive and in
                //   place until it is released, which happens only when `self` drops, after
                //   this borrow of `self` ends;
                // - aligned: checked in `Memory::buffer` (8 = align of AtomicU64), and the
                //   pointer never changes while the export is held;
                // - writable: the export was requested with PyBUF_WRITABLE and checked not
                //   read-only, so stores through the atomics are allowed;
                // - atomic access only: in this process shmsnap accesses these bytes only as
                //   `AtomicU64` (never as `&[u8]`), and `Region.attach`'s documented contract
                //   is that the program does not touch the buffer otherwise while the region
                //   lives (the same contract as `shmsnap_linux::Mapping::from_fd`). Other
                //   processes are outside Rust's memory model; the protocol treats them as
                //   hostile.
                unsafe { std::slice::from_raw_parts(export.ptr().cast::<AtomicU64>(), *words) }
            }
        }
    }

    /// Length of the memory in bytes (whole words).
    pub fn len(&self) -> usize {
        self.words().len() * 8
    }

    /// Whether the memory is the host's region (`false`: a buffer attached by the program).
    pub fn is_host(&self) -> bool {
        matches!(self.backing, Backing::Host { .. })
    }

    /// Whether this process is the one that opened the memory (no `os.fork()` since).
    pub fn owned_here(&self) -> bool {
        FORKS.load(Ordering::Relaxed) == self.forks
    }

    /// `ForkedError` unless [`owned_here`](Memory::owned_here).
    pub fn check(&self) -> PyResult<()> {
        if self.owned_here() {
            Ok(())
        } else {
            Err(errors::forked())
        }
    }

    /// Takes this process's writer claim on the memory.
    ///
    /// # Errors
    ///
    /// `ClaimedError` naming this process if a `Writer` or `TripleClient` already works on it.
    pub fn claim(&self, py: Python<'_>) -> PyResult<Claim<'_>> {
        // Acquire/Release: the claim is a lock handing the writer role from one object to
        // the next; pairs with the Release store in `Claim::drop`.
        if self
            .claimed
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            let pid = u64::from(std::process::id());
            return Err(errors::claimed(
                py,
                pid,
                &format!(
                    "a Writer or TripleClient of this process (pid {pid}) already works on this \
                     region: one writer per region (close the other one first)"
                ),
            ));
        }
        Ok(Claim(self))
    }

    /// Whether a `Writer`/`TripleClient` of this process works on the memory.
    pub fn claimed(&self) -> bool {
        // Relaxed: a plain look at the flag; its users hold the GIL, which orders them.
        self.claimed.load(Ordering::Relaxed)
    }

    /// Gives the claim up (the `Writer`/`TripleClient` holding it closed or was freed).
    pub fn release_claim(&self) {
        // Release: see `claim`.
        self.claimed.store(false, Ordering::Release);
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        if let Backing::Buffer { export, words } = &self.backing {
            let start = export.ptr() as usize;
            let range = (start, start + words * 8);
            let mut attached = ATTACHED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = attached.iter().position(|&r| r == range) {
                attached.swap_remove(i);
            }
        }
    }
}

/// A claim just taken; released on drop unless [`keep`](Claim::keep) hands it to a writer
/// (which releases it with [`Memory::release_claim`]).
pub(crate) struct Claim<'a>(&'a Memory);

impl Claim<'_> {
    /// The writer was made: it owns the claim from now on.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.release_claim();
    }
}
