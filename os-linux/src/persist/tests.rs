use super::*;
use crate::copy::write_all_at;
use crate::memfd::Memfd;
use crate::snapshot::{self, SnapshotMeta};
use std::process::Command;

const CHILD_ENV: &str = "SHMSNAP_TEST_PERSIST_DIR";
const IMAGE: u64 = 2 << 20;

fn meta(generation: u64) -> SnapshotMeta {
    SnapshotMeta {
        strategy: shmsnap_core::Strategy::Exit.code(),
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

#[test]
fn a_second_persister_of_one_target_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s");
    let first = Persister::new(&target, 1).unwrap();
    // A second open of the lock file is a separate open file description, so flock
    // conflicts within one process exactly as between two processes.
    let e = Persister::new(&target, 1).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    match StateError::of(&e) {
        Some(StateError::Locked { lock, holder }) => {
            assert_eq!(lock, &dir.path().join("s.lock"));
            assert_eq!(*holder, Some(std::process::id()), "holder from /proc/locks");
        }
        other => panic!("not Locked: {other:?} ({e})"),
    }
    assert!(e.to_string().contains("s.lock") && e.to_string().contains("locked by process"));
    // Another target in the same directory is independent.
    let other = Persister::new(&dir.path().join("t"), 1).unwrap();
    drop(first);
    let again = reopen(&target, 1);
    persist_value(&again, 7).unwrap();
    drop((again, other));
    // The lock file stays (deleting it would let two holders lock two different inodes).
    assert!(dir.path().join("s.lock").exists());
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("state.snap");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([
            "--exact",
            "persist::tests::child_persist_writer",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the child holds the lock (its first generation appears).
    while !target.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = Persister::new(&target, 2).unwrap_err();
    match StateError::of(&e) {
        Some(StateError::Locked { holder, .. }) => assert_eq!(*holder, Some(child.id())),
        other => panic!("not Locked: {other:?} ({e})"),
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reopen(&target, 2); // the lock died with its holder
}

#[test]
fn symlinks_fifos_and_huge_keep_are_refused_without_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.snap");
    std::fs::write(&real, b"x").unwrap();
    let link = dir.path().join("link.snap");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = Persister::new(&link, 1).unwrap_err();
    assert!(
        matches!(StateError::of(&e), Some(StateError::Symlink { points_to, .. }) if points_to == &real),
        "{e}"
    );
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let fifo = dir.path().join("fifo.snap");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let e = Persister::new(&fifo, 1).unwrap_err();
    assert!(
        matches!(StateError::of(&e), Some(StateError::NotRegular { .. })),
        "{e}"
    );
    let e = Persister::new(&real, MAX_KEEP + 1).unwrap_err();
    assert!(
        matches!(StateError::of(&e), Some(StateError::KeepTooLarge { .. })),
        "{e}"
    );
    Persister::new(&real, MAX_KEEP).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Only the accepted target got its lock file; the link still is a link.
    assert_eq!(
        names,
        ["fifo.snap", "link.snap", "real.snap", "real.snap.lock"]
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

// ---------------------------------------------------------------------------------------
// Cuts in the middle of the generation shuffle (issue 11, item 11).
// ---------------------------------------------------------------------------------------

/// `Persister::new`, waiting out a transient `Locked`: a child that another test thread is
/// spawning holds a copy of every fd between its `fork` and its `exec` (close-on-exec takes
/// effect only at `exec`), so a lock just released may still be held for that moment.
fn reopen(target: &Path, keep: usize) -> Persister {
    for _ in 0..10_000 {
        match Persister::new(target, keep) {
            Err(e) if matches!(StateError::of(&e), Some(StateError::Locked { .. })) => {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r.unwrap(),
        }
    }
    panic!("{} stayed locked", target.display());
}

fn persist_value(p: &Persister, v: u64) -> io::Result<()> {
    use std::io::Write;
    p.persist_with(|f| (&*f).write_all(&v.to_le_bytes()))?;
    Ok(())
}

/// (index, value) of every generation, by index.
fn values(p: &Persister) -> Vec<(usize, u64)> {
    p.generations()
        .unwrap()
        .iter()
        .map(|g| {
            let b = std::fs::read(&g.path).unwrap();
            (g.index, u64::from_le_bytes(b.try_into().unwrap()))
        })
        .collect()
}

/// A persist of `v` cut after `cut` directory operations (`None`: not cut). Returns whether
/// it was cut.
fn persist_cut(p: &Persister, v: u64, cut: Option<usize>) -> bool {
    crash_point::arm(cut);
    let r = persist_value(p, v);
    crash_point::arm(None);
    match r {
        Ok(()) => false,
        Err(e) if e.to_string().contains("injected cut") => true,
        Err(e) => panic!("persist failed: {e}"),
    }
}

/// After a (possibly cut) persist, as a restarted host sees it: the target is the newest
/// value that became the target, generations are newest first, and every generation
/// `keep` promised is there. Updates `history` (the values that became the target).
fn check_after_cut(target: &Path, keep: usize, history: &mut Vec<u64>, wrote: u64) {
    let p = reopen(target, keep);
    p.remove_stale_temps().unwrap();
    assert!(temp_files(target.parent().unwrap()).is_empty());
    let v = values(&p);
    let current = v.first().filter(|g| g.0 == 0).map(|g| g.1);
    if current == Some(wrote) && history.last() != Some(&wrote) {
        history.push(wrote);
    }
    assert_eq!(
        current,
        history.last().copied(),
        "target is old or new: {v:?}"
    );
    assert!(
        v.windows(2).all(|w| w[0].1 >= w[1].1),
        "generations not newest first: {v:?}"
    );
    let promised = &history[history.len().saturating_sub(keep + 1)..];
    for want in promised {
        assert!(
            v.iter().any(|g| g.1 == *want),
            "generation {want} lost (keep {keep}, history {history:?}): {v:?}"
        );
    }
}

/// The exact final state after clean persists: the target and `<target>.1..=keep`, the
/// newest `keep + 1` values, nothing else.
fn check_clean(target: &Path, keep: usize, history: &[u64]) {
    let p = reopen(target, keep);
    let want: Vec<(usize, u64)> = history
        .iter()
        .rev()
        .take(keep + 1)
        .copied()
        .enumerate()
        .collect();
    assert_eq!(values(&p), want, "history {history:?}");
    assert!(temp_files(target.parent().unwrap()).is_empty());
}

#[test]
fn every_cut_of_the_shuffle_keeps_the_promised_generations() {
    let mut cases = 0;
    for keep in 0..=3usize {
        for k1 in 0.. {
            let mut k1_cut = false;
            for k2 in 0.. {
                let dir = tempfile::tempdir().unwrap();
                let target = dir.path().join("s");
                let mut history = Vec::new();
                {
                    let p = Persister::new(&target, keep).unwrap();
                    for v in 1..=keep as u64 + 2 {
                        persist_value(&p, v).unwrap();
                        history.push(v);
                    }
                }
                check_clean(&target, keep, &history);
                let mut next = keep as u64 + 3;
                // First cut, then a second cut persist, then two clean ones.
                let cut1 = persist_cut(&reopen(&target, keep), next, Some(k1));
                k1_cut = cut1;
                check_after_cut(&target, keep, &mut history, next);
                next += 1;
                let cut2 = persist_cut(&reopen(&target, keep), next, Some(k2));
                check_after_cut(&target, keep, &mut history, next);
                for _ in 0..2 {
                    next += 1;
                    let p = reopen(&target, keep);
                    persist_value(&p, next).unwrap();
                    history.push(next);
                }
                check_clean(&target, keep, &history);
                cases += 1;
                if !cut2 || !cut1 {
                    break;
                }
            }
            if !k1_cut {
                break;
            }
        }
    }
    // keep 0..=3: 1 + keep shuffle ops, rename, fsync, unlinks.
    assert!(cases > 40, "only {cases} cut combinations ran");
    eprintln!("{cases} cut combinations");
}

#[test]
fn plans_never_overwrite_a_kept_generation() {
    // After a cut that left a gap at .2 (keep 3): the gap is closed, nothing promised dropped.
    let p = Plan::new(3, &[1, 3, 4], true, false);
    assert_eq!(p.before, [Op::Rename(1, 2), Op::LinkTargetToOne]);
    assert_eq!(p.after, [4]);
    // Past a gap, backups move down (newest first) to their rank's place.
    let p = Plan::new(3, &[2, 5], true, false);
    assert_eq!(p.before, [Op::Rename(5, 3), Op::LinkTargetToOne]);
    assert!(p.after.is_empty());
    // A full chain: the oldest is parked at keep+1 first, then everything moves up.
    let p = Plan::new(2, &[1, 2], true, false);
    assert_eq!(
        p.before,
        [Op::Rename(2, 3), Op::Rename(1, 2), Op::LinkTargetToOne]
    );
    assert_eq!(p.after, [3]);
    // Cut between the link and the switch: no second shuffle.
    let p = Plan::new(2, &[1, 2, 3], true, true);
    assert!(p.before.is_empty());
    assert_eq!(p.after, [3]);
}

// ---------------------------------------------------------------------------------------
// The durable point before the cleanup (issue 27: the host publishes in between).
// ---------------------------------------------------------------------------------------

/// As [`check_clean`], through the persister `p` that holds the lock.
fn expect_clean(p: &Persister, keep: usize, history: &[u64]) {
    let want: Vec<(usize, u64)> = history
        .iter()
        .rev()
        .take(keep + 1)
        .copied()
        .enumerate()
        .collect();
    assert_eq!(values(p), want, "keep {keep}, history {history:?}");
}

fn persist_value_durable(p: &Persister, v: u64) -> io::Result<PersistStats> {
    use std::io::Write;
    let tmp = p.begin()?;
    tmp.file().write_all(&v.to_le_bytes())?;
    tmp.commit_durable()
}

#[test]
fn commit_durable_leaves_the_dropped_generation_for_drop_old_or_the_next_persist() {
    for keep in 0..=3usize {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        let p = Persister::new(&target, keep).unwrap();
        let mut history = Vec::new();
        for v in 1..=keep as u64 + 1 {
            persist_value(&p, v).unwrap();
            history.push(v);
        }
        expect_clean(&p, keep, &history);
        // At the durable point the new value is the target and the one leaving the set is
        // still under a generation name past `keep`.
        let v = keep as u64 + 2;
        let stats = persist_value_durable(&p, v).unwrap();
        history.push(v);
        assert_eq!(stats.drop_old, Duration::ZERO);
        let got = values(&p);
        assert_eq!(got[0], (0, v), "keep {keep}: {got:?}");
        assert_eq!(
            got.len(),
            keep + 2,
            "keep {keep}: one past keep left: {got:?}"
        );
        // drop_old removes exactly it; a second call has nothing to do.
        assert!(!p.drop_old().unwrap().is_zero());
        expect_clean(&p, keep, &history);
        assert!(p.drop_old().unwrap().is_zero());
        // Left pending, the next persist unlinks it before planning (never renaming over
        // it): the result is the same clean state.
        let v = v + 1;
        persist_value_durable(&p, v).unwrap();
        history.push(v);
        let v = v + 1;
        persist_value(&p, v).unwrap();
        history.push(v);
        expect_clean(&p, keep, &history);
    }
}

/// Child mode of `a_sigkill_between_the_durable_point_and_the_cleanup_is_safe`: persists
/// `value` with `commit_durable`, says so on stdout, and waits to be killed before the
/// cleanup. Does nothing in a normal test run.
#[test]
fn child_durable_then_wait() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let target = Path::new(&dir).join("s");
    let p = reopen(&target, 1);
    let v = values(&p).first().map_or(0, |g| g.1) + 1;
    persist_value_durable(&p, v).unwrap();
    println!("durable {v}");
    std::thread::sleep(Duration::from_secs(60));
    p.drop_old().unwrap();
}

#[test]
fn a_sigkill_between_the_durable_point_and_the_cleanup_is_safe() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("s");
    {
        let p = Persister::new(&target, 1).unwrap();
        for v in 1..=2 {
            persist_value(&p, v).unwrap();
        }
    }
    let exe = std::env::current_exe().unwrap();
    let mut history = vec![1, 2];
    for _ in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "persist::tests::child_durable_then_wait",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        // The harness may print "test <name> ... " on the same line first.
        while !said.contains("durable ") {
            said.clear();
            assert!(out.read_line(&mut said).unwrap() > 0, "the child ended");
        }
        child.kill().unwrap(); // SIGKILL, between the durable point and the cleanup
        child.wait().unwrap();
        let v: u64 = said
            .rsplit("durable ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        history.push(v);
        // What a restarted host finds: the new value as the target, newest first, every
        // promised generation, and the one past `keep` still there.
        let p = reopen(&target, 1);
        let got = values(&p);
        assert_eq!(got[0], (0, v), "{got:?}");
        assert_eq!(
            got,
            [(0, v), (1, v - 1), (2, v - 2)],
            "target, .1, and the parked generation"
        );
        drop(p);
        check_after_cut(&target, 1, &mut history, v);
    }
    // The next clean persist is back to exactly `keep` generations.
    let p = reopen(&target, 1);
    let v = history.last().unwrap() + 1;
    persist_value(&p, v).unwrap();
    history.push(v);
    drop(p);
    check_clean(&target, 1, &history);
}
