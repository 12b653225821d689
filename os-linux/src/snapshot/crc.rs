//! The CRC engine: CRC-32C of a file's first bytes, reading data extents only.
//!
//! CRCs are CRC-32C (CRC-32/ISCSI) from `crc-fast` (hardware-accelerated). The image CRC is
//! computed with `pread` over data extents only, in chunks of at most [`CRC_CHUNK`] bytes;
//! holes are folded in by CRC combination, so neither a file's nor a memfd's holes are read or
//! allocated, and memory stays bounded whatever the image size.
//!
//! Combination ([`crc32c_combine`], [`zeros_crc32c`]) multiplies by `x^(8n) mod P` in GF(2),
//! built by square-and-multiply from a table of `x^(2^k) mod P` (zlib's `crc32_combine` method):
//! ~1 µs whatever `n`. `crc_fast::checksum_combine` (64×64 bit-matrix squaring) computes the
//! same value but cost ~0.1 ms per call, a third of a 16 MiB 1/16-touched restore (benches/README).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crc_fast::{checksum, CrcAlgorithm, Digest};

use crate::copy::{file_len, for_each_extent, read_full_at, write_all_at, CopyMethod, CopyStats};

/// Largest buffer [`image_crc32c`] reads into (1 MiB).
pub const CRC_CHUNK: usize = 1 << 20;

/// `pread` over data extents (found with `lseek(SEEK_DATA/SEEK_HOLE)`)—CRC-32C of bytes
/// `0..len` of `fd`, holes counted as zeros without being read.
///
/// Safe to call on a memfd: neither `lseek` nor `pread` allocates its holes. Moves the file
/// position of `fd`. Holds at most [`CRC_CHUNK`] bytes of the file in memory.
///
/// # References
///  - [Linux `lseek`](https://man7.org/linux/man-pages/man2/lseek.2.html)
///  - [Linux `pread`](https://man7.org/linux/man-pages/man2/pread.2.html)
///
/// # Errors
///
/// `UnexpectedEof` if the file is shorter than `len`; the syscalls' errors.
pub fn image_crc32c(fd: impl AsFd, len: u64) -> io::Result<u32> {
    crc_sweep(fd.as_fd(), len, CRC_CHUNK, |_, _| Ok(()))
}

/// Bytes per `pread`/`pwrite` of [`copy_crc32c`] (small enough that the `pwrite` reads the
/// chunk the CRC just read from cache, as the chain restore's sweep does).
pub(crate) const COPY_CHUNK: usize = 256 << 10;

/// [`image_crc32c`] of bytes `0..len` of `src` that also writes every data chunk it reads to
/// the same offset of `dst` (`pwrite`, the same bytes the CRC saw): one read of the data
/// instead of a CRC pass and a copy pass. `dst`'s bytes in `0..len` should read as zeros
/// beforehand (holes of `src` are not written). Holds at most [`COPY_CHUNK`] bytes.
///
/// # Errors
///
/// As [`image_crc32c`]; `dst`'s write errors. On error `dst` holds part of the data.
pub(crate) fn copy_crc32c(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
) -> io::Result<(u32, CopyStats)> {
    let mut stats = CopyStats {
        method: CopyMethod::Buffer,
        ..CopyStats::default()
    };
    let mut last_end = None;
    let crc = crc_sweep(src, len, COPY_CHUNK, |chunk, at| {
        write_all_at(dst, chunk, at)?;
        stats.bytes += chunk.len() as u64;
        if last_end != Some(at) {
            stats.extents += 1;
        }
        last_end = Some(at + chunk.len() as u64);
        Ok(())
    })?;
    Ok((crc, stats))
}

/// The one CRC pass: walks the data extents of bytes `0..len` of `fd`, reads each in chunks
/// of at most `chunk` bytes, CRCs them and hands each to `sink(bytes, offset)`; holes are
/// folded in by [`crc32c_combine`] without being read.
fn crc_sweep(
    fd: BorrowedFd<'_>,
    len: u64,
    chunk: usize,
    mut sink: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<u32> {
    let flen = file_len(fd)?;
    if flen < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("cannot checksum {len} image bytes of a file of {flen} bytes"),
        ));
    }
    // CRC of the prefix so far; each extent's CRC is folded in with CRC combination, so a
    // hole costs O(log n) instead of feeding its zeros through the CRC.
    let mut crc = checksum(CrcAlgorithm::Crc32Iscsi, b"");
    let buf_len = usize::try_from(len).map_or(chunk, |l| l.min(chunk));
    let mut buf = vec![0u8; buf_len];
    for_each_extent(fd, len, |off, n, is_data| {
        let part = if is_data {
            let mut d = Digest::new(CrcAlgorithm::Crc32Iscsi);
            let mut done = 0;
            while done < n {
                let want = usize::try_from((n - done).min(buf_len as u64)).unwrap_or(buf_len);
                let got = read_full_at(fd, &mut buf[..want], off + done)?;
                if got < want {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ends at {} inside the image", off + done + got as u64),
                    ));
                }
                d.update(&buf[..got]);
                sink(&buf[..got], off + done)?;
                done += got as u64;
            }
            d.finalize()
        } else {
            zeros_crc32c(n)
        };
        crc = crc32c_combine(crc, part, n);
        Ok(())
    })?;
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    Ok(crc as u32)
}

