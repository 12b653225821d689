//! A standby's local chain (issue 26, DESIGN §12): the standby keeps the bucket's chain as its
//! state (base file + chain directory), downloads only the new deltas of the generation it
//! holds, verifies before it applies, and its state is a sound point of the bucket at every
//! moment — also when it is SIGKILLed while following.
//!
//! One S3 server (s3s-fs in the test process), real `shmsnap run --standby` hosts, the primes
//! client. The primary runs with a one-hour lease TTL so that no standby takes over unless
//! the test stops the primary cleanly (a released lease is taken at once).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::S3Server;
use common::*;
use rustix::process::Signal;
use shmsnap_linux::chain;

const BUCKET: &str = "chain";

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

fn tempdir(what: &str) -> tempfile::TempDir {
    named_tempdir(&format!("chain-{what}"))
}

/// `shmsnap run --standby` for the primes client, one generation per run (no compaction),
/// lease TTL `ttl`.
fn host(s: &S3Server, state: &Path, prefix: &str, ttl: &str) -> Proc {
    let mut c = shmsnap(["run", "--state"]);
    c.arg(state)
        .args(["--strategy", "queue", "--interval", "100ms", "--size", "2M"])
        .args(["--compact-deltas", "100000", "--compact-ratio", "10000"])
        .args(["--replica", &url(prefix), "--standby", "--lease-ttl", ttl])
        .arg("--")
        .args(primes(&["--pause", "2ms"]));
    s.env(&mut c);
    Proc::spawn(c)
}

/// SIGKILLs host `h` and the client it started (so that nothing writes the bucket after).
fn kill_host_and_client(h: &mut Proc) {
    let (_, line) = h.wait_log(0, "client started (pid", SLOW);
    let pid: i32 = line
        .split("client started (pid ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(')').trim().parse().ok())
        .unwrap();
    h.kill();
    let _ =
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL);
    assert!(wait_dead(pid, SLOW), "the client {pid} outlived the kill");
}

