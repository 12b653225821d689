//! The restart policy: whether the client is restarted after it exits, and after what pause.

use std::time::Duration;

use crate::config::Restart;

/// Shortest pause before a restart.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// A client that ran at least this long resets the backoff.
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// `--restart` with an exponential backoff between quick failures.
#[derive(Debug)]
pub struct RestartPolicy {
    when: Restart,
    /// `--max-backoff`: the cap of `backoff`.
    max: Duration,
    /// The last pause: doubles after each quick failure, from `MIN_BACKOFF` up to exactly
    /// `max`; `MIN_BACKOFF / 2` after a stable run (so that the next pause is `MIN_BACKOFF`).
    backoff: Duration,
}

impl RestartPolicy {
    /// The policy of `--restart WHEN --max-backoff MAX`.
    pub fn new(when: Restart, max: Duration) -> Self {
        RestartPolicy {
            when,
            max,
            backoff: MIN_BACKOFF / 2,
        }
    }

    /// After the client exited with `code` having run for `ran`: the pause before its restart,
    /// or `None` if it is not restarted (per `--restart`, or because a stop was requested).
    pub fn after_exit(&mut self, code: i32, ran: Duration, stopping: bool) -> Option<Duration> {
        let restart = !stopping
            && match self.when {
                Restart::Never => false,
                Restart::OnFailure => code != 0,
                Restart::Always => true,
            };
        restart.then(|| self.pause(ran))
    }

    /// `MIN_BACKOFF` after a stable run; else the last pause doubled, at most `--max-backoff`
    /// (and never below `MIN_BACKOFF`, should `--max-backoff` be smaller).
    fn pause(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_RUN {
            self.backoff = MIN_BACKOFF / 2;
        }
        self.backoff = (self.backoff * 2).min(self.max).max(MIN_BACKOFF);
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_failures_double_the_pause_up_to_exactly_the_max_and_a_stable_run_resets_it() {
        let mut p = RestartPolicy::new(Restart::OnFailure, Duration::from_millis(500));
        let quick = Duration::from_millis(10);
        let pauses: Vec<_> = (0..5)
            .map(|_| p.after_exit(1, quick, false).unwrap().as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        // A stable run pauses the minimum and starts the doubling over.
        assert_eq!(p.after_exit(1, STABLE_RUN, false), Some(MIN_BACKOFF));
        assert_eq!(p.after_exit(1, quick, false), Some(MIN_BACKOFF * 2));
    }

    #[test]
    fn restart_follows_the_policy_and_never_happens_after_a_stop() {
        let quick = Duration::from_millis(10);
        let mut never = RestartPolicy::new(Restart::Never, Duration::from_secs(1));
        assert_eq!(never.after_exit(1, quick, false), None);
        let mut on_failure = RestartPolicy::new(Restart::OnFailure, Duration::from_secs(1));
        assert_eq!(on_failure.after_exit(0, quick, false), None);
        assert!(on_failure.after_exit(3, quick, false).is_some());
        let mut always = RestartPolicy::new(Restart::Always, Duration::from_secs(1));
        assert!(always.after_exit(0, quick, false).is_some());
        assert_eq!(always.after_exit(0, quick, true), None);
    }

    #[test]
    fn a_max_backoff_below_the_minimum_pause_still_pauses_the_minimum() {
        let mut p = RestartPolicy::new(Restart::Always, Duration::from_millis(10));
        let quick = Duration::from_millis(1);
        assert_eq!(p.after_exit(1, quick, false), Some(MIN_BACKOFF));
        assert_eq!(p.after_exit(1, quick, false), Some(MIN_BACKOFF));
    }
}
