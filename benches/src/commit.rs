//! Fixtures of the `commit` group: our `Writer::commit`, upstream's `Writer::commit`, and the
//! physical limits (`memcpy`, atomic word stores) into the same kind of mapping.
//!
//! Every fixture owns a memfd of the same size, mapped `MAP_SHARED` and fully faulted in
//! before timing, and a payload of `n` non-zero bytes. [`Dest`] picks where the bytes go:
//!
//! - [`Dest::Hot`]: the same place every time (ours: a data ring of exactly `n` bytes, so
//!   every commit lands at ring offset 0 and evicts the previous entry; upstream: the smallest
//!   ring it accepts, `2n`, since it requires `n < S`; the limits: one fixed destination);
//! - [`Dest::Advancing`]: through a [`RING`]-byte data ring, twice the last-level cache, so
//!   the destination is cold (each writes at the next 8-aligned position, wrapping like ours).

use std::hint::black_box;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmsnap_core::{Layout, LayoutRequest, Writer};

use crate::sys::{Mapping, Memfd, Protection};
use crate::Bench;

/// Payload sizes of the group.
pub const PAYLOADS: [usize; 5] = [8, 64, 512, 4096, 65536];
/// Data-ring size of the advancing destination (the LLC here is 32 MiB).
pub const RING: u64 = 64 << 20;
/// Descriptor count of every commit fixture.
pub const ENTRIES: u64 = 256;

/// Where the payload bytes go (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Same place every time.
    Hot,
    /// Advancing through a 64 MiB ring.
    Advancing,
}

impl Dest {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Dest::Hot => "hot",
            Dest::Advancing => "advancing",
        }
    }
}

/// A payload of `n` bytes that are all non-zero (so a read-back check means something).
pub fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 + 1).collect()
}

/// Bytes of the memfd every commit fixture of payload `n` uses: enough for our layout and
/// for upstream's (header page + one sequence page per 256 entries + `2n`-byte hot ring).
pub fn region_len(n: usize, dest: Dest) -> u64 {
    let ours = ours_layout(n, dest).region_len;
    let up_ring = upstream_ring(n, dest);
    let upstream = 4096 + ENTRIES.div_ceil(256) * 4096 + up_ring.div_ceil(4096) * 4096;
    ours.max(upstream)
}

fn ours_ring(n: usize, dest: Dest) -> u64 {
    match dest {
        Dest::Hot => (n as u64).next_power_of_two().max(8),
        Dest::Advancing => RING,
    }
}

fn upstream_ring(n: usize, dest: Dest) -> u64 {
    match dest {
        // Upstream accepts a payload only if it is `<= S - 1`.
        Dest::Hot => 2 * (n as u64).next_power_of_two().max(8),
        Dest::Advancing => RING,
    }
}

/// Our layout for payload `n` (no tail).
pub fn ours_layout(n: usize, dest: Dest) -> Layout {
    let request = LayoutRequest {
        entries: ENTRIES,
        data_size: ours_ring(n, dest),
    };
    let probe = Layout::new(u64::MAX / 2, request).expect("valid request");
    Layout::new(probe.tail_offset, request).expect("valid request")
}

/// Creates a sealed memfd of `len` bytes, maps it read-write and faults every page in (one
/// atomic store per page), so no timed loop takes a page fault.
///
/// # Errors
///
/// The syscalls' errors.
pub fn faulted_region(name: &str, len: u64) -> io::Result<(Memfd, Mapping)> {
    let memfd = Memfd::create(name, len)?;
    memfd.seal_against_shrink()?;
    let map = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
    for w in map.words().iter().step_by(512) {
        w.store(0, Ordering::Relaxed);
    }
    Ok((memfd, map))
}

/// Our `Writer::commit` into a memfd mapping.
#[derive(Debug)]
pub struct Ours {
    _memfd: Memfd,
    map: Mapping,
    payload: Vec<u8>,
}

