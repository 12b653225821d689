//! Fuzz entry point: the triple-buffer host (and the client beside it) over a region whose
//! state words, seq words, hints and header words a hostile client overwrites with arbitrary
//! 64-bit values at any point between operations.
//!
//! Asserted after every host operation, whatever the region holds:
//! - no panic, and every call returns (all loops are bounded by the layout validated at
//!   attach, never by a value read later);
//! - the host writes nothing but state words (and its epoch word at attach): every other word
//!   of the region is unchanged;
//! - a [`Frozen`](shmsnap_core::triple::Frozen) is only reported for a buffer whose state word
//!   held `READY(seq)` with the reported seq just before, newer than `last_persisted` and not
//!   above the client's `NEXT_SEQ` hint (a seq the client cannot have published is refused,
//!   never frozen), and that now holds `FROZEN(host epoch)`; its byte range is that buffer's;
//!   the image meta it writes validates with `read_image` as that buffer and seq;
//! - `survey` reports exactly the highest READY seq at or below the hint as the newest and the
//!   highest above it as refused; `PersistedSeq::judge` resets the last persisted seq only
//!   when the client epoch changed and the newest seq went below it, and never lets it be
//!   pinned by a refused seq;
//! - `release` succeeds exactly when the word still holds the host's FROZEN value, writes
//!   `READY(seq)` then, and leaves the word as found otherwise, with `Reclaimed` for a value
//!   the client can have written (WRITING, FREE, a newer READY) and `ReleaseLost` for any
//!   other; a copy whose release failed is not persisted;
//! - a new host's attach changes only FROZEN words of other epochs (to `READY(seq word)` or
//!   FREE) and its epoch word;
//! - `read_image` over arbitrary meta bytes never panics, and accepts only a meta with exactly
//!   one READY buffer whose seq word matches and whose seq is below the image's `NEXT_SEQ`;
//! - the claim word is tampered with too: a client attach may be refused (`Claimed`), and the
//!   host never writes it.
//!
//! Inputs are decoded by a cursor that yields zeros past the end: every byte string is valid.

use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::format::word;
use shmsnap_core::triple::{
    read_image, words, BufferState, Judgement, PersistedSeq, TripleClient, TripleError, TripleHost,
    TripleLayout, TripleRequest, MAX_SEQ,
};

use crate::CLIENT;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
    /// A value biased toward the encodings: small, tagged (FREE/WRITING/READY/FROZEN with a
    /// small value), near the limits, or arbitrary.
    fn wide(&mut self) -> u64 {
        match self.u8() % 6 {
            0 => u64::from(self.u8()),
            1 => (u64::from(self.u8() % 4) << 62) | u64::from(self.u8()),
            2 => (u64::from(self.u8() % 4) << 62) | ((1 << 62) - 1 - u64::from(self.u8())),
            3 => u64::MAX - u64::from(self.u8()),
            _ => self.u64(),
        }
    }
}

fn words_of(mem: &[AtomicU64]) -> Vec<u64> {
    mem.iter().map(|w| w.load(Ordering::Relaxed)).collect()
}

