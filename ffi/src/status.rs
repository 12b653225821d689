//! Status codes, the error type every entry point returns, and the error text.
//!
//! Every function returns one of the `SHMSNAP_*` codes below. A code names a *kind* of
//! outcome that a caller handles differently (retry, wait, fix the call, re-initialise...);
//! the details (which field, how many bytes, which pid holds the region) are in the text.
//!
//! # Why a thread-local error text, not only a message per code
//!
//! A fixed message per code ([`shmsnap_strerror`], LMDB's `mdb_strerror`) cannot say *what*
//! was wrong: "payload of 5000 bytes does not fit: it must be 1 to 4096 bytes", "held by pid
//! 4242", "LISTEN_PID=12 but this process is 13". The core's errors carry exactly that, so
//! every failing call also stores its full text in a thread-local buffer that
//! [`shmsnap_error_message`] returns (the `dlerror` model). Thread-local, because handles of
//! different threads fail independently; per call, because the text is only built when a call
//! fails (the success path never formats or allocates). [`shmsnap_strerror`] stays for a code
//! alone (a code stored, logged or received from elsewhere).

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::io;

use shmsnap_core::triple::TripleError;
use shmsnap_core::{AttachError, CommitError, LayoutError, ReadError, RetainError, UnitError};
use shmsnap_linux::listen::ListenError;
use shmsnap_linux::reclaim::ReclaimError;

/// Success.
pub const SHMSNAP_OK: c_int = 0;
/// A required pointer is NULL: a handle, an output pointer, or a buffer whose length is not
/// zero. Fix the call.
pub const SHMSNAP_E_NULL: c_int = 1;
/// An argument is out of range: a layout, unit size or buffer count the format does not
/// allow, memory that is not 8-byte aligned, a read or write that does not fit, an entry that
/// is not one of this region's, a unit not granted in this transaction. Fix the call.
pub const SHMSNAP_E_INVALID: c_int = 2;
/// The handle is in use: it has an open transaction, grant, snapshot or frozen buffer, or
/// (a region) handles made from it are still open. End or close those first.
pub const SHMSNAP_E_BUSY: c_int = 3;
/// Another writer or triple client holds the region: one writer per region. The text names
/// the holder's pid. If that process is dead (killed or crashed without closing its writer),
/// `shmsnap_region_reclaim` clears its claim; under the shmsnap host, the host does it.
pub const SHMSNAP_E_CLAIMED: c_int = 4;
/// The region has no header yet: no client has configured it. Open the writer or client with
/// a layout to configure it; a host has nothing to snapshot yet.
pub const SHMSNAP_E_UNCONFIGURED: c_int = 5;
/// The region's header is not a valid header of the strategy asked for: not a shmsnap
/// region, an unknown format version, a corrupt header, or another strategy (a triple region
/// opened as a queue, or the reverse).
pub const SHMSNAP_E_BAD_HEADER: c_int = 6;
/// The region is configured with another layout than the one requested.
pub const SHMSNAP_E_MISMATCH: c_int = 7;
/// The region's sequence numbers (or stream offsets) are exhausted: re-initialise it.
pub const SHMSNAP_E_EXHAUSTED: c_int = 8;
/// A payload length is not allowed: zero, larger than the data ring, or larger than the
/// transaction reserved.
pub const SHMSNAP_E_PAYLOAD_SIZE: c_int = 9;
/// An output buffer is too small (or an image shorter than its meta pages); where the
/// function has a length output, it holds the length needed.
pub const SHMSNAP_E_BUFFER_TOO_SMALL: c_int = 10;
/// Nothing to return: no entry (or the entry with that seq is no longer live), nothing
/// published yet, nothing newer than the last persisted state to freeze.
pub const SHMSNAP_E_NOT_FOUND: c_int = 11;
/// The entry was evicted while it was being read: read the newest entry again.
pub const SHMSNAP_E_EVICTED: c_int = 12;
/// No tail unit is free or reclaimable: retire units, and evict older entries
/// (`shmsnap_writer_evict_before`) before the next transaction.
pub const SHMSNAP_E_NO_UNIT: c_int = 13;
/// A snapshot kept nothing: entries existed before the copy but none survived it. Do not
/// persist the image; keep the previous snapshot (the ring is too small for the copy time).
pub const SHMSNAP_E_STARVED: c_int = 14;
/// A copied image cannot be used: its header is corrupt, or the region was re-initialised
/// during the copy.
pub const SHMSNAP_E_IMAGE: c_int = 15;
/// The host's freeze lost its compare-exchange to the client every time: retry at the next
/// snapshot.
pub const SHMSNAP_E_CONTENDED: c_int = 16;
/// Another party breaks the protocol: a second client or host is changing the state words.
pub const SHMSNAP_E_PROTOCOL: c_int = 17;
/// A wait ended at its timeout.
pub const SHMSNAP_E_TIMEOUT: c_int = 18;
/// The region could not be taken from the environment the systemd way (`LISTEN_PID`,
/// `LISTEN_FDS`, `LISTEN_FDNAMES`): not started by a host, meant for another pid, no fd of
/// that name, already taken by this process, or not a usable region.
pub const SHMSNAP_E_LISTEN: c_int = 19;
/// A system call failed; the text has the OS error.
pub const SHMSNAP_E_IO: c_int = 20;
/// An internal error (a bug in shmsnap) was caught. The handle it happened on is poisoned:
/// every later call on it returns this code, except its close.
pub const SHMSNAP_E_PANIC: c_int = 21;

