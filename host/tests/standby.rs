//! Standby and failover (issue 26), end to end: two or three real `shmsnap run --standby`
//! hosts with their own state directories, the primes client, and one S3 server (s3s-fs, in
//! the test process) that the tests start, stop and start again on the same port. Short
//! lease TTLs (3 s) keep it fast.
//!
//! - the primary (host and client) SIGKILLed at random: the standby takes over, its client
//!   starts with the bucket's newest point; RTO and RPO printed per trial
//!   (`SHMSNAP_STANDBY_TRIALS`, default 2; `SHMSNAP_STANDBY_TTL`, default 3s, and
//!   `SHMSNAP_STANDBY_SIZE` for the measured runs);
//! - the primary's host paused past the TTL: the standby takes over, the old primary stops its
//!   client and becomes a standby; every point in the bucket restores, sound and consistent,
//!   and the new primary's generations are above the old ones;
//! - the server down for longer than the TTL: no takeover, nothing committed lost;
//! - two standbys racing: exactly one wins;
//! - a server without conditional writes, and file://: `--standby` refused;
//! - a 1 % writer (`example pages`) SIGKILLed at random: the new primary's client restores
//!   exactly the commit of the bucket's newest point, not torn; RPO in commits and seconds
//!   (`SHMSNAP_STANDBY_INTERVAL`, default 1s, for the measured runs);
//! - acknowledgements through a slow link: local ones (`--ack`) lost in every takeover (the
//!   broken twin of the replicated-acknowledgement trial), replicated ones never;
//! - SIGTERM to a standby: exit 0, no takeover, a lease taken just before released.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::s3::S3Server;
use common::*;
use rustix::process::Signal;
use shmsnap_linux::chain::{self, At};

const BUCKET: &str = "standby";

/// How long a takeover may take on a loaded machine (TTL 3 s plus catch-up).
const TAKEOVER: Duration = Duration::from_secs(60);

fn ttl() -> String {
    std::env::var("SHMSNAP_STANDBY_TTL").unwrap_or_else(|_| "3s".into())
}

fn size() -> String {
    std::env::var("SHMSNAP_STANDBY_SIZE").unwrap_or_else(|_| "2M".into())
}

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

fn tempdir(what: &str) -> tempfile::TempDir {
    named_tempdir(&format!("standby-{what}"))
}

/// `shmsnap run --standby` on `state` for the primes client.
fn host(s: &S3Server, state: &Path, prefix: &str) -> Proc {
    host_with(s, state, prefix, &[])
}

/// [`host`] with more `run` options.
fn host_with(s: &S3Server, state: &Path, prefix: &str, extra: &[&str]) -> Proc {
    host_client(s, state, prefix, extra, &primes(&["--pause", "2ms"]))
}

/// [`host`] with more `run` options and another client.
fn host_client(s: &S3Server, state: &Path, prefix: &str, extra: &[&str], client: &[&str]) -> Proc {
    let ttl = ttl();
    let size = size();
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
        .args(["--replica", &url(prefix), "--standby", "--lease-ttl", &ttl])
        .args(extra)
        .arg("--")
        .args(client);
    s.env(&mut c);
    Proc::spawn(c)
}

/// A point as the tests name it: (generation, index).
type PointId = (u64, u32);

/// Parses `base G` / `delta I of base G` at the start of `s`.
fn parse_point(s: &str) -> Option<PointId> {
    let w: Vec<&str> = s
        .split_whitespace()
        .take(5)
        .map(|w| w.trim_end_matches(','))
        .collect();
    match w[..] {
        ["base", g, ..] => Some((g.parse().ok()?, 0)),
        ["delta", i, "of", "base", g] => Some((g.parse().ok()?, i.parse().ok()?)),
        _ => None,
    }
}

/// The point a new primary started from: its `caught up: … now holds P of replica` or
/// `… holds P, at or past the newest point` line.
fn started_from(line: &str) -> Option<PointId> {
    let rest = line.split(" holds ").nth(1)?;
    parse_point(rest.trim_start_matches("its "))
}

/// The snapshot time `T` of a `caught up: … (taken T)` line.
fn taken(line: &str) -> Option<SystemTime> {
    let t = line.split("(taken ").nth(1)?.split(')').next()?;
    humantime::parse_rfc3339(t).ok()
}

/// The replica's points on disk (s3s-fs keeps object KEY at `DIR/BUCKET/KEY`).
fn points_in(root: &Path) -> BTreeSet<PointId> {
    let mut out = BTreeSet::new();
    let Ok(gens) = std::fs::read_dir(root.join("g")) else {
        return out;
    };
    for g in gens.flatten() {
        let Some(gen) = g.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if g.path().join("base").is_file() {
            out.insert((gen, 0));
        }
        if let Ok(ds) = std::fs::read_dir(g.path().join("d")) {
            for d in ds.flatten() {
                if let Some(i) = d.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                    out.insert((gen, i));
                }
            }
        }
    }
    out
}

fn generations(root: &Path) -> BTreeSet<u64> {
    points_in(root).into_iter().map(|p| p.0).collect()
}

