//! How far the bucket is behind: the persisted local points not yet in it.
//!
//! The lag is the age of the **oldest persisted local point that is not in the bucket**: it
//! grows while uploads do not happen for any reason (no lease, a wiped prefix waiting for its
//! base, an outage, a long upload, a dropped point) and falls to 0 only when the newest local
//! point is in the bucket. A point that will never be uploaded (superseded by a newer base,
//! cut from its chain) keeps the lag growing until a newer point is in the bucket.

use std::collections::VecDeque;
use std::time::Instant;

use crate::replica::layout::PointId;

/// Points remembered at most; beyond, only the time of the first forgotten one is kept (the
/// lag stays exact for the oldest points, which are the ones it reports).
const MAX_REMEMBERED: usize = 1024;

/// The points persisted and not known to be in the bucket, oldest first.
#[derive(Debug, Default)]
pub struct Lag {
    /// (point, when it was persisted), in persist order (= chain order).
    behind: VecDeque<(PointId, Instant)>,
    /// When the first point not remembered in `behind` was persisted: it and every later
    /// point count as behind until the newest point is in the bucket (an overestimate, never
    /// an underestimate).
    overflow: Option<Instant>,
    /// The newest point persisted.
    newest: Option<PointId>,
}

impl Lag {
    /// A point was persisted locally at `at`.
    pub fn persisted(&mut self, p: PointId, at: Instant) {
        self.newest = Some(p);
        if self.behind.len() < MAX_REMEMBERED && self.overflow.is_none() {
            self.behind.push_back((p, at));
        } else {
            self.overflow.get_or_insert(at);
        }
    }

    /// Point `p` is in the bucket: it and every older point no longer count (an older point
    /// is either in the bucket or superseded by `p`).
    pub fn uploaded(&mut self, p: PointId) {
        if self.newest == Some(p) {
            self.behind.clear();
            self.overflow = None;
            return;
        }
        while self.behind.front().is_some_and(|&(q, _)| q <= p) {
            self.behind.pop_front();
        }
    }

    /// Since when the bucket is behind (`None`: it holds the newest persisted point).
    pub fn behind_since(&self) -> Option<Instant> {
        self.behind.front().map(|&(_, t)| t).or(self.overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(generation: u64, index: u32) -> PointId {
        PointId { generation, index }
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_point_not_in_the_bucket() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut l = Lag::default();
        assert_eq!(l.behind_since(), None);
        l.persisted(p(1, 0), at(0));
        l.persisted(p(1, 1), at(1));
        l.persisted(p(1, 2), at(2));
        assert_eq!(l.behind_since(), Some(at(0)));
        l.uploaded(p(1, 0));
        assert_eq!(l.behind_since(), Some(at(1)), "delta 1 is still missing");
        // A point that is never uploaded (cut) keeps the lag until a newer one is in.
        l.persisted(p(2, 0), at(3));
        assert_eq!(l.behind_since(), Some(at(1)));
        l.uploaded(p(2, 0));
        assert_eq!(l.behind_since(), None, "the newest point is in the bucket");
    }

    #[test]
    fn a_long_stop_is_remembered_from_its_first_point() {
        let t0 = Instant::now();
        let mut l = Lag::default();
        for i in 0..(MAX_REMEMBERED as u32 + 50) {
            l.persisted(p(1, i), t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(l.behind_since(), Some(t0));
        l.uploaded(p(1, MAX_REMEMBERED as u32 - 1));
        assert!(
            l.behind_since().is_some(),
            "forgotten points are still behind"
        );
        l.uploaded(p(1, MAX_REMEMBERED as u32 + 49));
        assert_eq!(l.behind_since(), None);
    }
}
