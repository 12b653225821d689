//! Writing a delta: temp file in the chain directory, runs copied from the region, footer,
//! `fdatasync`, `renameat(RENAME_NOREPLACE)`, `fsync(dir)`; and removing superseded chains.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crc_fast::{checksum_combine, CrcAlgorithm, Digest};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::{retry_on_intr, Errno};

use super::error::{ChainError, ChainErrorKind};
use super::format::{
    check_runs, delta_name, encode_delta_footer, encode_table, parse_delta_name, table_len,
    DeltaFooter, Run, CHAIN_DIR_SUFFIX, DELTA_VERSION,
};
use crate::atomic_file::{crash_point, AtomicFile, Rule};
use crate::copy::{read_full_at, write_all_at};
use crate::noreplace::Exclusive;
use crate::persist::dir_names;
use crate::persist::Persister;
use crate::snapshot::{encode_footer, SnapshotInfo};

/// Largest chain position a name can hold (8 decimal digits).
pub const MAX_INDEX: u64 = 99_999_999;
/// Bytes moved per `pread`/`pwrite` when copying runs.
const CHUNK: usize = 1 << 20;
/// Prefix of a delta being written (never a delta name: those start with a digit).
const TEMP_PREFIX: &str = ".delta.tmp.";

/// The chain directory of `target`: `<target>.d`, beside it.
pub fn chain_dir(target: &Path) -> PathBuf {
    let mut p = target.as_os_str().to_os_string();
    p.push(CHAIN_DIR_SUFFIX);
    PathBuf::from(p)
}

/// The link a new delta is chained onto: the base, or the newest delta of its chain. The host
/// keeps the tip of what it last made durable ([`Tip::of_base`] after a base,
/// [`DeltaInfo::tip`] after a delta).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Image length of the chain.
    pub image_len: u64,
    /// Strategy code of the chain.
    pub strategy: u64,
    /// The base's generation.
    pub base_generation: u64,
    /// The base's image CRC.
    pub base_image_crc: u32,
    /// Position of this link: 0 = the base, k = delta k.
    pub index: u64,
    /// This link's footer CRC (what the next delta records as its parent).
    pub footer_crc: u32,
}

impl Tip {
    /// The tip of a chain that is just its base (a snapshot file's footer).
    pub fn of_base(info: &SnapshotInfo) -> Tip {
        let footer = encode_footer(info.image_len, info.meta, info.image_crc);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&footer[52..56]);
        Tip {
            image_len: info.image_len,
            strategy: info.meta.strategy,
            base_generation: info.meta.generation,
            base_image_crc: info.image_crc,
            index: 0,
            footer_crc: u32::from_le_bytes(crc),
        }
    }

    /// The tip of a chain whose newest link is the delta with footer `f`.
    pub fn of_delta(f: &DeltaFooter) -> Tip {
        Tip {
            image_len: f.image_len,
            strategy: f.strategy,
            base_generation: f.base_generation,
            base_image_crc: f.base_image_crc,
            index: f.index,
            footer_crc: f.footer_crc,
        }
    }
}

/// What the host records about a delta besides its runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaMeta {
    /// The parent image's `next_seq` hint (0 if not a queue image).
    pub next_seq_before: u64,
    /// This image's `next_seq` hint (0 if not a queue image).
    pub next_seq: u64,
    /// Wall-clock time of the state, ns since the Unix epoch.
    pub unix_time_ns: u64,
}

/// A durable delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaInfo {
    /// Its path.
    pub path: PathBuf,
    /// Its footer.
    pub footer: DeltaFooter,
    /// Timings of the commit.
    pub stats: DeltaStats,
}

impl DeltaInfo {
    /// The tip the next delta chains onto.
    pub fn tip(&self) -> Tip {
        Tip::of_delta(&self.footer)
    }
}

