//! The benchmark's reference (`python/bench/commit.py`): what `Region._copy_reference` does —
//! take a payload the way `Writer.commit` does and only copy it into the shared mapping — the
//! floor a binding's commit is measured against.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use shmsnap_core::WordMemory;

use crate::errors;
use crate::memory::Memory;
use crate::pybuf::with_bytes;

/// Word at which the reference copy starts: the data ring of a queue region with up to 128
/// entries (so the copy lands in the same kind of page a commit writes).
const AT_WORD: usize = 1024;

/// Copies `data` into `mem` at byte 8192 and returns its length: with `memcpy`, or with
/// `words` as the commit copies a payload (`Relaxed` word stores, `store_le_bytes`). Refused
/// while a writer works on the memory.
pub(crate) fn copy_reference(
    py: Python<'_>,
    mem: &Memory,
    data: &Bound<'_, PyAny>,
    words_copy: bool,
) -> PyResult<usize> {
    if mem.claimed() {
        return Err(errors::claimed(
            py,
            u64::from(std::process::id()),
            "the reference copy would overwrite a writer's region: use a region without one",
        ));
    }
    let words = mem.words();
    with_bytes(data, |b| {
        let end = AT_WORD + b.len().div_ceil(8);
        if end > words.len() {
            return Err(PyValueError::new_err("payload does not fit the region"));
        }
        if words_copy {
            words.store_le_bytes(AT_WORD, b);
            return Ok(b.len());
        }
        // SAFETY: no other thread of this process accesses these words during the call: no
        // writer works on the memory (checked above; one can only be made by a call that needs
        // the GIL, which this call holds throughout), no other region object covers this
        // memory (`Memory`'s registry), and the attached buffer's owner promised not to touch
        // it (`Region.attach`).
        unsafe { words.store_le_bytes_exclusive(AT_WORD, b) };
        Ok(b.len())
    })?
}
