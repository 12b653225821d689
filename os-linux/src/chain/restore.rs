//! Restoring a chain: the base with its deltas laid over it, in one ascending sweep into a
//! private destination, every CRC checked while copying (one read of each file, one write of
//! each chunk of the image).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crc_fast::{CrcAlgorithm, Digest};
use rustix::fs::FallocateFlags;

use super::error::{ChainError, ChainErrorKind};
use super::listing::{open_delta, out_of_fds, At, ChainListing, Checks, DeltaEntry};
use super::points::DataCrc;
use super::write::Tip;
use crate::copy::{file_len, for_each_extent, read_full_at, write_all_at};
use crate::memfd::Memfd;
use crate::snapshot::{self, ImageSummary, SnapshotError, SnapshotInfo, SnapshotMeta};

/// Bytes of the image per `pread`/`pwrite` while restoring (small enough to stay in cache
/// between the read, the CRC, the deltas laid over it and the write). Three pages in tests,
/// so that runs straddle chunks.
const CHUNK: usize = if cfg!(test) { 3 << 12 } else { 256 << 10 };

/// Bytes of a delta's data section per `pread` (one read-ahead buffer per delta); two pages
/// and a half in tests, so that pieces straddle reads.
const AHEAD: usize = if cfg!(test) { 10 << 10 } else { 64 << 10 };

/// Bound on the read-aheads of all deltas together: with many deltas each gets less (down to
/// one page), so a long chain costs at most this much memory.
const AHEAD_TOTAL: usize = 16 << 20;

/// The smallest read-ahead of a delta (one page).
const AHEAD_MIN: usize = 4096;
// `clamp(AHEAD_MIN, AHEAD)` needs this (it panics otherwise).
const _: () = assert!(AHEAD_MIN <= AHEAD);

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// The chain as restored: `deltas` are the ones applied, `stop` says why the chain ended
    /// there (a torn or corrupt delta, naming it) when it ended early, `ignored` lists the
    /// deltas never applied (after the stop, or after the point asked for).
    pub listing: ChainListing,
    /// The restored image, as the image check saw it.
    pub summary: ImageSummary,
    /// Bytes copied from the chain (base data extents plus the applied deltas' runs).
    pub bytes: u64,
    /// Wall-clock time of the restored state (the base's or the last applied delta's).
    pub unix_time_ns: u64,
}

impl RestoreReport {
    /// The tip of the restored state.
    pub fn tip(&self) -> Tip {
        self.listing.tip()
    }
}

/// Restores `base` plus its deltas in `chain_dir` up to `at` into `region`. First the chain
/// is ended where [`ChainListing::check_points`] says (a delta whose point fails the image
/// check ends it, as in `verify`); then the region is emptied and swept once in ascending
/// order: each chunk of the base's data extents is read (its image CRC checked on the way),
/// the deltas' runs inside it are copied over it oldest first (each delta's data read once,
/// in order, its data CRC checked on the way), and the chunk is written once; then the image
/// check ([`check_image`](snapshot::check_image)) runs again on the result. A delta whose
/// data turns out corrupt ends the chain there: the restore starts again with the deltas
/// before it (the region is private until the client starts, so nothing is lost by writing
/// it twice).
///
/// On `Err` the region's content is unspecified: drop it.
///
/// # Errors
///
/// [`ChainErrorKind::Base`] if the base is unusable — its footer, its image CRC, or the
/// image check of the base itself (try an older generation) — or the restored image fails
/// the image check although its point passed (a file changed during the restore);
/// `RegionTooSmall`; `NotInChain`; I/O errors writing the region.
pub fn restore_chain(
    base: &Path,
    chain_dir: &Path,
    region: &Memfd,
    at: At,
) -> Result<RestoreReport, ChainError> {
    restore_with(
        base,
        chain_dir,
        region.as_fd(),
        Some(region.len()?),
        at,
        Checks::ALL,
    )
}

