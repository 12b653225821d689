//! The triple-buffer strategy against a reference model: random sessions of publications,
//! abandoned grants, client crashes mid-write, host snapshots (also while a grant is open),
//! host crashes while a buffer is frozen, and restores of the last snapshot — with
//! `check_invariants` after every step.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use shmsnap_core::claim;
use shmsnap_core::triple::{read_image, TripleClient, TripleHost, TripleRequest};

const B: u64 = 4096;

/// What the host does (possibly while the client holds a grant).
#[derive(Debug, Clone, Copy)]
enum HostOp {
    /// freeze, copy, image meta, release.
    Snapshot,
    /// freeze, then the host dies; a new host attaches before the next host operation (the
    /// client keeps working meanwhile with one buffer stuck FROZEN).
    FreezeAndCrash,
}

#[derive(Debug, Clone)]
enum Op {
    Publish(Vec<HostOp>),
    Abandon(Vec<HostOp>),
    ClientCrash(Vec<HostOp>),
    Host(HostOp),
    Restore,
}

fn host_op() -> impl Strategy<Value = HostOp> {
    prop_oneof![Just(HostOp::Snapshot), Just(HostOp::FreezeAndCrash)]
}

fn op() -> impl Strategy<Value = Op> {
    let mid = || prop::collection::vec(host_op(), 0..3);
    prop_oneof![
        6 => mid().prop_map(Op::Publish),
        1 => mid().prop_map(Op::Abandon),
        1 => mid().prop_map(Op::ClientCrash),
        3 => host_op().prop_map(Op::Host),
        1 => Just(Op::Restore),
    ]
}

/// The state published under `seq`: 64 bytes at the start and 8 at the end of the buffer.
fn content(seq: u64) -> ([u8; 64], [u8; 8]) {
    let mut head = [0u8; 64];
    for (k, b) in head.iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(k as u8) | 1;
    }
    (head, seq.to_le_bytes())
}

/// The reference model.
#[derive(Debug, Default)]
struct Model {
    /// Newest published seq (0: none).
    newest: u64,
    /// Highest seq ever published in this region's lineage.
    max_published: u64,
    /// Seq of the last persisted snapshot (0: none).
    persisted: u64,
    /// The last snapshot image (sparse: full length, zeros as holes) and its seq.
    image: Option<(Vec<u8>, u64)>,
    /// A host died holding a freeze and no new host has attached yet.
    host_dead: bool,
}

fn check_buffer(image: &[u8], range: std::ops::Range<u64>, seq: u64) {
    let (head, tail) = content(seq);
    let buf = &image[range.start as usize..range.end as usize];
    assert_eq!(&buf[..64], &head, "copied head of seq {seq}");
    assert_eq!(&buf[buf.len() - 8..], &tail, "copied tail of seq {seq}");
}

fn host_step<'m>(
    mem: &'m [AtomicU64],
    host: &mut TripleHost<'m, [AtomicU64]>,
    m: &mut Model,
    op: HostOp,
) {
    if m.host_dead {
        *host = TripleHost::attach(mem).expect("new host");
        assert_eq!(
            host.adopted(),
            1,
            "the new host undoes the dead host's freeze"
        );
        m.host_dead = false;
    }
    let crash = matches!(op, HostOp::FreezeAndCrash);
    m.host_dead = freeze_step(host, m, op) && crash;
}

/// Freezes and snapshots (or crashes); `false` if nothing was frozen.
fn freeze_step(host: &TripleHost<'_, [AtomicU64]>, m: &mut Model, op: HostOp) -> bool {
    let frozen = host
        .freeze(m.persisted)
        .expect("a single client never starves a freeze");
    let Some(f) = frozen else {
        assert!(
            m.newest <= m.persisted,
            "nothing frozen though seq {} is new",
            m.newest
        );
        return false;
    };
    assert_eq!(
        f.seq(),
        m.newest,
        "the host must freeze the newest publication"
    );
    match op {
        HostOp::Snapshot => {
            let layout = *host.layout();
            let mut image = vec![0u8; layout.region_len as usize];
            let range = f.byte_range();
            f.copy_to(&mut image[range.start as usize..range.end as usize])
                .unwrap();
            check_buffer(&image, range, f.seq());
            f.image_meta(&mut image[..layout.meta_len() as usize])
                .unwrap();
            let img = read_image(&image, image.len() as u64).expect("own image validates");
            assert_eq!((img.buffer, img.seq), (f.buffer(), f.seq()));
            assert!(
                img.next_seq > m.max_published,
                "image next_seq repeats a seq"
            );
            assert!(img.next_seq > f.seq());
            m.persisted = f.seq();
            m.image = Some((image, f.seq()));
            f.release().expect("release");
        }
        HostOp::FreezeAndCrash => std::mem::forget(f),
    }
    true
}

