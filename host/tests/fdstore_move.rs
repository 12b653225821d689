//! A region its client sealed against other writers (write tracking, DESIGN §11) cannot be
//! handed to a new client: the host moves it into a fresh memfd before a restart, and at
//! start when systemd's fd store hands it a sealed one, and replaces the fd-store entry
//! (`FDSTOREREMOVE=1`, then `FDSTORE=1`, same name) — with a fake notify socket that records
//! the datagrams and receives the fds.
//!
//! The only test of this binary: it reserves fd 3 in the test process (the handover's rule for
//! any process that spawns with `prepare_command`), which would race with parallel tests.

mod common;

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::process::{Pid, Signal};
use shmsnap_linux::{Mapping, Memfd, Protection};

/// One datagram: its text and the fds that came with it.
struct Datagram {
    text: String,
    fds: Vec<OwnedFd>,
}

fn receive(sock: &UnixDatagram) -> Option<Datagram> {
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
        Ok(m) => m,
        Err(rustix::io::Errno::AGAIN) => return None,
        Err(e) => panic!("recvmsg: {e}"),
    };
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Some(Datagram {
        text: String::from_utf8_lossy(&buf[..msg.bytes]).into_owned(),
        fds,
    })
}

/// Receives datagrams until one contains `needle`; returns it (the ones before are dropped).
fn until(sock: &UnixDatagram, needle: &str, host: &Proc) -> Datagram {
    let end = Instant::now() + SLOW;
    while Instant::now() < end {
        if let Some(d) = receive(sock) {
            if d.text.contains(needle) {
                return d;
            }
        }
    }
    panic!("no datagram with {needle:?}:\n{}", host.err.text());
}

fn inode(fd: &OwnedFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino
}

fn sealed(fd: &OwnedFd) -> bool {
    let dup = fd.try_clone().unwrap();
    Memfd::from_fd(dup).unwrap().is_write_sealed().unwrap()
}

#[test]
fn a_sealed_region_moves_to_a_fresh_memfd_and_replaces_the_fd_store_entry() {
    shmsnap_linux::handover::reserve_fd3().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("shmsnap-move-")
        .tempdir()
        .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let state = dir.path().join("m.snap");
    let client = primes(&["--pause", "2ms"]);
    let args = [
        "--strategy",
        "queue",
        "--incremental",
        "auto",
        "--interval",
        "100ms",
        "--size",
        "2M",
        "--restart",
        "always",
        "--",
    ];
    let mut c = shmsnap(["run", "--state"]);
    c.arg(&state)
        .args(args)
        .args(&client)
        .env("NOTIFY_SOCKET", &sock_path);
    let mut h = Proc::spawn(c);

    let mut first = until(&sock, "FDSTORE=1", &h);
    let old = first.fds.pop().expect("the region's fd");
    let (i0, pid, _) = next_restored(&h, 0, SLOW).unwrap();
    let probe = poll(Duration::from_secs(5), || sealed(&old).then_some(()))
        .ok_or_else(|| "the client did not seal its region (no write tracking?)".to_owned());
    if shmsnap_testkit::require::require(
        "uffd-wp",
        "Write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7+).",
        probe,
    )
    .is_none()
    {
        return;
    }
    poll(SLOW, || live_count(pid).filter(|&c| c > 0)).expect("the client commits");

    // A restarted client needs a region it can map writable: the host moves it after the
    // final snapshot and replaces the fd-store entry, remove first.
    rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
    let removal = until(&sock, "FDSTOREREMOVE=1", &h);
    assert!(
        removal.text.lines().any(|l| l == "FDNAME=SHM_SHARED_FD") && removal.fds.is_empty(),
        "{}",
        removal.text
    );
    let mut store = until(&sock, "FDSTORE=1", &h);
    assert!(store.text.lines().any(|l| l == "FDNAME=SHM_SHARED_FD"));
    let moved = store.fds.pop().expect("the moved region's fd");
    assert_ne!(
        inode(&moved),
        inode(&old),
        "the fd store must get a new memfd"
    );
    let (_, pid2, _) = next_restored(&h, i0 + 1, SLOW)
        .unwrap_or_else(|| panic!("no restarted client:\n{}", h.err.text()));
    assert_ne!(pid2, pid);
    poll(Duration::from_secs(5), || sealed(&moved).then_some(()))
        .expect("the restarted client opened (and sealed) the moved region");

    h.signal(Signal::TERM);
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let log = h.err.text();
    assert_eq!(
        log.matches("moved the region into a fresh memfd").count(),
        1,
        "moved once, for the restart; not for the stop:\n{log}"
    );
    assert!(!common::alive(pid2));
    let map = Mapping::of_memfd(
        &Memfd::from_fd(moved.try_clone().unwrap()).unwrap(),
        Protection::ReadOnly,
    )
    .unwrap();
    let kept = count_in(&map).unwrap();
    assert!(kept > 0);

    // A new host handed the sealed region by the fd store moves it at start, replaces the
    // entry, and its client continues exactly from the stored state.
    let mut c = Command::new(BIN);
    c.args(["__exec", "--", BIN, "run", "--state"])
        .arg(&state)
        .args(args)
        .args(&client)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &sock_path);
    let memfd = Memfd::from_fd(moved).unwrap();
    shmsnap_linux::handover::prepare_command(&mut c, &memfd, "SHM_SHARED_FD").unwrap();
    let mut h2 = Proc::spawn(c);
    let removal = until(&sock, "FDSTOREREMOVE=1", &h2);
    assert!(removal.text.lines().any(|l| l == "FDNAME=SHM_SHARED_FD"));
    let mut store = until(&sock, "FDSTORE=1", &h2);
    let fresh = store.fds.pop().expect("the fresh region's fd");
    assert_ne!(inode(&fresh), rustix::fs::fstat(&memfd).unwrap().st_ino);
    let (_, _, k) =
        next_restored(&h2, 0, SLOW).unwrap_or_else(|| panic!("no client:\n{}", h2.err.text()));
    let log = h2.err.text();
    assert!(
        log.contains("moved the inherited region into a fresh memfd")
            && log.contains("reusing the region from the service manager's fd store"),
        "{log}"
    );
    assert_eq!(
        k, kept,
        "the client continues from exactly the stored state"
    );
    h2.signal(Signal::TERM);
    assert_eq!(h2.exit_code(), 0, "{}", h2.err.text());
}
