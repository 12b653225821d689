//! The `snapshot_file` fuzz entry point on stable: proptest over arbitrary bytes and a replay of
//! `fuzz/corpus/snapshot_file/` and `fuzz/regressions/snapshot_file/` (core's targets replay in
//! `core/tests/fuzz_replay.rs`).

use proptest::prelude::*;
use shmsnap_linux::fuzzing::{crc32c, snapshot_file};

#[path = "../../fuzz/replay.rs"]
mod corpus;
use corpus::replay;

#[test]
fn snapshot_file_corpus_replays_clean() {
    let n = replay("snapshot_file", snapshot_file);
    eprintln!("snapshot_file: {n} inputs");
}

#[test]
fn oracle_crc_matches_the_reference_vector() {
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn every_damage_kind_on_a_small_image() {
    for shape in [1u8, 2, 3, 5, 6, 7] {
        for damage in 0..=255u8 {
            let mut input = vec![shape, damage, 13, 200, 7, 1, 0, 0, 0, 0];
            input.extend_from_slice(&[1; 17]);
            input.extend_from_slice(b"a small image with some bytes");
            snapshot_file(&input);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn snapshot_file_holds_for_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        snapshot_file(&data);
    }
}
