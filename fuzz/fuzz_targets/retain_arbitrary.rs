#![no_main]
//! See `shmsnap_testkit::retain_arbitrary` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_testkit::retain_arbitrary(data));
