//! Replays the committed fuzz inputs on stable. Included (`#[path]`) by the tests that replay
//! them — `testkit/tests/fuzz_replay.rs` and `os-linux/tests/fuzz_replay.rs` — so the corpus and
//! the code that walks it live together. Both crates sit one level below the root, so
//! `CARGO_MANIFEST_DIR/../fuzz` is this directory for either.

use std::fs;
use std::path::{Path, PathBuf};

/// Runs `f` over every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`, in
/// name order, naming the file that fails. Panics if there is no corpus input at all (a replay
/// of nothing would pass for the wrong reason). Returns the number of inputs replayed.
pub fn replay(target: &str, f: fn(&[u8])) -> usize {
    let mut n = 0;
    let mut corpus = 0;
    for kind in ["corpus", "regressions"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(kind)
            .join(target);
        let Ok(files) = fs::read_dir(&dir) else {
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
            corpus += usize::from(kind == "corpus");
        }
    }
    assert!(
        corpus > 0,
        "no corpus inputs for {target} under fuzz/corpus/"
    );
    n
}
