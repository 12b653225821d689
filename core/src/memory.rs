//! The atomic word memory: the one seam between the protocol and the memory it runs on.
//!
//! Every access the protocol makes to the shared region goes through [`WordMemory`]: 64-bit
//! words addressed by index, with explicit orderings. Real shared memory implements it as a
//! slice of [`AtomicU64`]; the loom models implement it with loom's atomics, so the models
//! check the code that ships.

use core::sync::atomic::{fence, AtomicU64, Ordering};

/// A fixed-length array of 64-bit atomic words, shared with other threads or processes.
///
/// # Safety
///
/// Implementors guarantee that:
/// - [`len`](WordMemory::len) returns the same value for the whole life of the value;
/// - every index `i < len()` names a distinct word that is valid, 8-byte aligned and safe to
///   access atomically for the whole life of the value;
/// - `load`, `store` and `compare_exchange` behave as the operations of the same name
///   on [`AtomicU64`] with the given orderings, and `fence` as [`core::sync::atomic::fence`]
///   (a wrapper may weaken orderings on purpose to build a broken twin for a model checker;
///   the protocol is then expected to fail, never to cause undefined behaviour).
///
/// Methods may panic if given an index `>= len()`. The protocol never does so: every index
/// it derives from region contents is checked against a validated [`Layout`](crate::Layout)
/// first.
pub unsafe trait WordMemory {
    /// Number of words.
    fn len(&self) -> usize;

    /// `true` if the memory has no words.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Atomic load of word `i`.
    fn load(&self, i: usize, order: Ordering) -> u64;

    /// Atomic store of `v` into word `i`.
    fn store(&self, i: usize, v: u64, order: Ordering);

    /// [`load`](WordMemory::load) of a word the caller has proven to be in bounds; real memory
    /// skips the bounds check. The default is `load`, so a model checker checks the same load
    /// with the same ordering.
    ///
    /// # Safety
    ///
    /// `i < self.len()`.
    #[inline]
    unsafe fn load_in_bounds(&self, i: usize, order: Ordering) -> u64 {
        self.load(i, order)
    }

    /// [`store`](WordMemory::store) into a word the caller has proven to be in bounds; real
    /// memory skips the bounds check. The default is `store`, so a model checker checks the
    /// same store with the same ordering.
    ///
    /// # Safety
    ///
    /// `i < self.len()`.
    #[inline]
    unsafe fn store_in_bounds(&self, i: usize, v: u64, order: Ordering) {
        self.store(i, v, order)
    }

    /// Atomic compare-and-exchange of word `i`, as [`AtomicU64::compare_exchange`].
    ///
    /// # Errors
    ///
    /// Returns the current value if it was not `current`.
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;

    /// A memory fence with the given ordering.
    fn fence(&self, order: Ordering);

    /// Stores `bytes`, packed little-endian, into consecutive words from `first`, each with a
    /// `Relaxed` store; the last word is zero-padded.
    ///
    /// The default is a loop of [`store`](WordMemory::store)s; real memory overrides it with
    /// one bounds check for the whole run. Both make exactly the same stores, so a model
    /// checker that runs the default checks what real memory does.
    fn store_le_bytes(&self, first: usize, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        let mut i = first;
        for c in &mut chunks {
            self.store(i, le_word(c), Ordering::Relaxed);
            i += 1;
        }
        if !chunks.remainder().is_empty() {
            self.store(i, le_word(chunks.remainder()), Ordering::Relaxed);
        }
    }

    /// Stores `bytes` exactly as [`store_le_bytes`](WordMemory::store_le_bytes) does, into
    /// words that only the caller accesses until a later `Release` store publishes them; real
    /// memory overrides it with a plain `memcpy` (the default is `store_le_bytes`, so a model
    /// checker checks the same stores with the same orderings).
    ///
    /// # Safety
    ///
    /// No other thread of this process may access words `first .. first + bytes.len().div_ceil(8)`
    /// (atomically or not) while the call runs: the override writes them non-atomically.
    unsafe fn store_le_bytes_exclusive(&self, first: usize, bytes: &[u8]) {
        self.store_le_bytes(first, bytes)
    }
}

