//! The `snapshot_file` fuzz entry point (in `shmsnap-testkit`) on stable: proptest over
//! arbitrary bytes and a replay of `fuzz/corpus/snapshot_file/` and
//! `fuzz/regressions/snapshot_file/`.

use proptest::prelude::*;
use shmsnap_testkit::snapshot_file::{crc32c, snapshot_file};

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
    // Shapes 1..=4 (dense, dense, sparse, queue region), with and without region slack.
    for shape in [1u8, 2, 3, 4, 6, 7, 8, 9] {
        for (damage, at) in (0..=255u8).flat_map(|d| [(d, 13u8), (d, 77), (d, 202)]) {
            let mut input = vec![shape, damage, at, 200, 7, 1, 0, 0, 0, 0];
            input.extend_from_slice(&[1; 17]);
            input.extend_from_slice(b"a 40-byte image: five words of test data");
            snapshot_file(&input);
        }
    }
}

#[test]
fn every_bit_of_a_queue_header_and_ring_flipped_under_a_correct_crc() {
    // Shape 4 (a region written by core's Writer: 16 entries, 64-byte data ring, 30 commits)
    // with damage 10/11/12: one bit flipped in the ring or the header before the CRC.
    for damage in [10u8, 11, 12] {
        for at in 0..=255u8 {
            for bit in 0..8u8 {
                let mut input = vec![4, damage, at, at / 2, 0, 0, bit, 0, 0, 0];
                input.extend_from_slice(&[1; 17]);
                input.extend_from_slice(&[4, 3, 2, 30]);
                input.extend((0..30u8).flat_map(|i| [i % 8, i, i, i, i, i, i, i, i]));
                snapshot_file(&input);
            }
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