/// Timings of one delta commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Reading the table and data back for their CRCs, and writing the footer.
    pub footer: Duration,
    /// `fdatasync` of the temp file.
    pub sync: Duration,
    /// `renameat` + `fsync` of the chain directory.
    pub publish: Duration,
}

/// A delta being written into a temp file of the chain directory; removed on drop unless
/// [`commit`](DeltaWriter::commit)ted. Borrows the [`Persister`]: only the holder of the
/// target's lock writes its chain.
#[derive(Debug)]
#[must_use = "dropping a DeltaWriter discards it; call commit() to make the delta durable"]
pub struct DeltaWriter<'p> {
    /// The state's persister: its lock makes this host the chain directory's only writer.
    persister: &'p Persister,
    dir_path: PathBuf,
    /// The temp file in the chain directory (opened `O_DIRECTORY | O_NOFOLLOW`).
    temp: AtomicFile<OwnedFd>,
    parent: Tip,
    /// Validated by [`check_runs`] against `parent.image_len`, `meta_len`, `data_len`.
    runs: Vec<Run>,
    /// Per run, the file offset of its data (`table_len` plus the lengths of the runs
    /// before it).
    file_at: Vec<u64>,
    meta_len: u64,
    /// CRC-32C of pieces of the data section as written, by file offset: `(len, crc)`.
    /// Invariant: the pieces do not overlap and each holds the CRC of exactly the bytes the
    /// file holds there; a write over part of a piece removes it, and
    /// [`commit`](Self::commit) reads back what no piece covers.
    crcs: BTreeMap<u64, (u64, u64)>,
    /// Bytes of the table section (the data section starts here).
    table_len: u64,
    /// Sum of the runs' lengths.
    data_len: u64,
    /// Test twin: skip the `fdatasync` (a writer that must fail the crash test).
    #[cfg(test)]
    pub(crate) skip_datasync: bool,
}

