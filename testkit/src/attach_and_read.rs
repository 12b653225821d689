//! Fuzz target `attach_and_read`: region attach, recovery and reads over a region image decoded
//! from arbitrary bytes (DESIGN §3, §4, §5.1).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use shmsnap_core::{
    claim, AttachError, CommitError, Descriptor, Layout, LayoutError, ReadError, Region,
    WordMemory, Writer, MAX_SEQ,
};

use crate::image::{placement, ImageSpec};
use crate::input::Input;
use crate::payload::payload_for;
use crate::words::to_bytes;
use crate::CLIENT;

// ------------------------------------------------------------------------------------------
// attach_and_read
// ------------------------------------------------------------------------------------------

/// Region attach, recovery and reads over a region image decoded from arbitrary bytes.
///
/// Checks: every entry returned lies inside the ring and belongs to its slot; `entries()`,
/// `newest()` and per-slot reads agree; payload reads of valid entries succeed and return
/// the image's bytes; a read of an arbitrary (often perturbed) descriptor succeeds only for an
/// entry of the region; tail reads are bounds-checked; [`Writer::attach`] fails only with a
/// typed error, keeps the newest entry and only drops (never changes) others, passes
/// [`Writer::check_invariants`], and never reuses a seq; fresh commits succeed (or report
/// exhaustion exactly when the limits are reached), are readable with exact bytes and never
/// disturb the bytes of surviving entries; a second attach repeats no seq. An image whose
/// claim word is set is refused by `attach` with [`AttachError::Claimed`] naming that holder
/// and left unchanged; the checks then go on after a [`claim::reclaim`] (a dead holder).
///
/// # Panics
///
/// Only on a violated invariant.
pub fn attach_and_read(data: &[u8]) {
    let mut input = Input::new(data);
    let probe = Probe::decode(&mut input);
    let spec = ImageSpec::decode(&mut input);
    let mem = spec.build(&mut input);
    check_attach_and_read(&mem[..], &probe);
}

/// Parameters of [`attach_and_read`] decoded before the image.
#[derive(Debug)]
struct Probe {
    /// Lengths of the fresh commits (reduced modulo S).
    commits: [u16; 4],
    /// Which entry to perturb (or none) and how, for an arbitrary payload read.
    perturb: u8,
    field: u64,
    /// A tail read.
    tail_offset: u64,
    tail_len: u8,
}

impl Probe {
    fn decode(input: &mut Input<'_>) -> Probe {
        let n = usize::from(input.u8() % 5);
        let mut commits = [0u16; 4];
        for c in commits.iter_mut().take(n) {
            *c = input.u16().max(1);
        }
        Probe {
            commits,
            perturb: input.u8(),
            field: input.wide(),
            tail_offset: input.wide(),
            tail_len: input.u8(),
        }
    }
}

/// Reads every valid entry of `region` with its payload, checking what the reader promises.
fn read_all<M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
) -> BTreeMap<u64, (Descriptor, Vec<u8>)> {
    let layout = *region.layout();
    let s = layout.data_size;
    let image = to_bytes(region.mem());
    let mut listed = Vec::new();
    let mut out = BTreeMap::new();
    for slot in 0..layout.entries {
        let Some(d) = region.read_descriptor(slot) else {
            continue;
        };
        assert_eq!(
            layout.slot_of(d.seq),
            slot,
            "entry {d:?} returned for slot {slot}, which cannot hold its seq"
        );
        assert!(
            d.seq != 0
                && d.seq < MAX_SEQ
                && d.length >= 1
                && d.offset % 8 == 0
                && (d.offset & (s - 1)) + d.length <= s,
            "entry {d:?} does not lie inside the {s}-byte data ring"
        );
        listed.push(d);
        let len = d.length as usize;
        // One spare byte: read_payload must report the length, not fill the buffer.
        let mut buf = vec![0u8; len + 1];
        match region.read_payload(&d, &mut buf) {
            Ok(n) => assert_eq!(n, len, "read_payload of {d:?} returned {n} bytes"),
            Err(e) => panic!("read_payload of the valid, quiescent entry {d:?} failed: {e}"),
        }
        let at = layout.ring_byte(d.offset);
        assert_eq!(
            &buf[..len],
            &image[at..at + len],
            "read_payload of {d:?} returned bytes that are not the ring's"
        );
        assert_eq!(
            region.read_payload(&d, &mut buf[..len - 1]),
            Err(ReadError::BufferTooSmall {
                needed: d.length,
                got: len - 1
            }),
            "a short buffer for {d:?} must be refused"
        );
        buf.truncate(len);
        out.insert(d.seq, (d, buf));
    }
    let entries: Vec<Descriptor> = region.entries().collect();
    assert_eq!(entries, listed, "entries() disagrees with per-slot reads");
    assert_eq!(
        region.newest().map(|d| d.seq),
        out.keys().next_back().copied(),
        "newest() is not the entry with the highest seq"
    );
    out
}

