//! The `shmsnap restore` command: one point of a snapshot chain, written as a standalone
//! snapshot file. Which point and from which chain is the restore library's
//! ([`crate::chains`]); this module is the command and its output file.
//!
//! The steps: [`point`] (which state: newest, `--at`, `--seq`), [`source`] (which chains),
//! [`Out::check`] (refusals before any work: OUT exists, OUT is the state), `pick` (the chain
//! and the number of deltas), then [`Out::write`]:
//! `materialize` into a temp file in OUT's directory, `fdatasync`, `renameat2` (with
//! `RENAME_NOREPLACE` unless `--force`; `link` + `unlink` on a file system without it),
//! `fsync` of the directory. Read-only on the state:
//! nothing of FILE's is opened for writing, renamed or removed.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rustix::fs::{Mode, OFlags};
use shmsnap_core::Strategy;
use shmsnap_linux::atomic_file::{AtomicFile, CommitError, Rule, Step};
use shmsnap_linux::chain::{self, At};
use shmsnap_linux::noreplace::{Exclusive, NoReplace};

use tracing::warn;

use shmsnap_linux::persist::generation_index;

use crate::chains::{generations, parent_of, source, write_point};
use crate::config::{RestoreRequest, Source};
use crate::exit::{Code, Failure};
use crate::time::rfc3339;

/// `shmsnap restore --state FILE --to OUT [--at TIME | --seq N] [--force]`.
///
/// # Errors
///
/// A [`Failure`]: 64 for OUT naming the state, 73 for an existing OUT without `--force` (or
/// an unwritable directory), 66 for a point older than every kept state (the message lists
/// what exists) or a missing state, 65 for a corrupt base or a point past a broken delta.
pub fn run(args: &RestoreRequest) -> Result<ExitCode, Failure> {
    let state = match &args.source {
        Source::State(state) => state,
        Source::Replica(url) => {
            let out = Out::check(&args.to, None, args.force)?;
            return crate::replica::fetch::restore_from(url, &out, args.at, args.fallback);
        }
    };
    let at = point(args);
    let out = Out::check(&args.to, Some(state), args.force)?;
    let chains = source(state)?;
    let (chain, info, report) = out.write(|file| write_point(&chains, at, args.fallback, file))?;
    let applied = report.listing.deltas.len();
    if let Some(stop) = &report.listing.stop {
        tracing::warn!("the chain ends early: {stop}; restored the newest sound point");
    }
    let seq = match report.listing.deltas.last() {
        Some(d) => d.footer.next_seq,
        None => report.listing.base_next_seq,
    };
    let seq = if Strategy::from_code(info.meta.strategy) == Some(Strategy::Queue) {
        format!(", next_seq {seq}")
    } else {
        String::new()
    };
    println!(
        "{}: wrote {} generation {} + {applied} delta(s), taken {}{seq}, {} bytes",
        args.to.display(),
        chain.base.display(),
        info.meta.generation,
        rfc3339(info.meta.unix_time_ns),
        info.image_len
    );
    Ok(ExitCode::SUCCESS)
}

/// Which state of a chain the arguments ask for.
fn point(args: &RestoreRequest) -> At {
    match (args.at, args.seq) {
        (Some(t), _) => At::Time(t),
        (None, Some(n)) => At::Seq(n),
        (None, None) => At::Latest,
    }
}

/// The output file: its directory (open), its name, and whether it may replace a file.
struct Out {
    dir: OwnedFd,
    dir_path: PathBuf,
    path: PathBuf,
    name: OsString,
    force: bool,
}

