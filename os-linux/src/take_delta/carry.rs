//! The pages attempts scanned since the chain's tip image, which no image recorded yet: what
//! the next delta must copy besides what its own scan reports (DESIGN §11, "An attempt that
//! is not kept").
//!
//! A scan reports **and clears**: a page it reported is not reported again until it is
//! written again. When an attempt scanned but committed nothing (starved, skipped after its
//! scan, an error after its scan, a pending delta dropped), the pages it reported are known
//! only to it. Folding them into a [`Carry`] that belongs to the tip keeps them: the union of
//! every complete scan since the tip's image covers every page written since that image, so
//! the next delta copies `carry ∪ its own scan` onto the tip and is sound.
//!
//! A `Carry` is created for one tip ([`Carry::new`]) and names it ([`Carry::tip`]); the
//! delta request takes its parent from it, so a carry cannot extend a chain it does not
//! belong to. A committed delta or base starts a new, empty carry for the new tip. A scan that
//! did not complete (an error) may have re-protected pages it never reported: nothing can be
//! carried then, and the caller drops the carry with its chain (the next snapshot is a base).

use crate::chain::{plan_runs, Run, Tip};
use crate::track::WrittenPages;

/// The runs scanned since the tip's image by attempts that committed nothing, plus (while a
/// delta is being taken) its own scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carry {
    /// The link whose image the runs are relative to: the scan that preceded its copy is
    /// the last one *not* folded in here.
    tip: Tip,
    /// Invariant: sorted, non-overlapping and non-adjacent granule-aligned runs inside
    /// `[0, tip.image_len)` (merged by [`plan_runs`]), so their number is at most one per two
    /// granules of the image, however many scans were folded in.
    runs: Vec<Run>,
    /// Complete scans folded in since the tip's image.
    scans: u64,
}

impl Carry {
    /// An empty carry for the chain whose newest durable link is `tip` (right after the scan
    /// that preceded that link's copy).
    pub fn new(tip: Tip) -> Self {
        Carry {
            tip,
            runs: Vec::new(),
            scans: 0,
        }
    }

    /// The carry of a delta just committed as `tip`: the planned granules its copy left out
    /// (DESIGN §11, "The newest entries first"), which no image recorded and no later scan
    /// reports unless they are written again.
    pub(crate) fn after_delta(tip: Tip, leftover: Vec<Run>) -> Self {
        Carry {
            runs: plan_runs(leftover, 0, tip.image_len),
            tip,
            scans: 0,
        }
    }

    /// The link this carry belongs to (a delta taken with it is chained onto it).
    pub fn tip(&self) -> Tip {
        self.tip
    }

    /// The carried runs: sorted, merged, granule-aligned, inside the image.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Complete scans folded in since the tip's image.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// Bytes the carried runs cover.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.len).sum()
    }

    /// Folds in what one **complete** scan of the tracked range reported (offsets relative
    /// to the range, which starts at the region's offset 0). Call it for every scan that
    /// returned `Ok` after the tip's image, before anything else can fail: a scan that
    /// returned an error must not be folded in — drop the carry instead.
    pub fn add_scan(&mut self, written: &WrittenPages) {
        self.add(written.runs().iter().map(|&r| Run::from(r)));
    }

    fn add(&mut self, runs: impl IntoIterator<Item = Run>) {
        let old = std::mem::take(&mut self.runs);
        self.runs = plan_runs(old.into_iter().chain(runs), 0, self.tip.image_len);
        self.scans += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::GRANULE;

    fn tip(len: u64) -> Tip {
        Tip {
            image_len: len,
            strategy: 1,
            base_generation: 1,
            base_image_crc: 0,
            index: 0,
            footer_crc: 0,
        }
    }

    fn run(offset: u64, len: u64) -> Run {
        Run { offset, len }
    }

    #[test]
    fn the_carry_is_the_merged_union_of_every_scan_inside_the_image() {
        let g = GRANULE;
        let mut c = Carry::new(tip(16 * g));
        assert!(c.runs().is_empty());
        c.add([run(2 * g, g), run(8 * g, 2 * g)]);
        c.add([run(3 * g, g), run(9 * g, 3 * g), run(15 * g, 4 * g)]);
        // Adjacent and overlapping runs merge; a run past the image is cut at its end.
        assert_eq!(
            c.runs(),
            &[run(2 * g, 2 * g), run(8 * g, 4 * g), run(15 * g, g)]
        );
        assert_eq!(c.scans(), 2);
        assert_eq!(c.bytes(), 7 * g);
        // An empty scan still counts as one folded in.
        c.add([]);
        assert_eq!(c.scans(), 3);
        assert_eq!(c.bytes(), 7 * g);
    }
}
