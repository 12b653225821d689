//! `shmsnap restore --from URL --to OUT [--at TIME] [--fallback] [--force]`, and the start of
//! `run --replica` on a machine without the state file: a point of the bucket as a standalone
//! snapshot file.
//!
//! Every object is downloaded into a private directory beside the output, then checked by the
//! same code that checks local files ([`snapshot::verify_path`] for the base,
//! [`chain::verify_chain`] for every delta's footer, links and data CRC) before anything is
//! built from it; the state is written with [`chain::materialize`] into a temp file that is
//! synced and renamed over the output (the persister's commit). A corrupt or missing object
//! is refused naming its key; with `fallback`, the newest sound older point is used instead
//! (the log names what was skipped).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::ObjectStoreExt;
use shmsnap_linux::chain::{self, At};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::{packed, snapshot};
use tracing::{debug, info, warn};

use super::layout::{point_key, Generation, Listing, PointId};
use super::store::{is_refused, refused, Replica};
use crate::exit::{Code, Failure};

/// What was restored.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The point (the base's generation and the number of deltas applied).
    pub point: PointId,
    /// The state's wall-clock time, ns since the Unix epoch.
    pub unix_time_ns: u64,
    /// The image length.
    pub image_len: u64,
}

/// `shmsnap restore --from URL --to OUT`: the newest sound point (at or before `at`) into
/// `out`, which the caller has already checked (`restore::Out`: not over an existing file
/// without `--force`).
///
/// # Errors
///
/// 65 for a corrupt or missing object (named), 66 for an empty replica or no point at or
/// before `at`, 78 for refused credentials, 74 for other store errors.
pub fn restore_from(
    from: &str,
    out: &dyn Destination,
    at: Option<u64>,
    fallback: bool,
) -> Result<ExitCode, Failure> {
    let replica = Replica::open(from)?;
    let rt = super::store::runtime()?;
    let fetched = fetch_into(&rt, &replica, out, at, fallback)?;
    println!(
        "restored {} from {} into {} ({} bytes, taken {})",
        fetched.point,
        replica.url,
        out.path().display(),
        fetched.image_len,
        crate::time::rfc3339(fetched.unix_time_ns)
    );
    Ok(ExitCode::SUCCESS)
}

/// A point as [`chain::materialize`] wrote it.
pub type Materialized = (snapshot::SnapshotInfo, chain::RestoreReport);

/// Where a restored point goes, durably: the persister's target when `run --replica` starts
/// without its state file, `--to OUT` for `restore --from` (the same atomic output as
/// `restore --state`).
pub trait Destination {
    /// The file written (named in messages; the download directory goes beside it).
    fn path(&self) -> PathBuf;
    /// Runs `fill` on a fresh temp file, then makes it the destination (sync, rename,
    /// directory sync); nothing is published if `fill` fails.
    ///
    /// # Errors
    ///
    /// `fill`'s error, or the I/O error of the publish.
    fn write(
        &self,
        fill: &mut dyn FnMut(&File) -> Result<Materialized, Failure>,
    ) -> Result<Materialized, Failure>;
}

impl Destination for Persister {
    fn path(&self) -> PathBuf {
        self.target()
    }

    fn write(
        &self,
        fill: &mut dyn FnMut(&File) -> Result<Materialized, Failure>,
    ) -> Result<Materialized, Failure> {
        let tmp = self
            .begin()
            .map_err(|e| Failure::new(Code::CantCreat, format!("cannot restore: {e}")))?;
        let done = fill(tmp.file())?;
        tmp.commit().map_err(|e| {
            Failure::new(
                Code::IoErr,
                format!("cannot write {}: {e}", self.target().display()),
            )
        })?;
        Ok(done)
    }
}

