//! The order of a delta's copy: the newest entries' data pages first, and a stop once the
//! entries left would be dropped by `post` anyway (DESIGN §11, "The newest entries first").
//!
//! Under a writer that turns the data ring over faster than the host copies it, a copy of
//! every written page in offset order starves: by `post` every entry of `pre` was overwritten
//! (issue 27). The writer evicts oldest first, so the entries `post` will keep are the newest
//! ones. The plan therefore copies, after the meta pages and every planned page outside the
//! data ring (always), the planned data-ring granules entry by entry in descending seq; before
//! an entry it looks at the entry's live descriptor, and once one is gone (evicted: so is
//! every older one) it stops. Planned ring granules of no entry of `pre` are copied last, and
//! only if nothing stopped the copy. What was planned but not copied is the **leftover**: left
//! out of the delta, and kept in the carry of the delta's tip for the next delta to copy
//! ([`Carry::after_delta`](super::Carry)).
//!
//! An entry is kept only if [`keep`](CopyPlan::keep) vouches that each of its planned
//! granules was copied: its bytes outside the plan are the previous image's, which claim 1 of
//! DESIGN §11 makes its committed bytes; its bytes in the leftover would be the previous
//! image's too, which nothing vouches for.
//!
//! Descriptors come from `pre` (validated: each payload lies inside the ring without
//! wrapping); a hostile set of overlapping descriptors costs at most a bounded walk (a budget
//! of granule steps), after which the copy stops as if the next entry were gone: a stop only
//! ever withholds entries.

use std::os::fd::AsFd;

use shmsnap_core::{Descriptor, Layout, Region, WordMemory};

use crate::chain::{plan_runs, ChainError, DeltaWriter, Run, GRANULE};

