//! The triple-buffer host: freeze the newest READY buffer, copy it, release it; snapshot-image
//! meta and its validation.

use core::ops::Range;
use core::sync::atomic::Ordering;

use super::{
    frozen, next_epoch, ready, words, BufferState, TripleError, TripleLayout, MAX_BUFFERS, MAX_SEQ,
};
use crate::format::{read_word, write_word};
use crate::memory::{load_bytes, WordMemory};

/// How many times [`TripleHost::freeze`] rescans after losing its compare-exchange.
pub const FREEZE_ATTEMPTS: u32 = 4;

/// Passes over the state words [`TripleHost::survey`] makes at most, looking for two
/// consecutive equal ones.
pub const SURVEY_PASSES: u32 = 4;

/// The host's side of a triple-buffer region.
///
/// The layout is validated once, at attach; the host never re-reads the header, so a client
/// that rewrites it later cannot move an index out of bounds. The host writes only state
/// words (compare-exchange from a value it read) and the host-epoch word.
///
/// The state words are hostile too: a READY seq above the client's `NEXT_SEQ` hint is one the
/// client cannot have published (it stores a hint covering a publication before the
/// publication's READY store) and is **refused** — never frozen, never counted as the
/// newest, reported by [`survey`](TripleHost::survey). [`PersistedSeq`] judges each survey
/// against what the host persisted last: a re-initialised region resets it, seqs going
/// backwards within one client epoch are refused.
#[derive(Debug)]
pub struct TripleHost<'m, M: WordMemory + ?Sized> {
    mem: &'m M,
    layout: TripleLayout,
    /// This host's epoch (`1..2^62`): the value of its FROZEN words.
    epoch: u64,
    /// Stale freezes undone at attach.
    adopted: u32,
}

impl<'m, M: WordMemory + ?Sized> TripleHost<'m, M> {
    /// Attaches to a configured region: bumps the host epoch and undoes every FROZEN word of
    /// another epoch (a dead host's, also one inherited with the region from the systemd fd
    /// store): back to `READY(seq)` with the buffer's seq word, or FREE if that seq is not a
    /// valid seq. Bounded by `N`.
    ///
    /// # Errors
    ///
    /// [`TripleError::Layout`] for a missing (`Unconfigured`: try again once the client has
    /// configured the region) or invalid header.
    pub fn attach(mem: &'m M) -> Result<Self, TripleError> {
        let layout = TripleLayout::read(mem)?;
        let epoch = next_epoch(mem.load(words::HOST_EPOCH, Ordering::Relaxed));
        mem.store(words::HOST_EPOCH, epoch, Ordering::Relaxed);
        let mut adopted = 0;
        for i in 0..layout.buffers {
            let sw = layout.state_word(i);
            let v = mem.load(sw, Ordering::Relaxed);
            if let BufferState::Frozen { epoch: e } = BufferState::decode(v) {
                if e == epoch {
                    continue;
                }
                let seq = mem.load(layout.seq_word(i), Ordering::Relaxed);
                let back = if (1..MAX_SEQ).contains(&seq) {
                    ready(seq)
                } else {
                    0
                };
                // Release: pairs with the client's Acquire in `take`, like `release`. A lost
                // race means someone else writes state words; the word is left as found.
                if mem
                    .compare_exchange(sw, v, back, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    adopted += 1;
                }
            }
        }
        Ok(TripleHost {
            mem,
            layout,
            epoch,
            adopted,
        })
    }

    /// The layout validated at attach.
    pub fn layout(&self) -> &TripleLayout {
        &self.layout
    }

    /// This host's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of stale freezes undone at attach.
    pub fn adopted(&self) -> u32 {
        self.adopted
    }

    /// The highest seq of any READY word the client can have published (0 if none): to
    /// decide whether a snapshot is due without freezing anything. Hostile values are ignored.
    pub fn newest_ready(&self) -> u64 {
        self.scan().newest.map_or(0, |(_, s)| s)
    }

