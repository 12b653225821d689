//! Entry points for the fuzz targets (feature `model`), also replayed on stable by the test
//! suite. Each checks invariants, not just the absence of a crash.
//!
//! Every entry point accepts *any* byte string: malformed input must end in a typed error of
//! the API under test, never in a panic. A panic from one of these functions is therefore a
//! finding, and its message names the invariant that was violated.
//!
//! - [`attach_and_read`]: a region image decoded from bytes → open, entries, newest, payload
//!   and tail reads, writer attach/recovery, fresh commits, re-attach (DESIGN §3, §4, §5.1).
//! - [`retain_arbitrary`]: an image plus arbitrary `pre`/`post` descriptor sets → the host's
//!   [`retain`] (DESIGN §5.3).
//! - [`ops`]: a client/host session decoded from bytes — commits, evictions, re-attaches,
//!   transactions with frozen tail units, host snapshots and restores — checked against the
//!   [`QueueModel`] after every step (DESIGN §5).
//!
//! Inputs are decoded by a cursor that yields zeros past the end, so every byte string is a
//! valid input and short inputs mean "the simple case". Decoders prefer values near the
//! protocol's limits (`MAX_SEQ`, `MAX_STREAM`, the ring size) so the fuzzer reaches the edges.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::format::{desc, header_words, word, word_bytes, DESCRIPTOR_BYTES};
use crate::model::{check_image_payloads, from_bytes, payload_for, to_bytes, zeroed_words};
use crate::model::{ModelEntry, QueueModel};
use crate::{
    image_entries, read_descriptor_bytes, retain, AttachError, CommitError, Descriptor, Hints,
    Layout, LayoutRequest, PreCopy, ReadError, Region, RetainError, UnitError, UnitState,
    UnitTable, WordMemory, Writer, MAX_SEQ, MAX_STREAM, PAGE_SIZE,
};

// ------------------------------------------------------------------------------------------
// Decoding fuzz bytes
// ------------------------------------------------------------------------------------------

/// A cursor over fuzz bytes; reads past the end yield zeros.
#[derive(Debug)]
struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }

    /// A `u64` biased toward interesting values: zero, small numbers, and values just below
    /// the protocol's limits and `u64::MAX`.
    fn wide(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => u64::from(self.u8()),
            2 => u64::from(self.u16()),
            3 => MAX_SEQ.wrapping_sub(u64::from(self.u8() % 16)),
            4 => MAX_STREAM.wrapping_sub(u64::from(self.u16())),
            5 => u64::MAX.wrapping_sub(u64::from(self.u8())),
            _ => self.u64(),
        }
    }

    /// The remaining bytes, consuming them.
    fn take_rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.rest)
    }
}

/// Where the writer places an `n`-byte payload after `head` (DESIGN §5.1: 8-aligned, never
/// crossing the end of the ring), or `None` if the stream offsets are exhausted.
fn placement(head: u64, n: u64, s: u64) -> Option<(u64, u64)> {
    let mut at = head.checked_add(7)? & !7;
    let pos = at & (s - 1);
    if pos + n > s {
        at += s - pos;
    }
    let end = at.checked_add(n).filter(|&e| e <= MAX_STREAM)?;
    Some((at, end))
}

