//! Issue 13, the command line over snapshot chains, against the built binary: `inspect` and
//! `verify` of a base with deltas (sound, torn, bit-flipped, unlinked), and `restore` of the
//! newest point, a point by time and by seq, each output compared byte for byte with the image
//! the test computed itself; and restore's refusals (OUT exists, OUT is the state, a point
//! that does not exist), each leaving the state untouched.
//!
//! The chains are built with the os-linux chain API directly (`Persister` for the base,
//! `DeltaWriter` for each delta), not by a running host.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use shmsnap_core::{LayoutRequest, Strategy, Writer};
use shmsnap_linux::chain::{plan_runs, DeltaMeta, DeltaWriter, Run, Tip};
use shmsnap_linux::persist::Persister;
use shmsnap_linux::snapshot::{self, SnapshotMeta, FOOTER_LEN};
use shmsnap_linux::{Mapping, Memfd, Protection};

const PAGE: u64 = 4096;
/// 16 pages: room for a small queue layout, and random pages for the exit strategy.
const IMAGE: u64 = 16 * PAGE;
/// Time of the base: 2023-11-14T22:13:20Z; delta `i` is taken `100 * i` seconds later.
const T0: u64 = 1_700_000_000;

fn ns(secs: u64) -> u64 {
    secs * 1_000_000_000
}

/// One point of a chain as the test computed it.
struct Point {
    /// The image (what a restore of this point must produce).
    image: Vec<u8>,
    /// The file holding the point (the base, or the delta).
    file: PathBuf,
    unix_time_ns: u64,
    next_seq: u64,
}

/// A chain on disk: `state` (a base of generation 1) and `points[1..]` its deltas.
struct Built {
    dir: tempfile::TempDir,
    state: PathBuf,
    points: Vec<Point>,
}

impl Built {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn delta(&self, i: usize) -> &Path {
        &self.points[i].file
    }
}

