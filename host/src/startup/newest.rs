//! The newest restorable point of a state file, at start and when a corrupt region is
//! repaired: the rules of which generation is used, in one place.
//!
//! 1. The newest generation (`FILE`) first: its base and its deltas up to the first link that
//!    is not sound (`chain::restore_chain`, which ends the chain exactly where `verify` says;
//!    a warning names the link).
//! 2. A generation whose base yields no point is **skipped**, and the next older one
//!    (`FILE.1`, `FILE.2`, …) is tried, when its base is *corrupt*: a footer, CRC or image
//!    check failure, which no retry will cure. A base that could not be *read* (an I/O error,
//!    not a regular file) or is of a newer format version stops the host instead — the newest
//!    data may be recoverable — unless `--fallback` is given: then it is skipped too.
//! 3. Once a point is restored, every base skipped on the way is renamed aside to
//!    `<its name>.corrupt-<unix seconds>` (never over an existing name, never deleted), and a
//!    warning says what was skipped, why, and what is used. Renaming aside keeps it out of
//!    the generation rotation, which would otherwise delete it `--keep` snapshots later, and
//!    its generation is still counted, so no new base reuses it ([`highest_generation`]).
//! 4. If no generation yields a point, nothing is renamed and the host stops (65), naming
//!    each base and why: starting empty next to snapshots that exist would lose them.
//!
//! `restore --state` follows rules 1, 2 and 4 but renames nothing (it is read-only on the
//! state).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use shmsnap_linux::chain::{self, ChainError, ChainErrorKind, RestoreReport};
use shmsnap_linux::noreplace::{Exclusive, NoReplace};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotErrorKind, SnapshotInfo};
use tracing::warn;

use crate::exit::{code_of, Cause, Code, Failure};

/// A restored point: the base, its footer as first read, the restore, and the caller's value
/// (the region, at start).
#[derive(Debug)]
pub struct Found<T> {
    /// The base restored.
    pub path: PathBuf,
    /// Its footer.
    pub info: SnapshotInfo,
    /// What the restore did.
    pub report: RestoreReport,
    /// What the caller's restore returned besides.
    pub value: T,
}

/// Why a caller's restore of one generation failed.
#[derive(Debug)]
pub enum RestoreError {
    /// The chain yields no point (its base, its directory, the destination): the rules decide.
    Chain(ChainError),
    /// Something else (the region could not be made): stop with this.
    Fatal(Failure),
}

impl From<ChainError> for RestoreError {
    fn from(e: ChainError) -> Self {
        RestoreError::Chain(e)
    }
}

/// Whether a base that yields no point because of `e` may be skipped for an older
/// generation: always when it is corrupt (rule 2), with `fallback` also when it could not be
/// read or is of a newer format version.
pub fn skippable(e: &ChainError, fallback: bool) -> bool {
    let ChainErrorKind::Base(b) = e.kind() else {
        // Not the base: the chain directory or the destination; an older generation shares
        // the one and the other.
        return false;
    };
    let newer = matches!(b.kind(), SnapshotErrorKind::FutureVersion { .. });
    let corrupt = code_of(Cause::Snapshot(b)) == Code::DataErr && !newer;
    corrupt || fallback
}

/// Restores the newest restorable point of `persister`'s generations with `restore(base,
/// footer)` (which makes the region the image needs and restores the chain into it), by the
/// rules of the [module docs](self); renames the skipped bases aside (into
/// `<name>.corrupt-<unix_secs>`) once a point is restored. `Ok(None)`: there is no
/// generation at all.
///
/// # Errors
///
/// A [`Failure`] naming the base and why, when a base that may not be skipped yields no
/// point, when no generation yields one, or when a skipped base cannot be renamed aside.
pub fn restore_newest<T>(
    persister: &Persister,
    fallback: bool,
    unix_secs: u64,
    mut restore: impl FnMut(&Path, &SnapshotInfo) -> Result<(RestoreReport, T), RestoreError>,
) -> Result<Option<Found<T>>, Failure> {
    let generations = persister.generations().map_err(|e| {
        Failure::new(
            code_of(Cause::Io(&e)),
            format!(
                "cannot list the snapshots of {}: {e}",
                persister.target().display()
            ),
        )
    })?;
    let mut skipped: Vec<(PathBuf, ChainError)> = Vec::new();
    for g in generations {
        let tried = snapshot::read_footer_path(&g.path)
            .map_err(|e| RestoreError::Chain(e.into()))
            .and_then(|info| restore(&g.path, &info).map(|r| (info, r)));
        let (info, (report, value)) = match tried {
            Ok(t) => t,
            Err(RestoreError::Fatal(f)) => return Err(f),
            Err(RestoreError::Chain(e)) if skippable(&e, fallback) => {
                skipped.push((g.path, e));
                continue;
            }
            Err(RestoreError::Chain(e)) => return Err(stop(&g.path, &e, &skipped)),
        };
        unchanged(&g.path, &info, &report)?;
        for (bad, why) in &skipped {
            let aside = set_aside(persister.no_replace(), bad, unix_secs)?;
            warn!(
                "skipped {}: {why}; renamed it to {} (kept, never deleted) and restored the \
                 older generation {} instead",
                bad.display(),
                aside.display(),
                g.path.display()
            );
        }
        return Ok(Some(Found {
            path: g.path,
            info,
            report,
            value,
        }));
    }
    match skipped.is_empty() {
        true => Ok(None),
        false => Err(none_restorable(&skipped)),
    }
}

