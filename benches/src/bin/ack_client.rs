//! `ack_client`: a client for `shmsnap run` that measures acknowledgements under load in the
//! real host (issue 27; benches/README.md, "Acknowledgements under load").
//!
//! A writer thread commits 64-byte payloads paced at `RATE` per second (default 1 000 000)
//! into the region at fd 3 (256 entries, 64 KiB data ring, as `shmsnap_benches::durable`);
//! every `PERIOD_MS` (default 5), if the acknowledging thread is idle, the writer hands it the
//! seq it just committed, and that thread calls `request_snapshot` and `wait_persisted`. After
//! `SAMPLES` acknowledgements (default 400) it prints the distribution of commit →
//! acknowledged (and commit → request, the acknowledger's own wake-up) and exits 0.
//!
//! ```text
//! shmsnap run --state /tmp/ack.snap --strategy queue --interval 1s -- target/release/ack_client
//! ```
//!
//! Settings come from the environment (`RATE`, `PERIOD_MS`, `SAMPLES`), so the host's command
//! line stays the documented one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmsnap_benches::report::{fmt_ns, quantile};
use shmsnap_core::LayoutRequest;
use shmsnap_linux::ClientRegion;

const LAYOUT: LayoutRequest = LayoutRequest {
    entries: 256,
    data_size: 1 << 16,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rate = env("RATE", 1_000_000);
    let period = Duration::from_millis(env("PERIOD_MS", 5));
    let samples = usize::try_from(env("SAMPLES", 400)).unwrap_or(400);
    let mut region = ClientRegion::from_host().expect("the region at fd 3");
    let durability = region.durability();
    let done = AtomicBool::new(false);
    let (handover, commits) = mpsc::sync_channel::<(u64, Instant)>(0);
    let mut lat = Vec::with_capacity(samples);
    let mut to_req = Vec::with_capacity(samples);
    let n = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut w = region.writer(LAYOUT).expect("the queue writer");
            let t0 = Instant::now();
            let mut next_ack = t0 + period;
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let seq = w.commit(&[7u8; 64]).expect("commit");
                n += 1;
                let now = Instant::now();
                if now >= next_ack && handover.try_send((seq, now)).is_ok() {
                    next_ack = now + period;
                }
                let due = Duration::from_nanos(n.saturating_mul(1_000_000_000) / rate.max(1));
                while t0.elapsed() < due && !done.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
            (n, t0.elapsed())
        });
        while lat.len() < samples {
            let (seq, committed) = commits.recv().expect("the writer runs");
            to_req.push(committed.elapsed().as_nanos() as f64);
            durability.request_snapshot().expect("request");
            assert!(
                durability
                    .wait_persisted(seq, Duration::from_secs(30))
                    .expect("wait"),
                "seq {seq} not acknowledged within 30 s"
            );
            lat.push(committed.elapsed().as_nanos() as f64);
        }
        done.store(true, Ordering::Relaxed);
        drop(commits);
        writer.join().expect("the writer thread")
    });
    let q = |v: &Vec<f64>, p| fmt_ns(quantile(v.clone(), p));
    println!(
        "ack_client: {samples} acks, {:.0} commits/s; commit → acknowledged p50 {} p90 {} p99 {} \
         max {}; commit → request p50 {} p99 {}",
        n.0 as f64 / n.1.as_secs_f64(),
        q(&lat, 0.5),
        q(&lat, 0.9),
        q(&lat, 0.99),
        q(&lat, 1.0),
        q(&to_req, 0.5),
        q(&to_req, 0.99),
    );
}
