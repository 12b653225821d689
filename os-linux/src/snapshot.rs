//! The snapshot file: the region image followed by a fixed 56-byte footer.
//!
//! Byte-by-byte layout and compatibility rules: `os-linux/FOOTER.md`. In short (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"SHMSNAPF"` |
//! | 8 | 8 | footer version (1) |
//! | 16 | 8 | image length in bytes |
//! | 24 | 8 | strategy code (opaque to this crate: 0 exit/raw, 1 queue, 2 triple) |
//! | 32 | 8 | generation |
//! | 40 | 8 | wall-clock time, ns since the Unix epoch |
//! | 48 | 4 | CRC-32C of the image |
//! | 52 | 4 | CRC-32C of footer bytes 0..52 |
//!
//! [`verify`] checks everything before a single byte of a region is touched; [`restore_into`]
//! verifies and then copies the image sparsely into a memfd. Nothing here panics on file
//! content: every malformed file is a [`SnapshotError`].
//!
//! CRCs are CRC-32C (CRC-32/ISCSI) from `crc-fast` (hardware-accelerated). The image CRC is
//! computed with `pread` over data extents only; holes are fed to the CRC as zeros from a
//! static buffer, so neither a file's nor a memfd's holes are read or allocated.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crc_fast::{checksum, checksum_combine, CrcAlgorithm, Digest};

use crate::copy::{copy_sparse, file_len, for_each_extent, read_full_at, write_all_at, CopyStats};
use crate::memfd::Memfd;

/// The footer's magic: the last 56 bytes of every snapshot file start with it.
pub const MAGIC: [u8; 8] = *b"SHMSNAPF";
/// The footer version this crate writes and the newest it reads.
pub const FOOTER_VERSION: u64 = 1;
/// Length of the footer in bytes.
pub const FOOTER_LEN: usize = 56;

/// What the host records about a snapshot (opaque to this crate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Strategy code: 0 = exit/raw, 1 = queue, 2 = triple (the host's convention).
    pub strategy: u64,
    /// Snapshot generation (the host's counter).
    pub generation: u64,
    /// Wall-clock time of the snapshot, ns since the Unix epoch.
    pub unix_time_ns: u64,
}

/// A verified footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Footer version.
    pub version: u64,
    /// Image length in bytes.
    pub image_len: u64,
    /// The host's metadata.
    pub meta: SnapshotMeta,
    /// CRC-32C of the image.
    pub image_crc: u32,
}

/// Why a file is not a usable snapshot.
#[derive(Debug)]
pub enum SnapshotError {
    /// An I/O error while reading the file or the region.
    Io {
        /// The file, if known.
        path: Option<PathBuf>,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is shorter than a footer, or than the image plus footer it announces.
    Truncated {
        /// The file, if known.
        path: Option<PathBuf>,
        /// Actual file length.
        len: u64,
        /// Length needed.
        needed: u64,
    },
    /// The last 56 bytes do not start with [`MAGIC`]: not a snapshot (or cut short).
    BadMagic {
        /// The file, if known.
        path: Option<PathBuf>,
    },
    /// A footer version newer than this build understands.
    FutureVersion {
        /// The file, if known.
        path: Option<PathBuf>,
        /// The version found.
        version: u64,
    },
    /// The footer's own CRC does not match: the footer is corrupt.
    FooterChecksum {
        /// The file, if known.
        path: Option<PathBuf>,
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over footer bytes 0..52.
        computed: u32,
    },
    /// The image's CRC does not match: the image is corrupt.
    ImageChecksum {
        /// The file, if known.
        path: Option<PathBuf>,
        /// CRC stored in the footer.
        stored: u32,
        /// CRC computed over the image.
        computed: u32,
    },
    /// The file holds more bytes before the footer than the footer's image length.
    ImageLengthMismatch {
        /// The file, if known.
        path: Option<PathBuf>,
        /// Bytes before the footer in the file.
        file: u64,
        /// Image length recorded in the footer.
        footer: u64,
    },
    /// The image does not fit in the region it should be restored into.
    RegionTooSmall {
        /// The file, if known.
        path: Option<PathBuf>,
        /// Image length.
        image: u64,
        /// Region length.
        region: u64,
    },
}

impl SnapshotError {
    fn io(path: Option<&Path>, source: io::Error) -> Self {
        Self::Io {
            path: path.map(Path::to_path_buf),
            source,
        }
    }

