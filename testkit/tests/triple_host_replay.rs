//! The `triple_host` fuzz entry point on stable: proptest over arbitrary bytes and a replay of
//! every committed corpus and regression input (`fuzz/{corpus,regressions}/triple_host/`).

use proptest::prelude::*;
use shmsnap_testkit::triple_host::triple_host;

#[path = "../../fuzz/replay.rs"]
mod corpus;

#[test]
fn triple_host_corpus_replays_clean() {
    let n = corpus::replay("triple_host", triple_host);
    eprintln!("triple_host: {n} inputs");
}

#[test]
fn empty_and_tiny_inputs_are_accepted() {
    triple_host(&[]);
    for b in 0..=255u8 {
        triple_host(&[b]);
        triple_host(&[b, b]);
        triple_host(&[b; 40]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn the_host_survives_arbitrary_state_words(data in prop::collection::vec(any::<u8>(), 0..512)) {
        triple_host(&data);
    }
}
