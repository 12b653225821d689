//! Exit codes (sysexits(3) style) and the error type that carries them to `main`.

use std::fmt;
use std::process::ExitCode;

/// What went wrong, as an exit code a script can act on (not to be confused with a
/// strategy's code in snapshot footers, `strategy::StrategyKind`).
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

impl Code {
    /// Every exit code shmsnap itself chooses (`run` also forwards its client's statuses);
    /// the test of `--help`'s table reads it.
    #[cfg(test)]
    pub const ALL: [Code; 10] = [
        Code::Usage,
        Code::DataErr,
        Code::NoInput,
        Code::Software,
        Code::OsErr,
        Code::CantCreat,
        Code::IoErr,
        Code::TempFail,
        Code::Config,
        Code::NotFound,
    ];
}

/// The exit codes, for `--help` (a test checks it lists exactly `Code::ALL`).
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

/// A typed error of a part, as far as its exit code is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// An I/O error reading or writing a file.
    Io(&'a std::io::Error),
    /// An error of `Persister::new` (opening the state file's directory, taking its lock).
    OpenState(&'a std::io::Error),
    /// An error reading or writing a snapshot file.
    Snapshot(&'a shmsnap_linux::snapshot::SnapshotError),
    /// An error reading or restoring a chain (a base and its deltas).
    Chain(&'a shmsnap_linux::chain::ChainError),
}

/// The one mapping from an error to an exit code.
///
/// - I/O: [`Code::NoInput`] for a missing or unreadable file, [`Code::IoErr`] otherwise.
/// - Opening the state: [`Code::TempFail`] when another host holds the lock, [`Code::Usage`]
///   for an out-of-range `--keep`, [`Code::CantCreat`] otherwise (missing or unwritable
///   directory, a symlink or a FIFO at the state path).
/// - A snapshot: I/O as above, [`Code::NoInput`] for not a regular file, [`Code::Config`]
///   for a region too small, [`Code::DataErr`] for anything corrupt.
/// - A chain: the base's as a snapshot's, I/O as above, [`Code::NoInput`] for a point older
///   than the chain, [`Code::Config`] for a region too small, [`Code::DataErr`] for a bad
///   delta.
pub fn code_of(cause: Cause<'_>) -> Code {
    use shmsnap_linux::chain::ChainErrorKind as C;
    use shmsnap_linux::persist::StateError;
    use shmsnap_linux::snapshot::SnapshotErrorKind as S;
    match cause {
        Cause::Io(e) => match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => Code::NoInput,
            _ => Code::IoErr,
        },
        Cause::OpenState(e) => match StateError::of(e) {
            Some(StateError::Locked { .. }) => Code::TempFail,
            Some(StateError::KeepTooLarge { .. }) => Code::Usage,
            _ => Code::CantCreat,
        },
        Cause::Snapshot(e) => match e.kind() {
            S::Io(source) => code_of(Cause::Io(source)),
            S::NotRegularFile { .. } => Code::NoInput,
            S::RegionTooSmall { .. } => Code::Config,
            _ => Code::DataErr,
        },
        Cause::Chain(e) => match e.kind() {
            C::Base(e) => code_of(Cause::Snapshot(e)),
            C::Io(source) => code_of(Cause::Io(source)),
            C::NotInChain { .. } => Code::NoInput,
            C::RegionTooSmall { .. } => Code::Config,
            _ => Code::DataErr,
        },
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
        assert_eq!(code_of(Cause::OpenState(&e)), Code::TempFail);
        assert_eq!(Code::TempFail as u8, 75);
        assert!(EXIT_CODES_HELP.contains("75   another shmsnap host"));
        let e = Persister::new(&dir.path().join("missing/s"), 1).unwrap_err();
        assert_eq!(code_of(Cause::OpenState(&e)), Code::CantCreat);
        let e = Persister::new(&state, 1001).unwrap_err();
        assert_eq!(code_of(Cause::OpenState(&e)), Code::Usage);
    }

    /// Every code shmsnap chooses has its line in `--help`'s table, and every line of the
    /// table (but the client's forwarded statuses) is one of them.
    #[test]
    fn the_help_table_lists_exactly_the_codes() {
        let listed: Vec<u8> = EXIT_CODES_HELP
            .lines()
            .filter_map(|l| l.strip_prefix("  "))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        let mut chosen: Vec<u8> = Code::ALL.iter().map(|&c| c as u8).collect();
        chosen.push(0);
        chosen.sort_unstable();
        assert_eq!(listed, chosen, "{EXIT_CODES_HELP}");
        // The exhaustive match: a new variant must be added to ALL (and so to the table).
        for c in Code::ALL {
            match c {
                Code::Usage
                | Code::DataErr
                | Code::NoInput
                | Code::Software
                | Code::OsErr
                | Code::CantCreat
                | Code::IoErr
                | Code::TempFail
                | Code::Config
                | Code::NotFound => {}
            }
        }
    }

    /// A point older than every state a chain holds is a missing input (66), as `restore`'s
    /// help says, not corrupt data.
    #[test]
    fn a_point_outside_the_chain_is_no_input() {
        use shmsnap_linux::chain::{ChainError, ChainErrorKind};
        let e = ChainError::from(ChainErrorKind::NotInChain { at: "seq 1".into() });
        assert_eq!(code_of(Cause::Chain(&e)), Code::NoInput);
        assert_eq!(Code::NoInput as u8, 66);
    }

    #[test]
    fn io_and_snapshot_errors_map_through_the_same_function() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(code_of(Cause::Io(&missing)), Code::NoInput);
        let other = std::io::Error::other("disk on fire");
        assert_eq!(code_of(Cause::Io(&other)), Code::IoErr);
    }
}
