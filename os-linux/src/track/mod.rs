//! Write tracking for incremental snapshots: the client marks its own page tables, the host
//! reads and re-arms them with one ioctl.
//!
//! | piece | side | what |
//! |---|---|---|
//! | [`Tracker`] | client | `userfaultfd` in async write-protect mode over the client's mapping (RAII) |
//! | [`Advertisement`] | both | 4-word record in the region header: where the client's mapping is |
//! | [`validate`] | host | treats the record as hostile: checks it against `/proc/PID/maps` |
//! | [`Scanner`] | host | `PAGEMAP_SCAN` on `/proc/PID/pagemap`: written pages, re-protected |
//! | [`prove`] | host | the write seal, the tracked mapping's `DONTFORK` and a census of `/proc`: no other writer |
//!
//! # Why the tracking lives in the client's page tables
//!
//! Write-protection (and the "written" state the kernel records when a protected page is first
//! stored to) is a property of a *page-table entry*, and page tables are per process. The
//! client stores through its own mapping of the memfd; the host's mapping of the same file has
//! its own entries, which the client's stores never touch. Measured on 6.18: a scan of the
//! host's own mapping finds 0 written pages while the client writes. So the client registers
//! its mapping ([`Tracker::register`]) and the host scans the client's `/proc/PID/pagemap` over
//! the client's address range ([`Scanner::scan`]), which the kernel allows across processes
//! (`PTRACE_MODE_READ`, which a parent has over its child).
//!
//! With `UFFD_FEATURE_WP_ASYNC` nobody handles the faults: the first store to a protected page
//! traps, the kernel itself clears the protection bit of that entry (the page is now "written")
//! and restarts the store. No thread waits and nothing is read from the `userfaultfd`.
//!
//! # Scan, then copy
//!
//! One snapshot does: **scan** (report the written pages *and* write-protect them again, in
//! the same page-table walk under the page-table lock), **then copy** the reported pages from
//! the region onto the previous image. Claim: a page the scan did not report holds what the
//! previous image holds.
//!
//! - After scan *k* returns, every page of the range is protected in the client's page tables
//!   (reported pages were re-protected; unreported ones were still protected). The kernel
//!   flushes the TLB for the entries it re-protected *before the ioctl returns*, so from then
//!   on no CPU can store through a stale writable translation: any store traps first, and the
//!   trap marks the page written.
//! - So a page whose content changed after scan *k* returned is reported by scan *k+1*.
//! - The copy of image *k* happened after scan *k* returned; a page unchanged since scan *k*
//!   returned therefore still holds the bytes image *k* copied (or, if it was not copied at
//!   *k*, by induction the bytes of an older image). Copying after the scan, not before, is
//!   what makes this hold: a store racing the copy is caught by the *next* scan.
//! - A store that lands *during* scan *k*, before the walk reaches its page, is reported by
//!   scan *k* (and copied after it); after the walk passed the page, it is reported by *k+1*.
//!
//! ## Pages whose entry vanished: reported too
//!
//! A written page's entry can disappear: the kernel zaps page-table entries of shared file pages
//! (reclaim of a shmem page, `MADV_DONTNEED`/`MADV_PAGEOUT` on the client's mapping, even a whole
//! page table with `CONFIG_PT_RECLAIM`), and keeps a "protected" marker only for entries that
//! *were protected*. A page written and then zapped before the scan is left with an empty entry
//! (or no page table), and its bytes did change. On 6.18 the kernel counts such an unprotected
//! empty entry as written and protects it again (tests
//! `written_page_zapped_before_the_scan_is_still_reported`,
//! `written_page_table_zapped_whole_is_still_reported`, for both queries). That is the
//! kernel's behaviour, not its documented contract, so the default [`ScanQuery`] does not rely
//! on it: [`Scanner::scan`] asks for every page's `WRITTEN`/`PRESENT`/`SWAPPED` categories in one
//! walk and reports a page when it is `WRITTEN` **or neither present nor swapped**
//! ([`WrittenPages::unknown_pages`] counts the latter; 0 on 6.18). This needs the registration's
//! initial write-protect of the whole range ([`Tracker::register`]; with `WP_UNPOPULATED` empty
//! entries get a marker), after which an empty entry can only mean "written, then zapped". It
//! costs the kernel's generic walk instead of its written-only fast path (`scan_bench`,
//! 256 MiB fully touched: 1.6 vs 0.2 ms/GiB clean, 1.9 vs 0.5 at 1 % written, 4.6 vs 4.0 all
//! written; worst layout, present and never-touched pages alternating: 3.9–12 vs 0.35 ms/GiB).
//! The choice: a false "written" only costs a copy, a false "clean" is data loss.
//!
//! # When the caller must take a full snapshot instead
//!
//! Tracking vouches only for stores made *by the registered process, through the registered
//! mapping, since the previous successful scan of the same registration*. Copy everything when:
//!
//! - it is the first scan of a registration (a new client process has new page tables; the
//!   registration's initial protect raced with the client's first stores);
//! - [`Tracker::register`] failed ([`TrackError::Unavailable`]: old kernel, no userfaultfd,
//!   a seccomp filter) or the [`Advertisement`] was refused ([`AdvertError`]) or changed its
//!   generation since the previous scan;
//! - any [`ScanError`] (the client died, unregistered, or the kernel said something odd);
//! - any other process may have stored into the region since the previous scan: the host
//!   itself (restore, header repairs — the host copies what it writes), a forked child of the
//!   client (fork does not carry the registration over: without `UFFD_FEATURE_EVENT_FORK` the
//!   child's copy of the mapping is not tracked), a `write` through any fd of the memfd, a
//!   second mapping anywhere. [`prove`] is what rules these out before a chain is armed: the
//!   client's mapping is `DONTFORK`, the memfd is sealed against every other writer, and a
//!   census of `/proc` finds no other writable mapping (DESIGN §11, "Who can write the
//!   region").
//!
//! # Lifetimes: fork, exec, drop
//!
//! The `userfaultfd` is `O_CLOEXEC`: an exec in the client closes it and replaces the address
//! space anyway (the host's pagemap fd then reports [`ScanError::Gone`]). The client's exec
//! shim runs *before* the client maps the region, so there is nothing to inherit. On fork the
//! child would get an unregistered copy of the mapping, so the client library marks it
//! `MADV_DONTFORK` ([`crate::listen::start_tracking`]): the child has no mapping there and the
//! parent's stays tracked. Dropping the
//! [`Tracker`] closes the fd, which unregisters the range and removes the protection; the
//! host's next scan fails with [`ScanError::NotRegistered`] (full snapshot).
//!
//! `unsafe` is allowed in this module only for the three `userfaultfd` ioctls and
//! `PAGEMAP_SCAN` (rustix's generic ioctl needs the caller to vouch for the argument type), and
//! for `userfaultfd(2)` itself, which rustix marks unsafe; each block says why it is sound.
#![allow(unsafe_code)]

mod advert;
mod census;
mod client;
mod scan;

pub use advert::{validate, validate_maps, AdvertError, Advertisement, TrackedRange};
pub use census::{census, check_registration, prove, Census, FileId, RegionVma, Unproven};
pub use client::{TrackError, Tracker};
pub use scan::{PageRun, ScanError, ScanQuery, Scanner, WrittenPages};

/// The system page size (`getauxval(AT_PAGESZ)`), in bytes.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}
