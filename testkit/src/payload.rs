//! Payloads that encode their seq, so a kept entry's bytes can be checked against what was
//! committed under that seq.

use shmsnap_core::{image_entries, Layout};

/// The payload the tests commit as `seq`: `len` bytes that encode `seq`, so a kept entry's
/// bytes can be checked against what was committed under that seq.
pub fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (len as u64);
    (0..len)
        .map(|i| {
            if i < 8 {
                seq.to_le_bytes()[i]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

/// Checks that every valid entry of a copied image carries exactly `payload_for(seq, length)`.
///
/// # Errors
///
/// A description of the first torn entry.
pub fn check_image_payloads(image: &[u8], layout: &Layout) -> Result<u64, String> {
    let mut n = 0;
    for d in image_entries(image, layout) {
        let at = layout.ring_byte(d.offset);
        let got = image
            .get(at..at + d.length as usize)
            .ok_or_else(|| format!("entry {} outside the image", d.seq))?;
        if got != payload_for(d.seq, d.length as usize).as_slice() {
            return Err(format!(
                "entry {} kept in the image with bytes that were never committed under that seq",
                d.seq
            ));
        }
        n += 1;
    }
    Ok(n)
}
