//! Every construction of core's `Writer` and `TripleClient` in this crate, and so the one place
//! the region's claim (`shmsnap_core::claim`: one writer per region, in any process) is taken:
//! with a pid-derived id that is new for every writer ([`claim_id`]); a second claimant gets
//! `ClaimedError` naming the holder's pid (`errors::claimed`). Within this process the binding
//! also refuses a second writer early (`Memory::claim`, `Memory::buffer`).

use std::sync::atomic::AtomicU64;

use pyo3::prelude::*;
use shmsnap_core::triple::{TripleClient, TripleLayout, TripleRequest};
use shmsnap_core::{ClaimId, LayoutRequest, Writer};

use crate::errors;
use crate::writer_words::WriterWords;

/// A claim id for a new writer of this process: the pid and a process-wide counter as nonce
/// (the encoding of `shmsnap_core::claim`), so two writers of one process never share an id.
fn claim_id() -> ClaimId {
    static NONCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let pid = std::process::id();
    // Relaxed: only uniqueness matters; zero is skipped.
    let nonce = NONCE
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .max(1);
    ClaimId::from_pid(pid, nonce).unwrap_or(ClaimId::from_nonzero(std::num::NonZeroU64::MIN))
}

/// The queue writer of `words`: configures a fresh region with `request`, or attaches to the
/// configured one (recovering its cursor, DESIGN §5).
///
/// # Errors
///
/// `LayoutError` for a request that cannot be laid out in `words`; `FormatError` if `words`
/// hold no valid queue region; `MismatchError` for a region configured otherwise;
/// `ExhaustedError`.
pub(crate) fn queue_writer<'m>(
    py: Python<'_>,
    words: &'m WriterWords,
    request: LayoutRequest,
) -> PyResult<Writer<'m, WriterWords>> {
    Writer::open_or_init(words, request, claim_id()).map_err(|e| errors::attach(py, e))
}

/// The triple-buffer client of `words`, configured with `request` if the region is fresh.
///
/// # Errors
///
/// `LayoutError` for a request that is not a valid triple layout or does not fit; as
/// [`queue_writer`] otherwise.
pub(crate) fn triple_client<'m>(
    py: Python<'_>,
    words: &'m [AtomicU64],
    request: TripleRequest,
) -> PyResult<TripleClient<'m, [AtomicU64]>> {
    // The request alone first, so that its errors are reported as the request's and not
    // as a damaged header's.
    let layout = TripleLayout::new(request).map_err(errors::request)?;
    let needed = layout.region_len;
    let available = words.len() as u64 * 8;
    if needed > available {
        return Err(errors::request(shmsnap_core::LayoutError::TooSmall {
            needed,
            available,
        }));
    }
    TripleClient::open_or_init(words, request, claim_id()).map_err(|e| errors::triple(py, e))
}
