//! `shmsnap inspect` and `shmsnap verify`: what a snapshot file holds, for humans and scripts.
//!
//! Memory stays bounded whatever the entry count: `verify` is one streaming pass
//! ([`snapshot::verify_entries`]); `inspect` checks the file the same way, scans the
//! descriptor ring in chunks for the layout's figures, then *streams* the entries (text rows,
//! or the JSON array through serde_json's serializer over an iterator) in seq order, reading
//! the ring again chunk by chunk. The live entries of a ring written by shmsnap-core span
//! fewer than `E` consecutive seqs, so seq order is slot order rotated to the oldest entry;
//! only a file whose entries span more (valid descriptors, but not a ring a writer leaves)
//! makes inspect sort `(seq, slot)` pairs, 16 bytes per entry.
//!
//! Chains: both read the base's chain in `FILE.d` (for a kept generation `FILE.N`, `FILE`'s
//! chain directory) with `ChainListing::load` (footers and run tables) and `check_points`
//! (each delta's data once, streamed, for its CRC, and the image check of every point: the
//! one answer restore and run use too). `verify` fails (65) on the first bad delta, naming it
//! and what a restore would use; `inspect` lists the sound deltas, the stop and the ignored
//! files, and the older kept generations' chains briefly, in the text and as the JSON `chain`
//! field.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};
use shmsnap_core::format::Strategy;
use shmsnap_core::{Descriptor, Hints, Layout, LayoutError};
use shmsnap_linux::chain::{self, ChainError, ChainErrorKind, ChainListing, DataCrc, DeltaEntry};
use shmsnap_linux::snapshot::{
    self, HeaderError, ImageSummary, QueueSlots, SlotState, SnapshotError, SnapshotInfo, FOOTER_LEN,
};

use crate::chains::{chain_target, describe, generations};
use crate::exit::{code_of, Cause, Code, Failure};
use crate::progress;
use crate::time::rfc3339;

/// Bytes of each payload shown.
const PREVIEW: usize = 16;

#[derive(Debug, Serialize)]
struct Report<'f> {
    file: String,
    file_len: u64,
    footer: Option<Footer>,
    verdict: String,
    sound: bool,
    layout: Option<LayoutReport>,
    entries: Entries<'f>,
    #[serde(skip_serializing_if = "Option::is_none")]
    triple: Option<TripleReport>,
    /// The chain this file is the base of (`None`: its footer is unreadable).
    chain: Option<ChainReport>,
}

/// The persisted buffer of a sound triple image.
#[derive(Debug, Serialize)]
struct TripleReport {
    buffers: u64,
    buffer_size: u64,
    buffer: u64,
    seq: u64,
    next_seq: u64,
    region_len: u64,
}

#[derive(Debug, Serialize)]
struct Footer {
    version: u64,
    image_len: u64,
    strategy: &'static str,
    generation: u64,
    unix_time_ns: u64,
    age_seconds: Option<f64>,
    image_crc32c: String,
}

#[derive(Debug, Serialize)]
struct LayoutReport {
    entries: u64,
    data_size: u64,
    data_offset: u64,
    tail_offset: u64,
    tail_len: u64,
    region_len: u64,
    next_seq: u64,
    data_head: u64,
    epoch: u64,
    problem: Option<String>,
}

#[derive(Debug, Serialize)]
struct Entry {
    slot: u64,
    seq: u64,
    offset: u64,
    length: u64,
    first_bytes: String,
}

/// The name of a footer's strategy code (`unknown` for a code no strategy has).
fn strategy_name(code: u64) -> &'static str {
    Strategy::from_code(code).map_or("unknown", Strategy::name)
}

/// `true` if a footer's strategy code is the queue's (its image has a queue header).
fn is_queue(code: u64) -> bool {
    Strategy::from_code(code) == Some(Strategy::Queue)
}

