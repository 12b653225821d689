//! Fuzz entry point for snapshot files: the cargo-fuzz target `snapshot_file` calls
//! [`snapshot_file`] on nightly, and `os-linux/tests/fuzz_replay.rs` replays its corpus and runs
//! it under proptest on stable.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use shmsnap_core::{
    read_descriptor_bytes, Descriptor, Hints, Layout, LayoutError, LayoutRequest, Strategy, Writer,
    DESCRIPTOR_BYTES, PAGE_SIZE,
};
use shmsnap_linux::snapshot::{
    check_image, decode_footer, restore_into, verify, ImageSummary, SnapshotError,
    SnapshotErrorKind, SnapshotInfo, FOOTER_LEN, FOOTER_VERSION, MAGIC,
};
use shmsnap_linux::Memfd;

/// CRC-32C (Castagnoli, reflected), bit by bit: an oracle independent of `crc-fast`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A cursor over fuzz bytes; reads past the end yield zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes([(); 8].map(|()| self.u8()))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// What a file of these bytes must verify to, according to `os-linux/FOOTER.md` (checks in
/// its order), computed without the code under test (the queue image check with core's
/// whole-image functions, where the code under test streams).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    Ok { image_len: u64, image_crc: u32 },
    Truncated { len: u64, needed: u64 },
    BadMagic,
    FooterChecksum { stored: u32, computed: u32 },
    FutureVersion(u64),
    ImageLength(u64),
    ImageLengthMismatch { file: u64, footer: u64 },
    ImageChecksum { stored: u32, computed: u32 },
    Layout(LayoutError),
    BadDescriptor { slot: u64 },
    EntryPastNextSeq { seq: u64, next_seq: u64 },
    TripleImage(shmsnap_core::triple::TripleError),
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

fn oracle(file: &[u8]) -> Expect {
    let len = file.len() as u64;
    let flen = FOOTER_LEN as u64;
    if len < flen {
        return Expect::Truncated { len, needed: flen };
    }
    let body = file.len() - FOOTER_LEN;
    let f = &file[body..];
    if f[..8] != MAGIC {
        return Expect::BadMagic;
    }
    let (stored, computed) = (le32(&f[52..]), crc32c(&f[..52]));
    if stored != computed {
        return Expect::FooterChecksum { stored, computed };
    }
    let version = le64(&f[8..]);
    if version == 0 || version > FOOTER_VERSION {
        return Expect::FutureVersion(version);
    }
    let image_len = le64(&f[16..]);
    if image_len == 0 || !image_len.is_multiple_of(8) {
        return Expect::ImageLength(image_len);
    }
    if (body as u64) < image_len {
        return Expect::Truncated {
            len,
            needed: image_len.saturating_add(flen),
        };
    }
    if body as u64 > image_len {
        return Expect::ImageLengthMismatch {
            file: body as u64,
            footer: image_len,
        };
    }
    let (stored, computed) = (le32(&f[48..]), crc32c(&file[..body]));
    if stored != computed {
        return Expect::ImageChecksum { stored, computed };
    }
    if Strategy::from_code(le64(&f[24..])) == Some(Strategy::Queue) {
        if let Err(e) = queue_entries(&file[..body]) {
            return e;
        }
    }
    if Strategy::from_code(le64(&f[24..])) == Some(Strategy::Triple) {
        // Core's check over the whole image (the code under test reads the two meta pages).
        if let Err(e) = shmsnap_core::triple::read_image(&file[..body], image_len) {
            return Expect::TripleImage(e);
        }
    }
    Expect::Ok {
        image_len,
        image_crc: stored,
    }
}

/// The valid entries of a queue image in slot order, or the first problem `verify` must
/// report, from the whole image in memory (core's `Layout::read_bytes` and
/// `read_descriptor_bytes`).
pub(crate) fn queue_entries(image: &[u8]) -> Result<Vec<(u64, Descriptor)>, Expect> {
    let layout = Layout::read_bytes(image).map_err(Expect::Layout)?;
    let hints = Hints::read_bytes(image);
    let mut entries = Vec::new();
    for slot in 0..layout.entries {
        let at = (layout.desc_offset + slot * DESCRIPTOR_BYTES) as usize;
        if le64(&image[at..]) == 0 {
            continue;
        }
        match read_descriptor_bytes(image, &layout, slot) {
            None => return Err(Expect::BadDescriptor { slot }),
            Some(d) if d.seq >= hints.next_seq => {
                return Err(Expect::EntryPastNextSeq {
                    seq: d.seq,
                    next_seq: hints.next_seq,
                })
            }
            Some(d) => entries.push((slot, d)),
        }
    }
    Ok(entries)
}

