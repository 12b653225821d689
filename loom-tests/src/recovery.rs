//! Recovery: attach to a region a writer left (or a restored image) and check what it holds.

use shmsnap_core::WordMemory;

use crate::plan::Plan;
use crate::{NEVER_COMMITTED, RECOVERY, SEQ_REPEAT, TORN};

/// Attaches a writer to `mem` (a region a writer left, or a restored image) and checks the
/// recovered state: `check_invariants` passes, every valid entry is a committed descriptor
/// with exactly its committed payload, and the next seq exceeds `published`. Returns the
/// writer, ready to commit. A claim the dead writer left is reclaimed first, as its
/// supervisor does before a restart.
///
/// # Panics
///
/// With [`RECOVERY`], [`NEVER_COMMITTED`], [`TORN`] or [`SEQ_REPEAT`].
pub fn check_recovery<'m, M: WordMemory + ?Sized>(
    plan: &Plan,
    mem: &'m M,
    published: u64,
) -> shmsnap_core::Writer<'m, M> {
    if let Some(dead) = shmsnap_core::claim::holder(mem) {
        shmsnap_core::claim::reclaim(mem, dead)
            .unwrap_or_else(|e| panic!("{RECOVERY}: reclaim of {dead} found {e:?}"));
    }
    let w = shmsnap_core::Writer::attach(mem, shmsnap_testkit::CLIENT)
        .unwrap_or_else(|e| panic!("{RECOVERY}: attach failed: {e}"));
    if let Err(e) = w.check_invariants() {
        panic!("{RECOVERY}: invariants after attach: {e}");
    }
    for d in w.region().entries() {
        assert!(
            plan.committed(d.seq) == Some(d),
            "{NEVER_COMMITTED}: recovered {d:?}; committed: {:?}",
            plan.committed
        );
        let mut buf = vec![0u8; d.length as usize];
        w.region()
            .read_payload(&d, &mut buf)
            .unwrap_or_else(|e| panic!("{RECOVERY}: entry {} unreadable: {e}", d.seq));
        assert!(
            buf == shmsnap_testkit::payload_for(d.seq, buf.len()),
            "{TORN}: recovered entry {} has foreign bytes",
            d.seq
        );
    }
    assert!(
        w.next_seq() > published,
        "{SEQ_REPEAT}: next seq {} after recovery, but seq {published} was published",
        w.next_seq()
    );
    w
}
