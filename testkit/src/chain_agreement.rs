//! Fuzz entry point for snapshot chains: `verify` and `restore` give one answer. The
//! cargo-fuzz target `chain_agreement` calls [`chain_agreement`] on nightly, and
//! `os-linux/tests/chain_agreement.rs` replays its corpus and runs it under proptest on stable.
//!
//! The bytes decode to a base (a queue region really written by core's `Writer`, or an
//! opaque exit-strategy image; sometimes corrupt under its footer, or with garbage meta under
//! a correct CRC) and up to six deltas written by `DeltaWriter` (so every CRC is right):
//! honest ones (more commits, the changed pages and the meta pages), garbage meta pages, runs
//! that zero the whole image, arbitrary pages, a descriptor pushed past `next_seq`; then files
//! damaged on disk: truncated, removed, a data byte flipped, or replaced by a symbolic link to
//! a sound copy kept elsewhere. The oracle, computed without the code under test (core's
//! whole-image checks over the test's own model of each point), says where the chain must
//! end. Then:
//!
//! - `verify_chain` and `restore_chain` both fail exactly when the base yields no point;
//! - otherwise both end the chain at the oracle's link, name the same file with the same kind
//!   of reason, and the restored image is byte for byte the model's point, which passes the
//!   image check.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shmsnap_core::{LayoutRequest, Strategy, Writer, PAGE_SIZE};
use shmsnap_linux::chain::{self, At, ChainError, DeltaMeta, DeltaWriter, Run, Tip};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotMeta};
use shmsnap_linux::Memfd;

use crate::input::Input;
use crate::snapshot_file::queue_entries;
use crate::words::{from_bytes, to_bytes};

/// The image: 16 pages (a 16-entry ring, a 1 KiB data ring and a tail for a queue).
const IMAGE: u64 = 16 * PAGE_SIZE;
/// The queue layout's meta pages (header + descriptor ring): bytes `0..META`.
const META: u64 = 2 * PAGE_SIZE;

/// What happens to a delta's file after the chain is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    None,
    /// Cut short by this many bytes (at least 1).
    Truncate(u64),
    /// Removed.
    Remove,
    /// One data byte flipped (the data CRC no longer matches).
    FlipData(u64),
    /// Replaced by a symbolic link to a sound copy kept outside the chain directory.
    Symlink,
}

/// One delta as written: its file and the model's image after it.
struct Written {
    path: PathBuf,
    image: Vec<u8>,
    damage: Damage,
}

/// What verify and restore agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The base yields no point (both refused it).
    NoPoint,
    /// The chain's state: this many deltas applied, and the stop's file name and kind (a
    /// `ChainErrorKind` variant's name) when a link ended it.
    Ends {
        /// Deltas applied.
        deltas: usize,
        /// The file named and the kind of reason (`"Image"`, `"DataChecksum"`, …).
        stop: Option<(String, String)>,
    },
}

/// See the [module docs](self). Panics only on a violated invariant.
pub fn chain_agreement(data: &[u8]) {
    verdict(data);
}