/// The error `verify` returned, as an [`Expect`]; an I/O error on a memfd is a finding.
fn actual(r: &Result<SnapshotInfo, SnapshotError>) -> Expect {
    use SnapshotErrorKind as K;
    let e = match r {
        Ok(info) => {
            return Expect::Ok {
                image_len: info.image_len,
                image_crc: info.image_crc,
            }
        }
        Err(e) => e,
    };
    assert!(e.path().is_none(), "an fd-based check named a file: {e}");
    match *e.kind() {
        K::Truncated { len, needed } => Expect::Truncated { len, needed },
        K::BadMagic => Expect::BadMagic,
        K::FooterChecksum { stored, computed } => Expect::FooterChecksum { stored, computed },
        K::FutureVersion { version } => Expect::FutureVersion(version),
        K::ImageLength { image_len } => Expect::ImageLength(image_len),
        K::ImageLengthMismatch { file, footer } => Expect::ImageLengthMismatch { file, footer },
        K::ImageChecksum { stored, computed } => Expect::ImageChecksum { stored, computed },
        K::Layout(l) => Expect::Layout(l),
        K::BadDescriptor { slot } => Expect::BadDescriptor { slot },
        K::EntryPastNextSeq { seq, next_seq } => Expect::EntryPastNextSeq { seq, next_seq },
        K::TripleImage(t) => Expect::TripleImage(t),
        _ => panic!("verify of a memfd returned {e:?}: neither I/O nor region size is involved"),
    }
}

/// A footer encoded from `FOOTER.md`, field by field.
fn footer(version: u64, image_len: u64, meta: [u64; 3], image_crc: u32) -> [u8; FOOTER_LEN] {
    let mut f = [0u8; FOOTER_LEN];
    f[..8].copy_from_slice(&MAGIC);
    f[8..16].copy_from_slice(&version.to_le_bytes());
    f[16..24].copy_from_slice(&image_len.to_le_bytes());
    for (k, m) in meta.iter().enumerate() {
        f[24 + 8 * k..32 + 8 * k].copy_from_slice(&m.to_le_bytes());
    }
    f[48..52].copy_from_slice(&image_crc.to_le_bytes());
    let c = crc32c(&f[..52]);
    f[52..56].copy_from_slice(&c.to_le_bytes());
    f
}

/// [`check_image`] on a verified file reports exactly the entries core finds in `image`.
fn check_entries(f: &File, info: &SnapshotInfo, image: &[u8]) {
    let mut seen = Vec::new();
    let summary = check_image(f, info, |slot, d| seen.push((slot, d)))
        .unwrap_or_else(|e| panic!("check_image refused a verified file: {e}"));
    if Strategy::from_code(info.meta.strategy) == Some(Strategy::Triple) {
        let t = shmsnap_core::triple::read_image(image, info.image_len)
            .unwrap_or_else(|e| panic!("oracle refused: {e:?}"));
        assert_eq!(summary, ImageSummary::Triple(t));
        assert!(seen.is_empty());
        return;
    }
    if Strategy::from_code(info.meta.strategy) != Some(Strategy::Queue) {
        assert_eq!(summary, ImageSummary::Opaque);
        assert!(seen.is_empty());
        return;
    }
    let expect = queue_entries(image).unwrap_or_else(|e| panic!("oracle refused: {e:?}"));
    assert_eq!(seen, expect, "check_image's entries");
    let ImageSummary::Queue {
        entries, newest, ..
    } = summary
    else {
        panic!("a queue image summarised as {summary:?}");
    };
    assert_eq!(entries, expect.len() as u64);
    assert_eq!(newest, expect.iter().map(|&(_, d)| d).max_by_key(|d| d.seq));
}

