//! Unit tests that need the crate's test seams: the crash points of the delta write, and the
//! broken twins (a writer without `fdatasync`, a reader without the link or data-CRC check).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::listing::Checks;
use super::restore::restore_with;
use super::*;
use crate::atomic_file::crash_point;
use crate::copy::{read_full_at, write_all_at};
use crate::memfd::Memfd;
use crate::persist::Persister;
use crate::snapshot::{self, SnapshotMeta};

const PAGE: u64 = 4096;
/// 24 pages and a partial one: runs may end at the image's end.
const IMAGE: u64 = 24 * PAGE + 1024;

/// xorshift64*: deterministic test randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn bytes_of(fd: impl AsFd, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    assert_eq!(read_full_at(fd, &mut v, 0).unwrap(), len as usize);
    v
}

/// Writes random bytes into `pages` random pages of `region`; returns the written runs.
fn scribble(region: &Memfd, rng: &mut Rng, pages: u64) -> Vec<Run> {
    let mut runs = Vec::new();
    for _ in 0..pages {
        let p = rng.below(IMAGE.div_ceil(PAGE));
        let len = PAGE.min(IMAGE - p * PAGE);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        write_all_at(region, &data, p * PAGE).unwrap();
        runs.push(Run {
            offset: p * PAGE,
            len,
        });
    }
    plan_runs(runs, 0, IMAGE)
}

/// A target with a base of generation `generation` holding `region`.
struct Fixture {
    _dir: tempfile::TempDir,
    target: PathBuf,
    persister: Persister,
    region: Memfd,
    tip: Tip,
    rng: Rng,
}

impl Fixture {
    fn new(seed: u64, generation: u64) -> Fixture {
        Fixture::with_base_pages(seed, generation, 30)
    }

    /// A fixture whose base holds `pages` random page writes (0: a base of holes only).
    fn with_base_pages(seed: u64, generation: u64, pages: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.snap");
        let persister = Persister::new(&target, 1).unwrap();
        let region = Memfd::create("region", IMAGE).unwrap();
        let mut rng = Rng(seed | 1);
        scribble(&region, &mut rng, pages);
        let mut f = Fixture {
            _dir: dir,
            target,
            persister,
            region,
            // Replaced by the base's tip just below.
            tip: Tip::of_base(&snapshot::SnapshotInfo {
                version: 1,
                image_len: IMAGE,
                meta: meta(0),
                image_crc: 0,
            }),
            rng,
        };
        f.write_base(generation);
        f
    }

    fn write_base(&mut self, generation: u64) {
        let region = &self.region;
        let (info, _) = self
            .persister
            .persist_with(|file| snapshot::write_snapshot(region, file, IMAGE, meta(generation)))
            .unwrap();
        self.tip = Tip::of_base(&info.0);
    }

    fn chain_dir(&self) -> PathBuf {
        chain_dir(&self.target)
    }

    /// One round: random pages written, then a delta of them committed.
    fn delta(&mut self, pages: u64, time: u64) -> DeltaInfo {
        let runs = scribble(&self.region, &mut self.rng, pages);
        let mut w = DeltaWriter::begin(&self.persister, &self.tip, &runs, 0).unwrap();
        w.copy_from(&self.region).unwrap();
        let info = w.commit(dmeta(time)).unwrap();
        self.tip = info.tip();
        info
    }

    fn restore(&self, checks: Checks) -> Result<(Vec<u8>, RestoreReport), ChainError> {
        let back = Memfd::create("back", IMAGE).unwrap();
        let r = restore_with(
            &self.target,
            &self.chain_dir(),
            back.as_fd(),
            Some(IMAGE),
            At::Latest,
            checks,
        )?;
        Ok((bytes_of(&back, IMAGE), r))
    }
}

fn meta(generation: u64) -> SnapshotMeta {
    SnapshotMeta {
        strategy: 0,
        generation,
        unix_time_ns: generation * 1000,
    }
}

fn dmeta(time: u64) -> DeltaMeta {
    DeltaMeta {
        next_seq_before: 0,
        next_seq: 0,
        unix_time_ns: time,
    }
}

