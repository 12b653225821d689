//! Stores that bypass the client's tracked mapping (issue 20, finding 1) must never make an
//! incremental chain restore differently from a full snapshot: the real host, the queue
//! strategy with `--incremental auto`, a real client, and four ways around write tracking —
//! a forked child that commits, `pwrite` through fd 3 by the client itself, another process
//! mapping the memfd through `/proc/PID/fd/3` (before and after the client's seal), and a
//! helper writing through `/proc/PID/fd/3`.
//!
//! Each test ends the same way: the region quiescent, a full snapshot of it taken by the test
//! (`take_queue`, as the host's bases), the host SIGKILLed and started again on the same state
//! file with a client that only dumps the restored region — which must equal the full
//! snapshot byte for byte (except the host's status words, which a restarted host writes
//! before its client starts, DESIGN §14).
//!
//! The client is this test binary run again by the host with `SHMSNAP_UW_CLIENT=DIR` and
//! `SHMSNAP_UW_MODE=MODE` ([`client_entry`]).

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{poll, Proc, SLOW};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::Signal;
use shmsnap_core::format::word;
use shmsnap_core::{LayoutRequest, Region, Writer};
use shmsnap_linux::listen::{open_client_region, take_listen_fd, DEFAULT_FD_NAME};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::SnapshotMeta;
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch};
use shmsnap_linux::{Mapping, Memfd, Protection};

const DIR_ENV: &str = "SHMSNAP_UW_CLIENT";
const MODE_ENV: &str = "SHMSNAP_UW_MODE";
const PAGE: u64 = 4096;

/// The command-driven client's queue: 64 descriptors, a 16-page data ring, 1 KiB payloads
/// (four commits per ring page, so a test knows which page each commit writes).
const LAYOUT: LayoutRequest = LayoutRequest {
    entries: 64,
    data_size: 64 << 10,
};
const PAYLOAD: usize = 1024;

/// The forked-writer client's queue (issue 20's scenario): 1,024 entries, a 1 MiB ring.
const FORK_LAYOUT: LayoutRequest = LayoutRequest {
    entries: 1024,
    data_size: 1 << 20,
};
const FORK_PAYLOAD: usize = 512;