    /// Looks at the state words without freezing anything: the newest READY buffer the
    /// client can have published, the highest READY seq it cannot have (refused), its
    /// `NEXT_SEQ` hint, its epoch (loaded after the state words), and whether two
    /// consecutive passes agreed (`settled`). Bounded by `SURVEY_PASSES * N` loads.
    pub fn survey(&self) -> Survey {
        let scan = self.settled_scan();
        // Relaxed, after the scan: a re-initialising client stores its new epoch before a
        // Release fence and then rewrites the state words (`TripleClient::init`), so a scan
        // that read any of those (Acquire) sees the new epoch here.
        let client_epoch = self.mem.load(words::CLIENT_EPOCH, Ordering::Relaxed);
        Survey {
            newest: scan.newest,
            refused: scan.refused,
            published: scan.published,
            client_epoch,
            settled: scan.settled,
        }
    }

    /// The client's `NEXT_SEQ` hint, or 0 if it is not a seq.
    fn hint(&self) -> u64 {
        let h = self.mem.load(words::NEXT_SEQ, Ordering::Relaxed);
        if h < MAX_SEQ {
            h
        } else {
            0
        }
    }

    /// Loads every state word once, in buffer order.
    fn collect(&self, states: &mut [u64; MAX_BUFFERS as usize]) {
        let n = (self.layout.buffers as usize).min(states.len());
        for (i, v) in states.iter_mut().enumerate().take(n) {
            // SeqCst, so Acquire: pairs with the client's Release READY store (the buffer, its
            // seq word and the hint stored before it are visible) and with the Release fence
            // of a re-initialising client (`survey` then sees its new epoch). SeqCst: in the
            // single total order with the SeqCst fence of the client's take fallback, so a
            // scan after it sees the client's last publication (module docs). A plain load on
            // x86 and an `ldar` on AArch64, like an Acquire load.
            *v = self
                .mem
                .load(self.layout.state_word(i as u64), Ordering::SeqCst);
        }
    }

    /// One pass over the state words: the READY buffer with the highest seq the client can
    /// have published, and the highest READY seq it cannot have.
    fn scan(&self) -> Scan {
        let mut states = [0u64; MAX_BUFFERS as usize];
        self.collect(&mut states);
        self.judge_states(&states, false)
    }

    /// Like [`scan`](Self::scan), but collects the state words until two consecutive passes
    /// read the same values (at most [`SURVEY_PASSES`]); the scan is `settled` if they did.
    ///
    /// One pass is not a view of the words at one moment: a pass preempted between two loads
    /// while the client publishes twice reads an early buffer before its new publication and
    /// a late one after the client reclaimed it — every READY it saw may be older than a
    /// state it persisted before ("Backwards" in [`PersistedSeq::judge`], which the client
    /// did not do). Two equal passes are such a view. A word the client changes between them
    /// and changes back is either a WRITING/FREE word of a take it dropped — which changes no
    /// other word, so the others held their values throughout and any moment that word held
    /// its value will do — or a buffer it published into and reclaimed, which needs a
    /// publication into another buffer in between, and that word changes for good (READY
    /// seqs never repeat): the passes would differ. So the words were all as read at one
    /// moment between the passes.
    fn settled_scan(&self) -> Scan {
        let mut prev = [0u64; MAX_BUFFERS as usize];
        let mut cur = [0u64; MAX_BUFFERS as usize];
        self.collect(&mut prev);
        for _ in 1..SURVEY_PASSES {
            self.collect(&mut cur);
            if cur == prev {
                return self.judge_states(&cur, true);
            }
            prev = cur;
        }
        self.judge_states(&prev, false)
    }

    /// The [`Scan`] of state words read by [`collect`](Self::collect).
    fn judge_states(&self, states: &[u64; MAX_BUFFERS as usize], settled: bool) -> Scan {
        let n = (self.layout.buffers as usize).min(states.len());
        // Relaxed, after the scan: the client stores a hint `>= s` before its READY(s) store
        // (`attach`, and every `publish` for the next one), and that store is a Release which
        // our Acquire load of READY(s) acquired — so this load sees `>= s` for every READY(s)
        // the client published. A READY seq above it is not the client's.
        // (The one exception is benign: a client re-initialising during this scan lowers the
        // hint below READY words of its previous life that the scan still saw; such a word is
        // refused once, and the next survey sees the new epoch.)
        let published = self.hint();
        let mut scan = Scan {
            published,
            settled,
            ..Scan::default()
        };
        for (i, &v) in states.iter().enumerate().take(n) {
            let BufferState::Ready { seq } = BufferState::decode(v) else {
                continue;
            };
            let i = i as u64;
            if seq > published {
                if scan.refused.is_none_or(|r| seq > r.seq) {
                    scan.refused = Some(Refused { buffer: i, seq });
                }
            } else if scan.newest.is_none_or(|(_, s)| seq > s) {
                scan.newest = Some((i, seq));
            }
        }
        scan
    }

