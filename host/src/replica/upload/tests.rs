use super::*;
use crate::config::parse_keep;
use crate::replica::layout::{Generation, Object};

fn offer(generation: u64, index: u32) -> Offer {
    Offer {
        point: PointId { generation, index },
        file: Arc::new(File::open("/dev/null").unwrap()),
        len: 0,
        seq: u64::from(index),
        at: Instant::now(),
    }
}

fn drain(b: &mut Backlog) -> Vec<(u64, u32)> {
    std::iter::from_fn(|| b.pop())
        .map(|o| (o.point.generation, o.point.index))
        .collect()
}

#[test]
fn a_new_base_supersedes_every_pending_point() {
    let mut b = Backlog::default();
    assert_eq!(b.push(offer(1, 0)), 0);
    b.push(offer(1, 1));
    b.push(offer(1, 2));
    assert!(!b.superseded(PointId {
        generation: 1,
        index: 0
    }));
    assert_eq!(b.push(offer(2, 0)), 3, "base 1 and its deltas dropped");
    assert!(
        b.superseded(PointId {
            generation: 1,
            index: 2
        }),
        "an in-flight older point is abandoned"
    );
    b.push(offer(2, 1));
    assert_eq!(drain(&mut b), [(2, 0), (2, 1)]);
}

#[test]
fn a_full_backlog_cuts_the_chain_until_the_next_base_and_never_leaves_a_gap() {
    let mut b = Backlog::default();
    b.push(offer(5, 0));
    for i in 1..MAX_PENDING as u32 {
        assert_eq!(b.push(offer(5, i)), 0);
    }
    assert_eq!(b.len(), MAX_PENDING);
    let full = MAX_PENDING as u32;
    assert_eq!(b.push(offer(5, full)), 1, "dropped: the backlog is full");
    // Room again, but a later delta of the cut chain would leave a gap: dropped too.
    b.pop();
    assert_eq!(b.push(offer(5, full + 1)), 1);
    let kept = drain(&mut b);
    for w in kept.windows(2) {
        assert_eq!(w[1].1, w[0].1 + 1, "a gapless chain: {kept:?}");
    }
    // The next base starts a new chain that is accepted again.
    b.push(offer(6, 0));
    assert_eq!(b.push(offer(6, 1)), 0);
    assert_eq!(drain(&mut b), [(6, 0), (6, 1)]);
}

fn listing(gens: &[(u64, bool, u32, i64)]) -> Listing {
    let now = chrono::Utc::now();
    let mut l = Listing::default();
    for &(g, base, deltas, age_s) in gens {
        let o = |k: &str| Object {
            key: object_store::path::Path::from(format!("g/{g}/{k}")),
            size: 1,
            modified: now - chrono::Duration::seconds(age_s),
        };
        let mut generation = Generation {
            base: base.then(|| o("base")),
            ..Generation::default()
        };
        for i in 1..=deltas {
            generation.deltas.insert(i, o(&format!("d/{i}")));
        }
        l.generations.insert(g, generation);
    }
    l
}

#[test]
fn retention_keeps_the_newest_bases_and_never_the_newest_or_anything_newer() {
    let l = listing(&[
        (1, true, 2, 500),
        (2, false, 1, 400),
        (3, true, 0, 300),
        (4, true, 3, 200),
        (5, true, 1, 100),
        (6, true, 0, 0),
    ]);
    let now = chrono::Utc::now();
    assert_eq!(victims(&l, Keep::Generations(3), 5, now), [1, 2]);
    assert_eq!(victims(&l, Keep::Generations(1), 5, now), [1, 2, 3, 4]);
    // Generation 6 is newer than the base just uploaded (5): never touched.
    assert!(!victims(&l, Keep::Generations(1), 5, now).contains(&6));
    assert_eq!(
        victims(&l, Keep::Age(Duration::from_secs(250)), 5, now),
        [1, 2, 3]
    );
    // Even an age nothing satisfies keeps the newest.
    assert_eq!(
        victims(&l, Keep::Age(Duration::from_secs(1)), 5, now),
        [1, 2, 3, 4]
    );
}

#[test]
fn keep_parses_counts_and_durations() {
    assert_eq!(parse_keep("3"), Ok(Keep::Generations(3)));
    assert_eq!(
        parse_keep("7d"),
        Ok(Keep::Age(Duration::from_secs(7 * 86400)))
    );
    assert!(parse_keep("0").is_err());
    assert!(parse_keep("soon").is_err());
}