/// Stores little-endian `bytes` into word memory at byte offset `at`, clipped to the memory.
fn overlay(mem: &[AtomicU64], at: usize, bytes: &[u8]) {
    for (k, chunk) in bytes.chunks(8).enumerate() {
        let Some(word) = (at / 8).checked_add(k) else {
            return;
        };
        let Some(w) = mem.get(word) else {
            return;
        };
        let mut b = w.load(Ordering::Relaxed).to_le_bytes();
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

fn write_header(mem: &[AtomicU64], layout: &Layout) {
    for (i, w) in layout.header_words().into_iter().enumerate() {
        mem[i].store(w, Ordering::Relaxed);
    }
}

/// How a region image is made from fuzz bytes.
#[derive(Debug, Clone, Copy)]
enum ImageKind {
    /// The bytes themselves (zero-padded to whole words): header parsing of garbage.
    Raw,
    /// A valid header for `layout`, with the fuzz bytes laid over hints, descriptors, data
    /// ring and tail in that order.
    Overlay,
    /// A valid header; descriptors decoded compactly so most are plausible (right slot,
    /// aligned offset, length near the ring size), then the data ring from the bytes.
    Compact,
    /// A region really written by [`Writer`] (commits, evictions), then corrupted by
    /// byte-wise xors aimed mostly at the descriptor ring and the hints.
    Written,
}

/// The part of an image decoded before the caller's own parameters: its kind and layout.
#[derive(Debug, Clone, Copy)]
struct ImageSpec {
    kind: ImageKind,
    /// The layout the image is built for (for `Raw`, only a guess the caller may use).
    layout: Layout,
    /// Memory bytes (whole words, `>= layout.region_len`).
    mem_bytes: usize,
}

impl ImageSpec {
    fn decode(input: &mut Input<'_>) -> ImageSpec {
        let kind = match input.u8() % 4 {
            0 => ImageKind::Raw,
            1 => ImageKind::Overlay,
            2 => ImageKind::Compact,
            _ => ImageKind::Written,
        };
        // E up to 256 (two descriptor pages), S up to 8 KiB (two data pages).
        let entries = 1u64 << (input.u8() % 9);
        let data_size = 1u64 << (3 + input.u8() % 11);
        let request = LayoutRequest { entries, data_size };
        let tail_offset = match Layout::new(u64::MAX, request) {
            Ok(l) => l.tail_offset,
            Err(e) => panic!("fuzz harness: request {request:?} should be valid: {e}"),
        };
        // Any tail length, not only whole words or pages; and sometimes spare memory past
        // the region (the region is a prefix of the memory).
        let tail = u64::from(input.u16()) % (2 * PAGE_SIZE + 1);
        let spare = u64::from(input.u8() % 4) * 8;
        let mut region_len = tail_offset + tail;
        let mut mem_bytes = region_len.div_ceil(8) * 8 + spare;
        if let ImageKind::Written = kind {
            // `Writer::init` configures the whole memory.
            mem_bytes = region_len.div_ceil(8) * 8;
            region_len = mem_bytes;
        }
        let layout = match Layout::new(region_len, request) {
            Ok(l) => l,
            Err(e) => panic!("fuzz harness: layout of {region_len} bytes should be valid: {e}"),
        };
        ImageSpec {
            kind,
            layout,
            mem_bytes: mem_bytes as usize,
        }
    }

    /// Builds the image, consuming the rest of the input.
    fn build(&self, input: &mut Input<'_>) -> Vec<AtomicU64> {
        let layout = &self.layout;
        let e = layout.entries;
        let s = layout.data_size;
        match self.kind {
            ImageKind::Raw => from_bytes(input.take_rest()),
            ImageKind::Overlay => {
                let mem = zeroed_words(self.mem_bytes);
                write_header(&mem, layout);
                for hint in &mem[word::HINTS] {
                    hint.store(input.wide(), Ordering::Relaxed);
                }
                overlay(&mem, layout.desc_offset as usize, input.take_rest());
                mem
            }
            ImageKind::Compact => {
                let mem = zeroed_words(self.mem_bytes);
                write_header(&mem, layout);
                for hint in &mem[word::HINTS] {
                    hint.store(input.wide(), Ordering::Relaxed);
                }
                // Seqs of generation g in slot i: base + g*E + i + 1, base a multiple of E.
                let base = input.wide() & !(e - 1);
                let base_off = input.wide();
                for slot in 0..e {
                    let kind = input.u8();
                    let off = u64::from(input.u16());
                    let len = u64::from(input.u16());
                    let gen = u64::from(kind >> 3);
                    let natural = base
                        .wrapping_add(gen.wrapping_mul(e))
                        .wrapping_add(slot + 1);
                    let d = match kind & 7 {
                        0 => [0, off, len, 0],
                        // Plausible: right slot, aligned, length in 1..=S.
                        1..=3 => [natural, base_off.wrapping_add(off * 8) & !7, len % s + 1, 0],
                        // Wrong slot (when E > 1), or a length that may not fit.
                        4 => [
                            natural.wrapping_add(1),
                            base_off.wrapping_add(off * 8),
                            len,
                            0,
                        ],
                        5 => [natural, base_off.wrapping_add(off), len, u64::from(kind)],
                        // Ends exactly at the ring's end, or crosses it.
                        6 => {
                            let l = len % s + 1;
                            let at = (base_off & !(s - 1)).wrapping_add(s - l) & !7;
                            [natural, at, l + (off & 8), 0]
                        }
                        _ => [natural, base_off.wrapping_add(off), input.wide(), 0],
                    };
                    let w = layout.desc_word(slot);
                    let fields = [desc::SEQ, desc::OFFSET, desc::LENGTH, desc::RESERVED];
                    for (k, v) in fields.into_iter().zip(d) {
                        mem[w + k].store(v, Ordering::Relaxed);
                    }
                }
                overlay(&mem, layout.data_offset as usize, input.take_rest());
                mem
            }
            ImageKind::Written => {
                let mem = zeroed_words(self.mem_bytes);
                let request = LayoutRequest {
                    entries: e,
                    data_size: s,
                };
                let mut w = match Writer::init(&mem[..], request) {
                    Ok(w) => w,
                    Err(err) => {
                        panic!("Writer::init on zeroed memory for {layout:?} failed: {err}")
                    }
                };
                for _ in 0..input.u8() % 48 {
                    let op = input.u16();
                    if op & 0xf == 0xf {
                        w.evict_before(w.next_seq().saturating_sub(u64::from(op >> 12)));
                    } else {
                        let len = (u64::from(op >> 4) % s + 1) as usize;
                        let seq = w.next_seq();
                        if let Err(err) = w.commit(&payload_for(seq, len)) {
                            panic!("commit of {len} bytes into a fresh region failed: {err}");
                        }
                    }
                }
                let bytes = mem.len() * 8;
                let desc_bytes = (e * DESCRIPTOR_BYTES) as usize;
                while !input.is_empty() {
                    let pos = input.u16();
                    let x = input.u8();
                    let at = if pos & 0x8000 == 0 {
                        // The descriptor ring.
                        layout.desc_offset as usize + usize::from(pos) % desc_bytes
                    } else if pos & 0x4000 == 0 {
                        // The hints.
                        let hints =
                            word_bytes(word::HINTS.start).start..word_bytes(word::EPOCH).end;
                        hints.start + usize::from(pos) % hints.len()
                    } else {
                        usize::from(pos & 0x3fff) * 7 % bytes
                    };
                    xor_byte(&mem, at, x);
                }
                mem
            }
        }
    }
}

fn xor_byte(mem: &[AtomicU64], at: usize, x: u8) {
    if let Some(w) = mem.get(at / 8) {
        let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
        bytes[at % 8] ^= x;
        w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    }
}

// ------------------------------------------------------------------------------------------
// attach_and_read
// ------------------------------------------------------------------------------------------

/// Region attach, recovery and reads over a region image decoded from arbitrary bytes.
///
/// Checks: every entry returned lies inside the ring and belongs to its slot; `entries()`,
/// `newest()` and per-slot reads agree; payload reads of valid entries succeed and return
/// the image's bytes; a read of an arbitrary (often perturbed) descriptor succeeds only for an
/// entry of the region; tail reads are bounds-checked; [`Writer::attach`] fails only with a
/// typed error, keeps the newest entry and only drops (never changes) others, passes
/// [`Writer::check_invariants`], and never reuses a seq; fresh commits succeed (or report
/// exhaustion exactly when the limits are reached), are readable with exact bytes and never
/// disturb the bytes of surviving entries; a second attach repeats no seq.
///
/// # Panics
///
/// Only on a violated invariant.
pub fn attach_and_read(data: &[u8]) {
    let mut input = Input::new(data);
    let probe = Probe::decode(&mut input);
    let spec = ImageSpec::decode(&mut input);
    let mem = spec.build(&mut input);
    check_attach_and_read(&mem[..], &probe);
}

/// Parameters of [`attach_and_read`] decoded before the image.
#[derive(Debug)]
struct Probe {
    /// Lengths of the fresh commits (reduced modulo S).
    commits: [u16; 4],
    /// Which entry to perturb (or none) and how, for an arbitrary payload read.
    perturb: u8,
    field: u64,
    /// A tail read.
    tail_offset: u64,
    tail_len: u8,
}

impl Probe {
    fn decode(input: &mut Input<'_>) -> Probe {
        let n = usize::from(input.u8() % 5);
        let mut commits = [0u16; 4];
        for c in commits.iter_mut().take(n) {
            *c = input.u16().max(1);
        }
        Probe {
            commits,
            perturb: input.u8(),
            field: input.wide(),
            tail_offset: input.wide(),
            tail_len: input.u8(),
        }
    }
}

/// Reads every valid entry of `region` with its payload, checking what the reader promises.
fn read_all<M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
) -> BTreeMap<u64, (Descriptor, Vec<u8>)> {
    let layout = *region.layout();
    let s = layout.data_size;
    let image = to_bytes(region.mem());
    let mut listed = Vec::new();
    let mut out = BTreeMap::new();
    for slot in 0..layout.entries {
        let Some(d) = region.read_descriptor(slot) else {
            continue;
        };
        assert_eq!(
            layout.slot_of(d.seq),
            slot,
            "entry {d:?} returned for slot {slot}, which cannot hold its seq"
        );
        assert!(
            d.seq != 0
                && d.seq < MAX_SEQ
                && d.length >= 1
                && d.offset % 8 == 0
                && (d.offset & (s - 1)) + d.length <= s,
            "entry {d:?} does not lie inside the {s}-byte data ring"
        );
        listed.push(d);
        let len = d.length as usize;
        // One spare byte: read_payload must report the length, not fill the buffer.
        let mut buf = vec![0u8; len + 1];
        match region.read_payload(&d, &mut buf) {
            Ok(n) => assert_eq!(n, len, "read_payload of {d:?} returned {n} bytes"),
            Err(e) => panic!("read_payload of the valid, quiescent entry {d:?} failed: {e}"),
        }
        let at = layout.ring_byte(d.offset);
        assert_eq!(
            &buf[..len],
            &image[at..at + len],
            "read_payload of {d:?} returned bytes that are not the ring's"
        );
        assert_eq!(
            region.read_payload(&d, &mut buf[..len - 1]),
            Err(ReadError::BufferTooSmall {
                needed: d.length,
                got: len - 1
            }),
            "a short buffer for {d:?} must be refused"
        );
        buf.truncate(len);
        out.insert(d.seq, (d, buf));
    }
    let entries: Vec<Descriptor> = region.entries().collect();
    assert_eq!(entries, listed, "entries() disagrees with per-slot reads");
    assert_eq!(
        region.newest().map(|d| d.seq),
        out.keys().next_back().copied(),
        "newest() is not the entry with the highest seq"
    );
    out
}

fn check_attach_and_read(mem: &[AtomicU64], probe: &Probe) {
    let region = match Region::open(mem) {
        Ok(r) => r,
        Err(e) => {
            // A typed error is the right answer for a bad header; attach must agree.
            match Writer::attach(mem) {
                Err(AttachError::Layout(e2)) => {
                    assert_eq!(e, e2, "Region::open and Writer::attach disagree")
                }
                Err(other) => panic!("Region::open says {e:?}, Writer::attach says {other:?}"),
                Ok(_) => panic!("Writer::attach accepted a region Region::open rejects ({e})"),
            }
            return;
        }
    };
    let layout = *region.layout();
    let s = layout.data_size;
    assert!(
        layout.region_len <= mem.len() as u64 * 8,
        "layout {layout:?} is larger than the {} bytes of memory",
        mem.len() * 8
    );
    let before = read_all(&region);

    // An arbitrary descriptor, often a perturbed entry: read only if it is an entry.
    let picked = before.values().nth(usize::from(probe.perturb >> 2));
    let d = match (probe.perturb & 3, picked) {
        (0, Some(&(d, _))) => d,
        (1, Some(&(d, _))) => Descriptor {
            seq: d.seq ^ probe.field,
            ..d
        },
        (2, Some(&(d, _))) => Descriptor {
            offset: d.offset ^ probe.field,
            ..d
        },
        (3, Some(&(d, _))) => Descriptor {
            length: d.length ^ probe.field,
            ..d
        },
        _ => Descriptor {
            seq: probe.field,
            offset: probe.tail_offset,
            length: u64::from(probe.tail_len),
        },
    };
    let mut buf = vec![0u8; (s + 8) as usize];
    if let Ok(n) = region.read_payload(&d, &mut buf) {
        match before.get(&d.seq) {
            Some((e, bytes)) if *e == d => {
                assert_eq!(&buf[..n], &bytes[..], "two reads of {d:?} differ")
            }
            _ => panic!("read_payload accepted {d:?}, which is not an entry of the region"),
        }
    }

    // A tail read: Ok exactly when the range lies inside the tail.
    let mut tail = vec![0u8; usize::from(probe.tail_len)];
    let inside = probe
        .tail_offset
        .checked_add(tail.len() as u64)
        .is_some_and(|e| e <= layout.tail_len);
    match region.read_tail(probe.tail_offset, &mut tail) {
        Ok(()) => {
            assert!(inside, "read_tail accepted a range outside the tail");
            let image = to_bytes(mem);
            let at = (layout.tail_offset + probe.tail_offset) as usize;
            assert_eq!(
                &tail[..],
                &image[at..at + tail.len()],
                "read_tail bytes differ"
            );
        }
        Err(e) => assert!(!inside, "read_tail refused a range inside the tail: {e}"),
    }

    // Attach: recovery of the cursor.
    let hints = region.hints();
    let top = before.keys().next_back().copied().unwrap_or(0);
    let mut writer = match Writer::attach(mem) {
        Ok(w) => w,
        Err(AttachError::Exhausted) => {
            assert!(
                hints.next_seq > MAX_SEQ || top + 1 > MAX_SEQ,
                "attach reported exhaustion with next_seq hint {} and newest seq {top}",
                hints.next_seq
            );
            return;
        }
        Err(e) => panic!("Writer::attach failed on a region Region::open accepts: {e}"),
    };
    assert!(
        writer.next_seq() > top && writer.next_seq() >= hints.next_seq,
        "attach would reuse seqs: next_seq {} with newest {top} and hint {}",
        writer.next_seq(),
        hints.next_seq
    );
    if let Err(e) = writer.check_invariants() {
        panic!("check_invariants after attach: {e}");
    }
    let after_hints = writer.region().hints();
    assert_eq!(
        after_hints.epoch,
        hints.epoch.wrapping_add(1),
        "attach must increment the epoch"
    );
    let mut known: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let after = read_all(writer.region());
    for (seq, (d, bytes)) in &after {
        match before.get(seq) {
            Some((d0, b0)) => {
                assert_eq!(d, d0, "attach changed entry {seq}");
                assert_eq!(bytes, b0, "attach changed the payload of entry {seq}");
            }
            None => panic!("attach created entry {d:?}"),
        }
        known.insert(*seq, bytes.clone());
    }
    if top != 0 {
        assert!(
            after.contains_key(&top),
            "attach dropped the newest entry {top}"
        );
    }

    // Fresh commits.
    let mut last = writer.next_seq() - 1;
    for &c in probe.commits.iter().filter(|&&c| c != 0) {
        let len = (u64::from(c) % s + 1) as usize;
        let seq = writer.next_seq();
        assert!(seq > last, "next_seq went back from {last} to {seq}");
        let head = writer.region().hints().data_head;
        let payload = payload_for(seq, len);
        match writer.commit(&payload) {
            Ok(got) => assert_eq!(got, seq, "commit returned another seq than next_seq"),
            Err(CommitError::Exhausted) => {
                assert!(
                    seq >= MAX_SEQ || placement(head, len as u64, s).is_none(),
                    "commit of {len} bytes reported exhaustion at seq {seq}, head {head}"
                );
                break;
            }
            Err(e) => panic!("commit of {len} bytes into a {s}-byte ring failed: {e}"),
        }
        last = seq;
        if let Err(e) = writer.check_invariants() {
            panic!("check_invariants after commit {seq}: {e}");
        }
        known.insert(seq, payload);
        let now = read_all(writer.region());
        assert_eq!(
            now.keys().next_back(),
            Some(&seq),
            "the entry just committed is not the newest"
        );
        for (seq, (d, bytes)) in &now {
            match known.get(seq) {
                Some(b) => assert_eq!(b, bytes, "entry {d:?} does not hold its bytes"),
                None => panic!("entry {d:?} appeared that was neither recovered nor committed"),
            }
        }
    }

    // A second attach (the client restarts): no seq is ever repeated.
    let used = writer.next_seq() - 1;
    // The writer is gone (the client restarted); attach again.
    let again = match Writer::attach(mem) {
        Ok(w) => w,
        Err(e) => panic!("re-attach to a region this writer left failed: {e}"),
    };
    assert!(
        again.next_seq() > used,
        "re-attach would repeat seq {} (last used {used})",
        again.next_seq()
    );
    if let Err(e) = again.check_invariants() {
        panic!("check_invariants after re-attach: {e}");
    }
    for (seq, (d, bytes)) in read_all(again.region()) {
        assert_eq!(
            known.get(&seq),
            Some(&bytes),
            "re-attach kept {d:?} with bytes it never held"
        );
    }
}

// ------------------------------------------------------------------------------------------
// retain_arbitrary
// ------------------------------------------------------------------------------------------

/// How one slot of a `pre` set is made.
#[derive(Debug, Clone, Copy)]
enum PreSlot {
    Empty,
    /// The image's descriptor for the slot (empty if it has none).
    Image,
    /// An arbitrary descriptor.
    Raw(Descriptor),
    /// The image's descriptor with one field xored.
    Tweaked(u8, u64),
}

/// How one slot of a `post` set is made from `pre`.
#[derive(Debug, Clone, Copy)]
enum PostSlot {
    Same,
    Empty,
    Image,
    Raw(Descriptor),
    Tweaked(u8, u64),
}

fn tweak(d: Descriptor, field: u8, x: u64) -> Descriptor {
    match field % 3 {
        0 => Descriptor {
            seq: d.seq ^ x,
            ..d
        },
        1 => Descriptor {
            offset: d.offset ^ x,
            ..d
        },
        _ => Descriptor {
            length: d.length ^ x,
            ..d
        },
    }
}

fn raw_descriptor(input: &mut Input<'_>) -> Descriptor {
    Descriptor {
        seq: input.wide(),
        offset: input.wide(),
        length: input.wide(),
    }
}

/// The host's [`retain`] over an arbitrary image with arbitrary `pre`/`post` sets.
///
/// Checks: `retain` never panics; on success every kept descriptor is valid for its slot,
/// equal in `pre` and `post`, and present in the rewritten image; the image holds exactly
/// `kept` valid descriptors, a valid header for the layout, and the returned hints, with
/// `next_seq` above every kept seq and at least the live hint; the data ring and tail are
/// untouched; attach to the rewritten image keeps only kept entries. On failure the image is
/// untouched and the error's precondition really holds.
///
/// # Panics
///
/// Only on a violated invariant.
pub fn retain_arbitrary(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.u8();
    let live_next_seq = input.wide();
    let spec = ImageSpec::decode(&mut input);
    let e = spec.layout.entries as usize;
    let len_adjust = |input: &mut Input<'_>| match input.u8() % 8 {
        0 => e.saturating_sub(1),
        1 => e + 3,
        _ => e,
    };
    let pre_len = len_adjust(&mut input);
    let post_len = len_adjust(&mut input);
    let mut pre_spec = Vec::with_capacity(pre_len);
    for _ in 0..pre_len {
        pre_spec.push(match input.u8() % 8 {
            0 => PreSlot::Empty,
            1 => PreSlot::Raw(raw_descriptor(&mut input)),
            2 => PreSlot::Tweaked(input.u8(), input.wide()),
            _ => PreSlot::Image,
        });
    }
    let mut post_spec = Vec::with_capacity(post_len);
    for _ in 0..post_len {
        post_spec.push(match input.u8() % 10 {
            0 => PostSlot::Empty,
            1 => PostSlot::Image,
            2 => PostSlot::Raw(raw_descriptor(&mut input)),
            3 => PostSlot::Tweaked(input.u8(), input.wide()),
            _ => PostSlot::Same,
        });
    }
    let mem = spec.build(&mut input);
    let image = to_bytes(&mem[..]);

    // The live region's layout: the image's own, when it has one, or the spec's (which the
    // image may contradict), or either with another region length.
    let own = Layout::read_bytes(&image);
    let mut layout = match (choice & 3, own) {
        (0 | 1, Ok(l)) => l,
        _ => spec.layout,
    };
    if choice & 4 != 0 {
        let len = layout.region_len ^ (u64::from(choice >> 3) * 8);
        if let Ok(l) = Layout::new(
            len,
            LayoutRequest {
                entries: layout.entries,
                data_size: layout.data_size,
            },
        ) {
            layout = l;
        }
    }
    let from_image = |slot: usize| {
        read_descriptor_bytes(&image, &layout, slot as u64).unwrap_or(Descriptor::EMPTY)
    };
    let pre: Vec<Descriptor> = pre_spec
        .iter()
        .enumerate()
        .map(|(slot, p)| match *p {
            PreSlot::Empty => Descriptor::EMPTY,
            PreSlot::Image => from_image(slot),
            PreSlot::Raw(d) => d,
            PreSlot::Tweaked(f, x) => tweak(from_image(slot), f, x),
        })
        .collect();
    let post: Vec<Descriptor> = post_spec
        .iter()
        .enumerate()
        .map(|(slot, p)| {
            let same = pre.get(slot).copied().unwrap_or_default();
            match *p {
                PostSlot::Same => same,
                PostSlot::Empty => Descriptor::EMPTY,
                PostSlot::Image => from_image(slot),
                PostSlot::Raw(d) => d,
                PostSlot::Tweaked(f, x) => tweak(same, f, x),
            }
        })
        .collect();

    // What retain gets: the whole image, exactly header + descriptor ring, or less.
    let meta_len = layout.meta_len() as usize;
    let cut = match (choice >> 5) & 3 {
        0 => meta_len.min(image.len()),
        1 => meta_len.saturating_sub(1 + usize::from(choice >> 7) * 4095),
        _ => image.len(),
    };
    let mut meta = image[..cut.min(image.len())].to_vec();
    let original = meta.clone();
    check_retain(&mut meta, &original, &layout, &pre, &post, live_next_seq);
}

