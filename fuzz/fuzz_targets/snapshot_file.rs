#![no_main]
//! See `shmsnap_linux::fuzzing::snapshot_file` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_linux::fuzzing::snapshot_file(data));
