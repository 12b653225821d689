//! Snapshot files: open without blocking, write, verify, restore.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use shmsnap_core::Descriptor;

use super::crc::{copy_crc32c, image_crc32c};
use super::error::{SnapshotError, SnapshotErrorKind};
use super::footer::{
    decode_footer, encode_footer, image_len_ok, SnapshotInfo, SnapshotMeta, FOOTER_LEN,
    FOOTER_VERSION,
};
use super::image::{check_image, ImageSummary};
use crate::copy::{copy_sparse, file_len, read_full_at, write_all_at, CopyStats};
use crate::memfd::Memfd;

/// `open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)` then `fstat`—opens a snapshot file for
/// reading, refusing anything but a regular file without blocking or reading it.
///
/// `O_NONBLOCK` makes the open of a FIFO return at once (a plain open waits for a writer,
/// forever); it has no effect on a regular file. Symlinks are followed: reading through a link
/// to a regular file is harmless, and the type checked is the target's.
///
/// # References
///  - [Linux `open`](https://man7.org/linux/man-pages/man2/open.2.html)
///  - [Linux `fstat`](https://man7.org/linux/man-pages/man2/fstat.2.html)
///
/// # Errors
///
/// [`SnapshotErrorKind::Io`] if it cannot be opened or stat'ed,
/// [`SnapshotErrorKind::NotRegularFile`] for a FIFO, device, directory or socket; the error
/// names `path`.
pub fn open(path: &Path) -> Result<File, SnapshotError> {
    let fd = rustix::io::retry_on_intr(|| {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })
    .map_err(|e| SnapshotError::io(e.into()).at(path))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| SnapshotError::io(e.into()).at(path))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(File::from(fd)),
        other => {
            let file_type = file_type_name(other);
            Err(SnapshotError::from(SnapshotErrorKind::NotRegularFile { file_type }).at(path))
        }
    }
}

/// A file type as words, for errors ("FIFO", "symbolic link", ...).
pub(crate) fn file_type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Fifo => "FIFO",
        FileType::Directory => "directory",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        FileType::Symlink => "symbolic link",
        _ => "file of unknown type",
    }
}

/// Writes the footer for bytes `0..image_len` of `file` (already holding the image): computes
/// the image CRC from `file` itself (so it covers what is really in the file), writes the
/// footer at `image_len` and truncates the file right after it.
///
/// # References
///  - [Linux `pwrite`](https://man7.org/linux/man-pages/man2/pwrite.2.html)
///  - [Linux `ftruncate`](https://man7.org/linux/man-pages/man2/ftruncate.2.html)
///
/// # Errors
///
/// [`SnapshotErrorKind::ImageLength`] (nothing written) if `image_len` is not a nonzero
/// multiple of 8, since [`read_footer`] would refuse the file; [`SnapshotErrorKind::Io`]
/// (`UnexpectedEof` if the file is shorter than `image_len`; `ENOSPC`, `EIO`, ...). Without a
/// path: name the file with [`SnapshotError::at`].
pub fn write_footer(
    file: impl AsFd,
    image_len: u64,
    meta: SnapshotMeta,
) -> Result<SnapshotInfo, SnapshotError> {
    if !image_len_ok(image_len) {
        return Err(SnapshotErrorKind::ImageLength { image_len }.into());
    }
    let file = file.as_fd();
    let image_crc = image_crc32c(file, image_len).map_err(SnapshotError::io)?;
    let footer = encode_footer(image_len, meta, image_crc);
    write_all_at(file, &footer, image_len).map_err(SnapshotError::io)?;
    rustix::io::retry_on_intr(|| rustix::fs::ftruncate(file, image_len + FOOTER_LEN as u64))
        .map_err(|e| SnapshotError::io(e.into()))?;
    Ok(SnapshotInfo {
        version: FOOTER_VERSION,
        image_len,
        meta,
        image_crc,
    })
}

