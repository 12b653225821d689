//! Write tracking on the real kernel: a child process maps a memfd and registers tracking, the
//! test (its parent, like the host) scans the child's page tables.
//!
//! The child is this test binary run again with `SHMSNAP_TRACK_CHILD` set (see
//! [`child_entry`]); it talks over stdin/stdout in lines prefixed `@@`.
#![allow(unsafe_code)] // one madvise in the child, to zap page-table entries

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;

use rustix::fs::{Mode, OFlags};
use rustix::process::Pid;
use shmsnap_linux::track::{
    self, AdvertError, Advertisement, PageRun, ScanError, ScanQuery, Scanner, TrackError, Tracker,
    WrittenPages,
};
use shmsnap_linux::{Mapping, Memfd, Protection};

const ROLE: &str = "SHMSNAP_TRACK_CHILD";
/// Region size in pages.
const PAGES: u64 = 64;

fn page() -> u64 {
    track::page_size()
}

// ----------------------------------------------------------------------------------------
// The child.

/// Entry point of the child process; a no-op test when run normally.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(ROLE) else {
        return;
    };
    let (mode, pages) = match mode.split_once(':') {
        Some((m, n)) => (m.to_string(), n.parse().unwrap()),
        None => (mode, PAGES),
    };
    let region = Memfd::create("tracked", pages * page()).unwrap();
    region.seal_against_shrink().unwrap();
    let map = Mapping::of_memfd(&region, Protection::ReadWrite).unwrap();
    let other = Memfd::create("other", PAGES * page()).unwrap();
    other.seal_against_shrink().unwrap();
    let other_map = Mapping::of_memfd(&other, Protection::ReadWrite).unwrap();
    let tracker = match mode.as_str() {
        "track" => match Tracker::register(&map) {
            Ok(t) => Some(t),
            Err(TrackError::Unavailable(why)) => {
                println!("@@ unavailable {why}");
                return;
            }
            Err(e) => panic!("{e}"),
        },
        _ => None,
    };
    println!(
        "@@ ready {} {} {} {}",
        map.words().as_ptr() as u64,
        map.len(),
        rustix::fd::AsRawFd::as_raw_fd(&rustix::fd::AsFd::as_fd(&region)),
        other_map.words().as_ptr() as u64,
    );
    let words_per_page = (page() / 8) as usize;
    for line in std::io::stdin().lines() {
        let line = line.unwrap();
        let mut it = line.split_whitespace();
        let cmd = it.next().unwrap_or("q");
        let pages: Vec<usize> = it.map(|p| p.parse().unwrap()).collect();
        match cmd {
            // Write a distinct value into two words of each page.
            "w" => {
                for &p in &pages {
                    let w = &map.words()[p * words_per_page..(p + 1) * words_per_page];
                    let v = w[0].load(Ordering::Relaxed).wrapping_add(1);
                    w[0].store(v, Ordering::Relaxed);
                    w[words_per_page - 1].store(v ^ 0xa5a5, Ordering::Relaxed);
                }
            }
            // Read each page (loads only).
            "r" => {
                let mut sum = 0u64;
                for &p in &pages {
                    sum = sum.wrapping_add(map.words()[p * words_per_page].load(Ordering::Relaxed));
                }
                std::hint::black_box(sum);
            }
            // Zap the page-table entries of pages [a, b) with one madvise (whole page tables
            // may be freed).
            "Z" => {
                let ptr = map.words()[pages[0] * words_per_page..].as_ptr().cast_mut();
                // SAFETY: as for "z" below.
                unsafe {
                    rustix::mm::madvise(
                        ptr.cast(),
                        (pages[1] - pages[0]) * page() as usize,
                        rustix::mm::Advice::LinuxDontNeed,
                    )
                }
                .unwrap();
            }
            // Zap the page-table entries of each page, as reclaim would.
            "z" => {
                for &p in &pages {
                    let ptr = map.words()[p * words_per_page..].as_ptr().cast_mut();
                    // SAFETY: MADV_DONTNEED on a shared file mapping only drops this process's
                    // page-table entries; the bytes stay in the memfd and the next access maps
                    // them again, so no Rust reference observes a change.
                    unsafe {
                        rustix::mm::madvise(
                            ptr.cast(),
                            page() as usize,
                            rustix::mm::Advice::LinuxDontNeed,
                        )
                    }
                    .unwrap();
                }
            }
            _ => break,
        }
        println!("@@ ok");
    }
    drop(tracker);
    std::process::exit(0);
}

