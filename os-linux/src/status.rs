//! Durability feedback over futexes (DESIGN §14): the host's [`StatusPublisher`], the client's
//! [`wait_persisted`], [`wait_replicated`] and [`request_snapshot`] (and [`wait_status_change`] /
//! [`wake_status_waiters`], the single steps of a wait for a caller that must look at something
//! else between wake-ups, as the Python binding does), and the host's [`wait_request`]; and the
//! host's other write into the header page, [`reclaim_dead_claim`] (one writer per region).
//!
//! The words and their orderings are core's ([`shmsnap_core::status`]); this module adds the
//! `futex(2)` waits and wakes, through rustix, and the host's writable mapping of page 0.
//!
//! - The host maps **only the header page** writable ([`StatusPublisher::new`]); its mapping of
//!   the rest of the region stays as its strategy wants it (read-only for the queue). It
//!   publishes after a snapshot is durable and never reads the status back.
//! - Waiting is optional and never on the commit path: a client that never calls
//!   [`wait_persisted`] pays nothing.
//!
//! # Futex words inside 64-bit words
//!
//! The region is 64-bit words. A futex is 32 bits: the futex word is the low half (the
//! format is little-endian) of [`word::STATUS_WAKE`] and of [`word::SNAPSHOT_REQUEST`]. Rust
//! code only ever accesses those words as whole `AtomicU64`s; the 32-bit view exists only to
//! pass its address to `futex(2)`, where the kernel compares the 32 bits itself. The futexes
//! are shared (no `FUTEX_PRIVATE_FLAG`): host and client are different processes mapping the
//! same memfd.
//!
//! This module holds `unsafe` for that view and for mapping page 0 (each block says why).
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use rustix::fs::SealFlags;
use rustix::thread::futex;
use shmsnap_core::claim::{self, ClaimId};
use shmsnap_core::format::word;
use shmsnap_core::status::{self, Status};
use shmsnap_core::triple::TripleLayout;
use shmsnap_core::Layout;

use crate::mapping::{Mapping, Protection};
use crate::memfd::Memfd;

#[cfg(not(target_endian = "little"))]
compile_error!("the futex words are the low halves of little-endian 64-bit words");

/// Bytes the publisher maps: the header page.
const HEADER_PAGE: usize = shmsnap_core::PAGE_SIZE as usize;

/// The 32-bit futex view of the low half of word `i` of `words`.
///
/// # Errors
///
/// `InvalidInput` if `words` does not reach word `i`.
fn futex_word(words: &[AtomicU64], i: usize) -> io::Result<&AtomicU32> {
    let w = words.get(i).ok_or_else(too_short)?;
    // SAFETY: `w` is a valid, 8-byte aligned atomic word for the borrow's lifetime, so its
    // first 4 bytes are a valid, aligned `AtomicU32` location (the low half on a
    // little-endian machine, checked at compile time above). The reference is only handed to
    // `futex(2)` through rustix, which passes the address to the kernel; no Rust code loads or
    // stores through it, so there is no mixed-size access in the program.
    Ok(unsafe { &*std::ptr::from_ref(w).cast::<AtomicU32>() })
}

fn too_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the region is too short to hold the header page with its status area",
    )
}

