//! The client's own cgroup (v2): everything the client starts, daemons included, is killed
//! with it — when the client exits, when the host exits, and at the next start after a host
//! was SIGKILLed.
//!
//! PDEATHSIG and the subreaper cover the client and its descendants only while the host
//! lives. A cgroup outlives the host: a new host finds the old one's child cgroup by name and
//! kills what is left in it (processes holding an old region, running unsupervised).
//!
//! When a cgroup is used (`--cgroup auto`, the default): the host's own cgroup v2 directory
//! (`0::PATH` in `/proc/self/cgroup`, under the `cgroup2` mount from `/proc/self/mountinfo`)
//! must not be the hierarchy's root — the root belongs to the system (the service manager),
//! a delegated subtree (systemd `Delegate=yes`, a container's own cgroup) to us — must offer
//! `cgroup.kill` (Linux 5.14), must not be a systemd unit's cgroup that systemd did not
//! delegate (see [`undelegated_unit`]), and must let us create a child directory. Otherwise, or with
//! `--cgroup off`, only the client's process group and the host's descendants are killed,
//! and only while the host lives.
//!
//! The child is `<host cgroup>/shmsnap-<hash>`, the hash (FNV-1a, stable across builds) of the
//! state file's canonical path: a restarted host (new pid, same unit) finds its predecessor's
//! child, two hosts in one cgroup on different state files never share one, and the state
//! lock (`FILE.lock`) means at most one host uses it at a time. The client joins it itself:
//! the exec shim (`shmsnap __exec --cgroup DIR`) writes its own pid into `cgroup.procs`
//! before it execs the client, so no process of the client is ever outside it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use tracing::{info, warn};

/// `--cgroup`: whether the client gets a cgroup of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupMode {
    /// A child of the host's cgroup when the host runs in a cgroup v2 subtree it may manage
    /// (not the root; `cgroup.kill`; writable), else as `off`.
    Auto,
    /// Never: only the client's process group and the host's descendants are killed.
    Off,
}

/// How long a kill may take to empty the cgroup before we give up waiting (log, go on).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The client's cgroup.
///
/// Invariant: `dir` is a cgroup v2 directory, a child of the host's own cgroup, created (or
/// found) by [`setup`]; nothing but the client's tree is ever moved into it.
#[derive(Debug)]
pub struct ClientCgroup {
    dir: PathBuf,
}

/// Decides the mode, logs it once (info), and with a cgroup, kills what a previous host left
/// in it. `state` is the state file (its directory exists: the lock is held).
pub fn setup(mode: CgroupMode, state: &Path) -> Option<ClientCgroup> {
    if mode == CgroupMode::Off {
        info!("cgroup: off (--cgroup off); the client's process group and the host's descendants are killed, only while the host lives");
        return None;
    }
    let parent = match own_cgroup() {
        Ok(p) => p,
        Err(why) => {
            info!("cgroup: not used ({why}); the client's process group and the host's descendants are killed, only while the host lives");
            return None;
        }
    };
    let dir = parent.join(child_name(state));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            info!("cgroup: not used (cannot create {}: {e}); the client's process group and the host's descendants are killed, only while the host lives", dir.display());
            return None;
        }
    }
    let cg = ClientCgroup { dir };
    // A host SIGKILLed in a freeze-strategy pause leaves the cgroup frozen: thaw it first, so
    // nothing of it stays stuck should the kill below not empty it (DESIGN §17).
    cg.thaw_leftover();
    let leftovers = cg.pids();
    if !leftovers.is_empty() {
        warn!(
            "cgroup {}: killing {} process(es) left by a previous host (pids {leftovers:?}): they hold an old region and ran unsupervised",
            cg.dir.display(),
            leftovers.len()
        );
    }
    cg.kill();
    info!(
        "cgroup: the client runs in {}; its whole tree is killed when it exits, when the host exits, and at the next start",
        cg.dir.display()
    );
    Some(cg)
}

