//! The start-up restore: the state file's lock, and the region the host starts with, holding
//! the newest restorable point of the state's chains ([`prepare_region`]; the choice of that
//! point is [`newest`]'s). The live snapshots are [`crate::snap`]'s; docs/DESIGN.md §5 says
//! which state is restored and why.

pub mod newest;

pub use newest::skippable;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use shmsnap_linux::chain;
use shmsnap_linux::persist::{Persister, StateError};
use shmsnap_linux::snapshot::{self, SnapshotInfo};
use shmsnap_linux::Memfd;
use tracing::{info, warn};

use crate::exit::{code_of, Cause, Code, Failure};
use crate::progress;
use crate::time::{ms, now_ns};

/// The region the host runs with, and where it came from.
#[derive(Debug)]
pub struct Prepared {
    /// The memfd.
    pub memfd: Memfd,
    /// The snapshot restored into it, if any.
    pub restored: Option<SnapshotInfo>,
}

/// Takes the state file's lock, checks that its directory exists and is writable, and (under
/// the lock) removes temp files a crashed earlier run left behind.
///
/// # Errors
///
/// [`Code::TempFail`] if another host holds the lock, [`Code::Usage`] for a `keep` beyond the
/// maximum, [`Code::CantCreat`] otherwise ([`code_of`]); the message names the file.
pub fn open_persister(state: &Path, keep: usize) -> Result<Persister, Failure> {
    let dir_msg = |e: &io::Error| {
        let dir = state
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Failure::new(
            Code::CantCreat,
            format!(
                "cannot use state directory {} for {}: {e}",
                dir.display(),
                state.display()
            ),
        )
    };
    let persister =
        Persister::new(state, keep).map_err(|e| match code_of(Cause::OpenState(&e)) {
            // The lock, --keep and the file type have messages of their own, naming the file.
            code @ (Code::TempFail | Code::Usage) => Failure::new(code, e.to_string()),
            _ if StateError::of(&e).is_some() => Failure::new(Code::CantCreat, e.to_string()),
            _ => dir_msg(&e),
        })?;
    // Probe writability now rather than at the first snapshot.
    drop(persister.begin().map_err(|e| dir_msg(&e))?);
    match persister.remove_stale_temps() {
        Ok(0) => {}
        Ok(n) => info!("removed {n} temp file(s) left by an interrupted snapshot"),
        Err(e) => warn!("could not remove stale temp files: {e}"),
    }
    Ok(persister)
}

/// Creates the region and restores the newest restorable point into it: the newest
/// generation's chain up to its first unsound link, or — when the newest generation yields
/// no point — an older generation's, by the rules of [`newest`] (a corrupt base is skipped
/// and renamed aside, never deleted; with `fallback` also one that cannot be read).
///
/// # Errors
///
/// A [`Failure`] naming the file and the problem; nothing was changed then.
pub fn prepare_region(
    persister: &Persister,
    size: Option<u64>,
    fallback: bool,
) -> Result<Prepared, Failure> {
    let target = persister.target();
    let found = newest::restore_newest(
        persister,
        fallback,
        now_ns() / 1_000_000_000,
        |path, info| {
            let t = Instant::now();
            let size = region_size(size, Some((path, info)));
            let memfd = fresh_region(size).map_err(|e| {
                newest::RestoreError::Fatal(Failure::new(Code::OsErr, e.to_string()))
            })?;
            let report = load_chain(path, &chain::chain_dir(&target), &memfd)?;
            Ok((report, (memfd, size, t.elapsed())))
        },
    )?;
    let Some(found) = found else {
        let size = region_size(size, None);
        info!(
            "no snapshot at {}; starting with an empty {size}-byte region",
            target.display()
        );
        let memfd = fresh_region(size).map_err(|e| {
            Failure::new(
                Code::OsErr,
                format!("cannot create a {size}-byte region: {e}"),
            )
        })?;
        return Ok(Prepared {
            memfd,
            restored: None,
        });
    };
    let (memfd, size, took) = found.value;
    log_restored(&found.path, &found.info, &found.report, size, took);
    Ok(Prepared {
        memfd,
        restored: Some(found.info),
    })
}

