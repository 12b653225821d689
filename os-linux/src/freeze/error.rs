//! Why a freeze failed (the client is running again in every case).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::proc_task::Task;

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

    pub(super) fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
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