impl ClientCgroup {
    /// The directory the exec shim joins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills every process in the cgroup (`cgroup.kill`, atomic against forks) and waits until
    /// it is empty (`populated 0` in `cgroup.events`); logs if that does not happen in time.
    pub fn kill(&self) {
        if self.populated() == Some(false) {
            return;
        }
        if let Err(e) = std::fs::write(self.dir.join("cgroup.kill"), "1") {
            warn!("cannot kill cgroup {}: {e}", self.dir.display());
            return;
        }
        let end = Instant::now() + KILL_WAIT;
        while self.populated() != Some(false) {
            if Instant::now() >= end {
                warn!(
                    "cgroup {} still has processes {:?} {KILL_WAIT:?} after cgroup.kill",
                    self.dir.display(),
                    self.pids()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Writes `0` into `cgroup.freeze` if the cgroup is frozen (`frozen 1` in `cgroup.events`),
    /// with a warning: a previous host was killed while it had the client frozen.
    fn thaw_leftover(&self) {
        let events = std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap_or_default();
        let frozen = shmsnap_linux::freeze::cgroup::parse_frozen(&events).unwrap_or(false);
        let wants =
            std::fs::read_to_string(self.dir.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1");
        if !(frozen || wants) {
            return;
        }
        warn!(
            "cgroup {} was left frozen by a previous host (killed during a freeze-strategy pause); thawing it",
            self.dir.display()
        );
        let freezer = shmsnap_linux::freeze::CgroupFreezer::new(&self.dir);
        if let Err(e) = freezer.thaw_leftover() {
            warn!("cannot thaw cgroup {}: {e}", self.dir.display());
        }
    }

    /// Kills what is left and removes the cgroup (and any the client made inside it); what
    /// dropping it does too (so a failed start leaves no cgroup behind).
    pub fn remove(self) {
        drop(self);
    }

    /// `populated` from `cgroup.events` (processes here or below); `None` if unreadable.
    fn populated(&self) -> Option<bool> {
        let events = std::fs::read_to_string(self.dir.join("cgroup.events")).ok()?;
        events
            .lines()
            .find_map(|l| l.strip_prefix("populated "))
            .map(|v| v.trim() != "0")
    }

    /// The pids directly in the cgroup (for messages).
    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ClientCgroup {
    fn drop(&mut self) {
        self.kill();
        if let Err(e) = remove_tree(&self.dir) {
            warn!("cannot remove cgroup {}: {e}", self.dir.display());
        }
    }
}

/// Moves the calling process into the cgroup at `dir` (the exec shim, before it execs the
/// client: everything the client forks is then born inside).
///
/// # Errors
///
/// The write error (`ENOENT` if the cgroup is gone, `EACCES`, ...).
pub fn join(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// Removes `dir` and the cgroups below it, deepest first (cgroupfs removes a cgroup with its
/// interface files by `rmdir`; it refuses while processes remain).
fn remove_tree(dir: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The host's own cgroup v2 directory, if it is one we may manage; else why not.
fn own_cgroup() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let (root, mount) =
        cgroup2_mount(&mountinfo).ok_or_else(|| "no cgroup2 file system is mounted".to_owned())?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let own = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            "the host is in no cgroup v2 (no 0:: line in /proc/self/cgroup)".to_owned()
        })?;
    let dir = under_mount(&root, &mount, own).ok_or_else(|| {
        format!(
            "the host's cgroup {own} is not visible under the cgroup2 mount {}",
            mount.display()
        )
    })?;
    // The root cgroup has no cgroup.kill (nor cgroup.type): it is the system's, not ours.
    if !dir.join("cgroup.kill").exists() {
        return Err(if dir.join("cgroup.type").exists() {
            format!(
                "{} has no cgroup.kill (Linux 5.14 or later needed)",
                dir.display()
            )
        } else {
            format!(
                "the host runs in the root cgroup ({}); run it in a delegated cgroup, e.g. systemd Delegate=yes",
                dir.display()
            )
        });
    }
    if let Some(unit) = undelegated_unit(&dir) {
        return Err(format!(
            "the host runs in systemd's cgroup of {unit}, not delegated to it (set Delegate=yes)"
        ));
    }
    Ok(dir)
}

/// The unit whose cgroup `dir` is, if systemd did not delegate it: systemd owns the cgroup of
/// a unit (`*.service`, `*.scope`, `*.slice`) and marks the ones it delegates with the xattr
/// `trusted.delegate` or `user.delegate` = `1` (systemd 251 or later). A cgroup below a unit's
/// (e.g. `DelegateSubgroup=supervisor`) is not systemd's: someone who may made it.
fn undelegated_unit(dir: &Path) -> Option<String> {
    let leaf = dir.file_name()?.to_string_lossy().into_owned();
    let is_unit = [".service", ".scope", ".slice"]
        .iter()
        .any(|s| leaf.ends_with(s));
    let delegated = ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut v = [0u8; 8];
        rustix::fs::getxattr(dir, *name, &mut v[..]).is_ok_and(|n| v[..n] == *b"1")
    });
    (is_unit && !delegated).then_some(leaf)
}

/// The first `cgroup2` mount in a mountinfo text: (root inside the hierarchy, mount point).
fn cgroup2_mount(mountinfo: &str) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut f = left.split(' ');
        let root = unescape(f.nth(3)?);
        let mount = unescape(f.next()?);
        Some((root, PathBuf::from(mount)))
    })
}