/// Every point of the bucket restored with the library (unpack the base, the deltas into a
/// chain directory, verify the chain, materialize each point) and checked: `verify` passes,
/// and the primes count never goes down within a generation. Returns each point's count.
fn restore_every_point(root: &Path) -> BTreeMap<PointId, u64> {
    let work = tempdir("restore-all");
    let mut counts = BTreeMap::new();
    let points = points_in(root);
    let gens: BTreeSet<u64> = points.iter().map(|p| p.0).collect();
    for g in gens {
        let dir = root.join(format!("g/{g:020}"));
        let object = dir.join("base");
        if !object.is_file() {
            continue;
        }
        let base = work.path().join(format!("{g}.snap"));
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&base)
            .unwrap();
        shmsnap_linux::packed::unpack(std::fs::File::open(&object).unwrap(), &out).unwrap();
        let cdir = chain::chain_dir(&base);
        std::fs::create_dir_all(&cdir).unwrap();
        let deltas: Vec<u32> = points
            .iter()
            .filter(|p| p.0 == g && p.1 > 0)
            .map(|p| p.1)
            .collect();
        for &i in &deltas {
            std::fs::copy(
                dir.join(format!("d/{i:08}")),
                cdir.join(chain::delta_name(g, u64::from(i))),
            )
            .unwrap();
        }
        let listing = chain::verify_chain(&base, &cdir).unwrap();
        assert_eq!(
            listing.deltas.len(),
            deltas.len(),
            "generation {g}: every delta in the bucket chains soundly ({:?})",
            listing.stop
        );
        let mut last = 0;
        for i in 0..=deltas.len() as u32 {
            let file = work.path().join(format!("{g}-{i}.snap"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&file)
                .unwrap();
            chain::materialize(&base, &cdir, At::Deltas(u64::from(i)), &f).unwrap();
            drop(f);
            assert_verifies(&file);
            let count = snapshot_count(&inspect(&file).unwrap());
            assert!(
                count >= last,
                "generation {g}: the count went down at point {i}: {last} -> {count}"
            );
            last = count;
            counts.insert((g, i), count);
        }
    }
    counts
}

/// SIGKILLs host `h` and its client, the client first stopped so its last commit is known.
/// Returns the client's last committed count.
fn kill_primary(h: &mut Proc) -> u64 {
    let pid = h.client_pid();
    let _ =
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::STOP);
    let last = live_count(pid).expect("the client's count");
    h.kill();
    let _ =
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), Signal::KILL);
    assert!(wait_dead(pid, SLOW), "the client {pid} outlived the kill");
    last
}

/// `SHMSNAP_STANDBY_TRIALS` (default 2): trials of the measured tests.
fn trials() -> usize {
    std::env::var("SHMSNAP_STANDBY_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
}

/// A random generator with a fresh seed, printed so that a failing run can be told apart.
fn seeded_rng() -> Rng {
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()) | 1;
    println!("seed {seed}");
    Rng(seed)
}

/// Waits until `h` says it stands by.
fn wait_standby(h: &Proc, from: usize) {
    h.wait_log(from, "standby, following the bucket", SLOW);
}

#[test]
fn a_killed_primary_is_replaced_by_the_standby_with_the_newest_point() {
    let trials = trials();
    let mut rng = seeded_rng();
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "kill";
    let root = s.object_path(BUCKET, prefix);
    let dirs = [tempdir("kill-a"), tempdir("kill-b")];
    let states: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("s.snap")).collect();
    let mut primary = host(&s, &states[0], prefix);
    primary.wait_log(0, "client started", SLOW);
    let mut standby = host(&s, &states[1], prefix);
    wait_standby(&standby, 0);
    let mut which = 0; // index of the primary's state
    let (mut rtos, mut rpos, mut rpo_secs) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        // A point in the bucket, then a random moment.
        poll(SLOW, || (!points_in(&root).is_empty()).then_some(()))
            .expect("a first point in the bucket");
        std::thread::sleep(Duration::from_millis(500 + rng.below(2000)));
        let out_from = standby.out.len();
        let err_from = standby.err.len();
        let last = kill_primary(&mut primary);
        let killed = Instant::now();
        let killed_wall = SystemTime::now();
        let newest = *points_in(&root).last().unwrap();
        let (_, _, k) = next_restored(&standby, out_from, TAKEOVER).unwrap_or_else(|| {
            panic!(
                "trial {trial}: the standby's client did not start:\n{}",
                standby.err.text()
            )
        });
        let rto = killed.elapsed();
        let (_, took) = standby.wait_log(err_from, "took over the lease", Duration::ZERO);
        let (_, from_line) = standby.wait_log(err_from, " holds ", Duration::ZERO);
        let from = started_from(&from_line).unwrap_or_else(|| panic!("{from_line}"));
        assert_eq!(
            from, newest,
            "trial {trial}: the new primary started from the bucket's newest point"
        );
        assert!(k <= last, "restored {k} > committed {last}");
        // The RPO as time: how old the state the new primary started from was at the kill
        // (the point's snapshot time, from the `caught up … (taken T)` line; one machine, one
        // clock). Absent when the new primary started from its own local state.
        let age = taken(&from_line).map(|t| {
            killed_wall
                .duration_since(t)
                .unwrap_or_default()
                .as_secs_f64()
        });
        assert!(
            age.is_some() || !from_line.contains("caught up"),
            "no snapshot time in {from_line:?}"
        );
        if let Some(a) = age {
            rpo_secs.push(a);
        }
        println!(
            "trial {trial}: RTO {:.2} s, RPO {} commits, state {} old at the kill (client at \
             {last}, new primary restored {k} from {newest:?}); {took}",
            rto.as_secs_f64(),
            last - k,
            age.map_or("?".to_owned(), |a| format!("{a:.2} s"))
        );
        rtos.push(rto.as_secs_f64());
        rpos.push(last - k);
        // The killed host comes back (same state directory) and stands by.
        let back = host(&s, &states[which], prefix);
        wait_standby(&back, 0);
        primary = std::mem::replace(&mut standby, back);
        which = 1 - which;
    }
    rtos.sort_by(f64::total_cmp);
    rpos.sort_unstable();
    println!(
        "{} takeovers: RTO median {:.2} s max {:.2} s; RPO median {} max {} commits (TTL {})",
        trials,
        rtos[rtos.len() / 2],
        rtos[rtos.len() - 1],
        rpos[rpos.len() / 2],
        rpos[rpos.len() - 1],
        ttl()
    );
    rpo_secs.sort_by(f64::total_cmp);
    if let (Some(m), Some(x)) = (rpo_secs.get(rpo_secs.len() / 2), rpo_secs.last()) {
        println!(
            "RPO as the age of the restored state at the kill: median {m:.2} s, max {x:.2} s \
             (n = {})",
            rpo_secs.len()
        );
    }
    standby.kill();
    primary.signal(Signal::TERM);
    assert_eq!(primary.exit_code(), 0, "{}", primary.err.text());
}

