//! `shmsnap.TripleClient` and its `WriteGrant`: the triple-buffer strategy (DESIGN §6) —
//! whole fixed-size states published into N >= 3 buffers, the newest one read back.

use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PySlice, PyTuple};
use shmsnap_core::triple::{TripleLayout, TripleRequest};
use shmsnap_core::PAGE_SIZE;

use crate::errors;
use crate::owned::TripleHandle;
use crate::pybuf::{with_bytes, Export};
use crate::region::Region;

/// The single client of a triple-buffer region: publishes whole states of a fixed size
/// (a board, an order book, a NumPy array) and reads the newest one back after a restart.
///
/// ``TripleClient(region, buffer_size, buffers=3)`` configures a fresh region with
/// ``buffers`` buffers of ``buffer_size`` bytes (rounded up to a multiple of 4096), or
/// attaches to the region the host restored (``MismatchError`` if it was configured
/// otherwise).
///
/// Write a state in place with ``with client.write() as buf: buf[:n] = data`` (published
/// when the block ends, discarded if it raises), or in one call with ``publish(data)``.
/// One writer per region, as for ``Writer`` (``ClaimedError``).
#[pyclass(module = "shmsnap")]
pub(crate) struct TripleClient {
    /// `None` once closed.
    handle: Option<TripleHandle>,
    region: Py<Region>,
    /// Number of grants opened: the open grant's token (a `WriteGrant` object of an older
    /// grant finds its token stale and refuses to act).
    grants: u64,
}

impl TripleClient {
    fn handle(&mut self) -> PyResult<&mut TripleHandle> {
        let h = self
            .handle
            .as_mut()
            .ok_or_else(|| errors::closed("TripleClient"))?;
        h.mem().check()?;
        Ok(h)
    }

    /// The layout (fixed: readable while a grant is open too).
    fn layout(&self) -> PyResult<TripleLayout> {
        let h = self
            .handle
            .as_ref()
            .ok_or_else(|| errors::closed("TripleClient"))?;
        Ok(h.layout())
    }

    fn client(
        &self,
    ) -> PyResult<&shmsnap_core::triple::TripleClient<'static, [std::sync::atomic::AtomicU64]>>
    {
        let h = self
            .handle
            .as_ref()
            .ok_or_else(|| errors::closed("TripleClient"))?;
        h.mem().check()?;
        h.client().ok_or_else(grant_is_open)
    }
}

fn grant_is_open() -> PyErr {
    PyErr::new::<errors::Error, _>(
        "a write grant of this TripleClient is open: publish or discard it first (end its \
         `with` block)",
    )
}

#[pymethods]
impl TripleClient {
    #[new]
    #[pyo3(signature = (region, buffer_size, *, buffers = 3))]
    fn new(region: Bound<'_, Region>, buffer_size: u64, buffers: u64) -> PyResult<Self> {
        let py = region.py();
        let mem = region.get().mem()?.clone();
        let claim = mem.claim(py)?;
        let buffer_size = buffer_size
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or_else(|| PyValueError::new_err("buffer_size is too large"))?;
        let request = TripleRequest {
            buffers,
            buffer_size,
        };
        let handle = TripleHandle::open(py, mem.clone(), request)?;
        claim.keep();
        Ok(TripleClient {
            handle: Some(handle),
            region: region.unbind(),
            grants: 0,
        })
    }

    /// Takes a buffer for writing and returns its ``WriteGrant``, a context manager:
    /// ``with client.write() as buf: buf[:n] = data`` publishes when the block ends and
    /// discards the buffer if the block raises. The buffer's old contents are unspecified:
    /// write the whole state. Wait-free.
    ///
    /// Raises ``ForeignWriteError`` if no buffer is free (only another client or host
    /// changing the state words can cause it), ``ExhaustedError``.
    fn write(slf: &Bound<'_, Self>) -> PyResult<WriteGrant> {
        let py = slf.py();
        let mut this = slf.try_borrow_mut()?;
        let seq = match this.handle()?.begin() {
            Ok(seq) => seq,
            Err(None) => return Err(grant_is_open()),
            Err(Some(e)) => return Err(errors::triple(py, e)),
        };
        this.grants += 1;
        let len = this.buffer_size()?;
        Ok(WriteGrant {
            client: slf.clone().unbind(),
            token: this.grants,
            seq,
            len,
        })
    }

