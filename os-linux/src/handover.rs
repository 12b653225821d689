//! Starting a client with the region at fd 3, the systemd way.
//!
//! The child must see fd 3 = the memfd, `LISTEN_FDS=1`, `LISTEN_FDNAMES=<name>` and
//! `LISTEN_PID=<its own pid>`. The first three are easy; the pid is not: it is unknown before
//! `fork`, and between `fork` and `exec` only async-signal-safe calls are allowed — no
//! `setenv` (it allocates and takes libc's lock, which another parent thread may have held at
//! the moment of `fork`). So the design is two steps, both in the same child process:
//!
//! 1. [`prepare_command`] configures a [`Command`] that runs an **exec shim** (the host binary
//!    calling itself through a hidden subcommand): its `pre_exec` hook only `dup2`s the memfd
//!    onto fd 3 (which clears close-on-exec), sets `PR_SET_PDEATHSIG(SIGKILL)` and checks that
//!    the parent is still alive; `LISTEN_FDS`/`LISTEN_FDNAMES` are set and `LISTEN_PID` removed
//!    through the `Command`'s environment (built before `fork`).
//! 2. The shim calls [`exec_as_listener`], which sets `LISTEN_PID` to `getpid()` — now an
//!    ordinary single-threaded program may change its environment — and `exec`s the real
//!    client. `exec` keeps the pid, fd 3 (not close-on-exec) and the parent-death signal
//!    (kept across `execve` except for set-user-ID/set-group-ID programs and file
//!    capabilities).
//!
//! # The parent-death signal and its races
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not only the
//! process: spawn clients from a long-lived thread (the host's main thread). If the parent
//! dies between `fork` and the `prctl`, no signal will come; as `prctl(2)` recommends, the hook
//! then compares `getppid()` with the parent's pid recorded before `fork` and fails the spawn
//! (`ESRCH`) if they differ.
//!
//! # Why fd 3 is reserved in the parent
//!
//! `std` creates an internal close-on-exec pipe *before* `fork` to report `exec` failures. If
//! fd 3 happened to be free in the parent, that pipe could land on fd 3 and our `dup2` would
//! silently replace it (`exec` errors lost, or even written into the region). [`reserve_fd3`]
//! (called by [`prepare_command`]) makes sure fd 3 is occupied in the parent for good, so no
//! new fd can ever be 3.
//!
//! This module contains `unsafe` because `CommandExt::pre_exec` is `unsafe` and because
//! naming fd 3 as a `dup2` target requires `OwnedFd::from_raw_fd(3)` (never dropped).
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::fs::{Mode, OFlags};
use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};

use crate::listen::{LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_START, LISTEN_PID};

/// `open("/dev/null", O_RDONLY | O_CLOEXEC)` until fd 3 is taken—makes sure fd 3 is open in
/// this process for the rest of its life (see the [module docs](self)).
///
/// If fd 3 is already open, nothing is left open by this call; the caller must then keep
/// whatever is at fd 3 open (for a host that received its memfd through `LISTEN_FDS`, that is
/// the memfd itself). Call it before starting threads that open files, so no other thread's
/// fd can race for slot 3 (a race would only make this call find fd 3 taken).
///
/// # References
///  - [Linux `open` (lowest free descriptor)](https://man7.org/linux/man-pages/man2/open.2.html)
///
/// # Errors
///
/// `open`'s errors (`EMFILE`).
pub fn reserve_fd3() -> io::Result<()> {
    loop {
        let fd = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let raw = fd.into_raw_fd();
        if raw > LISTEN_FDS_START {
            // SAFETY: `raw` came from `into_raw_fd` just above; we own it and close it here.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
            return Ok(());
        }
        // raw <= 3: a free slot among 0..=3, filled for good (leaked on purpose).
        if raw == LISTEN_FDS_START {
            return Ok(());
        }
    }
}

