//! One triple-buffer snapshot of a live region: freeze, copy one buffer, meta, release, footer.
//!
//! ```text
//! frozen    = host.freeze(last_persisted)       (None: nothing newer was published → skip)
//! temp file = Persister::begin(), ftruncate to the region length (all holes)
//! copy the frozen buffer's byte range           (copy_extents: its data extents only)
//! meta      = frozen.image_meta (after the copy: it reads the live NEXT_SEQ hint)
//! check the meta with read_image, pwrite it at 0
//! release the freeze, validating the copy       (failed: the copy may be torn → drop)
//! append the footer                             (write_footer, with the image CRC)
//! ```
//!
//! [`take_triple`] runs these steps and hands back the temp file, complete but not yet synced:
//! the caller decides whether to [`commit`](TempFile::commit) it. The other buffers stay holes
//! in the image, so a snapshot costs one buffer, whatever the buffer count. The only buffer
//! read is one the host froze (core's [`Frozen`](shmsnap_core::triple::Frozen) is the only way to learn a buffer to copy),
//! and the copy is used only if the release succeeds, which proves the client did not take the
//! buffer back during the copy (the reclaim race of `shmsnap_core::triple`), so it is the
//! published state, whole. The release comes after the copy and the meta, before the footer.
//!
//! The caller attaches the [`TripleHost`] (which validates the layout once and undoes a dead
//! host's freezes); everything read from the region is hostile and goes through core.

use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use shmsnap_core::triple::{read_image, TripleError, TripleHost};
use shmsnap_core::WordMemory;

use crate::copy::{copy_extents, CopyStats};
use crate::memfd::Memfd;
use crate::persist::{Persister, TempFile};
use crate::snapshot::{write_footer, SnapshotInfo, SnapshotMeta};

/// What one triple snapshot attempt produced.
#[derive(Debug)]
#[must_use = "a written snapshot is persisted only by committing its temp file"]
pub enum TripleSnapshot<'p> {
    /// A complete snapshot (meta, the frozen buffer, holes elsewhere, footer) in a temp file,
    /// not yet synced: [`TempFile::commit`] persists it, dropping it discards it.
    Written {
        /// The temp file holding the snapshot.
        file: TempFile<'p>,
        /// What the attempt did.
        figures: TripleFigures,
    },
    /// Nothing was persisted; the reason says whether it is harmless.
    Skipped(TripleSkip),
}

/// Why an attempt persisted nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripleSkip {
    /// No READY buffer is newer than the last persisted seq.
    NothingNew {
        /// The newest READY seq seen (0: none).
        newest: u64,
    },
    /// The freeze lost its compare-exchange every time (the client kept reclaiming the
    /// scanned buffer): retry at the next snapshot.
    Contended {
        /// Freeze attempts made.
        attempts: u32,
    },
    /// The client took the frozen buffer back during the copy (the reclaim race of
    /// `shmsnap_core::triple`): the copy may be torn and was dropped. Part of the protocol.
    Reclaimed {
        /// The state word found.
        found: u64,
    },
    /// The frozen buffer's state word changed behind the host's back (another client or host
    /// writes state words): the copy may be torn and was dropped.
    ReleaseLost {
        /// The state word found.
        found: u64,
    },
}

impl TripleSkip {
    /// `true` if the skip is a protocol violation by someone else, not an ordinary skip.
    pub fn is_violation(&self) -> bool {
        matches!(self, TripleSkip::ReleaseLost { .. })
    }
}

impl std::fmt::Display for TripleSkip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TripleSkip::NothingNew { newest: 0 } => {
                f.write_str("the client has published nothing yet")
            }
            TripleSkip::NothingNew { newest } => write!(
                f,
                "nothing was published since the last snapshot (newest seq {newest})"
            ),
            TripleSkip::Contended { attempts } => write!(
                f,
                "could not freeze the newest buffer in {attempts} attempts; retrying at the next snapshot"
            ),
            TripleSkip::Reclaimed { found } => write!(
                f,
                "the client took the frozen buffer back during the copy (state word \
                 {found:#018x}); the copy was dropped, retrying at the next snapshot"
            ),
            TripleSkip::ReleaseLost { found } => write!(
                f,
                "the frozen buffer's state word became {found:#018x} during the copy (another \
                 client or host writes the region's state words); the copy was dropped"
            ),
        }
    }
}