/// `futex(FUTEX_WAIT)` on `word` while it holds `expected`, for at most `timeout`. Returns
/// when woken, when the word differs, on a signal or at the timeout (the caller re-checks).
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> io::Result<()> {
    let ts = futex::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    match futex::wait(word, futex::Flags::empty(), expected, Some(&ts)) {
        Ok(()) => Ok(()),
        // EAGAIN: the word already differs; EINTR: a signal; ETIMEDOUT: the caller's
        // deadline decides.
        Err(e)
            if e == rustix::io::Errno::AGAIN
                || e == rustix::io::Errno::INTR
                || e == rustix::io::Errno::TIMEDOUT =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `futex(FUTEX_WAKE)` of every waiter on `word`.
fn futex_wake_all(word: &AtomicU32) -> io::Result<()> {
    futex::wake(word, futex::Flags::empty(), i32::MAX as u32)?;
    Ok(())
}

/// Client side: blocks until the host status covers commit `seq` ([`Status::covers`]) or
/// `timeout` passes. Returns `Ok(true)` if it is covered, `Ok(false)` at the timeout.
///
/// Sleeps in `futex(FUTEX_WAIT)` on the wake counter, re-checking after every wake-up
/// (spurious ones included) with the remaining time. Never call it on the commit path: the
/// commit is wait-free, this is not. Pair it with [`request_snapshot`] to have the host
/// snapshot at once instead of at its next interval.
///
/// # References
///  - [Linux `futex` system call](https://man7.org/linux/man-pages/man2/futex.2.html)
///
/// # Errors
///
/// `InvalidInput` if `words` does not hold the header page; an unexpected `futex` error.
pub fn wait_persisted(words: &[AtomicU64], seq: u64, timeout: Duration) -> io::Result<bool> {
    wait_status(words, timeout, |s| s.covers(seq))
}

/// Client side: blocks until commit `seq` is in the host's replica ([`Status::replicated`]:
/// a point holding it is durable in the object store) or `timeout` passes. Returns
/// `Ok(true)` if it is, `Ok(false)` at the timeout.
///
/// The same futex wait as [`wait_persisted`]: the host's replica uploader publishes every
/// new replica seq through [`StatusPublisher::publish`], which bumps the wake counter and
/// wakes every waiter. A host running without a replica never publishes one: the wait then
/// ends only at `timeout` (for any `seq > 0`), and the caller cannot tell that from a slow
/// upload — compare [`status::persisted`]'s `seq` (local) with its `replica_seq` to say so.
/// The host only uploads persisted points: pair it with [`request_snapshot`] as for
/// [`wait_persisted`].
///
/// # References
///  - [Linux `futex` system call](https://man7.org/linux/man-pages/man2/futex.2.html)
///
/// # Errors
///
/// `InvalidInput` if `words` does not hold the header page; an unexpected `futex` error.
pub fn wait_replicated(words: &[AtomicU64], seq: u64, timeout: Duration) -> io::Result<bool> {
    wait_status(words, timeout, |s| s.replicated(seq))
}

/// The wait loop of [`wait_persisted`] and [`wait_replicated`]: until `done(status)` or the
/// timeout (`Ok(false)`).
fn wait_status(
    words: &[AtomicU64],
    timeout: Duration,
    done: impl Fn(Status) -> bool,
) -> io::Result<bool> {
    let wake = futex_word(words, word::STATUS_WAKE)?;
    let deadline = Instant::now().checked_add(timeout);
    loop {
        // Counter first, status second: a publish after this load changes the counter, so
        // the futex wait below returns at once instead of missing it; and the Acquire inside
        // `wake_count` makes the status read below at least the one stored with `seen`.
        let seen = status::wake_count(words);
        if done(status::persisted(words)) {
            return Ok(true);
        }
        let left = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if left.is_zero() {
            return Ok(false);
        }
        futex_wait(wake, seen, left)?;
    }
}

/// Client side: asks the host for a prompt snapshot — bumps the request word
/// ([`status::request_snapshot`], wait-free) and wakes the host's watcher with
/// `futex(FUTEX_WAKE)` (one syscall). Requests coalesce into one snapshot.
///
/// # Errors
///
/// `InvalidInput` if `words` does not hold the header page; an unexpected `futex` error.
pub fn request_snapshot(words: &[AtomicU64]) -> io::Result<()> {
    let req = futex_word(words, word::SNAPSHOT_REQUEST)?;
    status::request_snapshot(words);
    futex_wake_all(req)
}

/// Client side: one `futex(FUTEX_WAIT)` on the wake counter while it still holds `seen` (a
/// value of [`status::wake_count`] loaded *before* the caller checked the status), for at
/// most `timeout`. Returns after a publish, a [`wake_status_waiters`], a signal, a spurious
/// wake-up or the timeout, without saying which: the caller re-checks.
///
/// The single step of [`wait_persisted`], for a caller that must look at something else
/// between two wake-ups (a pending signal of an interpreter, a cancelled wait).
///
/// # Errors
///
/// `InvalidInput` if `words` does not hold the header page; an unexpected `futex` error.
pub fn wait_status_change(words: &[AtomicU64], seen: u32, timeout: Duration) -> io::Result<()> {
    futex_wait(futex_word(words, word::STATUS_WAKE)?, seen, timeout)
}

/// Client side: wakes every thread sleeping on the status wake counter, in this process or
/// another (`futex(FUTEX_WAKE)`), so that each re-checks. No word changes: a waiter whose seq
/// is not covered sleeps again, and the host never sleeps on this word. A client cancels one
/// of its own [`wait_status_change`] loops this way.
///
/// # Errors
///
/// `InvalidInput` if `words` does not hold the header page; an unexpected `futex` error.
pub fn wake_status_waiters(words: &[AtomicU64]) -> io::Result<()> {
    futex_wake_all(futex_word(words, word::STATUS_WAKE)?)
}

/// Host side: waits until the request word differs from `last` (the value the host saw last),
/// at most `timeout`, and returns its current value (equal to `last` if nothing changed).
///
/// The word is the client's: any value is accepted, only a change matters.
///
/// # Errors
///
/// `InvalidInput` if `words` does not hold the header page; an unexpected `futex` error.
pub fn wait_request(words: &[AtomicU64], last: u64, timeout: Duration) -> io::Result<u64> {
    let req = futex_word(words, word::SNAPSHOT_REQUEST)?;
    let now = status::request_count(words);
    if now != last {
        return Ok(now);
    }
    futex_wait(req, last as u32, timeout)?;
    Ok(status::request_count(words))
}

/// Maps the header page of a memfd sealed against shrinking.
fn map_header(memfd: &Memfd, prot: Protection) -> io::Result<Mapping> {
    if !memfd.seals()?.contains(SealFlags::SHRINK) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to map a region that is not sealed against shrinking (F_SEAL_SHRINK)",
        ));
    }
    if memfd.len()? < HEADER_PAGE as u64 {
        return Err(too_short());
    }
    // SAFETY: F_SEAL_SHRINK (checked above, irrevocable) keeps the file at least as long as it
    // is now, which is at least the one page mapped, for the mapping's whole life; the memory
    // is only exposed as atomic words.
    unsafe { Mapping::from_fd(memfd, HEADER_PAGE, prot) }
}

