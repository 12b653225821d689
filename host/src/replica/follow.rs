//! A standby's local copy of the bucket's chain: the local state is a base file plus its
//! chain directory (`FILE`, `FILE.d/`), the layout of the host's own incremental snapshots, so
//! that a new point of the generation already held costs only its new delta objects, and a
//! new generation its base once ([`advance`]).
//!
//! Nothing is renamed into the state before it is verified: the new objects are downloaded
//! into a staging directory beside the state (`.NAME.follow/`), next to hard links of the
//! deltas already held, and [`chain::verify_chain`] checks base + staged chain (the base's
//! image CRC, every delta's footer, links, data CRC and point). Only the sound prefix is
//! applied; a delta that fails is never applied, and the state stays at its last sound point.
//!
//! Crash safety (a standby may be SIGKILLed at any moment): a delta is `fdatasync`ed before
//! it is renamed into the chain directory, in chain order, and the directory is synced after;
//! a new base is committed by the persister (temp, fsync, rename, directory fsync) *after* its
//! deltas are in place (they carry the new generation in their names, so the old base never
//! reads them). At every moment the state is a verified base plus a prefix of a verified
//! chain, and a restore ends a chain at its first missing or unsound link: the state is
//! always a sound point of the bucket. The staging directory is removed at the next step.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;

use shmsnap_linux::chain::{self, ChainErrorKind, ChainListing};
use shmsnap_linux::packed;
use shmsnap_linux::persist::Persister;
use tracing::{debug, warn};

use super::fetch::{self, Missing};
use super::layout::{point_key, PointId};
use super::store::Replica;
use crate::exit::{Code, Failure};

/// What a step did.
#[derive(Debug, Clone)]
pub struct Advanced {
    /// The point the local state now holds (verified).
    pub point: PointId,
    /// Its snapshot time, ns since the Unix epoch.
    pub unix_time_ns: u64,
    /// Bytes downloaded by this step.
    pub downloaded: u64,
    /// `true` if a base was downloaded (a new generation, or a local chain repaired).
    pub base: bool,
    /// An object of the bucket that could not be applied (named, with why): the state is at
    /// the sound point before it.
    pub refused: Option<String>,
}

/// Brings the local state of `persister` to the bucket's point `to` (or the sound point
/// before the first bad object): only the missing deltas when the state holds a prefix of
/// `to`'s generation, else (or when the local chain does not verify, if `repair`) the base of
/// `to`'s generation and its deltas. See the [module docs](self).
///
/// # Errors
///
/// [`Code::DataErr`] for a base that is missing or corrupt (named: nothing changed),
/// [`Code::IoErr`] / [`Code::Config`] for store errors, local I/O errors.
pub fn advance(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    persister: &Persister,
    to: PointId,
    repair: bool,
) -> Result<Advanced, Failure> {
    let target = persister.target();
    let staging = Staging::new(&target)?;
    if let Some(Ok(held)) = local_point(&target) {
        if held.generation == to.generation && held.index <= to.index {
            match extend(rt, replica, &target, held, to, &staging)? {
                Ok(a) => return Ok(a),
                Err(why) if repair => warn!(
                    "replica {}: the local chain {} does not continue the bucket's ({why}); \
                     downloading base {} again",
                    replica.url,
                    target.display(),
                    to.generation
                ),
                Err(why) => {
                    return Err(Failure::new(
                        Code::DataErr,
                        format!("replica {}: {why}", replica.url),
                    ))
                }
            }
            staging.reset()?;
        }
    }
    whole(rt, replica, persister, to, &staging)
}

