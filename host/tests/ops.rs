//! Issue 15, operations, against the built binary: completions and man pages from the CLI
//! definition, JSON log lines, the metrics endpoint of a running host (checked by
//! `promtool check metrics`), the systemd watchdog pings of a running host, and no progress
//! output on a pipe.
//!
//! The metrics families, the HTTP server, the watchdog's decisions and the progress bar on a
//! terminal are tested in their modules
//! (`cargo test -p shmsnap --bin shmsnap metrics:: watchdog:: progress::`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shmsnap-ops-")
        .tempdir()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Completions and man pages
// ---------------------------------------------------------------------------------------

#[test]
fn completions_for_every_shell_know_the_subcommands_and_options() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let d = shmsnap_done(["completions", shell]);
        assert_eq!(d.code, 0, "{shell}: {}", d.stderr);
        for word in ["run", "--strategy", "--state", "verify", "--log-format"] {
            // fish spells a long option `-l strategy`.
            let word = match (shell, word.strip_prefix("--")) {
                ("fish", Some(long)) => format!("-l {long}"),
                _ => word.to_owned(),
            };
            assert!(d.stdout.contains(&word), "{shell} completions lack {word}");
        }
        assert!(
            !d.stdout.contains("__exec"),
            "{shell}: the hidden exec shim is not offered"
        );
    }
    let d = shmsnap_done(["completions", "tcsh"]);
    assert_eq!(
        d.code, 64,
        "an unknown shell is a usage error: {}",
        d.stderr
    );
}

#[test]
fn bash_completion_script_is_valid_bash() {
    let d = shmsnap_done(["completions", "bash"]);
    let check = Command::new("bash")
        .args(["-n", "-c", &d.stdout])
        .output()
        .expect("bash");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn man_pages_have_name_synopsis_and_the_options() {
    let top = shmsnap_done(["man"]);
    assert_eq!(top.code, 0, "{}", top.stderr);
    assert!(top.stdout.contains(".TH shmsnap 1"), "{}", top.stdout);
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(top.stdout.contains(section), "shmsnap(1) lacks {section}");
    }
    let run = shmsnap_done(["man", "run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(".TH shmsnap-run 1  \"shmsnap 0.1.0\" \"shmsnap manual\""),
        "{}",
        run.stdout
    );
    for opt in ["\\-\\-state", "\\-\\-strategy", "\\-\\-metrics"] {
        assert!(run.stdout.contains(opt), "shmsnap-run(1) lacks {opt}");
    }
    let bad = shmsnap_done(["man", "__exec"]);
    assert_eq!(bad.code, 64, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("man pages exist for run"),
        "{}",
        bad.stderr
    );
}

#[test]
fn man_dir_writes_every_page_and_man_renders_them() {
    let dir = tempdir();
    let d = shmsnap_done(["man".as_ref(), "--dir".as_ref(), dir.path().as_os_str()]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "shmsnap.1",
        "shmsnap-run.1",
        "shmsnap-verify.1",
        "shmsnap-man.1",
        "shmsnap-example-primes.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("exec")), "{pages:?}");
    // Rendering needs man(1).
    let page = dir.path().join("shmsnap-run.1");
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .map_err(|e| format!("man: {e}"));
    let hint = "Install man(1) (Debian: man-db); .ci/run does.";
    let Some(out) = shmsnap_testkit::require::require("man", hint, out) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NAME") && text.contains("--state"), "{text}");
}

// ---------------------------------------------------------------------------------------
// JSON logs
// ---------------------------------------------------------------------------------------

fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{stderr}"))
        })
        .collect()
}

