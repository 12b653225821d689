//! Issue 20: `verify` and `restore` give one answer for every chain. The `chain_agreement`
//! fuzz entry point (in `shmsnap-testkit`) on stable: proptest over arbitrary bytes, a replay
//! of `fuzz/corpus/chain_agreement/` and `fuzz/regressions/chain_agreement/`, and the issue's
//! crafted cases as named tests (a CRC-valid delta with garbage meta pages, runs that zero
//! the whole image, a symbolic link in the chain directory to such a delta kept elsewhere).

use proptest::prelude::*;
use shmsnap_testkit::chain_agreement::{chain_agreement, verdict, Verdict};

#[path = "../../fuzz/replay.rs"]
mod corpus;
use corpus::replay;

/// An input for [`verdict`], spelled out: a queue base with two commits, then `deltas`
/// (each `(kind bytes, damage bytes)`).
fn queue_input(deltas: &[(&[u8], &[u8])]) -> Vec<u8> {
    // queue; 2 commits of 10 bytes (values 1, 2); no base damage; the delta count.
    let mut v = vec![0, 1, 9, 1, 9, 2, 0, deltas.len() as u8];
    for (kind, damage) in deltas {
        v.extend_from_slice(kind);
        v.extend_from_slice(damage);
    }
    v
}

/// An honest delta: one commit of 20 bytes of `value`.
fn honest(value: u8) -> Vec<u8> {
    vec![0, 0, 19, value]
}

/// Garbage over the meta pages (the 8-byte seed of the scribble).
const GARBAGE_META: &[u8] = &[2, 7, 7, 7, 7, 7, 7, 7, 7];
/// Runs that zero the whole image.
const ZEROES: &[u8] = &[3];
/// No damage on disk.
const INTACT: &[u8] = &[0];
/// The file replaced by a symbolic link to a sound copy kept elsewhere.
const SYMLINK: &[u8] = &[15];

fn ends(deltas: usize, stop: Option<(&str, &str)>) -> Verdict {
    Verdict::Ends {
        deltas,
        stop: stop.map(|(n, k)| (n.to_owned(), k.to_owned())),
    }
}

/// The name of delta `k` of generation 1.
fn name(k: u64) -> String {
    shmsnap_linux::chain::delta_name(1, k)
}

#[test]
fn a_crc_valid_delta_with_garbage_meta_pages_ends_the_chain_in_verify_and_restore() {
    let (h1, h2, h4) = (honest(3), honest(4), honest(5));
    let input = queue_input(&[
        (&h1, INTACT),
        (&h2, INTACT),
        (GARBAGE_META, INTACT),
        (&h4, INTACT),
    ]);
    assert_eq!(verdict(&input), ends(2, Some((&name(3), "Image"))));
}

#[test]
fn a_delta_whose_runs_zero_the_whole_image_ends_the_chain_in_verify_and_restore() {
    let h1 = honest(3);
    let input = queue_input(&[(&h1, INTACT), (ZEROES, INTACT), (&h1, INTACT)]);
    assert_eq!(verdict(&input), ends(1, Some((&name(2), "Image"))));
}

#[test]
fn a_symlink_in_the_chain_directory_to_a_garbage_meta_delta_ends_the_chain_there() {
    let h1 = honest(3);
    let input = queue_input(&[(&h1, INTACT), (GARBAGE_META, SYMLINK), (&h1, INTACT)]);
    assert_eq!(verdict(&input), ends(1, Some((&name(2), "NotRegularFile"))));
    // A link to a sound delta is refused too: links are never followed.
    let input = queue_input(&[(&h1, INTACT), (&h1, SYMLINK)]);
    assert_eq!(verdict(&input), ends(1, Some((&name(2), "NotRegularFile"))));
}

#[test]
fn a_sound_chain_is_applied_whole() {
    let (h1, h2) = (honest(3), honest(4));
    let input = queue_input(&[(&h1, INTACT), (&h2, INTACT), (&h1, INTACT)]);
    assert_eq!(verdict(&input), ends(3, None));
}

#[test]
fn chain_agreement_corpus_replays_clean() {
    let n = replay("chain_agreement", chain_agreement);
    eprintln!("chain_agreement: {n} inputs");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn verify_and_restore_agree_on_arbitrary_chains(data in prop::collection::vec(any::<u8>(), 0..512)) {
        chain_agreement(&data);
    }
}
