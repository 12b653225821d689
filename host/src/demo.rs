//! `shmsnap demo`: the primes client under the host, SIGKILLed a few times.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::cli::DemoArgs;
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

/// Runs the demo.
///
/// # Errors
///
/// A [`Failure`] if the host or the client misbehave.
pub fn run(args: &DemoArgs) -> Result<ExitCode, Failure> {
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
    let mut host = Command::new(&me)
        .args([
            "run",
            "--strategy",
            "queue",
            "--interval",
            "100ms",
            "--size",
            "16M",
            "--state",
        ])
        .arg(&state)
        .args([
            "--",
            me.to_str().unwrap_or("shmsnap"),
            "example",
            "primes",
            "--pause",
            "2ms",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(os)?;
    let out = host.stdout.take().ok_or_else(|| os("no stdout"))?;
    let mut lines = BufReader::new(out).lines();
    let mut next_restored = || -> Result<(i32, u64), Failure> {
        for line in lines.by_ref() {
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
    };
    let result = (|| {
        let (mut pid, k) = next_restored()?;
        println!("demo: client started with {k} primes");
        for round in 1..=args.kills {
            std::thread::sleep(Duration::from_millis(700));
            let t = Instant::now();
            let p = Pid::from_raw(pid).ok_or_else(|| os("bad pid"))?;
            rustix::process::kill_process(p, Signal::KILL).map_err(os)?;
            let (new_pid, k) = next_restored()?;
            println!(
                "demo: kill {round}/{}: SIGKILLed the client; restarted after {:.0} ms with {k} primes, every one verified",
                args.kills,
                t.elapsed().as_secs_f64() * 1e3
            );
            pid = new_pid;
        }
        Ok(())
    })();
    if let Ok(p) = i32::try_from(host.id()) {
        if let Some(p) = Pid::from_raw(p) {
            let _ = rustix::process::kill_process(p, Signal::TERM);
        }
    }
    let status = host.wait().map_err(os)?;
    if result.is_ok() {
        let v = Command::new(&me)
            .arg("verify")
            .arg(&state)
            .output()
            .map_err(os)?;
        print!("demo: {}", String::from_utf8_lossy(&v.stdout));
        if !v.status.success() {
            eprint!("{}", String::from_utf8_lossy(&v.stderr));
        }
        println!("demo: host exited ({status}); the snapshot survives every SIGKILL above");
    }
    if args.keep_dir {
        println!("demo: kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result.map(|()| ExitCode::SUCCESS)
}
