//! The delta segment's bytes: the 128-byte footer, the run table, and the file names
//! (`docs/FORMAT.md`, "Snapshot chain"). Pure functions over byte slices: nothing here does
//! I/O, so the fuzz-style tests feed them arbitrary bytes directly.

// The version constant lives in `error` (the lower module: its message names it).
use super::error::ChainErrorKind;
pub use super::error::DELTA_VERSION;

/// The delta footer's magic: the last 128 bytes of every delta start with it.
pub const DELTA_MAGIC: [u8; 8] = *b"SHMSNAPD";
/// Length of the delta footer in bytes.
pub const DELTA_FOOTER_LEN: usize = 128;
/// Granule of the run table: run offsets are multiples of it, lengths too (except a run that
/// ends at the image's end), and the table is padded to it. 4096, the format's page size,
/// whatever the machine's (a 64 KiB page is 16 granules).
pub const GRANULE: u64 = 4096;
/// Bytes per run in the table: image offset, length (two little-endian u64).
pub const RUN_BYTES: u64 = 16;
/// The name of the chain directory of a target: `<target>.d`.
pub const CHAIN_DIR_SUFFIX: &str = ".d";

/// A run of image bytes a delta carries: `len` bytes at image offset `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    /// Image offset (a multiple of [`GRANULE`]).
    pub offset: u64,
    /// Length in bytes (nonzero; a multiple of [`GRANULE`] unless the run ends at the image's
    /// end, which is a multiple of 8).
    pub len: u64,
}

impl Run {
    /// One past the last byte (saturating: a hostile run cannot wrap).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

impl From<crate::track::PageRun> for Run {
    fn from(r: crate::track::PageRun) -> Self {
        Run {
            offset: r.offset,
            len: r.len,
        }
    }
}

/// A decoded delta footer: what a delta is, where it sits in its chain and how to check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaFooter {
    /// Footer version.
    pub version: u64,
    /// Length of the image the delta applies to (= the base's image length).
    pub image_len: u64,
    /// Strategy code (= the base's).
    pub strategy: u64,
    /// Generation of the base this chain starts from.
    pub base_generation: u64,
    /// Position in the chain: 1 for the first delta after the base.
    pub index: u64,
    /// Host hint: the parent image's `next_seq` (the lowest seq this delta can add; 0 if not
    /// a queue image).
    pub next_seq_before: u64,
    /// Host hint: this image's `next_seq` (every entry of the image has a lower seq; 0 if not
    /// a queue image).
    pub next_seq: u64,
    /// Wall-clock time of the state, ns since the Unix epoch.
    pub unix_time_ns: u64,
    /// Number of runs in the table.
    pub run_count: u64,
    /// Sum of the runs' lengths: bytes of page data.
    pub data_len: u64,
    /// Image bytes `0..meta_len` (the region's header and descriptor ring, as the image has
    /// them after `retain`) are carried by the runs; 0 = the delta carries no meta pages.
    pub meta_len: u64,
    /// The base's image CRC.
    pub base_image_crc: u32,
    /// The footer CRC of the previous link: the base's (footer bytes 52..56) for index 1,
    /// else the previous delta's.
    pub parent_crc: u32,
    /// CRC-32C of the table section (runs and zero padding).
    pub table_crc: u32,
    /// CRC-32C of the data section.
    pub data_crc: u32,
    /// This footer's CRC (of its bytes 0..124): what the next delta records as `parent_crc`.
    pub footer_crc: u32,
}

impl DeltaFooter {
    /// Length of the table section: `run_count` runs padded to [`GRANULE`].
    pub fn table_len(&self) -> u64 {
        table_len(self.run_count)
    }

    /// The file length this footer announces (saturating: compared, never allocated).
    pub fn file_len(&self) -> u64 {
        self.table_len()
            .saturating_add(self.data_len)
            .saturating_add(DELTA_FOOTER_LEN as u64)
    }
}

/// Length of a table of `runs` runs, padded to [`GRANULE`] (saturating).
pub fn table_len(runs: u64) -> u64 {
    runs.saturating_mul(RUN_BYTES)
        .div_ceil(GRANULE)
        .saturating_mul(GRANULE)
}

