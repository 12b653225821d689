//! The restore library: the chains of a state file (its kept generations, newest first),
//! the point of one chosen by time or seq, and that point materialized into a file. Used by
//! the `restore` command ([`crate::restore`]) and `inspect`; docs/DESIGN.md §11 says what a
//! chain is and why a point is never taken past a link that is not sound.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shmsnap_core::Strategy;
use shmsnap_linux::chain::{self, At, ChainError, ChainErrorKind, ChainListing, RestoreReport};
use shmsnap_linux::persist::{generation_index, generations_of};
use shmsnap_linux::snapshot::SnapshotInfo;
use tracing::warn;

use crate::exit::{code_of, Cause, Code, Failure};
use crate::startup::skippable;
use crate::time::rfc3339;

/// One chain: a base snapshot file and the directory of its deltas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The base (the state file or one of its kept generations).
    pub base: PathBuf,
    /// Its chain directory (`FILE.d`: shared by every generation of FILE).
    pub dir: PathBuf,
}

/// The chains to restore from, newest first. Today: the state file and its kept generations
/// (`FILE`, `FILE.1`, …); a replica source (`--from URL`) is another arm here.
pub fn source(state: &Path) -> Result<Vec<Chain>, Failure> {
    if let Err(e) = state.symlink_metadata() {
        return Err(Failure::new(
            code_of(Cause::Io(&e)),
            format!("cannot read the state file {}: {e}", state.display()),
        ));
    }
    generations(state).map_err(|e| {
        Failure::new(
            code_of(Cause::Io(&e)),
            format!("cannot list the generations of {}: {e}", state.display()),
        )
    })
}

/// The state file `target` and its kept generations (`target.1`, `target.2`, …, by index),
/// those that exist, each with the chain directory of `target`.
///
/// # Errors
///
/// Errors reading `target`'s directory.
pub fn generations(target: &Path) -> io::Result<Vec<Chain>> {
    let dir = chain::chain_dir(target);
    Ok(generations_of(target)?
        .into_iter()
        .map(|g| Chain {
            base: g.path,
            dir: dir.clone(),
        })
        .collect())
}

/// The state file whose chain `path` belongs to: `path` itself, or `FILE` for a kept
/// generation `FILE.<i>` whose `FILE.d` exists.
pub fn chain_target(path: &Path) -> PathBuf {
    if chain::chain_dir(path).is_dir() {
        return path.to_path_buf();
    }
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    if let Some(dot) = name.iter().rposition(|&b| b == b'.') {
        let stem = &name[..dot];
        let target = path.with_file_name(std::ffi::OsStr::from_bytes(stem));
        if !stem.is_empty()
            && generation_index(stem, name).is_some()
            && chain::chain_dir(&target).is_dir()
        {
            return target;
        }
    }
    path.to_path_buf()
}

pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The point [`pick`] chose.
struct Picked<'c> {
    chain: &'c Chain,
    /// How many deltas of the chain the point applies.
    deltas: usize,
    /// The base as listed: its generation and image CRC identify it.
    base: SnapshotInfo,
    /// The point's time as listed.
    unix_time_ns: u64,
}

impl Picked<'_> {
    /// Refuses a restore that read another chain than the one picked: a running host rotated
    /// the generations (renamed `FILE` to `FILE.1`) between the listing and the copy.
    fn check_same(&self, report: &RestoreReport) -> Result<(), Failure> {
        let base = &report.listing.base;
        let same_base = (base.meta.generation, base.image_crc)
            == (self.base.meta.generation, self.base.image_crc);
        let full = report.listing.deltas.len() == self.deltas;
        if same_base && (!full || report.unix_time_ns == self.unix_time_ns) {
            return Ok(());
        }
        Err(Failure::new(
            Code::TempFail,
            format!(
                "{} changed while it was read (a running host rotated its generations); \
                 nothing written: run the restore again",
                self.chain.base.display()
            ),
        ))
    }
}

/// Writes the point `at` into `file`: from the first chain (newest first) whose base is at or
/// before the point, or — when a chain's base yields no point ([`skippable`]: corrupt, or with
/// `fallback` unreadable too) — from the next older chain holding one, with a warning naming
/// what was skipped and what is used (rules of `snap::newest`; nothing is renamed: restore is
/// read only on the state).
///
/// # Errors
///
/// 65 if a base that may not be skipped is unusable, if every chain holding the point was
/// skipped, or if the point lies past a bad delta of its chain; 64 for `--seq` on a chain
/// that is not a queue's; 66 if every base is newer than the point (the message lists each
/// chain's range).
pub fn write_point<'c>(
    chains: &'c [Chain],
    at: At,
    fallback: bool,
    file: &File,
) -> Result<(&'c Chain, SnapshotInfo, RestoreReport), Failure> {
    let mut ranges = Vec::new();
    let mut skipped: Vec<(&Chain, ChainError)> = Vec::new();
    for c in chains {
        let written = match pick(c, at)? {
            Pick::Newer(range) => {
                ranges.push(range);
                continue;
            }
            Pick::Point(picked) => materialize(&picked, at, file),
            Pick::NoPoint(e) => Err(e),
        };
        match written {
            Ok(Ok((info, report))) => {
                for (bad, why) in &skipped {
                    warn!(
                        "skipped {}: {why}; restoring from the older generation {} instead",
                        bad.base.display(),
                        c.base.display()
                    );
                }
                return Ok((c, info, report));
            }
            Ok(Err(f)) => return Err(f),
            Err(e) if skippable(&e, fallback) => skipped.push((c, e)),
            Err(e) => return Err(unusable(&e, &skipped)),
        }
    }
    let skips: String = skipped
        .iter()
        .map(|(c, e)| format!("; skipped {} ({e})", c.base.display()))
        .collect();
    let (code, why) = match skipped.is_empty() {
        true => (Code::NoInput, "no kept state is"),
        false => (Code::DataErr, "no restorable kept state is"),
    };
    Err(Failure::new(
        code,
        format!(
            "{why} at or before {}{skips}; available: {}",
            point_text(at),
            ranges.join("; ")
        ),
    ))
}

