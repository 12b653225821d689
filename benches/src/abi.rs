//! Fixtures of the `abi` group: a commit and a triple-buffer publication through the C ABI
//! (`shmsnap_writer_commit`, `shmsnap_triple_publish` of the `shmsnap-ffi` library) against the
//! same operation through the Rust API directly (`Writer::commit`, `TripleClient::publish`):
//! the same kind of region (a faulted memfd mapping), the same layout, the same payload.
//!
//! **No inlining across the boundary.** The ABI side calls each `extern "C"` function through
//! a function pointer that went through [`black_box`]: the optimiser cannot know which
//! function it calls, so nothing of it is inlined into the loop — what a C program linking
//! `libshmsnap.a` gets (C cannot inline Rust without cross-language LTO). The functions
//! themselves are the library's, compiled in this profile like the static library. (Marking
//! them `#[inline(never)]` in the library would also have worked, but would change the
//! library for a benchmark's sake.) The Rust side calls the core directly, as a Rust client
//! does, so its commit is inlined into the loop: the ratio is the whole cost of the ABI
//! (argument checks, the poison and busy flags, the caught-panic frame, the indirect call),
//! not just a call's. A third side of the commit, [`Side::RustCall`], calls the same
//! `Writer::commit` out of line through an opaque function pointer: the floor of any
//! out-of-line API (the call, the frame, the result), against which the ABI's own work (its
//! checks, its caught-panic frame, its status code) is measured.
//!
//! **Same placement on both sides.** Each side copies its payload from its own buffer into its
//! own region, so the payload buffers start at the same offset within a page (2048: half a
//! page away from the page-aligned destination, so no load of the payload aliases a recent
//! store modulo 4 KiB): where `Vec` happens to put a buffer must not decide the ratio.
//!
//! **Timed in thread CPU time** (`CLOCK_THREAD_CPUTIME_ID`), both sides, not wall time: on
//! this shared two-core machine a 4 ms batch is often descheduled part-way, and the wall clock
//! then charged another process's time slice to whichever side was running (the same binary
//! gave 8 B commits of 10 to 80 ns from run to run). Thread CPU time counts only this
//! thread's cycles; what it cannot remove (caches shared with other processes) hits both
//! interleaved sides alike.
//!
//! Sanity before timing: each side's payload reads back through its own API.

use std::ffi::c_int;
use std::hint::black_box;
use std::io;
use std::ptr::null_mut;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use shmsnap::region::{shmsnap_region_attach, shmsnap_region_close, RegionHandle};
use shmsnap::triple::{
    shmsnap_triple_close, shmsnap_triple_open, shmsnap_triple_publish, shmsnap_triple_read_newest,
    TripleHandle, TripleLayoutRequest,
};
use shmsnap::writer::{
    shmsnap_writer_close, shmsnap_writer_commit, shmsnap_writer_newest, shmsnap_writer_open,
    shmsnap_writer_read, Entry, QueueLayout, WriterHandle,
};
use shmsnap_core::triple::TripleClient;
use shmsnap_core::Writer;

use crate::commit::{faulted_region, ours_layout, payload, Dest, ENTRIES};
use crate::sys::{Mapping, Memfd};
use crate::Bench;

/// Commit payload sizes of the group.
pub const COMMIT_SIZES: [usize; 3] = [8, 64, 4096];
/// Triple publication size of the group.
pub const PUBLISH_SIZE: usize = 4096;

/// Which side of the comparison a fixture measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The Rust API, called directly.
    Rust,
    /// The Rust API behind a real call: an `#[inline(never)]` function of the same shape
    /// (handle, payload, result) called through an opaque function pointer, as the ABI is. The
    /// floor of any out-of-line API: what the ABI costs beyond it is the ABI's own work.
    /// Commit only.
    RustCall,
    /// The C ABI, called through opaque function pointers.
    Abi,
}

