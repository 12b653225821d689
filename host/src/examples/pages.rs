//! `shmsnap example pages` (hidden): a region of 4 KiB pages of which a fixed share — 1 % by
//! default — is rewritten every interval, each rewrite a commit with a growing number. The
//! writer of the standby trials (issue 26: "RPO ≤ one interval + one upload for a 64 MiB
//! region with 1 % written per interval").
//!
//! Each logical page lives in its own tail unit, written copy-on-write (as `example kv`'s
//! nodes): a commit writes its pages into fresh units and commits a root — the commit number,
//! its wall-clock time and the unit of every page — and retires the pages' old units as of
//! that commit. Under `run --strategy queue` (incremental snapshots on by default) a delta
//! then holds the few rewritten units and the data-ring pages of the roots: a 1 % writer's
//! uploads stay small.
//!
//! Which pages a commit writes is a function of its number: commit 1 writes every page (the
//! region starts full: a base holds all of it); then the positions `0..P` are cut into blocks
//! of `m` (the pages per commit), commit `c >= 2` writes block `(c - 2) mod B` (`B` blocks, so
//! every page is rewritten every `B` commits), and position `j` is page `(j * a + 7) mod P`
//! for an `a` coprime to `P` (scattered over the region). So the state after commit `C` is
//! known exactly: every page holds the newest commit `<= C` that wrote it, and every word of
//! it is a function of (page, commit). On start the client checks every page against that —
//! a page of a commit newer than the restored root, one of an older commit than the root
//! says (the root's pages not all there), or a torn page is `pages: TORN state: ...`, exit
//! [`CORRUPT`] — and prints `pages: pid P restored commit C (taken at T ns, ...)`.
//!
//! Restored bytes are hostile input: the root's length, geometry and every unit number are
//! checked before use; a wrong state is reported, never a panic.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shmsnap_core::{LayoutRequest, Region, UnitError, UnitState, UnitTable, WordMemory, Writer};

use crate::exit::{Code, Failure};

/// Exit status when the restored state is wrong.
pub const CORRUPT: u8 = 3;

/// A page: one tail unit.
const PAGE: usize = 4096;
/// Words of a page.
const WORDS: usize = PAGE / 8;
/// Root header words: commit, unix time (ns), pages, pages per commit.
const ROOT_HEAD: usize = 4;
/// A page that no commit has written yet.
const NO_UNIT: u32 = u32::MAX;
/// Descriptors of the region.
const ENTRIES: u64 = 64;

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Software, format!("pages: {what}: {e}"))
}

/// The region's layout and the client's geometry, both functions of the region's length (and
/// `--percent`/`--commits`), so a restarted client derives the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Logical pages `P`.
    pub pages: usize,
    /// Pages per commit `m` (`1..=P`).
    pub per_commit: usize,
    /// Blocks `B = ceil(P / m)`: every page is rewritten every `B` commits.
    pub blocks: u64,
    /// The scatter multiplier `a`, coprime to `P`.
    pub scatter: usize,
}

