//! The targets of issue 27 (the fixed costs of small operations), checked row by row.
//!
//! [`Issue27`] holds every row of the issue's table, in its order. A section of `compare`
//! that measures a row fills it in with [`Issue27::ratio`] or [`Issue27::value`]; a row that
//! no section of the run measured prints `not measured here` with the reason given when the
//! table was made ([`Issue27::new`]) — never a guess.

use std::fmt::Write as _;

use crate::report::fmt_ns;

/// The bound a row is checked against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The ratio must be at most this.
    AtMost(f64),
    /// The ratio must be at least this.
    AtLeast(f64),
    /// A latency distribution: median and 99th percentile at most these (nanoseconds).
    Percentiles {
        /// Bound on the median.
        p50: f64,
        /// Bound on the 99th percentile.
        p99: f64,
    },
    /// No target (the issue lists the figure for reference).
    None,
}

impl Bound {
    fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b}x"),
            Bound::AtLeast(b) => format!("≥ {b}x"),
            Bound::Percentiles { p50, p99 } => {
                format!("p50 ≤ {}, p99 ≤ {}", fmt_ns(p50), fmt_ns(p99))
            }
            Bound::None => "—".into(),
        }
    }

    /// `Some(met)` for a ratio checked against a bound, `None` without a bound.
    pub fn check(self, ratio: f64) -> Option<bool> {
        match self {
            Bound::AtMost(b) => Some(ratio <= b),
            Bound::AtLeast(b) => Some(ratio >= b),
            Bound::Percentiles { .. } | Bound::None => None,
        }
    }
}

/// What one row holds.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// No section of this run measured it: why.
    NotMeasured(String),
    /// A ratio, checked against the row's bound.
    Ratio(f64),
    /// A figure without a bound (printed as given).
    Value(String),
    /// A latency distribution's median and 99th percentile (nanoseconds).
    Percentiles(f64, f64),
}

/// One row of the issue's table.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    key: &'static str,
    what: &'static str,
    bound: Bound,
    outcome: Outcome,
}

/// The rows of issue 27's table (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Issue27 {
    rows: Vec<Row>,
}

/// `(key, row text, bound, reason printed when no section measured it)`.
const ROWS: [(&str, &str, Bound, &str); 13] = [
    ("commit-8-hot", "commit 8 B hot: upstream 0.2.3 / ours", Bound::AtLeast(2.0), "the commit section did not run (--only)"),
    ("commit-64-hot", "commit 64 B hot: ours / memcpy", Bound::AtMost(3.0), "the commit section did not run (--only)"),
    ("triple-64-write", "triple publish 64 B (`write`): ours / triple_buffer", Bound::AtMost(1.5), "the triple section did not run (--only)"),
    ("triple-64-excl", "triple publish 64 B (`write_exclusive`): ours / triple_buffer", Bound::AtMost(1.5), "the triple section did not run (--only)"),
    ("triple-4k-excl", "triple publish 4 KiB (`write_exclusive`): ours / triple_buffer", Bound::AtMost(1.5), "the triple section did not run (--only)"),
    ("triple-4k-write", "triple publish 4 KiB (`write`): ours / triple_buffer", Bound::AtMost(1.5), "the triple section did not run (--only)"),
    ("restore-16", "restore 16 MiB, 1/16 touched: ours / raw copy back", Bound::AtMost(1.2), "the snapshot section did not run (--only)"),
    ("restore-256", "restore 256 MiB, 1/16 touched: ours / raw", Bound::AtMost(1.2), "the snapshot section did not run (--only)"),
    ("snapshot-16", "snapshot 16 MiB, 1/16 touched: ours / raw", Bound::AtMost(1.2), "the snapshot section did not run (--only)"),
    ("snapshot-256", "snapshot 256 MiB, 1/16 touched: ours / raw", Bound::AtMost(1.2), "the snapshot section did not run (--only)"),
    ("ack-idle", "commit → acknowledged (durable), request + wait, idle fixture", Bound::None, "the durable section did not run (--only)"),
    ("ack-busy", "same, a writer committing ~1 M/s beside the acknowledging client, which requests and waits every 5 ms", Bound::Percentiles { p50: 3e6, p99: 10e6 }, "the durable section did not run (--only)"),
    ("starve", "incremental, flat-out 512 KiB commits into a 64-entry ring: persisted / attempts (issue: ≥ 9 of 12)", Bound::AtLeast(0.75), "the incremental section did not run (--only)"),
];

impl Default for Issue27 {
    fn default() -> Self {
        Self::new()
    }
}