/// An image claimed by another writer: `attach` is refused naming it and touches nothing;
/// then the holder is declared dead and reclaimed.
fn check_claimed(mem: &[AtomicU64]) {
    let Some(holder) = claim::holder(mem) else {
        return;
    };
    let image = to_bytes(mem);
    // A header that is not a queue region is reported first: there the claim word is as
    // meaningless as the rest.
    let foreign = match Layout::read(mem) {
        Ok(_) | Err(LayoutError::Unconfigured) => None,
        Err(e) => Some(e),
    };
    match (Writer::attach(mem, CLIENT), foreign) {
        (Err(AttachError::Layout(e)), Some(f)) => {
            assert_eq!(
                e, f,
                "attach reported another header error than Layout::read"
            )
        }
        (Err(AttachError::Claimed { holder: h }), None) => {
            assert_eq!(
                h, holder,
                "Claimed names another holder than the claim word"
            )
        }
        (Err(e), _) => panic!("attach to a region claimed by {holder} failed with {e:?}"),
        (Ok(_), _) => panic!("attach took a region claimed by {holder}"),
    }
    assert!(
        to_bytes(mem) == image,
        "a refused attach changed the region"
    );
    if let Err(e) = claim::reclaim(mem, holder) {
        panic!("reclaim of the holder {holder} found {e:?}");
    }
}

