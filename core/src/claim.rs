//! One writer per region, enforced at run time: the claim word (`docs/FORMAT.md`, "Claim
//! word"; DESIGN §5.1 and §6).
//!
//! The protocols rest on a single client per region: one [`Writer`](crate::Writer) of a queue
//! region, one [`TripleClient`](crate::triple::TripleClient) of a triple region. A second one
//! in another process compiles and runs, and the two corrupt each other. So every client takes
//! the region's **claim** before it touches anything else, and a second claimant is refused
//! with the holder's identity:
//!
//! ```text
//! word::CLAIM:  0 = unclaimed          take:    compare-exchange 0 -> id        (Acquire)
//!               id = held by id        release: compare-exchange id -> 0        (Release)
//!                                      reclaim: compare-exchange dead -> 0      (Release)
//! ```
//!
//! - **Who writes it.** A claimant ([`Claim::take`]) and its release ([`Claim`]'s `Drop`); the
//!   host, only to clear the claim of a client it knows is dead ([`reclaim`]). Snapshot images
//!   carry 0 (`retain` and the triple image meta zero it), so a restored region is unclaimed.
//! - **The id** is a caller-supplied nonzero 64-bit [`ClaimId`]: core cannot know pids. The
//!   encoding that `shmsnap-linux` uses, and that error messages decode, puts the holder's pid
//!   in the low 32 bits and a nonce in the high 32 ([`ClaimId::from_pid`]), so a refusal names
//!   the process holding the claim and a reused pid does not match an old claim.
//! - **Cost.** The claim is taken once per attach and released once per drop: a
//!   compare-exchange each, never on the commit path.
//!
//! # Orderings
//!
//! The claim is a lock around a holder's whole use of the region:
//!
//! - **take** is `Acquire` on success: no later load or store of the claimant (its `init`,
//!   its recovery, its commits) can be ordered before it, and it reads either the initial 0 or
//!   the 0 a release or a reclaim stored with `Release` — so every store of the previous
//!   holder happens before every access of the new one.
//! - **release** is `Release` on success: every store of the holder into the region happens
//!   before the 0 it writes, hence before the next holder's accesses. It is a compare-exchange
//!   from the holder's own id, so a holder whose claim was reclaimed (the host believed it
//!   dead) never frees a later holder's claim.
//! - **reclaim** is `Release` on success. The dead holder's stores are ordered before it by
//!   the holder's death, which the caller vouches for: on Linux the host learns it from
//!   `waitpid`, and the kernel's exit and wait paths are full barriers, so everything the
//!   dead process stored is visible to the host when it reclaims; `Release` passes that on to
//!   the next claimant's `Acquire`.
//!
//! **What a new claimant may assume** after taking a reclaimed claim: every store of the dead
//! holder is visible to it — and nothing more. The holder died at an arbitrary point (mid
//! commit, mid publication, mid `init`), so the region is exactly as consistent as a crash
//! leaves it; the recovery every client runs after taking the claim (`Writer::attach`,
//! `TripleClient::attach`, or `init` of a header whose magic was never stored) is what makes
//! it usable. The loom model `loom-tests/tests/claim.rs` checks these orderings, with broken
//! twins (a claim taken by load-then-store, a release by plain store, every ordering
//! `Relaxed`).
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use shmsnap_core::claim::{self, Claim, ClaimError, ClaimId};
//!
//! let mem: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
//! let a = ClaimId::from_pid(4242, 7).unwrap();
//! let b = ClaimId::from_pid(4343, 9).unwrap();
//! let held = Claim::take(&mem[..], a).unwrap();
//! // A second claimant is refused, and told who holds the region.
//! let Err(ClaimError::Claimed { holder }) = Claim::take(&mem[..], b) else { panic!() };
//! assert_eq!(holder.pid(), 4242);
//! drop(held); // released
//! let held = Claim::take(&mem[..], b).unwrap();
//! // b dies without releasing (SIGKILL): its supervisor, knowing it is dead, reclaims.
//! core::mem::forget(held);
//! assert_eq!(claim::holder(&mem[..]), Some(b));
//! claim::reclaim(&mem[..], b).unwrap();
//! assert_eq!(claim::holder(&mem[..]), None);
//! ```

use core::fmt;
use core::num::NonZeroU64;
use core::sync::atomic::Ordering;

use crate::format::word;
use crate::memory::WordMemory;