/// Host side: publishes the status through its own writable mapping of the header page.
///
/// The host's only writable view of the region; it stores the status words and the wake
/// counter and reads nothing back as truth (the counter continues from a private copy).
#[derive(Debug)]
pub struct StatusPublisher {
    /// `MAP_SHARED`, read-write, exactly the header page.
    page: Mapping,
    /// The wake counter last stored (private: never re-read from the region).
    wake: u32,
    /// The status last published.
    last: Status,
}

impl StatusPublisher {
    /// Maps the header page of `memfd` read-write (`mmap` of 4096 bytes). Publishes nothing.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if the memfd is not sealed against shrinking or shorter than a page;
    /// `mmap`'s errors.
    pub fn new(memfd: &Memfd) -> io::Result<Self> {
        let page = map_header(memfd, Protection::ReadWrite)?;
        // The counter only needs to change at every publish: continuing from the value found
        // (a previous host's) avoids repeating one a sleeping waiter might still expect. A
        // hostile value costs nothing: it only seeds a counter.
        let wake = status::wake_count(page.words());
        Ok(StatusPublisher {
            page,
            wake,
            last: Status::NONE,
        })
    }

    /// Stores `status` (core's [`status::publish`]: generation, replica, seq with Release,
    /// counter with Release), then wakes every waiter with `futex(FUTEX_WAKE)`.
    ///
    /// Call it only once the snapshot holding `status.seq` is durable (synced, renamed,
    /// directory synced) — or, before the client starts, to say what a restored image holds.
    ///
    /// # Errors
    ///
    /// An unexpected `futex` error; the status is stored anyway (waiters then find it at
    /// their timeout).
    pub fn publish(&mut self, status: Status) -> io::Result<()> {
        self.wake = self.wake.wrapping_add(1);
        self.last = status;
        status::publish(self.page.words(), status, self.wake);
        futex_wake_all(futex_word(self.page.words(), word::STATUS_WAKE)?)
    }

