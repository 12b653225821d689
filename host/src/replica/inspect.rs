//! `shmsnap inspect --replica URL [--verify] [--json]`: what is in the bucket; with `--verify`,
//! every point is downloaded and checked as `restore --from` would, and each point says
//! `sound` or `bad: WHY` (`verified`, absent without `--verify`).
//!
//! JSON (stable field names):
//!
//! ```text
//! { "url": "s3://b/p",
//!   "lease": null | { "holder": { "machine_id", "state_path", "pid" },
//!                     "expires_unix_ms": N, "expired": bool },
//!   "generations": [ { "generation": N,
//!                      "points": [ { "kind": "base" | "delta", "index": N, "key": "...",
//!                                    "size": N, "modified_unix_ms": N, "age_seconds": F,
//!                                    "verified": "sound" | "bad: ..." (with --verify) } ],
//!                      "restorable": bool } ],
//!   "newest_point": null | { "generation": N, "index": N, "key": "...", "age_seconds": F },
//!   "strays": [ "key", ... ] }
//! ```
//!
//! `index` is 0 for a base; `modified_unix_ms` is when the store wrote the object (its
//! upload); `restorable` is false for a generation whose base is gone.

use std::process::ExitCode;

use serde::Serialize;

use std::collections::BTreeMap;

use shmsnap_linux::{chain, snapshot};

use super::fetch::{download, download_base, store_failure, Missing, WorkDir};
use super::layout::{point_key, Generation, Listing, Object, PointId};
use super::lease::{self, now_ms, Body};
use super::store::Replica;
use crate::exit::{Code, Failure};