/// Downloads deltas `held.index + 1 ..= to.index` beside links of the ones held, verifies
/// the whole chain and applies the sound new ones. `Ok(Err(why))`: the local chain itself is
/// not sound or not the bucket's (a base to download again).
fn extend(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    target: &Path,
    held: PointId,
    to: PointId,
    staging: &Staging,
) -> Result<Result<Advanced, String>, Failure> {
    let t = Instant::now();
    let g = to.generation;
    let dir = chain::chain_dir(target);
    let sdir = staging.chain()?;
    for i in 1..=held.index {
        let name = chain::delta_name(g, u64::from(i));
        if let Err(e) = std::fs::hard_link(dir.join(&name), sdir.join(&name)) {
            return Ok(Err(format!(
                "cannot link {}: {e}",
                dir.join(&name).display()
            )));
        }
    }
    let linked = t.elapsed();
    let (got, downloaded, missing) =
        rt.block_on(download_deltas(replica, g, held.index + 1, to.index, &sdir))?;
    let fetched = t.elapsed();
    let listing = match chain::verify_chain(target, &sdir) {
        Ok(l) => l,
        Err(e) => return Ok(Err(format!("{}: {e}", target.display()))),
    };
    let sound = listing.deltas.len() as u32;
    if sound < held.index {
        return Ok(Err(listing.stop.map_or_else(
            || "the local chain is shorter".into(),
            |e| e.to_string(),
        )));
    }
    if sound == held.index && sound < got {
        // The first new delta does not link to the local chain: the local base or chain is
        // not the bucket's (a materialized state of the same generation, another history).
        if let Some(stop) = &listing.stop {
            if matches!(
                stop.kind(),
                ChainErrorKind::WrongBase { .. } | ChainErrorKind::WrongParent { .. }
            ) {
                return Ok(Err(stop.to_string()));
            }
        }
    }
    let verified = t.elapsed();
    apply_deltas(&sdir, &dir, g, held.index + 1, sound)?;
    let refused = refused(replica, g, sound, got, &listing.stop).or(missing);
    let point = PointId {
        generation: g,
        index: sound,
    };
    debug!(
        ms = crate::time::ms(t.elapsed()),
        link_ms = crate::time::ms(linked),
        download_ms = crate::time::ms(fetched - linked),
        verify_ms = crate::time::ms(verified - fetched),
        downloaded,
        "replica {}: standby at {point}: {} delta(s) downloaded ({downloaded} bytes), verified \
         and applied",
        replica.url,
        got - held.index
    );
    Ok(Ok(Advanced {
        point,
        unix_time_ns: listing.newest_time(),
        downloaded,
        base: false,
        refused,
    }))
}

/// Downloads base `to.generation` (into the persister's temp file) and its deltas
/// `1..=to.index`, verifies them, puts the sound deltas in place and then commits the base.
fn whole(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    persister: &Persister,
    to: PointId,
    staging: &Staging,
) -> Result<Advanced, Failure> {
    let t = Instant::now();
    let g = to.generation;
    let base_key = point_key(
        replica,
        PointId {
            generation: g,
            index: 0,
        },
    );
    let object = staging.0.join("base.object");
    let sdir = staging.chain()?;
    // The base and the deltas at once.
    let (base, deltas) = rt.block_on(futures_util::future::join(
        fetch::download(replica, &base_key, &object),
        download_deltas(replica, g, 1, to.index, &sdir),
    ));
    if let Err(Missing(e)) = base? {
        return Err(corrupt_base(replica, &base_key, &e));
    }
    let (got, bytes, missing) = deltas?;
    let downloaded = file_len(&object) + bytes;
    let io = |what: &str, e: std::io::Error| {
        Failure::new(
            Code::IoErr,
            format!("cannot {what} for {}: {e}", persister.target().display()),
        )
    };
    let tmp = persister.begin().map_err(|e| io("start the base", e))?;
    match unpack(&object, tmp.file()) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(corrupt_base(replica, &base_key, &e)),
        Err(e) => return Err(io("unpack the base", e)),
    }
    let _ = std::fs::remove_file(&object);
    let listing = chain::verify_chain(&tmp.path(), &sdir)
        .map_err(|e| corrupt_base(replica, &base_key, &e.to_string()))?;
    let sound = listing.deltas.len() as u32;
    let dir = chain::chain_dir(&persister.target());
    apply_deltas(&sdir, &dir, g, 1, sound)?;
    tmp.commit().map_err(|e| io("commit the base", e))?;
    match chain::remove_superseded(persister) {
        Ok(c) if !c.removed.is_empty() => {
            debug!("removed {} delta(s) of superseded chains", c.removed.len())
        }
        Ok(_) => {}
        Err(e) => warn!("could not remove superseded deltas: {e}"),
    }
    let point = PointId {
        generation: g,
        index: sound,
    };
    debug!(
        ms = crate::time::ms(t.elapsed()),
        downloaded,
        "replica {}: standby at {point}: base and {got} delta(s) downloaded ({downloaded} \
         bytes), verified and applied",
        replica.url
    );
    Ok(Advanced {
        point,
        unix_time_ns: listing.newest_time(),
        downloaded,
        base: true,
        refused: refused(replica, g, sound, got, &listing.stop).or(missing),
    })
}

/// Requests in flight at once while a step downloads its objects (one small object per
/// request: latency, not bandwidth, is what a step waits for).
const PARALLEL: usize = 8;