// ----------------------------------------------------------------------------------------
// The parent's handle on a child.

struct Child {
    proc: std::process::Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: Pid,
    /// Address and length of the child's region mapping.
    addr: u64,
    len: u64,
    /// Address of the child's mapping of another memfd (same length).
    other_addr: u64,
    /// The region, reopened through `/proc/PID/fd/N`.
    region: OwnedFd,
}

impl Child {
    /// Starts a child; `None` if this kernel cannot track (the tests then have nothing to do).
    fn spawn(mode: &str) -> Option<Self> {
        let exe = std::env::current_exe().unwrap();
        let mut proc = Command::new(exe)
            .args([
                "--exact",
                "child_entry",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE, mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = proc.stdin.take().unwrap();
        let mut stdout = BufReader::new(proc.stdout.take().unwrap());
        let ready = reply(&mut stdout);
        if let Some(why) = ready.strip_prefix("unavailable ") {
            let _ = proc.wait();
            shmsnap_testkit::require::require(
                "uffd-wp",
                "Write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7+).",
                Err::<(), _>(why.to_owned()),
            )?;
        }
        let f: Vec<u64> = ready
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("child said {ready:?}"))
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        let pid = Pid::from_raw(proc.id() as i32).unwrap();
        let path = format!("/proc/{}/fd/{}", proc.id(), f[2]);
        let region = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap();
        Some(Self {
            proc,
            stdin,
            stdout,
            pid,
            addr: f[0],
            len: f[1],
            other_addr: f[3],
            region,
        })
    }

    fn send(&mut self, cmd: &str, pages: &[u64]) {
        let list: Vec<String> = pages.iter().map(u64::to_string).collect();
        writeln!(self.stdin, "{cmd} {}", list.join(" ")).unwrap();
        assert_eq!(reply(&mut self.stdout), "ok");
    }

    fn write(&mut self, pages: &[u64]) {
        self.send("w", pages);
    }

    fn advert(&self) -> Advertisement {
        Advertisement {
            addr: self.addr,
            len: self.len,
            generation: 2,
        }
    }

    fn range(&self) -> track::TrackedRange {
        track::validate(&self.advert(), self.pid, &self.region, self.len).unwrap()
    }

    /// The region's bytes, read through the file (as the host's copy does).
    fn bytes(&self) -> Vec<u8> {
        let mut buf = vec![0u8; self.len as usize];
        rustix::io::pread(&self.region, &mut buf, 0).unwrap();
        buf
    }

    fn kill(mut self) -> Pid {
        self.proc.kill().unwrap();
        self.proc.wait().unwrap();
        self.pid
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "q");
        let _ = self.proc.wait();
    }
}

/// Next `@@` line from the child (other lines are the test harness talking).
fn reply(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "child exited");
        if let Some(rest) = line.trim_end().strip_prefix("@@ ") {
            return rest.to_string();
        }
    }
}

/// Page indexes covered by `runs`.
fn reported(runs: &[PageRun]) -> Vec<u64> {
    let p = page();
    runs.iter()
        .flat_map(|r| (r.offset / p)..((r.offset + r.len) / p))
        .collect()
}

/// The comparison the tests rely on: the scan reported exactly `written` (count and
/// identity), in order, without overlaps.
fn check_exact(runs: &[PageRun], written: &[u64]) -> Result<(), String> {
    let want: BTreeSet<u64> = written.iter().copied().collect();
    let got = reported(runs);
    if got != want.iter().copied().collect::<Vec<_>>() {
        return Err(format!(
            "scan reported {got:?} ({} pages), written {want:?} ({} pages)",
            got.len(),
            want.len()
        ));
    }
    Ok(())
}