/// Words that differ between two copies of the region.
fn changed(before: &[u64], after: &[u64]) -> Vec<usize> {
    (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect()
}

fn state_words(layout: &TripleLayout) -> Vec<usize> {
    (0..layout.buffers).map(|i| layout.state_word(i)).collect()
}

/// The fuzz entry point (see the module docs).
pub fn triple_host(data: &[u8]) {
    let mut input = Input(data);
    let request = TripleRequest {
        buffers: 3 + u64::from(input.u8() % 4),
        buffer_size: 4096,
    };
    let layout = TripleLayout::new(request).expect("valid request");
    let mem: Vec<AtomicU64> = (0..layout.region_len as usize / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = &mem[..];
    {
        let mut c = TripleClient::init(mem, request, CLIENT).expect("init");
        for _ in 0..input.u8() % 5 {
            let seq = c.next_seq();
            c.publish(&seq.to_le_bytes())
                .expect("publish on a sound region");
        }
    }
    // Words a tamper may hit: the header, the hints, the claim, every state and seq word.
    let mut targets: Vec<usize> = (0..12).chain(16..19).chain([word::CLAIM]).collect();
    for i in 0..layout.buffers {
        targets.push(layout.state_word(i));
        targets.push(layout.seq_word(i));
    }
    let mut host = match attach_checked(mem, &layout) {
        Some(h) => h,
        None => return,
    };
    let first = u64::from(input.u8() % 3);
    let mut cursor =
        PersistedSeq::restored(first, mem[words::CLIENT_EPOCH].load(Ordering::Relaxed));
    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        match input.u8() % 6 {
            0 | 1 => {
                let w = targets[input.u8() as usize % targets.len()];
                mem[w].store(input.wide(), Ordering::Relaxed);
            }
            2 => {
                judge_checked(mem, &host, &mut cursor);
                if let Some(seq) = freeze_checked(mem, &host, &mut input, cursor.seq()) {
                    cursor.persisted(seq);
                }
            }
            3 => {
                // A client on the tampered region: any result but a panic is acceptable.
                if let Ok(mut c) = TripleClient::attach(mem, CLIENT) {
                    let seq = c.next_seq();
                    let _ = c.publish(&seq.to_le_bytes());
                }
            }
            4 => match attach_checked(mem, &layout) {
                Some(h) => host = h,
                None => return,
            },
            _ => {
                let newest = host.newest_ready();
                let seen = (0..layout.buffers).any(|i| {
                    mem[layout.state_word(i)].load(Ordering::Relaxed)
                        == BufferState::Ready { seq: newest }
                            .encode()
                            .unwrap_or(u64::MAX)
                });
                assert!(
                    newest == 0 || seen,
                    "newest_ready {newest} is no READY word"
                );
                image_arbitrary(&mut input, &layout);
            }
        }
    }
}

/// A new host's attach, checked: only FROZEN words of other epochs and the epoch word change.
fn attach_checked<'m>(
    mem: &'m [AtomicU64],
    layout: &TripleLayout,
) -> Option<TripleHost<'m, [AtomicU64]>> {
    let before = words_of(mem);
    let host = match TripleHost::attach(mem) {
        Ok(h) => h,
        Err(TripleError::Layout(_)) => {
            assert!(
                changed(&before, &words_of(mem)).is_empty(),
                "failed attach wrote"
            );
            return None;
        }
        Err(e) => panic!("host attach: unexpected error {e}"),
    };
    assert_eq!(
        host.layout(),
        layout,
        "a valid header is the configured one"
    );
    let after = words_of(mem);
    let mut adopted = 0;
    for w in changed(&before, &after) {
        if w == words::HOST_EPOCH {
            assert_eq!(after[w], host.epoch());
            continue;
        }
        let i = state_words(layout)
            .iter()
            .position(|&s| s == w)
            .unwrap_or_else(|| panic!("host attach wrote word {w}, not a state word"));
        let BufferState::Frozen { epoch } = BufferState::decode(before[w]) else {
            panic!(
                "host attach changed a non-FROZEN state word {:#x}",
                before[w]
            );
        };
        assert_ne!(epoch, host.epoch());
        let seq = before[layout.seq_word(i as u64)];
        let expect = BufferState::Ready { seq }.encode().unwrap_or(0);
        assert_eq!(after[w], expect, "adopted buffer {i}");
        adopted += 1;
    }
    assert_eq!(host.adopted(), adopted);
    Some(host)
}

/// The client's `NEXT_SEQ` hint as the host bounds seqs with it (0 if it is not a seq).
fn bound(words: &[u64]) -> u64 {
    let h = words[words::NEXT_SEQ];
    if h < MAX_SEQ {
        h
    } else {
        0
    }
}