/// Restores the newest sound point (at or before `at`) of `replica` into `dest`.
///
/// # Errors
///
/// As [`restore_from`], and `dest`'s errors.
pub fn fetch_into(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    dest: &dyn Destination,
    at: Option<u64>,
    fallback: bool,
) -> Result<Fetched, Failure> {
    let target = dest.path();
    let work = WorkDir::new(&target)?;
    let listing = rt
        .block_on(Listing::load(replica))
        .map_err(|e| store_failure(replica, "cannot list", &e))?;
    if listing.newest_point().is_none() {
        return Err(Failure::new(
            Code::NoInput,
            format!("replica {} holds no snapshot", replica.url),
        ));
    }
    for (&g, generation) in listing.generations.iter().rev() {
        if generation.base.is_none() {
            continue;
        }
        let t = std::time::Instant::now();
        let got = rt.block_on(fetch_generation(
            replica, &work.0, g, generation, at, fallback,
        ))?;
        let Some((base, deltas)) = got else { continue };
        debug!(
            ms = crate::time::ms(t.elapsed()),
            "replica {}: generation {g} downloaded and verified ({deltas} delta(s))", replica.url
        );
        let t = std::time::Instant::now();
        let at = at.map_or(At::Deltas(u64::from(deltas)), At::Time);
        let (info, report) = dest.write(&mut |file| {
            chain::materialize(&base, &chain::chain_dir(&base), at, file)
                .map_err(|e| Failure::new(Code::DataErr, format!("replica {}: {e}", replica.url)))
        })?;
        let point = PointId {
            generation: g,
            index: report.listing.deltas.len() as u32,
        };
        debug!(
            ms = crate::time::ms(t.elapsed()),
            "replica {}: {point} materialized and committed", replica.url
        );
        info!(
            "restored {point} from replica {} into {}",
            replica.url,
            target.display()
        );
        return Ok(Fetched {
            point,
            unix_time_ns: info.meta.unix_time_ns,
            image_len: info.image_len,
        });
    }
    Err(match at {
        Some(t) => Failure::new(
            Code::NoInput,
            format!(
                "replica {} holds no point at or before {}",
                replica.url,
                crate::time::rfc3339(t)
            ),
        ),
        None => Failure::new(
            Code::DataErr,
            format!(
                "replica {}: no sound point left (see the skipped objects above)",
                replica.url
            ),
        ),
    })
}

/// Downloads and checks generation `g`: returns the base's file and the number of sound
/// deltas to use, or `None` to try an older generation (its base is newer than `at`, or —
/// with `fallback` — unusable).
async fn fetch_generation(
    replica: &Replica,
    work: &Path,
    g: u64,
    generation: &Generation,
    at: Option<u64>,
    fallback: bool,
) -> Result<Option<(PathBuf, u32)>, Failure> {
    let base_id = PointId {
        generation: g,
        index: 0,
    };
    let base_key = point_key(replica, base_id);
    let base = work.join(format!("{g:020}.base"));
    let dir = chain::chain_dir(&base);
    let _ = std::fs::remove_dir_all(&dir);
    let sound = match download_base(replica, &base_key, &base).await? {
        Ok(()) => snapshot::verify_path(&base).map_err(|e| e.to_string()),
        Err(Missing(e)) => Err(e),
    };
    let info = match sound {
        Ok(info) => info,
        Err(e) => {
            return corrupt(replica, &base_key, &e, fallback, "an older generation").map(|()| None)
        }
    };
    if at.is_some_and(|t| info.meta.unix_time_ns > t) {
        return Ok(None);
    }
    let contiguous = contiguous_deltas(replica, g, generation, fallback)?;
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::new(
            Code::CantCreat,
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let mut usable = download_deltas(replica, g, contiguous, &dir, fallback).await?;
    let listing = chain::verify_chain(&base, &dir).map_err(|e| {
        Failure::new(
            Code::DataErr,
            format!("replica {}: {base_key}: {e}", replica.url),
        )
    })?;
    let sound = listing.deltas.len() as u32;
    if sound < usable {
        let key = point_key(
            replica,
            PointId {
                generation: g,
                index: sound + 1,
            },
        );
        let why = listing
            .stop
            .map_or_else(|| "does not chain".to_owned(), |e| e.to_string());
        corrupt(
            replica,
            &key,
            &why,
            fallback,
            &format!("delta {sound} of base {g}"),
        )?;
        usable = sound;
    }
    Ok(Some((base, usable)))
}

/// The deltas of generation `g` that follow the base without a gap (1..=N); a gap (a missing
/// delta with later ones present) is refused as [`corrupt`], or with `fallback` logged with
/// the deltas after it skipped.
fn contiguous_deltas(
    replica: &Replica,
    g: u64,
    generation: &Generation,
    fallback: bool,
) -> Result<u32, Failure> {
    let contiguous = generation.contiguous();
    if let Some(&after_gap) = generation.deltas.keys().find(|&&i| i > contiguous) {
        let missing = point_key(
            replica,
            PointId {
                generation: g,
                index: contiguous + 1,
            },
        );
        corrupt(
            replica,
            &missing,
            "missing",
            fallback,
            &format!("delta {contiguous} of base {g}"),
        )?;
        warn!(
            "replica {}: deltas from {after_gap} of base {g} skipped (after a missing one)",
            replica.url
        );
    }
    Ok(contiguous)
}

/// Downloads deltas 1..=`contiguous` of base `g` into `dir`; returns how many arrived (the
/// ones before the first missing one, which is refused as [`corrupt`] without `fallback`).
async fn download_deltas(
    replica: &Replica,
    g: u64,
    contiguous: u32,
    dir: &Path,
    fallback: bool,
) -> Result<u32, Failure> {
    let mut usable = contiguous;
    for i in 1..=contiguous {
        let key = point_key(
            replica,
            PointId {
                generation: g,
                index: i,
            },
        );
        if let Err(Missing(e)) =
            download(replica, &key, &dir.join(chain::delta_name(g, u64::from(i)))).await?
        {
            corrupt(
                replica,
                &key,
                &e,
                fallback,
                &format!("delta {} of base {g}", i - 1),
            )?;
            usable = i - 1;
            break;
        }
    }
    Ok(usable)
}

/// Refuses a corrupt or missing object (65, naming the key), or with `fallback` logs that it
/// is skipped for `instead`.
fn corrupt(
    replica: &Replica,
    key: &Key,
    why: &str,
    fallback: bool,
    instead: &str,
) -> Result<(), Failure> {
    if !fallback {
        return Err(Failure::new(
            Code::DataErr,
            format!(
                "replica {}: object {key} is corrupt or missing ({why}); pass --fallback to \
                 restore the newest sound older point",
                replica.url
            ),
        ));
    }
    warn!(
        "replica {}: object {key} skipped ({why}); using {instead}",
        replica.url
    );
    Ok(())
}

/// Downloads base object `key` and writes the snapshot file it holds at `path`: a packed
/// object ([`packed`]) is unpacked (holes rebuilt), an object written before packing existed
/// (the snapshot file byte for byte) is taken as is. `Ok(Err(Missing))` also for a packed
/// object that does not unpack (the caller's policy: refuse naming the key, or fall back).
///
/// # Errors
///
/// As [`download`].
pub async fn download_base(
    replica: &Replica,
    key: &Key,
    path: &Path,
) -> Result<Result<(), Missing>, Failure> {
    let object = path.with_extension("object");
    if let Err(m) = download(replica, key, &object).await? {
        return Ok(Err(m));
    }
    let unpacked = (|| -> std::io::Result<Result<(), Missing>> {
        let obj = File::open(&object)?;
        if !packed::is_packed(&obj)? {
            std::fs::rename(&object, path)?;
            return Ok(Ok(()));
        }
        let out = File::create(path)?;
        let r = match packed::unpack(&obj, &out) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Missing(e.to_string())),
            Err(e) => return Err(e),
        };
        let _ = std::fs::remove_file(&object);
        Ok(r)
    })();
    unpacked.map_err(|e| {
        Failure::new(
            Code::IoErr,
            format!("cannot unpack {key} into {}: {e}", path.display()),
        )
    })
}

