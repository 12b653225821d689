//! Client side: the region a client writes, as one value — [`ClientRegion`].
//!
//! A `ClientRegion` owns the region's memfd and its read-write mapping (with the write
//! tracker the mapping carries, [`listen::start_tracking`](crate::listen::start_tracking)).
//! Its writer — a queue [`Writer`] or a [`TripleClient`] — **borrows it mutably**, so one
//! `ClientRegion` hands out one writer at a time; across processes, the region's claim
//! ([`shmsnap_core::claim`]) refuses a second writer with the holder's pid. The claim id is
//! this process's: its pid in the low 32 bits and a nonce drawn when the `ClientRegion` was
//! made in the high 32 ([`ClaimId::from_pid`]), taken at the moment the writer is made (so a
//! forked child claims under its own pid).
//!
//! The durability calls (DESIGN §14) stay reachable while the writer exists: on the writer
//! itself through [`Durable`], and from any thread through a [`Durability`] handle
//! ([`ClientRegion::durability`]: cheap, `Send + Sync`, it keeps the mapping alive).
//!
//! ```no_run
//! use shmsnap_core::LayoutRequest;
//! use shmsnap_linux::client::ClientRegion;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut region = ClientRegion::from_host()?; // fd 3, the systemd way
//! let durable = region.durability(); // for a thread that acknowledges
//! let mut writer = region.writer(LayoutRequest { entries: 64, data_size: 4096 })?;
//! let seq = writer.commit(b"state")?; // wait-free; the host snapshots it
//! durable.request_snapshot()?; // optional: snapshot now
//! if durable.wait_persisted(seq, std::time::Duration::from_secs(2))? {
//!     // seq is durable on this machine: acknowledge it
//! }
//! // Under `shmsnap run --replica URL`: durable in the object store too, so it survives
//! // losing the machine (and a standby's takeover).
//! if durable.wait_replicated(seq, std::time::Duration::from_secs(10))? {
//!     // acknowledge it
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A second writer from one `ClientRegion` does not compile:
//!
//! ```compile_fail,E0499
//! use shmsnap_core::LayoutRequest;
//! use shmsnap_linux::client::ClientRegion;
//!
//! fn two_writers(region: &mut ClientRegion, request: LayoutRequest) {
//!     let mut first = region.writer(request).unwrap();
//!     let mut second = region.writer(request).unwrap(); // E0499: `region` is borrowed
//!     first.commit(b"one").unwrap();
//!     second.commit(b"two").unwrap();
//! }
//! ```

use std::io;
use std::num::NonZeroU64;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shmsnap_core::triple::{TripleClient, TripleError, TripleRequest};
use shmsnap_core::{AttachError, ClaimId, LayoutRequest, Status, Writer};

use crate::listen::{open_client_region, ListenError, DEFAULT_FD_NAME};
use crate::mapping::{Mapping, Protection};
use crate::memfd::Memfd;
use crate::status;

/// The region a client writes: its memfd and read-write mapping, and the claim id its writer
/// takes the region with (see the [module docs](self)).
#[derive(Debug)]
pub struct ClientRegion {
    /// The region's memfd, kept open for the region's life (its length, its seals).
    memfd: Memfd,
    /// The read-write `MAP_SHARED` mapping of the whole region, with the write tracker when
    /// tracking is on; shared with the [`Durability`] handles (so it outlives a handle's
    /// last use).
    map: Arc<Mapping>,
    /// High 32 bits of this region's claim ids; drawn once per `ClientRegion`.
    nonce: u32,
}

impl ClientRegion {
    /// The region the host passed to this process: the fd named
    /// [`DEFAULT_FD_NAME`] (`SHM_SHARED_FD`) the systemd way, mapped read-write, with write
    /// tracking as [`open_client_region`] sets it up.
    ///
    /// # Thread safety
    ///
    /// Changes the process environment (it removes `LISTEN_*`): call it early in `main`,
    /// before starting threads ([`take_listen_fd`](crate::listen::take_listen_fd)).
    ///
    /// # Errors
    ///
    /// As [`open_client_region`].
    pub fn from_host() -> Result<Self, ListenError> {
        Self::open(DEFAULT_FD_NAME)
    }

    /// The region passed to this process as the fd named `name` ([`open_client_region`]).
    ///
    /// # Errors
    ///
    /// As [`open_client_region`].
    pub fn open(name: &str) -> Result<Self, ListenError> {
        let (memfd, map) = open_client_region(name)?;
        Ok(Self::new(memfd, map))
    }

    /// A region from a memfd this process got another way (a custom launcher, a test): mapped
    /// read-write, without write tracking (the host then takes full snapshots).
    ///
    /// # Errors
    ///
    /// As [`Mapping::of_memfd`] (the memfd must be sealed against shrinking).
    pub fn from_memfd(memfd: Memfd) -> io::Result<Self> {
        let map = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        Ok(Self::new(memfd, map))
    }

    fn new(memfd: Memfd, map: Mapping) -> Self {
        ClientRegion {
            memfd,
            map: Arc::new(map),
            nonce: nonce(),
        }
    }