/// Figures of a written triple snapshot.
#[derive(Debug, Clone, Copy)]
pub struct TripleFigures {
    /// The buffer copied.
    pub buffer: u64,
    /// The seq of the state it holds.
    pub seq: u64,
    /// The buffer size B.
    pub buffer_size: u64,
    /// What the copy of the buffer moved.
    pub copy: CopyStats,
    /// Time of the buffer copy.
    pub copy_time: Duration,
    /// Time of meta, release and footer (with the image CRC).
    pub validate_time: Duration,
    /// The footer written.
    pub info: SnapshotInfo,
}

/// Takes one triple snapshot of `memfd` (the region `host` is attached to) into a new temp
/// file of `persister`, with `meta` in its footer, if a state newer than `last_persisted` was
/// published; see the [module docs](self) for the steps. `scratch` holds the image meta
/// between attempts.
///
/// # Errors
///
/// I/O errors of the temp file, the copy or the footer; `Other` for a core error the host
/// cannot get into (a meta the core wrote that its own check refuses). No temp file is left,
/// and the freeze is released on every path.
pub fn take_triple<'p, M: WordMemory + ?Sized>(
    memfd: &Memfd,
    host: &TripleHost<'_, M>,
    persister: &'p Persister,
    meta: SnapshotMeta,
    last_persisted: u64,
    scratch: &mut Vec<u8>,
) -> io::Result<TripleSnapshot<'p>> {
    let frozen = match host.freeze(last_persisted) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let newest = host.newest_ready();
            return Ok(TripleSnapshot::Skipped(TripleSkip::NothingNew { newest }));
        }
        Err(TripleError::Contended { attempts }) => {
            return Ok(TripleSnapshot::Skipped(TripleSkip::Contended { attempts }))
        }
        Err(e) => return Err(io::Error::other(e)),
    };
    let layout = *host.layout();
    let len = memfd.len()?;
    if layout.region_len > len {
        return Err(io::Error::other(format!(
            "the region shrank to {len} bytes below its layout's {} bytes",
            layout.region_len
        )));
    }
    let tmp = persister.begin()?;
    rustix::io::retry_on_intr(|| rustix::fs::ftruncate(tmp.file(), len))?;
    let t = Instant::now();
    let copy = copy_extents(memfd, tmp.file(), frozen.byte_range())?;
    let copy_time = t.elapsed();
    let t = Instant::now();
    scratch.resize(layout.meta_len() as usize, 0);
    frozen.image_meta(scratch).map_err(io::Error::other)?;
    // The image must be one that verify and restore accept: core's own check.
    read_image(scratch, len).map_err(io::Error::other)?;
    tmp.file().write_all_at(scratch, 0)?;
    let (buffer, seq) = (frozen.buffer(), frozen.seq());
    match frozen.release() {
        Ok(()) => {}
        Err(TripleError::Reclaimed { found }) => {
            return Ok(TripleSnapshot::Skipped(TripleSkip::Reclaimed { found }))
        }
        Err(TripleError::ReleaseLost { found }) => {
            return Ok(TripleSnapshot::Skipped(TripleSkip::ReleaseLost { found }))
        }
        Err(e) => return Err(io::Error::other(e)),
    }
    let info = write_footer(tmp.file(), len, meta)?;
    Ok(TripleSnapshot::Written {
        file: tmp,
        figures: TripleFigures {
            buffer,
            seq,
            buffer_size: layout.buffer_size,
            copy,
            copy_time,
            validate_time: t.elapsed(),
            info,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Mapping, Protection};
    use crate::snapshot::{restore_into, verify_path};
    use shmsnap_core::triple::{TripleClient, TripleRequest};
    use std::sync::atomic::Ordering;

    const REQUEST: TripleRequest = TripleRequest {
        buffers: 4,
        buffer_size: 4096 * 4,
    };

    fn meta(generation: u64) -> SnapshotMeta {
        SnapshotMeta {
            strategy: 2,
            generation,
            unix_time_ns: 0,
        }
    }

    fn region(len: u64) -> (Memfd, Mapping) {
        let memfd = Memfd::create("take-triple", len).unwrap();
        memfd.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        (memfd, map)
    }

    #[test]
    fn the_frozen_buffer_alone_is_persisted_and_restores_as_the_newest_state() {
        let dir = tempfile::tempdir().unwrap();
        let persister = Persister::new(&dir.path().join("t.snap"), 1).unwrap();
        let (memfd, map) = region(1 << 20);
        let mut client =
            TripleClient::open_or_init(map.words(), REQUEST, shmsnap_testkit::CLIENT).unwrap();
        let host = TripleHost::attach(map.words()).unwrap();
        let mut scratch = Vec::new();

        let got = take_triple(&memfd, &host, &persister, meta(1), 0, &mut scratch).unwrap();
        assert!(matches!(
            got,
            TripleSnapshot::Skipped(TripleSkip::NothingNew { newest: 0 })
        ));
        client.publish(&[1u8; 4096 * 4]).unwrap();
        let seq = client.publish(&[7u8; 100]).unwrap();
        let TripleSnapshot::Written { file, figures } =
            take_triple(&memfd, &host, &persister, meta(1), 0, &mut scratch).unwrap()
        else {
            panic!("a published state must be written");
        };
        assert_eq!(figures.seq, seq);
        assert!(figures.copy.bytes <= REQUEST.buffer_size, "{figures:?}");
        file.commit().unwrap();
        let again = take_triple(&memfd, &host, &persister, meta(2), seq, &mut scratch).unwrap();
        assert!(
            matches!(again, TripleSnapshot::Skipped(TripleSkip::NothingNew { newest }) if newest == seq)
        );

        verify_path(&persister.target()).unwrap();
        let (fresh, fresh_map) = region(1 << 20);
        restore_into(std::fs::File::open(persister.target()).unwrap(), &fresh).unwrap();
        let back = TripleClient::attach(fresh_map.words(), shmsnap_testkit::CLIENT).unwrap();
        let mut out = [0u8; 101];
        assert_eq!(back.read_newest(0, &mut out).unwrap(), Some(seq));
        assert_eq!(&out[..100], &[7u8; 100]);
        // The second publication went to another buffer than the first (whose 1s are not in
        // the image: only the frozen buffer is copied).
        assert_eq!(out[100], 0);
        assert!(back.next_seq() > seq, "seqs never repeat after a restore");
    }

    #[test]
    fn hostile_state_words_never_yield_an_image_verify_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let persister = Persister::new(&dir.path().join("h.snap"), 0).unwrap();
        let (memfd, map) = region(1 << 20);
        let mut client =
            TripleClient::open_or_init(map.words(), REQUEST, shmsnap_testkit::CLIENT).unwrap();
        client.publish(&[3u8; 64]).unwrap();
        let layout = *client.layout();
        let mut scratch = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut written = 0;
        for round in 0..200u64 {
            let host = TripleHost::attach(map.words()).unwrap();
            for i in 0..layout.buffers {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = match x % 4 {
                    0 => x,
                    1 => (2 << 62) | (x % 50),
                    2 => (3 << 62) | (x % 5),
                    _ => 0,
                };
                map.words()[layout.state_word(i)].store(v, Ordering::Relaxed);
                map.words()[layout.seq_word(i)].store(x % 60, Ordering::Relaxed);
            }
            let got = take_triple(&memfd, &host, &persister, meta(round + 1), 0, &mut scratch);
            if let Ok(TripleSnapshot::Written { file, .. }) = got {
                file.commit().unwrap();
                verify_path(&persister.target()).unwrap();
                written += 1;
            }
        }
        assert!(written > 0, "some rounds have a READY buffer to persist");
    }
}
