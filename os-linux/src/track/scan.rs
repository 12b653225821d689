//! Host side: `PAGEMAP_SCAN` over the client's tracked range, reporting written pages and
//! write-protecting them again in the same walk.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use linux_raw_sys::general::{
    page_region, pm_scan_arg, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_WRITTEN,
    PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING,
};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Ioctl, IoctlOutput, Opcode};
use rustix::process::Pid;

use super::TrackedRange;

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
pub(crate) const PAGEMAP_SCAN: Opcode = opcode::read_write::<pm_scan_arg>(b'f', 16);

/// Default number of `page_region` entries per ioctl (24 bytes each): 12 KiB, enough for
/// 512 separate runs per call; more runs just take more calls.
const DEFAULT_RUNS_PER_CALL: usize = 512;

/// Which pages a scan reports (and re-protects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScanQuery {
    /// Sound: pages `PAGE_IS_WRITTEN` **or** with an empty page-table entry (neither present
    /// nor swapped: written then zapped, see the [module docs](super)). One walk returns every
    /// page's categories, so the two kinds cannot race each other.
    #[default]
    WrittenOrUnknown,
    /// The kernel's fast path (`category_mask = return_mask = PAGE_IS_WRITTEN`). Misses a
    /// written page whose entry was zapped before the scan: for comparison and benchmarks
    /// only, never for snapshots.
    WrittenOnly,
}

/// Why a scan failed. Every variant means: take a full snapshot.
#[derive(Debug)]
pub enum ScanError {
    /// The kernel has no `PAGEMAP_SCAN` (Linux 6.7+) (`ENOTTY`/`EINVAL`).
    Unsupported(Errno),
    /// Part of the range is not registered for async write-protect in the client (`EPERM`
    /// under `PM_SCAN_CHECK_WPASYNC`): the client unregistered, remapped or never registered.
    NotRegistered,
    /// The client process (or its address space) is gone (`ESRCH`/`ENOENT`).
    Gone,
    /// The kernel's answer broke the ioctl's contract (runs outside the range, unsorted,
    /// overlapping, no progress): nothing of this scan can be trusted.
    Inconsistent(String),
    /// Another I/O error.
    Io(io::Error),
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("write-tracking scan failed (full snapshot instead): ")?;
        match self {
            Self::Unsupported(e) => write!(f, "this kernel has no PAGEMAP_SCAN ({e}; 6.7+)"),
            Self::NotRegistered => {
                f.write_str("the client's range is not registered for write tracking (EPERM)")
            }
            Self::Gone => f.write_str("the client process is gone"),
            Self::Inconsistent(why) => write!(f, "inconsistent answer from the kernel: {why}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ScanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl ScanError {
    fn from_errno(e: Errno) -> Self {
        if e == Errno::PERM {
            Self::NotRegistered
        } else if e == Errno::SRCH || e == Errno::NOENT {
            Self::Gone
        } else if e == Errno::NOTTY || e == Errno::INVAL {
            Self::Unsupported(e)
        } else {
            Self::Io(e.into())
        }
    }
}

/// A run of written pages, in bytes relative to the start of the tracked range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    /// Offset of the first page (a multiple of the page size).
    pub offset: u64,
    /// Length in bytes (a nonzero multiple of the page size).
    pub len: u64,
}

/// The pages a scan reported written: sorted, non-overlapping, non-adjacent runs inside the
/// range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WrittenPages {
    /// Invariant: sorted by offset, each run nonempty and page-aligned, a gap between any two
    /// runs (adjacent runs are merged), all inside `[0, range.len())`.
    runs: Vec<PageRun>,
    /// Sum of the runs' lengths in pages.
    pages: u64,
    /// How many of `pages` had an empty entry (written then zapped, or never protected).
    unknown_pages: u64,
}

impl WrittenPages {
    /// The written runs, sorted, non-overlapping.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Number of written pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// How many of the written pages were reported because their entry was empty rather than
    /// marked written (zapped after a write, e.g. by reclaim).
    pub fn unknown_pages(&self) -> u64 {
        self.unknown_pages
    }

    /// Offsets of the written pages, one per page, ascending.
    pub fn page_offsets(&self, page: u64) -> impl Iterator<Item = u64> + '_ {
        self.runs
            .iter()
            .flat_map(move |r| (0..r.len / page).map(move |i| r.offset + i * page))
    }

    /// Appends `[offset, offset + len)`; merges with the last run if adjacent.
    fn push(&mut self, offset: u64, len: u64, page: u64, unknown: bool) {
        match self.runs.last_mut() {
            Some(last) if last.offset + last.len == offset => last.len += len,
            _ => self.runs.push(PageRun { offset, len }),
        }
        self.pages += len / page;
        if unknown {
            self.unknown_pages += len / page;
        }
    }
}

