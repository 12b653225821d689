//! `shmsnap.Writer`: the queue strategy's single writer (DESIGN §5) — wait-free commits of
//! whole states, the newest one read back after a restart.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shmsnap_core::LayoutRequest;

use crate::errors;
use crate::owned::QueueHandle;
use crate::pybuf::with_bytes;
use crate::region::Region;

/// The single writer of a queue region: ``commit(data)`` stores a whole state as the next
/// entry (wait-free: no syscall, no lock, no waiting for the host), and ``newest()`` reads
/// the newest entry back — after a restart, the state the host restored.
///
/// ``Writer(region, entries=64, data_size=65536)`` configures a fresh region with a ring of
/// ``entries`` descriptors (a power of two) and ``data_size`` bytes of payload (a power of
/// two, at least the largest state), or attaches to the region the host restored, which
/// must have been configured with the same numbers (``MismatchError`` otherwise).
///
/// One writer per region: a second ``Writer``/``TripleClient`` raises ``ClaimedError``
/// until this one is closed (``close()``, the ``with`` statement, or garbage collection).
/// The host keeps the entries it can prove unmodified during its copy: the ring must hold
/// the commits made during one snapshot copy (``data_size`` several times the state).
#[pyclass(module = "shmsnap")]
pub(crate) struct Writer {
    /// `None` once closed.
    handle: Option<QueueHandle>,
    region: Py<Region>,
}

impl Writer {
    fn handle(&mut self) -> PyResult<&mut QueueHandle> {
        let h = self
            .handle
            .as_mut()
            .ok_or_else(|| errors::closed("Writer"))?;
        h.mem().check()?;
        Ok(h)
    }

    fn handle_ref(&self) -> PyResult<&QueueHandle> {
        let h = self
            .handle
            .as_ref()
            .ok_or_else(|| errors::closed("Writer"))?;
        h.mem().check()?;
        Ok(h)
    }
}

#[pymethods]
impl Writer {
    #[new]
    #[pyo3(signature = (region, *, entries = 64, data_size = 65536))]
    fn new(region: Bound<'_, Region>, entries: u64, data_size: u64) -> PyResult<Self> {
        let py = region.py();
        let mem = region.get().mem()?.clone();
        let claim = mem.claim(py)?;
        let request = LayoutRequest { entries, data_size };
        let handle = QueueHandle::open(py, mem.clone(), request)?;
        claim.keep();
        Ok(Writer {
            handle: Some(handle),
            region: region.unbind(),
        })
    }

    /// Commits ``data`` (``bytes`` or any contiguous buffer: ``bytearray``, ``memoryview``,
    /// a NumPy array, ...) as the next entry and returns its sequence number. Wait-free.
    ///
    /// Raises ``PayloadSizeError`` for an empty payload or one larger than ``data_size``,
    /// ``ExhaustedError`` when the region's sequence numbers run out. ``data`` must not be
    /// changed by another thread during the call.
    fn commit(&mut self, data: &Bound<'_, PyAny>) -> PyResult<u64> {
        let py = data.py();
        let writer = self.handle()?.writer();
        with_bytes(data, |bytes| writer.commit(bytes))?.map_err(|e| errors::commit(py, e))
    }

    /// The newest committed entry's payload as ``bytes`` (after a restart: the state the
    /// host restored), or ``None`` if the region holds no entry.
    ///
    /// A copy, not a view: the entry's bytes are overwritten once later commits evict it,
    /// and another process may write the region, so a zero-copy view could change under
    /// its reader. Treat what it returns as untrusted input (it is whatever the region
    /// holds): parse it defensively.
    fn newest<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let region = self.handle_ref()?.get().region();
        let Some(d) = region.newest() else {
            return Ok(None);
        };
        // `newest` returned a valid descriptor: its length is at most the data ring, which
        // lies inside the memory, so the allocation is bounded by the region's size.
        let len = usize::try_from(d.length)
            .map_err(|_| errors::read(shmsnap_core::ReadError::InvalidDescriptor))?;
        let bytes = PyBytes::new_with(py, len, |out| {
            region
                .read_payload(&d, out)
                .map(|_| ())
                .map_err(errors::read)
        })?;
        Ok(Some(bytes))
    }

    /// Sequence number of the newest entry, or ``None`` if the region holds none.
    #[getter]
    fn newest_seq(&self) -> PyResult<Option<u64>> {
        Ok(self.handle_ref()?.get().region().newest().map(|d| d.seq))
    }

    /// The sequence number the next commit will get.
    #[getter]
    fn next_seq(&self) -> PyResult<u64> {
        Ok(self.handle_ref()?.get().next_seq())
    }

    /// The descriptor count ``entries`` of the region's layout.
    #[getter]
    fn entries(&self) -> PyResult<u64> {
        Ok(self.handle_ref()?.get().layout().entries)
    }

    /// The data ring size ``data_size`` of the region's layout: the largest payload.
    #[getter]
    fn data_size(&self) -> PyResult<u64> {
        Ok(self.handle_ref()?.get().layout().data_size)
    }

    /// The region this writer commits to.
    #[getter]
    fn region(&self, py: Python<'_>) -> Py<Region> {
        self.region.clone_ref(py)
    }

    /// Gives up the region: another writer may then be opened. Idempotent.
    fn close(&mut self) {
        if let Some(h) = self.handle.take() {
            release(h);
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match &self.handle {
            Some(h) => {
                let w = h.get();
                format!(
                    "<shmsnap.Writer entries={} data_size={} next_seq={}>",
                    w.layout().entries,
                    w.layout().data_size,
                    w.next_seq()
                )
            }
            None => "<shmsnap.Writer closed>".to_owned(),
        }
    }
}

/// Drops a writer's handle and releases this process's claim (only in the process that
/// opened it: a forked child's copy releases nothing of the parent's).
fn release(h: QueueHandle) {
    let mem = h.mem().clone();
    drop(h);
    if mem.owned_here() {
        mem.release_claim();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}
