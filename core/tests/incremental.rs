//! The interleaving simulator with a page tracker: incremental snapshots of the queue strategy
//! (DESIGN §11, "Why an incremental image is sound").
//!
//! The live region is cut into 64-byte model pages (so a 12 KiB region has 192 of them). A
//! writer store that lands on a page marks it *written*, as the kernel's async write-protect
//! fault marks a page-table entry. The host's `scan` walks the pages in order and, at each one,
//! reports and clears its mark in one step (the kernel does it under the page-table lock);
//! writer stores may land between two pages of the walk. The host then runs the real core code
//! of an incremental snapshot:
//!
//! ```text
//! PreCopy::read (pre) → scan → copy the reported pages and the meta pages onto the previous
//! image → PreCopy::finish (fence, post, retain)
//! ```
//!
//! `pre` comes **before** the scan: every entry in `pre` was fully written before it, so each
//! of its data pages was written before the walk passed it and is reported by this scan or an
//! earlier one. With the scan first (`scan → pre`, [`Twin::ScanBeforePre`]), a commit whose
//! stores land between the walk and `pre` is kept with its pages unreported — the simulator
//! catches it, with a torn entry in the image.
//!
//! The first snapshot is a full copy, as in the host. An attempt that is not kept (no
//! entries, or starved) has cleared marks that no image recorded: as in the host, its scan is
//! **carried** — the pages it reported are kept in a page set, and the next delta copies the
//! union of that set and its own scan onto the last kept image (DESIGN §11, "An attempt that
//! is not kept"). The twin that takes that delta without the carry
//! ([`Twin::DeltaAfterDroppedScan`]) must be caught.
//!
//! A delta copies as the host does (DESIGN §11, "The newest entries first"): the meta pages,
//! then the planned data-ring pages entry by entry in descending seq of `pre`, stopping at an
//! entry that is gone (and, in a third of the deltas, after a schedule-chosen 0–2 entries:
//! any stop point must be sound), then, if nothing stopped, the planned pages of no entry.
//! It keeps only entries of `pre ∩ post` whose planned pages were all copied
//! (`PreCopy::finish_where`), and the pages it planned but did not copy are carried into the
//! next delta. Twins that must be caught: a host that drops that leftover when the delta is
//! kept ([`Twin::DropLeftover`]) and one that keeps entries whose pages it did not copy
//! ([`Twin::KeepUncopied`]).
//!
//! The writer's real stores (recorded by [`Recording`]) land between the host's loads and scan
//! steps at points chosen by a schedule, across several consecutive snapshots. After each kept
//! snapshot the checker asserts (1) what the full-snapshot simulator asserts: every entry kept
//! in the image carries exactly the bytes committed under its seq; and (2) that the incremental
//! image equals, on the meta (header and descriptor ring) and on every kept entry's bytes, the
//! image a full copy made during the same copy window would have kept (the same `pre`, `post`
//! and live hint, run through core's `retain`).
//!
//! Broken twins must be caught: a tracker that forgets one page, a scan taken after the copy,
//! a scan taken before `pre`, and a host that follows a dropped attempt with a delta that
//! forgets the dropped attempt's scan. A host that skips the meta pages is *not* a broken twin
//! here, see [`Twin::SkipMeta`]; nor is the host before the carry, which followed every dropped
//! attempt with a full copy ([`Twin::BaseAfterDroppedScan`]).
//!
//! # Untracked writers and the host's proof (DESIGN §11, "Who can write the region")
//!
//! A schedule may also have *intruders*: other writers (a forked child, a second mapping, a
//! `pwrite`) whose stores land in the data ring **without marking their page** — the tracker
//! never sees them. An intruder *appears* at its first store; if the region is sealed by then
//! it is refused (`EPERM`: none of its stores land), else it writes until its last store and is
//! gone. The host's proof is modelled as the real host runs it before it arms a chain (the
//! scan that precedes a base): **seal**, a host step (stores may land meanwhile: the census
//! reads `/proc` one process at a time), then the **census**: no intruder may be writing. A
//! proof that held stands for the run (as the host keeps it per registration); without one
//! the snapshot is kept but the next one is a base again. Then no untracked store can land
//! after the census, which precedes the base's copy. Twins that must be caught: a host that
//! trusts the advertisement alone ([`Twin::TrustAdvert`]), one that seals without a census
//! ([`Twin::SealWithoutCensus`]) and one that takes the census without a seal
//! ([`Twin::CensusWithoutSeal`]). With intruders, the image can only be compared with the full
//! copy (an intruder may overwrite a committed payload, which a full copy keeps too); the
//! payload check runs while no untracked store has landed.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use shmsnap_core::{
    image_entries, retain, retain_where, Descriptor, Layout, LayoutRequest, PreCopy, Region,
    WordMemory, Writer,
};
use shmsnap_testkit::{
    check_image_payloads, from_bytes, payload_for, to_bytes, Landing, Recording, Replay, Store,
};

