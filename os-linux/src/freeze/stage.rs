//! The staging of the freeze strategy: the region's data extents, copied during the pause
//! into anonymous memory this process keeps, written into the snapshot file after the thaw.
//!
//! Chosen by measurement (DESIGN §17, `freeze_pause` bench): word loads through the host's
//! own mapping of the region into a buffer whose pages earlier pauses already touched come
//! closest to one `memcpy` of the data; `pread` from the memfd pays a page-cache lookup per
//! 4 KiB, and a fresh memfd or the temp file's page cache allocate a page per 4 KiB inside
//! the pause. The price is resident memory: as much as the region's data (touched pages
//! only: the buffer starts as untouched zero pages).
//!
//! The region is read as atomic words (`Relaxed` loads: while the client is frozen nobody
//! stores, so any ordering sees the final values; a writer the freeze cannot stop — DESIGN
//! §17 — would give a torn copy, as it would to any copy).
//!
//! Holes stay holes: the extents are found with `SEEK_DATA`/`SEEK_HOLE` during the pause, and
//! only they are read, and later written.

use std::io;
use std::os::fd::AsFd;

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::copy::{file_len, for_each_extent, write_all_at, CopyMethod, CopyStats};
use crate::mapping::Mapping;
use crate::snapshot::{write_footer, SnapshotError, SnapshotInfo, SnapshotMeta};

/// Bytes copied between two looks at the clock (a fraction of a millisecond).
pub const CHUNK: usize = 1 << 20;
const CHUNK_WORDS: usize = CHUNK / 8;

/// A copy of a region's data extents in anonymous memory.
///
/// Invariant: after [`Staging::capture`] succeeded, `extents` are the data extents of bytes
/// `0..len` of the region, in order, disjoint, multiples of 8, and the bytes `off..off + n` of
/// `buf` (seen as bytes) hold the region's bytes of each `(off, n)`; `buf.len() * 8 >= len`. After a failed capture, `len` is 0 (nothing staged).
#[derive(Debug, Default)]
pub struct Staging {
    buf: Vec<u64>,
    extents: Vec<(u64, u64)>,
    len: u64,
}

impl Staging {
    /// An empty staging (no memory until the first capture).
    pub fn new() -> Self {
        Staging::default()
    }

