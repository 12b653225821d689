//! The host: one snapshot of the live region with core's `PreCopy` (through the testkit's
//! [`host_snapshot`], which also builds the broken twin [`Host::PreAsPost`]), and the check of
//! the kept entries.

use shmsnap_core::{image_entries, Region, WordMemory};
use shmsnap_testkit::{check_image_payloads, host_snapshot, Host, HostSnapshot};

use crate::plan::Plan;
use crate::words::Image;
use crate::{NEVER_COMMITTED, TORN};

/// The outcome of one host snapshot: the testkit's [`HostSnapshot`] (image, `pre`, `post` —
/// really read, even by the broken host — and what `retain` kept) plus the probe's value.
#[derive(Debug)]
pub struct Snapshot {
    /// The copied image after `retain`.
    pub image: Vec<u8>,
    /// Descriptors read before the copy.
    pub pre: Vec<shmsnap_core::Descriptor>,
    /// Descriptors read after the copy (really read, even by the broken host).
    pub post: Vec<shmsnap_core::Descriptor>,
    /// What `retain` kept.
    pub retained: shmsnap_core::Retained,
    /// The value `before_copy` returned.
    pub probe: u64,
}

/// One host snapshot of the live region in `mem`: core's `PreCopy::read`, a word-by-word
/// copy, and core's `PreCopy::finish` (fence, post, live `next_seq`, `retain`) — or, for
/// [`Host::PreAsPost`], `retain` with `pre` passed as `post`. `before_copy` runs between the
/// pre read and the copy (an instrumentation probe).
///
/// # Panics
///
/// If the region's header cannot be read or `retain` rejects the image (the models never
/// change the header, so either is a bug in the model or in core).
pub fn snapshot<M: WordMemory + Image>(
    mem: &M,
    host: Host,
    before_copy: impl FnOnce() -> u64,
) -> Snapshot {
    let region = Region::open(mem).expect("the live header is valid");
    let mut probe = 0;
    let HostSnapshot {
        image,
        pre,
        post,
        retained,
    } = host_snapshot(&region, host, || {
        probe = before_copy();
        mem.image()
    })
    .expect("retain accepts an image of an unchanged layout");
    Snapshot {
        image,
        pre,
        post,
        retained,
        probe,
    }
}

/// Checks the kept entries of a retained image: each is a descriptor that was committed
/// exactly so, and carries exactly the payload committed under its seq.
///
/// # Panics
///
/// With [`NEVER_COMMITTED`] or [`TORN`].
pub fn check_kept(plan: &Plan, image: &[u8]) {
    for d in image_entries(image, &plan.layout) {
        assert!(
            plan.committed(d.seq) == Some(d),
            "{NEVER_COMMITTED}: image keeps {d:?}; committed: {:?}",
            plan.committed
        );
    }
    if let Err(e) = check_image_payloads(image, &plan.layout) {
        panic!("{TORN}: {e}");
    }
}