impl<'p> DeltaWriter<'p> {
    /// `mkdirat` of the chain directory if missing (then `fsync` of its parent), `openat(dir,
    /// ".delta.tmp.<random>", O_CREAT | O_EXCL | O_NOFOLLOW)`, then writes the run table and
    /// sizes the file: starts delta `parent.index + 1` of `persister`'s target carrying
    /// `runs` (from [`plan_runs`](super::plan_runs): sorted, granule-aligned, covering the
    /// meta pages `0..meta_len`).
    ///
    /// # References
    ///  - [Linux `mkdir`](https://man7.org/linux/man-pages/man2/mkdir.2.html)
    ///  - [Linux `openat`](https://man7.org/linux/man-pages/man2/openat.2.html)
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::BadRun`] / `BadField` if `runs` (or the parent's image length) would
    /// make a delta a reader refuses (nothing is created); `BadField` `index` past [`MAX_INDEX`]; I/O errors naming the
    /// chain directory.
    pub fn begin(
        persister: &'p Persister,
        parent: &Tip,
        runs: &[Run],
        meta_len: u64,
    ) -> Result<Self, ChainError> {
        if !crate::snapshot::image_len_ok(parent.image_len) {
            return Err(ChainErrorKind::BadField {
                field: "image_len",
                value: parent.image_len,
            }
            .into());
        }
        let data_len = runs.iter().map(|r| r.len).fold(0u64, u64::saturating_add);
        check_runs(runs, parent.image_len, meta_len, data_len)?;
        if parent.index >= MAX_INDEX {
            return Err(ChainErrorKind::BadField {
                field: "index",
                value: parent.index + 1,
            }
            .into());
        }
        let dir_path = chain_dir(&persister.target());
        let dir = open_chain_dir(&dir_path, true).map_err(|e| ChainError::io(e).at(&dir_path))?;
        let temp = AtomicFile::create(dir, &dir_path, OsStr::new(TEMP_PREFIX))
            .map_err(|e| ChainError::io(e).at(&dir_path))?;
        let w = DeltaWriter {
            persister,
            dir_path,
            temp,
            parent: *parent,
            runs: runs.to_vec(),
            file_at: runs
                .iter()
                .scan(table_len(runs.len() as u64), |at, r| {
                    let here = *at;
                    *at += r.len;
                    Some(here)
                })
                .collect(),
            crcs: BTreeMap::new(),
            meta_len,
            table_len: table_len(runs.len() as u64),
            data_len,
            #[cfg(test)]
            skip_datasync: false,
        };
        let named = |e: io::Error| ChainError::io(e).at(&w.temp_path());
        write_all_at(w.file(), &encode_table(runs), 0).map_err(named)?;
        rustix::fs::ftruncate(w.file(), w.table_len + w.data_len).map_err(|e| named(e.into()))?;
        crash_point::step().map_err(named)?;
        Ok(w)
    }

    fn file(&self) -> &File {
        self.temp.file()
    }

    /// The temp file's path (for messages).
    pub fn temp_path(&self) -> PathBuf {
        self.temp.temp_path()
    }

    /// The runs this delta carries.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// `pread` from `region` / `pwrite` into the delta—copies every run's bytes from the same
    /// offsets of `region` (the live memfd), gathering runs into 1 MiB writes, and CRCs them on
    /// the way (so [`commit`](Self::commit) reads back only what
    /// [`write_image_at`](Self::write_image_at) changed since). Returns the bytes copied.
    ///
    /// # Errors
    ///
    /// I/O errors (`UnexpectedEof` if the region is shorter than a run), naming the temp file.
    pub fn copy_from(&mut self, region: impl AsFd) -> Result<u64, ChainError> {
        let region = region.as_fd();
        let path = self.temp_path();
        let err = |e: io::Error| ChainError::io(e).at(&path);
        let file = self.temp.file();
        let mut buf = vec![0u8; CHUNK.min(self.data_len as usize)];
        // buf[..fill] holds the data for file offsets file_at..file_at + fill.
        let (mut fill, mut file_at) = (0usize, self.table_len);
        let mut pieces = Vec::with_capacity(self.runs.len());
        for r in &self.runs {
            let mut d = Digest::new(CrcAlgorithm::Crc32Iscsi);
            let mut done = 0;
            while done < r.len {
                if fill == buf.len() {
                    write_all_at(file, &buf, file_at).map_err(err)?;
                    file_at += fill as u64;
                    fill = 0;
                }
                let n = (r.len - done).min((buf.len() - fill) as u64) as usize;
                let piece = &mut buf[fill..fill + n];
                if read_full_at(region, piece, r.offset + done).map_err(err)? < n {
                    return Err(err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the region ends inside the run at {}", r.offset),
                    )));
                }
                d.update(piece);
                fill += n;
                done += n as u64;
            }
            pieces.push((r.len, d.finalize()));
        }
        write_all_at(file, &buf[..fill], file_at).map_err(err)?;
        let mut at = self.table_len;
        for (len, crc) in pieces {
            self.record(at, len, crc);
            at += len;
        }
        Ok(self.data_len)
    }

    /// `pread` from `region` / `pwrite` into the delta—copies the image bytes of `ranges`
    /// (inside the runs, in any order) from the same offsets of `region`, gathering ranges
    /// that follow each other in the file into writes of up to 1 MiB through `buf`, CRCing
    /// them on the way. For a copy in an order of the caller's choosing (the newest entries
    /// first, DESIGN §11); bytes not copied by any call are holes in the temp file, which
    /// [`narrow`](Self::narrow) must leave out.
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::NotInDelta`] if the bytes are not all carried; I/O errors
    /// (`UnexpectedEof` if the region is shorter), naming the temp file.
    pub fn copy_ranges_from(
        &mut self,
        region: impl AsFd,
        ranges: &[Run],
        buf: &mut Vec<u8>,
    ) -> Result<(), ChainError> {
        let region = region.as_fd();
        let path = self.temp_path();
        let err = |e: io::Error| ChainError::io(e).at(&path);
        buf.resize(CHUNK, 0);
        // buf[..fill] holds the data for file offsets file_at..file_at + fill.
        let (mut fill, mut file_at) = (0usize, 0u64);
        for r in ranges {
            let mut image_at = r.offset;
            for (at, n) in self.locate(r.offset, r.len)? {
                let mut done = 0usize;
                while done < n {
                    let to = at + done as u64;
                    if fill == buf.len() || (fill > 0 && file_at + fill as u64 != to) {
                        self.flush(&buf[..fill], file_at).map_err(err)?;
                        fill = 0;
                    }
                    if fill == 0 {
                        file_at = to;
                    }
                    let k = (n - done).min(buf.len() - fill);
                    let piece = &mut buf[fill..fill + k];
                    if read_full_at(region, piece, image_at).map_err(err)? < k {
                        return Err(err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the region ends inside the range at {image_at}"),
                        )));
                    }
                    fill += k;
                    done += k;
                    image_at += k as u64;
                }
            }
        }
        self.flush(&buf[..fill], file_at).map_err(err)
    }

    /// `pwrite`s `data` at file offset `at` and records its CRC.
    fn flush(&mut self, data: &[u8], at: u64) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        write_all_at(self.file(), data, at)?;
        let crc = crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, data);
        self.record(at, data.len() as u64, crc);
        Ok(())
    }

    /// Records the CRC of the data-section bytes `at..at + len` as just written, dropping
    /// every piece they overlap (its bytes changed).
    fn record(&mut self, at: u64, len: u64, crc: u64) {
        self.forget(at, len);
        if len > 0 {
            self.crcs.insert(at, (len, crc));
        }
    }

    /// Drops the CRC of every piece overlapping file bytes `at..at + len`.
    fn forget(&mut self, at: u64, len: u64) {
        let end = at.saturating_add(len);
        let overlapping: Vec<u64> = self
            .crcs
            .range(..end)
            .rev()
            .take_while(|(&o, &(l, _))| o.saturating_add(l) > at)
            .map(|(&o, _)| o)
            .collect();
        for o in overlapping {
            self.crcs.remove(&o);
        }
    }

    /// A delta onto the same parent carrying only `keep`, runs of this one's (from
    /// [`plan_runs`](super::plan_runs), covering the meta pages), its data copied from this
    /// delta's temp file (`pread`/`pwrite`), which is then removed. For a delta whose copy
    /// stopped early: the image bytes it did not copy are left out (DESIGN §11, "The newest
    /// entries first").
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::NotInDelta`] if `keep` is not inside this delta's runs; as
    /// [`begin`](Self::begin); I/O errors naming the temp files.
    pub fn narrow(self, keep: &[Run]) -> Result<DeltaWriter<'p>, ChainError> {
        let mut out = DeltaWriter::begin(self.persister, &self.parent, keep, self.meta_len)?;
        let mut buf = vec![0u8; CHUNK.min(out.data_len as usize)];
        let src = self.temp_path();
        let dst = out.temp_path();
        let mut to = out.table_len;
        let mut pieces = Vec::new();
        // Split at the end of the meta pages: `write_image_at` replaces them, and a CRC piece
        // reaching past them would then be read back at commit.
        let m = self.meta_len;
        let split = keep.iter().flat_map(|r| {
            let cut = (r.offset < m && m < r.end()).then_some(m);
            let first = Run {
                offset: r.offset,
                len: cut.map_or(r.len, |c| c - r.offset),
            };
            let rest = cut.map(|c| Run {
                offset: c,
                len: r.end() - c,
            });
            std::iter::once(first).chain(rest)
        });
        for r in split {
            for (from, n) in self.locate(r.offset, r.len)? {
                let mut done = 0usize;
                while done < n {
                    let k = (n - done).min(buf.len());
                    let piece = &mut buf[..k];
                    let got = read_full_at(self.file(), piece, from + done as u64)
                        .map_err(|e| ChainError::io(e).at(&src))?;
                    if got < k {
                        return Err(ChainError::io(io::ErrorKind::UnexpectedEof.into()).at(&src));
                    }
                    write_all_at(out.file(), piece, to).map_err(|e| ChainError::io(e).at(&dst))?;
                    pieces.push((
                        to,
                        k as u64,
                        crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, piece),
                    ));
                    to += k as u64;
                    done += k;
                }
            }
        }
        for (at, len, crc) in pieces {
            out.record(at, len, crc);
        }
        Ok(out)
    }

    /// Where image bytes `offset..offset + len` are in the delta file, as `(file offset,
    /// bytes)` pieces in order.
    fn locate(&self, offset: u64, len: u64) -> Result<Vec<(u64, usize)>, ChainError> {
        let missing = || ChainError::from(ChainErrorKind::NotInDelta { offset, len });
        let end = offset.checked_add(len).ok_or_else(missing)?;
        let mut pieces = Vec::new();
        let mut cur = offset;
        // The runs are sorted and disjoint (`check_runs`): start at the first one ending past
        // `offset`.
        let first = self.runs.partition_point(|r| r.end() <= offset);
        for (r, &at) in self.runs[first..].iter().zip(&self.file_at[first..]) {
            if cur >= end || r.offset > cur {
                break;
            }
            let n = r.end().min(end) - cur;
            pieces.push((at + (cur - r.offset), n as usize));
            cur += n;
        }
        if cur < end {
            return Err(missing());
        }
        Ok(pieces)
    }

    /// `pread`—reads image bytes at `offset` (inside the runs) from the delta, e.g. the copied
    /// meta pages for `retain`.
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::NotInDelta`] if the bytes are not all carried; I/O errors.
    pub fn read_image_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ChainError> {
        let mut done = 0;
        for (at, n) in self.locate(offset, buf.len() as u64)? {
            let got = read_full_at(self.file(), &mut buf[done..done + n], at)?;
            if got < n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            done += n;
        }
        Ok(())
    }

    /// `pwrite`—replaces image bytes at `offset` (inside the runs) in the delta, e.g. the meta
    /// pages after `retain`.
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::NotInDelta`] if the bytes are not all carried; I/O errors.
    pub fn write_image_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ChainError> {
        let mut done = 0;
        for (at, n) in self.locate(offset, buf.len() as u64)? {
            let piece = &buf[done..done + n];
            write_all_at(self.file(), piece, at)?;
            self.record(
                at,
                n as u64,
                crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, piece),
            );
            done += n;
        }
        Ok(())
    }

    /// The data section's CRC: the recorded pieces' CRCs combined in file order, reading back
    /// whatever no piece covers (normally nothing: every write records its piece).
    fn data_crc(&self) -> io::Result<u32> {
        let alg = CrcAlgorithm::Crc32Iscsi;
        let end = self.table_len + self.data_len;
        let mut acc: Option<u64> = None;
        let mut push = |crc: u64, len: u64| {
            acc = Some(match acc {
                None => crc,
                Some(a) => checksum_combine(alg, a, crc, len),
            });
        };
        let mut at = self.table_len;
        for (&o, &(len, crc)) in self.crcs.range(self.table_len..end) {
            if o > at {
                push(u64::from(crc_of(self.file(), at, o - at)?), o - at);
            }
            push(crc, len);
            at = o + len;
        }
        if at < end {
            push(u64::from(crc_of(self.file(), at, end - at)?), end - at);
        }
        // CRC-32C is 32 bits wide; the u64 holds it in its low half.
        Ok(acc.unwrap_or_else(|| crc_fast::checksum(alg, &[])) as u32)
    }

    /// Writes the footer (the table CRC read back from the file, the data CRC from the runs'
    /// CRCs), `fdatasync`s the file, `renameat(RENAME_NOREPLACE)`s it to its [`delta_name`]
    /// (on a file system without that flag, the fallback of
    /// [`NoReplace`](crate::noreplace::NoReplace): `link` + `unlink`, or check then rename
    /// under the state's lock; never a second write) and `fsync`s the chain directory: when
    /// this returns `Ok`, the delta is durable and part of the chain.
    ///
    /// # References
    ///  - [Linux `fdatasync`](https://man7.org/linux/man-pages/man2/fdatasync.2.html)
    ///  - [Linux `renameat2`](https://man7.org/linux/man-pages/man2/rename.2.html)
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::Occupied`] if the name exists (the temp file is removed: write a full
    /// base instead); I/O errors naming the file. An error from the directory `fsync` means
    /// the delta is visible but possibly not durable.
    pub fn commit(mut self, meta: DeltaMeta) -> Result<DeltaInfo, ChainError> {
        let mut stats = DeltaStats::default();
        let t = Instant::now();
        let temp_path = self.temp_path();
        let named = |e: io::Error| ChainError::io(e).at(&temp_path);
        let table_crc = crc_of(self.file(), 0, self.table_len).map_err(named)?;
        let data_crc = self.data_crc().map_err(named)?;
        let mut footer = DeltaFooter {
            version: DELTA_VERSION,
            image_len: self.parent.image_len,
            strategy: self.parent.strategy,
            base_generation: self.parent.base_generation,
            index: self.parent.index + 1,
            next_seq_before: meta.next_seq_before,
            next_seq: meta.next_seq,
            unix_time_ns: meta.unix_time_ns,
            run_count: self.runs.len() as u64,
            data_len: self.data_len,
            meta_len: self.meta_len,
            base_image_crc: self.parent.base_image_crc,
            parent_crc: self.parent.footer_crc,
            table_crc,
            data_crc,
            footer_crc: 0,
        };
        let bytes = encode_delta_footer(&footer);
        footer.footer_crc = u32::from_le_bytes([bytes[124], bytes[125], bytes[126], bytes[127]]);
        write_all_at(self.file(), &bytes, self.table_len + self.data_len).map_err(named)?;
        crash_point::step().map_err(named)?;
        stats.footer = t.elapsed();

        let t = Instant::now();
        #[cfg(test)]
        {
            self.temp.skip_datasync = self.skip_datasync;
        }
        self.temp.sync_data().map_err(named)?;
        stats.sync = t.elapsed();

        let t = Instant::now();
        let name = delta_name(footer.base_generation, footer.index);
        let path = self.dir_path.join(&name);
        // The persister's lock makes this host the only writer of the chain directory's
        // names: every fallback of `NoReplace` is sound here.
        let rule = Rule::NoReplace(self.persister.no_replace(), Exclusive::Locked);
        match self.temp.rename(OsStr::new(&name), rule) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ChainError::from(ChainErrorKind::Occupied).at(&path))
            }
            Err(e) => return Err(named(e)),
        }
        self.temp
            .sync_dir()
            .map_err(|e| ChainError::io(e).at(&self.dir_path))?;
        stats.publish = t.elapsed();
        Ok(DeltaInfo {
            path,
            footer,
            stats,
        })
    }
}

/// CRC-32C of bytes `at..at + len` of `file`, read in chunks.
pub(crate) fn crc_of(file: impl AsFd, at: u64, len: u64) -> io::Result<u32> {
    let file = file.as_fd();
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let got = read_full_at(file, &mut buf[..n], at + done)?;
        if got < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        d.update(&buf[..n]);
        done += n as u64;
    }
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    Ok(d.finalize() as u32)
}

/// `open(path, O_DIRECTORY | O_NOFOLLOW)`, creating the directory (mode 0700) and syncing its
/// parent first if it is missing and `create`.
pub(crate) fn open_chain_dir(path: &Path, create: bool) -> io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Err(Errno::NOENT) if create => {
            match rustix::fs::mkdir(path, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            // The new directory entry must be durable before anything in it is.
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let pfd = rustix::fs::open(parent, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())?;
            retry_on_intr(|| rustix::fs::fsync(&pfd))?;
            Ok(rustix::fs::open(path, flags, Mode::empty())?)
        }
        r => Ok(r?),
    }
}

/// What [`remove_superseded`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Deltas removed (their base is no longer a kept generation).
    pub removed: Vec<PathBuf>,
    /// Stale temp files removed (leftovers of a crashed delta write).
    pub temps: usize,
    /// `true` if some generation's footer could not be read: then no delta was removed (its
    /// base might be that file).
    pub kept_in_doubt: bool,
}

/// Removes the deltas whose base generation is no longer among `persister`'s generations
/// (their chain is superseded: its base left the kept set), and stale temp files. Call it
/// after [`TempFile::commit`](crate::persist::TempFile::commit) of a new base returned: the
/// persister removes an old base only after the new one is durable, so nothing is removed
/// before its replacement is. Deltas of a kept base stay (point-in-time restore, and the
/// fallback if the newest base is unreadable). Never run it while a [`DeltaWriter`] of the
/// same persister is alive (it would remove its temp file).
///
/// # Errors
///
/// I/O errors reading the directories or unlinking (other than `ENOENT`).
pub fn remove_superseded(persister: &Persister) -> Result<Cleanup, ChainError> {
    let dir_path = chain_dir(&persister.target());
    let dir = match open_chain_dir(&dir_path, false) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cleanup::default()),
        Err(e) => return Err(ChainError::io(e).at(&dir_path)),
    };
    let mut live = Vec::new();
    let mut out = Cleanup::default();
    for g in persister.generations()? {
        match crate::snapshot::read_footer_path(&g.path) {
            Ok(info) => live.push(info.meta.generation),
            Err(_) => out.kept_in_doubt = true,
        }
    }
    let names = dir_names(&dir).map_err(|e| ChainError::io(e).at(&dir_path))?;
    for name in names {
        let bytes = name.as_bytes();
        let remove = if bytes.starts_with(TEMP_PREFIX.as_bytes()) {
            out.temps += 1;
            true
        } else if let Some((generation, _)) = parse_delta_name(bytes) {
            let gone = !out.kept_in_doubt && !live.contains(&generation);
            if gone {
                out.removed.push(dir_path.join(&name));
            }
            gone
        } else {
            false
        };
        if remove {
            match rustix::fs::unlinkat(&dir, name.as_os_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(ChainError::io(e.into()).at(&dir_path.join(&name))),
            }
        }
    }
    out.removed.sort();
    Ok(out)
}

/// The highest generation `persister`'s state uses: the footer generation of the target and
/// of each kept generation (those whose footer is readable), and the base generation named by
/// each delta in the chain directory (a delta outlives its base until the cleanup, and a new
/// base of its generation would find it there). A new base must be above it: generations
/// never repeat (`docs/FORMAT.md`, footer). `None` for a state with none.
///
/// # Errors
///
/// I/O errors listing the target's directory or the chain directory.
pub fn highest_generation(persister: &Persister) -> Result<Option<u64>, ChainError> {
    let footers = persister
        .generations()?
        .into_iter()
        .filter_map(|g| crate::snapshot::read_footer_path(&g.path).ok())
        .map(|info| info.meta.generation);
    let dir_path = chain_dir(&persister.target());
    let names = match open_chain_dir(&dir_path, false) {
        Ok(dir) => dir_names(&dir).map_err(|e| ChainError::io(e).at(&dir_path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ChainError::io(e).at(&dir_path)),
    };
    let deltas = names
        .iter()
        .filter_map(|n| parse_delta_name(n.as_bytes()))
        .map(|(generation, _)| generation);
    Ok(footers.chain(deltas).max())
}
