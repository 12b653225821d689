//! The fuzz targets' entry points on stable: proptest over arbitrary bytes, a replay of every
//! committed corpus input (`fuzz/corpus/<target>/`), and every finding as a regression input
//! (`fuzz/regressions/<target>/`). CI runs this; it never runs the fuzzer itself.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shmsnap_core::fuzzing::{attach_and_read, ops, retain_arbitrary};

/// `fuzz/<kind>/<target>/`, relative to this crate.
fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target)
}

/// Runs `f` over every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`,
/// naming the file that fails. Returns the number of inputs replayed.
fn replay(target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(files) = fs::read_dir(dir(kind, target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = files.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            if !path.is_file() {
                continue;
            }
            let data = fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| f(&data));
            if let Err(e) = outcome {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{target}: input {} fails: {msg}", path.display());
            }
            n += 1;
        }
    }
    n
}

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

/// Bytes whose first byte selects each image kind with equal weight, so the structured
/// decoders are reached as often as raw images.
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
