#![no_main]
//! See `shmsnap_testkit::ops` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_testkit::ops(data));
