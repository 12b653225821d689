//! Helpers for the end-to-end tests: the built `shmsnap` binary run as a real process, its
//! output collected line by line, and guards that kill whatever a test started, even when the
//! test panics.
#![allow(dead_code)] // each test binary uses a different subset

pub mod proxy;
pub mod s3;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use shmsnap_core::Region;
use shmsnap_linux::{Mapping, Memfd, Protection};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shmsnap");

/// A generous limit for things that take milliseconds on an idle machine.
pub const SLOW: Duration = Duration::from_secs(30);

pub use shmsnap_testkit::lines::Lines;

/// A process started by a test; SIGKILLed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub out: Lines,
    pub err: Lines,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with piped stdout/stderr.
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let out = Lines::collect(child.stdout.take().unwrap(), "out");
        let err = Lines::collect(child.stderr.take().unwrap(), "err");
        Proc {
            child,
            out,
            err,
            status: None,
        }
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            let _ = rustix::process::kill_process(Pid::from_raw(self.pid()).unwrap(), sig);
        }
    }

    /// Waits up to `timeout` for the exit; `None` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status {
                return Some(s);
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                // Let the reader threads drain the pipes (a leftover grandchild could hold
                // them open: give up after a while).
                poll(Duration::from_secs(5), || {
                    (self.out.ended() && self.err.ended()).then_some(())
                });
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (up to [`SLOW`]) for the exit and returns the exit code; panics otherwise.
    pub fn exit_code(&mut self) -> i32 {
        let s = self
            .wait_timeout(SLOW)
            .unwrap_or_else(|| panic!("still running; stderr:\n{}", self.err.text()));
        s.code()
            .unwrap_or_else(|| panic!("killed by a signal: {s:?}; stderr:\n{}", self.err.text()))
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.wait_timeout(Duration::ZERO).is_none()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::KILL);
        let _ = self.wait_timeout(SLOW);
    }

    /// Waits for a log line (stderr, from index `from`) containing `needle`; panics with
    /// both outputs if none comes within `timeout`.
    pub fn wait_log(&self, from: usize, needle: &str, timeout: Duration) -> (usize, String) {
        self.err
            .wait_from(from, timeout, |l| l.contains(needle))
            .unwrap_or_else(|| {
                panic!(
                    "no {needle:?} within {timeout:?}:\n{}\n{}",
                    self.err.text(),
                    self.out.text()
                )
            })
    }

    /// The pid of the newest client this host started (its `client started (pid N)` line;
    /// waits [`SLOW`] for the first).
    pub fn client_pid(&self) -> i32 {
        let (_, line) = self.wait_log(0, "client started (pid", SLOW);
        let last = self
            .err
            .all()
            .into_iter()
            .rev()
            .find(|l| l.contains("client started (pid"))
            .unwrap_or(line);
        let rest = last.split("client started (pid ").nth(1).unwrap();
        rest.trim_end_matches(')').trim().parse().unwrap()
    }
}

/// A temporary directory named `shmsnap-{what}-…` (removed on drop).
pub fn named_tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("shmsnap-{what}-"))
        .tempdir()
        .unwrap()
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Kills listed pids on drop (grandchildren that a test must not leave behind).
#[derive(Default)]
pub struct KillOnDrop(pub Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            if let Some(p) = Pid::from_raw(p) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }
}

/// A `shmsnap` command with `RUST_LOG=info` (tests parse the logs) and no inherited
/// `NOTIFY_SOCKET`/`LISTEN_*`.
pub fn shmsnap<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    c
}

/// `shmsnap run --state STATE ARGS... -- CLIENT...`, started.
pub fn run_host(state: &Path, args: &[&str], client: &[&str]) -> Proc {
    let mut c = shmsnap(["run", "--state"]);
    c.arg(state).args(args).arg("--").args(client);
    Proc::spawn(c)
}

/// The primes client command line (`shmsnap example primes ARGS...`).
pub fn primes(args: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![BIN, "example", "primes"];
    v.extend_from_slice(args);
    v
}

