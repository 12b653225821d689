//! One-run comparison report: every pair interleaved (A B A B …) in this process, medians and
//! ratios, the DESIGN §10 targets checked against them, and the rows of issue 27's table
//! (`shmsnap_benches::targets`: met / NOT met, or "not measured here" with the reason).
//!
//! ```text
//! cargo run -p shmsnap-benches --release --bin compare [-- --quick] [-- --only commit,recover,snapshot,replica]
//! ```
//!
//! `--quick` (CI) finishes in well under a minute; the full run takes a few minutes. The
//! snapshot files go to `$SHMSNAP_BENCH_DIR`, else `target/shmsnap-bench` of this workspace
//! (a real disk filesystem; the report refuses tmpfs unless `--allow-tmpfs` is given).
//! Figures are ratios measured side by side on a shared machine: treat absolute numbers as
//! indicative, ratios as the result.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shmsnap_benches::abi::{self, Side};
use shmsnap_benches::commit::{Dest, Limit, Ours, Raw, Upstream, PAYLOADS};
use shmsnap_benches::durable::{busy_ack, raw_sync, Ack, DurableFixture, OnStarved, HOST_RETRIES};
use shmsnap_benches::incremental::{
    self, DeltaBench, DeltaFixture, DeltaSide, FirstWrite, ScanBench, DELTA_PERCENTS,
};
use shmsnap_benches::recover::{Recover, ENTRIES};
use shmsnap_benches::report::{compare, fmt_ns, interleave, is_tmpfs, machine, median, quantile};
use shmsnap_benches::snapshot::{SnapshotFixture, Touch, SIZES};
use shmsnap_benches::targets::Issue27;
use shmsnap_benches::triple;
use shmsnap_benches::triple_snapshot::{self, TripleSnapshotFixture};
use shmsnap_benches::Bench;
use shmsnap_benches::FnBench;

/// Run parameters.
struct Opts {
    quick: bool,
    only: Option<Vec<String>>,
    dir: PathBuf,
    allow_tmpfs: bool,
}

impl Opts {
    /// Batch length and interleaved rounds of the per-publication groups (commit, triple).
    fn publish_batches(&self) -> (Duration, usize) {
        if self.quick {
            (Duration::from_millis(2), 7)
        } else {
            (Duration::from_millis(4), 31)
        }
    }

    fn parse() -> Opts {
        let mut quick = false;
        let mut only = None;
        let mut allow_tmpfs = false;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--allow-tmpfs" => allow_tmpfs = true,
                "--only" => {
                    only = args
                        .next()
                        .map(|s| s.split(',').map(str::to_owned).collect::<Vec<_>>())
                }
                "-h" | "--help" => {
                    println!(
                        "usage: compare [--quick] [--only commit,abi,recover,snapshot,triple,durable,incremental,replica] [--allow-tmpfs]"
                    );
                    std::process::exit(0);
                }
                other => {
                    eprintln!("unknown argument {other:?} (try --help)");
                    std::process::exit(2);
                }
            }
        }
        let dir = std::env::var_os("SHMSNAP_BENCH_DIR").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/shmsnap-bench"),
            PathBuf::from,
        );
        Opts {
            quick,
            only,
            dir,
            allow_tmpfs,
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

/// A DESIGN §10 target and whether the measured ratio meets it.
struct Target {
    what: String,
    ratio: f64,
    /// `true`: the ratio must be at most `bound`; `false`: at least.
    at_most: bool,
    bound: f64,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_most {
            self.ratio <= self.bound
        } else {
            self.ratio >= self.bound
        }
    }
}

/// Everything printed at the end.
#[derive(Default)]
struct Report {
    out: String,
    targets: Vec<Target>,
    /// The rows of issue 27's table, filled in by the sections that measure them.
    issue27: Issue27,
}