/// `pwrite`s all of `buf` at `off`.
fn write_all_at(fd: impl std::os::fd::AsFd, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwrite(&fd, buf, off)?;
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// `pread`s into `buf` at `off` until it is full or the file ends; returns the bytes read.
fn read_full_at(fd: impl std::os::fd::AsFd, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(&fd, &mut buf[done..], off + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

fn bytes_of(fd: &Memfd) -> Vec<u8> {
    let mut v = vec![0u8; IMAGE as usize];
    assert_eq!(read_full_at(fd, &mut v, 0).unwrap(), IMAGE as usize);
    v
}

/// The pages where `old` and `new` differ.
fn changed_pages(old: &[u8], new: &[u8]) -> Vec<Run> {
    let runs = old
        .chunks(PAGE as usize)
        .zip(new.chunks(PAGE as usize))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| Run {
            offset: i as u64 * PAGE,
            len: PAGE,
        });
    plan_runs(runs, 0, IMAGE)
}

/// Builds a chain: a base of `region` as `step(0)` left it, then one delta per further
/// step (`step(i)` changes the region and returns the image it expects and the `next_seq`).
fn build(
    strategy: Strategy,
    deltas: usize,
    mut step: impl FnMut(usize, &Memfd) -> (Vec<u8>, u64),
) -> Built {
    let dir = tempfile::Builder::new()
        .prefix("shmsnap-chain-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state.snap");
    let persister = Persister::new(&state, 1).unwrap();
    let region = Memfd::create("chain", IMAGE).unwrap();
    let (image, next_seq) = step(0, &region);
    assert_eq!(bytes_of(&region), image, "the model and the region agree");
    let meta = SnapshotMeta {
        strategy: strategy.code(),
        generation: 1,
        unix_time_ns: ns(T0),
    };
    let ((info, _), _) = persister
        .persist_with(|f| snapshot::write_snapshot(&region, f, IMAGE, meta))
        .unwrap();
    let mut tip = Tip::of_base(&info);
    let mut points = vec![Point {
        image,
        file: state.clone(),
        unix_time_ns: ns(T0),
        next_seq,
    }];
    for i in 1..=deltas {
        let (image, next_seq) = step(i, &region);
        assert_eq!(bytes_of(&region), image, "the model and the region agree");
        let runs = changed_pages(&points[i - 1].image, &image);
        let mut w = DeltaWriter::begin(&persister, &tip, &runs, 0).unwrap();
        w.copy_from(&region).unwrap();
        let t = ns(T0 + 100 * i as u64);
        let d = w
            .commit(DeltaMeta {
                next_seq_before: points[i - 1].next_seq,
                next_seq,
                unix_time_ns: t,
            })
            .unwrap();
        tip = d.tip();
        points.push(Point {
            image,
            file: d.path,
            unix_time_ns: t,
            next_seq,
        });
    }
    Built { dir, state, points }
}

/// An exit-strategy chain of `deltas` deltas: each step writes random bytes into a few
/// random pages of the region and, independently, of the test's model of the image.
fn exit_chain(deltas: usize) -> Built {
    let mut model = vec![0u8; IMAGE as usize];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    build(Strategy::Exit, deltas, |i, region| {
        let pages = if i == 0 { 10 } else { 1 + i as u64 };
        for _ in 0..pages {
            let p = next() % (IMAGE / PAGE);
            let (at, len) = (p * PAGE + next() % 2048, 1 + next() % 2048);
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            write_all_at(region, &data, at).unwrap();
            model[at as usize..(at + len) as usize].copy_from_slice(&data);
        }
        (model.clone(), 0)
    })
}

/// A queue-strategy chain: the base holds commits 1..=4, delta `i` adds 3 more commits.
fn queue_chain(deltas: usize) -> Built {
    queue_chain_ending(deltas, |_| {})
}

/// [`queue_chain`], with `last` applied to the region after the last delta's commits (so
/// the last delta carries whatever `last` wrote, under correct CRCs).
fn queue_chain_ending(deltas: usize, last: impl FnOnce(&Memfd)) -> Built {
    let mut last = Some(last);
    let region = std::cell::OnceCell::new();
    let mut seq = 0u64;
    build(Strategy::Queue, deltas, |i, memfd| {
        let map: &Mapping = region.get_or_init(|| {
            memfd.seal_against_shrink().unwrap();
            Mapping::of_memfd(memfd, Protection::ReadWrite).unwrap()
        });
        let request = LayoutRequest {
            entries: 16,
            data_size: 1024,
        };
        let mut w = Writer::open_or_init(
            map.words(),
            request,
            shmsnap_core::ClaimId::from_pid(std::process::id(), 0).unwrap(),
        )
        .unwrap();
        for _ in 0..(if i == 0 { 4 } else { 3 }) {
            seq = w.commit(&(seq * 1000).to_le_bytes()).unwrap();
        }
        drop(w); // releases the region's claim before the image is taken
        if i == deltas {
            if let Some(last) = last.take() {
                last(memfd);
            }
        }
        (bytes_of(memfd), seq + 1)
    })
}

/// Every file of the state directory with its bytes (to show that nothing changed).
fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                all.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    all
}

fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Done {
    shmsnap_done(args)
}

/// `shmsnap restore --state STATE --to OUT EXTRA...`.
fn restore(b: &Built, out: &Path, extra: &[&str]) -> Done {
    let mut args: Vec<std::ffi::OsString> = vec![
        "restore".into(),
        "--state".into(),
        b.state.clone().into(),
        "--to".into(),
        out.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    run(&args)
}

/// The image part of a snapshot file, after checking that it is exactly image + footer and
/// that its footer's time is `time`.
fn image_of(out: &Path, time: u64) -> Vec<u8> {
    let bytes = std::fs::read(out).unwrap();
    assert_eq!(
        bytes.len() as u64,
        IMAGE + FOOTER_LEN as u64,
        "{}",
        out.display()
    );
    let info = snapshot::verify_path(out).unwrap();
    assert_eq!(
        info.meta.unix_time_ns, time,
        "the footer carries the point's time"
    );
    assert_eq!(
        info.meta.generation, 1,
        "the footer carries the base's generation"
    );
    bytes[..IMAGE as usize].to_vec()
}

fn assert_image(out: &Path, want: &Point) {
    let got = image_of(out, want.unix_time_ns);
    assert!(
        got == want.image,
        "{} differs from the expected image",
        out.display()
    );
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    read_full_at(&f, &mut b, at).unwrap();
    write_all_at(&f, &[b[0] ^ 0x20], at).unwrap();
}

fn json(d: &Done) -> serde_json::Value {
    serde_json::from_str(&d.stdout).unwrap_or_else(|e| panic!("{e}: {}", d.stdout))
}

// ---------------------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------------------

#[test]
fn inspect_lists_the_base_and_three_deltas_in_text_and_json() {
    let b = queue_chain(3);
    let d = run(&["inspect".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 0, "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.contains("verdict:   sound"), "{}", d.stdout);
    assert!(
        d.stdout.contains("chain:     3 sound delta(s)"),
        "{}",
        d.stdout
    );
    for (i, p) in b.points.iter().enumerate().skip(1) {
        let name = p.file.file_name().unwrap().to_string_lossy();
        let line = d
            .stdout
            .lines()
            .find(|l| l.ends_with(&*name))
            .unwrap_or_else(|| panic!("no line for delta {i}: {}", d.stdout));
        let seqs = format!("{}..{}", b.points[i - 1].next_seq, p.next_seq);
        assert!(line.contains(&seqs), "{line}");
        let taken = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(p.unix_time_ns),
        )
        .to_string();
        assert!(line.contains(&taken), "{line}");
    }

    // An older kept generation, listed briefly.
    std::fs::copy(&b.state, b.path("state.snap.1")).unwrap();
    let d = run(&["inspect".as_ref(), "--json".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    // Scripts grep the text (tests/final_snapshot.rs takes the last "generation"): the chain
    // adds no second occurrence of the report's keys.
    for key in ["file", "sound", "generation", "unix_time_ns", "next_seq"] {
        let n = d.stdout.matches(&format!("\"{key}\":")).count();
        assert_eq!(n, 1, "key {key:?} appears {n} times: {}", d.stdout);
    }
    let j = json(&d);
    let older = j["chain"]["older"].as_array().unwrap();
    assert_eq!(older.len(), 1);
    assert_eq!(
        older[0]["path"],
        b.path("state.snap.1").display().to_string()
    );
    assert_eq!(older[0]["deltas"], 3);
    // The existing fields are unchanged.
    assert_eq!(j["sound"], true);
    assert_eq!(j["verdict"], "sound");
    assert_eq!(j["footer"]["generation"], 1);
    assert_eq!(j["footer"]["strategy"], "queue");
    assert_eq!(
        j["entries"].as_array().unwrap().len(),
        4,
        "the base's entries"
    );
    let c = &j["chain"];
    assert_eq!(c["intact"], true);
    assert_eq!(c["stop"], serde_json::Value::Null);
    assert_eq!(c["base_next_seq"], 5);
    let deltas = c["deltas"].as_array().unwrap();
    assert_eq!(deltas.len(), 3);
    for (i, d) in deltas.iter().enumerate() {
        let (p, before) = (&b.points[i + 1], &b.points[i]);
        assert_eq!(d["index"], i as u64 + 1);
        assert_eq!(d["path"], p.file.display().to_string());
        assert_eq!(d["next_seq_before"], before.next_seq);
        assert_eq!(d["next_seq_after"], p.next_seq);
        assert_eq!(d["taken_unix_ns"], p.unix_time_ns);
        let pages = changed_pages(&before.image, &p.image)
            .iter()
            .map(|r| r.len / PAGE)
            .sum::<u64>();
        assert_eq!(d["pages"], pages, "pages of delta {}", i + 1);
        assert_eq!(d["data_bytes"], pages * PAGE);
        assert_eq!(d["bytes"], std::fs::metadata(&p.file).unwrap().len());
    }
}

#[test]
fn inspect_names_the_bad_delta_and_what_is_ignored() {
    let b = exit_chain(3);
    let torn = b.delta(2);
    let len = std::fs::metadata(torn).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(torn)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let d = run(&["inspect".as_ref(), "--json".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 65, "a broken chain is reported: {}", d.stderr);
    let j = json(&d);
    assert_eq!(j["sound"], true, "the base itself is sound");
    let c = &j["chain"];
    assert_eq!(c["intact"], false);
    assert_eq!(c["deltas"].as_array().unwrap().len(), 1);
    assert_eq!(c["stop"]["kind"], "torn");
    assert_eq!(c["stop"]["path"], torn.display().to_string());
    let ignored: Vec<String> = c["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = [b.delta(2), b.delta(3)]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(ignored, want);

    let d = run(&["inspect".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 65);
    assert!(
        d.stdout.contains("stop:") && d.stdout.contains(&*torn.to_string_lossy()),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("deltas 1..=1"), "{}", d.stdout);
    assert!(
        d.stdout.contains("the chain is broken after delta 1"),
        "{}",
        d.stdout
    );
}

// ---------------------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------------------

#[test]
fn verify_accepts_a_sound_chain_and_a_lone_snapshot() {
    let b = exit_chain(3);
    let d = run(&["verify".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(d.stdout.contains(": sound ("), "{}", d.stdout);
    assert!(d.stdout.contains("chain of 3 delta(s)"), "{}", d.stdout);

    let lone = exit_chain(0);
    let d = run(&["verify".as_ref(), lone.state.as_os_str()]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_eq!(
        d.stdout.trim(),
        format!(
            "{}: sound (generation 1, exit strategy, {IMAGE} bytes)",
            lone.state.display()
        ),
        "a lone snapshot verifies as before"
    );
}

/// `verify` of `b` exits 65, naming `bad` and `what`, and what a restore would use.
fn assert_verify_names(b: &Built, bad: &Path, what: &str) {
    let d = run(&["verify".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 65, "{}{}", d.stdout, d.stderr);
    assert!(
        d.stderr.contains(&*bad.to_string_lossy()),
        "names the delta: {}",
        d.stderr
    );
    assert!(d.stderr.contains(what), "says {what:?}: {}", d.stderr);
    assert!(
        d.stderr.contains("A restore would use") && d.stderr.contains("+ 1 delta(s)"),
        "says what a restore would use: {}",
        d.stderr
    );
}

#[test]
fn verify_fails_on_a_torn_delta_naming_it() {
    let b = exit_chain(3);
    let len = std::fs::metadata(b.delta(2)).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(b.delta(2))
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_verify_names(&b, b.delta(2), "cut short");
}

#[test]
fn verify_fails_on_a_bit_flipped_delta_naming_it() {
    let b = exit_chain(3);
    // Inside the data section (the table is one 4096-byte granule).
    flip_byte(b.delta(2), PAGE + 17);
    assert_verify_names(&b, b.delta(2), "page data is corrupt");
}

#[test]
fn verify_fails_on_a_delta_that_does_not_link_naming_it() {
    let b = exit_chain(3);
    // Delta 2 of another chain of the same generation (another base's bytes).
    let other = queue_chain(2);
    let foreign = std::fs::read(other.delta(2)).unwrap();
    std::fs::write(b.delta(2), foreign).unwrap();
    assert_verify_names(&b, b.delta(2), "belongs to another base");
}

// ---------------------------------------------------------------------------------------
// restore
// ---------------------------------------------------------------------------------------

#[test]
fn restore_writes_the_newest_point_which_verify_accepts_and_run_restores() {
    let b = exit_chain(3);
    let before = snapshot_dir(b.dir.path());
    let out = b.path("newest.snap");
    let d = restore(&b, &out, &[]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_image(&out, &b.points[3]);
    let v = run(&["verify".as_ref(), out.as_os_str()]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    let mut after = snapshot_dir(b.dir.path());
    after.remove(&out);
    assert!(after == before, "restore changed the state's files");
    let leftovers: Vec<_> = std::fs::read_dir(b.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // `run --state OUT` restores it: a client that exits at once, and the final snapshot
    // (generation 2) holds the same image.
    let r = run(&[
        "run".as_ref(),
        "--state".as_ref(),
        out.as_os_str(),
        "--restart".as_ref(),
        "never".as_ref(),
        "--cgroup".as_ref(),
        "off".as_ref(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let info = snapshot::verify_path(&out).unwrap();
    assert_eq!(info.meta.generation, 2, "{}", r.stderr);
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes[..IMAGE as usize] == b.points[3].image[..]);
}

#[test]
fn restore_at_a_time_between_two_deltas_writes_the_earlier_one() {
    let b = exit_chain(3);
    // Between delta 1 (T0 + 100 s) and delta 2 (T0 + 200 s), in both syntaxes.
    let at = T0 + 150;
    let rfc = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
    )
    .to_string();
    let unix = format!("@{at}");
    let plus_one = {
        // The same instant written with a +01:00 offset.
        let t = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(at + 3600),
        )
        .to_string();
        format!("{}+01:00", t.trim_end_matches('Z'))
    };
    for (i, spec) in [rfc, unix, plus_one].iter().enumerate() {
        let out = b.path(&format!("at-{i}.snap"));
        let d = restore(&b, &out, &["--at", spec]);
        assert_eq!(d.code, 0, "{spec}: {}", d.stderr);
        assert_image(&out, &b.points[1]);
    }
    // Exactly at a delta's time: that delta.
    let out = b.path("exact.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 200)]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_image(&out, &b.points[2]);
    // Exactly at the base's time: the base.
    let out = b.path("base.snap");
    let d = restore(&b, &out, &["--at", &format!("@{T0}")]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_image(&out, &b.points[0]);
}

#[test]
fn restore_by_seq_writes_the_newest_point_without_a_later_entry() {
    let b = queue_chain(3);
    // Points: base next_seq 5 (seqs 1..=4), deltas 8, 11, 14.
    let next: Vec<u64> = b.points.iter().map(|p| p.next_seq).collect();
    assert_eq!(next, [5, 8, 11, 14]);
    for (seq, point) in [(4, 0), (6, 0), (7, 1), (10, 2), (12, 2), (13, 3), (99, 3)] {
        let out = b.path(&format!("seq-{seq}.snap"));
        let d = restore(&b, &out, &["--seq", &seq.to_string()]);
        assert_eq!(d.code, 0, "--seq {seq}: {}", d.stderr);
        assert_image(&out, &b.points[point]);
        let v = run(&["verify".as_ref(), out.as_os_str()]);
        assert_eq!(v.code, 0, "--seq {seq}: {}", v.stderr);
    }
    // No state holds only entries up to seq 3: the base already has seq 4.
    let out = b.path("seq-3.snap");
    let d = restore(&b, &out, &["--seq", "3"]);
    assert_eq!(d.code, 66, "{}", d.stderr);
    assert!(d.stderr.contains("next_seq 5..=14"), "{}", d.stderr);
    assert!(!out.exists());
}

#[test]
fn restore_refuses_to_overwrite_an_existing_file_without_force() {
    let b = exit_chain(2);
    let out = b.path("exists.snap");
    std::fs::write(&out, b"precious").unwrap();
    let d = restore(&b, &out, &[]);
    assert_eq!(d.code, 73, "{}", d.stderr);
    assert!(d.stderr.contains("exists; pass --force"), "{}", d.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let d = restore(&b, &out, &["--force"]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_image(&out, &b.points[2]);
}

#[test]
fn restore_refuses_the_state_file_and_its_generations_as_output() {
    let b = exit_chain(2);
    std::fs::copy(&b.state, b.path("state.snap.1")).unwrap();
    let before = snapshot_dir(b.dir.path());
    for name in [
        "state.snap",
        "state.snap.1",
        "state.snap.2",
        "state.snap.lock",
    ] {
        let d = restore(&b, &b.path(name), &["--force"]);
        assert_eq!(d.code, 64, "{name}: {}", d.stderr);
        assert!(
            d.stderr.contains("never writes over the state"),
            "{}",
            d.stderr
        );
    }
    let into_chain = b.delta(1).with_file_name("x.snap");
    let d = restore(&b, &into_chain, &["--force"]);
    assert_eq!(d.code, 64, "{}", d.stderr);
    assert!(snapshot_dir(b.dir.path()) == before, "the state changed");
}

#[test]
fn restore_of_a_point_before_the_base_lists_what_exists() {
    let b = exit_chain(2);
    let before = snapshot_dir(b.dir.path());
    let out = b.path("old.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 - 1)]);
    assert_eq!(d.code, 66, "{}", d.stderr);
    assert!(d.stderr.contains("available"), "{}", d.stderr);
    assert!(
        d.stderr
            .contains("+ 2 delta(s), taken 2023-11-14T22:13:20Z ..= 2023-11-14T22:16:40Z"),
        "{}",
        d.stderr
    );
    assert!(!out.exists());
    assert!(snapshot_dir(b.dir.path()) == before, "the state changed");
}

#[test]
fn restore_refuses_a_point_past_a_torn_delta_and_takes_the_sound_prefix_by_default() {
    let b = exit_chain(3);
    let len = std::fs::metadata(b.delta(3)).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(b.delta(3))
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    // After delta 2's time: delta 3 may be the point asked for, and it is torn.
    let out = b.path("past.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 250)]);
    assert_eq!(d.code, 65, "{}", d.stderr);
    assert!(
        d.stderr.contains(&*b.delta(3).to_string_lossy()),
        "{}",
        d.stderr
    );
    assert!(!out.exists());
    // Before it: fine.
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 150)]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_image(&out, &b.points[1]);
    // The newest sound point, with a warning naming the torn delta.
    let out = b.path("newest.snap");
    let d = restore(&b, &out, &[]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(
        d.stderr.contains(&*b.delta(3).to_string_lossy()),
        "{}",
        d.stderr
    );
    assert_image(&out, &b.points[2]);
}

#[test]
fn restore_refuses_a_point_past_a_corrupt_delta_found_while_copying() {
    let b = exit_chain(3);
    flip_byte(b.delta(2), PAGE + 5);
    let out = b.path("past.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 250)]);
    assert_eq!(d.code, 65, "{}", d.stderr);
    assert!(d.stderr.contains("page data is corrupt"), "{}", d.stderr);
    assert!(!out.exists(), "nothing written");
    let temps = std::fs::read_dir(b.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".restore.")
        })
        .count();
    assert_eq!(temps, 0, "the temp file is removed");
}

#[test]
fn restore_places_the_point_by_a_bad_deltas_linked_footer_only() {
    let b = exit_chain(3);
    // Delta 3's run table is corrupt, its footer intact and linked: taken at T0 + 300 s.
    flip_byte(b.delta(3), 3);
    let out = b.path("before-it.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 250)]);
    assert_eq!(d.code, 0, "the point is before the bad delta: {}", d.stderr);
    assert_image(&out, &b.points[2]);
    let out = b.path("after-it.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 350)]);
    assert_eq!(d.code, 65, "{}", d.stderr);
    assert!(d.stderr.contains("run table is corrupt"), "{}", d.stderr);
    assert!(!out.exists());

    // A foreign delta 3 (another chain's, also "taken" at T0 + 300 s): its footer says
    // nothing about this chain, so even T0 + 250 s may be in the lost part.
    let b = exit_chain(3);
    let other = queue_chain(3);
    std::fs::write(b.delta(3), std::fs::read(other.delta(3)).unwrap()).unwrap();
    let out = b.path("foreign.snap");
    let d = restore(&b, &out, &["--at", &format!("@{}", T0 + 250)]);
    assert_eq!(d.code, 65, "{}", d.stderr);
    assert!(d.stderr.contains("belongs to another base"), "{}", d.stderr);
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// Issue 20: one answer for a chain (verify, inspect, restore and run agree), older
// generations as a fallback, delta entries that are not regular files, generation u64::MAX
// ---------------------------------------------------------------------------------------

/// Garbage over the meta pages (header and descriptor ring) of a queue region: the delta
/// that carries them passes every CRC, and its image fails the queue image check.
fn garbage_meta(region: &Memfd) {
    let garbage: Vec<u8> = (0..2 * PAGE).map(|i| (i * 7 + 13) as u8).collect();
    write_all_at(region, &garbage, 0).unwrap();
}

/// `run --state STATE --restart never --cgroup off -- true`: restore, a client that exits at
/// once, a final snapshot (exit strategy: the region as restored).
fn run_true(state: &Path) -> Done {
    run(&[
        "run".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--restart".as_ref(),
        "never".as_ref(),
        "--cgroup".as_ref(),
        "off".as_ref(),
        "--".as_ref(),
        "true".as_ref(),
    ])
}

/// The image and generation of the snapshot file `path`.
fn image_and_generation(path: &Path) -> (Vec<u8>, u64) {
    let info = snapshot::verify_path(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    (bytes[..IMAGE as usize].to_vec(), info.meta.generation)
}

#[test]
fn a_delta_that_passes_its_crcs_but_not_the_image_check_ends_the_chain_for_every_command() {
    // The scenario: 28 deltas, the 28th carries garbage meta pages under correct CRCs.
    let b = queue_chain_ending(28, garbage_meta);
    let bad = b.delta(28).to_path_buf();
    let bad_name = bad.to_string_lossy().into_owned();

    let d = run(&["inspect".as_ref(), "--json".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 65, "inspect calls the chain broken: {}", d.stderr);
    let j = json(&d);
    let c = &j["chain"];
    assert_eq!(c["intact"], false, "{}", d.stdout);
    assert_eq!(c["deltas"].as_array().unwrap().len(), 27, "{}", d.stdout);
    assert_eq!(c["stop"]["path"], bad_name.as_str());
    assert_eq!(c["stop"]["kind"], "bad-image", "{}", d.stdout);
    let reason = c["stop"]["reason"].as_str().unwrap();
    assert!(reason.contains("image check"), "{reason}");

    let d = run(&["verify".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 65, "{}{}", d.stdout, d.stderr);
    assert!(d.stderr.contains(&bad_name), "names the link: {}", d.stderr);
    assert!(d.stderr.contains("image check"), "says why: {}", d.stderr);
    assert!(
        d.stderr.contains("A restore would use") && d.stderr.contains("+ 27 delta(s)"),
        "{}",
        d.stderr
    );

    let out = b.path("newest.snap");
    let d = restore(&b, &out, &[]);
    assert_eq!(d.code, 0, "restore uses the sound prefix: {}", d.stderr);
    assert!(
        d.stderr.contains(&bad_name),
        "warns naming it: {}",
        d.stderr
    );
    assert_image(&out, &b.points[27]);

    let d = run_true(&b.state);
    assert_eq!(d.code, 0, "run starts from base + 27: {}", d.stderr);
    assert!(
        d.stderr.contains(&bad_name),
        "warns naming it: {}",
        d.stderr
    );
    let (image, generation) = image_and_generation(&b.state);
    assert_eq!(generation, 2, "{}", d.stderr);
    assert!(image == b.points[27].image, "run restored another state");
}

#[test]
fn a_delta_that_zeroes_the_whole_image_ends_the_chain_before_it() {
    let b = queue_chain_ending(3, |region| {
        write_all_at(region, &vec![0u8; IMAGE as usize], 0).unwrap();
    });
    let d = run(&["verify".as_ref(), b.state.as_os_str()]);
    assert_eq!(d.code, 65, "{}{}", d.stdout, d.stderr);
    assert!(
        d.stderr.contains(&*b.delta(3).to_string_lossy()),
        "{}",
        d.stderr
    );
    assert!(d.stderr.contains("+ 2 delta(s)"), "{}", d.stderr);
    let out = b.path("newest.snap");
    let d = restore(&b, &out, &[]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert_image(&out, &b.points[2]);
}

/// Replaces `path` by what `make` creates at its name (a symlink, a FIFO, a directory).
fn replace_with(path: &Path, make: impl FnOnce(&Path)) {
    std::fs::remove_file(path).unwrap();
    make(path);
}

#[test]
fn delta_entries_that_are_not_regular_files_end_the_chain_and_are_named() {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    type Make = fn(&Path, &Path);
    let kinds: [(&str, Make); 3] = [
        ("symbolic link", |p, elsewhere| {
            std::os::unix::fs::symlink(elsewhere, p).unwrap()
        }),
        ("FIFO", |p, _| {
            mknodat(CWD, p, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap()
        }),
        ("directory", |p, _| std::fs::create_dir(p).unwrap()),
    ];
    for (what, make) in kinds {
        let b = queue_chain(3);
        // A sound copy of delta 3 kept elsewhere: even a link to good bytes is refused.
        let elsewhere = b.path("elsewhere.delta");
        std::fs::copy(b.delta(3), &elsewhere).unwrap();
        replace_with(b.delta(3), |p| make(p, &elsewhere));
        let bad = b.delta(3).to_string_lossy().into_owned();

        let d = run(&["verify".as_ref(), b.state.as_os_str()]);
        assert_eq!(d.code, 65, "{what}: {}{}", d.stdout, d.stderr);
        assert!(d.stderr.contains(&bad), "{what}: {}", d.stderr);
        assert!(d.stderr.contains(what), "{what}: {}", d.stderr);
        assert!(d.stderr.contains("+ 2 delta(s)"), "{what}: {}", d.stderr);

        let d = run(&["inspect".as_ref(), "--json".as_ref(), b.state.as_os_str()]);
        assert_eq!(d.code, 65, "{what}: {}", d.stderr);
        let j = json(&d);
        assert_eq!(j["chain"]["deltas"].as_array().unwrap().len(), 2);
        assert_eq!(j["chain"]["stop"]["path"], bad.as_str());

        let out = b.path("newest.snap");
        let d = restore(&b, &out, &[]);
        assert_eq!(d.code, 0, "{what}: {}", d.stderr);
        assert_image(&out, &b.points[2]);
    }
}

/// Writes a snapshot file of generation `generation` holding `image` at `path` (the footer
/// and CRC right), optionally with one image byte flipped afterwards (a corrupt base).
fn write_base(path: &Path, image: &[u8], generation: u64, corrupt: bool) {
    let region = Memfd::create("base", IMAGE).unwrap();
    write_all_at(&region, image, 0).unwrap();
    let meta = SnapshotMeta {
        strategy: Strategy::Queue.code(),
        generation,
        unix_time_ns: ns(T0 + 10_000),
    };
    let f = std::fs::File::create_new(path).unwrap();
    snapshot::write_snapshot(&region, &f, IMAGE, meta).unwrap();
    if corrupt {
        flip_byte(path, 5000);
    }
}

#[test]
fn run_and_restore_fall_back_to_the_older_generation_when_the_newest_base_is_corrupt() {
    // Generation 1 with 3 deltas, kept as state.snap.1; the newest base (generation 2) is
    // corrupt (an image byte flipped under its CRC).
    let b = queue_chain(3);
    let older = b.path("state.snap.1");
    std::fs::rename(&b.state, &older).unwrap();
    let newest_image = b.points[3].image.clone();
    write_base(&b.state, &newest_image, 2, true);
    let corrupt_bytes = std::fs::read(&b.state).unwrap();
    let state = b.state.to_string_lossy().into_owned();
    let older_name = older.to_string_lossy().into_owned();

    // restore --state: read only, says what it skipped and what it used.
    let before = snapshot_dir(b.dir.path());
    let out = b.path("fallback.snap");
    let d = restore(&b, &out, &[]);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(
        d.stderr.contains(&state) && d.stderr.contains(&older_name),
        "{}",
        d.stderr
    );
    assert_image(&out, &b.points[3]);
    let mut after = snapshot_dir(b.dir.path());
    after.remove(&out);
    assert!(after == before, "restore changed the state");

    // run: starts from state.snap.1's chain, says so, sets the corrupt base aside.
    let d = run_true(&b.state);
    assert_eq!(d.code, 0, "{}", d.stderr);
    assert!(
        d.stderr.contains(&state) && d.stderr.contains(&older_name),
        "{}",
        d.stderr
    );
    let (image, generation) = image_and_generation(&b.state);
    assert!(image == b.points[3].image, "run restored another state");
    assert_eq!(
        generation, 3,
        "generation 2 is taken by the corrupt base: never reused"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(b.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        corrupt_bytes,
        "kept as it was"
    );
}

#[test]
fn generation_u64_max_is_written_once_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.snap");
    let image: Vec<u8> = (0..IMAGE).map(|i| (i % 251) as u8).collect();
    let region = Memfd::create("base", IMAGE).unwrap();
    write_all_at(&region, &image, 0).unwrap();
    let meta = SnapshotMeta {
        strategy: Strategy::Exit.code(),
        generation: u64::MAX - 1,
        unix_time_ns: ns(T0),
    };
    let persister = Persister::new(&state, 1).unwrap();
    persister
        .persist_with(|f| snapshot::write_snapshot(&region, f, IMAGE, meta))
        .unwrap();
    drop(persister);

    // u64::MAX − 1 on disk: the next base is u64::MAX.
    let d = run_true(&state);
    assert_eq!(d.code, 0, "{}", d.stderr);
    let (_, g) = image_and_generation(&state);
    assert_eq!(g, u64::MAX, "{}", d.stderr);
    let (_, g1) = image_and_generation(&dir.path().join("state.snap.1"));
    assert_eq!(g1, u64::MAX - 1);

    // u64::MAX on disk: no generation is left; the host refuses to start, changing nothing.
    let before = snapshot_dir(dir.path());
    let d = run_true(&state);
    assert_eq!(d.code, 65, "{}", d.stderr);
    assert!(d.stderr.contains("18446744073709551615"), "{}", d.stderr);
    assert!(
        d.stderr.contains("never"),
        "says generations never repeat: {}",
        d.stderr
    );
    assert!(snapshot_dir(dir.path()) == before, "the state changed");
}
