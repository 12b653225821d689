//! Benchmarks of shmsnap against the physical limits and against upstream `shm-snapshot`
//! 0.2.3 (DESIGN §10).
//!
//! The fixtures live here so the criterion benches (`benches/*.rs`) and the one-run report
//! (`src/bin/compare.rs`) measure exactly the same code:
//!
//! - [`abi`]: a commit and a triple publication through the C ABI vs. the Rust API directly;
//! - [`commit`]: ours, upstream and the limits (`memcpy`, atomic word stores), hot and
//!   advancing destinations;
//! - [`durable`]: commit-to-durable latency with and without a prompt request, and the
//!   throughput of a client that waits on every N-th commit;
//! - [`recover`]: attach + newest on full descriptor rings;
//! - [`snapshot`]: the host snapshot cycle and restore vs. raw sparse copies;
//! - [`triple`]: a triple-buffer publication vs. the `triple_buffer` crate and `memcpy`;
//! - [`triple_snapshot`]: the host's triple snapshot of a 256 MiB region (16 MiB buffers)
//!   vs. a raw copy of 16 MiB + `fdatasync` + `rename`;
//! - [`replica`]: upload of a 256 MiB snapshot to a local S3 server and restore from it vs.
//!   a raw multipart `PUT` and a raw `GET` with the same client;
//! - [`report`]: the interleaved runner, medians and the machine description;
//! - [`targets`]: the rows of issue 27's table, checked met / not met.
//!
//! Benchmarks are never timed tests: fixtures assert *correctness* (a committed entry reads
//! back, a snapshot verifies) before timing, never durations.

use std::time::{Duration, Instant};

pub mod abi;
/// The claim id of the benches' one client per region (one writer per region is enforced by
/// the region's claim, `shmsnap_core::claim`).
pub const CLIENT: shmsnap_core::ClaimId = match shmsnap_core::ClaimId::from_pid(1, 0xbe4c) {
    Some(id) => id,
    None => panic!("pid 1 is nonzero"),
};

pub mod commit;
pub mod durable;
pub mod freeze;
pub mod incremental;
pub mod recover;
pub mod replica;
pub mod report;
pub mod snapshot;
pub mod sys;
pub mod targets;
pub mod triple;
pub mod triple_snapshot;

/// One side of a comparison: runs `iters` operations and returns the time they took.
pub trait Bench {
    /// Runs `iters` operations; only the operations are timed.
    fn run(&mut self, iters: u64) -> Duration;
}

/// A [`Bench`] made of a closure (one call = one operation).
#[derive(Debug)]
pub struct FnBench<F>(pub F);

impl<F: FnMut()> Bench for FnBench<F> {
    fn run(&mut self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            (self.0)();
        }
        t.elapsed()
    }
}
