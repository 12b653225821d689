//! The C clients under the real host, SIGKILLed at random — the client alone, or the host
//! (the client then dies of its parent-death signal) and a new host started on the same state:
//!
//! - `kv_counter.c` (queue strategy, transactions with frozen units, incremental snapshots):
//!   every restored state is checked by the C program itself (all 32 counters against the op
//!   count; `CORRUPT` otherwise: a torn state); the restored op count is never below what the
//!   chain on disk held before the kill, and after a client kill never below what the client
//!   had committed (0 lost: the host's final snapshot of the surviving region).
//! - `triple_board.c` (triple strategy): every restored board checked word by word by the
//!   program; never older than the last persisted seq; after a client kill never older than
//!   the live newest publication.
//! - `ack_counter.c` (durability feedback): a count acknowledged as durable is never lost,
//!   whatever is killed, half of the host kills aimed right after an acknowledgement
//!   (the check `host/tests/durable.rs` makes for the Rust client).
//!
//! `SHMSNAP_FFI_KILLS` cycles per test (default 12), `SHMSNAP_FFI_SEED` to replay.

mod common;

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use shmsnap_core::triple::{BufferState, TripleLayout};
use shmsnap_core::Region;
use shmsnap_linux::{Mapping, Memfd, Protection};

const RESTART_LIMIT: Duration = Duration::from_secs(60);

/// Cycles and the seeded generator of one torture, printed for a replay.
fn setup(what: &str) -> (u64, Rng) {
    let n = env_u64("SHMSNAP_FFI_KILLS").unwrap_or(12);
    let seed = Rng::seed("SHMSNAP_FFI_SEED");
    println!("{what}: {n} kills, seed {seed} (SHMSNAP_FFI_SEED to replay)");
    (n, Rng(seed))
}

/// The newest start line of a C client at index `from` or later: (index, pid, the rest of the
/// line after the pid); panics on `CORRUPT` (a torn or stale state the program detected).
fn next_start(host: &Proc, prefix: &str, from: usize) -> (usize, i32, String) {
    let start = format!("{prefix}: pid ");
    let Some((i, line)) = host.out.wait_from(from, RESTART_LIMIT, |l| {
        l.contains("CORRUPT") || l.starts_with(&start)
    }) else {
        panic!(
            "no client start within {RESTART_LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
            host.out.text(),
            host.err.text()
        );
    };
    assert!(
        !line.contains("CORRUPT"),
        "the client found its state torn: {line}"
    );
    let rest = line.strip_prefix(&start).unwrap();
    let (pid, rest) = rest.split_once(' ').expect("pid");
    (i, pid.parse().expect("pid"), rest.to_owned())
}

/// The client's region, mapped read-only through `/proc/PID/fd/3`.
fn live_map(pid: i32) -> Option<(Memfd, Mapping)> {
    let f = File::open(format!("/proc/{pid}/fd/3")).ok()?;
    let memfd = Memfd::from_fd(f.into()).ok()?;
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).ok()?;
    Some((memfd, map))
}

/// The op count in the newest root of a kv region (word 0 of the payload), read with the
/// core's validated reader; retried if the entry is overwritten meanwhile.
fn kv_ops(map: &Mapping) -> Option<u64> {
    let region = Region::open(map.words()).ok()?;
    for _ in 0..100 {
        let Some(d) = region.newest() else {
            return Some(0);
        };
        let mut b = [0u8; 80];
        if let Ok(80) = region.read_payload(&d, &mut b) {
            return Some(u64::from_le_bytes(b[..8].try_into().unwrap()));
        }
    }
    None
}