fn check_retain(
    meta: &mut [u8],
    original: &[u8],
    layout: &Layout,
    pre: &[Descriptor],
    post: &[Descriptor],
    live_next_seq: u64,
) {
    let e = layout.entries as usize;
    let result = retain(meta, layout, pre, post, live_next_seq);
    let r = match result {
        Ok(r) => r,
        Err(err) => {
            assert_eq!(
                meta, original,
                "retain wrote into the image and then failed ({err})"
            );
            match err {
                RetainError::ImageTooShort { needed, got } => assert!(
                    needed == layout.meta_len() && got == meta.len() && (got as u64) < needed,
                    "ImageTooShort {{ needed: {needed}, got: {got} }} for {} bytes, meta_len {}",
                    meta.len(),
                    layout.meta_len()
                ),
                RetainError::BufferTooSmall { needed, got } => assert!(
                    needed == layout.entries && (got == pre.len() || got == post.len()) && got < e,
                    "BufferTooSmall {{ needed: {needed}, got: {got} }} with pre {} post {}",
                    pre.len(),
                    post.len()
                ),
                RetainError::Layout(le) => {
                    let parsed = header_layout(meta, layout.region_len);
                    assert!(
                        parsed.is_none(),
                        "retain says the image header is bad ({le}), but it parses as {parsed:?}"
                    );
                }
                RetainError::LayoutChanged => {
                    let parsed = header_layout(meta, layout.region_len);
                    assert!(
                        parsed.is_some_and(|p| p != *layout),
                        "retain says the layout changed, but the image header gives {parsed:?}"
                    );
                }
            }
            return;
        }
    };
    assert!(
        pre.len() >= e && post.len() >= e && meta.len() as u64 >= layout.meta_len(),
        "retain accepted sets of {}/{} descriptors and {} bytes for {layout:?}",
        pre.len(),
        post.len(),
        meta.len()
    );
    assert_eq!(
        header_layout(original, layout.region_len),
        Some(*layout),
        "retain accepted an image whose header is not the live layout"
    );
    let mut kept = 0;
    let mut newest: Option<Descriptor> = None;
    let mut n_pre = 0;
    let mut n_post = 0;
    for slot in 0..e {
        let (p, q) = (pre[slot], post[slot]);
        let valid = p.is_valid_for(layout, slot as u64);
        n_pre += u64::from(valid);
        n_post += u64::from(q.is_valid_for(layout, slot as u64));
        let in_image = read_descriptor_bytes(meta, layout, slot as u64);
        if valid && p == q {
            kept += 1;
            assert_eq!(
                in_image,
                Some(p),
                "kept descriptor {p:?} is not in slot {slot} of the rewritten image"
            );
            if newest.is_none_or(|n| p.seq > n.seq) {
                newest = Some(p);
            }
        } else {
            assert_eq!(
                in_image, None,
                "slot {slot} holds {in_image:?} in the rewritten image, but pre {p:?} / post {q:?} do not prove it"
            );
        }
    }
    assert_eq!(
        r.kept, kept,
        "retain reports {} kept, {kept} were proven",
        r.kept
    );
    assert_eq!(
        image_entries(meta, layout).count() as u64,
        kept,
        "the rewritten image does not hold exactly the kept entries"
    );
    assert_eq!(
        (r.pre, r.post),
        (n_pre, n_post),
        "pre/post counts are wrong"
    );
    assert!(r.kept <= r.pre && r.dropped() == r.pre - r.kept);
    assert_eq!(r.newest, newest, "newest kept entry");
    assert!(
        r.hints.next_seq > newest.map_or(0, |d| d.seq)
            && r.hints.next_seq >= live_next_seq
            && r.hints.next_seq >= 1,
        "hint next_seq {} does not exceed every kept seq (newest {newest:?}) and the live hint {live_next_seq}",
        r.hints.next_seq
    );
    assert_eq!(
        r.hints.data_head,
        newest.map_or(0, |d| d.end()),
        "data_head hint"
    );
    assert_eq!(
        Hints::read_bytes(meta),
        r.hints,
        "hints written into the image"
    );
    assert_eq!(
        header_layout(meta, layout.region_len),
        Some(*layout),
        "the rewritten header is not the live layout"
    );
    let meta_len = layout.meta_len() as usize;
    assert_eq!(
        &meta[meta_len..],
        &original[meta_len..],
        "retain touched bytes past the descriptor ring"
    );

    // A restore from the rewritten image keeps only what retain kept.
    if (meta.len() as u64) < layout.region_len {
        return;
    }
    let restored = from_bytes(meta);
    let region = match Region::open(&restored[..]) {
        Ok(r) => r,
        Err(e) => panic!("the rewritten image does not open: {e}"),
    };
    assert_eq!(*region.layout(), *layout, "restored layout");
    match Writer::attach(&restored[..]) {
        Ok(w) => {
            assert!(w.next_seq() >= r.hints.next_seq, "restore would reuse seqs");
            if let Err(e) = w.check_invariants() {
                panic!("check_invariants after attach to a retained image: {e}");
            }
            for d in w.region().entries() {
                assert_eq!(
                    pre.get(layout.slot_of(d.seq) as usize),
                    Some(&d),
                    "restore holds {d:?}, which retain did not keep"
                );
            }
            if let Some(n) = newest {
                assert_eq!(
                    w.region().newest(),
                    Some(n),
                    "restore lost the newest kept entry"
                );
            }
        }
        Err(AttachError::Exhausted) => assert!(r.hints.next_seq > MAX_SEQ),
        Err(e) => panic!("attach to a retained image failed: {e}"),
    }
}

