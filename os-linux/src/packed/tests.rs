use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;
use crate::snapshot::{encode_footer, image_crc32c, verify_path, SnapshotMeta};

const MIB: u64 = 1 << 20;

/// A sparse snapshot file of an opaque (strategy 0) image: `image_len` bytes, data written at
/// each `(offset, len)` of `data` (a byte pattern), holes elsewhere.
fn snapshot(dir: &std::path::Path, image_len: u64, data: &[(u64, u64)]) -> std::path::PathBuf {
    let path = dir.join("s.snap");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(image_len + FOOTER_LEN as u64).unwrap();
    for &(off, n) in data {
        let bytes: Vec<u8> = (0..n).map(|i| ((off + i) * 31 % 251) as u8 + 1).collect();
        f.write_all_at(&bytes, off).unwrap();
    }
    let crc = image_crc32c(&f, image_len).unwrap();
    let meta = SnapshotMeta {
        strategy: 0,
        generation: 7,
        unix_time_ns: 1,
    };
    f.write_all_at(&encode_footer(image_len, meta, crc), image_len)
        .unwrap();
    f.sync_all().unwrap();
    path
}

fn packed_bytes(path: &std::path::Path) -> (Plan, Vec<u8>) {
    let f = File::open(path).unwrap();
    let plan = Plan::of(&f).unwrap();
    let mut obj = vec![0u8; plan.len() as usize];
    // Read in odd-sized pieces: every boundary (table, runs, footer, trailer) is crossed.
    let mut at = 0;
    while at < obj.len() {
        let n = (obj.len() - at).min(12_345);
        plan.read_at(&f, at as u64, &mut obj[at..at + n]).unwrap();
        at += n;
    }
    (plan, obj)
}

fn unpack_bytes(dir: &std::path::Path, obj: &[u8]) -> io::Result<std::path::PathBuf> {
    let o = dir.join("obj");
    std::fs::write(&o, obj).unwrap();
    let out = dir.join("out.snap");
    let of = File::create(&out).unwrap();
    unpack(File::open(&o).unwrap(), &of)?;
    Ok(out)
}

#[test]
fn a_packed_base_is_as_large_as_its_data_and_unpacks_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // 64 MiB region, ~1 MiB of data in three places, one of them unaligned and one at the end.
    let image = 64 * MIB;
    let src = snapshot(
        dir.path(),
        image,
        &[(0, 8192), (10 * MIB + 100, 900_000), (image - 4096, 4096)],
    );
    let (plan, obj) = packed_bytes(&src);
    let data = plan.data_len();
    assert!((8192 + 900_000 + 4096..2 * MIB).contains(&data), "{data}");
    assert!(
        (obj.len() as u64) <= data + 4096 + 120,
        "object {} bytes for {data} bytes of data",
        obj.len()
    );
    assert!(!is_packed(File::open(dir.path().join("s.snap")).unwrap()).unwrap());
    let out = unpack_bytes(dir.path(), &obj).unwrap();
    assert!(is_packed(File::open(dir.path().join("obj")).unwrap()).unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    verify_path(&out).unwrap();
    // Holes stay holes: the rebuilt file is sparse.
    let blocks = std::fs::metadata(&out).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(blocks.unwrap() < 4 * MIB, "the rebuilt file is not sparse");
}

#[test]
fn an_all_hole_image_packs_to_its_footer_and_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let src = snapshot(dir.path(), 16 * MIB, &[]);
    let (plan, obj) = packed_bytes(&src);
    assert_eq!(plan.data_len(), 0);
    assert_eq!(obj.len(), FOOTER_LEN + TRAILER_LEN);
    let out = unpack_bytes(dir.path(), &obj).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
}

/// Every single-byte corruption of the table, footer or trailer is refused by `unpack` or
/// caught by the rebuilt file's own check; none panics, none yields a file that verifies
/// with other bytes.
#[test]
fn a_corrupt_packed_object_is_refused_or_fails_verification_never_restored_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let src = snapshot(dir.path(), 4 * MIB, &[(0, 4096), (MIB, 3 * 4096 + 8)]);
    let want = std::fs::read(&src).unwrap();
    let (_, obj) = packed_bytes(&src);
    let positions: Vec<usize> = (0..64)
        .chain(4096..4096 + 64)
        .chain(obj.len() - 140..obj.len())
        .collect();
    for i in positions {
        for bit in [0x01u8, 0x80] {
            let mut bad = obj.clone();
            bad[i] ^= bit;
            match unpack_bytes(dir.path(), &bad) {
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{i}: {e}"),
                Ok(out) => {
                    let sound = verify_path(&out).is_ok();
                    let same = std::fs::read(&out).unwrap() == want;
                    assert!(!sound || same, "byte {i} ^ {bit:#x}: a wrong file verifies");
                }
            }
        }
    }
    // Truncated and extended objects are refused.
    for cut in [1, 64, obj.len() - 1] {
        assert!(unpack_bytes(dir.path(), &obj[..obj.len() - cut]).is_err());
    }
    let mut longer = vec![0u8; 4096];
    longer.extend_from_slice(&obj);
    assert!(unpack_bytes(dir.path(), &longer).is_err());
}
