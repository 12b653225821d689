//! Host side: the proof that only the client's tracked mapping can store into the region from
//! now on (DESIGN §11, "Who can write the region"): the write seal, the tracked mapping's
//! `DONTFORK`, and a census of every other process's mappings of the region.
//!
//! Write tracking sees only stores through the registered mapping of the registered process.
//! Every other way into the region's pages bypasses it: `write`/`pwrite` on any fd of the
//! memfd, another mapping of it (in the client, a forked child, any process that opened
//! `/proc/PID/fd/N`). [`prove`] closes them, once per registration, before the host arms a
//! chain (the scan that precedes a base):
//!
//! 1. **The registered mapping is not inherited by `fork`**: the client's `smaps` shows the
//!    advertised range as the one mapping of the region there, with `dc` (`VM_DONTCOPY`,
//!    `MADV_DONTFORK`) and `uw` (registered for write-protect tracking). Checked first, so a
//!    client that cannot be proven (an older library) is never sealed for nothing.
//! 2. **No new writer can appear**: the memfd carries `F_SEAL_FUTURE_WRITE` (the client's
//!    library seals it before advertising; if it did not, the host seals it here). From then
//!    on no process can `write` the file or map it writable; only mappings made before keep
//!    working.
//! 3. **No old writer is left**: every process but the host and the client whose
//!    `/proc/PID/maps` mentions the region's device and inode has its `smaps` read; a shared
//!    mapping of the region that is writable or may become writable (`wr` or `mw`:
//!    `mprotect` can still make a read-only mapping made before the seal from a read-write fd
//!    writable) makes the proof fail.
//!
//! After 2 and 3, every store that bypasses tracking happened before the census finished, so
//! before the arming scan and the base's copy: the base holds it. Nothing here is trusted from
//! the client; everything read from `/proc` is hostile input (bounded lines, every line
//! parsed or refused, a refusal is "unproven"). A false "unproven" costs a full snapshot, a
//! false "proven" would lose data.
//!
//! What the census cannot see is listed, not hidden: processes whose maps it may not read
//! ([`Census::unreadable`]: another user's; such a process can only hold the region if a
//! holder handed it over), processes outside this `/proc`'s pid namespace, and a process that
//! forks while the census runs and unmaps before it is read (the child, a pid the census had
//! not listed yet, keeps the mapping). DESIGN §11 lists them with the other assumptions.

use std::fmt;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::Pid;

use super::advert::Vma;
use super::TrackedRange;
use crate::memfd::Memfd;

/// Longest `/proc` line accepted: a mapping's path is at most `PATH_MAX` (4096) bytes,
/// escaped; anything longer is not the kernel's text.
const MAX_LINE: usize = 64 * 1024;

/// A file's identity as `/proc/PID/maps` shows it: device `major:minor` and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device `(major, minor)`.
    pub dev: (u32, u32),
    /// Inode number (never 0 for a memfd).
    pub ino: u64,
}

impl FileId {
    /// `fstat(fd)`: the device and inode a mapping of `fd` shows in `/proc/PID/maps`.
    ///
    /// # Errors
    ///
    /// `fstat`'s errors.
    pub fn of(fd: impl AsFd) -> io::Result<Self> {
        let st = rustix::fs::fstat(fd)?;
        Ok(FileId {
            dev: (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)),
            ino: st.st_ino,
        })
    }

    fn matches(&self, v: &Vma<'_>) -> bool {
        self.ino != 0 && v.dev == self.dev && v.ino == self.ino
    }
}

/// One mapping of the region, from `/proc/PID/smaps`: its range and `VmFlags`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionVma {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// The `VmFlags` mnemonics, as the kernel printed them.
    pub flags: Vec<String>,
}

impl RegionVma {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Stores through it reach the file: shared (`sh`/`ms`) and writable now (`wr`) or
    /// possibly after an `mprotect` (`mw`). A private mapping's stores go to private copies.
    pub fn can_write_the_file(&self) -> bool {
        (self.has("sh") || self.has("ms")) && (self.has("wr") || self.has("mw"))
    }