/// Bytes of a model page: small, so the small region has many pages.
const PAGE: usize = 64;
const WORDS_PER_PAGE: usize = PAGE / 8;
/// Header page + one descriptor page + a 4 KiB data ring (no tail).
const REGION: usize = 3 * 4096;
const PAGES: usize = REGION / PAGE;
const REQ: LayoutRequest = LayoutRequest {
    entries: 8,
    data_size: 4096,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Twin {
    Sound,
    /// The tracker forgets one page: the `n`-th page a delta's scan should report (counted over
    /// the whole run) is re-protected but not reported.
    ForgetPage(usize),
    /// The host scans after its copy: pre, copy, scan, post.
    ScanAfterCopy,
    /// The host scans before it reads `pre`: scan, pre, copy, post. A commit whose data stores
    /// land after the walk passed their pages and whose seq is published before `pre` is kept,
    /// but its pages are reported only by the *next* scan: the image holds the previous
    /// image's bytes under its seq.
    ScanBeforePre,
    /// After an attempt that kept nothing (no entries, or starved) — whose scan re-protected
    /// pages no image recorded — the host takes a delta onto the last kept image **without the
    /// carry**: the dropped attempt's scan is forgotten.
    DeltaAfterDroppedScan,
    /// The host before the carry: after an attempt that kept nothing, a full copy. Sound,
    /// only slower.
    BaseAfterDroppedScan,
    /// A delta whose copy stopped early (newest entries first) is kept, but the pages it
    /// planned and did not copy are **not** carried to the next delta: the next delta onto
    /// it starts from an empty carry.
    DropLeftover,
    /// A delta whose copy stopped early keeps every entry of `pre ∩ post`, also those with a
    /// planned page it did not copy (which the image holds from the previous image).
    KeepUncopied,
    /// The host copies only the reported pages, not the meta pages. Not broken in this model:
    /// `retain` rewrites every descriptor, the static header and the hints from `pre`, `post`,
    /// the layout and the live hint, and the words it copies (`epoch`, `next_seq` as a lower
    /// bound) sit on a page that is reported whenever the writer changed it. The sweep checks
    /// it stays sound; the real host copies the meta pages anyway (the delta must carry the
    /// retained meta, which differs from the previous image's).
    SkipMeta,
    /// The host arms a chain on the client's advertisement alone: no seal, no census (the
    /// host before issue 20).
    TrustAdvert,
    /// The host seals but takes no census: a writer that appeared before the seal keeps
    /// writing behind the tracker.
    SealWithoutCensus,
    /// The host takes the census but does not seal: a writer that appears after it is never
    /// seen.
    CensusWithoutSeal,
}

/// Another writer's stores: `count` stores into the data ring, the `k`-th placed before the
/// client's store `at + k * spread` of the recorded trace.
#[derive(Debug, Clone)]
struct Intruder {
    at: usize,
    spread: usize,
    /// `(word offset in the data ring, value)` per store.
    stores: Vec<(usize, u64)>,
}

/// An intruder's life, as the landing of its stores decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Has not stored yet.
    Waiting,
    /// Appeared before the seal; stores left.
    Writing,
    /// Appeared after the seal: every store refused.
    Refused,
    /// Done storing.
    Gone,
}

/// What the host's seal and the intruders do to the stores of the combined trace.
#[derive(Debug)]
struct World {
    /// Who makes store `n`: `None` the client through its tracked mapping, `Some(i)`
    /// intruder `i`.
    owner: Vec<Option<usize>>,
    sealed: Cell<bool>,
    /// Per intruder: its life and the stores it has left.
    lives: RefCell<Vec<(Life, usize)>>,
    untracked_landed: Cell<u64>,
    refused: Cell<u64>,
}

impl World {
    fn land(&self, n: usize) -> Landing {
        let Some(i) = self.owner[n] else {
            return Landing::Tracked;
        };
        let mut lives = self.lives.borrow_mut();
        let (life, left) = &mut lives[i];
        if *life == Life::Waiting {
            *life = if self.sealed.get() {
                Life::Refused
            } else {
                Life::Writing
            };
        }
        if *life == Life::Refused {
            self.refused.set(self.refused.get() + 1);
            return Landing::Refused;
        }
        *left -= 1;
        if *left == 0 {
            *life = Life::Gone;
        }
        self.untracked_landed.set(self.untracked_landed.get() + 1);
        Landing::Untracked
    }

    /// The census: is any intruder still writing?
    fn writer_alive(&self) -> bool {
        self.lives.borrow().iter().any(|(l, _)| *l == Life::Writing)
    }
}