fn footer_only(file: &File, len: u64) -> Option<SnapshotInfo> {
    let at = len.checked_sub(FOOTER_LEN as u64)?;
    let mut b = [0u8; FOOTER_LEN];
    file.read_exact_at(&mut b, at).ok()?;
    snapshot::decode_footer(&b).ok()
}

/// The header of a queue image: its layout and hints (read by os-linux's image reader; the
/// messages are inspect's).
fn read_header(file: &File, image_len: u64) -> Result<(Layout, Hints), String> {
    snapshot::read_queue_header(file, image_len).map_err(|e| match e {
        HeaderError::Short => "image shorter than a header".into(),
        HeaderError::Layout(LayoutError::Unconfigured) => {
            "the region was never configured by a client (no magic in its header)".into()
        }
        HeaderError::Layout(e) => e.to_string(),
        HeaderError::Io(e) => e.to_string(),
    })
}

/// What one pass over the descriptor ring found.
#[derive(Debug, Default)]
struct Scan {
    /// Valid entries.
    count: u64,
    /// Lowest and highest valid seq (`None` without entries).
    seqs: Option<(u64, u64)>,
    /// The first problem in slot order (an invalid non-empty descriptor, or an entry not
    /// below the `next_seq` hint, makes the image unsound).
    problem: Option<String>,
}

/// Scans the whole descriptor ring, in chunks (os-linux's image reader).
fn scan(file: &File, layout: &Layout, hints: &Hints) -> Result<Scan, String> {
    let mut scan = Scan::default();
    for item in slots(file, *layout, 0, layout.entries) {
        let (slot, seq_word, d) = item.map_err(|e| e.to_string())?;
        let Some(d) = d else {
            if seq_word != 0 && scan.problem.is_none() {
                scan.problem = Some(format!("descriptor {slot} is neither empty nor valid"));
            }
            continue;
        };
        if d.seq >= hints.next_seq && scan.problem.is_none() {
            scan.problem = Some(format!(
                "entry {} is not below the next_seq hint {}",
                d.seq, hints.next_seq
            ));
        }
        scan.count += 1;
        scan.seqs = Some(
            scan.seqs
                .map_or((d.seq, d.seq), |(lo, hi)| (lo.min(d.seq), hi.max(d.seq))),
        );
    }
    Ok(scan)
}

/// The slots `first, first+1, ...` (`count` of them, wrapping at `E`) of a queue image, read
/// by os-linux's image reader: `(slot, seq word, the descriptor if valid for its slot)`.
fn slots(
    file: &File,
    layout: Layout,
    first: u64,
    count: u64,
) -> impl Iterator<Item = io::Result<(u64, u64, Option<Descriptor>)>> + '_ {
    QueueSlots::new(file, layout, first, count).map(|item| {
        item.map(|s| {
            let d = match s.state {
                SlotState::Valid(d) => Some(d),
                SlotState::Empty | SlotState::NotValid => None,
            };
            (s.slot, s.seq_word, d)
        })
    })
}

/// The entries of a queue image in seq order, streamed from the file when serialized or
/// printed (see the module docs).
struct Entries<'f> {
    /// `None`: no entries to list (not a queue image, or its header is unusable).
    ring: Option<(&'f File, Layout)>,
    /// From the [`Scan`].
    count: u64,
    seqs: Option<(u64, u64)>,
    /// Set if the file could not be read while streaming (the output is then cut short).
    error: Cell<Option<String>>,
}

impl std::fmt::Debug for Entries<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entries({})", self.count)
    }
}

impl<'f> Entries<'f> {
    fn none() -> Self {
        Entries {
            ring: None,
            count: 0,
            seqs: None,
            error: Cell::new(None),
        }
    }

    /// A read error of the file while streaming: remembered in `error` (so the caller tells it
    /// from an error of the output), and returned.
    fn read_failed(&self, e: io::Error) -> io::Error {
        self.error.set(Some(e.to_string()));
        e
    }