#[test]
fn a_paused_primary_is_replaced_and_becomes_a_standby_and_the_history_stays_one() {
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "pause";
    let root = s.object_path(BUCKET, prefix);
    let (da, db) = (tempdir("pause-a"), tempdir("pause-b"));
    let a_state = da.path().join("a.snap");
    let mut a = host(&s, &a_state, prefix);
    a.wait_log(0, "client started", SLOW);
    let mut b = host(&s, &db.path().join("b.snap"), prefix);
    wait_standby(&b, 0);
    poll(SLOW, || (points_in(&root).len() >= 3).then_some(())).expect("points in the bucket");
    let a_client = a.client_pid();
    a.signal(Signal::STOP);
    let paused = Instant::now();
    b.wait_log(0, "took over the lease", TAKEOVER);
    let old = generations(&root);
    let (_, _, k) = next_restored(&b, 0, TAKEOVER).expect("the new primary's client");
    println!(
        "B took over {:.2} s after A's host was paused; its client restored {k}",
        paused.elapsed().as_secs_f64()
    );
    let from = a.err.len();
    a.signal(Signal::CONT);
    let (_, change) = a.wait_log(from, "role change: primary -> standby", SLOW);
    println!("A: {change}");
    assert!(wait_dead(a_client, SLOW), "A's client was stopped");
    wait_standby(&a, from);
    assert!(
        !a.err.all()[from..]
            .iter()
            .any(|l| l.contains("client started")),
        "A started no client after the takeover"
    );
    // B goes on: new generations above every old one.
    let new = poll(SLOW, || {
        let g = generations(&root);
        let new: BTreeSet<u64> = g.difference(&old).copied().collect();
        (new.len() >= 2).then_some(new)
    })
    .unwrap_or_else(|| panic!("B uploaded no new generation:\n{}", b.err.text()));
    let old_max = *old.last().unwrap();
    assert!(
        new.iter().all(|&g| g > old_max),
        "new generations {new:?} not above the old {old:?}"
    );
    b.signal(Signal::TERM);
    assert_eq!(b.exit_code(), 0, "{}", b.err.text());
    a.kill();
    let diverged: Vec<_> = std::fs::read_dir(da.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".diverged."))
        .collect();
    println!(
        "A moved {} diverged state director(y/ies) aside; A's log: {:?}",
        diverged.len(),
        a.err.all().iter().find(|l| l.contains("moved to"))
    );
    let counts = restore_every_point(&root);
    let first_new = counts
        .iter()
        .find(|((g, _), _)| *g > old_max)
        .map(|(_, &c)| c)
        .unwrap();
    assert!(
        first_new >= k,
        "B's first base ({first_new}) holds what its client restored ({k})"
    );
    println!(
        "{} points restored and checked, generations {:?}",
        counts.len(),
        generations(&root)
    );
}

#[test]
fn a_server_outage_longer_than_the_ttl_causes_no_takeover_and_loses_nothing() {
    let mut s = S3Server::start_with_bucket(BUCKET);
    let prefix = "outage";
    let root = s.object_path(BUCKET, prefix);
    let (da, db) = (tempdir("outage-a"), tempdir("outage-b"));
    let a = host(&s, &da.path().join("a.snap"), prefix);
    a.wait_log(0, "client started", SLOW);
    let b = host(&s, &db.path().join("b.snap"), prefix);
    wait_standby(&b, 0);
    poll(SLOW, || (points_in(&root).len() >= 3).then_some(())).expect("points in the bucket");
    let before = live_count(a.client_pid()).unwrap();
    let (a_out, a_err) = (a.out.len(), a.err.len());
    s.stop();
    std::thread::sleep(Duration::from_secs(8));
    s.start();
    let returned = Instant::now();
    // A's lease lapsed: it stopped its client; nobody took the lease, so it takes it back.
    let (_, line) = a.wait_log(a_err, "role change", SLOW);
    println!("A: {line}");
    let (_, _, k) = next_restored(&a, a_out, TAKEOVER)
        .unwrap_or_else(|| panic!("A's client did not start again:\n{}", a.err.text()));
    println!(
        "A's client back {:.2} s after the server, restored {k} (had committed {before} \
         before the outage)",
        returned.elapsed().as_secs_f64()
    );
    assert!(
        k >= before,
        "commits lost: {before} before the outage, {k} restored"
    );
    // B stays a standby for two more TTLs.
    std::thread::sleep(Duration::from_secs(6));
    assert!(alive(b.pid()), "{}", b.err.text());
    assert!(
        !b.err.text().contains("took over the lease"),
        "B took over on an outage alone:\n{}",
        b.err.text()
    );
    assert!(!b.err.text().contains("client started"));
}

