//! The exception hierarchy (`shmsnap.Error` and one subclass per kind of failure a user
//! handles differently) and the one place where core's and os-linux's typed errors become
//! Python exceptions.
//!
//! Every error a region's contents can cause arrives here as a typed value (core never panics
//! on region contents, DESIGN §3); nothing in this crate unwraps one.

use std::fmt::Display;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyModule;
use shmsnap_core::triple::TripleError;
use shmsnap_core::LayoutError as BadLayout;
use shmsnap_core::{AttachError, CommitError, ReadError, WordsError};
use shmsnap_linux::listen::ListenError;
use shmsnap_linux::reclaim::ReclaimError;

create_exception!(
    shmsnap,
    Error,
    PyException,
    "Base class of every error shmsnap raises (OSError aside)."
);
create_exception!(
    shmsnap,
    HostRegionError,
    Error,
    "Region.from_host() found no usable region: the program was not started by the shmsnap \
     host (or systemd with an fd store), the fd was already taken, or it is not a region."
);
create_exception!(
    shmsnap,
    FormatError,
    Error,
    "The memory does not hold a valid shmsnap region of the kind asked for (bad magic, \
     version, checksum or field, or a region of the other strategy)."
);
create_exception!(
    shmsnap,
    LayoutError,
    Error,
    "The requested layout is invalid or does not fit the memory, or the memory cannot hold \
     a region at all (too short, not 8-byte aligned)."
);
create_exception!(
    shmsnap,
    MismatchError,
    Error,
    "The region is already configured with another layout than the one requested \
     (attributes `found` and `requested`)."
);
create_exception!(
    shmsnap,
    ClaimedError,
    Error,
    "Another writer holds the region (attribute `holder`: its pid). One writer per region: \
     a second one would corrupt the first one's commits."
);
create_exception!(
    shmsnap,
    ForeignWriteError,
    Error,
    "The region changed in a way only another writer can cause (an entry evicted under a \
     read, no free triple buffer): something else writes this region."
);
create_exception!(
    shmsnap,
    ExhaustedError,
    Error,
    "The region's sequence numbers or stream offsets are exhausted; it must be \
     re-initialised."
);
create_exception!(
    shmsnap,
    PayloadSizeError,
    Error,
    "The payload is empty or larger than the data ring (attributes `len` and `max`)."
);
create_exception!(
    shmsnap,
    ForkedError,
    Error,
    "The object was created before os.fork() in the parent process: a forked child must \
     not use it (its stores would escape the host's write tracking). Open the region in the \
     process that writes it."
);
create_exception!(
    shmsnap,
    ClosedError,
    Error,
    "The Writer, TripleClient or WriteGrant was closed (or the grant's `with` block ended)."
);

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("HostRegionError", py.get_type::<HostRegionError>())?;
    m.add("FormatError", py.get_type::<FormatError>())?;
    m.add("LayoutError", py.get_type::<LayoutError>())?;
    m.add("MismatchError", py.get_type::<MismatchError>())?;
    m.add("ClaimedError", py.get_type::<ClaimedError>())?;
    m.add("ForeignWriteError", py.get_type::<ForeignWriteError>())?;
    m.add("ExhaustedError", py.get_type::<ExhaustedError>())?;
    m.add("PayloadSizeError", py.get_type::<PayloadSizeError>())?;
    m.add("ForkedError", py.get_type::<ForkedError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    Ok(())
}

/// An exception of type `E` with message `msg` and attributes `attrs` set on its value.
fn with_attrs<E: pyo3::PyTypeInfo>(py: Python<'_>, msg: String, attrs: &[(&str, u64)]) -> PyErr {
    let err = PyErr::new::<E, _>(msg);
    for (name, value) in attrs {
        // Setting an attribute on a fresh exception instance cannot fail in practice; if it
        // did, the exception still carries its message.
        let _ = err.value(py).setattr(*name, *value);
    }
    err
}

/// `ClaimedError` naming the holder's pid (also used for a second writer in this process).
pub(crate) fn claimed(py: Python<'_>, holder: u64, what: &str) -> PyErr {
    with_attrs::<ClaimedError>(py, what.to_owned(), &[("holder", holder)])
}

/// A header that is not a valid region (`FormatError`), or a request that cannot be laid out
/// in the memory (`LayoutError`).
pub(crate) fn layout(e: BadLayout) -> PyErr {
    match e {
        BadLayout::Entries { .. } | BadLayout::DataSize { .. } | BadLayout::TooSmall { .. } => {
            PyErr::new::<LayoutError, _>(e.to_string())
        }
        _ => PyErr::new::<FormatError, _>(format!("not a usable shmsnap region: {e}")),
    }
}