/// A little-endian word from the first (up to) 8 bytes of `c`, zero-padded.
///
/// A whole word is one load; a partial one is assembled from 4-, 2- and 1-byte loads. (A
/// `copy_from_slice` of a variable length into a zeroed array compiled to a `memcpy` call:
/// 12 of the 171 instructions of an 8-byte commit, and a call that made the caller spill.)
#[inline(always)]
fn le_word(c: &[u8]) -> u64 {
    match c.first_chunk::<8>() {
        Some(b) => u64::from_le_bytes(*b),
        None => le_word_partial(c),
    }
}

/// [`le_word`] of fewer than 8 bytes.
#[inline(always)]
fn le_word_partial(c: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut rest = c;
    let mut shift = 0;
    if let Some((b, r)) = rest.split_first_chunk::<4>() {
        v |= u64::from(u32::from_le_bytes(*b));
        rest = r;
        shift = 32;
    }
    if let Some((b, r)) = rest.split_first_chunk::<2>() {
        v |= u64::from(u16::from_le_bytes(*b)) << shift;
        rest = r;
        shift += 16;
    }
    if let Some(&b) = rest.first() {
        v |= u64::from(b) << shift;
    }
    v
}

// SAFETY: forwards every call, with the same index and orderings, to the `M` behind the
// reference, which upholds the trait's guarantees for as long as the borrow lives. Lets a
// wrapper that owns its inner memory (a broken-twin view) also wrap a borrowed one.
unsafe impl<M: WordMemory + ?Sized> WordMemory for &M {
    #[inline]
    fn len(&self) -> usize {
        (**self).len()
    }
    #[inline]
    fn load(&self, i: usize, order: Ordering) -> u64 {
        (**self).load(i, order)
    }
    #[inline]
    fn store(&self, i: usize, v: u64, order: Ordering) {
        (**self).store(i, v, order)
    }
    #[inline]
    unsafe fn load_in_bounds(&self, i: usize, order: Ordering) -> u64 {
        // SAFETY: the caller's bound is passed on unchanged (same memory, same `len`).
        unsafe { (**self).load_in_bounds(i, order) }
    }
    #[inline]
    unsafe fn store_in_bounds(&self, i: usize, v: u64, order: Ordering) {
        // SAFETY: the caller's bound is passed on unchanged (same memory, same `len`).
        unsafe { (**self).store_in_bounds(i, v, order) }
    }
    #[inline]
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        (**self).compare_exchange(i, current, new, success, failure)
    }
    #[inline]
    fn fence(&self, order: Ordering) {
        (**self).fence(order)
    }
    #[inline(always)]
    fn store_le_bytes(&self, first: usize, bytes: &[u8]) {
        (**self).store_le_bytes(first, bytes)
    }
    #[inline]
    unsafe fn store_le_bytes_exclusive(&self, first: usize, bytes: &[u8]) {
        // SAFETY: the caller's exclusivity promise is passed on unchanged.
        unsafe { (**self).store_le_bytes_exclusive(first, bytes) }
    }
}