    /// Freezes the newest READY buffer if its seq is above `last_persisted`; `Ok(None)` when
    /// nothing newer was published (skip the snapshot). The returned [`Frozen`] is the only
    /// way to copy a buffer: the host never reports a buffer it did not freeze.
    ///
    /// Bounded: at most [`FREEZE_ATTEMPTS`] scans of `N` words.
    ///
    /// # Errors
    ///
    /// [`TripleError::Contended`] if every compare-exchange lost (the client reclaimed the
    /// scanned buffer each time, having published a newer one): retry at the next snapshot.
    pub fn freeze(&self, last_persisted: u64) -> Result<Option<Frozen<'_, 'm, M>>, TripleError> {
        let mut floor = last_persisted.saturating_add(1);
        for _ in 0..FREEZE_ATTEMPTS {
            // Only a seq the client can have published: a refused one is never frozen.
            let Some((buffer, seq)) = self.scan().newest else {
                return Ok(None);
            };
            floor = floor.max(seq.saturating_add(1));
            if seq <= last_persisted {
                return Ok(None);
            }
            let sw = self.layout.state_word(buffer);
            // SeqCst on success: acquires the client's Release READY store in `publish` (the
            // copy sees the buffer as published, and its loads stay after this), and is in the
            // total order with the client's fallback fence and compare-exchanges.
            let cas = self.mem.compare_exchange(
                sw,
                ready(seq),
                frozen(self.epoch),
                Ordering::SeqCst,
                Ordering::Relaxed,
            );
            if cas.is_ok() {
                return Ok(Some(Frozen {
                    host: self,
                    buffer,
                    seq,
                    seen_next: floor,
                    released: false,
                }));
            }
        }
        Err(TripleError::Contended {
            attempts: FREEZE_ATTEMPTS,
        })
    }
}

/// One pass over the state words ([`TripleHost::scan`]).
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    newest: Option<(u64, u64)>,
    refused: Option<Refused>,
    published: u64,
    /// Two consecutive passes read the same words ([`TripleHost::settled_scan`]).
    settled: bool,
}

/// What a host found in the state words before freezing anything ([`TripleHost::survey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Survey {
    /// The READY buffer with the highest seq the client can have published: `(buffer, seq)`.
    pub newest: Option<(u64, u64)>,
    /// The READY word with the highest seq the client cannot have published (above
    /// [`published`](Survey::published)): refused, never frozen.
    pub refused: Option<Refused>,
    /// The bound: the client's `NEXT_SEQ` hint (0 if it is not a seq), `>=` every seq it
    /// published.
    pub published: u64,
    /// The client epoch word, loaded after the state words.
    pub client_epoch: u64,
    /// Two consecutive passes over the state words read the same values, so the words held
    /// them all at one moment. Only a settled survey can show the client going backwards
    /// ([`PersistedSeq::judge`]); an unsettled one may mix moments.
    pub settled: bool,
}

/// A READY state word whose seq is above what the client says it published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The buffer.
    pub buffer: u64,
    /// The seq its state word claims.
    pub seq: u64,
}

/// The host's memory of the last state it persisted, kept across attaches (a host attaches
/// anew for every snapshot), and its judgement of each [`Survey`] (DESIGN §6).
///
/// Within one client epoch a client's newest publication never goes back (it never reclaims
/// its newest buffer), and no host persists a seq above the newest. So:
///
/// - the client epoch changed **and** the newest publication is below the last persisted seq:
///   the region was re-initialised (`TripleClient::init` on a zeroed header, or
///   `TripleClient::reinit`) and seqs start again — the last persisted seq is reset to 0 so
///   the new publications are persisted at once ([`Judgement::Reinitialised`]);
/// - the epoch is the same and the newest publication is below it: the state words went
///   backwards, which the client cannot do — refused ([`Judgement::Backwards`]): nothing below
///   the last persisted seq is persisted, and the last persisted seq stays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistedSeq {
    /// Seq of the newest persisted state (0: none); only a newer READY seq is persisted.
    seq: u64,
    /// The client epoch of the last survey (`None` before the first).
    epoch: Option<u64>,
}

