#![no_main]
//! See `shmsnap_core::fuzzing::retain_arbitrary` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_core::fuzzing::retain_arbitrary(data));
