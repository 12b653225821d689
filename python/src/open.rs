//! Every construction of core's `Writer` and `TripleClient` in this crate: the one place that
//! changes when core's writer claim (issue 20, "one writer per region") lands — the claim id
//! to pass (this process's pid, nonzero) and the `Claimed { holder }` error to map to
//! `ClaimedError` (`errors::claimed`).
//!
//! Until then, one writer per region is enforced within this process only
//! (`Memory::claim`, `Memory::buffer`).

use std::sync::atomic::AtomicU64;

use pyo3::prelude::*;
use shmsnap_core::triple::{TripleClient, TripleLayout, TripleRequest};
use shmsnap_core::{LayoutRequest, Writer};

use crate::errors;
use crate::writer_words::WriterWords;

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
    Writer::open_or_init(words, request).map_err(|e| errors::attach(py, e))
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
    TripleClient::open_or_init(words, request).map_err(|e| errors::triple(py, e))
}
