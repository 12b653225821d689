//! The snapshot chain through its public API: round trips to every state, point-in-time
//! selection, torn and missing deltas, cleanup of superseded chains, the compaction policy,
//! and hostile bytes (proptest).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shmsnap_linux::chain::{
    self, At, ChainErrorKind, ChainListing, CompactionPolicy, DeltaInfo, DeltaMeta, DeltaWriter,
    Next, Run, Tip,
};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotMeta};
use shmsnap_linux::Memfd;

const PAGE: u64 = 4096;
/// 64 pages and a partial one.
const IMAGE: u64 = 64 * PAGE + 2048;

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

fn pread_all(fd: impl AsFd, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    let mut got = 0;
    while got < v.len() {
        let n = rustix::io::pread(&fd, &mut v[got..], got as u64).unwrap();
        assert!(n > 0, "short file");
        got += n;
    }
    v
}

fn pwrite_all(fd: impl AsFd, data: &[u8], at: u64) {
    let mut done = 0;
    while done < data.len() {
        done += rustix::io::pwrite(&fd, &data[done..], at + done as u64).unwrap();
    }
}

fn meta(generation: u64) -> SnapshotMeta {
    SnapshotMeta {
        strategy: 0,
        generation,
        unix_time_ns: generation * 1_000_000,
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    target: PathBuf,
    persister: Persister,
    region: Memfd,
    tip: Option<Tip>,
    rng: Rng,
}

impl Fixture {
    fn new(seed: u64, keep: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.snap");
        let persister = Persister::new(&target, keep).unwrap();
        let region = Memfd::create("region", IMAGE).unwrap();
        let mut f = Fixture {
            dir,
            target,
            persister,
            region,
            tip: None,
            rng: Rng(seed | 1),
        };
        f.scribble(40);
        f
    }

    fn scribble(&mut self, pages: u64) -> Vec<Run> {
        let mut runs = Vec::new();
        for _ in 0..pages {
            let p = self.rng.below(IMAGE.div_ceil(PAGE));
            let len = PAGE.min(IMAGE - p * PAGE);
            let data: Vec<u8> = (0..len).map(|_| self.rng.next() as u8).collect();
            pwrite_all(&self.region, &data, p * PAGE);
            runs.push(Run {
                offset: p * PAGE,
                len,
            });
        }
        chain::plan_runs(runs, 0, IMAGE)
    }

    fn base(&mut self, generation: u64) {
        let region = &self.region;
        let ((info, _), _) = self
            .persister
            .persist_with(|f| snapshot::write_snapshot(region, f, IMAGE, meta(generation)))
            .unwrap();
        self.tip = Some(Tip::of_base(&info));
    }

    fn delta(&mut self, pages: u64, dmeta: DeltaMeta) -> DeltaInfo {
        let runs = self.scribble(pages);
        let mut w =
            DeltaWriter::begin(&self.persister, self.tip.as_ref().unwrap(), &runs, 0).unwrap();
        assert_eq!(
            w.copy_from(&self.region).unwrap(),
            runs.iter().map(|r| r.len).sum()
        );
        let info = w.commit(dmeta).unwrap();
        self.tip = Some(info.tip());
        info
    }

    fn state(&self) -> Vec<u8> {
        pread_all(&self.region, IMAGE)
    }

    fn chain_dir(&self) -> PathBuf {
        chain::chain_dir(&self.target)
    }

    fn restore(&self, base: &Path, at: At) -> (Vec<u8>, chain::RestoreReport) {
        let back = Memfd::create("back", IMAGE).unwrap();
        let r = chain::restore_chain(base, &self.chain_dir(), &back, at).unwrap();
        (pread_all(&back, IMAGE), r)
    }
}

fn at_time(t: u64) -> DeltaMeta {
    DeltaMeta {
        next_seq_before: 0,
        next_seq: 0,
        unix_time_ns: t,
    }
}

#[test]
fn base_plus_deltas_restores_byte_for_byte_to_every_state() {
    let mut fx = Fixture::new(42, 1);
    fx.base(1);
    let mut states = vec![fx.state()];
    let mut times = vec![1_000_000];
    for round in 1..=12u64 {
        let pages = 1 + fx.rng.below(10);
        let t = 1_000_000 + round * 1000;
        let info = fx.delta(pages, at_time(t));
        assert_eq!(info.footer.index, round);
        states.push(fx.state());
        times.push(t);
    }
    let (latest, report) = fx.restore(&fx.target, At::Latest);
    assert!(latest == states[12], "latest state differs");
    assert_eq!(report.listing.deltas.len(), 12);
    assert!(report.listing.stop.is_none() && report.listing.ignored.is_empty());
    assert_eq!(report.tip(), fx.tip.unwrap());

    for (k, want) in states.iter().enumerate() {
        // Restore into a region, by position and by time (exact and in between).
        for at in [
            At::Deltas(k as u64),
            At::Time(times[k]),
            At::Time(times[k] + 999),
        ] {
            let (got, r) = fx.restore(&fx.target, at);
            assert!(got == *want, "state {k} at {at:?} differs");
            assert_eq!(r.listing.deltas.len(), k);
            assert_eq!(r.listing.ignored.len(), 12 - k, "{at:?}");
            assert_eq!(r.unix_time_ns, times[k]);
        }
        // A standalone snapshot file of the same state: verifies, restores with today's code.
        let out = fx.dir.path().join(format!("pit-{k}.snap"));
        let f = std::fs::File::create_new(&out).unwrap();
        let (info, _) =
            chain::materialize(&fx.target, &fx.chain_dir(), At::Deltas(k as u64), &f).unwrap();
        assert_eq!(snapshot::verify_path(&out).unwrap(), info);
        assert_eq!(
            (info.meta.generation, info.meta.unix_time_ns),
            (1, times[k])
        );
        let back = Memfd::create("b", IMAGE).unwrap();
        snapshot::restore_path(&out, &back).unwrap();
        assert!(
            pread_all(&back, IMAGE) == *want,
            "materialized state {k} differs"
        );
    }
    let back = Memfd::create("b", IMAGE).unwrap();
    for at in [At::Time(999_999), At::Deltas(13)] {
        let e = chain::restore_chain(&fx.target, &fx.chain_dir(), &back, at).unwrap_err();
        assert!(matches!(e.kind(), ChainErrorKind::NotInChain { .. }), "{e}");
        assert!(e.to_string().contains("state.snap"), "{e}");
    }
    let verified = chain::verify_chain(&fx.target, &fx.chain_dir()).unwrap();
    assert_eq!(verified.deltas.len(), 12);
    assert!(verified.stop.is_none());
}

#[test]
fn point_in_time_by_seq_uses_the_next_seq_hints() {
    let mut fx = Fixture::new(7, 1);
    fx.base(3);
    let mut states = vec![fx.state()];
    for k in 1..=4u64 {
        fx.delta(
            2,
            DeltaMeta {
                next_seq_before: 90 + 10 * k,
                next_seq: 100 + 10 * k,
                unix_time_ns: k,
            },
        );
        states.push(fx.state());
    }
    // State k holds seqs below 100 + 10k (up to 99 + 10k): the newest state with nothing
    // past seq s.
    for (seq, k) in [
        (0, 0),
        (108, 0),
        (109, 1),
        (118, 1),
        (119, 2),
        (138, 3),
        (139, 4),
        (1 << 40, 4),
    ] {
        let (got, r) = fx.restore(&fx.target, At::Seq(seq));
        assert_eq!(r.listing.deltas.len(), k, "seq {seq}");
        assert!(got == states[k], "seq {seq}");
    }
}

#[test]
fn torn_or_missing_deltas_end_the_chain_and_are_named() {
    let mut fx = Fixture::new(3, 1);
    fx.base(1);
    let mut states = vec![fx.state()];
    let mut paths = Vec::new();
    for k in 1..=4 {
        paths.push(fx.delta(3, at_time(k)).path);
        states.push(fx.state());
    }
    // Torn tail: the last delta cut short (a crash before its data reached the disk).
    let len = std::fs::metadata(&paths[3]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[3])
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    let (got, r) = fx.restore(&fx.target, At::Latest);
    assert!(got == states[3]);
    let stop = r.listing.stop.unwrap();
    assert!(matches!(stop.kind(), ChainErrorKind::BadMagic), "{stop}");
    assert_eq!(stop.path(), Some(paths[3].as_path()));
    assert!(stop.to_string().contains("00000004.delta"), "{stop}");
    assert_eq!(r.listing.ignored, vec![paths[3].clone()]);

    // A delta removed from the middle: the chain ends before it.
    std::fs::remove_file(&paths[1]).unwrap();
    let (got, r) = fx.restore(&fx.target, At::Latest);
    assert!(got == states[1]);
    let stop = r.listing.stop.unwrap();
    assert!(
        matches!(stop.kind(), ChainErrorKind::Missing { index: 2 }),
        "{stop}"
    );
    assert_eq!(r.listing.ignored, vec![paths[2].clone(), paths[3].clone()]);
    // Listing alone (inspect) says the same without reading any data.
    let l = ChainListing::load(&fx.target, &fx.chain_dir()).unwrap();
    assert_eq!(l.deltas.len(), 1);
    assert_eq!(l.deltas[0].pages(), l.deltas[0].footer.data_len / PAGE);
}

#[test]
fn a_delta_name_that_exists_is_never_overwritten() {
    let mut fx = Fixture::new(5, 1);
    fx.base(1);
    let first = fx.delta(2, at_time(1));
    let stale = std::fs::read(&first.path).unwrap();
    // A new base that reuses generation 1 (a host whose counter went back), then a delta.
    fx.base(1);
    let runs = fx.scribble(2);
    let mut w = DeltaWriter::begin(&fx.persister, fx.tip.as_ref().unwrap(), &runs, 0).unwrap();
    w.copy_from(&fx.region).unwrap();
    let temp = w.temp_path();
    let e = w.commit(at_time(2)).unwrap_err();
    assert!(matches!(e.kind(), ChainErrorKind::Occupied), "{e}");
    assert_eq!(e.path(), Some(first.path.as_path()));
    assert!(!temp.exists(), "the refused temp file was left behind");
    assert_eq!(std::fs::read(&first.path).unwrap(), stale);
    // And the stale delta does not link to the new base: the state is the new base.
    let base_now = {
        let back = Memfd::create("b", IMAGE).unwrap();
        snapshot::restore_path(&fx.target, &back).unwrap();
        pread_all(&back, IMAGE)
    };
    let (got, r) = fx.restore(&fx.target, At::Latest);
    assert!(got == base_now);
    assert!(matches!(
        r.listing.stop.unwrap().kind(),
        ChainErrorKind::WrongBase { .. }
    ));
}

#[test]
fn superseded_chains_are_removed_only_after_their_base_left_the_kept_set() {
    let mut fx = Fixture::new(11, 1);
    fx.base(1);
    let g1: Vec<PathBuf> = (1..=2).map(|t| fx.delta(2, at_time(t)).path).collect();
    fx.base(2);
    let c = chain::remove_superseded(&fx.persister).unwrap();
    assert!(c.removed.is_empty(), "base 1 is still kept as state.snap.1");
    let g2_state = {
        fx.delta(2, at_time(10));
        fx.state()
    };
    // The previous generation and its chain still restore (fallback / point in time).
    let older = fx.dir.path().join("state.snap.1");
    let (_, r) = fx.restore(&older, At::Latest);
    assert_eq!(r.listing.deltas.len(), 2);
    assert_eq!(r.listing.base.meta.generation, 1);

    // A stale temp file of a crashed write, then generation 3: base 1 leaves the set.
    std::fs::write(fx.chain_dir().join(".delta.tmp.0123456789abcdef"), b"torn").unwrap();
    fx.base(3);
    let c = chain::remove_superseded(&fx.persister).unwrap();
    assert_eq!(c.removed, g1);
    assert_eq!((c.temps, c.kept_in_doubt), (1, false));
    assert!(g1.iter().all(|p| !p.exists()));
    let (got, r) = fx.restore(&older, At::Latest);
    assert_eq!(r.listing.base.meta.generation, 2);
    assert!(got == g2_state);
}

#[test]
fn restore_refuses_a_small_region_and_zeroes_a_larger_one() {
    let mut fx = Fixture::new(13, 1);
    fx.base(1);
    fx.delta(3, at_time(1));
    let small = Memfd::create("s", IMAGE - 8).unwrap();
    let e = chain::restore_chain(&fx.target, &fx.chain_dir(), &small, At::Latest).unwrap_err();
    assert!(
        matches!(e.kind(), ChainErrorKind::RegionTooSmall { .. }),
        "{e}"
    );
    let big = Memfd::create("b", IMAGE + 3 * PAGE).unwrap();
    pwrite_all(&big, &vec![0xee; (IMAGE + 3 * PAGE) as usize], 0);
    chain::restore_chain(&fx.target, &fx.chain_dir(), &big, At::Latest).unwrap();
    let all = pread_all(&big, IMAGE + 3 * PAGE);
    assert!(all[..IMAGE as usize] == fx.state()[..]);
    assert!(all[IMAGE as usize..].iter().all(|&b| b == 0));
}

#[test]
fn corrupt_base_is_a_base_error_naming_it() {
    let mut fx = Fixture::new(17, 1);
    fx.base(1);
    fx.delta(3, at_time(1));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&fx.target)
        .unwrap();
    pwrite_all(&f, b"rot", 100);
    let back = Memfd::create("b", IMAGE).unwrap();
    let e = chain::restore_chain(&fx.target, &fx.chain_dir(), &back, At::Latest).unwrap_err();
    match e.kind() {
        ChainErrorKind::Base(s) => {
            assert!(matches!(
                s.kind(),
                snapshot::SnapshotErrorKind::ImageChecksum { .. }
            ));
            assert_eq!(s.path(), Some(fx.target.as_path()));
        }
        k => panic!("{k:?}"),
    }
    assert!(chain::verify_chain(&fx.target, &fx.chain_dir()).is_err());
}

