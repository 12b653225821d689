//! The host's incremental flow on a real queue region, with the pieces of this crate:
//! pre → copy the runs (written pages + meta pages) into a delta → post/retain on the delta's
//! meta pages → commit. Base + deltas must restore to exactly what a full snapshot of the same
//! quiescent region holds, and pass the queue image check.

use shmsnap_core::{Descriptor, LayoutRequest, PreCopy, Region, Writer};
use shmsnap_linux::chain::{self, At, DeltaMeta, DeltaWriter, Run, Tip};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, ImageSummary, SnapshotInfo, SnapshotMeta};
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch};
use shmsnap_linux::{Mapping, Memfd, Protection};

const PAGE: u64 = 4096;
const REQUEST: LayoutRequest = LayoutRequest {
    entries: 16,
    data_size: 16 * PAGE,
};
/// Header, one page of ring, 16 pages of data ring, 6 pages of tail.
const LEN: u64 = 24 * PAGE;

fn meta(generation: u64) -> SnapshotMeta {
    SnapshotMeta {
        strategy: shmsnap_core::Strategy::Queue.code(),
        generation,
        unix_time_ns: generation,
    }
}

/// A full queue snapshot of the region, committed; its footer.
fn full(region: &Memfd, map: &Mapping, p: &Persister, generation: u64) -> (SnapshotInfo, u64) {
    let mut scratch = Scratch::default();
    match take_queue(region, map, p, meta(generation), &mut scratch).unwrap() {
        QueueSnapshot::Written { file, figures } => {
            file.commit().unwrap();
            (figures.info, figures.retained.hints.next_seq)
        }
        other => panic!("{other:?}"),
    }
}

fn pread_all(fd: impl std::os::fd::AsFd, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    let mut got = 0;
    while got < v.len() {
        let n = rustix::io::pread(&fd, &mut v[got..], got as u64).unwrap();
        assert!(n > 0);
        got += n;
    }
    v
}

#[test]
fn queue_chain_restores_to_what_a_full_snapshot_of_the_same_region_holds() {
    let dir = tempfile::tempdir().unwrap();
    let region = Memfd::create("q", LEN).unwrap();
    region.seal_against_shrink().unwrap();
    let map = Mapping::of_memfd(&region, Protection::ReadWrite).unwrap();
    let mut w = Writer::open_or_init(map.words(), REQUEST, shmsnap_testkit::CLIENT).unwrap();
    for i in 0..20u8 {
        w.commit(&[i; 3000]).unwrap();
    }
    let target = dir.path().join("state.snap");
    let p = Persister::new(&target, 1).unwrap();
    let (base, mut next_seq) = full(&region, &map, &p, 1);
    let mut tip = Tip::of_base(&base);

    for round in 0..3u64 {
        for i in 0..5u8 {
            w.commit(&vec![i ^ 0x55; 2000 + 100 * round as usize])
                .unwrap();
        }
        // The pages the client wrote lie in the data ring (a tracker would report a subset).
        let live = Region::open(map.words()).unwrap();
        let layout = *live.layout();
        let (mut pre, mut post) = (vec![Descriptor::EMPTY; 16], vec![Descriptor::EMPTY; 16]);
        let stamp = PreCopy::read(&live, &mut pre, &mut post).unwrap();
        let written = Run {
            offset: layout.data_offset,
            len: REQUEST.data_size,
        };
        let runs = chain::plan_runs([written], layout.meta_len(), LEN);
        let mut dw = DeltaWriter::begin(&p, &tip, &runs, layout.meta_len()).unwrap();
        dw.copy_from(&region).unwrap();
        let mut meta = vec![0u8; layout.meta_len() as usize];
        dw.read_image_at(&mut meta, 0).unwrap();
        let retained = stamp.finish(&mut meta).unwrap();
        dw.write_image_at(&meta, 0).unwrap();
        let info = dw
            .commit(DeltaMeta {
                next_seq_before: next_seq,
                next_seq: retained.hints.next_seq,
                unix_time_ns: 10 + round,
            })
            .unwrap();
        assert_eq!(info.footer.meta_len, layout.meta_len());
        tip = info.tip();
        next_seq = retained.hints.next_seq;
    }

    // A full snapshot of the same quiescent region, elsewhere.
    let other = Persister::new(&dir.path().join("full.snap"), 0).unwrap();
    full(&region, &map, &other, 9);
    let want = Memfd::create("full", LEN).unwrap();
    snapshot::restore_path(&other.target(), &want).unwrap();

    let back = Memfd::create("back", LEN).unwrap();
    let report =
        chain::restore_chain(&target, &chain::chain_dir(&target), &back, At::Latest).unwrap();
    assert_eq!(report.listing.deltas.len(), 3);
    assert!(
        pread_all(&back, LEN) == pread_all(&want, LEN),
        "chain != full snapshot"
    );
    let ImageSummary::Queue { newest, .. } = report.summary else {
        panic!("{:?}", report.summary);
    };
    assert_eq!(newest.map(|d| d.seq), Some(35));

    // By seq: the state after round 1 holds entries up to seq 30.
    let r = chain::restore_chain(&target, &chain::chain_dir(&target), &back, At::Seq(30)).unwrap();
    assert_eq!(r.listing.deltas.len(), 2);
    let ImageSummary::Queue { newest, .. } = r.summary else {
        panic!();
    };
    assert_eq!(newest.map(|d| d.seq), Some(30));
}
