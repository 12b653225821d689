//! One queue snapshot of a live region: the order of the pre/copy/post sandwich in one place.
//!
//! ```text
//! temp file    = Persister::begin()               (before pre: outside the sandwich)
//! hints_before = live hints                       (the caller's "changed since?" mark)
//! pre          = PreCopy::read: valid descriptors of the live region (a stamp)
//! sparse copy of the memfd into the temp file     (copy_sparse)
//! finish       = Acquire fence, post = valid descriptors again, live next_seq,
//!                retain: keep pre ∩ post in the copied meta pages, fix the hints
//! pwrite the meta pages back, append the footer   (write_footer)
//! ```
//!
//! [`take_queue`] runs these steps and hands back the temp file, complete but not yet synced:
//! the caller decides whether to [`commit`](TempFile::commit) it (and counts the generation).
//! Nothing is written to the target here; an attempt that starves or fails drops its temp file.
//!
//! The order is enforced by core's types: `post` can only be read by consuming the
//! [`PreCopy`] stamp that `pre` produced, and [`PreCopy::finish`] does the fence, the `post`
//! read, the live `next_seq` read and `retain` itself (DESIGN §5.3).

use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use shmsnap_core::{Descriptor, Hints, LayoutError, PreCopy, Region, Retained};

use crate::copy::{copy_sparse, CopyStats};
use crate::mapping::Mapping;
use crate::memfd::Memfd;
use crate::persist::{Persister, TempFile};
use crate::snapshot::{write_footer, SnapshotInfo, SnapshotMeta};

/// Buffers one snapshot attempt needs, kept between attempts so the host does not allocate
/// per snapshot.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Descriptors before the copy (resized to the region's entry count).
    pub(crate) pre: Vec<Descriptor>,
    /// Descriptors after the copy (same length as `pre`).
    pub(crate) post: Vec<Descriptor>,
    /// The copied image's header and descriptor ring (`Layout::meta_len` bytes).
    pub(crate) meta: Vec<u8>,
    /// The copy buffer of an incremental snapshot (1 MiB once used).
    pub(crate) copy: Vec<u8>,
}

/// What one queue snapshot attempt produced.
// One value per snapshot, moved once: boxing the figures would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[must_use = "a written snapshot is persisted only by committing its temp file"]
pub enum QueueSnapshot<'p> {
    /// A complete snapshot (image with retained descriptors, footer) in a temp file, not yet
    /// synced: [`TempFile::commit`] persists it, dropping it discards it.
    Written {
        /// The temp file holding the snapshot.
        file: TempFile<'p>,
        /// What the attempt did.
        figures: Figures,
    },
    /// Nothing was copied, for a harmless reason.
    Skipped(Skip),
    /// Entries existed before the copy but none survived it; nothing was kept.
    Starved(Starved),
}

/// Why an attempt copied nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The client has not configured the region yet (no magic in the header).
    Unconfigured,
    /// The region's header is not valid.
    InvalidHeader(LayoutError),
    /// The region is configured but holds no committed entry; `hints` were read before the
    /// descriptors (the state to remember as "already handled").
    NoEntries {
        /// The live hints before the descriptors were read.
        hints: Hints,
    },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Unconfigured => f.write_str("the client has not configured the region yet"),
            Skip::InvalidHeader(e) => write!(f, "the region header is invalid ({e})"),
            Skip::NoEntries { .. } => f.write_str("the region holds no committed entry"),
        }
    }
}

/// Figures of a written snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Live hints read before the descriptors: the region's state this snapshot covers.
    pub hints_before: Hints,
    /// What the sparse copy moved.
    pub copy: CopyStats,
    /// Time of the sparse copy.
    pub copy_time: Duration,
    /// Time of post read, retain, meta write-back and footer (with the image CRC).
    pub validate_time: Duration,
    /// What `retain` kept.
    pub retained: Retained,
    /// The footer written.
    pub info: SnapshotInfo,
}

/// Figures of a starved attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Starved {
    /// Time of the sparse copy.
    pub copy_time: Duration,
    /// Commits made during the copy (live `next_seq` after minus before).
    pub commits_during_copy: u64,
    /// Valid entries before the copy.
    pub pre: u64,
}

