//! A standby's view of the lease, with no trust in other machines' clocks: it reads the lease
//! every [`Timing::poll_every`](super::lease::Timing::poll_every), remembers the version it
//! saw and the [`Instant`] it *first* saw it, and may take the lease over once that same
//! version was seen for the holder's TTL (or at once when there is none, or it is released).
//!
//! A changed version resets the clock, and so does a failed read: after an outage of the
//! store the standby needs a whole TTL of the same version again, while the primary renews
//! within a renewal period of the store's return — an outage alone never leads to a
//! takeover. Why this keeps two primaries apart: docs/DESIGN.md §12.

use std::time::{Duration, Instant};

use object_store::UpdateVersion;

use super::lease::Body;

/// One read of the lease.
#[derive(Debug, Clone)]
pub enum Reading {
    /// The read failed (no answer, an error, a lease that is not one): nothing is known.
    Failed,
    /// There is no lease object.
    Absent,
    /// The lease and its version.
    Lease(Body, UpdateVersion),
}

/// What the standby may do after a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No lease object: take it with a create-only put.
    Absent,
    /// Take it over with a conditional update on this version: it was released, or seen
    /// unchanged for its holder's TTL.
    TakeOver {
        /// The version seen.
        seen: UpdateVersion,
        /// `true`: released by its holder; `false`: it stopped renewing.
        released: bool,
    },
    /// Someone holds it: wait (at least `left` more, if nothing changes).
    Wait {
        /// How much longer the current version must stay unchanged.
        left: Duration,
    },
    /// Nothing is known (a failed read): the clock starts again.
    Unknown,
}

/// The versions seen, with when each was first seen. Invariant: `seen` is the version of the
/// last successful reading, and `first_seen` the instant of the first reading of it since the
/// last failed reading or change.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(Tag, Instant)>,
}

/// What identifies a lease version: its e-tag and version (either may be absent).
type Tag = (Option<String>, Option<String>);

fn tag(v: &UpdateVersion) -> Tag {
    (v.e_tag.clone(), v.version.clone())
}

impl Observer {
    /// Takes in the reading made at `now` (monotonic).
    pub fn observe(&mut self, now: Instant, reading: Reading) -> Verdict {
        let (body, version) = match reading {
            Reading::Failed => {
                self.seen = None;
                return Verdict::Unknown;
            }
            Reading::Absent => {
                self.seen = None;
                return Verdict::Absent;
            }
            Reading::Lease(b, v) => (b, v),
        };
        let t = tag(&version);
        let first = match &self.seen {
            Some((old, at)) if *old == t => *at,
            _ => {
                self.seen = Some((t, now));
                now
            }
        };
        if body.released {
            return Verdict::TakeOver {
                seen: version,
                released: true,
            };
        }
        let unchanged = now.saturating_duration_since(first);
        match body.ttl().checked_sub(unchanged) {
            Some(left) if !left.is_zero() => Verdict::Wait { left },
            _ => Verdict::TakeOver {
                seen: version,
                released: false,
            },
        }
    }

    /// Forgets what was seen (after a takeover lost to another standby).
    pub fn reset(&mut self) {
        self.seen = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::lease::Holder;

    const S: Duration = Duration::from_secs(1);

    fn body(ttl_s: u64, released: bool) -> Body {
        Body {
            holder: Holder {
                machine_id: "m".into(),
                state_path: "/s".into(),
                pid: 1,
                run_id: "r".into(),
            },
            // A wall-clock expiry far in the past: the observer must not look at it.
            expires_unix_ms: 1,
            ttl_ms: ttl_s * 1000,
            released,
        }
    }

    fn v(e: &str) -> UpdateVersion {
        UpdateVersion {
            e_tag: Some(e.into()),
            version: None,
        }
    }

    fn lease(e: &str, ttl_s: u64) -> Reading {
        Reading::Lease(body(ttl_s, false), v(e))
    }

    #[test]
    fn the_same_version_for_its_ttl_is_taken_over_not_before() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(o.observe(t0, lease("a", 3)), Verdict::Wait { left: 3 * S });
        assert_eq!(
            o.observe(t0 + 2 * S, lease("a", 3)),
            Verdict::Wait { left: S }
        );
        assert_eq!(
            o.observe(t0 + 3 * S, lease("a", 3)),
            Verdict::TakeOver {
                seen: v("a"),
                released: false
            }
        );
    }

    #[test]
    fn a_changed_version_starts_the_clock_again() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(t0, lease("a", 3));
        assert_eq!(
            o.observe(t0 + 2 * S, lease("b", 3)),
            Verdict::Wait { left: 3 * S }
        );
        assert_eq!(
            o.observe(t0 + 4 * S, lease("b", 3)),
            Verdict::Wait { left: S }
        );
        assert!(matches!(
            o.observe(t0 + 5 * S, lease("b", 3)),
            Verdict::TakeOver { .. }
        ));
    }

    /// A store outage: the primary cannot renew, the standby cannot read. After it, the
    /// standby must see the same version for a whole TTL again.
    #[test]
    fn a_failed_read_starts_the_clock_again() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(t0, lease("a", 3));
        assert_eq!(o.observe(t0 + 2 * S, Reading::Failed), Verdict::Unknown);
        assert_eq!(
            o.observe(t0 + 5 * S, lease("a", 3)),
            Verdict::Wait { left: 3 * S }
        );
        assert!(matches!(
            o.observe(t0 + 8 * S, lease("a", 3)),
            Verdict::TakeOver { .. }
        ));
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_none_is_absent() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(
            o.observe(t0, Reading::Lease(body(30, true), v("a"))),
            Verdict::TakeOver {
                seen: v("a"),
                released: true
            }
        );
        assert_eq!(o.observe(t0, Reading::Absent), Verdict::Absent);
    }

    /// The standby waits for the holder's TTL, not its own, and never for the wall clock.
    #[test]
    fn the_holders_ttl_counts() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe(t0, lease("a", 10));
        assert_eq!(
            o.observe(t0 + 3 * S, lease("a", 10)),
            Verdict::Wait { left: 7 * S }
        );
    }

    /// A lease whose TTL is out of bounds is refused by the reader ([`super::super::lease::read`]);
    /// its serde default stands for leases written before the field existed.
    #[test]
    fn a_lease_without_ttl_is_thirty_seconds() {
        let old = br#"{"holder":{"machine_id":"m","state_path":"/s","pid":7},"expires_unix_ms":5}"#;
        let b: Body = serde_json::from_slice(old).unwrap();
        assert_eq!(b.ttl(), Duration::from_secs(30));
        assert!(!b.released);
    }
}