/// An object that is not there or cannot be used (the caller's policy decides: refuse or fall
/// back); the text says why.
pub struct Missing(pub String);

/// Downloads `key` into `path` (created or truncated): `Ok(Err(Missing))` if the object is
/// not there.
///
/// # Errors
///
/// Any other store error (unreachable, refused credentials) or a local write error: a
/// failure, never taken for a corrupt object.
pub async fn download(
    replica: &Replica,
    key: &Key,
    path: &Path,
) -> Result<Result<(), Missing>, Failure> {
    let result = async {
        let got = replica.store.get(key).await?;
        let mut file = File::create(path).map_err(io_err)?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.try_next().await? {
            file.write_all(&chunk).map_err(io_err)?;
        }
        Ok::<(), object_store::Error>(())
    }
    .await;
    match result {
        Ok(()) => Ok(Ok(())),
        Err(object_store::Error::NotFound { .. }) => Ok(Err(Missing("missing".into()))),
        Err(e) => Err(store_failure(
            replica,
            &format!("cannot download {key}"),
            &e,
        )),
    }
}

fn io_err(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local file",
        source: Box::new(e),
    }
}

/// A store error as a failure: 78 for refused credentials or a missing bucket, else 74.
pub fn store_failure(replica: &Replica, what: &str, e: &object_store::Error) -> Failure {
    if is_refused(e) {
        return refused(&replica.url, e);
    }
    if e.to_string().contains("NoSuchBucket") {
        return Failure::new(
            Code::Config,
            format!(
                "replica {}: the bucket does not exist (check its name): {e}",
                replica.url
            ),
        );
    }
    Failure::new(Code::IoErr, format!("replica {}: {what}: {e}", replica.url))
}

/// A private download directory beside the output, removed on drop.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    /// Creates `.NAME.replica.PID` beside `target` (removing a leftover first).
    ///
    /// # Errors
    ///
    /// [`Code::CantCreat`] if it cannot be created.
    pub fn new(target: &Path) -> Result<WorkDir, Failure> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = target.with_file_name(format!(".{name}.replica.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| {
            Failure::new(
                Code::CantCreat,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
