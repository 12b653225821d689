//! The client's own cgroup (issue 11, item 10): the host runs in a test cgroup under the
//! cgroup2 mount (a wrapper shell moves itself there, then execs the host), so `--cgroup auto`
//! finds a cgroup it may manage. Without a writable cgroup2 mount they fail unless
//! `SHMSNAP_TEST_ALLOW_MISSING` names `cgroup2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{alive, poll, wait_dead, KillOnDrop, Proc, BIN, SLOW};
use rustix::process::Signal;

/// A cgroup made by a test; on drop everything in it is killed and it is removed (with the
/// cgroups the host made inside it), even when the test failed.
struct TestCgroup {
    dir: PathBuf,
    /// Its path as `/proc/PID/cgroup` shows it (`0::REL`).
    rel: String,
}

impl TestCgroup {
    /// A new cgroup under the cgroup2 mount; if there is none we can create, the test fails
    /// unless `SHMSNAP_TEST_ALLOW_MISSING` names `cgroup2` (then `None`).
    fn new(name: &str) -> Option<TestCgroup> {
        let hint = "These tests need a writable cgroup2 hierarchy (root, cgroup2 mounted).";
        shmsnap_testkit::require::require("cgroup2", hint, Self::try_new(name))
    }

    fn try_new(name: &str) -> Result<TestCgroup, String> {
        let mount = cgroup2_root()?;
        let leaf = format!("shmsnap-test-{}-{name}", std::process::id());
        let dir = mount.join(&leaf);
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = TestCgroup {
            dir,
            rel: format!("/{leaf}"),
        };
        if !cg.dir.join("cgroup.kill").exists() {
            return Err("no cgroup.kill (Linux 5.14 or later needed)".into());
        }
        Ok(cg)
    }