/// Takes one queue snapshot of `memfd` (seen through `map`, a mapping of the same memfd)
/// into a new temp file of `persister`, with `meta` in its footer; see the
/// [module docs](self) for the order of the steps.
///
/// The returned [`QueueSnapshot::Written`] holds the temp file uncommitted.
///
/// # Errors
///
/// I/O errors of the temp file, the copy or the footer (naming what failed); a core
/// [`RetainError`](shmsnap_core::RetainError) as `Other` if the copied image's header differs
/// from the live one (the region was re-initialised during the copy). No temp file is left.
pub fn take_queue<'p>(
    memfd: &Memfd,
    map: &Mapping,
    persister: &'p Persister,
    meta: SnapshotMeta,
    scratch: &mut Scratch,
) -> io::Result<QueueSnapshot<'p>> {
    let region = match open_region(map, scratch) {
        Ok(r) => r,
        Err(skip) => return Ok(QueueSnapshot::Skipped(skip)),
    };
    let Scratch {
        pre,
        post,
        meta: image_meta,
        ..
    } = scratch;
    let len = memfd.len()?;

    // The temp file first: everything between `pre` and `post` is time in which the writer
    // may overwrite every entry of `pre` (a starved attempt), and creating a file in the
    // state directory is a file-system operation that can wait behind others (issue 27,
    // acknowledgements under load). Only the copy belongs inside the sandwich; a skipped
    // attempt drops the file (its guard removes it).
    let tmp = persister.begin()?;
    let hints_before = region.hints();
    let stamp = PreCopy::read(&region, pre, post).map_err(io::Error::other)?;
    if stamp.pre().valid() == 0 {
        return Ok(QueueSnapshot::Skipped(Skip::NoEntries {
            hints: hints_before,
        }));
    }
    let t = Instant::now();
    let copy = copy_sparse(memfd, tmp.file(), len)?;
    let copy_time = t.elapsed();
    let t = Instant::now();
    tmp.file().read_exact_at(image_meta, 0)?;
    let retained = stamp.finish(image_meta).map_err(io::Error::other)?;

    if retained.is_starved() {
        return Ok(QueueSnapshot::Starved(Starved {
            copy_time,
            commits_during_copy: retained.live_next_seq.saturating_sub(hints_before.next_seq),
            pre: retained.pre,
        }));
    }
    tmp.file().write_all_at(image_meta, 0)?;
    let info = write_footer(tmp.file(), len, meta)?;
    Ok(QueueSnapshot::Written {
        file: tmp,
        figures: Figures {
            hints_before,
            copy,
            copy_time,
            validate_time: t.elapsed(),
            retained,
            info,
        },
    })
}

/// Opens the live region's queue and sizes `scratch` for it: the first step of every queue
/// snapshot, full ([`take_queue`]) or incremental
/// ([`take_delta`](crate::take_delta::take_delta)).
///
/// # Errors
///
/// [`Skip::Unconfigured`] / [`Skip::InvalidHeader`]: nothing to copy.
pub(crate) fn open_region<'m>(
    map: &'m Mapping,
    scratch: &mut Scratch,
) -> Result<Region<'m, [std::sync::atomic::AtomicU64]>, Skip> {
    let region = match Region::open(map.words()) {
        Ok(r) => r,
        Err(LayoutError::Unconfigured) => return Err(Skip::Unconfigured),
        Err(e) => return Err(Skip::InvalidHeader(e)),
    };
    let layout = region.layout();
    scratch
        .pre
        .resize(layout.entries as usize, Descriptor::EMPTY);
    scratch
        .post
        .resize(layout.entries as usize, Descriptor::EMPTY);
    scratch.meta.resize(layout.meta_len() as usize, 0);
    Ok(region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Protection;
    use crate::snapshot::verify_path;
    use shmsnap_core::{LayoutRequest, Writer};

    const REQUEST: LayoutRequest = LayoutRequest {
        entries: 8,
        data_size: 4096,
    };

    fn meta(generation: u64) -> SnapshotMeta {
        SnapshotMeta {
            strategy: shmsnap_core::Strategy::Queue.code(),
            generation,
            unix_time_ns: 0,
        }
    }

    #[test]
    fn a_quiet_region_keeps_every_entry_and_persists_a_sound_file() {
        let dir = tempfile::tempdir().unwrap();
        let persister = Persister::new(&dir.path().join("q.snap"), 1).unwrap();
        let memfd = Memfd::create("take", 1 << 20).unwrap();
        memfd.seal_against_shrink().unwrap();
        let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        let ro = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
        let mut scratch = Scratch::default();

        let got = take_queue(&memfd, &ro, &persister, meta(1), &mut scratch).unwrap();
        assert!(matches!(got, QueueSnapshot::Skipped(Skip::Unconfigured)));
        let mut w = Writer::open_or_init(rw.words(), REQUEST, shmsnap_testkit::CLIENT).unwrap();
        let got = take_queue(&memfd, &ro, &persister, meta(1), &mut scratch).unwrap();
        assert!(
            matches!(got, QueueSnapshot::Skipped(Skip::NoEntries { .. })),
            "{got:?}"
        );
        // The temp file is made before `pre`; a skipped attempt leaves none behind.
        drop(got);
        let temps: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp"))
            .collect();
        assert!(temps.is_empty(), "left behind: {temps:?}");
        for i in 0..3u64 {
            w.commit(&i.to_le_bytes()).unwrap();
        }
        let QueueSnapshot::Written { file, figures } =
            take_queue(&memfd, &ro, &persister, meta(1), &mut scratch).unwrap()
        else {
            panic!("a quiet region must be written");
        };
        assert_eq!(figures.retained.kept, 3);
        assert_eq!(figures.retained.dropped(), 0);
        assert_eq!(figures.info.meta, meta(1));
        assert!(
            !persister.target().exists(),
            "nothing persisted before commit"
        );
        file.commit().unwrap();
        let info = verify_path(&persister.target()).unwrap();
        assert_eq!(info.image_len, 1 << 20);
        assert_eq!(info.meta.generation, 1);
    }
}