    /// Calls `f` with each entry in seq order.
    fn for_each(&self, mut f: impl FnMut(Entry) -> io::Result<()>) -> io::Result<()> {
        let (Some((file, layout)), Some((lo, hi))) = (self.ring, self.seqs) else {
            return Ok(());
        };
        let entry = |slot, d: Descriptor| Entry::read(file, &layout, slot, d);
        if hi - lo < layout.entries {
            // Seq order is slot order from the oldest entry's slot.
            for item in slots(file, layout, layout.slot_of(lo), layout.entries) {
                if let (slot, _, Some(d)) = item.map_err(|e| self.read_failed(e))? {
                    f(entry(slot, d))?;
                }
            }
            return Ok(());
        }
        let mut order = Vec::with_capacity(usize::try_from(self.count).unwrap_or(0));
        for item in slots(file, layout, 0, layout.entries) {
            if let (slot, _, Some(d)) = item.map_err(|e| self.read_failed(e))? {
                order.push((d.seq, slot));
            }
        }
        order.sort_unstable();
        for (_, slot) in order {
            // One descriptor: the file is read again, so check it again.
            if let Some(Ok((slot, _, Some(d)))) = slots(file, layout, slot, 1).next() {
                f(entry(slot, d))?;
            }
        }
        Ok(())
    }
}

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        let mut ser_error = None;
        let r = self.for_each(|e| {
            seq.serialize_element(&e).map_err(|e| {
                let msg = e.to_string();
                ser_error = Some(e);
                io::Error::other(msg)
            })
        });
        if let Some(e) = ser_error {
            return Err(e);
        }
        r.map_err(S::Error::custom)?;
        seq.end()
    }
}

impl Entry {
    /// The entry of valid descriptor `d` in `slot`, with the first bytes of its payload.
    fn read(file: &File, layout: &Layout, slot: u64, d: Descriptor) -> Entry {
        let n = (d.length as usize).min(PREVIEW);
        let mut b = vec![0u8; n];
        let at = layout.ring_byte(d.offset) as u64;
        let first = match file.read_exact_at(&mut b, at) {
            Ok(()) => b
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("<{e}>"),
        };
        Entry {
            slot,
            seq: d.seq,
            offset: d.offset,
            length: d.length,
            first_bytes: first,
        }
    }
}

/// Opens `path` without blocking on a FIFO, refusing anything but a regular file.
fn open(path: &Path) -> Result<File, Failure> {
    snapshot::open(path).map_err(|e| Failure::new(code_of(Cause::Snapshot(&e)), e.to_string()))
}

fn build<'f>(path: &Path, file: &'f File) -> Result<Report<'f>, Failure> {
    let file_len = file
        .metadata()
        .map_err(|e| {
            Failure::new(
                code_of(Cause::Io(&e)),
                format!("cannot stat {}: {e}", path.display()),
            )
        })?
        .len();
    let verified: Result<SnapshotInfo, SnapshotError> = snapshot::verify(file);
    let footer = verified
        .as_ref()
        .ok()
        .copied()
        .or_else(|| footer_only(file, file_len));
    let mut report = Report {
        file: path.display().to_string(),
        file_len,
        footer: footer.map(|f| Footer {
            version: f.version,
            image_len: f.image_len,
            strategy: strategy_name(f.meta.strategy),
            generation: f.meta.generation,
            unix_time_ns: f.meta.unix_time_ns,
            age_seconds: SystemTime::now()
                .duration_since(UNIX_EPOCH + Duration::from_nanos(f.meta.unix_time_ns))
                .ok()
                .map(|d| d.as_secs_f64()),
            image_crc32c: format!("{:08x}", f.image_crc),
        }),
        verdict: String::new(),
        sound: false,
        layout: None,
        entries: Entries::none(),
        triple: None,
        chain: chain_report(path),
    };
    if let Ok(info) = &verified {
        report.triple = triple_report(file, info);
    }
    let mut problem = match &verified {
        Ok(_) => None,
        Err(e) => Some((code_of(Cause::Snapshot(e)), e.to_string())),
    };
    if let Some(f) = footer.filter(|f| is_queue(f.meta.strategy)) {
        let queue_problem = add_queue(&mut report, path, file, f.image_len);
        problem = problem.or(queue_problem);
    }
    match problem {
        None => {
            report.sound = true;
            report.verdict = "sound".into();
        }
        Some((_, msg)) => report.verdict = msg,
    }
    Ok(report)
}