/// The client's recorded stores with the intruders' stores placed among them.
fn combine(
    tracked: &[Store],
    intruders: &[Intruder],
    ring: std::ops::Range<usize>,
) -> (Vec<Store>, World) {
    let mut placed: Vec<(usize, usize, usize)> = Vec::new();
    for (i, it) in intruders.iter().enumerate() {
        for k in 0..it.stores.len() {
            let at = it.at.saturating_add(k.saturating_mul(it.spread));
            placed.push((at.min(tracked.len()), i, k));
        }
    }
    placed.sort_unstable();
    let (mut trace, mut owner) = (Vec::new(), Vec::new());
    let mut next = placed.iter().peekable();
    for t in 0..=tracked.len() {
        while let Some(&&(_, i, k)) = next.peek().filter(|p| p.0 == t) {
            let (w, value) = intruders[i].stores[k];
            trace.push(Store {
                word: ring.start + w % ring.len(),
                value,
                release: false,
            });
            owner.push(Some(i));
            next.next();
        }
        if let Some(&s) = tracked.get(t) {
            trace.push(s);
            owner.push(None);
        }
    }
    let lives = intruders
        .iter()
        .map(|it| (Life::Waiting, it.stores.len()))
        .collect();
    (
        trace,
        World {
            owner,
            sealed: Cell::new(false),
            lives: RefCell::new(lives),
            untracked_landed: Cell::new(0),
            refused: Cell::new(0),
        },
    )
}

/// The scan: walks the pages in order, reporting and clearing each page's mark in one step;
/// the writer may store between two pages.
fn scan(host: &Replay<'_>) -> Vec<bool> {
    (0..PAGES)
        .map(|p| {
            host.step();
            host.take_mark(p)
        })
        .collect()
}

/// The copy window: one load per word of the region. The full reference image is this copy;
/// the incremental image takes from it only the pages it copies.
fn copy(host: &Replay<'_>) -> Vec<u8> {
    let mut image = Vec::with_capacity(REGION);
    for i in 0..host.len() {
        image.extend_from_slice(&host.load(i, Ordering::Relaxed).to_le_bytes());
    }
    image
}

/// One schedule: commits before tracking starts, commits interleaved with the snapshots,
/// host steps before each writer store, idle host steps before each snapshot, and other
/// writers whose stores bypass the tracker.
#[derive(Debug, Clone)]
struct Scenario {
    warmup: Vec<usize>,
    lens: Vec<usize>,
    gaps: Vec<u16>,
    idle: Vec<u16>,
    intruders: Vec<Intruder>,
}

/// What one scenario did.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Snapshots kept (full and incremental).
    kept_images: u64,
    /// Of those, incremental.
    deltas: u64,
    /// Attempts not kept (no entries, or starved).
    dropped_attempts: u64,
    /// Kept deltas that carried the scan of at least one dropped attempt before them.
    carried_deltas: u64,
    /// Dropped attempts' scans those deltas carried, together.
    carried_scans: u64,
    /// Entries kept, over every kept image.
    kept: u64,
    /// Entries seen in `pre` but not kept.
    dropped: u64,
    /// Pages the deltas copied (reported and meta).
    delta_pages: u64,
    /// Kept deltas whose copy stopped before an entry of `pre` (gone, or the schedule's stop).
    stopped_deltas: u64,
    /// Planned pages those deltas left out (carried to the next delta).
    leftover_pages: u64,
    /// Entries of `pre ∩ post` a kept delta withheld because a planned page of theirs was
    /// not copied.
    withheld: u64,
    /// Kept deltas whose carry held a previous delta's leftover.
    deltas_after_leftover: u64,
    /// Kept bases after which the host could not arm (the proof failed).
    unproven_bases: u64,
    /// Intruder stores that landed (untracked) and that the seal refused.
    untracked_landed: u64,
    refused: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.kept_images += o.kept_images;
        self.deltas += o.deltas;
        self.dropped_attempts += o.dropped_attempts;
        self.carried_deltas += o.carried_deltas;
        self.carried_scans += o.carried_scans;
        self.kept += o.kept;
        self.dropped += o.dropped;
        self.delta_pages += o.delta_pages;
        self.stopped_deltas += o.stopped_deltas;
        self.leftover_pages += o.leftover_pages;
        self.withheld += o.withheld;
        self.deltas_after_leftover += o.deltas_after_leftover;
        self.unproven_bases += o.unproven_bases;
        self.untracked_landed += o.untracked_landed;
        self.refused += o.refused;
    }
}

/// The host's proof before it arms a chain (see the module docs); `proven` is the proof that
/// stands. Returns whether the host may arm.
fn prove(world: &World, host: &Replay<'_>, twin: Twin, proven: &mut bool) -> bool {
    if *proven {
        return true;
    }
    let ok = match twin {
        Twin::TrustAdvert => true,
        Twin::SealWithoutCensus => {
            world.sealed.set(true);
            true
        }
        Twin::CensusWithoutSeal => {
            host.step();
            !world.writer_alive()
        }
        _ => {
            world.sealed.set(true);
            host.step();
            !world.writer_alive()
        }
    };
    *proven = ok;
    ok
}