    /// Not inherited by a forked child (`dc`: `MADV_DONTFORK`).
    pub fn dont_fork(&self) -> bool {
        self.has("dc")
    }

    /// Registered for userfaultfd write-protect tracking (`uw`).
    pub fn tracked(&self) -> bool {
        self.has("uw")
    }
}

/// Why the host cannot prove that only the tracked mapping writes the region; each means: full
/// snapshots for this registration.
#[derive(Debug)]
pub enum Unproven {
    /// The region could not be sealed against other writers.
    NotSealed(io::Error),
    /// The client's tracked mapping is inherited by `fork` (no `MADV_DONTFORK`: a client
    /// library that does not make it), or is not registered for tracking, or is not the one
    /// mapping of the region in the client.
    Registration {
        /// The client.
        pid: i32,
        /// What is wrong.
        why: String,
    },
    /// Another process maps the region writable (or may make its mapping writable).
    Writer {
        /// The process.
        pid: i32,
        /// Its name (`/proc/PID/comm`), for the log.
        comm: String,
        /// The mapping.
        vma: RegionVma,
    },
    /// `/proc` could not be read or said something unparsable.
    Census(String),
}

impl Unproven {
    /// A short fixed label for metrics: `not_sealed`, `registration`, `other_writer`,
    /// `census_failed`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotSealed(_) => "not_sealed",
            Self::Registration { .. } => "registration",
            Self::Writer { .. } => "other_writer",
            Self::Census(_) => "census_failed",
        }
    }
}

impl fmt::Display for Unproven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSealed(e) => write!(
                f,
                "the region could not be sealed against writes other than the client's ({e})"
            ),
            Self::Registration { pid, why } => write!(f, "the client (pid {pid}) {why}"),
            Self::Writer { pid, comm, vma } => write!(
                f,
                "process {pid} ({comm}) maps the region writable at {:#x}-{:#x} (VmFlags {}); \
                 its stores would bypass write tracking",
                vma.start,
                vma.end,
                vma.flags.join(" ")
            ),
            Self::Census(why) => write!(f, "the census of the region's mappings failed: {why}"),
        }
    }
}

impl std::error::Error for Unproven {}

/// What a successful census saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Census {
    /// Processes whose maps were read.
    pub processes: u64,
    /// Of those, processes other than the host and the client that map the region (read-only,
    /// never writable).
    pub readers: u64,
    /// Processes whose maps could not be read (`EACCES`/`EPERM`: another user's, under a
    /// stricter `ptrace` policy): the census vouches for nothing about them.
    pub unreadable: Vec<i32>,
}

/// The whole proof for the client `pid` tracking `range` over `memfd`: the registration
/// check, the seal (added if missing), the census — in that order (DESIGN §11, "Who can
/// write the region").
///
/// # Errors
///
/// An [`Unproven`] naming the first thing that failed.
pub fn prove(memfd: &Memfd, pid: Pid, range: &TrackedRange) -> Result<Census, Unproven> {
    let id = FileId::of(memfd).map_err(|e| Unproven::Census(format!("fstat: {e}")))?;
    check_registration(pid, range, id)?;
    memfd.seal_future_write().map_err(Unproven::NotSealed)?;
    census(id, &[rustix::process::getpid(), pid])
}

/// Step 1: the client's `smaps` shows exactly one mapping of the region, the advertised
/// range, with `dc` and `uw`.
///
/// # Errors
///
/// [`Unproven::Registration`], or [`Unproven::Census`] if the client's smaps cannot be read.
pub fn check_registration(pid: Pid, range: &TrackedRange, id: FileId) -> Result<(), Unproven> {
    let raw = pid.as_raw_nonzero().get();
    let vmas = match read_smaps(raw, id) {
        Ok(v) => v,
        Err(e) => return Err(Unproven::Census(format!("/proc/{raw}/smaps: {e}"))),
    };
    registration_ok(&vmas, range).map_err(|why| Unproven::Registration { pid: raw, why })
}