/// The layout in an image's header, checked against `region_len` bytes.
fn header_layout(image: &[u8], region_len: u64) -> Option<Layout> {
    Layout::from_header_words(&header_words(image)?, region_len).ok()
}

// ------------------------------------------------------------------------------------------
// ops
// ------------------------------------------------------------------------------------------

/// The client's view of its frozen tail units, kept beside the [`QueueModel`].
#[derive(Debug, Clone, Default)]
struct Units {
    /// Units the client's current state refers to (in use in the table), with their bytes.
    current: BTreeMap<usize, Vec<u8>>,
    /// For each committed seq: the units its state refers to and their bytes at commit.
    refs: BTreeMap<u64, Vec<(usize, Vec<u8>)>>,
}

/// What a host snapshot saved: the retained image and the client's state at that time.
impl Units {
    /// Records that entry `seq` was committed referring to the units currently in use.
    fn committed(&mut self, seq: u64) {
        let refs = self.current.iter().map(|(u, b)| (*u, b.clone())).collect();
        self.refs.insert(seq, refs);
    }
}

#[derive(Debug)]
struct Snapshot {
    image: Vec<u8>,
    model: QueueModel,
    units: Units,
}

/// A client/host session decoded from bytes, checked against the [`QueueModel`] after every
/// step.
///
/// Operations: commit of `n` bytes; `evict_before`; re-attach; a transaction that allocates,
/// writes and retires tail units and then commits, aborts, or is refused (payload longer than
/// reserved, or empty); a host snapshot ([`PreCopy::read`], copy, [`PreCopy::finish`],
/// no concurrency: everything is kept) followed by a restore of the copy into fresh memory,
/// which must hold exactly the model's live entries; and a restore of the last snapshot into
/// the live region (the client crashed and the host restored).
///
/// After every step: [`Writer::check_invariants`], the model's live entries with their exact
/// bytes, and every unit a live entry refers to still holds the bytes it had when that entry
/// was committed (frozen units are never written).
///
/// # Panics
///
/// Only on a violated invariant.
pub fn ops(data: &[u8]) {
    let mut input = Input::new(data);
    let entries = 1u64 << (input.u8() % 5);
    let data_size = 1u64 << (3 + input.u8() % 8);
    let unit_size = 8 * (1 + usize::from(input.u8() % 8));
    let units = usize::from(input.u8() % 9);
    // The table may be larger than the tail: only units that fit are handed out.
    let table_len = units + usize::from(input.u8() % 3);
    let request = LayoutRequest { entries, data_size };
    let tail_offset = match Layout::new(u64::MAX, request) {
        Ok(l) => l.tail_offset as usize,
        Err(e) => panic!("fuzz harness: request {request:?} should be valid: {e}"),
    };
    let mem = zeroed_words(tail_offset + units * unit_size);
    let mut writer = match Writer::init(&mem[..], request) {
        Ok(w) => w,
        Err(e) => panic!("Writer::init of a zeroed region failed: {e}"),
    };
    assert_eq!(
        writer.unit_count(unit_size),
        units,
        "unit count of the tail"
    );
    let mut model = QueueModel::new(entries, data_size);
    let mut client = Units::default();
    let mut states = vec![0u64; table_len];
    let mut table = match UnitTable::new(&mut states, unit_size) {
        Ok(t) => t,
        Err(e) => panic!("fuzz harness: unit size {unit_size}: {e}"),
    };
    let mut last_snapshot: Option<Snapshot> = None;
    let mut step = 0usize;
    while !input.is_empty() {
        step += 1;
        let op = input.u8();
        match op % 8 {
            0..=2 => {
                let len = (u64::from(input.u16()) % data_size + 1) as usize;
                let seq = writer.next_seq();
                let payload = payload_for(seq, len);
                match writer.commit(&payload) {
                    Ok(got) => assert_eq!(got, model.commit(&payload), "commit seq"),
                    Err(e) => panic!("step {step}: commit of {len} bytes failed: {e}"),
                }
                client.committed(seq);
            }
            3 => {
                let back = u64::from(input.u8() % (entries as u8 + 2));
                let t = writer.next_seq().saturating_sub(back);
                writer.evict_before(t);
                model.evict_before(t);
            }
            4 => {
                writer = match Writer::attach(&mem[..]) {
                    Ok(w) => w,
                    Err(e) => panic!("step {step}: re-attach failed: {e}"),
                };
                assert_eq!(
                    writer.next_seq(),
                    model.next_seq(),
                    "next_seq after re-attach"
                );
            }
            5 | 6 => transaction(
                &mut input,
                &mem[..],
                &mut writer,
                &mut table,
                &mut model,
                &mut client,
                step,
            ),
            _ if op & 0x80 == 0 || last_snapshot.is_none() => {
                last_snapshot = Some(snapshot(&mem[..], &writer, &model, &client, unit_size));
            }
            _ => {
                // The client crashed and the host restored the last snapshot into the region.
                let Some(snap) = &last_snapshot else {
                    unreachable!("checked by the guard above")
                };
                for (w, chunk) in mem.iter().zip(snap.image.chunks(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(chunk);
                    w.store(u64::from_le_bytes(b), Ordering::Relaxed);
                }
                writer = match Writer::attach(&mem[..]) {
                    Ok(w) => w,
                    Err(e) => panic!("step {step}: attach after restore failed: {e}"),
                };
                model = snap.model.clone();
                client = rebuild_units(&snap.units, &model);
                // The client rebuilds its unit table from the entries it finds (§5.4): units
                // of the newest entry are in use; units only older live entries refer to are
                // retired as of the newest seq; everything else is free.
                table = match UnitTable::new(&mut states, unit_size) {
                    Ok(t) => t,
                    Err(e) => panic!("fuzz harness: unit size {unit_size}: {e}"),
                };
                let newest = model.live().back().map(|e| e.seq);
                for entry in model.live() {
                    for (u, _) in client.refs.get(&entry.seq).into_iter().flatten() {
                        if table.state(*u) == Some(UnitState::InUse) {
                            continue;
                        }
                        if let Err(e) = table.mark_in_use(*u) {
                            panic!("rebuilding the unit table: unit {u}: {e}");
                        }
                        if Some(entry.seq) != newest && !client.current.contains_key(u) {
                            let as_of = newest.unwrap_or(1);
                            if let Err(e) = table.retire(*u, as_of) {
                                panic!("rebuilding the unit table: retire {u}: {e}");
                            }
                        }
                    }
                }
                assert_eq!(
                    writer.next_seq(),
                    model.next_seq(),
                    "next_seq after restore"
                );
            }
        }
        check_step(&writer, &model, &mut client, unit_size, step);
    }
}

/// The client state after a restore: the newest live entry's units are current.
fn rebuild_units(saved: &Units, model: &QueueModel) -> Units {
    let mut refs = saved.refs.clone();
    let live: BTreeSet<u64> = model.live().iter().map(|e| e.seq).collect();
    refs.retain(|seq, _| live.contains(seq));
    let current = model
        .live()
        .back()
        .and_then(|e| refs.get(&e.seq))
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    Units { current, refs }
}

fn check_step<M: WordMemory + ?Sized>(
    writer: &Writer<'_, M>,
    model: &QueueModel,
    client: &mut Units,
    unit_size: usize,
    step: usize,
) {
    if let Err(e) = writer.check_invariants() {
        panic!("step {step}: check_invariants: {e}");
    }
    if let Err(e) = model.check(writer.region()) {
        panic!("step {step}: region differs from the model: {e}");
    }
    let oldest = model.live().front().map_or(u64::MAX, |e| e.seq);
    client.refs.retain(|&seq, _| seq >= oldest);
    check_frozen(
        writer.region(),
        model.live().iter(),
        client,
        unit_size,
        step,
    );
}

/// Every unit a live entry refers to still holds the bytes it had when the entry committed.
fn check_frozen<'a, M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    live: impl Iterator<Item = &'a ModelEntry>,
    client: &Units,
    unit_size: usize,
    step: usize,
) {
    let mut buf = vec![0u8; unit_size];
    for entry in live {
        for (u, bytes) in client.refs.get(&entry.seq).into_iter().flatten() {
            if let Err(e) = region.read_tail((u * unit_size) as u64, &mut buf) {
                panic!("step {step}: unit {u} of entry {}: {e}", entry.seq);
            }
            assert_eq!(
                &buf, bytes,
                "step {step}: unit {u}, frozen by live entry {}, was written",
                entry.seq
            );
        }
    }
}