/// Runs one scenario (a snapshot per entry of `idle`) and checks every kept image.
fn simulate(sc: &Scenario, twin: Twin) -> Result<Stats, String> {
    let recording = Recording::zeroed(REGION);
    let mut writer = Writer::init(&recording, REQ, shmsnap_testkit::CLIENT).unwrap();
    for &len in &sc.warmup {
        writer.commit(&payload_for(writer.next_seq(), len)).unwrap();
    }
    // Tracking starts here: every page protected (the registration's initial protect).
    let start = from_bytes(&to_bytes(&recording));
    recording.trace.borrow_mut().clear();
    for &len in &sc.lens {
        writer.commit(&payload_for(writer.next_seq(), len)).unwrap();
    }
    let layout = *writer.layout();
    // The client lives on past the host's snapshot: its claim is never released here.
    std::mem::forget(writer);
    let ring =
        (layout.data_offset / 8) as usize..((layout.data_offset + layout.data_size) / 8) as usize;
    let (trace, world) = combine(&recording.trace.into_inner(), &sc.intruders, ring);
    let land = |n| world.land(n);
    // The live region as the host sees it: before each host load or scan step, pending writer
    // stores may land; each landing client store marks its page written, an intruder's does not.
    let host = Replay::new(start, &trace, &sc.gaps)
        .with_pages(WORDS_PER_PAGE)
        .with_landing(&land);
    let region = Region::open(&host).map_err(|e| e.to_string())?;
    let mut proven = false;
    let mut stats = Stats::default();
    let mut forget_left = match twin {
        Twin::ForgetPage(n) => Some(n),
        _ => None,
    };
    // The last kept image, and whether the next snapshot must be full.
    let mut prev: Option<Vec<u8>> = None;
    // The carry: pages reported by the scans of dropped attempts since `prev` was copied, and
    // how many such scans. Invariant: empty while `prev` is `None`.
    let mut carry = Carry {
        pages: vec![false; PAGES],
        scans: 0,
        leftover: false,
    };
    for &idle in &sc.idle {
        for _ in 0..idle {
            host.step();
        }
        let full_next = prev.is_none();
        // Before a base, the host arms a chain only with a proof.
        let armed = !full_next || prove(&world, &host, twin, &mut proven);
        let checks = Checks {
            untracked: &world.untracked_landed,
        };
        let onto = prev.as_deref().map(|p| (p, &carry));
        // A third of the deltas also stop after 0–2 entries: any stop point is sound, and
        // an early one leaves pages out for the next delta (the real host stops only at an
        // entry that is gone).
        let stop_after = (idle % 3 == 1).then_some(usize::from(idle / 3) % 3);
        match snapshot(
            &region,
            &layout,
            onto,
            twin,
            &mut forget_left,
            checks,
            stop_after,
        )? {
            Attempt::Kept(image, o, leftover) => {
                stats.add(o);
                carry.clear();
                if twin != Twin::DropLeftover {
                    carry.keep_leftover(&leftover);
                }
                if armed {
                    prev = Some(image);
                } else {
                    stats.unproven_bases += 1;
                    prev = None;
                }
            }
            Attempt::Dropped(reported) => {
                stats.dropped_attempts += 1;
                match twin {
                    _ if full_next => {}
                    Twin::BaseAfterDroppedScan => {
                        prev = None;
                        carry.clear();
                    }
                    // Without the carry: the scan's report is forgotten.
                    Twin::DeltaAfterDroppedScan => {}
                    _ => carry.add(reported.as_deref()),
                }
            }
        }
    }
    stats.untracked_landed = world.untracked_landed.get();
    stats.refused = world.refused.get();
    Ok(stats)
}

/// The pages the scans of dropped attempts reported since the last kept image, and the pages
/// that image's delta planned but did not copy.
#[derive(Debug)]
struct Carry {
    pages: Vec<bool>,
    scans: u64,
    /// It holds a kept delta's leftover.
    leftover: bool,
}

impl Carry {
    /// After a kept delta: the pages it left out.
    fn keep_leftover(&mut self, leftover: &[bool]) {
        for (c, &l) in self.pages.iter_mut().zip(leftover) {
            *c |= l;
        }
        self.leftover = leftover.iter().any(|&l| l);
    }

    /// Folds in one dropped attempt's scan (`None`: the attempt did not scan).
    fn add(&mut self, reported: Option<&[bool]>) {
        let Some(reported) = reported else { return };
        for (c, &r) in self.pages.iter_mut().zip(reported) {
            *c |= r;
        }
        self.scans += 1;
    }

    fn clear(&mut self) {
        self.pages.fill(false);
        self.scans = 0;
        self.leftover = false;
    }
}

/// What one snapshot attempt did.
enum Attempt {
    /// The image kept, what it did, and the pages it planned but did not copy.
    Kept(Vec<u8>, Stats, Vec<bool>),
    /// Nothing kept; what its scan reported, if it scanned.
    Dropped(Option<Vec<bool>>),
}

/// Which checks a kept snapshot gets.
#[derive(Debug, Clone, Copy)]
struct Checks<'a> {
    /// Intruder stores landed so far. While none has, every kept entry's bytes must be its
    /// commit's; after one, it may have overwritten a committed payload, in the live region
    /// and so in any copy, and only the comparison with the full copy applies.
    untracked: &'a Cell<u64>,
}

