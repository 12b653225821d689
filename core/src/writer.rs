//! The writer: the client's single, wait-free committer (DESIGN §5.1).
//!
//! A commit is bounded by `E` eviction steps and the payload length: no syscalls, no locks, no
//! waiting for the host.

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::Ordering;

use crate::claim::{Claim, ClaimError, ClaimId};
use crate::descriptor::{Descriptor, MAX_SEQ, MAX_STREAM};
use crate::format::{desc, word};
use crate::layout::{Hints, Layout, LayoutError, LayoutRequest};
use crate::memory::{store_bytes, WordMemory};
use crate::reader::Region;
use crate::units::{UnitError, UnitGrant, UnitTable};

/// Why a commit could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitError {
    /// The payload is empty or larger than the data ring.
    PayloadSize {
        /// Requested length.
        len: usize,
        /// The data ring size S.
        max: u64,
    },
    /// The payload given to [`Transaction::commit`] is longer than the transaction reserved.
    ExceedsReservation {
        /// Payload length.
        len: usize,
        /// Reserved length.
        reserved: usize,
    },
    /// Sequence numbers or stream offsets are exhausted; the region must be re-initialised.
    Exhausted,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CommitError::PayloadSize { len, max } => write!(
                f,
                "payload of {len} bytes does not fit: it must be 1 to {max} bytes (the data ring size)"
            ),
            CommitError::ExceedsReservation { len, reserved } => write!(
                f,
                "payload of {len} bytes exceeds the {reserved} bytes this transaction reserved"
            ),
            CommitError::Exhausted => write!(
                f,
                "sequence numbers or stream offsets of this region are exhausted; re-initialise it"
            ),
        }
    }
}

/// Why a writer could not attach to or initialise a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttachError {
    /// The header is missing or invalid.
    Layout(LayoutError),
    /// `init` was asked to configure a region that already has a header.
    AlreadyConfigured,
    /// The region is configured with another layout than the one requested.
    Mismatch {
        /// The layout found in the region.
        found: Layout,
        /// The layout requested.
        requested: Layout,
    },
    /// The region's sequence numbers are exhausted; it must be re-initialised.
    Exhausted,
    /// Another writer holds the region's claim (one writer per region, [`claim`](crate::claim)).
    Claimed {
        /// The holder's id (under the documented encoding, its pid: [`ClaimId::pid`]).
        holder: ClaimId,
    },
}

impl From<LayoutError> for AttachError {
    fn from(e: LayoutError) -> Self {
        AttachError::Layout(e)
    }
}

impl From<ClaimError> for AttachError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Claimed { holder } => AttachError::Claimed { holder },
            ClaimError::TooSmall { words } => AttachError::Layout(LayoutError::TooSmall {
                needed: crate::PAGE_SIZE,
                available: (words as u64).saturating_mul(8),
            }),
        }
    }
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Layout(e) => e.fmt(f),
            AttachError::AlreadyConfigured => {
                write!(f, "region is already configured; attach to it instead")
            }
            AttachError::Mismatch { found, requested } => write!(
                f,
                "region is configured with {} entries and a {}-byte data ring, but {} entries and {} bytes were requested",
                found.entries, found.data_size, requested.entries, requested.data_size
            ),
            AttachError::Exhausted => write!(
                f,
                "the region's sequence numbers are exhausted; re-initialise it"
            ),
            AttachError::Claimed { holder } => ClaimError::Claimed { holder: *holder }.fmt(f),
        }
    }
}

/// The single writer of a region.
///
/// Exactly one writer may exist per region at a time (across all processes): the protocol's
/// soundness rests on it, and the region's [claim](crate::claim) enforces it — every
/// constructor takes the claim with the caller's [`ClaimId`] before it touches anything else,
/// a second writer is refused with [`AttachError::Claimed`] naming the holder, and dropping
/// the writer releases the claim. The writer keeps its cursor privately and reads back only
/// its own descriptors.
#[derive(Debug)]
pub struct Writer<'m, M: WordMemory + ?Sized> {
    region: Region<'m, M>,
    /// The region's claim, held for the writer's whole life (released on drop).
    claim: Claim<'m, M>,
    /// Next sequence number to commit; `1 <= next_seq <= MAX_SEQ`.
    next_seq: u64,
    /// Oldest sequence number that may be live. Seqs in `oldest..=newest` are live or gaps
    /// (empty slots), `newest - oldest < E`; no other seq is live. `oldest > newest` when
    /// nothing is live.
    oldest: u64,
    /// Newest committed (or recovered) seq, 0 if none; `newest < next_seq`.
    newest: u64,
    /// Stream offset just past the newest payload; `head <= MAX_STREAM`.
    head: u64,
    /// Stream offset of entry `newest` while it is live (0 if none), `<= MAX_STREAM`: spares
    /// the eviction check a load when the oldest live entry is the newest (a ring that holds
    /// one payload).
    newest_offset: u64,
}

