//! Fixtures of the `freeze_pause` report (DESIGN §17): what stops a client while the freeze
//! strategy copies its region.
//!
//! A 256 MiB memfd region, touched fully or to 1/16 (a contiguous prefix, the rest holes).
//! Each staging candidate copies the region's data extents (`SEEK_DATA`/`SEEK_HOLE`) while the
//! client would be frozen; the reference is a plain `memcpy` of the same touched bytes between
//! two warm buffers.
//!
//! - **anon, mapping** (chosen, [`Staging`]): word loads through the host's read-only mapping
//!   into anonymous memory kept across pauses.
//! - **anon, pread**: `pread` from the memfd into anonymous memory kept across pauses.
//! - **memfd fresh**: a new memfd per pause, `copy_file_range` into it (pages allocated in the
//!   pause).
//! - **memfd warm**: the same memfd every pause, its pages already allocated.
//! - **page cache**: the temp snapshot file itself (created before the pause, on the bench
//!   directory's file system), sparse copy into it; `fdatasync` comes after the thaw, so it is
//!   not timed.
//!
//! Freeze and thaw are measured separately on a child process: a `sleep` (idle) and a busy
//! loop, each with the cgroup freezer and with `SIGSTOP`.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shmsnap_linux::copy::copy_extents;
use shmsnap_linux::freeze::{CgroupFreezer, Freezer, ProcessGroup, Staging};
use shmsnap_linux::{Mapping, Memfd, Protection};

use crate::snapshot::Touch;
use crate::Bench;

/// The region size of the report.
pub const REGION: u64 = 256 << 20;

/// A region touched per `touch`, and the bytes that are data.
#[derive(Debug)]
pub struct Region {
    /// The region.
    pub memfd: Memfd,
    /// Bytes of data (the touched prefix).
    pub touched: u64,
}

impl Region {
    /// A 256 MiB region with its touched prefix written (every byte nonzero).
    ///
    /// # Errors
    ///
    /// Memfd and write errors.
    pub fn new(touch: Touch) -> io::Result<Region> {
        let memfd = Memfd::create("freeze-bench", REGION)?;
        memfd.seal_against_shrink()?;
        let touched = match touch {
            Touch::Full => REGION,
            Touch::Sixteenth => REGION / 16,
        };
        let chunk = vec![0x5au8; 1 << 20];
        let mut off = 0;
        while off < touched {
            rustix::io::pwrite(&memfd, &chunk, off)?;
            off += chunk.len() as u64;
        }
        Ok(Region { memfd, touched })
    }
}

/// The reference: `memcpy` of `n` bytes between two buffers whose pages are resident.
#[derive(Debug)]
pub struct Memcpy {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Memcpy {
    /// Two buffers of `n` bytes, both written once (resident).
    pub fn new(n: u64) -> Memcpy {
        let n = n as usize;
        Memcpy {
            src: vec![0x5a; n],
            dst: vec![1; n],
        }
    }
}

impl Bench for Memcpy {
    fn run(&mut self, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            self.dst.copy_from_slice(&self.src);
            std::hint::black_box(&mut self.dst);
        }
        t.elapsed()
    }
}

/// A staging candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// [`Staging`]: word loads through a mapping into anonymous memory kept across pauses.
    Anon,
    /// `pread` into anonymous memory kept across pauses.
    AnonPread,
    /// A new memfd per pause.
    MemfdFresh,
    /// The same memfd every pause.
    MemfdWarm,
    /// The temp snapshot file's page cache.
    PageCache,
}

impl Candidate {
    /// Every candidate.
    pub const ALL: [Candidate; 5] = [
        Candidate::Anon,
        Candidate::AnonPread,
        Candidate::MemfdFresh,
        Candidate::MemfdWarm,
        Candidate::PageCache,
    ];

    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            Candidate::Anon => "anon via mapping (kept) = Staging",
            Candidate::AnonPread => "anon via pread (kept)",
            Candidate::MemfdFresh => "memfd, fresh",
            Candidate::MemfdWarm => "memfd, kept",
            Candidate::PageCache => "temp file page cache",
        }
    }
}

/// One candidate copying one region; only the copy (the pause's share) is timed.
#[derive(Debug)]
pub struct StageBench<'a> {
    region: &'a Region,
    candidate: Candidate,
    staging: Staging,
    /// The host's read-only mapping of the region.
    map: Mapping,
    /// The pread candidate's buffer.
    buf: Vec<u8>,
    warm: Option<Memfd>,
    dir: PathBuf,
}

