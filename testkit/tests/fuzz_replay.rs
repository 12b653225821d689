//! The fuzz targets' entry points on stable: proptest over arbitrary bytes, a replay of every
//! committed corpus input (`fuzz/corpus/<target>/`), and every finding as a regression input
//! (`fuzz/regressions/<target>/`). CI runs this; it never runs the fuzzer itself.

use proptest::prelude::*;
use shmsnap_testkit::{attach_and_read, ops, retain_arbitrary};

#[path = "../../fuzz/replay.rs"]
mod corpus;
use corpus::replay;

#[test]
fn attach_and_read_corpus_replays_clean() {
    let n = replay("attach_and_read", attach_and_read);
    eprintln!("attach_and_read: {n} inputs");
}

#[test]
fn retain_arbitrary_corpus_replays_clean() {
    let n = replay("retain_arbitrary", retain_arbitrary);
    eprintln!("retain_arbitrary: {n} inputs");
}

#[test]
fn ops_corpus_replays_clean() {
    let n = replay("ops", ops);
    eprintln!("ops: {n} inputs");
}

#[test]
fn empty_and_tiny_inputs_are_accepted() {
    for f in [attach_and_read, retain_arbitrary, ops] {
        f(&[]);
        for b in 0..=255u8 {
            f(&[b]);
            f(&[b, b]);
            f(&[b; 40]);
        }
    }
}

/// Arbitrary bytes (each entry point's first byte chooses how it decodes the rest).
fn fuzz_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn attach_and_read_holds_for_arbitrary_bytes(data in fuzz_bytes(2048)) {
        attach_and_read(&data);
    }

    #[test]
    fn retain_arbitrary_holds_for_arbitrary_bytes(data in fuzz_bytes(2048)) {
        retain_arbitrary(&data);
    }

    #[test]
    fn ops_match_the_model_for_arbitrary_bytes(data in fuzz_bytes(1024)) {
        ops(&data);
    }
}