/// One snapshot: full onto nothing (`onto == None`) or incremental onto the previous image,
/// copying the pages its scan reported and those the carry holds. Returns the kept image, or
/// what the scan of an attempt that kept nothing reported (the caller carries it).
#[allow(clippy::too_many_arguments)]
fn snapshot(
    region: &Region<'_, Replay<'_>>,
    layout: &Layout,
    onto: Option<(&[u8], &Carry)>,
    twin: Twin,
    forget_left: &mut Option<usize>,
    checks: Checks<'_>,
    stop_after: Option<usize>,
) -> Result<Attempt, String> {
    let host = region.mem();
    let e = layout.entries as usize;
    let mut reported = (twin == Twin::ScanBeforePre).then(|| scan(host));
    let mut pre_buf = vec![Descriptor::EMPTY; e];
    let mut post_buf = vec![Descriptor::EMPTY; e];
    let stamp = PreCopy::read(region, &mut pre_buf, &mut post_buf).map_err(|e| e.to_string())?;
    if reported.is_none() && twin != Twin::ScanAfterCopy {
        reported = Some(scan(host));
    }
    if stamp.pre().valid() == 0 {
        return Ok(Attempt::Dropped(reported));
    }
    let pre = stamp.pre().slots().to_vec();
    if let (Some((prev, carry)), Some(mut reported)) = (onto, reported.clone()) {
        // The host: a delta copies the newest entries first (the twin scanning after its
        // copy keeps the old whole copy below: it has no scan to plan with).
        forget_one(&mut reported, forget_left);
        let want: Vec<bool> = reported
            .iter()
            .zip(&carry.pages)
            .map(|(&r, &c)| r || c)
            .collect();
        let c = copy_newest_first(region, layout, &pre, &want, twin, stop_after);
        // The reference: the same copied pages, and a whole copy of the rest read later in
        // the same window (a kept entry's bytes do not change inside it).
        let mut reference = copy(host);
        let mut image = prev.to_vec();
        for (p, bytes) in c.pages.iter().enumerate() {
            if let Some(b) = bytes {
                image[p * PAGE..(p + 1) * PAGE].copy_from_slice(b);
                reference[p * PAGE..(p + 1) * PAGE].copy_from_slice(b);
            }
        }
        let keep = |d: &Descriptor| twin == Twin::KeepUncopied || c.complete.contains(&d.seq);
        let retained = stamp
            .finish_where(&mut image, keep)
            .map_err(|e| e.to_string())?;
        if retained.is_starved() {
            return Ok(Attempt::Dropped(Some(reported)));
        }
        retain_where(
            &mut reference,
            layout,
            &pre,
            &post_buf,
            retained.live_next_seq,
            keep,
        )
        .map_err(|e| e.to_string())?;
        if checks.untracked.get() == 0 {
            check_image_payloads(&image, layout)?;
        }
        same_as_full(&image, &reference, layout)?;
        let leftover: Vec<bool> = (0..PAGES)
            .map(|p| want[p] && c.pages[p].is_none())
            .collect();
        let in_both = (0..e)
            .filter(|&s| pre[s].seq != 0 && pre[s] == post_buf[s])
            .count() as u64;
        let copied = c.pages.iter().filter(|p| p.is_some()).count() as u64;
        return Ok(Attempt::Kept(
            image,
            Stats {
                kept_images: 1,
                deltas: 1,
                carried_deltas: u64::from(carry.scans > 0),
                carried_scans: carry.scans,
                kept: retained.kept,
                dropped: retained.dropped(),
                delta_pages: copied,
                stopped_deltas: u64::from(c.stopped),
                leftover_pages: leftover.iter().filter(|&&l| l).count() as u64,
                withheld: in_both - retained.kept,
                deltas_after_leftover: u64::from(carry.leftover),
                ..Stats::default()
            },
            leftover,
        ));
    }
    let full_copy = copy(host);
    let mut reported = reported.take().unwrap_or_else(|| scan(host));
    // The pages the image takes from the copy: this scan's (with the forgetful tracker, one
    // report lost) and, for a delta, the carried ones.
    let mut copied = reported.clone();
    let mut image = match onto {
        None => full_copy.clone(),
        Some((prev, carry)) => {
            forget_one(&mut reported, forget_left);
            for ((c, &r), &k) in copied.iter_mut().zip(&reported).zip(&carry.pages) {
                *c = r || k;
            }
            incremental_image(prev, &full_copy, &copied, layout, twin)
        }
    };
    let retained = stamp.finish(&mut image).map_err(|e| e.to_string())?;
    if retained.is_starved() {
        return Ok(Attempt::Dropped(Some(reported)));
    }
    // The reference: what a full copy in the same window would have kept.
    let mut full = full_copy;
    retain(&mut full, layout, &pre, &post_buf, retained.live_next_seq)
        .map_err(|e| e.to_string())?;
    if checks.untracked.get() == 0 {
        check_image_payloads(&full, layout).map_err(|e| format!("full reference: {e}"))?;
        check_image_payloads(&image, layout)?;
    }
    same_as_full(&image, &full, layout)?;
    let (delta_pages, carried_scans) = match onto {
        None => (0, 0),
        Some((_, carry)) => (
            (0..PAGES)
                .filter(|&p| copied[p] || is_meta_page(p, layout))
                .count() as u64,
            carry.scans,
        ),
    };
    Ok(Attempt::Kept(
        image,
        Stats {
            kept_images: 1,
            deltas: u64::from(onto.is_some()),
            dropped_attempts: 0,
            carried_deltas: u64::from(carried_scans > 0),
            carried_scans,
            kept: retained.kept,
            dropped: retained.dropped(),
            delta_pages,
            ..Stats::default()
        },
        vec![false; PAGES],
    ))
}