/// Encodes a footer; `f.footer_crc` is ignored and computed (the result's bytes 124..128).
pub fn encode_delta_footer(f: &DeltaFooter) -> [u8; DELTA_FOOTER_LEN] {
    let mut b = [0u8; DELTA_FOOTER_LEN];
    b[0..8].copy_from_slice(&DELTA_MAGIC);
    let words = [
        f.version,
        f.image_len,
        f.strategy,
        f.base_generation,
        f.index,
        f.next_seq_before,
        f.next_seq,
        f.unix_time_ns,
        f.run_count,
        f.data_len,
        f.meta_len,
    ];
    for (i, w) in words.iter().enumerate() {
        b[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
    }
    let crcs = [f.base_image_crc, f.parent_crc, f.table_crc, f.data_crc];
    for (i, c) in crcs.iter().enumerate() {
        b[96 + 4 * i..100 + 4 * i].copy_from_slice(&c.to_le_bytes());
    }
    // 112..124 reserved, zero.
    let fcrc = crc_fast::crc32_iscsi(&b[0..124]);
    b[124..128].copy_from_slice(&fcrc.to_le_bytes());
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Decodes and checks a footer on its own: magic, footer CRC, version (in that order, so a
/// corrupted version reads as a corrupt footer), then the fields' ranges: `image_len` a
/// nonzero multiple of 8, `index >= 1`, `run_count` at most one run per granule of the image,
/// `data_len <= image_len`, `meta_len <= image_len` and a multiple of 8, reserved bytes zero.
///
/// # Errors
///
/// [`ChainErrorKind::BadMagic`], `FooterChecksum`, `FutureVersion` or `BadField`.
pub fn decode_delta_footer(b: &[u8; DELTA_FOOTER_LEN]) -> Result<DeltaFooter, ChainErrorKind> {
    if b[0..8] != DELTA_MAGIC {
        return Err(ChainErrorKind::BadMagic);
    }
    let stored = u32_at(b, 124);
    let computed = crc_fast::crc32_iscsi(&b[0..124]);
    if stored != computed {
        return Err(ChainErrorKind::FooterChecksum { stored, computed });
    }
    let version = u64_at(b, 8);
    if version == 0 || version > DELTA_VERSION {
        return Err(ChainErrorKind::FutureVersion { version });
    }
    let f = DeltaFooter {
        version,
        image_len: u64_at(b, 16),
        strategy: u64_at(b, 24),
        base_generation: u64_at(b, 32),
        index: u64_at(b, 40),
        next_seq_before: u64_at(b, 48),
        next_seq: u64_at(b, 56),
        unix_time_ns: u64_at(b, 64),
        run_count: u64_at(b, 72),
        data_len: u64_at(b, 80),
        meta_len: u64_at(b, 88),
        base_image_crc: u32_at(b, 96),
        parent_crc: u32_at(b, 100),
        table_crc: u32_at(b, 104),
        data_crc: u32_at(b, 108),
        footer_crc: stored,
    };
    let bad = |field, value| Err(ChainErrorKind::BadField { field, value });
    if !crate::snapshot::image_len_ok(f.image_len) {
        return bad("image_len", f.image_len);
    }
    if f.index == 0 {
        return bad("index", 0);
    }
    if f.run_count > f.image_len.div_ceil(GRANULE) {
        return bad("run_count", f.run_count);
    }
    if f.data_len > f.image_len {
        return bad("data_len", f.data_len);
    }
    if f.meta_len > f.image_len || !f.meta_len.is_multiple_of(8) {
        return bad("meta_len", f.meta_len);
    }
    if b[112..124].iter().any(|&x| x != 0) {
        return bad("reserved", u64_at(b, 112));
    }
    Ok(f)
}

/// Encodes `runs` as a table section (padded with zeros to [`GRANULE`]).
pub fn encode_table(runs: &[Run]) -> Vec<u8> {
    let mut t = vec![0u8; table_len(runs.len() as u64) as usize];
    for (i, r) in runs.iter().enumerate() {
        let at = i * RUN_BYTES as usize;
        t[at..at + 8].copy_from_slice(&r.offset.to_le_bytes());
        t[at + 8..at + 16].copy_from_slice(&r.len.to_le_bytes());
    }
    t
}

/// Decodes a table section of `footer.run_count` runs and checks it against the footer
/// ([`check_runs`]); the padding must be zero.
///
/// # Errors
///
/// [`ChainErrorKind::BadRun`], or `BadField` for a table section of the wrong length.
pub fn decode_table(table: &[u8], footer: &DeltaFooter) -> Result<Vec<Run>, ChainErrorKind> {
    if table.len() as u64 != footer.table_len() {
        return Err(ChainErrorKind::BadField {
            field: "run_count",
            value: footer.run_count,
        });
    }
    let n = footer.run_count as usize; // <= table.len() / 16: checked just above.
    let runs: Vec<Run> = table
        .chunks_exact(RUN_BYTES as usize)
        .take(n)
        .map(|c| Run {
            offset: u64_at(c, 0),
            len: u64_at(c, 8),
        })
        .collect();
    if table[n * RUN_BYTES as usize..].iter().any(|&x| x != 0) {
        return Err(ChainErrorKind::BadRun {
            run: footer.run_count,
            why: "nonzero padding after the last run",
        });
    }
    check_runs(&runs, footer.image_len, footer.meta_len, footer.data_len)?;
    Ok(runs)
}

/// Checks runs for an image of `image_len` bytes: each nonempty, starting on a granule,
/// a whole number of granules long or ending exactly at `image_len`, inside the image, in
/// ascending order without overlap; the first runs cover `0..meta_len` without a gap; the
/// lengths sum to `data_len`.
///
/// # Errors
///
/// [`ChainErrorKind::BadRun`] naming the first bad run, or `BadField` for `data_len` or
/// `meta_len`.
pub fn check_runs(
    runs: &[Run],
    image_len: u64,
    meta_len: u64,
    data_len: u64,
) -> Result<(), ChainErrorKind> {
    let mut prev_end = 0u64;
    let mut sum = 0u64;
    let mut covered = 0u64; // image bytes 0..covered are carried, contiguously from 0
    for (i, r) in runs.iter().enumerate() {
        let bad = |why| Err(ChainErrorKind::BadRun { run: i as u64, why });
        if r.len == 0 {
            return bad("empty");
        }
        if !r.offset.is_multiple_of(GRANULE) {
            return bad("offset not a multiple of 4096");
        }
        let Some(end) = r.offset.checked_add(r.len) else {
            return bad("ends past 2^64");
        };
        if end > image_len {
            return bad("ends past the image");
        }
        if !r.len.is_multiple_of(GRANULE) && end != image_len {
            return bad("length not a multiple of 4096 and not ending at the image's end");
        }
        if i > 0 && r.offset < prev_end {
            return bad("overlaps or precedes the previous run");
        }
        if r.offset == covered {
            covered = end;
        }
        prev_end = end;
        sum += r.len; // <= image_len: runs are disjoint and inside the image
    }
    if sum != data_len {
        return Err(ChainErrorKind::BadField {
            field: "data_len",
            value: data_len,
        });
    }
    if covered < meta_len {
        return Err(ChainErrorKind::BadField {
            field: "meta_len",
            value: meta_len,
        });
    }
    Ok(())
}

/// The runs a delta must carry: the written `runs` (any order, overlapping, unaligned
/// allowed) plus the image's meta pages `0..meta_len`, each widened to whole granules, clipped
/// to `image_len`, sorted and merged. What the host passes to
/// [`DeltaWriter::begin`](super::DeltaWriter::begin) after a scan.
pub fn plan_runs(runs: impl IntoIterator<Item = Run>, meta_len: u64, image_len: u64) -> Vec<Run> {
    let meta = (meta_len > 0).then_some(Run {
        offset: 0,
        len: meta_len,
    });
    let mut v: Vec<Run> = runs
        .into_iter()
        .chain(meta)
        .filter_map(|r| {
            let start = r.offset / GRANULE * GRANULE;
            let end = r
                .end()
                .div_ceil(GRANULE)
                .saturating_mul(GRANULE)
                .min(image_len);
            (start < end).then_some(Run {
                offset: start,
                len: end - start,
            })
        })
        .collect();
    v.sort_unstable();
    let mut out: Vec<Run> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => {
                let end = last.end().max(r.end());
                last.len = end - last.offset;
            }
            _ => out.push(r),
        }
    }
    out
}

/// The file name of delta `index` of the chain of base generation `generation`:
/// `<generation, 20 decimal digits>-<index, 8 decimal digits>.delta`. Fixed widths, so names
/// sort in chain order (by base generation, then position).
pub fn delta_name(generation: u64, index: u64) -> String {
    format!("{generation:020}-{index:08}.delta")
}

/// Parses a [`delta_name`] back to `(generation, index)`; `None` for any other name
/// (temp files, foreign files), and for index 0.
pub fn parse_delta_name(name: &[u8]) -> Option<(u64, u64)> {
    let rest = name.strip_suffix(b".delta")?;
    if rest.len() != 20 + 1 + 8 || rest[20] != b'-' {
        return None;
    }
    let num = |d: &[u8]| -> Option<u64> {
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    let generation = num(&rest[..20])?;
    let index = num(&rest[21..])?;
    (index > 0).then_some((generation, index))
}