/// Every code with its fixed message, indexed by code.
const MESSAGES: [&CStr; 22] = [
    c"success",
    c"a required pointer is NULL",
    c"an argument is out of range",
    c"the handle is in use (open transaction, grant, snapshot, frozen buffer or child handles)",
    c"another writer or triple client holds the region (one writer per region)",
    c"the region is not configured yet",
    c"the region header is invalid or belongs to another strategy",
    c"the region is configured with another layout than the one requested",
    c"the region's sequence numbers are exhausted; re-initialise it",
    c"payload length not allowed",
    c"output buffer too small",
    c"not found",
    c"the entry was evicted while it was read",
    c"no tail unit is free or reclaimable",
    c"the snapshot kept no entry (starved); keep the previous snapshot",
    c"the copied image cannot be used",
    c"the host's freeze lost to the client every time; retry later",
    c"another client or host breaks the protocol",
    c"timed out",
    c"the region fd could not be taken from LISTEN_FDS",
    c"a system call failed",
    c"internal error (a bug in shmsnap); the handle is poisoned",
];

/// An error of an entry point: a status code and the text [`shmsnap_error_message`] returns.
#[derive(Debug)]
pub(crate) struct Error {
    /// One of the `SHMSNAP_E_*` codes.
    pub(crate) code: c_int,
    /// What went wrong, for a person.
    pub(crate) text: String,
}

/// Every constructor of an error is cold and never inlined: the success path of an entry point
/// (a commit, a publish) then stays small enough for the compiler to inline the core's code
/// into it, and the error text is only formatted when a call fails.
impl Error {
    /// An error with `code` and `text`.
    #[cold]
    #[inline(never)]
    pub(crate) fn new(code: c_int, text: impl fmt::Display) -> Error {
        Error {
            code,
            text: text.to_string(),
        }
    }

    /// `SHMSNAP_E_NULL` naming the argument.
    #[cold]
    #[inline(never)]
    pub(crate) fn null(what: &str) -> Error {
        Error::new(SHMSNAP_E_NULL, format_args!("{what} is NULL"))
    }

    /// `SHMSNAP_E_INVALID` with `text`.
    #[cold]
    #[inline(never)]
    pub(crate) fn invalid(text: impl fmt::Display) -> Error {
        Error::new(SHMSNAP_E_INVALID, text)
    }