/// A memfd holding `file`, written only where `data` marks data (the rest stays holes).
fn memfd_with(file: &[u8], data: &[(usize, usize)]) -> File {
    let m = Memfd::create("fuzz-snapshot", file.len() as u64)
        .unwrap_or_else(|e| panic!("memfd_create: {e}"));
    let f = File::from(m.into_fd());
    for &(at, n) in data {
        f.write_all_at(&file[at..at + n], at as u64)
            .unwrap_or_else(|e| panic!("pwrite to a memfd: {e}"));
    }
    f
}

fn read_all(f: &File, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, 0)
        .unwrap_or_else(|e| panic!("pread from a memfd: {e}"));
    v
}

/// A queue image really written by core's [`Writer`]: E ≤ 16, S ≤ 1 KiB, a tail of up to
/// 2 KiB, up to 39 commits of 1–64 bytes, and up to 24 spare bytes past the region.
fn queue_image(input: &mut Input<'_>) -> Vec<u8> {
    let request = LayoutRequest {
        entries: 1 << (input.u8() % 5),
        data_size: 8 << (input.u8() % 8),
    };
    // Header, descriptor ring (E * 32 <= 512 bytes) and data ring (S <= 1 KiB): a page each.
    let region_len = 3 * PAGE_SIZE + u64::from(input.u8()) * 8;
    let mem: Vec<AtomicU64> = (0..region_len / 8).map(|_| AtomicU64::new(0)).collect();
    let mut writer = Writer::open_or_init(&mem[..], request, crate::CLIENT)
        .unwrap_or_else(|e| panic!("init of a {region_len}-byte region for {request:?}: {e}"));
    for _ in 0..input.u8() % 40 {
        let n = usize::from(input.u8() % 64) + 1;
        let payload: Vec<u8> = (0..n).map(|_| input.u8()).collect();
        // Longer than the data ring: refused, which is fine here.
        let _ = writer.commit(&payload);
    }
    let mut image: Vec<u8> = mem
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    image.resize(image.len() + usize::from(input.u8() % 4) * 8, 0);
    image
}