/// Refuses memory whose header is configured but not a valid queue region, before the claim
/// is read: there the claim word is as meaningless as the rest, and "claimed by pid N" would
/// be a false report. Reads only (a magic stored by a concurrent `init` is stored last, with
/// Release, so a header read after it is whole); the claimed path reads the header again.
fn refuse_foreign<M: WordMemory + ?Sized>(mem: &M) -> Result<(), AttachError> {
    match Layout::read(mem) {
        Ok(_) | Err(LayoutError::Unconfigured) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl<'m, M: WordMemory + ?Sized> Writer<'m, M> {
    /// Takes the region's claim for `id`, then configures the fresh region (no magic in the
    /// header: never configured, or an init cut short) with `request` and returns its writer.
    ///
    /// The claim comes first, so two concurrent `init`s cannot both configure the region.
    ///
    /// # Errors
    ///
    /// [`AttachError::Claimed`] if another writer holds the region (nothing is touched);
    /// [`AttachError::AlreadyConfigured`] if the header has a magic, or a [`LayoutError`] if
    /// the request does not fit the memory.
    pub fn init(mem: &'m M, request: LayoutRequest, id: ClaimId) -> Result<Self, AttachError> {
        let claim = Claim::take(mem, id)?;
        Self::init_claimed(claim, request)
    }

    /// [`Writer::init`] with the claim already held.
    fn init_claimed(claim: Claim<'m, M>, request: LayoutRequest) -> Result<Self, AttachError> {
        let mem = claim.mem();
        let available = (mem.len() as u64).saturating_mul(8);
        let layout = Layout::new(available, request)?;
        match Layout::read(mem) {
            Err(LayoutError::Unconfigured) => {}
            _ => return Err(AttachError::AlreadyConfigured),
        }
        // Empty every descriptor and the hints before publishing the header.
        for slot in 0..layout.entries {
            let w = layout.desc_word(slot);
            for k in 0..desc::WORDS {
                mem.store(w + k, 0, Ordering::Relaxed);
            }
        }
        mem.store(word::NEXT_SEQ, 1, Ordering::Relaxed);
        mem.store(word::DATA_HEAD, 0, Ordering::Relaxed);
        mem.store(word::EPOCH, 1, Ordering::Relaxed);
        layout.write_header(mem);
        Ok(Writer {
            region: Region::with_layout(mem, layout),
            claim,
            next_seq: 1,
            oldest: 1,
            newest: 0,
            head: 0,
            newest_offset: 0,
        })
    }

    /// Takes the region's claim for `id`, then attaches to the configured region, or
    /// initialises it with `request` if it is fresh.
    ///
    /// # Errors
    ///
    /// As [`Writer::init`] and [`Writer::attach`]; [`AttachError::Mismatch`] if the region
    /// is configured with another layout.
    pub fn open_or_init(
        mem: &'m M,
        request: LayoutRequest,
        id: ClaimId,
    ) -> Result<Self, AttachError> {
        refuse_foreign(mem)?;
        let claim = Claim::take(mem, id)?;
        match Layout::read(mem) {
            Err(LayoutError::Unconfigured) => Writer::init_claimed(claim, request),
            Err(e) => Err(e.into()),
            Ok(found) => {
                let requested = Layout::new(found.region_len, request)?;
                if found != requested {
                    return Err(AttachError::Mismatch { found, requested });
                }
                Writer::attach_claimed(claim)
            }
        }
    }

    /// Attaches to a configured region (after a client restart or a restore), recovering the
    /// cursor from the descriptors and the header hints.
    ///
    /// The newest valid entry and every older valid entry that lies before it in the stream
    /// (within one ring's span) stay live; every other descriptor is emptied. The next seq is
    /// above both the newest entry and the `next_seq` hint, so seqs never repeat. The epoch
    /// hint is incremented. Bounded by `E`; the region's contents are treated as hostile.
    ///
    /// The region's claim is taken for `id` first; after a reclaim (the previous holder died)
    /// this recovery is what makes the dead writer's half-done work safe to build on.
    ///
    /// # Errors
    ///
    /// [`AttachError::Claimed`] if another writer holds the region (nothing is touched); a
    /// [`LayoutError`] for a missing or invalid header; [`AttachError::Exhausted`].
    pub fn attach(mem: &'m M, id: ClaimId) -> Result<Self, AttachError> {
        refuse_foreign(mem)?;
        let claim = Claim::take(mem, id)?;
        Self::attach_claimed(claim)
    }

    /// [`Writer::attach`] with the claim already held.
    fn attach_claimed(claim: Claim<'m, M>) -> Result<Self, AttachError> {
        let mem = claim.mem();
        let region = Region::open(mem)?;
        let layout = *region.layout();
        let hints = Hints::read(mem);
        let newest = region.newest();
        let top = newest.map_or(0, |d| d.seq);
        let next_seq = hints.next_seq.max(top + 1).max(1);
        if next_seq > MAX_SEQ {
            return Err(AttachError::Exhausted);
        }
        let mut oldest = next_seq;
        // The newest entry's end: entries lie in stream order, so nothing kept ends later.
        let head = newest.map_or(0, |d| d.end());
        // Walk the window of seqs the E slots can hold, newest first: slot of `newest - back`
        // for back in 0..E covers every slot once. Keep an entry if it is the window's seq and
        // lies before the previously kept one in the stream, within one ring of the newest's
        // end; empty every other slot.
        let mut bound = newest.map_or(0, |d| d.offset);
        let low = newest.map_or(0, |d| d.end().saturating_sub(layout.data_size));
        for back in 0..layout.entries {
            let slot = top.wrapping_sub(1).wrapping_sub(back) & (layout.entries - 1);
            let seq = top.checked_sub(back).filter(|&s| s >= 1);
            let kept = match (seq, region.read_descriptor(slot)) {
                (Some(seq), Some(d)) if d.seq == seq => {
                    let ok = back == 0 || (d.end() <= bound && d.offset >= low);
                    if ok {
                        bound = d.offset;
                        oldest = seq;
                    }
                    ok
                }
                _ => false,
            };
            if !kept {
                let w = layout.desc_word(slot);
                if mem.load(w + desc::SEQ, Ordering::Relaxed) != 0 {
                    // Relaxed: an eviction, ordered before later data stores by the Release
                    // fence in `begin`.
                    mem.store(w + desc::SEQ, 0, Ordering::Relaxed);
                }
            }
        }
        let epoch = hints.epoch.wrapping_add(1);
        mem.store(word::NEXT_SEQ, next_seq, Ordering::Relaxed);
        mem.store(word::DATA_HEAD, head, Ordering::Relaxed);
        mem.store(word::EPOCH, epoch, Ordering::Relaxed);
        Ok(Writer {
            region,
            claim,
            next_seq,
            oldest,
            newest: top,
            head,
            newest_offset: newest.map_or(0, |d| d.offset),
        })
    }

    /// The region this writer commits to.
    pub fn region(&self) -> &Region<'m, M> {
        &self.region
    }

    /// The layout of the region.
    pub fn layout(&self) -> &Layout {
        self.region.layout()
    }

    /// The id this writer holds the region's claim with.
    pub fn claim_id(&self) -> ClaimId {
        self.claim.id()
    }

    /// The sequence number the next commit will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number that may still be live (`next_seq()` when none is).
    pub fn oldest_live(&self) -> u64 {
        self.oldest
    }

    /// Number of tail units of `unit_size` bytes that fit in the tail.
    pub fn unit_count(&self, unit_size: usize) -> usize {
        if unit_size == 0 {
            return 0;
        }
        usize::try_from(self.layout().tail_len / unit_size as u64).unwrap_or(usize::MAX)
    }

    /// The descriptor slot of `seq`, for stores without bounds checks.
    #[inline(always)]
    fn desc_slot(&self, seq: u64) -> DescSlot<'m, M> {
        let layout = self.layout();
        DescSlot {
            mem: self.region.mem(),
            // The `Region` invariant: its layout was validated against `mem.len()` (by
            // `Layout::read` in `attach`, by `Layout::new(available, ..)` in `init`), so its
            // descriptor ring, `entries` descriptors of `desc::WORDS` words from `desc_offset`,
            // lies inside the memory; `slot_of` masks with `entries - 1` (`entries` is a
            // validated power of two), so the slot is `< entries`: `DescSlot`'s invariant.
            first: layout.desc_word(layout.slot_of(seq)),
        }
    }

    /// Stores the header hint `w` ([`word::NEXT_SEQ`] or [`word::DATA_HEAD`]) without a
    /// bounds check.
    #[inline(always)]
    fn store_hint(&self, w: usize, v: u64) {
        // Constants at every call site: folded away.
        assert!(w == word::NEXT_SEQ || w == word::DATA_HEAD);
        // SAFETY: the hints lie in the header page, and a validated layout (`Region`
        // invariant) spans at least the header page, so `w < PAGE_SIZE / 8 <= mem.len()`.
        // Relaxed: hints, read by `attach` after a restart or a restore only.
        unsafe { self.region.mem().store_in_bounds(w, v, Ordering::Relaxed) }
    }

    /// Reads this writer's own descriptor for `seq`, if it is live (not a gap).
    fn own(&self, seq: u64) -> Option<Descriptor> {
        let layout = self.layout();
        let w = layout.desc_word(layout.slot_of(seq));
        let mem = self.region.mem();
        // Relaxed: the writer reads back its own stores.
        if mem.load(w + desc::SEQ, Ordering::Relaxed) != seq {
            return None;
        }
        Some(Descriptor {
            seq,
            offset: mem.load(w + desc::OFFSET, Ordering::Relaxed),
            length: mem.load(w + desc::LENGTH, Ordering::Relaxed),
        })
    }

    /// The payload offset of this writer's own live entry `seq`, if it is not a gap.
    #[inline]
    fn own_offset(&self, seq: u64) -> Option<u64> {
        if seq == self.newest {
            // Only asked while `oldest <= newest`, i.e. while the newest entry is live.
            return Some(self.newest_offset);
        }
        let slot = self.desc_slot(seq);
        // Relaxed: the writer reads back its own stores.
        (slot.load(desc::SEQ, Ordering::Relaxed) == seq)
            .then(|| slot.load(desc::OFFSET, Ordering::Relaxed))
    }

    /// Empties the slot of the oldest seq (storing 0 into a gap's empty slot is harmless) and
    /// advances `oldest`.
    ///
    /// Callers keep `oldest <= newest`, so the slot holds `oldest` or nothing (a gap): every
    /// other seq of the window `oldest..=newest` has another slot, and older seqs were emptied
    /// when they were evicted (or by `attach`). Storing 0 unconditionally is therefore safe and
    /// spares a load of a cold line.
    fn evict_oldest(&mut self) {
        // Relaxed: ordered before any later data store by the Release fence in `begin`.
        self.desc_slot(self.oldest)
            .store(desc::SEQ, 0, Ordering::Relaxed);
        self.oldest += 1;
    }

    /// Evicts every live entry older than `seq`, but never the newest entry. Frees units
    /// retired as of `seq` or earlier for the next transaction. Bounded by `E`.
    pub fn evict_before(&mut self, seq: u64) {
        let limit = seq.min(self.newest);
        while self.oldest < limit {
            self.evict_oldest();
        }
    }

    /// Starts a commit of up to `len` payload bytes: evicts what the new entry displaces,
    /// then fences, so the transaction may write its payload and tail units.
    ///
    /// # Errors
    ///
    /// [`CommitError::PayloadSize`] unless `1 <= len <= S`; [`CommitError::Exhausted`].
    // `inline`: a crate that calls both `begin` (transactions) and `commit` otherwise gets
    // `begin` and `Transaction::commit` out of line inside `commit`; measured through the C ABI
    // (which calls both), that doubled an 8-byte commit (`compare --only abi`).
    #[inline]
    pub fn begin(&mut self, len: usize) -> Result<Transaction<'_, 'm, M>, CommitError> {
        let (seq, at, end) = self.place(len)?;
        self.evict_for(seq, end);
        // Release: every eviction above (and in `evict_before`) is ordered before the payload
        // and tail stores that follow; pairs with the host's Acquire fence after its copy and
        // with the Acquire fence in `read_descriptor`.
        self.region.mem().fence(Ordering::Release);
        Ok(Transaction {
            writer: self,
            seq,
            at,
            reserved: len,
        })
    }

    /// Commits `payload` as the next entry and returns its seq. Wait-free.
    ///
    /// # Errors
    ///
    /// As [`Writer::begin`].
    // `inline(always)`: the body is `place`, the one-entry eviction and `publish`, with the
    // general eviction loop out of line (`evict_for_slow`), so inlined into the caller's loop
    // it costs no call frame and returns no `Result` through memory. With plain `inline`
    // rustc kept it out of line: 102 -> 120 instructions per 8 B hot commit, 143 -> 165 at
    // 64 B (callgrind, benches/README.md "where the fixed cost of a small commit ... goes").
    #[inline(always)]
    pub fn commit(&mut self, payload: &[u8]) -> Result<u64, CommitError> {
        // The same steps as `begin(payload.len())?.commit(payload)`, without the
        // reservation's re-checks (the reservation is `payload.len()` itself).
        let (seq, at, end) = self.place(payload.len())?;
        self.evict_for(seq, end);
        // Release: as in `begin` (the evictions before the payload stores).
        self.region.mem().fence(Ordering::Release);
        self.publish(seq, at, payload);
        Ok(seq)
    }

    /// The next seq and where its payload of `len` bytes goes: `(seq, at, end)`, the payload
    /// occupying stream bytes `at..end` (8-aligned, contiguous in the ring: it skips to the
    /// ring start if it would cross the end; the skipped bytes are dead).
    ///
    /// # Errors
    ///
    /// [`CommitError::PayloadSize`] unless `1 <= len <= S`; [`CommitError::Exhausted`] if the
    /// seqs or the stream offsets (`end <= MAX_STREAM`) run out.
    #[inline(always)]
    fn place(&self, len: usize) -> Result<(u64, u64, u64), CommitError> {
        let s = self.layout().data_size;
        let n = len as u64;
        // `1 <= n <= s` in one compare (`n = 0` wraps to `u64::MAX`).
        if n.wrapping_sub(1) >= s {
            return Err(CommitError::PayloadSize { len, max: s });
        }
        let seq = self.next_seq;
        let head = self.head;
        // `head <= MAX_STREAM` is an invariant; checked, so that the arithmetic below cannot
        // overflow even if it were broken (`s <= 2^40`, a validated layout): `at <= 2^62 + 7`,
        // `end < 2^62 + 2^41`.
        if seq >= MAX_SEQ || head > MAX_STREAM {
            return Err(CommitError::Exhausted);
        }
        let mut at = head.wrapping_add(7) & !7;
        let pos = at & (s - 1);
        if pos + n > s {
            at += s - pos;
        }
        let end = at + n;
        if end > MAX_STREAM {
            return Err(CommitError::Exhausted);
        }
        Ok((seq, at, end))
    }

    /// Evicts what a new entry `seq` occupying stream bytes up to `end` displaces: the new
    /// seq's slot, and every entry whose bytes it overlaps (entries lie in stream order, so
    /// that is a prefix of the live ones). Bounded by `E`. The caller fences afterwards.
    #[inline(always)]
    fn evict_for(&mut self, seq: u64, end: u64) {
        let oldest = self.oldest;
        if oldest >= seq {
            return;
        }
        let layout = self.layout();
        // The common case of a ring that holds one payload: the only live entry is the
        // newest, within the window, its offset cached. This is `evict_for_slow`'s loop for
        // that case, unrolled: evicting it makes `oldest > newest`, which sets `oldest = seq`.
        if oldest == self.newest && seq - oldest < layout.entries {
            // The ring holds stream bytes [end - S, end): `offset < end - S`, without the
            // saturation (no overflow: `newest_offset <= MAX_STREAM = 2^62`, `S <= 2^40`).
            if self.newest_offset + layout.data_size < end {
                self.evict_oldest();
                self.oldest = seq;
            }
            return;
        }
        self.evict_for_slow(seq, end);
    }

    /// [`evict_for`](Writer::evict_for) in general: several live entries, gaps, or a window
    /// wider than `E`.
    #[inline(never)]
    fn evict_for_slow(&mut self, seq: u64, end: u64) {
        let layout = *self.layout();
        while self.oldest < seq {
            if self.oldest > self.newest {
                // Nothing is live: no step per gap (the window may be wider than E after an
                // attach whose next_seq hint was far ahead).
                self.oldest = seq;
                break;
            }
            let must = seq - self.oldest >= layout.entries
                || match self.own_offset(self.oldest) {
                    // The ring holds stream bytes [end - S, end).
                    Some(offset) => offset < end.saturating_sub(layout.data_size),
                    // A gap holds nothing: step over it.
                    None => true,
                };
            if !must {
                break;
            }
            self.evict_oldest();
        }
    }

    /// Stores `payload` at stream offset `at` (placed by `place`, evicted and fenced), then
    /// the descriptor of `seq` and the hints: the commit's publication.
    #[inline(always)]
    fn publish(&mut self, seq: u64, at: u64, payload: &[u8]) {
        let len = payload.len() as u64;
        // Whole words: `at` is 8-aligned and the reserved space runs to the next multiple of 8
        // (the next payload is aligned up), so the zero padding of the last word is ours.
        let first = self.layout().ring_byte(at) / 8;
        // Computed once, before the atomic stores (the compiler re-loads the layout after them).
        let slot = self.desc_slot(seq);
        self.region.mem().store_le_bytes(first, payload);
        slot.store(desc::OFFSET, at, Ordering::Relaxed);
        slot.store(desc::LENGTH, len, Ordering::Relaxed);
        // Release: publishes the payload, tail-unit and descriptor stores above; pairs with the
        // Acquire load of seq in `read_descriptor`.
        slot.store(desc::SEQ, seq, Ordering::Release);
        self.next_seq = seq + 1;
        self.newest = seq;
        self.newest_offset = at;
        self.head = at + len;
        self.store_hint(word::NEXT_SEQ, seq + 1);
        self.store_hint(word::DATA_HEAD, at + len);
    }

    /// Checks the writer's invariants against the region (for tests and fuzzing).
    ///
    /// # Errors
    ///
    /// A description of the first violated invariant.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let layout = self.layout();
        if self.newest >= self.next_seq {
            return Err("newest is not below next_seq");
        }
        if self.oldest <= self.newest && self.newest - self.oldest >= layout.entries {
            return Err("oldest..=newest spans more than E seqs");
        }
        let mut prev_end = None::<u64>;
        let mut first_off = None;
        for seq in self.oldest..=self.newest {
            if let Some(d) = self.own(seq) {
                if !d.is_valid_for(layout, layout.slot_of(seq)) {
                    return Err("a live descriptor is invalid");
                }
                if prev_end.is_some_and(|e| d.offset < e) {
                    return Err("live payloads are not in stream order");
                }
                prev_end = Some(d.end());
                first_off.get_or_insert(d.offset);
            }
        }
        if let (Some(a), Some(e)) = (first_off, prev_end) {
            if e - a > layout.data_size {
                return Err("live payloads span more than the data ring");
            }
            if e > self.head {
                return Err("a live payload ends past the head");
            }
        }
        for slot in 0..layout.entries {
            if let Some(d) = self.region.read_descriptor(slot) {
                if d.seq < self.oldest || d.seq > self.newest {
                    return Err("a valid descriptor lies outside the live window");
                }
            }
        }
        Ok(())
    }
}