/// The pure part of [`check_registration`].
fn registration_ok(vmas: &[RegionVma], range: &TrackedRange) -> Result<(), String> {
    let [vma] = vmas else {
        return Err(format!(
            "maps the region {} times; exactly one tracked mapping is needed",
            vmas.len()
        ));
    };
    if (vma.start, vma.end) != (range.addr(), range.end()) {
        return Err(format!(
            "maps the region at {:#x}-{:#x}, not at its advertised {:#x}-{:#x}",
            vma.start,
            vma.end,
            range.addr(),
            range.end()
        ));
    }
    if !vma.tracked() {
        return Err("has no write tracking registered on its mapping (no `uw` flag)".into());
    }
    if !vma.dont_fork() {
        return Err(
            "lets forked children inherit its mapping (no MADV_DONTFORK, `dc` flag): its \
             client library predates the write seal, or undid it; a child's stores would \
             bypass write tracking"
                .into(),
        );
    }
    Ok(())
}

/// Step 3: every process but those in `skip` (the host and the client) that maps the region
/// maps it read-only, for good.
///
/// # Errors
///
/// [`Unproven::Writer`] for the first writer found; [`Unproven::Census`] if `/proc` cannot be
/// listed or a process's maps are unparsable.
pub fn census(id: FileId, skip: &[Pid]) -> Result<Census, Unproven> {
    let census_err = |e: io::Error| Unproven::Census(format!("/proc: {e}"));
    let mut out = Census::default();
    for entry in std::fs::read_dir("/proc").map_err(census_err)? {
        let entry = entry.map_err(census_err)?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || skip.iter().any(|p| p.as_raw_nonzero().get() == pid) {
            continue;
        }
        match maps_mention(pid, id) {
            Ok(false) => out.processes += 1,
            Ok(true) => {
                out.processes += 1;
                check_other(pid, id)?;
                out.readers += 1;
            }
            Err(Read::Gone) => {}
            Err(Read::Denied) => out.unreadable.push(pid),
            Err(Read::Failed(why)) => {
                return Err(Unproven::Census(format!("/proc/{pid}/maps: {why}")))
            }
        }
    }
    Ok(out)
}

/// A process other than the client that maps the region: every mapping must be unable to
/// write the file.
fn check_other(pid: i32, id: FileId) -> Result<(), Unproven> {
    let vmas = match read_smaps(pid, id) {
        Ok(v) => v,
        // It exited (or unmapped) between the two reads: it cannot write any more.
        Err(Read::Gone) => return Ok(()),
        Err(e) => return Err(Unproven::Census(format!("/proc/{pid}/smaps: {e}"))),
    };
    match vmas.into_iter().find(RegionVma::can_write_the_file) {
        None => Ok(()),
        Some(vma) => Err(Unproven::Writer {
            pid,
            comm: comm(pid),
            vma,
        }),
    }
}

/// `/proc/PID/comm`, trimmed; `?` if unreadable.
fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().chars().take(64).collect())
        .unwrap_or_else(|_| "?".into())
}

/// Why a `/proc` file could not be used.
#[derive(Debug)]
enum Read {
    /// The process is gone (`ENOENT`, `ESRCH`).
    Gone,
    /// Not allowed (`EACCES`, `EPERM`).
    Denied,
    /// Anything else: an I/O error or text that is not `/proc`'s.
    Failed(String),
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Gone => f.write_str("the process is gone"),
            Read::Denied => f.write_str("permission denied"),
            Read::Failed(why) => f.write_str(why),
        }
    }
}

fn open_proc(pid: i32, file: &str) -> Result<BufReader<std::fs::File>, Read> {
    let path = format!("/proc/{pid}/{file}");
    match rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(BufReader::new(std::fs::File::from(fd))),
        Err(e) => Err(errno_read(e)),
    }
}

