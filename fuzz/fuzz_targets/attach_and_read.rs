#![no_main]
//! See `shmsnap_testkit::attach_and_read` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_testkit::attach_and_read(data));
