//! Fuzz target `retain_arbitrary`: the host's [`retain`] over an arbitrary image with arbitrary
//! `pre`/`post` descriptor sets (DESIGN §5.3).

use shmsnap_core::format::header_words;
use shmsnap_core::{
    image_entries, read_descriptor_bytes, retain, AttachError, Descriptor, Hints, Layout,
    LayoutRequest, Region, RetainError, Writer, MAX_SEQ,
};

use crate::image::ImageSpec;
use crate::input::Input;
use crate::words::{from_bytes, to_bytes};

// ------------------------------------------------------------------------------------------
// retain_arbitrary
// ------------------------------------------------------------------------------------------

/// How one slot of a `pre` set is made.
#[derive(Debug, Clone, Copy)]
enum PreSlot {
    Empty,
    /// The image's descriptor for the slot (empty if it has none).
    Image,
    /// An arbitrary descriptor.
    Raw(Descriptor),
    /// The image's descriptor with one field xored.
    Tweaked(u8, u64),
}

/// How one slot of a `post` set is made from `pre`.
#[derive(Debug, Clone, Copy)]
enum PostSlot {
    Same,
    Empty,
    Image,
    Raw(Descriptor),
    Tweaked(u8, u64),
}

fn tweak(d: Descriptor, field: u8, x: u64) -> Descriptor {
    match field % 3 {
        0 => Descriptor {
            seq: d.seq ^ x,
            ..d
        },
        1 => Descriptor {
            offset: d.offset ^ x,
            ..d
        },
        _ => Descriptor {
            length: d.length ^ x,
            ..d
        },
    }
}

fn raw_descriptor(input: &mut Input<'_>) -> Descriptor {
    Descriptor {
        seq: input.wide(),
        offset: input.wide(),
        length: input.wide(),
    }
}

/// The host's [`retain`] over an arbitrary image with arbitrary `pre`/`post` sets.
///
/// Checks: `retain` never panics; on success every kept descriptor is valid for its slot,
/// equal in `pre` and `post`, and present in the rewritten image; the image holds exactly
/// `kept` valid descriptors, a valid header for the layout, and the returned hints, with
/// `next_seq` above every kept seq and at least the live hint; the data ring and tail are
/// untouched; attach to the rewritten image keeps only kept entries. On failure the image is
/// untouched and the error's precondition really holds.
///
/// # Panics
///
/// Only on a violated invariant.
pub fn retain_arbitrary(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.u8();
    let live_next_seq = input.wide();
    let spec = ImageSpec::decode(&mut input);
    let e = spec.layout.entries as usize;
    let len_adjust = |input: &mut Input<'_>| match input.u8() % 8 {
        0 => e.saturating_sub(1),
        1 => e + 3,
        _ => e,
    };
    let pre_len = len_adjust(&mut input);
    let post_len = len_adjust(&mut input);
    let mut pre_spec = Vec::with_capacity(pre_len);
    for _ in 0..pre_len {
        pre_spec.push(match input.u8() % 8 {
            0 => PreSlot::Empty,
            1 => PreSlot::Raw(raw_descriptor(&mut input)),
            2 => PreSlot::Tweaked(input.u8(), input.wide()),
            _ => PreSlot::Image,
        });
    }
    let mut post_spec = Vec::with_capacity(post_len);
    for _ in 0..post_len {
        post_spec.push(match input.u8() % 10 {
            0 => PostSlot::Empty,
            1 => PostSlot::Image,
            2 => PostSlot::Raw(raw_descriptor(&mut input)),
            3 => PostSlot::Tweaked(input.u8(), input.wide()),
            _ => PostSlot::Same,
        });
    }
    let mem = spec.build(&mut input);
    let image = to_bytes(&mem[..]);

    // The live region's layout: the image's own, when it has one, or the spec's (which the
    // image may contradict), or either with another region length.
    let own = Layout::read_bytes(&image);
    let mut layout = match (choice & 3, own) {
        (0 | 1, Ok(l)) => l,
        _ => spec.layout,
    };
    if choice & 4 != 0 {
        let len = layout.region_len ^ (u64::from(choice >> 3) * 8);
        if let Ok(l) = Layout::new(
            len,
            LayoutRequest {
                entries: layout.entries,
                data_size: layout.data_size,
            },
        ) {
            layout = l;
        }
    }
    let from_image = |slot: usize| {
        read_descriptor_bytes(&image, &layout, slot as u64).unwrap_or(Descriptor::EMPTY)
    };
    let pre: Vec<Descriptor> = pre_spec
        .iter()
        .enumerate()
        .map(|(slot, p)| match *p {
            PreSlot::Empty => Descriptor::EMPTY,
            PreSlot::Image => from_image(slot),
            PreSlot::Raw(d) => d,
            PreSlot::Tweaked(f, x) => tweak(from_image(slot), f, x),
        })
        .collect();
    let post: Vec<Descriptor> = post_spec
        .iter()
        .enumerate()
        .map(|(slot, p)| {
            let same = pre.get(slot).copied().unwrap_or_default();
            match *p {
                PostSlot::Same => same,
                PostSlot::Empty => Descriptor::EMPTY,
                PostSlot::Image => from_image(slot),
                PostSlot::Raw(d) => d,
                PostSlot::Tweaked(f, x) => tweak(same, f, x),
            }
        })
        .collect();

    // What retain gets: the whole image, exactly header + descriptor ring, or less.
    let meta_len = layout.meta_len() as usize;
    let cut = match (choice >> 5) & 3 {
        0 => meta_len.min(image.len()),
        1 => meta_len.saturating_sub(1 + usize::from(choice >> 7) * 4095),
        _ => image.len(),
    };
    let mut meta = image[..cut.min(image.len())].to_vec();
    let original = meta.clone();
    check_retain(&mut meta, &original, &layout, &pre, &post, live_next_seq);
}

