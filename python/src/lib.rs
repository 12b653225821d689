//! `shmsnap._native`: the Python package's extension module (PyO3, abi3 for CPython >= 3.9),
//! over `shmsnap-core` and `shmsnap-linux` directly. `python/shmsnap/__init__.py` re-exports
//! it; `python/shmsnap/_native.pyi` is its typed surface, `python/README.md` the user docs.
//!
//! | module | idea |
//! |---|---|
//! | `region` | `Region` (the host's memfd or a shared buffer), durability calls, `Status` |
//! | `queue` | `Writer`: wait-free commits, the newest state read back |
//! | `triple` | `TripleClient` and its `WriteGrant` context manager |
//! | `open` | every construction of core's `Writer`/`TripleClient` (the claim seam) |
//! | `writer_words` | the queue writer's word memory: payloads stored with `memcpy` |
//! | `owned` | core's borrowing types kept in Python objects (lifetime erasure, one place) |
//! | `memory` | the memory as atomic words; fork and one-writer guards |
//! | `pybuf` | the buffer protocol for abi3-py39 |
//! | `errors` | `shmsnap.Error` and its subclasses; typed errors to exceptions |
//! | `bench` | the reference of the commit benchmark |
//!
//! Soundness arguments: docs/DESIGN.md, "The Python binding".

mod bench;
mod errors;
mod memory;
mod open;
mod owned;
mod pybuf;
mod queue;
mod region;
mod triple;
mod writer_words;

use pyo3::prelude::*;

/// Marks every shmsnap object of the parent as foreign (`os.register_at_fork`, child side).
#[pyfunction]
fn _after_fork_in_child() {
    memory::after_fork_in_child();
}

/// The extension module. `gil_used`: the soundness argument for attached buffers rests on
/// the GIL serialising Python-level accesses with shmsnap's (an abi3 module is not loaded by
/// free-threaded builds anyway).
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<region::Region>()?;
    m.add_class::<region::Status>()?;
    m.add_class::<queue::Writer>()?;
    m.add_class::<triple::TripleClient>()?;
    m.add_class::<triple::WriteGrant>()?;
    let hook = wrap_pyfunction!(_after_fork_in_child, m)?;
    m.add_function(hook.clone())?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", hook)?;
    py.import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kwargs))?;
    errors::register(m)?;
    Ok(())
}
