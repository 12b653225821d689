//! End-to-end tests of `--strategy triple` with the life client: restore after a client and a
//! host SIGKILL, a kill torture, snapshots at every interval while the client publishes as
//! fast as it can, and verify/restore refusing an image whose triple meta is bad.
//!
//! The life client verifies every restored board itself (magic, checksum, and the board
//! recomputed from its seed up to its generation) and prints `CORRUPT` and exits 3 otherwise;
//! the tests check that the restored seq is never below the last one the host logged as
//! persisted (`snapshot persisted ... newest_seq=S`).
//!
//! `SHMSNAP_TORTURE_N` cycles of the torture (default 12), `SHMSNAP_TORTURE_SEED` to replay:
//!
//! ```text
//! SHMSNAP_TORTURE_N=300 cargo test -p shmsnap --release --test triple -- --nocapture torture
//! ```

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::{Pid, Signal};
use shmsnap_core::triple::{BufferState, TripleLayout};
use shmsnap_linux::{Mapping, Memfd, Protection};

const HOST_ARGS: &[&str] = &[
    "--strategy",
    "triple",
    "--interval",
    "50ms",
    "--size",
    "1M",
    "--max-backoff",
    "200ms",
];
const RESTART_LIMIT: Duration = Duration::from_secs(60);

fn life(args: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![BIN, "example", "life"];
    v.extend_from_slice(args);
    v
}