fn check_retain(
    meta: &mut [u8],
    original: &[u8],
    layout: &Layout,
    pre: &[Descriptor],
    post: &[Descriptor],
    live_next_seq: u64,
) {
    let e = layout.entries as usize;
    let result = retain(meta, layout, pre, post, live_next_seq);
    let r = match result {
        Ok(r) => r,
        Err(err) => {
            assert_eq!(
                meta, original,
                "retain wrote into the image and then failed ({err})"
            );
            match err {
                RetainError::ImageTooShort { needed, got } => assert!(
                    needed == layout.meta_len() && got == meta.len() && (got as u64) < needed,
                    "ImageTooShort {{ needed: {needed}, got: {got} }} for {} bytes, meta_len {}",
                    meta.len(),
                    layout.meta_len()
                ),
                RetainError::BufferTooSmall { needed, got } => assert!(
                    needed == layout.entries && (got == pre.len() || got == post.len()) && got < e,
                    "BufferTooSmall {{ needed: {needed}, got: {got} }} with pre {} post {}",
                    pre.len(),
                    post.len()
                ),
                RetainError::Layout(le) => {
                    let parsed = header_layout(meta, layout.region_len);
                    assert!(
                        parsed.is_none(),
                        "retain says the image header is bad ({le}), but it parses as {parsed:?}"
                    );
                }
                RetainError::LayoutChanged => {
                    let parsed = header_layout(meta, layout.region_len);
                    assert!(
                        parsed.is_some_and(|p| p != *layout),
                        "retain says the layout changed, but the image header gives {parsed:?}"
                    );
                }
                other => panic!("retain failed with an error this harness does not know: {other}"),
            }
            return;
        }
    };
    assert!(
        pre.len() >= e && post.len() >= e && meta.len() as u64 >= layout.meta_len(),
        "retain accepted sets of {}/{} descriptors and {} bytes for {layout:?}",
        pre.len(),
        post.len(),
        meta.len()
    );
    assert_eq!(
        header_layout(original, layout.region_len),
        Some(*layout),
        "retain accepted an image whose header is not the live layout"
    );
    let mut kept = 0;
    let mut newest: Option<Descriptor> = None;
    let mut n_pre = 0;
    let mut n_post = 0;
    for slot in 0..e {
        let (p, q) = (pre[slot], post[slot]);
        let valid = p.is_valid_for(layout, slot as u64);
        n_pre += u64::from(valid);
        n_post += u64::from(q.is_valid_for(layout, slot as u64));
        let in_image = read_descriptor_bytes(meta, layout, slot as u64);
        if valid && p == q {
            kept += 1;
            assert_eq!(
                in_image,
                Some(p),
                "kept descriptor {p:?} is not in slot {slot} of the rewritten image"
            );
            if newest.is_none_or(|n| p.seq > n.seq) {
                newest = Some(p);
            }
        } else {
            assert_eq!(
                in_image, None,
                "slot {slot} holds {in_image:?} in the rewritten image, but pre {p:?} / post {q:?} do not prove it"
            );
        }
    }
    assert_eq!(
        r.kept, kept,
        "retain reports {} kept, {kept} were proven",
        r.kept
    );
    assert_eq!(
        image_entries(meta, layout).count() as u64,
        kept,
        "the rewritten image does not hold exactly the kept entries"
    );
    assert_eq!(
        (r.pre, r.post),
        (n_pre, n_post),
        "pre/post counts are wrong"
    );
    assert!(r.kept <= r.pre && r.dropped() == r.pre - r.kept);
    assert_eq!(r.newest, newest, "newest kept entry");
    assert!(
        r.hints.next_seq > newest.map_or(0, |d| d.seq)
            && r.hints.next_seq >= live_next_seq
            && r.hints.next_seq >= 1,
        "hint next_seq {} does not exceed every kept seq (newest {newest:?}) and the live hint {live_next_seq}",
        r.hints.next_seq
    );
    assert_eq!(
        r.hints.data_head,
        newest.map_or(0, |d| d.end()),
        "data_head hint"
    );
    assert_eq!(
        Hints::read_bytes(meta),
        r.hints,
        "hints written into the image"
    );
    assert_eq!(
        header_layout(meta, layout.region_len),
        Some(*layout),
        "the rewritten header is not the live layout"
    );
    let meta_len = layout.meta_len() as usize;
    assert_eq!(
        &meta[meta_len..],
        &original[meta_len..],
        "retain touched bytes past the descriptor ring"
    );

    // A restore from the rewritten image keeps only what retain kept.
    if (meta.len() as u64) < layout.region_len {
        return;
    }
    let restored = from_bytes(meta);
    let region = match Region::open(&restored[..]) {
        Ok(r) => r,
        Err(e) => panic!("the rewritten image does not open: {e}"),
    };
    assert_eq!(*region.layout(), *layout, "restored layout");
    assert_eq!(
        shmsnap_core::claim::holder(&restored[..]),
        None,
        "retain left a claim in the image"
    );
    match Writer::attach(&restored[..], crate::CLIENT) {
        Ok(w) => {
            assert!(w.next_seq() >= r.hints.next_seq, "restore would reuse seqs");
            if let Err(e) = w.check_invariants() {
                panic!("check_invariants after attach to a retained image: {e}");
            }
            for d in w.region().entries() {
                assert_eq!(
                    pre.get(layout.slot_of(d.seq) as usize),
                    Some(&d),
                    "restore holds {d:?}, which retain did not keep"
                );
            }
            if let Some(n) = newest {
                assert_eq!(
                    w.region().newest(),
                    Some(n),
                    "restore lost the newest kept entry"
                );
            }
        }
        Err(AttachError::Exhausted) => assert!(r.hints.next_seq > MAX_SEQ),
        Err(e) => panic!("attach to a retained image failed: {e}"),
    };
}

/// The layout in an image's header, checked against `region_len` bytes.
fn header_layout(image: &[u8], region_len: u64) -> Option<Layout> {
    Layout::from_header_words(&header_words(image)?, region_len).ok()
}