#[test]
fn json_log_lines_carry_level_target_message_and_fields() {
    let dir = tempdir();
    let state = dir.path().join("j.snap");
    let mut c = shmsnap(["--log-format", "json", "run", "--state"]);
    c.arg(&state)
        .args(["--size", "1M", "--restart", "never", "--", "true"]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&stderr);
    assert!(lines.len() >= 3, "{stderr}");
    for l in &lines {
        assert!(l["level"].is_string(), "{l}");
        assert!(l["timestamp"].is_string(), "{l}");
        assert!(l["target"].as_str().unwrap().starts_with("shmsnap"), "{l}");
        assert!(l["fields"]["message"].is_string(), "{l}");
    }
    let persisted = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .unwrap()
                .starts_with("snapshot persisted")
        })
        .unwrap_or_else(|| panic!("no persisted line: {stderr}"));
    assert_eq!(persisted["fields"]["generation"], 1, "{persisted}");
    assert_eq!(persisted["level"], "INFO");

    // The final error of a failing command is a JSON line too.
    let d = shmsnap_done(["--log-format", "json", "verify", "/nonexistent/x.snap"]);
    assert_eq!(d.code, 66);
    let lines = json_lines(&d.stderr);
    assert_eq!(lines.len(), 1, "{}", d.stderr);
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["fields"]["exit_code"], 66);
    assert!(lines[0]["fields"]["message"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/x.snap"));
}

#[test]
fn text_logs_stay_the_default() {
    let d = shmsnap_done(["verify", "/nonexistent/x.snap"]);
    assert_eq!(d.code, 66);
    assert!(
        d.stderr.starts_with("shmsnap: ") && d.stderr.contains("/nonexistent/x.snap"),
        "{}",
        d.stderr
    );
    let d = shmsnap_done(["--log-format", "xml", "verify", "x"]);
    assert_eq!(d.code, 64, "{}", d.stderr);
}

// ---------------------------------------------------------------------------------------
// Metrics of a running host
// ---------------------------------------------------------------------------------------

#[test]
fn metrics_addresses_are_checked_on_the_command_line() {
    let d = shmsnap_done(["run", "--state", "x", "--metrics", "9187", "--", "true"]);
    assert_eq!(d.code, 64, "{}", d.stderr);
    assert!(d.stderr.contains("127.0.0.1:9187"), "{}", d.stderr);
}

/// `name{labels}` → value of every sample.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn scrape_text(url: &str) -> Option<String> {
    let mut resp = ureq::get(url).call().ok()?;
    resp.body_mut().read_to_string().ok()
}

fn scrape(url: &str) -> Option<BTreeMap<String, f64>> {
    Some(samples(&scrape_text(url)?))
}

/// `promtool check metrics` (lint included) on `text`; a missing promtool fails the test
/// unless `SHMSNAP_TEST_ALLOW_MISSING` names `promtool` (`.ci/run` installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = "Install it (Debian: prometheus); .ci/run does.";
            shmsnap_testkit::require::require::<()>("promtool", hint, Err(e.to_string()));
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- scraped:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_running_host_serves_metrics_that_move() {
    let dir = tempdir();
    let state = dir.path().join("m.snap");
    let client = primes(&["--pause", "2ms"]);
    let mut h = run_host(
        &state,
        &[
            "--strategy",
            "queue",
            "--interval",
            "100ms",
            "--size",
            "2M",
            "--metrics",
            "127.0.0.1:0",
        ],
        &client,
    );
    let line = h
        .err
        .expect("serving metrics on http://", "the metrics address");
    let url = line
        .split_once("serving metrics on ")
        .unwrap()
        .1
        .trim()
        .to_owned();
    let v = |s: &BTreeMap<String, f64>, k: &str| s.get(k).copied().unwrap_or(-1.0);
    let persisted = "shmsnap_snapshots_total{result=\"persisted\"}";
    let first = poll(SLOW, || scrape(&url).filter(|s| v(s, persisted) >= 2.0))
        .unwrap_or_else(|| panic!("no persisted snapshots counted:\n{}", h.err.text()));
    assert_eq!(v(&first, "shmsnap_client_starts_total"), 1.0);
    assert_eq!(v(&first, "shmsnap_region_size_bytes"), (2 << 20) as f64);
    assert!(v(&first, "shmsnap_snapshot_generation") >= 1.0);
    assert!(v(&first, "shmsnap_snapshot_copied_bytes_total") > 0.0);
    let copy_count = "shmsnap_snapshot_phase_duration_seconds_count{phase=\"copy\"}";
    assert!(v(&first, copy_count) >= 2.0);

    // SIGKILL the client: counted as an exit by signal, then a second start.
    let (_, pid, _) = next_restored(&h, 0, SLOW).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let kill = "shmsnap_client_exits_total{cause=\"signal\",code=\"SIGKILL\"}";
    let after = poll(SLOW, || {
        scrape(&url).filter(|s| v(s, kill) == 1.0 && v(s, "shmsnap_client_starts_total") == 2.0)
    })
    .unwrap_or_else(|| panic!("the kill was not counted:\n{}", h.err.text()));
    assert!(v(&after, persisted) > v(&first, persisted));
    assert!(v(&after, "shmsnap_snapshot_entries_kept_total") >= 2.0);
    promtool_check(&scrape_text(&url).expect("a scrape of the running host"));
    h.signal(rustix::process::Signal::TERM);
    let _ = h.wait_timeout(Duration::from_secs(30));
}

