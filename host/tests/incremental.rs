//! Incremental snapshots end to end (issue 13): the real host, a real client with write
//! tracking, real `PAGEMAP_SCAN`s.
//!
//! The client is this test binary run again by the host with `SHMSNAP_INC_CLIENT=DIR` (see
//! [`client_entry`]): it opens its region with `open_client_region` (which registers
//! tracking), initialises a queue and then runs numbered commands from files `DIR/cmd.N`
//! (answering `DIR/done.N`), so a test decides exactly which pages it writes between two
//! snapshots. Snapshots are taken on SIGUSR1 only (`--interval 1h`).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{poll, Proc, SLOW};
use rustix::fs::{Mode, OFlags};
use rustix::process::Signal;
use shmsnap_core::format::word;
use shmsnap_core::{LayoutRequest, Region, Writer};
use shmsnap_linux::chain::{self, At};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::SnapshotMeta;
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch};
use shmsnap_linux::{Mapping, Memfd, Protection};

const ROLE: &str = "SHMSNAP_INC_CLIENT";
const PAGE: u64 = 4096;
/// The client's queue: 64 descriptors (one page), a one-page data ring.
const LAYOUT: LayoutRequest = LayoutRequest {
    entries: 64,
    data_size: 4096,
};
const SIZE: &str = "1M";

/// What write tracking needs, for a test that finds it missing.
const UFFD_HINT: &str = "Write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN \
                         (Linux 6.7+) and a host that sets SHMSNAP_TRACK=1 for queue + \
                         --incremental auto.";

// ----------------------------------------------------------------------------------------
// The client.