/// The persisted buffer of a verified triple image (`None` for other strategies). The image
/// check passed, so this reads a sound triple meta again (no CRC).
fn triple_report(file: &File, info: &SnapshotInfo) -> Option<TripleReport> {
    match snapshot::check_image(file, info, |_, _| {}) {
        Ok(ImageSummary::Triple(t)) => Some(TripleReport {
            buffers: t.layout.buffers,
            buffer_size: t.layout.buffer_size,
            buffer: t.buffer,
            seq: t.seq,
            next_seq: t.next_seq,
            region_len: t.layout.region_len,
        }),
        _ => None,
    }
}

/// Fills the queue layout and the (streamed) entries of `report`; returns the image's
/// problem, if any.
fn add_queue<'f>(
    report: &mut Report<'f>,
    path: &Path,
    file: &'f File,
    image_len: u64,
) -> Option<(Code, String)> {
    let queue =
        read_header(file, image_len).and_then(|(l, h)| scan(file, &l, &h).map(|s| (l, h, s)));
    let (l, h, scan) = match queue {
        Ok(q) => q,
        Err(e) => {
            return Some((
                Code::DataErr,
                format!("{}: queue image: {e}", path.display()),
            ))
        }
    };
    let p = scan.problem;
    report.layout = Some(LayoutReport {
        entries: l.entries,
        data_size: l.data_size,
        data_offset: l.data_offset,
        tail_offset: l.tail_offset,
        tail_len: l.tail_len,
        region_len: l.region_len,
        next_seq: h.next_seq,
        data_head: h.data_head,
        epoch: h.epoch,
        problem: p.clone(),
    });
    report.entries = Entries {
        ring: Some((file, l)),
        count: scan.count,
        seqs: scan.seqs,
        error: Cell::new(None),
    };
    p.map(|p| (Code::DataErr, format!("{}: {p}", path.display())))
}

/// The chain of a base: its deltas as far as they are sound and linked (data CRCs checked),
/// why it stops there, and the older kept generations' chains, briefly.
///
/// No key in here is also a key of the rest of the report (`file`, `sound`, `generation`,
/// `unix_time_ns`, `next_seq`, …): scripts that grep the report's text for the last
/// `"generation"` (as `tests/final_snapshot.rs` does) still find the footer's.
#[derive(Debug, Serialize)]
struct ChainReport {
    /// The chain directory (`FILE.d`).
    dir: String,
    /// No bad delta: every delta of this base present is sound and linked.
    intact: bool,
    /// The base image's `next_seq` hint (queue images; else 0).
    base_next_seq: u64,
    deltas: Vec<DeltaReport>,
    /// The first bad delta, if any: what a restore stops before.
    stop: Option<StopReport>,
    /// Deltas after the stop: never applied.
    ignored: Vec<String>,
    /// Older kept generations (`FILE.1`, …) and their chains, when FILE is the state file.
    older: Vec<OlderReport>,
}

#[derive(Debug, Serialize)]
struct DeltaReport {
    index: u64,
    path: String,
    next_seq_before: u64,
    /// The image's `next_seq` after this delta.
    next_seq_after: u64,
    taken_unix_ns: u64,
    /// The delta file's length.
    bytes: u64,
    /// Bytes of page data it carries.
    data_bytes: u64,
    pages: u64,
    runs: u64,
}

#[derive(Debug, Serialize)]
struct StopReport {
    /// The file (for a missing delta, the name it should have).
    path: Option<String>,
    /// `torn`, `corrupt`, `unlinked`, `missing`, `newer-version`, `unreadable`, `bad-image`
    /// (its CRCs match, but the point it yields fails the image check) or `not-a-file` (a
    /// symbolic link, FIFO, directory… at a delta's name).
    kind: &'static str,
    reason: String,
}