/// Closes `fd` — unless it is fd 3, which is instead made to refer to `/dev/null`
/// (`dup3(O_CLOEXEC)` over it: atomic, fd 3 is never free) and kept open for good.
///
/// For a region fd that may be the one inherited at fd 3 (`LISTEN_FDS`), when the host drops
/// that region for a fresh one: fd 3 must stay occupied ([`reserve_fd3`]), and closing it
/// would let the next open (perhaps `std`'s spawn pipe) take the slot.
///
/// # References
///  - [Linux `dup3`](https://man7.org/linux/man-pages/man2/dup.2.html)
///
/// # Errors
///
/// `open`'s or `dup3`'s errors; `fd` is closed anyway (fd 3 then becomes free, as a plain
/// close would leave it, and the next [`reserve_fd3`] takes it again).
pub fn close_keeping_fd3(fd: OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if fd.as_raw_fd() != LISTEN_FDS_START {
        drop(fd);
        return Ok(());
    }
    let null = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut fd3 = fd;
    rustix::io::dup3(&null, &mut fd3, rustix::io::DupFlags::CLOEXEC)?;
    // fd 3 now refers to /dev/null: left open on purpose, as by `reserve_fd3`.
    std::mem::forget(fd3);
    Ok(())
}

/// Configures `cmd` so that the child starts with `fd` at fd 3, `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=name`, no `LISTEN_PID`, and `PR_SET_PDEATHSIG(SIGKILL)`; the child should
/// be an exec shim that calls [`exec_as_listener`] (see the [module docs](self)).
///
/// `fd` is duplicated (close-on-exec) into the `Command`, so the caller's fd may be closed;
/// the `Command` may be spawned several times.
///
/// # References
///  - [Linux `dup2`](https://man7.org/linux/man-pages/man2/dup2.2.html)
///  - [Linux `prctl` (`PR_SET_PDEATHSIG`)](https://man7.org/linux/man-pages/man2/PR_SET_PDEATHSIG.2const.html)
///  - [`sd_listen_fds(3)`](https://man7.org/linux/man-pages/man3/sd_listen_fds.3.html)
///
/// # Errors
///
/// `InvalidInput` for an empty name, or one containing `:` or NUL, or longer than 255 bytes;
/// errors of [`reserve_fd3`] and `fcntl(F_DUPFD_CLOEXEC)`. At spawn time, the hook's errors
/// come back from `spawn`: `dup2`/`prctl` errors, `ESRCH` if this process died meanwhile.
pub fn prepare_command(cmd: &mut Command, fd: impl AsFd, name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > 255 || name.contains([':', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd name {name:?} must be 1..=255 bytes without ':' or NUL"),
        ));
    }
    reserve_fd3()?;
    // Above 3, so the dup2 below never has source == target.
    let region = rustix::io::fcntl_dupfd_cloexec(fd, LISTEN_FDS_START + 1)?;
    let parent = getpid();
    cmd.env(LISTEN_FDS, "1")
        .env(LISTEN_FDNAMES, name)
        .env_remove(LISTEN_PID);
    let hook = move || -> io::Result<()> {
        // Only raw rustix syscalls below: no allocation, no locks (async-signal-safe).
        // SAFETY: fd 3 is only named as the target of dup2, which atomically replaces whatever
        // is there (the parent's reserved /dev/null or the region itself, both close-on-exec
        // and not used by the code between fork and exec); ManuallyDrop means it is never
        // closed by us.
        let mut target = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) });
        // dup2 leaves the new fd without FD_CLOEXEC, so it survives exec.
        rustix::io::dup2(&region, &mut target)?;
        set_parent_process_death_signal(Some(Signal::KILL))?;
        if getppid() != Some(parent) {
            // The parent died before the prctl: no signal will ever come.
            return Err(io::Error::from(rustix::io::Errno::SRCH));
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe raw syscalls through rustix (dup2, prctl,
    // getppid), allocates nothing (io::Error from an errno does not allocate) and touches no
    // state shared with other threads of the parent.
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(())
}

/// Sets `LISTEN_PID` to this process's pid and `exec`s `program` with `args` (same pid, so
/// `LISTEN_PID` is right for it). Returns only on failure.
///
/// Meant for the exec shim of the [module docs](self): a process started through
/// [`prepare_command`]. fd 3, `LISTEN_FDS` and `LISTEN_FDNAMES` are inherited unchanged.
///
/// # References
///  - [Linux `execve`](https://man7.org/linux/man-pages/man2/execve.2.html)
///  - [Linux `getpid`](https://man7.org/linux/man-pages/man2/getpid.2.html)
///
/// # Errors
///
/// The `exec` error (`ENOENT`, `EACCES`, ...), as returned by [`CommandExt::exec`].
pub fn exec_as_listener<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> io::Error {
    let pid = getpid().as_raw_pid();
    Command::new(program)
        .args(args)
        .env(LISTEN_PID, pid.to_string())
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::{open_client_region, DEFAULT_FD_NAME};
    use crate::memfd::Memfd;
    use std::process::Stdio;
    use std::sync::atomic::Ordering;

    const MODE: &str = "SHMSNAP_TEST_HANDOVER";

    #[test]
    fn child_sees_the_memfd_at_fd3_with_listen_variables() {
        let m = Memfd::create("handover", 4096).unwrap();
        let ino = rustix::fs::fstat(&m).unwrap().st_ino;
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "echo \"$LISTEN_FDS $LISTEN_FDNAMES ${LISTEN_PID:-unset}\"; \
             stat -L -c %i /proc/self/fd/3; printf marker >&3",
        ])
        .env(LISTEN_PID, "1") // a stale value must not leak through
        .stdout(Stdio::piped());
        prepare_command(&mut cmd, &m, "region").unwrap();
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("1 region unset"));
        assert_eq!(lines.next().unwrap().parse::<u64>().unwrap(), ino);
        let mut buf = [0u8; 6];
        rustix::io::pread(&m, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"marker");
    }

    #[test]
    fn bad_fd_names_are_refused() {
        let m = Memfd::create("x", 8).unwrap();
        for bad in ["", "a:b", "nul\0"] {
            assert!(
                prepare_command(&mut Command::new("true"), &m, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn child_dies_with_the_thread_that_spawned_it() {
        let m = Memfd::create("pdeath", 8).unwrap();
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("30");
        prepare_command(&mut cmd, &m, "r").unwrap();
        let mut child = std::thread::spawn(move || cmd.spawn().unwrap())
            .join()
            .unwrap();
        let t = std::time::Instant::now();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(t.elapsed().as_secs() < 10);
    }

    /// Child mode, step 1 (the exec shim): prints its pid and execs step 2.
    #[test]
    fn child_exec_shim() {
        if std::env::var_os(MODE).is_none() || std::env::var_os(LISTEN_PID).is_some() {
            return;
        }
        println!("SHIM pid={}", std::process::id());
        let exe = std::env::current_exe().unwrap();
        let e = exec_as_listener(
            exe,
            [
                "--exact",
                "handover::tests::child_listener",
                "--nocapture",
                "--test-threads=1",
            ],
        );
        panic!("exec failed: {e}");
    }

    /// Child mode, step 2 (the client): takes the region the systemd way and answers.
    #[test]
    fn child_listener() {
        if std::env::var_os(MODE).is_none() || std::env::var_os(LISTEN_PID).is_none() {
            return;
        }
        let listen_pid = std::env::var(LISTEN_PID).unwrap();
        let (_memfd, map) = open_client_region(DEFAULT_FD_NAME).unwrap();
        let marker = map.words()[0].load(Ordering::Acquire);
        // Release: publishes the answer to the parent, which reads it after wait().
        map.words()[1].store(marker + 1, Ordering::Release);
        println!(
            "LISTENER pid={} listen_pid={listen_pid} marker={marker}",
            std::process::id()
        );
    }

    #[test]
    fn exec_shim_gives_the_client_its_own_pid_in_listen_pid() {
        let m = Memfd::create("shim", 4096).unwrap();
        m.seal_against_shrink().unwrap();
        crate::copy::write_all_at(&m, &0x5eed_u64.to_ne_bytes(), 0).unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "handover::tests::child_exec_shim",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE, "1")
        .stdout(Stdio::piped());
        prepare_command(&mut cmd, &m, DEFAULT_FD_NAME).unwrap();
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(&format!("SHIM pid={pid}\n")), "{text}");
        assert!(
            text.contains(&format!(
                "LISTENER pid={pid} listen_pid={pid} marker={}",
                0x5eed
            )),
            "{text}"
        );
        let mut b = [0u8; 8];
        rustix::io::pread(&m, &mut b, 8).unwrap();
        assert_eq!(
            u64::from_ne_bytes(b),
            0x5eee,
            "the client wrote through its mapping"
        );
    }
}