// SAFETY: a slice of `AtomicU64` has a fixed length, and each element is an aligned atomic
// word; the methods forward to the std operations and panic on an out-of-range index.
unsafe impl WordMemory for [AtomicU64] {
    #[inline]
    fn len(&self) -> usize {
        <[AtomicU64]>::len(self)
    }
    #[inline]
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self[i].load(order)
    }
    #[inline]
    fn store(&self, i: usize, v: u64, order: Ordering) {
        self[i].store(v, order)
    }
    #[inline]
    unsafe fn load_in_bounds(&self, i: usize, order: Ordering) -> u64 {
        debug_assert!(i < <[AtomicU64]>::len(self), "load_in_bounds out of bounds");
        // SAFETY: the caller guarantees `i < len`.
        let w = unsafe { self.get_unchecked(i) };
        w.load(order)
    }
    #[inline]
    unsafe fn store_in_bounds(&self, i: usize, v: u64, order: Ordering) {
        debug_assert!(
            i < <[AtomicU64]>::len(self),
            "store_in_bounds out of bounds"
        );
        // SAFETY: the caller guarantees `i < len`.
        let w = unsafe { self.get_unchecked(i) };
        w.store(v, order)
    }
    #[inline]
    fn compare_exchange(
        &self,
        i: usize,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        self[i].compare_exchange(current, new, success, failure)
    }
    #[inline]
    fn fence(&self, order: Ordering) {
        fence(order)
    }
    #[inline(always)]
    fn store_le_bytes(&self, first: usize, bytes: &[u8]) {
        if bytes.len() <= 8 {
            // One word (or none): the common root-sized payload.
            if !bytes.is_empty() {
                self[first].store(le_word(bytes), Ordering::Relaxed);
            }
            return;
        }
        if bytes.len() > LONG_RUN {
            return store_le_bytes_long(self, first, bytes);
        }
        store_le_bytes_run(self, first, bytes);
    }
    #[inline]
    unsafe fn store_le_bytes_exclusive(&self, first: usize, bytes: &[u8]) {
        store_le_bytes_unsync(self, first, bytes)
    }
}

/// Payloads longer than this go through [`store_le_bytes_long`], out of line.
const LONG_RUN: usize = 256;

/// [`WordMemory::store_le_bytes`] of a long payload: four words per step, out of line (the copy
/// of session 7). The inlined eight-word steps of [`store_le_bytes_run`], which made a 64-byte
/// commit 7.8 → 6.3 ns, ran long payloads 13–20 % slower with fewer instructions (4 KiB commit
/// 110 → 125 ns, 4 KiB triple `write` 121 → 150 ns, 1 MiB triple `write` 31 → 38 µs;
/// `compare`, three interleaved runs each); this keeps both. The price of the length test is
/// about 2 instructions on a short payload (64-byte commit 133.4 → 135.3, callgrind).
#[inline(never)]
fn store_le_bytes_long(this: &[AtomicU64], first: usize, bytes: &[u8]) {
    let words = bytes.len().div_ceil(8);
    // One bounds check for the run (panics like `store` on an out-of-range index).
    let dst = &this[first..first + words];
    // Four words per step, then single words, then the zero-padded last word.
    let quads = bytes.len() / 32;
    let (dst_quads, dst_rest) = dst.split_at(quads * 4);
    let (src_quads, src_rest) = bytes.split_at(quads * 32);
    for (d, c) in dst_quads.chunks_exact(4).zip(src_quads.chunks_exact(32)) {
        for k in 0..4 {
            d[k].store(le_word(&c[8 * k..8 * k + 8]), Ordering::Relaxed);
        }
    }
    let mut words_rest = src_rest.chunks_exact(8);
    for (d, c) in dst_rest.iter().zip(&mut words_rest) {
        d.store(le_word(c), Ordering::Relaxed);
    }
    let last = words_rest.remainder();
    if !last.is_empty() {
        dst_rest[dst_rest.len() - 1].store(le_word_partial(last), Ordering::Relaxed);
    }
}

