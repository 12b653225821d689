//! The client process: find its command, start it, reap it, kill what it left behind.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use shmsnap_linux::Memfd;
use tracing::{debug, info, warn};

use crate::cgroup::ClientCgroup;
use crate::config::RunConfig;
use crate::exit::{Code, Failure};
use crate::metrics::{ClientExit, Metrics};

/// What the client is doing.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// Running since `started`.
    Running {
        /// Its pid.
        pid: Pid,
        /// When it was started.
        started: Instant,
    },
    /// Exited at `at`; the final snapshot is being taken, the restart is decided after it.
    Exited {
        /// Its exit status (128+N for signal N).
        code: i32,
        /// How long it ran.
        ran: Duration,
        /// When it was reaped.
        at: Instant,
    },
    /// To be restarted at `until`.
    Waiting {
        /// When.
        until: Instant,
    },
}

impl Client {
    /// Whether the client may be writing the region.
    pub fn alive(&self) -> bool {
        matches!(self, Client::Running { .. })
    }

    /// The running client's pid.
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Client::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

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

/// What starts the client, kept by the supervisor to rebuild its command when the region
/// moves to a fresh memfd.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// The client command and its arguments.
    pub command: Vec<OsString>,
    /// Whether the client should track its writes (`--strategy queue --incremental auto`).
    pub track: bool,
    /// The fd's name in `LISTEN_FDNAMES` (and in the fd store).
    pub fd_name: String,
}

impl ClientSpec {
    /// The client of `shmsnap run`'s arguments.
    pub fn of(args: &RunConfig) -> Self {
        ClientSpec {
            command: args.command.clone(),
            track: args.incremental,
            fd_name: args.fd_name.clone(),
        }
    }
}

/// The command that starts the client through the exec shim (`shmsnap __exec -- CMD...`),
/// which moves itself into `cgroup` (if any) before it execs the client, with `memfd` at
/// fd 3. Build a new one for a new region: the command keeps its fd 3 for good.
pub fn command(
    spec: &ClientSpec,
    memfd: &Memfd,
    cgroup: Option<&ClientCgroup>,
) -> Result<Command, Failure> {
    let me = std::env::current_exe().map_err(|e| {
        Failure::new(
            Code::OsErr,
            format!("cannot find the shmsnap executable: {e}"),
        )
    })?;
    let mut cmd = Command::new(me);
    cmd.arg("__exec");
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg.dir());
    }
    cmd.arg("--").args(&spec.command);
    // The client must not talk to the service manager in our name, nor believe the host's
    // watchdog is its own.
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(var);
    }
    // Write tracking costs the client a fault per first write to a page after each scan,
    // and seals the region (the host moves it before the next client): only when snapshots
    // may be deltas. Opt-in: a client nobody asks does not track.
    let track = if spec.track { "1" } else { "0" };
    cmd.env(shmsnap_linux::listen::TRACK_ENV, track);
    // Its own process group, so the whole tree can be signalled.
    cmd.process_group(0);
    shmsnap_linux::handover::prepare_command(&mut cmd, memfd, &spec.fd_name)
        .map_err(|e| Failure::new(Code::Usage, format!("cannot prepare the client: {e}")))?;
    Ok(cmd)
}

/// Starts the client; counts the start (or the failure to start) in `metrics`.
///
/// # Errors
///
/// [`Code::OsErr`] if it cannot be started.
pub fn spawn(cmd: &mut Command, metrics: &Metrics) -> Result<Client, Failure> {
    let child = cmd.spawn().map_err(|e| {
        metrics.client_exited(ClientExit::SpawnFailed);
        Failure::new(Code::OsErr, format!("cannot start the client: {e}"))
    })?;
    metrics.client_started();
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
/// long it ran, if the client was among them (and counts its exit in `metrics`).
pub fn reap(client: &Client, metrics: &Metrics) -> Option<(i32, Duration)> {
    let mut out = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if let Client::Running { pid: cpid, started } = client {
            if pid == *cpid {
                let code = exit_code(status);
                metrics.client_exited(exit_cause(status));
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

fn exit_cause(status: WaitStatus) -> ClientExit {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => ClientExit::Code(code),
        (None, Some(sig)) => ClientExit::Signal(sig),
        // `wait` without WUNTRACED/WCONTINUED reports only exits and kills.
        (None, None) => ClientExit::Code(exit_code(status)),
    }
}

/// Kills what the client left: its whole cgroup (if it has one, even processes that are no
/// longer our descendants), then every remaining descendant; reaps them.
pub fn kill_tree(cgroup: Option<&ClientCgroup>) {
    if let Some(cg) = cgroup {
        cg.kill();
    }
    kill_descendants();
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
