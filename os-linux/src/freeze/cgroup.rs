//! The cgroup v2 freezer: `1` into `cgroup.freeze`, then wait for `frozen 1` in
//! `cgroup.events`; `0` resumes.
//!
//! The kernel reports every change of `cgroup.events` as a modification of the file, so the
//! wait sleeps in `poll` on an inotify watch (`IN_MODIFY`) set up *before* the freeze is
//! requested (no change can be missed), and re-reads the file on each wake-up. A poll is
//! capped at 50 ms so a lost notification costs a little latency, never the deadline.
//!
//! Invisible to the client: no signal, no state change a parent or tracer sees; frozen tasks
//! are in the kernel's freezer (they show as `S`/`D` in `/proc`), and only lost time shows.
//! Fatal signals still reach them (`cgroup.kill` works on a frozen cgroup).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;
use rustix::io::Errno;

use super::error::FreezeError;
use super::guard::{write_freeze, Frozen, Thaw};

/// Longest sleep between two reads of `cgroup.events`, even without a notification.
const RECHECK: Duration = Duration::from_millis(50);
/// Longest `cgroup.events` accepted (the kernel's is two short lines).
const MAX_EVENTS: u64 = 4096;

/// A cgroup to freeze.
///
/// Invariant: `freeze` is the cgroup's `cgroup.freeze`; `events` is its `cgroup.events`
/// (another file only in tests, [`CgroupFreezer::with_events`]).
#[derive(Debug, Clone)]
pub struct CgroupFreezer {
    freeze: PathBuf,
    events: PathBuf,
}

impl CgroupFreezer {
    /// The freezer of the cgroup v2 directory `dir`.
    pub fn new(dir: &Path) -> Self {
        CgroupFreezer {
            freeze: dir.join("cgroup.freeze"),
            events: dir.join("cgroup.events"),
        }
    }

    /// The freezer of `dir`, but waiting on `events` for `frozen 1` (tests point it at a file
    /// that never says so, to take the deadline path).
    pub fn with_events(dir: &Path, events: &Path) -> Self {
        CgroupFreezer {
            freeze: dir.join("cgroup.freeze"),
            events: events.to_path_buf(),
        }
    }

    /// The `cgroup.freeze` file.
    pub fn freeze_file(&self) -> &Path {
        &self.freeze
    }

    /// Freezes the cgroup and waits, at most `deadline`, for `frozen 1`.
    ///
    /// # Errors
    ///
    /// As [`super::Freezer::freeze`]; the cgroup is thawed on every error.
    pub fn freeze(&self, deadline: Duration) -> Result<Frozen, FreezeError> {
        let watch = self.watch()?;
        let since = Instant::now();
        write_freeze(&self.freeze, true)?;
        let mut frozen = Frozen::new(Thaw::Cgroup(self.freeze.clone()), since);
        let end = since + deadline;
        loop {
            if frozen_now(&self.events)? {
                frozen.froze_in = since.elapsed();
                return Ok(frozen);
            }
            let now = Instant::now();
            if now >= end {
                // `frozen` is dropped here: the cgroup is thawed.
                return Err(FreezeError::Timeout {
                    mechanism: "cgroup",
                    waited: deadline,
                    running: Vec::new(),
                });
            }
            wait_modified(&watch, (end - now).min(RECHECK), &self.events)?;
        }
    }

    /// An inotify fd watching `events` for modifications.
    fn watch(&self) -> Result<OwnedFd, FreezeError> {
        let what = || format!("watch {}", self.events.display());
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| FreezeError::io(what(), e))?;
        inotify::add_watch(&fd, &self.events, inotify::WatchFlags::MODIFY)
            .map_err(|e| FreezeError::io(what(), e))?;
        Ok(fd)
    }

    /// Thaws the cgroup (`0` into `cgroup.freeze`) without a [`Frozen`]: for a cgroup a
    /// previous host may have left frozen when it was killed mid-pause.
    ///
    /// # Errors
    ///
    /// [`FreezeError::Io`] if the write fails (a missing cgroup is no error).
    pub fn thaw_leftover(&self) -> Result<(), FreezeError> {
        write_freeze(&self.freeze, false)
    }
}

/// Sleeps until `watch` reports a modification or `timeout` passes, then drains its events.
fn wait_modified(watch: &OwnedFd, timeout: Duration, events: &Path) -> Result<(), FreezeError> {
    let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    });
    let mut fds = [PollFd::new(watch, PollFlags::IN)];
    match poll(&mut fds, Some(&ts)) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(FreezeError::io(format!("wait for {}", events.display()), e)),
    }
    // Drain (non-blocking): the next wake-up must be a new change.
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(watch, &mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Reads `frozen` from a `cgroup.events`.
fn frozen_now(path: &Path) -> Result<bool, FreezeError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_EVENTS + 1).read_to_string(&mut text))
        .map_err(|e| FreezeError::io(format!("read {}", path.display()), e))?;
    parse_frozen(&text).map_err(|detail| FreezeError::Unreadable {
        path: path.to_path_buf(),
        detail,
    })
}

