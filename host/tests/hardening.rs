//! End-to-end tests of issue 11's hardening items that live outside the supervisor loop: the
//! state lock (item 1), symlinked `--state` and help texts (item 9), `--size`/`--keep`
//! bounds (items 2, 12), an fd handed in through `LISTEN_FDS` that is not a region (item 12),
//! and the shipped systemd unit (item 8).

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rustix::process::Signal;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shmsnap-hard-")
        .tempdir()
        .unwrap()
}

/// Runs `shmsnap ARGS` to completion with the default log level; checks the exit code and
/// one `shmsnap:` error line (or clap's `error:` line) containing every needle; returns it.
fn refused(args: &[&std::ffi::OsStr], code: i32, needles: &[&str]) -> String {
    let mut c = shmsnap(args);
    c.env_remove("RUST_LOG");
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("shmsnap: ") || l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{err}"))
        .to_owned();
    for n in needles {
        assert!(line.contains(n), "{line:?} lacks {n:?}");
    }
    println!("exit {code}: {line}");
    line
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

// ---------------------------------------------------------------------------------------
// Item 1: two hosts on one state file.
// ---------------------------------------------------------------------------------------

#[test]
fn a_second_host_on_one_state_file_exits_at_once_with_75() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    let mut first = run_host(
        &state,
        &["--strategy", "queue", "--interval", "50ms", "--size", "1M"],
        &primes(&["--pause", "1ms"]),
    );
    next_restored(&first, 0, SLOW).expect("first client");
    poll(SLOW, || state.exists().then_some(())).expect("first snapshot");

    let mut second = run_host(
        &state,
        &["--strategy", "queue", "--size", "1M"],
        &primes(&[]),
    );
    assert_eq!(second.exit_code(), 75, "{}", second.err.text());
    let err = second.err.text();
    assert!(
        err.contains("s.snap.lock") && err.contains(&format!("locked by process {}", first.pid())),
        "the message names the lock and the running host:\n{err}"
    );
    assert!(
        !err.contains("client started"),
        "the second host started a client:\n{err}"
    );
    assert!(first.running(), "the first host is unaffected");
    first.signal(Signal::TERM);
    first.exit_code();
    assert_verifies(&state);
}

// ---------------------------------------------------------------------------------------
// Items 2 and 12: --size and --keep are checked before anything starts.
// ---------------------------------------------------------------------------------------

