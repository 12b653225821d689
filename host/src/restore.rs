//! `shmsnap restore`: one point of a snapshot chain, written as a standalone snapshot file.
//!
//! The steps, each its own function: [`point`] (which state: newest, `--at`, `--seq`),
//! [`source`] (which chains: the state file's kept generations, newest first — the one place a
//! replica source becomes an added arm), [`Out::check`] (refusals before any work: OUT exists,
//! OUT is the state), [`pick`] (the chain and the number of deltas), then [`Out::write`]:
//! `materialize` into a temp file in OUT's directory, `fdatasync`, `renameat2` (with
//! `RENAME_NOREPLACE` unless `--force`; `link` + `unlink` on a file system without it),
//! `fsync` of the directory. Read-only on the state:
//! nothing of FILE's is opened for writing, renamed or removed.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};
use shmsnap_core::Strategy;
use shmsnap_linux::atomic_file::{AtomicFile, CommitError, Rule, Step};
use shmsnap_linux::chain::{self, At, ChainError, ChainErrorKind, ChainListing, RestoreReport};
use shmsnap_linux::noreplace::{Exclusive, NoReplace};
use shmsnap_linux::persist::{generation_index, generations_of};
use shmsnap_linux::snapshot::SnapshotInfo;

use tracing::warn;

use crate::cli::RestoreArgs;
use crate::exit::{chain_code, Code, Failure};
use crate::snap::skippable;

/// `shmsnap restore --state FILE --to OUT [--at TIME | --seq N] [--force]`.
///
/// # Errors
///
/// A [`Failure`]: 64 for OUT naming the state, 73 for an existing OUT without `--force` (or
/// an unwritable directory), 66 for a point older than every kept state (the message lists
/// what exists) or a missing state, 65 for a corrupt base or a point past a broken delta.
pub fn restore(args: &RestoreArgs) -> Result<ExitCode, Failure> {
    let state = match (&args.state, &args.from) {
        (Some(state), _) => state,
        (None, Some(url)) => {
            let out = Out::check(&args.to, None, args.force)?;
            return crate::replica::restore::restore(url, &out, args.at, args.fallback);
        }
        (None, None) => unreachable!("clap requires --state or --from"),
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
fn point(args: &RestoreArgs) -> At {
    match (args.at, args.seq) {
        (Some(t), _) => At::Time(t),
        (None, Some(n)) => At::Seq(n),
        (None, None) => At::Latest,
    }
}

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
fn source(state: &Path) -> Result<Vec<Chain>, Failure> {
    if let Err(e) = state.symlink_metadata() {
        return Err(Failure::new(
            crate::exit::io_code(&e),
            format!("cannot read the state file {}: {e}", state.display()),
        ));
    }
    generations(state).map_err(|e| {
        Failure::new(
            crate::exit::io_code(&e),
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

fn parent_of(path: &Path) -> &Path {
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
fn write_point<'c>(
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
    Failure::new(chain_code(e), format!("{e}{before}{hint}"))
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
            let unix_time_ns = k
                .checked_sub(1)
                .and_then(|j| listing.deltas.get(j))
                .map_or(listing.base.meta.unix_time_ns, |d| d.footer.unix_time_ns);
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
        Err(e) => Err(Failure::new(chain_code(&e), e.to_string())),
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

fn point_text(at: At) -> String {
    match at {
        At::Latest => "the newest point".into(),
        At::Deltas(n) => format!("delta {n}"),
        At::Seq(n) => format!("seq {n} (no entry past it)"),
        At::Time(t) => rfc3339(t),
    }
}

/// A time in ns since the epoch as RFC 3339 UTC (to the second, or to the ns if it has any).
pub fn rfc3339(ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    if ns.is_multiple_of(1_000_000_000) {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_nanos(t).to_string()
    }
}

/// Parses `--at`: RFC 3339 (`2026-11-25T21:00:00Z`, `…T22:00:00.5+01:00`; a space for the
/// `T` and a missing zone mean UTC) or `@UNIX_SECONDS` (`@1795734000`, `@1795734000.25`), to
/// ns since the Unix epoch.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let hint = "use RFC 3339 (2026-11-25T21:00:00Z, 2026-11-25T22:00:00+01:00) or \
                @UNIX_SECONDS (@1795734000)";
    if let Some(secs) = s.strip_prefix('@') {
        return parse_unix(secs).ok_or_else(|| format!("{s:?} is not @UNIX_SECONDS; {hint}"));
    }
    let (local, offset) =
        split_offset(s).ok_or_else(|| format!("{s:?}: bad zone offset; {hint}"))?;
    let t = humantime::parse_rfc3339_weak(local).map_err(|e| format!("{s:?}: {e}; {hint}"))?;
    let ns = t
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| format!("{s:?} is out of range (1970 to 2554); {hint}"))?;
    // UTC = local time - offset.
    ns.checked_add_signed(-offset)
        .ok_or_else(|| format!("{s:?} is out of range (1970 to 2554); {hint}"))
}

/// Splits a trailing `±HH:MM` zone offset off `s`: `(rest, offset in ns)`; `Z` and no zone
/// are left to humantime (UTC). `None` for an offset out of range.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    let b = s.as_bytes();
    if b.len() < 6 + 19 {
        return Some((s, 0));
    }
    let z = &b[b.len() - 6..];
    let sign = match z[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((s, 0)),
    };
    if z[3] != b':' {
        return Some((s, 0));
    }
    let two = |x: &[u8]| -> Option<i64> {
        x.iter()
            .all(u8::is_ascii_digit)
            .then(|| i64::from(x[0] - b'0') * 10 + i64::from(x[1] - b'0'))
    };
    let (h, m) = (two(&z[1..3])?, two(&z[4..6])?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((
        &s[..s.len() - 6],
        sign * (h * 3600 + m * 60) * 1_000_000_000,
    ))
}

/// `SECONDS[.FRACTION]` to ns.
fn parse_unix(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
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
impl crate::replica::restore::Destination for Out {
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn write(
        &self,
        fill: &mut dyn FnMut(&File) -> Result<crate::replica::restore::Materialized, Failure>,
    ) -> Result<crate::replica::restore::Materialized, Failure> {
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
    use shmsnap_linux::persist::Persister;
    use shmsnap_linux::snapshot;

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        let s = 1_795_734_000u64; // 2026-11-26T23:00:00Z
        let ns = s * 1_000_000_000;
        assert_eq!(parse_time("@1795734000"), Ok(ns));
        assert_eq!(parse_time("@1795734000.25"), Ok(ns + 250_000_000));
        assert_eq!(parse_time("2026-11-26T23:00:00Z"), Ok(ns));
        assert_eq!(parse_time("2026-11-26 23:00:00"), Ok(ns));
        assert_eq!(parse_time("2026-11-27T00:00:00+01:00"), Ok(ns));
        assert_eq!(parse_time("2026-11-26T18:30:00-04:30"), Ok(ns));
        assert_eq!(parse_time("2026-11-26T23:00:00.5Z"), Ok(ns + 500_000_000));
        assert_eq!(parse_time("2026-11-26T23:00:00+00:00"), Ok(ns));
        for bad in [
            "yesterday",
            "@",
            "@12x",
            "@1.1234567891",
            "2026-11-26T20:20:00+25:00",
            "2026-13-26T20:20:00Z",
            "1969-12-31T23:59:59Z",
            "@18446744073709551615",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
        assert_eq!(rfc3339(ns), "2026-11-26T23:00:00Z");
    }

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
