//! Region images decoded from fuzz bytes: raw garbage, valid headers with overlaid bytes,
//! plausible descriptor rings, or regions really written by the writer and then corrupted.

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::format::{desc, word, word_bytes, DESCRIPTOR_BYTES};
use shmsnap_core::{Layout, LayoutRequest, Writer, MAX_STREAM, PAGE_SIZE};

use crate::input::Input;
use crate::payload::payload_for;
use crate::words::{from_bytes, zeroed_words};

/// Where the writer places an `n`-byte payload after `head` (DESIGN §5.1: 8-aligned, never
/// crossing the end of the ring), or `None` if the stream offsets are exhausted.
pub(crate) fn placement(head: u64, n: u64, s: u64) -> Option<(u64, u64)> {
    let mut at = head.checked_add(7)? & !7;
    let pos = at & (s - 1);
    if pos + n > s {
        at += s - pos;
    }
    let end = at.checked_add(n).filter(|&e| e <= MAX_STREAM)?;
    Some((at, end))
}

/// Stores little-endian `bytes` into word memory at byte offset `at`, clipped to the memory.
pub(crate) fn overlay(mem: &[AtomicU64], at: usize, bytes: &[u8]) {
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

pub(crate) fn write_header(mem: &[AtomicU64], layout: &Layout) {
    for (i, w) in layout.header_words().into_iter().enumerate() {
        mem[i].store(w, Ordering::Relaxed);
    }
}

/// How a region image is made from fuzz bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ImageKind {
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
pub(crate) struct ImageSpec {
    kind: ImageKind,
    /// The layout the image is built for (for `Raw`, only a guess the caller may use).
    pub(crate) layout: Layout,
    /// Memory bytes (whole words, `>= layout.region_len`).
    mem_bytes: usize,
}

impl ImageSpec {
    pub(crate) fn decode(input: &mut Input<'_>) -> ImageSpec {
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
    pub(crate) fn build(&self, input: &mut Input<'_>) -> Vec<AtomicU64> {
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
                let mut w = match Writer::init(&mem[..], request, crate::CLIENT) {
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
                // The writer is gone (its claim released) before the damage below.
                drop(w);
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

pub(crate) fn xor_byte(mem: &[AtomicU64], at: usize, x: u8) {
    if let Some(w) = mem.get(at / 8) {
        let mut bytes = w.load(Ordering::Relaxed).to_le_bytes();
        bytes[at % 8] ^= x;
        w.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
    }
}