/// [`chain_agreement`], returning what verify and restore agreed on (for named tests).
pub fn verdict(data: &[u8]) -> Verdict {
    let mut input = Input::new(data);
    let dir = scratch_dir();
    let state = dir.path().join("state.snap");
    let persister = Persister::new(&state, 1).expect("persister in a fresh directory");
    let queue = input.u8() % 4 != 3;
    let strategy = if queue {
        Strategy::Queue
    } else {
        Strategy::Exit
    };
    let mut image = base_image(&mut input, queue);
    // 5: a corrupt base (an image byte flipped under its CRC); 6: garbage meta under a
    // correct CRC (its own image check fails).
    let base_damage = input.u8() % 8;
    if base_damage == 6 && queue {
        // Garbage meta under a correct CRC: the base's own image check fails.
        scribble(&mut image, 0, META, &mut input);
    }
    let region = Memfd::create("chain-agreement", IMAGE).expect("memfd");
    let mut tip = write_base(&persister, &region, &image, strategy);
    let count = input.u8() % 7;
    let mut written = Vec::new();
    for i in 0..count {
        let (next, runs, meta_len) = next_image(&image, queue, &mut input);
        write_all(&region, &next);
        let mut w = DeltaWriter::begin(&persister, &tip, &runs, meta_len).expect("delta begin");
        w.copy_from(&region).expect("delta copy");
        let t = u64::from(i) + 2;
        let info = w
            .commit(DeltaMeta {
                next_seq_before: 0,
                next_seq: 0,
                unix_time_ns: t,
            })
            .expect("delta commit");
        tip = info.tip();
        let damage = damage(&mut input, &info.path);
        written.push(Written {
            path: info.path,
            image: next.clone(),
            damage,
        });
        image = next;
    }
    let base_ok = match base_damage {
        5 => {
            flip(&state, input.u64() % IMAGE);
            false
        }
        6 if queue => false,
        _ => true,
    };
    for w in &written {
        apply(w, dir.path());
    }
    let base_image = read(&state, IMAGE);
    let base_ok = base_ok && (!queue || queue_entries(&base_image).is_ok());
    check(&state, queue, base_ok, &base_image, &written)
}

/// The expected end of the chain: how many deltas are applied, and the file named as the
/// stop (none if the chain simply ends).
fn oracle(queue: bool, written: &[Written]) -> (usize, Option<PathBuf>) {
    for (j, w) in written.iter().enumerate() {
        let bad_image = queue && queue_entries(&w.image).is_err();
        match w.damage {
            Damage::Remove => {
                let later = written[j + 1..].iter().any(|l| l.damage != Damage::Remove);
                return (j, later.then(|| w.path.clone()));
            }
            Damage::None if !bad_image => {}
            _ => return (j, Some(w.path.clone())),
        }
    }
    (written.len(), None)
}

/// verify and restore against the oracle and each other.
fn check(
    state: &Path,
    queue: bool,
    base_ok: bool,
    base_image: &[u8],
    written: &[Written],
) -> Verdict {
    let dir = chain::chain_dir(state);
    let verified = chain::verify_chain(state, &dir);
    let back = Memfd::create("chain-agreement-back", IMAGE).expect("memfd");
    let restored = chain::restore_chain(state, &dir, &back, At::Latest);
    let (verified, restored) = match (verified, restored) {
        (Err(v), Err(r)) => {
            assert!(
                !base_ok,
                "a sound base was refused: verify {v}, restore {r}"
            );
            assert_eq!(same_kind(&v), same_kind(&r), "verify: {v}; restore: {r}");
            return Verdict::NoPoint;
        }
        (Ok(v), Ok(r)) => (v, r),
        (v, r) => panic!(
            "verify and restore disagree about the base: verify {:?}, restore {:?}",
            v.map(|l| l.deltas.len()).map_err(|e| e.to_string()),
            r.map(|r| r.listing.deltas.len()).map_err(|e| e.to_string())
        ),
    };
    assert!(base_ok, "a base that yields no point was accepted");
    let (k, stop) = oracle(queue, written);
    let r = &restored.listing;
    assert_eq!(
        verified.deltas.len(),
        k,
        "verify's end: {:?}",
        verified.stop
    );
    assert_eq!(r.deltas.len(), k, "restore's end: {:?}", r.stop);
    let path = |s: &Option<ChainError>| s.as_ref().and_then(|e| e.path().map(Path::to_path_buf));
    assert_eq!(
        path(&verified.stop),
        stop,
        "verify names {:?}",
        verified.stop
    );
    assert_eq!(path(&r.stop), stop, "restore names {:?}", r.stop);
    if let (Some(v), Some(re)) = (&verified.stop, &r.stop) {
        assert_eq!(same_kind(v), same_kind(re), "verify: {v}; restore: {re}");
    }
    let got = read_fd(&back, IMAGE);
    let want = k
        .checked_sub(1)
        .map_or(base_image, |j| &written[j].image[..]);
    assert!(got == want, "restore wrote another image than point {k}");
    if queue {
        assert!(
            queue_entries(&got).is_ok(),
            "the restored image fails the check"
        );
    }
    Verdict::Ends {
        deltas: k,
        stop: r.stop.as_ref().map(|e| {
            let name = e.path().and_then(Path::file_name).unwrap_or_default();
            let kind = format!("{:?}", e.kind());
            let kind = kind
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_owned();
            (name.to_string_lossy().into_owned(), kind)
        }),
    }
}