/// Entry point of the client; a no-op test when run normally.
#[test]
fn client_entry() {
    let Some(dir) = std::env::var_os(ROLE) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (_memfd, map) =
        shmsnap_linux::listen::open_client_region(shmsnap_linux::listen::DEFAULT_FD_NAME)
            .expect("open the region");
    let mut w = Writer::open_or_init(
        map.words(),
        LAYOUT,
        shmsnap_core::ClaimId::from_pid(std::process::id(), 0).unwrap(),
    )
    .expect("queue");
    let tail = Region::open(map.words()).unwrap().layout().tail_offset;
    let advert: Vec<String> = map.words()[word::TRACK]
        .iter()
        .map(|a| a.load(Ordering::Relaxed).to_string())
        .collect();
    let pid = rustix::process::getpid().as_raw_nonzero();
    write_atomic(&dir.join("ready"), &format!("{pid} {}", advert.join(" ")));
    let mut n = (1..)
        .find(|i| !dir.join(format!("done.{i}")).exists())
        .unwrap();
    loop {
        let Ok(cmd) = fs::read_to_string(dir.join(format!("cmd.{n}"))) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let mut it = cmd.split_whitespace();
        match it.next() {
            // "w ROUND PAGE...": two words of each tail page, then one commit.
            Some("w") => {
                let round: u64 = it.next().unwrap().parse().unwrap();
                for p in it.map(|p| p.parse::<u64>().unwrap()) {
                    let first = ((tail + p * PAGE) / 8) as usize;
                    let v = (round << 32) | p;
                    map.words()[first].store(v, Ordering::Relaxed);
                    map.words()[first + (PAGE / 8) as usize - 1].store(!v, Ordering::Relaxed);
                }
                w.commit(&round.to_le_bytes()).unwrap();
            }
            // "b MS": commits flat out (8-byte payloads, the data ring and the descriptors
            // only) for MS ms, after saying it started (`started.N`).
            Some("b") => {
                let ms: u64 = it.next().unwrap().parse().unwrap();
                write_atomic(&dir.join(format!("started.{n}")), "");
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_millis(ms) {
                    for _ in 0..256 {
                        w.commit(&w.next_seq().to_le_bytes()).unwrap();
                    }
                }
            }
            // "x": exit at once, without unmapping (the region stays as it is).
            Some("x") => std::process::exit(0),
            other => panic!("unknown command {other:?}"),
        }
        write_atomic(&dir.join(format!("done.{n}")), "");
        n += 1;
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

// ----------------------------------------------------------------------------------------
// The test side.

/// A host running the test client, and the command files.
struct Rig {
    dir: PathBuf,
    state: PathBuf,
    host: Proc,
    /// Next command number.
    n: usize,
}

impl Rig {
    fn start(dir: &Path, extra: &[&str]) -> Rig {
        let cdir = dir.join("client");
        fs::create_dir_all(&cdir).unwrap();
        let state = dir.join("s.snap");
        let me = std::env::current_exe().unwrap();
        let me = me.to_str().unwrap();
        // The bases of this tiny region hold a few pages: no compaction by ratio.
        let mut args = vec![
            "--strategy",
            "queue",
            "--interval",
            "1h",
            "--size",
            SIZE,
            "--compact-ratio",
            "10000",
        ];
        args.extend_from_slice(extra);
        let mut c = common::shmsnap(["run", "--state"]);
        c.arg(&state)
            .args(&args)
            .arg("--")
            .args([
                me,
                "--exact",
                "client_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, &cdir);
        let host = Proc::spawn(c);
        let n = (1..)
            .find(|i| !cdir.join(format!("done.{i}")).exists())
            .unwrap();
        let rig = Rig {
            dir: cdir,
            state,
            host,
            n,
        };
        rig.ready(None);
        rig
    }

    /// The client's `(pid, advert words)` once a client other than `not` is ready.
    fn ready(&self, not: Option<i32>) -> (i32, Vec<u64>) {
        poll(SLOW, || {
            let t = fs::read_to_string(self.dir.join("ready")).ok()?;
            let v: Vec<u64> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let pid = v[0] as i32;
            (Some(pid) != not).then(|| (pid, v[1..].to_vec()))
        })
        .unwrap_or_else(|| panic!("client never ready:\n{}", self.host.err.text()))
    }

    /// Whether the client advertises tracking; if not, the test fails unless
    /// `SHMSNAP_TEST_ALLOW_MISSING` names `uffd-wp` (see `shmsnap_testkit::require`).
    fn tracking(&self) -> bool {
        let (_, advert) = self.ready(None);
        let probe = if advert.iter().all(|&w| w == 0) {
            Err("the client advertises no write tracking".to_owned())
        } else {
            Ok(())
        };
        shmsnap_testkit::require::require("uffd-wp", UFFD_HINT, probe).is_some()
    }

    /// Runs one client command and waits for it.
    fn cmd(&mut self, text: &str) {
        let n = self.n;
        write_atomic(&self.dir.join(format!("cmd.{n}")), text);
        self.n += 1;
        let done = self.dir.join(format!("done.{n}"));
        poll(SLOW, || done.exists().then_some(()))
            .unwrap_or_else(|| panic!("client did not run {text:?}:\n{}", self.host.err.text()));
    }

    /// Begins one client command and waits until the client says it started it (commands
    /// that write `started.N`); `wait` finishes it.
    fn begin(&mut self, text: &str) -> usize {
        let n = self.n;
        write_atomic(&self.dir.join(format!("cmd.{n}")), text);
        self.n += 1;
        let started = self.dir.join(format!("started.{n}"));
        poll(SLOW, || started.exists().then_some(()))
            .unwrap_or_else(|| panic!("client did not start {text:?}:\n{}", self.host.err.text()));
        n
    }

    /// Waits for command `n` to finish.
    fn wait(&self, n: usize) {
        let done = self.dir.join(format!("done.{n}"));
        poll(SLOW, || done.exists().then_some(()))
            .unwrap_or_else(|| panic!("client did not finish {n}:\n{}", self.host.err.text()));
    }

    /// SIGUSR1, then the line of its outcome: persisted, skipped or starved.
    fn attempt(&self) -> String {
        let from = self.host.err.len();
        self.host.signal(Signal::USR1);
        self.host
            .err
            .wait_from(from, SLOW, |l| {
                l.contains("snapshot persisted (SIGUSR1)")
                    || l.contains("snapshot skipped")
                    || l.contains("snapshot starved (SIGUSR1)")
            })
            .unwrap_or_else(|| panic!("no snapshot attempt:\n{}", self.host.err.text()))
            .1
    }

    /// SIGUSR1, then the "snapshot persisted" line it produced.
    fn snapshot(&self) -> String {
        let from = self.host.err.len();
        self.host.signal(Signal::USR1);
        self.host
            .err
            .wait_from(from, SLOW, |l| {
                l.contains("snapshot persisted (SIGUSR1)") || l.contains("snapshot skipped")
            })
            .unwrap_or_else(|| panic!("no snapshot:\n{}", self.host.err.text()))
            .1
    }
}

/// The runs of delta `index` of base `generation`: `(pages carried, meta pages)`.
fn delta_pages(state: &Path, generation: u64, index: u64) -> (u64, u64) {
    let path = chain::chain_dir(state).join(chain::delta_name(generation, index));
    let (footer, runs) = chain::read_delta(fs::File::open(&path).unwrap()).unwrap();
    let pages = runs.iter().map(|r| r.len / PAGE).sum();
    (pages, footer.meta_len.div_ceil(PAGE))
}

fn read_all(fd: impl std::os::fd::AsFd, len: u64) -> Vec<u8> {
    let f = fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, 0).unwrap();
    v
}

/// A full queue snapshot of the client's region, taken by this test (`take_queue`, as the
/// host's bases): its image bytes.
fn full_snapshot_of(client: i32, dir: &Path) -> Vec<u8> {
    let fd = rustix::fs::open(
        format!("/proc/{client}/fd/3"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let memfd = Memfd::from_fd(fd).unwrap();
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
    let persister = Persister::new(&dir.join("full.snap"), 0).unwrap();
    let meta = SnapshotMeta {
        strategy: shmsnap_core::Strategy::Queue.code(),
        generation: 1,
        unix_time_ns: 0,
    };
    let QueueSnapshot::Written { file, figures } =
        take_queue(&memfd, &map, &persister, meta, &mut Scratch::default()).unwrap()
    else {
        panic!("the quiescent region must snapshot");
    };
    file.commit().unwrap();
    let bytes = fs::read(persister.target()).unwrap();
    bytes[..figures.info.image_len as usize].to_vec()
}

/// The state of the chain of base `base` restored into a fresh memfd.
fn restored(base: &Path, state: &Path, len: u64) -> (Vec<u8>, chain::RestoreReport) {
    let m = Memfd::create("restored", len).unwrap();
    m.seal_against_shrink().unwrap();
    let report = chain::restore_chain(base, &chain::chain_dir(state), &m, At::Latest).unwrap();
    (read_all(&m, len), report)
}

/// (a) + (b): the delta holds exactly the pages the client wrote (K tail pages + the data
/// ring page its commit wrote) plus the meta pages; base + deltas restore byte for byte to a
/// full snapshot of the same quiescent region.
#[test]
fn a_delta_holds_exactly_the_written_pages_and_the_chain_restores_to_a_full_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), &[]);
    if !rig.tracking() {
        return;
    }
    rig.cmd("w 1");
    let line = rig.snapshot();
    assert!(line.contains("point=base 1"), "{line}");
    for (round, pages) in [
        (2u64, &[3u64, 4, 5, 90][..]),
        (3, &[7, 200][..]),
        (4, &[][..]),
    ] {
        let list: Vec<String> = pages.iter().map(u64::to_string).collect();
        rig.cmd(&format!("w {round} {}", list.join(" ")));
        let line = rig.snapshot();
        let index = round - 1;
        assert!(
            line.contains(&format!("point=delta {index} of base 1")),
            "round {round}: {line}\n{}",
            rig.host.err.text()
        );
        let (carried, meta) = delta_pages(&rig.state, 1, index);
        assert_eq!(
            carried,
            meta + 1 + pages.len() as u64,
            "round {round}: the delta must carry the {meta} meta pages, the data ring page \
             and exactly the {} pages written",
            pages.len()
        );
    }
    let (client, _) = rig.ready(None);
    let full = full_snapshot_of(client, tmp.path());
    let (chain_image, report) = restored(&rig.state, &rig.state, full.len() as u64);
    assert_eq!(report.listing.deltas.len(), 3);
    assert!(report.listing.stop.is_none(), "{:?}", report.listing.stop);
    assert!(
        chain_image == full,
        "base + 3 deltas differ from a full snapshot of the same region at byte {:?}",
        chain_image.iter().zip(&full).position(|(a, b)| a != b)
    );
}

/// (c) `--incremental off`: only bases, and the client does not even track.
#[test]
fn incremental_off_takes_only_bases() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), &["--incremental", "off"]);
    let (_, advert) = rig.ready(None);
    assert_eq!(
        advert,
        vec![0; 4],
        "SHMSNAP_TRACK=0 must keep the client from tracking"
    );
    for round in 1..=3u64 {
        rig.cmd(&format!("w {round} {round}"));
        let line = rig.snapshot();
        assert!(line.contains(&format!("point=base {round}")), "{line}");
    }
    assert!(!chain::chain_dir(&rig.state).exists());
}