#[derive(Debug, Serialize)]
struct OlderReport {
    path: String,
    /// `None`: the base's footer is unusable (`summary` says why). Not named `generation`:
    /// scripts that grep the last `"generation"` of the report must still find the footer's.
    base_generation: Option<u64>,
    base_taken_unix_ns: Option<u64>,
    deltas: u64,
    /// The newest point: its time and `next_seq`.
    newest_taken_unix_ns: Option<u64>,
    newest_next_seq: Option<u64>,
    /// One line: the chain's range, or why it cannot be read.
    summary: String,
    stop: Option<StopReport>,
}

/// The chain of `path` (None if its footer is unreadable). Streams: footers and run tables,
/// then each delta's data once for its CRC.
fn chain_report(path: &Path) -> Option<ChainReport> {
    let target = chain_target(path);
    let dir = chain::chain_dir(&target);
    let mut listing = ChainListing::load(path, &dir).ok()?;
    listing.check_points(DataCrc::Now).ok()?;
    let older = if target == path {
        older_reports(&target)
    } else {
        Vec::new()
    };
    Some(ChainReport {
        dir: dir.display().to_string(),
        intact: listing.stop.is_none(),
        base_next_seq: listing.base_next_seq,
        deltas: listing.deltas.iter().map(delta_report).collect(),
        stop: listing.stop.as_ref().map(stop_report),
        ignored: listing
            .ignored
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        older,
    })
}

fn delta_report(d: &DeltaEntry) -> DeltaReport {
    let f = &d.footer;
    DeltaReport {
        index: f.index,
        path: d.path.display().to_string(),
        next_seq_before: f.next_seq_before,
        next_seq_after: f.next_seq,
        taken_unix_ns: f.unix_time_ns,
        bytes: f.file_len(),
        data_bytes: f.data_len,
        pages: d.pages(),
        runs: d.runs.len() as u64,
    }
}

fn stop_report(e: &ChainError) -> StopReport {
    let kind = match e.kind() {
        ChainErrorKind::Truncated { .. } | ChainErrorKind::BadMagic => "torn",
        ChainErrorKind::WrongBase { .. }
        | ChainErrorKind::WrongParent { .. }
        | ChainErrorKind::NameMismatch { .. } => "unlinked",
        ChainErrorKind::Missing { .. } => "missing",
        ChainErrorKind::FutureVersion { .. } => "newer-version",
        ChainErrorKind::Io(_) => "unreadable",
        ChainErrorKind::Image(_) => "bad-image",
        ChainErrorKind::NotRegularFile { .. } => "not-a-file",
        _ => "corrupt",
    };
    StopReport {
        path: e.path().map(|p| p.display().to_string()),
        kind,
        reason: e.to_string(),
    }
}

/// The kept generations `FILE.1`, … of `target`, each checked as the state file's chain is
/// (`check_points`), listed briefly.
fn older_reports(target: &Path) -> Vec<OlderReport> {
    let Ok(chains) = generations(target) else {
        return Vec::new();
    };
    let older = chains.into_iter().filter(|c| c.base != target);
    older
        .map(|c| {
            match ChainListing::load(&c.base, &c.dir)
                .and_then(|mut l| l.check_points(DataCrc::Now).map(|()| l))
            {
                Ok(l) => {
                    let newest = l.deltas.last().map(|d| &d.footer);
                    OlderReport {
                        path: c.base.display().to_string(),
                        base_generation: Some(l.base.meta.generation),
                        base_taken_unix_ns: Some(l.base.meta.unix_time_ns),
                        deltas: l.deltas.len() as u64,
                        newest_taken_unix_ns: Some(
                            newest.map_or(l.base.meta.unix_time_ns, |f| f.unix_time_ns),
                        ),
                        newest_next_seq: Some(newest.map_or(l.base_next_seq, |f| f.next_seq)),
                        summary: describe(&l),
                        stop: l.stop.as_ref().map(stop_report),
                    }
                }
                Err(e) => OlderReport {
                    path: c.base.display().to_string(),
                    base_generation: None,
                    base_taken_unix_ns: None,
                    deltas: 0,
                    newest_taken_unix_ns: None,
                    newest_next_seq: None,
                    summary: format!("{}: unusable ({e})", c.base.display()),
                    stop: None,
                },
            }
        })
        .collect()
}

