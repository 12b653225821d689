//! Fixture of the triple-buffer snapshot comparison (issue 12): a 256 MiB region whose
//! buffers are 16 MiB.
//!
//! The region (memfd of 256 MiB) holds a triple layout of 15 buffers of 16 MiB (the header and
//! state pages take the rest), every buffer published once with 16 MiB of data, so the whole
//! region is allocated: a snapshot that copied more than the frozen buffer would show.
//!
//! - **host** (ours): what `--strategy triple` does per snapshot — `TripleHost::attach` on the
//!   host's read-write mapping, [`take_triple`] (freeze the newest READY buffer, copy its 16
//!   MiB into a temp file of the region's length whose other bytes stay holes, image meta,
//!   release, footer with the image CRC-32C), then [`TempFile::commit`] (`fdatasync`,
//!   generation shuffle with keep 1, `rename`, directory `fsync`, unlink of the dropped
//!   generation).
//! - **raw** (the limit): `open(O_CREAT|O_EXCL)` a temp file, a sparse copy of a 16 MiB memfd
//!   holding the same bytes, `fdatasync`, `rename` over the previous raw file, directory
//!   `fsync`.
//!
//! [`TempFile::commit`]: shmsnap_linux::persist::TempFile::commit

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use shmsnap_core::triple::{TripleClient, TripleHost, TripleRequest};
use shmsnap_core::Strategy;
use shmsnap_linux::take_triple::{take_triple, TripleSnapshot};

use crate::sys::{restore_into, Mapping, Memfd, Persister, Protection, SnapshotMeta};

/// Region length.
pub const REGION: u64 = 256 << 20;
/// Buffer size.
pub const BUFFER: u64 = 16 << 20;
/// Buffers that fit the region beside the two meta pages.
pub const BUFFERS: u64 = 15;

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The region, its host mapping, the 16 MiB raw source and both targets.
#[derive(Debug)]
pub struct TripleSnapshotFixture {
    memfd: Memfd,
    /// The host's mapping (read-write: it freezes and releases).
    host: Mapping,
    /// 16 MiB holding the newest state's bytes: the raw limit's source.
    raw_src: Memfd,
    /// Seq of the newest publication (what every host snapshot persists).
    newest: u64,
    persister: Persister,
    dir: OwnedFd,
    raw_name: String,
    raw_tmp: String,
    scratch: RefCell<Vec<u8>>,
    generation: Cell<u64>,
    /// Timings of the last host snapshot.
    last: Cell<Phases>,
}

/// Where the time of one host snapshot went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Copy of the frozen buffer.
    pub copy: std::time::Duration,
    /// Meta, release, footer with the image CRC.
    pub validate: std::time::Duration,
    /// The commit's `fdatasync`, `rename` and directory `fsync`.
    pub durable: std::time::Duration,
    /// The unlink of the dropped generation (after the durable point).
    pub drop_old: std::time::Duration,
}

impl TripleSnapshotFixture {
    /// Builds the region in `dir` and checks one host snapshot end to end: it verifies, and
    /// restored into a fresh region it is the newest state a client reads.
    ///
    /// # Errors
    ///
    /// Any I/O or protocol error; `Other` if a sanity check fails.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let memfd = Memfd::create("bench-triple", REGION)?;
        memfd.seal_against_shrink()?;
        let client_map = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        let request = TripleRequest {
            buffers: BUFFERS,
            buffer_size: BUFFER,
        };
        let mut state = vec![0u8; BUFFER as usize];
        let mut newest = 0;
        {
            let mut client =
                TripleClient::init(client_map.words(), request, crate::CLIENT).map_err(err)?;
            for i in 0..BUFFERS {
                for (j, c) in state.chunks_mut(4096).enumerate() {
                    c[..8].copy_from_slice(&(i << 32 | j as u64 | 1).to_le_bytes());
                }
                newest = client.publish(&state).map_err(err)?;
            }
        }
        let raw_src = Memfd::create("bench-triple-raw", BUFFER)?;
        rustix::io::pwrite(&raw_src, &state, 0)?;
        let host = Mapping::of_memfd(&memfd, Protection::ReadWrite)?;
        let persister = Persister::new(&dir.join("ours-triple.snap"), 1)?;
        let dir_fd = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let f = TripleSnapshotFixture {
            memfd,
            host,
            raw_src,
            newest,
            persister,
            dir: dir_fd,
            raw_name: "raw-triple.snap".into(),
            raw_tmp: ".raw-triple.snap.tmp".into(),
            scratch: RefCell::new(Vec::new()),
            generation: Cell::new(0),
            last: Cell::new(Phases::default()),
        };
        f.sanity(&state)?;
        Ok(f)
    }

    fn sanity(&self, newest_state: &[u8]) -> io::Result<()> {
        self.host_snapshot()?;
        self.raw_snapshot()?;
        let back = Memfd::create("bench-triple-restore", REGION)?;
        back.seal_against_shrink()?;
        restore_into(std::fs::File::open(self.persister.target())?, &back)?;
        let map = Mapping::of_memfd(&back, Protection::ReadWrite)?;
        let client = TripleClient::attach(map.words(), crate::CLIENT).map_err(err)?;
        let mut out = vec![0u8; BUFFER as usize];
        let seq = client.read_newest(0, &mut out).map_err(err)?;
        if seq != Some(self.newest) || out != newest_state {
            return Err(io::Error::other(
                "the restored snapshot is not the newest state",
            ));
        }
        let image = rustix::fs::fstat(std::fs::File::open(self.persister.target())?)?;
        if (image.st_blocks as u64) * 512 > BUFFER + (1 << 20) {
            return Err(io::Error::other(format!(
                "the snapshot allocates {} bytes: more than the frozen buffer",
                image.st_blocks * 512
            )));
        }
        Ok(())
    }

    /// One host snapshot (module docs).
    ///
    /// # Errors
    ///
    /// Any I/O error; `Other` if nothing was written.
    pub fn host_snapshot(&self) -> io::Result<()> {
        let generation = self.generation.get() + 1;
        let meta = SnapshotMeta {
            strategy: Strategy::Triple.code(),
            generation,
            unix_time_ns: 0,
        };
        let host = TripleHost::attach(self.host.words()).map_err(err)?;
        let mut scratch = self.scratch.borrow_mut();
        // last_persisted 0: every iteration persists the same newest state again.
        match take_triple(&self.memfd, &host, &self.persister, meta, 0, &mut scratch)? {
            TripleSnapshot::Written { file, figures } if figures.seq == self.newest => {
                let stats = file.commit()?;
                self.last.set(Phases {
                    copy: figures.copy_time,
                    validate: figures.validate_time,
                    durable: stats.sync + stats.rename + stats.dir_sync,
                    drop_old: stats.drop_old,
                });
            }
            other => return Err(io::Error::other(format!("nothing persisted: {other:?}"))),
        }
        self.generation.set(generation);
        Ok(())
    }

    /// Where the time of the last [`host_snapshot`](Self::host_snapshot) went.
    pub fn last_phases(&self) -> Phases {
        self.last.get()
    }

    /// The limit: a sparse copy of 16 MiB + `fdatasync` + `rename` + directory `fsync`.
    ///
    /// # Errors
    ///
    /// Any I/O error.
    pub fn raw_snapshot(&self) -> io::Result<()> {
        crate::sys::raw_snapshot(
            &self.dir,
            &self.raw_tmp,
            &self.raw_name,
            &self.raw_src,
            BUFFER,
        )
    }
}
