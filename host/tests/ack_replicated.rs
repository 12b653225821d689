//! Replicated acknowledgements end to end (DESIGN §14, issue 26): `shmsnap example primes
//! --ack-replicated N` under `run --replica` prints `acknowledged COUNT` only once COUNT is in
//! the bucket, so losing the machine — host and client SIGKILLed, the local state gone —
//! loses no acknowledged prime: the replica's newest point, restored with `restore --from`,
//! holds at least every acknowledged count.
//!
//! The replica is made to lag on purpose: the S3 server (s3s-fs in the test process) is
//! stopped while the client runs, so local snapshots succeed and uploads do not. A client
//! that acknowledged on the local status (`--ack`'s promise) would go on committing and
//! acknowledging; this one must stop and say what it waits for. Under a host without `--replica` it never
//! acknowledges, and says why on stderr.

mod common;

use common::s3::S3Server;
use common::*;

const BUCKET: &str = "acks";
const PREFIX: &str = "s3://acks/primes";
const ACK: &str = "primes: acknowledged ";
/// The client's message while a replicated acknowledgement waits.
const WAITING: &str = "primes: waiting to acknowledge";

/// The acknowledged counts among `lines`.
fn acks(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(ACK)?.split(' ').next()?.parse().ok())
        .collect()
}

/// The count of a primes state FILE: a host without replica restores it and the client (which
/// checks every prime) says how many it found, then stops at once (`--limit 1`).
fn primes_in(file: &std::path::Path) -> u64 {
    let mut h = run_host(
        file,
        &["--strategy", "queue", "--size", "2M", "--cgroup", "off"],
        &primes(&["--limit", "1"]),
    );
    let (_, _, k) = next_restored(&h, 0, SLOW)
        .unwrap_or_else(|| panic!("the client did not start:\n{}", h.err.text()));
    assert_eq!(h.exit_code(), 0, "{}", h.err.text());
    k
}

#[test]
fn every_replicated_acknowledgement_survives_losing_the_machine() {
    let mut s = S3Server::start_with_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("primes.snap");
    let mut c = shmsnap(["run", "--state"]);
    c.arg(&state)
        .args([
            "--strategy",
            "queue",
            "--interval",
            "100ms",
            "--size",
            "2M",
            "--cgroup",
            "off",
            "--replica",
            PREFIX,
            "--",
        ])
        .args(primes(&["--ack-replicated", "4", "--pause", "2ms"]));
    s.env(&mut c);
    let mut h = Proc::spawn(c);
    let (_, client, _) = next_restored(&h, 0, SLOW)
        .unwrap_or_else(|| panic!("the client did not start:\n{}", h.err.text()));
    let _client = KillOnDrop(vec![client]);

    // Server up: acknowledgements come.
    poll(SLOW, || (acks(&h.out.all()).len() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("no acknowledgements:\n{}\n{}", h.out.text(), h.err.text()));
    let ok = acks(&h.out.all());
    assert!(
        h.out
            .all()
            .iter()
            .any(|l| l.contains("in the replica up to seq")),
        "{}",
        h.out.text()
    );

    // Server down: the replica stands still; the client waits (its acknowledgement blocks its
    // commit loop) and says so at every 2-second retry. (A client acknowledging on the local
    // status would print more acknowledgements instead: the check below catches that.)
    s.stop();
    let waits = |h: &Proc| h.err.all().iter().filter(|l| l.contains(WAITING)).count();
    let waits_before = waits(&h);
    poll(SLOW, || {
        (waits(&h) >= waits_before + 2 || acks(&h.out.all()).len() >= ok.len() + 3).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "neither waits nor acknowledgements:\n{}\n{}",
            h.out.text(),
            h.err.text()
        )
    });

    // The machine is lost: host and client SIGKILLed, the local state gone.
    h.kill();
    // (It may be dead already: the host's death signal.)
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(client).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert!(wait_dead(client, SLOW));
    let acked = acks(&h.out.all());
    assert!(acked.len() >= ok.len());
    std::fs::remove_file(&state).unwrap();

    s.start();
    let out = dir.path().join("restored.snap");
    let mut r = shmsnap(["restore", "--from", PREFIX, "--to"]);
    r.arg(&out);
    s.env(&mut r);
    let done = r.output().unwrap();
    assert!(
        done.status.success(),
        "restore --from:\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let restored = primes_in(&out);
    let max_acked = acked.iter().copied().max().unwrap();
    println!(
        "{} acknowledgements ({} before the outage), the largest {max_acked}; the replica holds \
         {restored} primes",
        acked.len(),
        ok.len()
    );
    assert!(
        restored >= max_acked,
        "{max_acked} primes were acknowledged as replicated, the replica holds {restored}:\n{}",
        h.out.text()
    );
    // It waited, and said for what.
    let waiting = h
        .err
        .all()
        .into_iter()
        .rfind(|l| l.contains(WAITING))
        .unwrap();
    assert!(
        waiting.contains("durable locally"),
        "the commit is durable locally, only the replica is missing: {waiting}"
    );
}

#[test]
fn without_a_replica_nothing_is_acknowledged_and_the_client_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = run_host(
        &dir.path().join("primes.snap"),
        &[
            "--strategy",
            "queue",
            "--interval",
            "100ms",
            "--size",
            "2M",
            "--cgroup",
            "off",
        ],
        &primes(&["--ack-replicated", "1", "--pause", "2ms"]),
    );
    let (_, client, _) = next_restored(&h, 0, SLOW)
        .unwrap_or_else(|| panic!("the client did not start:\n{}", h.err.text()));
    let _client = KillOnDrop(vec![client]);
    let why = h.err.expect(WAITING, "the client's wait");
    assert!(
        why.contains("nothing is in the replica yet") && why.contains("--replica URL"),
        "{why}"
    );
    // A second retry, still nothing acknowledged.
    poll(SLOW, || {
        (h.err.all().iter().filter(|l| l.contains(WAITING)).count() >= 2).then_some(())
    })
    .expect("the client waits on and says so again");
    assert!(
        acks(&h.out.all()).is_empty(),
        "acknowledged without a replica:\n{}",
        h.out.text()
    );
    h.kill();
}