/// Who holds (or wants) a region's claim: a nonzero 64-bit id chosen by the caller.
///
/// Any nonzero value works for core. The documented encoding — used by `shmsnap-linux`, and
/// decoded by [`pid`](ClaimId::pid) and by error messages — is **the holder's pid in the low 32
/// bits and a nonce in the high 32 bits** ([`ClaimId::from_pid`]): the pid says who holds the
/// region, the nonce tells a reused pid from the process that held the claim before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimId(NonZeroU64);

impl ClaimId {
    /// The id `id`; `None` for 0 (0 means "unclaimed").
    pub const fn new(id: u64) -> Option<ClaimId> {
        match NonZeroU64::new(id) {
            Some(v) => Some(ClaimId(v)),
            None => None,
        }
    }

    /// The id `id` (nonzero by its type).
    pub const fn from_nonzero(id: NonZeroU64) -> ClaimId {
        ClaimId(id)
    }

    /// The id of process `pid` under the documented encoding: `pid` in the low 32 bits,
    /// `nonce` in the high 32. `None` for pid 0 (not a process).
    pub const fn from_pid(pid: u32, nonce: u32) -> Option<ClaimId> {
        if pid == 0 {
            return None;
        }
        ClaimId::new((nonce as u64) << 32 | pid as u64)
    }

    /// The id as stored in the claim word.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The low 32 bits: the holder's pid under the documented encoding.
    pub const fn pid(self) -> u32 {
        self.0.get() as u32
    }

    /// The high 32 bits: the holder's nonce under the documented encoding.
    pub const fn nonce(self) -> u32 {
        (self.0.get() >> 32) as u32
    }
}

impl fmt::Display for ClaimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (claim id {:#018x})", self.pid(), self.get())
    }
}

/// Why a claim could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimError {
    /// Another claimant holds the region (or held it and died without a reclaim).
    Claimed {
        /// The id found in the claim word.
        holder: ClaimId,
    },
    /// The memory does not reach the claim word (it is shorter than a header page).
    TooSmall {
        /// The memory's length in words.
        words: usize,
    },
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ClaimError::Claimed { holder } => write!(
                f,
                "the region is claimed by another writer, {holder}: only one writer may use a \
                 region; if that process is dead, its supervisor must reclaim the region first"
            ),
            ClaimError::TooSmall { words } => write!(
                f,
                "the memory holds {words} words, too few to reach the claim word {}",
                word::CLAIM
            ),
        }
    }
}

impl core::error::Error for ClaimError {}

/// A held claim on a region: released (compare-exchange from its id back to 0, `Release`)
/// when dropped. [`Writer`](crate::Writer) and [`TripleClient`](crate::triple::TripleClient)
/// each keep one for their whole life.
#[derive(Debug)]
#[must_use = "a claim is released as soon as it is dropped"]
pub struct Claim<'m, M: WordMemory + ?Sized> {
    mem: &'m M,
    /// The id stored in the claim word by `take` (until a reclaim clears it).
    id: ClaimId,
}

impl<'m, M: WordMemory + ?Sized> Claim<'m, M> {
    /// Takes the claim on `mem` for `id`: one compare-exchange of the claim word from 0 to
    /// `id`. Take it before touching anything else of the region.
    ///
    /// # Errors
    ///
    /// [`ClaimError::Claimed`] naming the holder (also if it is `id` itself: a claim is held
    /// once); [`ClaimError::TooSmall`] if `mem` does not reach the claim word.
    pub fn take(mem: &'m M, id: ClaimId) -> Result<Self, ClaimError> {
        if mem.len() <= word::CLAIM {
            return Err(ClaimError::TooSmall { words: mem.len() });
        }
        // Acquire on success: the claimant's every later access is ordered after the claim,
        // and it synchronises with the Release of the release or reclaim that stored the 0
        // (the previous holder's stores happen before ours). Relaxed on failure: nothing is
        // accessed after a refusal.
        match mem.compare_exchange(
            word::CLAIM,
            0,
            id.get(),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(Claim { mem, id }),
            Err(found) => Err(ClaimError::Claimed {
                // Nonzero: the compare-exchange from 0 failed.
                holder: ClaimId::new(found).unwrap_or(id),
            }),
        }
    }

    /// The id this claim was taken with.
    pub fn id(&self) -> ClaimId {
        self.id
    }

    /// The claimed memory.
    pub fn mem(&self) -> &'m M {
        self.mem
    }

    /// `true` if the claim word still holds this claim's id (a supervisor may have reclaimed
    /// it, believing the holder dead).
    pub fn is_held(&self) -> bool {
        holder(self.mem) == Some(self.id)
    }
}