/// The deltas of generation `g` in the bucket (s3s-fs keeps KEY at `ROOT/KEY`), by index.
fn bucket_deltas(root: &Path, g: u64) -> Vec<(u32, PathBuf)> {
    let mut out: Vec<(u32, PathBuf)> = std::fs::read_dir(root.join(format!("g/{g:020}/d")))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let i = e.file_name().to_str()?.parse().ok()?;
                    Some((i, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The newest generation in the bucket.
fn newest_generation(root: &Path) -> Option<u64> {
    std::fs::read_dir(root.join("g"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .max()
}

/// The local state is a sound point of the bucket: its base verifies, every delta of the
/// base's generation in the chain directory chains soundly (no delta that ends the chain,
/// none left over after it), and each is byte for byte the bucket's object. Returns the point
/// (generation, deltas).
fn assert_sound_point(state: &Path, root: &Path) -> (u64, usize) {
    let dir = chain::chain_dir(state);
    let listing = chain::verify_chain(state, &dir).unwrap_or_else(|e| {
        panic!(
            "the standby's state {} does not verify: {e}",
            state.display()
        )
    });
    assert!(
        listing.stop.is_none() && listing.ignored.is_empty(),
        "the standby's chain holds a delta that is not sound: {:?}, ignored {:?}",
        listing.stop,
        listing.ignored
    );
    let g = listing.base.meta.generation;
    let bucket = bucket_deltas(root, g);
    for (k, d) in listing.deltas.iter().enumerate() {
        let (i, object) = bucket
            .get(k)
            .unwrap_or_else(|| panic!("local delta {} of base {g} is not in the bucket", k + 1));
        assert_eq!(*i as usize, k + 1);
        assert_eq!(
            std::fs::read(&d.path).unwrap(),
            std::fs::read(object).unwrap(),
            "local delta {i} of base {g} is the bucket's object"
        );
    }
    (g, listing.deltas.len())
}

/// The number of delta files of generation `g` in the standby's chain directory.
fn local_deltas(state: &Path, g: u64) -> usize {
    std::fs::read_dir(chain::chain_dir(state)).map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                chain::parse_delta_name(e.file_name().as_encoded_bytes())
                    .is_some_and(|(gen, _)| gen == g)
            })
            .count()
    })
}

/// A delta object whose data is damaged (its footer intact, so only the data CRC tells) is
/// never applied: the standby applies the sound deltas before it and stays there, and once
/// the object is whole again it follows on. The bucket is frozen for this: the primary is
/// SIGKILLed holding a one-hour lease.
#[test]
fn a_damaged_delta_in_the_bucket_is_never_applied_and_the_standby_stays_at_the_sound_point() {
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "damaged";
    let root = s.object_path(BUCKET, prefix);
    let (da, db) = (tempdir("damaged-a"), tempdir("damaged-b"));
    let mut primary = host(&s, &da.path().join("a.snap"), prefix, "1h");
    primary.wait_log(0, "client started", SLOW);
    let g = poll(SLOW, || {
        let g = newest_generation(&root)?;
        (bucket_deltas(&root, g).len() >= 4).then_some(g)
    })
    .expect("a base and 4 deltas in the bucket");
    kill_host_and_client(&mut primary);
    let deltas = bucket_deltas(&root, g);
    let n = deltas.len();
    // Damage delta 3: flip the last byte of its data (just before the 128-byte footer).
    let (i, bad) = &deltas[2];
    assert_eq!(*i, 3);
    let good = std::fs::read(bad).unwrap();
    let mut broken = good.clone();
    let at = broken.len() - chain::DELTA_FOOTER_LEN - 1;
    broken[at] ^= 0x55;
    std::fs::write(bad, &broken).unwrap();

    let state = db.path().join("b.snap");
    let standby = host(&s, &state, prefix, "3s");
    standby.wait_log(0, "standby, following the bucket", SLOW);
    let (_, line) = standby.wait_log(0, "cannot apply", SLOW);
    assert!(
        line.contains("d/00000003"),
        "the damaged object is named: {line}"
    );
    // It stays at delta 2, the sound point before it, and never has delta 3 locally.
    poll(SLOW, || {
        (assert_sound_point(&state, &root) == (g, 2)).then_some(())
    })
    .expect("the standby at delta 2");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(assert_sound_point(&state, &root), (g, 2));
    assert_eq!(
        local_deltas(&state, g),
        2,
        "no later delta in the chain directory"
    );

    // The object is whole again: the standby follows on to the bucket's newest point.
    std::fs::write(bad, &good).unwrap();
    poll(SLOW, || {
        (assert_sound_point(&state, &root) == (g, n)).then_some(())
    })
    .unwrap_or_else(|| panic!("the standby reaches delta {n}:\n{}", standby.err.text()));
    assert!(
        !standby.err.text().contains("took over"),
        "{}",
        standby.err.text()
    );
}

/// A standby SIGKILLed at random moments while it follows a running primary (mid-download,
/// mid-apply, mid-commit of a new base): after every kill its state is a sound point of the
/// bucket (verified, every delta the bucket's); restarted, it resumes following. At the end
/// the primary stops (releasing the lease), and the standby takes over starting from the
/// bucket's newest point, restored from its local chain.
#[test]
fn a_standby_killed_while_following_keeps_a_sound_point_and_resumes() {
    let cycles: u64 = std::env::var("SHMSNAP_CHAIN_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let seed =
        std::time::Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()) | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "kill";
    let root = s.object_path(BUCKET, prefix);
    let (da, db) = (tempdir("kill-a"), tempdir("kill-b"));
    // The primary makes a new base every 20 deltas at most (the kills also land in base
    // downloads) and the bucket keeps every generation (the checks read it after a kill).
    let mut c = shmsnap(["run", "--state"]);
    c.arg(da.path().join("a.snap"))
        .args(["--strategy", "queue", "--interval", "100ms", "--size", "2M"])
        .args(["--compact-deltas", "20", "--replica-keep", "1h"])
        .args(["--replica", &url(prefix), "--standby", "--lease-ttl", "1h"])
        .arg("--")
        // Slower than the other tests' client: its region must not fill up (the client
        // would exit, and the primary with it) before the last kill.
        .args(primes(&["--pause", "20ms"]));
    s.env(&mut c);
    let mut primary = Proc::spawn(c);
    primary.wait_log(0, "client started", SLOW);
    let state = db.path().join("b.snap");
    let mut points = Vec::new();
    for cycle in 0..cycles {
        let mut standby = host(&s, &state, prefix, "3s");
        standby.wait_log(0, "standby, following the bucket", SLOW);
        std::thread::sleep(Duration::from_millis(200 + rng.below(1500)));
        standby.signal(Signal::KILL);
        let _ = standby.wait_timeout(SLOW);
        if state.exists() {
            let p = assert_sound_point(&state, &root);
            println!("kill {cycle}: the standby's state is {p:?}");
            points.push(p);
        }
    }
    assert!(
        points.windows(2).any(|w| w[0] != w[1]),
        "the standby moved between kills: {points:?}"
    );
    let standby = host(&s, &state, prefix, "3s");
    standby.wait_log(0, "standby, following the bucket", SLOW);
    std::thread::sleep(Duration::from_secs(1));
    primary.signal(Signal::TERM);
    assert_eq!(primary.exit_code(), 0, "{}", primary.err.text());
    let g = newest_generation(&root).unwrap();
    let newest = (g, bucket_deltas(&root, g).len());
    let (_, line) = standby.wait_log(0, " holds ", SLOW);
    let want = match newest.1 {
        0 => format!("base {g}"),
        i => format!("delta {i} of base {g}"),
    };
    assert!(
        line.contains(&format!(" holds {want}")) || line.contains(&format!("its {want}")),
        "the new primary starts from the bucket's newest point {newest:?}: {line}"
    );
    let (_, restored) = standby.wait_log(0, "plus ", SLOW);
    assert!(
        restored.contains(&format!("plus {} delta(s)", newest.1)),
        "start-up restored the local chain: {restored}"
    );
    standby.wait_log(0, "client started", SLOW);
}

/// `KEY=VALUE` of a tracing text line's field `key`.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))?
        .parse()
        .ok()
}

fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// The measured comparison of DESIGN §12 (a measured run, nothing timed is asserted): a
/// standby following a primary with its local chain — per followed point, the bytes it
/// downloaded and the time its step took (download, verify, apply: its debug lines) — against
/// the whole-point step the standby made before (download base + every delta of the
/// generation, verify, materialize, commit), which is exactly `shmsnap restore --from URL`:
/// that command is run once a second on the same bucket and timed (its time includes a
/// process start), its bytes are the objects of the point it restored.
/// `SHMSNAP_CHAIN_MEASURE_SECS` (default 3) and `SHMSNAP_STANDBY_SIZE` (default 2M) for the
/// measured runs.
#[test]
fn a_standby_following_by_deltas_measured_against_whole_points() {
    let secs: u64 = std::env::var("SHMSNAP_CHAIN_MEASURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let size = std::env::var("SHMSNAP_STANDBY_SIZE").unwrap_or_else(|_| "2M".into());
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "measure";
    let root = s.object_path(BUCKET, prefix);
    let (da, db, dc) = (
        tempdir("measure-a"),
        tempdir("measure-b"),
        tempdir("measure-c"),
    );
    let spawn = |state: &Path, log: &str| {
        let mut c = shmsnap(["run", "--state"]);
        c.arg(state)
            .args([
                "--strategy",
                "queue",
                "--interval",
                "100ms",
                "--size",
                &size,
            ])
            .args(["--replica", &url(prefix), "--standby", "--lease-ttl", "1h"])
            .args(["--metrics", "127.0.0.1:0"])
            .env("RUST_LOG", log)
            .arg("--")
            .args(primes(&["--pause", "2ms"]));
        s.env(&mut c);
        Proc::spawn(c)
    };
    let primary = spawn(&da.path().join("a.snap"), "info");
    primary.wait_log(0, "client started", SLOW);
    let standby = spawn(
        &db.path().join("b.snap"),
        "info,shmsnap::replica::follow=debug",
    );
    standby.wait_log(0, "standby, following the bucket", SLOW);
    let from = standby.err.len();
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    let (mut whole_ms, mut whole_bytes) = (Vec::new(), Vec::new());
    let mut n = 0;
    while std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        let out = dc.path().join(format!("{n}.snap"));
        n += 1;
        let mut c = shmsnap(["restore", "--from", &url(prefix), "--to"]);
        c.arg(&out);
        s.env(&mut c);
        let t = std::time::Instant::now();
        let mut r = Proc::spawn(c);
        assert_eq!(r.exit_code(), 0, "{}", r.err.text());
        whole_ms.push(t.elapsed().as_secs_f64() * 1e3);
        // "restored delta K of base G from …": its objects' bytes.
        let line = r.out.text();
        let point = line
            .split("restored ")
            .nth(1)
            .and_then(|r| r.split(" from ").next())
            .unwrap_or_default()
            .to_owned();
        let words: Vec<&str> = point.split_whitespace().collect();
        let (g, k): (u64, u32) = match words[..] {
            ["base", g] => (g.parse().unwrap(), 0),
            ["delta", k, "of", "base", g] => (g.parse().unwrap(), k.parse().unwrap()),
            _ => panic!("{line}"),
        };
        let base = std::fs::metadata(root.join(format!("g/{g:020}/base"))).map_or(0, |m| m.len());
        let deltas: u64 = bucket_deltas(&root, g)
            .iter()
            .filter(|(i, _)| *i <= k)
            .map(|(_, p)| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        whole_bytes.push((base + deltas) as f64);
        let _ = std::fs::remove_file(&out);
    }
    let lines: Vec<String> = standby.err.all().into_iter().skip(from).collect();
    let (mut step_ms, mut step_bytes, mut base_ms, mut base_bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for l in lines.iter().filter(|l| l.contains("standby at ")) {
        let (Some(ms), Some(b)) = (field(l, "ms"), field(l, "downloaded")) else {
            continue;
        };
        if std::env::var_os("SHMSNAP_CHAIN_MEASURE_LINES").is_some() {
            println!("  {l}");
        }
        if l.contains("base and") {
            base_ms.push(ms);
            base_bytes.push(b);
        } else {
            step_ms.push(ms);
            step_bytes.push(b);
        }
    }
    assert!(
        !step_ms.is_empty() || !base_ms.is_empty(),
        "the standby applied points:\n{}",
        standby.err.text()
    );
    println!(
        "region {size}, {secs} s: the standby made {} delta step(s) and {} base step(s); \
         whole-point restores: {}",
        step_ms.len(),
        base_ms.len(),
        whole_ms.len()
    );
    for (what, ms, bytes) in [
        ("local chain, new deltas", &mut step_ms, &mut step_bytes),
        (
            "local chain, a new generation's base",
            &mut base_ms,
            &mut base_bytes,
        ),
        (
            "whole point (restore --from)",
            &mut whole_ms,
            &mut whole_bytes,
        ),
    ] {
        if ms.is_empty() {
            continue;
        }
        let (mm, mx) = median_max(ms);
        let (bm, bx) = median_max(bytes);
        println!(
            "  {what}: time median {mm:.1} ms max {mx:.1} ms; downloaded median {:.0} KiB max \
             {:.0} KiB",
            bm / 1024.0,
            bx / 1024.0
        );
    }
    // The counters say what the log says: points applied, bytes downloaded.
    let line = standby
        .err
        .expect("serving metrics on http://", "the metrics address");
    let addr = line.split("serving metrics on ").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap();
    let text = ureq::get(addr)
        .call()
        .expect("scrape")
        .body_mut()
        .read_to_string()
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    let logged: f64 = step_bytes.iter().chain(&base_bytes).sum();
    assert!(
        value("shmsnap_standby_points_applied_total") >= (step_ms.len() + base_ms.len()) as f64
    );
    assert!(value("shmsnap_standby_downloaded_bytes_total") >= logged);
    primary.signal(Signal::KILL);
}