    /// The queue writer of the region: attaches (recovering the cursor after a restart or a
    /// restore), or configures a fresh region with `request`. Takes the region's claim with
    /// [`claim_id`](Self::claim_id) first; dropping the writer releases it.
    ///
    /// # Errors
    ///
    /// [`AttachError::Claimed`] naming the pid of another process (or another `ClientRegion`)
    /// writing the region; the other errors of [`Writer::open_or_init`].
    pub fn writer(
        &mut self,
        request: LayoutRequest,
    ) -> Result<Writer<'_, [AtomicU64]>, AttachError> {
        let id = self.claim_id();
        Writer::open_or_init(self.map.words(), request, id)
    }

    /// The triple-buffer client of the region: attaches, or configures a fresh region with
    /// `request`. Takes the region's claim with [`claim_id`](Self::claim_id) first; dropping
    /// the client releases it.
    ///
    /// # Errors
    ///
    /// [`TripleError::Claimed`] naming the pid of another process writing the region; the
    /// other errors of [`TripleClient::open_or_init`].
    pub fn triple(
        &mut self,
        request: TripleRequest,
    ) -> Result<TripleClient<'_, [AtomicU64]>, TripleError> {
        let id = self.claim_id();
        TripleClient::open_or_init(self.map.words(), request, id)
    }

    /// The way back from a damaged triple region ([`TripleClient::reinit`]): discards what
    /// the region holds and configures it afresh under a new client epoch, which the host
    /// recognises (it persists the new publications at once).
    ///
    /// # Errors
    ///
    /// As [`TripleClient::reinit`].
    pub fn triple_reinit(
        &mut self,
        request: TripleRequest,
    ) -> Result<TripleClient<'_, [AtomicU64]>, TripleError> {
        let id = self.claim_id();
        TripleClient::reinit(self.map.words(), request, id)
    }

    /// The id this process claims the region with: its pid (now: a forked child has its own)
    /// and this region's nonce.
    pub fn claim_id(&self) -> ClaimId {
        // The documented encoding (`ClaimId::from_pid`), nonzero by construction: a pid is.
        let pid = rustix::process::getpid().as_raw_nonzero().unsigned_abs();
        ClaimId::from_nonzero(NonZeroU64::from(pid) | u64::from(self.nonce) << 32)
    }

    /// A handle for durability feedback from any thread ([`Durability`]).
    pub fn durability(&self) -> Durability {
        Durability {
            map: self.map.clone(),
        }
    }

    /// What the host status area says is durable ([`Status`]): three loads.
    pub fn persisted(&self) -> Status {
        shmsnap_core::status::persisted(self.map.words())
    }

    /// The region's words, for reading (while no writer borrows the region).
    pub fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }

    /// The region's memfd.
    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    /// The mapping (with its write tracker, if any).
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }
}

/// A nonce for claim ids: random (`getrandom`), or the clock's nanoseconds if no random bytes
/// are at hand. It only has to tell a reused pid from the process that held a claim before.
fn nonce() -> u32 {
    let mut b = [0u8; 4];
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::NONBLOCK) {
        Ok(4) => u32::from_ne_bytes(b),
        _ => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    }
}

/// Durability feedback from any thread (DESIGN §14): what the host says is durable, a
/// blocking wait for a seq to be, and a prompt-snapshot request. Cheap to clone, `Send +
/// Sync`; it keeps the region's mapping alive. Made by [`ClientRegion::durability`].
#[derive(Debug, Clone)]
pub struct Durability {
    map: Arc<Mapping>,
}

impl Durability {
    /// What the host status area says is durable: three loads, wait-free.
    pub fn persisted(&self) -> Status {
        shmsnap_core::status::persisted(self.map.words())
    }

    /// Blocks until commit `seq` is covered by a durable snapshot (`Ok(true)`) or `timeout`
    /// passes (`Ok(false)`): [`status::wait_persisted`]. Never on the commit path.
    ///
    /// # Errors
    ///
    /// As [`status::wait_persisted`].
    pub fn wait_persisted(&self, seq: u64, timeout: Duration) -> io::Result<bool> {
        status::wait_persisted(self.map.words(), seq, timeout)
    }

    /// Blocks until commit `seq` is in the host's replica, durable in the object store
    /// (`Ok(true)`), or `timeout` passes (`Ok(false)`): [`status::wait_replicated`]. A host
    /// without `--replica` never replicates: the wait then ends only at `timeout`. Never on
    /// the commit path.
    ///
    /// # Errors
    ///
    /// As [`status::wait_replicated`].
    pub fn wait_replicated(&self, seq: u64, timeout: Duration) -> io::Result<bool> {
        status::wait_replicated(self.map.words(), seq, timeout)
    }

    /// Asks the host for a prompt snapshot ([`status::request_snapshot`]). Requests coalesce;
    /// bump from one thread at a time (two threads bumping at the same instant may store the
    /// same value, and the second request then waits for the next interval).
    ///
    /// # Errors
    ///
    /// As [`status::request_snapshot`].
    pub fn request_snapshot(&self) -> io::Result<()> {
        status::request_snapshot(self.map.words())
    }
}

