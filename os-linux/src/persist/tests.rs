use super::*;
use crate::copy::write_all_at;
use crate::memfd::Memfd;
use crate::snapshot::{self, SnapshotMeta};
use std::process::Command;

const CHILD_ENV: &str = "SHMSNAP_TEST_PERSIST_DIR";
const IMAGE: u64 = 2 << 20;

fn meta(generation: u64) -> SnapshotMeta {
    SnapshotMeta {
        strategy: 0,
        generation,
        unix_time_ns: generation * 1000,
    }
}

/// A region whose content is a function of `generation` (so a verified file can be checked
/// to be *the* snapshot of its generation, not a mix).
fn region(generation: u64) -> Memfd {
    let m = Memfd::create("gen", IMAGE).unwrap();
    let page = vec![generation as u8; 4096];
    for p in (0..IMAGE).step_by(64 * 1024) {
        write_all_at(&m, &page, p).unwrap();
    }
    m
}

fn persist_generation(p: &Persister, generation: u64) -> io::Result<()> {
    let m = region(generation);
    p.persist_with(|f| snapshot::write_snapshot(&m, f, IMAGE, meta(generation)).map(drop))?;
    Ok(())
}

/// Checks that `path` is the complete snapshot of some generation; returns it.
fn check_complete(path: &Path) -> u64 {
    let info = snapshot::verify_path(path).unwrap_or_else(|e| panic!("{e}"));
    let g = info.meta.generation;
    let m = region(g);
    assert_eq!(
        snapshot::image_crc32c(&m, IMAGE).unwrap(),
        info.image_crc,
        "not generation {g}"
    );
    g
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap();
    u64::from_ne_bytes(b)
}

/// Child mode of `target_survives_sigkill_mid_persist`: persists generation after generation
/// until killed. Does nothing in a normal test run.
#[test]
fn child_persist_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let p = Persister::new(&Path::new(&dir).join("state.snap"), 2).unwrap();
    let mut g = p
        .generations()
        .unwrap()
        .first()
        .map_or(0, |x| check_complete(&x.path));
    loop {
        g += 1;
        persist_generation(&p, g).unwrap();
    }
}

#[test]
fn target_survives_sigkill_mid_persist() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("state.snap");
    let exe = std::env::current_exe().unwrap();
    let mut last = 0;
    let mut leftovers_seen = 0;
    for _ in 0..24 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "persist::tests::child_persist_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + random_u64() % 60));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if target.exists() {
            let g = check_complete(&target);
            assert!(g >= last, "went back from generation {last} to {g}");
            last = g;
        }
        leftovers_seen += temp_files(dir.path()).len();
    }
    assert!(last > 0, "the writer never completed a persist");
    // The next persist plus the sweep leaves no temp file behind.
    let p = Persister::new(&target, 2).unwrap();
    persist_generation(&p, last + 1).unwrap();
    p.remove_stale_temps().unwrap();
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    assert_eq!(check_complete(&target), last + 1);
    for g in p.generations().unwrap() {
        check_complete(&g.path);
    }
    eprintln!("temp files seen after kills (summed over kills): {leftovers_seen}; all swept");
}

#[test]
fn keeps_n_generations_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s");
    let p = Persister::new(&target, 2).unwrap();
    assert!(p.generations().unwrap().is_empty());
    for g in 1..=5 {
        persist_generation(&p, g).unwrap();
    }
    let gens = p.generations().unwrap();
    let idx: Vec<_> = gens.iter().map(|g| g.index).collect();
    assert_eq!(idx, [0, 1, 2]);
    let got: Vec<_> = gens.iter().map(|g| check_complete(&g.path)).collect();
    assert_eq!(got, [5, 4, 3]);
    assert_eq!(gens[1].path, dir.path().join("s.1"));
    assert!(temp_files(dir.path()).is_empty());

    let p0 = Persister::new(&dir.path().join("only"), 0).unwrap();
    for g in 1..=3 {
        persist_generation(&p0, g).unwrap();
    }
    let gens = p0.generations().unwrap();
    assert_eq!(gens.len(), 1);
    assert_eq!(check_complete(&gens[0].path), 3);
    assert!(temp_files(dir.path()).is_empty());
}

#[test]
fn failed_write_leaves_target_and_directory_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s");
    let p = Persister::new(&target, 1).unwrap();
    persist_generation(&p, 1).unwrap();
    let r: Result<((), PersistStats), io::Error> = p.persist_with(|f| {
        use std::io::Write;
        (&*f).write_all(b"half a snapshot")?;
        Err(io::Error::other("writer failed"))
    });
    assert!(r.is_err());
    assert!(temp_files(dir.path()).is_empty());
    assert_eq!(check_complete(&target), 1);
    assert_eq!(p.generations().unwrap().len(), 1);

    // A temp file is 0600 and dropping the guard removes it.
    let t = p.begin().unwrap();
    let st = rustix::fs::fstat(t.file()).unwrap();
    assert_eq!(st.st_mode & 0o777, 0o600);
    assert!(t
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(".s.tmp."));
    drop(t);
    assert!(temp_files(dir.path()).is_empty());

    // Stale temps of a crashed run are swept; other files are not.
    std::fs::write(dir.path().join(".s.tmp.deadbeef"), b"x").unwrap();
    std::fs::write(dir.path().join(".other.tmp.1"), b"x").unwrap();
    assert_eq!(p.remove_stale_temps().unwrap(), 1);
    assert_eq!(temp_files(dir.path()), [".other.tmp.1"]);
}

#[test]
fn missing_directory_is_named_in_the_error() {
    let e = Persister::new(Path::new("/nonexistent-shmsnap-dir/x"), 1).unwrap_err();
    assert!(e.to_string().contains("/nonexistent-shmsnap-dir"), "{e}");
    assert!(Persister::new(Path::new("/"), 1).is_err());
}