/// The op count of the chain on disk (base + complete deltas, restored by the test), or 0.
fn kv_chain_ops(state: &Path) -> u64 {
    let Ok(footer) = shmsnap_linux::snapshot::read_footer_path(state) else {
        return 0;
    };
    let memfd = Memfd::create("ffi-chain", footer.image_len).unwrap();
    memfd.seal_against_shrink().unwrap();
    let dir = shmsnap_linux::chain::chain_dir(state);
    let at = shmsnap_linux::chain::At::Latest;
    // The host may rotate the chain while it is read: then the floor is 0 (a weaker check
    // this cycle, never a false failure).
    if shmsnap_linux::chain::restore_chain(state, &dir, &memfd, at).is_err() {
        return 0;
    }
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
    kv_ops(&map).unwrap_or(0)
}

fn state_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn c_kv_client_loses_nothing_on_client_kills_and_nothing_persisted_on_host_kills() {
    let exe = compile("kv_counter", "", &[]);
    let (n, mut rng) = setup("c kv torture");
    let dir = tempfile::tempdir().unwrap();
    let state = state_in(&dir, "kv.snap");
    let args = [
        "--strategy",
        "queue",
        "--interval",
        "50ms",
        "--size",
        "2M",
        "--max-backoff",
        "200ms",
    ];
    let client = [exe.as_os_str(), OsStr::new("1000")];
    let start = || run_host(&state, &args, &client);
    let wall = Instant::now();
    let mut host = start();
    let (mut at, mut pid, first) = next_start(&host, "c-kv", 0);
    assert!(first.starts_with("restored 0 ops"), "{first}");
    let (mut client_kills, mut host_kills, mut lost) = (0, 0, Vec::new());
    // Deltas the hosts logged: the C client's write tracking (registered by
    // `shmsnap_region_open`) is what lets the host take them.
    let mut deltas = 0;
    let count_deltas = |host: &Proc| host.err.text().matches("point=delta").count();
    for cycle in 1..=n {
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        let kill_host = rng.below(4) == 0 || cycle == n;
        let persisted = kv_chain_ops(&state);
        let live = live_map(pid).and_then(|(_m, map)| kv_ops(&map));
        if kill_host {
            host.kill();
            assert!(wait_dead(pid, SLOW), "the client {pid} outlived its host");
            assert_verifies(&state);
            deltas += count_deltas(&host);
            host = start();
        } else {
            kill_pid(pid);
        }
        let from = if kill_host { 0 } else { at + 1 };
        let (i, p2, rest) = next_start(&host, "c-kv", from);
        let ops: u64 = rest
            .strip_prefix("restored ")
            .and_then(|r| r.split_once(' '))
            .map(|(k, _)| k.parse().expect("ops"))
            .expect("a restored line");
        assert!(rest.ends_with("all 32 counters correct"), "{rest}");
        assert!(
            ops >= persisted,
            "cycle {cycle}: restored {ops} ops < {persisted} on disk"
        );
        let live = live.expect("the live region was readable before the kill");
        if kill_host {
            host_kills += 1;
            lost.push(live.saturating_sub(ops));
        } else {
            client_kills += 1;
            assert!(
                ops >= live,
                "cycle {cycle}: a client kill lost work: {ops} < {live}"
            );
        }
        println!(
            "cycle {cycle:3} {}: on disk {persisted:7}, live {live:7}, restored {ops:7}",
            if kill_host { "host  " } else { "client" }
        );
        (at, pid) = (i, p2);
    }
    host.signal(rustix::process::Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    deltas += count_deltas(&host);
    println!(
        "c kv torture: {client_kills} client kills (0 lost, asserted), {host_kills} host kills \
         (ops lost since the last snapshot: max {}), {n} restored states verified by the C \
         client, 0 torn; {deltas} deltas taken; {:.1} s",
        lost.iter().max().copied().unwrap_or(0),
        wall.elapsed().as_secs_f64()
    );
    assert!(host_kills >= 1 && client_kills + host_kills == n);
    assert!(
        deltas > 0,
        "no delta was taken: the C client's write tracking did not work"
    );
}

/// The newest published `(seq, generation)` of a live triple client: the READY or FROZEN
/// buffer with the highest seq and its board's generation word, re-checked so a reclaimed
/// buffer is not read.
fn live_board(pid: i32) -> Option<(u64, u64)> {
    let (_m, map) = live_map(pid)?;
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
        let generation = w[(layout.buffer_range(i).start / 8) as usize + 1].load(Ordering::SeqCst);
        if w[layout.state_word(i)].load(Ordering::SeqCst) == v {
            return Some((seq, generation));
        }
    }
    None
}

