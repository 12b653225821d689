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
//! The first snapshot, and every snapshot after an attempt that was not kept (no entries, or
//! starved: its scan cleared marks that no image recorded), is a full copy, as in the host.
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
//! a scan taken before `pre`, and a host that follows a dropped attempt with a delta. A host that skips the meta pages is
//! *not* a broken twin here, see [`Twin::SkipMeta`].

use std::sync::atomic::Ordering;

use proptest::prelude::*;
use shmsnap_core::{
    image_entries, retain, Descriptor, Layout, LayoutRequest, PreCopy, Region, WordMemory, Writer,
};
use shmsnap_testkit::{check_image_payloads, from_bytes, payload_for, to_bytes, Recording, Replay};

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
    /// pages no image recorded — the host takes a delta onto the last kept image instead of a
    /// full copy.
    DeltaAfterDroppedScan,
    /// The host copies only the reported pages, not the meta pages. Not broken in this model:
    /// `retain` rewrites every descriptor, the static header and the hints from `pre`, `post`,
    /// the layout and the live hint, and the words it copies (`epoch`, `next_seq` as a lower
    /// bound) sit on a page that is reported whenever the writer changed it. The sweep checks
    /// it stays sound; the real host copies the meta pages anyway (the delta must carry the
    /// retained meta, which differs from the previous image's).
    SkipMeta,
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
/// host steps before each writer store, idle host steps before each snapshot.
#[derive(Debug, Clone)]
struct Scenario {
    warmup: Vec<usize>,
    lens: Vec<usize>,
    gaps: Vec<u16>,
    idle: Vec<u16>,
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
    /// Entries kept, over every kept image.
    kept: u64,
    /// Entries seen in `pre` but not kept.
    dropped: u64,
    /// Pages the deltas copied (reported and meta).
    delta_pages: u64,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.kept_images += o.kept_images;
        self.deltas += o.deltas;
        self.dropped_attempts += o.dropped_attempts;
        self.kept += o.kept;
        self.dropped += o.dropped;
        self.delta_pages += o.delta_pages;
    }
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
    let trace = recording.trace.into_inner();
    // The live region as the host sees it: before each host load or scan step, pending writer
    // stores may land, and each landing store marks its page written.
    let host = Replay::new(start, &trace, &sc.gaps).with_pages(WORDS_PER_PAGE);
    let region = Region::open(&host).map_err(|e| e.to_string())?;
    let mut stats = Stats::default();
    let mut forget_left = match twin {
        Twin::ForgetPage(n) => Some(n),
        _ => None,
    };
    // The last kept image, and whether the next snapshot must be full.
    let mut prev: Option<Vec<u8>> = None;
    for &idle in &sc.idle {
        for _ in 0..idle {
            host.step();
        }
        let full_next = prev.is_none();
        match snapshot(&region, &layout, prev.as_deref(), twin, &mut forget_left)? {
            Some((image, o)) => {
                stats.add(o);
                prev = Some(image);
            }
            None => {
                stats.dropped_attempts += 1;
                if twin != Twin::DeltaAfterDroppedScan || full_next {
                    prev = None;
                }
            }
        }
    }
    Ok(stats)
}

/// One snapshot: full onto nothing (`prev == None`) or incremental onto `prev`. Returns the
/// kept image, or `None` if the attempt kept nothing (the host then takes a base next).
fn snapshot(
    region: &Region<'_, Replay<'_>>,
    layout: &Layout,
    prev: Option<&[u8]>,
    twin: Twin,
    forget_left: &mut Option<usize>,
) -> Result<Option<(Vec<u8>, Stats)>, String> {
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
        return Ok(None);
    }
    let pre = stamp.pre().slots().to_vec();
    let full_copy = copy(host);
    let mut reported = reported.take().unwrap_or_else(|| scan(host));
    let mut image = match prev {
        None => full_copy.clone(),
        Some(prev) => {
            forget_one(&mut reported, forget_left);
            incremental_image(prev, &full_copy, &reported, layout, twin)
        }
    };
    let retained = stamp.finish(&mut image).map_err(|e| e.to_string())?;
    if retained.is_starved() {
        return Ok(None);
    }
    // The reference: what a full copy in the same window would have kept.
    let mut full = full_copy;
    retain(&mut full, layout, &pre, &post_buf, retained.live_next_seq)
        .map_err(|e| e.to_string())?;
    check_image_payloads(&full, layout).map_err(|e| format!("full reference: {e}"))?;
    check_image_payloads(&image, layout)?;
    same_as_full(&image, &full, layout)?;
    let delta_pages = match prev {
        None => 0,
        Some(_) => (0..PAGES)
            .filter(|&p| reported[p] || is_meta_page(p, layout))
            .count() as u64,
    };
    Ok(Some((
        image,
        Stats {
            kept_images: 1,
            deltas: u64::from(prev.is_some()),
            dropped_attempts: 0,
            kept: retained.kept,
            dropped: retained.dropped(),
            delta_pages,
        },
    )))
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

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(1usize..=600, 0..8),
        prop::collection::vec(1usize..=600, 1..40),
        prop::collection::vec(prop_oneof![15 => 0u16..4, 1 => 0u16..400], 0..2000),
        prop::collection::vec(prop_oneof![3 => 0u16..8, 1 => 0u16..3000], 2..8),
    )
        .prop_map(|(warmup, lens, gaps, idle)| Scenario {
            warmup,
            lens,
            gaps,
            idle,
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
        Scenario {
            warmup,
            lens,
            gaps,
            idle,
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
    eprintln!("{runs} scenarios: {out:?}");
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
fn broken_twin_delta_after_a_dropped_attempt_is_caught() {
    let s = sweep(|_| Twin::DeltaAfterDroppedScan, RUNS);
    assert!(
        s.bad > 0,
        "a delta after a starved or empty attempt went unnoticed"
    );
}

#[test]
fn host_skipping_the_meta_pages_stays_sound_in_this_model() {
    let s = sweep(|_| Twin::SkipMeta, RUNS);
    assert_eq!(s.bad, 0, "first violation in scenario {:?}", s.first_bad);
}
