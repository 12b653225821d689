//! The host status area: which commits are durable (DESIGN §14, `docs/FORMAT.md`).
//!
//! Header words [`word::STATUS`] are written only by the host, and only once a snapshot is
//! durable (its file synced, renamed and its directory synced); the client only reads them.
//! Word [`word::SNAPSHOT_REQUEST`] is written only by the client: bumping it asks the host for a
//! prompt snapshot. Both directions are wait-free here: [`persisted`] is three loads,
//! [`request_snapshot`] a load and a store. Waiting (a futex on [`word::STATUS_WAKE`]) and the
//! wake-ups live in `shmsnap-linux`'s `status` module; nothing here blocks.
//!
//! ```text
//! host, after the snapshot is durable          client
//!   generation, replica seq (Relaxed)            w = wake (Acquire)        -- only when waiting
//!   seq (Release)  ───────────────────────────▶  seq (Acquire)
//!   wake counter + 1 (Release), futex wake        generation, replica (Relaxed)
//! ```
//!
//! What a read means: every commit with a seq `<= seq` is covered by a durable local snapshot
//! (the snapshot's newest kept entry is `seq`, so a restore brings back that state or a newer
//! one), and `generation` is the generation of a durable snapshot at least as new as the one
//! `seq` was published for. The host never reads these words back: a client scribbling there
//! misleads only itself.
//!
//! The replica seq `r` means: every commit with a seq `<= r` is in a point the host's replica
//! uploader put into the bucket ([`Status::replicated`]); the uploader publishes it through
//! the same [`publish`], after the object store acknowledged the upload.
//!
//! # Why the replica seq needs no Acquire of its own
//!
//! A client waiting for `replicated(seq)` reads only the number: the value *is* the message.
//! It reads no other word the uploader wrote (the point is in the bucket, not in the region),
//! and the commits the number speaks of are the client's own, already behind it. Any value
//! the load returns was stored by a publish made after its point was in the bucket, so
//! acting on it is sound whatever ordering the load has (Relaxed in [`persisted`]). What a
//! *waiter* needs is freshness: having read the counter a publish stored (Acquire in
//! [`wake_count`], pairing with the Release of the counter in [`publish`], which follows the
//! replica store), it must not read an older replica seq and then sleep on the new counter
//! value, missing that publish's wake-up. That pair exists for every publish — the uploader
//! publishes a new replica seq with an unchanged local seq through the same [`publish`] — so
//! no new pair is added; `loom-tests/tests/status.rs` checks it (with a broken twin).
//!
//! # Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use shmsnap_core::status::{self, Status};
//!
//! let mem: Vec<AtomicU64> = (0..512).map(|_| AtomicU64::new(0)).collect();
//! assert_eq!(status::persisted(&mem[..]), Status::NONE);
//! // The host, after snapshot generation 7 (newest kept seq 41) is durable:
//! status::publish(&mem[..], Status { seq: 41, generation: 7, replica_seq: 0 }, 1);
//! let s = status::persisted(&mem[..]);
//! assert!(s.covers(41) && !s.covers(42));
//! assert_eq!(s.generation, 7);
//! ```

use core::sync::atomic::Ordering;

use crate::format::word;
use crate::memory::WordMemory;

/// What the host status area says is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Status {
    /// Newest seq contained in a durable local snapshot (its newest kept entry); 0: none.
    pub seq: u64,
    /// Generation of a durable snapshot at least as new as the one `seq` was published for;
    /// 0: none.
    pub generation: u64,
    /// Newest seq contained in a point the host put into its replica; 0: none yet, or no
    /// replica.
    pub replica_seq: u64,
}

impl Status {
    /// Nothing known to be durable (a fresh region, one inherited from the fd store, or one
    /// whose host has not published yet).
    pub const NONE: Status = Status {
        seq: 0,
        generation: 0,
        replica_seq: 0,
    };

    /// `true` if commit `seq` is covered by a durable local snapshot: the state restored
    /// after any crash is that commit's or a newer one's. Seq 0 (nothing committed) is always
    /// covered.
    pub fn covers(&self, seq: u64) -> bool {
        seq <= self.seq
    }

    /// `true` if commit `seq` is in the host's replica: a point holding that commit's state or
    /// a newer one is durable in the object store (`seq <= replica_seq`). Seq 0 (nothing
    /// committed) is always replicated. Independent of [`covers`](Status::covers): a host
    /// without a replica never publishes a replica seq, so only seq 0 is replicated there.
    pub fn replicated(&self, seq: u64) -> bool {
        seq <= self.replica_seq
    }
}