/// `len` payload bytes for commit `seq`: the seq, then bytes derived from it (a restored
/// entry whose bytes are another commit's shows up in a byte comparison).
fn payload(seq: u64, buf: &mut [u8]) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in &mut buf[8..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

// ----------------------------------------------------------------------------------------
// The client.

/// Entry point of the client; a no-op test when run normally.
#[test]
fn client_entry() {
    let (Some(dir), Some(mode)) = (std::env::var_os(DIR_ENV), std::env::var(MODE_ENV).ok()) else {
        return;
    };
    let dir = PathBuf::from(dir);
    match mode.as_str() {
        "dump" => dump_client(&dir),
        "cmd" => command_client(&dir, false),
        "late" => command_client(&dir, true),
        "fork" => fork_client(&dir),
        "scribble" => scribble_client(&dir),
        other => panic!("unknown client mode {other}"),
    }
}

fn write_atomic(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn pid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// This process's claim id (one writer at a time, so one id will do).
fn me() -> shmsnap_core::ClaimId {
    shmsnap_core::ClaimId::from_pid(std::process::id(), 1).expect("a pid is nonzero")
}

/// Writes the region as the restarted host handed it over (before anything touches it) to
/// `DIR/dump`, then exits.
fn dump_client(dir: &Path) {
    let fd = take_listen_fd(DEFAULT_FD_NAME).expect("region fd");
    let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
    let mut bytes = vec![0u8; len];
    fs::File::from(fd).read_exact_at(&mut bytes, 0).unwrap();
    write_atomic(&dir.join("dump"), &bytes);
}

/// Runs numbered commands `DIR/cmd.N`, answering `DIR/done.N` (see [`Rig::cmd`]). With
/// `late`, it first announces itself (`DIR/started`) and waits for `DIR/go` before it opens
/// its region, so that another process can map the region before the client seals it.
fn command_client(dir: &Path, late: bool) {
    if late {
        write_atomic(&dir.join("started"), pid().to_string().as_bytes());
        while !dir.join("go").exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let (memfd, map) = open_client_region(DEFAULT_FD_NAME).expect("open the region");
    let mut w = Writer::open_or_init(map.words(), LAYOUT, me()).expect("queue");
    let tracks = map.words()[word::TRACK]
        .iter()
        .any(|a| a.load(Ordering::Relaxed) != 0);
    write_atomic(&dir.join("ready"), format!("{} {tracks}", pid()).as_bytes());
    let mut buf = [0u8; PAYLOAD];
    for n in 1.. {
        let cmd = dir.join(format!("cmd.{n}"));
        let text = loop {
            if let Ok(t) = fs::read_to_string(&cmd) {
                break t;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut it = text.split_whitespace();
        let answer = match it.next() {
            // "c K": K commits.
            Some("c") => {
                for _ in 0..it.next().unwrap().parse::<u32>().unwrap() {
                    payload(w.next_seq(), &mut buf);
                    w.commit(&buf).unwrap();
                }
                String::new()
            }
            // "p OFFSET": pwrite 64 bytes through this process's own fd 3.
            Some("p") => {
                let off: u64 = it.next().unwrap().parse().unwrap();
                outcome(rustix::io::pwrite(&memfd, &[0xee; 64], off).map(drop))
            }
            other => panic!("unknown command {other:?}"),
        };
        write_atomic(&dir.join(format!("done.{n}")), answer.as_bytes());
    }
}

/// `ok`, or the errno's name as `EPERM`-style text.
fn outcome(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) if e == Errno::PERM => "EPERM".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Issue 20's client: opens its region, forks, and the child commits every 2 ms for a second;
/// then the parent commits every 2 ms for half a second, pauses, commits once more and reports
/// `DIR/quiet`: `FINAL_SEQ CHILD_OUTCOME`.
///
/// The child is forked by `std::process::Command` and runs as its `pre_exec` hook (so `std`
/// does the fork, and the child never returns into the test harness): a child that finishes
/// its commits fails the hook with `ECANCELED` (it exits, and `spawn` reports that error); a
/// child killed by a signal never reports, `spawn` succeeds and `wait` gives the signal.
fn fork_client(dir: &Path) {
    let (_memfd, map) = open_client_region(DEFAULT_FD_NAME).expect("open the region");
    // The child's writer must be 'static; the client lives until it is killed anyway.
    let map: &'static Mapping = Box::leak(Box::new(map));
    let mut child_writer = Writer::open_or_init(map.words(), FORK_LAYOUT, me()).expect("queue");
    write_atomic(&dir.join("ready"), pid().to_string().as_bytes());
    let mut cmd = std::process::Command::new("/bin/true");
    let hook = move || -> std::io::Result<()> {
        let mut buf = [0u8; FORK_PAYLOAD];
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            payload(child_writer.next_seq(), &mut buf);
            // A failed commit would be a corrupt region: stop writing, report it.
            if child_writer.commit(&buf).is_err() {
                return Err(Errno::IO.into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(Errno::CANCELED.into())
    };
    // SAFETY: the hook runs in the forked child before exec. It allocates nothing, takes no
    // lock and touches no state shared with other threads of the parent: it stores into the
    // shared mapping (atomic words), reads the clock and sleeps (syscalls), and returns an
    // error built from an errno (no allocation).
    unsafe {
        cmd.pre_exec(hook);
    }
    let child = match cmd.spawn() {
        Err(e) if e.raw_os_error() == Some(Errno::CANCELED.raw_os_error()) => {
            "committed".to_owned()
        }
        Err(e) => format!("error:{e}"),
        Ok(mut c) => {
            use std::os::unix::process::ExitStatusExt;
            let status = c.wait().unwrap();
            match status.signal() {
                Some(11) => "SIGSEGV".to_owned(),
                Some(s) => format!("signal:{s}"),
                None => format!("exit:{status}"),
            }
        }
    };
    // The parent takes over: a writer recovered from what the region holds now, once the
    // pre-fork writer (held by the hook inside `cmd`) has released the region's claim.
    drop(cmd);
    let mut w = Writer::attach(map.words(), me()).expect("attach after the child");
    let mut buf = [0u8; FORK_PAYLOAD];
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        payload(w.next_seq(), &mut buf);
        w.commit(&buf).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(300));
    let last = w.next_seq();
    payload(last, &mut buf);
    w.commit(&buf).unwrap();
    write_atomic(&dir.join("quiet"), format!("{last} {child}").as_bytes());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// First start: opens the region (tracking seals it), scribbles over the header's magic
/// through its own mapping and fails. Later starts: the primes example, which checks every
/// prime it restores.
fn scribble_client(dir: &Path) {
    let marker = dir.join("scribbled");
    if marker.exists() {
        println!(); // ends the harness's "test client_entry ... " line
        let e = std::process::Command::new(common::BIN)
            .args(["example", "primes", "--limit", "640"])
            .exec();
        panic!("exec primes: {e}");
    }
    let (memfd, map) = open_client_region(DEFAULT_FD_NAME).expect("open the region");
    let sealed = memfd.is_write_sealed().unwrap();
    map.words()[word::MAGIC].store(0x5c21_bb1e, Ordering::Relaxed);
    write_atomic(&marker, sealed.to_string().as_bytes());
    std::process::exit(1);
}

// ----------------------------------------------------------------------------------------
// The test side.

/// A host running the test client, and the client's command files.
struct Rig {
    root: PathBuf,
    dir: PathBuf,
    host: Proc,
    /// Next command number.
    n: usize,
}

/// `--interval 1h`: snapshots on SIGUSR1 only. Compaction pushed out: a base between two
/// deltas would hide a missed page.
const BY_SIGNAL: &[&str] = &[
    "--interval",
    "1h",
    "--size",
    "1M",
    "--compact-ratio",
    "10000",
    "--compact-deltas",
    "1000",
];

impl Rig {
    fn start(root: &Path, mode: &str, args: &[&str]) -> Rig {
        let dir = root.join("client");
        fs::create_dir_all(&dir).unwrap();
        let state = root.join("s.snap");
        let me = std::env::current_exe().unwrap();
        let mut c = common::shmsnap(["run", "--state"]);
        c.arg(&state)
            .args(["--strategy", "queue", "--incremental", "auto"])
            .args(args)
            .arg("--")
            .arg(me)
            .args(["--exact", "client_entry", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, &dir)
            .env(MODE_ENV, mode);
        Rig {
            root: root.to_owned(),
            dir,
            host: Proc::spawn(c),
            n: 1,
        }
    }

    /// Waits for `DIR/file` and returns its text.
    fn wait_file(&self, file: &str) -> String {
        let path = self.dir.join(file);
        poll(SLOW, || fs::read_to_string(&path).ok())
            .unwrap_or_else(|| panic!("no {file} from the client:\n{}", self.host.err.text()))
    }

    /// The client's pid once it is ready; `None` if it could not track its writes and
    /// `SHMSNAP_TEST_ALLOW_MISSING` names `uffd-wp` (otherwise that fails the test).
    fn ready(&self) -> Option<i32> {
        let text = self.wait_file("ready");
        let mut it = text.split_whitespace();
        let pid = it.next().unwrap().parse().unwrap();
        let probe = if it.next() == Some("false") {
            Err("the client could not register write tracking".to_owned())
        } else {
            Ok(pid)
        };
        shmsnap_testkit::require::require(
            "uffd-wp",
            "Write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7+).",
            probe,
        )
    }

    /// Runs one client command; returns its answer.
    fn cmd(&mut self, text: &str) -> String {
        let n = self.n;
        write_atomic(&self.dir.join(format!("cmd.{n}")), text.as_bytes());
        self.n += 1;
        self.wait_file(&format!("done.{n}"))
    }

    /// SIGUSR1, then the "snapshot persisted" line it produced.
    fn snapshot(&self) -> String {
        let from = self.host.err.len();
        self.host.signal(Signal::USR1);
        self.host
            .err
            .wait_from(from, SLOW, |l| l.contains("snapshot persisted (SIGUSR1)"))
            .unwrap_or_else(|| panic!("no snapshot:\n{}", self.host.err.text()))
            .1
    }

    /// SIGKILLs the host (its client dies with it), starts it again on the same state file
    /// with the dump client, and returns the region it restored.
    fn restart_and_dump(mut self, client: i32) -> Vec<u8> {
        self.host.kill();
        assert!(
            common::wait_dead(client, SLOW),
            "the client outlived its host"
        );
        // No --size: the region is the snapshot's size.
        let mut again = Rig::start(&self.root, "dump", &["--interval", "1h"]);
        let dump = poll(SLOW, || fs::read(again.dir.join("dump")).ok()).unwrap_or_else(|| {
            panic!(
                "the restarted host's client dumped nothing:\n{}",
                again.host.err.text()
            )
        });
        again.host.kill();
        dump
    }
}

/// The client's region, opened read-only through `/proc/PID/fd/3`, and its data ring's file
/// offset.
fn client_region(client: i32) -> (Memfd, Mapping, u64) {
    let fd = rustix::fs::open(
        format!("/proc/{client}/fd/3"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let memfd = Memfd::from_fd(fd).unwrap();
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
    let data = Region::open(map.words()).unwrap().layout().data_offset;
    (memfd, map, data)
}

/// A full queue snapshot of the client's quiescent region, taken by this test (`take_queue`,
/// as the host's bases): its image bytes.
fn full_snapshot_of(client: i32, root: &Path) -> Vec<u8> {
    let (memfd, map, _) = client_region(client);
    let persister = Persister::new(&root.join("full.snap"), 0).unwrap();
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

/// The restored region equals the full snapshot byte for byte, but for the status words the
/// restarted host published before its client started.
fn assert_restores_like_a_full_snapshot(restored: &[u8], full: &[u8]) {
    assert!(restored.len() >= full.len(), "restored region too short");
    let status = word::STATUS.start * 8..word::STATUS.end * 8;
    let differing: Vec<usize> = (0..full.len())
        .filter(|i| !status.contains(i) && restored[*i] != full[*i])
        .collect();
    assert!(
        differing.is_empty(),
        "the restored chain differs from a full snapshot of the same quiescent region in {} \
         byte(s), first at offset {} (page {}): a store bypassed write tracking and a delta \
         missed it",
        differing.len(),
        differing[0],
        differing[0] as u64 / PAGE
    );
}

/// Commits, a base, more commits, a delta; returns the client and its data ring's offset.
fn base_then_delta(rig: &mut Rig) -> Option<(i32, u64)> {
    let client = rig.ready()?;
    rig.cmd("c 4"); // seqs 1-4: ring page 0
    assert!(rig.snapshot().contains("point=base"));
    rig.cmd("c 4"); // seqs 5-8: ring page 1
    let line = rig.snapshot();
    assert!(line.contains("point=delta 1"), "{line}");
    let (_, _, data) = client_region(client);
    Some((client, data))
}

/// After the bypassing store: commits on another page, a snapshot, the comparison.
fn finish(mut rig: Rig, client: i32) {
    rig.cmd("c 4"); // seqs 9-12: ring page 2 (not the page the bypassing store hit)
    rig.snapshot();
    let full = full_snapshot_of(client, &rig.root.clone());
    let restored = rig.restart_and_dump(client);
    assert_restores_like_a_full_snapshot(&restored, &full);
}

/// The client itself `pwrite`s into a committed entry's payload through its fd 3.
#[test]
fn pwrite_through_fd3_by_the_client_never_hides_from_a_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), "cmd", BY_SIGNAL);
    let Some((client, data)) = base_then_delta(&mut rig) else {
        return;
    };
    let answer = rig.cmd(&format!("p {}", data + 100)); // seq 1's payload
    finish(rig, client);
    assert_eq!(
        answer, "EPERM",
        "the seal must refuse the client's own pwrite"
    );
}

/// A helper process opens `/proc/PID/fd/3` read-write and writes into the region.
#[test]
fn a_helper_writing_through_proc_pid_fd3_never_hides_from_a_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), "cmd", BY_SIGNAL);
    let Some((client, data)) = base_then_delta(&mut rig) else {
        return;
    };
    let fd = rustix::fs::open(
        format!("/proc/{client}/fd/3"),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("reopening the region read-write stays allowed");
    let answer = outcome(rustix::io::pwrite(&fd, &[0xee; 64], data + 100).map(drop));
    drop(fd);
    finish(rig, client);
    assert_eq!(answer, "EPERM", "the seal must refuse a helper's write");
}

/// Another process maps the region read-write through `/proc/PID/fd/3` while the client
/// runs, and stores into a committed entry's payload.
#[test]
fn a_second_mapping_made_after_the_client_opened_never_hides_from_a_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), "cmd", BY_SIGNAL);
    let Some((client, data)) = base_then_delta(&mut rig) else {
        return;
    };
    let fd = rustix::fs::open(
        format!("/proc/{client}/fd/3"),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let len = rustix::fs::fstat(&fd).unwrap().st_size as usize;
    // SAFETY: the file is the client's region, sealed against shrinking by the host: it stays
    // `len` bytes long while mapped; this test stores through atomic words only. (This maps
    // directly, not through `Mapping::of_memfd`, to see what the kernel itself allows.)
    let mapped = unsafe { Mapping::from_fd(fd.as_fd(), len, Protection::ReadWrite) };
    let answer = match &mapped {
        Ok(m) => {
            m.words()[(data / 8) as usize + 13].store(0xeeee_eeee, Ordering::Relaxed);
            "mapped and stored".to_owned()
        }
        Err(e) => format!("{e}"),
    };
    drop(mapped);
    finish(rig, client);
    assert!(
        answer.contains("Operation not permitted"),
        "the seal must refuse a new writable mapping: {answer}"
    );
}

/// Another process mapped the region read-write *before* the client opened and sealed it,
/// and stores through that mapping between two snapshots: the host's census must see it and
/// take only full snapshots while it exists.
#[test]
fn a_mapping_made_before_the_seal_is_found_by_the_census() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(tmp.path(), "late", BY_SIGNAL);
    let started: i32 = rig.wait_file("started").trim().parse().unwrap();
    let fd = rustix::fs::open(
        format!("/proc/{started}/fd/3"),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let helper = Mapping::of_memfd(&Memfd::from_fd(fd).unwrap(), Protection::ReadWrite).unwrap();
    write_atomic(&rig.dir.join("go"), b"");
    let Some(client) = rig.ready() else {
        return;
    };
    rig.cmd("c 4");
    rig.snapshot();
    rig.cmd("c 4");
    rig.snapshot();
    let data = Region::open(helper.words()).unwrap().layout().data_offset;
    helper.words()[(data / 8) as usize + 13].store(0xeeee_eeee, Ordering::Relaxed);
    let log = rig.host.err.text();
    drop(helper);
    finish(rig, client);
    let me = std::process::id();
    assert!(
        log.contains(&format!("process {me} (")) && log.contains("maps the region writable"),
        "the census must name this process's writable mapping:\n{log}"
    );
}

/// A tracked client sealed its region, then corrupted it through its own mapping and exited:
/// the host cannot rewrite the sealed region, so it restores the newest sound snapshot into a
/// fresh memfd, and the restarted client finds the good state there.
#[test]
fn a_corrupt_sealed_region_is_repaired_into_a_fresh_memfd() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s.snap");
    let mut h = common::run_host(
        &state,
        &["--strategy", "queue", "--size", "1M", "--restart", "never"],
        &common::primes(&["--limit", "640"]),
    );
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let mut rig = Rig::start(tmp.path(), "scribble", &["--restart", "on-failure"]);
    let sealed = rig.wait_file("scribbled");
    let probe = match sealed.as_str() {
        "true" => Ok(()),
        _ => Err("the client could not track its writes, nothing was sealed".to_owned()),
    };
    if shmsnap_testkit::require::require(
        "uffd-wp",
        "Write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7+).",
        probe,
    )
    .is_none()
    {
        return;
    }
    let line = common::next_restored(&rig.host, 0, SLOW)
        .unwrap_or_else(|| panic!("no restarted client:\n{}", rig.host.err.text()));
    assert_eq!(
        line.2, 640,
        "the restarted client finds the restored primes"
    );
    assert_eq!(rig.host.exit_code(), 0, "{}", rig.host.err.text());
    let err = rig.host.err.text();
    assert!(
        err.contains("failed validation after the client exited")
            && err.contains("restoring into a fresh memfd instead")
            && err.contains("into the region: the client restarts from it"),
        "{err}"
    );
}

/// Issue 20's scenario: the client forks and the child commits (every 2 ms for a second,
/// 1,024 entries, 1 MiB ring, `--size 4M`, `--interval 100ms`); then the parent commits. With
/// the fix the child dies of SIGSEGV at its first touch of the region (the mapping is not
/// inherited): loud, not silent. Either way the chain must restore what a full snapshot does.
#[test]
fn a_forked_writer_never_makes_the_chain_restore_differently() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--interval",
        "100ms",
        "--size",
        "4M",
        // Pushed out, as in the second series: a compaction base would heal the chain.
        "--compact-ratio",
        "10000",
        "--compact-deltas",
        "1000",
    ];
    let rig = Rig::start(tmp.path(), "fork", &args);
    let client: i32 = rig.wait_file("ready").trim().parse().unwrap();
    let quiet = poll(Duration::from_secs(60), || {
        fs::read_to_string(rig.dir.join("quiet")).ok()
    })
    .unwrap_or_else(|| panic!("the client never went quiet:\n{}", rig.host.err.text()));
    let (last, child) = quiet.trim().split_once(' ').unwrap();
    // The host's next tick persists the last commit; the region is quiescent from then on.
    let needle = format!("newest_seq={last} ");
    rig.host
        .err
        .wait_from(0, SLOW, |l| {
            l.contains("snapshot persisted") && l.contains(&needle)
        })
        .unwrap_or_else(|| panic!("seq {last} never persisted:\n{}", rig.host.err.text()));
    let log = rig.host.err.text();
    // Without a delta there is nothing to compare: that needs write tracking here.
    let probe = match log.contains("point=delta") {
        true => Ok(()),
        false => Err(format!("no delta was taken:\n{log}")),
    };
    if shmsnap_testkit::require::require(
        "uffd-wp",
        "Write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7+).",
        probe,
    )
    .is_none()
    {
        return;
    }
    let full = full_snapshot_of(client, tmp.path());
    let restored = rig.restart_and_dump(client);
    assert_restores_like_a_full_snapshot(&restored, &full);
    assert_eq!(
        child, "SIGSEGV",
        "a forked child must not be able to store into the tracked region"
    );
}