/// The kind of a chain error, as a comparable value.
fn same_kind(e: &ChainError) -> std::mem::Discriminant<chain::ChainErrorKind> {
    std::mem::discriminant(e.kind())
}

/// A base image: a queue region with a few commits, or arbitrary pages.
fn base_image(input: &mut Input<'_>, queue: bool) -> Vec<u8> {
    if !queue {
        let mut image = vec![0u8; IMAGE as usize];
        for _ in 0..input.u8() % 4 {
            let p = u64::from(input.u8()) % (IMAGE / PAGE_SIZE);
            scribble(&mut image, p * PAGE_SIZE, PAGE_SIZE, input);
        }
        return image;
    }
    let words = from_bytes(&vec![0u8; IMAGE as usize]);
    let request = LayoutRequest {
        entries: 16,
        data_size: 1024,
    };
    let mut w = Writer::open_or_init(&words[..], request, crate::CLIENT).expect("a fresh region");
    for _ in 0..1 + input.u8() % 8 {
        let len = 1 + usize::from(input.u8() % 64);
        w.commit(&vec![input.u8(); len]).expect("commit");
    }
    drop(w); // releases the claim: an image carries none
    to_bytes(&words[..])
}

/// The next point: its image, the runs a delta carries to get there, and its `meta_len`.
fn next_image(image: &[u8], queue: bool, input: &mut Input<'_>) -> (Vec<u8>, Vec<Run>, u64) {
    let mut next = image.to_vec();
    let whole = |n: &[u8]| (n.to_vec(), changed(image, n), 0);
    match input.u8() % 6 {
        0 | 1 if queue => {
            let words = from_bytes(image);
            if let Ok(mut w) = Writer::attach(&words[..], crate::CLIENT) {
                for _ in 0..1 + input.u8() % 6 {
                    let len = 1 + usize::from(input.u8() % 200);
                    let _ = w.commit(&vec![input.u8(); len]);
                }
            }
            let n = to_bytes(&words[..]);
            let runs = chain::plan_runs(changed(image, &n), META, IMAGE);
            (n, runs, META)
        }
        2 => {
            scribble(&mut next, 0, META, input);
            let runs = chain::plan_runs(Vec::new(), META, IMAGE);
            (next, runs, META)
        }
        3 => {
            next.fill(0);
            let runs = vec![Run {
                offset: 0,
                len: IMAGE,
            }];
            (next, runs, META)
        }
        4 if queue => {
            // A descriptor's seq pushed to the `next_seq` hint or past it: a valid slot, an
            // entry the image check must refuse (or an invalid one).
            let slot = u64::from(input.u8() % 16);
            let next_seq = u64::from_le_bytes(next[128..136].try_into().expect("8 bytes"));
            let seq = next_seq + u64::from(input.u8() % 40);
            let at = (PAGE_SIZE + slot * 32) as usize;
            next[at..at + 8].copy_from_slice(&seq.to_le_bytes());
            let runs = chain::plan_runs(Vec::new(), META, IMAGE);
            (next, runs, META)
        }
        _ => {
            for _ in 0..1 + input.u8() % 3 {
                let p = u64::from(input.u8()) % (IMAGE / PAGE_SIZE);
                scribble(&mut next, p * PAGE_SIZE, PAGE_SIZE, input);
            }
            whole(&next)
        }
    }
}

/// The pages where `old` and `new` differ, as runs.
fn changed(old: &[u8], new: &[u8]) -> Vec<Run> {
    let runs = old
        .chunks(PAGE_SIZE as usize)
        .zip(new.chunks(PAGE_SIZE as usize))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| Run {
            offset: i as u64 * PAGE_SIZE,
            len: PAGE_SIZE,
        });
    chain::plan_runs(runs, 0, IMAGE)
}