#[test]
fn two_standbys_racing_for_the_lease_one_wins() {
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "race";
    let dirs = [tempdir("race-a"), tempdir("race-b"), tempdir("race-c")];
    let mut a = host(&s, &dirs[0].path().join("s.snap"), prefix);
    a.wait_log(0, "client started", SLOW);
    let b = host(&s, &dirs[1].path().join("s.snap"), prefix);
    let c = host(&s, &dirs[2].path().join("s.snap"), prefix);
    wait_standby(&b, 0);
    wait_standby(&c, 0);
    kill_primary(&mut a);
    let won = poll(TAKEOVER, || {
        [&b, &c]
            .iter()
            .position(|h| h.err.text().contains("took over the lease"))
    })
    .expect("a standby took over");
    // Two more TTLs: the other must still be a standby.
    std::thread::sleep(Duration::from_secs(6));
    let hosts = [&b, &c];
    let winners: Vec<usize> = (0..2)
        .filter(|&i| hosts[i].err.text().contains("client started"))
        .collect();
    assert_eq!(
        winners,
        vec![won],
        "exactly one primary:\nB:\n{}\nC:\n{}",
        b.err.text(),
        c.err.text()
    );
    let loser = hosts[1 - won];
    assert!(alive(loser.pid()), "{}", loser.err.text());
    println!(
        "winner {}; loser said: {:?}",
        ["B", "C"][won],
        loser
            .err
            .all()
            .iter()
            .find(|l| l.contains("took the lease first"))
    );
}

#[test]
fn standby_is_refused_without_conditional_writes_and_on_file_urls() {
    let s = S3Server::start_with_bucket(BUCKET);
    s.ignore_conditions(true);
    let d = tempdir("refused");
    let mut h = host(&s, &d.path().join("x.snap"), "unconditional");
    assert_eq!(h.exit_code(), 78, "{}", h.err.text());
    assert!(h.err.text().contains("If-None-Match"), "{}", h.err.text());
    assert!(!h.err.text().contains("client started"));
    let bucket = d.path().join("bucket");
    let mut c = shmsnap(["run", "--state"]);
    c.arg(d.path().join("y.snap"))
        .args([
            "--replica",
            &format!("file://{}", bucket.display()),
            "--standby",
        ])
        .args(["--", "/bin/true"]);
    let mut f = Proc::spawn(c);
    assert_eq!(f.exit_code(), 78, "{}", f.err.text());
    assert!(f.err.text().contains("conditional"), "{}", f.err.text());
}