    /// The region's length at the last capture (0 if none succeeded).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// `true` if nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of data extents staged.
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.1).sum()
    }

    /// Copies the data extents of bytes `0..len` of `region`, found with `SEEK_DATA` /
    /// `SEEK_HOLE` on `region` and read through `map` (a mapping of `region`): call it while
    /// nobody writes the region, during a freeze. Returns the bytes copied.
    ///
    /// With `until`, the copy stops when that instant passes (checked every [`CHUNK`] bytes):
    /// a pause never runs much past its bound.
    ///
    /// # Errors
    ///
    /// `TimedOut` if `until` passed (nothing staged); `InvalidInput` if `len` is not a
    /// multiple of 8; `UnexpectedEof` if `region` or `map` is shorter than `len`;
    /// `OutOfMemory` if `len` does not fit in memory; `lseek` errors.
    pub fn capture(
        &mut self,
        region: impl AsFd,
        map: &Mapping,
        len: u64,
        until: Option<Instant>,
    ) -> io::Result<u64> {
        let region = region.as_fd();
        self.len = 0;
        self.extents.clear();
        if !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a region of {len} bytes is not a whole number of 8-byte words"),
            ));
        }
        let have = file_len(region)?.min(map.len() as u64);
        if have < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cannot stage {len} bytes of a region of {have} bytes"),
            ));
        }
        let words = usize::try_from(len / 8).map_err(|_| io::ErrorKind::OutOfMemory)?;
        if self.buf.len() < words {
            // Zeroed by the allocator with fresh pages (calloc/mmap): nothing is touched
            // until a pause copies into it.
            self.buf = Vec::new();
            self.buf
                .try_reserve_exact(words)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            self.buf = vec![0u64; words];
        }
        let (buf, extents, src) = (&mut self.buf, &mut self.extents, map.words());
        for_each_extent(region, len, |off, n, data| {
            if data {
                // Extents of a memfd are page-aligned, and `len` is a multiple of 8; widen to
                // whole words in case a file system reports finer ones.
                let lo = (off / 8) as usize;
                let hi = (off + n).div_ceil(8) as usize;
                let chunks = buf[lo..hi]
                    .chunks_mut(CHUNK_WORDS)
                    .zip(src[lo..hi].chunks(CHUNK_WORDS));
                for (dst, from) in chunks {
                    if until.is_some_and(|u| Instant::now() >= u) {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the copy did not finish within the pause's bound",
                        ));
                    }
                    for (d, s) in dst.iter_mut().zip(from) {
                        *d = s.load(Ordering::Relaxed);
                    }
                }
                extents.push((lo as u64 * 8, (hi - lo) as u64 * 8));
            }
            Ok(())
        })?;
        self.len = len;
        Ok(self.bytes())
    }

    /// Writes the staged image into `file` (an empty file: its bytes `0..len` read as zeros
    /// after the `ftruncate` here), data extents only.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if nothing is staged; the `ftruncate`/`pwrite` errors.
    pub fn write_image(&self, file: impl AsFd) -> io::Result<CopyStats> {
        if self.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "nothing staged: capture the region first",
            ));
        }
        let file = file.as_fd();
        rustix::io::retry_on_intr(|| rustix::fs::ftruncate(file, self.len))?;
        let bytes: &[u8] = bytemuck::cast_slice(&self.buf);
        for &(off, n) in &self.extents {
            write_all_at(file, &bytes[off as usize..(off + n) as usize], off)?;
        }
        Ok(CopyStats {
            bytes: self.bytes(),
            extents: self.extents.len() as u64,
            method: CopyMethod::Buffer,
        })
    }

    /// [`Staging::write_image`] and the footer: a complete snapshot file, not yet synced
    /// (the same file [`crate::snapshot::write_snapshot`] makes of the region).
    ///
    /// # Errors
    ///
    /// As [`write_footer`] and [`Staging::write_image`] (as [`crate::snapshot::SnapshotErrorKind::Io`]).
    pub fn write_snapshot(
        &self,
        file: impl AsFd,
        meta: SnapshotMeta,
    ) -> Result<(SnapshotInfo, CopyStats), SnapshotError> {
        let file = file.as_fd();
        let stats = self.write_image(file).map_err(SnapshotError::io)?;
        let info = write_footer(file, self.len, meta)?;
        Ok((info, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Protection;
    use crate::memfd::Memfd;
    use crate::snapshot::{write_snapshot, SnapshotMeta};

    #[test]
    fn a_staged_snapshot_is_byte_identical_to_a_direct_one_and_keeps_holes() {
        let m = Memfd::create("stage", 1 << 20).unwrap();
        m.seal_against_shrink().unwrap();
        for (off, b) in [(0u64, 1u8), (300_000, 2), (1_040_000, 3)] {
            rustix::io::pwrite(&m, &[b; 5000], off).unwrap();
        }
        let meta = SnapshotMeta {
            strategy: 4,
            generation: 9,
            unix_time_ns: 5,
        };
        let map = Mapping::of_memfd(&m, Protection::ReadOnly).unwrap();
        let mut s = Staging::new();
        let copied = s.capture(&m, &map, 1 << 20, None).unwrap();
        assert!((15_000..64 << 10).contains(&copied), "{copied}");
        let d = tempfile::tempdir().unwrap();
        let rw = |n: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(d.path().join(n))
                .unwrap()
        };
        let (staged, direct) = (rw("a"), rw("b"));
        s.write_snapshot(&staged, meta).unwrap();
        write_snapshot(&m, &direct, 1 << 20, meta).unwrap();
        let a = std::fs::read(d.path().join("a")).unwrap();
        let b = std::fs::read(d.path().join("b")).unwrap();
        assert_eq!(a, b);
        // A later write to the region does not reach the staged copy.
        rustix::io::pwrite(&m, &[9; 10], 0).unwrap();
        let again = rw("c");
        s.write_snapshot(&again, meta).unwrap();
        assert_eq!(std::fs::read(d.path().join("c")).unwrap(), a);
        assert!(
            crate::memfd::allocated_bytes(&again).unwrap() < 256 << 10,
            "holes kept"
        );
    }

    #[test]
    fn a_region_shorter_than_asked_is_an_error_and_stages_nothing() {
        let m = Memfd::create("short", 8192).unwrap();
        m.seal_against_shrink().unwrap();
        rustix::io::pwrite(&m, &[1; 8192], 0).unwrap();
        let map = Mapping::of_memfd(&m, Protection::ReadOnly).unwrap();
        let mut s = Staging::new();
        assert!(s.capture(&m, &map, 16384, None).is_err());
        assert!(s.capture(&m, &map, 4100, None).is_err(), "not whole words");
        assert!(s.is_empty());
        let f = tempfile::tempfile().unwrap();
        assert!(s.write_image(&f).is_err());
    }
}