/// What [`PersistedSeq::judge`] made of a survey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing unusual: persist a READY seq above [`PersistedSeq::seq`].
    Normal,
    /// The region was re-initialised: the last persisted seq was reset to 0.
    Reinitialised {
        /// The client epoch before.
        from_epoch: u64,
        /// The client epoch now.
        to_epoch: u64,
        /// The last persisted seq that was reset.
        last_seq: u64,
        /// The newest seq the client published since (0: none yet).
        newest: u64,
    },
    /// The newest publication looked below the last persisted seq, but the survey's passes
    /// did not agree ([`Survey::settled`]): no verdict, nothing changed, nothing older is
    /// persisted (the freeze only takes seqs above the last persisted one).
    Unsettled {
        /// The newest seq found.
        newest: u64,
        /// The last persisted seq, kept.
        last_seq: u64,
    },
    /// Within one client epoch the newest publication is below the last persisted seq:
    /// refused (the state words were changed behind the client's back).
    Backwards {
        /// The newest seq found.
        newest: u64,
        /// The last persisted seq, kept.
        last_seq: u64,
    },
}

impl PersistedSeq {
    /// Nothing persisted yet.
    pub const fn new() -> Self {
        PersistedSeq {
            seq: 0,
            epoch: None,
        }
    }

    /// A region restored from a snapshot of `seq`, whose client epoch word is `client_epoch`.
    pub const fn restored(seq: u64, client_epoch: u64) -> Self {
        PersistedSeq {
            seq,
            epoch: Some(client_epoch),
        }
    }

    /// The seq of the newest persisted state (0: none).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records that the state with `seq` was persisted.
    pub fn persisted(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Judges `survey` against the last persisted seq (see the [type docs](PersistedSeq)),
    /// resetting it for a re-initialised region. A survey that is not
    /// [`settled`](Survey::settled) and shows a newest publication below the last persisted
    /// seq proves nothing (a pass can mix moments of a client publishing fast):
    /// [`Judgement::Unsettled`], and nothing changes.
    pub fn judge(&mut self, survey: &Survey) -> Judgement {
        let newest = survey.newest.map_or(0, |(_, s)| s);
        if newest >= self.seq {
            self.epoch = Some(survey.client_epoch);
            return Judgement::Normal;
        }
        if !survey.settled {
            return Judgement::Unsettled {
                newest,
                last_seq: self.seq,
            };
        }
        let before = self.epoch.replace(survey.client_epoch);
        match before {
            Some(from) if from != survey.client_epoch => {
                let last_seq = core::mem::take(&mut self.seq);
                Judgement::Reinitialised {
                    from_epoch: from,
                    to_epoch: survey.client_epoch,
                    last_seq,
                    newest,
                }
            }
            _ => Judgement::Backwards {
                newest,
                last_seq: self.seq,
            },
        }
    }
}

/// A buffer this host froze: `FROZEN(host epoch)` since a compare-exchange from `READY(seq)`.
/// The client does not take it while it reads FROZEN; only a take that read the READY value
/// just before the freeze can still overwrite it (the reclaim race of the
/// [module docs](super)), and [`release`](Frozen::release) detects that. Copy its
/// [`byte_range`](Frozen::byte_range) (kernel copy, or [`copy_to`](Frozen::copy_to)), write
/// the image meta with [`image_meta`](Frozen::image_meta), then [`release`](Frozen::release)
/// and use the copy only if it returned `Ok`. Dropping it releases it too.
#[derive(Debug)]
#[must_use = "a frozen buffer blocks the client's use of it until released"]
pub struct Frozen<'h, 'm, M: WordMemory + ?Sized> {
    host: &'h TripleHost<'m, M>,
    /// The frozen buffer (`< N`).
    buffer: u64,
    /// The seq it was published with (`1..MAX_SEQ`).
    seq: u64,
    /// 1 + the highest READY seq any scan of this freeze saw.
    seen_next: u64,
    released: bool,
}

impl<M: WordMemory + ?Sized> Frozen<'_, '_, M> {
    /// The frozen buffer's index.
    pub fn buffer(&self) -> u64 {
        self.buffer
    }

