//! Durability feedback in the host (DESIGN §14): what the status area says, and when.
//!
//! - At start, before the first client runs, [`publisher_at_start`] writes what is on disk:
//!   a restored region's newest kept seq and generation; an empty or fd-store region's
//!   [`Status::NONE`] (an inherited region may hold commits never persisted).
//! - After every persisted snapshot — once `TempFile::commit` returned, i.e. after
//!   `fdatasync`, rename and directory `fsync` — [`published`] stores its newest kept seq and
//!   generation and wakes the waiters. The snapshotter calls it on `Outcome::Persisted`, which
//!   a strategy returns only after its commit.
//! - After every point the replica uploader put into the bucket, [`replicated`] stores its
//!   newest seq as `REPLICA_SEQ` (both threads publish through one [`SharedPublisher`]).
//! - [`watch_requests`] starts a thread that sleeps on the client's request word and turns
//!   every change into a snapshot request on SIGUSR1's path (so requests coalesce with
//!   every other request for free).
//! - When the host moves the region into a fresh memfd (its client sealed it, DESIGN §11),
//!   [`publisher_moved`] maps the new header page and publishes the last status there, and a
//!   new watcher replaces the old one (dropping a [`Watcher`] ends its thread within
//!   [`WATCH_TIMEOUT`]).
//!
//! Only strategies whose region is a shmsnap-core region get a status area: the exit
//! strategy's region may hold anything, so the host never writes into it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shmsnap_core::{Region, Status};
use shmsnap_linux::status::{RequestWatch, StatusPublisher};
use shmsnap_linux::{Mapping, Memfd};
use tracing::{debug, warn};

use crate::flow::{Origin, Report, Sink};

/// How long the request watcher sleeps before looking again without a wake-up (a missed
/// wake-up costs at most this much promptness, never a request).
const WATCH_TIMEOUT: Duration = Duration::from_secs(1);

/// Smallest pause between two requests the watcher forwards: a client bumping the word in a
/// loop costs the host at most this many events per second (the worker merges them anyway).
const MIN_GAP: Duration = Duration::from_millis(1);

/// The status publisher for a region the host starts with, after writing what is on disk
/// into the status area; `None` for a strategy without a status area, or (logged) if the
/// header page cannot be mapped.
///
/// `map` is the host's mapping of the region, `origin` where the region came from,
/// `status_area` whether the strategy's region has one ([`Strategy::status_area`]). Call it
/// before the first client starts.
///
/// [`Strategy::status_area`]: crate::strategy::Strategy::status_area
pub fn publisher_at_start(
    memfd: &Memfd,
    map: &Mapping,
    origin: Origin<'_>,
    status_area: bool,
) -> Option<StatusPublisher> {
    if !status_area {
        return None;
    }
    let mut publisher = match StatusPublisher::new(memfd) {
        Ok(p) => p,
        Err(e) => {
            warn!("cannot map the region's header page for durability feedback ({e}); clients will not see which commits are durable");
            return None;
        }
    };
    let status = status_of(map, origin);
    log_publish(publisher.publish(status), status, "at start");
    Some(publisher)
}

/// What a region the host starts a client on holds on disk: a restored region's newest kept
/// seq and generation; nothing for an empty or inherited one (it may hold commits never
/// persisted). `map` maps the region.
pub fn status_of(map: &Mapping, origin: Origin<'_>) -> Status {
    match origin {
        // The region holds exactly the verified image: its newest entry is the image's newest
        // kept seq, and the client has not run yet.
        Origin::Restored(info) => Status {
            seq: Region::open(map.words())
                .ok()
                .and_then(|r| r.newest())
                .map_or(0, |d| d.seq),
            generation: info.meta.generation,
            replica_seq: 0,
        },
        Origin::Empty | Origin::FdStore => Status::NONE,
    }
}