/// A request that cannot be laid out, whatever the core error says (a triple request is
/// checked on its own before the region is read, so its errors are the request's).
pub(crate) fn request(e: BadLayout) -> PyErr {
    PyErr::new::<LayoutError, _>(e.to_string())
}

/// A queue writer could not attach or initialise.
pub(crate) fn attach(py: Python<'_>, e: AttachError) -> PyErr {
    match e {
        AttachError::Layout(l) => layout(l),
        AttachError::Mismatch { found, requested } => {
            let err = PyErr::new::<MismatchError, _>(e.to_string());
            let found = (found.entries, found.data_size);
            let requested = (requested.entries, requested.data_size);
            let _ = err.value(py).setattr("found", found);
            let _ = err.value(py).setattr("requested", requested);
            err
        }
        AttachError::Exhausted => PyErr::new::<ExhaustedError, _>(e.to_string()),
        AttachError::Claimed { holder } => claimed(py, u64::from(holder.pid()), &e.to_string()),
        // `AlreadyConfigured` comes only from `init`, which this crate never calls alone;
        // future variants land here with their message.
        _ => PyErr::new::<Error, _>(e.to_string()),
    }
}

/// A commit could not be made.
pub(crate) fn commit(py: Python<'_>, e: CommitError) -> PyErr {
    match e {
        CommitError::PayloadSize { len, max } => {
            with_attrs::<PayloadSizeError>(py, e.to_string(), &[("len", len as u64), ("max", max)])
        }
        CommitError::Exhausted => PyErr::new::<ExhaustedError, _>(e.to_string()),
        _ => PyErr::new::<Error, _>(e.to_string()),
    }
}

/// A payload read failed: with this process as the only writer, only another writer can
/// evict or invalidate an entry under the read.
pub(crate) fn read(e: ReadError) -> PyErr {
    match e {
        ReadError::Evicted { .. } | ReadError::InvalidDescriptor => {
            PyErr::new::<ForeignWriteError, _>(format!(
                "the region changed under a read ({e}): another writer is active"
            ))
        }
        _ => PyErr::new::<Error, _>(e.to_string()),
    }
}

/// A triple-buffer operation failed.
pub(crate) fn triple(py: Python<'_>, e: TripleError) -> PyErr {
    match e {
        TripleError::Layout(l) => layout(l),
        TripleError::Mismatch { found, requested } => {
            let err = PyErr::new::<MismatchError, _>(e.to_string());
            let found = (found.buffers, found.buffer_size);
            let requested = (requested.buffers, requested.buffer_size);
            let _ = err.value(py).setattr("found", found);
            let _ = err.value(py).setattr("requested", requested);
            err
        }
        TripleError::Exhausted => PyErr::new::<ExhaustedError, _>(e.to_string()),
        TripleError::NoFreeBuffer => PyErr::new::<ForeignWriteError, _>(e.to_string()),
        TripleError::OutOfBounds { .. } => pyo3::exceptions::PyIndexError::new_err(e.to_string()),
        TripleError::Claimed { holder } => claimed(py, u64::from(holder.pid()), &e.to_string()),
        _ => PyErr::new::<Error, _>(e.to_string()),
    }
}

/// Memory that cannot be seen as words.
pub(crate) fn words(e: WordsError) -> PyErr {
    PyErr::new::<LayoutError, _>(e.to_string())
}

/// `Region.reclaim()` refused (the two "nothing to reclaim" cases are not errors there).
pub(crate) fn reclaim(py: Python<'_>, e: ReclaimError) -> PyErr {
    match &e {
        ReclaimError::Alive { holder, .. }
        | ReclaimError::Changed {
            now: Some(holder), ..
        } => claimed(py, u64::from(holder.pid()), &e.to_string()),
        ReclaimError::TooShort { .. } => PyErr::new::<LayoutError, _>(e.to_string()),
        ReclaimError::NotARegion { .. } => PyErr::new::<FormatError, _>(e.to_string()),
        _ => PyErr::new::<Error, _>(e.to_string()),
    }
}

/// `Region.from_host()` failed.
pub(crate) fn listen(e: ListenError) -> PyErr {
    PyErr::new::<HostRegionError, _>(e.to_string())
}

/// `ClosedError` for `what`.
pub(crate) fn closed(what: impl Display) -> PyErr {
    PyErr::new::<ClosedError, _>(format!("{what} is closed"))
}

/// `ForkedError` for an object created in the parent process.
pub(crate) fn forked() -> PyErr {
    PyErr::new::<ForkedError, _>(
        "this shmsnap object was created before os.fork(), in the parent process: a forked \
         child must not use it (open the region in the process that writes it)",
    )
}