    /// The status last published by this publisher ([`Status::NONE`] before the first).
    pub fn last(&self) -> Status {
        self.last
    }
}

/// What the host knows of the region whose dead client's claim it clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimWord {
    /// A shmsnap region by contract (the queue or triple strategy): the claim word is cleared
    /// whatever the header says — a client may have died inside `init`, after taking the
    /// claim and before storing its magic.
    Ours,
    /// The region may hold anything (the exit strategy): the word is cleared only under a
    /// valid queue or triple header, never in a region that is not a shmsnap region.
    IfShmsnapHeader,
}

/// Host side: clears the claim of the region's dead client (core's [`claim::reclaim`] of the
/// holder found) through a read-write mapping of the header page, and returns the holder it
/// cleared (`None`: unclaimed, or not a shmsnap header under [`ClaimWord::IfShmsnapHeader`]).
///
/// Call it only when no client of the region can be running: after the client exited and
/// its descendants were killed, before the restart; at start for a region inherited from the
/// fd store (whose previous host's client is dead). A reclaim of a live holder lets a second
/// writer in; the holder's own release then leaves the new claim alone.
///
/// # Errors
///
/// As [`StatusPublisher::new`] (mapping the header page).
pub fn reclaim_dead_claim(memfd: &Memfd, whose: ClaimWord) -> io::Result<Option<ClaimId>> {
    let len = memfd.len()?;
    let page = map_header(memfd, Protection::ReadWrite)?;
    let words = page.words();
    if whose == ClaimWord::IfShmsnapHeader {
        let mut header = [0u64; word::HEADER];
        for (i, w) in header.iter_mut().enumerate() {
            // Relaxed: no client runs (the caller's contract); the header is only checked.
            *w = words[i].load(std::sync::atomic::Ordering::Relaxed);
        }
        let shmsnap = Layout::from_header_words(&header, len).is_ok()
            || TripleLayout::from_header_words(&header, len).is_ok();
        if !shmsnap {
            return Ok(None);
        }
    }
    let Some(holder) = claim::holder(words) else {
        return Ok(None);
    };
    Ok(claim::reclaim(words, holder).ok().map(|()| holder))
}

/// Host side: a read-only view of the header page, for the request watcher.
#[derive(Debug)]
pub struct RequestWatch {
    page: Mapping,
    last: u64,
}

impl RequestWatch {
    /// Maps the header page of `memfd` read-only and remembers the current request value
    /// (requests made before the watch began are not answered promptly).
    ///
    /// # Errors
    ///
    /// As [`StatusPublisher::new`].
    pub fn new(memfd: &Memfd) -> io::Result<Self> {
        let page = map_header(memfd, Protection::ReadOnly)?;
        let last = status::request_count(page.words());
        Ok(RequestWatch { page, last })
    }