/// [`WordMemory::store_le_bytes`] of 9 to [`LONG_RUN`] bytes into `[AtomicU64]`, inlined.
#[inline(always)]
fn store_le_bytes_run(this: &[AtomicU64], first: usize, bytes: &[u8]) {
    let (words, last) = bytes.as_chunks::<8>();
    // One bounds check for the run (panics like `store` on an out-of-range index).
    // No overflow: a slice's length is at most `isize::MAX`. Not `div_ceil`, which
    // compiles to a shift, a test of the remainder and an add.
    #[allow(clippy::manual_div_ceil)]
    let dst = &this[first..first + (bytes.len() + 7) / 8];
    // SAFETY: `words.len() = len / 8 <= (len + 7) / 8 = dst.len()`. (The checked `split_at`
    // kept its test, 4 instructions per commit; spelling the length `words + (last word)`,
    // which the compiler does see through, cost 5 more for the length.)
    let (dst_words, dst_last) = unsafe { dst.split_at_unchecked(words.len()) };
    // Eight words per step, then at most one step of four (the compiler does not unroll
    // atomic stores by itself), then single words, then the zero-padded last word.
    let (blocks, rest) = words.as_chunks::<8>();
    let (dst_blocks, dst_rest) = dst_words.as_chunks::<8>();
    for (d, s) in dst_blocks.iter().zip(blocks) {
        for k in 0..8 {
            d[k].store(u64::from_le_bytes(s[k]), Ordering::Relaxed);
        }
    }
    if bytes.len().is_multiple_of(64) {
        // A multiple of 64 bytes: done (spares the tests below). One test of the length, not
        // `rest` and `last` both empty: 2 instructions instead of 7.
        return;
    }
    let (mut rest, mut dst_rest) = (rest, dst_rest);
    if let (Some((s, r)), Some((d, dr))) = (
        rest.split_first_chunk::<4>(),
        dst_rest.split_first_chunk::<4>(),
    ) {
        for k in 0..4 {
            d[k].store(u64::from_le_bytes(s[k]), Ordering::Relaxed);
        }
        (rest, dst_rest) = (r, dr);
    }
    for (d, s) in dst_rest.iter().zip(rest) {
        d.store(u64::from_le_bytes(*s), Ordering::Relaxed);
    }
    if let Some(d) = dst_last.first() {
        d.store(le_word_partial(last), Ordering::Relaxed);
    }
}

/// Words of `[AtomicU64]` that the caller accesses exclusively: the non-atomic fast path of
/// [`WordMemory::store_le_bytes_exclusive`].
#[inline]
fn store_le_bytes_unsync(words: &[AtomicU64], first: usize, bytes: &[u8]) {
    let whole = bytes.len() / 8 * 8;
    // One bounds check for the run (panics like `store` on an out-of-range index).
    let dst = &words[first..first + bytes.len().div_ceil(8)];
    let ptr = dst.as_ptr().cast::<u8>().cast_mut();
    // SAFETY: `dst` covers `whole` bytes (and more); `AtomicU64` is an `UnsafeCell`, so writing
    // through a pointer derived from a shared borrow is allowed, and the caller of
    // `store_le_bytes_exclusive` guarantees no other thread of this process accesses these
    // words meanwhile, so the non-atomic writes race with nothing. Source and destination do
    // not overlap (the source is an ordinary `&[u8]`, the destination interior-mutable words).
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, whole) };
    if whole < bytes.len() {
        dst[dst.len() - 1].store(le_word(&bytes[whole..]), Ordering::Relaxed);
    }
}

/// Why a byte slice cannot be viewed as atomic words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordsError {
    /// The slice does not start at an 8-byte boundary.
    Misaligned {
        /// The slice's address modulo 8.
        misalignment: usize,
    },
    /// The slice length is not a multiple of 8.
    Length {
        /// The slice length in bytes.
        len: usize,
    },
}

impl core::fmt::Display for WordsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WordsError::Misaligned { misalignment } => write!(
                f,
                "shared memory must start at an 8-byte boundary (address is {misalignment} bytes past one)"
            ),
            WordsError::Length { len } => write!(
                f,
                "shared memory length must be a multiple of 8 bytes (got {len} bytes)"
            ),
        }
    }
}