/// A broken tracker: forgets the last run the kernel reported.
fn forgetful(scan: &WrittenPages) -> &[PageRun] {
    let runs = scan.runs();
    &runs[..runs.len().saturating_sub(1)]
}

const WRITTEN: [u64; 7] = [0, 1, 2, 7, 30, 31, PAGES - 1];

// ----------------------------------------------------------------------------------------
// Tests.

#[test]
fn scan_reports_exactly_the_pages_the_client_wrote() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    // Registration protected everything and the child has not written: nothing yet.
    check_exact(scanner.scan(&range).unwrap().runs(), &[]).unwrap();
    c.write(&WRITTEN);
    let scan = scanner.scan(&range).unwrap();
    check_exact(scan.runs(), &WRITTEN).unwrap();
    assert_eq!(scan.pages(), WRITTEN.len() as u64);
    assert_eq!(scan.runs().len(), 4, "{:?}", scan.runs()); // 0-2, 7, 30-31, 63
    assert_eq!(scan.unknown_pages(), 0);
    // Nothing written since: nothing reported, the pages were protected again.
    check_exact(scanner.scan(&range).unwrap().runs(), &[]).unwrap();
}

#[test]
fn a_buffer_of_one_run_continues_from_walk_end_and_misses_nothing() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::with_runs_per_call(c.pid, 1).unwrap();
    scanner.scan(&range).unwrap();
    c.write(&WRITTEN);
    check_exact(scanner.scan(&range).unwrap().runs(), &WRITTEN).unwrap();
    c.write(&[5]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[5]).unwrap();
}

#[test]
fn reads_are_not_reported_as_writes() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    c.send("r", &[3, 4, 5]);
    c.write(&[4]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[4]).unwrap();
}

#[test]
fn writes_after_a_scan_are_reported_by_the_next_scan() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    c.write(&[1, 2, 3]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[1, 2, 3]).unwrap();
    c.write(&[2, 40]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[2, 40]).unwrap();
}

/// Scan, then copy the reported pages onto the previous image: after every round the image
/// equals the region. The forgetful twin (drops the last run) must diverge.
#[test]
fn incremental_image_equals_the_region_after_every_round() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    scanner.scan(&range).unwrap(); // first scan: a full copy
    let mut image = c.bytes();
    let mut twin_image = image.clone();
    let mut twin_diverged = false;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..20 {
        let mut pages = Vec::new();
        for _ in 0..(1 + round % 7) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            pages.push(rng % PAGES);
        }
        c.write(&pages);
        let scan = scanner.scan(&range).unwrap();
        let region = c.bytes(); // quiescent: the child waits for the next command
        apply(&mut image, &region, scan.runs());
        assert!(
            image == region,
            "round {round}: image differs from the region"
        );
        apply(&mut twin_image, &region, forgetful(&scan));
        twin_diverged |= twin_image != region;
    }
    assert!(
        twin_diverged,
        "the comparison did not catch a forgotten run"
    );
}

/// Copies the reported pages from `region` into `image`.
fn apply(image: &mut [u8], region: &[u8], runs: &[PageRun]) {
    for r in runs {
        let (a, b) = (r.offset as usize, (r.offset + r.len) as usize);
        image[a..b].copy_from_slice(&region[a..b]);
    }
}

#[test]
fn the_exact_comparison_catches_a_tracker_that_forgets_a_run() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    c.write(&WRITTEN);
    let scan = scanner.scan(&range).unwrap();
    check_exact(scan.runs(), &WRITTEN).unwrap();
    let e = check_exact(forgetful(&scan), &WRITTEN).unwrap_err();
    assert!(e.contains("(6 pages)"), "{e}");
}