/// CRC-32C's polynomial, bit-reflected (the register shifts right).
const POLY: u32 = 0x82f6_3b78;

/// `a * b mod P` over GF(2), both reflected (bit 31 is `x^0`): at most 32 shift-xor steps.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    while m != 0 {
        if a & m != 0 {
            p ^= b;
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k] = x^(2^k) mod P` (reflected), `k < 67`: the squares [`x8n_mod_p`] multiplies
/// (`8n < 2^67` for every `n: u64`).
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p = 1u32 << 30; // x^1
    let mut k = 0;
    while k < 67 {
        t[k] = p;
        p = mul_mod_p(p, p);
        k += 1;
    }
    t
};

/// `x^(8n) mod P` (reflected): the operator that appends `n` zero bytes to a CRC register.
/// Bit `i` of `n` contributes `X2N[i + 3]` (a byte is `2^3` bits), `i + 3 < 67`.
fn x8n_mod_p(mut n: u64) -> u32 {
    let mut p = 1u32 << 31; // x^0
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC-32C of `A ‖ B` from `crc_a = crc(A)`, `crc_b = crc(B)` and `len_b = |B|` in bytes:
/// the same value as `crc_fast::checksum_combine(Crc32Iscsi, ..)`, in O(log len_b) 32-bit
/// steps. (Init and final xor are both all-ones for CRC-32C, so they cancel: zlib's identity.)
pub(crate) fn crc32c_combine(crc_a: u64, crc_b: u64, len_b: u64) -> u64 {
    // CRC-32C values are 32 bits; the u64 holds them in its low half (crc_fast's convention).
    u64::from(mul_mod_p(x8n_mod_p(len_b), crc_a as u32) ^ crc_b as u32)
}

/// CRC-32C of `n` zero bytes: the all-ones start register shifted through `n` zero bytes,
/// then the final xor.
pub(crate) fn zeros_crc32c(n: u64) -> u64 {
    u64::from(mul_mod_p(x8n_mod_p(n), u32::MAX) ^ u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::write_all_at;
    use crate::Memfd;

    #[test]
    fn crc32c_matches_the_reference_vector_and_skips_holes() {
        assert_eq!(crc_fast::crc32_iscsi(b"123456789"), 0xe306_9283);
        let m = Memfd::create("h", 3 << 20).unwrap();
        write_all_at(&m, b"123456789", 1 << 20).unwrap();
        let mut all = vec![0u8; 3 << 20];
        read_full_at(&m, &mut all, 0).unwrap();
        let before = m.allocated().unwrap();
        assert_eq!(
            image_crc32c(&m, 3 << 20).unwrap(),
            crc_fast::crc32_iscsi(&all)
        );
        assert_eq!(m.allocated().unwrap(), before);
    }

    proptest::proptest! {
        #[test]
        fn combine_agrees_with_crc_fast(a in proptest::prelude::any::<u32>(), b in proptest::prelude::any::<u32>(), len in proptest::prelude::any::<u64>()) {
            let alg = CrcAlgorithm::Crc32Iscsi;
            for n in [len, len >> 40, len >> 20, len & 0xfff] {
                proptest::prop_assert_eq!(
                    crc32c_combine(a.into(), b.into(), n),
                    crc_fast::checksum_combine(alg, a.into(), b.into(), n),
                    "len {}", n
                );
            }
        }
    }

    #[test]
    fn crc_of_holes_by_combination_equals_the_crc_of_zeros() {
        for n in [
            0u64,
            1,
            7,
            4095,
            4096,
            4097,
            3 * 4096 + 5,
            1 << 20,
            (1 << 20) + 12345,
        ] {
            let zeros = vec![0u8; n as usize];
            assert_eq!(
                zeros_crc32c(n),
                crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, &zeros),
                "{n}"
            );
        }
        // Several data extents between holes, and an image length that ends inside a hole.
        let m = Memfd::create("e", 5 << 20).unwrap();
        for (i, at) in [0u64, 1 << 20, (3 << 20) + 4096].into_iter().enumerate() {
            write_all_at(&m, &[i as u8 + 1; 10_000], at).unwrap();
        }
        for len in [5 << 20, (4 << 20) + 3, 9_999] {
            let mut all = vec![0u8; len as usize];
            read_full_at(&m, &mut all, 0).unwrap();
            assert_eq!(
                image_crc32c(&m, len).unwrap(),
                crc_fast::crc32_iscsi(&all),
                "{len}"
            );
        }
    }
}