/// The layout for a region of `len` bytes: a data ring for at least four roots (each
/// `8 * ROOT_HEAD + 4 * P` bytes, `P` at most `len / PAGE`).
pub fn layout(len: u64) -> LayoutRequest {
    let root = (ROOT_HEAD * 8) as u64 + 4 * (len / PAGE as u64);
    LayoutRequest {
        entries: ENTRIES,
        data_size: (4 * root).next_power_of_two().max(4096),
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Geometry {
    /// The geometry for `units` tail units: a spare of an eighth (at least 16 commits' worth
    /// of units) for the copy-on-write, `percent` of the pages per `commits` commits.
    pub fn new(units: usize, percent: u32, commits: u32) -> Option<Geometry> {
        // A commit's pages are allocated before the old ones are reused: the spare holds the
        // units retired and not yet reclaimable (entries still live that refer to them).
        let per_interval = |p: usize| (p * percent as usize).div_ceil(100).max(1);
        let per_commit = |p: usize| per_interval(p).div_ceil(commits.max(1) as usize).max(1);
        let mut pages = units - units / 8;
        while pages > 0 && units - pages < 16 * per_commit(pages) + 16 {
            pages -= 1;
        }
        if pages == 0 {
            return None;
        }
        let m = per_commit(pages).min(pages);
        let mut a = 0x9e37_79b1 % pages;
        while gcd(a, pages) != 1 {
            a += 1;
        }
        Some(Geometry {
            pages,
            per_commit: m,
            blocks: pages.div_ceil(m) as u64,
            scatter: a,
        })
    }

    /// The page at position `j`.
    fn page_at(&self, j: usize) -> usize {
        ((j as u128 * self.scatter as u128 + 7) % self.pages as u128) as usize
    }

    /// The positions commit `c` (`>= 1`) writes: every page for commit 1 (the region starts
    /// full, so a base holds all of it), then one block per commit.
    fn positions(&self, c: u64) -> std::ops::Range<usize> {
        if c <= 1 {
            return 0..self.pages;
        }
        let b = ((c - 2) % self.blocks) as usize;
        b * self.per_commit..((b + 1) * self.per_commit).min(self.pages)
    }

    /// The newest commit `<= c` that wrote position `j` (`None`: none did).
    fn last_write(&self, j: usize, c: u64) -> Option<u64> {
        let first = (j / self.per_commit) as u64 + 2;
        match c {
            0 => None,
            c if c < first => Some(1),
            c => Some(first + (c - first) / self.blocks * self.blocks),
        }
    }

    fn root_len(&self) -> usize {
        ROOT_HEAD * 8 + 4 * self.pages
    }
}

/// Word `k` of page `page` as commit `c` writes it.
fn page_word(page: usize, c: u64, k: usize) -> u64 {
    match k {
        0 => 0x7061_6765_7321_0000 ^ page as u64,
        1 => page as u64,
        2 => c,
        _ => {
            // splitmix64 of (page, commit, word): any torn or stale word differs.
            let mut z = (page as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(c.wrapping_mul(0xbf58_476d_1ce4_e5b9))
                .wrapping_add(k as u64);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }
}

fn page_bytes(page: usize, c: u64, out: &mut [u8]) {
    for (k, w) in out.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&page_word(page, c, k).to_le_bytes());
    }
}

fn word(b: &[u8], i: usize) -> u64 {
    b.get(i * 8..i * 8 + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The state: the newest commit, its time, and the unit of every page.
struct State {
    commit: u64,
    unix_ns: u64,
    units: Vec<u32>,
}

/// Rebuilds the state from the newest entry (empty without one), marking the units it uses,
/// and checks every page. `Ok(Err(why))` for a state that is not what `C` commits produce.
fn restore<M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    table: &mut UnitTable<'_>,
    g: &Geometry,
) -> Result<Result<State, String>, Failure> {
    let mut st = State {
        commit: 0,
        unix_ns: 0,
        units: vec![NO_UNIT; g.pages],
    };
    let Some(d) = region.newest() else {
        return Ok(Ok(st));
    };
    let mut root = vec![0u8; g.root_len()];
    let n = region
        .read_payload(&d, &mut root)
        .map_err(|e| fail("cannot read the root", e))?;
    if n != root.len() {
        return Ok(Err(format!(
            "the root has {n} bytes, expected {} for {} pages",
            root.len(),
            g.pages
        )));
    }
    st.commit = word(&root, 0);
    st.unix_ns = word(&root, 1);
    let (pages, per_commit) = (word(&root, 2), word(&root, 3));
    if pages != g.pages as u64 || per_commit != g.per_commit as u64 {
        return Ok(Err(format!(
            "the root was written for {pages} pages, {per_commit} per commit; this client \
             has {} and {} (another --size, --percent or --commits?)",
            g.pages, g.per_commit
        )));
    }
    for (p, u) in st.units.iter_mut().enumerate() {
        let at = ROOT_HEAD * 8 + 4 * p;
        *u = u32::from_le_bytes(root[at..at + 4].try_into().unwrap_or([0xff; 4]));
    }
    let mut buf = vec![0u8; PAGE];
    for j in 0..g.pages {
        let p = g.page_at(j);
        let unit = st.units[p];
        let want = g.last_write(j, st.commit);
        let Some(c) = want else {
            if unit != NO_UNIT {
                return Ok(Err(format!(
                    "page {p} has unit {unit}, but no commit up to {} wrote it",
                    st.commit
                )));
            }
            continue;
        };
        if unit == NO_UNIT {
            return Ok(Err(format!(
                "page {p} is missing: commit {c} wrote it (restored commit {})",
                st.commit
            )));
        }
        let u = unit as usize;
        if u >= table.len() || table.state(u) != Some(UnitState::Free) {
            return Ok(Err(format!(
                "page {p} names unit {u}, out of range or named twice"
            )));
        }
        table.mark_in_use(u).map_err(|e| fail("units", e))?;
        region
            .read_tail((u * PAGE) as u64, &mut buf)
            .map_err(|e| fail("cannot read a page", e))?;
        let got = word(&buf, 2);
        if let Some(k) = (0..WORDS).find(|&k| word(&buf, k) != page_word(p, c, k)) {
            let why = if k == 2 && got > st.commit {
                "newer than the restored root (a commit the root does not cover)"
            } else if k == 2 {
                "older than the restored root says (not all of the root's pages are there)"
            } else {
                "torn or corrupt"
            };
            return Ok(Err(format!(
                "page {p} (unit {u}) word {k} is wrong: it says commit {got}, expected commit \
                 {c} of restored commit {}: {why}",
                st.commit
            )));
        }
    }
    Ok(Ok(st))
}

/// Runs the client: `percent` of the pages every `interval`, in `commits` commits.
///
/// # Errors
///
/// A [`Failure`] if the region cannot be found or used.
pub fn run(
    interval: Duration,
    percent: u32,
    commits: u32,
    limit: u64,
) -> Result<ExitCode, Failure> {
    let mut region = super::region()?;
    let len = region.mapping().len() as u64;
    let mut w = region
        .writer(layout(len))
        .map_err(|e| super::attach_failure("pages", e))?;
    let units = w.unit_count(PAGE);
    let g = Geometry::new(units, percent, commits).ok_or_else(|| {
        Failure::new(
            Code::Config,
            format!("pages: the region's tail holds {units} pages, too few; pass a larger --size"),
        )
    })?;
    let mut states = vec![0u64; units];
    let mut table = UnitTable::new(&mut states, PAGE).map_err(|e| fail("units", e))?;
    let mut st = match restore(w.region(), &mut table, &g)? {
        Ok(st) => st,
        Err(why) => {
            println!("pages: TORN state: {why}");
            return Ok(ExitCode::from(CORRUPT));
        }
    };
    println!(
        "pages: pid {} restored commit {} (taken at {} ns; {} pages, {} per commit), all correct",
        std::process::id(),
        st.commit,
        st.unix_ns,
        g.pages,
        g.per_commit
    );
    let _ = std::io::stdout().flush();
    let step = interval / commits.max(1);
    let start = Instant::now();
    let mut buf = vec![0u8; PAGE];
    let mut made = 0u64;
    while limit == 0 || made < limit {
        let c = st
            .commit
            .checked_add(1)
            .ok_or_else(|| fail("commit", "the commit number would overflow"))?;
        commit(&mut w, &mut table, &g, &mut st, c, &mut buf)?;
        made += 1;
        // On a schedule, not after a pause: the rate holds however long a commit takes.
        let due = start + step.saturating_mul(u32::try_from(made).unwrap_or(u32::MAX));
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    println!("pages: made {made} commits, done at commit {}", st.commit);
    Ok(ExitCode::SUCCESS)
}

/// Units that a transaction starting now could allocate.
fn available(table: &UnitTable<'_>, oldest: u64) -> usize {
    (0..table.len())
        .filter(|&u| match table.state(u) {
            Some(UnitState::Free) => true,
            Some(UnitState::Retired { as_of }) => as_of <= oldest,
            _ => false,
        })
        .count()
}

/// Commit `c`: its pages into fresh units, the old ones retired as of it, the new root.
fn commit<M: WordMemory + ?Sized>(
    w: &mut Writer<'_, M>,
    table: &mut UnitTable<'_>,
    g: &Geometry,
    st: &mut State,
    c: u64,
    buf: &mut [u8],
) -> Result<(), Failure> {
    if available(table, w.oldest_live()) < g.positions(c).len() {
        // Free retired units sooner: evict everything but the newest entry.
        let next = w.next_seq();
        w.evict_before(next);
    }
    let mut tx = w.begin(g.root_len()).map_err(|e| fail("commit", e))?;
    let seq = tx.seq();
    for j in g.positions(c) {
        let p = g.page_at(j);
        let grant = match tx.alloc_unit(table) {
            Ok(grant) => grant,
            Err(UnitError::Exhausted) => {
                return Err(fail(
                    "units",
                    "no free page unit although the spare should hold a commit's pages (a bug)",
                ))
            }
            Err(e) => return Err(fail("units", e)),
        };
        page_bytes(p, c, buf);
        tx.write_unit(table, &grant, 0, buf)
            .map_err(|e| fail("page write", e))?;
        if st.units[p] != NO_UNIT {
            // No entry from this commit on refers to the old copy of the page.
            table
                .retire(st.units[p] as usize, seq)
                .map_err(|e| fail("retire", e))?;
        }
        st.units[p] = u32::try_from(grant.unit()).map_err(|e| fail("units", e))?;
    }
    let unix_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut root = Vec::with_capacity(g.root_len());
    for h in [c, unix_ns, g.pages as u64, g.per_commit as u64] {
        root.extend_from_slice(&h.to_le_bytes());
    }
    for u in &st.units {
        root.extend_from_slice(&u.to_le_bytes());
    }
    tx.commit(&root).map_err(|e| fail("commit", e))?;
    st.commit = c;
    st.unix_ns = unix_ns;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_rewrites_every_page_once_per_cycle_and_last_write_agrees() {
        for units in [40usize, 500, 4000] {
            let g = Geometry::new(units, 1, 10).unwrap();
            assert!(units - g.pages >= 16 * g.per_commit);
            let pages: std::collections::BTreeSet<usize> =
                (0..g.pages).map(|j| g.page_at(j)).collect();
            assert_eq!(pages.len(), g.pages, "the scatter is a permutation");
            let mut last = vec![None; g.pages];
            for c in 1..=(3 * g.blocks + 5) {
                for j in g.positions(c) {
                    last[j] = Some(c);
                }
                for (j, &l) in last.iter().enumerate() {
                    assert_eq!(
                        g.last_write(j, c),
                        l,
                        "units {units} commit {c} position {j}"
                    );
                }
            }
        }
    }

    /// Restores a region written by 30 commits, then the same with one page made torn, newer
    /// than the root, or older than the root says: each is named, never accepted.
    #[test]
    fn restore_accepts_the_written_state_and_names_a_torn_newer_or_stale_page() {
        use shmsnap_linux::{Mapping, Memfd, Protection};
        use std::sync::atomic::Ordering::Relaxed;
        let len = 1u64 << 20;
        let memfd = Memfd::create("pages-restore", len).unwrap();
        memfd.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        let mut w =
            Writer::open_or_init(map.words(), layout(len), super::super::TEST_CLIENT).unwrap();
        let units = w.unit_count(PAGE);
        let g = Geometry::new(units, 1, 10).unwrap();
        let mut states = vec![0u64; units];
        let mut table = UnitTable::new(&mut states, PAGE).unwrap();
        let mut st = State {
            commit: 0,
            unix_ns: 0,
            units: vec![NO_UNIT; g.pages],
        };
        let mut buf = vec![0u8; PAGE];
        for c in 1..=30 {
            commit(&mut w, &mut table, &g, &mut st, c, &mut buf).unwrap();
        }
        let tail = w.layout().tail_offset as usize / 8;
        let check = || {
            let mut s = vec![0u64; units];
            let mut t = UnitTable::new(&mut s, PAGE).unwrap();
            restore(w.region(), &mut t, &g).unwrap().map(|st| st.commit)
        };
        assert_eq!(check(), Ok(30));
        // The page commit 30 wrote.
        let p = g.page_at(g.positions(30).start);
        let at = tail + st.units[p] as usize * WORDS;
        let words = &map.words()[at..at + WORDS];
        let fill = |c: u64| {
            for (k, x) in words.iter().enumerate() {
                x.store(page_word(p, c, k), Relaxed);
            }
        };
        words[100].fetch_xor(1, Relaxed);
        assert!(check().unwrap_err().contains("torn"), "{:?}", check());
        fill(31);
        assert!(check()
            .unwrap_err()
            .contains("newer than the restored root"));
        fill(1);
        assert!(check()
            .unwrap_err()
            .contains("older than the restored root"));
        fill(30);
        assert_eq!(check(), Ok(30));
    }

    #[test]
    fn a_page_word_differs_by_page_commit_and_word() {
        assert_ne!(page_word(3, 5, 9), page_word(3, 6, 9));
        assert_ne!(page_word(3, 5, 9), page_word(4, 5, 9));
        assert_ne!(page_word(3, 5, 9), page_word(3, 5, 10));
    }
}