impl Ours {
    /// A configured region for payloads of `n` bytes; checks that a commit reads back.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If the sanity check fails.
    pub fn new(n: usize, dest: Dest) -> io::Result<Self> {
        let (memfd, map) = faulted_region("bench-ours", region_len(n, dest))?;
        let payload = payload(n);
        {
            let request = LayoutRequest {
                entries: ENTRIES,
                data_size: ours_ring(n, dest),
            };
            let mut w = Writer::init(map.words(), request, crate::CLIENT).expect("init");
            // Sanity: the committed entry reads back exactly.
            let seq = w.commit(&payload).expect("commit");
            let newest = w.region().newest().expect("an entry");
            let mut back = vec![0u8; n];
            let got = w.region().read_payload(&newest, &mut back).expect("read");
            assert_eq!((newest.seq, &back[..got]), (seq, &payload[..]));
            w.check_invariants().expect("invariants");
        }
        Ok(Self {
            _memfd: memfd,
            map,
            payload,
        })
    }

    /// The mapping (for read-back checks).
    pub fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }
}

impl Bench for Ours {
    fn run(&mut self, iters: u64) -> Duration {
        // The writer borrows the mapping, so each batch attaches (outside the timed loop).
        let mut w = Writer::attach(self.map.words(), crate::CLIENT).expect("attach");
        let payload = &self.payload[..];
        let t = Instant::now();
        for _ in 0..iters {
            black_box(w.commit(black_box(payload)).expect("commit"));
        }
        t.elapsed()
    }
}

/// Upstream `shm-snapshot` 0.2.3 `Writer::commit` over a memfd of the same size.
pub struct Upstream {
    writer: shm_snapshot::Writer,
    _memfd: Memfd,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// Upstream's writer configured with the same entry count and the ring described in the
    /// module docs; its own mapping is faulted in by committing through the whole ring once.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If the sanity check fails.
    pub fn new(n: usize, dest: Dest) -> io::Result<Self> {
        let len = region_len(n, dest);
        let memfd = Memfd::create("bench-upstream", len)?;
        memfd.seal_against_shrink()?;
        let file = shm_snapshot::File::new(memfd.as_fd())?;
        let ring = upstream_ring(n, dest);
        let mut cfg = shm_snapshot::ConfigureFile::default();
        cfg.or_insert_with(|c| {
            c.entries = ENTRIES;
            c.data = ring;
        });
        let mut writer = file.configure(&cfg);
        let payload = payload(n);
        // Fault upstream's own mapping in: write the whole ring with the largest payloads it
        // accepts.
        let big = vec![7u8; (ring as usize / 2).min(1 << 16)];
        for _ in 0..ring as usize / big.len() + 2 {
            writer.commit(&big).expect("upstream commit");
        }
        // Sanity: upstream's committed entry reads back.
        let idx = writer.commit(&payload).expect("upstream commit");
        let snap = writer.snapshot_at(idx);
        let mut back = vec![0u8; n];
        writer.read(&snap, &mut back);
        assert_eq!(snap.length, n as u64);
        assert_eq!(back, payload);
        Ok(Self {
            writer,
            _memfd: memfd,
            payload,
        })
    }
}

impl Bench for Upstream {
    fn run(&mut self, iters: u64) -> Duration {
        let payload = &self.payload[..];
        let t = Instant::now();
        for _ in 0..iters {
            black_box(self.writer.commit(black_box(payload)).is_ok());
        }
        t.elapsed()
    }
}

/// How the physical-limit fixture stores the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `ptr::copy_nonoverlapping` (libc `memcpy`) into the mapping.
    Memcpy,
    /// `Relaxed` `AtomicU64` stores of whole words (what a word-memory writer can do at best).
    Words,
}

