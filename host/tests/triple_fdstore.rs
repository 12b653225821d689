//! `--strategy triple` with a region inherited from the systemd fd store that holds a stale
//! FROZEN buffer of a dead host: the new host undoes the freeze at attach (and logs it), the
//! client reads the newest board, and the host persists it.
//!
//! A binary of its own: it reserves fd 3 in the test process (the handover's rule for any
//! process that spawns with `prepare_command`), which would race with parallel tests.

mod common;

use std::process::Command;

use common::*;
use shmsnap_core::triple::{BufferState, TripleHost};
use shmsnap_linux::{Mapping, Memfd, Protection};

/// `BIN __exec -- ARGS...` with `memfd` at fd 3 the systemd way.
fn with_region(memfd: &Memfd, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["__exec", "--", BIN])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    shmsnap_linux::handover::prepare_command(&mut c, memfd, "SHM_SHARED_FD").unwrap();
    c
}

#[test]
fn a_stale_freeze_in_an_inherited_region_is_released_and_its_board_persisted() {
    shmsnap_linux::handover::reserve_fd3().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("fd.snap");
    let memfd = Memfd::create("triple-fdstore", 1 << 20).unwrap();
    memfd.seal_against_shrink().unwrap();

    // A life client alone on the region: 30 generations published.
    let life = ["example", "life", "--side", "64"];
    let mut c = with_region(&memfd, &life);
    c.args(["--generations", "30"]);
    let mut client = Proc::spawn(c);
    assert_eq!(client.exit_code(), 0, "{}", client.err.text());

    // A host that froze the newest buffer and died: the freeze is left in the region.
    let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    let dead = TripleHost::attach(map.words()).unwrap();
    let frozen = dead.freeze(0).unwrap().expect("a published board");
    assert_eq!(frozen.seq(), 30);
    let sw = dead.layout().state_word(frozen.buffer());
    std::mem::forget(frozen);
    let word = |w: usize| map.words()[w].load(std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        BufferState::decode(word(sw)),
        BufferState::Frozen { .. }
    ));

    let mut args = vec!["run", "--state", state.to_str().unwrap()];
    args.extend([
        "--strategy",
        "triple",
        "--restart",
        "never",
        "--interval",
        "50ms",
        "--",
        BIN,
    ]);
    args.extend(life);
    args.extend(["--generations", "40"]);
    let mut host = Proc::spawn(with_region(&memfd, &args));
    let line = host.out.expect("life: pid", "the client's start");
    assert!(
        line.contains("restored generation 30 (seq 30), board verified"),
        "{line}"
    );
    assert_eq!(host.exit_code(), 0, "{}", host.err.text());
    let log = host.err.text();
    assert!(
        log.contains("released 1 buffer(s) left frozen by a previous host"),
        "{log}"
    );
    assert_verifies(&state);
    let j = inspect(&state).unwrap();
    assert_eq!(j["triple"]["seq"].as_u64(), Some(40), "{j}");
}