fn print_chain(out: &mut impl Write, c: &ChainReport) -> io::Result<()> {
    if c.deltas.is_empty() && c.stop.is_none() {
        writeln!(out, "chain:     no deltas")?;
    } else {
        writeln!(
            out,
            "chain:     {} sound delta(s) in {}, base next_seq {}",
            c.deltas.len(),
            c.dir,
            c.base_next_seq
        )?;
    }
    if !c.deltas.is_empty() {
        writeln!(
            out,
            "  {:>8} {:>21}  {:<30} {:>12} {:>8} {:>6}  file",
            "position", "seqs", "taken", "bytes", "pages", "runs"
        )?;
    }
    for d in &c.deltas {
        let seqs = format!("{}..{}", d.next_seq_before, d.next_seq_after);
        writeln!(
            out,
            "  {:>8} {seqs:>21}  {:<30} {:>12} {:>8} {:>6}  {}",
            d.index,
            rfc3339(d.taken_unix_ns),
            d.bytes,
            d.pages,
            d.runs,
            d.path
        )?;
    }
    if let Some(s) = &c.stop {
        writeln!(out, "stop:      {} ({})", s.reason, s.kind)?;
        writeln!(
            out,
            "           {} file(s) from there on ignored; a restore uses the base and deltas \
             1..={}",
            c.ignored.len(),
            c.deltas.len()
        )?;
    }
    for o in &c.older {
        writeln!(out, "older:     {}", o.summary)?;
        if let Some(s) = &o.stop {
            writeln!(out, "           stops: {} ({})", s.reason, s.kind)?;
        }
    }
    Ok(())
}

/// `shmsnap verify FILE`.
///
/// # Errors
///
/// A [`Failure`] naming the file and the problem if it is not a sound snapshot.
pub fn verify(path: &Path) -> Result<ExitCode, Failure> {
    let file = open(path)?;
    // One streaming pass: footer, CRC, header and descriptors (bounded memory); a bar on a
    // terminal for a big file.
    let label = format!("verifying {}", path.display());
    let verified = progress::reading_file(&file, 1, &label, || {
        snapshot::verify_entries(&file, |_, _| {})
    });
    let (info, summary) = verified.map_err(|e| {
        let e = e.at(path);
        Failure::new(code_of(Cause::Snapshot(&e)), e.to_string())
    })?;
    let detail = match summary {
        ImageSummary::Queue {
            entries, newest, ..
        } => format!(
            ", {entries} entries, newest seq {}",
            newest.map_or(0, |d| d.seq)
        ),
        ImageSummary::Triple(t) => format!(
            ", triple buffer {} of {} ({} bytes), seq {}",
            t.buffer, t.layout.buffers, t.layout.buffer_size, t.seq
        ),
        _ => String::new(),
    };
    let chain = verify_deltas(path)?;
    println!(
        "{}: sound (generation {}, {} strategy, {} bytes{detail}{chain})",
        path.display(),
        info.meta.generation,
        strategy_name(info.meta.strategy),
        info.image_len
    );
    Ok(ExitCode::SUCCESS)
}