/// One scrape of the metrics `h` serves: sample (with labels) -> value.
fn scrape(h: &Proc) -> BTreeMap<String, f64> {
    let line = h
        .err
        .expect("serving metrics on http://", "the metrics address");
    let (_, rest) = line.split_once("serving metrics on ").unwrap();
    let url = rest.split_whitespace().next().unwrap();
    let mut resp = ureq::get(url).call().expect("scrape");
    let text = resp.body_mut().read_to_string().expect("scrape body");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The standby serves its role and its lag while it stands by, and the primary role once it
/// took over. Prints the lag's distribution over `SHMSNAP_STANDBY_LAG_SECS` (default 4) of
/// scrapes every 100 ms (the measured runs: a longer time and `SHMSNAP_STANDBY_SIZE=64M`).
#[test]
fn a_standby_serves_its_role_and_lag() {
    let secs: u64 = std::env::var("SHMSNAP_STANDBY_LAG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "lag";
    let (da, db) = (tempdir("lag-a"), tempdir("lag-b"));
    let mut a = host(&s, &da.path().join("a.snap"), prefix);
    a.wait_log(0, "client started", SLOW);
    let b = host_with(
        &s,
        &db.path().join("b.snap"),
        prefix,
        &["--metrics", "127.0.0.1:0"],
    );
    wait_standby(&b, 0);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut lags = Vec::new();
    while Instant::now() < end {
        let m = scrape(&b);
        assert_eq!(m.get("shmsnap_role{role=\"standby\"}"), Some(&1.0), "{m:?}");
        assert_eq!(m.get("shmsnap_role{role=\"primary\"}"), Some(&0.0), "{m:?}");
        lags.push(m["shmsnap_standby_lag_seconds"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    lags.sort_by(f64::total_cmp);
    println!(
        "standby lag over {secs} s ({} scrapes every 100 ms, region {}): median {:.3} s, \
         p99 {:.3} s, max {:.3} s",
        lags.len(),
        size(),
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1]
    );
    assert!(
        lags.iter().all(|&l| (0.0..60.0).contains(&l)),
        "a lag out of range: {lags:?}"
    );
    kill_primary(&mut a);
    b.wait_log(0, "took over the lease", TAKEOVER);
    let m = poll(SLOW, || {
        let m = scrape(&b);
        (m.get("shmsnap_role{role=\"primary\"}") == Some(&1.0)).then_some(m)
    })
    .expect("the role turns primary");
    assert_eq!(m.get("shmsnap_role{role=\"standby\"}"), Some(&0.0));
    assert_eq!(m.get("shmsnap_standby_lag_seconds"), Some(&0.0));
}

/// A primary without `--standby` whose lease another host takes: it stops its client (a final
/// local snapshot) and exits 75 naming the new holder; its uploads stopped.
#[test]
fn a_primary_without_standby_stops_its_client_and_exits_75_when_its_lease_is_taken() {
    use object_store::ObjectStoreExt;
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "taken";
    let root = s.object_path(BUCKET, prefix);
    let d = tempdir("taken");
    let mut c = shmsnap(["run", "--state"]);
    c.arg(d.path().join("s.snap"))
        .args(["--strategy", "queue", "--interval", "100ms", "--size", "2M"])
        .args(["--replica", &url(prefix), "--lease-ttl", "3s"])
        .arg("--")
        .args(primes(&["--pause", "2ms"]));
    s.env(&mut c);
    let mut h = Proc::spawn(c);
    h.wait_log(0, "client started", SLOW);
    poll(SLOW, || (!points_in(&root).is_empty()).then_some(())).expect("a point");
    let pid = h.client_pid();
    let other = br#"{"holder":{"machine_id":"elsewhere","state_path":"/x","pid":1,"run_id":"ffff"},"expires_unix_ms":99999999999999,"ttl_ms":3000}"#;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(s.store(BUCKET).put(
        &object_store::path::Path::from(format!("{prefix}/lease")),
        object_store::PutPayload::from_static(other),
    ))
    .unwrap();
    assert_eq!(h.exit_code(), 75, "{}", h.err.text());
    let err = h.err.text();
    assert!(err.contains("machine elsewhere"), "names the holder: {err}");
    assert!(!alive(pid), "the client was stopped");
    assert!(err.contains("stopping the client"), "{err}");
}

/// The counts a primes client acknowledged (`primes: acknowledged COUNT (...`) in `lines`.
fn acks(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("primes: acknowledged ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Clients that acknowledge only replicated commits (`primes --ack-replicated`) across
/// takeovers, the primary alternately SIGKILLed (host and client) and paused past the TTL
/// (then resumed: it must not acknowledge anything more): every new primary's client starts
/// with at least every count acknowledged before. `SHMSNAP_STANDBY_ACK_TRIALS` takeovers
/// (default 2).
#[test]
fn no_replicated_acknowledgement_is_lost_across_takeovers() {
    let trials: usize = std::env::var("SHMSNAP_STANDBY_ACK_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()) | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "acks";
    let client = primes(&["--pause", "2ms", "--ack-replicated", "20"]);
    let dirs = [tempdir("ack-a"), tempdir("ack-b")];
    let states: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("s.snap")).collect();
    let mut primary = host_client(&s, &states[0], prefix, &[], &client);
    primary.wait_log(0, "client started", SLOW);
    let mut standby = host_client(&s, &states[1], prefix, &[], &client);
    wait_standby(&standby, 0);
    let mut which = 0;
    let mut all_acks = BTreeSet::new();
    for trial in 0..trials {
        // Some acknowledgements first.
        let from = primary.out.len();
        poll(SLOW, || {
            (acks(&primary.out.all()[from..]).len() >= 3).then_some(())
        })
        .unwrap_or_else(|| panic!("no acknowledgements:\n{}", primary.err.text()));
        // A random moment: acknowledgements in flight, uploads under way.
        std::thread::sleep(Duration::from_millis(rng.below(700)));
        let out_from = standby.out.len();
        let paused = trial % 2 == 1;
        if paused {
            primary.signal(Signal::STOP);
        } else {
            kill_primary(&mut primary);
        }
        let (_, _, k) = next_restored(&standby, out_from, TAKEOVER)
            .unwrap_or_else(|| panic!("no takeover:\n{}", standby.err.text()));
        if paused {
            let from = primary.err.len();
            primary.signal(Signal::CONT);
            primary.wait_log(from, "role change: primary -> standby", SLOW);
            wait_standby(&primary, from);
        }
        // Everything the old primary's clients ever acknowledged, now that none of them
        // can acknowledge anything more (killed, or stopped after the lapse).
        let acked = acks(&primary.out.all());
        let max = acked.iter().copied().max().unwrap_or(0);
        all_acks.extend(acked.iter().copied());
        println!(
            "takeover {trial} ({}): new primary restored {k}; the old primary's clients \
             acknowledged up to {max} ({} acknowledgements)",
            if paused { "paused" } else { "killed" },
            acked.len()
        );
        assert!(
            k >= max,
            "takeover {trial}: acknowledged {max} lost (new primary restored {k})"
        );
        if !paused {
            let back = host_client(&s, &states[which], prefix, &[], &client);
            wait_standby(&back, 0);
            primary = std::mem::replace(&mut standby, back);
        } else {
            std::mem::swap(&mut primary, &mut standby);
        }
        which = 1 - which;
    }
    all_acks.extend(acks(&primary.out.all()));
    all_acks.extend(acks(&standby.out.all()));
    println!(
        "{trials} takeovers, {} distinct acknowledged counts, 0 lost",
        all_acks.len()
    );
    standby.kill();
    primary.kill();
}

/// `SHMSNAP_STANDBY_INTERVAL` (default 1s): the snapshot interval of the pages trials, and
/// the period in which the pages client rewrites 1 % of the region.
fn interval() -> String {
    std::env::var("SHMSNAP_STANDBY_INTERVAL").unwrap_or_else(|_| "1s".into())
}

/// `shmsnap run --standby --metrics` on `state` for the pages client (`example pages`: 1 %
/// of the region's pages rewritten per interval, in 10 commits), at [`interval`].
fn pages_host(s: &S3Server, state: &Path, prefix: &str) -> Proc {
    let (ttl, size, interval) = (ttl(), size(), interval());
    let mut c = shmsnap(["run", "--state"]);
    c.arg(state)
        .args([
            "--strategy",
            "queue",
            "--interval",
            &interval,
            "--size",
            &size,
        ])
        .args(["--replica", &url(prefix), "--standby", "--lease-ttl", &ttl])
        .args(["--metrics", "127.0.0.1:0", "--"])
        .args([BIN, "example", "pages", "--interval", &interval]);
    s.env(&mut c);
    Proc::spawn(c)
}

/// The newest root of a live pages region (`/proc/PID/fd/3`): (commit, its unix time in ns).
fn live_pages_root(client: i32) -> Option<(u64, u64)> {
    let f = std::fs::File::open(format!("/proc/{client}/fd/3")).ok()?;
    let memfd = shmsnap_linux::Memfd::from_fd(f.into()).ok()?;
    let map = shmsnap_linux::Mapping::of_memfd(&memfd, shmsnap_linux::Protection::ReadOnly).ok()?;
    let region = shmsnap_core::Region::open(map.words()).ok()?;
    for _ in 0..100 {
        let Some(d) = region.newest() else {
            return Some((0, 0));
        };
        // The root is longer than 16 bytes: read it whole, keep its first two words.
        let mut b = vec![0u8; d.length as usize];
        if region.read_payload(&d, &mut b).is_ok() && b.len() >= 16 {
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
            return Some((w(0), w(1)));
        }
    }
    None
}

/// The next `pages: pid P restored commit C (taken at T ns; ...)` line of `h` from `from`:
/// (pid, C, T). Panics on `TORN`.
fn next_pages_restored(h: &Proc, from: usize, timeout: Duration) -> Option<(i32, u64, u64)> {
    let (_, line) = h.out.wait_from(from, timeout, |l| {
        l.contains("TORN") || l.starts_with("pages: pid ")
    })?;
    assert!(!line.contains("TORN"), "the restored state is torn: {line}");
    let w: Vec<&str> = line.split_whitespace().collect();
    // pages: pid P restored commit C (taken at T ns; ...
    Some((w[2].parse().ok()?, w[5].parse().ok()?, w[8].parse().ok()?))
}

/// The commit a point of the bucket holds: its objects (base and deltas 1..=index) copied
/// out of `root`, the point materialized with the library and inspected (the newest entry's
/// first word is the commit).
fn commit_in_point(root: &Path, (g, index): PointId) -> u64 {
    let work = tempdir("point");
    let dir = root.join(format!("g/{g:020}"));
    let base = work.path().join("p.snap");
    let rw = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap()
    };
    let out = rw(&base);
    shmsnap_linux::packed::unpack(std::fs::File::open(dir.join("base")).unwrap(), &out).unwrap();
    drop(out);
    let cdir = chain::chain_dir(&base);
    std::fs::create_dir_all(&cdir).unwrap();
    for i in 1..=index {
        std::fs::copy(
            dir.join(format!("d/{i:08}")),
            cdir.join(chain::delta_name(g, u64::from(i))),
        )
        .unwrap();
    }
    let file = work.path().join("point.snap");
    let f = rw(&file);
    chain::materialize(&base, &cdir, At::Deltas(u64::from(index)), &f).unwrap();
    drop(f);
    assert_verifies(&file);
    snapshot_count(&inspect(&file).unwrap())
}

/// The mean and the largest bucket bound of the primary's upload times (its metrics:
/// `shmsnap_snapshot_phase_duration_seconds{phase="upload"}`), and how many uploads.
fn upload_times(h: &Proc) -> Option<(f64, f64, u64)> {
    let m = scrape(h);
    let key = |s: &str| format!("shmsnap_snapshot_phase_duration_seconds_{s}{{phase=\"upload\"}}");
    let (sum, count) = (*m.get(&key("sum"))?, *m.get(&key("count"))?);
    // The smallest bucket bound that holds every upload.
    let max = m
        .iter()
        .filter_map(|(k, &v)| {
            let le = k
                .strip_prefix("shmsnap_snapshot_phase_duration_seconds_bucket{")?
                .split(',')
                .find_map(|kv| kv.strip_prefix("le=\""))?
                .trim_end_matches(['"', '}']);
            (k.contains("phase=\"upload\"") && v >= count).then(|| le.parse::<f64>().ok())?
        })
        .fold(f64::INFINITY, f64::min);
    (count > 0.0).then(|| (sum / count, max, count as u64))
}

fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

/// The RPO of a 1 % writer (issue 26: "RPO ≤ one interval + one upload for a 64 MiB region
/// with 1 % written per interval"): `example pages` rewrites 1 % of the region's pages per
/// interval (10 commits, each numbered), the primary (host and client) is SIGKILLed at a
/// random moment, and the standby's client must restore exactly the commit of the bucket's
/// newest point before the kill, not torn (the client checks every page against the commit
/// schedule). Prints per trial and as a distribution: commits lost, seconds of commits lost,
/// the age of the restored state at the kill, and the mean upload time from the primary's
/// metrics. `SHMSNAP_STANDBY_TRIALS` (default 2), `_SIZE` (2M), `_TTL` (3s), `_INTERVAL` (1s).
#[test]
fn a_one_percent_writer_restores_the_newest_uploaded_commit_untorn() {
    let trials = trials();
    let mut rng = seeded_rng();
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "pages";
    let root = s.object_path(BUCKET, prefix);
    let dirs = [tempdir("pages-a"), tempdir("pages-b")];
    let states: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("s.snap")).collect();
    let mut primary = pages_host(&s, &states[0], prefix);
    primary.wait_log(0, "client started", SLOW);
    let mut standby = pages_host(&s, &states[1], prefix);
    wait_standby(&standby, 0);
    let step = humantime::parse_duration(&interval()).unwrap();
    let mut which = 0;
    let (mut lost, mut lost_secs, mut ages, mut rtos, mut uploads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        poll(SLOW, || (!points_in(&root).is_empty()).then_some(()))
            .expect("a first point in the bucket");
        // A random moment after a few intervals of commits.
        let ms = step.as_millis() as u64;
        std::thread::sleep(Duration::from_millis(2 * ms + rng.below(3 * ms)));
        let up = upload_times(&primary);
        let (out_from, err_from) = (standby.out.len(), standby.err.len());
        // The client stopped first, so its last commit is known; then host and client killed.
        let pid = primary.client_pid();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            Signal::STOP,
        );
        let (last, last_ns) = live_pages_root(pid).expect("the client's newest root");
        primary.kill();
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            Signal::KILL,
        );
        let killed = Instant::now();
        let killed_wall = SystemTime::now();
        assert!(wait_dead(pid, SLOW), "the client {pid} outlived the kill");
        let newest = *points_in(&root).last().unwrap();
        let in_bucket = commit_in_point(&root, newest);
        let (_, k, k_ns) = next_pages_restored(&standby, out_from, TAKEOVER).unwrap_or_else(|| {
            panic!(
                "trial {trial}: the standby's client did not start:\n{}",
                standby.err.text()
            )
        });
        let rto = killed.elapsed().as_secs_f64();
        let (_, from_line) = standby.wait_log(err_from, " holds ", Duration::ZERO);
        let from = started_from(&from_line).unwrap_or_else(|| panic!("{from_line}"));
        assert_eq!(
            from, newest,
            "trial {trial}: the new primary started from the bucket's newest point"
        );
        assert_eq!(
            k, in_bucket,
            "trial {trial}: the new primary's client restored commit {k}, the bucket's newest \
             point {newest:?} held commit {in_bucket}"
        );
        assert!(k <= last, "restored {k} > committed {last}");
        let secs = last_ns.saturating_sub(k_ns) as f64 / 1e9;
        let age = killed_wall
            .duration_since(unix_time(k_ns))
            .unwrap_or_default()
            .as_secs_f64();
        println!(
            "trial {trial}: RTO {rto:.2} s; RPO {} commits, {secs:.2} s of commits (the \
             restored state {age:.2} s old at the kill); client at commit {last}, restored \
             {k} from {newest:?}; uploads so far: {}",
            last - k,
            up.map_or("none measured".to_owned(), |(mean, max, n)| format!(
                "mean {mean:.3} s, all <= {max} s (n = {n})"
            ))
        );
        lost.push((last - k) as f64);
        lost_secs.push(secs);
        ages.push(age);
        rtos.push(rto);
        if let Some((mean, _, _)) = up {
            uploads.push(mean);
        }
        let back = pages_host(&s, &states[which], prefix);
        wait_standby(&back, 0);
        primary = std::mem::replace(&mut standby, back);
        which = 1 - which;
    }
    let (lm, lx) = median_max(&mut lost);
    let (sm, sx) = median_max(&mut lost_secs);
    let (am, ax) = median_max(&mut ages);
    let (rm, rx) = median_max(&mut rtos);
    println!(
        "{trials} takeovers, region {}, interval {}, TTL {}: RPO median {lm} max {lx} commits; \
         seconds of commits lost median {sm:.2} max {sx:.2}; restored state's age at the kill \
         median {am:.2} s max {ax:.2} s; RTO median {rm:.2} s max {rx:.2} s",
        size(),
        interval(),
        ttl()
    );
    if !uploads.is_empty() {
        let (um, ux) = median_max(&mut uploads);
        println!(
            "mean upload time per primary: median {um:.3} s, max {ux:.3} s; interval + one \
             upload = {:.2} s",
            step.as_secs_f64() + ux
        );
    }
    standby.kill();
    primary.signal(Signal::TERM);
    assert_eq!(primary.exit_code(), 0, "{}", primary.err.text());
}