/// (d) A torn newest delta: the restart restores the base and the complete deltas before it,
/// and warns naming the torn file.
#[test]
fn a_torn_newest_delta_is_not_applied_and_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), &[]);
    if !rig.tracking() {
        return;
    }
    rig.cmd("w 1");
    assert!(rig.snapshot().contains("point=base 1"));
    for round in 2..=3u64 {
        rig.cmd(&format!("w {round} {round}"));
        assert!(rig.snapshot().contains("point=delta"));
    }
    let (client, _) = rig.ready(None);
    let state = rig.state.clone();
    drop(rig); // SIGKILL of the host: the client dies too (PDEATHSIG); no final snapshot.
    assert!(common::wait_dead(client, SLOW));
    let torn = chain::chain_dir(&state).join(chain::delta_name(1, 2));
    let len = fs::metadata(&torn).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&torn)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let rig = Rig::start(tmp.path(), &[]);
    let line = rig
        .host
        .err
        .expect("(base generation 1) plus", "the restart's restore line");
    assert!(line.contains("plus 1 delta(s)"), "{line}");
    let warn = rig
        .host
        .err
        .expect("ends early", "a warning about the torn delta");
    assert!(
        warn.contains("WARN") && warn.contains(&torn.file_name().unwrap().to_string_lossy()[..]),
        "{warn}"
    );
}