/// Copies bytes `0..len` of `region` sparsely into `file` (see [`copy_sparse`]) and appends
/// the footer ([`write_footer`]): a complete snapshot, not yet synced.
///
/// # Errors
///
/// As [`write_footer`] (checked before anything is copied), and [`copy_sparse`]'s errors as
/// [`SnapshotErrorKind::Io`]. Without a path: name the file with [`SnapshotError::at`].
pub fn write_snapshot(
    region: impl AsFd,
    file: impl AsFd,
    len: u64,
    meta: SnapshotMeta,
) -> Result<(SnapshotInfo, CopyStats), SnapshotError> {
    if !image_len_ok(len) {
        return Err(SnapshotErrorKind::ImageLength { image_len: len }.into());
    }
    let stats = copy_sparse(region, file.as_fd(), len).map_err(SnapshotError::io)?;
    let info = write_footer(file, len, meta)?;
    Ok((info, stats))
}

/// Reads and checks everything of a snapshot file's footer: length, magic, footer CRC,
/// version, image length (a nonzero multiple of 8, equal to the bytes before the footer) — the
/// cheap part of [`verify`], e.g. to size a region before [`restore_into`] verifies the whole
/// file. Reads 56 bytes.
///
/// # Errors
///
/// [`SnapshotErrorKind::Truncated`], `BadMagic`, `FooterChecksum`, `FutureVersion`,
/// `ImageLength`, `ImageLengthMismatch`, or `Io` (without a path; [`read_footer_path`] adds
/// it).
pub fn read_footer(file: impl AsFd) -> Result<SnapshotInfo, SnapshotError> {
    let file = file.as_fd();
    let len = file_len(file).map_err(SnapshotError::io)?;
    let flen = FOOTER_LEN as u64;
    if len < flen {
        return Err(SnapshotErrorKind::Truncated { len, needed: flen }.into());
    }
    let mut b = [0u8; FOOTER_LEN];
    let got = read_full_at(file, &mut b, len - flen).map_err(SnapshotError::io)?;
    if got < FOOTER_LEN {
        return Err(SnapshotErrorKind::Truncated {
            len: len - flen + got as u64,
            needed: len,
        }
        .into());
    }
    let info = decode_footer(&b)?;
    if !image_len_ok(info.image_len) {
        return Err(SnapshotErrorKind::ImageLength {
            image_len: info.image_len,
        }
        .into());
    }
    let body = len - flen;
    if body < info.image_len {
        let needed = info.image_len.saturating_add(flen);
        return Err(SnapshotErrorKind::Truncated { len, needed }.into());
    }
    if body > info.image_len {
        return Err(SnapshotErrorKind::ImageLengthMismatch {
            file: body,
            footer: info.image_len,
        }
        .into());
    }
    Ok(info)
}

/// [`open`]s `path` and [`read_footer`]s it; errors name the file.
///
/// # Errors
///
/// As [`open`] and [`read_footer`].
pub fn read_footer_path(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    read_footer(open(path)?).map_err(|e| e.at(path))
}

/// Checks a snapshot file completely without changing anything: the footer
/// ([`read_footer`]), the image CRC, then the image itself ([`check_image`]: the region header
/// and descriptors of a queue image). A file that passes restores into a region a client can
/// attach to.
///
/// Memory stays bounded whatever the file's size: the CRC reads at most
/// [`CRC_CHUNK`](super::CRC_CHUNK) bytes at a time, the descriptor walk
/// [`DESCRIPTOR_CHUNK_SLOTS`](super::DESCRIPTOR_CHUNK_SLOTS) descriptors.
///
/// # Errors
///
/// A [`SnapshotError`] saying what is wrong (without a path; [`verify_path`] adds it).
pub fn verify(file: impl AsFd) -> Result<SnapshotInfo, SnapshotError> {
    verify_entries(file, |_, _| {}).map(|(info, _)| info)
}

