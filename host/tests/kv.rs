//! The copy-on-write kv example under the host: SIGKILLs of the client and of the host never
//! let it see a node that changed under its root — the frozen-unit rule, end to end (units are
//! retired and reused all the time here, unlike in the append-only primes client).

mod common;

use std::time::Duration;

use common::*;
use rustix::process::Signal;

/// Parses `kv: pid P restored N operations, K keys, all correct`; panics on `CORRUPT`.
fn restored(line: &str) -> Option<(i32, u64)> {
    assert!(
        !line.contains("CORRUPT"),
        "kv client reports corruption: {line}"
    );
    let rest = line.strip_prefix("kv: pid ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("restored ")?;
    let (n, rest) = rest.split_once(' ')?;
    assert!(rest.ends_with("all correct"), "{line}");
    Some((pid.parse().ok()?, n.parse().ok()?))
}

fn next(h: &Proc, from: usize) -> (usize, i32, u64) {
    let (i, line) = h
        .out
        .wait_from(from, SLOW, |l| {
            l.contains("CORRUPT") || l.starts_with("kv: pid ")
        })
        .unwrap_or_else(|| {
            panic!(
                "no restart line after {from}:\n{}\n{}",
                h.out.text(),
                h.err.text()
            )
        });
    let (pid, n) = restored(&line).unwrap();
    (i, pid, n)
}

#[test]
fn kv_map_survives_client_and_host_sigkills_with_units_reused() {
    let dir = tempfile::Builder::new()
        .prefix("shmsnap-kv-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("kv.snap");
    let args = [
        "--strategy",
        "queue",
        "--interval",
        "50ms",
        "--size",
        "4M",
        "--max-backoff",
        "200ms",
    ];
    let client = [
        BIN,
        "example",
        "kv",
        "--ops",
        "100000000",
        "--pause",
        "20us",
    ];
    let mut host = run_host(&state, &args, &client);
    let (mut at, mut pid, mut ops) = next(&host, 0);
    assert_eq!(ops, 0);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL)
            .unwrap();
        let (i, p, n) = next(&host, at + 1);
        // The memfd survived: nothing committed is lost, and the map checked out.
        assert!(n >= ops, "restored {n} operations after {ops}");
        (at, pid, ops) = (i, p, n);
    }
    // 4 MiB hold ~2,700 units of 1,544 bytes: past that many operations (one new node each),
    // retired units must have been reused.
    assert!(
        ops > 3000,
        "the client made too little progress to reuse units: {ops}"
    );
    eprintln!("kv: {ops} operations before the host kill");
    // Now the host: only the snapshot on disk remains.
    std::thread::sleep(Duration::from_millis(600));
    host.kill();
    assert!(wait_dead(pid, SLOW), "client outlived the host");
    assert_verifies(&state);
    let mut host = run_host(&state, &args, &client);
    let (_, _, n) = next(&host, 0);
    assert!(
        n >= ops,
        "restored {n} operations from disk, fewer than {ops} seen before"
    );
    host.signal(Signal::TERM);
    assert!(host.wait_timeout(SLOW).is_some());
}
