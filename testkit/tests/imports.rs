//! Imports point one way: no import cycle among the modules of the core, the Linux adapters,
//! the C ABI and the host; and the checker's broken twin — a synthetic crate with known cycles — is caught.

use std::path::{Path, PathBuf};

use shmsnap_testkit::imports::{cycles, edges_text, graph};

fn src(krate: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src")
}

/// Asserts the cycles of `krate` are exactly `known` (each sorted): a new cycle fails, and so
/// does a known one that is gone (then remove it from the list).
fn assert_cycles(krate: &str, known: &[&[&str]]) {
    let dir = src(krate);
    let found = cycles(&dir).unwrap();
    let known: Vec<Vec<String>> = known
        .iter()
        .map(|c| c.iter().map(|m| m.to_string()).collect())
        .collect();
    assert!(
        found == known,
        "import cycles in {krate}/src: {found:?}, known: {known:?}\nthe graph:\n{}",
        edges_text(&graph(&dir).unwrap())
    );
}

#[test]
fn core_imports_point_one_way() {
    assert_cycles("core", &[]);
}

#[test]
fn os_linux_imports_point_one_way() {
    // Known, not yet removed (issue 22 did not list it; found by this checker): a `Mapping`
    // owns its `Tracker`, and `Tracker::register` takes the `&Mapping` it tracks.
    assert_cycles("os-linux", &[&["mapping", "track::client"]]);
}

#[test]
fn ffi_imports_point_one_way() {
    assert_cycles("ffi", &[]);
}

#[test]
fn host_imports_point_one_way() {
    assert_cycles("host", &[]);
}

/// Writes `files` (path under `src/`, text) into a temp crate; returns its `src`.
fn synthetic(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for (path, text) in files {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    (dir, src)
}

#[test]
fn the_checker_finds_plain_grouped_super_and_code_path_cycles() {
    let (_d, src) = synthetic(&[
        (
            "lib.rs",
            "pub mod a; pub mod b; pub mod g; pub mod h; pub mod i; pub mod p; pub use a::A;\n",
        ),
        ("i.rs", "fn f() -> crate::A { crate::A }\n"),
        // A plain `use` cycle.
        ("a.rs", "use crate::b::B;\npub struct A;\n"),
        (
            "b.rs",
            "use crate::a::A; // crate::g::G in a comment is no edge\npub struct B;\n",
        ),
        // A grouped-use cycle: g -> h by `use crate::{h::H, ..}`, h -> g by a code path.
        (
            "g.rs",
            "use crate::{a, h::{H, self as hh}};\npub struct G;\n",
        ),
        (
            "h.rs",
            "pub struct H;\nfn f() -> crate::g::G { let _ = \"crate::a::A\"; crate::g::G }\n",
        ),
        // A `super::` cycle: p/q.rs -> p (super::P), p/mod.rs -> q (child module path).
        ("p/mod.rs", "mod q;\npub struct P;\nfn f() { q::go() }\n"),
        (
            "p/q.rs",
            "pub fn go() { let _ = super::P; }\n#[cfg(test)]\nmod tests { use super::go; }\n",
        ),
    ]);
    let found = cycles(&src).unwrap();
    let g = graph(&src).unwrap();
    assert_eq!(
        found,
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["g".to_string(), "h".to_string()],
            vec!["p".to_string(), "p::q".to_string()],
        ],
        "the graph:\n{}",
        edges_text(&g)
    );
    // Comments and strings add no edge; a path through the root's re-export is followed to
    // the defining module; an inline test module is its own node.
    assert!(!g["b"].contains("g"), "{g:?}");
    assert!(!g["h"].contains("a"), "{g:?}");
    assert!(g["crate"].is_empty(), "a re-export is no edge: {g:?}");
    assert!(g["p::q"].iter().eq(["p"]), "{g:?}");
    assert!(g["p::q::tests"].iter().eq(["p::q"]), "{g:?}");
    assert!(g["i"].iter().eq(["a"]), "crate::A is a's: {g:?}");
}

#[test]
fn an_acyclic_synthetic_crate_has_no_cycle() {
    let (_d, src) = synthetic(&[
        ("lib.rs", "pub mod a; pub mod b; pub use b::B;\n"),
        ("a.rs", "use crate::b::{self, B};\n"),
        ("b.rs", "pub struct B;\n"),
    ]);
    assert_eq!(cycles(&src).unwrap(), Vec::<Vec<String>>::new());
    assert!(graph(&src).unwrap()["a"].contains("b"));
}