    /// Publishes ``data`` (any contiguous buffer of at most ``buffer_size`` bytes) at the
    /// start of a fresh buffer in one call and returns its seq. The rest of the buffer is
    /// unspecified. Wait-free.
    fn publish(&mut self, data: &Bound<'_, PyAny>) -> PyResult<u64> {
        let py = data.py();
        let h = self.handle()?;
        let seq = match h.begin() {
            Ok(seq) => seq,
            Err(None) => return Err(grant_is_open()),
            Err(Some(e)) => return Err(errors::triple(py, e)),
        };
        let written = match h.grant() {
            Some(g) => with_bytes(data, |b| write_at(g, 0, b))?,
            None => Err(grant_is_open()),
        };
        match written {
            Ok(()) => {
                h.publish();
                Ok(seq)
            }
            Err(e) => {
                h.discard();
                Err(e)
            }
        }
    }

    /// The newest published state (after a restart: the one the host restored), the whole
    /// buffer as ``bytes``, or ``None`` if nothing was ever published.
    ///
    /// A copy: the buffer is reused for writing once newer states are published, so a view
    /// would change under its reader. Treat the bytes as untrusted input.
    fn read_newest<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let client = self.client()?;
        if client.newest().is_none() {
            return Ok(None);
        }
        let len = usize::try_from(client.layout().buffer_size)
            .map_err(|_| PyValueError::new_err("buffer too large for this machine"))?;
        let bytes = PyBytes::new_with(py, len, |out| {
            client
                .read_newest(0, out)
                .map(|_| ())
                .map_err(|e| errors::triple(py, e))
        })?;
        Ok(Some(bytes))
    }

    /// Copies the first ``len(out)`` bytes of the newest state into ``out`` (a writable
    /// contiguous buffer, e.g. a NumPy array, at most ``buffer_size`` bytes) and returns the
    /// state's seq, or ``None`` (``out`` untouched) if nothing was ever published.
    fn read_newest_into(&self, out: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let py = out.py();
        let client = self.client()?;
        let export = Export::writable(out)?;
        let len = export.len();
        let size = client.layout().buffer_size;
        if len as u64 > size {
            return Err(PyIndexError::new_err(format!(
                "out holds {len} bytes, more than the buffer size {size}"
            )));
        }
        let mut tmp = vec![0u8; len];
        let Some(seq) = client
            .read_newest(0, &mut tmp)
            .map_err(|e| errors::triple(py, e))?
        else {
            return Ok(None);
        };
        if len > 0 {
            // SAFETY: `export` is a writable export of `len` contiguous bytes, alive and in
            // place until it drops at the end of this function; `tmp` is a separate
            // allocation of `len` bytes. The caller's contract (no other thread changes
            // `out` during the call) is the one of any buffer-filling call in Python.
            unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), export.ptr(), len) };
        }
        Ok(Some(seq))
    }

    /// Seq of the newest published state, or ``None``.
    #[getter]
    fn newest_seq(&self) -> PyResult<Option<u64>> {
        Ok(self.client()?.newest().map(|(_, seq)| seq))
    }

    /// The seq the next publication will get.
    #[getter]
    fn next_seq(&self) -> PyResult<u64> {
        Ok(self.client()?.next_seq())
    }

    /// Bytes per buffer (a multiple of 4096).
    #[getter]
    fn buffer_size(&self) -> PyResult<u64> {
        Ok(self.layout()?.buffer_size)
    }

    /// Number of buffers.
    #[getter]
    fn buffers(&self) -> PyResult<u64> {
        Ok(self.layout()?.buffers)
    }

    /// The region this client publishes to.
    #[getter]
    fn region(&self, py: Python<'_>) -> Py<Region> {
        self.region.clone_ref(py)
    }

    /// Gives up the region (discarding an open grant): another writer may then be opened.
    /// Idempotent.
    fn close(&mut self) {
        if let Some(h) = self.handle.take() {
            let mem = h.mem().clone();
            drop(h);
            if mem.owned_here() {
                mem.release_claim();
            }
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&mut self, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match self.handle.as_ref().and_then(TripleHandle::client) {
            Some(c) => format!(
                "<shmsnap.TripleClient buffers={} buffer_size={} next_seq={}>",
                c.layout().buffers,
                c.layout().buffer_size,
                c.next_seq()
            ),
            None if self.handle.is_some() => "<shmsnap.TripleClient writing>".to_owned(),
            None => "<shmsnap.TripleClient closed>".to_owned(),
        }
    }
}