#[cfg(test)]
thread_local! {
    /// Test hook: the copy stops after this many entries, as if the next one were gone.
    pub(crate) static STOP_AFTER: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// Whether the test hook stops the copy before the `n`-th entry.
fn hook_stops(n: usize) -> bool {
    #[cfg(test)]
    {
        STOP_AFTER.with(|s| s.get()).is_some_and(|k| n >= k)
    }
    #[cfg(not(test))]
    {
        let _ = n;
        false
    }
}

/// What a delta copies, in which order, and what it copied.
#[derive(Debug)]
pub(crate) struct CopyPlan {
    /// Planned runs below the data ring's whole granules (the meta pages): always copied,
    /// in their own writes (the retained meta replaces them).
    meta: Vec<Run>,
    /// Planned runs past the data ring's whole granules (the tail): always copied.
    always: Vec<Run>,
    /// Image offset of the first whole granule of the data ring.
    ring_lo: u64,
    /// Per whole granule of the data ring (from `ring_lo`): planned.
    want: Vec<bool>,
    /// Per whole granule of the data ring: copied. Invariant: `done[g]` implies `want[g]`.
    done: Vec<bool>,
    /// Per slot: the seq of the entry of `pre` in it whose planned granules were all copied
    /// (0: none).
    complete: Vec<u64>,
    /// The copy stopped before an entry (it was gone, or the walk budget ran out).
    stopped: bool,
}

/// Granule index range of image bytes `lo..hi`, widened to whole granules.
fn granules(lo: u64, hi: u64) -> (u64, u64) {
    (lo / GRANULE, hi.div_ceil(GRANULE))
}

impl CopyPlan {
    /// Splits the planned `runs` (from [`plan_runs`]: sorted, granule-aligned, merged) of an
    /// image whose queue layout is `layout` into the part always copied and the data ring's
    /// whole granules, copied by entry.
    pub(crate) fn new(runs: &[Run], layout: &Layout) -> CopyPlan {
        let ring_lo = layout.data_offset.div_ceil(GRANULE) * GRANULE;
        let ring_hi =
            (layout.data_offset.saturating_add(layout.data_size) / GRANULE * GRANULE).max(ring_lo);
        let n = ((ring_hi - ring_lo) / GRANULE) as usize;
        let mut want = vec![false; n];
        let (mut meta, mut always) = (Vec::new(), Vec::new());
        let part = |to: &mut Vec<Run>, a: u64, b: u64| {
            if a < b {
                to.push(Run {
                    offset: a,
                    len: b - a,
                });
            }
        };
        for r in runs {
            let (lo, hi) = (r.offset, r.end());
            part(&mut meta, lo, hi.min(ring_lo));
            part(&mut always, lo.max(ring_hi), hi);
            let (a, b) = (lo.max(ring_lo), hi.min(ring_hi));
            if a < b {
                let (ga, gb) = ((a - ring_lo) / GRANULE, (b - ring_lo) / GRANULE);
                want[ga as usize..gb as usize].fill(true);
            }
        }
        CopyPlan {
            meta,
            always,
            ring_lo,
            done: vec![false; n],
            want,
            complete: vec![0; layout.entries as usize],
            stopped: false,
        }
    }

    /// Copies into `writer` from `memfd`: the always-copied runs, then the planned ring
    /// granules of the entries of `pre` newest first while each is still live in `region`,
    /// then (if nothing stopped) the planned ring granules of no entry. `buf` is the copy
    /// buffer.
    ///
    /// # Errors
    ///
    /// As [`DeltaWriter::copy_ranges_from`].
    pub(crate) fn copy<M: WordMemory + ?Sized>(
        &mut self,
        writer: &mut DeltaWriter<'_>,
        memfd: impl AsFd,
        region: &Region<'_, M>,
        pre: &[Descriptor],
        buf: &mut Vec<u8>,
    ) -> Result<(), ChainError> {
        let memfd = memfd.as_fd();
        writer.copy_ranges_from(memfd, &self.meta, buf)?;
        writer.copy_ranges_from(memfd, &self.always, buf)?;
        let layout = *region.layout();
        let mut order: Vec<(u64, Descriptor)> = pre
            .iter()
            .enumerate()
            .filter(|(_, d)| d.seq != 0)
            .map(|(slot, d)| (slot as u64, *d))
            .collect();
        order.sort_unstable_by_key(|&(_, d)| std::cmp::Reverse(d.seq));
        // A valid writer's entries are disjoint, so the walk visits each granule about once;
        // hostile overlapping descriptors cannot make it longer than this.
        let mut budget = 2 * self.want.len() as u64 + 4 * order.len() as u64 + 4;
        for (n, (slot, d)) in order.into_iter().enumerate() {
            // Whether `post` would drop it is all this asks: a guess that only decides where
            // the copy stops (the writer evicts oldest first, so every older entry is gone
            // too). `post` alone decides what is kept.
            if hook_stops(n) || region.read_descriptor(slot) != Some(d) {
                self.stopped = true;
                break;
            }
            let start = layout.data_offset + layout.ring_pos(d.offset);
            let (ga, gb) = granules(start, start.saturating_add(d.length));
            let lo = self.ring_lo / GRANULE;
            let (ga, gb) = (
                ga.saturating_sub(lo).min(self.want.len() as u64),
                gb.saturating_sub(lo).min(self.want.len() as u64),
            );
            let steps = gb - ga + 1;
            if steps > budget {
                self.stopped = true;
                break;
            }
            budget -= steps;
            self.copy_granules(writer, memfd, ga as usize..gb as usize, buf)?;
            if let Some(c) = self.complete.get_mut(slot as usize) {
                *c = d.seq;
            }
        }
        if !self.stopped {
            self.copy_granules(writer, memfd, 0..self.want.len(), buf)?;
        }
        Ok(())
    }

    /// Copies the planned, not yet copied granules of `range` (ring granule indices),
    /// gathered into as few writes as the file layout allows.
    fn copy_granules(
        &mut self,
        writer: &mut DeltaWriter<'_>,
        memfd: impl AsFd,
        range: std::ops::Range<usize>,
        buf: &mut Vec<u8>,
    ) -> Result<(), ChainError> {
        let mut stretches = Vec::new();
        let mut g = range.start;
        while g < range.end {
            if !self.want[g] || self.done[g] {
                g += 1;
                continue;
            }
            let first = g;
            while g < range.end && self.want[g] && !self.done[g] {
                self.done[g] = true;
                g += 1;
            }
            stretches.push(Run {
                offset: self.ring_lo + first as u64 * GRANULE,
                len: (g - first) as u64 * GRANULE,
            });
        }
        writer.copy_ranges_from(memfd, &stretches, buf)
    }

    /// `true` if every planned granule of `d`, an entry of `pre`, was copied (the predicate of
    /// [`PreCopy::finish_where`](shmsnap_core::PreCopy::finish_where)).
    pub(crate) fn keep(&self, layout: &Layout, d: &Descriptor) -> bool {
        let slot = layout.slot_of(d.seq) as usize;
        d.seq != 0 && self.complete.get(slot) == Some(&d.seq)
    }

    /// The copy stopped before an entry of `pre`.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The planned ring granules not copied, as runs (sorted, merged).
    pub(crate) fn leftover(&self) -> Vec<Run> {
        self.ring_runs(|want, done| want && !done)
    }

    /// The runs the delta carries: the always-copied ones and the copied ring granules, with
    /// the meta pages (`0..meta_len`), for an image of `image_len` bytes.
    pub(crate) fn copied_runs(&self, meta_len: u64, image_len: u64) -> Vec<Run> {
        let ring = self.ring_runs(|_, done| done);
        let always = self.meta.iter().chain(&self.always).copied();
        plan_runs(always.chain(ring), meta_len, image_len)
    }

    fn ring_runs(&self, pick: impl Fn(bool, bool) -> bool) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        for (g, (&w, &d)) in self.want.iter().zip(&self.done).enumerate() {
            if !pick(w, d) {
                continue;
            }
            let offset = self.ring_lo + g as u64 * GRANULE;
            match out.last_mut() {
                Some(last) if last.end() == offset => last.len += GRANULE,
                _ => out.push(Run {
                    offset,
                    len: GRANULE,
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_core::LayoutRequest;

    fn run(offset: u64, len: u64) -> Run {
        Run { offset, len }
    }

    #[test]
    fn the_plan_splits_meta_ring_and_tail_and_leaves_out_only_ring_granules() {
        let g = GRANULE;
        let layout = Layout::new(
            64 * g,
            LayoutRequest {
                entries: 8,
                data_size: 16 * g,
            },
        )
        .unwrap();
        let (lo, hi) = (layout.data_offset, layout.data_offset + layout.data_size);
        // One run from the meta pages into the ring, one across the ring's end into the tail.
        let runs = [run(0, lo + 2 * g), run(hi - 3 * g, 5 * g)];
        let plan = CopyPlan::new(&runs, &layout);
        assert_eq!(plan.meta, [run(0, lo)]);
        assert_eq!(plan.always, [run(hi, 2 * g)]);
        // Nothing copied yet: the leftover is exactly the planned ring granules.
        assert_eq!(plan.leftover(), [run(lo, 2 * g), run(hi - 3 * g, 3 * g)]);
        assert_eq!(
            plan.copied_runs(layout.meta_len(), 64 * g),
            [run(0, lo), run(hi, 2 * g)]
        );
        // No entry vouched for before a copy.
        let d = Descriptor {
            seq: 1,
            offset: 0,
            length: 8,
        };
        assert!(!plan.keep(&layout, &d));
    }
}