    /// The seq of the frozen state.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The buffer's byte range in the region: the only bytes of buffer memory a snapshot needs.
    pub fn byte_range(&self) -> Range<u64> {
        self.host.layout.buffer_range(self.buffer)
    }

    /// Copies the first `out.len()` bytes of the frozen buffer with `Relaxed` word loads (the
    /// word path; a host may copy [`byte_range`](Frozen::byte_range) with the kernel instead).
    ///
    /// # Errors
    ///
    /// [`TripleError::BufferLength`] if `out` is longer than the buffer.
    pub fn copy_to(&self, out: &mut [u8]) -> Result<(), TripleError> {
        let b = self.host.layout.buffer_size;
        if out.len() as u64 > b {
            return Err(TripleError::BufferLength {
                needed: b,
                got: out.len(),
            });
        }
        load_bytes(self.host.mem, self.byte_range().start as usize, out);
        Ok(())
    }

    /// Writes the meta part of the snapshot image (the first
    /// [`meta_len`](TripleLayout::meta_len) bytes: header page and state page) into `meta`,
    /// for an image of the region's length whose only other content is the frozen buffer at
    /// its range (every other buffer may be a hole). Call it after the copy: it reads the live
    /// `NEXT_SEQ` hint.
    ///
    /// The image's state page holds exactly one READY buffer — this one, `READY(seq)` with
    /// seq word `seq` — and zeros elsewhere, so a restore makes it the buffer the next client
    /// reads at start. Every header word not named here is 0 — the status, request and claim
    /// words among them: an image promises no durability and is claimed by nobody. `NEXT_SEQ` is above every seq the host saw (hint read now, if valid;
    /// every READY seq of the freeze's scans; `seq`), so seqs do not repeat after a restore.
    ///
    /// # Errors
    ///
    /// [`TripleError::BufferLength`] if `meta` is shorter than `meta_len`.
    pub fn image_meta(&self, meta: &mut [u8]) -> Result<(), TripleError> {
        let layout = self.host.layout;
        let len = layout.meta_len();
        let Some(meta) = meta.get_mut(..len as usize) else {
            return Err(TripleError::BufferLength {
                needed: len,
                got: meta.len(),
            });
        };
        meta.fill(0);
        for (i, v) in layout.header_words().iter().enumerate() {
            write_word(meta, i, *v);
        }
        let mem = self.host.mem;
        let hint = mem.load(words::NEXT_SEQ, Ordering::Relaxed);
        let hint = if hint < MAX_SEQ { hint } else { 0 };
        let next = hint.max(self.seen_next).max(self.seq + 1);
        write_word(meta, words::NEXT_SEQ, next);
        let client = mem.load(words::CLIENT_EPOCH, Ordering::Relaxed);
        write_word(meta, words::CLIENT_EPOCH, client);
        write_word(meta, words::HOST_EPOCH, self.host.epoch);
        write_word(meta, layout.state_word(self.buffer), ready(self.seq));
        write_word(meta, layout.seq_word(self.buffer), self.seq);
        Ok(())
    }

    /// Releases the buffer and **validates the copy**: compare-exchange from the FROZEN value
    /// this host wrote back to `READY(seq)` (it stays the client's newest state until the
    /// client publishes a newer one and reclaims it). Call it after the copy and before the
    /// copy is used: `Ok` proves that the client wrote nothing into the buffer that the copy
    /// (done before this call, by this thread or by the kernel on its behalf) could have read.
    ///
    /// # Errors
    ///
    /// [`TripleError::Reclaimed`] if the client took the buffer back (the reclaim race of the
    /// [module docs](super): the word is WRITING, FREE or READY with a newer seq): the copy
    /// may be torn and must be dropped; this is part of the protocol, not a fault.
    /// [`TripleError::ReleaseLost`] if the word holds anything else (someone else writes
    /// state words). Either way the word is left as found.
    pub fn release(mut self) -> Result<(), TripleError> {
        self.released = true;
        self.do_release()
    }

