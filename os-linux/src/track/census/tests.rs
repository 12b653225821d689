use super::*;
use crate::mapping::{Mapping, Protection};

const ID: FileId = FileId {
    dev: (0, 1),
    ino: 31044,
};

/// Per-mapping lines the kernel prints between the header and `VmFlags` (6.18).
const BODY: &str = "\
Size:                  8 kB
KernelPageSize:        4 kB
Rss:                   4 kB
Pss_Dirty:             4 kB
Shared_Dirty:          0 kB
THPeligible:           0
";

fn smaps(vmas: &[(&str, &str)]) -> String {
    vmas.iter()
        .map(|(header, flags)| format!("{header}\n{BODY}VmFlags: {flags} \n"))
        .collect()
}

fn parse(text: &str) -> Result<Vec<RegionVma>, String> {
    parse_smaps(text.as_bytes(), ID).map_err(|e| e.to_string())
}

const REGION_RW: &str =
    "7f65e6195000-7f65e6197000 rw-s 00000000 00:01 31044                      /memfd:shmsnap-region (deleted)";
const OTHER: &str =
    "7f65e6197000-7f65e619e000 r--s 00000000 fe:00 325745  /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache";

#[test]
fn the_region_mappings_and_their_flags_are_found_among_others() {
    let text = smaps(&[
        (
            "55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234  /usr/bin/client",
            "rd mr mw me",
        ),
        (REGION_RW, "rd wr sh mr mw me ms dc uw"),
        (OTHER, "rd mr me ms"),
    ]);
    let v = parse(&text).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].start, v[0].end), (0x7f65_e619_5000, 0x7f65_e619_7000));
    assert!(v[0].can_write_the_file() && v[0].dont_fork() && v[0].tracked());
    // Same inode on another device is another file.
    let elsewhere = REGION_RW.replace("00:01", "00:02");
    assert!(parse(&smaps(&[(&elsewhere, "rd wr sh")]))
        .unwrap()
        .is_empty());
    assert!(parse("").unwrap().is_empty());
}

/// Which flag sets can store into the file: measured meanings on 6.18 (see DESIGN §11).
#[test]
fn writable_means_shared_and_write_or_may_write() {
    let vma = |flags: &str| RegionVma {
        start: 0,
        end: 4096,
        flags: flags.split_whitespace().map(str::to_owned).collect(),
    };
    // MAP_SHARED read-write.
    assert!(vma("rd wr sh mr mw me ms").can_write_the_file());
    // Read-only, but made before the seal from an O_RDWR fd: mprotect can still add PROT_WRITE.
    assert!(vma("rd sh mr mw me ms").can_write_the_file());
    // Read-only from an O_RDONLY fd, or made after the seal: the kernel cleared VM_MAYWRITE.
    assert!(!vma("rd mr me ms").can_write_the_file());
    // MAP_PRIVATE, even writable: stores go to private copies, never into the file.
    assert!(!vma("rd wr mr mw me ac").can_write_the_file());
    assert!(!vma("").can_write_the_file());
}

#[test]
fn hostile_smaps_text_is_refused_not_guessed() {
    let bad = |text: &str, want: &str| {
        let e = parse(text).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
    };
    bad("VmFlags: rd wr sh\n", "stray VmFlags");
    bad(
        &format!("{REGION_RW}\nVmFlags: rd sh\nVmFlags: rd wr sh mw\n"),
        "stray VmFlags",
    );
    bad(&format!("{REGION_RW}\n{BODY}"), "no VmFlags line");
    bad(
        &format!("{REGION_RW}\nthis is not smaps\n"),
        "unparsable line",
    );
    bad(&format!("{REGION_RW}\nSize 8 kB\n"), "unparsable line");
    bad(&format!("{REGION_RW}\n: 8 kB\n"), "unparsable line");
    bad(&format!("{REGION_RW}\nSi ze: 8 kB\n"), "unparsable line");
    bad("zz-yy rw-s 0 00:01 31044\n", "unparsable line");
    bad(
        "7f00-7f01 rw-s 00000000 00:01 notanumber\n",
        "unparsable line",
    );
    bad("7f00-7f01 rwxsz 00000000 00:01 31044\n", "unparsable line");
    let long = format!("{REGION_RW}{}\n", " ".repeat(MAX_LINE));
    bad(&long, "longer than");
    // A line that is long but within bounds, with bytes that are not UTF-8 in the path.
    let mut text = format!("{} /memfd:", &REGION_RW[..60]).into_bytes();
    text.extend_from_slice(&[0xff, 0xfe, b'\n']);
    text.extend_from_slice(b"VmFlags: rd wr sh mr mw me ms\n");
    let v = parse_smaps(&text[..], ID).unwrap();
    assert_eq!(v.len(), 1);
    assert!(v[0].can_write_the_file());
    // A missing trailing newline is fine; a region without flags at the end is not.
    assert_eq!(
        parse(&format!("{REGION_RW}\nVmFlags: rd sh"))
            .unwrap()
            .len(),
        1
    );
    bad(REGION_RW, "no VmFlags line");
}

#[test]
fn hostile_maps_text_is_refused_and_a_mention_is_found() {
    let maps = |t: &str| parse_maps(t.as_bytes(), ID).map_err(|e| e.to_string());
    assert!(!maps(OTHER).unwrap());
    assert!(maps(&format!("{OTHER}\n{REGION_RW}\n")).unwrap());
    assert!(!maps("").unwrap());
    assert!(maps("garbage\n").unwrap_err().contains("unparsable"));
    assert!(maps(&format!("{OTHER}\n7f00-7f01 rw-s\n"))
        .unwrap_err()
        .contains("unparsable"));
    // Inode 0 (anonymous shared memory) never matches, even if the region's id were 0.
    let zero = FileId {
        dev: (0, 1),
        ino: 0,
    };
    let anon = "7f00-7f01 rw-s 00000000 00:01 0  /dev/zero (deleted)\n";
    assert!(!parse_maps(anon.as_bytes(), zero).unwrap());
}

