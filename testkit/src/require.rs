//! Tests that need something not every machine has (a tool, a kernel feature, root): they run,
//! or they fail with what is missing — never a silent pass.
//!
//! A test asks [`require`] for its capability. When the probe fails, the test panics with the
//! reason and a hint, unless the user named that capability (or `all`) in
//! [`ALLOW_MISSING`] (`SHMSNAP_TEST_ALLOW_MISSING=promtool,man cargo test ...`): then it says
//! `SKIPPED` on stderr and returns `None`, and the caller returns. So `cargo test` reports a test
//! as passed only if it ran, or if whoever ran it chose, by name, to let it pass without running.
//! `.ci/run` installs every tool and sets nothing.

use std::ffi::OsStr;

/// The environment variable naming the capabilities a run may do without (comma-separated, or
/// `all`).
pub const ALLOW_MISSING: &str = "SHMSNAP_TEST_ALLOW_MISSING";

/// The capability's value when `probe` found it; otherwise `None` if the user allowed this
/// capability to be missing (a `SKIPPED` line on stderr), else a panic naming what is missing.
///
/// `capability` is a short name (`promtool`, `uffd-wp`, `cgroup2`), `hint` says how to get it.
///
/// # Panics
///
/// When the probe failed and [`ALLOW_MISSING`] does not name the capability.
#[track_caller]
pub fn require<T>(capability: &str, hint: &str, probe: Result<T, String>) -> Option<T> {
    match probe {
        Ok(v) => Some(v),
        Err(why) => {
            let allowed = std::env::var_os(ALLOW_MISSING);
            if allowed_by(allowed.as_deref(), capability) {
                eprintln!("SKIPPED: {capability} is missing ({why}); allowed by {ALLOW_MISSING}");
                None
            } else {
                panic!(
                    "this test needs {capability}, which is missing here: {why}. {hint} \
                     (or set {ALLOW_MISSING}={capability} to let it pass without running)"
                )
            }
        }
    }
}

/// Whether the value of [`ALLOW_MISSING`] names `capability` (or `all`).
pub fn allowed_by(value: Option<&OsStr>, capability: &str) -> bool {
    let Some(v) = value.and_then(OsStr::to_str) else {
        return false;
    };
    v.split(',')
        .map(str::trim)
        .any(|c| c == capability || c == "all")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_named_capability_is_allowed() {
        assert!(allowed_by(Some(OsStr::new("man,promtool")), "promtool"));
        assert!(allowed_by(Some(OsStr::new(" all ")), "uffd-wp"));
        assert!(!allowed_by(Some(OsStr::new("promtool-x")), "promtool"));
        assert!(!allowed_by(Some(OsStr::new("")), "promtool"));
        assert!(!allowed_by(None, "promtool"));
    }

    #[test]
    fn a_present_capability_is_returned() {
        assert_eq!(require("x", "", Ok::<_, String>(7)), Some(7));
    }

    #[test]
    #[should_panic(expected = "this test needs no-such-capability-here")]
    fn a_missing_capability_fails_the_test() {
        // The name is one nobody puts in SHMSNAP_TEST_ALLOW_MISSING (except `all`).
        if allowed_by(
            std::env::var_os(ALLOW_MISSING).as_deref(),
            "no-such-capability-here",
        ) {
            panic!("this test needs no-such-capability-here (allowed by the environment)");
        }
        require::<()>("no-such-capability-here", "", Err("probe failed".into()));
    }
}
