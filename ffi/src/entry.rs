//! How every entry point runs: NULL and poison checks, the caught panic, the error text, and
//! the checked views of the caller's pointers.
//!
//! # Why `catch_unwind` at every entry point, not `panic = "abort"`
//!
//! No panic may unwind into C. Since Rust 1.81 an unwind that reaches an `extern "C"`
//! function aborts the process, so the language already guarantees that much; the choice is
//! what a C caller sees instead of an abort. The core is written never to panic (every index
//! from the region is checked, `# Panics: never`), so a panic here is a bug in shmsnap. A
//! runtime embedding this library (a database, a game server) holds far more state than one
//! shmsnap handle; aborting all of it for one handle's bug is the wrong trade, and
//! `panic = "abort"` would also have to be set in the workspace's single release profile,
//! changing the host binary and every test. So each entry point runs its body under
//! [`std::panic::catch_unwind`] (free on the path that does not panic: no extra instructions,
//! only unwind tables), returns `SHMSNAP_E_PANIC` with the panic's text, and **poisons** the
//! handle it ran on: its state may be half-updated, so every later call on it returns
//! `SHMSNAP_E_PANIC` until it is closed. Nothing it wrote is trusted by anyone: the host
//! validates the region as hostile input whatever a client did.
//!
//! # Pointers from C
//!
//! Every pointer is checked for NULL before use (`Handle::from_ptr`, `bytes`,
//! `bytes_mut`, `out`); a NULL buffer is allowed only with a zero length. What cannot be
//! checked — that a non-NULL pointer is valid for its length and not being written by another
//! thread during the call — is each function's `# Safety` contract, restated in the header.

use std::any::Any;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::status::{Error, SHMSNAP_E_PANIC, SHMSNAP_OK};

/// A handle type: it has a name for messages and a poison flag.
pub(crate) trait Handle {
    /// The handle's C type name, for messages.
    const NAME: &'static str;

    /// Set once a call on this handle panicked; read at every later entry.
    fn poison(&self) -> &AtomicBool;

    /// The handle behind `ptr`, refused if NULL or poisoned.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or points to a live handle of this type (made by this library, not yet
    /// closed), which no other thread uses during the call.
    unsafe fn from_ptr<'a>(ptr: *const Self) -> Result<&'a Self, Error>
    where
        Self: Sized,
    {
        // SAFETY: the caller's contract: NULL or a live handle of this type.
        let h = unsafe { ptr.as_ref() }.ok_or_else(|| Error::null(Self::NAME))?;
        // Relaxed: a flag this library sets on its own handle after a panic; the handle's
        // contract (one thread at a time) orders the calls, so nothing needs publishing.
        if h.poison().load(Ordering::Relaxed) {
            return Err(Error::new(
                SHMSNAP_E_PANIC,
                format_args!(
                    "this {} is poisoned: an earlier call on it hit an internal error; close it",
                    Self::NAME
                ),
            ));
        }
        Ok(h)
    }
}

/// The text of a panic payload.
fn panic_text(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs `body` for an entry point: `SHMSNAP_OK`, or the error's code with its text stored;
/// a panic becomes `SHMSNAP_E_PANIC` and poisons the handle whose flag `body` last passed to
/// `mark` (the module docs say why). Inlined into each entry point: one frame, not two, on
/// the commit path.
#[inline(always)]
pub(crate) fn run(body: impl FnOnce(&mut Poison<'_>) -> Result<(), Error>) -> c_int {
    let mut poison = Poison(None);
    let r = catch_unwind(AssertUnwindSafe(|| body(&mut poison)));
    match r {
        Ok(Ok(())) => SHMSNAP_OK,
        Ok(Err(e)) => e.report(),
        Err(p) => panicked(poison.0, p),
    }
}

/// The panic branch of [`run`]: poisons `flag`'s handle and reports the panic.
#[cold]
#[inline(never)]
fn panicked(flag: Option<&AtomicBool>, p: Box<dyn Any + Send>) -> c_int {
    if let Some(flag) = flag {
        // Relaxed: see `Handle::from_ptr`.
        flag.store(true, Ordering::Relaxed);
    }
    Error::new(
        SHMSNAP_E_PANIC,
        format_args!(
            "internal error (a bug in shmsnap, please report it): {}",
            panic_text(p.as_ref())
        ),
    )
    .report()
}

/// The poison flag of the handle an entry point works on (none before it found its handle).
pub(crate) struct Poison<'a>(Option<&'a AtomicBool>);

impl<'a> Poison<'a> {
    /// Checks `ptr` like [`Handle::from_ptr`] and remembers its flag for a panic.
    ///
    /// # Safety
    ///
    /// As [`Handle::from_ptr`].
    pub(crate) unsafe fn handle<H: Handle>(&mut self, ptr: *const H) -> Result<&'a H, Error> {
        // SAFETY: the caller's contract, passed on.
        let h = unsafe { H::from_ptr(ptr) }?;
        self.0 = Some(h.poison());
        Ok(h)
    }
}

