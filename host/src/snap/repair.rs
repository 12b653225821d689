//! A live region that failed validation after its client exited: set it aside for
//! debugging, then restore the newest sound snapshot into it before the client restarts (a
//! restarted client would otherwise attach to the corrupt region and crash-loop, while a sound
//! snapshot sits on disk).
//!
//! The *same* memfd is rewritten when it can be: it is the file in the service manager's fd
//! store (a replacement needs a remove and a new push, and a host killed between them leaves
//! no region there), the fd the client command hands over at fd 3, and the host's mapping.
//! Rewriting in place is race-free here: the client and its descendants have exited and been
//! reaped, so nobody maps the region but the host. Restoring never shrinks it (sealed): the
//! part past the image is punched to zeros. A region its client sealed against writes (write
//! tracking, DESIGN §11) cannot be rewritten (`EPERM`): the caller passes a fresh memfd as
//! the target and then replaces the region, as when it moves a sealed one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use shmsnap_linux::chain;
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotInfo, SnapshotMeta};
use shmsnap_linux::Memfd;
use tracing::{error, warn};

use crate::exit::Failure;

/// Sets the live region `live` aside and restores the newest sound generation into `memfd`
/// (`live` itself, or a fresh region of at least its length); returns what was restored
/// (`None`: no sound snapshot, `memfd` was cleared as at a first start, or the restore failed
/// and was logged). `meta` goes into the set-aside file's footer.
pub fn repair(
    persister: &Persister,
    live: &Memfd,
    memfd: &Memfd,
    meta: SnapshotMeta,
) -> Option<SnapshotInfo> {
    let target = persister.target();
    match set_aside(&target, live, meta) {
        Ok(path) => warn!(
            "the region failed validation after the client exited; wrote it to {} for debugging",
            path.display()
        ),
        Err(e) => warn!(
            "the region failed validation after the client exited; could not write it aside \
             for debugging: {e}"
        ),
    }
    match restore_newest(persister, memfd, meta.unix_time_ns / 1_000_000_000) {
        Ok(Some((path, info))) => {
            warn!(
                "restored {} (generation {}) into the region: the client restarts from it",
                path.display(),
                info.meta.generation
            );
            Some(info)
        }
        Ok(None) => match memfd.clear() {
            Ok(()) => {
                warn!(
                    "no sound snapshot of {} to restore: cleared the region (the client \
                     restarts as on a first start)",
                    target.display()
                );
                None
            }
            Err(e) => {
                error!("cannot clear the corrupt region: {e}; the client restarts on it");
                None
            }
        },
        Err(e) => {
            error!("cannot restore a sound snapshot into the region: {e}; the client restarts on the corrupt region");
            None
        }
    }
}

/// Writes the region as a snapshot file `FILE.corrupt-<unix seconds>[-N]`, created
/// exclusively (never over any file, least of all a good snapshot).
fn set_aside(target: &Path, memfd: &Memfd, meta: SnapshotMeta) -> io::Result<PathBuf> {
    let secs = meta.unix_time_ns / 1_000_000_000;
    let base = format!("{}.corrupt-{secs}", target.display());
    let len = memfd.len()?;
    for n in 0..100 {
        let path = PathBuf::from(if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(named(e, &path)),
        };
        return write(&file, memfd, len, meta, &path).map(|()| path);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{base}-N: 100 names taken"),
    ))
}

fn write(file: &File, memfd: &Memfd, len: u64, meta: SnapshotMeta, path: &Path) -> io::Result<()> {
    let r = snapshot::write_snapshot(memfd, file, len, meta);
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            // A partial debugging copy is worth nothing; it is ours (created exclusively).
            let _ = std::fs::remove_file(path);
            Err(io::Error::other(e.at(path)))
        }
    }
}

fn named(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Restores the newest restorable point into `memfd` (grown to the image if needed) by the
/// rules of [`newest`](crate::startup::newest), skipping every base that yields no point (as
/// `--fallback` does at start: the alternative is a client restarted on a corrupt region)
/// and renaming the skipped ones aside.
fn restore_newest(
    persister: &Persister,
    memfd: &Memfd,
    unix_secs: u64,
) -> Result<Option<(PathBuf, SnapshotInfo)>, Failure> {
    let dir = chain::chain_dir(&persister.target());
    let found =
        crate::startup::newest::restore_newest(persister, true, unix_secs, |path, info| {
            memfd
                .len()
                .and_then(|len| memfd.grow(len.max(info.image_len)))
                .map_err(chain::ChainError::from)?;
            // The base plus its deltas up to the first unsound link, as at start.
            let report = chain::restore_chain(path, &dir, memfd, chain::At::Latest)?;
            if let Some(stop) = &report.listing.stop {
                warn!("the chain of {} ends early: {stop}", path.display());
            }
            Ok((report, ()))
        })?;
    Ok(found.map(|f| (f.path, f.info)))
}
