//! Restoring a chain: the base, then each delta, into a private destination, every CRC
//! checked while copying (one read of each file).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crc_fast::{checksum_combine, CrcAlgorithm, Digest};
use rustix::fs::FallocateFlags;

use super::error::{ChainError, ChainErrorKind};
use super::listing::{open_delta, At, ChainListing, Checks, DeltaEntry};
use super::write::Tip;
use crate::copy::{file_len, for_each_extent, read_full_at, write_all_at};
use crate::memfd::Memfd;
use crate::snapshot::{self, ImageSummary, SnapshotError, SnapshotInfo, SnapshotMeta};

/// Bytes per `pread`/`pwrite` while restoring (small enough to stay in cache between the
/// read, the CRC and the write).
const CHUNK: usize = 256 << 10;

/// What a restore did.
#[derive(Debug)]
pub struct RestoreReport {
    /// The chain as restored: `deltas` are the ones applied, `stop` says why the chain ended
    /// there (a torn or corrupt delta, naming it) when it ended early, `ignored` lists the
    /// deltas never applied (after the stop, or after the point asked for).
    pub listing: ChainListing,
    /// The restored image, as the image check saw it.
    pub summary: ImageSummary,
    /// Bytes written into the destination (base data extents plus delta runs).
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

/// Restores `base` plus its deltas in `chain_dir` up to `at` into `region`: the region is
/// emptied, the base's data extents copied (its image CRC checked on the way), each delta's
/// runs copied over it (its data CRC checked on the way), then the image check
/// ([`check_image`](snapshot::check_image)) runs on the result. A delta whose data turns out
/// corrupt ends the chain there: the restore starts again with the deltas before it (the
/// region is private until the client starts, so nothing is lost by writing it twice).
///
/// On `Err` the region's content is unspecified: drop it.
///
/// # Errors
///
/// [`ChainErrorKind::Base`] if the base is unusable (try an older generation) or the restored
/// image fails the image check; `RegionTooSmall`; `NotInChain`; I/O errors writing the region.
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
/// ([`verify_path`](snapshot::verify_path)), then every delta's footer, table, links and data
/// CRC. The returned listing ends at the first bad delta (`stop` names it).
///
/// # Errors
///
/// [`ChainErrorKind::Base`] if the base is unusable; I/O errors reading the chain directory.
pub fn verify_chain(base: &Path, chain_dir: &Path) -> Result<ChainListing, ChainError> {
    snapshot::verify_path(base)?;
    let mut listing = ChainListing::load(base, chain_dir)?;
    listing.check_data();
    Ok(listing)
}

/// Why applying a delta failed: the delta is bad (end the chain before it), or the
/// destination is (give up).
enum Fail {
    Delta(ChainError),
    Dst(ChainError),
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
    let base_file = snapshot::open(base)?;
    let bytes = loop {
        let bytes = copy_base(&base_file, &listing.base, dst).map_err(|e| e.at(base))?;
        match apply_all(&listing.deltas, dst, checks) {
            Ok(n) => break bytes + n,
            // A corrupt delta: the state is the prefix before it; copy again without it.
            Err((j, Fail::Delta(e))) => listing.cut(j, e),
            Err((_, Fail::Dst(e))) => return Err(e),
        }
    };
    let info = SnapshotInfo {
        image_len,
        ..listing.base
    };
    let summary = snapshot::check_image(dst, &info, |_, _| {}).map_err(|e| {
        let newest = listing.deltas.last().map_or(base, |d| d.path.as_path());
        ChainError::from(e.at(newest))
    })?;
    let unix_time_ns = listing
        .deltas
        .last()
        .map_or(listing.base.meta.unix_time_ns, |d| d.footer.unix_time_ns);
    Ok(RestoreReport {
        listing,
        summary,
        bytes,
        unix_time_ns,
    })
}

/// Applies `deltas` in order; on failure, the 0-based position of the delta and why.
fn apply_all(
    deltas: &[DeltaEntry],
    dst: BorrowedFd<'_>,
    checks: Checks,
) -> Result<u64, (usize, Fail)> {
    let mut bytes = 0;
    let mut buf = vec![0u8; CHUNK];
    for (j, d) in deltas.iter().enumerate() {
        bytes += apply_delta(d, dst, checks, &mut buf).map_err(|f| (j, f))?;
    }
    Ok(bytes)
}

/// Copies the runs of delta `d` into `dst`, checking its data CRC on the way: the data
/// section is read in [`CHUNK`]s (one `pread` for many small runs), each scattered to its runs.
fn apply_delta(
    d: &DeltaEntry,
    dst: BorrowedFd<'_>,
    checks: Checks,
    buf: &mut [u8],
) -> Result<u64, Fail> {
    let bad = |e: ChainError| Fail::Delta(e.at(&d.path));
    let file = open_delta(&d.path).map_err(Fail::Delta)?;
    let mut digest = Digest::new(CrcAlgorithm::Crc32Iscsi);
    let data_len = d.footer.data_len;
    // The data section is read in big chunks; each chunk is scattered to its runs. `run` is
    // the current run, `in_run` the bytes of it already written.
    let (mut run, mut in_run, mut pos) = (0usize, 0u64, 0u64);
    while pos < data_len {
        let n = (data_len - pos).min(buf.len() as u64) as usize;
        let at = d.footer.table_len() + pos;
        if read_full_at(&file, &mut buf[..n], at).map_err(|e| bad(e.into()))? < n {
            return Err(bad(io::Error::from(io::ErrorKind::UnexpectedEof).into()));
        }
        digest.update(&buf[..n]);
        let mut off = 0;
        while off < n {
            // The runs' lengths sum to data_len (checked when the table was read).
            let Some(r) = d.runs.get(run) else {
                return Err(bad(ChainErrorKind::BadField {
                    field: "data_len",
                    value: data_len,
                }
                .into()));
            };
            let take = (r.len - in_run).min((n - off) as u64) as usize;
            write_all_at(dst, &buf[off..off + take], r.offset + in_run)
                .map_err(|e| Fail::Dst(e.into()))?;
            off += take;
            in_run += take as u64;
            if in_run == r.len {
                run += 1;
                in_run = 0;
            }
        }
        pos += n as u64;
    }
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    let computed = digest.finalize() as u32;
    if checks.data_crc && computed != d.footer.data_crc {
        return Err(bad(ChainErrorKind::DataChecksum {
            stored: d.footer.data_crc,
            computed,
        }
        .into()));
    }
    Ok(d.footer.data_len)
}

/// Empties `dst` (holes over its whole length), sizes it to at least the image, then copies
/// the base's data extents into it, checking the image CRC on the way (holes folded in by CRC
/// combination, not read). Returns the bytes copied.
fn copy_base(base: &File, info: &SnapshotInfo, dst: BorrowedFd<'_>) -> Result<u64, SnapshotError> {
    let image_len = info.image_len;
    let io = SnapshotError::from;
    let dst_len = file_len(dst).map_err(io)?;
    if dst_len > 0 {
        rustix::io::retry_on_intr(|| {
            rustix::fs::fallocate(
                dst,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                dst_len,
            )
        })
        .map_err(|e| io(e.into()))?;
    }
    if dst_len < image_len {
        rustix::fs::ftruncate(dst, image_len).map_err(|e| io(e.into()))?;
    }
    let alg = CrcAlgorithm::Crc32Iscsi;
    let mut crc = crc_fast::checksum(alg, b"");
    let mut buf = vec![0u8; CHUNK];
    let mut bytes = 0;
    for_each_extent(base, image_len, |off, n, is_data| {
        let part = if is_data {
            let mut d = Digest::new(alg);
            let mut done = 0;
            while done < n {
                let want = (n - done).min(CHUNK as u64) as usize;
                let got = read_full_at(base, &mut buf[..want], off + done)?;
                if got < want {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                d.update(&buf[..want]);
                write_all_at(dst, &buf[..want], off + done)?;
                done += want as u64;
            }
            bytes += n;
            d.finalize()
        } else {
            crate::snapshot::zeros_crc32c(n)
        };
        crc = checksum_combine(alg, crc, part, n);
        Ok(())
    })
    .map_err(io)?;
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    let computed = crc as u32;
    if computed != info.image_crc {
        return Err(snapshot::SnapshotErrorKind::ImageChecksum {
            stored: info.image_crc,
            computed,
        }
        .into());
    }
    Ok(bytes)
}