/// The entries `begin(n)` evicts from the model's live queue (DESIGN §5.1): the front while
/// its seq is `E` or more below the new one or its bytes overlap the new payload.
fn evictions_for(model: &QueueModel, entries: u64, s: u64, n: u64) -> usize {
    let head = model
        .live()
        .back()
        .map_or(0, |e| e.offset + e.payload.len() as u64);
    let Some((_, end)) = placement(head, n, s) else {
        return model.live().len();
    };
    let seq = model.next_seq();
    model
        .live()
        .iter()
        .take_while(|f| seq - f.seq >= entries || f.offset + s < end)
        .count()
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy)]
enum TxEnd {
    Commit,
    Abort,
    TooLong,
    Empty,
}

#[allow(clippy::too_many_arguments)]
fn transaction<M: WordMemory + ?Sized>(
    input: &mut Input<'_>,
    mem: &M,
    writer: &mut Writer<'_, M>,
    table: &mut UnitTable<'_>,
    model: &mut QueueModel,
    client: &mut Units,
    step: usize,
) {
    let layout = *writer.layout();
    let s = layout.data_size;
    let unit_size = table.unit_size();
    let unit_limit = writer.unit_count(unit_size).min(table.len());
    let len = (u64::from(input.u16()) % s + 1) as usize;
    let mut end = match input.u8() % 8 {
        0 => TxEnd::Abort,
        1 => TxEnd::TooLong,
        2 => TxEnd::Empty,
        _ => TxEnd::Commit,
    };
    // An aborted begin still evicts what the entry would have displaced; the model can
    // express that only if the newest entry survives (evict_before keeps it).
    let evicted = evictions_for(model, layout.entries, s, len as u64);
    if !matches!(end, TxEnd::Commit) && evicted >= model.live().len() && evicted > 0 {
        end = TxEnd::Commit;
    }
    let seq = writer.next_seq();
    let reader = match Region::open(mem) {
        Ok(r) => r,
        Err(e) => panic!("step {step}: the live region does not open: {e}"),
    };
    let mut tx = match writer.begin(len) {
        Ok(tx) => tx,
        Err(e) => panic!("step {step}: begin({len}) failed: {e}"),
    };
    assert_eq!(tx.seq(), seq, "transaction seq");
    let mut allocated: Vec<(usize, UnitState)> = Vec::new();
    let mut exhausted: Option<Vec<Option<UnitState>>> = None;
    let mut grants = Vec::new();
    for _ in 0..input.u8() % 4 {
        let before: Vec<Option<UnitState>> = (0..unit_limit).map(|u| table.state(u)).collect();
        match tx.alloc_unit(table) {
            Ok(g) => {
                let u = g.unit();
                assert!(u < unit_limit, "step {step}: unit {u} is outside the tail");
                let was = before[u].unwrap_or(UnitState::InUse);
                assert!(
                    !client.current.contains_key(&u),
                    "step {step}: unit {u}, in use by the client, was allocated again"
                );
                let mut bytes = vec![0u8; unit_size];
                if let Err(e) = reader.read_tail((u * unit_size) as u64, &mut bytes) {
                    panic!("step {step}: unit {u} is not readable: {e}");
                }
                client.current.insert(u, bytes);
                allocated.push((u, was));
                grants.push(g);
            }
            Err(UnitError::Exhausted) => exhausted = Some(before),
            Err(e) => panic!("step {step}: alloc_unit failed: {e}"),
        }
    }
    for _ in 0..input.u8() % 4 {
        let Some(g) = grants.get(usize::from(input.u8()) % grants.len().max(1)) else {
            break;
        };
        let offset = usize::from(input.u8()) % (unit_size + 8);
        let n = usize::from(input.u8()) % (unit_size + 1);
        let bytes: Vec<u8> = (0..n)
            .map(|i| (seq as u8) ^ (g.unit() as u8).wrapping_mul(31) ^ (i as u8) ^ 0xa5)
            .collect();
        let fits = offset + n <= unit_size;
        match tx.write_unit(table, g, offset, &bytes) {
            Ok(()) => {
                assert!(fits, "step {step}: write of {n} bytes at {offset} accepted");
                if let Some(cur) = client.current.get_mut(&g.unit()) {
                    cur[offset..offset + n].copy_from_slice(&bytes);
                }
            }
            Err(UnitError::WriteOutOfBounds { .. }) => {
                assert!(!fits, "step {step}: write of {n} bytes at {offset} refused")
            }
            Err(e) => panic!("step {step}: write_unit failed: {e}"),
        }
    }
    for _ in 0..input.u8() % 3 {
        let u = usize::from(input.u8()) % (table.len() + 1);
        let as_of = if input.u8() == 0xff { 0 } else { seq };
        let result = table.retire(u, as_of);
        if as_of == 0 {
            assert_eq!(result, Err(UnitError::BadRetirePoint), "retire as of 0");
        } else if u >= table.len() {
            assert_eq!(result, Err(UnitError::OutOfRange { unit: u }), "retire {u}");
        } else if client.current.remove(&u).is_some() {
            assert_eq!(result, Ok(()), "step {step}: retire of in-use unit {u}");
        } else {
            assert_eq!(result, Err(UnitError::NotInUse { unit: u }), "retire {u}");
        }
    }
    drop(grants);
    match end {
        TxEnd::Commit => {
            let payload = payload_for(seq, len);
            match tx.commit(&payload) {
                Ok(got) => assert_eq!(got, model.commit(&payload), "transaction seq"),
                Err(e) => panic!("step {step}: commit of a {len}-byte transaction failed: {e}"),
            }
            client.committed(seq);
        }
        TxEnd::Abort | TxEnd::TooLong | TxEnd::Empty => {
            let result = match end {
                TxEnd::Abort => {
                    drop(tx);
                    None
                }
                TxEnd::TooLong => Some((
                    tx.commit(&payload_for(seq, len + 1)),
                    CommitError::ExceedsReservation {
                        len: len + 1,
                        reserved: len,
                    },
                )),
                _ => Some((tx.commit(&[]), CommitError::PayloadSize { len: 0, max: s })),
            };
            if let Some((got, want)) = result {
                assert_eq!(got, Err(want), "step {step}: refused transaction");
            }
            assert_eq!(
                writer.next_seq(),
                seq,
                "an unpublished transaction consumed its seq"
            );
            if evicted > 0 {
                let first_kept = model.live()[evicted].seq;
                model.evict_before(first_kept);
            }
        }
    }
    // The allocator's choices, checked against the oldest live seq of the transaction.
    let oldest = writer.oldest_live();
    let reclaimable = |st: Option<UnitState>| match st {
        Some(UnitState::Free) => true,
        Some(UnitState::Retired { as_of }) => as_of <= oldest,
        _ => false,
    };
    for &(u, was) in &allocated {
        assert!(
            reclaimable(Some(was)),
            "step {step}: unit {u} was allocated in state {was:?} with oldest live seq {oldest}"
        );
        for entry in model.live().iter().filter(|e| e.seq != seq) {
            let refers = client
                .refs
                .get(&entry.seq)
                .is_some_and(|r| r.iter().any(|(x, _)| *x == u));
            assert!(
                !refers,
                "step {step}: unit {u} was allocated while live entry {} refers to it",
                entry.seq
            );
        }
    }
    if let Some(before) = exhausted {
        if let Some(u) = before.iter().position(|&st| reclaimable(st)) {
            panic!(
                "step {step}: alloc_unit reported exhaustion, but unit {u} was {:?} with oldest live seq {oldest}",
                before[u]
            );
        }
    }
}

