use super::*;
use crate::replica::layout::{Generation, Object};

fn offer(generation: u64, index: u32) -> Offer {
    Offer {
        point: PointId { generation, index },
        file: File::open("/dev/null").unwrap(),
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
