#![no_main]
//! See `shmsnap_testkit::snapshot_file::snapshot_file` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_testkit::snapshot_file::snapshot_file(data));
