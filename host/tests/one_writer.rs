//! End-to-end tests of issue 20, findings 3–5, with the real binary and the bundled clients:
//!
//! - a SIGKILLed client leaves its claim on the region; the host clears it after the final
//!   snapshot, and the restarted client attaches (without the host's reclaim it is refused as
//!   a second writer, and never starts again);
//! - a triple client that re-initialises its region (zeroing word 0 and calling
//!   `TripleClient::init`, or the documented `TripleClient::reinit`) is snapshotted at the next
//!   interval: the host persists seqs below the ones it persisted before the re-init;
//! - a READY word scribbled with seq 2868291872060729160 is refused and counted, never
//!   persisted, and honest publications after it are persisted.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rustix::process::{Pid, Signal};
use shmsnap_core::triple::{BufferState, TripleLayout};
use shmsnap_linux::{Mapping, Memfd, Protection};

/// The seq finding 5 saw persisted.
const SCRIBBLED: u64 = 2_868_291_872_060_729_160;

fn kill(pid: i32) {
    rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
}

/// `(line index, pid)` of the next primes client start at `from` or later.
fn next_primes_start(host: &Proc, from: usize) -> (usize, i32) {
    let Some((i, pid, _)) = next_restored(host, from, SLOW) else {
        panic!(
            "no primes client start after line {from}\nstdout:\n{}\nstderr:\n{}",
            host.out.text(),
            host.err.text()
        );
    };
    (i, pid)
}

#[test]
fn a_sigkilled_clients_claim_is_cleared_by_the_host_and_the_restart_attaches() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("claim.snap");
    let mut host = run_host(
        &state,
        &[
            "--strategy",
            "queue",
            "--interval",
            "100ms",
            "--size",
            "2M",
            "--max-backoff",
            "200ms",
        ],
        &primes(&["--pause", "1ms"]),
    );
    let (mut at, mut pid) = next_primes_start(&host, 0);
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(150));
        kill(pid);
        let (i, p) = next_primes_start(&host, at + 1);
        assert_ne!(p, pid, "round {round}: a new client");
        let cleared = format!("cleared the region's claim held by pid {pid}");
        host.err
            .expect(&cleared, "the host clears the dead client's claim");
        (at, pid) = (i, p);
    }
    let refused = host
        .out
        .all()
        .iter()
        .chain(host.err.all().iter())
        .any(|l| l.contains("claimed by another writer"));
    assert!(
        !refused,
        "a restarted client was refused:\n{}",
        host.err.text()
    );
    host.signal(Signal::TERM);
    assert_eq!(host.wait_timeout(SLOW).and_then(|s| s.code()), Some(0));
}

const TRIPLE_ARGS: &[&str] = &[
    "--strategy",
    "triple",
    "--interval",
    "50ms",
    "--size",
    "1M",
    "--max-backoff",
    "200ms",
];

/// `newest_seq` of every `snapshot persisted` line of the host, in order.
fn persisted_seqs(host: &Proc) -> Vec<u64> {
    persisted_seqs_from(host, 0)
}

