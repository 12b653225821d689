//! The 56-byte footer: its fields, encoding and decoding (`os-linux/FOOTER.md`).

// The magic and version live in `error` (the lower module: its messages name them).
use super::error::SnapshotErrorKind;
pub use super::error::{FOOTER_VERSION, MAGIC};

/// Length of the footer in bytes.
pub const FOOTER_LEN: usize = 56;

/// What the host records about a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Strategy code: 0 = exit/raw, 1 = queue ([`shmsnap_core::Strategy::Queue`]), 2 = triple.
    /// [`verify`](super::verify) checks the region header and descriptors of a queue image;
    /// any other image is opaque to this crate.
    pub strategy: u64,
    /// Snapshot generation (the host's counter; any value, `u64::MAX` included, is accepted:
    /// the host must not compute `generation + 1` unchecked).
    pub generation: u64,
    /// Wall-clock time of the snapshot, ns since the Unix epoch.
    pub unix_time_ns: u64,
}

/// A decoded footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Footer version.
    pub version: u64,
    /// Image length in bytes (a nonzero multiple of 8 in every file that
    /// [`read_footer`](super::read_footer) accepts).
    pub image_len: u64,
    /// The host's metadata.
    pub meta: SnapshotMeta,
    /// CRC-32C of the image.
    pub image_crc: u32,
}

/// Encodes a footer (the footer CRC included).
///
/// Any `image_len` is encoded; [`write_footer`](super::write_footer) refuses one that
/// [`read_footer`](super::read_footer) would refuse.
pub fn encode_footer(image_len: u64, meta: SnapshotMeta, image_crc: u32) -> [u8; FOOTER_LEN] {
    encode_footer_version(FOOTER_VERSION, image_len, meta, image_crc)
}

/// [`encode_footer`] with any version number (tests write footers "from the future").
pub(crate) fn encode_footer_version(
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
/// The image length is decoded as it is, for display; [`read_footer`](super::read_footer)
/// checks it ([`image_len_ok`]).
///
/// # Errors
///
/// [`SnapshotErrorKind::BadMagic`], [`SnapshotErrorKind::FooterChecksum`] or
/// [`SnapshotErrorKind::FutureVersion`] (without a path).
pub fn decode_footer(b: &[u8; FOOTER_LEN]) -> Result<SnapshotInfo, super::SnapshotError> {
    if b[0..8] != MAGIC {
        return Err(SnapshotErrorKind::BadMagic.into());
    }
    let stored = u32_at(b, 52);
    let computed = crc_fast::crc32_iscsi(&b[0..52]);
    if stored != computed {
        return Err(SnapshotErrorKind::FooterChecksum { stored, computed }.into());
    }
    let version = u64_at(b, 8);
    if version > FOOTER_VERSION || version == 0 {
        return Err(SnapshotErrorKind::FutureVersion { version }.into());
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

/// `true` if an image of `image_len` bytes can be restored at all: a nonzero multiple of 8.
///
/// The region is mapped as 64-bit words ([`Mapping`](crate::Mapping) needs a nonzero multiple
/// of 8) and a restore sizes the region to at least the image. A page multiple is *not*
/// required: the kernel maps the partial last page of a memfd, and the mapping hands out only
/// the region's own words.
pub fn image_len_ok(image_len: u64) -> bool {
    image_len != 0 && image_len.is_multiple_of(8)
}
