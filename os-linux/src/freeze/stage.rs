//! The staging of the freeze strategy: the region's data extents, copied during the pause
//! into anonymous memory this process keeps, written into the snapshot file after the thaw.
//!
//! Chosen by measurement (DESIGN §17, `freeze_pause` bench): `pread` from the memfd into a
//! buffer whose pages were touched by earlier pauses costs about one `memcpy` of the data,
//! while a fresh memfd or the temp file's page cache allocate a page per 4 KiB inside the
//! pause. The price is resident memory: as much as the region's data (touched pages only:
//! the buffer starts as untouched zero pages).
//!
//! Holes stay holes: the extents are found with `SEEK_DATA`/`SEEK_HOLE` during the pause, and
//! only they are read, and later written.

use std::io;
use std::os::fd::AsFd;

use crate::copy::{file_len, for_each_extent, read_full_at, write_all_at, CopyMethod, CopyStats};
use crate::snapshot::{write_footer, SnapshotError, SnapshotInfo, SnapshotMeta};

/// A copy of a region's data extents in anonymous memory.
///
/// Invariant: after [`Staging::capture`] succeeded, `extents` are the data extents of bytes
/// `0..len` of the region, in order and disjoint, and `buf[off..off + n]` holds the bytes of
/// each `(off, n)`; `buf.len() >= len`. After a failed capture, `len` is 0 (nothing staged).
#[derive(Debug, Default)]
pub struct Staging {
    buf: Vec<u8>,
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

    /// Copies the data extents of bytes `0..len` of `region` (call it while nobody writes the
    /// region: during a freeze). Returns the bytes copied.
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` if `region` is shorter than `len`; `OutOfMemory` if `len` does not
    /// fit in memory; the `lseek`/`pread` errors.
    pub fn capture(&mut self, region: impl AsFd, len: u64) -> io::Result<u64> {
        let region = region.as_fd();
        self.len = 0;
        self.extents.clear();
        let have = file_len(region)?;
        if have < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cannot stage {len} bytes of a region of {have} bytes"),
            ));
        }
        let need = usize::try_from(len).map_err(|_| io::ErrorKind::OutOfMemory)?;
        if self.buf.len() < need {
            // Zeroed by the allocator with fresh pages (calloc/mmap): nothing is touched
            // until a pause copies into it.
            self.buf = Vec::new();
            self.buf
                .try_reserve_exact(need)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            self.buf = vec![0u8; need];
        }
        let (buf, extents) = (&mut self.buf, &mut self.extents);
        for_each_extent(region, len, |off, n, data| {
            if data {
                let (lo, hi) = (off as usize, (off + n) as usize);
                let got = read_full_at(region, &mut buf[lo..hi], off)?;
                if got < hi - lo {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the region ended at {} while {len} bytes were staged",
                            off + got as u64
                        ),
                    ));
                }
                extents.push((off, n));
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
        for &(off, n) in &self.extents {
            write_all_at(file, &self.buf[off as usize..(off + n) as usize], off)?;
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
    use crate::memfd::Memfd;
    use crate::snapshot::{write_snapshot, SnapshotMeta};

    #[test]
    fn a_staged_snapshot_is_byte_identical_to_a_direct_one_and_keeps_holes() {
        let m = Memfd::create("stage", 1 << 20).unwrap();
        for (off, b) in [(0u64, 1u8), (300_000, 2), (1_040_000, 3)] {
            rustix::io::pwrite(&m, &[b; 5000], off).unwrap();
        }
        let meta = SnapshotMeta {
            strategy: 4,
            generation: 9,
            unix_time_ns: 5,
        };
        let mut s = Staging::new();
        let copied = s.capture(&m, 1 << 20).unwrap();
        assert!(copied >= 15_000 && copied < 64 << 10, "{copied}");
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
        rustix::io::pwrite(&m, &[1; 8192], 0).unwrap();
        let mut s = Staging::new();
        assert!(s.capture(&m, 16384).is_err());
        assert!(s.is_empty());
        let f = tempfile::tempfile().unwrap();
        assert!(s.write_image(&f).is_err());
    }
}