/// (e) A SIGKILLed client is restarted; the first snapshot of the new process is a base (its
/// page tables are new), the next a delta again.
#[test]
fn after_the_client_is_killed_the_next_snapshot_is_a_base() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), &["--restart", "always"]);
    if !rig.tracking() {
        return;
    }
    rig.cmd("w 1");
    assert!(rig.snapshot().contains("point=base 1"));
    rig.cmd("w 2 1");
    assert!(rig.snapshot().contains("point=delta 1 of base 1"));
    let (old, _) = rig.ready(None);
    rustix::process::kill_process(rustix::process::Pid::from_raw(old).unwrap(), Signal::KILL)
        .unwrap();
    let (new, _) = rig.ready(Some(old));
    assert_ne!(new, old);
    rig.cmd("w 3 2");
    let line = rig.snapshot();
    assert!(
        line.contains("point=base"),
        "a new pid must give a base: {line}"
    );
    rig.cmd("w 4 3");
    let line = rig.snapshot();
    assert!(line.contains("point=delta 1 of base"), "{line}");
}

/// A starved attempt keeps its scan (issue 27): the tail pages the client wrote before an
/// attempt that starved under a flat-out committer are reported by that attempt's scan only;
/// the next snapshot is still a delta onto the same chain, it carries those pages, and the
/// chain restores byte for byte to a full snapshot of the quiescent region. Before the carry
/// the snapshot after a starved one was a base.
#[test]
fn a_starved_attempt_is_followed_by_a_delta_carrying_its_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), &[]);
    if !rig.tracking() {
        return;
    }
    rig.cmd("w 1");
    assert!(rig.snapshot().contains("point=base 1"));
    rig.cmd("w 2 1");
    assert!(rig.snapshot().contains("point=delta 1 of base 1"));
    // Tail pages written, then an attempt under a flat-out committer: until one starves
    // (a persisted one is simply the next delta).
    let mut carried_pages = Vec::new();
    let mut index = 1;
    for round in 3..40u64 {
        let pages = [10 + round, 100 + round];
        rig.cmd(&format!("w {round} {} {}", pages[0], pages[1]));
        let busy = rig.begin("b 300");
        let line = rig.attempt();
        rig.wait(busy);
        if line.contains("snapshot starved") {
            carried_pages.extend(pages);
            break;
        }
        index += 1;
        assert!(
            line.contains(&format!("point=delta {index} of base 1")),
            "round {round}: {line}\n{}",
            rig.host.err.text()
        );
    }
    assert!(
        !carried_pages.is_empty(),
        "no attempt starved under the flat-out committer:\n{}",
        rig.host.err.text()
    );
    // A starved attempt that SIGUSR1 waits for is retried at once, at most 3 times
    // (`supervisor::worker::STARVED_RETRIES`): wait for that job to end — a retry persisted,
    // or all 1 + 3 attempts starved — so that the next SIGUSR1's line is its own. The loop
    // above stopped at the first starved attempt: the first starved line is that job's.
    let starved_at = rig
        .host
        .err
        .all()
        .iter()
        .position(|l| l.contains("snapshot starved (SIGUSR1)"))
        .expect("the starved line");
    poll(SLOW, || {
        let lines = rig.host.err.all();
        let after = &lines[starved_at..];
        let persisted = after
            .iter()
            .any(|l| l.contains("snapshot persisted (SIGUSR1)"));
        let starved = after
            .iter()
            .filter(|l| l.contains("snapshot starved (SIGUSR1)"))
            .count();
        (persisted || starved >= 4).then_some(())
    })
    .unwrap_or_else(|| panic!("the starved job did not end:\n{}", rig.host.err.text()));
    rig.cmd("w 50 200");
    let line = rig.snapshot();
    // Every snapshot since the starved attempt (a retry's, then this one) is a delta onto the
    // same chain; the first of them carries the starved attempt's scan.
    let since: Vec<String> = rig.host.err.all()[starved_at..]
        .iter()
        .filter(|l| l.contains("snapshot persisted (SIGUSR1)"))
        .cloned()
        .collect();
    let carrying = index + 1;
    for (i, l) in since.iter().enumerate() {
        assert!(
            l.contains(&format!("point=delta {} of base 1", carrying + i as u64)),
            "the snapshots after a starved attempt must be deltas onto the same chain: {l}\n{}",
            rig.host.err.text()
        );
    }
    index += since.len() as u64;
    assert!(
        line.contains(&format!("point=delta {index} of base 1")),
        "{line}"
    );
    let runs_of = |i: u64| {
        let path = chain::chain_dir(&rig.state).join(chain::delta_name(1, i));
        chain::read_delta(fs::File::open(&path).unwrap()).unwrap().1
    };
    let carried_runs = runs_of(carrying);
    let runs = runs_of(index);
    let (client, _) = rig.ready(None);
    let full = full_snapshot_of(client, tmp.path());
    let tail = shmsnap_core::Layout::read_bytes(&full)
        .expect("the full snapshot's layout")
        .tail_offset;
    let (chain_image, report) = restored(&rig.state, &rig.state, full.len() as u64);
    assert_eq!(report.listing.deltas.len() as u64, index);
    assert!(report.listing.stop.is_none(), "{:?}", report.listing.stop);
    assert!(
        chain_image == full,
        "base + {index} deltas differ from a full snapshot of the same region at byte {:?}",
        chain_image.iter().zip(&full).position(|(a, b)| a != b)
    );
    let holds = |runs: &[chain::Run], p: u64| {
        let at = tail + p * PAGE;
        runs.iter()
            .any(|r| r.offset <= at && at + PAGE <= r.offset + r.len)
    };
    for &p in &carried_pages {
        assert!(
            holds(&carried_runs, p),
            "delta {carrying} must carry tail page {p} (written before the starved attempt's \
             scan): {carried_runs:?}"
        );
    }
    assert!(
        holds(&runs, 200),
        "delta {index} must hold page 200: {runs:?}"
    );
}