#[test]
fn a_size_that_is_not_whole_pages_is_a_usage_error_up_front() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    for size in ["1000001", "4102", "0"] {
        refused(
            &[
                os("run"),
                os("--state"),
                state.as_os_str(),
                os("--size"),
                os(size),
                os("--"),
                os("true"),
            ],
            64,
            &["--size"],
        );
    }
    let line = refused(
        &[
            os("run"),
            os("--state"),
            state.as_os_str(),
            os("--size"),
            os("1000001"),
            os("--"),
            os("true"),
        ],
        64,
        &["page size", "999424 or 1003520"],
    );
    assert!(line.contains("1000001"), "{line}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn keep_beyond_the_maximum_is_a_usage_error_up_front() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    refused(
        &[
            os("run"),
            os("--state"),
            state.as_os_str(),
            os("--keep"),
            os("18446744073709551615"),
            os("--"),
            os("true"),
        ],
        64,
        &["--keep", "0 to 1000"],
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

// ---------------------------------------------------------------------------------------
// Item 9: a symlinked --state is refused, the link and its target left alone.
// ---------------------------------------------------------------------------------------

#[test]
fn a_symlinked_state_is_refused_and_the_link_kept() {
    let dir = tempdir();
    let real = dir.path().join("real.snap");
    let link = dir.path().join("link.snap");
    // A sound snapshot behind the link.
    let mut h = run_host(
        &real,
        &["--size", "64K", "--restart", "never"],
        &["/bin/sh", "-c", "printf hello 1<>/proc/self/fd/3"],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let before = snapshot_dir(dir.path());
    let line = refused(
        &[
            os("run"),
            os("--state"),
            link.as_os_str(),
            os("--"),
            os("true"),
        ],
        73,
        &["link.snap", "symbolic link", "real.snap"],
    );
    assert!(line.contains("pass the real file"), "{line}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(snapshot_dir(dir.path()), before, "files changed");
    assert!(!dir.path().join("link.snap.lock").exists());
}

// ---------------------------------------------------------------------------------------
// Item 12: a regular file handed in as the region fd is ignored, never grown.
// ---------------------------------------------------------------------------------------

#[test]
fn a_regular_file_passed_in_listen_fds_is_ignored_and_left_untouched() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    let bogus = dir.path().join("not-a-region");
    std::fs::write(&bogus, [0x5au8; 100]).unwrap();
    // The shell opens the file at fd 3 and execs the host with LISTEN_PID = its own pid
    // (exec keeps the pid): what a service manager does, without fd games in this process.
    let script = r#"exec 3<>"$BOGUS"
export LISTEN_FDS=1 LISTEN_FDNAMES=SHM_SHARED_FD LISTEN_PID=$$
exec "$BIN" run --state "$STATE" --size 1M --restart never -- /bin/sh -c 'echo size=$(stat -L -c %s /proc/self/fd/3)'"#;
    let mut c = Command::new("/bin/sh");
    c.args(["-c", script])
        .env("BOGUS", &bogus)
        .env("BIN", BIN)
        .env("STATE", &state)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    let mut h = Proc::spawn(c);
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let err = h.err.text();
    assert!(
        err.contains("ignoring the passed fd") && err.contains("not a memfd"),
        "a warning says why the fd was ignored:\n{err}"
    );
    assert_eq!(
        std::fs::read(&bogus).unwrap(),
        [0x5au8; 100],
        "the file was modified"
    );
    assert_eq!(
        h.out.all(),
        ["size=1048576"],
        "the client got a fresh region"
    );
}

// ---------------------------------------------------------------------------------------
// Items 8 and 9: the help text and the shipped systemd unit.
// ---------------------------------------------------------------------------------------

#[test]
fn run_help_documents_the_lock_links_size_keep_backoff_and_stop_status() {
    let d = shmsnap_done(["run", "--help"]);
    assert_eq!(d.code, 0);
    let top = shmsnap_done(["--help"]);
    assert_eq!(top.code, 0);
    let help = format!("{}\n{}", d.stdout, top.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "75 another shmsnap host is running on the same state file",
        "exits at once with status 75",
        "A symbolic link at FILE is refused",
        "The region is at least SIZE; a larger snapshot is restored at its own size",
        "multiple of the page size",
        "0 to 1000",
        "up to exactly this value",
        "0 when the final snapshot was persisted",
        "74 when the final snapshot failed",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{}", d.stdout);
    }
}

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/systemd/shmsnap@.service")
}

/// `systemd-analyze verify` of `unit` in a temp dir, with ExecStart pointing at the built
/// binary (verify checks that the command exists and is executable, and /usr/local/bin may
/// hold no shmsnap here). Returns (success, stderr); `None` when the tool is missing.
fn analyze(unit_text: &str) -> Option<(bool, String)> {
    let dir = tempdir();
    let path = dir.path().join("shmsnap@.service");
    std::fs::write(&path, unit_text.replace("/usr/local/bin/shmsnap", BIN)).unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(unit_file()).unwrap();
    for want in [
        "Type=notify",
        "NotifyAccess=main",
        "FileDescriptorStoreMax=1",
        "Restart=on-failure",
        "KillMode=mixed",
        "StateDirectory=shmsnap",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/shmsnap run --state %S/shmsnap/%i.snap",
    ] {
        assert!(text.contains(want), "the unit lacks {want}");
    }
    let probe = analyze(&text).ok_or_else(|| "systemd-analyze is not installed".to_owned());
    let hint = "Install it (Debian: systemd); .ci/run does.";
    let Some((ok, stderr)) = shmsnap_testkit::require::require("systemd-analyze", hint, probe)
    else {
        return;
    };
    // verify exits 0 on many problems (an unknown value is "ignoring" with a warning): any
    // output at all is a failure.
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    // The check can fail: a misspelt value and a missing binary are caught.
    let (_, e) = analyze(&text.replace("Type=notify", "Type=notfy")).unwrap();
    assert!(e.contains("notfy"), "a bad Type= went unnoticed: {e:?}");
    let (ok, e) = analyze(&text.replace("/usr/local/bin/shmsnap", "/nonexistent/shmsnap")).unwrap();
    assert!(!ok && e.contains("/nonexistent/shmsnap"), "{e:?}");
}

// ---------------------------------------------------------------------------------------
// Item 8: the exit status of a requested stop.
// ---------------------------------------------------------------------------------------

/// A queue client that scribbles over its region's header, says "ready" and waits for
/// SIGTERM (then exits 0): the final snapshot cannot be taken.
const SCRIBBLER: &str = r#"printf 'not a queue header' 1<>/proc/self/fd/3; trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done"#;

#[test]
fn a_requested_stop_whose_final_snapshot_failed_exits_74() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    let mut h = run_host(
        &state,
        &["--strategy", "queue", "--interval", "1h", "--size", "64K"],
        &["/bin/sh", "-c", SCRIBBLER],
    );
    h.out.expect("ready", "client");
    h.signal(Signal::TERM);
    assert_eq!(h.exit_code(), 74, "{}", h.err.text());
    let err = h.err.text();
    assert!(err.contains("final snapshot failed"), "{err}");
    assert!(!state.exists(), "nothing could be persisted");
}

