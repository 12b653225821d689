//! Issue 4's kill torture: the host runs the primes client with continuous snapshots; the test
//! SIGKILLs the client at random moments and, every few cycles, the host itself (the client
//! then dies of PDEATHSIG) and starts a new host. After every restart the client has verified
//! each restored prime against a sieve (it prints `CORRUPT` and exits 3 otherwise), and the
//! test checks that the restored count K is never below the count in the last snapshot file
//! persisted before the kill.
//!
//! `SHMSNAP_TORTURE_N` cycles (default 20), `SHMSNAP_TORTURE_SEED` to replay a run. The long run:
//!
//! ```text
//! SHMSNAP_TORTURE_N=1000 cargo test -p shmsnap --release --test kill_torture -- --nocapture
//! ```
//!
//! Lost work per kill is measured honestly from outside the client: right before each kill the
//! test reads the client's committed count from its live region (`/proc/PID/fd/3`, mapped
//! read-only, newest entry read with the core reader), then kills. Lost work = that live count
//! minus the restored K, in commits (the client commits `BATCH` primes at a time). For a client
//! kill it must be zero (the host's final snapshot from the surviving memfd); for a host kill
//! it is what happened since the last persisted snapshot (bounded by the interval).
//!
//! The host takes incremental snapshots (the default `--incremental auto`): "what the host
//! persisted" is the chain (base + complete deltas) restored by the test itself, and the test
//! asserts that deltas were taken and that some host restart applied at least one (the host's
//! "restored ... plus N delta(s)" line). The last cycle always kills the host, after the
//! client ran long enough for deltas.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::{Pid, Signal};

const BATCH: u64 = 8;
const HOST_ARGS: &[&str] = &[
    "--strategy",
    "queue",
    "--interval",
    "50ms",
    "--size",
    "2M",
    "--max-backoff",
    "200ms",
];
const CLIENT_ARGS: &[&str] = &["--pause", "1ms", "--batch", "8"];
/// What the client prints when its region is full (it then exits 0).
const FULL: &str = "the tail is full";
const RESTART_LIMIT: Duration = Duration::from_secs(60);

use common::Rng;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// The primes count of the chain on disk (base + complete deltas), restored by the test; `None`
/// if there is no snapshot or the host rotated the chain while it was read.
fn chain_count(state: &Path) -> Option<u64> {
    let footer = shmsnap_linux::snapshot::read_footer_path(state).ok()?;
    let memfd = shmsnap_linux::Memfd::create("torture-chain", footer.image_len).ok()?;
    memfd.seal_against_shrink().ok()?;
    let dir = shmsnap_linux::chain::chain_dir(state);
    shmsnap_linux::chain::restore_chain(state, &dir, &memfd, shmsnap_linux::chain::At::Latest)
        .ok()?;
    let map = shmsnap_linux::Mapping::of_memfd(&memfd, shmsnap_linux::Protection::ReadOnly).ok()?;
    count_in(&map)
}

/// What a host's log says about chains: `(deltas taken, deltas applied by its restore)`.
fn chain_lines(host: &Proc) -> (u64, u64) {
    let text = host.err.text();
    let taken = text.matches("point=delta").count() as u64;
    let applied = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(") plus ")?;
            rest.split_once(" delta(s)")?.0.parse::<u64>().ok()
        })
        .sum();
    (taken, applied)
}

fn start(state: &Path) -> Proc {
    run_host(state, HOST_ARGS, &primes(CLIENT_ARGS))
}

fn remove_state(dir: &Path) {
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
}

#[derive(Default)]
struct Stats {
    client_kills: u64,
    host_kills: u64,
    lost_commits: Vec<u64>,
    restart: Vec<Duration>,
    resets: u64,
    /// Kills where the live count could not be read (counted as 0: lost work understated).
    live_unknown: u64,
    snapshots: u64,
    /// Deltas the hosts took, and deltas their restores applied.
    deltas_taken: u64,
    deltas_applied: u64,
}

