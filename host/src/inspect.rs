//! `shmsnap inspect` and `shmsnap verify`: what a snapshot file holds, for humans and scripts.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use shmsnap_core::format::{self, desc, Strategy};
use shmsnap_core::{image_entries, read_descriptor_bytes, Hints, Layout, LayoutError, PAGE_SIZE};
use shmsnap_linux::snapshot::{self, ImageSummary, SnapshotError, SnapshotInfo, FOOTER_LEN};

use crate::exit::{io_code, snapshot_code, Code, Failure};

/// Bytes of each payload shown.
const PREVIEW: usize = 16;

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    file_len: u64,
    footer: Option<Footer>,
    verdict: String,
    sound: bool,
    layout: Option<LayoutReport>,
    entries: Vec<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    triple: Option<TripleReport>,
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

/// Reads the header and descriptor ring of a queue image: layout, hints and entries, plus the
/// first problem found (an invalid non-empty descriptor makes the image unsound).
fn read_queue(
    file: &File,
    image_len: u64,
) -> Result<(Layout, Hints, Vec<Entry>, Option<String>), String> {
    let mut page = vec![0u8; PAGE_SIZE.min(image_len) as usize];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| e.to_string())?;
    let words = format::header_words(&page).ok_or("image shorter than a header")?;
    let layout = match Layout::from_header_words(&words, image_len) {
        Ok(l) => l,
        Err(LayoutError::Unconfigured) => {
            return Err(
                "the region was never configured by a client (no magic in its header)".into(),
            )
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut meta = vec![0u8; layout.meta_len() as usize];
    file.read_exact_at(&mut meta, 0)
        .map_err(|e| e.to_string())?;
    let hints = Hints::read_bytes(&meta);
    let mut problem = None;
    for slot in 0..layout.entries {
        let seq_word = layout.desc_word(slot) + desc::SEQ;
        let nonzero = format::read_word(&meta, seq_word).is_some_and(|w| w != 0);
        if nonzero && read_descriptor_bytes(&meta, &layout, slot).is_none() && problem.is_none() {
            problem = Some(format!("descriptor {slot} is neither empty nor valid"));
        }
    }
    let mut entries = Vec::new();
    for d in image_entries(&meta, &layout) {
        if d.seq >= hints.next_seq && problem.is_none() {
            problem = Some(format!(
                "entry {} is not below the next_seq hint {}",
                d.seq, hints.next_seq
            ));
        }
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
        entries.push(Entry {
            slot: layout.slot_of(d.seq),
            seq: d.seq,
            offset: d.offset,
            length: d.length,
            first_bytes: first,
        });
    }
    entries.sort_by_key(|e| e.seq);
    Ok((layout, hints, entries, problem))
}

/// Opens `path` without blocking on a FIFO, refusing anything but a regular file.
fn open(path: &Path) -> Result<File, Failure> {
    snapshot::open(path).map_err(|e| Failure::new(snapshot_code(&e), e.to_string()))
}

fn build(path: &Path) -> Result<Report, Failure> {
    let file = open(path)?;
    let file_len = file
        .metadata()
        .map_err(|e| Failure::new(io_code(&e), format!("cannot stat {}: {e}", path.display())))?
        .len();
    let verified: Result<SnapshotInfo, SnapshotError> = snapshot::verify(&file);
    let footer = verified
        .as_ref()
        .ok()
        .copied()
        .or_else(|| footer_only(&file, file_len));
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
        entries: Vec::new(),
        triple: None,
    };
    if let Ok(info) = &verified {
        // Verified: the image check passed, so this reads a sound triple meta again (no CRC).
        if let Ok(ImageSummary::Triple(t)) = snapshot::check_image(&file, info, |_, _| {}) {
            report.triple = Some(TripleReport {
                buffers: t.layout.buffers,
                buffer_size: t.layout.buffer_size,
                buffer: t.buffer,
                seq: t.seq,
                next_seq: t.next_seq,
                region_len: t.layout.region_len,
            });
        }
    }
    let mut problem = match &verified {
        Ok(_) => None,
        Err(e) => Some((snapshot_code(e), e.to_string())),
    };
    if let Some(f) = footer.filter(|f| is_queue(f.meta.strategy)) {
        match read_queue(&file, f.image_len) {
            Ok((l, h, entries, p)) => {
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
                report.entries = entries;
                if let (Some(p), None) = (p, &problem) {
                    problem = Some((Code::DataErr, format!("{}: {p}", path.display())));
                }
            }
            Err(e) => {
                if problem.is_none() {
                    problem = Some((
                        Code::DataErr,
                        format!("{}: queue image: {e}", path.display()),
                    ));
                }
            }
        }
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

/// `shmsnap verify FILE`.
///
/// # Errors
///
/// A [`Failure`] naming the file and the problem if it is not a sound snapshot.
pub fn verify(path: &Path) -> Result<ExitCode, Failure> {
    let file = open(path)?;
    // One streaming pass: footer, CRC, header and descriptors (bounded memory).
    let (info, summary) = snapshot::verify_entries(&file, |_, _| {}).map_err(|e| {
        let e = e.at(path);
        Failure::new(snapshot_code(&e), e.to_string())
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
    println!(
        "{}: sound (generation {}, {} strategy, {} bytes{detail})",
        path.display(),
        info.meta.generation,
        strategy_name(info.meta.strategy),
        info.image_len
    );
    Ok(ExitCode::SUCCESS)
}

/// `shmsnap inspect FILE [--json]`.
///
/// # Errors
///
/// A [`Failure`] if the file cannot be read at all; a readable but unsound file is described,
/// then reported with exit code 65.
pub fn inspect(path: &Path, json: bool) -> Result<ExitCode, Failure> {
    let r = build(path)?;
    if json {
        let text = serde_json::to_string_pretty(&r)
            .map_err(|e| Failure::new(Code::Software, e.to_string()))?;
        println!("{text}");
    } else {
        print_text(&r);
    }
    Ok(if r.sound {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(Code::DataErr as u8)
    })
}

fn print_text(r: &Report) {
    println!("file:      {} ({} bytes)", r.file, r.file_len);
    match &r.footer {
        Some(f) => {
            let age = f
                .age_seconds
                .map_or(String::from("in the future?"), |a| format!("{a:.1} s ago"));
            println!(
                "footer:    version {}, generation {}, strategy {}, taken {age}",
                f.version, f.generation, f.strategy
            );
            println!(
                "image:     {} bytes, crc32c {}",
                f.image_len, f.image_crc32c
            );
        }
        None => println!("footer:    none readable"),
    }
    if let Some(l) = &r.layout {
        println!(
            "layout:    format 1, {} entries, {}-byte data ring at {}, tail {} bytes at {}, region {} bytes",
            l.entries, l.data_size, l.data_offset, l.tail_len, l.tail_offset, l.region_len
        );
        println!(
            "hints:     next_seq {}, data_head {}, epoch {}",
            l.next_seq, l.data_head, l.epoch
        );
        println!("entries:   {}", r.entries.len());
        if !r.entries.is_empty() {
            println!(
                "  {:>10} {:>6} {:>12} {:>8}  first bytes",
                "seq", "slot", "offset", "length"
            );
            for e in &r.entries {
                println!(
                    "  {:>10} {:>6} {:>12} {:>8}  {}",
                    e.seq, e.slot, e.offset, e.length, e.first_bytes
                );
            }
        }
    }
    if let Some(t) = &r.triple {
        println!(
            "triple:    buffer {} of {} ({} bytes each) holds seq {}; next_seq {}, region {} bytes",
            t.buffer, t.buffers, t.buffer_size, t.seq, t.next_seq, t.region_len
        );
    }
    println!("verdict:   {}", r.verdict);
}