/// [`Side::RustCall`]'s function: `Writer::commit`, out of line.
type RustCommitFn = for<'w, 'r, 'p> fn(
    &'w mut Writer<'r, [AtomicU64]>,
    &'p [u8],
) -> Result<u64, shmsnap_core::CommitError>;

/// `Writer::commit` in a frame of its own (never inlined into the bench loop, which also
/// reaches it only through a function pointer that went through [`black_box`]).
#[inline(never)]
fn rust_commit_out_of_line(
    w: &mut Writer<'_, [AtomicU64]>,
    payload: &[u8],
) -> Result<u64, shmsnap_core::CommitError> {
    w.commit(payload)
}

type CommitFn =
    unsafe extern "C" fn(*mut WriterHandle, *const std::ffi::c_void, usize, *mut u64) -> c_int;
type PublishFn =
    unsafe extern "C" fn(*mut TripleHandle, *const std::ffi::c_void, usize, *mut u64) -> c_int;

/// A payload of `n` bytes starting 2048 bytes into a page (module docs).
#[derive(Debug)]
struct Payload {
    buf: Vec<u8>,
    at: usize,
    n: usize,
}

impl Payload {
    fn new(n: usize) -> Payload {
        let mut buf = vec![0u8; n + 8192];
        let at = (2048 + 4096 - buf.as_ptr() as usize % 4096) % 4096;
        buf[at..at + n].copy_from_slice(&payload(n));
        Payload { buf, at, n }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.n]
    }
}

/// This thread's CPU time so far.
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// What times a fixture's batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// This thread's CPU time (the module docs say why): `compare`.
    ThreadCpu,
    /// The monotonic clock through `std`: for `profile` under valgrind, which cannot run
    /// rustix's vDSO lookup behind `clock_gettime` (it faults in `check_elf_base`, rustix issue
    /// 1559), and where only the instruction count matters.
    Wall,
}

impl Clock {
    /// The time now by this clock, from an arbitrary origin fixed for the process.
    fn now(self) -> Duration {
        match self {
            Clock::ThreadCpu => cpu_now(),
            Clock::Wall => {
                static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                ORIGIN.get_or_init(std::time::Instant::now).elapsed()
            }
        }
    }
}

/// Panics unless `rc` is `SHMSNAP_OK`.
fn ok(rc: c_int, what: &str) {
    assert_eq!(
        rc,
        shmsnap::status::SHMSNAP_OK,
        "{what} failed with status {rc}"
    );
}

/// A region attached through the ABI to a faulted memfd mapping (the mapping is the caller's
/// memory, kept alive by the fixture).
#[derive(Debug)]
struct AbiRegion {
    region: *mut RegionHandle,
    map: Mapping,
    _memfd: Memfd,
}

impl AbiRegion {
    fn new(name: &str, len: u64) -> io::Result<AbiRegion> {
        let (memfd, map) = faulted_region(name, len)?;
        let mut region = null_mut();
        // SAFETY: the mapping lives in this fixture, which closes the region before dropping
        // it (`Drop`); it is only accessed atomically.
        let rc = unsafe {
            shmsnap_region_attach(
                map.words().as_ptr().cast_mut().cast(),
                map.len(),
                &mut region,
            )
        };
        ok(rc, "attach");
        Ok(AbiRegion {
            region,
            map,
            _memfd: memfd,
        })
    }
}

impl Drop for AbiRegion {
    fn drop(&mut self) {
        // SAFETY: the region made in `new`; its writer or client was closed first.
        let rc = unsafe { shmsnap_region_close(self.region) };
        if !std::thread::panicking() {
            ok(rc, "close the region");
        }
    }
}

/// A commit of `n` bytes into a hot destination (a data ring of exactly `n` bytes rounded up
/// to a power of two, as [`crate::commit::Ours`] with [`Dest::Hot`]).
#[derive(Debug)]
pub struct Commit {
    side: Side,
    writer: *mut WriterHandle,
    commit: CommitFn,
    clock: Clock,
    payload: Payload,
    /// Declared last: closed after the writer.
    region: AbiRegion,
}

