//! Recovery from hostile regions: attach after arbitrary truncation or byte corruption never
//! panics, never yields an entry outside the ring, and never repeats a seq.

use proptest::prelude::*;
use shmsnap_core::{claim, AttachError, Layout, LayoutError, LayoutRequest, Region, Writer};
use shmsnap_testkit::{from_bytes, payload_for, to_bytes, zeroed_words};

const REQ: LayoutRequest = LayoutRequest {
    entries: 8,
    data_size: 512,
};
const REGION: usize = 4 * 4096;

/// A region image after `lens.len()` commits.
fn image(lens: &[usize]) -> Vec<u8> {
    let mem = zeroed_words(REGION);
    let mut w = Writer::init(&mem[..], REQ, shmsnap_testkit::CLIENT).unwrap();
    for &len in lens {
        w.commit(&payload_for(w.next_seq(), len)).unwrap();
    }
    drop(w); // the client exits: its claim is released
    to_bytes(&mem[..])
}

/// Everything a client does on start, on a possibly hostile image.
fn recover(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mem = from_bytes(bytes);
    // A corrupted claim word: a second writer is refused (naming the "holder") until the
    // holder is reclaimed as dead — unless the header itself is not a queue region, which is
    // reported first (a claim word in foreign memory means nothing).
    if let Some(holder) = claim::holder(&mem[..]) {
        let refused = Writer::attach(&mem[..], shmsnap_testkit::CLIENT).unwrap_err();
        match Layout::read(&mem[..]) {
            Ok(_) | Err(LayoutError::Unconfigured) => {
                prop_assert_eq!(refused, AttachError::Claimed { holder })
            }
            Err(e) => prop_assert_eq!(refused, AttachError::Layout(e)),
        }
        prop_assert!(claim::reclaim(&mem[..], holder).is_ok());
    }
    let Ok(region) = Region::open(&mem[..]) else {
        // A typed error is the right answer for a bad header; attach must agree.
        prop_assert!(Writer::attach(&mem[..], shmsnap_testkit::CLIENT).is_err());
        return Ok(());
    };
    let layout = *region.layout();
    let mut max_seq = region.hints().next_seq.saturating_sub(1);
    for d in region.entries() {
        prop_assert!(d.is_valid_for(&layout, layout.slot_of(d.seq)));
        prop_assert!(layout.ring_pos(d.offset) + d.length <= layout.data_size);
        let mut buf = vec![0u8; d.length as usize];
        prop_assert_eq!(region.read_payload(&d, &mut buf), Ok(d.length as usize));
        max_seq = max_seq.max(d.seq);
    }
    let Ok(mut w) = Writer::attach(&mem[..], shmsnap_testkit::CLIENT) else {
        return Ok(());
    };
    w.check_invariants().map_err(TestCaseError::fail)?;
    // Whatever survived is readable, and new commits neither repeat a seq nor disturb it.
    for len in [1, 100, 512] {
        let seq = w.next_seq();
        prop_assert!(seq > max_seq);
        prop_assert_eq!(w.commit(&payload_for(seq, len)), Ok(seq));
        w.check_invariants().map_err(TestCaseError::fail)?;
        let newest = w.region().newest().unwrap();
        prop_assert_eq!(newest.seq, seq);
        let mut buf = vec![0u8; len];
        w.region().read_payload(&newest, &mut buf).unwrap();
        prop_assert_eq!(buf, payload_for(seq, len));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn attach_survives_byte_corruption(
        lens in prop::collection::vec(1usize..=128, 0..30),
        flips in prop::collection::vec((0usize..REGION, any::<u8>()), 1..40),
        descriptor_flips in prop::collection::vec((0usize..8 * 32, any::<u8>()), 0..20),
    ) {
        let mut img = image(&lens);
        for (at, v) in flips {
            img[at] ^= v;
        }
        // Aim some of the corruption at the descriptor ring, where it matters most.
        for (at, v) in descriptor_flips {
            img[4096 + at] ^= v;
        }
        recover(&img)?;
    }

    #[test]
    fn attach_survives_truncation(
        lens in prop::collection::vec(1usize..=128, 0..30),
        keep in 0usize..REGION,
    ) {
        let img = image(&lens);
        recover(&img[..keep])?;
    }

    #[test]
    fn attach_survives_arbitrary_descriptor_words(
        lens in prop::collection::vec(1usize..=128, 0..30),
        words in prop::collection::vec((0usize..32, any::<u64>()), 1..16),
        hint in prop_oneof![0u64..64, any::<u64>()],
    ) {
        let mut img = image(&lens);
        for (w, v) in words {
            img[4096 + w * 8..4096 + w * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        img[16 * 8..17 * 8].copy_from_slice(&hint.to_le_bytes());
        recover(&img)?;
    }
}

#[test]
fn attach_keeps_every_entry_of_an_intact_region() {
    let img = image(&[100, 7, 300, 64, 1, 200]);
    let mem = from_bytes(&img);
    let before: Vec<_> = Region::open(&mem[..]).unwrap().entries().collect();
    let w = Writer::attach(&mem[..], shmsnap_testkit::CLIENT).unwrap();
    let after: Vec<_> = w.region().entries().collect();
    assert_eq!(before, after);
    assert_eq!(w.next_seq(), 7);
    assert!(!after.is_empty());
}