#[test]
fn a_stop_while_the_client_waits_for_its_restart_exits_0() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    let mut h = run_host(
        &state,
        &["--size", "64K", "--max-backoff", "1h"],
        &["/bin/sh", "-c", "exit 3"],
    );
    // Pauses 100ms, 200ms, 400ms, 800ms, 1.6s: the stop lands in the 1.6 s pause.
    h.err.expect("restarting the client in 1.6s", "backoff");
    h.signal(Signal::TERM);
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let err = h.err.text();
    assert!(
        err.contains("stop requested while the client was not running"),
        "{err}"
    );
    assert_verifies(&state);
}

// ---------------------------------------------------------------------------------------
// Items 2 and 5: the region's size — a client that grows it, --size as a minimum.
// ---------------------------------------------------------------------------------------

/// The issue's scenario: a client appends 6 bytes to its 4096-byte region; the snapshot must
/// verify *and* restore with the same command line.
#[test]
fn a_region_grown_to_an_odd_length_is_padded_and_its_snapshot_restores() {
    let dir = tempdir();
    let state = dir.path().join("a.snap");
    let mut h = run_host(
        &state,
        &["--size", "4096", "--restart", "never"],
        &["/bin/sh", "-c", "echo hello >> /proc/self/fd/3"],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let err = h.err.text();
    assert!(
        err.contains("the client grew the region from 4096 to 4102 bytes"),
        "{err}"
    );
    assert!(err.contains("grew it with zeros to 8192 bytes"), "{err}");
    assert_verifies(&state);
    let mut h = run_host(
        &state,
        &["--restart", "never"],
        &[
            "/bin/sh",
            "-c",
            r#"head -c 4102 /proc/self/fd/3 | tail -c 6"#,
        ],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    assert!(h.err.text().contains("restored "), "{}", h.err.text());
    assert_eq!(h.out.all(), ["hello"], "the appended bytes were restored");
}

// ---------------------------------------------------------------------------------------
// Item 4: a corrupted live region is never re-restored.
// ---------------------------------------------------------------------------------------

#[test]
fn a_queue_client_that_scribbles_over_its_header_restarts_on_the_restored_good_state() {
    let dir = tempdir();
    let state = dir.path().join("q.snap");
    let mut h = run_host(
        &state,
        &["--strategy", "queue", "--size", "1M", "--restart", "never"],
        &primes(&["--limit", "640"]),
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let marker = dir.path().join("scribbled");
    // First run: scribble over the header and fail. Second run: the primes client, which
    // must find its 640 primes (it fails to attach to a corrupt region).
    let script = format!(
        r#"if [ ! -e {m} ]; then touch {m}; printf 'scribble' 1<>/proc/self/fd/3; exit 1; fi
exec {bin} example primes --limit 640"#,
        m = marker.display(),
        bin = BIN
    );
    let mut h = run_host(
        &state,
        &["--strategy", "queue", "--restart", "on-failure"],
        &["/bin/sh", "-c", &script],
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let err = h.err.text();
    println!("{err}");
    assert!(
        err.contains("failed validation after the client exited"),
        "{err}"
    );
    assert!(
        err.contains("restored ") && err.contains("into the region"),
        "{err}"
    );
    assert!(
        h.out.text().contains("restored 640 primes, all correct"),
        "{}",
        h.out.text()
    );
    let corrupt: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("q.snap.corrupt-"))
        .collect();
    assert_eq!(corrupt.len(), 1, "one file set aside: {corrupt:?}");
    let aside = std::fs::read(dir.path().join(&corrupt[0])).unwrap();
    assert!(
        aside.starts_with(b"scribble"),
        "the live region was set aside"
    );
    assert_verifies(&state);
}

// ---------------------------------------------------------------------------------------
// Item 6: queue strategy on a region that is not a queue.
// ---------------------------------------------------------------------------------------

#[test]
fn a_region_that_is_not_a_queue_is_reported_on_change_with_a_count_and_at_exit() {
    let dir = tempdir();
    let state = dir.path().join("s.snap");
    let mut h = run_host(
        &state,
        &["--strategy", "queue", "--interval", "10ms", "--size", "64K"],
        &["/bin/sh", "-c", SCRIBBLER],
    );
    h.out.expect("ready", "client");
    h.err.expect("still, 10 attempts in a row", "the count");
    h.signal(Signal::TERM);
    assert_eq!(h.exit_code(), 74, "{}", h.err.text());
    let err = h.err.all();
    let first: Vec<_> = err
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("snapshot skipped"))
        .collect();
    assert_eq!(first.len(), 1, "one warning per change: {err:#?}");
    assert!(
        first[0].contains("no snapshot persisted yet to"),
        "{}",
        first[0]
    );
    assert!(
        err.iter()
            .any(|l| l.contains("no snapshot was ever persisted to") && l.contains("s.snap")),
        "{err:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Item 12: hostile footers and file types at start.
// ---------------------------------------------------------------------------------------

#[test]
fn a_footer_at_the_last_generation_refuses_the_start_instead_of_wrapping_or_reusing_it() {
    use shmsnap_linux::snapshot::{encode_footer, read_footer_path, FOOTER_LEN};
    let dir = tempdir();
    let state = dir.path().join("g.snap");
    let mut h = run_host(&state, &["--size", "64K", "--restart", "never"], &["true"]);
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let mut info = read_footer_path(&state).unwrap();
    info.meta.generation = u64::MAX;
    let mut bytes = std::fs::read(&state).unwrap();
    let at = bytes.len() - FOOTER_LEN;
    bytes[at..].copy_from_slice(&encode_footer(info.image_len, info.meta, info.image_crc));
    std::fs::write(&state, &bytes).unwrap();
    assert_verifies(&state);
    // Issue 20: generations never repeat, so u64::MAX has no successor (it once saturated:
    // the next base reused u64::MAX next to the old one).
    let before = snapshot_dir(dir.path());
    let mut h = run_host(&state, &["--restart", "never"], &["true"]);
    assert_eq!(h.exit_code(), 65, "{}", h.err.text());
    assert!(h.err.text().contains("never repeat"), "{}", h.err.text());
    assert!(snapshot_dir(dir.path()) == before, "the state changed");
    let after = read_footer_path(&state).unwrap();
    assert_eq!(after.meta.generation, u64::MAX);
}

#[test]
fn a_fifo_at_the_older_generation_under_fallback_does_not_block() {
    let dir = tempdir();
    let state = dir.path().join("f.snap");
    std::fs::write(&state, b"not a snapshot").unwrap();
    let fifo = dir.path().join("f.snap.1");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    let mut h = run_host(&state, &["--fallback", "--restart", "never"], &["true"]);
    assert_eq!(h.exit_code(), 65, "{}", h.err.text());
    let err = h.err.text();
    assert!(err.contains("f.snap.1") && err.contains("FIFO"), "{err}");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo(),
        "left alone"
    );
}
