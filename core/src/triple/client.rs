//! The triple-buffer client: takes a buffer, fills it, publishes it — wait-free.

use core::sync::atomic::Ordering;

use super::{
    next_epoch, ready, words, writing, BufferState, TripleError, TripleLayout, TripleRequest,
    MAX_SEQ,
};
use crate::claim::{Claim, ClaimId};
use crate::format::word;
use crate::layout::LayoutError;
use crate::memory::{load_bytes, store_bytes, WordMemory};

/// Passes [`TripleClient::take`] makes over the candidate buffers at most.
pub const TAKE_PASSES: u64 = 2;

/// The single client of a triple-buffer region.
///
/// Exactly one client may exist per region at a time (across all processes), enforced by the
/// region's [claim](crate::claim): every constructor takes it with the caller's [`ClaimId`]
/// before touching anything else, a second client is refused with [`TripleError::Claimed`]
/// naming the holder, and dropping the client releases it. It keeps its cursor privately; the
/// only words it reads back from the region are state words.
///
/// # A damaged region
///
/// When the region cannot be used — attach fails on a bad header ([`TripleError::Layout`]) or
/// exhausted seqs, or [`take`](TripleClient::take) fails with [`TripleError::NoFreeBuffer`]
/// because something scribbled the state words — [`TripleClient::reinit`] is the way back: it
/// discards the region's contents and configures it afresh under a **new client epoch**. The
/// host sees the epoch change at its next snapshot, resets the last seq it persisted, and
/// persists the new publications at once (seqs start again at 1).
#[derive(Debug)]
pub struct TripleClient<'m, M: WordMemory + ?Sized> {
    mem: &'m M,
    /// The region's claim on `mem`, held for the client's whole life (released on drop).
    claim: Claim<'m, M>,
    layout: TripleLayout,
    /// This client's epoch (`1..2^62`): the value of its WRITING words.
    epoch: u64,
    /// Seq of the next publication: `newest.1 < next_seq < MAX_SEQ` when it can publish.
    next_seq: u64,
    /// The newest published (or recovered) buffer and its seq. Its state word is `READY(seq)`
    /// or FROZEN by a host (seq word = seq); the client never takes it for writing, so the
    /// newest state is always intact in the region.
    newest: Option<(u64, u64)>,
}

/// The buffer after `b` modulo `n` (`b < n`).
#[inline]
fn after(b: u64, n: u64) -> u64 {
    if b + 1 < n {
        b + 1
    } else {
        0
    }
}