    /// The cgroups inside it (the host's child cgroups).
    fn children(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The mount point of the cgroup2 hierarchy's root (os-linux's reading of mountinfo).
fn cgroup2_root() -> Result<PathBuf, String> {
    shmsnap_linux::freeze::cgroup::cgroup2_root().map_err(|e| e.to_string())
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let end = Instant::now() + SLOW;
        while std::fs::read_to_string(self.dir.join("cgroup.events"))
            .is_ok_and(|s| s.contains("populated 1"))
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for c in self.children() {
            let _ = std::fs::remove_dir(c);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `shmsnap run --state STATE ARGS... -- CLIENT...`, started in `cg` (if given) by a shell
/// that moves itself into it and then execs the host (same pid).
fn host_in(cg: Option<&TestCgroup>, state: &Path, args: &[&str], client: &[&str]) -> Proc {
    host_in_dir(cg.map(|cg| cg.dir.as_path()), state, args, client)
}

/// [`host_in`] for any cgroup directory (the hierarchy's root included).
fn host_in_dir(cg: Option<&Path>, state: &Path, args: &[&str], client: &[&str]) -> Proc {
    let mut c = Command::new("sh");
    match cg {
        Some(dir) => c
            .arg("-c")
            .arg(r#"echo $$ > "$CG/cgroup.procs" && exec "$@""#)
            .env("CG", dir),
        None => c.arg("-c").arg(r#"exec "$@""#),
    };
    c.arg("sh")
        .arg(BIN)
        .args(["run", "--state"])
        .arg(state)
        .args(args)
        .arg("--")
        .args(client)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    Proc::spawn(c)
}

/// A client that starts a daemon — `setsid -f`: a new session, its parent gone at once —
/// which writes its pid into `gc_pid` and sleeps, then sleeps itself.
fn daemonising_client(gc_pid: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        r#"setsid -f sh -c "$1" "$0"; exec sleep 300"#.into(),
        gc_pid.display().to_string(),
        r#"echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 300"#.into(),
    ]
}

/// Waits for the daemon's pid file.
fn daemon_pid(gc_pid: &Path, host: &Proc) -> i32 {
    poll(SLOW, || {
        std::fs::read_to_string(gc_pid).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| panic!("the client's daemon never started:\n{}", host.err.text()))
}

/// The client's pid from the host's log.
fn client_pid(host: &Proc) -> i32 {
    let line = host.err.expect("client started (pid ", "client start");
    let rest = &line[line.find("(pid ").unwrap() + 5..];
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

/// The cgroup v2 path of `pid` (`0::PATH` of `/proc/PID/cgroup`).
fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_clients_daemons_run_in_its_cgroup_and_die_with_the_host() {
    let Some(cg) = TestCgroup::new("tree") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gc_pid = dir.path().join("gc.pid");
    let client = daemonising_client(&gc_pid);
    let mut host = host_in(
        Some(&cg),
        &dir.path().join("s.snap"),
        &[],
        &as_strs(&client),
    );
    let gc = daemon_pid(&gc_pid, &host);
    let _guard = KillOnDrop(vec![gc]);
    let pid = client_pid(&host);
    let child = format!("{}/shmsnap-", cg.rel);
    assert!(
        cgroup_of(pid).starts_with(&child),
        "client in {:?}, expected {child}*; log:\n{}",
        cgroup_of(pid),
        host.err.text()
    );
    assert!(
        cgroup_of(gc).starts_with(&child),
        "daemon in {:?}, expected {child}*",
        cgroup_of(gc)
    );
    assert_eq!(cg.children().len(), 1, "{:?}", cg.children());
    host.signal(Signal::TERM);
    assert_eq!(host.exit_code(), 0, "{}", host.err.text());
    assert!(wait_dead(gc, SLOW), "the daemon outlived the host");
    assert!(
        cg.children().is_empty(),
        "the client's cgroup was not removed: {:?}",
        cg.children()
    );
}

#[test]
fn leftovers_of_a_sigkilled_host_are_killed_by_the_next_host() {
    let Some(cg) = TestCgroup::new("leftover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.snap");
    let gc_pid = dir.path().join("gc.pid");
    let client = daemonising_client(&gc_pid);
    let mut first = host_in(Some(&cg), &state, &[], &as_strs(&client));
    let gc = daemon_pid(&gc_pid, &first);
    let _guard = KillOnDrop(vec![gc]);
    let pid = client_pid(&first);
    first.kill();
    assert!(wait_dead(pid, SLOW), "PDEATHSIG did not kill the client");
    // The daemon left the client's process group: nothing of the dead host can kill it.
    assert!(alive(gc), "the daemon died with the host (test premise)");

    let mut second = host_in(Some(&cg), &state, &["--restart", "never"], &["true"]);
    assert_eq!(second.exit_code(), 0, "{}", second.err.text());
    assert!(
        wait_dead(gc, SLOW),
        "the next host left the daemon of the SIGKILLed one running; log:\n{}",
        second.err.text()
    );
    let log = second.err.text();
    assert!(log.contains("left by a previous host"), "{log}");
    assert!(cg.children().is_empty(), "{:?}", cg.children());
}

#[test]
fn with_cgroup_off_the_client_shares_the_hosts_cgroup_as_before() {
    let Some(cg) = TestCgroup::new("off") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gc_pid = dir.path().join("gc.pid");
    let client = daemonising_client(&gc_pid);
    let mut host = host_in(
        Some(&cg),
        &dir.path().join("s.snap"),
        &["--cgroup", "off"],
        &as_strs(&client),
    );
    let gc = daemon_pid(&gc_pid, &host);
    let _guard = KillOnDrop(vec![gc]);
    assert_eq!(cgroup_of(client_pid(&host)), cg.rel);
    assert_eq!(cgroup_of(gc), cg.rel);
    assert!(cg.children().is_empty(), "{:?}", cg.children());
    host.err.expect("cgroup: off", "the mode is logged");
    // The host is a subreaper: the orphaned daemon is its child, killed at its exit.
    host.signal(Signal::TERM);
    assert_eq!(host.exit_code(), 0, "{}", host.err.text());
    assert!(wait_dead(gc, SLOW), "the daemon outlived the host");
}

#[test]
fn in_the_root_cgroup_auto_keeps_the_old_behaviour() {
    // The host is moved into the hierarchy's root cgroup, wherever this test runs.
    let hint = "These tests need a writable cgroup2 hierarchy (root, cgroup2 mounted).";
    let Some(root) = shmsnap_testkit::require::require("cgroup2", hint, cgroup2_root()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut host = host_in_dir(
        Some(&root),
        &dir.path().join("s.snap"),
        &["--restart", "never"],
        &["sh", "-c", "cat /proc/self/cgroup"],
    );
    assert_eq!(host.exit_code(), 0, "{}", host.err.text());
    host.err.expect(
        "cgroup: not used (the host runs in the root cgroup",
        "the mode is logged",
    );
    assert!(
        host.out.all().iter().any(|l| l == "0::/"),
        "{}",
        host.out.text()
    );
}