/// A survey and its judgement, checked against the words: the newest and refused seqs are
/// the highest READY seqs at or below and above the hint; the last persisted seq is reset
/// only for a new client epoch with seqs below it, and otherwise kept.
fn judge_checked(mem: &[AtomicU64], host: &TripleHost<'_, [AtomicU64]>, cursor: &mut PersistedSeq) {
    let layout = *host.layout();
    let before = words_of(mem);
    let survey = host.survey();
    assert!(changed(&before, &words_of(mem)).is_empty(), "survey wrote");
    let b = bound(&before);
    assert_eq!(survey.published, b, "survey bound");
    assert_eq!(survey.client_epoch, before[words::CLIENT_EPOCH]);
    let ready: Vec<(u64, u64)> = (0..layout.buffers)
        .filter_map(
            |i| match BufferState::decode(before[layout.state_word(i)]) {
                BufferState::Ready { seq } => Some((i, seq)),
                _ => None,
            },
        )
        .collect();
    let top = |f: &dyn Fn(u64) -> bool| ready.iter().filter(|(_, s)| f(*s)).map(|&(_, s)| s).max();
    assert_eq!(survey.newest.map(|(_, s)| s), top(&|s| s <= b), "newest");
    assert_eq!(survey.refused.map(|r| r.seq), top(&|s| s > b), "refused");
    let old = *cursor;
    let newest = survey.newest.map_or(0, |(_, s)| s);
    match cursor.judge(&survey) {
        Judgement::Normal => {
            assert!(newest >= old.seq());
            assert_eq!(cursor.seq(), old.seq());
        }
        Judgement::Reinitialised { last_seq, .. } => {
            assert!(newest < last_seq && last_seq == old.seq());
            assert_eq!(
                cursor.seq(),
                0,
                "a re-initialised region resets the last seq"
            );
        }
        Judgement::Unsettled { .. } => {
            panic!("a survey of words nobody changes during it is settled: {survey:?}")
        }
        Judgement::Backwards { last_seq, .. } => {
            assert!(newest < last_seq);
            assert_eq!(cursor.seq(), old.seq(), "a backwards seq changes nothing");
        }
    }
}

