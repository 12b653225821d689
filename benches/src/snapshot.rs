//! Fixtures of the `snapshot` and `restore` groups.
//!
//! A region (memfd) of 16 MiB or 256 MiB, configured with E = 4096 descriptors and a 256 KiB
//! data ring that 4096 committed entries fill exactly (all live), then touched either fully
//! (every page written) or to 1/16 (a contiguous prefix written, the rest holes).
//!
//! - **host cycle** (ours): what the host does per snapshot — [`take_queue`] (the host's own
//!   call: `PreCopy::read` over its read-only mapping, sparse copy of the memfd into a temp
//!   file in the target directory, `PreCopy::finish` — fence, post, `next_seq`, `retain` — on
//!   the meta pages, footer with the image's CRC-32C), then [`TempFile::commit`]:
//!   `fdatasync`, generation shuffle (keep 1), `rename`, directory `fsync` and the unlink of
//!   the dropped generation.
//! - **raw** (the limit): `open(O_CREAT|O_EXCL)` a temp file in the same directory, the same
//!   sparse copy, `fdatasync`, `rename` over the previous raw file (which frees that file's
//!   blocks inside `rename`, as the host's unlink of its dropped generation does), directory
//!   `fsync`.
//! - **restore** (ours): [`restore_into`] (footer check, punch, one pass that CRCs and copies
//!   each data chunk, image check on the copied bytes)
//!   vs. **raw restore**: the same sparse copy back without verification.
//!
//! [`TempFile::commit`]: shmsnap_linux::persist::TempFile::commit

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use rustix::fs::{Mode, OFlags};
use shmsnap_core::{Layout, LayoutRequest, Retained, Strategy, Writer};
use shmsnap_linux::take::{take_queue, QueueSnapshot, Scratch};

use crate::sys::{
    copy_sparse, image_crc32c, restore_into, verify, Mapping, Memfd, PersistStats, Persister,
    Protection, SnapshotMeta,
};

/// Region sizes of the group.
pub const SIZES: [u64; 2] = [16 << 20, 256 << 20];
/// Descriptor count of the snapshot regions.
pub const ENTRIES: u64 = 4096;
/// Data-ring size of the snapshot regions.
pub const DATA_SIZE: u64 = 256 << 10;
/// Payload of each committed entry (`ENTRIES * PAYLOAD == DATA_SIZE`: the ring is full and
/// every entry live).
pub const PAYLOAD: usize = 64;

/// How much of the region holds data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// Every page written.
    Full,
    /// The first 1/16 of the region written, the rest holes.
    Sixteenth,
}

impl Touch {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Touch::Full => "full",
            Touch::Sixteenth => "1/16",
        }
    }

    fn bytes(self, len: u64) -> u64 {
        match self {
            Touch::Full => len,
            Touch::Sixteenth => len / 16,
        }
    }
}