/// A host snapshot without concurrency: every live entry must be kept, and a restore of the
/// copy must hold exactly the model's live entries.
fn snapshot<M: WordMemory + ?Sized>(
    mem: &M,
    writer: &Writer<'_, M>,
    model: &QueueModel,
    client: &Units,
    unit_size: usize,
) -> Snapshot {
    let region = writer.region();
    let layout = *region.layout();
    let e = layout.entries as usize;
    let mut pre_buf = vec![Descriptor::EMPTY; e];
    let mut post_buf = vec![Descriptor::EMPTY; e];
    let pre = match PreCopy::read(region, &mut pre_buf, &mut post_buf) {
        Ok(p) => p,
        Err(err) => panic!("PreCopy::read: {err}"),
    };
    let mut image = to_bytes(mem);
    let r = match pre.finish(&mut image) {
        Ok(r) => r,
        Err(err) => panic!("retain of a quiescent copy failed: {err}"),
    };
    let live = model.live().len() as u64;
    assert_eq!(
        (r.pre, r.post, r.kept),
        (live, live, live),
        "a snapshot without concurrency must keep every live entry"
    );
    assert!(!r.is_starved(), "a quiescent snapshot is never starved");
    assert_eq!(
        r.hints.next_seq,
        model.next_seq(),
        "next_seq hint of the snapshot"
    );
    match check_image_payloads(&image, &layout) {
        Ok(n) => assert_eq!(n, live, "entries in the snapshot image"),
        Err(err) => panic!("snapshot image: {err}"),
    }
    let restored = from_bytes(&image);
    let w = match Writer::attach(&restored[..]) {
        Ok(w) => w,
        Err(err) => panic!("attach to a snapshot image failed: {err}"),
    };
    if let Err(err) = model.check(w.region()) {
        panic!("restored snapshot differs from the model: {err}");
    }
    assert_eq!(w.next_seq(), model.next_seq(), "next_seq after restore");
    if let Err(err) = w.check_invariants() {
        panic!("check_invariants after restore: {err}");
    }
    check_frozen(w.region(), model.live().iter(), client, unit_size, 0);
    Snapshot {
        image,
        model: model.clone(),
        units: client.clone(),
    }
}
