#![no_main]
//! See `shmsnap_core::fuzzing::attach_and_read` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_core::fuzzing::attach_and_read(data));