fn temp_of(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".delta.tmp.")
        })
}

/// What a crash did to data that was written but not yet `fdatasync`ed.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Intact,
    /// Cut to `k`/4 of its length.
    Truncate(u64),
    /// Second half zeroed.
    ZeroTail,
    /// One byte changed at `k`/4 of the length (k = 4: the last byte).
    Garble(u64),
    /// The file's directory entry never reached the disk.
    Vanish,
}

const LOSSES: [Loss; 11] = [
    Loss::Intact,
    Loss::Truncate(0),
    Loss::Truncate(1),
    Loss::Truncate(2),
    Loss::Truncate(3),
    Loss::ZeroTail,
    Loss::Garble(0),
    Loss::Garble(1),
    Loss::Garble(2),
    Loss::Garble(4),
    Loss::Vanish,
];

fn lose(path: &Path, loss: Loss) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    match loss {
        Loss::Intact => {}
        Loss::Truncate(k) => f.set_len(len * k / 4).unwrap(),
        Loss::ZeroTail => write_all_at(&f, &vec![0u8; (len - len / 2) as usize], len / 2).unwrap(),
        Loss::Garble(k) => {
            let at = (len * k / 4).min(len.saturating_sub(1));
            let mut b = [0u8];
            read_full_at(&f, &mut b, at).unwrap();
            write_all_at(&f, &[b[0] ^ 0x5a], at).unwrap();
        }
        Loss::Vanish => std::fs::remove_file(path).unwrap(),
    }
}

/// One crash case: a chain of two deltas (the old state), then a third delta written with
/// a cut after `completed` of its five steps (create, footer, fdatasync, rename, dir fsync),
/// unsynced data damaged by `loss`, an unsynced rename undone if `undo`. Returns what is wrong
/// (empty if the chain restores to the old or the new state, and to the new one if the
/// commit returned `Ok`).
fn crash_case(completed: usize, loss: Loss, undo: bool, skip_datasync: bool) -> Vec<String> {
    let mut fx = Fixture::new(completed as u64 * 31 + 7, 1);
    fx.delta(3, 10);
    fx.delta(2, 20);
    let old = bytes_of(&fx.region, IMAGE);
    let runs = scribble(&fx.region, &mut fx.rng, 4);
    let new = bytes_of(&fx.region, IMAGE);
    assert_ne!(old, new);

    crash_point::arm((completed < 5).then(|| completed - 1));
    let syncs_before = crash_point::syncs();
    let committed = (|| {
        let mut w = DeltaWriter::begin(&fx.persister, &fx.tip, &runs, 0)?;
        w.skip_datasync = skip_datasync;
        w.copy_from(&fx.region)?;
        w.commit(dmeta(30))
    })()
    .is_ok();
    crash_point::arm(None);

    // What the writer really synced (the hook counts every fdatasync), not what it should
    // have: a writer that skips the sync loses the unsynced data here and fails the case.
    let data_synced = crash_point::syncs() > syncs_before;
    let renamed = completed >= 4;
    let dir_synced = completed >= 5;
    let final_path = fx.chain_dir().join(delta_name(1, 3));
    let path = if renamed {
        final_path.clone()
    } else {
        temp_of(&fx.chain_dir()).expect("temp file left by the crash")
    };
    if !data_synced {
        lose(&path, loss);
    }
    if renamed && !dir_synced && undo && path.exists() {
        std::fs::rename(&path, fx.chain_dir().join(".delta.tmp.undone")).unwrap();
    }

    let mut wrong = Vec::new();
    match fx.restore(Checks::ALL) {
        Err(e) => wrong.push(format!("restore failed: {e}")),
        Ok((got, report)) => {
            if got != old && got != new {
                wrong.push("restored a mix of the old and the new state".into());
            }
            if committed && got != new {
                let why = report
                    .listing
                    .stop
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                wrong.push(format!("commit returned Ok but the state is old ({why})"));
            }
        }
    }
    wrong
}