    /// The file this error is about, if known.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. }
            | Self::Truncated { path, .. }
            | Self::BadMagic { path }
            | Self::FutureVersion { path, .. }
            | Self::FooterChecksum { path, .. }
            | Self::ImageChecksum { path, .. }
            | Self::ImageLengthMismatch { path, .. }
            | Self::RegionTooSmall { path, .. } => path.as_deref(),
        }
    }

    fn with_path(mut self, p: &Path) -> Self {
        match &mut self {
            Self::Io { path, .. }
            | Self::Truncated { path, .. }
            | Self::BadMagic { path }
            | Self::FutureVersion { path, .. }
            | Self::FooterChecksum { path, .. }
            | Self::ImageChecksum { path, .. }
            | Self::ImageLengthMismatch { path, .. }
            | Self::RegionTooSmall { path, .. } => *path = Some(p.to_path_buf()),
        }
        self
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            Some(p) => write!(f, "snapshot {}: ", p.display())?,
            None => f.write_str("snapshot: ")?,
        }
        match self {
            Self::Io { source, .. } => write!(f, "I/O error: {source}"),
            Self::Truncated { len, needed, .. } => write!(
                f,
                "truncated: the file has {len} bytes but needs {needed} \
                 (an interrupted copy? use an older generation)"
            ),
            Self::BadMagic { .. } => write!(
                f,
                "no shmsnap footer at the end (magic {:?} missing): not a snapshot file, \
                 or cut short",
                std::str::from_utf8(&MAGIC).unwrap_or("SHMSNAPF")
            ),
            Self::FutureVersion { version, .. } => write!(
                f,
                "footer version {version} is newer than this build understands \
                 (up to {FOOTER_VERSION}); upgrade shmsnap"
            ),
            Self::FooterChecksum {
                stored, computed, ..
            } => write!(
                f,
                "footer is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}"
            ),
            Self::ImageChecksum {
                stored, computed, ..
            } => write!(
                f,
                "image is corrupt: its CRC-32C is {computed:#010x}, the footer says \
                 {stored:#010x}"
            ),
            Self::ImageLengthMismatch { file, footer, .. } => write!(
                f,
                "the file holds {file} image bytes but the footer says {footer}"
            ),
            Self::RegionTooSmall { image, region, .. } => write!(
                f,
                "the image ({image} bytes) does not fit the region ({region} bytes); \
                 start with a region of at least {image} bytes"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> io::Error {
        let kind = match &e {
            SnapshotError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Encodes a footer (the footer CRC included).
pub fn encode_footer(image_len: u64, meta: SnapshotMeta, image_crc: u32) -> [u8; FOOTER_LEN] {
    encode_footer_version(FOOTER_VERSION, image_len, meta, image_crc)
}

fn encode_footer_version(
    version: u64,
    image_len: u64,
    meta: SnapshotMeta,
    image_crc: u32,
) -> [u8; FOOTER_LEN] {
    let mut b = [0u8; FOOTER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&version.to_le_bytes());
    b[16..24].copy_from_slice(&image_len.to_le_bytes());
    b[24..32].copy_from_slice(&meta.strategy.to_le_bytes());
    b[32..40].copy_from_slice(&meta.generation.to_le_bytes());
    b[40..48].copy_from_slice(&meta.unix_time_ns.to_le_bytes());
    b[48..52].copy_from_slice(&image_crc.to_le_bytes());
    let fcrc = crc_fast::crc32_iscsi(&b[0..52]);
    b[52..56].copy_from_slice(&fcrc.to_le_bytes());
    b
}

fn u64_at(b: &[u8; FOOTER_LEN], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8; FOOTER_LEN], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Decodes and checks a footer on its own: magic, footer CRC, version — in that order, so a
/// corrupted version field reports a corrupt footer rather than a future version.
///
/// # Errors
///
/// [`SnapshotError::BadMagic`], [`SnapshotError::FooterChecksum`],
/// [`SnapshotError::FutureVersion`] (all without a path).
pub fn decode_footer(b: &[u8; FOOTER_LEN]) -> Result<SnapshotInfo, SnapshotError> {
    if b[0..8] != MAGIC {
        return Err(SnapshotError::BadMagic { path: None });
    }
    let stored = u32_at(b, 52);
    let computed = crc_fast::crc32_iscsi(&b[0..52]);
    if stored != computed {
        return Err(SnapshotError::FooterChecksum {
            path: None,
            stored,
            computed,
        });
    }
    let version = u64_at(b, 8);
    if version > FOOTER_VERSION || version == 0 {
        return Err(SnapshotError::FutureVersion {
            path: None,
            version,
        });
    }
    Ok(SnapshotInfo {
        version,
        image_len: u64_at(b, 16),
        meta: SnapshotMeta {
            strategy: u64_at(b, 24),
            generation: u64_at(b, 32),
            unix_time_ns: u64_at(b, 40),
        },
        image_crc: u32_at(b, 48),
    })
}

/// `pread` over data extents (found with `lseek(SEEK_DATA/SEEK_HOLE)`)—CRC-32C of bytes
/// `0..len` of `fd`, holes counted as zeros without being read.
///
/// Safe to call on a memfd: neither `lseek` nor `pread` allocates its holes. Moves the file
/// position of `fd`.
///
/// # References
///  - [Linux `lseek`](https://man7.org/linux/man-pages/man2/lseek.2.html)
///  - [Linux `pread`](https://man7.org/linux/man-pages/man2/pread.2.html)
///
/// # Errors
///
/// `UnexpectedEof` if the file is shorter than `len`; the syscalls' errors.
pub fn image_crc32c(fd: impl AsFd, len: u64) -> io::Result<u32> {
    const CHUNK: usize = 1 << 20;
    let fd = fd.as_fd();
    let flen = file_len(fd)?;
    if flen < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("cannot checksum {len} image bytes of a file of {flen} bytes"),
        ));
    }
    // CRC of the prefix so far; each extent's CRC is folded in with CRC combination, so a
    // hole costs O(log n) instead of feeding its zeros through the CRC.
    let mut crc = checksum(CrcAlgorithm::Crc32Iscsi, b"");
    let mut buf = vec![0u8; CHUNK];
    for_each_extent(fd, len, |off, n, is_data| {
        let part = if is_data {
            let mut d = Digest::new(CrcAlgorithm::Crc32Iscsi);
            let mut done = 0;
            while done < n {
                let want = usize::try_from((n - done).min(CHUNK as u64)).unwrap_or(CHUNK);
                let got = read_full_at(fd, &mut buf[..want], off + done)?;
                if got < want {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ends at {} inside the image", off + done + got as u64),
                    ));
                }
                d.update(&buf[..got]);
                done += got as u64;
            }
            d.finalize()
        } else {
            zeros_crc32c(n)
        };
        crc = checksum_combine(CrcAlgorithm::Crc32Iscsi, crc, part, n);
        Ok(())
    })?;
    // CRC-32C is 32 bits wide; the u64 holds it in its low half.
    Ok(crc as u32)
}

