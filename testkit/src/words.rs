//! Plain word memories for tests: zeroed, from bytes, and back to bytes.

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::WordMemory;

/// An owned, zeroed word memory of `bytes` bytes (rounded up to words).
pub fn zeroed_words(bytes: usize) -> Vec<AtomicU64> {
    (0..bytes.div_ceil(8)).map(|_| AtomicU64::new(0)).collect()
}

/// The little-endian bytes of a word memory (a plain copy, for images in tests).
pub fn to_bytes<M: WordMemory + ?Sized>(mem: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(mem.len() * 8);
    for i in 0..mem.len() {
        out.extend_from_slice(&mem.load(i, Ordering::Relaxed).to_le_bytes());
    }
    out
}

/// A word memory holding `bytes` (zero-padded to whole words).
pub fn from_bytes(bytes: &[u8]) -> Vec<AtomicU64> {
    bytes
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            AtomicU64::new(u64::from_le_bytes(b))
        })
        .collect()
}
