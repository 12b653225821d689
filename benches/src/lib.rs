//! Benchmarks of shmsnap against the physical limits and against upstream `shm-snapshot`
//! 0.2.3 (DESIGN §10).
//!
//! The fixtures live here so the criterion benches (`benches/*.rs`) and the one-run report
//! (`src/bin/compare.rs`) measure exactly the same code:
//!
//! - [`commit`]: ours, upstream and the limits (`memcpy`, atomic word stores), hot and
//!   advancing destinations;
//! - [`recover`]: attach + newest on full descriptor rings;
//! - [`report`]: the interleaved runner, medians and the machine description.
//!
//! Benchmarks are never timed tests: fixtures assert *correctness* (a committed entry reads
//! back, a snapshot verifies) before timing, never durations.

pub mod commit;
pub mod recover;
pub mod report;
pub mod sys;