#[test]
fn a_metrics_address_that_cannot_be_bound_stops_the_host_before_the_client() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempdir();
    let state = dir.path().join("b.snap");
    let marker = dir.path().join("client-ran");
    let d = shmsnap_done([
        "run".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--size".as_ref(),
        "1M".as_ref(),
        "--metrics".as_ref(),
        addr.as_ref(),
        "--".as_ref(),
        "touch".as_ref(),
        marker.as_os_str(),
    ]);
    assert_eq!(d.code, 78, "{}", d.stderr);
    assert!(
        d.stderr
            .contains(&format!("cannot serve metrics on {addr}")),
        "{}",
        d.stderr
    );
    assert!(!marker.exists(), "the client was started");
}

// ---------------------------------------------------------------------------------------
// systemd watchdog
// ---------------------------------------------------------------------------------------

/// A host started with a fake `NOTIFY_SOCKET` and `WATCHDOG_USEC` pings `WATCHDOG=1` while it
/// runs (its event loop progresses, no snapshot is wedged), and its client does not inherit
/// the watchdog variables.
#[test]
fn a_running_host_pings_the_watchdog_and_hides_it_from_the_client() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempdir();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let state = dir.path().join("w.snap");
    let client = primes(&["--pause", "2ms"]);
    let mut c = shmsnap(["run", "--state"]);
    c.arg(&state)
        .args(["--strategy", "queue", "--interval", "100ms", "--size", "2M"])
        .arg("--")
        .args(&client)
        .env("NOTIFY_SOCKET", &sock_path)
        // 400 ms: a ping every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    let mut h = Proc::spawn(c);
    let mut pings = 0;
    let mut seen = Vec::new();
    let end = std::time::Instant::now() + SLOW;
    let mut buf = [0u8; 4096];
    while pings < 3 && std::time::Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            pings += usize::from(text.lines().any(|l| l == "WATCHDOG=1"));
            seen.push(text);
        }
    }
    assert!(
        pings >= 3,
        "{pings} pings; datagrams {seen:?}\n{}",
        h.err.text()
    );
    let ready = seen.iter().position(|d| d.contains("READY=1"));
    let first_ping = seen.iter().position(|d| d.contains("WATCHDOG=1"));
    assert!(ready < first_ping, "READY=1 comes first: {seen:?}");
    let (_, pid, _) = next_restored(&h, 0, SLOW).unwrap();
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for var in [&b"WATCHDOG_USEC="[..], b"WATCHDOG_PID=", b"NOTIFY_SOCKET="] {
        assert!(
            !env.split(|&b| b == 0).any(|v| v.starts_with(var)),
            "the client inherited {}",
            String::from_utf8_lossy(var)
        );
    }
    h.signal(rustix::process::Signal::TERM);
    let _ = h.wait_timeout(Duration::from_secs(30));
}