fn check_attach_and_read(mem: &[AtomicU64], probe: &Probe) {
    check_claimed(mem);
    let region = match Region::open(mem) {
        Ok(r) => r,
        Err(e) => {
            // A typed error is the right answer for a bad header; attach must agree.
            match Writer::attach(mem, CLIENT) {
                Err(AttachError::Layout(e2)) => {
                    assert_eq!(e, e2, "Region::open and Writer::attach disagree")
                }
                Err(other) => panic!("Region::open says {e:?}, Writer::attach says {other:?}"),
                Ok(_) => panic!("Writer::attach accepted a region Region::open rejects ({e})"),
            }
            return;
        }
    };
    let layout = *region.layout();
    let s = layout.data_size;
    assert!(
        layout.region_len <= mem.len() as u64 * 8,
        "layout {layout:?} is larger than the {} bytes of memory",
        mem.len() * 8
    );
    let before = read_all(&region);

    // An arbitrary descriptor, often a perturbed entry: read only if it is an entry.
    let picked = before.values().nth(usize::from(probe.perturb >> 2));
    let d = match (probe.perturb & 3, picked) {
        (0, Some(&(d, _))) => d,
        (1, Some(&(d, _))) => Descriptor {
            seq: d.seq ^ probe.field,
            ..d
        },
        (2, Some(&(d, _))) => Descriptor {
            offset: d.offset ^ probe.field,
            ..d
        },
        (3, Some(&(d, _))) => Descriptor {
            length: d.length ^ probe.field,
            ..d
        },
        _ => Descriptor {
            seq: probe.field,
            offset: probe.tail_offset,
            length: u64::from(probe.tail_len),
        },
    };
    let mut buf = vec![0u8; (s + 8) as usize];
    if let Ok(n) = region.read_payload(&d, &mut buf) {
        match before.get(&d.seq) {
            Some((e, bytes)) if *e == d => {
                assert_eq!(&buf[..n], &bytes[..], "two reads of {d:?} differ")
            }
            _ => panic!("read_payload accepted {d:?}, which is not an entry of the region"),
        }
    }

    // A tail read: Ok exactly when the range lies inside the tail.
    let mut tail = vec![0u8; usize::from(probe.tail_len)];
    let inside = probe
        .tail_offset
        .checked_add(tail.len() as u64)
        .is_some_and(|e| e <= layout.tail_len);
    match region.read_tail(probe.tail_offset, &mut tail) {
        Ok(()) => {
            assert!(inside, "read_tail accepted a range outside the tail");
            let image = to_bytes(mem);
            let at = (layout.tail_offset + probe.tail_offset) as usize;
            assert_eq!(
                &tail[..],
                &image[at..at + tail.len()],
                "read_tail bytes differ"
            );
        }
        Err(e) => assert!(!inside, "read_tail refused a range inside the tail: {e}"),
    }

    // Attach: recovery of the cursor.
    let hints = region.hints();
    let top = before.keys().next_back().copied().unwrap_or(0);
    let mut writer = match Writer::attach(mem, CLIENT) {
        Ok(w) => w,
        Err(AttachError::Exhausted) => {
            assert!(
                hints.next_seq > MAX_SEQ || top + 1 > MAX_SEQ,
                "attach reported exhaustion with next_seq hint {} and newest seq {top}",
                hints.next_seq
            );
            return;
        }
        Err(e) => panic!("Writer::attach failed on a region Region::open accepts: {e}"),
    };
    assert!(
        writer.next_seq() > top && writer.next_seq() >= hints.next_seq,
        "attach would reuse seqs: next_seq {} with newest {top} and hint {}",
        writer.next_seq(),
        hints.next_seq
    );
    if let Err(e) = writer.check_invariants() {
        panic!("check_invariants after attach: {e}");
    }
    let after_hints = writer.region().hints();
    assert_eq!(
        after_hints.epoch,
        hints.epoch.wrapping_add(1),
        "attach must increment the epoch"
    );
    let mut known: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let after = read_all(writer.region());
    for (seq, (d, bytes)) in &after {
        match before.get(seq) {
            Some((d0, b0)) => {
                assert_eq!(d, d0, "attach changed entry {seq}");
                assert_eq!(bytes, b0, "attach changed the payload of entry {seq}");
            }
            None => panic!("attach created entry {d:?}"),
        }
        known.insert(*seq, bytes.clone());
    }
    if top != 0 {
        assert!(
            after.contains_key(&top),
            "attach dropped the newest entry {top}"
        );
    }

    // Fresh commits.
    let mut last = writer.next_seq() - 1;
    for &c in probe.commits.iter().filter(|&&c| c != 0) {
        let len = (u64::from(c) % s + 1) as usize;
        let seq = writer.next_seq();
        assert!(seq > last, "next_seq went back from {last} to {seq}");
        let head = writer.region().hints().data_head;
        let payload = payload_for(seq, len);
        match writer.commit(&payload) {
            Ok(got) => assert_eq!(got, seq, "commit returned another seq than next_seq"),
            Err(CommitError::Exhausted) => {
                assert!(
                    seq >= MAX_SEQ || placement(head, len as u64, s).is_none(),
                    "commit of {len} bytes reported exhaustion at seq {seq}, head {head}"
                );
                break;
            }
            Err(e) => panic!("commit of {len} bytes into a {s}-byte ring failed: {e}"),
        }
        last = seq;
        if let Err(e) = writer.check_invariants() {
            panic!("check_invariants after commit {seq}: {e}");
        }
        known.insert(seq, payload);
        let now = read_all(writer.region());
        assert_eq!(
            now.keys().next_back(),
            Some(&seq),
            "the entry just committed is not the newest"
        );
        for (seq, (d, bytes)) in &now {
            match known.get(seq) {
                Some(b) => assert_eq!(b, bytes, "entry {d:?} does not hold its bytes"),
                None => panic!("entry {d:?} appeared that was neither recovered nor committed"),
            }
        }
    }

    // A second attach (the client restarts): no seq is ever repeated.
    let used = writer.next_seq() - 1;
    // The writer is gone (the client restarted: its claim is released); attach again.
    drop(writer);
    let again = match Writer::attach(mem, CLIENT) {
        Ok(w) => w,
        Err(e) => panic!("re-attach to a region this writer left failed: {e}"),
    };
    assert!(
        again.next_seq() > used,
        "re-attach would repeat seq {} (last used {used})",
        again.next_seq()
    );
    if let Err(e) = again.check_invariants() {
        panic!("check_invariants after re-attach: {e}");
    }
    for (seq, (d, bytes)) in read_all(again.region()) {
        assert_eq!(
            known.get(&seq),
            Some(&bytes),
            "re-attach kept {d:?} with bytes it never held"
        );
    }
}