impl Drop for TripleClient {
    fn drop(&mut self) {
        self.close();
    }
}

/// Writes `bytes` at `offset` of the grant's buffer at `memcpy` speed.
fn write_at(
    g: &mut shmsnap_core::triple::WriteGrant<'static, 'static, [std::sync::atomic::AtomicU64]>,
    offset: usize,
    bytes: &[u8],
) -> PyResult<()> {
    // SAFETY: `write_exclusive` needs that no other thread of this process accesses the
    // buffer's words during the call. The buffer is WRITING (no host touches it), only this
    // grant writes it, and the grant is reached only through `&mut TripleClient` (PyO3's
    // borrow flag: one caller at a time). Nothing else in this process can reach the words:
    // shmsnap hands out no view of region memory, and an attached buffer's owner promised not
    // to touch it (`Region.attach`'s contract).
    let r = unsafe { g.write_exclusive(offset, bytes) };
    r.map_err(|e| PyIndexError::new_err(e.to_string()))
}

/// A buffer taken for writing (``TripleClient.write()``): a context manager and a
/// fixed-size, write-mostly byte sequence.
///
/// ``buf[a:b] = data`` and ``buf.write(data, offset)`` copy bytes in; ``buf[a:b]``,
/// ``buf[i]`` and ``buf.read()`` read back what was written (the rest is unspecified).
/// ``publish()`` / ``discard()`` end the grant explicitly; the ``with`` statement calls one
/// of them. After that, every use raises ``ClosedError``: the grant gives no view of shared
/// memory that could outlive it (a view kept past ``publish`` would change a buffer the host
/// may be copying).
#[pyclass(module = "shmsnap")]
pub(crate) struct WriteGrant {
    client: Py<TripleClient>,
    /// The client's grant count when this grant was opened.
    token: u64,
    seq: u64,
    /// The buffer size.
    len: u64,
}

impl WriteGrant {
    /// Runs `f` on the open grant of the client, if it is still this one.
    fn with_grant<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(
            &mut shmsnap_core::triple::WriteGrant<'static, 'static, [std::sync::atomic::AtomicU64]>,
        ) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut client = self.client.bind(py).try_borrow_mut()?;
        if client.grants != self.token {
            return Err(errors::closed("WriteGrant"));
        }
        let h = client.handle()?;
        match h.grant() {
            Some(g) => f(g),
            None => Err(errors::closed("WriteGrant")),
        }
    }

    /// Ends the grant: publish (`Some(seq)`) or discard (`None`).
    fn end(&self, py: Python<'_>, publish: bool) -> PyResult<Option<u64>> {
        let mut client = self.client.bind(py).try_borrow_mut()?;
        if client.grants != self.token {
            return Err(errors::closed("WriteGrant"));
        }
        let h = client.handle()?;
        if !h.grant_open() {
            return Err(errors::closed("WriteGrant"));
        }
        Ok(if publish {
            h.publish()
        } else {
            h.discard();
            None
        })
    }

    /// `(start, length)` of a step-1 slice or an index `key` in the buffer.
    fn range(&self, key: &Bound<'_, PyAny>) -> PyResult<(usize, usize, bool)> {
        let len =
            isize::try_from(self.len).map_err(|_| PyValueError::new_err("buffer too large"))?;
        if let Ok(slice) = key.cast::<PySlice>() {
            let ix = slice.indices(len)?;
            if ix.step != 1 {
                return Err(PyValueError::new_err(
                    "only slices with step 1 are supported",
                ));
            }
            // `indices` clamps start into 0..=len and gives the length (>= 0) for step 1.
            let start = usize::try_from(ix.start).unwrap_or(0);
            return Ok((start, ix.slicelength, true));
        }
        let i: isize = key
            .extract()
            .map_err(|_| PyTypeError::new_err("WriteGrant indices must be integers or slices"))?;
        let i = if i < 0 { i + len } else { i };
        if !(0..len).contains(&i) {
            return Err(PyIndexError::new_err("WriteGrant index out of range"));
        }
        Ok((i as usize, 1, false))
    }
}

