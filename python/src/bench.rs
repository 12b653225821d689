//! The benchmark's reference (`python/bench/commit.py`): a PyO3 function that only copies a
//! payload into a shared mapping, the same way `Writer.commit` is called and takes its bytes
//! — the floor a binding's commit is measured against.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use shmsnap_core::WordMemory;

use crate::pybuf::with_bytes;
use crate::region::Region;

/// Word at which the reference copy starts: the data ring of a queue region with up to 128
/// entries (so the copy lands in the same kind of page a commit writes).
const AT_WORD: usize = 1024;

/// Copies ``data`` into ``region``'s memory at byte 8192 with ``memcpy`` and returns its
/// length: the reference of the commit benchmark. Refused while a writer works on the region.
#[pyfunction]
pub(crate) fn _copy_reference(
    region: &Bound<'_, Region>,
    data: &Bound<'_, PyAny>,
) -> PyResult<usize> {
    let py = region.py();
    let mem = region.get().mem()?;
    // Held for the copy: no Writer/TripleClient can work on the memory meanwhile.
    let _claim = mem.claim(py)?;
    let words = mem.words();
    with_bytes(data, |b| {
        let end = AT_WORD + b.len().div_ceil(8);
        if end > words.len() {
            return Err(PyValueError::new_err("payload does not fit the region"));
        }
        // SAFETY: no other thread of this process accesses these words during the call: the
        // claim excludes a writer, no other region object covers this memory (`Memory`'s
        // registry), and the GIL is held throughout, so no other shmsnap call runs.
        unsafe { words.store_le_bytes_exclusive(AT_WORD, b) };
        Ok(b.len())
    })?
}