    /// `SHMSNAP_E_BUSY` with `text`.
    #[cold]
    #[inline(never)]
    pub(crate) fn busy(text: impl fmt::Display) -> Error {
        Error::new(SHMSNAP_E_BUSY, text)
    }

    /// Stores the text for [`shmsnap_error_message`] and returns the code.
    #[cold]
    #[inline(never)]
    pub(crate) fn report(self) -> c_int {
        set_message(&self.text);
        self.code
    }
}

/// The code of a layout error: the request's problems are the caller's, the rest the header's.
fn layout_code(e: &LayoutError) -> c_int {
    match e {
        LayoutError::Unconfigured => SHMSNAP_E_UNCONFIGURED,
        LayoutError::Entries { .. }
        | LayoutError::DataSize { .. }
        | LayoutError::TooSmall { .. } => SHMSNAP_E_INVALID,
        _ => SHMSNAP_E_BAD_HEADER,
    }
}

impl From<LayoutError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: LayoutError) -> Error {
        Error::new(layout_code(&e), e)
    }
}

impl From<AttachError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: AttachError) -> Error {
        let code = match &e {
            AttachError::Layout(l) => layout_code(l),
            AttachError::Mismatch { .. } => SHMSNAP_E_MISMATCH,
            AttachError::Exhausted => SHMSNAP_E_EXHAUSTED,
            AttachError::Claimed { .. } => SHMSNAP_E_CLAIMED,
            _ => SHMSNAP_E_INVALID,
        };
        Error::new(code, e)
    }
}

impl From<CommitError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: CommitError) -> Error {
        let code = match e {
            CommitError::Exhausted => SHMSNAP_E_EXHAUSTED,
            _ => SHMSNAP_E_PAYLOAD_SIZE,
        };
        Error::new(code, e)
    }
}

impl From<ReadError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: ReadError) -> Error {
        let code = match e {
            ReadError::BufferTooSmall { .. } => SHMSNAP_E_BUFFER_TOO_SMALL,
            ReadError::Evicted { .. } => SHMSNAP_E_EVICTED,
            _ => SHMSNAP_E_INVALID,
        };
        Error::new(code, e)
    }
}

impl From<UnitError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: UnitError) -> Error {
        let code = match e {
            UnitError::Exhausted => SHMSNAP_E_NO_UNIT,
            _ => SHMSNAP_E_INVALID,
        };
        Error::new(code, e)
    }
}

impl From<TripleError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: TripleError) -> Error {
        let code = match &e {
            TripleError::Layout(l) => layout_code(l),
            TripleError::Mismatch { .. } => SHMSNAP_E_MISMATCH,
            TripleError::Exhausted => SHMSNAP_E_EXHAUSTED,
            TripleError::NoFreeBuffer | TripleError::ReleaseLost { .. } => SHMSNAP_E_PROTOCOL,
            TripleError::Contended { .. } | TripleError::Reclaimed { .. } => SHMSNAP_E_CONTENDED,
            TripleError::BufferLength { .. } => SHMSNAP_E_BUFFER_TOO_SMALL,
            TripleError::ImageState { .. } => SHMSNAP_E_IMAGE,
            TripleError::Claimed { .. } => SHMSNAP_E_CLAIMED,
            _ => SHMSNAP_E_INVALID,
        };
        Error::new(code, e)
    }
}

impl From<RetainError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: RetainError) -> Error {
        let code = match e {
            RetainError::ImageTooShort { .. } => SHMSNAP_E_BUFFER_TOO_SMALL,
            RetainError::Layout(_) | RetainError::LayoutChanged => SHMSNAP_E_IMAGE,
            _ => SHMSNAP_E_INVALID,
        };
        Error::new(code, e)
    }
}

impl From<ListenError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: ListenError) -> Error {
        Error::new(SHMSNAP_E_LISTEN, e)
    }
}

