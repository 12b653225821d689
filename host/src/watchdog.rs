//! systemd's watchdog: `WATCHDOG=1` at half the interval, only while the host makes progress.
//!
//! systemd sets `WATCHDOG_USEC` (and `WATCHDOG_PID`) when the unit has `WatchdogSec=`; a service
//! that stays silent for that long is killed (`SIGABRT`) and restarted per `Restart=`. The
//! event loop calls [`Watchdog::tick`] on every iteration and wakes up no later than
//! [`Watchdog::next_deadline`]. A ping is sent only if
//!
//! - the loop made progress since the last tick (the caller says so), and
//! - the snapshot worker is not wedged: it has not been inside one snapshot for longer than the
//!   whole watchdog interval (a snapshot that long means a stuck disk or a bug; systemd's
//!   restart brings the state back from the fd store and disk).
//!
//! The decision is a pure function of the times it is given ([`Watchdog::decide`]), so it is
//! tested with fake time; [`Watchdog::tick`] adds the datagram.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{info, warn};

/// What a tick decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not due yet.
    NotDue,
    /// Ping now.
    Ping,
    /// Due, but the loop made no progress since the last tick.
    NoProgress,
    /// Due, but the snapshot worker has been busy with one snapshot for this long.
    WorkerWedged(Duration),
}

/// The watchdog's schedule. Only exists when systemd asked for pings.
#[derive(Debug)]
pub struct Watchdog {
    /// `WATCHDOG_USEC`: silence longer than this gets the service killed.
    interval: Duration,
    /// When the next ping is due: the last ping (or start) + half the interval, or a retry
    /// after a withheld ping.
    due: Instant,
    /// Whether the last tick withheld a ping (logged once per stall, not on every retry).
    withholding: bool,
}

/// Why the watchdog settings could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// `WATCHDOG_USEC` is not a positive integer.
    BadUsec(String),
    /// `WATCHDOG_PID` is not a pid.
    BadPid(String),
}

impl std::fmt::Display for EnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvError::BadUsec(v) => write!(
                f,
                "WATCHDOG_USEC={v:?} is not a positive number of microseconds; watchdog off"
            ),
            EnvError::BadPid(v) => write!(f, "WATCHDOG_PID={v:?} is not a pid; watchdog off"),
        }
    }
}