/// The status publisher for a region the host moved (or repaired) into the fresh memfd
/// `fresh`: maps its header page and publishes `status` there — the last one for moved bytes
/// (they hold it already; publishing again wakes nobody wrongly and keeps the publisher's own
/// record), [`status_of`] a repaired region. `None`, logged, if the page cannot be mapped.
pub fn publisher_moved(fresh: &Memfd, status: Status) -> Option<StatusPublisher> {
    match StatusPublisher::new(fresh) {
        Ok(mut p) => {
            log_publish(p.publish(status), status, "in the new region");
            Some(p)
        }
        Err(e) => {
            warn!("cannot map the moved region's header page for durability feedback ({e}); clients will not see which commits are durable");
            None
        }
    }
}

/// The status publisher shared by the snapshot worker (local points) and the replica
/// uploader (`REPLICA_SEQ`); the mutex is held only for a publish (stores and a futex wake).
pub type SharedPublisher = Arc<Mutex<Option<StatusPublisher>>>;

/// After a persisted snapshot: publishes its newest kept seq and generation (the replica seq
/// stays what was published last). `report` must come from an `Outcome::Persisted`, which a
/// strategy returns only after the snapshot is durable.
pub fn published(publisher: &SharedPublisher, report: &Report) {
    let mut guard = publisher.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = guard.as_mut() {
        let status = Status {
            seq: report.newest_seq,
            generation: report.generation,
            replica_seq: p.last().replica_seq,
        };
        log_publish(p.publish(status), status, "after the snapshot");
    }
}

/// The status area as a [`Sink`]: [`published`] after every persisted snapshot.
#[derive(Debug)]
pub struct StatusSink(pub SharedPublisher);

impl Sink for StatusSink {
    fn persisted(&self, report: &Report, _target: &std::path::Path) {
        published(&self.0, report);
    }
}

/// After a point is durable in the replica's bucket: publishes `seq` as the replica seq (the
/// local seq and generation stay what was published last). Seqs only grow: an older point
/// finishing late never lowers it.
pub fn replicated(publisher: &SharedPublisher, seq: u64) {
    let mut guard = publisher.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = guard.as_mut() {
        let last = p.last();
        if seq <= last.replica_seq {
            return;
        }
        let status = Status {
            replica_seq: seq,
            ..last
        };
        log_publish(p.publish(status), status, "after the upload");
    }
}

fn log_publish(r: io::Result<()>, status: Status, when: &str) {
    match r {
        Ok(()) => debug!(
            seq = status.seq,
            generation = status.generation,
            replica_seq = status.replica_seq,
            "status published {when}"
        ),
        Err(e) => warn!("status stored {when}, but waking the waiting clients failed: {e}"),
    }
}