/// The region pages of the data ring.
fn ring_pages(layout: &Layout) -> std::ops::Range<usize> {
    let lo = layout.data_offset as usize / PAGE;
    lo..lo + (layout.data_size as usize).div_ceil(PAGE)
}

/// What a newest-first copy read: per page, its bytes if copied.
struct NewestCopy {
    pages: Vec<Option<Vec<u8>>>,
    /// Seqs of the entries whose planned pages were all copied.
    complete: Vec<u64>,
    stopped: bool,
}

/// The host's copy of a delta (`os-linux`'s `take_delta/newest.rs`): the meta pages (unless
/// the twin skips them) and every planned page outside the data ring, then the planned ring
/// pages of the entries of `pre`, newest first, while each is still live (and, in the
/// model, until `stop_after` entries were copied), then — if nothing stopped — the planned
/// ring pages of no entry. Each page is copied by word loads, between which the writer's
/// stores land.
fn copy_newest_first(
    region: &Region<'_, Replay<'_>>,
    layout: &Layout,
    pre: &[Descriptor],
    want: &[bool],
    twin: Twin,
    stop_after: Option<usize>,
) -> NewestCopy {
    let host = region.mem();
    let wanted = |p: usize| want.get(p).copied().unwrap_or(false);
    let mut out = NewestCopy {
        pages: vec![None; PAGES],
        complete: Vec::new(),
        stopped: false,
    };
    let copy_page = |out: &mut NewestCopy, p: usize| {
        if out.pages[p].is_none() {
            let mut b = Vec::with_capacity(PAGE);
            for w in p * WORDS_PER_PAGE..(p + 1) * WORDS_PER_PAGE {
                b.extend_from_slice(&host.load(w, Ordering::Relaxed).to_le_bytes());
            }
            out.pages[p] = Some(b);
        }
    };
    let ring = ring_pages(layout);
    for p in 0..PAGES {
        let meta = twin != Twin::SkipMeta && is_meta_page(p, layout);
        if meta || (wanted(p) && !ring.contains(&p)) {
            copy_page(&mut out, p);
        }
    }
    let mut order: Vec<(usize, Descriptor)> = pre
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, d)| d.seq != 0)
        .collect();
    order.sort_unstable_by_key(|&(_, d)| std::cmp::Reverse(d.seq));
    for (n, (slot, d)) in order.into_iter().enumerate() {
        if stop_after.is_some_and(|k| n >= k) || region.read_descriptor(slot as u64) != Some(d) {
            out.stopped = true;
            break;
        }
        let at = layout.ring_byte(d.offset);
        for p in at / PAGE..(at + d.length as usize).div_ceil(PAGE) {
            if wanted(p) {
                copy_page(&mut out, p);
            }
        }
        out.complete.push(d.seq);
    }
    if !out.stopped {
        for p in ring {
            if wanted(p) {
                copy_page(&mut out, p);
            }
        }
    }
    out
}

/// The forgetful tracker twin: drops the `n`-th report (the page stays re-protected).
fn forget_one(reported: &mut [bool], forget_left: &mut Option<usize>) {
    let Some(left) = forget_left else { return };
    for r in reported.iter_mut().filter(|r| **r) {
        if *left == 0 {
            *r = false;
            *forget_left = None;
            return;
        }
        *left -= 1;
    }
}

fn is_meta_page(p: usize, layout: &Layout) -> bool {
    ((p * PAGE) as u64) < layout.meta_len()
}

/// The previous image with the reported pages (and, unless the twin skips them, the meta
/// pages) taken from the copy.
fn incremental_image(
    prev: &[u8],
    copy: &[u8],
    reported: &[bool],
    layout: &Layout,
    twin: Twin,
) -> Vec<u8> {
    let mut image = prev.to_vec();
    for (p, &written) in reported.iter().enumerate() {
        let meta = twin != Twin::SkipMeta && is_meta_page(p, layout);
        if written || meta {
            let r = p * PAGE..(p + 1) * PAGE;
            image[r.clone()].copy_from_slice(&copy[r]);
        }
    }
    image
}