/// Writes the state of the chain at `at` as a standalone snapshot file into `out` (an empty,
/// writable file, e.g. a [`Persister`](crate::persist::Persister) temp file): the same format
/// as a base, footer and all, with the base's strategy and generation and the state's time.
/// Everything is checked as in [`restore_chain`]; the file is not synced.
///
/// # Errors
///
/// As [`restore_chain`]; on `Err` discard `out`.
pub fn materialize(
    base: &Path,
    chain_dir: &Path,
    at: At,
    out: impl AsFd,
) -> Result<(SnapshotInfo, RestoreReport), ChainError> {
    let out = out.as_fd();
    let report = restore_with(base, chain_dir, out, None, at, Checks::ALL)?;
    let meta = SnapshotMeta {
        unix_time_ns: report.unix_time_ns,
        ..report.listing.base.meta
    };
    let info = snapshot::write_footer(out, report.listing.base.image_len, meta)?;
    Ok((info, report))
}

/// Checks a whole chain without writing anything: the base completely
/// ([`verify_path`](snapshot::verify_path)), then every delta's footer, table, links, data
/// CRC and the image check of the point it yields ([`ChainListing::check_points`]). The
/// returned listing ends at the first bad delta (`stop` names it): exactly the point
/// [`restore_chain`] restores.
///
/// # Errors
///
/// [`ChainErrorKind::Base`] if the base is unusable; I/O errors reading the chain directory.
pub fn verify_chain(base: &Path, chain_dir: &Path) -> Result<ChainListing, ChainError> {
    snapshot::verify_path(base)?;
    let mut listing = ChainListing::load(base, chain_dir)?;
    listing.check_points(DataCrc::Now)?;
    Ok(listing)
}

/// Where a sweep failed: at a bad delta (`Some` of its 0-based position: end the chain
/// before it), or in the base or the destination (`None`: give up).
type SweepError = (Option<usize>, ChainError);

/// A base read error (or a base found corrupt) as a [`SweepError`].
fn base_err(base: &Path, e: impl Into<SnapshotError>) -> SweepError {
    (None, e.into().at(base).into())
}

/// A failure to open delta `j` as a [`SweepError`]: the delta's (end the chain before it),
/// unless this process ran out of file descriptors ([`out_of_fds`]).
fn open_err(j: usize, e: ChainError) -> SweepError {
    if out_of_fds(&e) {
        (None, e)
    } else {
        (Some(j), e)
    }
}

/// A destination write error as a [`SweepError`].
fn dst_err(e: io::Error) -> SweepError {
    (None, e.into())
}

pub(crate) fn restore_with(
    base: &Path,
    chain_dir: &Path,
    dst: BorrowedFd<'_>,
    region_len: Option<u64>,
    at: At,
    checks: Checks,
) -> Result<RestoreReport, ChainError> {
    let mut listing = ChainListing::load_with(base, chain_dir, checks)?;
    let image_len = listing.base.image_len;
    if let Some(region) = region_len.filter(|&r| r < image_len) {
        return Err(ChainErrorKind::RegionTooSmall {
            image: image_len,
            region,
        }
        .into());
    }
    let k = listing.select(at)?;
    let later: Vec<PathBuf> = listing.deltas.drain(k..).map(|d| d.path).collect();
    listing.ignored.splice(0..0, later);
    // Where the chain ends, as `verify` says; the data CRCs are checked by the sweep.
    listing.check_points_with(DataCrc::AtRestore, checks)?;
    let base_file = snapshot::open(base)?;
    let bytes = loop {
        let src = Base {
            file: &base_file,
            path: base,
            info: &listing.base,
        };
        match sweep(&src, &listing.deltas, dst, checks) {
            Ok(n) => break n,
            // A corrupt delta: the state is the prefix before it; copy again without it.
            Err((Some(j), e)) => listing.cut(j, e),
            Err((None, e)) => return Err(e),
        }
    };
    let info = SnapshotInfo {
        image_len,
        ..listing.base
    };
    // `check_points` checked this point's image; the check runs again on what was written,
    // so a file that changed since (or a disagreement) fails the restore instead of handing
    // over an image no one checked.
    let summary = snapshot::check_image(dst, &info, |_, _| {}).map_err(|e| {
        let newest = listing.deltas.last().map_or(base, |d| d.path.as_path());
        ChainError::from(e.at(newest))
    })?;
    let unix_time_ns = listing.newest_time();
    Ok(RestoreReport {
        listing,
        summary,
        bytes,
        unix_time_ns,
    })
}

