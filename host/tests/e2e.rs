//! End-to-end tests of `shmsnap run`, `inspect` and `verify` against the built binary
//! (issue 4's behaviours 1–5 and 7; the systemd fd store is in `systemd.rs`, the kill torture
//! in `kill_torture.rs`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shmsnap-e2e-")
        .tempdir()
        .unwrap()
}

/// The pid in the host's `client started (pid N)` log lines, in order.
fn started_pids(h: &Proc) -> Vec<i32> {
    h.err
        .all()
        .iter()
        .filter_map(|l| {
            let rest = l.split_once("client started (pid ")?.1;
            rest.split_once(')')?.0.parse().ok()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// 1. Restore before start; fd 3 and LISTEN_*; the exit strategy works for any client.
// ---------------------------------------------------------------------------------------

#[test]
fn exit_strategy_restores_before_start_and_passes_fd3_the_systemd_way() {
    let dir = tempdir();
    let state = dir.path().join("shell.snap");
    let write = r#"echo "fds=$LISTEN_FDS names=$LISTEN_FDNAMES pid=$LISTEN_PID self=$$"
echo "fd3=$(readlink /proc/self/fd/3)"
printf hello 1<>/proc/self/fd/3"#;
    let mut h = run_host(
        &state,
        &["--size", "1M", "--restart", "never"],
        &["/bin/sh", "-c", write],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let out = h.out.all();
    let env_line = &out[0];
    let field = |k: &str| -> String {
        env_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} missing in {env_line:?}"))
            .to_owned()
    };
    assert_eq!(field("fds="), "1");
    assert_eq!(field("names="), "SHM_SHARED_FD");
    let listen_pid: i32 = field("pid=").parse().expect("LISTEN_PID set");
    assert_eq!(
        listen_pid,
        field("self=").parse::<i32>().unwrap(),
        "LISTEN_PID must be the client's own pid"
    );
    assert_eq!(
        started_pids(&h),
        [listen_pid],
        "LISTEN_PID is the pid the host started"
    );
    assert!(
        out[1].starts_with("fd3=/memfd:"),
        "fd 3 must be the memfd: {}",
        out[1]
    );
    assert_verifies(&state);

    // Second run: a custom fd name; the client reads the bytes back before writing anything,
    // so they were restored before it started.
    let read = r#"echo "names=$LISTEN_FDNAMES"; echo "got=$(head -c 5 /proc/self/fd/3)""#;
    let mut h2 = run_host(
        &state,
        &["--restart", "never", "--fd-name", "mystate"],
        &["/bin/sh", "-c", read],
    );
    assert_eq!(h2.exit_code(), 0, "{}", h2.err.text());
    assert_eq!(h2.out.all(), ["names=mystate", "got=hello"]);
    let log = h2.err.all();
    let restored = log.iter().position(|l| l.contains("restored")).unwrap();
    let started = log
        .iter()
        .position(|l| l.contains("client started"))
        .unwrap();
    assert!(
        restored < started,
        "restore must precede the start:\n{log:?}"
    );
    assert_verifies(&state);
    let j = inspect(&state).unwrap();
    assert_eq!(j["footer"]["strategy"], "exit");
    assert_eq!(generation(&j), 2);
    assert_eq!(j["footer"]["image_len"], 1 << 20);
}

// ---------------------------------------------------------------------------------------
// 2. Queue strategy: continuous snapshots, none when idle, SIGUSR1, idle CPU.
// ---------------------------------------------------------------------------------------

#[test]
fn queue_snapshots_continuously_while_the_client_commits() {
    let dir = tempdir();
    let state = dir.path().join("primes.snap");
    let mut h = run_host(
        &state,
        &["--strategy", "queue", "--interval", "100ms", "--size", "2M"],
        &primes(&["--pause", "2ms"]),
    );
    next_restored(&h, 0, SLOW).expect("client started");
    // Three generations with strictly growing counts, taken while the client runs.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let ok = poll(SLOW, || {
        let j = inspect(&state)?;
        let (g, c) = (generation(&j), snapshot_count(&j));
        if seen.last().is_none_or(|&(lg, _)| lg != g) {
            seen.push((g, c));
        }
        (seen.len() >= 3).then_some(())
    });
    assert!(ok.is_some(), "snapshots seen: {seen:?}\n{}", h.err.text());
    assert!(h.running(), "the client is still running");
    for w in seen.windows(2) {
        assert!(w[1].0 > w[0].0 && w[1].1 > w[0].1, "{seen:?}");
    }
    println!("(generation, count) while running: {seen:?}");
    // SIGTERM: forwarded; primes dies of it; a requested stop with a saved state exits 0.
    h.signal(Signal::TERM);
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert_verifies(&state);
    let last = inspect(&state).unwrap();
    assert!(snapshot_count(&last) >= seen.last().unwrap().1);
}

fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = s.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn queue_idle_host_takes_no_snapshots_and_uses_almost_no_cpu() {
    let dir = tempdir();
    let state = dir.path().join("idle.snap");
    let h = run_host(
        &state,
        &["--strategy", "queue", "--interval", "100ms", "--size", "1M"],
        &primes(&["--limit", "640", "--linger", "1h"]),
    );
    h.out.expect("reached 640 primes", "client");
    let j = poll(SLOW, || {
        inspect(&state).filter(|j| snapshot_count(j) == 640)
    })
    .unwrap_or_else(|| panic!("no snapshot of 640 primes:\n{}", h.err.text()));
    let g = generation(&j);
    let bytes = std::fs::read(&state).unwrap();

    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let t = Instant::now();
    let c0 = cpu_ticks(h.pid());
    std::thread::sleep(Duration::from_secs(3));
    let c1 = cpu_ticks(h.pid());
    let share = (c1 - c0) as f64 / ticks / t.elapsed().as_secs_f64();
    println!(
        "idle host: {:.2} % of a core over {:.1} s (interval 100ms, {} ticks)",
        share * 100.0,
        t.elapsed().as_secs_f64(),
        c1 - c0
    );
    assert!(
        share < 0.03,
        "idle host used {:.2} % of a core",
        share * 100.0
    );
    // ~30 intervals passed with nothing committed: no new snapshot, file unchanged.
    let j2 = inspect(&state).unwrap();
    assert_eq!(
        generation(&j2),
        g,
        "a snapshot was taken with nothing committed"
    );
    assert_eq!(std::fs::read(&state).unwrap(), bytes);
}

#[test]
fn sigusr1_takes_a_snapshot_now() {
    let dir = tempdir();
    let state = dir.path().join("usr1.snap");
    let h = run_host(
        &state,
        &["--strategy", "queue", "--interval", "1h", "--size", "1M"],
        &primes(&["--limit", "640", "--linger", "1h"]),
    );
    h.out.expect("reached 640 primes", "client");
    assert!(!state.exists(), "no snapshot before the first interval");
    let t = Instant::now();
    h.signal(Signal::USR1);
    let j = poll(Duration::from_secs(10), || inspect(&state))
        .unwrap_or_else(|| panic!("SIGUSR1 made no snapshot:\n{}", h.err.text()));
    println!("SIGUSR1 -> snapshot in {:?}", t.elapsed());
    assert_eq!(snapshot_count(&j), 640);
    assert_eq!(generation(&j), 1);
    assert_verifies(&state);
    // Nothing committed since: a second SIGUSR1 persists nothing.
    h.signal(Signal::USR1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(generation(&inspect(&state).unwrap()), 1);
}

// ---------------------------------------------------------------------------------------
// 3. Client death, restart with backoff, no orphans, signals and exit statuses.
// ---------------------------------------------------------------------------------------

#[test]
fn client_sigkill_gets_a_final_snapshot_and_a_restart_with_backoff() {
    let dir = tempdir();
    let state = dir.path().join("kill.snap");
    let h = run_host(
        &state,
        &[
            "--strategy",
            "queue",
            "--interval",
            "1h", // only the final snapshots at client death count here
            "--size",
            "2M",
        ],
        &primes(&["--pause", "2ms"]),
    );
    let (mut at, mut pid, mut k) = next_restored(&h, 0, SLOW).expect("client started");
    assert_eq!(k, 0);
    for round in 1..=3 {
        // Let it commit, read what it has committed, SIGKILL it.
        poll(SLOW, || live_count(pid).filter(|&c| c > k)).expect("client commits");
        let live = live_count(pid).expect("live count");
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL)
            .unwrap();
        let (i, p2, k2) = next_restored(&h, at + 1, SLOW)
            .unwrap_or_else(|| panic!("no restart:\n{}", h.err.text()));
        println!("kill {round}: live count {live} before SIGKILL, restarted with {k2}");
        assert_ne!(p2, pid);
        assert!(
            k2 >= live,
            "the final snapshot lost work: {k2} < {live} committed before the kill"
        );
        assert_verifies(&state);
        (at, pid, k) = (i, p2, k2);
    }
    // Backoff: each quick failure doubles the pause (100ms, 200ms, 400ms).
    let pauses: Vec<String> = h
        .err
        .all()
        .iter()
        .filter_map(|l| Some(l.split_once("restarting the client in ")?.1.to_owned()))
        .collect();
    assert_eq!(pauses, ["100ms", "200ms", "400ms"], "{}", h.err.text());
    let j = inspect(&state).unwrap();
    assert_eq!(generation(&j), 3, "one final snapshot per death");
}

#[test]
fn no_orphans_when_the_client_dies() {
    let dir = tempdir();
    let state = dir.path().join("tree.snap");
    let script =
        r#"sleep 1000 & echo "child $!"; sleep 1000 & echo "child $!"; echo "me $$"; wait"#;
    let mut h = run_host(
        &state,
        &["--size", "64K", "--restart", "never"],
        &["/bin/sh", "-c", script],
    );
    h.out.expect("me ", "client");
    let out = h.out.all();
    let pid_of = |prefix: &str| -> Vec<i32> {
        out.iter()
            .filter_map(|l| l.strip_prefix(prefix)?.parse().ok())
            .collect()
    };
    let kids = pid_of("child ");
    let me = pid_of("me ")[0];
    let _guard = KillOnDrop(kids.clone());
    assert_eq!(kids.len(), 2);
    assert!(kids.iter().all(|&p| alive(p)));
    rustix::process::kill_process(rustix::process::Pid::from_raw(me).unwrap(), Signal::KILL)
        .unwrap();
    assert_eq!(h.exit_code(), 128 + 9, "{}", h.err.text());
    for p in kids {
        assert!(
            wait_dead(p, Duration::from_secs(5)),
            "grandchild {p} outlived its client"
        );
    }
    assert_verifies(&state);
}

#[test]
fn sigterm_and_sigint_are_forwarded_and_a_saved_stop_exits_0() {
    for (sig, code) in [(Signal::TERM, 7), (Signal::INT, 8)] {
        let dir = tempdir();
        let state = dir.path().join("sig.snap");
        let script = format!(
            r#"trap "exit {code}" {}; echo ready; while :; do sleep 0.05; done"#,
            if sig == Signal::TERM { "TERM" } else { "INT" }
        );
        let mut h = run_host(&state, &["--size", "64K"], &["/bin/sh", "-c", &script]);
        h.out.expect("ready", "client");
        h.signal(sig);
        // A requested stop whose final snapshot was persisted is a success, whatever the
        // client returned (its status is logged).
        assert_eq!(h.exit_code(), 0, "{sig:?}: {}", h.err.text());
        let err = h.err.text();
        assert!(
            err.contains(&format!("forwarding signal {}", sig.as_raw())),
            "{err}"
        );
        assert!(err.contains(&format!("exited with status {code}")), "{err}");
        assert!(err.contains("snapshot persisted (client exited)"), "{err}");
        assert_eq!(started_pids(&h).len(), 1, "no restart after a stop signal");
        assert_verifies(&state);
    }
}

#[test]
fn exit_status_is_forwarded_per_restart_policy() {
    let dir = tempdir();
    let state = dir.path().join("st.snap");
    let mut h = run_host(
        &state,
        &["--size", "64K", "--restart", "never"],
        &["/bin/sh", "-c", "exit 5"],
    );
    assert_eq!(h.exit_code(), 5);
    assert_eq!(started_pids(&h).len(), 1);
    // on-failure: a clean exit ends the host with 0, no restart.
    let mut h = run_host(
        &state,
        &["--restart", "on-failure"],
        &["/bin/sh", "-c", "exit 0"],
    );
    assert_eq!(h.exit_code(), 0);
    assert_eq!(started_pids(&h).len(), 1);
    // on-failure: a failing client is restarted (here until it succeeds on its third run,
    // counted in the shared memory itself).
    let count = r#"n=$(head -c 1 /proc/self/fd/3 | od -An -tu1 | tr -d ' '); n=$((n+1))
printf "\\$(printf %o $n)" 1<>/proc/self/fd/3; echo "run $n"; [ $n -ge 3 ]"#;
    let mut h = run_host(
        &state,
        &["--restart", "on-failure"],
        &["/bin/sh", "-c", count],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert_eq!(h.out.all(), ["run 1", "run 2", "run 3"]);
    assert_eq!(started_pids(&h).len(), 3);
}

#[test]
fn stop_timeout_kills_a_client_that_ignores_sigterm() {
    let dir = tempdir();
    let state = dir.path().join("stubborn.snap");
    let mut h = run_host(
        &state,
        &["--size", "64K", "--stop-timeout", "300ms"],
        &[
            "/bin/sh",
            "-c",
            r#"trap "" TERM; echo ready; while :; do sleep 0.05; done"#,
        ],
    );
    h.out.expect("ready", "client");
    let t = Instant::now();
    h.signal(Signal::TERM);
    // Killed after the timeout, final snapshot persisted: the requested stop saved the state.
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert!(h.err.text().contains("exited with status 137"));
    let took = t.elapsed();
    println!("stubborn client killed after {took:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(h.err.text().contains("did not exit within"));
}

// ---------------------------------------------------------------------------------------
// 4. Host SIGKILLed: the client dies too; the next start restores the last persisted state.
// ---------------------------------------------------------------------------------------

#[test]
fn host_sigkill_takes_the_client_along_and_the_next_start_restores() {
    let dir = tempdir();
    let state = dir.path().join("host.snap");
    let args = ["--strategy", "queue", "--interval", "100ms", "--size", "2M"];
    let client = primes(&["--pause", "2ms"]);
    let mut h = run_host(&state, &args, &client);
    let (_, pid, _) = next_restored(&h, 0, SLOW).unwrap();
    let j = poll(SLOW, || inspect(&state).filter(|j| generation(j) >= 3)).expect("snapshots");
    let persisted = snapshot_count(&j);
    let live = live_count(pid).unwrap();
    h.kill();
    assert!(
        wait_dead(pid, Duration::from_secs(10)),
        "the client outlived its host (PDEATHSIG)"
    );
    assert_verifies(&state);
    let h2 = run_host(&state, &args, &client);
    let (_, _, k) =
        next_restored(&h2, 0, SLOW).unwrap_or_else(|| panic!("no restart:\n{}", h2.err.text()));
    println!("persisted {persisted} before the kill, live {live}, restored {k}");
    assert!(
        k >= persisted,
        "restored {k} < {persisted} in the last persisted snapshot"
    );
    assert!(h2.err.text().contains("restored"));
}

// ---------------------------------------------------------------------------------------
// 5. Bad input: one clear line, the documented exit code, no file changed.
// ---------------------------------------------------------------------------------------

/// Runs the host over `dir` and checks the failure: exit `code`, exactly one `shmsnap:` line
/// on stderr containing every `needles`, and every file of `dir` byte-for-byte unchanged.
fn assert_refused(
    dir: &Path,
    state: &Path,
    args: &[&str],
    client: &[&str],
    code: i32,
    needles: &[&str],
) -> String {
    let before = snapshot_dir(dir);
    let mut c = shmsnap(["run", "--state"]);
    // The default log level, as a user would run it.
    c.env_remove("RUST_LOG");
    c.arg(state).args(args).arg("--").args(client);
    let mut h = Proc::spawn(c);
    let got = h.exit_code();
    let err = h.err.all();
    let lines: Vec<&String> = err.iter().filter(|l| l.starts_with("shmsnap: ")).collect();
    assert_eq!(got, code, "exit code; stderr:\n{}", err.join("\n"));
    assert_eq!(lines.len(), 1, "one error line: {err:#?}");
    for n in needles {
        assert!(lines[0].contains(n), "{:?} lacks {n:?}", lines[0]);
    }
    assert_eq!(
        snapshot_dir(dir),
        before,
        "files changed by a refused start"
    );
    println!("exit {got}: {}", lines[0]);
    lines[0].clone()
}

/// A queue snapshot of 640 primes in `state`.
fn make_primes_snapshot(state: &Path) {
    let mut h = run_host(
        state,
        &["--strategy", "queue", "--size", "1M", "--restart", "never"],
        &primes(&["--limit", "640"]),
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert_eq!(snapshot_count(&inspect(state).unwrap()), 640);
}

#[test]
fn bad_snapshot_files_are_refused_and_left_alone() {
    let dir = tempdir();
    let good = dir.path().join("good.snap");
    make_primes_snapshot(&good);
    let bytes = std::fs::read(&good).unwrap();
    let client = primes(&[]);
    let queue = ["--strategy", "queue"];

    // A flipped byte in the image (in the first prime unit of the tail).
    let corrupt = dir.path().join("corrupt.snap");
    let mut b = bytes.clone();
    b[12288 + 8] ^= 0x40;
    std::fs::write(&corrupt, &b).unwrap();
    assert_refused(
        dir.path(),
        &corrupt,
        &queue,
        &client,
        65,
        &["corrupt.snap", "corrupt"],
    );
    let v = shmsnap_done([std::ffi::OsStr::new("verify"), corrupt.as_os_str()]);
    assert_eq!(v.code, 65, "verify must fail too: {}", v.stdout);
    assert!(v.stderr.contains("corrupt.snap"), "{}", v.stderr);

    // Truncated in the middle.
    let truncated = dir.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        dir.path(),
        &truncated,
        &queue,
        &client,
        65,
        &["truncated.snap", "footer"],
    );
    // Truncated by a few bytes only (footer cut).
    let short = dir.path().join("short.snap");
    std::fs::write(&short, &bytes[..bytes.len() - 3]).unwrap();
    assert_refused(dir.path(), &short, &queue, &client, 65, &["short.snap"]);

    // A foreign file.
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "this is not a snapshot\n".repeat(1000)).unwrap();
    assert_refused(
        dir.path(),
        &foreign,
        &queue,
        &client,
        65,
        &["notes.txt", "not a snapshot"],
    );

    // --size smaller than the snapshot: a minimum, the snapshot is restored at its own size.
    let mut h = run_host(
        &good,
        &[
            "--strategy",
            "queue",
            "--size",
            "512K",
            "--restart",
            "never",
        ],
        &primes(&["--limit", "640"]),
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let err = h.err.text();
    assert!(
        err.contains("larger than --size 524288: the region is 1048576 bytes"),
        "{err}"
    );
    assert!(
        h.out.text().contains("restored 640 primes"),
        "{}",
        h.out.text()
    );
    assert_verifies(&good);
}

#[test]
fn bad_directories_and_commands_are_refused() {
    let dir = tempdir();
    // Missing directory.
    assert_refused(
        dir.path(),
        &dir.path().join("missing/state.snap"),
        &[],
        &["true"],
        73,
        &["missing", "No such file or directory"],
    );
    // A regular file where the directory should be.
    std::fs::write(dir.path().join("file"), "x").unwrap();
    assert_refused(
        dir.path(),
        &dir.path().join("file/state.snap"),
        &[],
        &["true"],
        73,
        &["file", "Not a directory"],
    );
    // Command not found (the state file is not created).
    assert_refused(
        dir.path(),
        &dir.path().join("s.snap"),
        &[],
        &["no-such-command-xyz"],
        127,
        &["no-such-command-xyz", "not found"],
    );
    assert_refused(
        dir.path(),
        &dir.path().join("s.snap"),
        &[],
        &["/nonexistent/bin/prog"],
        127,
        &["/nonexistent/bin/prog"],
    );
}

/// Root ignores directory permissions, so "unwritable" is made with the immutable attribute
/// (`chattr +i`), undone on drop.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(self.0)
            .status();
    }
}

#[test]
fn unwritable_directory_is_refused() {
    let dir = tempdir();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let state = ro.join("state.snap");
    make_primes_snapshot(&state);
    let made = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&ro)
        .status();
    let probe = match made {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("chattr +i exited with {s}")),
        Err(e) => Err(format!("chattr: {e}")),
    };
    let hint = "Making a directory unwritable for root needs chattr (Debian: e2fsprogs) on a \
                file system with the immutable flag (ext4).";
    if shmsnap_testkit::require::require("chattr-immutable", hint, probe).is_none() {
        return;
    }
    let _undo = Immutable(&ro);
    let probe = match std::fs::write(ro.join("probe"), "x") {
        Ok(()) => Err("the immutable directory is still writable".to_owned()),
        Err(_) => Ok(()),
    };
    if shmsnap_testkit::require::require("chattr-immutable", hint, probe).is_none() {
        return;
    }
    assert_refused(
        dir.path(),
        &state,
        &["--strategy", "queue"],
        &primes(&[]),
        73,
        &["ro", "state.snap"],
    );
}