impl From<ReclaimError> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: ReclaimError) -> Error {
        let code = match &e {
            ReclaimError::TooShort { .. } => SHMSNAP_E_INVALID,
            ReclaimError::NotARegion { .. } => SHMSNAP_E_BAD_HEADER,
            ReclaimError::Unclaimed | ReclaimError::Changed { now: None, .. } => {
                SHMSNAP_E_NOT_FOUND
            }
            // A holder that may be alive, or a claim taken meanwhile: the region is claimed.
            _ => SHMSNAP_E_CLAIMED,
        };
        Error::new(code, e)
    }
}

impl From<io::Error> for Error {
    #[cold]
    #[inline(never)]
    fn from(e: io::Error) -> Error {
        Error::new(SHMSNAP_E_IO, e)
    }
}

thread_local! {
    /// The text of the last failed call on this thread (`shmsnap_error_message`).
    static MESSAGE: RefCell<CString> = RefCell::new(c"no error".to_owned());
}

/// Stores `text` as this thread's last error text (interior NULs become spaces).
fn set_message(text: &str) {
    let c = CString::new(text.replace('\0', " ")).unwrap_or_default();
    // `try_with`: during thread teardown the text is lost rather than panicking.
    let _ = MESSAGE.try_with(|m| *m.borrow_mut() = c);
}

/// The text of the most recent call on this thread that returned a code other than
/// `SHMSNAP_OK`: what went wrong, with the details the code alone cannot carry (which field,
/// how many bytes, which pid holds the region). `"no error"` before any failure.
///
/// Never NULL. The string belongs to the library: it stays valid until the next failing call
/// on this thread, or the thread's exit; copy it to keep it. Successful calls leave it alone
/// (as with `errno`), so read it right after the failing call.
///
/// Thread-safe (the text is per thread). Never blocks.
#[no_mangle]
pub extern "C" fn shmsnap_error_message() -> *const c_char {
    MESSAGE
        .try_with(|m| m.borrow().as_ptr())
        .unwrap_or(c"the error text is not available during thread teardown".as_ptr())
}

/// A fixed, static description of a status code (`"unknown shmsnap status code"` for a
/// value that is not one). For the details of the last failure use `shmsnap_error_message`.
///
/// Never NULL; the string is static. Thread-safe. Never blocks.
#[no_mangle]
pub extern "C" fn shmsnap_strerror(code: c_int) -> *const c_char {
    usize::try_from(code)
        .ok()
        .and_then(|i| MESSAGES.get(i))
        .map_or(c"unknown shmsnap status code".as_ptr(), |m| m.as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_own_message_and_unknown_codes_are_named() {
        let read = |c| {
            // SAFETY: `shmsnap_strerror` returns a static NUL-terminated string.
            unsafe { CStr::from_ptr(shmsnap_strerror(c)) }
                .to_str()
                .unwrap()
                .to_owned()
        };
        let all: Vec<String> = (0..MESSAGES.len() as c_int).map(read).collect();
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        assert_eq!(read(SHMSNAP_E_PANIC), all[21]);
        assert_eq!(read(-1), "unknown shmsnap status code");
        assert_eq!(read(22), "unknown shmsnap status code");
    }

    #[test]
    fn the_last_error_text_is_per_thread_and_survives_successes() {
        assert_eq!(Error::null("payload").report(), SHMSNAP_E_NULL);
        let text = || {
            // SAFETY: `shmsnap_error_message` returns a NUL-terminated string valid until the
            // next failure on this thread.
            unsafe { CStr::from_ptr(shmsnap_error_message()) }
                .to_string_lossy()
                .into_owned()
        };
        assert_eq!(text(), "payload is NULL");
        std::thread::spawn(move || assert_eq!(text(), "no error"))
            .join()
            .unwrap();
        assert_eq!(text(), "payload is NULL");
        Error::invalid("a\0b").report();
        assert_eq!(text(), "a b");
    }
}
