//! Embedding the core in a custom runtime: the whole protocol over memory the runtime
//! provides, with no `os-linux` and no `std` in the protocol path.
//!
//! A runtime (an RTOS, a hypervisor, a game engine's own allocator) owns some memory it shares
//! between a client and a host. Here that is a heap buffer of `u64`s viewed as bytes and then
//! as atomic words with [`atomic_words`]; a `static` or a device window works the same way.
//!
//! - The client thread commits states wait-free with [`Writer`].
//! - The host takes a snapshot concurrently: [`PreCopy::read`] (pre), a word-by-word copy,
//!   [`PreCopy::finish`] (fence, post, `next_seq`, `retain`).
//! - Then the runtime "restarts": the snapshot is restored into the shared memory and a new
//!   client attaches to it. The state it finds is exactly one the old client committed.
//!
//! Run with `cargo run -p shmsnap-core --example embedding`; `core/tests/embedding.rs` runs it
//! as a test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use shmsnap_core::{atomic_words, ClaimId, Descriptor, LayoutRequest, PreCopy, Region, Writer};

/// The runtime's ids for its clients: one writer per region is enforced by the region's claim,
/// and the runtime names each client (here by a made-up task number; on Linux, a pid).
const FIRST_CLIENT: ClaimId = ClaimId::from_pid(1, 0).unwrap();
const RESTARTED_CLIENT: ClaimId = ClaimId::from_pid(2, 0).unwrap();

/// The state the client commits: a counter and its square, so a torn state is visible.
fn state(i: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8..].copy_from_slice(&(i * i).to_le_bytes());
    b
}

/// The host's word-by-word copy of live memory (a real host would use a kernel copy).
fn copy(words: &[AtomicU64]) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect()
}

/// A client commits while the host snapshots; the snapshot is restored and checked.
pub fn main() {
    // Memory the runtime provides: 128 KiB, 8-byte aligned because it is made of u64s.
    let mut backing = vec![0u64; 128 * 1024 / 8];
    let words = atomic_words(bytemuck::cast_slice_mut(&mut backing)).expect("aligned words");
    let request = LayoutRequest {
        entries: 1024,
        data_size: 64 * 1024,
    };
    // Configures the memory; dropping the writer releases the claim for the client thread.
    Writer::init(words, request, FIRST_CLIENT).expect("fresh memory configures");
    let stop = AtomicBool::new(false);

    let (image, last) = thread::scope(|s| {
        // The client: commits state after state, never waiting for the host.
        let client = s.spawn(|| {
            let mut writer = Writer::attach(words, FIRST_CLIENT).expect("attach");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i == 0 {
                i += 1;
                writer.commit(&state(i)).expect("commit");
            }
            i
        });
        // The host: a snapshot while the client commits (retried if no entry survived it).
        let region = Region::open(words).expect("configured");
        let e = region.layout().entries as usize;
        let (mut pre_buf, mut post_buf) = (vec![Descriptor::EMPTY; e], vec![Descriptor::EMPTY; e]);
        let image = loop {
            let pre = PreCopy::read(&region, &mut pre_buf, &mut post_buf).expect("buffers fit");
            if pre.pre().valid() == 0 {
                continue; // nothing committed yet
            }
            let mut image = copy(words);
            let kept = pre.finish(&mut image).expect("the layout did not change");
            if kept.kept > 0 {
                println!(
                    "snapshot: kept {} entries, dropped {} overwritten during the copy",
                    kept.kept,
                    kept.dropped()
                );
                break image;
            }
        };
        stop.store(true, Ordering::Relaxed);
        (image, client.join().expect("the client does not panic"))
    });

    // Restart: the runtime restores the snapshot into its memory; a new client attaches.
    for (w, bytes) in words.iter().zip(image.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    // The image holds no claim (the host's retain zeroes it), so the new client takes it.
    let writer = Writer::attach(words, RESTARTED_CLIENT).expect("the restored image attaches");
    let newest = writer.region().newest().expect("a kept entry");
    let mut buf = [0u8; 16];
    let n = writer
        .region()
        .read_payload(&newest, &mut buf)
        .expect("readable");
    let i = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    assert_eq!(
        &buf[..n],
        &state(i),
        "the restored state is one that was committed"
    );
    // State i was committed as seq i (a fresh region numbers commits from 1).
    assert!(
        newest.seq == i && (1..=last).contains(&i) && writer.next_seq() > newest.seq,
        "state {i}, seq {} restored after {last} commits; next seq {}",
        newest.seq,
        writer.next_seq()
    );
    println!(
        "restored state {i} of {last} committed (seq {}), exactly as committed",
        newest.seq
    );
}