impl Stats {
    /// Adds a host's chain figures (call once per host, before it is replaced).
    fn count_chain(&mut self, host: &Proc) {
        let (taken, applied) = chain_lines(host);
        self.deltas_taken += taken;
        self.deltas_applied += applied;
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn kill_torture() {
    let n = env_u64("SHMSNAP_TORTURE_N").unwrap_or(20);
    let seed = env_u64("SHMSNAP_TORTURE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    println!("kill torture: N = {n}, seed {seed} (SHMSNAP_TORTURE_SEED to replay)");
    let mut rng = Rng(seed);
    let dir = tempfile::Builder::new()
        .prefix("shmsnap-torture-")
        .tempdir()
        .unwrap();
    let sdir = dir.path().join("state");
    std::fs::create_dir(&sdir).unwrap();
    let state = sdir.join("torture.snap");
    let wall = Instant::now();
    let mut st = Stats::default();

    let mut host = start(&state);
    let (mut at, mut pid, k0) = next_restored(&host, 0, RESTART_LIMIT).expect("first start");
    assert_eq!(k0, 0);
    let mut cycle = 0;
    while cycle < n {
        let last = cycle + 1 == n;
        // The last kill is the host's, after long enough for a few deltas (50 ms interval).
        std::thread::sleep(Duration::from_millis(
            rng.below(500) + if last { 400 } else { 0 },
        ));
        let kill_host = rng.below(4) == 0 || last;
        // What the host has persisted, and what the client has committed, right before the kill.
        let persisted_snap = inspect(&state);
        let persisted = chain_count(&state)
            .unwrap_or_else(|| persisted_snap.as_ref().map_or(0, snapshot_count));
        let live = live_count(pid);
        let t = Instant::now();
        if kill_host {
            host.kill();
        } else {
            let _ = rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
        }
        let from = if kill_host {
            assert!(
                wait_dead(pid, Duration::from_secs(10)),
                "the client {pid} outlived its SIGKILLed host"
            );
            if state.exists() {
                assert_verifies(&state);
            }
            // `kill` waited for the host's output to end: a finished client's line is there.
            if host.out.text().contains(FULL) {
                at + 1 // the old host's output: its client finished before the kill
            } else {
                st.count_chain(&host);
                host = start(&state);
                0
            }
        } else {
            at + 1
        };
        // The restarted client's line, or the news that the client had filled its region and
        // finished (the host then exits 0): start over with a fresh state.
        let Some((i, line)) = host.out.wait_from(from, RESTART_LIMIT, |l| {
            l.contains(FULL) || l.contains("CORRUPT") || l.starts_with("primes: pid ")
        }) else {
            panic!(
                "no restart within {RESTART_LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
                host.out.text(),
                host.err.text()
            );
        };
        if line.contains(FULL) {
            println!("reset: {line}; starting over with a fresh state");
            st.resets += 1;
            st.snapshots += persisted_snap.as_ref().map_or(0, generation);
            host.kill();
            st.count_chain(&host);
            remove_state(&sdir);
            host = start(&state);
            (at, pid, _) = next_restored(&host, 0, RESTART_LIMIT).expect("fresh start");
            continue;
        }
        cycle += 1;
        let (p2, k) = parse_restored(&line).expect("restored line");
        let restart = t.elapsed();
        assert!(
            k >= persisted,
            "cycle {cycle}: restored {k} primes, but the last persisted snapshot held {persisted}"
        );
        if live.is_none() {
            st.live_unknown += 1;
        }
        let live = live.unwrap_or(0);
        if !kill_host {
            assert!(
                k >= live,
                "cycle {cycle}: client kill lost work: restored {k} < {live} committed"
            );
        }
        let lost = live.saturating_sub(k) / BATCH;
        let g = inspect(&state).as_ref().map_or(0, generation);
        println!(
            "cycle {cycle:4} {}: persisted {persisted:7}, live {live:7}, restored {k:7}, \
             lost {lost:3} commits, restart {:4.0} ms, generation {g}",
            if kill_host { "host  " } else { "client" },
            restart.as_secs_f64() * 1e3
        );
        if kill_host {
            st.host_kills += 1;
            st.lost_commits.push(lost);
        } else {
            st.client_kills += 1;
        }
        st.restart.push(restart);
        (at, pid) = (i, p2);
    }
    st.snapshots += inspect(&state).as_ref().map_or(0, generation);
    host.signal(Signal::TERM);
    let _ = host.wait_timeout(SLOW);
    st.count_chain(&host);
    let total = wall.elapsed();
    let mut lost = st.lost_commits.clone();
    let mut restart_ms: Vec<u64> = st.restart.iter().map(|d| d.as_millis() as u64).collect();
    println!(
        "kill torture: N = {n} ({} client kills, {} host kills, {} fresh starts after a full region), \
         {} bases (+ {} deltas) persisted, wall time {:.1} s, live count unreadable at {} kills",
        st.client_kills,
        st.host_kills,
        st.resets,
        st.snapshots,
        st.deltas_taken,
        total.as_secs_f64(),
        st.live_unknown
    );
    println!(
        "  lost work per client kill: 0 commits (asserted); per host kill: mean {:.1}, median {}, \
         p90 {}, max {} commits ({BATCH} primes each)",
        lost.iter().sum::<u64>() as f64 / lost.len().max(1) as f64,
        percentile(&mut lost, 0.5),
        percentile(&mut lost, 0.9),
        percentile(&mut lost, 1.0),
    );
    println!(
        "  kill to verified restart: median {} ms, p90 {} ms, max {} ms",
        percentile(&mut restart_ms, 0.5),
        percentile(&mut restart_ms, 0.9),
        percentile(&mut restart_ms, 1.0)
    );
    println!(
        "  chains: {} deltas taken, {} applied by host restarts",
        st.deltas_taken, st.deltas_applied
    );
    assert!(
        st.deltas_taken > 0,
        "no delta was taken: the torture did not exercise chains"
    );
    assert!(
        st.deltas_applied > 0,
        "no host restart applied a delta: the torture did not exercise chain restores"
    );
}