/// [`verify`], also returning what [`check_image`] found and calling `on_entry(slot,
/// descriptor)` for each valid entry of a queue image (in slot order, during the one walk of
/// the ring), e.g. to list entries without a second pass.
///
/// # Errors
///
/// As [`verify`].
pub fn verify_entries(
    file: impl AsFd,
    on_entry: impl FnMut(u64, Descriptor),
) -> Result<(SnapshotInfo, ImageSummary), SnapshotError> {
    let file = file.as_fd();
    let info = read_footer(file)?;
    let computed = image_crc32c(file, info.image_len).map_err(SnapshotError::io)?;
    if computed != info.image_crc {
        return Err(SnapshotErrorKind::ImageChecksum {
            stored: info.image_crc,
            computed,
        }
        .into());
    }
    let summary = check_image(file, &info, on_entry)?;
    Ok((info, summary))
}

/// [`open`]s `path` and [`verify`]s it; errors name the file.
///
/// # Errors
///
/// As [`open`] and [`verify`].
pub fn verify_path(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    verify(open(path)?).map_err(|e| e.at(path))
}

/// Restores `snapshot` into `region` (whose previous content in `0..region.len()` is
/// discarded; the region is never shrunk), applying only a snapshot that passes every check
/// of [`verify`]. Run it before any client maps the region: a mapping would see the content
/// change under it.
///
/// The footer is checked and the region's size compared before the region is touched. Then
/// one pass over the image's data extents reads each chunk once, CRCs it and writes those same
/// bytes into the emptied region (no second read of the file, as the chain restore does); the
/// image CRC is compared and [`check_image`] runs on the bytes now in the region. If either
/// fails (or the copy does), the region is emptied again (all holes, reading as zeros) before
/// the error is returned: a refused snapshot leaves nothing applied, and an accepted one is
/// exactly the bytes that were verified.
///
/// An image *smaller* than the region is accepted (the rest of the region reads as zeros);
/// a host that requires equal sizes compares [`SnapshotInfo::image_len`] from [`verify`] first.
///
/// # Errors
///
/// Any [`verify`] error, in the same order; [`SnapshotErrorKind::RegionTooSmall`] for a
/// file `verify` accepts (the region untouched, as for every footer error); [`SnapshotErrorKind::Io`] if the copy fails. After
/// an error past the footer the region is empty; should emptying it fail as well, the error
/// is an `Io` error saying the region still holds unverified bytes: drop the region. Without
/// a path ([`restore_path`] adds it).
pub fn restore_into(
    snapshot: impl AsFd,
    region: &Memfd,
) -> Result<(SnapshotInfo, CopyStats), SnapshotError> {
    let snapshot = snapshot.as_fd();
    let info = read_footer(snapshot)?;
    let region_len = region.len().map_err(SnapshotError::io)?;
    if info.image_len > region_len {
        // Refused either way; a corrupt file is reported as such first, as by `verify`.
        verify(snapshot)?;
        return Err(SnapshotErrorKind::RegionTooSmall {
            image: info.image_len,
            region: region_len,
        }
        .into());
    }
    match apply_verified(snapshot, region, &info) {
        Ok(stats) => Ok((info, stats)),
        Err(e) => match region.clear() {
            Ok(()) => Err(e),
            Err(d) => Err(SnapshotError::io(io::Error::other(format!(
                "{e}; emptying the region afterwards failed too ({d}): it holds unverified \
                 bytes, drop it"
            )))),
        },
    }
}

/// The part of [`restore_into`] that writes `region`: empty it, copy the image while
/// computing its CRC, compare the CRC, check the image as now in the region. On `Err` the
/// region holds unverified bytes: the caller empties it.
fn apply_verified(
    snapshot: BorrowedFd<'_>,
    region: &Memfd,
    info: &SnapshotInfo,
) -> Result<CopyStats, SnapshotError> {
    region.clear().map_err(SnapshotError::io)?;
    let (computed, stats) =
        copy_crc32c(snapshot, region.as_fd(), info.image_len).map_err(SnapshotError::io)?;
    if computed != info.image_crc {
        return Err(SnapshotErrorKind::ImageChecksum {
            stored: info.image_crc,
            computed,
        }
        .into());
    }
    check_image(region, info, |_, _| {})?;
    Ok(stats)
}