#[test]
fn plan_runs_adds_the_meta_pages_widens_clips_and_merges() {
    let runs = chain::plan_runs(
        [
            Run {
                offset: 5 * PAGE + 10,
                len: 20,
            },
            Run {
                offset: PAGE,
                len: PAGE,
            },
            Run {
                offset: 6 * PAGE,
                len: PAGE,
            },
            Run {
                offset: 64 * PAGE,
                len: 3 * PAGE,
            },
        ],
        PAGE + 64,
        IMAGE,
    );
    assert_eq!(
        runs,
        vec![
            Run {
                offset: 0,
                len: 2 * PAGE
            },
            Run {
                offset: 5 * PAGE,
                len: 2 * PAGE
            },
            Run {
                offset: 64 * PAGE,
                len: 2048
            },
        ]
    );
    let len = runs.iter().map(|r| r.len).sum();
    chain::check_runs(&runs, IMAGE, PAGE + 64, len).unwrap();
}

#[test]
fn compaction_policy_asks_for_a_base_past_the_ratio_or_the_count() {
    let p = CompactionPolicy::default();
    assert_eq!((p.max_ratio_percent, p.max_deltas), (25, 64));
    let base = 1000;
    assert_eq!(p.decide(base, 0, 0, 250), Next::Delta);
    assert_eq!(p.decide(base, 3, 200, 50), Next::Delta);
    assert_eq!(
        p.decide(base, 3, 200, 51),
        Next::Base(chain::BaseReason::Ratio)
    );
    assert_eq!(
        p.decide(base, 64, 0, 0),
        Next::Base(chain::BaseReason::Count)
    );
    assert_eq!(
        p.decide(0, 0, 0, 0),
        Next::Base(chain::BaseReason::EmptyBase)
    );
    assert_eq!(
        p.decide(u64::MAX, u64::MAX - 1, u64::MAX, u64::MAX),
        Next::Base(chain::BaseReason::Count)
    );
    let never = CompactionPolicy {
        max_ratio_percent: u64::MAX,
        max_deltas: u64::MAX,
    };
    assert_eq!(never.decide(u64::MAX, 5, u64::MAX, u64::MAX), Next::Delta);
}