impl Commit {
    /// The fixture; checks that a commit reads back through its own side's API.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If the sanity check fails.
    pub fn new(n: usize, side: Side) -> io::Result<Commit> {
        let layout = ours_layout(n, Dest::Hot);
        let region = AbiRegion::new("bench-abi-commit", layout.region_len)?;
        let payload = Payload::new(n);
        let request = QueueLayout {
            entries: ENTRIES,
            data_size: layout.data_size,
        };
        let mut writer = null_mut();
        // SAFETY: a live region, valid request and output.
        ok(
            unsafe { shmsnap_writer_open(region.region, &request, &mut writer) },
            "open",
        );
        let mut f = Commit {
            side,
            writer,
            commit: shmsnap_writer_commit,
            clock: Clock::ThreadCpu,
            payload,
            region,
        };
        f.sanity(n);
        Ok(f)
    }

    /// Times the batches by `clock` (default [`Clock::ThreadCpu`]).
    pub fn timed_by(mut self, clock: Clock) -> Commit {
        self.clock = clock;
        self
    }

    fn sanity(&mut self, n: usize) {
        let mut back = vec![0u8; n];
        if self.side != Side::Abi {
            self.close_writer();
            let mut w = Writer::attach(self.region.map.words(), crate::CLIENT).expect("attach");
            let commit: RustCommitFn = if self.side == Side::RustCall {
                rust_commit_out_of_line
            } else {
                |w, p| w.commit(p)
            };
            commit(&mut w, self.payload.bytes()).expect("commit");
            let d = w.region().newest().expect("an entry");
            w.region().read_payload(&d, &mut back).expect("read");
        } else {
            let (mut e, mut len) = (Entry::default(), 0);
            let (w, p) = (self.writer, self.payload.bytes().as_ptr().cast());
            // SAFETY: a live writer; buffers of the lengths passed (and in the next two blocks).
            let rc = unsafe { shmsnap_writer_commit(w, p, n, null_mut()) };
            ok(rc, "commit");
            // SAFETY: as above.
            ok(unsafe { shmsnap_writer_newest(w, &mut e) }, "newest");
            // SAFETY: as above.
            let rc = unsafe { shmsnap_writer_read(w, &e, back.as_mut_ptr().cast(), n, &mut len) };
            ok(rc, "read");
        }
        assert_eq!(
            back,
            self.payload.bytes(),
            "the committed payload reads back"
        );
    }

    fn close_writer(&mut self) {
        if !self.writer.is_null() {
            // SAFETY: the writer made in `new`, not used after this.
            ok(
                unsafe { shmsnap_writer_close(self.writer) },
                "close the writer",
            );
            self.writer = null_mut();
        }
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        self.close_writer();
    }
}

impl Bench for Commit {
    fn run(&mut self, iters: u64) -> Duration {
        let payload = self.payload.bytes();
        match self.side {
            Side::Rust => {
                // The writer borrows the mapping, so each batch attaches (outside the timing).
                let mut w = Writer::attach(self.region.map.words(), crate::CLIENT).expect("attach");
                let t = self.clock.now();
                for _ in 0..iters {
                    black_box(w.commit(black_box(payload)).expect("commit"));
                }
                self.clock.now() - t
            }
            Side::RustCall => {
                let mut w = Writer::attach(self.region.map.words(), crate::CLIENT).expect("attach");
                let commit = black_box(rust_commit_out_of_line as RustCommitFn);
                let t = self.clock.now();
                for _ in 0..iters {
                    black_box(commit(&mut w, black_box(payload)).expect("commit"));
                }
                self.clock.now() - t
            }
            Side::Abi => {
                let commit = black_box(self.commit);
                let w = self.writer;
                let mut seq = 0u64;
                let t = self.clock.now();
                for _ in 0..iters {
                    let p = black_box(payload);
                    // SAFETY: a live writer, a payload of the length passed, a valid output.
                    let rc = unsafe { commit(w, p.as_ptr().cast(), p.len(), &mut seq) };
                    assert_eq!(rc, 0);
                    black_box(seq);
                }
                self.clock.now() - t
            }
        }
    }
}

