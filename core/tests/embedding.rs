//! Runs the embedding example (`core/examples/embedding.rs`), which `cargo test` only builds:
//! it asserts that the state restored from a snapshot taken during commits is exactly one the
//! client committed.

#[path = "../examples/embedding.rs"]
mod embedding;

#[test]
fn embedding_example_restores_a_committed_state() {
    embedding::main();
}
