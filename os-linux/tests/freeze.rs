//! The freeze module against real processes: a multi-threaded child and a child with a child
//! of its own, each advancing counters in a shared memfd, stopped by either mechanism.
//!
//! Freezing is observed, not timed: every counter read twice across a pause (with time for
//! a running task to move it in between) must not move, and after the thaw every counter must
//! move again. The children are this test binary run again with `FREEZE_CHILD` set.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use shmsnap_linux::freeze::{CgroupFreezer, Freezer, ProcessGroup};
use shmsnap_linux::{Mapping, Memfd, Protection};

const CHILD_ENV: &str = "FREEZE_CHILD";
const CGROUP_ENV: &str = "FREEZE_CGROUP";
const FD_NAME: &str = "counters";
/// Counter words: the child's main thread, its 3 workers, the grandchild.
const WORDS: [usize; 5] = [0, 8, 16, 24, 32];
const SLOW: Duration = Duration::from_secs(20);

/// Not a test: the body of a child process (`FREEZE_CHILD=threads|tree|leaf`); a no-op in a
/// normal run.
#[test]
fn child_main() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    if let Ok(dir) = std::env::var(CGROUP_ENV) {
        // First: everything this process starts is born inside the cgroup.
        std::fs::write(Path::new(&dir).join("cgroup.procs"), "0").expect("join cgroup");
    }
    // `prepare_command` leaves LISTEN_PID to the exec shim; this child is its own shim.
    std::env::set_var("LISTEN_PID", std::process::id().to_string());
    let (memfd, map) = shmsnap_linux::listen::open_client_region(FD_NAME).expect("region");
    let map: &'static Mapping = Box::leak(Box::new(map));
    match mode.as_str() {
        "threads" => {
            for w in &WORDS[1..4] {
                let w = *w;
                std::thread::spawn(move || count(map, w));
            }
        }
        "tree" => {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, "leaf")
                .env_remove(CGROUP_ENV);
            shmsnap_linux::handover::prepare_command(&mut cmd, &memfd, FD_NAME).unwrap();
            // Same process group, same cgroup: stopped with us.
            std::mem::forget(cmd.spawn().expect("grandchild"));
        }
        "leaf" => count(map, WORDS[4]),
        other => panic!("unknown child mode {other}"),
    }
    count(map, WORDS[0]);
}

/// Advances word `w` forever.
fn count(map: &Mapping, w: usize) -> ! {
    loop {
        map.words()[w].fetch_add(1, Ordering::Relaxed);
        std::hint::spin_loop();
    }
}

/// A child in its own process group (and in `cgroup`, if given), killed on drop.
struct Counters {
    child: Child,
    map: Mapping,
    words: Vec<usize>,
}

impl Counters {
    fn start(mode: &str, cgroup: Option<&Path>) -> Counters {
        let memfd = Memfd::create("counters", 1 << 16).unwrap();
        memfd.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .process_group(0);
        if let Some(cg) = cgroup {
            cmd.env(CGROUP_ENV, cg);
        }
        shmsnap_linux::handover::prepare_command(&mut cmd, &memfd, FD_NAME).unwrap();
        let words = match mode {
            "threads" => WORDS[..4].to_vec(),
            _ => vec![WORDS[0], WORDS[4]],
        };
        let c = Counters {
            child: cmd.spawn().unwrap(),
            map,
            words,
        };
        c.wait_all_move(&c.read());
        c
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32).unwrap()
    }

    fn read(&self) -> Vec<u64> {
        let w = self.map.words();
        self.words
            .iter()
            .map(|&i| w[i].load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every counter is past `from` (panics after [`SLOW`]).
    fn wait_all_move(&self, from: &[u64]) {
        let end = Instant::now() + SLOW;
        loop {
            let now = self.read();
            if now.iter().zip(from).all(|(n, f)| n > f) {
                return;
            }
            assert!(
                Instant::now() < end,
                "counters {now:?} did not all move past {from:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process_group(self.pgid(), Signal::KILL);
        let _ = self.child.wait();
    }
}

/// A cgroup under the cgroup2 mount for one test, killed and removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let mount = shmsnap_linux::freeze::cgroup::cgroup2_root()
            .expect("no cgroup2 mount: the cgroup freezer cannot be tested here");
        let dir = mount.join(format!("shmsnap-freeze-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).expect("cannot create a test cgroup");
        TestCgroup(dir)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let end = Instant::now() + SLOW;
        while std::fs::read_to_string(self.0.join("cgroup.events"))
            .is_ok_and(|s| s.contains("populated 1"))
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Freezes, checks that no counter moves during the pause, thaws, checks that all move.
fn stops_all_then_resumes(c: &Counters, freezer: &Freezer) {
    for _ in 0..3 {
        let frozen = freezer.freeze(SLOW).expect("freeze");
        let a = c.read();
        // Time for any task still running to advance its counter many times.
        std::thread::sleep(Duration::from_millis(50));
        let b = c.read();
        assert_eq!(
            a,
            b,
            "a counter moved while {} reported frozen",
            freezer.name()
        );
        frozen.thaw().expect("thaw");
        c.wait_all_move(&b);
    }
}

#[test]
fn signal_freeze_stops_every_thread_of_a_multithreaded_child() {
    let c = Counters::start("threads", None);
    stops_all_then_resumes(&c, &Freezer::Signal(ProcessGroup::new(c.pgid())));
}

#[test]
fn signal_freeze_stops_a_child_and_its_child() {
    let c = Counters::start("tree", None);
    stops_all_then_resumes(&c, &Freezer::Signal(ProcessGroup::new(c.pgid())));
}

#[test]
fn cgroup_freeze_stops_every_thread_of_a_multithreaded_child() {
    let cg = TestCgroup::new("threads");
    let c = Counters::start("threads", Some(&cg.0));
    stops_all_then_resumes(&c, &Freezer::Cgroup(CgroupFreezer::new(&cg.0)));
}

#[test]
fn cgroup_freeze_stops_a_child_and_its_child() {
    let cg = TestCgroup::new("tree");
    let c = Counters::start("tree", Some(&cg.0));
    stops_all_then_resumes(&c, &Freezer::Cgroup(CgroupFreezer::new(&cg.0)));
}

#[test]
fn a_dropped_guard_thaws_a_real_cgroup() {
    let cg = TestCgroup::new("drop");
    let c = Counters::start("threads", Some(&cg.0));
    let f = CgroupFreezer::new(&cg.0);
    let frozen = f.freeze(SLOW).unwrap();
    let events = std::fs::read_to_string(cg.0.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let b = c.read();
    drop(frozen);
    c.wait_all_move(&b);
}