impl Out {
    /// Refuses `to` if it is the state file (when restoring from one), one of its generations,
    /// its lock or its chain directory (or inside it), or the same file as any of them (64); or
    /// if it exists
    /// without `force`, or its directory cannot be opened (73).
    fn check(to: &Path, state: Option<&Path>, force: bool) -> Result<Out, Failure> {
        let usage = |m: String| Failure::new(Code::Usage, m);
        let name = match to.file_name() {
            Some(n) if n != ".." => n.to_os_string(),
            _ => return Err(usage(format!("--to {}: not a file name", to.display()))),
        };
        if let Some((what, state)) = state.and_then(|s| Some((names_state(to, s)?, s))) {
            return Err(usage(format!(
                "--to {} is {what} of --state {}: restore never writes over the state; pick \
                 another file",
                to.display(),
                state.display()
            )));
        }
        if to.symlink_metadata().is_ok() && !force {
            return Err(Failure::new(
                Code::CantCreat,
                format!("{} exists; pass --force to replace it", to.display()),
            ));
        }
        let dir_path = parent_of(to).to_path_buf();
        let dir = rustix::fs::open(
            &dir_path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            Failure::new(
                Code::CantCreat,
                format!("cannot open the directory {}: {e}", dir_path.display()),
            )
        })?;
        Ok(Out {
            dir,
            dir_path,
            path: to.to_path_buf(),
            name,
            force,
        })
    }

    /// Writes the file: `fill` on a new temp file in OUT's directory, `fdatasync`, rename to
    /// OUT (never over an existing OUT without `--force`), `fsync` of the directory. The temp
    /// file is removed on any error.
    fn write<T>(&self, fill: impl FnOnce(&File) -> Result<T, Failure>) -> Result<T, Failure> {
        let mut prefix = OsString::from(".");
        prefix.push(&self.name);
        prefix.push(".tmp.");
        let temp = AtomicFile::create(self.dir.as_fd(), &self.dir_path, &prefix).map_err(|e| {
            Failure::new(
                Code::CantCreat,
                format!(
                    "cannot create a temp file in {}: {e}",
                    self.dir_path.display()
                ),
            )
        })?;
        let t = fill(temp.file())?;
        let temp_path = temp.temp_path();
        // RENAME_NOREPLACE without --force, or `link` + `unlink` where the file system lacks
        // it (nothing excludes other writers of OUT's directory: only atomic mechanisms).
        let no_replace = NoReplace::new();
        let rule = if self.force {
            Rule::Replace
        } else {
            Rule::NoReplace(&no_replace, Exclusive::No)
        };
        let committed = temp.commit(&self.name, rule);
        if let Some(notice) = no_replace.take_notice() {
            warn!("{notice}");
        }
        let Err(CommitError { step, error: e }) = committed else {
            return Ok(t);
        };
        Err(match step {
            Step::SyncData => Failure::new(
                Code::IoErr,
                format!("cannot fdatasync {}: {e}", temp_path.display()),
            ),
            Step::Rename if e.kind() == io::ErrorKind::AlreadyExists => Failure::new(
                Code::CantCreat,
                format!(
                    "{} appeared meanwhile; pass --force to replace it",
                    self.path.display()
                ),
            ),
            Step::Rename => Failure::new(
                Code::IoErr,
                format!("cannot rename {}: {e}", temp_path.display()),
            ),
            Step::SyncDir => Failure::new(
                Code::IoErr,
                format!(
                    "{} is written but maybe not durable: fsync of {}: {e}",
                    self.path.display(),
                    self.dir_path.display()
                ),
            ),
        })
    }
}

/// `restore --from` writes through the same atomic output as `restore --state`.
impl crate::replica::fetch::Destination for Out {
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn write(
        &self,
        fill: &mut dyn FnMut(&File) -> Result<crate::replica::fetch::Materialized, Failure>,
    ) -> Result<crate::replica::fetch::Materialized, Failure> {
        Out::write(self, fill)
    }
}

/// What `to` is of the state file `state`, if it names one of its files: the state file, a
/// kept generation, its lock, its chain directory or a file in it, or (by inode) any of them.
fn names_state(to: &Path, state: &Path) -> Option<&'static str> {
    let canon = |p: &Path| std::fs::canonicalize(parent_of(p)).ok();
    let (to_dir, state_dir) = (canon(to), canon(state));
    let (to_name, state_name) = (to.file_name()?.as_bytes(), state.file_name()?.as_bytes());
    if to_dir.is_some() && to_dir == state_dir {
        let rest = to_name.strip_prefix(state_name);
        match rest {
            Some(b"") => return Some("the state file"),
            Some(b".lock") => return Some("the lock"),
            Some(b".d") => return Some("the chain directory"),
            _ if generation_index(state_name, to_name).is_some() => {
                return Some("a kept generation")
            }
            _ => {}
        }
    }
    if to_dir.is_some() && to_dir == std::fs::canonicalize(chain::chain_dir(state)).ok() {
        return Some("a file of the chain directory");
    }
    let to_id = std::fs::metadata(to).ok().map(|m| (m.dev(), m.ino()))?;
    let same = generations(state)
        .ok()?
        .iter()
        .any(|c| std::fs::metadata(&c.base).is_ok_and(|m| (m.dev(), m.ino()) == to_id));
    same.then_some("the same file as the state or a kept generation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_naming_the_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        std::fs::write(&state, b"x").unwrap();
        std::fs::write(dir.path().join("s.snap.1"), b"y").unwrap();
        std::fs::create_dir(dir.path().join("s.snap.d")).unwrap();
        let link = dir.path().join("hard");
        std::fs::hard_link(dir.path().join("s.snap.1"), &link).unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let via_dotdot = sub.join("..").join("s.snap");
        for (to, what) in [
            (state.clone(), "the state file"),
            (via_dotdot, "the state file"),
            (dir.path().join("s.snap.1"), "a kept generation"),
            (dir.path().join("s.snap.7"), "a kept generation"),
            (dir.path().join("s.snap.lock"), "the lock"),
            (dir.path().join("s.snap.d"), "the chain directory"),
            (
                dir.path().join("s.snap.d/x"),
                "a file of the chain directory",
            ),
            (link, "the same file as the state or a kept generation"),
        ] {
            assert_eq!(names_state(&to, &state), Some(what), "{}", to.display());
        }
        assert_eq!(names_state(&dir.path().join("out.snap"), &state), None);
        assert_eq!(names_state(&dir.path().join("s.snapx"), &state), None);
    }
}