/// Copies the base with `deltas` laid over it into `dst` in one ascending sweep, checking
/// the base's image CRC and every delta's data CRC on the way: each chunk of the image is read
/// from the base (or is a hole of it), the deltas' runs inside the chunk are copied over it
/// oldest first, and the chunk is written once. Every delta's data section is consumed in
/// order (its runs are ascending), so it is read exactly once, in big reads. Returns the bytes
/// read from the base and the deltas.
///
/// Holes of the base stay holes in `dst` except where a delta writes: there only the runs
/// are written.
///
/// On failure: the 0-based position of a bad delta (the state is the prefix before it: sweep
/// again without it), or `None` if the base or the destination failed.
fn sweep(
    base: &Base<'_>,
    deltas: &[DeltaEntry],
    dst: BorrowedFd<'_>,
    checks: Checks,
) -> Result<u64, SweepError> {
    let image_len = base.info.image_len;
    empty(dst, image_len).map_err(dst_err)?;
    let ahead = (AHEAD_TOTAL / deltas.len().max(1)).clamp(AHEAD_MIN, AHEAD);
    let mut cursors = Vec::with_capacity(deltas.len());
    for (j, d) in deltas.iter().enumerate() {
        cursors.push(Cursor::open(d, ahead).map_err(|e| open_err(j, e))?);
    }
    let mut s = Sweep {
        base,
        cursors,
        dst,
        buf: vec![0u8; CHUNK],
        crc: crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, b""),
        bytes: 0,
    };
    // `for_each_extent` carries only `io::Error`s: the sweep's own error waits in `failed`.
    let mut failed = None;
    let walked = for_each_extent(base.file, image_len, |off, n, is_data| {
        s.extent(off..off + n, is_data).map_err(|f| {
            failed = Some(f);
            io::Error::other("the sweep failed")
        })
    });
    match (walked, failed) {
        (_, Some(f)) => return Err(f),
        (Err(e), None) => return Err(base_err(base.path, e)),
        (Ok(()), None) => {}
    }
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    let computed = s.crc as u32;
    if computed != base.info.image_crc {
        let kind = snapshot::SnapshotErrorKind::ImageChecksum {
            stored: base.info.image_crc,
            computed,
        };
        return Err(base_err(base.path, kind));
    }
    let mut bytes = s.bytes;
    for (j, c) in s.cursors.into_iter().enumerate() {
        bytes += c.finish(checks).map_err(|e| (Some(j), e))?;
    }
    Ok(bytes)
}

/// The state of a [`sweep`] between two extents of the base.
struct Sweep<'a, 'd> {
    base: &'a Base<'a>,
    /// The deltas, oldest first, each at the first of its bytes not yet copied.
    cursors: Vec<Cursor<'d>>,
    dst: BorrowedFd<'a>,
    /// One chunk of the image ([`CHUNK`] bytes).
    buf: Vec<u8>,
    /// CRC-32C of the image up to the extents swept so far.
    crc: u64,
    /// Bytes of base data read so far.
    bytes: u64,
}

impl Sweep<'_, '_> {
    /// Sweeps one extent of the base (`is_data`, or a hole), chunk by chunk, and folds its
    /// CRC into the image's (a hole's by CRC combination, not read).
    fn extent(&mut self, extent: Range<u64>, is_data: bool) -> Result<(), SweepError> {
        let alg = CrcAlgorithm::Crc32Iscsi;
        let n = extent.end - extent.start;
        let mut digest = Digest::new(alg);
        let mut at = extent.start;
        while at < extent.end {
            let chunk = at..(at + CHUNK as u64).min(extent.end);
            let len = (chunk.end - chunk.start) as usize; // <= CHUNK
            if is_data {
                let buf = &mut self.buf[..len];
                sweep_data(
                    self.base,
                    buf,
                    &chunk,
                    &mut digest,
                    &mut self.cursors,
                    self.dst,
                )?;
            } else {
                sweep_hole(&chunk, &mut self.buf, &mut self.cursors, self.dst)?;
            }
            at = chunk.end;
        }
        let part = if is_data {
            self.bytes += n;
            digest.finalize()
        } else {
            crate::snapshot::zeros_crc32c(n)
        };
        self.crc = crate::snapshot::crc32c_combine(self.crc, part, n);
        Ok(())
    }
}