#[test]
fn region_too_small_for_the_layout_is_reported_by_the_client() {
    let dir = tempdir();
    let state = dir.path().join("small.snap");
    let mut h = run_host(
        &state,
        &["--strategy", "queue", "--size", "8K", "--restart", "never"],
        &primes(&[]),
    );
    assert_eq!(h.exit_code(), 78, "{}", h.err.text());
    let err = h.err.all();
    let lines: Vec<&String> = err.iter().filter(|l| l.starts_with("shmsnap: ")).collect();
    assert_eq!(lines.len(), 1, "{err:#?}");
    assert!(
        lines[0].contains("too small") && lines[0].contains("8192") && lines[0].contains("--size"),
        "{}",
        lines[0]
    );
    assert!(!state.exists(), "nothing to snapshot: no file created");
}

#[test]
fn a_corrupt_newest_base_falls_back_to_the_older_generation_and_is_kept_aside() {
    let dir = tempdir();
    let state = dir.path().join("gen.snap");
    for word in ["first", "secnd"] {
        let mut h = run_host(
            &state,
            &["--size", "64K", "--restart", "never", "--keep", "2"],
            &[
                "/bin/sh",
                "-c",
                &format!("printf {word} 1<>/proc/self/fd/3"),
            ],
        );
        assert_eq!(h.exit_code(), 0);
    }
    let older = dir.path().join("gen.snap.1");
    assert!(older.exists());
    let good = std::fs::read(&state).unwrap();
    let mut bad = good.clone();
    bad[2] ^= 1;
    std::fs::write(&state, &bad).unwrap();
    let read = ["/bin/sh", "-c", "echo got=$(head -c 5 /proc/self/fd/3)"];
    // A corrupt base (its CRC) is skipped without --fallback (issue 20): the older
    // generation comes back, the bad file is moved aside intact.
    let mut h = run_host(&state, &["--restart", "never", "--keep", "2"], &read);
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert_eq!(h.out.all(), ["got=first"]);
    let aside: Vec<_> = snapshot_dir(dir.path())
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("corrupt"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file moved aside");
    assert_eq!(aside[0].1, bad, "moved aside byte-for-byte");
    println!("moved aside to {}", aside[0].0.display());
    assert!(h.err.text().contains("renamed it to"));
    assert_verifies(&state);

    // A base of a newer format version is not known to be corrupt: refused without
    // --fallback, nothing touched; skipped (and kept aside) with it.
    let mut newer = std::fs::read(&state).unwrap();
    let footer = newer.len() - shmsnap_linux::snapshot::FOOTER_LEN;
    newer[footer + 8] = 2; // version 2, footer CRC fixed below
    let crc = crc32c(&newer[footer..footer + 52]);
    newer[footer + 52..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&state, &newer).unwrap();
    assert_refused(
        dir.path(),
        &state,
        &[],
        &read,
        65,
        &["gen.snap", "--fallback"],
    );
    let mut h = run_host(
        &state,
        &["--restart", "never", "--fallback", "--keep", "2"],
        &read,
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert_eq!(h.out.all(), ["got=first"], "{}", h.err.text());
    let aside = snapshot_dir(dir.path())
        .into_iter()
        .filter(|(_, b)| *b == newer)
        .count();
    assert_eq!(aside, 1, "the newer-version base is kept aside");
}

/// CRC-32C, bit by bit (for a footer the test edits).
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ---------------------------------------------------------------------------------------
// 7. tracing: per-snapshot timings, bytes, kept and dropped.
// ---------------------------------------------------------------------------------------

#[test]
fn snapshot_logs_carry_phase_timings_and_counts() {
    let dir = tempdir();
    let state = dir.path().join("log.snap");
    let h = run_host(
        &state,
        &["--strategy", "queue", "--interval", "100ms", "--size", "1M"],
        &primes(&["--limit", "640", "--linger", "1h"]),
    );
    let line = h.err.expect("snapshot persisted", "host log");
    println!("{line}");
    assert!(!line.contains('\x1b'), "no colour codes in a piped log");
    let value = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in {line}"))
            .parse()
            .unwrap()
    };
    for k in ["copy_ms", "validate_ms", "sync_ms", "rename_ms"] {
        assert!(value(k) >= 0.0);
    }
    assert!(value("bytes") > 0.0);
    assert!(value("kept") >= 1.0);
    assert!(value("dropped") >= 0.0);
    assert!(value("generation") >= 1.0);
    assert!(line.contains("log.snap"));
}