impl<'a> StageBench<'a> {
    /// The candidate on `region`; temp files go to `dir`. Checks once that the copy holds the
    /// region's data.
    ///
    /// # Errors
    ///
    /// Copy errors; `InvalidData` if a copy does not hold the data.
    pub fn new(region: &'a Region, candidate: Candidate, dir: &Path) -> io::Result<Self> {
        let warm = match candidate {
            Candidate::MemfdWarm => Some(Memfd::create("warm", REGION)?),
            _ => None,
        };
        let mut b = StageBench {
            region,
            candidate,
            staging: Staging::new(),
            map: Mapping::of_memfd(&region.memfd, Protection::ReadOnly)?,
            buf: vec![0; REGION as usize],
            warm,
            dir: dir.to_path_buf(),
        };
        let copied = b.once()?.0;
        if copied != region.touched {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} copied {copied} bytes of {}",
                    candidate.name(),
                    region.touched
                ),
            ));
        }
        Ok(b)
    }

    /// One copy: (bytes, time of the copy alone).
    fn once(&mut self) -> io::Result<(u64, Duration)> {
        let src = &self.region.memfd;
        match self.candidate {
            Candidate::Anon => {
                let t = Instant::now();
                let n = self.staging.capture(src, &self.map, REGION, None)?;
                Ok((n, t.elapsed()))
            }
            Candidate::AnonPread => {
                let t = Instant::now();
                let mut n = 0;
                for_extents(src, |off, len| {
                    let b = &mut self.buf[off as usize..(off + len) as usize];
                    let got = rustix::io::pread(src, b, off)?;
                    n += got as u64;
                    Ok(())
                })?;
                Ok((n, t.elapsed()))
            }
            Candidate::MemfdFresh => {
                let t = Instant::now();
                let m = Memfd::create("fresh", REGION)?;
                let n = copy_extents(src, &m, 0..REGION)?.bytes;
                let d = t.elapsed();
                drop(m);
                Ok((n, d))
            }
            Candidate::MemfdWarm => {
                let m = self.warm.as_ref().expect("warm memfd");
                let t = Instant::now();
                let n = copy_extents(src, m, 0..REGION)?.bytes;
                Ok((n, t.elapsed()))
            }
            Candidate::PageCache => {
                let path = self
                    .dir
                    .join(format!("freeze-bench-{}.tmp", std::process::id()));
                let f = File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                rustix::fs::ftruncate(&f, REGION)?;
                let t = Instant::now();
                let n = copy_extents(src, &f, 0..REGION)?.bytes;
                let d = t.elapsed();
                drop(f);
                std::fs::remove_file(&path)?;
                Ok((n, d))
            }
        }
    }
}

/// Calls `f(offset, len)` for each data extent of the region (`SEEK_DATA`/`SEEK_HOLE`).
fn for_extents(fd: &Memfd, mut f: impl FnMut(u64, u64) -> io::Result<()>) -> io::Result<()> {
    use rustix::fs::{seek, SeekFrom};
    let mut off = 0;
    while off < REGION {
        let Ok(data) = seek(fd, SeekFrom::Data(off)) else {
            break;
        };
        let hole = seek(fd, SeekFrom::Hole(data))?.min(REGION);
        let mut at = data;
        while at < hole {
            // pread moves at most 2 GiB - 4 KiB: the region is smaller.
            f(at, hole - at)?;
            at = hole;
        }
        off = hole;
    }
    Ok(())
}

impl Bench for StageBench<'_> {
    fn run(&mut self, iters: u64) -> Duration {
        (0..iters)
            .map(|_| self.once().expect("staging copy").1)
            .sum()
    }
}

/// A child to freeze: idle (`sleep`) or busy (a shell loop), in its own process group and,
/// with `cgroup`, in that cgroup; killed on drop.
#[derive(Debug)]
pub struct Target {
    child: Child,
}

impl Target {
    /// Starts the child (`busy`: a shell loop; else `sleep`), moved into `cgroup` if given.
    ///
    /// # Errors
    ///
    /// Spawn errors; the write into `cgroup.procs`.
    pub fn start(busy: bool, cgroup: Option<&Path>) -> io::Result<Target> {
        let mut cmd = if busy {
            let mut c = Command::new("sh");
            c.args(["-c", "while :; do :; done"]);
            c
        } else {
            let mut c = Command::new("sleep");
            c.arg("1000");
            c
        };
        let child = cmd.process_group(0).spawn()?;
        if let Some(cg) = cgroup {
            std::fs::write(cg.join("cgroup.procs"), child.id().to_string())?;
        }
        Ok(Target { child })
    }

    /// Its process group.
    pub fn pgid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.child.id() as i32).expect("child pid")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup for the freeze benches under the cgroup2 mount's root, removed on drop.
#[derive(Debug)]
pub struct BenchCgroup(pub PathBuf);

impl BenchCgroup {
    /// A new cgroup, or why there is none.
    ///
    /// # Errors
    ///
    /// No cgroup2 mount, or it cannot be written.
    pub fn new(name: &str) -> Result<BenchCgroup, String> {
        let mount = shmsnap_linux::freeze::cgroup::cgroup2_root().map_err(|e| e.to_string())?;
        let dir = mount.join(format!("shmsnap-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(BenchCgroup(dir))
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..1000 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Freeze + thaw of a target with one mechanism; the time is stop request to resume request
/// (what the client loses, without a copy).
#[derive(Debug)]
pub struct FreezeThaw {
    freezer: Freezer,
}

impl FreezeThaw {
    /// Signal mechanism on `t`'s process group.
    pub fn signal(t: &Target) -> FreezeThaw {
        FreezeThaw {
            freezer: Freezer::Signal(ProcessGroup::new(t.pgid())),
        }
    }

    /// Cgroup mechanism on `cg`.
    pub fn cgroup(cg: &BenchCgroup) -> FreezeThaw {
        FreezeThaw {
            freezer: Freezer::Cgroup(CgroupFreezer::new(&cg.0)),
        }
    }
}

impl Bench for FreezeThaw {
    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let f = self
                .freezer
                .freeze(Duration::from_secs(10))
                .expect("freeze");
            total += f.thaw().expect("thaw");
            // Let the target run again before the next stop.
            std::thread::sleep(Duration::from_micros(200));
        }
        total
    }
}