/// One chunk of a data extent of the base: read into `buf` (its CRC into `digest`), the
/// deltas' runs in `chunk` copied over it, written to `dst`.
fn sweep_data(
    base: &Base<'_>,
    buf: &mut [u8],
    chunk: &Range<u64>,
    digest: &mut Digest,
    cursors: &mut [Cursor<'_>],
    dst: BorrowedFd<'_>,
) -> Result<(), SweepError> {
    let got = read_full_at(base.file, buf, chunk.start).map_err(|e| base_err(base.path, e))?;
    if got < buf.len() {
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        return Err(base_err(base.path, eof));
    }
    digest.update(buf);
    for (j, c) in cursors.iter_mut().enumerate() {
        c.overlay(chunk, buf, |_, _| Ok(())).map_err(|e| e.at(j))?;
    }
    write_all_at(dst, buf, chunk.start).map_err(dst_err)
}

/// One chunk of a hole of the base: only the deltas' runs in `chunk` are written to `dst`
/// (through `buf`), oldest first.
fn sweep_hole(
    chunk: &Range<u64>,
    buf: &mut [u8],
    cursors: &mut [Cursor<'_>],
    dst: BorrowedFd<'_>,
) -> Result<(), SweepError> {
    for (j, c) in cursors.iter_mut().enumerate() {
        c.overlay(chunk, buf, |at, piece| write_all_at(dst, piece, at))
            .map_err(|e| e.at(j))?;
    }
    Ok(())
}

/// Why laying a delta over a chunk failed.
enum Overlay {
    /// The delta is bad: end the chain before it.
    Delta(ChainError),
    /// Writing the destination failed: give up.
    Dst(io::Error),
}

impl Overlay {
    /// As a [`SweepError`], for the delta at position `j`.
    fn at(self, j: usize) -> SweepError {
        match self {
            Overlay::Delta(e) => (Some(j), e),
            Overlay::Dst(e) => dst_err(e),
        }
    }
}

/// The base of a restore: its file (open), path and footer.
struct Base<'a> {
    file: &'a File,
    path: &'a Path,
    info: &'a SnapshotInfo,
}

/// A delta being swept: where its runs are, and its data section read ahead in order.
struct Cursor<'d> {
    d: &'d DeltaEntry,
    file: File,
    /// The current run; `in_run`: its bytes already copied.
    run: usize,
    in_run: u64,
    /// CRC of the data read so far (all of it, in file order).
    digest: Digest,
    /// Read-ahead of the data section: `ahead[next..filled]` not yet copied; at most
    /// `ahead_len` bytes (allocated at the first read).
    ahead: Vec<u8>,
    ahead_len: usize,
    next: usize,
    filled: usize,
    /// Bytes of the data section read so far.
    read: u64,
}

impl<'d> Cursor<'d> {
    /// Opens delta `d`'s file; its data will be read `ahead` bytes at a time.
    fn open(d: &'d DeltaEntry, ahead: usize) -> Result<Self, ChainError> {
        Ok(Cursor {
            d,
            ahead_len: ahead,
            file: open_delta(&d.path)?,
            run: 0,
            in_run: 0,
            digest: Digest::new(CrcAlgorithm::Crc32Iscsi),
            ahead: Vec::new(),
            next: 0,
            filled: 0,
            read: 0,
        })
    }