/// The error for a chain whose base yields no point and may not be skipped.
fn unusable(e: &ChainError, skipped: &[(&Chain, ChainError)]) -> Failure {
    let before: String = skipped
        .iter()
        .map(|(c, e)| format!("; skipped before it: {} ({e})", c.base.display()))
        .collect();
    let hint = match e.kind() {
        ChainErrorKind::Base(_) => "; pass --fallback to skip it and use an older generation",
        _ => "",
    };
    Failure::new(code_of(Cause::Chain(e)), format!("{e}{before}{hint}"))
}

/// What one chain holds of a point.
enum Pick<'c> {
    /// The point, in this chain.
    Point(Picked<'c>),
    /// The chain's base is newer than the point: its range, for the message.
    Newer(String),
    /// The chain cannot be listed (its base's footer): the caller's rules decide.
    NoPoint(ChainError),
}

/// The point `at` in chain `c`.
///
/// # Errors
///
/// 65 if the point lies past a bad delta of the chain; 64 for `--seq` on a chain that is not
/// a queue's.
fn pick(c: &Chain, at: At) -> Result<Pick<'_>, Failure> {
    let listing = match ChainListing::load(&c.base, &c.dir) {
        Ok(l) => l,
        Err(e) => return Ok(Pick::NoPoint(e)),
    };
    if matches!(at, At::Seq(_)) && !is_queue(&listing) {
        return Err(Failure::new(
            Code::Usage,
            format!(
                "--seq needs a queue-strategy chain; {} is a {} snapshot: use --at",
                c.base.display(),
                strategy_name(&listing)
            ),
        ));
    }
    match listing.select(at) {
        Ok(k) => {
            check_not_past_stop(&listing, at, k)?;
            let unix_time_ns = listing
                .point_time(k)
                .unwrap_or(listing.base.meta.unix_time_ns);
            Ok(Pick::Point(Picked {
                chain: c,
                deltas: k,
                base: listing.base,
                unix_time_ns,
            }))
        }
        Err(e) if matches!(e.kind(), ChainErrorKind::NotInChain { .. }) => {
            Ok(Pick::Newer(describe(&listing)))
        }
        Err(e) => Err(Failure::new(code_of(Cause::Chain(&e)), e.to_string())),
    }
}

/// Writes the picked point into `file` (`chain::materialize`, which ends the chain where
/// `verify` does): `Err(e)` if the chain yields no point (the caller's rules decide),
/// `Ok(Err(failure))` if the point asked for lies past a bad delta or the chain changed.
fn materialize(
    picked: &Picked<'_>,
    at: At,
    file: &File,
) -> Result<Result<(SnapshotInfo, RestoreReport), Failure>, ChainError> {
    let (chain, k) = (picked.chain, picked.deltas);
    let (info, report) = chain::materialize(&chain.base, &chain.dir, At::Deltas(k as u64), file)?;
    if let Err(f) = picked.check_same(&report) {
        return Ok(Err(f));
    }
    let applied = report.listing.deltas.len();
    if applied < k && at != At::Latest {
        // A delta is not sound (its data CRC, or its point's image check): the point asked
        // for is past it.
        let why = report
            .listing
            .stop
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Ok(Err(Failure::new(
            Code::DataErr,
            format!(
                "{why}; the point asked for needs delta {k}, only deltas 1..={applied} are \
                 sound (nothing written)"
            ),
        )));
    }
    Ok(Ok((info, report)))
}