/// The incremental image equals the full one on the meta and on every kept entry's bytes.
fn same_as_full(image: &[u8], full: &[u8], layout: &Layout) -> Result<(), String> {
    let meta = layout.meta_len() as usize;
    if image[..meta] != full[..meta] {
        let w = (0..meta / 8)
            .find(|&w| image[w * 8..w * 8 + 8] != full[w * 8..w * 8 + 8])
            .unwrap_or(0);
        return Err(format!(
            "incremental meta differs from the full copy's at word {w}"
        ));
    }
    for d in image_entries(full, layout) {
        let at = layout.ring_byte(d.offset);
        let r = at..at + d.length as usize;
        if image.get(r.clone()) != full.get(r) {
            return Err(format!(
                "entry {} differs between the incremental image and the full copy",
                d.seq
            ));
        }
    }
    Ok(())
}

fn intruder() -> impl Strategy<Value = Intruder> {
    (
        prop_oneof![0usize..8, 0usize..3000],
        0usize..200,
        prop::collection::vec((0usize..512, any::<u64>()), 1..12),
    )
        .prop_map(|(at, spread, stores)| Intruder { at, spread, stores })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(1usize..=600, 0..8),
        prop::collection::vec(1usize..=600, 1..40),
        prop::collection::vec(prop_oneof![15 => 0u16..4, 1 => 0u16..400], 0..2000),
        prop::collection::vec(prop_oneof![3 => 0u16..8, 1 => 0u16..3000], 2..8),
        prop::collection::vec(intruder(), 0..3),
    )
        .prop_map(|(warmup, lens, gaps, idle, intruders)| Scenario {
            warmup,
            lens,
            gaps,
            idle,
            intruders,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn incremental_images_match_committed_bytes_and_the_full_copy(sc in scenario()) {
        simulate(&sc, Twin::Sound).map_err(TestCaseError::fail)?;
    }
}

/// A seeded scenario generator (the sweeps are deterministic).
struct Rng(u64);

impl Rng {
    fn below(&mut self, m: u64) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x % m
    }

    fn scenario(&mut self) -> Scenario {
        let warmup = (0..self.below(8))
            .map(|_| 1 + self.below(600) as usize)
            .collect();
        let lens = (0..1 + self.below(40))
            .map(|_| 1 + self.below(600) as usize)
            .collect();
        // Mostly short gaps, sometimes a stall of the writer across part of a copy.
        let gaps = (0..self.below(2000))
            .map(|_| if self.below(16) == 0 { self.below(400) } else { self.below(4) } as u16)
            .collect();
        let idle = (0..2 + self.below(6))
            .map(|_| if self.below(4) == 0 { self.below(3000) } else { self.below(8) } as u16)
            .collect();
        // Half the schedules have other writers, placed anywhere in the client's stores.
        let intruders = (0..if self.below(2) == 0 {
            1 + self.below(2)
        } else {
            0
        })
            .map(|_| self.intruder())
            .collect();
        Scenario {
            warmup,
            lens,
            gaps,
            idle,
            intruders,
        }
    }

    fn intruder(&mut self) -> Intruder {
        // A third start among the first stores: already writing when the host first arms.
        let at = if self.below(3) == 0 {
            self.below(8)
        } else {
            self.below(3000)
        };
        Intruder {
            at: at as usize,
            spread: self.below(200) as usize,
            stores: (0..1 + self.below(12))
                .map(|_| (self.below(512) as usize, self.below(u64::MAX) | 1))
                .collect(),
        }
    }
}

/// What a sweep found.
#[derive(Debug, Default)]
struct Sweep {
    /// Scenarios with a violation.
    bad: u64,
    /// 1-based index of the first scenario with a violation.
    first_bad: Option<u64>,
    stats: Stats,
}

/// A seeded sweep of `runs` scenarios; the forgetful twin forgets a page chosen per scenario.
fn sweep(twin: impl Fn(&mut Rng) -> Twin, runs: u64) -> Sweep {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut out = Sweep::default();
    for i in 1..=runs {
        let sc = rng.scenario();
        let t = twin(&mut rng);
        match simulate(&sc, t) {
            Ok(s) => out.stats.add(s),
            Err(e) => {
                if out.bad == 0 {
                    eprintln!("scenario {i}: {e}");
                }
                out.bad += 1;
                out.first_bad.get_or_insert(i);
            }
        }
    }
    eprintln!("{} of {runs} scenarios failed: {out:?}", out.bad);
    out
}

const RUNS: u64 = 1000;

#[test]
fn sound_incremental_snapshots_keep_drop_and_match_the_full_copy() {
    let s = sweep(|_| Twin::Sound, RUNS);
    assert_eq!(s.bad, 0, "first violation in scenario {:?}", s.first_bad);
    // The sweep must exercise deltas that keep entries, dropped entries, and dropped attempts,
    // and deltas must copy fewer pages than the region, or it proves nothing.
    let st = s.stats;
    assert!(st.deltas > 0 && st.kept > 0 && st.dropped > 0, "{st:?}");
    assert!(st.dropped_attempts > 0, "{st:?}");
    assert!(st.delta_pages < st.deltas * PAGES as u64, "{st:?}");
    // Other writers must have written behind the tracker, been refused by the seal, and made
    // the proof fail.
    assert!(
        st.untracked_landed > 0 && st.refused > 0 && st.unproven_bases > 0,
        "{st:?}"
    );
}