/// `true` if `mem` reaches the status and request words.
fn has_status<M: WordMemory + ?Sized>(mem: &M) -> bool {
    mem.len() > word::SNAPSHOT_REQUEST
}

/// Reads the host status area. Wait-free (three loads); never panics.
///
/// A memory too short to hold the header page reads as [`Status::NONE`].
pub fn persisted<M: WordMemory + ?Sized>(mem: &M) -> Status {
    if !has_status(mem) {
        return Status::NONE;
    }
    // Acquire: pairs with the Release store of the seq in `publish`, so the generation loaded
    // below is at least the one stored with this seq (or a newer one).
    let seq = mem.load(word::PERSISTED_SEQ, Ordering::Acquire);
    let generation = mem.load(word::PERSISTED_GENERATION, Ordering::Relaxed);
    // Relaxed: the replica seq carries no other data (the value is the message, module docs);
    // a waiter's freshness comes from the counter's Acquire in `wake_count`.
    let replica_seq = mem.load(word::REPLICA_SEQ, Ordering::Relaxed);
    Status {
        seq,
        generation,
        replica_seq,
    }
}

/// The host's wake counter (the futex word's value). Read it *before* [`persisted`] when
/// deciding to sleep on the futex: a publish after this load changes the word, so the sleep
/// returns at once.
pub fn wake_count<M: WordMemory + ?Sized>(mem: &M) -> u32 {
    if !has_status(mem) {
        return 0;
    }
    // Acquire: pairs with the Release store in `publish`; the status loads that follow see at
    // least what was published before this counter value.
    mem.load(word::STATUS_WAKE, Ordering::Acquire) as u32
}

/// Host side: stores `status` into the status area and sets the wake counter to `wake`
/// (the caller's own count, never read back from the region), then the caller futex-wakes.
///
/// Call it only once the snapshot holding `status.seq` is durable. Stores: generation and
/// replica seq (Relaxed), seq (Release), wake counter (Release). A memory too short for the
/// header page is left alone. Wait-free; never panics.
pub fn publish<M: WordMemory + ?Sized>(mem: &M, status: Status, wake: u32) {
    if !has_status(mem) {
        return;
    }
    mem.store(
        word::PERSISTED_GENERATION,
        status.generation,
        Ordering::Relaxed,
    );
    mem.store(word::REPLICA_SEQ, status.replica_seq, Ordering::Relaxed);
    // Release: publishes the generation stored above to a client whose Acquire load of the
    // seq (in `persisted`) reads this value.
    mem.store(word::PERSISTED_SEQ, status.seq, Ordering::Release);
    // Release: a client whose Acquire load of the counter (`wake_count`) reads this value sees
    // the whole status above; pairs with `wake_count`.
    mem.store(word::STATUS_WAKE, u64::from(wake), Ordering::Release);
}

/// The current value of the snapshot request word (the client's bump count). The host only
/// compares it with the value it saw last; it means nothing else.
pub fn request_count<M: WordMemory + ?Sized>(mem: &M) -> u64 {
    if !has_status(mem) {
        return 0;
    }
    // Acquire: pairs with the Release store in `request_snapshot`, so a snapshot the host
    // starts after seeing a bump sees the commits the client made before bumping.
    mem.load(word::SNAPSHOT_REQUEST, Ordering::Acquire)
}

/// Client side: asks the host for a prompt snapshot by bumping the request word. Wait-free
/// (a load and a store); never panics. Returns the new value. The caller then futex-wakes the
/// word (`shmsnap-linux` does both).
///
/// Requests coalesce: the host snapshots once for any number of bumps it did not see yet.
/// Bump from one thread at a time (the writer's, typically): two threads bumping at the same
/// instant may store the same value, and the host then answers only the first of them
/// promptly (the second is covered by the next interval snapshot).
pub fn request_snapshot<M: WordMemory + ?Sized>(mem: &M) -> u64 {
    if !has_status(mem) {
        return 0;
    }
    // The low 32 bits are the futex word: keep them changing on every bump.
    let next = mem
        .load(word::SNAPSHOT_REQUEST, Ordering::Relaxed)
        .wrapping_add(1);
    // Release: every commit made before this request happens-before a host snapshot started
    // after the host's Acquire load (`request_count`) saw this value.
    mem.store(word::SNAPSHOT_REQUEST, next, Ordering::Release);
    next
}