impl Watchdog {
    /// The watchdog systemd asked for (`WATCHDOG_USEC`, for this process per `WATCHDOG_PID`),
    /// or `None` (logged if the variables are malformed). `now` starts the first period.
    pub fn from_env(now: Instant) -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        match Watchdog::from_values(usec.as_deref(), pid.as_deref(), std::process::id(), now) {
            Ok(Some(w)) => {
                info!(
                    "systemd watchdog: {} interval, pinging every {}",
                    humantime::format_duration(w.interval()),
                    humantime::format_duration(w.period())
                );
                Some(w)
            }
            Ok(None) => None,
            Err(e) => {
                warn!("{e}");
                None
            }
        }
    }

    /// The watchdog for these variable values: `None` without `WATCHDOG_USEC`, or when
    /// `WATCHDOG_PID` names another process (the variables were inherited, not meant for us).
    ///
    /// # Errors
    ///
    /// A malformed or zero value.
    pub fn from_values(
        usec: Option<&str>,
        pid: Option<&str>,
        my_pid: u32,
        now: Instant,
    ) -> Result<Option<Watchdog>, EnvError> {
        let Some(usec) = usec else { return Ok(None) };
        if let Some(pid) = pid {
            let pid: u32 = pid.parse().map_err(|_| EnvError::BadPid(pid.to_owned()))?;
            if pid != my_pid {
                return Ok(None);
            }
        }
        let micros = usec
            .parse::<u64>()
            .ok()
            .filter(|&u| u > 0)
            .ok_or_else(|| EnvError::BadUsec(usec.to_owned()))?;
        let mut w = Watchdog {
            interval: Duration::from_micros(micros),
            due: now,
            withholding: false,
        };
        w.due = now + w.period();
        Ok(Some(w))
    }

    /// `WATCHDOG_USEC`.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Time between pings: half the interval (systemd's advice), so one late wake-up of the
    /// loop does not get the service killed.
    pub fn period(&self) -> Duration {
        self.interval / 2
    }

    /// The loop must call [`Watchdog::tick`] again no later than this.
    pub fn next_deadline(&self) -> Instant {
        self.due
    }

    /// Decides whether to ping at `now` and moves the schedule; does not send anything.
    ///
    /// `loop_progressed`: the event loop completed an iteration since the last tick (handled
    /// its events and timers). `worker_busy_since`: when the snapshot worker started the
    /// snapshot it is working on, `None` when it is idle.
    pub fn decide(
        &mut self,
        now: Instant,
        loop_progressed: bool,
        worker_busy_since: Option<Instant>,
    ) -> Decision {
        if now < self.due {
            return Decision::NotDue;
        }
        let busy = worker_busy_since.map(|t| now.saturating_duration_since(t));
        let decision = match busy {
            Some(b) if b > self.interval => Decision::WorkerWedged(b),
            _ if !loop_progressed => Decision::NoProgress,
            _ => Decision::Ping,
        };
        self.due = match decision {
            Decision::Ping => now + self.period(),
            // Look again soon (not at once: the loop would spin), well before systemd's limit
            // if the stall ends.
            _ => now + self.interval / 8,
        };
        decision
    }

    /// [`Watchdog::decide`], then sends `WATCHDOG=1` if it says [`Decision::Ping`]. Logs when
    /// pings stop being sent and when they resume.
    pub fn tick(
        &mut self,
        now: Instant,
        loop_progressed: bool,
        worker_busy_since: Option<Instant>,
    ) -> Decision {
        let d = self.decide(now, loop_progressed, worker_busy_since);
        match d {
            Decision::NotDue => {}
            Decision::Ping => {
                if self.withholding {
                    info!("systemd watchdog: progress again, pings resume");
                    self.withholding = false;
                }
                if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                    warn!("could not ping the systemd watchdog: {e}");
                }
            }
            Decision::NoProgress | Decision::WorkerWedged(_) if self.withholding => {}
            Decision::NoProgress => {
                warn!("systemd watchdog: the event loop made no progress; ping withheld");
                self.withholding = true;
            }
            Decision::WorkerWedged(b) => {
                warn!(
                    "systemd watchdog: one snapshot has taken {} (over the {} watchdog \
                     interval); ping withheld, systemd will restart shmsnap",
                    humantime::format_duration(round_ms(b)),
                    humantime::format_duration(self.interval)
                );
                self.withholding = true;
            }
        }
        d
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn dog(t0: Instant) -> Watchdog {
        Watchdog::from_values(Some("10000000"), None, 1, t0)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn variables_select_the_interval_and_the_process() {
        let t0 = Instant::now();
        let w = Watchdog::from_values(Some("20000000"), Some("42"), 42, t0)
            .unwrap()
            .unwrap();
        assert_eq!(w.interval(), 20 * S);
        assert_eq!(w.period(), 10 * S);
        assert_eq!(w.next_deadline(), t0 + 10 * S);
        let other = Watchdog::from_values(Some("20000000"), Some("43"), 42, t0).unwrap();
        assert!(other.is_none(), "WATCHDOG_PID names another process");
        assert!(Watchdog::from_values(None, Some("42"), 42, t0)
            .unwrap()
            .is_none());
        for bad in ["0", "-5", "10s", ""] {
            assert_eq!(
                Watchdog::from_values(Some(bad), None, 42, t0).unwrap_err(),
                EnvError::BadUsec(bad.into())
            );
        }
        assert_eq!(
            Watchdog::from_values(Some("1000"), Some("me"), 42, t0).unwrap_err(),
            EnvError::BadPid("me".into())
        );
    }

    #[test]
    fn pings_every_half_interval_while_the_loop_progresses() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        assert_eq!(w.decide(t0 + 4 * S, true, None), Decision::NotDue);
        assert_eq!(w.decide(t0 + 5 * S, true, None), Decision::Ping);
        assert_eq!(w.next_deadline(), t0 + 10 * S);
        assert_eq!(w.decide(t0 + 9 * S, true, None), Decision::NotDue);
        // A worker busy for less than the interval is a slow snapshot, not a wedged one.
        assert_eq!(w.decide(t0 + 10 * S, true, Some(t0)), Decision::Ping);
    }

    #[test]
    fn a_loop_without_progress_gets_no_ping_and_retries_soon() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        assert_eq!(w.decide(t0 + 5 * S, false, None), Decision::NoProgress);
        let retry = w.next_deadline();
        assert!(retry > t0 + 5 * S && retry < t0 + 10 * S, "{retry:?}");
        assert_eq!(w.decide(retry, true, None), Decision::Ping);
    }

    #[test]
    fn a_wedged_worker_stops_the_pings_until_it_finishes() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        let started = t0 + S;
        assert_eq!(w.decide(t0 + 5 * S, true, Some(started)), Decision::Ping);
        let mut now = t0 + 10 * S;
        assert_eq!(w.decide(now, true, Some(started)), Decision::Ping);
        // Due again at 15 s, 14 s into one snapshot: over the 10 s interval.
        now = w.next_deadline();
        assert_eq!(now, t0 + 15 * S);
        assert_eq!(
            w.decide(now, true, Some(started)),
            Decision::WorkerWedged(now - started)
        );
        // Still wedged on every retry, however much the loop progresses.
        for _ in 0..5 {
            now = w.next_deadline();
            assert!(matches!(
                w.decide(now, true, Some(started)),
                Decision::WorkerWedged(_)
            ));
        }
        // The snapshot ends: pings resume at the next retry.
        now = w.next_deadline();
        assert_eq!(w.decide(now, true, None), Decision::Ping);
    }

    /// The child half of `pings_reach_the_notify_socket_only_when_earned`: runs in its own
    /// process, started with the variables set (a test never calls `set_var` in a threaded
    /// test process).
    #[test]
    #[ignore = "started by pings_reach_the_notify_socket_only_when_earned"]
    fn watchdog_child() {
        let Ok(mode) = std::env::var("SHMSNAP_WATCHDOG_CHILD") else {
            return;
        };
        let t0 = Instant::now();
        let w = Watchdog::from_env(t0);
        if mode == "other-pid" {
            assert!(w.is_none(), "WATCHDOG_PID names another process");
            return;
        }
        let mut w = w.expect("WATCHDOG_USEC is set");
        let due = w.next_deadline();
        let busy = match mode.as_str() {
            "ping" => None,
            "wedged" => Some(t0.checked_sub(2 * w.interval()).unwrap_or(t0)),
            _ => panic!("unknown mode {mode}"),
        };
        let d = w.tick(due.max(t0 + 2 * w.interval()), true, busy);
        println!("decision: {d:?}");
    }

    #[test]
    fn pings_reach_the_notify_socket_only_when_earned() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::Builder::new()
            .prefix("shmsnap-wd-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let exe = std::env::current_exe().unwrap();
        for (mode, pid, want_decision, want_datagram) in [
            ("ping", None, "Ping", Some("WATCHDOG=1")),
            ("wedged", None, "WorkerWedged", None),
            ("other-pid", Some("1"), "", None),
        ] {
            let mut c = std::process::Command::new(&exe);
            c.args(["--exact", "watchdog::tests::watchdog_child", "--ignored"])
                .args(["--nocapture", "--test-threads=1"])
                .env("SHMSNAP_WATCHDOG_CHILD", mode)
                .env("NOTIFY_SOCKET", &path)
                .env("WATCHDOG_USEC", "1000000")
                .env_remove("WATCHDOG_PID");
            if let Some(pid) = pid {
                c.env("WATCHDOG_PID", pid);
            }
            let out = c.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{mode}: {stdout}");
            assert!(
                stdout.contains("1 passed"),
                "{mode}: the child ran: {stdout}"
            );
            assert!(stdout.contains(want_decision), "{mode}: {stdout}");
            let mut buf = [0u8; 256];
            let got = match sock.recv(&mut buf) {
                Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("recv: {e}"),
            };
            assert_eq!(got.as_deref(), want_datagram, "{mode}");
        }
    }

    #[test]
    fn a_worker_busy_since_the_future_is_not_wedged() {
        let t0 = Instant::now();
        let mut w = dog(t0);
        assert_eq!(
            w.decide(t0 + 5 * S, true, Some(t0 + 60 * S)),
            Decision::Ping
        );
    }
}
