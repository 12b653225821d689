//! The buffer protocol (PEP 3118) for an abi3 module that loads on CPython 3.9 and 3.10.
//!
//! `PyObject_GetBuffer`, `PyBuffer_Release` and `Py_buffer` entered the *limited* API only in
//! CPython 3.11, so PyO3 offers its `buffer` module to abi3 builds from 3.11 on. The functions
//! are exported by every CPython 3 and the struct's layout has not changed since 3.3 (3.11
//! froze exactly that layout into the stable ABI), so this module declares them itself, as
//! CPython's `Include/pybuffer.h` does, and the abi3-py39 wheel resolves them against the
//! interpreter that loads it. `python/ci.sh` imports the same wheel into every CPython >= 3.9
//! it finds and commits through a NumPy-free buffer, which exercises these declarations.
//!
//! Two uses, two types:
//! - [`with_bytes`]: a payload read for the duration of one call (commit), `bytes` without an
//!   export;
//! - [`Export`]: a writable export held for as long as a `Region` lives (`Region.attach`). A
//!   held export forbids the exporter to resize, free or move its memory (`bytearray`,
//!   `mmap`, `array`, NumPy and `memoryview` all refuse with `BufferError` while one exists).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::ptr;

use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// `Py_buffer` of `Include/pybuffer.h` (CPython >= 3.3, stable ABI since 3.11).
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut ffi::PyObject,
    len: ffi::Py_ssize_t,
    itemsize: ffi::Py_ssize_t,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut ffi::Py_ssize_t,
    strides: *mut ffi::Py_ssize_t,
    suboffsets: *mut ffi::Py_ssize_t,
    internal: *mut c_void,
}

impl RawBuffer {
    const fn empty() -> Self {
        RawBuffer {
            buf: ptr::null_mut(),
            obj: ptr::null_mut(),
            len: 0,
            itemsize: 0,
            readonly: 0,
            ndim: 0,
            format: ptr::null_mut(),
            shape: ptr::null_mut(),
            strides: ptr::null_mut(),
            suboffsets: ptr::null_mut(),
            internal: ptr::null_mut(),
        }
    }
}

/// `PyBUF_SIMPLE`: a contiguous buffer of bytes, no shape or strides (an exporter that cannot
/// give one raises `BufferError`).
const PYBUF_SIMPLE: c_int = 0;
/// `PyBUF_WRITABLE`.
const PYBUF_WRITABLE: c_int = 0x0001;

