//! Where a chain ends, and why: the one decision that `verify`, `inspect`, `restore` and the
//! host's restores share ([`ChainListing::check_points`]).
//!
//! A **point** is the base with its first `k` deltas applied. A link is sound when its footer,
//! run table and link to its parent are ([`ChainListing::load`] checks those), its data matches
//! its CRC, and the point it yields passes the image check
//! ([`check_image`](crate::snapshot::check_image): a queue's header and descriptors, a triple's
//! meta) — the check a restore runs before a region is used. The first link that is not sound
//! ends the chain, exactly as a CRC mismatch does: it is named with why
//! ([`ChainListing::stop`], [`ChainErrorKind::Image`] for a failed image check), and the point
//! before it is the chain's state. A base whose own image fails the check yields no point.
//!
//! Checking each point costs what the image check reads — the header page and the descriptor
//! ring (a triple's two meta pages) — read through a [`View`] of the base and the deltas
//! applied so far: every read is served from the newest link whose runs cover it. Nothing is
//! materialised; memory is the image check's own (64 KiB at a time). A host's delta carries
//! the meta pages itself (`meta_len`), so a point's meta is read from its own delta.

use std::cell::Cell;
use std::fs::File;
use std::io;

use super::error::{ChainError, ChainErrorKind};
use super::listing::{open_delta, out_of_fds, ChainListing, Checks, DeltaEntry};
use super::write::crc_of;
use crate::copy::read_full_at;
use crate::snapshot::{self, check_image_in, ImageBytes, SnapshotError, SnapshotInfo};

/// When [`ChainListing::check_points`] checks the deltas' data CRCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataCrc {
    /// Now: each delta's data is read once for its CRC before its point is checked
    /// (`verify`, `inspect`: nothing else reads the data).
    Now,
    /// By the restore that follows, which reads every byte anyway and ends the chain at a
    /// mismatch ([`restore_chain`](super::restore_chain), [`materialize`](super::materialize)).
    /// Here only a delta whose point fails the image check has its data CRC checked, so that
    /// the reason named is the one [`DataCrc::Now`] names (a corrupt delta is named corrupt,
    /// not "fails the image check").
    AtRestore,
}

/// Why checking the points stopped.
enum Stop {
    /// The link at this position (0-based in `deltas`) is not sound: the chain ends before it.
    At(usize, ChainError),
    /// The base is unusable, or the process cannot go on (out of file descriptors): no answer.
    Fail(ChainError),
}

impl ChainListing {
    /// Ends the chain at its first link that is not sound — the one decision `verify`,
    /// `inspect` and every restore share. A link is sound when its footer, table and link
    /// are (checked by [`load`](ChainListing::load)), its data matches its CRC (now or, with
    /// [`DataCrc::AtRestore`], by the restore), and the point it yields — the base with the
    /// deltas up to it applied — passes the image check
    /// ([`check_image`](crate::snapshot::check_image)), read through the links without being
    /// materialised (only the meta pages, 64 KiB at a time). Afterwards every point of `deltas` restores into an image that
    /// passes the image check, and `stop` names the first bad link and why. Reads each
    /// point's meta once; with [`DataCrc::Now`] also each delta's data once.
    ///
    /// # Errors
    ///
    /// [`ChainErrorKind::Base`] if the base cannot be opened or read or its own image fails
    /// the image check (when its image CRC does not match, that is the error named: use an
    /// older generation); `Io` if the process runs out of file descriptors (every delta is
    /// open during the check). A bad delta is no error: it ends the chain.
    pub fn check_points(&mut self, crc: DataCrc) -> Result<(), ChainError> {
        self.check_points_with(crc, Checks::ALL)
    }

    pub(crate) fn check_points_with(
        &mut self,
        crc: DataCrc,
        checks: Checks,
    ) -> Result<(), ChainError> {
        let base = snapshot::open(&self.base_path)?;
        let stop = self.first_unsound(&base, crc, checks);
        match stop {
            None => Ok(()),
            Some(Stop::At(j, e)) => {
                self.cut(j, e);
                Ok(())
            }
            Some(Stop::Fail(e)) => Err(e),
        }
    }

    /// The base's point, then each delta's in order, up to the first that is not sound.
    fn first_unsound(&self, base: &File, crc: DataCrc, checks: Checks) -> Option<Stop> {
        let info = self.base;
        let mut view = View::new(base, info.image_len);
        match view.check(&info) {
            Ok(()) => {}
            Err(Failed::Image(e)) => return Some(Stop::Fail(self.base_failure(base, *e))),
            Err(Failed::Read(_, e)) => {
                return Some(Stop::Fail((*e).at(&self.base_path).into()));
            }
        }
        for (j, d) in self.deltas.iter().enumerate() {
            let file = match open_delta(&d.path) {
                Ok(f) => f,
                Err(e) if out_of_fds(&e) => return Some(Stop::Fail(e)),
                Err(e) => return Some(Stop::At(j, e)),
            };
            if crc == DataCrc::Now && checks.data_crc {
                if let Err(e) = data_crc(&file, d) {
                    return Some(Stop::At(j, e));
                }
            }
            view.push(file, d);
            match view.check(&info) {
                Ok(()) => {}
                Err(Failed::Read(None, e)) => {
                    return Some(Stop::Fail((*e).at(&self.base_path).into()));
                }
                Err(Failed::Read(Some(i), e)) => {
                    let e = ChainError::io((*e).into()).at(&self.deltas[i].path);
                    return Some(Stop::At(i, e));
                }
                Err(Failed::Image(e)) => {
                    if crc == DataCrc::AtRestore && checks.data_crc {
                        if let Err(e) = data_crc(view.file(j), d) {
                            return Some(Stop::At(j, e));
                        }
                    }
                    let e = ChainError::from(ChainErrorKind::Image(e)).at(&d.path);
                    return Some(Stop::At(j, e));
                }
            }
        }
        None
    }