/// The physical limit: the same bytes into the same kind of mapping, at the place ours would
/// put them, with nothing else.
#[derive(Debug)]
pub struct Raw {
    _memfd: Memfd,
    map: Mapping,
    payload: Vec<u8>,
    /// Payload as little-endian words (for [`Limit::Words`]); `n` rounded up to 8.
    payload_words: Vec<u64>,
    limit: Limit,
    cursor: Cursor,
}

/// Where the next payload goes, advancing like our writer does.
#[derive(Debug)]
struct Cursor {
    dest: Dest,
    /// Payload length.
    n: usize,
    /// Byte offset of the data ring in the mapping.
    data_offset: usize,
    /// Ring size in bytes.
    ring: usize,
    /// Next write position within the ring (advancing only).
    pos: usize,
}

impl Cursor {
    /// Byte offset in the mapping of the next destination: 8-aligned, and back to the ring
    /// start when the payload would cross the end (as `Writer::begin` places payloads).
    #[inline(always)]
    fn next_at(&mut self) -> usize {
        match self.dest {
            Dest::Hot => self.data_offset,
            Dest::Advancing => {
                if self.pos + self.n > self.ring {
                    self.pos = 0;
                }
                let at = self.data_offset + self.pos;
                self.pos = (self.pos + self.n + 7) & !7;
                at
            }
        }
    }
}

impl Raw {
    /// A mapping laid out like ours for payload `n`.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    pub fn new(n: usize, dest: Dest, limit: Limit) -> io::Result<Self> {
        let layout = ours_layout(n, dest);
        let (memfd, map) = faulted_region("bench-raw", region_len(n, dest))?;
        let payload = payload(n);
        let payload_words = payload
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect();
        let mut raw = Self {
            _memfd: memfd,
            map,
            payload,
            payload_words,
            limit,
            cursor: Cursor {
                dest,
                n,
                data_offset: layout.data_offset as usize,
                ring: layout.data_size as usize,
                pos: 0,
            },
        };
        // Sanity: one store reads back.
        raw.run(1);
        let at = raw.cursor.data_offset / 8;
        let w0 = raw.map.words()[at].load(Ordering::Relaxed);
        assert_eq!(w0.to_le_bytes()[..n.min(8)], raw.payload[..n.min(8)]);
        raw.cursor.pos = 0;
        Ok(raw)
    }
}

impl Bench for Raw {
    fn run(&mut self, iters: u64) -> Duration {
        let Raw {
            map,
            payload,
            payload_words,
            limit,
            cursor,
            ..
        } = self;
        let n = payload.len();
        let words = map.words();
        // A pointer with the provenance of the whole mapping. `AtomicU64` is an `UnsafeCell`,
        // so writing through a pointer derived from `&[AtomicU64]` is allowed.
        let base = words.as_ptr().cast::<u8>().cast_mut();
        let t = Instant::now();
        match limit {
            Limit::Memcpy => {
                for _ in 0..iters {
                    let at = cursor.next_at();
                    // black_box: the compiler may neither merge nor drop repeated copies.
                    let dst = black_box(base.wrapping_add(at));
                    // SAFETY: `dst + n` is inside the mapping: `at + n <= data_offset + ring
                    // <= mapping length` (`next_at` keeps the payload inside the ring, and the
                    // ring lies inside the mapping). The source is a separate heap buffer. No
                    // other thread or process accesses this mapping during the loop, so these
                    // non-atomic writes race with nothing; the memory is otherwise only seen
                    // through `AtomicU64`, whose interior mutability permits writes through a
                    // pointer derived from a shared borrow.
                    unsafe {
                        std::ptr::copy_nonoverlapping(payload.as_ptr(), dst, n);
                    }
                }
            }
            Limit::Words => {
                for _ in 0..iters {
                    let at = black_box(cursor.next_at()) / 8;
                    let dst = &words[at..at + payload_words.len()];
                    for (d, &v) in dst.iter().zip(black_box(&payload_words[..])) {
                        d.store(v, Ordering::Relaxed);
                    }
                }
            }
        }
        t.elapsed()
    }
}