/// One freeze / copy / meta / release, checked; returns the persisted seq.
fn freeze_checked(
    mem: &[AtomicU64],
    host: &TripleHost<'_, [AtomicU64]>,
    input: &mut Input<'_>,
    last_persisted: u64,
) -> Option<u64> {
    let layout = *host.layout();
    let before = words_of(mem);
    let frozen = match host.freeze(last_persisted) {
        Ok(f) => f,
        // Single-threaded, every compare-exchange sees the value the scan read.
        Err(e) => panic!("freeze: {e}"),
    };
    let after = words_of(mem);
    let Some(f) = frozen else {
        assert!(
            changed(&before, &after).is_empty(),
            "a skipped freeze wrote"
        );
        for i in 0..layout.buffers {
            if let BufferState::Ready { seq } = BufferState::decode(before[layout.state_word(i)]) {
                assert!(
                    seq <= last_persisted || seq > bound(&before),
                    "skipped though READY({seq}) is new and not above the hint"
                );
            }
        }
        return None;
    };
    assert!(
        f.seq() <= bound(&before),
        "froze READY({}) above the client's hint {}",
        f.seq(),
        bound(&before)
    );
    let sw = layout.state_word(f.buffer());
    assert_eq!(
        BufferState::decode(before[sw]),
        BufferState::Ready { seq: f.seq() },
        "froze a buffer that was not READY with the reported seq"
    );
    assert!(f.seq() > last_persisted);
    assert_eq!(
        changed(&before, &after),
        vec![sw],
        "freeze wrote another word"
    );
    assert_eq!(
        BufferState::decode(after[sw]),
        BufferState::Frozen {
            epoch: host.epoch()
        }
    );
    assert_eq!(f.byte_range(), layout.buffer_range(f.buffer()));
    let mut copy = vec![0u8; layout.buffer_size as usize];
    f.copy_to(&mut copy).expect("copy the whole buffer");
    let mut meta = vec![0u8; layout.meta_len() as usize];
    f.image_meta(&mut meta).expect("meta");
    let img = read_image(&meta, layout.region_len).expect("the host's own meta validates");
    assert_eq!((img.buffer, img.seq), (f.buffer(), f.seq()));
    assert!(img.next_seq > f.seq());
    if input.u8() % 2 == 1 {
        // The client tampers with the frozen buffer's state word mid-snapshot.
        mem[sw].store(input.wide(), Ordering::Relaxed);
    }
    let found = mem[sw].load(Ordering::Relaxed);
    let mine = BufferState::Frozen {
        epoch: host.epoch(),
    }
    .encode()
    .unwrap();
    let seq = f.seq();
    let r = f.release();
    assert_eq!(
        r.is_ok(),
        found == mine,
        "release result {r:?} for word {found:#x}"
    );
    let now = mem[sw].load(Ordering::Relaxed);
    let expect = if found == mine {
        BufferState::Ready { seq }.encode().unwrap()
    } else {
        found
    };
    assert_eq!(now, expect, "release wrote the wrong value");
    match r {
        Ok(()) => Some(seq),
        // The copy is dropped: nothing was persisted. What the client can have done (take the
        // buffer back: WRITING, FREE, a newer READY) is the reclaim race; anything else is a
        // foreign writer.
        Err(e) => {
            let reclaimed = match BufferState::decode(found) {
                BufferState::Writing { .. } | BufferState::Free => true,
                BufferState::Ready { seq: s } => s > seq,
                _ => false,
            };
            let want = if reclaimed {
                TripleError::Reclaimed { found }
            } else {
                TripleError::ReleaseLost { found }
            };
            assert_eq!(e, want, "release error for word {found:#x}");
            None
        }
    }
}

/// `read_image` over meta bytes decoded from the input: no panic, and acceptance only of a
/// meta with exactly one READY buffer whose seq word matches.
fn image_arbitrary(input: &mut Input<'_>, layout: &TripleLayout) {
    let mut meta = vec![0u8; layout.meta_len() as usize];
    let header = layout.header_words();
    for (i, w) in header.iter().enumerate() {
        meta[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    let next = 8 * words::NEXT_SEQ;
    meta[next..next + 8].copy_from_slice(&input.wide().to_le_bytes());
    for _ in 0..input.u8() % 8 {
        let i = usize::from(input.u8()) % layout.buffers as usize + 1;
        let w = layout.state_word(i as u64 - 1) + usize::from(input.u8() % 2);
        meta[8 * w..8 * w + 8].copy_from_slice(&input.wide().to_le_bytes());
    }
    if input.u8().is_multiple_of(4) {
        let at = usize::from(input.u8()) * 8 % meta.len();
        meta[at] ^= input.u8() | 1;
    }
    let cut = if input.u8().is_multiple_of(8) {
        usize::from(input.u8()) * 37 % meta.len()
    } else {
        meta.len()
    };
    if let Ok(img) = read_image(&meta[..cut], layout.region_len) {
        let ready = (0..img.layout.buffers)
            .filter(|&i| {
                let w = img.layout.state_word(i);
                let v = u64::from_le_bytes(meta[8 * w..8 * w + 8].try_into().unwrap());
                v != 0
            })
            .count();
        assert_eq!(ready, 1, "read_image accepted {ready} non-FREE buffers");
        let sw = img.layout.seq_word(img.buffer);
        let seq_word = u64::from_le_bytes(meta[8 * sw..8 * sw + 8].try_into().unwrap());
        assert_eq!(seq_word, img.seq);
        assert!(
            img.seq < img.next_seq,
            "read_image accepted a seq at or above next_seq"
        );
    }
}