/// Views an exclusively borrowed byte slice (for example memory a custom runtime shares with
/// the host) as atomic words.
///
/// # Errors
///
/// [`WordsError`] if the slice is not 8-byte aligned or its length is not a multiple of 8.
///
/// # Examples
///
/// ```
/// let mut buf = vec![0u64; 4];
/// let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
/// let words = shmsnap_core::atomic_words(bytes).unwrap();
/// assert_eq!(words.len(), 4);
/// ```
pub fn atomic_words(bytes: &mut [u8]) -> Result<&[AtomicU64], WordsError> {
    let misalignment = (bytes.as_ptr() as usize) % 8;
    if misalignment != 0 {
        return Err(WordsError::Misaligned { misalignment });
    }
    let words: &mut [u64] = match bytemuck::try_cast_slice_mut(bytes) {
        Ok(w) => w,
        Err(_) => return Err(WordsError::Length { len: bytes.len() }),
    };
    let len = words.len();
    let ptr = words.as_mut_ptr().cast::<AtomicU64>();
    // SAFETY: `AtomicU64` has the same size and bit validity as `u64`, and its alignment (8)
    // was checked above. The exclusive borrow of `bytes` is held for the returned lifetime,
    // so no non-atomic access to these bytes can happen in this process meanwhile.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Stores `bytes` at byte offset `at` (counted from word 0) with `Relaxed` word stores.
///
/// Partial words at either end are merged with a `Relaxed` load: the caller must be the only
/// writer of those words (the protocol only calls this on space it owns).
// `inline`: the aligned case (every payload and buffer write at an 8-aligned offset) is a
// `store_le_bytes` plus, for a partial last word, one merge; out of line, the call and its
// register saves were a fifth of a 64-byte triple publication's instructions.
#[inline]
pub(crate) fn store_bytes<M: WordMemory + ?Sized>(mem: &M, at: usize, bytes: &[u8]) {
    if !at.is_multiple_of(8) {
        store_bytes_unaligned(mem, at, bytes);
        return;
    }
    let word = at / 8;
    let whole = bytes.len() / 8 * 8;
    let (middle, tail) = bytes.split_at(whole);
    mem.store_le_bytes(word, middle);
    if !tail.is_empty() {
        merge_word(mem, word + whole / 8, 0, tail);
    }
}

/// [`store_bytes`] at an offset that is not 8-aligned: merges the leading partial word, then
/// stores the rest from the next word boundary.
#[inline(never)]
fn store_bytes_unaligned<M: WordMemory + ?Sized>(mem: &M, at: usize, bytes: &[u8]) {
    let skip = at % 8;
    let take = core::cmp::min(8 - skip, bytes.len());
    let (now, later) = bytes.split_at(take);
    merge_word(mem, at / 8, skip, now);
    if !later.is_empty() {
        store_bytes(mem, at + take, later);
    }
}

/// Merges `bytes` (`skip + bytes.len() <= 8`) into word `w` at byte `skip`: a `Relaxed` load
/// and store (the caller is the word's only writer).
fn merge_word<M: WordMemory + ?Sized>(mem: &M, w: usize, skip: usize, bytes: &[u8]) {
    let mut b = mem.load(w, Ordering::Relaxed).to_le_bytes();
    b[skip..skip + bytes.len()].copy_from_slice(bytes);
    mem.store(w, u64::from_le_bytes(b), Ordering::Relaxed);
}

/// Loads `out.len()` bytes starting at byte offset `at` with `Relaxed` word loads.
pub(crate) fn load_bytes<M: WordMemory + ?Sized>(mem: &M, at: usize, out: &mut [u8]) {
    let mut word = at / 8;
    let mut skip = at % 8;
    let mut rest = out;
    while !rest.is_empty() {
        let take = core::cmp::min(8 - skip, rest.len());
        let (now, later) = rest.split_at_mut(take);
        let b = mem.load(word, Ordering::Relaxed).to_le_bytes();
        now.copy_from_slice(&b[skip..skip + take]);
        word += 1;
        skip = 0;
        rest = later;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unaligned_byte_stores_round_trip_and_keep_neighbours() {
        let mem: [AtomicU64; 4] = Default::default();
        let mem = &mem[..];
        for w in 0..4 {
            mem.store(w, u64::MAX, Ordering::Relaxed);
        }
        store_bytes(mem, 3, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let mut out = [0u8; 32];
        load_bytes(mem, 0, &mut out);
        assert_eq!(&out[..3], &[0xff; 3]);
        assert_eq!(&out[3..13], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(&out[13..], &[0xff; 19]);
    }

    /// Every offset and length against a byte-array model: the bytes land, the last word of
    /// `store_le_bytes` is zero-padded, `store_bytes` keeps every neighbouring byte.
    #[test]
    fn byte_stores_match_a_byte_model() {
        let src: std::vec::Vec<u8> = (0..80u8).map(|b| b.wrapping_mul(29) ^ 0xa5).collect();
        for at in 0..24 {
            for len in 0..src.len() {
                let mem: std::vec::Vec<AtomicU64> =
                    (0..16).map(|_| AtomicU64::new(u64::MAX)).collect();
                store_bytes(&mem[..], at, &src[..len]);
                let mut want = [0xffu8; 128];
                want[at..at + len].copy_from_slice(&src[..len]);
                let mut got = [0u8; 128];
                load_bytes(&mem[..], 0, &mut got);
                assert_eq!(got, want, "store_bytes at {at} len {len}");
                if at % 8 == 0 {
                    mem[..].store_le_bytes(at / 8, &src[..len]);
                    want[at + len..(at + len).next_multiple_of(8)].fill(0);
                    load_bytes(&mem[..], 0, &mut got);
                    assert_eq!(got, want, "store_le_bytes at {at} len {len}");
                }
            }
        }
    }

    /// A word memory that uses the trait's default `store_le_bytes`.
    struct Plain<'a>(&'a [AtomicU64]);

    // SAFETY: forwards to a slice of AtomicU64.
    unsafe impl WordMemory for Plain<'_> {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn load(&self, i: usize, o: Ordering) -> u64 {
            self.0.load(i, o)
        }
        fn store(&self, i: usize, v: u64, o: Ordering) {
            self.0.store(i, v, o)
        }
        fn compare_exchange(
            &self,
            i: usize,
            c: u64,
            n: u64,
            s: Ordering,
            f: Ordering,
        ) -> Result<u64, u64> {
            self.0.compare_exchange(i, c, n, s, f)
        }
        fn fence(&self, o: Ordering) {
            self.0.fence(o)
        }
    }

    /// Every length through the inlined short path and the out-of-line long one (`LONG_RUN`).
    #[test]
    fn bulk_stores_equal_the_default_word_by_word_stores() {
        let src: std::vec::Vec<u8> = (0..2 * LONG_RUN + 80)
            .map(|b| (b as u8).wrapping_mul(37) ^ 0x5a ^ (b >> 8) as u8)
            .collect();
        let words = src.len().div_ceil(8) + 4;
        for len in 0..src.len() {
            let a: std::vec::Vec<AtomicU64> =
                (0..words).map(|_| AtomicU64::new(u64::MAX)).collect();
            let b: std::vec::Vec<AtomicU64> =
                (0..words).map(|_| AtomicU64::new(u64::MAX)).collect();
            a[..].store_le_bytes(3, &src[..len]);
            Plain(&b[..]).store_le_bytes(3, &src[..len]);
            for i in 0..words {
                assert_eq!(
                    a[i].load(Ordering::Relaxed),
                    b[i].load(Ordering::Relaxed),
                    "len {len} word {i}"
                );
            }
        }
    }

    #[test]
    fn atomic_words_rejects_misaligned_and_short_input() {
        let mut buf = [0u64; 3];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        assert_eq!(
            atomic_words(&mut bytes[1..9]).unwrap_err(),
            WordsError::Misaligned { misalignment: 1 }
        );
        assert_eq!(
            atomic_words(&mut bytes[..12]).unwrap_err(),
            WordsError::Length { len: 12 }
        );
        assert_eq!(atomic_words(&mut bytes[8..]).unwrap().len(), 2);
    }
}