#[pymethods]
impl WriteGrant {
    /// The seq ``publish()`` will publish.
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// The buffer size in bytes.
    fn __len__(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    /// Copies ``data`` (any contiguous buffer) into the buffer at ``offset``.
    #[pyo3(signature = (data, offset = 0))]
    fn write(&self, data: &Bound<'_, PyAny>, offset: usize) -> PyResult<()> {
        self.with_grant(data.py(), |g| with_bytes(data, |b| write_at(g, offset, b))?)
    }

    /// ``length`` bytes at ``offset`` (default: to the end) as ``bytes``.
    #[pyo3(signature = (offset = 0, length = None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        offset: usize,
        length: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let total = usize::try_from(self.len).unwrap_or(usize::MAX);
        let length = length.unwrap_or_else(|| total.saturating_sub(offset));
        self.with_grant(py, |g| {
            let mut out = vec![0u8; length.min(total)];
            if out.len() < length {
                return Err(PyIndexError::new_err("read past the end of the buffer"));
            }
            g.read(offset, &mut out)
                .map_err(|e| PyIndexError::new_err(e.to_string()))?;
            Ok(PyBytes::new(py, &out))
        })
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = key.py();
        let (start, n, is_slice) = self.range(key)?;
        if !is_slice {
            let b: u8 = value
                .extract()
                .map_err(|_| PyTypeError::new_err("a byte value (0..=255) is required"))?;
            return self.with_grant(py, |g| write_at(g, start, &[b]));
        }
        self.with_grant(py, |g| {
            with_bytes(value, |b| {
                if b.len() != n {
                    return Err(PyValueError::new_err(format!(
                        "cannot assign {} bytes to a slice of {n} bytes (the buffer has a fixed \
                         size; use buf[:{}] = data or buf.write(data, offset))",
                        b.len(),
                        b.len()
                    )));
                }
                write_at(g, start, b)
            })?
        })
    }

    fn __getitem__<'py>(&self, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = key.py();
        let (start, n, is_slice) = self.range(key)?;
        let bytes = self.read(py, start, Some(n))?;
        if is_slice {
            Ok(bytes.into_any())
        } else {
            Ok(bytes.as_bytes()[0].into_pyobject(py)?.into_any())
        }
    }

    /// Publishes the buffer as the newest state and returns its seq; ends the grant.
    fn publish(&self, py: Python<'_>) -> PyResult<u64> {
        self.end(py, true)?
            .ok_or_else(|| errors::closed("WriteGrant"))
    }

    /// Discards the buffer (nothing is published); ends the grant.
    fn discard(&self, py: Python<'_>) -> PyResult<()> {
        self.end(py, false).map(|_| ())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Publishes if the block ended normally, discards if it raised; never swallows the
    /// exception.
    #[pyo3(signature = (exc_type, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let raised = exc_type.is_some_and(|t| !t.is_none());
        match self.end(py, !raised) {
            Ok(_) => Ok(false),
            // Ended inside the block (explicit publish/discard): nothing left to do.
            Err(e) if e.is_instance_of::<errors::ClosedError>(py) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn __repr__(&self) -> String {
        format!("<shmsnap.WriteGrant seq={} len={}>", self.seq, self.len)
    }
}

impl Drop for WriteGrant {
    fn drop(&mut self) {
        // A grant dropped without publish/discard (no `with`, an exception before `__exit__`
        // ran) is discarded, as core's grant is; a stale one (ended already) does nothing.
        Python::attach(|py| {
            if let Ok(mut client) = self.client.bind(py).try_borrow_mut() {
                if client.grants == self.token {
                    if let Some(h) = client.handle.as_mut() {
                        if h.mem().owned_here() {
                            h.discard();
                        }
                    }
                }
            }
        });
    }
}