/// The canonical values of the status, request and claim words in a snapshot image: all
/// zero. An image says nothing about durability (the host that restores it publishes what it
/// holds), asks for no snapshot, and is claimed by nobody (the client that held the region
/// when it was copied does not hold the restored one).
pub(crate) fn canonical_words() -> impl Iterator<Item = usize> {
    word::STATUS.chain([word::SNAPSHOT_REQUEST, word::CLAIM])
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU64;
    use std::vec::Vec;

    fn mem(words: usize) -> Vec<AtomicU64> {
        (0..words).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn a_published_status_reads_back_and_covers_exactly_up_to_its_seq() {
        let m = mem(512);
        let s = Status {
            seq: 9,
            generation: 3,
            replica_seq: 4,
        };
        publish(&m[..], s, 17);
        assert_eq!(persisted(&m[..]), s);
        assert_eq!(wake_count(&m[..]), 17);
        assert_eq!(m[word::STATUS_WAKE].load(Ordering::Relaxed) >> 32, 0);
        assert!(s.covers(0) && s.covers(9) && !s.covers(10));
    }

    #[test]
    fn replicated_is_up_to_the_replica_seq_and_independent_of_the_local_seq() {
        let s = Status {
            seq: 9,
            generation: 3,
            replica_seq: 4,
        };
        assert!(s.replicated(0) && s.replicated(4));
        assert!(
            !s.replicated(5) && !s.replicated(9),
            "persisted, not replicated"
        );
        assert!(Status::NONE.replicated(0) && !Status::NONE.replicated(1));
        let ahead = Status {
            replica_seq: u64::MAX,
            ..Status::NONE
        };
        assert!(ahead.replicated(u64::MAX) && !ahead.covers(1));
    }

    #[test]
    fn requests_change_the_word_every_time_and_wrap_without_panicking() {
        let m = mem(512);
        assert_eq!(request_count(&m[..]), 0);
        assert_eq!(request_snapshot(&m[..]), 1);
        assert_eq!(request_snapshot(&m[..]), 2);
        m[word::SNAPSHOT_REQUEST].store(u64::MAX, Ordering::Relaxed);
        assert_eq!(request_snapshot(&m[..]), 0);
        // The status area is untouched by requests.
        assert_eq!(persisted(&m[..]), Status::NONE);
    }

    #[test]
    fn a_memory_without_a_header_page_reads_as_nothing_persisted() {
        let m = mem(word::SNAPSHOT_REQUEST);
        publish(
            &m[..],
            Status {
                seq: 5,
                generation: 1,
                replica_seq: 0,
            },
            1,
        );
        assert_eq!(persisted(&m[..]), Status::NONE);
        assert_eq!(request_snapshot(&m[..]), 0);
        assert_eq!((wake_count(&m[..]), request_count(&m[..])), (0, 0));
        assert!(m.iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn retain_writes_zero_status_request_and_claim_words_into_the_image() {
        use crate::{retain, Descriptor, LayoutRequest, Writer};
        let m = mem(3 * 512);
        let mut w = Writer::init(
            &m[..],
            LayoutRequest {
                entries: 4,
                data_size: 64,
            },
            crate::ClaimId::new(1).unwrap(),
        )
        .unwrap();
        let seq = w.commit(b"x").unwrap();
        publish(
            &m[..],
            Status {
                seq,
                generation: 2,
                replica_seq: 1,
            },
            5,
        );
        request_snapshot(&m[..]);
        let mut image: Vec<u8> = m
            .iter()
            .flat_map(|a| a.load(Ordering::Relaxed).to_le_bytes())
            .collect();
        let d: Vec<Descriptor> = (0..4)
            .map(|s| w.region().read_descriptor(s).unwrap_or_default())
            .collect();
        let layout = *w.layout();
        // The writer holds the live region's claim, so the copy carries it.
        assert_ne!(crate::format::read_word(&image, word::CLAIM), Some(0));
        let kept = retain(&mut image, &layout, &d, &d, w.next_seq()).unwrap();
        assert_eq!(kept.kept, 1);
        for i in canonical_words().chain([word::CLAIM]) {
            assert_eq!(crate::format::read_word(&image, i), Some(0), "word {i}");
        }
    }
}