/// The directory of cgroup `own` (as `/proc/self/cgroup` names it) under a mount of the
/// hierarchy's `root` at `mount`; `None` if the cgroup is outside what is mounted.
fn under_mount(root: &str, mount: &Path, own: &str) -> Option<PathBuf> {
    let rel = if root == "/" {
        own
    } else {
        let rest = own.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let rel = rel.trim_start_matches('/');
    // A deleted cgroup (` (deleted)`) or a path escaping the mount is not ours to use.
    if rel.ends_with(" (deleted)") || rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `shmsnap-<16 hex digits>`: FNV-1a of the state file's canonical path (its directory
/// resolved, the file name as given; the path as given if the directory cannot be resolved).
fn child_name(state: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let dir = state
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let canonical = match (std::fs::canonicalize(dir), state.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => state.to_path_buf(),
    };
    let hash = canonical
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("shmsnap-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(("/".to_owned(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        assert_eq!(cgroup2_mount("31 23 0:28 / /x rw - tmpfs tmpfs rw\n"), None);
        let shared = "41 31 0:38 /a\\040b /mnt/c\\040g rw shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(shared),
            Some(("/a b".to_owned(), PathBuf::from("/mnt/c g")))
        );
    }

    #[test]
    fn own_cgroup_paths_resolve_under_the_mount_or_not_at_all() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(under_mount("/", m, "/"), Some(m.to_path_buf()));
        assert_eq!(
            under_mount("/", m, "/system.slice/a.service"),
            Some(m.join("system.slice/a.service"))
        );
        assert_eq!(under_mount("/a", m, "/a/b"), Some(m.join("b")));
        assert_eq!(under_mount("/a", m, "/a"), Some(m.to_path_buf()));
        assert_eq!(under_mount("/a", m, "/ab"), None);
        assert_eq!(under_mount("/a", m, "/c"), None);
        assert_eq!(under_mount("/", m, "/x/../.."), None);
        assert_eq!(under_mount("/", m, "/x (deleted)"), None);
    }

    #[test]
    fn child_names_are_stable_and_differ_per_state_file() {
        let a = child_name(Path::new("/nonexistent-dir-xyz/a.snap"));
        assert_eq!(a, child_name(Path::new("/nonexistent-dir-xyz/a.snap")));
        assert_ne!(a, child_name(Path::new("/nonexistent-dir-xyz/b.snap")));
        // FNV-1a of the bytes: a fixed value, so a rebuilt host finds its predecessor's cgroup.
        assert_eq!(child_name(Path::new("")), "shmsnap-cbf29ce484222325");
        let t = std::env::temp_dir();
        assert_eq!(
            child_name(&t.join("s.snap")),
            child_name(&t.join(".").join("s.snap"))
        );
    }

    #[test]
    fn systemd_units_are_used_only_when_delegated() {
        let t = std::env::temp_dir().join(format!("shmsnap-cg-{}", std::process::id()));
        let unit = t.join("app.service");
        std::fs::create_dir_all(&unit).unwrap();
        assert_eq!(undelegated_unit(&unit).as_deref(), Some("app.service"));
        assert_eq!(
            undelegated_unit(&t),
            None,
            "not a unit: a cgroup of our own"
        );
        let flags = rustix::fs::XattrFlags::empty();
        let marked = rustix::fs::setxattr(&unit, "user.delegate", b"1", flags).is_ok()
            || rustix::fs::setxattr(&unit, "trusted.delegate", b"1", flags).is_ok();
        if marked {
            assert_eq!(undelegated_unit(&unit), None, "delegated");
        } else {
            eprintln!(
                "SKIPPED the delegated half: no user./trusted. xattrs in {}",
                t.display()
            );
        }
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape("a\\040b\\011c\\134"), "a b\tc\\");
        assert_eq!(unescape("\\04"), "\\04");
    }
}