/// CRC-32C of `n` zero bytes, by squaring: O(log n) combinations of a 4 KiB block's CRC.
fn zeros_crc32c(n: u64) -> u64 {
    const BLOCK: u64 = 4096;
    static ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    let alg = CrcAlgorithm::Crc32Iscsi;
    // `acc` covers the remainder and the blocks folded in so far; `pow` covers `pow_len` zeros.
    let mut acc = checksum(alg, &ZEROS[..(n % BLOCK) as usize]);
    let mut pow = checksum(alg, &ZEROS);
    let mut pow_len = BLOCK;
    let mut blocks = n / BLOCK;
    while blocks > 0 {
        if blocks & 1 == 1 {
            acc = checksum_combine(alg, acc, pow, pow_len);
        }
        blocks >>= 1;
        if blocks > 0 {
            pow = checksum_combine(alg, pow, pow, pow_len);
            pow_len *= 2;
        }
    }
    acc
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
/// `UnexpectedEof` if the file is shorter than `image_len`; the syscalls' errors.
pub fn write_footer(
    file: impl AsFd,
    image_len: u64,
    meta: SnapshotMeta,
) -> io::Result<SnapshotInfo> {
    let file = file.as_fd();
    let image_crc = image_crc32c(file, image_len)?;
    let footer = encode_footer(image_len, meta, image_crc);
    write_all_at(file, &footer, image_len)?;
    rustix::io::retry_on_intr(|| rustix::fs::ftruncate(file, image_len + FOOTER_LEN as u64))?;
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
/// As [`copy_sparse`] and [`write_footer`].
pub fn write_snapshot(
    region: impl AsFd,
    file: impl AsFd,
    len: u64,
    meta: SnapshotMeta,
) -> io::Result<(SnapshotInfo, CopyStats)> {
    let stats = copy_sparse(region, file.as_fd(), len)?;
    let info = write_footer(file, len, meta)?;
    Ok((info, stats))
}

/// Reads and checks everything of a snapshot file but the image CRC: length, magic, footer
/// CRC, version and image length (the cheap part of [`verify`], e.g. to size a region before
/// [`restore_into`] verifies the whole file).
///
/// # Errors
///
/// A [`SnapshotError`] other than `ImageChecksum` and `RegionTooSmall` (without a path;
/// [`read_footer_path`] adds it).
pub fn read_footer(file: impl AsFd) -> Result<SnapshotInfo, SnapshotError> {
    let file = file.as_fd();
    let len = file_len(file).map_err(|e| SnapshotError::io(None, e))?;
    let flen = FOOTER_LEN as u64;
    if len < flen {
        return Err(SnapshotError::Truncated {
            path: None,
            len,
            needed: flen,
        });
    }
    let mut b = [0u8; FOOTER_LEN];
    let got = read_full_at(file, &mut b, len - flen).map_err(|e| SnapshotError::io(None, e))?;
    if got < FOOTER_LEN {
        return Err(SnapshotError::Truncated {
            path: None,
            len: len - flen + got as u64,
            needed: len,
        });
    }
    let info = decode_footer(&b)?;
    let body = len - flen;
    if body < info.image_len {
        let needed = info.image_len.saturating_add(flen);
        return Err(SnapshotError::Truncated {
            path: None,
            len,
            needed,
        });
    }
    if body > info.image_len {
        return Err(SnapshotError::ImageLengthMismatch {
            path: None,
            file: body,
            footer: info.image_len,
        });
    }
    Ok(info)
}

/// Opens `path` read-only and [`read_footer`]s it; errors name the file.
///
/// # Errors
///
/// As [`read_footer`], plus [`SnapshotError::Io`] if the file cannot be opened.
pub fn read_footer_path(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let f = std::fs::File::open(path).map_err(|e| SnapshotError::io(Some(path), e))?;
    read_footer(&f).map_err(|e| e.with_path(path))
}

/// Checks a snapshot file completely (length, magic, footer CRC, version, image length,
/// image CRC) without changing anything.
///
/// # Errors
///
/// A [`SnapshotError`] saying what is wrong (without a path; [`verify_path`] adds it).
pub fn verify(file: impl AsFd) -> Result<SnapshotInfo, SnapshotError> {
    let file = file.as_fd();
    let info = read_footer(file)?;
    let computed = image_crc32c(file, info.image_len).map_err(|e| SnapshotError::io(None, e))?;
    if computed != info.image_crc {
        return Err(SnapshotError::ImageChecksum {
            path: None,
            stored: info.image_crc,
            computed,
        });
    }
    Ok(info)
}

/// Opens `path` read-only and [`verify`]s it; errors name the file.
///
/// # Errors
///
/// As [`verify`], plus [`SnapshotError::Io`] if the file cannot be opened.
pub fn verify_path(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let f = std::fs::File::open(path).map_err(|e| SnapshotError::io(Some(path), e))?;
    verify(&f).map_err(|e| e.with_path(path))
}

/// Verifies `snapshot`, checks the image fits `region`, then copies the image sparsely into
/// `region` (whose previous content in `0..region.len()` is discarded; the region is never
/// shrunk). Nothing is written to `region` unless verification passed. Run it before any
/// client maps the region: a mapping would see the content change under it.
///
/// An image *smaller* than the region is accepted (the rest of the region reads as zeros);
/// a host that requires equal sizes compares [`SnapshotInfo::image_len`] from [`verify`] first.
///
/// # Errors
///
/// Any [`verify`] error; [`SnapshotError::RegionTooSmall`]; [`SnapshotError::Io`] if the copy
/// fails (the region's content is then unspecified).
pub fn restore_into(
    snapshot: impl AsFd,
    region: &Memfd,
) -> Result<(SnapshotInfo, CopyStats), SnapshotError> {
    let snapshot = snapshot.as_fd();
    let info = verify(snapshot)?;
    let region_len = region.len().map_err(|e| SnapshotError::io(None, e))?;
    if info.image_len > region_len {
        return Err(SnapshotError::RegionTooSmall {
            path: None,
            image: info.image_len,
            region: region_len,
        });
    }
    // Discard the whole region first (also past the image), then copy the image's extents.
    let copy = (|| -> io::Result<CopyStats> {
        if info.image_len < region_len {
            rustix::io::retry_on_intr(|| {
                rustix::fs::fallocate(
                    region,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    info.image_len,
                    region_len - info.image_len,
                )
            })?;
        }
        copy_sparse(snapshot, region, info.image_len)
    })()
    .map_err(|e| SnapshotError::io(None, e))?;
    Ok((info, copy))
}

/// [`restore_into`] from a path; errors name the file.
///
/// # Errors
///
/// As [`restore_into`].
pub fn restore_path(
    path: &Path,
    region: &Memfd,
) -> Result<(SnapshotInfo, CopyStats), SnapshotError> {
    let f = std::fs::File::open(path).map_err(|e| SnapshotError::io(Some(path), e))?;
    restore_into(&f, region).map_err(|e| e.with_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    const META: SnapshotMeta = SnapshotMeta {
        strategy: 1,
        generation: 7,
        unix_time_ns: 1_700_000_000_000_000_000,
    };

    fn region_with(bytes: &[u8], len: u64) -> Memfd {
        let m = Memfd::create("r", len).unwrap();
        write_all_at(&m, bytes, 0).unwrap();
        m
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

    fn check(bytes: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
        let f = Memfd::create("c", 0).unwrap();
        write_all_at(&f, bytes, 0).unwrap();
        verify(&f)
    }

    #[test]
    fn crc32c_matches_the_reference_vector_and_skips_holes() {
        assert_eq!(crc_fast::crc32_iscsi(b"123456789"), 0xe306_9283);
        let m = Memfd::create("h", 3 << 20).unwrap();
        write_all_at(&m, b"123456789", 1 << 20).unwrap();
        let mut all = vec![0u8; 3 << 20];
        read_full_at(&m, &mut all, 0).unwrap();
        let before = m.allocated().unwrap();
        assert_eq!(
            image_crc32c(&m, 3 << 20).unwrap(),
            crc_fast::crc32_iscsi(&all)
        );
        assert_eq!(m.allocated().unwrap(), before);
    }

    #[test]
    fn crc_of_holes_by_combination_equals_the_crc_of_zeros() {
        for n in [
            0u64,
            1,
            7,
            4095,
            4096,
            4097,
            3 * 4096 + 5,
            1 << 20,
            (1 << 20) + 12345,
        ] {
            let zeros = vec![0u8; n as usize];
            assert_eq!(
                zeros_crc32c(n),
                crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, &zeros),
                "{n}"
            );
        }
        // Several data extents between holes, and an image length that ends inside a hole.
        let m = Memfd::create("e", 5 << 20).unwrap();
        for (i, at) in [0u64, 1 << 20, (3 << 20) + 4096].into_iter().enumerate() {
            write_all_at(&m, &[i as u8 + 1; 10_000], at).unwrap();
        }
        for len in [5 << 20, (4 << 20) + 3, 9_999] {
            let mut all = vec![0u8; len as usize];
            read_full_at(&m, &mut all, 0).unwrap();
            assert_eq!(
                image_crc32c(&m, len).unwrap(),
                crc_fast::crc32_iscsi(&all),
                "{len}"
            );
        }
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
                e,
                SnapshotError::RegionTooSmall {
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
        assert!(matches!(e, SnapshotError::BadMagic { .. }), "{e}");
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
            Err(SnapshotError::FutureVersion { version: 2, .. })
        ));

        let mut v = vec![0u8; 32];
        v.extend_from_slice(&encode_footer(16, META, crc_fast::crc32_iscsi(&[0u8; 16])));
        assert!(matches!(
            check(&v),
            Err(SnapshotError::ImageLengthMismatch {
                file: 32,
                footer: 16,
                ..
            })
        ));
        let mut v = vec![0u8; 8];
        v.extend_from_slice(&encode_footer(16, META, crc_fast::crc32_iscsi(&[0u8; 16])));
        assert!(matches!(
            check(&v),
            Err(SnapshotError::Truncated {
                len: 64,
                needed: 72,
                ..
            })
        ));
        let e = check(&[1, 2, 3]).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Truncated {
                    len: 3,
                    needed: 56,
                    ..
                }
            ),
            "{e}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_truncation_is_rejected(image in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
            let full = snapshot_bytes(&image);
            prop_assert!(check(&full).is_ok());
            let cut = cut.index(full.len()); // 0..len: always shorter than the file
            let r = check(&full[..cut]);
            if cut < FOOTER_LEN {
                prop_assert!(matches!(r, Err(SnapshotError::Truncated { .. })), "{:?}", r);
            } else {
                // The last 56 bytes are now image bytes or a shifted footer.
                prop_assert!(matches!(r, Err(SnapshotError::BadMagic { .. })), "{:?}", r);
            }
        }

        #[test]
        fn every_flipped_byte_is_rejected(image in proptest::collection::vec(any::<u8>(), 1..300), at in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut bytes = snapshot_bytes(&image);
            let at = at.index(bytes.len());
            bytes[at] ^= x;
            let r = check(&bytes);
            let footer_at = bytes.len() - FOOTER_LEN;
            if at < footer_at {
                prop_assert!(matches!(r, Err(SnapshotError::ImageChecksum { .. })), "{:?}", r);
            } else if at < footer_at + 8 {
                prop_assert!(matches!(r, Err(SnapshotError::BadMagic { .. })), "{:?}", r);
            } else {
                prop_assert!(matches!(r, Err(SnapshotError::FooterChecksum { .. })), "{:?}", r);
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
