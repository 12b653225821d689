//! The CRC engine: CRC-32C of a file's first bytes, reading data extents only.
//!
//! CRCs are CRC-32C (CRC-32/ISCSI) from `crc-fast` (hardware-accelerated). The image CRC is
//! computed with `pread` over data extents only, in chunks of at most [`CRC_CHUNK`] bytes;
//! holes are folded in by CRC combination, so neither a file's nor a memfd's holes are read or
//! allocated, and memory stays bounded whatever the image size.

use std::io;
use std::os::fd::AsFd;

use crc_fast::{checksum, checksum_combine, CrcAlgorithm, Digest};

use crate::copy::{file_len, for_each_extent, read_full_at};

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
    let fd = fd.as_fd();
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
    let buf_len = usize::try_from(len).map_or(CRC_CHUNK, |l| l.min(CRC_CHUNK));
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
                done += got as u64;
            }
            d.finalize()
        } else {
            zeros_crc32c(n)
        };
        crc = checksum_combine(CrcAlgorithm::Crc32Iscsi, crc, part, n);
        Ok(())
    })?;
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    Ok(crc as u32)
}

/// CRC-32C of `n` zero bytes, by squaring: O(log n) combinations of a 4 KiB block's CRC.
pub(crate) fn zeros_crc32c(n: u64) -> u64 {
    const BLOCK: u64 = 4096;
    static ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    let alg = CrcAlgorithm::Crc32Iscsi;
    // `acc` covers the remainder and the blocks folded in so far; `pow` covers `pow_len` zeros.
    let mut acc = checksum(alg, &ZEROS[..(n % BLOCK) as usize]);
    let mut pow = checksum(alg, &ZEROS);
    let mut pow_len = BLOCK;
    let mut blocks = n / BLOCK;
    while blocks > 0 {
        if blocks & 1 == 1 {
            acc = checksum_combine(alg, acc, pow, pow_len);
        }
        blocks >>= 1;
        if blocks > 0 {
            pow = checksum_combine(alg, pow, pow, pow_len);
            pow_len *= 2;
        }
    }
    acc
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