/// The bytes of one small valid delta (2 runs) of an image of `IMAGE` bytes.
fn valid_delta_bytes() -> Vec<u8> {
    let mut fx = Fixture::new(21, 1);
    fx.base(1);
    let info = fx.delta(2, at_time(1));
    std::fs::read(info.path).unwrap()
}

fn memfd_of(bytes: &[u8]) -> Memfd {
    let m = Memfd::create("d", 0).unwrap();
    pwrite_all(&m, bytes, 0);
    m
}

/// `true` if a reader accepts `bytes` as a whole delta (footer, table and data CRC).
fn accepted(bytes: &[u8]) -> bool {
    let Ok((f, _)) = chain::read_delta(memfd_of(bytes)) else {
        return false;
    };
    let data = &bytes[f.table_len() as usize..(f.table_len() + f.data_len) as usize];
    crc_fast::crc32_iscsi(data) == f.data_crc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = chain::read_delta(memfd_of(&bytes));
        let mut b = [0u8; chain::DELTA_FOOTER_LEN];
        let n = bytes.len().min(b.len());
        b[..n].copy_from_slice(&bytes[..n]);
        let _ = chain::decode_delta_footer(&b);
        // The same bytes with a correct footer CRC reach the field checks and the table.
        b[..8].copy_from_slice(&chain::DELTA_MAGIC);
        let crc = crc_fast::crc32_iscsi(&b[..124]);
        b[124..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(f) = chain::decode_delta_footer(&b) {
            let _ = chain::decode_table(&bytes, &f);
            let mut file = bytes.clone();
            file.extend_from_slice(&b);
            let _ = chain::read_delta(memfd_of(&file));
        }
        let _ = chain::parse_delta_name(&bytes);
    }

    #[test]
    fn arbitrary_runs_never_panic_and_planned_runs_are_valid(
        raw in proptest::collection::vec((any::<u64>(), any::<u64>()), 0..20),
        image_words in 1u64..100_000,
        meta in 0u64..100_000,
    ) {
        let image_len = image_words * 8;
        let meta_len = (meta * 8).min(image_len);
        let runs: Vec<Run> = raw.iter().map(|&(offset, len)| Run { offset, len }).collect();
        let _ = chain::check_runs(&runs, image_len, meta_len, 12345);
        let small: Vec<Run> = raw
            .iter()
            .map(|&(o, l)| Run { offset: o % (image_len * 2), len: l % (4 * PAGE) })
            .collect();
        let planned = chain::plan_runs(small, meta_len, image_len);
        let len = planned.iter().map(|r| r.len).sum();
        prop_assert!(chain::check_runs(&planned, image_len, meta_len, len).is_ok(), "{:?}", planned);
        let table = chain::encode_table(&planned);
        prop_assert_eq!(table.len() as u64, chain::table_len(planned.len() as u64));
    }

    #[test]
    fn every_bit_flip_and_truncation_of_a_delta_is_detected(
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let good = valid_delta_bytes();
        prop_assert!(accepted(&good));
        let mut flipped = good.clone();
        let i = at.index(good.len());
        flipped[i] ^= 1 << bit;
        prop_assert!(!accepted(&flipped), "flip of bit {} of byte {} accepted", bit, i);
        prop_assert!(!accepted(&good[..cut.index(good.len())]));
    }
}