    /// The error for a base whose image fails the check: its image CRC mismatch if it has
    /// one (the base is corrupt), else what the check found; both name the base.
    fn base_failure(&self, base: &File, e: SnapshotError) -> ChainError {
        let info = &self.base;
        let e = match snapshot::image_crc32c(base, info.image_len) {
            Ok(computed) if computed != info.image_crc => {
                snapshot::SnapshotErrorKind::ImageChecksum {
                    stored: info.image_crc,
                    computed,
                }
                .into()
            }
            Ok(_) => e,
            Err(io) => SnapshotError::io(io),
        };
        e.at(&self.base_path).into()
    }
}

/// Checks delta `d`'s data against its data CRC (one streaming read); errors name it.
fn data_crc(file: &File, d: &DeltaEntry) -> Result<(), ChainError> {
    let f = &d.footer;
    let computed =
        crc_of(file, f.table_len(), f.data_len).map_err(|e| ChainError::io(e).at(&d.path))?;
    if computed != f.data_crc {
        let kind = ChainErrorKind::DataChecksum {
            stored: f.data_crc,
            computed,
        };
        return Err(ChainError::from(kind).at(&d.path));
    }
    Ok(())
}

/// Why a point's check failed (boxed: a `SnapshotError` is large, and this is the rare path).
enum Failed {
    /// The image check found a problem (the point is not restorable).
    Image(Box<SnapshotError>),
    /// Reading the base (`None`) or delta `Some(j)` failed.
    Read(Option<usize>, Box<SnapshotError>),
}

/// A point of a chain as [`ImageBytes`]: the base with the pushed deltas laid over it, read
/// without being written anywhere.
struct View<'a> {
    base: &'a File,
    image_len: u64,
    /// The deltas applied, oldest first (their runs validated: ascending, inside the image).
    layers: Vec<Layer<'a>>,
    /// Which file the last failed read was of (`Some(None)`: the base), for [`View::check`].
    failed: Cell<Option<Option<usize>>>,
}

/// One delta of a [`View`].
struct Layer<'a> {
    file: File,
    d: &'a DeltaEntry,
    /// File offset of each run's data (the table, then the runs' data back to back).
    data_at: Vec<u64>,
}

impl<'a> View<'a> {
    fn new(base: &'a File, image_len: u64) -> Self {
        View {
            base,
            image_len,
            layers: Vec::new(),
            failed: Cell::new(None),
        }
    }

    /// Lays delta `d` (open as `file`) over the point.
    fn push(&mut self, file: File, d: &'a DeltaEntry) {
        let mut at = d.footer.table_len();
        let data_at = d
            .runs
            .iter()
            .map(|r| {
                let here = at;
                at = at.saturating_add(r.len);
                here
            })
            .collect();
        self.layers.push(Layer { file, d, data_at });
    }

    /// The file of delta `j` (pushed).
    fn file(&self, j: usize) -> &File {
        &self.layers[j].file
    }

    /// The image check of the point, a read error told apart and attributed to its file.
    fn check(&self, info: &SnapshotInfo) -> Result<(), Failed> {
        self.failed.set(None);
        match check_image_in(self, info, |_, _| {}) {
            Ok(_) => Ok(()),
            Err(e) => match self.failed.take() {
                Some(link) => Err(Failed::Read(link, Box::new(e))),
                None => Err(Failed::Image(Box::new(e))),
            },
        }
    }

    /// Where image byte `pos` comes from — `Some((layer, run))` or the base — and up to where
    /// (at most `end`) that source holds: the newest layer covering `pos`, up to the end of
    /// its run or the start of a newer layer's next run.
    fn source(&self, pos: u64, end: u64) -> (Option<(usize, usize)>, u64) {
        let mut bound = end;
        for (li, l) in self.layers.iter().enumerate().rev() {
            let runs = &l.d.runs;
            let i = runs.partition_point(|r| r.offset <= pos);
            if let Some(r) = i.checked_sub(1).map(|k| &runs[k]).filter(|r| r.end() > pos) {
                return (Some((li, i - 1)), bound.min(r.end()));
            }
            if let Some(r) = runs.get(i) {
                bound = bound.min(r.offset);
            }
        }
        (None, bound)
    }
}

impl ImageBytes for View<'_> {
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.image_len.saturating_sub(at)) as usize;
        let end = at + n as u64;
        let mut done = 0;
        while done < n {
            let pos = at + done as u64;
            let (src, until) = self.source(pos, end);
            // `source` returns a bound above `pos`: runs are nonempty and `pos < end`.
            let len = (until - pos) as usize;
            let (file, file_at, link) = match src {
                Some((li, ri)) => {
                    let l = &self.layers[li];
                    let off = l.data_at[ri] + (pos - l.d.runs[ri].offset);
                    (&l.file, off, Some(li))
                }
                None => (self.base, pos, None),
            };
            let got =
                read_full_at(file, &mut buf[done..done + len], file_at).inspect_err(|_| {
                    self.failed.set(Some(link));
                })?;
            if got < len {
                self.failed.set(Some(link));
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += len;
        }
        Ok(n)
    }
}
