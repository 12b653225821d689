//! Issue 4, behaviour 6: systemd's fd store, with a fake notify socket that records the
//! datagrams and receives the memfd; then a host started with that fd in `LISTEN_FDS` reuses
//! it instead of restoring from disk.
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
use rustix::process::Signal;
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

#[test]
fn fd_store_push_ready_status_and_reuse_of_the_stored_fd() {
    shmsnap_linux::handover::reserve_fd3().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("shmsnap-sd-")
        .tempdir()
        .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let state = dir.path().join("sd.snap");
    let client = primes(&["--pause", "2ms"]);
    let mut c = shmsnap(["run", "--state"]);
    c.arg(&state)
        .args([
            "--strategy",
            "queue",
            "--interval",
            "100ms",
            "--size",
            "2M",
            "--",
        ])
        .args(&client)
        .env("NOTIFY_SOCKET", &sock_path);
    let mut h = Proc::spawn(c);

    // Record datagrams until the fd, READY=1 and a STATUS= with a snapshot age arrived.
    let mut got: Vec<Datagram> = Vec::new();
    let end = Instant::now() + SLOW;
    let has = |got: &[Datagram], s: &str| got.iter().position(|d| d.text.contains(s));
    while Instant::now() < end
        && (has(&got, "FDSTORE=1").is_none()
            || has(&got, "READY=1").is_none()
            || has(&got, "last snapshot").is_none())
    {
        if let Some(d) = receive(&sock) {
            got.push(d);
        }
    }
    for d in &got {
        println!("datagram: {:?} (+{} fd)", d.text, d.fds.len());
    }
    let store = has(&got, "FDSTORE=1").expect("FDSTORE=1");
    let ready = has(&got, "READY=1").expect("READY=1");
    has(&got, "last snapshot").expect("STATUS= with the last snapshot's age");
    assert!(store < ready, "the region is stored before READY=1");
    let lines: Vec<&str> = got[store].text.lines().collect();
    for want in ["FDSTORE=1", "FDNAME=SHM_SHARED_FD", "FDPOLL=0"] {
        assert!(lines.contains(&want), "{want} missing in {lines:?}");
    }
    assert!(got[ready].text.contains("STATUS="), "{}", got[ready].text);
    let mut fds = std::mem::take(&mut got[store].fds);
    assert_eq!(fds.len(), 1, "exactly one fd with FDSTORE=1");
    let fd = fds.pop().unwrap();
    let (size, link) = describe_fd(&fd);
    assert_eq!(size, 2 << 20, "the stored fd has the region's size");
    assert!(link.starts_with("/memfd:"), "not a memfd: {link}");
    let memfd = Memfd::from_fd(fd).unwrap();
    let map = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
    let (_, pid, _) = next_restored(&h, 0, SLOW).unwrap();
    poll(SLOW, || count_in(&map).filter(|&c| c > 0)).expect("the client commits");
    // The client does not inherit NOTIFY_SOCKET.
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !env.split(|&b| b == 0)
            .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
        "the client must not talk to the service manager in the host's name"
    );

    h.signal(Signal::TERM);
    // A requested stop with the state saved (final snapshot, or the stored fd) exits 0.
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    let kept = count_in(&map).unwrap();
    assert!(kept > 0);
    // The disk copy is gone: only the stored fd can bring the state back.
    for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("sd.snap") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }

    // A restarted host gets the fd in LISTEN_FDS (fd 3, LISTEN_PID = its pid: the exec shim
    // does for us what systemd does for a service).
    let mut c = Command::new(BIN);
    c.args(["__exec", "--", BIN, "run", "--state"])
        .arg(&state)
        .args(["--strategy", "queue", "--interval", "100ms", "--"])
        .args(&client)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    shmsnap_linux::handover::prepare_command(&mut c, &memfd, "SHM_SHARED_FD").unwrap();
    let mut h2 = Proc::spawn(c);
    let (_, _, k) =
        next_restored(&h2, 0, SLOW).unwrap_or_else(|| panic!("no client:\n{}", h2.err.text()));
    let log = h2.err.text();
    println!("{log}");
    assert!(
        log.contains("reusing the region from the service manager's fd store"),
        "{log}"
    );
    assert!(
        !log.contains("restored "),
        "must not restore from disk: {log}"
    );
    assert_eq!(
        k, kept,
        "the client sees exactly the state left in the stored fd"
    );
    h2.signal(Signal::TERM);
    assert_eq!(h2.exit_code(), 0, "{}", h2.err.text());
    assert!(snapshot_count(&inspect(&state).unwrap()) >= kept);
}