/// One descriptor slot of a writer's region: its stores skip the bounds check (four per
/// commit, callgrind in benches/README.md), and so do its loads (two per step of the general
/// eviction loop).
struct DescSlot<'m, M: WordMemory + ?Sized> {
    mem: &'m M,
    /// The slot's first word: `first + desc::WORDS <= mem.len()` (made only by
    /// [`Writer::desc_slot`], from the region's validated layout).
    first: usize,
}

impl<M: WordMemory + ?Sized> DescSlot<'_, M> {
    /// Stores `v` into field `field` (a [`desc`] offset) of the slot.
    #[inline(always)]
    fn store(&self, field: usize, v: u64, order: Ordering) {
        // A constant at every call site: folded away.
        assert!(field < desc::WORDS);
        // SAFETY: `first + field < first + desc::WORDS <= mem.len()` (the field invariant).
        unsafe { self.mem.store_in_bounds(self.first + field, v, order) }
    }

    /// Loads field `field` (a [`desc`] offset) of the slot.
    #[inline(always)]
    fn load(&self, field: usize, order: Ordering) -> u64 {
        // A constant at every call site: folded away.
        assert!(field < desc::WORDS);
        // SAFETY: `first + field < first + desc::WORDS <= mem.len()` (the field invariant).
        unsafe { self.mem.load_in_bounds(self.first + field, order) }
    }
}