fn run(ops: Vec<Op>, buffers: u64) {
    let request = TripleRequest {
        buffers,
        buffer_size: B,
    };
    let words = (2 * 4096 + buffers * B) as usize / 8;
    let mem: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
    let mem = &mem[..];
    let mut client = TripleClient::init(mem, request, shmsnap_testkit::CLIENT).unwrap();
    let mut host = TripleHost::attach(mem).unwrap();
    let mut m = Model::default();
    for op in ops {
        match &op {
            Op::Publish(mid) | Op::Abandon(mid) | Op::ClientCrash(mid) => {
                let kind = match op {
                    Op::Publish(_) => 0,
                    Op::Abandon(_) => 1,
                    _ => 2,
                };
                let mut g = client.take().expect("take never fails for a single client");
                let seq = g.seq();
                assert!(seq > m.max_published, "seq {seq} repeats");
                let (head, tail) = content(seq);
                g.write(0, &head).unwrap();
                for h in mid {
                    host_step(mem, &mut host, &mut m, *h);
                }
                g.write((B - 8) as usize, &tail).unwrap();
                match kind {
                    0 => {
                        assert_eq!(g.publish(), seq);
                        m.newest = seq;
                        m.max_published = seq;
                    }
                    1 => drop(g),
                    _ => {
                        // The client dies mid-write: neither the grant nor the claim is
                        // released; its supervisor reclaims the claim of the dead process.
                        std::mem::forget(g);
                        let dead = client.claim_id();
                        std::mem::forget(client);
                        claim::reclaim(mem, dead).expect("the dead client held the claim");
                        client = TripleClient::attach(mem, shmsnap_testkit::CLIENT).unwrap();
                    }
                }
            }
            Op::Host(h) => host_step(mem, &mut host, &mut m, *h),
            Op::Restore => {
                let Some((image, seq)) = m.image.clone() else {
                    continue;
                };
                // A restore follows a crash: the client is gone (and the image is unclaimed).
                std::mem::forget(client);
                for (i, w) in mem.iter().enumerate() {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&image[8 * i..8 * i + 8]);
                    w.store(u64::from_le_bytes(b), Ordering::Relaxed);
                }
                client = TripleClient::attach(mem, shmsnap_testkit::CLIENT).unwrap();
                host = TripleHost::attach(mem).unwrap();
                m.host_dead = false;
                assert_eq!(client.newest().map(|n| n.1), Some(seq), "restored state");
                let mut head = [0u8; 64];
                assert_eq!(client.read_newest(0, &mut head).unwrap(), Some(seq));
                assert_eq!(head, content(seq).0, "restored bytes");
                let img = read_image(&image, image.len() as u64).unwrap();
                assert!(client.next_seq() >= img.next_seq);
                m.newest = seq;
                // Publications after the snapshot are lost with the old region.
                m.max_published = seq.max(img.next_seq - 1);
            }
        }
        client
            .check_invariants()
            .unwrap_or_else(|e| panic!("after {op:?}: {e}"));
        assert!(client.next_seq() > m.max_published);
        assert_eq!(client.newest().map_or(0, |n| n.1), m.newest);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sessions_match_the_reference_model(
        ops in prop::collection::vec(op(), 1..40),
        buffers in 3u64..6,
    ) {
        run(ops, buffers);
    }
}

#[test]
fn a_restarted_client_reads_the_newest_state_even_while_it_is_frozen() {
    let mem: Vec<AtomicU64> = (0..(2 * 4096 + 3 * B as usize) / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let mem = &mem[..];
    let req = TripleRequest {
        buffers: 3,
        buffer_size: B,
    };
    let mut c = TripleClient::open_or_init(mem, req, shmsnap_testkit::CLIENT).unwrap();
    c.publish(b"one").unwrap();
    let s2 = c.publish(b"two").unwrap();
    let host = TripleHost::attach(mem).unwrap();
    let f = host.freeze(0).unwrap().unwrap();
    assert_eq!(f.seq(), s2);
    drop(c);
    let c = TripleClient::attach(mem, shmsnap_testkit::CLIENT).unwrap();
    let mut out = [0u8; 3];
    assert_eq!(c.read_newest(0, &mut out).unwrap(), Some(s2));
    assert_eq!(&out, b"two");
    // Nothing newer: the host skips.
    f.release().unwrap();
    assert!(host.freeze(s2).unwrap().is_none());
    assert_eq!(host.newest_ready(), s2);
}

#[test]
fn write_exclusive_stores_exactly_what_write_stores() {
    let src: Vec<u8> = (0..300u32)
        .map(|b| (b as u8).wrapping_mul(37) ^ 0x5a)
        .collect();
    let req = TripleRequest {
        buffers: 3,
        buffer_size: B,
    };
    let words = (2 * 4096 + 3 * B as usize) / 8;
    for offset in [0usize, 3, 8, 13, 4096 - 300] {
        for len in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 300] {
            let run = |exclusive: bool| {
                let mem: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
                let mut c = TripleClient::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
                // Old buffer contents: all ones, so a zero-padded word would show.
                for w in &mem[2 * 512..] {
                    w.store(u64::MAX, Ordering::Relaxed);
                }
                let mut g = c.take().unwrap();
                if exclusive {
                    // SAFETY: this test's memory is accessed by this thread only.
                    unsafe { g.write_exclusive(offset, &src[..len]) }.unwrap();
                } else {
                    g.write(offset, &src[..len]).unwrap();
                }
                let mut back = vec![0u8; B as usize];
                g.read(0, &mut back).unwrap();
                back
            };
            assert_eq!(run(true), run(false), "offset {offset} len {len}");
        }
    }
    let mem: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
    let mut c = TripleClient::init(&mem[..], req, shmsnap_testkit::CLIENT).unwrap();
    let mut g = c.take().unwrap();
    // SAFETY: as above.
    let r = unsafe { g.write_exclusive(4090, &src[..7]) };
    assert!(r.is_err(), "a write past the buffer is refused");
}
