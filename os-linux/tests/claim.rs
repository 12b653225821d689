//! One writer per region across two processes (issue 20, finding 3): a child process holds
//! the region's writer; a second writer in this process is refused with an error naming the
//! child's pid; after the child is SIGKILLed its claim stays until the host's reclaim
//! (`status::reclaim_dead_claim`), after which a new writer attaches and finds the child's
//! commit.
//!
//! The child is this test binary run again with [`CHILD_ENV`] set to the region's path under
//! `/proc` (the test function sees it and acts as the holder instead).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, Stdio};

use shmsnap_core::{claim, AttachError, LayoutRequest};
use shmsnap_linux::status::{reclaim_dead_claim, ClaimWord};
use shmsnap_linux::{ClientRegion, Memfd};

/// Set in the child: the path of the region to open (`/proc/<parent>/fd/<n>`).
const CHILD_ENV: &str = "SHMSNAP_CLAIM_TEST_REGION";
const TEST: &str = "a_second_process_is_refused_naming_the_holder_until_the_host_reclaims";
const REQUEST: LayoutRequest = LayoutRequest {
    entries: 8,
    data_size: 4096,
};

/// The child: takes the region's writer, commits, says so, and holds it until killed.
fn hold(path: &str) -> ! {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("the parent's region");
    let mut region = ClientRegion::from_memfd(Memfd::from_fd(f.into()).unwrap()).unwrap();
    let mut w = region
        .writer(REQUEST)
        .expect("the child is the first writer");
    w.commit(b"child's state").unwrap();
    println!("HOLDING {}", std::process::id());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The child process, SIGKILLed and reaped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_process_is_refused_naming_the_holder_until_the_host_reclaims() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        hold(&path);
    }
    let memfd = Memfd::create("claim-two-processes", 1 << 20).unwrap();
    memfd.seal_against_shrink().unwrap();
    let path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        memfd.as_fd().as_raw_fd()
    );
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let child_pid = child.0.id();
    // The harness prints `test NAME ... ` first, on the same line.
    let holding = BufReader::new(child.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| Some(l.split_once("HOLDING ")?.1.trim().to_owned()))
        .expect("the child reports that it holds the region");
    assert_eq!(holding, child_pid.to_string());

    let dup = Memfd::from_fd(rustix::io::fcntl_dupfd_cloexec(&memfd, 0).unwrap()).unwrap();
    let mut region = ClientRegion::from_memfd(dup).unwrap();
    let refused = match region.writer(REQUEST) {
        Err(e @ AttachError::Claimed { .. }) => e,
        other => panic!("a second writer on a held region: {other:?}"),
    };
    let AttachError::Claimed { holder } = refused else {
        unreachable!()
    };
    assert_eq!(holder.pid(), child_pid, "the refusal names the holder");
    assert!(
        refused.to_string().contains(&format!("pid {child_pid}")),
        "{refused}"
    );

    // SIGKILL: the claim outlives the holder until the host, knowing it is dead, clears it.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(matches!(
        region.writer(REQUEST),
        Err(AttachError::Claimed { holder: h }) if h == holder
    ));
    assert_eq!(
        reclaim_dead_claim(&memfd, ClaimWord::Ours).unwrap(),
        Some(holder)
    );
    assert_eq!(claim::holder(region.words()), None);
    let w = region.writer(REQUEST).expect("attach after the reclaim");
    let newest = w.region().newest().expect("the child's commit");
    let mut buf = [0u8; 13];
    w.region().read_payload(&newest, &mut buf).unwrap();
    assert_eq!(&buf, b"child's state");
}