impl<M: WordMemory + ?Sized> Drop for Claim<'_, M> {
    fn drop(&mut self) {
        // Release on success: every store of this holder into the region happens before the 0,
        // hence before the next claimant's Acquire take. From our own id only: if the claim
        // was reclaimed (and maybe taken by someone else) the word is left as found.
        let _ = self.mem.compare_exchange(
            word::CLAIM,
            self.id.get(),
            0,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }
}

/// The current holder of `mem`'s claim; `None` if unclaimed or `mem` does not reach the claim
/// word. For diagnostics and for a supervisor about to [`reclaim`]: the value may change right
/// after the load (`Relaxed`: it is only reported or handed to `reclaim`'s compare-exchange,
/// which decides).
pub fn holder<M: WordMemory + ?Sized>(mem: &M) -> Option<ClaimId> {
    if mem.len() <= word::CLAIM {
        return None;
    }
    ClaimId::new(mem.load(word::CLAIM, Ordering::Relaxed))
}

/// Clears the claim of `dead`, a holder that is known to be dead: compare-exchange from
/// `dead` to 0. The caller vouches for the death (on Linux: the host reaped its client and
/// killed the client's descendants); a reclaim of a live holder lets a second writer in.
///
/// # Errors
///
/// The current holder (`None`: unclaimed) if the word does not hold `dead`; nothing changed.
pub fn reclaim<M: WordMemory + ?Sized>(mem: &M, dead: ClaimId) -> Result<(), Option<ClaimId>> {
    if mem.len() <= word::CLAIM {
        return Err(None);
    }
    // Release on success: the dead holder's stores, ordered before this call by its death,
    // happen before the next claimant's Acquire take (module docs).
    mem.compare_exchange(
        word::CLAIM,
        dead.get(),
        0,
        Ordering::Release,
        Ordering::Relaxed,
    )
    .map(|_| ())
    .map_err(ClaimId::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;
    use std::vec::Vec;

    fn mem() -> Vec<AtomicU64> {
        (0..512).map(|_| AtomicU64::new(0)).collect()
    }

    const A: ClaimId = ClaimId::from_pid(100, 1).unwrap();
    const B: ClaimId = ClaimId::from_pid(200, 2).unwrap();

    #[test]
    fn the_id_encoding_keeps_pid_and_nonce_apart_and_zero_is_no_id() {
        let id = ClaimId::from_pid(0xdead_beef, 0x1234_5678).unwrap();
        assert_eq!((id.pid(), id.nonce()), (0xdead_beef, 0x1234_5678));
        assert_eq!(id.get(), 0x1234_5678_dead_beef);
        assert_eq!(ClaimId::new(0), None);
        assert_eq!(ClaimId::from_pid(0, 5), None);
        let text = std::format!("{id}");
        assert!(text.contains("pid 3735928559"), "{text}");
    }

    #[test]
    fn a_second_claimant_is_refused_with_the_holder_and_a_drop_releases() {
        let m = mem();
        let a = Claim::take(&m[..], A).unwrap();
        assert!(a.is_held());
        assert_eq!(
            Claim::take(&m[..], B).unwrap_err(),
            ClaimError::Claimed { holder: A }
        );
        // The same id cannot claim twice either.
        assert_eq!(
            Claim::take(&m[..], A).unwrap_err(),
            ClaimError::Claimed { holder: A }
        );
        drop(a);
        assert_eq!(holder(&m[..]), None);
        let b = Claim::take(&m[..], B).unwrap();
        assert_eq!(holder(&m[..]), Some(B));
        drop(b);
    }

    #[test]
    fn a_reclaimed_holder_never_frees_the_next_holders_claim() {
        let m = mem();
        let a = Claim::take(&m[..], A).unwrap();
        // A is believed dead (wrongly): reclaimed, and B takes the region.
        reclaim(&m[..], A).unwrap();
        let b = Claim::take(&m[..], B).unwrap();
        assert!(!a.is_held());
        drop(a);
        assert_eq!(holder(&m[..]), Some(B), "A's release freed B's claim");
        assert_eq!(
            reclaim(&m[..], A),
            Err(Some(B)),
            "reclaim only from the dead id"
        );
        drop(b);
        assert_eq!(reclaim(&m[..], A), Err(None));
    }

    #[test]
    fn a_memory_without_the_claim_word_is_refused_and_untouched() {
        let m: Vec<AtomicU64> = (0..word::CLAIM).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(
            Claim::take(&m[..], A).unwrap_err(),
            ClaimError::TooSmall { words: word::CLAIM }
        );
        assert_eq!(holder(&m[..]), None);
        assert_eq!(reclaim(&m[..], A), Err(None));
    }
}
