//! Stopping a client's processes for a consistent copy of the region, and never leaving them
//! stopped: the freeze strategy's pause (DESIGN §17).
//!
//! Two mechanisms behind one RAII API, [`Freezer::freeze`] → [`Frozen`]:
//!
//! | mechanism | stop | proof of stopped | resume |
//! |---|---|---|---|
//! | [`cgroup`] | `1` into `cgroup.freeze` | `frozen 1` in `cgroup.events` (inotify wakes the wait) | `0` into `cgroup.freeze` |
//! | [`signal`] | `SIGSTOP` to the process group | every task of every process of the group in state `T`/`t` (`/proc`) | `SIGCONT` to the group |
//!
//! A [`Frozen`] thaws when it is dropped — on an error path, on a panic's unwind — and
//! [`Frozen::thaw`] thaws with the error reported. A freeze that is not complete within its
//! deadline (a task in uninterruptible sleep, a cgroup that never reports frozen) is
//! abandoned: thawed, and returned as [`FreezeError::Timeout`] naming what still ran.
//!
//! Everything read from `/proc` and `cgroup.events` is hostile input: bounded reads, every
//! field parsed or refused ([`FreezeError::Unreadable`]); a process that vanishes during the
//! scan is simply gone.
//!
//! What a freeze cannot stop (DESIGN §17): a device or `io_uring` writing into the region
//! (DMA and kernel workers run on), a process outside the group or cgroup that maps the memfd;
//! with signals, a process that left the group (`setsid`, `setpgid`).

pub mod cgroup;
mod proc;
pub mod signal;
pub mod stage;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::Pid;

pub use cgroup::CgroupFreezer;
pub use proc::Task;
pub use signal::ProcessGroup;
pub use stage::Staging;

/// How a client is stopped.
#[derive(Debug, Clone)]
pub enum Freezer {
    /// The cgroup v2 freezer of the client's cgroup.
    Cgroup(CgroupFreezer),
    /// `SIGSTOP`/`SIGCONT` to the client's process group.
    Signal(ProcessGroup),
}

impl Freezer {
    /// The mechanism's name (`cgroup` or `signal`), for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Freezer::Cgroup(_) => "cgroup",
            Freezer::Signal(_) => "signal",
        }
    }

    /// Stops every process of the client and waits, at most `deadline`, until all of them
    /// are stopped.
    ///
    /// # Errors
    ///
    /// [`FreezeError::Timeout`] if they did not all stop in time (they are thawed again);
    /// [`FreezeError::Io`] if the stop request failed; [`FreezeError::Unreadable`] for a
    /// `/proc` or `cgroup.events` text that is not the kernel's; [`FreezeError::Gone`] if the
    /// client has no process left. Every error path leaves the client running.
    pub fn freeze(&self, deadline: Duration) -> Result<Frozen, FreezeError> {
        match self {
            Freezer::Cgroup(c) => c.freeze(deadline),
            Freezer::Signal(g) => g.freeze(deadline),
        }
    }
}

/// What resumes a frozen client.
#[derive(Debug)]
enum Thaw {
    /// Write `0` into this `cgroup.freeze`.
    Cgroup(PathBuf),
    /// `SIGCONT` to this process group.
    Signal(Pid),
}

impl Thaw {
    fn run(&self) -> Result<(), FreezeError> {
        match self {
            Thaw::Cgroup(path) => cgroup::write_freeze(path, false),
            Thaw::Signal(pgid) => signal::cont(*pgid),
        }
    }
}

/// A frozen client; dropping it thaws the client (errors then go unreported: call
/// [`Frozen::thaw`] to see them).
///
/// Invariant: `thaw` resumes exactly what the freeze stopped, and runs exactly once — by
/// [`Frozen::thaw`] or by `drop`.
#[derive(Debug)]
#[must_use = "dropping a Frozen thaws the client at once"]
pub struct Frozen {
    thaw: Thaw,
    /// From the stop request to the proof that everything stopped.
    froze_in: Duration,
    /// When the stop was requested: the pause a client feels starts here.
    since: Instant,
    /// `true` once thawed successfully by [`Frozen::thaw`].
    thawed: bool,
}