/// Snapshot-file verification and restore over a file decoded from arbitrary bytes.
///
/// The file is either the bytes themselves, or an image (dense, sparse with holes, or a queue
/// region really written by core's [`Writer`]) with a footer encoded independently from
/// `os-linux/FOOTER.md` and then damaged in one of many ways (length field, CRCs, version,
/// magic, truncation, appended bytes, a flipped byte; or a flipped bit in the region header
/// or descriptors *before* the CRC is computed, which only the image check can catch).
///
/// Checks: [`verify`] returns `Ok` exactly when the footer is consistent (image length a
/// nonzero multiple of 8), both CRC-32Cs match (an independent bit-wise CRC is the oracle) and
/// a queue image's header and descriptors are sound (core's whole-image functions are the
/// oracle), and otherwise exactly the typed error FOOTER.md's verification order names, with
/// the right figures and no path; [`check_image`] reports exactly the oracle's entries;
/// [`decode_footer`] agrees on the last 56 bytes; [`restore_into`] restores a verified image
/// byte for byte (zeros past it), refuses a too-small region with `RegionTooSmall`, leaves
/// the region untouched when the footer or the size is refused, and empty (all zeros) when the
/// CRC or the image check refuses the bytes it copied.
///
/// # Panics
///
/// Only on a violated invariant (or if the machine cannot create a memfd).
pub fn snapshot_file(bytes: &[u8]) {
    let mut input = Input(bytes);
    let shape = input.u8();
    let damage = input.u8();
    let arg = input.u64();
    let mut meta = [u64::from(input.u8() % 3), input.u64(), input.u64()];
    let (file, data) = match shape % 5 {
        // The bytes themselves.
        0 => {
            let file = input.rest().to_vec();
            let data = vec![(0, file.len())];
            (file, data)
        }
        // A dense, sparse or queue image with a footer, then damaged.
        s => {
            let mut image;
            let mut data = Vec::new();
            if s == 3 {
                // Sparse: up to 1 MiB of holes with a few data islands; a multiple of 8 long
                // (other lengths are the dense shapes' and the length field's business).
                let len = usize::from(input.u16() % 257) * 4096 + usize::from(input.u8()) * 8;
                image = vec![0u8; len];
                while !input.0.is_empty() && len > 0 {
                    let at = usize::from(input.u16()) * 16 % len;
                    let n = usize::from(input.u8()).min(len - at);
                    let chunk: Vec<u8> = (0..n).map(|_| input.u8()).collect();
                    image[at..at + n].copy_from_slice(&chunk);
                    data.push((at, n));
                }
            } else if s == 4 {
                image = queue_image(&mut input);
                meta[0] = Strategy::Queue.code();
                data.push((0, image.len()));
            } else {
                image = input.rest().to_vec();
                data.push((0, image.len()));
            }
            // Damage the image before its CRC is computed, which only the image check can
            // catch: a flipped bit in the descriptor ring of a queue image (10), in the header
            // words and hints (11), or anywhere in the header page and ring (12).
            let ring = Layout::read_bytes(&image).map_or(512, |l| l.entries * DESCRIPTOR_BYTES);
            let (from, reach) = match damage % 16 {
                10 => (4096, ring as usize),
                11 => (0, 152),
                12 => (0, 4096 + 512),
                _ => (0, 0),
            };
            if reach > 0 && image.len() > from {
                let at = from + (arg as usize) % (image.len() - from).min(reach);
                image[at] ^= 1 << (arg >> 32 & 7);
                data.push((at, 1));
            }
            let image_len = image.len() as u64;
            let crc = crc32c(&image);
            let mut version = FOOTER_VERSION;
            let mut len_field = image_len;
            let mut crc_field = crc;
            match damage % 16 {
                0 => len_field = image_len.wrapping_add(arg % 17).wrapping_sub(8),
                1 => len_field = arg,
                2 => crc_field ^= (arg as u32).max(1),
                3 => version = arg % 4,
                4 => version = arg,
                _ => {}
            }
            let mut f = footer(version, len_field, meta, crc_field);
            match damage % 16 {
                // A corrupt footer: one flipped bit anywhere in it.
                5 => f[(arg % 56) as usize] ^= 1 << (arg >> 8 & 7),
                6 => f[52] ^= 0x40,
                _ => {}
            }
            let mut file = image;
            file.extend_from_slice(&f);
            data.push((file.len() - FOOTER_LEN, FOOTER_LEN));
            match damage % 16 {
                // Cut short, or with bytes appended.
                7 => {
                    let cut = (arg as usize) % (file.len() + 1);
                    file.truncate(file.len() - cut);
                    data = data
                        .into_iter()
                        .filter(|&(at, _)| at < file.len())
                        .map(|(at, n)| (at, n.min(file.len() - at)))
                        .collect();
                }
                8 => {
                    let extra = (arg % 64) as usize + 1;
                    let at = file.len();
                    file.extend((0..extra).map(|i| i as u8 ^ 0x5a));
                    data.push((at, extra));
                }
                // One flipped bit in the image.
                9 if file.len() > FOOTER_LEN => {
                    let at = (arg as usize) % (file.len() - FOOTER_LEN);
                    file[at] ^= 1 << (arg >> 32 & 7);
                    data.push((at, 1));
                }
                _ => {}
            }
            (file, data)
        }
    };

    let f = memfd_with(&file, &data);
    let expect = oracle(&file);
    let result = verify(&f);
    let got = actual(&result);
    assert_eq!(got, expect, "verify of a {}-byte file", file.len());
    if let Ok(info) = &result {
        check_entries(&f, info, &file[..info.image_len as usize]);
    }

    // decode_footer agrees with the oracle's footer steps.
    if file.len() >= FOOTER_LEN {
        let mut last = [0u8; FOOTER_LEN];
        last.copy_from_slice(&file[file.len() - FOOTER_LEN..]);
        match (decode_footer(&last), &expect) {
            (Ok(info), _) => {
                assert!(
                    !matches!(
                        expect,
                        Expect::BadMagic | Expect::FooterChecksum { .. } | Expect::FutureVersion(_)
                    ),
                    "decode_footer accepted a footer verify must refuse ({expect:?})"
                );
                assert_eq!(info.version, le64(&last[8..]));
                assert_eq!(info.image_len, le64(&last[16..]));
                assert_eq!(
                    [
                        info.meta.strategy,
                        info.meta.generation,
                        info.meta.unix_time_ns
                    ],
                    [le64(&last[24..]), le64(&last[32..]), le64(&last[40..])]
                );
                assert_eq!(info.image_crc, le32(&last[48..]));
                if let Ok(v) = &result {
                    assert_eq!(*v, info, "verify and decode_footer disagree");
                }
            }
            (
                Err(e),
                Expect::BadMagic | Expect::FooterChecksum { .. } | Expect::FutureVersion(_),
            ) => {
                assert_eq!(actual(&Err(e)), expect, "decode_footer's error")
            }
            (Err(e), _) => panic!("decode_footer refused a footer verify accepts: {e}"),
        }
    }

    // restore_into: exact bytes when verified; the region untouched when not.
    let image_len = match expect {
        Expect::Ok { image_len, .. } => Some(image_len),
        _ => None,
    };
    let slack = u64::from(shape / 5) * 64;
    let region_len = image_len.map_or(4096, |l| match damage >> 4 {
        0 if l > 0 => l - 1,
        _ => l + slack,
    });
    let region =
        Memfd::create("fuzz-region", region_len).unwrap_or_else(|e| panic!("memfd_create: {e}"));
    let stale: Vec<u8> = (0..region_len.min(8192))
        .map(|i| (i as u8) | 0x80)
        .collect();
    // A second descriptor of the region's file, for plain reads and writes (the region may
    // be empty, which `Memfd::from_fd` would refuse).
    let rf = File::from(
        region
            .as_fd()
            .try_clone_to_owned()
            .unwrap_or_else(|e| panic!("dup of a memfd: {e}")),
    );
    rf.write_all_at(&stale, 0)
        .unwrap_or_else(|e| panic!("pwrite to a memfd: {e}"));
    let restored = restore_into(&f, &region);
    let after = read_all(&rf, region_len as usize);
    match (restored, image_len) {
        (Ok((info, _)), Some(l)) => {
            assert!(
                l <= region_len,
                "restored a {l}-byte image into {region_len} bytes"
            );
            assert_eq!(info.image_len, l);
            let body = &file[..l as usize];
            assert_eq!(
                &after[..l as usize],
                body,
                "restored bytes differ from the image"
            );
            assert!(
                after[l as usize..].iter().all(|&b| b == 0),
                "the region past the restored image is not zero"
            );
        }
        (Ok(_), None) => panic!("restore_into accepted a file verify refuses ({expect:?})"),
        (Err(e), Some(l)) if matches!(e.kind(), SnapshotErrorKind::RegionTooSmall { .. }) => {
            let SnapshotErrorKind::RegionTooSmall { image, region } = *e.kind() else {
                unreachable!()
            };
            assert!(
                image == l && region == region_len && l > region_len,
                "RegionTooSmall {{ image: {image}, region: {region} }} for {l} into {region_len}"
            );
            assert_eq!(
                &after[..stale.len()],
                &stale[..],
                "a refused restore wrote the region"
            );
        }
        (Err(e), _) => {
            assert_eq!(actual(&Err(e)), expect, "restore_into's error");
            // Past a sound footer, into a region it fits, restore_into copies while it checks
            // and empties the region when a check fails; before that it writes nothing.
            let body = file.len().saturating_sub(FOOTER_LEN) as u64;
            let past_footer = matches!(
                expect,
                Expect::ImageChecksum { .. }
                    | Expect::Layout(_)
                    | Expect::BadDescriptor { .. }
                    | Expect::EntryPastNextSeq { .. }
                    | Expect::TripleImage(_)
            );
            if past_footer && body <= region_len {
                assert!(
                    after.iter().all(|&b| b == 0),
                    "a refused restore left bytes in the region ({expect:?})"
                );
            } else {
                assert_eq!(
                    &after[..stale.len()],
                    &stale[..],
                    "a refused restore wrote the region"
                );
            }
        }
    }
}
