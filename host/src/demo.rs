//! `shmsnap demo`: the primes client under the host, SIGKILLed a few times — then the host
//! itself is SIGKILLed and restarted, restoring from disk.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::exit::{Code, Failure};

fn os(e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::OsErr, format!("demo: {e}"))
}

/// Parses `primes: pid P restored K primes, ...`.
fn parse_restored(line: &str) -> Option<(i32, u64)> {
    let rest = line.strip_prefix("primes: pid ")?;
    let (pid, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("restored ")?;
    let (k, _) = rest.split_once(' ')?;
    Some((pid.parse().ok()?, k.parse().ok()?))
}

/// A host running the primes client, and the client's output.
struct Host {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Host {
    fn start(me: &Path, state: &Path) -> Result<Host, Failure> {
        let mut child = Command::new(me)
            .args([
                "run",
                "--strategy",
                "queue",
                "--interval",
                "100ms",
                "--size",
                "16M",
            ])
            .arg("--state")
            .arg(state)
            .arg("--")
            .arg(me)
            .args(["example", "primes", "--pause", "2ms"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(os)?;
        let out = child.stdout.take().ok_or_else(|| os("no stdout"))?;
        Ok(Host {
            child,
            lines: BufReader::new(out).lines(),
        })
    }

    /// Waits for the client's next start: its pid and how many primes it restored (verified).
    fn next_restored(&mut self) -> Result<(i32, u64), Failure> {
        for line in self.lines.by_ref() {
            let line = line.map_err(os)?;
            if line.contains("CORRUPT") {
                return Err(Failure::new(Code::Software, format!("demo: {line}")));
            }
            if let Some(r) = parse_restored(&line) {
                return Ok(r);
            }
        }
        Err(Failure::new(
            Code::Software,
            "demo: the host stopped unexpectedly",
        ))
    }

    fn signal(&self, sig: Signal) {
        if let Some(p) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(p, sig);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.signal(Signal::TERM);
        let _ = self.child.wait();
    }
}

fn kill(pid: i32) -> Result<(), Failure> {
    let p = Pid::from_raw(pid).ok_or_else(|| os("bad pid"))?;
    rustix::process::kill_process(p, Signal::KILL).map_err(os)
}

/// Runs the demo: SIGKILLs the client `kills` times; `keep_dir` keeps its directory.
///
/// # Errors
///
/// A [`Failure`] if the host or the client misbehave.
pub fn run(kills: u32, keep_dir: bool) -> Result<ExitCode, Failure> {
    let me = std::env::current_exe().map_err(os)?;
    let dir: PathBuf = std::env::temp_dir().join(format!("shmsnap-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::new(
            Code::CantCreat,
            format!("demo: cannot create {}: {e}", dir.display()),
        )
    })?;
    let state = dir.join("primes.snap");
    println!(
        "demo: writing to {} (removed at the end unless --keep-dir)",
        dir.display()
    );
    println!(
        "demo: starting `shmsnap run --strategy queue --interval 100ms -- shmsnap example primes`"
    );
    let result = (|| {
        let mut host = Host::start(&me, &state)?;
        let (mut pid, k) = host.next_restored()?;
        println!("demo: client started with {k} primes");
        for round in 1..=kills {
            std::thread::sleep(Duration::from_millis(700));
            let t = Instant::now();
            kill(pid)?;
            let (new_pid, k) = host.next_restored()?;
            println!(
                "demo: kill {round}/{}: SIGKILLed the client; the host kept its memory and restarted it after {:.0} ms with {k} primes, every one verified",
                kills,
                t.elapsed().as_secs_f64() * 1e3
            );
            pid = new_pid;
        }
        // Now the host itself: the client dies with it (parent-death signal), the memory is
        // gone, and only the last persisted snapshot remains.
        std::thread::sleep(Duration::from_millis(700));
        host.signal(Signal::KILL);
        let _ = host.child.wait();
        drop(host);
        println!("demo: SIGKILLed the host (and with it the client); starting it again from disk");
        let mut host = Host::start(&me, &state)?;
        let (_, k) = host.next_restored()?;
        println!("demo: restored {k} primes from the last snapshot on disk, every one verified");
        std::thread::sleep(Duration::from_millis(300));
        host.signal(Signal::TERM);
        let status = host.child.wait().map_err(os)?;
        let v = Command::new(&me)
            .arg("verify")
            .arg(&state)
            .output()
            .map_err(os)?;
        print!("demo: {}", String::from_utf8_lossy(&v.stdout));
        if !v.status.success() {
            eprint!("{}", String::from_utf8_lossy(&v.stderr));
        }
        println!("demo: host stopped by SIGTERM ({status})");
        Ok(())
    })();
    if keep_dir {
        println!("demo: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.map(|()| ExitCode::SUCCESS)
}
