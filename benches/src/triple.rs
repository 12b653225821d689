//! Fixtures of the `triple` group: a triple-buffer publication of `n` bytes — ours
//! ([`TripleClient::take`], [`WriteGrant::write`](shmsnap_core::triple::WriteGrant::write),
//! `publish` into a `MAP_SHARED` memfd mapping) against the `triple_buffer` crate's in-place
//! write + `publish` of the same bytes in one process, and against `memcpy` of `n` bytes into
//! one fixed place of the same kind of mapping ([`crate::commit::Raw`], hot destination).
//!
//! Ours: three buffers of `max(n, 4 KiB)` rounded up to a page; every publication takes the
//! next buffer (a stale READY: one compare-exchange) and stores `n` bytes at its start, either
//! with `Relaxed` word stores (`write`, safe) or with `memcpy` (`write_exclusive`, `unsafe`:
//! the caller promises no other thread of its process touches the buffer). `triple_buffer`: `Input::input_buffer_mut().copy_from_slice` +
//! `Input::publish` on a `Vec<u8>` of `n` bytes. No host or consumer runs: this is the
//! client's cost alone. Sanity before timing: ours reads the published bytes back through a
//! restarted client; the crate's consumer reads them back.

use std::hint::black_box;
use std::io;
use std::time::{Duration, Instant};

use shmsnap_core::triple::{TripleClient, TripleLayout, TripleRequest};

use crate::commit::{faulted_region, payload};
use crate::sys::{Mapping, Memfd};
use crate::Bench;

/// Publication sizes of the group.
pub const SIZES: [usize; 3] = [64, 4096, 1 << 20];

/// Our request for publications of `n` bytes.
pub fn request(n: usize) -> TripleRequest {
    TripleRequest {
        buffers: 3,
        buffer_size: (n as u64).div_ceil(4096).max(1) * 4096,
    }
}

/// Our client publishing `n` bytes into a memfd mapping.
#[derive(Debug)]
pub struct Ours {
    _memfd: Memfd,
    map: Mapping,
    payload: Vec<u8>,
    /// `true`: write with `WriteGrant::write_exclusive` (memcpy), else `write` (word stores).
    exclusive: bool,
}

impl Ours {
    /// A configured, faulted region; checks that a publication reads back.
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If the sanity check fails.
    pub fn new(n: usize, exclusive: bool) -> io::Result<Self> {
        let layout = TripleLayout::new(request(n)).expect("valid request");
        let (memfd, map) = faulted_region("bench-triple", layout.region_len)?;
        let payload = payload(n);
        {
            let mut c = TripleClient::init(map.words(), request(n), crate::CLIENT).expect("init");
            let seq = c.publish(&payload).expect("publish");
            drop(c); // the client restarts: its claim is released
            let again = TripleClient::attach(map.words(), crate::CLIENT).expect("attach");
            let mut back = vec![0u8; n];
            assert_eq!(again.read_newest(0, &mut back).expect("read"), Some(seq));
            assert_eq!(back, payload);
            again.check_invariants().expect("invariants");
        }
        Ok(Ours {
            _memfd: memfd,
            map,
            payload,
            exclusive,
        })
    }
}

impl Bench for Ours {
    fn run(&mut self, iters: u64) -> Duration {
        // The client borrows the mapping, so each batch attaches (outside the timed loop).
        let mut c = TripleClient::attach(self.map.words(), crate::CLIENT).expect("attach");
        let payload = &self.payload[..];
        let t = Instant::now();
        if self.exclusive {
            for _ in 0..iters {
                let mut g = c.take().expect("take");
                // SAFETY: no other thread of this process touches the mapping during the run.
                unsafe { g.write_exclusive(0, black_box(payload)) }.expect("write");
                black_box(g.publish());
            }
        } else {
            for _ in 0..iters {
                let mut g = c.take().expect("take");
                g.write(0, black_box(payload)).expect("write");
                black_box(g.publish());
            }
        }
        t.elapsed()
    }
}

/// The `triple_buffer` crate (9.x): in-place write of `n` bytes + `publish`.
pub struct Crate {
    input: triple_buffer::Input<Vec<u8>>,
    _output: triple_buffer::Output<Vec<u8>>,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Crate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crate").finish_non_exhaustive()
    }
}

impl Crate {
    /// A triple buffer of `n`-byte vectors; checks that a publication reads back.
    ///
    /// # Panics
    ///
    /// If the sanity check fails.
    pub fn new(n: usize) -> Self {
        let payload = payload(n);
        let (mut input, mut output) = triple_buffer::triple_buffer(&vec![0u8; n]);
        input.input_buffer_mut().copy_from_slice(&payload);
        input.publish();
        assert_eq!(output.read(), &payload);
        // Touch all three buffers once so no timed publication faults a page in.
        for _ in 0..3 {
            input.input_buffer_mut().copy_from_slice(&payload);
            input.publish();
        }
        Crate {
            input,
            _output: output,
            payload,
        }
    }
}

impl Bench for Crate {
    fn run(&mut self, iters: u64) -> Duration {
        let payload = &self.payload[..];
        let t = Instant::now();
        for _ in 0..iters {
            self.input
                .input_buffer_mut()
                .copy_from_slice(black_box(payload));
            black_box(self.input.publish());
        }
        t.elapsed()
    }
}