#[test]
fn broken_twin_trusting_the_advertisement_alone_is_caught() {
    let s = sweep(|_| Twin::TrustAdvert, RUNS);
    assert!(s.bad > 0, "a host without seal and census went unnoticed");
}

#[test]
fn broken_twin_sealing_without_a_census_is_caught() {
    let s = sweep(|_| Twin::SealWithoutCensus, RUNS);
    assert!(
        s.bad > 0,
        "a host that seals but takes no census went unnoticed"
    );
}

#[test]
fn broken_twin_census_without_a_seal_is_caught() {
    let s = sweep(|_| Twin::CensusWithoutSeal, RUNS);
    assert!(
        s.bad > 0,
        "a host that takes a census but does not seal went unnoticed"
    );
}

#[test]
fn broken_twin_tracker_that_forgets_a_page_is_caught() {
    let s = sweep(|r| Twin::ForgetPage(r.below(8) as usize), RUNS);
    assert!(s.bad > 0, "a tracker that forgets a page went unnoticed");
}

#[test]
fn broken_twin_scan_after_copy_is_caught() {
    let s = sweep(|_| Twin::ScanAfterCopy, RUNS);
    assert!(s.bad > 0, "a scan taken after the copy went unnoticed");
}

#[test]
fn broken_twin_scan_before_pre_is_caught() {
    let s = sweep(|_| Twin::ScanBeforePre, RUNS);
    assert!(s.bad > 0, "a scan taken before pre went unnoticed");
}

#[test]
fn deltas_after_dropped_attempts_carrying_their_scans_stay_sound() {
    // The same schedules as the twin below: the sound host carries the dropped attempts'
    // scans into the next delta.
    let s = sweep(|_| Twin::Sound, RUNS);
    assert_eq!(s.bad, 0, "first violation in scenario {:?}", s.first_bad);
    let st = s.stats;
    eprintln!(
        "kept deltas after dropped attempts: {} (carrying {} dropped scans), of {} deltas, \
         {} dropped attempts",
        st.carried_deltas, st.carried_scans, st.deltas, st.dropped_attempts
    );
    assert!(
        st.carried_deltas > 0,
        "no delta carried a dropped scan: {st:?}"
    );
}

#[test]
fn broken_twin_delta_after_a_dropped_attempt_is_caught() {
    // Without the carry: the delta after a dropped attempt forgets that attempt's scan.
    let s = sweep(|_| Twin::DeltaAfterDroppedScan, RUNS);
    assert!(
        s.bad > 0,
        "a delta after a starved or empty attempt, without its scan, went unnoticed"
    );
}

#[test]
fn a_base_after_every_dropped_attempt_stays_sound() {
    // The host before the carry: slower, sound.
    let s = sweep(|_| Twin::BaseAfterDroppedScan, RUNS);
    assert_eq!(s.bad, 0, "first violation in scenario {:?}", s.first_bad);
    assert_eq!(s.stats.carried_deltas, 0, "{:?}", s.stats);
}

#[test]
fn host_skipping_the_meta_pages_stays_sound_in_this_model() {
    let s = sweep(|_| Twin::SkipMeta, RUNS);
    assert_eq!(s.bad, 0, "first violation in scenario {:?}", s.first_bad);
}

#[test]
fn deltas_copying_the_newest_entries_first_carry_what_they_left_out_and_stay_sound() {
    // The same schedules as the twin below: a delta stops copying (at an entry that is gone,
    // or at the schedule's stop point), keeps only entries whose planned pages it copied, and
    // its leftover pages are carried into the next delta.
    let s = sweep(|_| Twin::Sound, RUNS);
    assert_eq!(s.bad, 0, "first violation in scenario {:?}", s.first_bad);
    let st = s.stats;
    eprintln!(
        "kept deltas that stopped early: {} (leaving {} pages, withholding {} entries); kept \
         deltas after a leftover: {}; of {} deltas",
        st.stopped_deltas, st.leftover_pages, st.withheld, st.deltas_after_leftover, st.deltas
    );
    assert!(
        st.stopped_deltas > 0 && st.leftover_pages > 0 && st.withheld > 0,
        "no kept delta left pages out: {st:?}"
    );
    assert!(
        st.deltas_after_leftover > 0,
        "no delta followed a leftover: {st:?}"
    );
}

#[test]
fn broken_twin_dropping_the_leftover_at_commit_is_caught() {
    // A kept delta's leftover forgotten: the next delta starts from an empty carry.
    let s = sweep(|_| Twin::DropLeftover, RUNS);
    assert!(
        s.bad > 0,
        "a delta after one that left pages out, without them, went unnoticed"
    );
}

#[test]
fn broken_twin_keeping_entries_whose_pages_were_not_copied_is_caught() {
    let s = sweep(|_| Twin::KeepUncopied, RUNS);
    assert!(
        s.bad > 0,
        "a delta keeping entries it did not copy went unnoticed"
    );
}