/// A commit in progress: evictions are done and fenced; payload and tail units may be written.
///
/// Dropping it without [`commit`](Transaction::commit) publishes nothing; the seq is not
/// consumed. Tail units allocated in a dropped transaction stay marked in use in the table.
#[derive(Debug)]
#[must_use = "a transaction publishes nothing until `commit` is called"]
pub struct Transaction<'w, 'm, M: WordMemory + ?Sized> {
    writer: &'w mut Writer<'m, M>,
    /// The seq this transaction will publish.
    seq: u64,
    /// Stream offset of the payload (8-aligned, contiguous in the ring, evicted space).
    at: u64,
    /// Bytes reserved at `at`.
    reserved: usize,
}

impl<'w, 'm, M: WordMemory + ?Sized> Transaction<'w, 'm, M> {
    /// The seq this transaction will publish.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Allocates a tail unit that no live entry can refer to: free, or retired as of a seq
    /// `<=` the oldest live one. The unit's old contents are unspecified.
    ///
    /// # Errors
    ///
    /// [`UnitError::Exhausted`] if none is available (evict with
    /// [`Writer::evict_before`] before the transaction, or retire more units).
    pub fn alloc_unit(&mut self, table: &mut UnitTable<'_>) -> Result<UnitGrant<'w>, UnitError> {
        let limit = self.writer.unit_count(table.unit_size());
        // Every entry below `oldest` was evicted before `begin`'s Release fence, which orders
        // those evictions before our writes to the unit.
        let unit = table
            .take(limit, self.writer.oldest)
            .ok_or(UnitError::Exhausted)?;
        Ok(UnitGrant {
            unit,
            seq: self.seq,
            _tx: PhantomData,
        })
    }

    /// Writes `bytes` at `offset` within the granted unit (`Relaxed` stores; published by the
    /// commit's Release store).
    ///
    /// # Errors
    ///
    /// [`UnitError::ForeignGrant`] for a grant of another transaction,
    /// [`UnitError::WriteOutOfBounds`] if the write does not fit in the unit.
    pub fn write_unit(
        &mut self,
        table: &UnitTable<'_>,
        grant: &UnitGrant<'w>,
        offset: usize,
        bytes: &[u8],
    ) -> Result<(), UnitError> {
        if grant.seq != self.seq {
            return Err(UnitError::ForeignGrant);
        }
        let unit_size = table.unit_size();
        let fits = offset
            .checked_add(bytes.len())
            .is_some_and(|e| e <= unit_size);
        if !fits || grant.unit >= self.writer.unit_count(unit_size) {
            return Err(UnitError::WriteOutOfBounds {
                offset,
                len: bytes.len(),
                unit_size,
            });
        }
        let layout = self.writer.layout();
        // In bounds: unit < tail_len / unit_size and offset + len <= unit_size.
        let at = layout.tail_offset as usize + grant.unit * unit_size + offset;
        store_bytes(self.writer.region.mem(), at, bytes);
        Ok(())
    }

    /// Stores `payload` into the reserved space and publishes the entry; returns its seq.
    ///
    /// # Errors
    ///
    /// [`CommitError::ExceedsReservation`] or [`CommitError::PayloadSize`] (empty payload).
    // `inline`: see `Writer::begin`.
    #[inline]
    pub fn commit(self, payload: &[u8]) -> Result<u64, CommitError> {
        if payload.len() > self.reserved {
            return Err(CommitError::ExceedsReservation {
                len: payload.len(),
                reserved: self.reserved,
            });
        }
        if payload.is_empty() {
            return Err(CommitError::PayloadSize {
                len: 0,
                max: self.writer.layout().data_size,
            });
        }
        self.writer.publish(self.seq, self.at, payload);
        Ok(self.seq)
    }
}