/// The mount point of the cgroup v2 hierarchy's root (the first `cgroup2` mount of
/// `/proc/self/mountinfo` whose root is `/`), where tests and benches make their cgroups.
///
/// # Errors
///
/// `NotFound` if no such mount is listed; the read error of `/proc/self/mountinfo`.
pub fn cgroup2_root() -> std::io::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let (left, right) = l.split_once(" - ")?;
            let mut f = left.split(' ');
            (right.starts_with("cgroup2 ") && f.nth(3)? == "/").then(|| f.next())?
        })
        .map(PathBuf::from)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no cgroup2 mount of the hierarchy's root in /proc/self/mountinfo",
            )
        })
}

/// The `frozen` value of a `cgroup.events` text.
///
/// # Errors
///
/// A description: too long, no `frozen` line (a kernel before 5.2 has no cgroup v2
/// freezer), or a value other than `0`/`1`.
pub fn parse_frozen(text: &str) -> Result<bool, String> {
    if text.len() as u64 > MAX_EVENTS {
        return Err(format!("longer than {MAX_EVENTS} bytes"));
    }
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .ok_or_else(|| "no \"frozen\" line (the cgroup v2 freezer needs Linux 5.2)".to_owned())?;
    match value.trim_end() {
        "0" => Ok(false),
        "1" => Ok(true),
        v => Err(format!("frozen {v:?} is neither 0 nor 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frozen_value_is_read_from_the_kernel_text_and_nothing_else() {
        assert_eq!(parse_frozen("populated 1\nfrozen 1\n"), Ok(true));
        assert_eq!(parse_frozen("populated 0\nfrozen 0\n"), Ok(false));
        assert!(parse_frozen("populated 1\n").is_err());
        assert!(parse_frozen("frozen 2\n").is_err());
        assert!(parse_frozen("frozen yes\n").is_err());
        assert!(parse_frozen(&"x".repeat(5000)).is_err());
    }

    /// A fake cgroup: a directory with `cgroup.freeze` and a `cgroup.events` saying `frozen
    /// 0`.
    fn fake_cgroup() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.freeze"), "0").unwrap();
        std::fs::write(d.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        d
    }

    #[test]
    fn a_cgroup_that_never_reports_frozen_times_out_and_is_thawed() {
        let d = fake_cgroup();
        let f = CgroupFreezer::with_events(d.path(), &d.path().join("cgroup.events"));
        let e = f.freeze(Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.reason(), "timeout", "{e}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "0",
            "the abandoned attempt thawed"
        );
    }

    #[test]
    fn a_change_of_the_events_file_wakes_the_wait() {
        let d = fake_cgroup();
        let events = d.path().join("cgroup.events");
        let f = CgroupFreezer::with_events(d.path(), &events);
        let writer = {
            let events = events.clone();
            let freeze = d.path().join("cgroup.freeze");
            std::thread::spawn(move || {
                // Once the freeze is requested, the "kernel" reports it done.
                while std::fs::read_to_string(&freeze).unwrap() != "1" {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // In place, same length (no truncation: a reader never sees it empty, as
                // the kernel's file is never empty).
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&events)
                    .unwrap();
                rustix::io::pwrite(&f, b"populated 1\nfrozen 1\n", 0).unwrap();
            })
        };
        let frozen = f.freeze(Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "1"
        );
        frozen.thaw().unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "0"
        );
    }

    #[test]
    fn an_unreadable_events_file_is_an_error_and_thaws() {
        let d = fake_cgroup();
        std::fs::write(d.path().join("cgroup.events"), "frozen maybe\n").unwrap();
        let f = CgroupFreezer::new(d.path());
        let e = f.freeze(Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.reason(), "unreadable", "{e}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "0"
        );
    }

    #[test]
    fn a_panic_while_frozen_thaws_on_unwind() {
        let d = fake_cgroup();
        std::fs::write(d.path().join("cgroup.events"), "frozen 1\n").unwrap();
        let f = CgroupFreezer::new(d.path());
        let r = std::panic::catch_unwind(|| {
            let _frozen = f.freeze(Duration::from_secs(1)).unwrap();
            panic!("in the pause");
        });
        assert!(r.is_err());
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.freeze")).unwrap(),
            "0"
        );
    }
}
