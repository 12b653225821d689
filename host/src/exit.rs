//! Exit codes (sysexits(3) style) and the error type that carries them to `main`.

use std::fmt;
use std::process::ExitCode;

/// What went wrong, as an exit code a script can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 64: the command line is wrong.
    Usage = 64,
    /// 65: a snapshot file is corrupt, truncated or not a snapshot.
    DataErr = 65,
    /// 66: an input file does not exist or cannot be read.
    NoInput = 66,
    /// 70: an internal error (a bug).
    Software = 70,
    /// 71: an operating-system error (memfd, mmap, fork...).
    OsErr = 71,
    /// 73: the state file's directory is missing or not writable.
    CantCreat = 73,
    /// 74: an I/O error while reading or writing.
    IoErr = 74,
    /// 78: the configuration does not fit (size too small for the snapshot or the layout).
    Config = 78,
    /// 127: the client command was not found.
    NotFound = 127,
}

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0    success (for `run`: the client exited with status 0)
  1-63, 128+N
       `run` forwards the client's exit status (128+N if killed by signal N)
  64   usage error
  65   a snapshot file is corrupt, truncated or not a shmsnap snapshot
  66   an input file does not exist or cannot be read
  70   internal error
  71   operating-system error (memfd, mmap, fork)
  73   the state directory is missing or not writable
  74   I/O error
  78   --size too small for the snapshot, or the region too small for the layout
  127  the client command was not found";

/// A failure with its exit code and a one-line message.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: Code,
    /// The message (one line, names the file and the problem).
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code as u8)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code for a snapshot error.
pub fn snapshot_code(e: &shmsnap_linux::snapshot::SnapshotError) -> Code {
    use shmsnap_linux::snapshot::SnapshotErrorKind as K;
    match e.kind() {
        K::Io(source) => io_code(source),
        K::NotRegularFile { .. } => Code::NoInput,
        K::RegionTooSmall { .. } => Code::Config,
        _ => Code::DataErr,
    }
}

/// The exit code for an I/O error.
pub fn io_code(e: &std::io::Error) -> Code {
    match e.kind() {
        std::io::ErrorKind::NotFound => Code::NoInput,
        std::io::ErrorKind::PermissionDenied => Code::NoInput,
        _ => Code::IoErr,
    }
}