/// The durability calls on a writer itself (its region's words): `writer.wait_persisted(seq,
/// timeout)` while the writer borrows its [`ClientRegion`].
pub trait Durable {
    /// The region's words.
    fn region_words(&self) -> &[AtomicU64];

    /// What the host status area says is durable: three loads, wait-free.
    fn persisted(&self) -> Status {
        shmsnap_core::status::persisted(self.region_words())
    }

    /// As [`Durability::wait_persisted`].
    ///
    /// # Errors
    ///
    /// As [`status::wait_persisted`].
    fn wait_persisted(&self, seq: u64, timeout: Duration) -> io::Result<bool> {
        status::wait_persisted(self.region_words(), seq, timeout)
    }

    /// As [`Durability::wait_replicated`].
    ///
    /// # Errors
    ///
    /// As [`status::wait_replicated`].
    fn wait_replicated(&self, seq: u64, timeout: Duration) -> io::Result<bool> {
        status::wait_replicated(self.region_words(), seq, timeout)
    }

    /// As [`Durability::request_snapshot`].
    ///
    /// # Errors
    ///
    /// As [`status::request_snapshot`].
    fn request_snapshot(&self) -> io::Result<()> {
        status::request_snapshot(self.region_words())
    }
}

impl Durable for Writer<'_, [AtomicU64]> {
    fn region_words(&self) -> &[AtomicU64] {
        self.region().mem()
    }
}

impl Durable for TripleClient<'_, [AtomicU64]> {
    fn region_words(&self) -> &[AtomicU64] {
        self.mem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_core::claim;

    const QUEUE: LayoutRequest = LayoutRequest {
        entries: 8,
        data_size: 4096,
    };

    fn region() -> ClientRegion {
        let memfd = Memfd::create("client-region", 1 << 20).unwrap();
        memfd.seal_against_shrink().unwrap();
        ClientRegion::from_memfd(memfd).unwrap()
    }

    fn dup(m: &Memfd) -> Memfd {
        Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(m, 0).unwrap()).unwrap()
    }

    #[test]
    fn the_writer_claims_with_this_pid_and_a_second_region_value_is_refused() {
        let mut a = region();
        let mut b = ClientRegion::from_memfd(dup(a.memfd())).unwrap();
        let pid = std::process::id();
        assert_eq!(a.claim_id().pid(), pid);
        assert_ne!(
            a.claim_id(),
            b.claim_id(),
            "each region value has its own nonce"
        );
        let mut w = a.writer(QUEUE).unwrap();
        w.commit(b"a").unwrap();
        match b.writer(QUEUE) {
            Err(AttachError::Claimed { holder }) => assert_eq!(holder.pid(), pid),
            other => panic!("{other:?}"),
        }
        drop(w);
        assert_eq!(
            claim::holder(b.words()),
            None,
            "dropping the writer releases"
        );
        assert_eq!(b.writer(QUEUE).unwrap().commit(b"b"), Ok(2));
    }

    #[test]
    fn durability_is_reachable_while_the_writer_exists_and_from_another_thread() {
        let mut region = region();
        let durable = region.durability();
        let mut publisher = status::StatusPublisher::new(&dup(region.memfd())).unwrap();
        let mut w = region.writer(QUEUE).unwrap();
        let seq = w.commit(b"x").unwrap();
        assert!(!w.persisted().covers(seq));
        assert!(!w.wait_persisted(seq, Duration::ZERO).unwrap());
        w.request_snapshot().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| durable.wait_persisted(seq, Duration::from_secs(60)));
            publisher
                .publish(Status {
                    seq,
                    generation: 1,
                    replica_seq: 0,
                })
                .unwrap();
            assert!(waiter.join().unwrap().unwrap());
        });
        assert!(w.persisted().covers(seq) && durable.persisted().covers(seq));
        // Persisted is not replicated; the uploader's publish of the replica seq is.
        assert!(!w.wait_replicated(seq, Duration::ZERO).unwrap());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| durable.wait_replicated(seq, Duration::from_secs(60)));
            publisher
                .publish(Status {
                    seq,
                    generation: 1,
                    replica_seq: seq,
                })
                .unwrap();
            assert!(waiter.join().unwrap().unwrap());
        });
        assert!(w.wait_replicated(seq, Duration::ZERO).unwrap());
        drop(w);
        assert!(region.persisted().covers(seq));
    }

    #[test]
    fn a_triple_client_from_the_region_holds_the_claim_and_reinit_keeps_working() {
        let mut region = region();
        let request = TripleRequest {
            buffers: 3,
            buffer_size: 4096,
        };
        let mut c = region.triple(request).unwrap();
        c.publish(b"one").unwrap();
        assert_eq!(claim::holder(c.mem()), Some(c.claim_id()));
        assert!(!c.persisted().covers(1));
        let epoch = c.epoch();
        drop(c);
        let c = region.triple_reinit(request).unwrap();
        assert_ne!(c.epoch(), epoch);
        assert_eq!(c.newest(), None);
    }
}