fn errno_read(e: Errno) -> Read {
    if e == Errno::NOENT || e == Errno::SRCH {
        Read::Gone
    } else if e == Errno::ACCESS || e == Errno::PERM {
        Read::Denied
    } else {
        Read::Failed(e.to_string())
    }
}

fn io_read(e: io::Error) -> Read {
    match e.raw_os_error() {
        Some(n) => errno_read(Errno::from_raw_os_error(n)),
        None => Read::Failed(e.to_string()),
    }
}

/// Whether `/proc/PID/maps` has a line mapping file `id`.
fn maps_mention(pid: i32, id: FileId) -> Result<bool, Read> {
    parse_maps(open_proc(pid, "maps")?, id)
}

/// Whether `maps` text has a line mapping file `id`; every line must parse.
fn parse_maps(text: impl BufRead, id: FileId) -> Result<bool, Read> {
    let mut found = false;
    for_each_line(text, |line| {
        let vma = Vma::parse(line).ok_or_else(|| unparsable(line))?;
        found |= id.matches(&vma);
        Ok(())
    })?;
    Ok(found)
}

/// The mappings of file `id` in `/proc/PID/smaps`.
fn read_smaps(pid: i32, id: FileId) -> Result<Vec<RegionVma>, Read> {
    parse_smaps(open_proc(pid, "smaps")?, id)
}

/// Parses `smaps` text: a header line per mapping (the `maps` line), then `Key: value`
/// lines, among them exactly one `VmFlags:`. Returns the mappings of file `id`.
///
/// # Errors
///
/// [`Read::Failed`] for a line that is neither, a `VmFlags` line outside a mapping or twice
/// in one, a mapping of the file without one, an overlong line, or a read error.
fn parse_smaps(text: impl BufRead, id: FileId) -> Result<Vec<RegionVma>, Read> {
    // The mapping being read: (is it the region's, its entry, has it had its VmFlags).
    let mut current: Option<(bool, RegionVma, bool)> = None;
    let mut out = Vec::new();
    let mut finish = |c: Option<(bool, RegionVma, bool)>| -> Result<(), Read> {
        match c {
            Some((true, _, false)) => Err(Read::Failed(
                "a mapping of the region has no VmFlags line".into(),
            )),
            Some((true, vma, true)) => {
                out.push(vma);
                Ok(())
            }
            _ => Ok(()),
        }
    };
    for_each_line(text, |line| {
        if let Some(vma) = Vma::parse(line) {
            let next = RegionVma {
                start: vma.start,
                end: vma.end,
                flags: Vec::new(),
            };
            finish(current.replace((id.matches(&vma), next, false)))?;
            return Ok(());
        }
        let (key, value) = line.split_once(':').ok_or_else(|| unparsable(line))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(unparsable(line));
        }
        if key == "VmFlags" {
            let Some((_, vma, seen)) = current.as_mut().filter(|c| !c.2) else {
                return Err(Read::Failed(format!("stray VmFlags line {line:?}")));
            };
            vma.flags = value.split_ascii_whitespace().map(str::to_owned).collect();
            *seen = true;
        }
        Ok(())
    })?;
    finish(current)?;
    Ok(out)
}

fn unparsable(line: &str) -> Read {
    let shown: String = line.chars().take(120).collect();
    Read::Failed(format!("unparsable line {shown:?}"))
}

/// Calls `f` on every line of `text` (without its newline, lossily decoded: paths may be any
/// bytes, the fields parsed are ASCII); lines longer than [`MAX_LINE`] are refused.
fn for_each_line(
    mut text: impl BufRead,
    mut f: impl FnMut(&str) -> Result<(), Read>,
) -> Result<(), Read> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = io::Read::take(&mut text, MAX_LINE as u64 + 1);
        let n = limited.read_until(b'\n', &mut buf).map_err(io_read)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if n > MAX_LINE {
            return Err(Read::Failed(format!("a line longer than {MAX_LINE} bytes")));
        }
        let line = String::from_utf8_lossy(&buf);
        if !line.trim().is_empty() {
            f(&line)?;
        }
    }
}

#[cfg(test)]
mod tests;
