//! Test and fuzz support for shmsnap, apart from the product crates: entry points that the
//! cargo-fuzz targets call in one line and the stable test suite replays.
//!
//! - [`triple_host`](triple_host::triple_host): the triple-buffer host over arbitrary state,
//!   seq, hint and header words.

pub mod triple_host;