impl Frozen {
    fn new(thaw: Thaw, since: Instant) -> Self {
        Frozen {
            thaw,
            froze_in: Duration::ZERO,
            since,
            thawed: false,
        }
    }

    /// How long the freeze took (stop request to the proof that all tasks stopped).
    pub fn froze_in(&self) -> Duration {
        self.froze_in
    }

    /// When the stop was requested.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Resumes the client; returns the whole pause (stop request to resume request).
    ///
    /// # Errors
    ///
    /// [`FreezeError::Io`] if the resume request failed (a cgroup that vanished, a process
    /// group that is gone is no error: nothing is left frozen).
    pub fn thaw(mut self) -> Result<Duration, FreezeError> {
        // On failure `thawed` stays false: the drop at the end of this call tries again.
        self.thaw.run()?;
        self.thawed = true;
        Ok(self.since.elapsed())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thawed {
            // Best effort on an error path: a second try covers a transient failure (EINTR
            // is retried inside); nothing else can be done from a destructor.
            if self.thaw.run().is_err() {
                let _ = self.thaw.run();
            }
        }
    }
}

/// Why a freeze failed; the client is running again in every case.
#[derive(Debug)]
pub enum FreezeError {
    /// Not everything stopped within the deadline; the attempt was abandoned (thawed).
    Timeout {
        /// `cgroup` or `signal`.
        mechanism: &'static str,
        /// The deadline that passed.
        waited: Duration,
        /// Tasks still running at the deadline (signal mechanism; empty for the cgroup one,
        /// whose kernel does not say which task holds it up).
        running: Vec<Task>,
    },
    /// A stop or resume request, or a read needed to check it, failed.
    Io {
        /// What was done, naming the file or process group.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A `/proc` or `cgroup.events` text is not what the kernel writes.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The process group has no process left (the client exited).
    Gone {
        /// The process group.
        pgid: i32,
    },
}

impl FreezeError {
    /// A short label for metrics: `timeout`, `io`, `unreadable` or `gone`.
    pub fn reason(&self) -> &'static str {
        match self {
            FreezeError::Timeout { .. } => "timeout",
            FreezeError::Io { .. } => "io",
            FreezeError::Unreadable { .. } => "unreadable",
            FreezeError::Gone { .. } => "gone",
        }
    }

    fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        FreezeError::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for FreezeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreezeError::Timeout {
                mechanism,
                waited,
                running,
            } => {
                write!(
                    f,
                    "the client did not stop within {waited:?} ({mechanism} freeze); abandoned \
                     and thawed"
                )?;
                if !running.is_empty() {
                    let list: Vec<String> = running.iter().take(8).map(Task::to_string).collect();
                    write!(f, "; still running: {}", list.join(", "))?;
                    if running.len() > 8 {
                        write!(f, " and {} more", running.len() - 8)?;
                    }
                    write!(
                        f,
                        " (state D is an uninterruptible sleep, e.g. slow I/O: raise --max-pause \
                         or wait for the I/O)"
                    )?;
                }
                Ok(())
            }
            FreezeError::Io { what, source } => write!(f, "cannot {what}: {source}"),
            FreezeError::Unreadable { path, detail } => {
                write!(f, "unexpected contents in {}: {detail}", path.display())
            }
            FreezeError::Gone { pgid } => {
                write!(f, "process group {pgid} has no process left to freeze")
            }
        }
    }
}

impl std::error::Error for FreezeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FreezeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<FreezeError> for io::Error {
    fn from(e: FreezeError) -> Self {
        let kind = match &e {
            FreezeError::Timeout { .. } => io::ErrorKind::TimedOut,
            FreezeError::Io { source, .. } => source.kind(),
            FreezeError::Unreadable { .. } => io::ErrorKind::InvalidData,
            FreezeError::Gone { .. } => io::ErrorKind::NotFound,
        };
        io::Error::new(kind, e)
    }
}
