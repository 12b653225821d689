#![no_main]
//! See `shmsnap_testkit::chain_agreement::chain_agreement` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_testkit::chain_agreement::chain_agreement(data));