/// `newest_seq` of the `snapshot persisted` lines from line `from` on.
fn persisted_seqs_from(host: &Proc, from: usize) -> Vec<u64> {
    host.err
        .all()
        .iter()
        .skip(from)
        .filter(|l| l.contains("snapshot persisted"))
        .filter_map(|l| l.split("newest_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(|s| s.parse().expect("newest_seq"))
        .collect()
}

/// Finding 4: after a re-initialisation (`how`), the host persists the new seqs (below the
/// ones it persisted before) instead of skipping until they pass the old ones.
fn reinit_is_snapshotted_at_once(how: &str) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("reinit.snap");
    // 400 generations at 1 ms, then a re-init: seqs start again at 1, and the new seqs
    // stay below the old ones for about 8 intervals.
    let reinit_at = "400";
    let client = [
        BIN,
        "example",
        "life",
        "--side",
        "64",
        "--pause",
        "1ms",
        "--reinit-at",
        reinit_at,
        "--reinit-by",
        how,
    ];
    let mut host = run_host(&state, TRIPLE_ARGS, &client);
    let (at, _) = host
        .out
        .wait_from(0, SLOW, |l| l.contains("re-initialised the region"))
        .unwrap_or_else(|| panic!("no re-init:\n{}\n{}", host.out.text(), host.err.text()));
    // Every line the host logs from here on comes after the re-init.
    let mark = host.err.len();
    let before = persisted_seqs(&host).into_iter().max().unwrap_or(0);
    assert!(
        before > 100,
        "snapshots before the re-init: up to seq {before}"
    );
    // Persisted after the re-init with a seq below the old ones: the next interval's.
    let after = poll(SLOW, || {
        let seqs = persisted_seqs_from(&host, mark);
        seqs.iter().find(|&&s| s < before).copied()
    });
    let text = host.err.text();
    let after = after.unwrap_or_else(|| {
        panic!("nothing persisted after the re-init below seq {before}:\n{text}")
    });
    assert!(
        text.contains("re-initialised the region (client epoch"),
        "the host logs the re-init:\n{text}"
    );
    let logged = text
        .matches("re-initialised the region (client epoch")
        .count();
    assert_eq!(logged, 1, "logged once:\n{text}");
    let _ = at;
    // The file holds the new life's state and verifies.
    host.signal(Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    assert_verifies(&state);
    let seq = inspect(&state).unwrap()["triple"]["seq"].as_u64().unwrap();
    assert!(
        seq < before && seq >= after,
        "the file holds seq {seq} (before the re-init: {before})"
    );
}

#[test]
fn a_client_that_zeroes_word_0_and_inits_is_snapshotted_at_the_next_interval() {
    reinit_is_snapshotted_at_once("zero-magic");
}

#[test]
fn a_client_that_reinits_a_damaged_region_is_snapshotted_at_the_next_interval() {
    reinit_is_snapshotted_at_once("reinit");
}

/// The live region of client `pid`, mapped read-write through `/proc/PID/fd/3` (an outside
/// writer, as a process that scribbles the region would be).
fn map_live(pid: i32) -> (Memfd, Mapping) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/fd/3"))
        .unwrap();
    let memfd = Memfd::from_fd(f.into()).unwrap();
    let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    (memfd, map)
}

fn scrape(url: &str) -> Option<BTreeMap<String, f64>> {
    let mut resp = ureq::get(url).call().ok()?;
    let text = resp.body_mut().read_to_string().ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Finding 5: a READY word scribbled with seq 2868291872060729160 is refused (never frozen,
/// never persisted), counted in `shmsnap_triple_refused_states_total` and logged; once the
/// word is gone, honest publications are persisted again (the last persisted seq was never
/// pinned).
#[test]
fn a_scribbled_ready_seq_is_refused_counted_and_never_pins_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("scribble.snap");
    let mut args = TRIPLE_ARGS.to_vec();
    args.extend(["--metrics", "127.0.0.1:0"]);
    let client = [BIN, "example", "life", "--side", "64", "--pause", "2ms"];
    let mut host = run_host(&state, &args, &client);
    let url = host
        .err
        .expect("serving metrics on http://", "the metrics address")
        .split_once("serving metrics on ")
        .unwrap()
        .1
        .trim()
        .to_owned();
    let (_, line) = host
        .out
        .wait_from(0, SLOW, |l| l.starts_with("life: pid "))
        .expect("a client start");
    let pid: i32 = line["life: pid ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    poll(SLOW, || (!persisted_seqs(&host).is_empty()).then_some(())).expect("a snapshot");
    let (_memfd, map) = map_live(pid);
    let w = map.words();
    let layout = TripleLayout::read(w).unwrap();
    // Scribble a FREE or stale READY buffer (never the client's newest, which it keeps).
    let victim = poll(SLOW, || {
        let states: Vec<u64> = (0..layout.buffers)
            .map(|i| w[layout.state_word(i)].load(Ordering::SeqCst))
            .collect();
        let newest =
            (0..layout.buffers).max_by_key(|&i| match BufferState::decode(states[i as usize]) {
                BufferState::Ready { seq } => seq,
                _ => 0,
            })?;
        let victim = (0..layout.buffers).find(|&i| {
            i != newest
                && matches!(
                    BufferState::decode(states[i as usize]),
                    BufferState::Free | BufferState::Ready { .. }
                )
        })?;
        let sw = layout.state_word(victim);
        let scribble = BufferState::Ready { seq: SCRIBBLED }.encode().unwrap();
        w[sw]
            .compare_exchange(
                states[victim as usize],
                scribble,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .ok()
            .map(|_| victim)
    })
    .expect("a buffer to scribble");
    let refused = "shmsnap_triple_refused_states_total";
    let seen = poll(SLOW, || {
        let s = scrape(&url)?;
        let persisted_scribble = persisted_seqs(&host).contains(&SCRIBBLED);
        (persisted_scribble || s.get(refused).copied().unwrap_or(0.0) >= 2.0).then_some(())
    });
    assert!(
        seen.is_some(),
        "the scribble was neither refused nor persisted"
    );
    let honest = |host: &Proc| {
        persisted_seqs(host)
            .into_iter()
            .filter(|&s| s < SCRIBBLED)
            .max()
            .unwrap_or(0)
    };
    let before = honest(&host);
    // The scribbled word goes away (FREE again: the client never takes a READY word above its
    // newest, so nothing else would clear it); honest publications go on.
    let _ = w[layout.state_word(victim)].compare_exchange(
        BufferState::Ready { seq: SCRIBBLED }.encode().unwrap(),
        0,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let honest_later = poll(SLOW, || (honest(&host) > before).then_some(()));
    let text = host.err.text();
    assert!(
        !persisted_seqs(&host).contains(&SCRIBBLED),
        "the scribbled seq was persisted:\n{text}"
    );
    assert!(
        honest_later.is_some(),
        "no honest snapshot after the scribble (the host is pinned):\n{text}"
    );
    assert!(
        text.contains(&format!("READY with seq {SCRIBBLED}")) && text.contains("refused"),
        "the refusal is logged:\n{text}"
    );
    assert_eq!(
        text.matches(&format!("READY with seq {SCRIBBLED}")).count(),
        1,
        "logged once per change:\n{text}"
    );
    host.signal(Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    assert_verifies(&state);
    let seq = inspect(&state).unwrap()["triple"]["seq"].as_u64().unwrap();
    assert!(seq < SCRIBBLED, "the file holds seq {seq}");
}
