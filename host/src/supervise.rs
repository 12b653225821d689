//! `shmsnap run`: the supervisor loop.
//!
//! One thread waits for signals (signal-hook) and forwards them over a channel; the main
//! thread owns the client, the region and the snapshotter, and sleeps in `recv_timeout`
//! between events — an idle host costs nothing but a wake-up per interval.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use shmsnap_linux::listen::{take_listen_fd, ListenError};
use shmsnap_linux::{Mapping, Memfd, Protection};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM, SIGUSR1};
use tracing::{debug, info, warn};

use crate::cli::{RestartArg, RunArgs, StrategyArg};
use crate::exit::{Code, Failure};
use crate::notify::Notifier;
use crate::snap::{open_persister, prepare_region, Prepared, Snapshotter};

/// Shortest pause before a restart.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// A client that ran at least this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// Finds `program` the way `execvp` will, so a typo fails before anything starts.
///
/// # Errors
///
/// [`Code::NotFound`] naming the program.
pub fn resolve_command(program: &OsStr) -> Result<PathBuf, Failure> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let not_found = |detail: &str| {
        Failure::new(
            Code::NotFound,
            format!(
                "command not found: {} ({detail})",
                program.to_string_lossy()
            ),
        )
    };
    if program.as_bytes().contains(&b'/') {
        let p = PathBuf::from(program);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(not_found("no executable file at that path"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_exec(p))
        .ok_or_else(|| not_found("not in PATH"))
}

/// The region fd passed by the service manager (fd store), if any.
fn inherited_region(name: &str) -> Option<Memfd> {
    match take_listen_fd(name) {
        Ok(fd) => match Memfd::from_fd(fd) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("ignoring the passed fd named {name}: {e}");
                None
            }
        },
        Err(ListenError::Missing { .. }) => None,
        Err(e) => {
            warn!("ignoring LISTEN_FDS: {e}");
            None
        }
    }
}

/// What the client is doing.
#[derive(Debug)]
enum Client {
    Running { pid: Pid, started: Instant },
    Waiting { until: Instant },
}

/// Runs the supervisor until the client is done (per the restart policy) or a stop signal.
///
/// # Errors
///
/// A [`Failure`] for anything that prevents starting (bad snapshot, unwritable directory,
/// command not found, ...). Once the client runs, problems are logged, not fatal.
pub fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let program = args
        .command
        .first()
        .ok_or_else(|| Failure::new(Code::Usage, "no command given"))?;
    resolve_command(program)?;
    // Before any thread starts: the environment changes (LISTEN_*), and fd 3 is reserved so
    // no later fd can take the slot the client's region goes to.
    let inherited = inherited_region(&args.fd_name);
    shmsnap_linux::handover::reserve_fd3()
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot reserve fd 3: {e}")))?;
    let persister = open_persister(&args.state, args.keep)?;
    let from_store = inherited.is_some();
    let Prepared { memfd, restored } = match inherited {
        Some(memfd) => {
            if let Some(size) = args.size {
                memfd.grow(size).map_err(|e| {
                    Failure::new(
                        Code::Config,
                        format!("cannot size the inherited region to {size} bytes: {e}"),
                    )
                })?;
            }
            info!("reusing the region from the service manager's fd store (no restore from disk)");
            Prepared {
                memfd,
                restored: None,
            }
        }
        None => prepare_region(&persister, args.size, args.fallback)?,
    };
    if let Some(info) = &restored {
        if info.meta.strategy != args.strategy.code() {
            warn!(
                "the snapshot was taken with strategy code {}, this run uses {:?}",
                info.meta.strategy, args.strategy
            );
        }
    }
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly)
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot map the region: {e}")))?;
    let mut snap = Snapshotter::new(persister, args.strategy, restored.as_ref());
    if !from_store {
        snap.mark_clean(&map);
    }
    let notifier = Notifier::from_env();
    notifier.store_fd(&memfd, &args.fd_name);

    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot become a child subreaper: {e}")))?;
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });

    let mut cmd = client_command(&args, &memfd)?;
    let mut client = spawn(&mut cmd)?;
    notifier.ready(&format!("client running; state {}", args.state.display()));
    let mut backoff = MIN_BACKOFF;
    let mut stop_deadline: Option<Instant> = None;
    let mut next_tick = Instant::now() + args.interval;
    let status = loop {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if args.strategy == StrategyArg::Queue {
            wake = wake.min(next_tick);
        }
        if let Client::Waiting { until } = client {
            wake = wake.min(until);
        }
        if let Some(d) = stop_deadline {
            wake = wake.min(d);
        }
        let event = rx.recv_timeout(wake.saturating_duration_since(now));
        let mut exited = None;
        match event {
            Ok(SIGCHLD) => exited = reap(&client),
            Ok(SIGUSR1) => {
                if args.strategy == StrategyArg::Queue {
                    snap.take_and_log(
                        &memfd,
                        &map,
                        matches!(client, Client::Running { .. }),
                        "SIGUSR1",
                    );
                } else {
                    info!("SIGUSR1: the exit strategy snapshots when the client exits");
                }
            }
            Ok(sig) => {
                // SIGTERM or SIGINT: forward, then wait for the client with a deadline.
                notifier.stopping();
                match client {
                    Client::Running { pid, .. } => {
                        info!(
                            "forwarding signal {sig} to the client (pid {})",
                            pid.as_raw_pid()
                        );
                        let sig = Signal::from_named_raw(sig).unwrap_or(Signal::TERM);
                        let _ = rustix::process::kill_process(pid, sig);
                        stop_deadline.get_or_insert(Instant::now() + args.stop_timeout);
                    }
                    Client::Waiting { .. } => {
                        info!("stop requested while the client was not running");
                        break 143;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure::new(Code::Software, "the signal thread stopped"));
            }
        }
        let now = Instant::now();
        if let (Some(d), Client::Running { pid, .. }) = (stop_deadline, &client) {
            if now >= d {
                warn!(
                    "the client did not exit within {:?}; killing it",
                    args.stop_timeout
                );
                let _ = rustix::process::kill_process_group(*pid, Signal::KILL);
                let _ = rustix::process::kill_process(*pid, Signal::KILL);
                stop_deadline = Some(now + Duration::from_secs(3600));
            }
        }
        if let Some((code, ran)) = exited {
            kill_descendants();
            snap.take_and_log(&memfd, &map, false, "client exited");
            status_line(&notifier, &snap);
            let failed = code != 0;
            let restart = stop_deadline.is_none()
                && match args.restart {
                    RestartArg::Never => false,
                    RestartArg::OnFailure => failed,
                    RestartArg::Always => true,
                };
            if !restart {
                break code;
            }
            backoff = if ran >= STABLE_RUN {
                MIN_BACKOFF
            } else {
                (backoff * 2).min(args.max_backoff)
            };
            let pause = if ran >= STABLE_RUN {
                MIN_BACKOFF
            } else {
                backoff / 2
            };
            info!("restarting the client in {pause:?}");
            client = Client::Waiting { until: now + pause };
            continue;
        }
        if let Client::Waiting { until } = client {
            if now >= until {
                client = spawn(&mut cmd)?;
            }
        }
        if args.strategy == StrategyArg::Queue && now >= next_tick {
            let alive = matches!(client, Client::Running { .. });
            snap.take_and_log(&memfd, &map, alive, "interval");
            status_line(&notifier, &snap);
            next_tick = now + args.interval;
        }
    };
    kill_descendants();
    info!("exiting with status {status}");
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
}

