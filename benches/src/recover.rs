//! Fixture of the `recover` group: what a restarted client does first — `Writer::attach`
//! (recovery of the cursor from every descriptor) and `newest` (the state to resume from) — on
//! a region whose `E` descriptors all hold live entries.

use std::hint::black_box;
use std::io;
use std::time::{Duration, Instant};

use shmsnap_core::{LayoutRequest, Writer};

use crate::commit::faulted_region;
use crate::sys::{Mapping, Memfd};
use crate::Bench;

/// Descriptor counts of the group.
pub const ENTRIES: [u64; 2] = [256, 4096];
/// Payload of every committed entry.
pub const PAYLOAD: usize = 64;

/// A region with `entries` live entries of [`PAYLOAD`] bytes.
#[derive(Debug)]
pub struct Recover {
    _memfd: Memfd,
    map: Mapping,
    entries: u64,
}

impl Recover {
    /// Commits `entries` payloads into a fresh region (ring large enough to keep all live).
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If not every entry is live afterwards, or attach does not find the newest.
    pub fn new(entries: u64) -> io::Result<Self> {
        let request = LayoutRequest {
            entries,
            data_size: (entries * PAYLOAD as u64 * 2).next_power_of_two(),
        };
        let probe = shmsnap_core::Layout::new(u64::MAX / 2, request).expect("valid request");
        let (memfd, map) = faulted_region("bench-recover", probe.tail_offset)?;
        {
            let mut w = Writer::init(map.words(), request, crate::CLIENT).expect("init");
            for i in 0..entries {
                let mut p = [0u8; PAYLOAD];
                p[..8].copy_from_slice(&i.to_le_bytes());
                w.commit(&p).expect("commit");
            }
        }
        let r = Self {
            _memfd: memfd,
            map,
            entries,
        };
        // Sanity: every entry is live and attach resumes after the newest.
        let w = Writer::attach(r.map.words(), crate::CLIENT).expect("attach");
        assert_eq!(w.region().entries().count() as u64, entries);
        assert_eq!(w.region().newest().map(|d| d.seq), Some(entries));
        assert_eq!(w.next_seq(), entries + 1);
        drop(w); // releases the claim: each timed attach takes and releases it
        Ok(r)
    }

    /// The descriptor count.
    pub fn entries(&self) -> u64 {
        self.entries
    }
}

impl Bench for Recover {
    fn run(&mut self, iters: u64) -> Duration {
        let words = self.map.words();
        let t = Instant::now();
        for _ in 0..iters {
            let w = Writer::attach(black_box(words), crate::CLIENT).expect("attach");
            black_box(w.region().newest());
        }
        t.elapsed()
    }
}