fn main() {
    let opts = Opts::parse();
    let started = Instant::now();
    std::fs::create_dir_all(&opts.dir).expect("create the bench directory");
    let dir = opts.dir.canonicalize().expect("bench directory");
    if is_tmpfs(&dir) && !opts.allow_tmpfs {
        eprintln!(
            "{} is on tmpfs, where fdatasync is free and the snapshot figures mean nothing; \
             set SHMSNAP_BENCH_DIR to a disk filesystem (or pass --allow-tmpfs)",
            dir.display()
        );
        std::process::exit(2);
    }
    let mut r = Report::default();
    let mode = if opts.quick { "quick" } else { "full" };
    let _ = writeln!(r.out, "# shmsnap compare ({mode})\n");
    let _ = writeln!(r.out, "machine: {}\n", machine(&dir));
    eprintln!("machine: {}", machine(&dir));

    if opts.wants("commit") {
        commit_section(&opts, &mut r);
    }
    if opts.wants("abi") {
        abi_section(&opts, &mut r);
    }
    if opts.wants("recover") {
        recover_section(&opts, &mut r);
    }
    if opts.wants("snapshot") {
        snapshot_section(&opts, &dir, &mut r);
    }
    if opts.wants("triple") {
        triple_section(&opts, &mut r);
        triple_snapshot_section(&opts, &dir, &mut r);
    }
    if opts.wants("durable") {
        durable_section(&opts, &dir, &mut r);
    }
    if opts.wants("incremental") {
        incremental_section(&opts, &dir, &mut r);
    }
    if opts.wants("replica") {
        replica_section(&opts, &dir, &mut r);
    }

    let _ = writeln!(r.out, "## DESIGN §10 targets\n");
    let _ = writeln!(r.out, "| target | measured | bound | met |");
    let _ = writeln!(r.out, "|---|---:|---:|---|");
    for t in &r.targets {
        let _ = writeln!(
            r.out,
            "| {} | {:.2}x | {} {}x | {} |",
            t.what,
            t.ratio,
            if t.at_most { "≤" } else { "≥" },
            t.bound,
            if t.met() { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(r.out, "\n## issue 27 targets\n\n{}", r.issue27.markdown());
    let _ = writeln!(
        r.out,
        "total run time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    print!("{}", r.out);
}

fn commit_section(opts: &Opts, r: &mut Report) {
    let (batch, rounds) = opts.publish_batches();
    let _ = writeln!(
        r.out,
        "## commit (median per commit; {rounds} interleaved batches of ~{} ms each)\n",
        batch.as_millis()
    );
    let _ = writeln!(
        r.out,
        "| dest | payload | ours | memcpy | word stores | upstream 0.2.3 | ours/memcpy | ours/words | upstream/ours |"
    );
    let _ = writeln!(r.out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for dest in [Dest::Hot, Dest::Advancing] {
        for n in PAYLOADS {
            eprintln!("commit {} {n} B", dest.name());
            let mut ours = Ours::new(n, dest).expect("ours fixture");
            let mut memcpy = Raw::new(n, dest, Limit::Memcpy).expect("memcpy fixture");
            let mut words = Raw::new(n, dest, Limit::Words).expect("words fixture");
            let mut up = Upstream::new(n, dest).expect("upstream fixture");
            let m = compare(
                &mut [&mut ours, &mut memcpy, &mut words, &mut up],
                batch,
                rounds,
            );
            let (o, c, w, u) = (m[0].ns, m[1].ns, m[2].ns, m[3].ns);
            let _ = writeln!(
                r.out,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} |",
                dest.name(),
                size(n),
                fmt_ns(o),
                fmt_ns(c),
                fmt_ns(w),
                fmt_ns(u),
                o / c,
                o / w,
                u / o
            );
            if dest == Dest::Hot && n == 8 {
                r.issue27.ratio("commit-8-hot", u / o);
            }
            if dest == Dest::Hot && n == 64 {
                r.issue27.ratio("commit-64-hot", o / c);
                r.targets.push(Target {
                    what: "commit 64 B hot: ours/memcpy".into(),
                    ratio: o / c,
                    at_most: true,
                    bound: 3.0,
                });
            }
            if dest == Dest::Advancing && n == 4096 {
                r.targets.push(Target {
                    what: "commit 4 KiB advancing: ours/memcpy".into(),
                    ratio: o / c,
                    at_most: true,
                    bound: 1.5,
                });
            }
            r.targets.push(Target {
                what: format!("commit {} {}: upstream/ours", size(n), dest.name()),
                ratio: u / o,
                at_most: false,
                bound: if n >= 512 { 10.0 } else { 2.0 },
            });
        }
    }
    let _ = writeln!(r.out);
}

/// The C ABI against the Rust API (issue 23): a commit and a triple publication, each side in
/// its own region of the same layout, interleaved.
fn abi_section(opts: &Opts, r: &mut Report) {
    let (batch, rounds) = opts.publish_batches();
    let _ = writeln!(
        r.out,
        "## C ABI vs Rust API (median per operation; {rounds} interleaved batches of ~{} ms each; the ABI called through opaque function pointers)\n",
        batch.as_millis()
    );
    let _ = writeln!(
        r.out,
        "The Rust API inlined is how a Rust client calls it; \"out of line\" is the same `Writer::commit` \
         in an `#[inline(never)]` function called through an opaque function pointer, as the ABI is: \
         the floor of any out-of-line API, so ABI / out of line is what the ABI's own work costs.\n"
    );
    let _ = writeln!(
        r.out,
        "| operation | Rust API | Rust API, out of line | C ABI | ABI/Rust | ABI/Rust out of line |"
    );
    let _ = writeln!(r.out, "|---|---:|---:|---:|---:|---:|");
    for n in abi::COMMIT_SIZES {
        eprintln!("abi commit {n} B");
        let mut rust = abi::Commit::new(n, Side::Rust).expect("rust commit fixture");
        let mut call = abi::Commit::new(n, Side::RustCall).expect("rust call commit fixture");
        let mut ffi = abi::Commit::new(n, Side::Abi).expect("abi commit fixture");
        let m = compare(&mut [&mut rust, &mut call, &mut ffi], batch, rounds);
        let (ratio, floor) = (m[2].ns / m[0].ns, m[2].ns / m[1].ns);
        let _ = writeln!(
            r.out,
            "| commit {} hot (`Writer::commit` / `shmsnap_writer_commit`) | {} | {} | {} | {ratio:.2} | {floor:.2} |",
            size(n),
            fmt_ns(m[0].ns),
            fmt_ns(m[1].ns),
            fmt_ns(m[2].ns)
        );
        if n >= 64 {
            r.targets.push(Target {
                what: format!("commit {} through the C ABI: ABI/Rust", size(n)),
                ratio,
                at_most: true,
                bound: 1.1,
            });
        }
    }
    eprintln!("abi publish {} B", abi::PUBLISH_SIZE);
    let mut rust = abi::Publish::new(Side::Rust).expect("rust publish fixture");
    let mut ffi = abi::Publish::new(Side::Abi).expect("abi publish fixture");
    let m = compare(&mut [&mut rust, &mut ffi], batch, rounds);
    let ratio = m[1].ns / m[0].ns;
    let _ = writeln!(
        r.out,
        "| triple publish {} (`TripleClient::publish` / `shmsnap_triple_publish`) | {} | — | {} | {ratio:.2} | — |\n",
        size(abi::PUBLISH_SIZE),
        fmt_ns(m[0].ns),
        fmt_ns(m[1].ns)
    );
    r.targets.push(Target {
        what: format!(
            "triple publish {} through the C ABI: ABI/Rust",
            size(abi::PUBLISH_SIZE)
        ),
        ratio,
        at_most: true,
        bound: 1.1,
    });
}

fn recover_section(opts: &Opts, r: &mut Report) {
    let (batch, rounds) = if opts.quick {
        (Duration::from_millis(2), 7)
    } else {
        (Duration::from_millis(5), 31)
    };
    let _ = writeln!(
        r.out,
        "## recover (attach + newest, every descriptor live; median of {rounds} batches)\n"
    );
    let _ = writeln!(r.out, "| E | attach + newest | per entry |");
    let _ = writeln!(r.out, "|---:|---:|---:|");
    let mut fixtures: Vec<Recover> = ENTRIES
        .iter()
        .map(|&e| Recover::new(e).expect("recover fixture"))
        .collect();
    let mut benches: Vec<&mut dyn Bench> =
        fixtures.iter_mut().map(|f| f as &mut dyn Bench).collect();
    let m = compare(&mut benches, batch, rounds);
    for (e, m) in ENTRIES.iter().zip(&m) {
        let _ = writeln!(
            r.out,
            "| {e} | {} | {} |",
            fmt_ns(m.ns),
            fmt_ns(m.ns / *e as f64)
        );
    }
    let _ = writeln!(r.out);
}

fn snapshot_section(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    let _ = writeln!(
        r.out,
        "## snapshot and restore (median per operation, interleaved with the raw limit)\n"
    );
    let _ = writeln!(
        r.out,
        "| region | touched | host cycle | raw copy+sync+rename | ours/raw | ours to durable¹ | restore | raw copy back | ours/raw |"
    );
    let _ = writeln!(r.out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut crc_rows = Vec::new();
    for len in SIZES {
        for touch in [Touch::Full, Touch::Sixteenth] {
            let rounds = match (opts.quick, len > 64 << 20) {
                (true, true) => 3,
                (true, false) => 5,
                (false, true) => 9,
                (false, false) => 21,
            };
            eprintln!("snapshot {} MiB {}", len >> 20, touch.name());
            // The fixture snapshots and restores once each way and checks the results.
            let f = SnapshotFixture::new(dir, len, touch).expect("snapshot fixture");
            let drop_old = std::cell::RefCell::new(Vec::new());
            let mut host = FnBench(|| {
                f.host_snapshot().expect("host snapshot");
                drop_old
                    .borrow_mut()
                    .push(f.last_persist().drop_old.as_secs_f64() * 1e9);
            });
            let mut raw = FnBench(|| f.raw_snapshot().expect("raw snapshot"));
            let s = interleave(&mut [&mut host, &mut raw], &[1, 1], rounds);
            let mut ours_restore = FnBench(|| f.restore().expect("restore"));
            let mut raw_restore = FnBench(|| f.raw_restore().expect("raw restore"));
            let t = interleave(&mut [&mut ours_restore, &mut raw_restore], &[1, 1], rounds);
            let durable = s[0].ns - median(drop_old.take());
            let mut crc = FnBench(|| {
                std::hint::black_box(f.image_crc().expect("crc"));
            });
            let c = interleave(&mut [&mut crc], &[1], rounds);
            crc_rows.push(format!(
                "| {} MiB | {} | {} |",
                len >> 20,
                touch.name(),
                fmt_ns(c[0].ns)
            ));
            let _ = writeln!(
                r.out,
                "| {} MiB | {} ({} MiB) | {} | {} | {:.2} | {} | {} | {} | {:.2} |",
                len >> 20,
                touch.name(),
                f.allocated().unwrap_or(0) >> 20,
                fmt_ns(s[0].ns),
                fmt_ns(s[1].ns),
                s[0].ns / s[1].ns,
                fmt_ns(durable),
                fmt_ns(t[0].ns),
                fmt_ns(t[1].ns),
                t[0].ns / t[1].ns
            );
            match (len >> 20, touch) {
                (16, Touch::Sixteenth) => {
                    r.issue27.ratio("snapshot-16", s[0].ns / s[1].ns);
                    r.issue27.ratio("restore-16", t[0].ns / t[1].ns);
                }
                (256, Touch::Sixteenth) => {
                    r.issue27.ratio("snapshot-256", s[0].ns / s[1].ns);
                    r.issue27.ratio("restore-256", t[0].ns / t[1].ns);
                }
                _ => {}
            }
            if len == 256 << 20 && touch == Touch::Sixteenth {
                r.targets.push(Target {
                    what: "snapshot 256 MiB, 1/16 touched: ours/raw".into(),
                    ratio: s[0].ns / s[1].ns,
                    at_most: true,
                    bound: 1.3,
                });
                r.targets.push(Target {
                    what: "restore 256 MiB, 1/16 touched: ours/raw".into(),
                    ratio: t[0].ns / t[1].ns,
                    at_most: true,
                    bound: 1.2,
                });
            }
        }
    }
    let _ = writeln!(
        r.out,
        "\n¹ host cycle minus the median unlink of the dropped generation, which the host does \
         after the durable point (the raw limit pays the same block freeing inside `rename`).\n"
    );
    let _ = writeln!(
        r.out,
        "### image CRC-32C of the snapshot file (done once per snapshot and once per restore)\n"
    );
    let _ = writeln!(
        r.out,
        "| region | touched | `image_crc32c` (data extents read, holes folded in by CRC combination) |"
    );
    let _ = writeln!(r.out, "|---|---|---:|");
    for row in crc_rows {
        let _ = writeln!(r.out, "{row}");
    }
    let _ = writeln!(r.out);
}

fn triple_section(opts: &Opts, r: &mut Report) {
    let (batch, rounds) = opts.publish_batches();
    let _ = writeln!(
        r.out,
        "## triple-buffer publish (median per publication; {rounds} interleaved batches of ~{} ms each)\n",
        batch.as_millis()
    );
    let _ = writeln!(
        r.out,
        "| bytes | ours, `write` (word stores) | ours, `write_exclusive` (memcpy) | triple_buffer 9 (write + publish) | memcpy | write/triple_buffer | write_exclusive/triple_buffer | write_exclusive/memcpy |"
    );
    let _ = writeln!(r.out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in triple::SIZES {
        eprintln!("triple publish {n} B");
        let mut ours = triple::Ours::new(n, false).expect("ours fixture");
        let mut excl = triple::Ours::new(n, true).expect("ours fixture");
        let mut rival = triple::Crate::new(n);
        let mut memcpy = Raw::new(n, Dest::Hot, Limit::Memcpy).expect("memcpy fixture");
        let m = compare(
            &mut [&mut ours, &mut excl, &mut rival, &mut memcpy],
            batch,
            rounds,
        );
        let (o, x, t, c) = (m[0].ns, m[1].ns, m[2].ns, m[3].ns);
        let _ = writeln!(
            r.out,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            size(n),
            fmt_ns(o),
            fmt_ns(x),
            fmt_ns(t),
            fmt_ns(c),
            o / t,
            x / t,
            x / c
        );
        match n {
            64 => {
                r.issue27.ratio("triple-64-write", o / t);
                r.issue27.ratio("triple-64-excl", x / t);
            }
            4096 => {
                r.issue27.ratio("triple-4k-write", o / t);
                r.issue27.ratio("triple-4k-excl", x / t);
            }
            _ => {}
        }
        for (what, ratio) in [("write", o / t), ("write_exclusive", x / t)] {
            r.targets.push(Target {
                what: format!("triple publish {} ({what}): ours/triple_buffer", size(n)),
                ratio,
                at_most: true,
                bound: 1.5,
            });
        }
    }
    let _ = writeln!(r.out);
}

fn size(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{} MiB", n >> 20)
    } else if n >= 1024 {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn triple_snapshot_section(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    let rounds = if opts.quick { 5 } else { 15 };
    eprintln!("triple snapshot 256 MiB / 16 MiB buffers");
    let f = TripleSnapshotFixture::new(dir).expect("triple snapshot fixture");
    let phases = std::cell::RefCell::new(Vec::new());
    let mut host = FnBench(|| {
        f.host_snapshot().expect("host snapshot");
        phases.borrow_mut().push(f.last_phases());
    });
    let mut raw = FnBench(|| f.raw_snapshot().expect("raw snapshot"));
    let s = interleave(&mut [&mut host, &mut raw], &[1, 1], rounds);
    let p = phases.take();
    let med = |g: fn(&triple_snapshot::Phases) -> Duration| {
        median(p.iter().map(|x| g(x).as_secs_f64() * 1e9).collect())
    };
    let _ = writeln!(
        r.out,
        "## triple snapshot (median of {rounds} interleaved rounds)\n\n\
         | region | buffer | host snapshot (freeze, copy, meta, release, footer, commit) | raw 16 MiB copy+sync+rename | ours/raw | copy | meta+footer (CRC) | sync+rename+dir sync | unlink of the dropped generation |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n\
         | 256 MiB, 15 buffers, all allocated | 16 MiB | {} | {} | {:.2} | {} | {} | {} | {} |\n",
        fmt_ns(s[0].ns),
        fmt_ns(s[1].ns),
        s[0].ns / s[1].ns,
        fmt_ns(med(|x| x.copy)),
        fmt_ns(med(|x| x.validate)),
        fmt_ns(med(|x| x.durable)),
        fmt_ns(med(|x| x.drop_old)),
    );
    let durable = s[0].ns - med(|x| x.drop_old);
    let _ = writeln!(
        r.out,
        "ours to durable (host snapshot minus the unlink of the dropped generation, done after \
         the durable point): {}, {:.2}x raw\n",
        fmt_ns(durable),
        durable / s[1].ns
    );
    r.targets.push(Target {
        what: "triple snapshot 256 MiB / 16 MiB buffers: ours/raw 16 MiB".into(),
        ratio: s[0].ns / s[1].ns,
        at_most: true,
        bound: 1.3,
    });
    r.targets.push(Target {
        what: "triple snapshot 256 MiB / 16 MiB buffers: ours to durable/raw 16 MiB".into(),
        ratio: durable / s[1].ns,
        at_most: true,
        bound: 1.3,
    });
}

/// Durability feedback (DESIGN §14): commit-to-durable latency with a prompt request against
/// the host's 20 ms interval, and the throughput of a client waiting on every N-th commit
/// against one that never waits.
fn durable_section(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    let (samples, rounds) = if opts.quick { (15, 3) } else { (61, 7) };
    eprintln!("durable");
    let interval = Duration::from_millis(20);
    let mut f = DurableFixture::new(dir, interval).expect("durable fixture");
    let ns = |g: &mut dyn FnMut() -> Duration| -> f64 {
        median((0..samples).map(|_| g().as_nanos() as f64).collect())
    };
    let prompt = ns(&mut || f.prompt(1).expect("prompt"));
    let waited = ns(&mut || f.interval(1).expect("interval"));
    r.issue27.value("ack-idle", fmt_ns(prompt));
    let _ = writeln!(
        r.out,
        "## durable (median commit-to-`persisted()` latency over {samples} commits; host interval {} ms)\n",
        interval.as_millis()
    );
    let _ = writeln!(r.out, "| client | latency | interval/prompt |");
    let _ = writeln!(r.out, "|---|---:|---:|");
    let _ = writeln!(
        r.out,
        "| request + wait (prompt snapshot) | {} | |",
        fmt_ns(prompt)
    );
    let _ = writeln!(
        r.out,
        "| wait only (next interval snapshot) | {} | {:.1}x |\n",
        fmt_ns(waited),
        waited / prompt
    );
    let commits = 1024u64;
    let _ = writeln!(
        r.out,
        "| waits on every N-th of {commits} commits | per commit | commits/s | slowdown vs never |"
    );
    let _ = writeln!(r.out, "|---:|---:|---:|---:|");
    let mut base = 0.0;
    for every in [0u64, 256, 16, 1] {
        let t = median(
            (0..rounds)
                .map(|_| f.throughput(commits, every).expect("throughput").as_nanos() as f64)
                .collect(),
        ) / commits as f64;
        if every == 0 {
            base = t;
        }
        let _ = writeln!(
            r.out,
            "| {} | {} | {:.0} | {:.1}x |",
            if every == 0 {
                "never".to_string()
            } else {
                every.to_string()
            },
            fmt_ns(t),
            1e9 / t,
            t / base
        );
    }
    let _ = writeln!(r.out);
    drop(f);
    busy_ack_section(opts, dir, r);
}

/// Acknowledgements under load (issue 27): a writer commits ~1 M/s beside a client that
/// requests and waits every 5 ms; the host as it was (a starved attempt waits for the next
/// request or tick) and as it is (retried at once), each acknowledgement with its hops.
fn busy_ack_section(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    let samples = if opts.quick { 100 } else { 400 };
    let (interval, period, rate) = (
        Duration::from_millis(20),
        Duration::from_millis(5),
        1_000_000,
    );
    let _ = writeln!(
        r.out,
        "### acknowledgements under load ({samples} acknowledgements each: a writer thread commits \
         64 B paced at {rate}/s into the fixture's 256-entry ring, and hands a commit every {} ms \
         to an idle acknowledging thread, which requests and waits (latency from the commit); host interval {} ms)\n",
        period.as_millis(),
        interval.as_millis()
    );
    let _ = writeln!(
        r.out,
        "| host | commits/s | starved / attempts | latency p50 | p90 | p99 | max | \
         commit → request p50 / p99 | req → wake p50 / p99 | extra cycles (acks with any) | retries (acks with any) | \
         pre+temp p50 | copy p50 / p99 | post+footer p50 | sync p50 / p99 | publish → waiter p50 / p99 |"
    );
    let _ = writeln!(
        r.out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, on_starved) in [
        ("before: starved → next request or tick", OnStarved::Wait),
        ("now: starved → retried at once", HOST_RETRIES),
    ] {
        eprintln!("durable: busy ack, {name}");
        let b = busy_ack(dir, interval, on_starved, Some(rate), period, samples).expect("busy ack");
        let q = |f: &dyn Fn(&Ack) -> Duration, p: f64| {
            quantile(b.acks.iter().map(|a| f(a).as_nanos() as f64).collect(), p)
        };
        let lat = |p| q(&|a| a.latency, p);
        let with = |f: &dyn Fn(&Ack) -> u32| {
            let n: u32 = b.acks.iter().map(f).sum();
            let any = b.acks.iter().filter(|a| f(a) > 0).count();
            format!("{n} ({any})")
        };
        let _ = writeln!(
            r.out,
            "| {name} | {:.0} | {} / {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} / {} | {} | {} / {} | {} / {} |",
            b.commits_per_s,
            b.starved,
            b.attempts,
            fmt_ns(lat(0.5)),
            fmt_ns(lat(0.9)),
            fmt_ns(lat(0.99)),
            fmt_ns(lat(1.0)),
            fmt_ns(q(&|a| a.to_request, 0.5)),
            fmt_ns(q(&|a| a.to_request, 0.99)),
            fmt_ns(q(&|a| a.to_wake, 0.5)),
            fmt_ns(q(&|a| a.to_wake, 0.99)),
            with(&|a| a.empty_cycles),
            with(&|a| a.attempts - 1),
            fmt_ns(q(&|a| a.attempt.pre, 0.5)),
            fmt_ns(q(&|a| a.attempt.copy, 0.5)),
            fmt_ns(q(&|a| a.attempt.copy, 0.99)),
            fmt_ns(q(&|a| a.attempt.post, 0.5)),
            fmt_ns(q(&|a| a.sync, 0.5)),
            fmt_ns(q(&|a| a.sync, 0.99)),
            fmt_ns(q(&|a| a.to_waiter, 0.5)),
            fmt_ns(q(&|a| a.to_waiter, 0.99)),
        );
        if on_starved != OnStarved::Wait {
            r.issue27.percentiles("ack-busy", lat(0.5), lat(0.99));
        }
    }
    let raw: Vec<f64> = busy_raw_sync(dir, samples)
        .iter()
        .map(|d| d.as_nanos() as f64)
        .collect();
    let _ = writeln!(
        r.out,
        "| raw floor of the sync hop: 76 KiB file written, fdatasync + rename + dir fsync, \
         {samples} times, no writer | | | | | | | | | | | | | | {} / {} | |",
        fmt_ns(quantile(raw.clone(), 0.5)),
        fmt_ns(quantile(raw, 0.99)),
    );
    let _ = writeln!(
        r.out,
        "\nHops per acknowledgement, of the host cycle whose publish covered it: req → wake \
         (0 when a cycle in flight covered it), extra cycles woken after the request that \
         persisted nothing, retries in the covering cycle, its persisted attempt's phases \
         (pre+temp: `pre` read and temp file; copy: the sparse copy, most of `pre` .. `post`), \
         its `TempFile::commit` (sync: fdatasync, rename, dir fsync), publish → waiter woken.\n"
    );
}

fn busy_raw_sync(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    // The bytes one busy-fixture snapshot writes (header, descriptors, data ring: 76 KiB).
    raw_sync(dir, 76 << 10, n).expect("raw sync")
}

/// Incremental snapshots (issue 13): scan cost, first-write cost, delta snapshots against
/// the raw write of the same pages and against today's full snapshot, chain restore against
/// a raw copy back, and starvation under a flat-out committer. See
/// `shmsnap_benches::incremental`.
fn incremental_section(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    let rounds = if opts.quick { 3 } else { 9 };
    let _ = writeln!(
        r.out,
        "## incremental snapshots (median of {rounds} interleaved rounds; 256 MiB region, fully touched)\n"
    );
    scan_rows(rounds, r);
    first_write_rows(rounds, r);
    eprintln!("incremental: delta fixture");
    let f = std::cell::RefCell::new(DeltaFixture::new(dir).expect("delta fixture"));
    // The restore row first: its chain starts on the fixture's base.
    restore_rows(&f, rounds, r);
    delta_rows(opts, &f, rounds, r);
    drop(f);
    starvation_rows(opts, dir, r);
}

fn scan_rows(rounds: usize, r: &mut Report) {
    eprintln!("incremental: scan");
    let pages = incremental::REGION / incremental::PAGE;
    let mut clean = ScanBench::new(0).expect("scan fixture");
    let mut one = ScanBench::new(pages / 100).expect("scan fixture");
    let m = interleave(&mut [&mut clean, &mut one], &[16, 8], rounds.max(5));
    let per_gib = (1u64 << 30) as f64 / incremental::REGION as f64;
    let _ = writeln!(
        r.out,
        "| `PAGEMAP_SCAN` + re-protect of 256 MiB | per scan | per GiB |\n|---|---:|---:|\n\
         | nothing written | {} | {} |\n| 1 % of pages written ({} pages) | {} | {} |\n",
        fmt_ns(m[0].ns),
        fmt_ns(m[0].ns * per_gib),
        pages / 100,
        fmt_ns(m[1].ns),
        fmt_ns(m[1].ns * per_gib),
    );
}

fn first_write_rows(rounds: usize, r: &mut Report) {
    eprintln!("incremental: first write");
    let mut tracked = FirstWrite::new(true).expect("first-write fixture");
    let mut plain = FirstWrite::new(false).expect("first-write fixture");
    let n = tracked.batch_pages();
    let m = interleave(&mut [&mut tracked, &mut plain], &[n, n], rounds.max(5));
    let _ = writeln!(
        r.out,
        "| one store per page, {n} pages | per store | /plain |\n|---|---:|---:|\n\
         | first write to a write-protected page (async fault) | {} | {:.1} |\n\
         | plain store (resident, writable page) | {} | 1.0 |\n",
        fmt_ns(m[0].ns),
        m[0].ns / m[1].ns,
        fmt_ns(m[1].ns),
    );
}

fn delta_rows(opts: &Opts, f: &std::cell::RefCell<DeltaFixture>, rounds: usize, r: &mut Report) {
    let _ = writeln!(
        r.out,
        "| pages written (random) | delta (`take_delta` + commit) | raw `pwrite` of those pages + `fdatasync` | full snapshot (`take_queue` + commit) | delta/raw | full/delta |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    // `--quick`: the full snapshot (which does not depend on the pages written) is measured
    // in the first row only and reused.
    let mut full = None;
    f.borrow_mut().phases.clear();
    let mut phase_rows = Vec::new();
    for percent in DELTA_PERCENTS {
        eprintln!("incremental: delta {percent} %");
        let mut sides =
            [DeltaSide::Delta, DeltaSide::RawPages, DeltaSide::Full].map(|side| DeltaBench {
                fixture: f,
                side,
                percent,
            });
        let [a, b, c] = &mut sides;
        let m = if full.is_some() && opts.quick {
            interleave(&mut [a, b], &[1, 1], rounds)
        } else {
            interleave(&mut [a, b, c], &[1, 1, 1], rounds)
        };
        let full = *full.get_or_insert(m.get(2).map_or(f64::NAN, |x| x.ns));
        phase_rows.push((percent, f.borrow_mut().phases.split_off(0)));
        let (d, raw) = (m[0].ns, m[1].ns);
        let pages = f.borrow().pages() * percent / 100;
        let _ = writeln!(
            r.out,
            "| {percent} % ({pages} pages) | {} | {} | {} | {:.2} | {:.1} |",
            fmt_ns(d),
            fmt_ns(raw),
            fmt_ns(full),
            d / raw,
            full / d
        );
        r.targets.push(Target {
            what: format!("delta snapshot 256 MiB, {percent} % written: delta/raw pages"),
            ratio: d / raw,
            at_most: true,
            bound: 1.5,
        });
        r.targets.push(Target {
            what: format!("delta snapshot 256 MiB, {percent} % written: full/delta"),
            ratio: full / d,
            at_most: false,
            bound: 20.0,
        });
    }
    let _ = writeln!(
        r.out,
        "\n| delta phases (medians) | scan | copy | post+retain | footer (CRC read-back) | `fdatasync` | rename + dir `fsync` |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for (percent, p) in phase_rows {
        let med = |g: fn(&incremental::DeltaPhases) -> Duration| {
            fmt_ns(median(p.iter().map(|x| g(x).as_secs_f64() * 1e9).collect()))
        };
        let _ = writeln!(
            r.out,
            "| {percent} % | {} | {} | {} | {} | {} | {} |",
            med(|x| x.scan),
            med(|x| x.copy),
            med(|x| x.validate),
            med(|x| x.footer),
            med(|x| x.sync),
            med(|x| x.publish)
        );
    }
    let _ = writeln!(r.out);
}

fn restore_rows(f: &std::cell::RefCell<DeltaFixture>, rounds: usize, r: &mut Report) {
    eprintln!("incremental: chain restore");
    let deltas = incremental::RESTORE_DELTAS;
    f.borrow_mut()
        .build_chain(deltas, 1)
        .expect("chain of deltas");
    let f = f.borrow();
    let mut ours = FnBench(|| {
        f.restore_chain().expect("chain restore");
    });
    let mut raw = FnBench(|| f.raw_restore().expect("raw restore"));
    let m = interleave(&mut [&mut ours, &mut raw], &[1, 1], rounds);
    let _ = writeln!(
        r.out,
        "| restore of 256 MiB | `restore_chain` (base + {deltas} deltas of 1 %, CRCs checked) | raw copy back of one full image | ours/raw |\n\
         |---|---:|---:|---:|\n| fully touched | {} | {} | {:.2} |\n",
        fmt_ns(m[0].ns),
        fmt_ns(m[1].ns),
        m[0].ns / m[1].ns
    );
    r.targets.push(Target {
        what: format!("restore 256 MiB, base + {deltas} deltas: ours/raw full image"),
        ratio: m[0].ns / m[1].ns,
        at_most: true,
        bound: 1.3,
    });
}

fn starvation_rows(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    let n = if opts.quick { 4 } else { 12 };
    let _ = writeln!(
        r.out,
        "Starvation: a thread commits {} KiB payloads flat out into a 64-entry ring ({} MiB data \
         ring) of a 64 MiB fully touched region; {n} snapshot attempts back to back (incremental: \
         the chain's base taken before the committer starts, then deltas, each carrying the scans \
         of the starved attempts before it and the pages the previous delta left out, and \
         copying the newest entries first).\n\n\
         | snapshots | attempts | persisted | of which deltas | starved | kept entries (mean per persisted) | commits during the run | time |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|",
        incremental::STARVE_PAYLOAD >> 10,
        incremental::STARVE_RING >> 20,
    );
    let mut notes = Vec::new();
    for incremental in [false, true] {
        eprintln!("incremental: starvation, incremental = {incremental}");
        let s = incremental::starvation(dir, n, incremental).expect("starvation run");
        notes.push(starvation_note(incremental, &s));
        if incremental {
            r.issue27
                .ratio("starve", s.persisted as f64 / s.attempts.max(1) as f64);
        }
        let _ = writeln!(
            r.out,
            "| {} | {} | {} | {} | {} | {} ({:.1}) | {} | {} |",
            if incremental { "incremental" } else { "full" },
            s.attempts,
            s.persisted,
            s.deltas,
            s.starved,
            s.kept,
            s.kept as f64 / s.persisted.max(1) as f64,
            s.commits,
            fmt_ns(s.time.as_secs_f64() * 1e9)
        );
    }
    let _ = writeln!(r.out);
    for note in notes {
        let _ = writeln!(r.out, "- {note}");
    }
    let _ = writeln!(r.out);
}

/// Where the starved attempts of one starvation row went: how long their copies took and how
/// many commits (of a 64-entry ring) landed meanwhile, against the persisted attempts' copies.
fn starvation_note(incremental: bool, s: &incremental::Starvation) -> String {
    let per = |d: std::time::Duration, n: u64| d.as_secs_f64() * 1e3 / n.max(1) as f64;
    let mut note = format!(
        "{}: {} starved ({} deltas, {} bases): mean copy {:.1} ms, mean {:.0} commits during it \
         (the ring holds 64); persisted: mean copy {:.1} ms",
        if incremental { "incremental" } else { "full" },
        s.starved,
        s.starved_deltas,
        s.starved - s.starved_deltas,
        per(s.starved_copy, s.starved),
        s.starved_commits as f64 / s.starved.max(1) as f64,
        per(s.persisted_copy, s.persisted),
    );
    if s.starved_deltas > 0 {
        note += &format!(
            "; a starved delta's carry held {:.1} MiB on average",
            s.starved_carry_bytes as f64 / s.starved_deltas as f64 / f64::from(1 << 20)
        );
    }
    if s.deltas > 0 {
        let mib = |b: u64| b as f64 / s.deltas as f64 / f64::from(1 << 20);
        note += &format!(
            "; persisted deltas (newest entries first, DESIGN §11): {} of {} stopped at an \
             entry that was gone, mean {:.1} MiB planned, {:.1} MiB copied, {:.1} MiB left \
             to the next delta's carry",
            s.stopped_deltas,
            s.deltas,
            mib(s.persisted_planned_bytes),
            mib(s.persisted_bytes),
            mib(s.left_bytes),
        );
    }
    note
}

/// Upload and restore of a 256 MiB snapshot through an in-process S3 server (issues 14, 21),
/// interleaved with a raw multipart `PUT` and a raw `GET` of the same bytes with the same
/// client; and the upload of a 256 MiB region holding 16 MiB (packed) vs a raw 16 MiB `PUT`.
fn replica_section(opts: &Opts, dir: &std::path::Path, r: &mut Report) {
    use shmsnap_benches::replica::ReplicaFixture;
    let _ = writeln!(
        r.out,
        "## replica (256 MiB snapshot, in-process s3s-fs; median per operation, interleaved)\n"
    );
    eprintln!("replica 256 MiB");
    let f = ReplicaFixture::new(dir).expect("replica fixture");
    let rounds = if opts.quick { 3 } else { 9 };
    let has_restore = match f.restore() {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            eprintln!("replica: no restore row: {e}");
            false
        }
        None => {
            eprintln!("replica: no restore row: the shmsnap binary is not built");
            false
        }
    };
    let mut raw_up = FnBench(|| f.raw_upload().expect("raw upload"));
    let mut ours_up = FnBench(|| f.replica_upload().expect("replica upload"));
    let mut raw_get = FnBench(|| f.raw_download().expect("raw download"));
    let mut restore = FnBench(|| {
        if has_restore {
            f.restore().unwrap().expect("shmsnap restore --from");
        }
    });
    let mut raw_16 = FnBench(|| f.raw_put_16m().expect("raw 16 MiB put"));
    let mut sparse = FnBench(|| f.sparse_upload().expect("sparse upload"));
    let m = interleave(
        &mut [
            &mut raw_up,
            &mut ours_up,
            &mut raw_get,
            &mut restore,
            &mut raw_16,
            &mut sparse,
        ],
        &[1, 1, 1, 1, 1, 1],
        rounds,
    );
    let mib = f.bytes().expect("size") as f64 / f64::from(1 << 20);
    let rate = |ns: f64| format!("{} ({:.0} MiB/s)", fmt_ns(ns), mib / (ns / 1e9));
    let (re, re_ratio) = if has_restore {
        (rate(m[3].ns), format!("{:.2}", m[3].ns / m[2].ns))
    } else {
        ("unavailable".to_owned(), "–".to_owned())
    };
    let _ = writeln!(
        r.out,
        "| raw multipart PUT | replica upload | ours/raw | raw GET + fdatasync | `restore --from` | ours/raw |"
    );
    let _ = writeln!(r.out, "|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        r.out,
        "| {} | {} | {:.2} | {} | {re} | {re_ratio} |\n",
        rate(m[0].ns),
        rate(m[1].ns),
        m[1].ns / m[0].ns,
        rate(m[2].ns)
    );
    let (object, data) = f.sparse_packing().expect("packing");
    let _ = writeln!(
        r.out,
        "256 MiB region holding 16 MiB: base object {object} bytes for {data} data bytes \
         ({:.4}x); upload {} vs raw 16 MiB PUT {} ({:.2}x)\n",
        object as f64 / data as f64,
        fmt_ns(m[5].ns),
        fmt_ns(m[4].ns),
        m[5].ns / m[4].ns
    );
    r.targets.push(Target {
        what: "replica upload 256 MiB: ours/raw multipart PUT".into(),
        ratio: m[1].ns / m[0].ns,
        at_most: true,
        bound: 1.2,
    });
    r.targets.push(Target {
        what: "replica base object bytes / data bytes (256 MiB region, 16 MiB data)".into(),
        ratio: object as f64 / data as f64,
        at_most: true,
        bound: 1.05,
    });
    r.targets.push(Target {
        what: "replica upload of 256 MiB holding 16 MiB: ours/raw 16 MiB PUT".into(),
        ratio: m[5].ns / m[4].ns,
        at_most: true,
        bound: 1.2,
    });
    if has_restore {
        r.targets.push(Target {
            what: "replica restore 256 MiB: ours/raw GET".into(),
            ratio: m[3].ns / m[2].ns,
            at_most: true,
            bound: 1.3,
        });
    }
}