fn status_line(notifier: &Notifier, snap: &Snapshotter) {
    if notifier.enabled() {
        let age = snap
            .last_persisted
            .map_or("no snapshot yet".to_owned(), |t| {
                format!("last snapshot {:.1}s ago", t.elapsed().as_secs_f64())
            });
        notifier.status(&format!("{age}; {} starved attempts", snap.starved));
    }
}

/// The command that starts the client through the exec shim (`shmsnap __exec -- CMD...`).
fn client_command(args: &RunArgs, memfd: &Memfd) -> Result<Command, Failure> {
    let me = std::env::current_exe().map_err(|e| {
        Failure::new(
            Code::OsErr,
            format!("cannot find the shmsnap executable: {e}"),
        )
    })?;
    let mut cmd = Command::new(me);
    cmd.arg("__exec").arg("--").args(&args.command);
    // The client must not talk to the service manager in our name.
    cmd.env_remove("NOTIFY_SOCKET");
    // Its own process group, so the whole tree can be signalled.
    cmd.process_group(0);
    shmsnap_linux::handover::prepare_command(&mut cmd, memfd, &args.fd_name)
        .map_err(|e| Failure::new(Code::Usage, format!("cannot prepare the client: {e}")))?;
    Ok(cmd)
}

fn spawn(cmd: &mut Command) -> Result<Client, Failure> {
    let child = cmd
        .spawn()
        .map_err(|e| Failure::new(Code::OsErr, format!("cannot start the client: {e}")))?;
    let pid = Pid::from_raw(child.id() as i32)
        .ok_or_else(|| Failure::new(Code::Software, "client has pid 0"))?;
    info!("client started (pid {})", pid.as_raw_pid());
    // Reaped by `reap` (waitpid), not through `Child`.
    drop(child);
    Ok(Client::Running {
        pid,
        started: Instant::now(),
    })
}

/// Reaps every exited child; returns the client's exit status (128+N for signal N) and how
/// long it ran, if the client was among them.
fn reap(client: &Client) -> Option<(i32, Duration)> {
    let mut out = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if let Client::Running { pid: cpid, started } = client {
            if pid == *cpid {
                let code = exit_code(status);
                info!(
                    "client (pid {}) exited with status {code}",
                    pid.as_raw_pid()
                );
                out = Some((code, started.elapsed()));
                continue;
            }
        }
        debug!("reaped descendant pid {}", pid.as_raw_pid());
    }
    out
}

fn exit_code(status: WaitStatus) -> i32 {
    if let Some(code) = status.exit_status() {
        code
    } else if let Some(sig) = status.terminating_signal() {
        128 + sig
    } else {
        1
    }
}

/// Kills every remaining descendant (they are ours: the host is a subreaper) and reaps them.
fn kill_descendants() {
    for _ in 0..100 {
        let children = children();
        if children.is_empty() {
            return;
        }
        for pid in &children {
            if let Some(p) = Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process_group(p, Signal::KILL);
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
        while let Ok(Some(_)) = rustix::process::wait(WaitOptions::NOHANG) {}
    }
    warn!("some descendants could not be killed");
}

/// Our children, from `/proc/self/task/*/children`.
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}