    /// Copies the parts of this delta's runs that start before `chunk.end` (they are all in
    /// `chunk`: the sweep covers the image in order) into `buf` (byte `i` of it is byte
    /// `chunk.start + i` of the image), handing each piece to `done(offset, piece)`, whose
    /// errors are the destination's.
    fn overlay(
        &mut self,
        chunk: &Range<u64>,
        buf: &mut [u8],
        mut done: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), Overlay> {
        let path = &self.d.path;
        while let Some(r) = self.d.runs.get(self.run) {
            let at = r.offset + self.in_run;
            if at >= chunk.end {
                break;
            }
            if at < chunk.start {
                // Runs are ascending, inside the image, and the sweep leaves no gap.
                return Err(Overlay::Delta(
                    ChainError::from(ChainErrorKind::BadRun {
                        run: self.run as u64,
                        why: "not reached in order by the restore",
                    })
                    .at(path),
                ));
            }
            let piece = (r.offset + r.len).min(chunk.end) - at;
            let from = (at - chunk.start) as usize;
            let Some(out) = buf.get_mut(from..from + piece as usize) else {
                return Err(Overlay::Delta(
                    ChainError::from(ChainErrorKind::BadRun {
                        run: self.run as u64,
                        why: "outside the chunk being restored",
                    })
                    .at(path),
                ));
            };
            self.fill(out).map_err(|e| Overlay::Delta(e.at(path)))?;
            done(at, out).map_err(Overlay::Dst)?;
            self.in_run += piece;
            if self.in_run == r.len {
                self.run += 1;
                self.in_run = 0;
            }
        }
        Ok(())
    }

    /// Fills `out` with the next bytes of the data section, reading ahead `ahead_len` bytes
    /// at a time.
    fn fill(&mut self, mut out: &mut [u8]) -> Result<(), ChainError> {
        let data_len = self.d.footer.data_len;
        while !out.is_empty() {
            if self.next == self.filled {
                let n = (data_len - self.read).min(self.ahead_len as u64) as usize;
                if n == 0 {
                    return Err(ChainErrorKind::BadField {
                        field: "data_len",
                        value: data_len,
                    }
                    .into());
                }
                self.ahead.resize(self.ahead_len, 0);
                let at = self.d.footer.table_len() + self.read;
                if read_full_at(&self.file, &mut self.ahead[..n], at)? < n {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                self.digest.update(&self.ahead[..n]);
                (self.next, self.filled) = (0, n);
                self.read += n as u64;
            }
            let take = out.len().min(self.filled - self.next);
            let (now, rest) = out.split_at_mut(take);
            now.copy_from_slice(&self.ahead[self.next..self.next + take]);
            self.next += take;
            out = rest;
        }
        Ok(())
    }

    /// After the sweep: every run copied, the whole data section read, its CRC checked.
    /// Returns the delta's data bytes.
    fn finish(mut self, checks: Checks) -> Result<u64, ChainError> {
        let data_len = self.d.footer.data_len;
        if self.run != self.d.runs.len() {
            return Err(ChainError::from(ChainErrorKind::BadRun {
                run: self.run as u64,
                why: "not reached by the restore",
            })
            .at(&self.d.path));
        }
        // The runs' lengths sum to data_len (checked when the table was read); read the rest
        // anyway so the CRC covers the whole section whatever the table says.
        while self.read < data_len {
            let mut sink = [0u8; 4096];
            let n = (data_len - self.read).min(4096) as usize;
            self.fill(&mut sink[..n]).map_err(|e| e.at(&self.d.path))?;
        }
        // CRC-32C is 32 bits wide; the u64 holds it in its low half.
        let computed = self.digest.finalize() as u32;
        if checks.data_crc && computed != self.d.footer.data_crc {
            return Err(ChainError::from(ChainErrorKind::DataChecksum {
                stored: self.d.footer.data_crc,
                computed,
            })
            .at(&self.d.path));
        }
        Ok(data_len)
    }
}

/// Empties `dst` (holes over its whole length) and sizes it to at least `image_len`.
fn empty(dst: BorrowedFd<'_>, image_len: u64) -> io::Result<()> {
    let dst_len = file_len(dst)?;
    if dst_len > 0 {
        rustix::io::retry_on_intr(|| {
            rustix::fs::fallocate(
                dst,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                dst_len,
            )
        })?;
    }
    if dst_len < image_len {
        rustix::fs::ftruncate(dst, image_len)?;
    }
    Ok(())
}