/// The failure for a base that yields no point and may not be skipped.
fn stop(path: &Path, e: &ChainError, skipped: &[(PathBuf, ChainError)]) -> Failure {
    let before = skipped
        .iter()
        .map(|(p, e)| format!("; skipped before it: {} ({e})", p.display()))
        .collect::<String>();
    let hint = match e.kind() {
        ChainErrorKind::Base(_) => {
            ". Nothing was changed; fix or move the file away, or pass --fallback to skip it \
             and restore an older generation (it is then renamed aside, never deleted)"
        }
        _ => ". Nothing was changed",
    };
    Failure::new(
        code_of(Cause::Chain(e)),
        format!("cannot restore {}: {e}{before}{hint}", path.display()),
    )
}

/// The failure when every generation was skipped: nothing is renamed, nothing started.
fn none_restorable(skipped: &[(PathBuf, ChainError)]) -> Failure {
    let each = skipped
        .iter()
        .map(|(p, e)| format!("{} ({e})", p.display()))
        .collect::<Vec<_>>()
        .join("; ");
    Failure::new(
        Code::DataErr,
        format!(
            "no snapshot generation can be restored: {each}. Nothing was changed; move the \
             files away to start empty"
        ),
    )
}

/// Refuses a restore whose base is not the file whose footer was read first (another
/// process replaced it meanwhile): a data problem, not trusted.
fn unchanged(path: &Path, info: &SnapshotInfo, report: &RestoreReport) -> Result<(), Failure> {
    let base = &report.listing.base;
    if base.image_len == info.image_len && base.meta == info.meta {
        return Ok(());
    }
    Err(Failure::new(
        Code::DataErr,
        format!(
            "{} changed while it was being restored (image {} bytes, then {}); is another \
             process writing it? Nothing was started",
            path.display(),
            info.image_len,
            base.image_len
        ),
    ))
}

/// Prefix of the name a file is set aside under: `<name>.corrupt-`.
pub const ASIDE: &str = ".corrupt-";

/// Renames `bad` to `<bad>.corrupt-<unix_secs>` (or `…-<n>` if taken), never over an existing
/// file; returns the new name.
///
/// # Errors
///
/// A [`Failure`] naming the file if it cannot be renamed.
pub fn set_aside(no_replace: &NoReplace, bad: &Path, unix_secs: u64) -> Result<PathBuf, Failure> {
    let failed = |e: std::io::Error| {
        Failure::new(
            code_of(Cause::Io(&e)),
            format!("cannot move the unusable {} aside: {e}", bad.display()),
        )
    };
    let dir_path = match bad.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = bad.file_name().unwrap_or(OsStr::new(""));
    let dir = std::fs::File::open(dir_path).map_err(failed)?;
    for n in 0..100u32 {
        let mut aside = OsString::from(name);
        aside.push(format!("{ASIDE}{unix_secs}"));
        if n > 0 {
            aside.push(format!("-{n}"));
        }
        // `no_replace` is the persister's: the caller holds the state's lock, and only hosts
        // of this state (this one, under the lock) create `.corrupt-*` names beside it.
        match no_replace.rename(
            std::os::fd::AsFd::as_fd(&dir),
            dir_path,
            name,
            &aside,
            Exclusive::Locked,
        ) {
            Ok(()) => return Ok(dir_path.join(aside)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(failed(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "100 names taken",
    )))
}

/// The highest generation of `persister`'s state anywhere the host looks: its generations,
/// its chain directory ([`chain::highest_generation`]) and the bases set aside beside it
/// (`FILE*.corrupt-*` whose footer is readable). A new base must be above it.
///
/// # Errors
///
/// A [`Failure`] if the directories cannot be listed.
pub fn highest_generation(persister: &Persister) -> Result<Option<u64>, Failure> {
    let target = persister.target();
    let listed = |e: &dyn std::fmt::Display| {
        Failure::new(
            Code::IoErr,
            format!("cannot find the generations of {}: {e}", target.display()),
        )
    };
    let chain = chain::highest_generation(persister).map_err(|e| listed(&e))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().unwrap_or_default().as_bytes().to_vec();
    let aside = std::fs::read_dir(&dir)
        .map_err(|e| listed(&e))?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.as_bytes();
            n.starts_with(&name) && n.windows(ASIDE.len()).any(|w| w == ASIDE.as_bytes())
        })
        .filter_map(|e| snapshot::read_footer_path(&e.path()).ok())
        .map(|info| info.meta.generation);
    Ok(chain.into_iter().chain(aside).max())
}