impl Issue27 {
    /// Every row, none measured yet.
    pub fn new() -> Self {
        let rows = ROWS
            .iter()
            .map(|&(key, what, bound, why)| Row {
                key,
                what,
                bound,
                outcome: Outcome::NotMeasured(why.into()),
            })
            .collect();
        Issue27 { rows }
    }

    fn row(&mut self, key: &str) -> &mut Row {
        self.rows
            .iter_mut()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("issue 27 has no row {key:?}"))
    }

    /// Records the ratio measured for row `key`.
    ///
    /// # Panics
    ///
    /// If `key` names no row (a typo in `compare`).
    pub fn ratio(&mut self, key: &str, ratio: f64) {
        self.row(key).outcome = Outcome::Ratio(ratio);
    }

    /// Records a figure without a bound for row `key`.
    ///
    /// # Panics
    ///
    /// If `key` names no row.
    pub fn value(&mut self, key: &str, value: String) {
        self.row(key).outcome = Outcome::Value(value);
    }

    /// Records the median and 99th percentile (nanoseconds) measured for row `key`.
    ///
    /// # Panics
    ///
    /// If `key` names no row.
    pub fn percentiles(&mut self, key: &str, p50: f64, p99: f64) {
        self.row(key).outcome = Outcome::Percentiles(p50, p99);
    }

    /// `Some(met)` for a measured row with a bound.
    pub fn met(&self, key: &str) -> Option<bool> {
        let r = self.rows.iter().find(|r| r.key == key)?;
        match (r.outcome.clone(), r.bound) {
            (Outcome::Ratio(x), b) => b.check(x),
            (Outcome::Percentiles(p50, p99), Bound::Percentiles { p50: b50, p99: b99 }) => {
                Some(p50 <= b50 && p99 <= b99)
            }
            _ => None,
        }
    }

    /// The table as markdown: `met` / `NOT met` with the ratio, or `not measured here` with
    /// the reason.
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| issue 27 target | measured | bound | verdict |\n|---|---:|---:|---|\n");
        for r in &self.rows {
            let (measured, verdict) = match &r.outcome {
                Outcome::NotMeasured(why) => ("—".to_string(), format!("not measured here: {why}")),
                Outcome::Value(v) => (v.clone(), "no target".to_string()),
                Outcome::Percentiles(p50, p99) => (
                    format!("p50 {}, p99 {}", fmt_ns(*p50), fmt_ns(*p99)),
                    verdict(self.met(r.key)),
                ),
                Outcome::Ratio(x) => (format!("{x:.2}x"), verdict(r.bound.check(*x))),
            };
            let _ = writeln!(
                out,
                "| {} | {measured} | {} | {verdict} |",
                r.what,
                r.bound.text()
            );
        }
        out
    }
}

fn verdict(met: Option<bool>) -> String {
    match met {
        Some(true) => "met".to_string(),
        Some(false) => "**NOT met**".to_string(),
        None => "no target".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_print_met_not_met_or_why_not_measured() {
        let mut t = Issue27::new();
        t.ratio("commit-8-hot", 2.1);
        t.ratio("commit-64-hot", 3.4);
        t.value("ack-idle", "1.3 ms".into());
        assert_eq!(t.met("commit-8-hot"), Some(true));
        assert_eq!(t.met("commit-64-hot"), Some(false));
        assert_eq!(t.met("ack-idle"), None);
        assert_eq!(t.met("restore-16"), None);
        let md = t.markdown();
        assert_eq!(md.lines().count(), 2 + ROWS.len());
        assert!(md.contains("| commit 8 B hot: upstream 0.2.3 / ours | 2.10x | ≥ 2x | met |"));
        assert!(md.contains("| commit 64 B hot: ours / memcpy | 3.40x | ≤ 3x | **NOT met** |"));
        assert!(md.contains("| 1.3 ms | — | no target |"));
        assert!(md.contains("not measured here: the snapshot section did not run"));
        // A latency row is met only if both percentiles are within their bounds.
        t.percentiles("ack-busy", 2.5e6, 11e6);
        assert_eq!(t.met("ack-busy"), Some(false));
        assert!(t
            .markdown()
            .contains("| p50 2.5 ms, p99 11.0 ms | p50 ≤ 3.0 ms, p99 ≤ 10.0 ms | **NOT met** |"));
        t.percentiles("ack-busy", 2.5e6, 9e6);
        assert_eq!(t.met("ack-busy"), Some(true));
        t.percentiles("ack-busy", 3.5e6, 9e6);
        assert_eq!(t.met("ack-busy"), Some(false));
    }
}
