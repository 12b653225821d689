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
    /// 74: an I/O error while reading or writing; for `run`, also a requested stop whose
    /// final snapshot could not be persisted.
    IoErr = 74,
    /// 75 (`EX_TEMPFAIL`, "try again later"): another host holds the state file's lock. The
    /// condition is temporary by nature — it ends when that host stops — so a service manager
    /// that restarts on failure may retry, and a script can tell it from a real error.
    TempFail = 75,
    /// 78: the configuration does not fit (size too small for the snapshot or the layout).
    Config = 78,
    /// 127: the client command was not found.
    NotFound = 127,
}

/// The exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0    success (for `run`: the client exited with status 0, or a stop was requested with
       SIGTERM/SIGINT and the final snapshot was persisted or nothing needed persisting)
  1-63, 128+N
       `run` forwards the client's exit status (128+N if killed by signal N)
  64   usage error
  65   a snapshot file is corrupt, truncated or not a shmsnap snapshot
  66   an input file does not exist or cannot be read
  70   internal error
  71   operating-system error (memfd, mmap, fork)
  73   the state directory is missing or not writable
  74   I/O error; for `run`: a requested stop whose final snapshot failed
  75   another shmsnap host is running on the same state file (FILE.lock is held); for
       `restore`: that host changed the state while it was read (run it again); for
       `run --replica`: another host holds the replica's lease, or FILE is missing and the
       replica cannot be read (the client is not started empty)
  78   --size too small for the snapshot, or the region too small for the layout; for a
       replica: refused credentials, a missing bucket, or a store that ignores conditional
       writes (If-None-Match / If-Match)
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

/// How the final snapshot of a stop requested by SIGTERM/SIGINT went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSnapshot {
    /// A snapshot was persisted.
    Persisted,
    /// Nothing needed persisting (nothing new since the last snapshot, nothing committed, or
    /// the newest state is already on disk).
    NothingToPersist,
    /// The final snapshot failed; the previous snapshot (if any) stays on disk.
    Failed,
}

/// The status of `run` after a *requested* stop: 0 when the state is safe on disk (a stop
/// that was asked for and saved everything is a success — also for systemd, which would
/// otherwise mark the unit failed on 143), [`Code::IoErr`] when the final snapshot failed.
pub fn requested_stop_status(final_snapshot: FinalSnapshot) -> u8 {
    match final_snapshot {
        FinalSnapshot::Persisted | FinalSnapshot::NothingToPersist => 0,
        FinalSnapshot::Failed => Code::IoErr as u8,
    }
}

/// The exit code for an error of `Persister::new` (opening the state file's directory and
/// taking its lock): [`Code::TempFail`] when another host holds the lock, [`Code::Usage`]
/// for an out-of-range `--keep`, [`Code::CantCreat`] otherwise (missing or unwritable
/// directory, a symlink or a FIFO at the state path).
pub fn persister_code(e: &std::io::Error) -> Code {
    use shmsnap_linux::persist::StateError;
    match StateError::of(e) {
        Some(StateError::Locked { .. }) => Code::TempFail,
        Some(StateError::KeepTooLarge { .. }) => Code::Usage,
        _ => Code::CantCreat,
    }
}

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

/// The exit code for a chain error: the base's as [`snapshot_code`], I/O as [`io_code`],
/// [`Code::NoInput`] for a point older than the chain, [`Code::DataErr`] for a bad delta.
pub fn chain_code(e: &shmsnap_linux::chain::ChainError) -> Code {
    use shmsnap_linux::chain::ChainErrorKind as K;
    match e.kind() {
        K::Base(e) => snapshot_code(e),
        K::Io(source) => io_code(source),
        K::NotInChain { .. } => Code::NoInput,
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

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_linux::persist::Persister;

    #[test]
    fn a_requested_stop_that_saved_the_state_is_a_success() {
        assert_eq!(requested_stop_status(FinalSnapshot::Persisted), 0);
        assert_eq!(requested_stop_status(FinalSnapshot::NothingToPersist), 0);
        assert_eq!(requested_stop_status(FinalSnapshot::Failed), 74);
        assert!(EXIT_CODES_HELP.contains("final snapshot failed"));
    }

    #[test]
    fn a_held_lock_maps_to_tempfail_and_other_errors_to_cantcreat() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let _first = Persister::new(&state, 1).unwrap();
        let e = Persister::new(&state, 1).unwrap_err();
        assert_eq!(persister_code(&e), Code::TempFail);
        assert_eq!(Code::TempFail as u8, 75);
        assert!(EXIT_CODES_HELP.contains("75   another shmsnap host"));
        let e = Persister::new(&dir.path().join("missing/s"), 1).unwrap_err();
        assert_eq!(persister_code(&e), Code::CantCreat);
        let e = Persister::new(&state, 1001).unwrap_err();
        assert_eq!(persister_code(&e), Code::Usage);
    }
}
