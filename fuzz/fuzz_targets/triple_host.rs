#![no_main]
//! The triple-buffer host over arbitrary state, seq, hint and header words
//! (`shmsnap_testkit::triple_host::triple_host`; replayed on stable by
//! `testkit/tests/triple_host_replay.rs`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmsnap_testkit::triple_host::triple_host(data));