/// The deltas of the verified base `path`: every one present must be sound and linked.
/// Returns the text `verify` adds for them (empty for a lone snapshot file).
///
/// # Errors
///
/// A [`Failure`] (65 for a bad delta) naming the delta, what is wrong with it, and what a
/// restore would use.
fn verify_deltas(path: &Path) -> Result<String, Failure> {
    let dir = chain::chain_dir(&chain_target(path));
    let failed = |e: ChainError| Failure::new(code_of(Cause::Chain(&e)), e.to_string());
    let mut listing = ChainListing::load(path, &dir).map_err(failed)?;
    listing.check_points(DataCrc::Now).map_err(failed)?;
    if let Some(stop) = &listing.stop {
        return Err(Failure::new(
            Code::DataErr,
            format!(
                "{}: the base is sound, but {stop}. A restore would use the newest sound \
                 point: {}",
                path.display(),
                describe(&listing)
            ),
        ));
    }
    let Some(newest) = listing.deltas.last() else {
        return Ok(String::new());
    };
    let seq = if is_queue(listing.base.meta.strategy) {
        format!(", next_seq {}", newest.footer.next_seq)
    } else {
        String::new()
    };
    Ok(format!(
        "; chain of {} delta(s) in {}, newest taken {}{seq}",
        listing.deltas.len(),
        dir.display(),
        rfc3339(newest.footer.unix_time_ns)
    ))
}

/// `shmsnap inspect FILE [--json]`.
///
/// # Errors
///
/// A [`Failure`] if the file cannot be read at all; a readable but unsound file is described,
/// then reported with exit code 65.
pub fn inspect(path: &Path, json: bool) -> Result<ExitCode, Failure> {
    let file = open(path)?;
    let r = build(path, &file)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &r)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        print_text(&mut out, &r)
    };
    if let Some(e) = r.entries.error.take() {
        return Err(Failure::new(
            Code::IoErr,
            format!("{}: cannot read the entries: {e}", path.display()),
        ));
    }
    written.and_then(|()| out.flush()).map_err(|e| {
        Failure::new(
            code_of(Cause::Io(&e)),
            format!("cannot write the report: {e}"),
        )
    })?;
    Ok(if r.sound && r.chain.as_ref().is_none_or(|c| c.intact) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(Code::DataErr as u8)
    })
}