fn tracked(addr: u64, len: u64) -> TrackedRange {
    TrackedRange::for_tests(addr, len)
}

#[test]
fn the_registration_must_be_the_one_tracked_dontfork_mapping() {
    let range = tracked(0x7f65_e619_5000, 0x2000);
    let vma = |start: u64, flags: &str| RegionVma {
        start,
        end: start + 0x2000,
        flags: flags.split_whitespace().map(str::to_owned).collect(),
    };
    let good = vma(0x7f65_e619_5000, "rd wr sh mr mw me ms dc uw");
    assert_eq!(registration_ok(std::slice::from_ref(&good), &range), Ok(()));
    let e = registration_ok(&[vma(0x7f65_e619_5000, "rd wr sh mr mw me ms uw")], &range);
    assert!(e.unwrap_err().contains("MADV_DONTFORK"));
    let e = registration_ok(&[vma(0x7f65_e619_5000, "rd wr sh mr mw me ms dc")], &range);
    assert!(e.unwrap_err().contains("no write tracking"));
    let e = registration_ok(&[vma(0x7f00_0000_0000, "rd wr sh mw ms dc uw")], &range);
    assert!(e.unwrap_err().contains("not at its advertised"));
    let e = registration_ok(&[good.clone(), good.clone()], &range);
    assert!(e.unwrap_err().contains("2 times"));
    assert!(registration_ok(&[], &range)
        .unwrap_err()
        .contains("0 times"));
}

fn region(len: u64) -> Memfd {
    let m = Memfd::create("census", len).unwrap();
    m.seal_against_shrink().unwrap();
    m
}

/// On the running kernel, with this test process as "another process": its writable
/// mapping, then a read-only one made before the seal (may-write), are found; after the
/// seal, a new read-only mapping is not a writer.
#[test]
fn the_census_finds_writable_and_may_write_mappings_and_passes_after_the_seal() {
    let memfd = region(1 << 16);
    let id = FileId::of(&memfd).unwrap();
    let host = [Pid::from_raw(1).unwrap()]; // skip nobody that matters: we are the suspect
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let rw = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    match census(id, &host) {
        Err(Unproven::Writer { pid, vma, .. }) => {
            assert_eq!(pid, me);
            assert_eq!(vma.start, rw.words().as_ptr() as u64);
        }
        other => panic!("{other:?}"),
    }
    drop(rw);
    let ro_before = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
    match census(id, &host) {
        Err(Unproven::Writer { vma, .. }) => {
            assert!(vma.flags.iter().any(|f| f == "mw"), "{:?}", vma.flags)
        }
        other => panic!("a pre-seal read-only mapping may become writable: {other:?}"),
    }
    memfd.seal_future_write().unwrap();
    match census(id, &host) {
        Err(Unproven::Writer { .. }) => {}
        other => panic!("the old mapping stays may-write after the seal: {other:?}"),
    }
    drop(ro_before);
    let _ro_after = Mapping::of_memfd(&memfd, Protection::ReadOnly).unwrap();
    let c = census(id, &host).unwrap();
    assert_eq!(c.readers, 1, "{c:?}");
    assert!(c.processes >= 1);
    // Skipping this process (as the host skips itself) sees nobody.
    let c = census(id, &[rustix::process::getpid()]).unwrap();
    assert_eq!(c.readers, 0);
}

/// The client library's registration shows `dc` and `uw`; a bare tracker (a library without
/// `DONTFORK`) is refused; `prove` seals an unsealed region itself.
#[test]
fn a_library_registration_proves_and_a_bare_one_does_not() {
    use crate::listen::{start_tracking, Tracking};
    use crate::track::{validate, Advertisement, Tracker};
    let pid = rustix::process::getpid();
    let memfd = region(1 << 16);
    let mut map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
    let advert = match start_tracking(&memfd, &mut map, true) {
        Tracking::Advertised(a) => a,
        Tracking::Failed(crate::track::TrackError::Unavailable(why)) => {
            eprintln!("skipped: tracking unavailable here: {why}");
            return;
        }
        other => panic!("{other:?}"),
    };
    assert!(memfd.is_write_sealed().unwrap(), "the library seals");
    let range = validate(&advert, pid, &memfd, 1 << 16).unwrap();
    let id = FileId::of(&memfd).unwrap();
    check_registration(pid, &range, id).unwrap();

    let bare = region(1 << 16);
    let bare_map = Mapping::of_memfd(&bare, Protection::ReadWrite).unwrap();
    let t = Tracker::register(&bare_map).unwrap();
    let a = Advertisement {
        addr: t.addr(),
        len: t.len(),
        generation: 2,
    };
    let range = validate(&a, pid, &bare, 1 << 16).unwrap();
    let e = prove(&bare, pid, &range).unwrap_err();
    assert!(matches!(e, Unproven::Registration { .. }), "{e}");
    assert!(e.to_string().contains("MADV_DONTFORK"), "{e}");
    assert!(
        !bare.is_write_sealed().unwrap(),
        "an unprovable client is not sealed for nothing"
    );
    bare_map.dont_fork().unwrap();
    // This test process maps `bare` only through the tracked mapping; other tests' regions
    // are other inodes. The host (here: us) is skipped by `prove`.
    prove(&bare, pid, &range).unwrap();
    assert!(bare.is_write_sealed().unwrap(), "the host sealed it");
    drop(t);
}