/// Fills `image[at..at + len]` with bytes derived from the input (a seeded xorshift, so a
/// short input still gives varied bytes).
fn scribble(image: &mut [u8], at: u64, len: u64, input: &mut Input<'_>) {
    let mut x = input.u64() | 1;
    for b in &mut image[at as usize..(at + len) as usize] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// The damage for the delta at `path`, decoded.
fn damage(input: &mut Input<'_>, path: &Path) -> Damage {
    let len = std::fs::metadata(path).map_or(1, |m| m.len());
    match input.u8() % 16 {
        12 => Damage::Truncate(1 + input.u64() % len),
        13 => Damage::Remove,
        // A delta without data has no data byte to flip (found by the fuzzer: the harness
        // expected the chain to end at such a delta).
        14 if layout_of(path).1 == 0 => Damage::None,
        14 => Damage::FlipData(input.u64()),
        15 => Damage::Symlink,
        _ => Damage::None,
    }
}

/// Applies a delta's damage on disk.
fn apply(w: &Written, dir: &Path) {
    match w.damage {
        Damage::None => {}
        Damage::Truncate(n) => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&w.path)
                .expect("open delta");
            let len = f.metadata().expect("stat").len();
            f.set_len(len.saturating_sub(n)).expect("truncate");
        }
        Damage::Remove => std::fs::remove_file(&w.path).expect("remove delta"),
        Damage::FlipData(at) => {
            let (table, data) = layout_of(&w.path);
            flip(&w.path, table + at % data);
        }
        Damage::Symlink => {
            let elsewhere = dir.join("elsewhere");
            std::fs::create_dir_all(&elsewhere).expect("mkdir");
            let copy = elsewhere.join(w.path.file_name().expect("a name"));
            std::fs::copy(&w.path, &copy).expect("copy delta");
            std::fs::remove_file(&w.path).expect("remove delta");
            std::os::unix::fs::symlink(&copy, &w.path).expect("symlink");
        }
    }
}

/// `(table length, data length)` of the delta at `path`, from its footer.
fn layout_of(path: &Path) -> (u64, u64) {
    let bytes = std::fs::read(path).expect("read delta");
    let mut f = [0u8; chain::DELTA_FOOTER_LEN];
    f.copy_from_slice(&bytes[bytes.len() - chain::DELTA_FOOTER_LEN..]);
    let footer = chain::decode_delta_footer(&f).expect("a written delta's footer");
    (footer.table_len(), footer.data_len)
}

/// Flips one bit of the byte at `at` of `path`.
fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write");
}

/// Persists `image` as the base (generation 1).
fn write_base(persister: &Persister, region: &Memfd, image: &[u8], strategy: Strategy) -> Tip {
    write_all(region, image);
    let meta = SnapshotMeta {
        strategy: strategy.code(),
        generation: 1,
        unix_time_ns: 1,
    };
    let ((info, _), _) = persister
        .persist_with(|f| snapshot::write_snapshot(region, f, IMAGE, meta))
        .expect("persist the base");
    Tip::of_base(&info)
}

/// Writes `bytes` at the start of the memfd.
fn write_all(fd: &Memfd, bytes: &[u8]) {
    dup(fd).write_all_at(bytes, 0).expect("pwrite");
}

/// The first `len` bytes of the memfd.
fn read_fd(fd: &Memfd, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    dup(fd).read_exact_at(&mut v, 0).expect("pread");
    v
}

/// A `File` of the memfd's open file description (a dup), for std's positional I/O.
fn dup(fd: &Memfd) -> std::fs::File {
    std::fs::File::from(fd.as_fd().try_clone_to_owned().expect("dup"))
}

fn read(path: &Path, len: u64) -> Vec<u8> {
    let mut v = std::fs::read(path).expect("read");
    v.truncate(len as usize);
    v
}

/// A fresh directory, on tmpfs when there is one (a delta's `fdatasync` and directory `fsync`
/// cost little there), removed when dropped.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("shmsnap-chain-agreement-")
        .tempdir_in(shm);
    b.or_else(|_| tempfile::tempdir())
        .expect("a temp directory")
}