/// A running request watcher; dropping it ends its thread (within [`WATCH_TIMEOUT`]) and so
/// its mapping of the region's header page.
#[derive(Debug, Default)]
#[must_use = "dropping the watcher stops it"]
pub struct Watcher {
    /// Set on drop; the thread checks it after every wait. `None`: no thread was started.
    stop: Option<Arc<AtomicBool>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            // Relaxed: the flag carries no data; the thread only needs to see it eventually.
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Starts the request watcher thread for a strategy with a status area: each change of the
/// client's request word calls `request` (which asks for a snapshot); the thread ends when
/// `request` returns `false` (the host is going away) or the returned [`Watcher`] is dropped.
/// Without a status area, or if the header page cannot be mapped (logged), no thread is
/// started.
///
/// # Errors
///
/// The thread cannot be started.
pub fn watch_requests(
    memfd: &Memfd,
    status_area: bool,
    request: impl FnMut() -> bool + Send + 'static,
) -> io::Result<Watcher> {
    if !status_area {
        return Ok(Watcher::default());
    }
    let watch = match RequestWatch::new(memfd) {
        Ok(w) => w,
        Err(e) => {
            warn!(
                "cannot watch for snapshot requests ({e}); clients' requests wait for the interval"
            );
            return Ok(Watcher::default());
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("requests".into())
        .spawn(move || watch_loop(watch, &stopped, request))?;
    Ok(Watcher { stop: Some(stop) })
}

fn watch_loop(mut watch: RequestWatch, stop: &AtomicBool, mut request: impl FnMut() -> bool) {
    // Relaxed: see `Watcher::drop`.
    while !stop.load(Ordering::Relaxed) {
        match watch.wait(WATCH_TIMEOUT) {
            Ok(false) => continue,
            Ok(true) => {
                if !request() {
                    return;
                }
                std::thread::sleep(MIN_GAP);
            }
            Err(e) => {
                warn!("waiting for snapshot requests failed ({e}); requests now wait for the interval");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Outcome;
    use crate::snap::Snapshotter;
    use crate::startup::{open_persister, prepare_region};
    use shmsnap_core::{status, LayoutRequest, Writer};
    use shmsnap_linux::snapshot;
    use shmsnap_linux::Protection;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    const LAYOUT: LayoutRequest = LayoutRequest {
        entries: 16,
        data_size: 4096,
    };

    fn region(len: u64) -> (Memfd, Mapping) {
        let memfd = Memfd::create("durable", len).unwrap();
        memfd.seal_against_shrink().unwrap();
        let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        (memfd, rw)
    }

    fn dup(m: &Memfd) -> Memfd {
        Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(m, 0).unwrap()).unwrap()
    }

    /// The newest seq and generation of the snapshot file on disk, read through the real
    /// restore path (verify, then copy into a fresh region).
    fn on_disk(state: &Path) -> Option<(u64, u64)> {
        let file = std::fs::File::open(state).ok()?;
        let info = snapshot::verify_path(state).ok()?;
        let (fresh, map) = region(info.image_len);
        snapshot::restore_into(&file, &fresh).unwrap();
        let seq = Region::open(map.words())
            .ok()?
            .newest()
            .map_or(0, |d| d.seq);
        Some((seq, info.meta.generation))
    }

    fn snapshotter(state: &Path, memfd: &Memfd, origin: Origin<'_>) -> Snapshotter {
        let persister = open_persister(state, 2).unwrap();
        let strategy = crate::strategy::choose::from_kind(shmsnap_core::Strategy::Queue);
        Snapshotter::new(persister, strategy, dup(memfd), origin).unwrap()
    }

    #[test]
    fn every_persisted_snapshot_publishes_exactly_what_the_file_on_disk_holds() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let (memfd, rw) = region(1 << 20);
        let mut snap = snapshotter(&state, &memfd, Origin::Empty);
        assert_eq!(status::persisted(rw.words()), Status::NONE);
        let mut w = Writer::open_or_init(rw.words(), LAYOUT, crate::examples::TEST_CLIENT).unwrap();
        for round in 1..=3u64 {
            for i in 0..round {
                w.commit(&i.to_le_bytes()).unwrap();
            }
            let before = status::persisted(rw.words());
            assert!(!before.covers(w.next_seq() - 1), "not yet durable");
            let Outcome::Persisted(r) = snap.take(true, None).unwrap() else {
                panic!("round {round}: not persisted");
            };
            let s = status::persisted(rw.words());
            assert_eq!((s.seq, s.generation), (r.newest_seq, r.generation));
            assert_eq!(on_disk(&state), Some((s.seq, s.generation)));
            assert!(s.covers(w.next_seq() - 1));
        }
        // Nothing new: no snapshot, the status stays.
        let s = status::persisted(rw.words());
        assert!(matches!(
            snap.take(true, None).unwrap(),
            Outcome::Skipped(_)
        ));
        assert_eq!(status::persisted(rw.words()), s);
    }

    /// An observer polls the status while commits and snapshots run; whenever it sees a new
    /// status, the file on disk must already hold it (a publish before the commit would be
    /// seen here, with some luck of timing, as a status ahead of the file).
    #[test]
    fn a_status_is_never_seen_before_the_file_on_disk_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let (memfd, rw) = region(1 << 20);
        let mut w = Writer::open_or_init(rw.words(), LAYOUT, crate::examples::TEST_CLIENT).unwrap();
        let mut snap = snapshotter(&state, &memfd, Origin::Empty);
        let stop = AtomicBool::new(false);
        let checked = std::thread::scope(|s| {
            let observer = s.spawn(|| {
                let mut last = Status::NONE;
                let mut checked = 0;
                while !stop.load(Ordering::Relaxed) {
                    let now = status::persisted(rw.words());
                    if now != last {
                        let (seq, generation) = on_disk(&state).expect("a status without a file");
                        assert!(
                            generation >= now.generation && seq >= now.seq,
                            "status {now:?} seen while the file holds seq {seq} of generation {generation}"
                        );
                        last = now;
                        checked += 1;
                    }
                }
                checked
            });
            for i in 0..40u64 {
                w.commit(&i.to_le_bytes()).unwrap();
                snap.take(true, None).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            observer.join().unwrap()
        });
        assert!(checked > 0, "the observer never saw a publish");
    }

    /// Per publish: the published seq and the names in the state directory at that moment.
    type Seen = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

    /// What the state directory holds when the status sink has published a snapshot: the
    /// sink attached after it copies every file name (and the generation files) aside — the
    /// directory a SIGKILL of the host right after the publish would leave.
    #[derive(Debug)]
    struct CrashImage {
        state: std::path::PathBuf,
        status: Arc<Mutex<Option<StatusPublisher>>>,
        /// Per publish: the published seq and the names in the directory at that moment.
        seen: Seen,
        /// The last crash image taken.
        copy: std::path::PathBuf,
    }

    impl Sink for CrashImage {
        fn persisted(&self, report: &Report, _target: &Path) {
            let published = self
                .status
                .lock()
                .unwrap()
                .as_ref()
                .map_or(0, |p| p.last().seq);
            assert_eq!(published, report.newest_seq, "the status sink ran first");
            let dir = self.state.parent().unwrap();
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect();
            names.sort();
            let _ = std::fs::remove_dir_all(&self.copy);
            std::fs::create_dir(&self.copy).unwrap();
            for n in &names {
                std::fs::copy(dir.join(n), self.copy.join(n)).unwrap();
            }
            self.seen.lock().unwrap().push((published, names));
        }
    }

    /// Issue 27: the status is published at the durable point, before the generation that
    /// left the `--keep` set is unlinked (that unlink is off the acknowledgement's path), and
    /// a host killed between the two leaves a state the next start restores the published
    /// seq from, and whose next persist is back to exactly `--keep` generations.
    #[test]
    fn the_publish_comes_before_the_dropped_generation_is_unlinked_and_a_kill_between_is_safe() {
        let dir = tempfile::tempdir().unwrap();
        let crash = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let (memfd, rw) = region(1 << 20);
        let mut w = Writer::open_or_init(rw.words(), LAYOUT, crate::examples::TEST_CLIENT).unwrap();
        // keep 2 (the helper's): from the 4th persist on, a generation leaves the set.
        let mut snap = snapshotter(&state, &memfd, Origin::Empty);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let copy = crash.path().join("image");
        snap.attach_sink(Box::new(CrashImage {
            state: state.clone(),
            status: snap.status(),
            seen: seen.clone(),
            copy: copy.clone(),
        }));
        for i in 0..5u64 {
            w.commit(&i.to_le_bytes()).unwrap();
            assert!(matches!(
                snap.take(true, None).unwrap(),
                Outcome::Persisted(_)
            ));
            // After `take`: no generation past `--keep` is left.
            let gens = shmsnap_linux::persist::generations_of(&state).unwrap();
            assert!(gens.iter().all(|g| g.index <= 2), "{gens:?}");
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 5);
        for (n, (_, names)) in seen.iter().enumerate().skip(3) {
            assert!(
                names.contains(&"s.snap.3".to_owned()),
                "persist {}: the dropped generation was already unlinked when the status was \
                 published: {names:?}",
                n + 1
            );
        }
        // The state a SIGKILL right after the 5th publish leaves: start from it.
        let (published, _) = *seen.last().unwrap();
        let crashed = copy.join("s.snap");
        let persister = open_persister(&crashed, 2).unwrap();
        let prepared = prepare_region(&persister, None, false).unwrap();
        let map = Mapping::of_memfd(&prepared.memfd, Protection::ReadOnly).unwrap();
        let restored = Region::open(map.words()).unwrap().newest().unwrap().seq;
        assert_eq!(
            restored, published,
            "the next start restores what was published"
        );
        // Its next persist leaves exactly `--keep` generations besides the target.
        let mut snap = Snapshotter::new(
            persister,
            crate::strategy::choose::from_kind(shmsnap_core::Strategy::Queue),
            dup(&prepared.memfd),
            Origin::Restored(prepared.restored.as_ref().unwrap()),
        )
        .unwrap();
        let rw = Mapping::of_memfd(&prepared.memfd, Protection::ReadWrite).unwrap();
        let mut w = Writer::open_or_init(rw.words(), LAYOUT, crate::examples::TEST_CLIENT).unwrap();
        w.commit(b"next").unwrap();
        assert!(matches!(
            snap.take(true, None).unwrap(),
            Outcome::Persisted(_)
        ));
        let gens: Vec<usize> = shmsnap_linux::persist::generations_of(&crashed)
            .unwrap()
            .iter()
            .map(|g| g.index)
            .collect();
        assert_eq!(gens, [0, 1, 2]);
    }

    #[test]
    fn after_a_restore_the_status_says_what_the_image_holds_and_nothing_newer() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.snap");
        let (memfd, rw) = region(1 << 20);
        let mut w = Writer::open_or_init(rw.words(), LAYOUT, crate::examples::TEST_CLIENT).unwrap();
        let mut snap = snapshotter(&state, &memfd, Origin::Empty);
        for i in 0..5u64 {
            w.commit(&i.to_le_bytes()).unwrap();
        }
        snap.take(true, None).unwrap();
        // Commits after the snapshot are lost with the region ("power cut").
        w.commit(b"lost").unwrap();
        status::request_snapshot(rw.words());
        drop((w, snap));
        drop((rw, memfd));

        let persister = open_persister(&state, 2).unwrap();
        let prepared = prepare_region(&persister, None, false).unwrap();
        let info = prepared.restored.expect("restored");
        let map = Mapping::of_memfd(&prepared.memfd, Protection::ReadOnly).unwrap();
        // The image's status and request words are canonical zeros ...
        assert_eq!(status::persisted(map.words()), Status::NONE);
        assert_eq!(status::request_count(map.words()), 0);
        // ... and the host writes what the image holds before the client starts.
        let p = publisher_at_start(&prepared.memfd, &map, Origin::Restored(&info), true).unwrap();
        let s = status::persisted(map.words());
        assert_eq!((s.seq, s.generation), (5, info.meta.generation));
        assert_eq!(p.last(), s);
        // An inherited region says nothing is durable; the exit strategy gets no status.
        let (inherited, rw2) = region(1 << 20);
        status::publish(
            rw2.words(),
            Status {
                seq: 99,
                generation: 9,
                replica_seq: 0,
            },
            1,
        );
        publisher_at_start(&inherited, &rw2, Origin::FdStore, true).unwrap();
        assert_eq!(status::persisted(rw2.words()), Status::NONE);
        assert!(publisher_at_start(&inherited, &rw2, Origin::Empty, false).is_none());
    }

    #[test]
    fn a_client_request_reaches_the_callback_once_per_change() {
        let (memfd, rw) = region(1 << 16);
        let (tx, rx) = std::sync::mpsc::channel();
        let watcher = watch_requests(&memfd, true, move || tx.send(()).is_ok()).unwrap();
        shmsnap_linux::status::request_snapshot(rw.words()).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("request forwarded");
        assert!(watch_requests(&memfd, false, || unreachable!()).is_ok());
        // A dropped watcher (the region moved) stops within its timeout: it forwards nothing
        // more, and its thread ends (the channel's sender goes with it).
        drop(watcher);
        std::thread::sleep(WATCH_TIMEOUT + Duration::from_millis(200));
        shmsnap_linux::status::request_snapshot(rw.words()).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "a stopped watcher forwarded a request, or its thread still runs"
        );
    }
}
