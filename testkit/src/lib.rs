//! Test support for shmsnap, kept out of the product crates: fuzz entry points (one module per
//! target) that the cargo-fuzz targets in `fuzz/` call on nightly and the replay tests run on
//! stable.

pub mod snapshot_file;