extern "C" {
    fn PyObject_GetBuffer(obj: *mut ffi::PyObject, view: *mut RawBuffer, flags: c_int) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// Fills `view` with an export of `obj`.
///
/// # Safety
///
/// The caller must release a successful export with `PyBuffer_Release` on the same `view`,
/// at the same address, while attached to the interpreter.
unsafe fn get(obj: &Bound<'_, PyAny>, view: *mut RawBuffer, flags: c_int) -> PyResult<()> {
    // SAFETY: `obj` is a live object (the borrow holds a reference) and the thread is attached
    // (a `Bound` proves it); `view` points to writable memory of `Py_buffer`'s layout.
    let rc = unsafe { PyObject_GetBuffer(obj.as_ptr(), view, flags) };
    if rc == 0 {
        return Ok(());
    }
    let py = obj.py();
    let cause = PyErr::take(py);
    // Only "cannot export that" (BufferError, TypeError, or ValueError as NumPy raises for a
    // non-contiguous array) becomes the TypeError below; anything else (MemoryError, ...)
    // propagates as raised.
    let other = |e: &PyErr| {
        !e.is_instance_of::<PyBufferError>(py)
            && !e.is_instance_of::<PyTypeError>(py)
            && !e.is_instance_of::<PyValueError>(py)
    };
    if let Some(e) = cause.as_ref().filter(|e| other(e)) {
        return Err(e.clone_ref(py));
    }
    let what = obj
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    let (kind, how) = if flags & PYBUF_WRITABLE != 0 {
        (
            "writable ",
            "bytearray, mmap.mmap, array.array, a NumPy array",
        )
    } else {
        ("", "bytes, bytearray, memoryview, a NumPy array")
    };
    let err = PyTypeError::new_err(format!(
        "a contiguous {kind}bytes-like object is required ({how}), not '{what}'"
    ));
    err.set_cause(py, cause);
    Err(err)
}

/// Calls `f` with the bytes of `data`: `bytes` directly, anything else through a short-lived
/// buffer export (contiguous, read-only).
///
/// The slice is valid for the call only. Like CPython's own `bytes(obj)`, this reads the
/// exporter's memory as it is; the caller's contract (docs: "the object must not be changed
/// by another thread during the call") is what makes the `&[u8]` not race.
pub(crate) fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let mut view = RawBuffer::empty();
    // SAFETY: released by `Release` below on this very `view`, which does not move (a local
    // borrowed mutably by the guard until the end of this function), with the thread attached.
    unsafe { get(data, &mut view, PYBUF_SIMPLE)? };
    let guard = Release(&mut view);
    let len = usize::try_from(guard.0.len).unwrap_or(0);
    let bytes: &[u8] = if len == 0 || guard.0.buf.is_null() {
        &[]
    } else {
        // SAFETY: a successful PyBUF_SIMPLE export describes `len` contiguous, initialised
        // bytes at `buf`, kept alive and in place until the release (the guard outlives the
        // slice); see the function's docs for concurrent writers.
        unsafe { std::slice::from_raw_parts(guard.0.buf.cast::<u8>(), len) }
    };
    Ok(f(bytes))
}

/// Releases a stack export when dropped (also if `f` unwinds).
struct Release<'a>(&'a mut RawBuffer);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        // SAFETY: `self.0` holds a successful export (only constructed after `get` returned
        // Ok) and has not moved; `with_bytes` runs attached, and so does this drop.
        unsafe { PyBuffer_Release(self.0) };
    }
}

/// A writable, contiguous buffer export held until drop: the exporter keeps the memory alive,
/// in place and at its length meanwhile (PEP 3118), and the export holds a reference to the
/// exporting object.
pub(crate) struct Export {
    /// Boxed: released at the address it was filled at. Invariant: a successful writable
    /// `PyBUF_SIMPLE` export, not yet released.
    view: Box<RawBuffer>,
}

// SAFETY: the export's memory is only accessed through atomic words (see `memory.rs`), and
// the view is released with the thread attached (`Drop` attaches), from whichever thread
// drops it: CPython allows releasing an export on any thread that holds the GIL.
unsafe impl Send for Export {}
// SAFETY: `&Export` only reads the immutable pointer and length.
unsafe impl Sync for Export {}

impl Export {
    /// Exports `obj` writable and contiguous.
    ///
    /// # Errors
    ///
    /// `TypeError` (caused by the exporter's `BufferError`) if `obj` has no buffer, a
    /// read-only one, or a non-contiguous one.
    pub fn writable(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut view = Box::new(RawBuffer::empty());
        // SAFETY: released in `Drop`, on this boxed view (its address never changes), with
        // the thread attached.
        unsafe { get(obj, &mut *view, PYBUF_WRITABLE)? };
        let export = Export { view };
        if export.view.readonly != 0 {
            // Drop releases it.
            return Err(PyBufferError::new_err(
                "the exporter returned a read-only buffer for a writable request",
            ));
        }
        Ok(export)
    }

    /// Start of the exported memory.
    pub fn ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }

    /// Length of the exported memory in bytes.
    pub fn len(&self) -> usize {
        usize::try_from(self.view.len).unwrap_or(0)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        Python::attach(|_| {
            // SAFETY: the view holds a successful, unreleased export at its boxed address
            // (invariant), and the thread is attached.
            unsafe { PyBuffer_Release(&mut *self.view) }
        });
    }
}
