//! One writer per region across C processes, and the reclaim of a dead holder's claim
//! (`shmsnap_region_reclaim`), with the test program `tests/c/claim_peer.c` compiled by the
//! system C compiler: process A holds the queue writer of a shared memfd; process B is refused
//! with A's pid, cannot reclaim while A lives, and after A is SIGKILLed reclaims, opens the
//! writer, finds A's last commit and writes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::*;
use shmsnap_linux::Memfd;

/// The C peer, compiled once per test process (the tests run in parallel threads).
fn peer() -> PathBuf {
    static PEER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PEER.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/claim_peer.c");
        compile_source(&src, "claim_peer", &[])
    })
    .clone()
}

/// A shared region: a sealed memfd, and the path another process opens it by.
fn region() -> (Memfd, String) {
    let m = Memfd::create("claim-test", 1 << 20).unwrap();
    m.seal_against_shrink().unwrap();
    let path = format!("/proc/{}/fd/{}", std::process::id(), m.as_fd().as_raw_fd());
    (m, path)
}

/// Process B: `claim_peer serve`, driven one command per line.
struct Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(path: &str) -> Server {
        let mut child = Command::new(peer())
            .args(["serve", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Server {
            child,
            stdin,
            stdout,
        }
    }

    /// Runs `command`; its one output line.
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the peer exited during {command}");
        line.trim_end().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Process A: holds the writer until killed. Returns it and its pid.
fn holder(path: &str) -> (Proc, u32) {
    let mut c = Command::new(peer());
    c.args(["hold", path]);
    let a = Proc::spawn(c);
    let (_, line) = a
        .out
        .wait_from(0, SLOW, |l| l.starts_with("held "))
        .unwrap_or_else(|| panic!("A did not take the writer: {}", a.err.text()));
    assert_eq!(line, format!("held {}", a.child.id()));
    let pid = a.child.id();
    (a, pid)
}

#[test]
fn a_dead_holders_claim_is_reclaimed_by_another_process_and_a_live_ones_never() {
    let (_memfd, path) = region();
    let (mut a, a_pid) = holder(&path);
    let mut b = Server::start(&path);

    let open = b.ask("open");
    assert!(open.starts_with("open rc=4 "), "{open}"); // SHMSNAP_E_CLAIMED
    assert!(open.contains(&format!("pid {a_pid} ")), "names A: {open}");

    let refused = b.ask("reclaim");
    assert!(
        refused.starts_with(&format!("reclaim rc=4 pid={a_pid} ")),
        "a live holder's claim was reclaimed: {refused}"
    );
    assert!(refused.contains("may be alive"), "{refused}");
    assert!(b.ask("open").starts_with("open rc=4 "), "still A's");

    // SIGKILL: A never releases its claim. A stays a zombie until reaped: that counts as dead.
    a.signal(rustix::process::Signal::KILL);
    let dead = wait_dead(a_pid as i32, SLOW);
    assert!(dead, "A did not die");
    let reclaimed = b.ask("reclaim");
    assert_eq!(reclaimed, format!("reclaim rc=0 pid={a_pid} msg="));
    a.kill(); // reap

    assert_eq!(b.ask("open"), "open rc=0 msg=");
    assert_eq!(b.ask("write"), "write rc=0 before=from A after=from B");
    // Now B holds it, and B is alive: its own claim is not reclaimable either.
    let own = b.ask("reclaim");
    assert!(
        own.starts_with(&format!("reclaim rc=4 pid={} ", b.child.id())),
        "{own}"
    );
}

#[test]
fn reclaim_says_when_there_is_nothing_to_reclaim_or_no_region() {
    let (memfd, path) = region();
    let mut b = Server::start(&path);
    // An unconfigured, unclaimed region: SHMSNAP_E_NOT_FOUND.
    assert!(b.ask("reclaim").starts_with("reclaim rc=11 pid=0 "));
    drop(b);
    // Memory that is not a shmsnap region (a nonzero magic that is not shmsnap's) with a
    // nonzero word where the claim would be: SHMSNAP_E_BAD_HEADER, and the word is untouched.
    let map =
        shmsnap_linux::Mapping::of_memfd(&memfd, shmsnap_linux::Protection::ReadWrite).unwrap();
    let words = map.words();
    let claim = shmsnap_core::format::word::CLAIM;
    words[0].store(0x1234, std::sync::atomic::Ordering::Relaxed);
    words[claim].store(
        u64::from(u32::MAX - 1),
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut b = Server::start(&path);
    let r = b.ask("reclaim");
    assert!(r.starts_with("reclaim rc=6 pid=0 "), "{r}");
    assert!(r.contains("not a shmsnap region"), "{r}");
    assert_eq!(
        words[claim].load(std::sync::atomic::Ordering::Relaxed),
        u64::from(u32::MAX - 1)
    );
}
