//! Replicas through the `file://` backend, end to end with the real binary: replicate, lose
//! the machine, start from the replica; two hosts on one prefix; a corrupt object; retention.
//! (The S3 server tests are in `replica_s3.rs`.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_shmsnap");

fn shmsnap(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the primes client under `run --replica` until it has `limit` primes; the client
/// verifies every restored prime itself and prints how many it found.
fn run_primes(state: &Path, url: &str, limit: u64, extra: &[&str]) -> Output {
    let limit = limit.to_string();
    let mut args = vec![
        "run",
        "--state",
        state.to_str().unwrap(),
        "--strategy",
        "queue",
        "--interval",
        "50ms",
        "--size",
        "1M",
        "--cgroup",
        "off",
        "--replica",
        url,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--", BIN, "example", "primes", "--limit", &limit, "--pause", "1ms",
    ]);
    shmsnap(&args)
}

fn restored_primes(out: &Output) -> u64 {
    let t = text(out);
    let line = t
        .lines()
        .find(|l| l.contains("restored") && l.contains("primes, all correct"))
        .unwrap_or_else(|| panic!("no restore line in:\n{t}"));
    let n = line
        .split("restored ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    n.parse().unwrap()
}

fn objects(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    bucket: PathBuf,
    url: String,
    root: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let bucket = root.join("bucket");
    let url = format!("file://{}", bucket.display());
    Setup {
        _tmp: tmp,
        bucket,
        url,
        root,
    }
}

#[test]
fn a_new_machine_starts_from_the_replica_with_the_committed_state() {
    let s = setup();
    let first = s.root.join("m1");
    std::fs::create_dir(&first).unwrap();
    let out = run_primes(&first.join("state.snap"), &s.url, 5000, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The machine is gone.
    std::fs::remove_dir_all(&first).unwrap();
    let second = s.root.join("m2");
    std::fs::create_dir(&second).unwrap();
    let out = run_primes(&second.join("state.snap"), &s.url, 6000, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("was missing: restored base"),
        "the log names the point: {}",
        text(&out)
    );
    // The client checked every restored prime; it found the first machine's final state.
    assert!(restored_primes(&out) >= 5000, "{}", text(&out));
}

#[test]
fn restore_writes_a_sound_file_and_refuses_a_corrupt_object_by_name_unless_fallback() {
    let s = setup();
    let state = s.root.join("state.snap");
    // Three runs: three bases at least (one per client exit, plus interval snapshots).
    for limit in [1000, 2000, 3000] {
        let out = run_primes(&state, &s.url, limit, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out_file = s.root.join("out.snap");
    let out = shmsnap(&[
        "restore",
        "--from",
        &s.url,
        "--to",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let verify = shmsnap(&["verify", out_file.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", text(&verify));
    // OUT is a standalone file, written like `restore --state`'s: no lock or generations
    // beside it (it used to go through a persister, which left OUT.lock).
    let beside: Vec<_> = std::fs::read_dir(out_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(out_file.file_name().unwrap().to_str().unwrap()))
        .collect();
    assert_eq!(
        beside,
        [out_file.file_name().unwrap().to_str().unwrap()],
        "{beside:?}"
    );
    // Without --force an existing file is not replaced.
    let again = shmsnap(&[
        "restore",
        "--from",
        &s.url,
        "--to",
        out_file.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(73), "{}", text(&again));

    let bases: Vec<String> = objects(&s.bucket)
        .into_iter()
        .filter(|k| k.ends_with("/base"))
        .collect();
    assert!(bases.len() >= 2, "{bases:?}");
    let newest = bases.last().unwrap();
    let path = s.bucket.join(newest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let out = shmsnap(&[
        "restore",
        "--from",
        &s.url,
        "--to",
        out_file.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        text(&out).contains(newest.as_str()),
        "names the object: {}",
        text(&out)
    );
    let out = shmsnap(&[
        "restore",
        "--from",
        &s.url,
        "--to",
        out_file.to_str().unwrap(),
        "--force",
        "--fallback",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("skipped"), "{}", text(&out));
    assert!(shmsnap(&["verify", out_file.to_str().unwrap()])
        .status
        .success());
}

#[test]
fn a_second_host_on_the_same_prefix_is_refused_naming_the_lease_and_its_holder() {
    let s = setup();
    let a = s.root.join("a.snap");
    let mut first = Command::new(BIN)
        .args([
            "run",
            "--state",
            a.to_str().unwrap(),
            "--cgroup",
            "off",
            "--replica",
            &s.url,
            "--",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    // Wait until the first host holds the lease.
    let lease = s.bucket.join("lease");
    for _ in 0..500 {
        if lease.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let b = s.root.join("b.snap");
    let out = shmsnap(&[
        "run",
        "--state",
        b.to_str().unwrap(),
        "--cgroup",
        "off",
        "--replica",
        &s.url,
        "--",
        "true",
    ]);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("lease") && t.contains("a.snap"),
        "names the lease and holder: {t}"
    );
}

#[test]
fn retention_keeps_the_newest_generations_and_nothing_else_is_removed() {
    let s = setup();
    let state = s.root.join("state.snap");
    for limit in [500, 1000, 1500, 2000, 2500] {
        let out = run_primes(&state, &s.url, limit, &["--replica-keep", "2"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let bases: Vec<String> = objects(&s.bucket)
        .into_iter()
        .filter(|k| k.ends_with("/base"))
        .collect();
    assert_eq!(bases.len(), 2, "{bases:?}");
    let listing = shmsnap(&["inspect", "--replica", &s.url, "--json"]);
    assert!(listing.status.success(), "{}", text(&listing));
    let v: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    let gens: Vec<u64> = v["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(gens.len(), 2);
    assert_eq!(
        v["newest_point"]["generation"].as_u64(),
        gens.last().copied(),
        "the newest generation is kept"
    );
    // The local newest snapshot is the replica's newest point.
    let local = shmsnap(&["inspect", state.to_str().unwrap(), "--json"]);
    let lv: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    let text_local = lv.to_string();
    assert!(
        text_local.contains(&format!("\"generation\":{}", gens[1])),
        "{text_local}"
    );
}