// ---------------------------------------------------------------------------------------
// inspect and verify of a big ring
// ---------------------------------------------------------------------------------------

/// A queue snapshot of a ring of 2^20 entries, all live (payload: the entry's number).
fn big_ring_snapshot(path: &std::path::Path) -> u64 {
    use shmsnap_core::{LayoutRequest, Strategy, Writer};
    use shmsnap_linux::snapshot::{write_snapshot, SnapshotMeta};
    use shmsnap_linux::{Mapping, Memfd, Protection};
    const E: u64 = 1 << 20;
    let size = 48 << 20;
    let memfd = Memfd::create("big-ring", size).unwrap();
    memfd.seal_against_shrink().unwrap();
    let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    let request = LayoutRequest {
        entries: E,
        data_size: 8 << 20,
    };
    let mut w = Writer::open_or_init(
        map.words(),
        request,
        shmsnap_core::ClaimId::from_pid(std::process::id(), 0).unwrap(),
    )
    .unwrap();
    for i in 1..=E {
        w.commit(&i.to_le_bytes()).unwrap();
    }
    // Read too: the footer's CRC is computed from the file itself.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    let meta = SnapshotMeta {
        strategy: Strategy::Queue.code(),
        generation: 1,
        unix_time_ns: 1_700_000_000_000_000_000,
    };
    write_snapshot(&memfd, &file, size, meta).unwrap();
    E
}

/// Peak resident memory of a running process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `inspect --json` of 2^20 entries streams: its peak memory, sampled once the output has
/// begun (the old inspect had built the whole report and its JSON text by then: hundreds of
/// MiB) and again near the end, stays far below the 32 MiB descriptor ring alone; the entries
/// come out complete and in seq order. `verify` of it (48 MiB) prints nothing on stderr when
/// it is a pipe, and a progress bar when it is a terminal.
#[test]
fn inspect_streams_a_million_entries_and_verify_shows_progress_only_on_a_terminal() {
    use std::io::{BufRead, BufReader, Read};
    const LIMIT_KIB: u64 = 24 << 10;
    let dir = tempdir();
    let path = dir.path().join("big.snap");
    let n = big_ring_snapshot(&path);
    let mut child = shmsnap(["inspect".as_ref(), "--json".as_ref(), path.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    let mut peaks = vec![peak_rss_kib(pid).expect("VmHWM of the running inspect")];
    let (mut seqs, mut last, mut in_order) = (0u64, 0u64, true);
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(v) = line.trim().strip_prefix("\"seq\": ") {
            let seq: u64 = v.trim_end_matches(',').parse().unwrap();
            in_order &= seq == last + 1;
            last = seq;
            seqs += 1;
            if seqs == n - 1000 {
                peaks.extend(peak_rss_kib(pid));
            }
        }
        line.clear();
    }
    assert!(child.wait().unwrap().success());
    assert_eq!((seqs, last), (n, n), "every entry listed");
    assert!(in_order, "entries in seq order");
    assert!(
        peaks.iter().all(|&p| p < LIMIT_KIB),
        "peak RSS {peaks:?} KiB, limit {LIMIT_KIB} KiB"
    );

    let d = shmsnap_done(["verify".as_ref(), path.as_os_str()]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(d.stdout.contains("1048576 entries"), "{}", d.stdout);
    assert_eq!(d.stderr, "", "no progress output into a pipe");

    // On a terminal (a pty from util-linux's script(1), where installed): the bar.
    let cmd = format!("{BIN} verify '{}'", path.display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .map_err(|e| format!("script(1): {e}"));
    let hint = "Install script(1) (Debian: bsdutils); .ci/run does.";
    if let Some(out) = shmsnap_testkit::require::require("script", hint, out) {
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{tty}");
        assert!(
            // The rate's unit depends on the machine's speed (KiB/s … GiB/s).
            tty.contains("verifying ") && tty.contains("iB/s ETA "),
            "no progress bar on a terminal: {tty:?}"
        );
        assert!(tty.contains("1048576 entries"), "{tty:?}");
    }
}