/// A written page whose page-table entry is zapped before the scan (as reclaim or
/// `MADV_DONTNEED` does) leaves an empty entry. It must still be reported, by both queries,
/// and be protected again afterwards.
#[test]
fn written_page_zapped_before_the_scan_is_still_reported() {
    let Some(mut c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    c.write(&[9, 10]);
    c.send("z", &[9]);
    let only = scanner.scan_with(&range, ScanQuery::WrittenOnly).unwrap();
    check_exact(only.runs(), &[9, 10]).unwrap();

    c.write(&[20, 21]);
    c.send("z", &[20]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[20, 21]).unwrap();
    // Both are protected again: touching them (a read maps the entry back) is not a write.
    c.send("r", &[9, 20]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[]).unwrap();
    c.write(&[20]);
    check_exact(scanner.scan(&range).unwrap().runs(), &[20]).unwrap();
}

#[test]
fn scan_of_an_unregistered_mapping_is_not_registered() {
    let Some(c) = Child::spawn("plain") else {
        return;
    };
    let range = c.range(); // the mapping itself is valid
    let mut scanner = Scanner::open(c.pid).unwrap();
    let e = scanner.scan(&range).unwrap_err();
    assert!(matches!(e, ScanError::NotRegistered), "{e}");
}

#[test]
fn scan_of_a_dead_client_is_gone() {
    let Some(c) = Child::spawn("track") else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    let pid = c.kill();
    let e = scanner.scan(&range).unwrap_err();
    assert!(matches!(e, ScanError::Gone), "{e}");
    assert!(matches!(Scanner::open(pid), Err(ScanError::Gone)));
}

#[test]
fn bogus_advertisements_are_refused() {
    let Some(c) = Child::spawn("track") else {
        return;
    };
    let p = page();
    let check = |addr: u64, len: u64| {
        let a = Advertisement {
            addr,
            len,
            generation: 4,
        };
        track::validate(&a, c.pid, &c.region, c.len).unwrap_err()
    };
    assert!(matches!(
        check(c.addr + 8, c.len),
        AdvertError::BadRange { .. }
    ));
    assert!(matches!(
        check(u64::MAX - p + 1, c.len),
        AdvertError::BadRange { .. }
    ));
    assert!(matches!(check(c.addr, 0), AdvertError::BadRange { .. }));
    assert!(matches!(
        check(c.addr, c.len + p),
        AdvertError::WrongLength { .. }
    ));
    let e = check(p, c.len);
    assert!(matches!(e, AdvertError::NoSuchMapping { .. }), "{e}");
    assert!(matches!(
        check(c.addr + p, c.len),
        AdvertError::NoSuchMapping { .. }
    ));
    let e = check(c.other_addr, c.len);
    assert!(matches!(e, AdvertError::NotTheRegion(_)), "{e}");
    let odd = Advertisement {
        generation: 3,
        ..c.advert()
    };
    let e = track::validate(&odd, c.pid, &c.region, c.len).unwrap_err();
    assert!(matches!(e, AdvertError::Unstable(3)), "{e}");
    // The genuine one passes.
    assert_eq!(c.range().addr(), c.addr);
    let pid = c.kill();
    let e = track::validate(
        &Advertisement {
            addr: 0x1000,
            len: PAGES * p,
            generation: 0,
        },
        pid,
        rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap(),
        PAGES * p,
    )
    .unwrap_err();
    assert!(matches!(e, AdvertError::Gone), "{e}");
}

/// A whole page table of written pages zapped at once (`MADV_DONTNEED` may free the table
/// itself, `CONFIG_PT_RECLAIM`): every page must still be reported.
#[test]
fn written_page_table_zapped_whole_is_still_reported() {
    let pages = 1024; // 4 MiB: holds at least one whole 2 MiB-aligned page table
    let Some(mut c) = Child::spawn(&format!("track:{pages}")) else {
        return;
    };
    let range = c.range();
    let mut scanner = Scanner::open(c.pid).unwrap();
    let span = 512 * page();
    let first = (c.addr.div_ceil(span) * span - c.addr) / page();
    let table: Vec<u64> = (first..first + 512).collect();
    c.write(&table);
    c.send("Z", &[first, first + 512]);
    check_exact(scanner.scan(&range).unwrap().runs(), &table).unwrap();
    c.write(&table);
    c.send("Z", &[first, first + 512]);
    let only = scanner.scan_with(&range, ScanQuery::WrittenOnly).unwrap();
    check_exact(only.runs(), &table).unwrap();
    check_exact(scanner.scan(&range).unwrap().runs(), &[]).unwrap();
}