/// Host side: an open `/proc/PID/pagemap` of one client and a reusable run buffer.
///
/// The fd is bound to the client's address space at open: if the client execs or dies, scans
/// fail with [`ScanError::Gone`] instead of reading another process; a restarted client needs
/// a new `Scanner`.
#[derive(Debug)]
pub struct Scanner {
    /// `/proc/PID/pagemap`, `O_RDONLY | O_CLOEXEC`.
    pagemap: OwnedFd,
    /// Output buffer for the kernel; its length is the `vec_len` of every call (nonzero).
    buf: Vec<page_region>,
}

impl Scanner {
    /// `open("/proc/PID/pagemap", O_RDONLY | O_CLOEXEC)`.
    ///
    /// The caller needs `PTRACE_MODE_READ` over the process (a parent over its child, same
    /// user, no `PR_SET_DUMPABLE` 0 in the child).
    ///
    /// # References
    ///  - [Documentation/admin-guide/mm/pagemap.rst](https://docs.kernel.org/admin-guide/mm/pagemap.html)
    ///
    /// # Errors
    ///
    /// [`ScanError::Gone`] if there is no such process; [`ScanError::Io`] otherwise (`EACCES`
    /// without ptrace-read permission).
    pub fn open(pid: Pid) -> Result<Self, ScanError> {
        Self::with_runs_per_call(pid, DEFAULT_RUNS_PER_CALL)
    }

    /// Like [`open`](Self::open) with room for `runs` runs per ioctl (at least 1); a small
    /// buffer only means more calls per scan (tests use 1 to exercise the continuation).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn with_runs_per_call(pid: Pid, runs: usize) -> Result<Self, ScanError> {
        let path = format!("/proc/{}/pagemap", pid.as_raw_nonzero());
        let pagemap = rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| {
                if e == Errno::NOENT || e == Errno::SRCH {
                    ScanError::Gone
                } else {
                    ScanError::Io(e.into())
                }
            })?;
        let empty = page_region {
            start: 0,
            end: 0,
            categories: 0,
        };
        Ok(Self {
            pagemap,
            buf: vec![empty; runs.max(1)],
        })
    }

    /// `ioctl(PAGEMAP_SCAN)` over the range with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`:
    /// the pages written since the previous scan, write-protected again before this returns.
    /// Same as [`scan_with`](Self::scan_with) with [`ScanQuery::WrittenOrUnknown`].
    ///
    /// # Errors
    ///
    /// See [`scan_with`](Self::scan_with).
    pub fn scan(&mut self, range: &TrackedRange) -> Result<WrittenPages, ScanError> {
        self.scan_with(range, ScanQuery::WrittenOrUnknown)
    }

    /// Scans with the given query; calls the ioctl again from `walk_end` until the walk
    /// reaches the end of the range (the kernel stops early when the run buffer is full).
    ///
    /// Everything the kernel returns is checked (runs inside the part walked, page-aligned,
    /// sorted, non-overlapping; progress on every call) and any violation is an error, never a
    /// panic. On error some pages may already have been re-protected: the caller must take a
    /// full snapshot (which it must anyway).
    ///
    /// # References
    ///  - [Documentation/admin-guide/mm/pagemap.rst, "Pagemap Scan IOCTL"](https://docs.kernel.org/admin-guide/mm/pagemap.html)
    ///
    /// # Errors
    ///
    /// [`ScanError::NotRegistered`] (`EPERM`), [`ScanError::Gone`] (`ESRCH`),
    /// [`ScanError::Unsupported`] (`ENOTTY`/`EINVAL`), [`ScanError::Inconsistent`],
    /// [`ScanError::Io`].
    pub fn scan_with(
        &mut self,
        range: &TrackedRange,
        query: ScanQuery,
    ) -> Result<WrittenPages, ScanError> {
        let page = super::page_size();
        let (start, end) = (range.addr(), range.end());
        let mut out = WrittenPages::default();
        let mut at = start;
        while at < end {
            let (n, walk_end) = self.call(at, end, query)?;
            if walk_end <= at || walk_end > end || !walk_end.is_multiple_of(page) {
                return Err(ScanError::Inconsistent(format!(
                    "walk from {at:#x} to {end:#x} ended at {walk_end:#x}"
                )));
            }
            // Runs of one call lie in [at, walk_end), in order; the next call starts at
            // walk_end, so checking each call's runs in order checks the whole scan.
            let mut prev_end = at;
            for r in &self.buf[..n] {
                check_run(r, prev_end, walk_end, page)?;
                prev_end = r.end;
                if let Some(unknown) = classify(r.categories, query) {
                    out.push(r.start - start, r.end - r.start, page, unknown);
                }
            }
            at = walk_end;
        }
        Ok(out)
    }

    /// One `PAGEMAP_SCAN` from `at` to `end`; returns (runs filled, `walk_end`).
    fn call(&mut self, at: u64, end: u64, query: ScanQuery) -> Result<(usize, u64), ScanError> {
        let (mask, ret) = match query {
            ScanQuery::WrittenOnly => (PAGE_IS_WRITTEN, PAGE_IS_WRITTEN),
            ScanQuery::WrittenOrUnknown => (0, PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
        };
        let mut arg = pm_scan_arg {
            size: size_of::<pm_scan_arg>() as u64,
            flags: u64::from(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC),
            start: at,
            end,
            walk_end: 0,
            vec: self.buf.as_mut_ptr() as u64,
            vec_len: self.buf.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: u64::from(mask),
            category_anyof_mask: 0,
            return_mask: u64::from(ret),
        };
        // No retry on EINTR: a walk cut short may already have re-protected pages whose runs
        // were never copied out, so an interrupted scan must fail (full snapshot), not resume.
        // SAFETY: `PAGEMAP_SCAN` reads and writes back one `struct pm_scan_arg` (the
        // linux-raw-sys binding, `size` set to its size) and writes at most `vec_len`
        // `struct page_region`s at `vec`, which points to `self.buf`, exactly `vec_len`
        // initialized entries that nothing else borrows during the call. `start..end` are
        // addresses in the *client's* address space, only interpreted by the kernel.
        let n = unsafe { ioctl(&self.pagemap, PmScan(&mut arg)) }.map_err(ScanError::from_errno)?;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or_else(|| {
                ScanError::Inconsistent(format!(
                    "{n} runs returned into a buffer of {}",
                    self.buf.len()
                ))
            })?;
        Ok((n, arg.walk_end))
    }
}