/// The `SystemTime` of a unix time in ns.
fn unix_time(ns: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The lease object as the S3 server stores it: (holder pid, released).
fn lease_in(root: &Path) -> Option<(i64, bool)> {
    let body = std::fs::read(root.join("lease")).ok()?;
    let j: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some((
        j["holder"]["pid"].as_i64()?,
        j["released"].as_bool().unwrap_or(false),
    ))
}

/// SIGTERM to a standby (as systemd stops it): it exits with status 0 and says so, takes no
/// lease and releases nothing (the primary's lease is untouched, its client runs on).
#[test]
fn a_standby_stops_on_sigterm_with_status_0_and_leaves_the_lease_alone() {
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "term";
    let root = s.object_path(BUCKET, prefix);
    let (da, db) = (tempdir("term-a"), tempdir("term-b"));
    let a = host(&s, &da.path().join("a.snap"), prefix);
    a.wait_log(0, "client started", SLOW);
    let mut b = host(&s, &db.path().join("b.snap"), prefix);
    wait_standby(&b, 0);
    let before = lease_in(&root).expect("the primary's lease");
    assert_eq!(before, (i64::from(a.pid()), false));
    let signalled = Instant::now();
    b.signal(Signal::TERM);
    let code = b.wait_timeout(SLOW).map(|s| s.code());
    println!(
        "the standby exited {:.3} s after SIGTERM: {code:?}",
        signalled.elapsed().as_secs_f64()
    );
    assert_eq!(code, Some(Some(0)), "{}", b.err.text());
    let err = b.err.text();
    assert!(
        err.contains("SIGTERM while standing by: stopping (no lease held"),
        "{err}"
    );
    assert!(!err.contains("client started"), "{err}");
    // The primary's lease is untouched (renewals keep its holder), its client runs on.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lease_in(&root), Some((i64::from(a.pid()), false)));
    assert!(alive(a.client_pid()), "{}", a.err.text());
}

/// A standby that has just taken the lease (the primary released it at its stop) and is told
/// to stop before its client starts: it releases the lease, exits 0, starts no client, and
/// the next standby takes the lease at once. (The window is the standby's read-back after its
/// takeover, a lease request's timeout: 2 s at `--lease-ttl 20s`.)
#[test]
fn a_standby_stopped_after_taking_the_lease_releases_it() {
    let s = S3Server::start_with_bucket(BUCKET);
    let prefix = "term-taken";
    let root = s.object_path(BUCKET, prefix);
    let dirs = [tempdir("tt-a"), tempdir("tt-b"), tempdir("tt-c")];
    let mut a = host(&s, &dirs[0].path().join("s.snap"), prefix);
    a.wait_log(0, "client started", SLOW);
    poll(SLOW, || (!points_in(&root).is_empty()).then_some(())).expect("a point");
    // Its own TTL is 20 s (a takeover's read-back waits TTL/10).
    let mut c = shmsnap(["run", "--state"]);
    c.arg(dirs[1].path().join("s.snap"))
        .args(["--strategy", "queue", "--interval", "100ms", "--size", "2M"])
        .args([
            "--replica",
            &url(prefix),
            "--standby",
            "--lease-ttl",
            "20s",
            "--",
        ])
        .args(primes(&["--pause", "2ms"]));
    s.env(&mut c);
    let mut b = Proc::spawn(c);
    wait_standby(&b, 0);
    a.signal(Signal::TERM);
    assert_eq!(a.exit_code(), 0, "{}", a.err.text());
    let b_pid = i64::from(b.pid());
    poll(SLOW, || {
        (lease_in(&root) == Some((b_pid, false))).then_some(())
    })
    .unwrap_or_else(|| panic!("the standby did not take the lease:\n{}", b.err.text()));
    let signalled = Instant::now();
    b.signal(Signal::TERM);
    let code = b.wait_timeout(SLOW).map(|s| s.code());
    println!(
        "the standby exited {:.3} s after SIGTERM: {code:?}",
        signalled.elapsed().as_secs_f64()
    );
    let err = b.err.text();
    assert_eq!(
        lease_in(&root),
        Some((b_pid, true)),
        "the lease is released:\n{err}"
    );
    assert_eq!(code, Some(Some(0)), "{err}");
    assert!(!err.contains("client started"), "{err}");
    assert!(err.contains("SIGTERM while standing by"), "{err}");
    // The next standby takes it at once (no TTL to wait out).
    let c = host(&s, &dirs[2].path().join("s.snap"), prefix);
    let (_, line) = c.wait_log(0, "lease taken", SLOW);
    println!("next host: {line}");
    c.wait_log(0, "client started", SLOW);
}

/// Takeovers of SIGKILLed primaries whose primes clients acknowledge every 20 commits with
/// `ack` (`--ack`: durable locally; `--ack-replicated`: in the bucket), every host reaching
/// the store through a proxy that delays each point upload (a `PUT` under `g/`) by 700 ms —
/// a slow link, so that local acknowledgements outrun the uploads. Returns, per takeover,
/// (acknowledgements of the killed primary, those above what the new primary restored).
fn acks_across_slow_takeovers(ack: &'static str, takeovers: usize) -> Vec<(usize, usize)> {
    use common::proxy::{Action, Proxy};
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id()) | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let s = S3Server::start_with_bucket(BUCKET);
    let proxy = Proxy::start(s.port(), |r| {
        if r.method == "PUT" && r.path().contains("/g/") {
            Action::Delay(Duration::from_millis(700))
        } else {
            Action::Forward
        }
    });
    let prefix = if ack == "--ack" {
        "slow-local"
    } else {
        "slow-replicated"
    };
    let start = |state: &Path| {
        let mut c = shmsnap(["run", "--state"]);
        c.arg(state)
            .args(["--strategy", "queue", "--interval", "100ms", "--size", "2M"])
            .args([
                "--replica",
                &url(prefix),
                "--standby",
                "--lease-ttl",
                &ttl(),
            ])
            .arg("--")
            .args(primes(&["--pause", "2ms", ack, "20"]));
        common::s3::env_for(
            &mut c,
            &proxy.endpoint(),
            common::s3::ACCESS_KEY,
            common::s3::SECRET_KEY,
        );
        Proc::spawn(c)
    };
    let dirs = [tempdir("slow-a"), tempdir("slow-b")];
    let states: Vec<PathBuf> = dirs.iter().map(|d| d.path().join("s.snap")).collect();
    let mut primary = start(&states[0]);
    primary.wait_log(0, "client started", SLOW);
    let mut standby = start(&states[1]);
    wait_standby(&standby, 0);
    let mut which = 0;
    let mut out = Vec::new();
    for t in 0..takeovers {
        let from = primary.out.len();
        poll(SLOW, || {
            (acks(&primary.out.all()[from..]).len() >= 3).then_some(())
        })
        .unwrap_or_else(|| panic!("no acknowledgements:\n{}", primary.err.text()));
        std::thread::sleep(Duration::from_millis(rng.below(700)));
        let out_from = standby.out.len();
        kill_primary(&mut primary);
        let (_, _, k) = next_restored(&standby, out_from, TAKEOVER)
            .unwrap_or_else(|| panic!("no takeover:\n{}", standby.err.text()));
        let acked = acks(&primary.out.all());
        let lost: Vec<u64> = acked.iter().copied().filter(|&a| a > k).collect();
        println!(
            "{ack} takeover {t}: the killed primary's clients acknowledged {} counts, up to \
             {}; the new primary restored {k}: {} acknowledged count(s) lost {:?}",
            acked.len(),
            acked.iter().max().unwrap_or(&0),
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        out.push((acked.len(), lost.len()));
        let back = start(&states[which]);
        wait_standby(&back, 0);
        primary = std::mem::replace(&mut standby, back);
        which = 1 - which;
    }
    standby.kill();
    primary.kill();
    out
}

/// The broken twin of `no_replicated_acknowledgement_is_lost_across_takeovers`: clients that
/// acknowledge on *local* durability (`primes --ack 20`) lose acknowledged commits in a
/// takeover when the uploads lag (a 700 ms link) — every takeover here loses some. The check
/// the replicated clients pass is one that can fail.
#[test]
fn local_acknowledgements_are_lost_across_takeovers_when_uploads_lag() {
    let trials = acks_across_slow_takeovers("--ack", 2);
    let acked: usize = trials.iter().map(|t| t.0).sum();
    let lost: usize = trials.iter().map(|t| t.1).sum();
    println!(
        "{} takeovers, {acked} local acknowledgements, {lost} lost",
        trials.len()
    );
    assert!(
        trials.iter().all(|t| t.1 > 0),
        "a takeover lost no locally acknowledged commit although the uploads lag: {trials:?}"
    );
}

/// The same slow link with clients that acknowledge only replicated commits
/// (`primes --ack-replicated 20`): none lost.
#[test]
fn replicated_acknowledgements_survive_takeovers_when_uploads_lag() {
    let trials = acks_across_slow_takeovers("--ack-replicated", 2);
    let acked: usize = trials.iter().map(|t| t.0).sum();
    println!(
        "{} takeovers, {acked} replicated acknowledgements, 0 lost",
        trials.len()
    );
    assert!(acked > 0);
    assert!(
        trials.iter().all(|t| t.1 == 0),
        "replicated acknowledgements lost: {trials:?}"
    );
}