    /// Waits at most `timeout` for a new request; `true` if the request word changed since
    /// the last call.
    ///
    /// # Errors
    ///
    /// An unexpected `futex` error.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let now = wait_request(self.page.words(), self.last, timeout)?;
        let changed = now != self.last;
        self.last = now;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn region() -> (Memfd, Mapping) {
        let m = Memfd::create("status", 1 << 16).unwrap();
        m.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&m, Protection::ReadWrite).unwrap();
        (m, map)
    }

    #[test]
    fn a_waiter_in_another_thread_is_woken_by_the_publish_that_covers_its_seq() {
        let (memfd, client) = region();
        let mut host = StatusPublisher::new(&memfd).unwrap();
        std::thread::scope(|s| {
            let waiter =
                s.spawn(|| wait_persisted(client.words(), 5, Duration::from_secs(60)).unwrap());
            host.publish(Status {
                seq: 3,
                generation: 1,
                replica_seq: 0,
            })
            .unwrap();
            host.publish(Status {
                seq: 5,
                generation: 2,
                replica_seq: 0,
            })
            .unwrap();
            assert!(waiter.join().unwrap(), "woken and covered");
        });
        assert_eq!(status::persisted(client.words()).generation, 2);
        assert_eq!(host.last().seq, 5);
    }

    #[test]
    fn waiting_for_an_uncovered_seq_times_out_with_false() {
        let (memfd, client) = region();
        let mut host = StatusPublisher::new(&memfd).unwrap();
        host.publish(Status {
            seq: 3,
            generation: 1,
            replica_seq: 0,
        })
        .unwrap();
        assert!(wait_persisted(client.words(), 3, Duration::ZERO).unwrap());
        assert!(!wait_persisted(client.words(), 4, Duration::from_millis(20)).unwrap());
    }

    #[test]
    fn a_replica_waiter_is_woken_by_the_uploaders_publish_of_the_replica_seq_alone() {
        let (memfd, client) = region();
        let mut host = StatusPublisher::new(&memfd).unwrap();
        let local = Status {
            seq: 5,
            generation: 2,
            replica_seq: 0,
        };
        host.publish(local).unwrap();
        std::thread::scope(|s| {
            let waiter =
                s.spawn(|| wait_replicated(client.words(), 5, Duration::from_secs(60)).unwrap());
            // The uploader: a point up to seq 3, then one up to seq 5; the local seq stays.
            for replica_seq in [3, 5] {
                host.publish(Status {
                    replica_seq,
                    ..local
                })
                .unwrap();
            }
            assert!(waiter.join().unwrap(), "woken and replicated");
        });
        assert_eq!(status::persisted(client.words()).replica_seq, 5);
        assert!(wait_replicated(client.words(), 0, Duration::ZERO).unwrap());
    }

    #[test]
    fn a_replica_waiter_is_not_satisfied_by_local_snapshots_alone() {
        let (memfd, client) = region();
        let mut host = StatusPublisher::new(&memfd).unwrap();
        std::thread::scope(|s| {
            let waiter =
                s.spawn(|| wait_replicated(client.words(), 2, Duration::from_millis(300)).unwrap());
            // Local snapshots covering seq 2 and beyond, and a replica still at seq 1: the
            // waiter is woken by every publish, re-checks, and must time out.
            for seq in 1..=4 {
                host.publish(Status {
                    seq,
                    generation: seq,
                    replica_seq: 1,
                })
                .unwrap();
            }
            assert!(!waiter.join().unwrap(), "persisted is not replicated");
        });
        assert!(wait_persisted(client.words(), 4, Duration::ZERO).unwrap());
        assert!(wait_replicated(client.words(), 1, Duration::ZERO).unwrap());
        assert!(!wait_replicated(client.words(), 2, Duration::ZERO).unwrap());
    }

    #[test]
    fn a_step_waiter_is_woken_by_wake_status_waiters_without_a_publish() {
        let (_memfd, client) = region();
        let cancelled = std::sync::atomic::AtomicBool::new(false);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let start = Instant::now();
                loop {
                    let seen = status::wake_count(client.words());
                    if cancelled.load(Ordering::Acquire) {
                        done.store(true, Ordering::Release);
                        return start.elapsed();
                    }
                    wait_status_change(client.words(), seen, Duration::from_secs(60)).unwrap();
                }
            });
            std::thread::sleep(Duration::from_millis(50));
            cancelled.store(true, Ordering::Release);
            // The word does not change, so a wake sent just before the waiter's futex call
            // is lost (the waiter then sleeps its whole timeout): wake until it is out.
            while !done.load(Ordering::Acquire) {
                wake_status_waiters(client.words()).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
            let waited = waiter.join().unwrap();
            assert!(waited < Duration::from_secs(30), "not woken: {waited:?}");
        });
        assert_eq!(
            status::persisted(client.words()),
            Status::NONE,
            "no word changed"
        );
    }

    #[test]
    fn the_host_never_reads_a_scribbled_status_back() {
        let (memfd, client) = region();
        let mut host = StatusPublisher::new(&memfd).unwrap();
        host.publish(Status {
            seq: 3,
            generation: 1,
            replica_seq: 0,
        })
        .unwrap();
        // A hostile client overwrites the status with garbage.
        for w in word::STATUS {
            client.words()[w].store(u64::MAX, Ordering::Relaxed);
        }
        host.publish(Status {
            seq: 4,
            generation: 2,
            replica_seq: 0,
        })
        .unwrap();
        assert_eq!(
            status::persisted(client.words()),
            Status {
                seq: 4,
                generation: 2,
                replica_seq: 0
            }
        );
        assert_eq!(host.last().seq, 4);
    }

    #[test]
    fn a_request_wakes_the_watcher_and_requests_merge() {
        let (memfd, client) = region();
        let mut watch = RequestWatch::new(&memfd).unwrap();
        assert!(
            !watch.wait(Duration::from_millis(1)).unwrap(),
            "no request yet"
        );
        std::thread::scope(|s| {
            let t = s.spawn(|| watch.wait(Duration::from_secs(60)).unwrap());
            request_snapshot(client.words()).unwrap();
            assert!(t.join().unwrap());
        });
        request_snapshot(client.words()).unwrap();
        request_snapshot(client.words()).unwrap();
        assert!(
            watch.wait(Duration::ZERO).unwrap(),
            "two requests, one change"
        );
        assert!(!watch.wait(Duration::ZERO).unwrap());
    }

    #[test]
    fn a_dead_clients_claim_is_cleared_and_a_foreign_region_left_alone() {
        use shmsnap_core::{LayoutRequest, Writer};
        let (memfd, client) = region();
        let id = ClaimId::from_pid(4242, 1).unwrap();
        let w = Writer::open_or_init(
            client.words(),
            LayoutRequest {
                entries: 4,
                data_size: 64,
            },
            id,
        )
        .unwrap();
        std::mem::forget(w); // SIGKILL
        assert_eq!(
            reclaim_dead_claim(&memfd, ClaimWord::IfShmsnapHeader).unwrap(),
            Some(id)
        );
        assert_eq!(claim::holder(client.words()), None);
        assert_eq!(reclaim_dead_claim(&memfd, ClaimWord::Ours).unwrap(), None);
        // A client that died inside `init`: claim taken, no magic yet.
        let (memfd, client) = region();
        client.words()[word::CLAIM].store(id.get(), Ordering::Relaxed);
        assert_eq!(
            reclaim_dead_claim(&memfd, ClaimWord::IfShmsnapHeader).unwrap(),
            None,
            "the exit strategy never writes a region without a shmsnap header"
        );
        assert_eq!(
            client.words()[word::CLAIM].load(Ordering::Relaxed),
            id.get()
        );
        assert_eq!(
            reclaim_dead_claim(&memfd, ClaimWord::Ours).unwrap(),
            Some(id)
        );
        assert_eq!(claim::holder(client.words()), None);
    }

    #[test]
    fn short_or_unsealed_regions_are_refused() {
        let m = Memfd::create("short", 4096).unwrap();
        assert!(StatusPublisher::new(&m).is_err(), "unsealed");
        let m = Memfd::create("short", 2048).unwrap();
        m.seal_against_shrink().unwrap();
        assert!(StatusPublisher::new(&m).is_err(), "shorter than a page");
        let words: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        assert!(wait_persisted(&words, 1, Duration::ZERO).is_err());
        assert!(wait_replicated(&words, 1, Duration::ZERO).is_err());
        assert!(request_snapshot(&words).is_err());
    }
}