/// Refuses memory whose header is configured but not a valid triple region, before the claim
/// is read: there the claim word is as meaningless as the rest, and "claimed by pid N" would
/// be a false report. Reads only (a concurrent `init` stores the magic last, with Release);
/// the claimed path reads the header again.
fn refuse_foreign<M: WordMemory + ?Sized>(mem: &M) -> Result<(), TripleError> {
    match TripleLayout::read(mem) {
        Ok(_) | Err(LayoutError::Unconfigured) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl<'m, M: WordMemory + ?Sized> TripleClient<'m, M> {
    /// Takes the region's claim for `id`, then configures the fresh region (no magic: never
    /// configured, or an init cut short) for `request` and returns its client. Every buffer is
    /// FREE; the client epoch is a new one (the old epoch word, bumped), so a host that
    /// snapshotted the region before sees the re-initialisation.
    ///
    /// # Errors
    ///
    /// [`TripleError::Claimed`] if another client holds the region (nothing is touched);
    /// [`TripleError::AlreadyConfigured`] if the header has a magic; a [`LayoutError`] if the
    /// request is invalid or does not fit the memory.
    pub fn init(mem: &'m M, request: TripleRequest, id: ClaimId) -> Result<Self, TripleError> {
        let claim = Claim::take(mem, id)?;
        Self::init_claimed(claim, request)
    }

    /// Takes the region's claim for `id`, discards whatever the region holds and configures
    /// it afresh for `request`: the documented way back from a damaged region (see the
    /// [type docs](TripleClient#a-damaged-region)). The state is lost (a restarted client
    /// reads nothing until the next publication); the client epoch changes, which the host
    /// recognises: it resets the last seq it persisted and snapshots the new publications at
    /// once.
    ///
    /// If the host is copying a frozen buffer at that moment, its release finds the state word
    /// changed and it drops that copy.
    ///
    /// # Errors
    ///
    /// [`TripleError::Claimed`] if another client holds the region (drop this process's own
    /// client first); a [`LayoutError`] if the request is invalid or does not fit the memory.
    pub fn reinit(mem: &'m M, request: TripleRequest, id: ClaimId) -> Result<Self, TripleError> {
        let claim = Claim::take(mem, id)?;
        // Unconfigure: the magic is stored last by `write_header`, so zeroing it makes the
        // header "unconfigured" (a host skips the region until the new header is published).
        // Relaxed: nothing is published by this store; `init_claimed` orders what follows.
        mem.store(word::MAGIC, 0, Ordering::Relaxed);
        Self::init_claimed(claim, request)
    }

    /// [`TripleClient::init`] with the claim already held.
    fn init_claimed(claim: Claim<'m, M>, request: TripleRequest) -> Result<Self, TripleError> {
        let mem = claim.mem();
        let layout = TripleLayout::new(request)?;
        let available = (mem.len() as u64).saturating_mul(8);
        if layout.region_len > available {
            return Err(LayoutError::TooSmall {
                needed: layout.region_len,
                available,
            }
            .into());
        }
        match TripleLayout::read(mem) {
            Err(LayoutError::Unconfigured) => {}
            _ => return Err(TripleError::AlreadyConfigured),
        }
        // A new client epoch before anything else changes: a region configured afresh is a
        // new life of the region, and the host tells it from a plain client restart by the
        // epoch change together with seqs that went back (DESIGN §6).
        let epoch = next_epoch(mem.load(words::CLIENT_EPOCH, Ordering::Relaxed));
        mem.store(words::CLIENT_EPOCH, epoch, Ordering::Relaxed);
        // Release: a host whose (Acquire) scan reads a state word zeroed below, or
        // anything this client publishes later, also sees the new epoch when it loads the
        // epoch word after its scan — so it never mistakes the emptied state page for seqs
        // going backwards within one epoch (which it would refuse and count).
        mem.fence(Ordering::Release);
        // Zero the seq hint, the host epoch and the state page (every state line) before
        // publishing the header.
        for w in [words::NEXT_SEQ, words::HOST_EPOCH] {
            mem.store(w, 0, Ordering::Relaxed);
        }
        let first = (layout.state_offset / 8) as usize;
        for w in first..first + (crate::PAGE_SIZE / 8) as usize {
            mem.store(w, 0, Ordering::Relaxed);
        }
        layout.write_header(mem);
        Self::attach_claimed(claim)
    }

    /// Takes the region's claim for `id`, then attaches to the configured region, or
    /// initialises it with `request` if it is fresh.
    ///
    /// # Errors
    ///
    /// As [`TripleClient::init`] and [`TripleClient::attach`]; [`TripleError::Mismatch`] if
    /// the region has another layout.
    pub fn open_or_init(
        mem: &'m M,
        request: TripleRequest,
        id: ClaimId,
    ) -> Result<Self, TripleError> {
        refuse_foreign(mem)?;
        let claim = Claim::take(mem, id)?;
        match TripleLayout::read(mem) {
            Err(LayoutError::Unconfigured) => Self::init_claimed(claim, request),
            Err(e) => Err(e.into()),
            Ok(found) => {
                let requested = TripleLayout::new(request)?;
                if found != requested {
                    return Err(TripleError::Mismatch { found, requested });
                }
                Self::attach_claimed(claim)
            }
        }
    }

    /// Attaches to a configured region (after a client restart or a restore).
    ///
    /// Bumps the client epoch, frees every WRITING buffer (a dead client's: one client runs
    /// at a time) and every invalid state word, and finds the newest state: the READY or
    /// FROZEN buffer with the highest seq (after a restore, the restored buffer). The next seq
    /// is above it and above the `NEXT_SEQ` hint, so seqs never repeat; it is stored as the
    /// new hint (a host refuses a READY seq above the hint). Bounded by `N`.
    ///
    /// The region's claim is taken for `id` first: after a reclaim (the previous client
    /// died) this recovery is what makes the dead client's half-done work safe to build on.
    ///
    /// # Errors
    ///
    /// [`TripleError::Claimed`] if another client holds the region (nothing is touched); a
    /// [`LayoutError`] for a missing or invalid header; [`TripleError::Exhausted`].
    pub fn attach(mem: &'m M, id: ClaimId) -> Result<Self, TripleError> {
        refuse_foreign(mem)?;
        let claim = Claim::take(mem, id)?;
        Self::attach_claimed(claim)
    }

    /// [`TripleClient::attach`] with the claim already held.
    fn attach_claimed(claim: Claim<'m, M>) -> Result<Self, TripleError> {
        let mem = claim.mem();
        let layout = TripleLayout::read(mem)?;
        let epoch = next_epoch(mem.load(words::CLIENT_EPOCH, Ordering::Relaxed));
        mem.store(words::CLIENT_EPOCH, epoch, Ordering::Relaxed);
        let mut newest: Option<(u64, u64)> = None;
        for i in 0..layout.buffers {
            let sw = layout.state_word(i);
            // Acquire: pairs with the Release store of READY in `publish` (an earlier client's
            // buffer contents are visible to `read_newest`) and with the host's Release
            // compare-exchanges (its copy of a buffer is done before we reuse it).
            let v = mem.load(sw, Ordering::Acquire);
            let seq = match BufferState::decode(v) {
                BufferState::Ready { seq } => Some(seq),
                // The host never writes a seq word, so a FROZEN buffer's is the one its
                // publication stored (published by the Release store of READY).
                BufferState::Frozen { .. } => Some(mem.load(layout.seq_word(i), Ordering::Relaxed))
                    .filter(|s| (1..MAX_SEQ).contains(s)),
                BufferState::Free => None,
                BufferState::Writing { .. } | BufferState::Invalid(_) => {
                    // A dead client's buffer, or garbage: free it. The host never writes a
                    // WRITING or invalid word, so losing this race is impossible; if it is lost
                    // anyway the word is left as found.
                    let _ = mem.compare_exchange(sw, v, 0, Ordering::Relaxed, Ordering::Relaxed);
                    None
                }
            };
            if let Some(seq) = seq {
                if newest.is_none_or(|(_, s)| seq > s) {
                    newest = Some((i, seq));
                }
            }
        }
        let hint = mem.load(words::NEXT_SEQ, Ordering::Relaxed);
        let top = newest.map_or(0, |(_, s)| s);
        let next_seq = if hint < MAX_SEQ { hint } else { 0 }.max(top + 1);
        if next_seq >= MAX_SEQ {
            return Err(TripleError::Exhausted);
        }
        // The hint covers the next publication before its READY store: a host that reads
        // READY(s) (Acquire) and then the hint finds `hint >= s`, and refuses a READY seq above
        // the hint as one this client cannot have published. Relaxed: ordered before the
        // publication by its Release READY store.
        mem.store(words::NEXT_SEQ, next_seq, Ordering::Relaxed);
        Ok(TripleClient {
            mem,
            claim,
            layout,
            epoch,
            next_seq,
            newest,
        })
    }

    /// The region's layout.
    pub fn layout(&self) -> &TripleLayout {
        &self.layout
    }

    /// This client's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The id this client holds the region's claim with.
    pub fn claim_id(&self) -> ClaimId {
        self.claim.id()
    }

    /// The region's memory (for the status words: durability feedback, snapshot requests).
    pub fn mem(&self) -> &'m M {
        self.mem
    }

    /// The seq the next publication will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The newest published (or, after attach, recovered) state: `(buffer, seq)`.
    pub fn newest(&self) -> Option<(u64, u64)> {
        self.newest
    }

    /// Reads `out.len()` bytes at `offset` of the newest state (what a restarted client reads
    /// at start); returns its seq, or `None` if nothing was ever published.
    ///
    /// Sound because only this client writes buffers and it never writes its newest one.
    ///
    /// # Errors
    ///
    /// [`TripleError::OutOfBounds`] if the range does not fit in a buffer.
    pub fn read_newest(&self, offset: usize, out: &mut [u8]) -> Result<Option<u64>, TripleError> {
        let Some((buffer, seq)) = self.newest else {
            return Ok(None);
        };
        let at = self.checked_at(buffer, offset, out.len())?;
        load_bytes(self.mem, at, out);
        Ok(Some(seq))
    }

    /// Byte offset in the region of `offset` within buffer `buffer`, if `len` bytes fit.
    fn checked_at(&self, buffer: u64, offset: usize, len: usize) -> Result<usize, TripleError> {
        let b = self.layout.buffer_size;
        let fits = (offset as u64)
            .checked_add(len as u64)
            .is_some_and(|e| e <= b);
        if !fits {
            return Err(TripleError::OutOfBounds {
                offset,
                len,
                buffer_size: b,
            });
        }
        // In bounds: buffer < N and offset + len <= B.
        Ok((self.layout.buffer_range(buffer).start + offset as u64) as usize)
    }

    /// Takes a buffer for writing: a FREE one, or a READY one older than the newest
    /// publication. Wait-free; on the common path free of locked instructions: one pass of
    /// loads over the other `N - 1` buffers, one store and a `Release` fence. Only if that
    /// pass finds nothing (its view of the state words may be stale) does it fall back to at
    /// most [`TAKE_PASSES`] passes of compare-exchanges after a `SeqCst` fence, which succeed
    /// unless a host restarted during them (see the [module docs](super)).
    /// The buffer's old contents are unspecified.
    ///
    /// # Errors
    ///
    /// [`TripleError::Exhausted`] when seqs run out; [`TripleError::NoFreeBuffer`] only if
    /// another client or host breaks the protocol.
    #[inline(always)]
    pub fn take(&mut self) -> Result<WriteGrant<'_, 'm, M>, TripleError> {
        // The client's fields in locals before the first atomic access: after an `Acquire`
        // load (or any store to the region) the compiler would load them again.
        let (mem, layout, epoch, next_seq) = (self.mem, self.layout, self.epoch, self.next_seq);
        // The common case straight-line: the first candidate (the buffer after the newest,
        // never the newest: N >= 3) is FREE or a stale READY.
        let (i, newest_seq) = match self.newest {
            Some((b, s)) => (after(b, layout.buffers), s),
            None => (0, 0),
        };
        let mut found = None;
        if next_seq < MAX_SEQ {
            let sw = layout.state_word(i);
            // Acquire, and the stores below: as in `take_fast`.
            // SAFETY: `i < N` (`after` of the newest buffer, which is below N, or 0), and the
            // layout was validated against `mem.len()` in `attach` (`TripleLayout::read`:
            // `region_len <= 8 mem.len()`), so buffer i's state line, in the region's state
            // page, is in bounds.
            let v = unsafe { mem.load_in_bounds(sw, Ordering::Acquire) };
            // `READY(s)` with `1 <= s < newest_seq`, in one comparison: the READY tag's values
            // are contiguous, and every other tag lies outside the range.
            let stale = v.wrapping_sub(ready(1)) < newest_seq.saturating_sub(1);
            if v == 0 || stale {
                // SAFETY: as for the load (same word).
                unsafe { mem.store_in_bounds(sw, writing(epoch), Ordering::Release) };
                if stale {
                    mem.fence(Ordering::Release);
                }
                found = Some(i);
            }
        }
        // The slow path returns a buffer index or a one-byte error, so that the grant is built
        // in one place (a `Result<WriteGrant, TripleError>` from two places is assembled in
        // memory).
        let buffer = match found {
            Some(i) => i,
            None => self.take_slow()?,
        };
        Ok(WriteGrant {
            client: self,
            buffer,
            seq: next_seq,
        })
    }

    /// The rest of [`take`](Self::take): exhausted seqs, the whole pass of loads, the
    /// fallback. Returns the buffer it marked WRITING.
    #[cold]
    #[inline(never)]
    fn take_slow(&mut self) -> Result<u64, TakeFailed> {
        if self.next_seq >= MAX_SEQ {
            return Err(TakeFailed::Exhausted);
        }
        match self.take_fast() {
            Some(i) => Ok(i),
            None => self.take_fallback().ok_or(TakeFailed::NoFreeBuffer),
        }
    }

    /// The newest buffer (never taken) and the seq a READY candidate must be below.
    fn skip(&self) -> (u64, u64) {
        self.newest.unwrap_or((self.layout.buffers, 0))
    }

    /// The candidates in take order: `skip + 1, skip + 2, …` modulo N, `skip` left out
    /// (from 0 when nothing was published, `skip == N`).
    fn candidates(&self, skip: u64) -> Candidates {
        let n = self.layout.buffers;
        Candidates {
            next: if skip + 1 < n { skip + 1 } else { 0 },
            // Starting after `skip`, N - 1 steps never reach it.
            left: if skip < n { n - 1 } else { n },
            n,
        }
    }

    /// One pass of loads: marks the first FREE or stale READY candidate WRITING with a store.
    fn take_fast(&self) -> Option<u64> {
        let (skip, newest_seq) = self.skip();
        for i in self.candidates(skip) {
            let sw = self.layout.state_word(i);
            // Acquire: pairs with the host's Release compare-exchanges (a release, or a new
            // host undoing a dead host's freeze), so a copy the host validated happens before
            // our writes into the buffer.
            let v = self.mem.load(sw, Ordering::Acquire);
            // The WRITING stores below are Release: a host scan that reads WRITING also sees
            // this client's earlier publications (its next pass over the words finds them).
            match BufferState::decode(v) {
                // No fence: the host never freezes or copies a FREE buffer.
                BufferState::Free => {
                    self.mem.store(sw, writing(self.epoch), Ordering::Release);
                }
                // A stale READY: a host may freeze it at any moment — also between our load
                // and this store, which then overwrites its FROZEN. That is allowed (module
                // docs, "The reclaim race"): the host validates its copy by its release
                // compare-exchange, which fails once this store is ordered before it, and
                // drops the copy. The Release fence after the store orders every write of
                // ours into the buffer after it, so a host copy that read any of them (and then
                // issues its Acquire fence) finds WRITING, not its FROZEN.
                BufferState::Ready { seq } if seq < newest_seq => {
                    self.mem.store(sw, writing(self.epoch), Ordering::Release);
                    self.mem.fence(Ordering::Release);
                }
                _ => continue,
            }
            return Some(i);
        }
        None
    }

    /// The fallback when the fast pass saw every candidate FROZEN (or WRITING or invalid):
    /// its loads may have read values the host already replaced (a released freeze), so the
    /// state words are read again by compare-exchange, which reads the newest value.
    /// `SeqCst` fence first: every host scan after it in the single total order sees our
    /// last publication (C11's fence rule), so from here on the host freezes a stale buffer
    /// only from a scan before it — at most one freeze per host incarnation during this take
    /// (module docs), and the first pass finds a buffer unless the host restarts.
    #[cold]
    #[inline(never)]
    fn take_fallback(&self) -> Option<u64> {
        let (skip, newest_seq) = self.skip();
        let epoch = writing(self.epoch);
        self.mem.fence(Ordering::SeqCst);
        for _ in 0..TAKE_PASSES {
            for i in self.candidates(skip) {
                let sw = self.layout.state_word(i);
                // SeqCst (both ways): reads the newest value of the word, and takes part in
                // the total order with the host's SeqCst scan and compare-exchanges. No fence
                // after it: a compare-exchange from READY cannot land between a host's freeze
                // and its release (it would find FROZEN), so there is no reclaim race here.
                let won = match self.mem.compare_exchange(
                    sw,
                    0,
                    epoch,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => true,
                    Err(v) => match BufferState::decode(v) {
                        BufferState::Ready { seq } if seq < newest_seq => self
                            .mem
                            .compare_exchange(sw, v, epoch, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok(),
                        _ => false,
                    },
                };
                if won {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Takes a buffer, writes `bytes` at its start and publishes it; returns the seq.
    ///
    /// # Errors
    ///
    /// As [`TripleClient::take`] and [`WriteGrant::write`].
    pub fn publish(&mut self, bytes: &[u8]) -> Result<u64, TripleError> {
        let mut g = self.take()?;
        g.write(0, bytes)?;
        Ok(g.publish())
    }

    /// Checks the client's invariants against the region (tests, proptest, fuzzing): every
    /// state word decodes; no WRITING word (no grant is open); at most one FROZEN word; the
    /// newest buffer is `READY(newest)` or FROZEN with seq word `newest`; no other READY is as
    /// new; `next_seq` is above the newest seq.
    ///
    /// # Errors
    ///
    /// A description of the first violated invariant.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let newest_seq = self.newest.map_or(0, |(_, s)| s);
        if self.next_seq <= newest_seq {
            return Err("next_seq is not above the newest seq");
        }
        let mut frozen = 0;
        for i in 0..self.layout.buffers {
            let v = self.mem.load(self.layout.state_word(i), Ordering::Relaxed);
            let seq_word = self.mem.load(self.layout.seq_word(i), Ordering::Relaxed);
            let is_newest = self.newest.is_some_and(|(b, _)| b == i);
            match BufferState::decode(v) {
                BufferState::Invalid(_) => return Err("a state word is invalid"),
                BufferState::Writing { .. } => return Err("a buffer is WRITING without a grant"),
                BufferState::Frozen { .. } => {
                    frozen += 1;
                    if is_newest && seq_word != newest_seq {
                        return Err("the newest buffer is FROZEN with another seq word");
                    }
                }
                BufferState::Ready { seq } => {
                    if is_newest && seq != newest_seq {
                        return Err("the newest buffer is READY with another seq");
                    }
                    if !is_newest && seq >= newest_seq {
                        return Err("a READY buffer is not older than the newest");
                    }
                }
                BufferState::Free => {
                    if is_newest {
                        return Err("the newest buffer is FREE");
                    }
                }
            }
        }
        if frozen > 1 {
            return Err("more than one buffer is FROZEN");
        }
        Ok(())
    }
}

/// Why [`TripleClient::take`]'s slow path found no buffer (one byte, so that `take`'s
/// common path does not carry a whole [`TripleError`]).
#[derive(Debug, Clone, Copy)]
enum TakeFailed {
    Exhausted,
    NoFreeBuffer,
}

impl From<TakeFailed> for TripleError {
    #[inline]
    fn from(e: TakeFailed) -> Self {
        match e {
            TakeFailed::Exhausted => TripleError::Exhausted,
            TakeFailed::NoFreeBuffer => TripleError::NoFreeBuffer,
        }
    }
}

/// The take order over the buffers ([`TripleClient::candidates`]): wraps without a division.
#[derive(Debug)]
struct Candidates {
    /// The next buffer (`< n`).
    next: u64,
    /// Buffers still to visit.
    left: u64,
    /// The buffer count N.
    n: u64,
}

impl Iterator for Candidates {
    type Item = u64;

    #[inline]
    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.next;
        self.next = if i + 1 == self.n { 0 } else { i + 1 };
        Some(i)
    }
}

/// A buffer taken for writing: only this grant can write it (its state word is
/// `WRITING(client epoch)`, which no host touches). Publish with [`WriteGrant::publish`];
/// dropping it unpublished returns the buffer to FREE.
///
/// Only [`TripleClient::take`] constructs a grant, in one place (a grant returned from two
/// places was assembled on the stack and copied with wider loads than its stores — a
/// store-forwarding stall on every publication, benches/README.md).
#[derive(Debug)]
#[must_use = "a write grant publishes nothing until `publish` is called"]
pub struct WriteGrant<'c, 'm, M: WordMemory + ?Sized> {
    client: &'c mut TripleClient<'m, M>,
    /// The taken buffer: `< N` of the client's layout, which was validated against
    /// `mem.len()` in `attach`, so the buffer's state line is in bounds; not the newest.
    buffer: u64,
    /// The seq `publish` will publish (`< MAX_SEQ`).
    seq: u64,
}

impl<M: WordMemory + ?Sized> WriteGrant<'_, '_, M> {
    /// The buffer's index.
    pub fn buffer(&self) -> u64 {
        self.buffer
    }

    /// The seq [`publish`](WriteGrant::publish) will publish.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The buffer size B.
    pub fn len(&self) -> u64 {
        self.client.layout.buffer_size
    }

    /// Always `false` (buffers are at least a page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes `bytes` at `offset` of the buffer (`Relaxed` word stores; published by
    /// [`publish`](WriteGrant::publish)).
    ///
    /// # Errors
    ///
    /// [`TripleError::OutOfBounds`] if the write does not fit.
    #[inline]
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<(), TripleError> {
        let at = self.client.checked_at(self.buffer, offset, bytes.len())?;
        store_bytes(self.client.mem, at, bytes);
        Ok(())
    }

    /// Writes `bytes` at `offset` of the buffer with a plain `memcpy` on real memory
    /// ([`WordMemory::store_le_bytes_exclusive`]): the same bytes as [`write`](WriteGrant::write),
    /// at `memcpy` speed. Published by [`publish`](WriteGrant::publish) like `write`.
    ///
    /// # Safety
    ///
    /// No other thread of this process may access this buffer's words while the call runs.
    /// The protocol keeps a host (in any process) off a WRITING buffer; this contract covers
    /// code of this process outside the protocol, which could otherwise race with the
    /// non-atomic writes.
    ///
    /// # Errors
    ///
    /// [`TripleError::OutOfBounds`] if the write does not fit.
    #[inline]
    pub unsafe fn write_exclusive(
        &mut self,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), TripleError> {
        let at = self.client.checked_at(self.buffer, offset, bytes.len())?;
        if at % 8 != 0 {
            store_bytes(self.client.mem, at, bytes);
            return Ok(());
        }
        let (whole, tail) = bytes.split_at(bytes.len() / 8 * 8);
        // SAFETY: the words lie in this grant's buffer (checked above), which no host touches
        // while it is WRITING, and the caller guarantees no other thread of this process does.
        unsafe { self.client.mem.store_le_bytes_exclusive(at / 8, whole) };
        // A partial last word is merged like `write` does (never zero-padded).
        if !tail.is_empty() {
            store_bytes(self.client.mem, at + whole.len(), tail);
        }
        Ok(())
    }

    /// Reads back `out.len()` bytes at `offset` of the buffer (what this grant wrote, or the
    /// buffer's unspecified old contents).
    ///
    /// # Errors
    ///
    /// [`TripleError::OutOfBounds`] if the range does not fit.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), TripleError> {
        let at = self.client.checked_at(self.buffer, offset, out.len())?;
        load_bytes(self.client.mem, at, out);
        Ok(())
    }

    /// Publishes the buffer as `READY(seq)` and returns the seq. Wait-free: two stores and a
    /// hint store, no locked instruction (the host never writes a WRITING word).
    #[inline]
    pub fn publish(self) -> u64 {
        let (mem, layout, buffer, seq) =
            (self.client.mem, self.client.layout, self.buffer, self.seq);
        // SAFETY: the buffer's state line is in bounds (field invariant of `buffer`).
        unsafe { mem.store_in_bounds(layout.seq_word(buffer), seq, Ordering::Relaxed) };
        // Release: publishes the buffer's words and its seq word stored above (pairs with the
        // host's Acquire scan and freeze, and the Acquire loads in `attach`). A plain `mov`
        // on x86: the publication has no locked instruction.
        // SAFETY: as for the seq word (same state line).
        unsafe { mem.store_in_bounds(layout.state_word(buffer), ready(seq), Ordering::Release) };
        // SAFETY: `NEXT_SEQ` lies in the header page, inside every validated layout.
        unsafe { mem.store_in_bounds(words::NEXT_SEQ, seq + 1, Ordering::Relaxed) };
        self.client.newest = Some((buffer, seq));
        self.client.next_seq = seq + 1;
        // Not dropped: the buffer stays READY (a grant holds nothing else to release).
        core::mem::forget(self);
        seq
    }
}

impl<M: WordMemory + ?Sized> Drop for WriteGrant<'_, '_, M> {
    fn drop(&mut self) {
        let sw = self.client.layout.state_word(self.buffer);
        // Relaxed: the buffer goes back to FREE, which only this client reads or writes.
        // SAFETY: the buffer's state line is in bounds (field invariant of `buffer`).
        unsafe { self.client.mem.store_in_bounds(sw, 0, Ordering::Relaxed) };
    }
}
