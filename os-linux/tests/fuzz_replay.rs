//! The `snapshot_file` fuzz entry point on stable: proptest over arbitrary bytes and a replay of
//! `fuzz/corpus/snapshot_file/` and `fuzz/regressions/snapshot_file/` (core's targets replay in
//! `core/tests/fuzz_replay.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shmsnap_linux::fuzzing::{crc32c, snapshot_file};

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(kind)
            .join(target);
        let Ok(files) = fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = files.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let data = fs::read(&path).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| f(&data)) {
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