/// The caller's `len` bytes at `ptr` (any pointer when `len` is 0).
///
/// The success path is two tests (NULL, then a length no slice can have) and no stores: every
/// other outcome — an empty buffer at NULL, the errors and their text — is sorted out in
/// [`unusable`], out of line, so the commit path does not carry it (benches/README.md, "the C
/// ABI's fixed cost").
///
/// # Safety
///
/// If `len > 0` and `ptr` is not NULL: `ptr` is valid for reads of `len` bytes, which no
/// other thread writes during the call.
#[inline(always)]
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if ptr.is_null() || len > isize::MAX as usize {
        return unusable(ptr.is_null(), len, what).map(|()| &[][..]);
    }
    // SAFETY: non-NULL and at most isize::MAX bytes (both checked); valid and unaliased by
    // the caller's contract when `len > 0`, and any non-NULL pointer is valid for a read of 0
    // bytes; u8 needs no alignment.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The caller's writable `len` bytes at `ptr` (any pointer when `len` is 0); as [`bytes`].
///
/// # Safety
///
/// If `len > 0` and `ptr` is not NULL: `ptr` is valid for writes of `len` bytes, which no
/// other thread accesses during the call.
#[inline(always)]
pub(crate) unsafe fn bytes_mut<'a>(
    ptr: *mut u8,
    len: usize,
    what: &str,
) -> Result<&'a mut [u8], Error> {
    if ptr.is_null() || len > isize::MAX as usize {
        return unusable(ptr.is_null(), len, what).map(|()| &mut [][..]);
    }
    // SAFETY: non-NULL and at most isize::MAX bytes (both checked); valid and exclusive by
    // the caller's contract when `len > 0`, and any non-NULL pointer is valid for an access
    // of 0 bytes; u8 needs no alignment.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// The rare outcomes of [`bytes`] and [`bytes_mut`], reached when `ptr` is NULL or `len` is
/// above `isize::MAX`: `Ok` for an empty buffer at NULL (the caller makes an empty slice),
/// else `SHMSNAP_E_NULL` when NULL, else `SHMSNAP_E_INVALID` (the length).
#[cold]
#[inline(never)]
fn unusable(null: bool, len: usize, what: &str) -> Result<(), Error> {
    if len == 0 {
        Ok(())
    } else if null {
        Err(Error::null(what))
    } else {
        Err(Error::invalid(format_args!(
            "{what}: length {len} is too large"
        )))
    }
}

/// Stores `v` through an optional output pointer (NULL: the caller does not want it).
///
/// # Safety
///
/// `ptr` is NULL or valid and aligned for a write of a `T`.
pub(crate) unsafe fn put<T>(ptr: *mut T, v: T) {
    if !ptr.is_null() {
        // SAFETY: non-NULL, valid and aligned by the caller's contract; `write` does not read
        // or drop the old (possibly uninitialised) value.
        unsafe { ptr.write(v) };
    }
}

/// A required output pointer: refused if NULL.
///
/// # Safety
///
/// `ptr` is NULL or valid and aligned for a write of a `T`.
pub(crate) unsafe fn out<'a, T>(ptr: *mut T, what: &str) -> Result<OutPtr<'a, T>, Error> {
    if ptr.is_null() {
        return Err(Error::null(what));
    }
    Ok(OutPtr(ptr, std::marker::PhantomData))
}

/// A checked, non-NULL output pointer (written with [`OutPtr::set`]).
pub(crate) struct OutPtr<'a, T>(*mut T, std::marker::PhantomData<&'a mut T>);

impl<T> OutPtr<'_, T> {
    /// Writes `v` (without reading or dropping the old value).
    pub(crate) fn set(&self, v: T) {
        // SAFETY: non-NULL (checked by `out`) and valid and aligned by `out`'s contract.
        unsafe { self.0.write(v) };
    }
}

/// Sets a handle output to NULL first, so a failed call never leaves a stale pointer there.
///
/// # Safety
///
/// As [`out`].
pub(crate) unsafe fn handle_out<'a, T>(
    ptr: *mut *mut T,
    what: &str,
) -> Result<OutPtr<'a, *mut T>, Error> {
    // SAFETY: the caller's contract, passed on.
    let o = unsafe { out(ptr, what) }?;
    o.set(std::ptr::null_mut());
    Ok(o)
}

/// A heap allocation that a sibling field borrows (a core value over caller-style storage):
/// declared after the borrower, so the borrower is dropped first, then this frees it.
#[derive(Debug)]
pub(crate) struct Owned<T: ?Sized>(NonNull<T>);

impl<T: ?Sized> Owned<T> {
    /// Takes ownership of `b`.
    pub(crate) fn new(b: Box<T>) -> Owned<T> {
        Owned(NonNull::from(Box::leak(b)))
    }