/// A core error (which implements `Display` but not `std::error::Error`) as an I/O error.
fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Payload of entry `seq` (its seq in the first 8 bytes, so a read-back identifies it).
fn payload_of(seq: u64) -> [u8; PAYLOAD] {
    let mut p = [0xa5u8; PAYLOAD];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

/// One region and everything needed to snapshot and restore it.
#[derive(Debug)]
pub struct SnapshotFixture {
    len: u64,
    memfd: Memfd,
    /// The client's mapping (kept alive: a live region has one).
    _client: Mapping,
    /// The host's read-only mapping, through which it reads descriptors.
    host: Mapping,
    layout: Layout,
    /// Bytes of the region that hold data (a prefix); the rest are holes.
    touched: u64,
    persister: Persister,
    dir: OwnedFd,
    raw_name: String,
    raw_tmp: String,
    /// Where restores go (same length, sealed).
    restore: Memfd,
    /// The host cycle's buffers, kept between snapshots as the host keeps them.
    scratch: RefCell<Scratch>,
    generation: Cell<u64>,
    /// Timings of the last host persist.
    last: Cell<PersistStats>,
}

impl SnapshotFixture {
    /// Creates, configures, fills and touches a region of `len` bytes, with snapshot files in
    /// `dir`; takes one snapshot and one restore each way and checks them (sanity).
    ///
    /// # Errors
    ///
    /// The syscalls' errors.
    ///
    /// # Panics
    ///
    /// If a sanity check fails: the host snapshot does not verify or does not keep every
    /// entry, or a restored region does not attach to the newest entry with its payload.
    pub fn new(dir: &Path, len: u64, touch: Touch) -> io::Result<Self> {
        let memfd = Memfd::create("bench-snapshot", len)?;
        memfd.seal_against_shrink()?;
        let client = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        let request = LayoutRequest {
            entries: ENTRIES,
            data_size: DATA_SIZE,
        };
        let layout = {
            let mut w = Writer::init(client.words(), request, crate::CLIENT).map_err(err)?;
            for seq in 1..=ENTRIES {
                w.commit(&payload_of(seq)).map_err(err)?;
            }
            *w.layout()
        };
        // Touch the tail, one word per page, up to the touched length.
        let touched = touch.bytes(len);
        let words = client.words();
        let mut off = layout.tail_offset;
        while off < touched {
            words[(off / 8) as usize].store(off | 1, Ordering::Relaxed);
            off += 4096;
        }
        let host = Mapping::of_memfd(&memfd, Protection::ReadOnly)?;
        let tag = format!("{}m-{}", len >> 20, touch.bytes(16));
        let persister = Persister::new(&dir.join(format!("ours-{tag}.snap")), 1)?;
        let dir_fd = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let restore = Memfd::create("bench-restore", len)?;
        restore.seal_against_shrink()?;
        let f = Self {
            len,
            memfd,
            _client: client,
            host,
            layout,
            touched,
            persister,
            dir: dir_fd,
            raw_name: format!("raw-{tag}.snap"),
            raw_tmp: format!(".raw-{tag}.snap.tmp"),
            restore,
            scratch: RefCell::new(Scratch::default()),
            generation: Cell::new(0),
            last: Cell::new(PersistStats::default()),
        };
        f.sanity()?;
        Ok(f)
    }

    /// Region length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated in the region (what a sparse copy moves).
    ///
    /// # Errors
    ///
    /// `fstat`'s errors.
    pub fn allocated(&self) -> io::Result<u64> {
        self.memfd.allocated()
    }

    /// Timings of the last host persist (sync, rename, dir sync, unlink of the old one).
    pub fn last_persist(&self) -> PersistStats {
        self.last.get()
    }

    /// The path of our snapshot file.
    pub fn target(&self) -> PathBuf {
        self.persister.target()
    }

    /// One full host snapshot cycle (module docs); returns what `retain` kept.
    ///
    /// # Errors
    ///
    /// Any I/O error; `Other` if the region is unreadable or the attempt starved.
    pub fn host_snapshot(&self) -> io::Result<Retained> {
        let generation = self.generation.get() + 1;
        let meta = SnapshotMeta {
            strategy: Strategy::Queue.code(),
            generation,
            unix_time_ns: 0,
        };
        let mut scratch = self.scratch.borrow_mut();
        let written = take_queue(&self.memfd, &self.host, &self.persister, meta, &mut scratch)?;
        let QueueSnapshot::Written { file, figures } = written else {
            return Err(io::Error::other(format!(
                "the host cycle persisted nothing: {written:?}"
            )));
        };
        let stats = file.commit()?;
        self.generation.set(generation);
        self.last.set(stats);
        Ok(figures.retained)
    }

    /// The limit: sparse copy + `fdatasync` + `rename` + directory `fsync`.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn raw_snapshot(&self) -> io::Result<()> {
        crate::sys::raw_snapshot(
            &self.dir,
            &self.raw_tmp,
            &self.raw_name,
            &self.memfd,
            self.len,
        )
    }

    /// Bytes of the region that hold data (a prefix, the rest are holes).
    pub fn touched(&self) -> u64 {
        self.touched
    }

    /// What a client restart costs when the client sealed its region (write tracking, DESIGN
    /// §11): [`Memfd::fresh_copy`], a new memfd holding the region's data extents (dropped
    /// here). Returns the data bytes moved.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn move_region(&self) -> io::Result<u64> {
        let (fresh, stats) = self.memfd.fresh_copy("bench-moved")?;
        debug_assert_eq!(fresh.len()?, self.len);
        Ok(stats.bytes)
    }

    /// Ours: verify our snapshot file and copy it back into the restore memfd.
    ///
    /// # Errors
    ///
    /// Any I/O or verification error.
    pub fn restore(&self) -> io::Result<()> {
        let f = File::open(self.persister.target())?;
        restore_into(&f, &self.restore)?;
        Ok(())
    }

    /// The limit: sparse copy of the raw file back into the restore memfd.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn raw_restore(&self) -> io::Result<()> {
        let fd = rustix::fs::openat(
            &self.dir,
            self.raw_name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        copy_sparse(&fd, &self.restore, self.len)?;
        Ok(())
    }

    /// Checks that the restore memfd holds every committed entry, the newest one's payload,
    /// and (for the touched tail) the same bytes as the live region.
    ///
    /// Only the touched prefix is read: reading a memfd hole through a mapping allocates it.
    fn check_restored(&self) -> io::Result<()> {
        let map = Mapping::of_memfd(&self.restore, Protection::ReadWrite)?;
        let w = Writer::attach(map.words(), crate::CLIENT).map_err(err)?;
        assert_eq!(w.region().entries().count() as u64, ENTRIES);
        let newest = w.region().newest().expect("a newest entry");
        assert_eq!(newest.seq, ENTRIES);
        let mut buf = [0u8; PAYLOAD];
        let n = w.region().read_payload(&newest, &mut buf).map_err(err)?;
        assert_eq!(&buf[..n], &payload_of(ENTRIES)[..]);
        assert!(w.next_seq() > ENTRIES);
        let live = self.host.words();
        let back = map.words();
        let mut off = self.layout.tail_offset;
        while off < self.touched {
            let i = (off / 8) as usize;
            assert_eq!(
                back[i].load(Ordering::Relaxed),
                live[i].load(Ordering::Relaxed)
            );
            off += 4096;
        }
        Ok(())
    }

    /// CRC-32C of our snapshot's image as `shmsnap-linux` computes it (once per snapshot and
    /// once per restore).
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn image_crc(&self) -> io::Result<u32> {
        image_crc32c(File::open(self.persister.target())?, self.len)
    }

    fn sanity(&self) -> io::Result<()> {
        // Holes stayed holes (nothing read them through a mapping).
        let allocated = self.memfd.allocated()?;
        assert!(
            allocated <= self.touched.max(self.layout.tail_offset) + (64 << 10),
            "{allocated} bytes allocated, {} touched",
            self.touched
        );
        let kept = self.host_snapshot()?;
        assert_eq!(kept.kept, ENTRIES, "every entry survives a quiet copy");
        assert_eq!(kept.newest.map(|d| d.seq), Some(ENTRIES));
        let info = verify(File::open(self.persister.target())?).map_err(err)?;
        assert_eq!(info.image_len, self.len);
        assert_eq!(self.image_crc()?, info.image_crc);
        self.restore()?;
        self.check_restored()?;
        self.raw_snapshot()?;
        self.raw_restore()?;
        self.check_restored()?;
        assert_eq!(
            self.memfd.allocated()?,
            allocated,
            "the snapshots allocated holes"
        );
        assert_eq!(
            self.restore.allocated()?,
            allocated,
            "the restores allocated holes"
        );
        Ok(())
    }
}

impl Drop for SnapshotFixture {
    /// Removes the snapshot files (hundreds of MiB) this fixture wrote.
    fn drop(&mut self) {
        if let Ok(gens) = self.persister.generations() {
            for g in gens {
                let _ = std::fs::remove_file(g.path);
            }
        }
        let _ = self.persister.remove_stale_temps();
        let _ = rustix::fs::unlinkat(
            &self.dir,
            self.raw_name.as_str(),
            rustix::fs::AtFlags::empty(),
        );
    }
}