/// [`open`]s `path` and [`restore_into`]s `region`; errors name the file.
///
/// # Errors
///
/// As [`open`] and [`restore_into`].
pub fn restore_path(
    path: &Path,
    region: &Memfd,
) -> Result<(SnapshotInfo, CopyStats), SnapshotError> {
    restore_into(open(path)?, region).map_err(|e| e.at(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::footer::encode_footer_version;
    use proptest::prelude::*;
    use std::io::Write;

    /// The exit strategy's metadata: the image is opaque, footer and CRC are all that count.
    const META: SnapshotMeta = SnapshotMeta {
        strategy: shmsnap_core::Strategy::Exit.code(),
        generation: 7,
        unix_time_ns: 1_700_000_000_000_000_000,
    };

    fn region_with(bytes: &[u8], len: u64) -> Memfd {
        let m = Memfd::create("r", len).unwrap();
        write_all_at(&m, bytes, 0).unwrap();
        m
    }

    /// `v` cut to a nonzero multiple of 8 bytes (a restorable image length).
    fn whole_words(mut v: Vec<u8>) -> Vec<u8> {
        v.truncate(v.len() / 8 * 8);
        if v.is_empty() {
            v.extend_from_slice(b"8 bytes!");
        }
        v
    }

    fn snapshot_bytes(image: &[u8]) -> Vec<u8> {
        let m = region_with(image, image.len() as u64);
        let f = Memfd::create("f", 0).unwrap();
        write_snapshot(&m, &f, image.len() as u64, META).unwrap();
        let n = file_len(&f).unwrap() as usize;
        let mut v = vec![0u8; n];
        read_full_at(&f, &mut v, 0).unwrap();
        v
    }

    fn check(bytes: &[u8]) -> Result<SnapshotInfo, SnapshotErrorKind> {
        let f = Memfd::create("c", 0).unwrap();
        write_all_at(&f, bytes, 0).unwrap();
        verify(&f).map_err(SnapshotError::into_kind)
    }

    #[test]
    fn written_snapshot_verifies_and_restores_on_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let m = region_with(b"hello region", 1 << 16);
        let f = std::fs::File::create_new(&path).unwrap();
        let (info, stats) = write_snapshot(&m, &f, 1 << 16, META).unwrap();
        assert_eq!(stats.extents, 1);
        assert_eq!(file_len(&f).unwrap(), (1 << 16) + FOOTER_LEN as u64);
        assert_eq!(verify_path(&path).unwrap(), info);
        assert_eq!(info.meta, META);

        let back = Memfd::create("b", 1 << 17).unwrap();
        write_all_at(&back, &[0xff; 1 << 17], 0).unwrap(); // stale content must vanish
        back.seal_against_shrink().unwrap();
        restore_path(&path, &back).unwrap();
        assert_eq!(image_crc32c(&back, 1 << 16).unwrap(), info.image_crc);
        let mut tail = vec![1u8; 1 << 16];
        read_full_at(&back, &mut tail, 1 << 16).unwrap();
        assert!(
            tail.iter().all(|&b| b == 0),
            "past the image the region is zero"
        );

        let small = Memfd::create("s", 1 << 15).unwrap();
        let e = restore_path(&path, &small).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                SnapshotErrorKind::RegionTooSmall {
                    image: 65536,
                    region: 32768,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("s.snap"), "{e}");
    }

    #[test]
    fn foreign_future_and_padded_files_are_named_precisely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("foreign");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&[7u8; 4096])
            .unwrap();
        let e = verify_path(&path).unwrap_err();
        assert!(matches!(e.kind(), SnapshotErrorKind::BadMagic), "{e}");
        assert!(
            e.to_string().contains("foreign") && e.to_string().contains("not a snapshot"),
            "{e}"
        );

        let mut v = vec![0u8; 16];
        v.extend_from_slice(&encode_footer_version(
            2,
            16,
            META,
            crc_fast::crc32_iscsi(&[0u8; 16]),
        ));
        assert!(matches!(
            check(&v),
            Err(SnapshotErrorKind::FutureVersion { version: 2, .. })
        ));

        let mut v = vec![0u8; 32];
        v.extend_from_slice(&encode_footer(16, META, crc_fast::crc32_iscsi(&[0u8; 16])));
        assert!(matches!(
            check(&v),
            Err(SnapshotErrorKind::ImageLengthMismatch {
                file: 32,
                footer: 16,
                ..
            })
        ));
        let mut v = vec![0u8; 8];
        v.extend_from_slice(&encode_footer(16, META, crc_fast::crc32_iscsi(&[0u8; 16])));
        assert!(matches!(
            check(&v),
            Err(SnapshotErrorKind::Truncated {
                len: 64,
                needed: 72,
                ..
            })
        ));
        let e = check(&[1, 2, 3]).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotErrorKind::Truncated {
                    len: 3,
                    needed: 56,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// A file with `image` and a footer that is right in every field but `image_len`.
    fn with_len_field(image: &[u8], image_len: u64) -> Vec<u8> {
        let mut v = image.to_vec();
        v.extend_from_slice(&encode_footer(
            image_len,
            META,
            crc_fast::crc32_iscsi(image),
        ));
        v
    }

    #[test]
    fn image_lengths_no_region_can_map_are_data_errors_in_verify_and_write() {
        // 4102: a client appended 6 bytes to a 4096-byte region; 1001 and 0 from the audit.
        for len in [4102u64, 1001, 0, 4] {
            let image = vec![0x5au8; len as usize];
            let e = check(&with_len_field(&image, len)).unwrap_err();
            assert!(
                matches!(e, SnapshotErrorKind::ImageLength { image_len } if image_len == len),
                "{len}: {e}"
            );
            assert!(
                e.to_string().contains(&format!("image length {len} ")),
                "{e}"
            );
            let m = region_with(&image, len);
            let f = Memfd::create("w", 0).unwrap();
            let e = write_snapshot(&m, &f, len, META).unwrap_err();
            assert!(
                matches!(e.kind(), SnapshotErrorKind::ImageLength { .. }),
                "{e}"
            );
            assert_eq!(file_len(&f).unwrap(), 0, "nothing written for {len}");
        }
        // A page multiple is not required: 4104 bytes map (and restore) fine.
        let image = vec![0x5au8; 4104];
        let info = check(&with_len_field(&image, 4104)).unwrap();
        let region = Memfd::create("r", 4104).unwrap();
        region.seal_against_shrink().unwrap();
        let f = Memfd::create("f", 0).unwrap();
        write_all_at(&f, &with_len_field(&image, 4104), 0).unwrap();
        restore_into(&f, &region).unwrap();
        crate::Mapping::of_memfd(&region, crate::Protection::ReadOnly).unwrap();
        assert_eq!(info.image_len, 4104);
    }

    /// A queue region really written by core's `Writer` (16 entries, 1 KiB data ring, a
    /// 4 KiB tail), as image bytes.
    fn queue_image() -> Vec<u8> {
        use shmsnap_core::{LayoutRequest, Writer};
        use std::sync::atomic::{AtomicU64, Ordering};
        let mem: Vec<AtomicU64> = (0..4 * 4096 / 8).map(|_| AtomicU64::new(0)).collect();
        let request = LayoutRequest {
            entries: 16,
            data_size: 1024,
        };
        let mut w = Writer::open_or_init(&mem[..], request, shmsnap_testkit::CLIENT).unwrap();
        for i in 0..20u8 {
            w.commit(&[i; 40]).unwrap();
        }
        mem.iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .collect()
    }

    /// `image` as a snapshot file (a memfd) with a correct footer and CRC for `strategy`.
    fn file_of(image: &[u8], strategy: u64) -> Memfd {
        let m = region_with(image, image.len() as u64);
        let f = Memfd::create("f", 0).unwrap();
        let meta = SnapshotMeta { strategy, ..META };
        write_snapshot(&m, &f, image.len() as u64, meta).unwrap();
        f
    }

    #[test]
    fn queue_images_verify_restores_is_one_check_for_header_and_layout() {
        let queue = shmsnap_core::Strategy::Queue.code();
        let good = queue_image();
        let f = file_of(&good, queue);
        let mut seqs = Vec::new();
        let (_, summary) = verify_entries(&f, |_, d| seqs.push(d.seq)).unwrap();
        let ImageSummary::Queue {
            entries, newest, ..
        } = summary
        else {
            panic!("{summary:?}");
        };
        assert_eq!((entries, newest.map(|d| d.seq)), (16, Some(20)));
        seqs.sort_unstable();
        assert_eq!(seqs, (5..=20).collect::<Vec<u64>>());

        // Correct CRC, corrupt header (the entry-count word), and an image cut short of the
        // region its header describes: both refused by verify and by restore, which leaves
        // nothing applied (the region emptied: the image check runs on the copied bytes).
        let mut bad_header = good.clone();
        bad_header[3 * 8] ^= 1;
        let short = &good[..good.len() - 8];
        for (image, want) in [(&bad_header[..], "checksum"), (short, "too small")] {
            let f = file_of(image, queue);
            let e = verify(&f).unwrap_err();
            assert!(matches!(e.kind(), SnapshotErrorKind::Layout(_)), "{e}");
            assert!(e.to_string().contains(want), "{e}");
            let region = region_with(&[0xee; 64], 1 << 16);
            let r = restore_into(&f, &region).unwrap_err();
            assert_eq!(r.to_string(), e.to_string());
            assert_nothing_applied(&region);
            // The exit strategy's image is opaque: the same bytes are sound there.
            verify(file_of(image, 0)).unwrap();
        }
        // A descriptor that is not valid for its slot (seq moved to the next slot's).
        let mut bad_desc = good.clone();
        let seq_at = 4096 + 2 * 32;
        let seq = u64::from_le_bytes(bad_desc[seq_at..seq_at + 8].try_into().unwrap());
        bad_desc[seq_at..seq_at + 8].copy_from_slice(&(seq + 1).to_le_bytes());
        let e = verify(file_of(&bad_desc, queue)).unwrap_err();
        assert!(
            matches!(e.kind(), SnapshotErrorKind::BadDescriptor { slot: 2 }),
            "{e}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The image check's chunked walk of the descriptor ring (two chunks of 2048 slots
        /// here) finds what a slot-by-slot reading with core's `read_descriptor_bytes` finds:
        /// the first slot whose non-zero descriptor is not valid for it, else every valid
        /// entry (count, newest, each reported once with its slot).
        #[test]
        fn the_image_check_walk_agrees_with_core_slot_by_slot(
            commits in 0usize..9000,
            corrupt in proptest::option::of((0u64..4096, 0usize..32, 1u8..=255)),
        ) {
            use shmsnap_core::{read_descriptor_bytes, LayoutRequest, Writer};
            use std::sync::atomic::{AtomicU64, Ordering};
            let mem: Vec<AtomicU64> = (0..(256 << 10) / 8).map(|_| AtomicU64::new(0)).collect();
            let request = LayoutRequest { entries: 4096, data_size: 64 << 10 };
            let mut w = Writer::open_or_init(&mem[..], request, shmsnap_testkit::CLIENT).unwrap();
            for i in 0..commits {
                w.commit(&(i as u64).to_le_bytes()).unwrap();
            }
            let layout = *w.layout();
            let mut image: Vec<u8> =
                mem.iter().flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes()).collect();
            if let Some((slot, byte, xor)) = corrupt {
                image[(layout.desc_offset + slot * 32) as usize + byte] ^= xor;
            }
            let mut expect_entries = Vec::new();
            let mut bad = None;
            for slot in 0..layout.entries {
                let at = (layout.desc_offset + slot * 32) as usize;
                let seq_word = u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
                match read_descriptor_bytes(&image, &layout, slot) {
                    Some(d) => expect_entries.push((slot, d)),
                    None if seq_word != 0 => { bad = Some(slot); break; }
                    None => {}
                }
            }
            // A corrupt seq can also make a descriptor valid for its slot but past NEXT_SEQ.
            let next_seq = shmsnap_core::Hints::read_bytes(&image).next_seq;
            let past = expect_entries.iter().find(|(_, d)| d.seq >= next_seq).copied();
            let mut got = Vec::new();
            let r = verify_entries(file_of(&image, shmsnap_core::Strategy::Queue.code()), |s, d| {
                got.push((s, d));
            });
            match (bad, r) {
                (Some(slot), Err(e)) => prop_assert!(
                    matches!(e.kind(), SnapshotErrorKind::BadDescriptor { slot: s } if *s == slot),
                    "slot {slot}: {e}"
                ),
                (None, Err(e)) if past.is_some() => prop_assert!(
                    matches!(e.kind(), SnapshotErrorKind::EntryPastNextSeq { seq, .. }
                        if Some(*seq) == past.map(|p| p.1.seq)),
                    "{e}"
                ),
                (None, Ok((_, ImageSummary::Queue { entries, newest, .. }))) if past.is_none() => {
                    prop_assert_eq!(&got, &expect_entries);
                    prop_assert_eq!(entries, expect_entries.len() as u64);
                    prop_assert_eq!(newest, expect_entries.iter().map(|e| e.1).max_by_key(|d| d.seq));
                }
                (bad, r) => prop_assert!(false, "expected bad slot {bad:?}, got {r:?}"),
            }
        }
    }

    /// The region is empty: no page allocated, every byte zero.
    fn assert_nothing_applied(region: &Memfd) {
        let len = region.len().unwrap() as usize;
        assert_eq!(
            region.allocated().unwrap(),
            0,
            "a refused restore kept pages"
        );
        let mut back = vec![1u8; len];
        read_full_at(region, &mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0), "a refused restore kept bytes");
    }

    /// The one-pass restore writes the region while it checks: a file whose CRC or image
    /// check fails (bit rot in the data, in the header with a matching CRC, a bad descriptor)
    /// must come back refused with the region emptied — never the corrupt bytes, never the
    /// region's stale content. A good file after a refused one restores normally.
    #[test]
    fn corrupt_file_restored_in_one_pass_is_refused_and_leaves_nothing_applied() {
        let queue = shmsnap_core::Strategy::Queue.code();
        let good = queue_image();
        let len = good.len() as u64;
        let stale = |region: &Memfd| write_all_at(region, &vec![0xee; 2 * len as usize], 0);
        // Bit rot past the header: the CRC stored no longer matches.
        let mut rot = snapshot_bytes_with(&good, queue);
        rot[len as usize - 100] ^= 0x10;
        // A header with a matching CRC but a wrong entry count: only the image check sees it.
        let mut bad_header = good.clone();
        bad_header[3 * 8] ^= 1;
        for (bytes, what) in [
            (rot, "checksum"),
            (snapshot_bytes_with(&bad_header, queue), "layout"),
        ] {
            let f = Memfd::create("corrupt", 0).unwrap();
            write_all_at(&f, &bytes, 0).unwrap();
            let region = Memfd::create("r", 2 * len).unwrap();
            stale(&region).unwrap();
            let e = restore_into(&f, &region).unwrap_err();
            assert_eq!(e.to_string(), verify(&f).unwrap_err().to_string(), "{what}");
            assert_nothing_applied(&region);
            // The same region then takes a sound snapshot.
            let ok = file_of(&good, queue);
            restore_into(&ok, &region).unwrap();
            let mut back = vec![0u8; len as usize];
            read_full_at(&region, &mut back, 0).unwrap();
            assert_eq!(back, good, "{what}: the sound restore after a refused one");
        }
    }

    /// [`file_of`]'s bytes.
    fn snapshot_bytes_with(image: &[u8], strategy: u64) -> Vec<u8> {
        let f = file_of(image, strategy);
        let mut v = vec![0u8; file_len(&f).unwrap() as usize];
        read_full_at(&f, &mut v, 0).unwrap();
        v
    }

    #[test]
    fn non_regular_files_are_refused_by_type_without_blocking_and_named() {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("state.snap");
        mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let expect_refused = |p: &Path, what: &str| {
            let region = Memfd::create("r", 4096).unwrap();
            for e in [
                verify_path(p).unwrap_err(),
                read_footer_path(p).unwrap_err(),
                restore_path(p, &region).unwrap_err(),
            ] {
                assert!(
                    matches!(e.kind(), SnapshotErrorKind::NotRegularFile { file_type } if *file_type == what),
                    "{e}"
                );
                assert_eq!(e.path(), Some(p));
                assert!(e.to_string().contains(&p.display().to_string()), "{e}");
            }
        };
        // With a writer holding the FIFO open (O_RDWR never blocks), a plain open would not
        // block either: this part fails, rather than hangs, if the type check is missing.
        let writer = rustix::fs::open(&fifo, rustix::fs::OFlags::RDWR, Mode::empty()).unwrap();
        expect_refused(&fifo, "FIFO");
        drop(writer);
        // No writer: a blocking open would wait forever. A watchdog turns that into a failure
        // after a minute (it is not a timing assertion: a correct open returns at once).
        let (tx, rx) = std::sync::mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || tx.send(verify_path(&p).map_err(|e| e.to_string())));
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("opening a FIFO without a writer blocked");
        assert!(r.unwrap_err().contains("FIFO"));
        expect_refused(dir.path(), "directory");

        // A symlink to a regular snapshot is read through (only the target's type counts).
        let real = dir.path().join("real.snap");
        std::fs::write(&real, snapshot_bytes(b"eight by")).unwrap();
        let link = dir.path().join("link.snap");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(verify_path(&link).unwrap().image_len, 8);
    }

    #[test]
    fn crc_failures_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bitrot.snap");
        let mut b = snapshot_bytes(&[7u8; 64]);
        b[3] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let region = Memfd::create("r", 64).unwrap();
        for e in [
            verify_path(&path).unwrap_err(),
            restore_path(&path, &region).unwrap_err(),
        ] {
            assert!(matches!(e.kind(), SnapshotErrorKind::ImageChecksum { .. }));
            assert!(
                e.to_string()
                    .starts_with(&format!("snapshot {}: ", path.display())),
                "{e}"
            );
        }
        // An fd-based write (here into a read-only fd: EBADF) names no file until its caller
        // does.
        let ro = std::fs::File::open(&path).unwrap();
        let e = write_snapshot(&region, &ro, 8, META).unwrap_err();
        assert!(
            matches!(e.kind(), SnapshotErrorKind::Io(_)) && e.path().is_none(),
            "{e}"
        );
        let e = e.at(&path);
        assert!(e.to_string().contains("bitrot.snap"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_truncation_is_rejected(image in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
            let full = snapshot_bytes(&whole_words(image));
            prop_assert!(check(&full).is_ok());
            let cut = cut.index(full.len()); // 0..len: always shorter than the file
            let r = check(&full[..cut]);
            if cut < FOOTER_LEN {
                prop_assert!(matches!(r, Err(SnapshotErrorKind::Truncated { .. })), "{:?}", r);
            } else {
                // The last 56 bytes are now image bytes or a shifted footer.
                prop_assert!(matches!(r, Err(SnapshotErrorKind::BadMagic)), "{:?}", r);
            }
        }

        #[test]
        fn every_flipped_byte_is_rejected(image in proptest::collection::vec(any::<u8>(), 1..300), at in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut bytes = snapshot_bytes(&whole_words(image));
            let at = at.index(bytes.len());
            bytes[at] ^= x;
            let r = check(&bytes);
            let footer_at = bytes.len() - FOOTER_LEN;
            if at < footer_at {
                prop_assert!(matches!(r, Err(SnapshotErrorKind::ImageChecksum { .. })), "{:?}", r);
            } else if at < footer_at + 8 {
                prop_assert!(matches!(r, Err(SnapshotErrorKind::BadMagic)), "{:?}", r);
            } else {
                prop_assert!(matches!(r, Err(SnapshotErrorKind::FooterChecksum { .. })), "{:?}", r);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = check(&bytes);
            let mut b = [0u8; FOOTER_LEN];
            let n = bytes.len().min(FOOTER_LEN);
            b[..n].copy_from_slice(&bytes[..n]);
            let _ = decode_footer(&b);
        }
    }
}