/// `(generation, seq)` of a `c-triple` start line (`(0, 0)` for a fresh board).
fn parse_board(rest: &str) -> (u64, u64) {
    if rest.starts_with("starts a fresh board") {
        return (0, 0);
    }
    let r = rest.strip_prefix("restored generation ").expect(rest);
    let (g, r) = r.split_once(" (seq ").expect(rest);
    let (s, r) = r.split_once(')').expect(rest);
    assert!(r.contains("board verified"), "{rest}");
    (g.parse().unwrap(), s.parse().unwrap())
}

#[test]
fn c_triple_client_restores_a_verified_board_never_older_than_persisted() {
    let exe = compile("triple_board", "", &[]);
    let (n, mut rng) = setup("c triple torture");
    let dir = tempfile::tempdir().unwrap();
    let state = state_in(&dir, "board.snap");
    let args = [
        "--strategy",
        "triple",
        "--interval",
        "50ms",
        "--size",
        "1M",
        "--max-backoff",
        "200ms",
    ];
    let client = [exe.as_os_str(), OsStr::new("200")];
    let start = || run_host(&state, &args, &client);
    let wall = Instant::now();
    let mut host = start();
    let (mut at, mut pid, _) = next_start(&host, "c-triple", 0);
    let (mut floor, mut last_gen) = (0, 0);
    let (mut client_kills, mut host_kills) = (0, 0);
    for cycle in 1..=n {
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        let kill_host = rng.below(3) == 0 || cycle == n;
        let live = live_board(pid);
        if kill_host {
            host.kill();
            assert!(wait_dead(pid, SLOW), "the client {pid} outlived its host");
            // What the killed host logged as durable last (it cannot log after the kill).
            floor = floor.max(last_persisted_seq(&host));
            if state.exists() {
                assert_verifies(&state);
            }
            host = start();
        } else {
            floor = floor.max(last_persisted_seq(&host));
            kill_pid(pid);
        }
        let from = if kill_host { 0 } else { at + 1 };
        let (i, p2, rest) = next_start(&host, "c-triple", from);
        let (g, s) = parse_board(&rest);
        assert!(
            s >= floor,
            "cycle {cycle}: restored seq {s} < persisted seq {floor}"
        );
        assert!(
            g >= last_gen,
            "cycle {cycle}: generation went back from {last_gen} to {g}"
        );
        let (live_seq, live_gen) = live.expect("the live region was readable before the kill");
        if kill_host {
            host_kills += 1;
        } else {
            client_kills += 1;
            assert!(
                s >= live_seq,
                "cycle {cycle}: a client kill lost work: seq {s} < {live_seq}"
            );
        }
        println!(
            "cycle {cycle:3} {}: persisted seq {floor:7}, live ({live_gen}, {live_seq}), restored generation {g} seq {s}",
            if kill_host { "host  " } else { "client" }
        );
        (at, pid, last_gen) = (i, p2, g);
    }
    host.signal(rustix::process::Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    println!(
        "c triple torture: {client_kills} client kills (0 lost, asserted), {host_kills} host \
         kills, {n} restored boards verified by the C client, 0 torn; {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    assert!(host_kills >= 1 && client_kills + host_kills == n);
}

/// The acknowledged counts among `lines`.
fn acks(lines: &[String]) -> impl Iterator<Item = u64> + '_ {
    lines.iter().filter_map(|l| {
        l.strip_prefix("c-ack: acknowledged ")?
            .split_once(' ')
            .and_then(|(n, _)| n.parse().ok())
    })
}

/// The count in the newest entry of a live ack region.
fn live_count(pid: i32) -> Option<u64> {
    let (_m, map) = live_map(pid)?;
    let region = Region::open(map.words()).ok()?;
    for _ in 0..100 {
        let Some(d) = region.newest() else {
            return Some(0);
        };
        let mut b = [0u8; 16];
        if let Ok(16) = region.read_payload(&d, &mut b) {
            return Some(u64::from_le_bytes(b[..8].try_into().unwrap()));
        }
    }
    None
}

#[test]
fn c_ack_client_never_loses_an_acknowledged_commit() {
    let exe = compile("ack_counter", "", &[]);
    let (n, mut rng) = setup("c durable torture");
    let dir = tempfile::tempdir().unwrap();
    let state = state_in(&dir, "ack.snap");
    // A long interval: acknowledgements come from the client's prompt requests.
    let args = [
        "--strategy",
        "queue",
        "--interval",
        "2s",
        "--size",
        "2M",
        "--max-backoff",
        "200ms",
    ];
    let client = [exe.as_os_str(), OsStr::new("4"), OsStr::new("1000")];
    let start = || run_host(&state, &args, &client);
    let wall = Instant::now();
    let mut host = start();
    let (mut at, mut pid, _) = next_start(&host, "c-ack", 0);
    // The largest count acknowledged so far, over all hosts; lines of this host scanned.
    let (mut max_acked, mut scanned, mut acknowledged) = (0, 0, 0u64);
    let (mut client_kills, mut host_kills, mut aimed, mut naive_lost) = (0, 0, 0, 0);
    for cycle in 1..=n {
        let kill_host = rng.below(3) == 0 || cycle == n;
        let aim = kill_host && rng.below(2) == 0;
        if aim {
            let from = host.out.len();
            host.out.wait_from(from, RESTART_LIMIT, |l| {
                l.starts_with("c-ack: acknowledged ")
            });
        } else {
            std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        }
        let live = live_count(pid);
        if kill_host {
            host.kill();
            assert!(wait_dead(pid, SLOW), "the client {pid} outlived its host");
            let lines = host.out.all();
            let tail = &lines[scanned.min(lines.len())..];
            max_acked = max_acked.max(acks(tail).max().unwrap_or(0));
            acknowledged += acks(tail).count() as u64;
            host = start();
            scanned = 0;
        } else {
            kill_pid(pid);
        }
        let from = if kill_host { 0 } else { at + 1 };
        let (i, p2, rest) = next_start(&host, "c-ack", from);
        let lines = host.out.all();
        let before = &lines[scanned.min(i)..i];
        max_acked = max_acked.max(acks(before).max().unwrap_or(0));
        acknowledged += acks(before).count() as u64;
        scanned = i + 1;
        let k: u64 = rest
            .strip_prefix("restored ")
            .expect(&rest)
            .parse()
            .expect("count");
        assert!(
            k >= max_acked,
            "cycle {cycle}: restored {k}, but {max_acked} was acknowledged as durable"
        );
        if kill_host {
            host_kills += 1;
            aimed += u64::from(aim);
            naive_lost += u64::from(live.is_some_and(|l| l > k));
        } else {
            client_kills += 1;
            let live = live.expect("the live region was readable before the kill");
            assert!(
                k >= live,
                "cycle {cycle}: a client kill lost work: {k} < {live}"
            );
        }
        println!(
            "cycle {cycle:3} {:12}: acknowledged up to {max_acked:6}, restored {k:6}",
            if aim {
                "host (aimed)"
            } else if kill_host {
                "host"
            } else {
                "client"
            }
        );
        (at, pid) = (i, p2);
    }
    host.signal(rustix::process::Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    println!(
        "c durable torture: {client_kills} client kills, {host_kills} host kills ({aimed} right \
         after an acknowledgement); {acknowledged} acknowledgements, 0 acknowledged lost \
         (asserted); acknowledging at commit time would have lost work at {naive_lost} host \
         kills; {:.1} s",
        wall.elapsed().as_secs_f64()
    );
    assert!(acknowledged > 0, "no acknowledgement was ever printed");
}
