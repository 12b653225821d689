//! The guard of a freeze: what resumes the client, run exactly once (explicitly or on drop),
//! and the two resume primitives (`0` into `cgroup.freeze`, `SIGCONT` to the group).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::{retry_on_intr, Errno};
use rustix::process::{kill_process_group, Pid, Signal};

use super::error::FreezeError;

/// What resumes a frozen client.
#[derive(Debug)]
pub(super) enum Thaw {
    /// Write `0` into this `cgroup.freeze`.
    Cgroup(PathBuf),
    /// `SIGCONT` to this process group.
    Signal(Pid),
}

impl Thaw {
    fn run(&self) -> Result<(), FreezeError> {
        match self {
            Thaw::Cgroup(path) => write_freeze(path, false),
            Thaw::Signal(pgid) => cont(*pgid),
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
    pub(super) froze_in: Duration,
    /// When the stop was requested: the pause a client feels starts here.
    since: Instant,
    /// `true` once thawed successfully by [`Frozen::thaw`].
    thawed: bool,
}

impl Frozen {
    pub(super) fn new(thaw: Thaw, since: Instant) -> Self {
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

/// Writes `1` (freeze) or `0` (thaw) into a `cgroup.freeze`; thawing a cgroup that is gone is
/// no error.
pub(super) fn write_freeze(path: &Path, freeze: bool) -> Result<(), FreezeError> {
    let value: &[u8] = if freeze { b"1" } else { b"0" };
    let file = std::fs::OpenOptions::new().write(true).open(path);
    let result = file.and_then(|f| {
        retry_on_intr(|| rustix::io::write(&f, value))
            .map(drop)
            .map_err(Into::into)
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) if !freeze && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FreezeError::io(
            format!("write {} into {}", value[0] as char, path.display()),
            e,
        )),
    }
}

/// `kill(-pgid, SIGCONT)`; a group that is gone left nothing stopped.
pub(super) fn cont(pgid: Pid) -> Result<(), FreezeError> {
    match kill_process_group(pgid, Signal::CONT) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(FreezeError::io(
            format!("send SIGCONT to process group {}", pgid.as_raw_pid()),
            e,
        )),
    }
}
