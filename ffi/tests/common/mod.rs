//! Helpers for the tests that drive C programs: the built host binary and static library, the
//! system C compiler, processes whose output is collected line by line, and guards that kill
//! what a test started even when it panics.
//!
//! # Finding the host binary and the library
//!
//! `env!("CARGO_BIN_EXE_shmsnap")` exists only inside the host package, and the static library
//! a C program links is not an artifact cargo hands to another package's tests. So the tests
//! ask cargo for both, once per test process, with the commands a user runs, into this build's
//! target directory and profile (read from the test executable's path):
//!
//! - `cargo build --workspace --tests` — builds the `shmsnap` binary with exactly the feature
//!   set `cargo test --workspace` uses, so under the README's test command it is a no-op (the
//!   binary is already fresh) and never relinks the binary the host's own tests run; alone
//!   (`cargo test -p shmsnap-ffi`) it builds what is missing or stale;
//! - `cargo build -p shmsnap-ffi --lib` — the README's first command: `target/<profile>/libshmsnap.a`.
//!
//! Cargo releases its build lock before it runs tests, so the nested builds do not wait on
//! the outer one. A build failure fails the test with cargo's output.
#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// A generous limit for things that take milliseconds on an idle machine.
pub const SLOW: Duration = Duration::from_secs(60);

/// The artifacts the tests use.
#[derive(Debug)]
pub struct Artifacts {
    /// The `shmsnap` host binary.
    pub bin: PathBuf,
    /// The directory holding `libshmsnap.a`.
    pub lib_dir: PathBuf,
    /// `ffi/include`.
    pub include: PathBuf,
    /// `ffi/examples`.
    pub examples: PathBuf,
    /// Where compiled C programs go.
    pub out: PathBuf,
}

/// The target directory and profile flags of this test build, from the test's own path
/// (`<target>/<profile dir>/deps/<test>`).
fn target_and_profile() -> (PathBuf, Vec<String>) {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>/deps");
    let target = profile_dir.parent().expect("<target>").to_path_buf();
    let name = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let flags = match name.as_str() {
        "debug" => vec![],
        "release" => vec!["--release".to_owned()],
        other => vec!["--profile".to_owned(), other.to_owned()],
    };
    (target, flags)
}

/// Runs `cargo build ARGS` for this build's target directory and profile; panics with cargo's
/// output if it fails.
fn cargo_build(args: &[&str], target: &Path, profile: &[String], workspace: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .arg("build")
        .args(args)
        .args(profile)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds (once per test process) and returns the artifacts.
pub fn artifacts() -> &'static Artifacts {
    static A: OnceLock<Artifacts> = OnceLock::new();
    A.get_or_init(|| {
        let ffi = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let workspace = ffi.parent().expect("the workspace").to_path_buf();
        let (target, profile) = target_and_profile();
        cargo_build(&["--workspace", "--tests"], &target, &profile, &workspace);
        cargo_build(
            &["-p", "shmsnap-ffi", "--lib"],
            &target,
            &profile,
            &workspace,
        );
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        let out = dir.join("ffi-c");
        std::fs::create_dir_all(&out).expect("create the C output directory");
        let a = Artifacts {
            bin: dir.join("shmsnap"),
            lib_dir: dir.clone(),
            include: ffi.join("include"),
            examples: ffi.join("examples"),
            out,
        };
        assert!(a.bin.is_file(), "no host binary at {}", a.bin.display());
        assert!(
            a.lib_dir.join("libshmsnap.a").is_file(),
            "no libshmsnap.a in {}",
            dir.display()
        );
        a
    })
}

/// The libraries Rust's standard library needs in a static link (`cargo rustc -p
/// shmsnap-ffi --crate-type staticlib -- --print native-static-libs`; also in `ffi/shmsnap.pc`).
pub const NATIVE_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// Compiles `ffi/examples/NAME.c` with `cc -Wall -Wextra -Werror` and `extra` flags against
/// the header and the static library; returns the executable (`SUFFIX` tells variants apart).
/// Panics with the compiler's output on any warning or error.
pub fn compile(name: &str, suffix: &str, extra: &[&str]) -> PathBuf {
    let src = artifacts().examples.join(format!("{name}.c"));
    compile_source(&src, &format!("{name}{suffix}"), extra)
}

/// As [`compile`], for the C file `src` (a test program), into the executable `exe_name`.
pub fn compile_source(src: &Path, exe_name: &str, extra: &[&str]) -> PathBuf {
    let a = artifacts();
    let exe = a.out.join(exe_name);
    // Build under a private name, then rename: tests of other binaries may compile the same
    // program at the same time.
    let tmp = a.out.join(format!(".{exe_name}.{}", std::process::id()));
    let out = Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-pthread"])
        .args(extra)
        .arg("-I")
        .arg(&a.include)
        .arg(src)
        .arg(a.lib_dir.join("libshmsnap.a"))
        .args(NATIVE_LIBS)
        .arg("-o")
        .arg(&tmp)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc {} failed:\n{}{}",
        src.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &exe).expect("rename the executable");
    exe
}

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

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            let pid = Pid::from_raw(self.child.id() as i32).unwrap();
            let _ = rustix::process::kill_process(pid, sig);
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

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(Signal::KILL);
        let _ = self.wait_timeout(SLOW);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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
    let mut c = Command::new(&artifacts().bin);
    c.args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    c
}

/// `shmsnap run --state STATE ARGS... -- CLIENT...`, started.
pub fn run_host(state: &Path, args: &[&str], client: &[&OsStr]) -> Proc {
    let mut c = shmsnap(["run", "--state"]);
    c.arg(state).args(args).arg("--").args(client);
    Proc::spawn(c)
}

/// `shmsnap verify FILE` exits 0.
pub fn assert_verifies(file: &Path) {
    let out = shmsnap([OsStr::new("verify"), file.as_os_str()])
        .output()
        .expect("run shmsnap verify");
    assert!(
        out.status.success(),
        "verify {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// SIGKILLs `pid`.
pub fn kill_pid(pid: i32) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
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

/// xorshift64*: reproducible from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    /// A seed from `VAR`, else from the clock; printed by the caller.
    pub fn seed(var: &str) -> u64 {
        env_u64(var).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The number in environment variable `name`, if set.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// The `newest_seq` of the last `snapshot persisted` line a host logged (0: none).
pub fn last_persisted_seq(host: &Proc) -> u64 {
    host.err
        .all()
        .iter()
        .rev()
        .find(|l| l.contains("snapshot persisted"))
        .and_then(|l| l.split("newest_seq=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .map_or(0, |s| s.parse().expect("newest_seq"))
}