    fn do_release(&self) -> Result<(), TripleError> {
        let sw = self.host.layout.state_word(self.buffer);
        // Acquire fence after the copy: if any load of the copy read a word the client wrote
        // after reclaiming the buffer, the client's Release fence after its WRITING store
        // synchronizes with this fence, so the compare-exchange below reads WRITING or a later
        // value and fails. The seqlock argument of the module docs ("The reclaim race").
        self.host.mem.fence(Ordering::Acquire);
        // SeqCst on success: a Release, so this host's copy happens before the client's reuse
        // of the buffer (pairs with the Acquire load in `take`), and in the total order with
        // the client's fallback (module docs).
        self.host
            .mem
            .compare_exchange(
                sw,
                frozen(self.host.epoch),
                ready(self.seq),
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .map(|_| ())
            .map_err(|found| match BufferState::decode(found) {
                BufferState::Writing { .. } | BufferState::Free => TripleError::Reclaimed { found },
                BufferState::Ready { seq } if seq > self.seq => TripleError::Reclaimed { found },
                _ => TripleError::ReleaseLost { found },
            })
    }
}

impl<M: WordMemory + ?Sized> Drop for Frozen<'_, '_, M> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.do_release();
        }
    }
}

/// What a snapshot image of a triple region holds (validated by [`read_image`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripleImage {
    /// The image's layout.
    pub layout: TripleLayout,
    /// The buffer holding the state.
    pub buffer: u64,
    /// Its seq.
    pub seq: u64,
    /// The image's `NEXT_SEQ` hint.
    pub next_seq: u64,
}

/// Validates the meta of a snapshot image (at least its first
/// [`meta_len`](TripleLayout::meta_len) bytes; `region_len` is the full image length, which
/// the header must fit): a triple header, exactly one state line `READY(seq)` with seq word
/// `seq`, every other state line zero, and `seq` below the image's `NEXT_SEQ`. For restore,
/// `inspect` and `verify`.
///
/// # Errors
///
/// [`TripleError::Layout`] for the header, [`TripleError::BufferLength`] if `meta` is shorter
/// than the meta part, [`TripleError::ImageState`] naming the first inconsistent buffer,
/// [`TripleError::ImageSeq`] for a READY seq not below `NEXT_SEQ`.
pub fn read_image(meta: &[u8], region_len: u64) -> Result<TripleImage, TripleError> {
    let mut w = [0u64; super::HEADER_WORDS];
    for (i, slot) in w.iter_mut().enumerate() {
        *slot = read_word(meta, i).unwrap_or(0);
    }
    let layout = TripleLayout::from_header_words(&w, region_len)?;
    let len = layout.meta_len();
    if (meta.len() as u64) < len {
        return Err(TripleError::BufferLength {
            needed: len,
            got: meta.len(),
        });
    }
    let mut found: Option<(u64, u64)> = None;
    for i in 0..super::MAX_BUFFERS {
        let line = (layout.state_offset + i * super::STATE_STRIDE) / 8;
        let state = read_word(meta, line as usize).unwrap_or(0);
        let seq_word = read_word(meta, line as usize + 1).unwrap_or(0);
        let bad = TripleError::ImageState { buffer: i, state };
        if i >= layout.buffers {
            if state != 0 || seq_word != 0 {
                return Err(bad);
            }
            continue;
        }
        match BufferState::decode(state) {
            BufferState::Free if seq_word == 0 => {}
            BufferState::Ready { seq } if seq == seq_word && found.is_none() => {
                found = Some((i, seq));
            }
            _ => return Err(bad),
        }
    }
    let Some((buffer, seq)) = found else {
        return Err(TripleError::ImageState {
            buffer: layout.buffers,
            state: 0,
        });
    };
    let next_seq = read_word(meta, words::NEXT_SEQ).unwrap_or(0);
    // Every seq a client published is below its next seq, and a host never persists a seq
    // above what the client published: an image saying otherwise was not written by a host.
    if seq >= next_seq {
        return Err(TripleError::ImageSeq { seq, next_seq });
    }
    Ok(TripleImage {
        layout,
        buffer,
        seq,
        next_seq,
    })
}