#[test]
fn every_cut_of_a_delta_write_restores_to_the_old_or_the_new_chain() {
    let mut cases = 0;
    for completed in 1..=5 {
        for loss in LOSSES {
            for undo in [false, true] {
                let wrong = crash_case(completed, loss, undo, false);
                assert!(
                    wrong.is_empty(),
                    "cut after {completed}, {loss:?}, undo {undo}: {wrong:?}"
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 110);
}

#[test]
fn twin_writer_without_fdatasync_fails_the_crash_test() {
    let failures: usize = LOSSES
        .iter()
        .map(|&loss| crash_case(5, loss, false, true))
        .filter(|w| !w.is_empty())
        .count();
    // Every loss but Intact turns a committed delta into a torn one.
    assert_eq!(failures, LOSSES.len() - 1);
}

/// (d): base B replaces base A under the same generation; A's deltas must not apply to B.
/// Returns what is wrong.
fn foreign_base_case(checks: Checks) -> Vec<String> {
    let mut fx = Fixture::new(99, 5);
    fx.delta(3, 10);
    fx.delta(3, 20);
    // A new base of the same generation over different bytes (a reused generation number).
    scribble(&fx.region, &mut fx.rng, 5);
    fx.write_base(5);
    let base_b = bytes_of(&fx.region, IMAGE);
    let mut wrong = Vec::new();
    match fx.restore(checks) {
        Err(e) => wrong.push(format!("restore failed: {e}")),
        Ok((got, report)) => {
            if got != base_b {
                wrong.push("deltas of another base were applied".into());
            }
            match report.listing.stop.as_ref().map(ChainError::kind) {
                Some(ChainErrorKind::WrongBase {
                    field: "image CRC", ..
                }) => {}
                other => wrong.push(format!("no WrongBase refusal: {other:?}")),
            }
            if report.listing.ignored.len() != 2 {
                wrong.push(format!("ignored {:?}", report.listing.ignored));
            }
        }
    }
    wrong
}

#[test]
fn delta_whose_base_crc_differs_is_refused() {
    assert_eq!(foreign_base_case(Checks::ALL), Vec::<String>::new());
}

#[test]
fn twin_reader_without_the_link_check_applies_a_foreign_chain() {
    let twin = Checks {
        link: false,
        ..Checks::ALL
    };
    let wrong = foreign_base_case(twin);
    assert!(
        wrong.iter().any(|w| w.contains("another base")),
        "the twin passed: {wrong:?}"
    );
}

/// (c), for one flipped byte of delta 2 of 3: the state must be base + delta 1, the stop must
/// name delta 2. Returns what is wrong.
fn flipped_byte_case(at: u64, checks: Checks) -> Vec<String> {
    let mut fx = Fixture::new(at * 7 + 3, 2);
    fx.delta(2, 10);
    let after_one = bytes_of(&fx.region, IMAGE);
    let second = fx.delta(3, 20);
    fx.delta(2, 30);
    let len = std::fs::metadata(&second.path).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&second.path)
        .unwrap();
    let at = at % len;
    let mut b = [0u8];
    read_full_at(&f, &mut b, at).unwrap();
    write_all_at(&f, &[b[0] ^ 0x10], at).unwrap();
    let mut wrong = Vec::new();
    match fx.restore(checks) {
        Err(e) => wrong.push(format!("restore failed: {e}")),
        Ok((got, report)) => {
            if got != after_one {
                wrong.push(format!("byte {at}: the state is not base + delta 1"));
            }
            match &report.listing.stop {
                Some(e) if e.path() == Some(second.path.as_path()) => {}
                other => wrong.push(format!("byte {at}: stop {other:?}")),
            }
        }
    }
    wrong
}

#[test]
fn twin_reader_without_the_data_crc_applies_a_corrupt_delta() {
    let twin = Checks {
        data_crc: false,
        ..Checks::ALL
    };
    // Byte 4096 + 100: inside the data section (the table is one 4096-byte granule).
    let wrong = flipped_byte_case(4096 + 100, twin);
    assert!(!wrong.is_empty(), "the twin passed");
    assert_eq!(
        flipped_byte_case(4096 + 100, Checks::ALL),
        Vec::<String>::new()
    );
}

#[test]
fn every_flipped_byte_of_a_delta_ends_the_chain_before_it() {
    // Every byte of the table granule's first run entries, the footer, and a stride of data.
    let len = {
        let mut fx = Fixture::new(1, 2);
        fx.delta(2, 10);
        let second = fx.delta(3, 20);
        std::fs::metadata(second.path).unwrap().len()
    };
    let mut positions: Vec<u64> = (0..64).collect();
    positions.extend([4095, 4096, 4097]);
    positions.extend((4096..len - 128).step_by(1531));
    positions.extend(len - 128..len);
    for at in positions {
        let wrong = flipped_byte_case(at, Checks::ALL);
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}

/// The restore sweeps base and deltas together in chunks of 3 pages with read-aheads of 2.5
/// pages here (`CHUNK`, `AHEAD` under `cfg(test)`): runs of several pages straddle both, runs
/// land in holes of the base, and later deltas overwrite earlier ones.
#[test]
fn chains_of_overlapping_deltas_over_a_sparse_base_restore_byte_for_byte() {
    for seed in 0..40 {
        let mut fx = Fixture::with_base_pages(seed * 131 + 5, 2, seed % 9);
        for k in 0..(seed % 6 + 1) {
            fx.delta(1 + (seed + k) % 12, 10 + k);
        }
        let (got, report) = fx.restore(Checks::ALL).unwrap();
        assert!(report.listing.stop.is_none(), "seed {seed}: {report:?}");
        assert!(
            got == bytes_of(&fx.region, IMAGE),
            "seed {seed}: bytes differ"
        );
        // Pages never written stay holes: the sweep writes holes of the base only where a
        // delta has runs (the region holds exactly the pages ever written). One page more at
        // most: the image's partial last page shares a file block with the base's footer, so
        // it is a data extent of the base.
        let back = Memfd::create("back", IMAGE).unwrap();
        restore_chain(&fx.target, &fx.chain_dir(), &back, At::Latest).unwrap();
        let (a, b) = (back.allocated().unwrap(), fx.region.allocated().unwrap());
        assert!(
            a <= b + PAGE,
            "seed {seed}: restore allocated {a} bytes, the region {b}"
        );
    }
}

/// A destination that refuses writes fails the restore; it must not pass for a bad delta
/// (which would silently restore an older state).
#[test]
fn destination_write_failure_fails_the_restore_instead_of_cutting_the_chain() {
    // A base of holes only: the deltas' runs are written by the hole path of the sweep.
    let mut fx = Fixture::with_base_pages(9, 2, 0);
    fx.delta(3, 10);
    fx.delta(2, 20);
    for data_base in [false, true] {
        if data_base {
            fx = Fixture::new(9, 2);
            fx.delta(3, 10);
        }
        // Empty and sealed against writes: sizing it works, every write fails (EPERM).
        let back = Memfd::create("sealed", 0).unwrap();
        rustix::fs::fcntl_add_seals(&back, rustix::fs::SealFlags::WRITE).unwrap();
        let r = restore_with(
            &fx.target,
            &fx.chain_dir(),
            back.as_fd(),
            Some(IMAGE),
            At::Latest,
            Checks::ALL,
        );
        match r {
            Err(e) => assert!(e.path().is_none(), "blamed a file: {e}"),
            Ok(r) => panic!("restored into a sealed memfd (data base {data_base}): {r:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Issue 20, finding 6: a file system without RENAME_NOREPLACE (injected through the
// `noreplace::inject` seam: no such file system here)
// ---------------------------------------------------------------------------------------

/// Commits 3 deltas with `renameat2` failing with `rename2` and `linkat` with `link`; checks
/// one notice naming `mechanism`, exactly one `fdatasync` per delta, no temp file left, the
/// chain restoring to the region, and a taken name still refused ([`ChainErrorKind::Occupied`]).
fn commits_without_rename_noreplace(
    rename2: rustix::io::Errno,
    link: Option<rustix::io::Errno>,
    mechanism: crate::noreplace::Mechanism,
    expect_calls: (usize, usize),
) {
    use crate::noreplace::inject;
    let mut fx = Fixture::new(61, 1);
    inject::set(Some(rename2), link);
    let syncs = crash_point::syncs();
    let mut notices = Vec::new();
    for t in 1..=3 {
        fx.delta(3, t);
        notices.extend(fx.persister.no_replace().take_notice());
    }
    let calls = inject::calls();
    inject::set(None, None);
    assert_eq!(notices.len(), 1, "one notice: {notices:?}");
    assert!(
        notices[0].contains("renameat2(RENAME_NOREPLACE)") && notices[0].contains("statfs type"),
        "{}",
        notices[0]
    );
    assert_eq!(fx.persister.no_replace().mechanism(), mechanism);
    assert_eq!(
        calls, expect_calls,
        "(renameat2, linkat) calls: detected once"
    );
    assert_eq!(
        crash_point::syncs() - syncs,
        3,
        "one fdatasync per delta, nothing twice"
    );
    assert_eq!(temp_of(&fx.chain_dir()), None, "no temp file left");
    let (got, report) = fx.restore(Checks::ALL).unwrap();
    assert_eq!(report.listing.deltas.len(), 3);
    assert_eq!(got, bytes_of(&fx.region, IMAGE));

    // A name that exists is still never replaced.
    inject::set(Some(rename2), link);
    let taken = fx.chain_dir().join(delta_name(1, 4));
    std::fs::write(&taken, b"someone else's").unwrap();
    let runs = scribble(&fx.region, &mut fx.rng, 1);
    let mut w = DeltaWriter::begin(&fx.persister, &fx.tip, &runs, 0).unwrap();
    w.copy_from(&fx.region).unwrap();
    let e = w.commit(dmeta(9)).unwrap_err();
    inject::set(None, None);
    assert!(matches!(e.kind(), ChainErrorKind::Occupied), "{e}");
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
    assert_eq!(temp_of(&fx.chain_dir()), None, "the temp file is removed");
}

#[test]
fn deltas_are_named_by_link_where_rename_noreplace_is_unsupported() {
    for errno in [
        rustix::io::Errno::INVAL,
        rustix::io::Errno::NOSYS,
        rustix::io::Errno::OPNOTSUPP,
    ] {
        commits_without_rename_noreplace(errno, None, crate::noreplace::Mechanism::Link, (1, 3));
    }
}

#[test]
fn deltas_are_named_by_check_then_rename_without_hard_links_either() {
    commits_without_rename_noreplace(
        rustix::io::Errno::INVAL,
        Some(rustix::io::Errno::PERM),
        crate::noreplace::Mechanism::CheckThenRename,
        (1, 1),
    );
}

#[test]
fn every_cut_of_a_delta_write_restores_to_the_old_or_the_new_chain_under_the_link_fallback() {
    use crate::noreplace::inject;
    for completed in 1..=5 {
        for loss in LOSSES {
            for undo in [false, true] {
                inject::set(Some(rustix::io::Errno::INVAL), None);
                let wrong = crash_case(completed, loss, undo, false);
                inject::set(None, None);
                assert!(
                    wrong.is_empty(),
                    "cut after {completed}, {loss:?}, undo {undo}: {wrong:?}"
                );
            }
        }
    }
}

#[test]
fn the_highest_generation_counts_footers_and_the_chain_directorys_delta_names() {
    let mut fx = Fixture::new(5, 7);
    fx.delta(1, 1);
    assert_eq!(highest_generation(&fx.persister).unwrap(), Some(7));
    // A delta left by a base of generation 9 that is gone (set aside, or its footer lost):
    // a new base must not take generation 9 and find that delta in its chain.
    let stale = fx.chain_dir().join(delta_name(9, 1));
    std::fs::write(&stale, b"x").unwrap();
    assert_eq!(highest_generation(&fx.persister).unwrap(), Some(9));
    std::fs::remove_file(&stale).unwrap();
    fx.write_base(u64::MAX);
    assert_eq!(highest_generation(&fx.persister).unwrap(), Some(u64::MAX));
}