/// Whether a run with these categories is reported: `None` = clean (protected), `Some(false)`
/// = written, `Some(true)` = reported because the entry is empty (unknown).
fn classify(categories: u64, query: ScanQuery) -> Option<bool> {
    let written = categories & u64::from(PAGE_IS_WRITTEN) != 0;
    let seen = u64::from(PAGE_IS_PRESENT | PAGE_IS_SWAPPED);
    let unknown = query == ScanQuery::WrittenOrUnknown && categories & seen == 0;
    (written || unknown).then_some(unknown && !written)
}

/// A run returned by one call must start at or after `lo` (the start of the walk, then the
/// end of the previous run: sorted, non-overlapping), end by `hi` (where the walk ended), and
/// be nonempty and page-aligned.
fn check_run(r: &page_region, lo: u64, hi: u64, page: u64) -> Result<(), ScanError> {
    let ok = r.start >= lo
        && r.end <= hi
        && r.start < r.end
        && r.start.is_multiple_of(page)
        && r.end.is_multiple_of(page);
    if ok {
        Ok(())
    } else {
        Err(ScanError::Inconsistent(format!(
            "run {:#x}..{:#x} outside {lo:#x}..{hi:#x} (overlapping, unsorted) or unaligned",
            r.start, r.end
        )))
    }
}

/// The `PAGEMAP_SCAN` ioctl, returning the kernel's count of filled runs (rustix's `Updater`
/// discards the return value).
struct PmScan<'a>(&'a mut pm_scan_arg);

// SAFETY: `PAGEMAP_SCAN` takes a pointer to a `struct pm_scan_arg`, which `as_ptr` returns;
// it mutates userspace (the struct and the `vec` buffer), hence `IS_MUTATING`; its return
// value (a count) is the output, which `output_from_ptr` passes through without touching the
// pointer.
unsafe impl Ioctl for PmScan<'_> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        PAGEMAP_SCAN
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::from_mut(self.0).cast()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _arg: *mut std::ffi::c_void,
    ) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_scan_opcode_is_iowr_f_16_of_96_bytes() {
        assert_eq!(size_of::<pm_scan_arg>(), 96);
        assert_eq!(PAGEMAP_SCAN as u64, 0xc060_6610);
    }

    #[test]
    fn empty_entries_count_as_written_unless_the_query_is_written_only() {
        let (w, p, s) = (
            u64::from(PAGE_IS_WRITTEN),
            u64::from(PAGE_IS_PRESENT),
            u64::from(PAGE_IS_SWAPPED),
        );
        let sound = ScanQuery::WrittenOrUnknown;
        assert_eq!(classify(p, sound), None, "present, protected");
        assert_eq!(classify(s, sound), None, "protected marker or swap entry");
        assert_eq!(classify(p | w, sound), Some(false));
        assert_eq!(classify(s | w, sound), Some(false));
        assert_eq!(
            classify(0, sound),
            Some(true),
            "empty entry or no page table"
        );
        assert_eq!(classify(0, ScanQuery::WrittenOnly), None);
        assert_eq!(classify(w, ScanQuery::WrittenOnly), Some(false));
    }

    #[test]
    fn runs_outside_the_walk_or_out_of_order_are_inconsistent() {
        let p = 4096;
        let r = |start, end| page_region {
            start,
            end,
            categories: 0,
        };
        assert!(check_run(&r(0x1000, 0x3000), 0x1000, 0x4000, p).is_ok());
        assert!(check_run(&r(0x0000, 0x2000), 0x1000, 0x4000, p).is_err());
        assert!(check_run(&r(0x3000, 0x5000), 0x1000, 0x4000, p).is_err());
        assert!(check_run(&r(0x2000, 0x2000), 0x1000, 0x4000, p).is_err());
        assert!(check_run(&r(0x2000, 0x3000), 0x3000, 0x4000, p).is_err());
        assert!(check_run(&r(0x2008, 0x3000), 0x1000, 0x4000, p).is_err());
    }
}