/// Downloads deltas `from..=to` of base `g` into `dir`, [`PARALLEL`] at once; what follows a
/// missing one is dropped. Returns the index of the last one of the unbroken run downloaded,
/// its bytes, and the missing one (named).
async fn download_deltas(
    replica: &Replica,
    g: u64,
    from: u32,
    to: u32,
    dir: &Path,
) -> Result<(u32, u64, Option<String>), Failure> {
    let results: Vec<_> = futures_util::stream::iter(from..=to)
        .map(|i| {
            let key = point_key(
                replica,
                PointId {
                    generation: g,
                    index: i,
                },
            );
            let path = dir.join(chain::delta_name(g, u64::from(i)));
            async move {
                let r = fetch::download(replica, &key, &path).await;
                (i, key, path, r)
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut got = from - 1;
    let mut bytes = 0;
    let mut missing = None;
    for (i, key, path, r) in results {
        if let Err(Missing(e)) = r? {
            missing.get_or_insert_with(|| format!("object {key} ({e})"));
        }
        if missing.is_some() {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        bytes += file_len(&path);
        got = i;
    }
    Ok((got, bytes, missing))
}

/// The object that ended the verified chain after `sound` deltas (of `got` downloaded).
fn refused(
    replica: &Replica,
    g: u64,
    sound: u32,
    got: u32,
    stop: &Option<chain::ChainError>,
) -> Option<String> {
    (sound < got).then(|| {
        let key = point_key(
            replica,
            PointId {
                generation: g,
                index: sound + 1,
            },
        );
        let why = stop
            .as_ref()
            .map_or_else(|| "does not chain".to_owned(), ToString::to_string);
        format!("object {key} ({why})")
    })
}

/// Moves the staged deltas `from..=to` of base `g` into the chain directory `dir`, in chain
/// order, each synced before its rename; then syncs the directory.
fn apply_deltas(sdir: &Path, dir: &Path, g: u64, from: u32, to: u32) -> Result<(), Failure> {
    if from > to {
        return Ok(());
    }
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Failure::new(Code::IoErr, format!("cannot {what} {}: {e}", p.display()))
    };
    if !dir.exists() {
        std::fs::create_dir(dir).map_err(|e| io("create", dir, e))?;
        sync_dir(dir.parent().unwrap_or(Path::new("."))).map_err(|e| io("sync", dir, e))?;
    }
    for i in from..=to {
        let name = chain::delta_name(g, u64::from(i));
        let staged = sdir.join(&name);
        File::open(&staged)
            .and_then(|f| f.sync_data())
            .map_err(|e| io("sync", &staged, e))?;
        std::fs::rename(&staged, dir.join(&name)).map_err(|e| io("rename", &staged, e))?;
    }
    sync_dir(dir).map_err(|e| io("sync", dir, e))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Writes the snapshot file a base object holds into `out`: unpacked if packed, else copied.
/// `Ok(Err(why))` for a packed object that does not unpack.
fn unpack(object: &Path, out: &File) -> std::io::Result<Result<(), String>> {
    let obj = File::open(object)?;
    if !packed::is_packed(&obj)? {
        std::io::copy(&mut &obj, &mut &*out)?;
        return Ok(Ok(()));
    }
    match packed::unpack(&obj, out) {
        Ok(()) => Ok(Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

fn corrupt_base(replica: &Replica, key: &object_store::path::Path, why: &str) -> Failure {
    Failure::new(
        Code::DataErr,
        format!(
            "replica {}: object {key} is corrupt or missing ({why})",
            replica.url
        ),
    )
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The staging directory `.NAME.follow` beside the state (one per state: its lock holder is
/// the only user), emptied at the start of each step and removed on drop; a leftover of a
/// killed run is removed by the next step.
struct Staging(PathBuf);

/// Removes the staging directory a killed standby left beside `target` (a host that starts as
/// the primary makes no step that would).
pub fn remove_leftovers(target: &Path) {
    let _ = std::fs::remove_dir_all(staging_path(target));
}

fn staging_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.follow"))
}

impl Staging {
    fn new(target: &Path) -> Result<Staging, Failure> {
        let s = Staging(staging_path(target));
        s.reset()?;
        Ok(s)
    }

    fn reset(&self) -> Result<(), Failure> {
        let _ = std::fs::remove_dir_all(&self.0);
        std::fs::create_dir(&self.0).map_err(|e| {
            Failure::new(
                Code::CantCreat,
                format!("cannot create {}: {e}", self.0.display()),
            )
        })
    }

    /// The staged chain directory (created).
    fn chain(&self) -> Result<PathBuf, Failure> {
        let d = self.0.join("d");
        match std::fs::create_dir(&d) {
            Ok(()) => Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(d),
            Err(e) => Err(Failure::new(
                Code::CantCreat,
                format!("cannot create {}: {e}", d.display()),
            )),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The point the local state holds: the state file's generation and the number of deltas
/// of it in the chain directory that chain correctly (a state fetched from the bucket is one
/// file: index 0). `None` if there is no state file.
pub(super) fn local_point(target: &Path) -> Option<Result<PointId, String>> {
    if !target.exists() {
        return None;
    }
    Some(
        ChainListing::load(target, &chain::chain_dir(target))
            .map(|l| PointId {
                generation: l.base.meta.generation,
                index: u32::try_from(l.deltas.len()).unwrap_or(u32::MAX),
            })
            .map_err(|e| e.to_string()),
    )
}