/// Output of a finished `shmsnap` subcommand.
pub struct Done {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shmsnap ARGS...` to completion.
pub fn shmsnap_done<I, S>(args: I) -> Done
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = shmsnap(args).output().expect("run shmsnap");
    Done {
        code: out.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `shmsnap inspect --json FILE`, parsed; `None` if the file does not exist (yet).
pub fn inspect(file: &Path) -> Option<serde_json::Value> {
    if !file.exists() {
        return None;
    }
    let d = shmsnap_done([
        OsStr::new("inspect"),
        OsStr::new("--json"),
        file.as_os_str(),
    ]);
    if d.code == 66 {
        return None; // renamed away between exists() and open
    }
    assert_eq!(
        d.code,
        0,
        "inspect {}: {}{}",
        file.display(),
        d.stdout,
        d.stderr
    );
    Some(serde_json::from_str(&d.stdout).expect("inspect json"))
}

/// The footer's generation of an inspected snapshot.
pub fn generation(j: &serde_json::Value) -> u64 {
    j["footer"]["generation"].as_u64().expect("generation")
}

/// The primes count in the newest entry of an inspected snapshot (payload: count u64 LE,
/// then batch u64 LE; `first_bytes` shows the first 16 bytes in hex).
pub fn snapshot_count(j: &serde_json::Value) -> u64 {
    let entries = j["entries"].as_array().expect("entries");
    let Some(newest) = entries.last() else {
        return 0;
    };
    let hex = newest["first_bytes"].as_str().expect("first_bytes");
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// `shmsnap verify FILE` succeeds.
pub fn assert_verifies(file: &Path) {
    let d = shmsnap_done([OsStr::new("verify"), file.as_os_str()]);
    assert_eq!(
        d.code,
        0,
        "verify {}: {}{}",
        file.display(),
        d.stdout,
        d.stderr
    );
}

/// Parses `primes: pid P restored K primes, all correct ...`; panics on `CORRUPT`.
pub fn parse_restored(line: &str) -> Option<(i32, u64)> {
    assert!(
        !line.contains("CORRUPT"),
        "client reports corruption: {line}"
    );
    let rest = line.strip_prefix("primes: pid ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("restored ")?;
    let (k, rest) = rest.split_once(' ')?;
    assert!(rest.starts_with("primes, all correct"), "{line}");
    Some((pid.parse().ok()?, k.parse().ok()?))
}

/// Waits for the next `restored` line at index `from` or later: (index, pid, K).
pub fn next_restored(p: &Proc, from: usize, timeout: Duration) -> Option<(usize, i32, u64)> {
    let (i, line) = p.out.wait_from(from, timeout, |l| {
        l.contains("CORRUPT") || l.starts_with("primes: pid ")
    })?;
    let (pid, k) = parse_restored(&line).expect("restored line");
    Some((i, pid, k))
}

/// The primes count the client has committed right now, read from its live region through
/// `/proc/PID/fd/3` with the core reader (validated read of the newest entry).
pub fn live_count(client: i32) -> Option<u64> {
    let f = File::open(format!("/proc/{client}/fd/3")).ok()?;
    let memfd = Memfd::from_fd(f.into()).ok()?;
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).ok()?;
    count_in(&map)
}

/// The count in the newest entry of a mapped primes region.
pub fn count_in(map: &Mapping) -> Option<u64> {
    let region = Region::open(map.words()).ok()?;
    for _ in 0..100 {
        let Some(d) = region.newest() else {
            return Some(0);
        };
        let mut b = [0u8; 16];
        if let Ok(16) = region.read_payload(&d, &mut b) {
            return Some(u64::from_le_bytes(b[..8].try_into().unwrap()));
        }
        // Overwritten while reading: try the new newest.
    }
    None
}

/// Whether `pid` is alive (a zombie counts as dead).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(") ")
                .and_then(|(_, r)| r.chars().next())
                .unwrap_or('?');
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

/// Waits until `pid` is dead; false after `timeout`.
pub fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Polls `f` every 10 ms until it returns `Some`, up to `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every file of `dir` (recursively) with its bytes, except empty `*.lock` files: the host's
/// state lock (`FILE.lock`, created on start, never written, never deleted) is not state.
pub fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        let is_lock = p.extension().is_some_and(|x| x == "lock")
            && e.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        if is_lock {
            continue;
        }
        if p.is_dir() {
            out.extend(snapshot_dir(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).expect("read"));
        }
    }
    out
}

/// The size of the file behind `fd` and whether it is a memfd (`/memfd:` link name).
pub fn describe_fd(fd: impl AsFd) -> (u64, String) {
    let st = rustix::fs::fstat(&fd).expect("fstat");
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd())
    ))
    .expect("readlink");
    (st.st_size as u64, link.to_string_lossy().into_owned())
}

/// xorshift64*: reproducible from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