#[derive(Debug, Serialize)]
struct Report {
    url: String,
    lease: Option<LeaseView>,
    generations: Vec<GenerationView>,
    newest_point: Option<NewestView>,
    strays: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LeaseView {
    #[serde(flatten)]
    body: Body,
    expired: bool,
}

#[derive(Debug, Serialize)]
struct GenerationView {
    generation: u64,
    points: Vec<PointView>,
    restorable: bool,
}

#[derive(Debug, Serialize)]
struct PointView {
    kind: &'static str,
    index: u32,
    key: String,
    size: u64,
    modified_unix_ms: i64,
    age_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified: Option<String>,
}

#[derive(Debug, Serialize)]
struct NewestView {
    generation: u64,
    index: u32,
    key: String,
    age_seconds: f64,
}

fn age(o: &Object) -> f64 {
    let ms = (chrono::Utc::now() - o.modified).num_milliseconds();
    ms.max(0) as f64 / 1000.0
}

fn point_view(index: u32, o: &Object) -> PointView {
    PointView {
        kind: if index == 0 { "base" } else { "delta" },
        index,
        key: o.key.to_string(),
        size: o.size,
        modified_unix_ms: o.modified.timestamp_millis(),
        age_seconds: age(o),
        verified: None,
    }
}

/// Builds the report from a listing and the lease.
fn report(replica: &Replica, listing: &Listing, lease: Option<Body>) -> Report {
    let now = now_ms();
    let generations = listing
        .generations
        .iter()
        .map(|(&generation, g)| {
            let mut points: Vec<PointView> = g.base.iter().map(|b| point_view(0, b)).collect();
            points.extend(g.deltas.iter().map(|(&i, o)| point_view(i, o)));
            GenerationView {
                generation,
                points,
                restorable: g.base.is_some(),
            }
        })
        .collect();
    let newest_point = listing.newest_point().map(|p: PointId| {
        let g = &listing.generations[&p.generation];
        let o = if p.index == 0 {
            g.base.as_ref()
        } else {
            g.deltas.get(&p.index)
        };
        NewestView {
            generation: p.generation,
            index: p.index,
            key: point_key(replica, p).to_string(),
            age_seconds: o.map_or(0.0, age),
        }
    });
    Report {
        url: replica.url.clone(),
        lease: lease.map(|body| LeaseView {
            expired: body.expired(now),
            body,
        }),
        generations,
        newest_point,
        strays: listing.strays.iter().map(ToString::to_string).collect(),
    }
}

/// `shmsnap inspect --replica URL [--verify] [--json]`.
///
/// # Errors
///
/// 78 for refused credentials, 74 for other store errors; with `verify`, 65 (after the
/// report) if a point is bad.
pub fn inspect(url: &str, json: bool, verify: bool) -> Result<ExitCode, Failure> {
    let replica = Replica::open(url)?;
    let rt = super::store::runtime()?;
    let listing = rt
        .block_on(Listing::load(&replica))
        .map_err(|e| store_failure(&replica, "cannot list", &e))?;
    let lease = match rt.block_on(lease::peek(&replica)) {
        Ok(l) => l,
        Err(lease::LeaseError::Store(e)) => {
            return Err(store_failure(&replica, "cannot read the lease", &e))
        }
        Err(e) => {
            return Err(Failure::new(Code::DataErr, format!("replica {url}: {e}")));
        }
    };
    let mut r = report(&replica, &listing, lease);
    let bad = if verify {
        verify_points(&rt, &replica, &listing, &mut r)?
    } else {
        0
    };
    if json {
        let text = serde_json::to_string_pretty(&r)
            .map_err(|e| Failure::new(Code::Software, format!("cannot encode JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", text(&r));
    }
    if bad > 0 {
        return Err(Failure::new(
            Code::DataErr,
            format!("replica {url}: {bad} bad point(s) (listed above)"),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Downloads and checks every generation's base and deltas (as `restore --from` does) and
/// marks each point of `r`; returns how many are bad.
fn verify_points(
    rt: &tokio::runtime::Runtime,
    replica: &Replica,
    listing: &Listing,
    r: &mut Report,
) -> Result<usize, Failure> {
    let work = WorkDir::new(&std::env::temp_dir().join("shmsnap-inspect"))?;
    let mut bad = 0;
    for gv in &mut r.generations {
        let g = gv.generation;
        let marks = rt.block_on(verify_generation(
            replica,
            &work.0,
            g,
            &listing.generations[&g],
        ))?;
        for p in &mut gv.points {
            let mark = marks.get(&p.index).cloned().unwrap_or_else(|| {
                "bad: not restorable (no base, or after a missing delta)".to_owned()
            });
            bad += usize::from(mark != "sound");
            p.verified = Some(mark);
        }
    }
    Ok(bad)
}

/// The verdict on each point of generation `g` by index: "sound" or "bad: why".
async fn verify_generation(
    replica: &Replica,
    work: &std::path::Path,
    g: u64,
    generation: &Generation,
) -> Result<BTreeMap<u32, String>, Failure> {
    let mut marks = BTreeMap::new();
    if generation.base.is_none() {
        return Ok(marks);
    }
    let base = work.join(format!("{g:020}.base"));
    let dir = chain::chain_dir(&base);
    let _ = std::fs::remove_dir_all(&dir);
    let key = point_key(
        replica,
        PointId {
            generation: g,
            index: 0,
        },
    );
    let sound = match download_base(replica, &key, &base).await? {
        Ok(()) => snapshot::verify_path(&base)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(Missing(e)) => Err(e),
    };
    if let Err(e) = sound {
        marks.insert(0, format!("bad: {e}"));
        for &i in generation.deltas.keys() {
            marks.insert(i, "bad: its base is bad".to_owned());
        }
        return Ok(marks);
    }
    marks.insert(0, "sound".to_owned());
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::new(
            Code::CantCreat,
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    for i in 1..=generation.contiguous() {
        let key = point_key(
            replica,
            PointId {
                generation: g,
                index: i,
            },
        );
        let path = dir.join(chain::delta_name(g, u64::from(i)));
        if let Err(Missing(e)) = download(replica, &key, &path).await? {
            marks.insert(i, format!("bad: {e}"));
            break;
        }
    }
    let listing = chain::verify_chain(&base, &dir)
        .map_err(|e| Failure::new(Code::DataErr, format!("replica {}: {e}", replica.url)))?;
    let sound = listing.deltas.len() as u32;
    for i in 1..=sound {
        marks.insert(i, "sound".to_owned());
    }
    if let Some(e) = &listing.stop {
        marks
            .entry(sound + 1)
            .or_insert_with(|| format!("bad: {e}"));
    }
    for &i in generation.deltas.keys() {
        marks
            .entry(i)
            .or_insert_with(|| "bad: not restorable (after a bad or missing delta)".to_owned());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&base);
    Ok(marks)
}

fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "replica      {}", r.url);
    match &r.lease {
        None => {
            let _ = writeln!(s, "lease        none");
        }
        Some(l) => {
            let _ = writeln!(
                s,
                "lease        {} until {}{}",
                l.body.holder,
                crate::time::rfc3339(l.body.expires_unix_ms.saturating_mul(1_000_000)),
                if l.expired { " (expired)" } else { "" }
            );
        }
    }
    match &r.newest_point {
        None => {
            let _ = writeln!(s, "newest point none (no restorable generation)");
        }
        Some(p) => {
            let _ = writeln!(
                s,
                "newest point {} (age {:.1}s)",
                PointId {
                    generation: p.generation,
                    index: p.index
                },
                p.age_seconds
            );
        }
    }
    let _ = writeln!(s, "generations  {}", r.generations.len());
    for g in &r.generations {
        let _ = writeln!(
            s,
            "  generation {}{}",
            g.generation,
            if g.restorable {
                ""
            } else {
                " (no base: not restorable)"
            }
        );
        for p in &g.points {
            let _ = writeln!(
                s,
                "    {:<5} {:>8}  {:>12} bytes  age {:>8.1}s  {}{}",
                p.kind,
                p.index,
                p.size,
                p.age_seconds,
                p.key,
                p.verified
                    .as_deref()
                    .map_or(String::new(), |v| format!("  [{v}]"))
            );
        }
    }
    for k in &r.strays {
        let _ = writeln!(s, "  stray object {k} (not a point; ignored)");
    }
    s
}