fn start(state: &Path, client: &[&'static str]) -> Proc {
    run_host(state, HOST_ARGS, &life(client))
}

/// A client's start line: `(pid, Some((generation, seq)))` for a restored board, `None` for a
/// fresh one; panics on `CORRUPT`.
fn parse_start(line: &str) -> Option<(i32, Option<(u64, u64)>)> {
    assert!(
        !line.contains("CORRUPT"),
        "client reports corruption: {line}"
    );
    let rest = line.strip_prefix("life: pid ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let pid = pid.parse().ok()?;
    if rest.starts_with("starts a fresh board") {
        return Some((pid, None));
    }
    let rest = rest.strip_prefix("restored generation ")?;
    let (g, rest) = rest.split_once(" (seq ")?;
    let (s, rest) = rest.split_once(')')?;
    assert!(rest.contains("board verified"), "{line}");
    Some((pid, Some((g.parse().ok()?, s.parse().ok()?))))
}

/// The next start line at index `from` or later: (index, pid, restored).
fn next_start(p: &Proc, from: usize) -> (usize, i32, Option<(u64, u64)>) {
    let Some((i, line)) = p.out.wait_from(from, RESTART_LIMIT, |l| {
        l.contains("CORRUPT") || l.starts_with("life: pid ")
    }) else {
        panic!(
            "no client start within {RESTART_LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
            p.out.text(),
            p.err.text()
        );
    };
    let (pid, restored) = parse_start(&line).expect("start line");
    (i, pid, restored)
}

/// The `newest_seq` of the last `snapshot persisted` line the host logged (0: none).
fn last_persisted_seq(host: &Proc) -> u64 {
    host.err
        .all()
        .iter()
        .rev()
        .find(|l| l.contains("snapshot persisted"))
        .and_then(|l| l.split("newest_seq=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map_or(0, |s| s.parse().expect("newest_seq"))
}

/// The newest published `(seq, generation)` of a live client, read through
/// `/proc/PID/fd/3` with a read-only mapping: the READY or FROZEN buffer with the highest seq
/// and its board's generation word, re-checked so a reclaimed buffer is not read.
fn live_newest(client: i32) -> Option<(u64, u64)> {
    let f = File::open(format!("/proc/{client}/fd/3")).ok()?;
    let memfd = Memfd::from_fd(f.into()).ok()?;
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).ok()?;
    let w = map.words();
    let layout = TripleLayout::read(w).ok()?;
    for _ in 0..100 {
        let mut best: Option<(u64, u64, u64)> = None;
        for i in 0..layout.buffers {
            let v = w[layout.state_word(i)].load(Ordering::SeqCst);
            let seq = match BufferState::decode(v) {
                BufferState::Ready { seq } => seq,
                BufferState::Frozen { .. } => w[layout.seq_word(i)].load(Ordering::SeqCst),
                _ => continue,
            };
            if best.is_none_or(|(_, s, _)| seq > s) {
                best = Some((i, seq, v));
            }
        }
        let (i, seq, v) = best?;
        let gen_word = (layout.buffer_range(i).start / 8) as usize + 3;
        let generation = w[gen_word].load(Ordering::SeqCst);
        if w[layout.state_word(i)].load(Ordering::SeqCst) == v {
            return Some((seq, generation));
        }
    }
    None
}

fn inspect_seq(state: &Path) -> u64 {
    inspect(state).map_or(0, |j| j["triple"]["seq"].as_u64().expect("triple seq"))
}

#[test]
fn a_client_sigkill_loses_nothing_and_a_host_sigkill_nothing_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("life.snap");
    let client = ["--side", "64", "--pause", "1ms"];
    let mut host = start(&state, &client);
    let (at, pid, restored) = next_start(&host, 0);
    assert_eq!(restored, None, "a fresh state starts a fresh board");
    poll(SLOW, || (last_persisted_seq(&host) > 0).then_some(())).expect("a snapshot");

    // Client SIGKILL: the region survives in the host; the next client reads at least what
    // was published before the kill.
    let (live_seq, live_gen) = poll(SLOW, || live_newest(pid)).expect("live state");
    rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
    let (at, pid, restored) = next_start(&host, at + 1);
    let (g, s) = restored.expect("restored after a client kill");
    assert!(
        s >= live_seq && g >= live_gen,
        "restored ({g}, {s}) < live ({live_gen}, {live_seq})"
    );

    // Host SIGKILL: the client dies with it; a new host restores the last persisted board.
    poll(SLOW, || (last_persisted_seq(&host) > s).then_some(())).expect("a newer snapshot");
    host.kill();
    assert!(wait_dead(pid, SLOW), "the client outlived its host");
    let persisted = last_persisted_seq(&host);
    assert_eq!(
        inspect_seq(&state),
        persisted,
        "the file holds the last logged snapshot"
    );
    assert_verifies(&state);
    let host = start(&state, &client);
    let (_, _, restored) = next_start(&host, 0);
    let (g2, s2) = restored.expect("restored after a host kill");
    assert_eq!(s2, persisted, "the restored board is the persisted one");
    assert!(g2 >= g, "generation went back from {g} to {g2}");
    let _ = at;
}

#[derive(Default)]
struct Figures {
    client_kills: u64,
    host_kills: u64,
    lost_generations: Vec<u64>,
}

#[test]
fn kill_torture_every_restored_board_is_a_published_one_never_older_than_persisted() {
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse::<u64>().expect(name))
    };
    let n = env("SHMSNAP_TORTURE_N").unwrap_or(12);
    let seed = env("SHMSNAP_TORTURE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("triple kill torture: N = {n}, seed {seed} (SHMSNAP_TORTURE_SEED to replay)");
    let mut rng = seed;
    let mut below = |m: u64| {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % m
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("torture.snap");
    let client = ["--side", "64", "--pause", "200us"];
    let wall = Instant::now();
    let mut host = start(&state, &client);
    let (mut at, mut pid, _) = next_start(&host, 0);
    let mut fig = Figures::default();
    let mut last_gen = 0;
    for cycle in 1..=n {
        std::thread::sleep(Duration::from_millis(50 + below(400)));
        let kill_host = below(3) == 0;
        // The floor: the last snapshot the host logged, or the file's (a new host logs none
        // until its first snapshot).
        let persisted = last_persisted_seq(&host).max(inspect_seq(&state));
        let live = live_newest(pid);
        if kill_host {
            host.kill();
            assert!(wait_dead(pid, SLOW), "the client {pid} outlived its host");
        } else {
            let _ = rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
        }
        // A host kill: what the killed host logged last (it cannot log after the kill).
        let persisted = if kill_host {
            last_persisted_seq(&host).max(persisted)
        } else {
            persisted
        };
        if kill_host {
            if state.exists() {
                assert_verifies(&state);
            }
            host = start(&state, &client);
        }
        let from = if kill_host { 0 } else { at + 1 };
        let (i, p2, restored) = next_start(&host, from);
        let (g, s) = restored.unwrap_or((0, 0));
        assert!(
            s >= persisted,
            "cycle {cycle}: restored seq {s} is older than the persisted seq {persisted}"
        );
        assert!(
            g >= last_gen,
            "cycle {cycle}: generation went back from {last_gen} to {g}"
        );
        let (live_seq, live_gen) = live.unwrap_or((0, 0));
        if !kill_host {
            assert!(
                s >= live_seq,
                "cycle {cycle}: a client kill lost work: restored seq {s} < live {live_seq}"
            );
            fig.client_kills += 1;
        } else {
            fig.host_kills += 1;
            fig.lost_generations.push(live_gen.saturating_sub(g));
        }
        println!(
            "cycle {cycle:4} {}: persisted seq {persisted:7}, live ({live_gen}, {live_seq}), restored generation {g} seq {s}",
            if kill_host { "host  " } else { "client" },
        );
        last_gen = g;
        (at, pid) = (i, p2);
    }
    host.signal(Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    let lost = &fig.lost_generations;
    println!(
        "triple kill torture: N = {n} ({} client kills, {} host kills), wall {:.1} s; \
         generations lost per host kill: mean {:.1}, max {}; per client kill: 0 (asserted)",
        fig.client_kills,
        fig.host_kills,
        wall.elapsed().as_secs_f64(),
        lost.iter().sum::<u64>() as f64 / lost.len().max(1) as f64,
        lost.iter().max().copied().unwrap_or(0),
    );
}

#[test]
fn every_interval_persists_while_the_client_publishes_flat_out() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("busy.snap");
    let mut cmd = shmsnap(["run", "--state"]);
    cmd.arg(&state)
        .args(HOST_ARGS)
        .arg("--")
        .args(life(&["--side", "256"]))
        .env("RUST_LOG", "shmsnap=debug");
    let mut host = Proc::spawn(cmd);
    let (_, pid, _) = next_start(&host, 0);
    let count = |h: &Proc, what: &str| {
        h.err
            .all()
            .iter()
            .filter(|l| l.contains(what) && l.contains("(interval)"))
            .count()
    };
    poll(SLOW, || {
        (count(&host, "snapshot persisted") >= 20).then_some(())
    })
    .expect("snapshots");
    let (seq_before, _) = live_newest(pid).expect("live");
    poll(SLOW, || {
        let (s, _) = live_newest(pid)?;
        (s > seq_before + 100).then_some(())
    })
    .expect("the client keeps publishing");
    // Counted while the client still publishes (after SIGTERM it stops, and ticks skip).
    let persisted = count(&host, "snapshot persisted");
    let lines = host.err.all();
    host.signal(Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    let skipped: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("snapshot skipped (interval)"))
        .collect();
    // No tick starves or contends. Ticks before the client's first publication skip, and so
    // may a tick on a loaded machine that found nothing new (the client not scheduled for a
    // whole interval): neither is a copy the triple strategy failed to make. A copy dropped by
    // the reclaim race (DESIGN §6: a freeze that landed between the client's load and store
    // of a buffer two publications old) is the protocol working; it must stay rare.
    let reclaimed = skipped
        .iter()
        .filter(|l| l.contains("took the frozen buffer back"))
        .count();
    let bad: Vec<&&String> = skipped
        .iter()
        .filter(|l| {
            !l.contains("not configured")
                && !l.contains("published nothing yet")
                && !l.contains("since the last snapshot")
                && !l.contains("took the frozen buffer back")
        })
        .collect();
    println!(
        "flat-out client: {persisted} interval snapshots persisted, {} interval ticks skipped \
         with nothing new, {reclaimed} copies dropped by the reclaim race, {} skipped otherwise",
        skipped.len() - bad.len() - reclaimed,
        bad.len()
    );
    assert!(bad.is_empty(), "ticks without a snapshot: {bad:?}");
    assert!(persisted >= 20);
    assert!(
        reclaimed * 4 <= persisted,
        "{reclaimed} copies dropped by the reclaim race against {persisted} persisted"
    );
}

#[test]
fn verify_and_restore_refuse_a_triple_image_whose_meta_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("life.snap");
    let client = ["--side", "64", "--generations", "50"];
    let mut host = run_host(
        &state,
        &[
            "--strategy",
            "triple",
            "--restart",
            "never",
            "--size",
            "64K",
        ],
        &life(&client),
    );
    host.out.expect("reached generation 50", "the client's end");
    assert_eq!(host.wait_timeout(SLOW).and_then(|s| s.code()), Some(0));
    assert_verifies(&state);
    let j = inspect(&state).expect("inspect");
    let buffer = j["triple"]["buffer"].as_u64().unwrap();
    assert_eq!(j["triple"]["seq"].as_u64(), Some(50));

    // Turn the persisted buffer's state word into FROZEN and re-footer the file (a sound CRC):
    // only the triple meta check can refuse it.
    let bad = dir.path().join("bad.snap");
    let info = shmsnap_linux::snapshot::verify_path(&state).unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    bytes.truncate(info.image_len as usize);
    let at = 4096 + buffer as usize * 64;
    bytes[at..at + 8].copy_from_slice(&(3u64 << 62 | 9).to_le_bytes());
    std::fs::write(&bad, &bytes).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&bad)
        .unwrap();
    shmsnap_linux::snapshot::write_footer(&f, info.image_len, info.meta).unwrap();
    drop(f);
    let d = shmsnap_done([OsStr::new("verify"), bad.as_os_str()]);
    assert_eq!(d.code, 65, "{}{}", d.stdout, d.stderr);
    assert!(d.stderr.contains("triple image"), "{}", d.stderr);
    // The host refuses to restore it (and does not start the client).
    let mut host = run_host(&bad, &["--strategy", "triple"], &life(&client));
    let code = host.wait_timeout(SLOW).and_then(|s| s.code());
    assert_eq!(code, Some(65), "{}", host.err.text());
    assert!(
        !host.out.text().contains("life: pid"),
        "the client must not start"
    );
}