/// The name of the region's memfd (`/proc/PID/maps` shows `/memfd:shmsnap-region`).
pub const REGION_NAME: &str = "shmsnap-region";

/// A new, empty region of `size` bytes, sealed against shrinking (a region is never shrunk).
///
/// # Errors
///
/// `memfd_create`, `ftruncate` or `fcntl` errors, saying which step failed.
pub fn fresh_region(size: u64) -> io::Result<Memfd> {
    let memfd = Memfd::create(REGION_NAME, size)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create a {size}-byte memfd: {e}")))?;
    memfd
        .seal_against_shrink()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot seal the memfd: {e}")))?;
    Ok(memfd)
}

/// The region's size: `--size` is a minimum, a larger snapshot is restored at its own size
/// (a client may have grown its region); without `--size`, the snapshot's size or
/// [`DEFAULT_SIZE`]. The choice is logged when a snapshot overrides `--size`. (A footer's
/// image length is a nonzero multiple of 8, `--size` is checked by the command line: never
/// 0.)
fn region_size(size: Option<u64>, chosen: Option<(&Path, &SnapshotInfo)>) -> u64 {
    match (size, chosen) {
        (Some(s), Some((path, info))) if s < info.image_len => {
            info!(
                "{} is {} bytes, larger than --size {s}: the region is {} bytes",
                path.display(),
                info.image_len,
                info.image_len
            );
            info.image_len
        }
        (Some(s), _) => s,
        (None, Some((_, info))) => info.image_len,
        (None, None) => DEFAULT_SIZE,
    }
}

/// Restores the chain of base `path` (deltas in `dir`, the state file's chain directory, which
/// every generation shares) into `memfd` ([`chain::restore_chain`]): the base, then
/// every delta of its generation up to the first link that is not sound (the same answer as
/// `verify`: footer, links, data CRC, the image check of each point), every CRC checked while
/// copying (the memfd is private until the client starts: a mismatch drops nothing that
/// matters). A link that ends the chain is named in a warning; the deltas after it are not
/// applied. A progress bar on a terminal for a big base.
fn load_chain(
    path: &Path,
    dir: &Path,
    memfd: &Memfd,
) -> Result<chain::RestoreReport, chain::ChainError> {
    // Opened without blocking, regular files only (a FIFO planted at the path never blocks);
    // here only for the progress bar: the chain restore opens its files the same way.
    let file = snapshot::open(path)?;
    let label = format!("restoring {}", path.display());
    let report = progress::reading_file(&file, 1, &label, || {
        chain::restore_chain(path, dir, memfd, chain::At::Latest)
    })?;
    if let Some(stop) = &report.listing.stop {
        warn!(
            "the chain of {} ends early: {stop}; restored the base and the {} delta(s) before \
             it, {} later delta file(s) not applied",
            path.display(),
            report.listing.deltas.len(),
            report.listing.ignored.len()
        );
    }
    Ok(report)
}

/// The info line of a restore at start.
fn log_restored(
    path: &Path,
    info: &SnapshotInfo,
    report: &chain::RestoreReport,
    size: u64,
    took: Duration,
) {
    let applied = report.listing.deltas.len();
    info!(
        base_generation = info.meta.generation,
        deltas = applied,
        image_bytes = info.image_len,
        data_bytes = report.bytes,
        ms = ms(took),
        "restored {} (base generation {}) plus {applied} delta(s) into a {size}-byte region \
         ({} bytes of data copied; holes skipped)",
        path.display(),
        info.meta.generation,
        report.bytes
    );
}

/// Region size when neither `--size` nor a snapshot says otherwise.
pub const DEFAULT_SIZE: u64 = 64 << 20;