/// Refuses a point that may lie in the lost part of a broken chain: `at` selects all `k`
/// sound deltas, the chain stops at a bad delta, and that delta's footer does not show that
/// it is past the point. Only a footer that is intact and links to the chain's tip is
/// believed (a torn delta has none; a foreign file's says nothing about this chain).
fn check_not_past_stop(listing: &ChainListing, at: At, k: usize) -> Result<(), Failure> {
    let Some(stop) = &listing.stop else {
        return Ok(());
    };
    if at == At::Latest || k < listing.deltas.len() {
        return Ok(());
    }
    let footer = stop.path().and_then(|p| linked_footer(p, &listing.tip()));
    let past = footer.is_some_and(|f| match at {
        At::Time(t) => f.unix_time_ns > t,
        At::Seq(n) => f.next_seq > n.saturating_add(1),
        _ => false,
    });
    if past {
        return Ok(());
    }
    Err(Failure::new(
        Code::DataErr,
        format!(
            "{stop}; the point {} may lie in the lost part of the chain. Sound: {}. Pick a \
             point inside it, or omit --at/--seq for the newest sound point",
            point_text(at),
            describe(listing)
        ),
    ))
}

/// The footer of the delta at `path` if it is intact and links to `tip` (its table or data
/// may still be bad). Reads only the last 128 bytes; opens as every delta is opened
/// (`chain::open_delta`: regular files only, links not followed, without blocking).
fn linked_footer(path: &Path, tip: &chain::Tip) -> Option<chain::DeltaFooter> {
    let name = chain::parse_delta_name(path.file_name()?.as_bytes())?;
    let file = chain::open_delta(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut b = [0u8; chain::DELTA_FOOTER_LEN];
    let at = len.checked_sub(chain::DELTA_FOOTER_LEN as u64)?;
    file.read_exact_at(&mut b, at).ok()?;
    let footer = chain::decode_delta_footer(&b).ok()?;
    chain::check_link(tip, &footer, name).ok()?;
    Some(footer)
}

fn is_queue(l: &ChainListing) -> bool {
    Strategy::from_code(l.base.meta.strategy) == Some(Strategy::Queue)
}

fn strategy_name(l: &ChainListing) -> &'static str {
    Strategy::from_code(l.base.meta.strategy).map_or("unknown-strategy", Strategy::name)
}

/// One line: the chain's base and the range of its points (times; seqs for a queue).
pub fn describe(l: &ChainListing) -> String {
    let first = (l.base.meta.unix_time_ns, l.base_next_seq);
    let last = l
        .deltas
        .last()
        .map_or(first, |d| (d.footer.unix_time_ns, d.footer.next_seq));
    let seqs = if is_queue(l) {
        format!(", next_seq {}..={}", first.1, last.1)
    } else {
        String::new()
    };
    format!(
        "{} (generation {}) + {} delta(s), taken {} ..= {}{seqs}",
        l.base_path.display(),
        l.base.meta.generation,
        l.deltas.len(),
        rfc3339(first.0),
        rfc3339(last.0)
    )
}

pub fn point_text(at: At) -> String {
    match at {
        At::Latest => "the newest point".into(),
        At::Deltas(n) => format!("delta {n}"),
        At::Seq(n) => format!("seq {n} (no entry past it)"),
        At::Time(t) => rfc3339(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_linux::persist::Persister;
    use shmsnap_linux::snapshot;

    /// A state file whose base (generation `generation`) holds `fill` bytes, persisted.
    fn persist_base(persister: &Persister, generation: u64, fill: u8) {
        let region = shmsnap_linux::Memfd::create("base", 8192).unwrap();
        rustix::io::pwrite(&region, &[fill; 100], 0).unwrap();
        let meta = snapshot::SnapshotMeta {
            strategy: Strategy::Exit.code(),
            generation,
            unix_time_ns: generation * 1_000_000_000,
        };
        persister
            .persist_with(|f| snapshot::write_snapshot(&region, f, 8192, meta))
            .unwrap();
    }

    #[test]
    fn a_generation_rotated_between_listing_and_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let persister = Persister::new(&state, 1).unwrap();
        persist_base(&persister, 1, 0xaa);
        let chains = generations(&state).unwrap();
        let Ok(Pick::Point(picked)) = pick(&chains[0], At::Latest) else {
            panic!("no point");
        };
        let copy = |picked: &Picked<'_>| {
            let out = tempfile::tempfile().unwrap();
            let (_, report) =
                chain::materialize(&picked.chain.base, &picked.chain.dir, At::Latest, &out)
                    .unwrap();
            picked.check_same(&report)
        };
        assert!(copy(&picked).is_ok(), "nothing changed");
        // A host persists generation 2: s.snap is now another base.
        persist_base(&persister, 2, 0xbb);
        let e = copy(&picked).unwrap_err();
        assert_eq!(e.code, Code::TempFail, "{e}");
        assert!(e.message.contains("run the restore again"), "{e}");
    }

    #[test]
    fn generation_names_are_decimal_suffixes() {
        assert_eq!(generation_index(b"s.snap", b"s.snap.1"), Some(1));
        assert_eq!(generation_index(b"s.snap", b"s.snap.12"), Some(12));
        for other in [
            &b"s.snap"[..],
            b"s.snap.",
            b"s.snap.01",
            b"s.snap.lock",
            b"s.snap.d",
            b"s.snap.1x",
            b"t.snap.1",
        ] {
            assert_eq!(generation_index(b"s.snap", other), None);
        }
    }
}