    /// The allocation, borrowed for as long as the caller keeps the borrower beside `self`.
    ///
    /// # Safety
    ///
    /// Call at most once, and keep the returned reference only in a field declared before
    /// this one in the same struct (so it is dropped first), with no other access meanwhile.
    pub(crate) unsafe fn borrow_mut(&mut self) -> &'static mut T {
        // SAFETY: a live allocation owned by `self`, freed only when `self` is dropped, after
        // the borrower (the caller's contract); the one reference handed out.
        unsafe { &mut *self.0.as_ptr() }
    }
}

impl<T: ?Sized> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: from `Box::leak` in `new`; the borrower was dropped before (declared first).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::status::{shmsnap_error_message, SHMSNAP_E_NULL};

    /// A handle type for the test.
    struct Dummy(AtomicBool);

    impl Handle for Dummy {
        const NAME: &'static str = "dummy";
        fn poison(&self) -> &AtomicBool {
            &self.0
        }
    }

    fn text() -> String {
        // SAFETY: NUL-terminated, valid until the next failure on this thread.
        unsafe { CStr::from_ptr(shmsnap_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_is_caught_reported_and_poisons_its_handle_only() {
        let (h, other) = (Dummy(AtomicBool::new(false)), Dummy(AtomicBool::new(false)));
        let rc = run(|p| {
            // SAFETY: a pointer to a live value of the handle type.
            unsafe { p.handle(&raw const h) }?;
            panic!("boom {}", 42);
        });
        assert_eq!(rc, SHMSNAP_E_PANIC);
        assert!(
            text().contains("internal error") && text().contains("boom 42"),
            "{}",
            text()
        );
        // SAFETY: as above.
        let rc = run(|p| unsafe { p.handle(&raw const h) }.map(|_| ()));
        assert_eq!(rc, SHMSNAP_E_PANIC);
        assert!(text().contains("this dummy is poisoned"), "{}", text());
        // SAFETY: as above.
        let rc = run(|p| unsafe { p.handle(&raw const other) }.map(|_| ()));
        assert_eq!(rc, SHMSNAP_OK, "another handle is not poisoned");
        // A panic before any handle was found poisons nothing.
        assert_eq!(run(|_| panic!("early")), SHMSNAP_E_PANIC);
        assert!(!other.0.load(Ordering::Relaxed));
    }

    #[test]
    fn buffers_may_be_null_only_when_empty() {
        // SAFETY: NULL pointers, which are checked before any use (and in each block below).
        let empty = unsafe { bytes(std::ptr::null(), 0, "b") };
        assert_eq!(empty.unwrap(), &[] as &[u8]);
        // SAFETY: as above.
        let one = unsafe { bytes(std::ptr::null(), 1, "b") };
        assert_eq!(one.unwrap_err().code, SHMSNAP_E_NULL);
        // SAFETY: as above.
        let empty = unsafe { bytes_mut(std::ptr::null_mut(), 0, "b") };
        assert!(empty.unwrap().is_empty());
        // SAFETY: as above.
        let e = unsafe { bytes_mut(std::ptr::null_mut(), 3, "buf") }.unwrap_err();
        assert_eq!((e.code, e.text.as_str()), (SHMSNAP_E_NULL, "buf is NULL"));
    }

    #[test]
    fn lengths_no_slice_can_have_are_refused_and_empty_buffers_are_empty() {
        let too_long = isize::MAX as usize + 1;
        let mut b = [7u8; 4];
        // SAFETY: a buffer of 4 bytes; the lengths above isize::MAX are refused before any
        // use (and in each block below), the empty ones read nothing.
        let e = unsafe { bytes(b.as_ptr(), too_long, "payload") }.err();
        // (`err().expect`, not `unwrap_err`: an accepted length must not be printed.)
        let e = e.expect("a length above isize::MAX is refused");
        assert_eq!(e.code, crate::status::SHMSNAP_E_INVALID);
        assert!(e.text.starts_with("payload: length "), "{}", e.text);
        // SAFETY: as above.
        let e = unsafe { bytes_mut(b.as_mut_ptr(), usize::MAX, "buf") }.err();
        let e = e.expect("a length above isize::MAX is refused");
        assert_eq!(e.code, crate::status::SHMSNAP_E_INVALID);
        assert!(e.text.contains("is too large"), "{}", e.text);
        // SAFETY: as above.
        let e = unsafe { bytes(std::ptr::null(), too_long, "b") }.unwrap_err();
        assert_eq!(e.code, SHMSNAP_E_NULL, "NULL is named before the length");
        // SAFETY: as above.
        assert!(unsafe { bytes(b.as_ptr(), 0, "b") }.unwrap().is_empty());
        // SAFETY: as above.
        assert!(unsafe { bytes_mut(b.as_mut_ptr(), 0, "b") }
            .unwrap()
            .is_empty());
        // SAFETY: as above.
        assert_eq!(unsafe { bytes(b.as_ptr(), 4, "b") }.unwrap(), &[7u8; 4]);
        // SAFETY: as above.
        let all = unsafe { bytes_mut(b.as_mut_ptr(), 4, "b") };
        assert_eq!(all.unwrap(), &[7u8; 4]);
    }
}