/// A triple-buffer publication of [`PUBLISH_SIZE`] bytes into three buffers of that size.
#[derive(Debug)]
pub struct Publish {
    side: Side,
    client: *mut TripleHandle,
    publish: PublishFn,
    payload: Payload,
    /// Declared last: closed after the client.
    region: AbiRegion,
}

/// The triple layout of the group.
const TRIPLE: TripleLayoutRequest = TripleLayoutRequest {
    buffers: 3,
    buffer_size: PUBLISH_SIZE as u64,
};

impl Publish {
    /// The fixture; checks that a publication reads back through its own side's API.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If the sanity check fails, or if `side` is [`Side::RustCall`] (commit only).
    pub fn new(side: Side) -> io::Result<Publish> {
        assert!(
            side != Side::RustCall,
            "the publish group has no out-of-line Rust side"
        );
        let len = 8192 + 3 * PUBLISH_SIZE as u64;
        let region = AbiRegion::new("bench-abi-publish", len)?;
        let mut client = null_mut();
        // SAFETY: a live region, valid request and output.
        ok(
            unsafe { shmsnap_triple_open(region.region, &TRIPLE, &mut client) },
            "open",
        );
        let mut f = Publish {
            side,
            client,
            publish: shmsnap_triple_publish,
            payload: Payload::new(PUBLISH_SIZE),
            region,
        };
        f.sanity();
        Ok(f)
    }

    fn sanity(&mut self) {
        let mut back = vec![0u8; PUBLISH_SIZE];
        if self.side == Side::Rust {
            self.close_client();
            let mut c =
                TripleClient::attach(self.region.map.words(), crate::CLIENT).expect("attach");
            c.publish(self.payload.bytes()).expect("publish");
            c.read_newest(0, &mut back).expect("read");
        } else {
            let (c, n) = (self.client, PUBLISH_SIZE);
            let p = self.payload.bytes().as_ptr().cast();
            // SAFETY: a live client; buffers of the lengths passed (and in the next block).
            let rc = unsafe { shmsnap_triple_publish(c, p, n, null_mut()) };
            ok(rc, "publish");
            // SAFETY: as above.
            let rc = unsafe {
                shmsnap_triple_read_newest(c, 0, back.as_mut_ptr().cast(), n, null_mut())
            };
            ok(rc, "read");
        }
        assert_eq!(back, self.payload.bytes(), "the published state reads back");
    }

    fn close_client(&mut self) {
        if !self.client.is_null() {
            // SAFETY: the client made in `new`, not used after this.
            ok(
                unsafe { shmsnap_triple_close(self.client) },
                "close the client",
            );
            self.client = null_mut();
        }
    }
}

impl Drop for Publish {
    fn drop(&mut self) {
        self.close_client();
    }
}

impl Bench for Publish {
    fn run(&mut self, iters: u64) -> Duration {
        let payload = self.payload.bytes();
        match self.side {
            Side::Rust => {
                let mut c =
                    TripleClient::attach(self.region.map.words(), crate::CLIENT).expect("attach");
                let t = cpu_now();
                for _ in 0..iters {
                    black_box(c.publish(black_box(payload)).expect("publish"));
                }
                cpu_now() - t
            }
            Side::RustCall => unreachable!("refused by `Publish::new`"),
            Side::Abi => {
                let publish = black_box(self.publish);
                let c = self.client;
                let mut seq = 0u64;
                let t = cpu_now();
                for _ in 0..iters {
                    let p = black_box(payload);
                    // SAFETY: a live client, a payload of the length passed, a valid output.
                    let rc = unsafe { publish(c, p.as_ptr().cast(), p.len(), &mut seq) };
                    assert_eq!(rc, 0);
                    black_box(seq);
                }
                cpu_now() - t
            }
        }
    }
}
