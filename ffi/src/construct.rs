//! The only place this crate constructs a core [`Writer`] or [`TripleClient`], and so the only
//! place the single-writer claim is taken (issue 20: one writer per region, C writers
//! included). A C caller never passes a claim id: it opens a writer or a triple client, and a
//! second one on the same region gets `SHMSNAP_E_CLAIMED` naming the holder.
//!
//! Two claims guard a writer: the region handle's flag (taken with a compare-exchange when a
//! writer or triple client opens, released when it closes: it keeps the handle's lease
//! bookkeeping simple) and core's claim word in the region itself (`shmsnap_core::claim`), with
//! a pid-derived id that is new for every writer (`claim_id`), so a second writer in any
//! process, or through a second handle over the same memory, is refused naming the holder's
//! pid (`SHMSNAP_E_CLAIMED`, mapped in `status.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::triple::{TripleClient, TripleLayout, TripleRequest};
use shmsnap_core::{ClaimId, Layout, LayoutRequest, Writer};

use crate::region::{Lease, RegionHandle};
use crate::status::{Error, SHMSNAP_E_CLAIMED};

/// A claim id for a new writer of this process: the pid and a process-wide counter as nonce
/// (the encoding of `shmsnap_core::claim`), so two writers of one process never share an id.
fn claim_id() -> ClaimId {
    static NONCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let pid = rustix::process::getpid().as_raw_pid().unsigned_abs();
    // Relaxed: only uniqueness matters. Zero is skipped; after 2^32 writers a nonce repeats,
    // which matters only if that old writer still holds the region (then the take fails).
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed).max(1);
    ClaimId::from_pid(pid, nonce).unwrap_or(ClaimId::from_nonzero(std::num::NonZeroU64::MIN))
}

/// The claim of a region's single writer or triple client; released on drop, after the value
/// it guards (its owner declares that value before the claim).
#[derive(Debug)]
pub(crate) struct Claim {
    lease: Lease,
}

impl Claim {
    /// Takes the region's claim and a lease on it.
    fn take(region: &RegionHandle) -> Result<Claim, Error> {
        // Acquire: pairs with the Release in `drop`, so the previous holder's last stores
        // (made through the same memory) happen before this holder attaches.
        let taken =
            region
                .claimed
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed);
        if taken.is_err() {
            let pid = rustix::process::getpid().as_raw_pid();
            return Err(Error::new(
                SHMSNAP_E_CLAIMED,
                format_args!(
                    "the region already has a writer or triple client, held by pid {pid} (this \
                     process) through this region handle: one writer per region; close it first"
                ),
            ));
        }
        Ok(Claim {
            lease: region.lease(),
        })
    }

    /// The claimed region's lease.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Release: pairs with the Acquire in `take` (see there).
        self.lease.region().claimed.store(false, Ordering::Release);
    }
}

/// Opens the region's queue writer: attaches, or with `request` configures a fresh region
/// (and checks a configured one has that layout).
///
/// The returned writer borrows the claim's words: its owner keeps both and declares the
/// writer first, so it is dropped before the claim and its lease.
pub(crate) fn queue_writer(
    region: &RegionHandle,
    request: Option<LayoutRequest>,
) -> Result<(Writer<'static, [AtomicU64]>, Claim), Error> {
    if let Some(request) = request {
        // The request's own problems are the caller's (`SHMSNAP_E_INVALID`), whatever the
        // region holds.
        let available = (region.words().len() as u64).saturating_mul(8);
        Layout::new(available, request).map_err(Error::invalid)?;
    }
    let claim = Claim::take(region)?;
    // SAFETY: the writer lives beside the claim, which holds the lease, and is dropped first.
    let words = unsafe { claim.lease().words() };
    let writer = match request {
        Some(request) => Writer::open_or_init(words, request, claim_id())?,
        None => Writer::attach(words, claim_id())?,
    };
    Ok((writer, claim))
}

/// Opens the region's triple client: attaches, or with `request` configures a fresh region.
/// Ownership as for [`queue_writer`].
pub(crate) fn triple_client(
    region: &RegionHandle,
    request: Option<TripleRequest>,
) -> Result<(TripleClient<'static, [AtomicU64]>, Claim), Error> {
    if let Some(request) = request {
        let layout = TripleLayout::new(request).map_err(Error::invalid)?;
        let available = (region.words().len() as u64).saturating_mul(8);
        if layout.region_len > available {
            return Err(Error::invalid(format_args!(
                "region of {available} bytes is too small for {} buffers of {} bytes, which need {} bytes",
                request.buffers, request.buffer_size, layout.region_len
            )));
        }
    }
    let claim = Claim::take(region)?;
    // SAFETY: as in `queue_writer`.
    let words = unsafe { claim.lease().words() };
    let client = match request {
        Some(request) => TripleClient::open_or_init(words, request, claim_id())?,
        None => TripleClient::attach(words, claim_id())?,
    };
    Ok((client, claim))
}