fn print_text(out: &mut impl Write, r: &Report<'_>) -> io::Result<()> {
    writeln!(out, "file:      {} ({} bytes)", r.file, r.file_len)?;
    match &r.footer {
        Some(f) => {
            let age = f
                .age_seconds
                .map_or(String::from("in the future?"), |a| format!("{a:.1} s ago"));
            writeln!(
                out,
                "footer:    version {}, generation {}, strategy {}, taken {age}",
                f.version, f.generation, f.strategy
            )?;
            writeln!(
                out,
                "image:     {} bytes, crc32c {}",
                f.image_len, f.image_crc32c
            )?;
        }
        None => writeln!(out, "footer:    none readable")?,
    }
    if let Some(l) = &r.layout {
        writeln!(
            out,
            "layout:    format 1, {} entries, {}-byte data ring at {}, tail {} bytes at {}, region {} bytes",
            l.entries, l.data_size, l.data_offset, l.tail_len, l.tail_offset, l.region_len
        )?;
        writeln!(
            out,
            "hints:     next_seq {}, data_head {}, epoch {}",
            l.next_seq, l.data_head, l.epoch
        )?;
        writeln!(out, "entries:   {}", r.entries.count)?;
        if r.entries.count > 0 {
            writeln!(
                out,
                "  {:>10} {:>6} {:>12} {:>8}  first bytes",
                "seq", "slot", "offset", "length"
            )?;
            r.entries.for_each(|e| {
                writeln!(
                    out,
                    "  {:>10} {:>6} {:>12} {:>8}  {}",
                    e.seq, e.slot, e.offset, e.length, e.first_bytes
                )
            })?;
        }
    }
    if let Some(t) = &r.triple {
        writeln!(
            out,
            "triple:    buffer {} of {} ({} bytes each) holds seq {}; next_seq {}, region {} bytes",
            t.buffer, t.buffers, t.buffer_size, t.seq, t.next_seq, t.region_len
        )?;
    }
    let mut broken = String::new();
    if let Some(c) = &r.chain {
        print_chain(out, c)?;
        if !c.intact {
            broken = format!(
                " (the base); the chain is broken after delta {}",
                c.deltas.len()
            );
        }
    }
    writeln!(out, "verdict:   {}{broken}", r.verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_core::format::{desc, word};
    use shmsnap_core::PAGE_SIZE;
    use shmsnap_core::{LayoutRequest, Writer};
    use shmsnap_linux::{Mapping, Memfd, Protection};
    use std::sync::atomic::Ordering;

    /// A 4-slot ring with `payloads` committed, then `edit` applied to its words; the image
    /// bytes in a file.
    fn image(
        payloads: &[u64],
        edit: impl FnOnce(&Layout, &[std::sync::atomic::AtomicU64]),
    ) -> (File, Layout, Hints) {
        let memfd = Memfd::create("inspect", 4 * PAGE_SIZE).unwrap();
        memfd.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        let request = LayoutRequest {
            entries: 4,
            data_size: 64,
        };
        let mut w =
            Writer::open_or_init(map.words(), request, crate::examples::TEST_CLIENT).unwrap();
        for p in payloads {
            w.commit(&p.to_le_bytes()).unwrap();
        }
        let layout = *w.region().layout();
        edit(&layout, map.words());
        let mut bytes = vec![0u8; (4 * PAGE_SIZE) as usize];
        rustix::io::pread(&memfd, &mut bytes, 0).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        let (layout, hints) = read_header(&f, 4 * PAGE_SIZE).unwrap();
        (f, layout, hints)
    }

    fn listed(f: &File, layout: Layout, hints: &Hints) -> (Scan, Vec<(u64, u64)>) {
        let scan = scan(f, &layout, hints).unwrap();
        let entries = Entries {
            ring: Some((f, layout)),
            count: scan.count,
            seqs: scan.seqs,
            error: Cell::new(None),
        };
        let mut got = Vec::new();
        entries
            .for_each(|e| {
                got.push((e.seq, e.slot));
                Ok(())
            })
            .unwrap();
        (scan, got)
    }

    #[test]
    fn a_wrapped_ring_is_listed_in_seq_order() {
        // Seqs 1..=6 in 4 slots: 3..=6 live, the oldest (3) in slot 2.
        let (f, layout, hints) = image(&[1, 2, 3, 4, 5, 6], |_, _| {});
        let (scan, got) = listed(&f, layout, &hints);
        assert_eq!(scan.count, 4);
        assert_eq!(got, [(3, 2), (4, 3), (5, 0), (6, 1)]);
    }

    #[test]
    fn entries_spanning_more_than_the_ring_are_still_listed_in_seq_order() {
        // Seqs 1, 2, 3 in slots 0, 1, 2; then slot 1 holds seq 14 (valid for slot 1 of 4),
        // with next_seq above it: a span of 13 seqs over 4 slots, so no rotation gives seq
        // order.
        let (f, layout, hints) = image(&[1, 2, 3], |l, words| {
            words[l.desc_word(1) + desc::SEQ].store(14, Ordering::Relaxed);
            words[word::NEXT_SEQ].store(15, Ordering::Relaxed);
        });
        let (scan, got) = listed(&f, layout, &hints);
        assert_eq!(scan.problem, None);
        assert_eq!(scan.seqs, Some((1, 14)));
        assert_eq!(got, [(1, 0), (3, 2), (14, 1)]);
    }

    #[test]
    fn an_invalid_descriptor_is_the_problem_and_is_not_listed() {
        let (f, layout, hints) = image(&[1, 2, 3], |l, words| {
            words[l.desc_word(2) + desc::SEQ].store(4, Ordering::Relaxed);
        });
        let (scan, got) = listed(&f, layout, &hints);
        assert_eq!(
            scan.problem.as_deref(),
            Some("descriptor 2 is neither empty nor valid")
        );
        assert_eq!(got, [(1, 0), (2, 1)]);
    }
}