/// A persisted point reaches the bucket, byte for byte, and only then its seq is published as
/// `REPLICA_SEQ` (the local seq and generation stay as the snapshot published them).
#[test]
fn a_persisted_point_is_uploaded_and_its_seq_published_as_the_replica_seq() {
    use crate::flow::{Origin, Outcome};
    use crate::snap::Snapshotter;
    use crate::startup::open_persister;
    use shmsnap_core::{status, LayoutRequest, Writer};
    use shmsnap_linux::{Mapping, Memfd, Protection};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.snap");
    let bucket = dir.path().join("bucket");
    let memfd = Memfd::create("replica", 1 << 20).unwrap();
    memfd.seal_against_shrink().unwrap();
    let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    let mut w = Writer::open_or_init(
        rw.words(),
        LayoutRequest {
            entries: 16,
            data_size: 4096,
        },
        crate::examples::TEST_CLIENT,
    )
    .unwrap();
    let dup = Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(&memfd, 0).unwrap()).unwrap();
    let persister = open_persister(&state, 1).unwrap();
    let strategy = crate::strategy::choose::from_kind(shmsnap_core::Strategy::Queue);
    let mut snap = Snapshotter::new(persister, strategy, dup, Origin::Empty).unwrap();
    let replica = Replica::open(&format!("file://{}", bucket.display())).unwrap();
    let keeper = crate::replica::keeper::Keeper::spawn(
        replica.clone(),
        None,
        crate::replica::lease::Holder::this(&state),
        crate::replica::lease::DEFAULT_TTL,
        false,
        Metrics::new(),
    )
    .unwrap();
    let shipper = Shipper::spawn(
        replica,
        crate::replica::store::runtime().unwrap(),
        keeper,
        Keep::default(),
        state.clone(),
        Metrics::new(),
        snap.status(),
    )
    .unwrap();
    snap.attach_sink(Box::new(shipper));
    for i in 0..5u64 {
        w.commit(&i.to_le_bytes()).unwrap();
    }
    let Outcome::Persisted(r) = snap.take(true, None).unwrap() else {
        panic!("not persisted");
    };
    let local = status::persisted(rw.words());
    assert_eq!((local.seq, local.generation), (r.newest_seq, r.generation));
    // Dropping the snapshotter stops the uploader after it shipped what was pending.
    drop(snap);
    let s = status::persisted(rw.words());
    assert_eq!(s.replica_seq, r.newest_seq, "published once in the bucket");
    assert_eq!((s.seq, s.generation), (local.seq, local.generation));
    // The object is the state file packed: unpacked, it is the file byte for byte.
    let key = bucket.join(format!("g/{:020}/base", r.generation));
    let object = File::open(&key).unwrap();
    assert!(shmsnap_linux::packed::is_packed(&object).unwrap());
    let unpacked = dir.path().join("unpacked.snap");
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&unpacked)
        .unwrap();
    shmsnap_linux::packed::unpack(&object, &out).unwrap();
    assert_eq!(
        std::fs::read(&unpacked).unwrap(),
        std::fs::read(&state).unwrap()
    );
    assert!(object.metadata().unwrap().len() < std::fs::metadata(&state).unwrap().len());
}

/// Fencing: a point whose success answer arrives after the lease's validity ended is in the
/// bucket, but its seq is not published as `REPLICA_SEQ` (a new primary may have listed the
/// bucket before it landed); while the lease is valid, it is.
#[test]
fn a_success_answer_after_the_lease_lapsed_does_not_publish_the_replica_seq() {
    use crate::flow::{Origin, Outcome, Point};
    use crate::replica::keeper::LeaseState;
    use crate::snap::Snapshotter;
    use crate::startup::open_persister;
    use shmsnap_core::{status, LayoutRequest, Writer};
    use shmsnap_linux::{Mapping, Memfd, Protection};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.snap");
    let bucket = dir.path().join("bucket");
    let memfd = Memfd::create("replica", 1 << 20).unwrap();
    memfd.seal_against_shrink().unwrap();
    let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    let mut w = Writer::open_or_init(
        rw.words(),
        LayoutRequest {
            entries: 16,
            data_size: 4096,
        },
        crate::examples::TEST_CLIENT,
    )
    .unwrap();
    let dup = Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(&memfd, 0).unwrap()).unwrap();
    let persister = open_persister(&state, 1).unwrap();
    let strategy = crate::strategy::choose::from_kind(shmsnap_core::Strategy::Queue);
    let mut snap = Snapshotter::new(persister, strategy, dup, Origin::Empty).unwrap();
    let lease = Arc::new(LeaseState::new(crate::replica::lease::MIN_TTL));
    let mut up = Uploader {
        replica: Replica::open(&format!("file://{}", bucket.display())).unwrap(),
        shared: Arc::new(Shared::default()),
        lease: lease.clone(),
        seen_recreated: 0,
        keep: Keep::default(),
        target: state.clone(),
        metrics: Metrics::new(),
        status: snap.status(),
        shipped: None,
        newest_base: None,
        bucket_newest: None,
        last_warn: None,
        backoff: MIN_BACKOFF,
    };
    let rt = crate::replica::store::runtime().unwrap();
    let mut seqs = Vec::new();
    for round in 0..2u64 {
        for i in 0..5u64 {
            w.commit(&(round * 10 + i).to_le_bytes()).unwrap();
        }
        let Outcome::Persisted(r) = snap.take(true, None).unwrap() else {
            panic!("not persisted");
        };
        seqs.push(r.newest_seq);
        let file = File::open(&state).unwrap();
        let len = file.metadata().unwrap().len();
        let Point::Base { generation } = r.point else {
            panic!("a base")
        };
        let offer = Offer {
            point: PointId {
                generation,
                index: 0,
            },
            file: Arc::new(file),
            len,
            seq: r.newest_seq,
            at: Instant::now(),
        };
        // Round 0: the answer arrives after the validity ended. Round 1: while valid.
        let valid_until = if round == 0 {
            Instant::now().checked_sub(Duration::from_millis(1))
        } else {
            Some(Instant::now() + Duration::from_secs(60))
        };
        lease.set_valid_until(valid_until);
        assert!(matches!(
            rt.block_on(up.put_new(&offer)).unwrap(),
            Shipped::Done
        ));
        rt.block_on(up.done(&offer));
        let published = status::persisted(rw.words()).replica_seq;
        if round == 0 {
            assert_eq!(published, 0, "published after the lease lapsed");
        } else {
            assert_eq!(published, r.newest_seq, "published while the lease held");
        }
    }
    assert!(seqs[1] > seqs[0]);
}