#[test]
fn meta_pages_rewritten_in_the_delta_are_what_restores() {
    let mut fx = Fixture::new(23, 1);
    fx.base(1);
    let written = fx.scribble(3);
    let meta_len = 2 * PAGE + 64;
    let runs = chain::plan_runs(written, meta_len, IMAGE);
    let mut w =
        DeltaWriter::begin(&fx.persister, fx.tip.as_ref().unwrap(), &runs, meta_len).unwrap();
    w.copy_from(&fx.region).unwrap();
    // The host's retain: read the copied meta pages, change them, write them back.
    let mut meta = vec![0u8; meta_len as usize];
    w.read_image_at(&mut meta, 0).unwrap();
    assert!(meta[..] == fx.state()[..meta_len as usize]);
    meta[100..108].copy_from_slice(b"retained");
    w.write_image_at(&meta, 0).unwrap();
    // Bytes no run carries are refused; a change past the meta pages is CRC'ed too.
    let outside = (0..IMAGE / PAGE)
        .map(|p| p * PAGE)
        .find(|&o| !runs.iter().any(|r| r.offset <= o && o < r.end()))
        .unwrap();
    let e = w.write_image_at(b"x", outside).unwrap_err();
    assert!(matches!(e.kind(), ChainErrorKind::NotInDelta { .. }), "{e}");
    let last = *runs.last().unwrap();
    w.write_image_at(b"tail", last.offset).unwrap();
    let info = w.commit(at_time(5)).unwrap();
    assert_eq!(info.footer.meta_len, meta_len);
    let mut want = fx.state();
    want[100..108].copy_from_slice(b"retained");
    want[last.offset as usize..last.offset as usize + 4].copy_from_slice(b"tail");
    let (got, _) = fx.restore(&fx.target, At::Latest);
    assert!(got == want);
    assert!(chain::verify_chain(&fx.target, &fx.chain_dir())
        .unwrap()
        .stop
        .is_none());
}
