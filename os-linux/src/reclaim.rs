//! Reclaiming the claim of a **dead** holder without a supervisor: for embedders that are their
//! own host (the C ABI's `shmsnap_region_reclaim`, Python's `Region.reclaim()`).
//!
//! The host clears its client's claim after `waitpid` told it the client is dead
//! ([`reclaim_dead_claim`](crate::status::reclaim_dead_claim)). A program that shares the
//! memory itself has no `waitpid` on the holder: it may not be the holder's parent. So
//! [`reclaim_if_dead`] asks the kernel whether the process named by the claim id's pid
//! ([`ClaimId::pid`]) still exists, and clears the claim (core's [`claim::reclaim`], a
//! compare-exchange from that very id to 0) only if it does not.
//!
//! # How liveness is checked ([`liveness`])
//!
//! 1. `kill(pid, 0)`: `ESRCH` — no process has this pid: **dead**. Success or `EPERM` — a
//!    process exists.
//! 2. It exists: `/proc/<pid>/stat`. State `Z` or `X` with at most one thread — it has exited
//!    and waits for its parent's `wait` (its memory is already gone): **dead**. Any other
//!    state, or a zombie leader whose other threads still run (a thread-group leader that
//!    called `pthread_exit`): **alive**.
//! 3. Anything else (a pid that cannot be a pid, `/proc` unreadable, a `stat` line that does
//!    not parse): **unknown**, treated as alive. Every doubt refuses the reclaim.
//!
//! # What it cannot know (its limits)
//!
//! - **pid reuse.** A later process that got the dead holder's pid looks alive: the reclaim is
//!   refused (safe, but the region stays claimed until that process is gone too). The claim
//!   word holds no process start time to tell the two apart.
//! - **pid namespaces.** The id holds the pid *as the holder saw it* (`getpid` in its own pid
//!   namespace); the check looks it up in the caller's. Across namespaces (containers) the
//!   same number names another process or none, and a **live holder may look dead**. Call
//!   it only for memory shared between processes of one pid namespace.
//! - **ids not made from a pid.** Core accepts any nonzero id; one not written under the
//!   documented encoding (a foreign program, garbage) is looked up as if its low 32 bits were a
//!   pid.
//! - **a race with a new holder of the same id.** Between the check and the compare-exchange,
//!   another reclaimer may clear the claim and a new process that reused the pid may take it
//!   with the same id (the C ABI's nonce is a per-process counter): the compare-exchange then
//!   clears a live claim. It needs a concurrent reclaim and a pid reuse within microseconds.
//!
//! # Orderings
//!
//! As for the host's reclaim (`shmsnap_core::claim`, "Orderings"): the holder's stores precede
//! its exit; `kill` returning `ESRCH` or `/proc` showing a zombie reads task state the exiting
//! task published under the kernel's locks, so those stores are visible to this process before
//! its check, as after the host's `waitpid`; the `Release` of core's reclaim passes them on to
//! the next claimant's `Acquire`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;
use rustix::process::{test_kill_process, Pid};
use shmsnap_core::claim::{self, ClaimId};
use shmsnap_core::format::word;
use shmsnap_core::triple::TripleLayout;
use shmsnap_core::{Layout, LayoutError};

/// What the kernel says about the process with a claim's pid, in the caller's pid namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// No process has this pid (`kill(pid, 0)`: `ESRCH`).
    Gone,
    /// The process has exited and waits for its parent's `wait` (state `Z`/`X`, one thread).
    Zombie,
    /// A process with this pid runs (perhaps a later one that reused the pid).
    Running,
    /// Could not tell (the text says why); treated as alive.
    Unknown(String),
}

impl Liveness {
    /// `true` only for [`Gone`](Liveness::Gone) and [`Zombie`](Liveness::Zombie).
    pub fn is_dead(&self) -> bool {
        matches!(self, Liveness::Gone | Liveness::Zombie)
    }
}

impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Liveness::Gone => f.write_str("no such process"),
            Liveness::Zombie => f.write_str("exited (a zombie not yet reaped)"),
            Liveness::Running => f.write_str("a process with this pid is running"),
            Liveness::Unknown(why) => write!(f, "cannot tell whether it runs ({why})"),
        }
    }
}

/// Whether process `pid` (of the caller's pid namespace) is alive: `kill(pid, 0)`, then
/// `/proc/<pid>/stat` (module docs, "How liveness is checked"). Never errors: a doubt is
/// [`Liveness::Unknown`].
pub fn liveness(pid: u32) -> Liveness {
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return Liveness::Unknown(format!("{pid} is not a valid pid"));
    };
    match test_kill_process(p) {
        Ok(()) | Err(Errno::PERM) => {}
        Err(Errno::SRCH) => return Liveness::Gone,
        Err(e) => return Liveness::Unknown(format!("kill({pid}, 0) failed: {e}")),
    }
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(stat) => stat_liveness(&stat)
            .unwrap_or_else(|| Liveness::Unknown(format!("{path} does not parse"))),
        Err(e) => Liveness::Unknown(format!(
            "it exists, and {path} cannot be read to tell a zombie: {e}"
        )),
    }
}

/// Liveness from the text of `/proc/<pid>/stat` (hostile: the command name may hold any
/// byte, including `) `): `None` if it does not parse.
fn stat_liveness(stat: &str) -> Option<Liveness> {
    // The command name is in parentheses and may contain ") ": the fields follow the last one.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // Field 20, num_threads, is the 18th after the state (field 3).
    let threads: u64 = fields.nth(16)?.parse().ok()?;
    Some(match state {
        "Z" | "X" if threads <= 1 => Liveness::Zombie,
        _ => Liveness::Running,
    })
}

/// Why [`reclaim_if_dead`] cleared nothing. The memory is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReclaimError {
    /// The memory does not reach the claim word.
    TooShort {
        /// The memory's length in words.
        words: usize,
    },
    /// The header is neither unconfigured (zero magic) nor a valid queue or triple header:
    /// not a shmsnap region, so its claim word is not touched.
    NotARegion {
        /// Why it is not a queue header.
        queue: LayoutError,
        /// Why it is not a triple header.
        triple: LayoutError,
    },
    /// Nobody holds the claim.
    Unclaimed,
    /// The holder may be alive: never reclaimed.
    Alive {
        /// The holder found in the claim word.
        holder: ClaimId,
        /// What the kernel said about its pid.
        liveness: Liveness,
    },
    /// The claim word changed between the liveness check and the compare-exchange (released,
    /// reclaimed or taken by someone else); look again.
    Changed {
        /// The holder the check was about.
        was: ClaimId,
        /// The claim word now (`None`: unclaimed).
        now: Option<ClaimId>,
    },
}

impl fmt::Display for ReclaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReclaimError::TooShort { words } => write!(
                f,
                "the memory holds {words} words, too few to reach the claim word {}: not a region",
                word::CLAIM
            ),
            ReclaimError::NotARegion { queue, triple } => write!(
                f,
                "not a shmsnap region, its claim word is left alone: not a queue header \
                 ({queue}), not a triple header ({triple})"
            ),
            ReclaimError::Unclaimed => f.write_str("the region is not claimed: nothing to reclaim"),
            ReclaimError::Alive { holder, liveness } => write!(
                f,
                "the region is claimed by {holder}, which may be alive ({liveness}): a live \
                 writer's claim is never reclaimed; stop that writer, or wait for it to exit"
            ),
            ReclaimError::Changed { was, now } => match now {
                Some(now) => write!(
                    f,
                    "the claim changed during the reclaim (was {was}, now {now}): look again"
                ),
                None => write!(
                    f,
                    "the claim of {was} was released or reclaimed meanwhile: nothing to reclaim"
                ),
            },
        }
    }
}

impl std::error::Error for ReclaimError {}

/// Clears the claim of `words` if its holder is dead ([`liveness`]), and returns the holder it
/// cleared. The region's other words are not touched; the next writer's attach runs the
/// recovery a crash calls for (`shmsnap_core::claim`, "What a new claimant may assume").
///
/// `words` is a queue or triple region, configured or not (a writer may have died inside its
/// `init`, after taking the claim, before storing the magic).
///
/// # Errors
///
/// [`ReclaimError`]; nothing is changed then.
pub fn reclaim_if_dead(words: &[AtomicU64]) -> Result<ClaimId, ReclaimError> {
    if words.len() <= word::CLAIM {
        return Err(ReclaimError::TooShort { words: words.len() });
    }
    check_region(words)?;
    let holder = claim::holder(words).ok_or(ReclaimError::Unclaimed)?;
    let liveness = liveness(holder.pid());
    if !liveness.is_dead() {
        return Err(ReclaimError::Alive { holder, liveness });
    }
    claim::reclaim(words, holder).map_err(|now| ReclaimError::Changed { was: holder, now })?;
    Ok(holder)
}

/// `Ok` for an unconfigured header or a valid queue or triple header (long enough: checked).
fn check_region(words: &[AtomicU64]) -> Result<(), ReclaimError> {
    let mut header = [0u64; word::HEADER];
    for (h, w) in header.iter_mut().zip(words) {
        // Relaxed: the header only decides whether this is a region; the claim word's own
        // compare-exchange decides the reclaim.
        *h = w.load(Ordering::Relaxed);
    }
    let len = (words.len() as u64).saturating_mul(8);
    let queue = Layout::from_header_words(&header, len).map(|_| ());
    let triple = TripleLayout::from_header_words(&header, len).map(|_| ());
    match (queue, triple) {
        (Ok(()), _) | (_, Ok(())) => Ok(()),
        (Err(LayoutError::Unconfigured), _) => Ok(()),
        (Err(queue), Err(triple)) => Err(ReclaimError::NotARegion { queue, triple }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shmsnap_core::{LayoutRequest, Writer};

    fn mem() -> Vec<AtomicU64> {
        (0..4096).map(|_| AtomicU64::new(0)).collect()
    }

    fn request() -> LayoutRequest {
        LayoutRequest {
            entries: 4,
            data_size: 256,
        }
    }

    /// A child that has exited and been reaped: its pid names no process (until reused).
    fn reaped_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    }

    #[test]
    fn only_a_process_that_is_gone_or_a_zombie_counts_as_dead() {
        assert_eq!(liveness(std::process::id()), Liveness::Running);
        assert!(!liveness(std::process::id()).is_dead());
        // Spawned, killed, not yet reaped: a zombie.
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        assert_eq!(liveness(child.id()), Liveness::Running);
        child.kill().unwrap();
        let pid = child.id();
        // The kill is asynchronous: wait until the child is a zombie (bounded by the test
        // harness, not by a timed assertion).
        while liveness(pid) == Liveness::Running {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(liveness(pid), Liveness::Zombie);
        child.wait().unwrap();
        assert!(liveness(pid).is_dead(), "reaped: {}", liveness(pid));
        assert!(matches!(liveness(0), Liveness::Unknown(_)));
        assert!(matches!(liveness(u32::MAX), Liveness::Unknown(_)));
    }

    #[test]
    fn stat_lines_are_parsed_as_hostile_text() {
        let tail = " 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 {threads} 0 1 2";
        let line = |name: &str, state: &str, threads: u32| {
            format!(
                "42 ({name}) {state}{}",
                tail.replace("{threads}", &threads.to_string())
            )
        };
        assert_eq!(stat_liveness(&line("a", "Z", 1)), Some(Liveness::Zombie));
        assert_eq!(stat_liveness(&line("a", "S", 1)), Some(Liveness::Running));
        // A leader that called pthread_exit while its other threads run.
        assert_eq!(stat_liveness(&line("a", "Z", 3)), Some(Liveness::Running));
        // A command name that fakes a zombie state.
        assert_eq!(
            stat_liveness(&line("x) Z 1 1", "R", 1)),
            Some(Liveness::Running)
        );
        assert_eq!(stat_liveness("42 (a) Z"), None);
        assert_eq!(stat_liveness("garbage"), None);
        assert_eq!(
            stat_liveness(&line("a", "Z", 1).replace(" 1 0 1 2", " x 0 1 2")),
            None
        );
    }

    #[test]
    fn a_dead_holders_claim_is_cleared_and_a_live_ones_never() {
        let m = mem();
        let live = ClaimId::from_pid(std::process::id(), 7).unwrap();
        let w = Writer::open_or_init(&m[..], request(), live).unwrap();
        let Err(ReclaimError::Alive { holder, liveness }) = reclaim_if_dead(&m) else {
            panic!("a live holder's claim was reclaimed")
        };
        assert_eq!((holder, liveness), (live, Liveness::Running));
        assert_eq!(claim::holder(&m[..]), Some(live));
        drop(w);
        assert_eq!(reclaim_if_dead(&m), Err(ReclaimError::Unclaimed));

        let dead = ClaimId::from_pid(reaped_pid(), 9).unwrap();
        std::mem::forget(Writer::attach(&m[..], dead).unwrap()); // SIGKILL
        assert_eq!(reclaim_if_dead(&m), Ok(dead));
        assert_eq!(claim::holder(&m[..]), None);
        // The next writer attaches.
        drop(Writer::attach(&m[..], live).unwrap());
    }

    #[test]
    fn a_writer_that_died_inside_init_is_reclaimed_and_foreign_memory_left_alone() {
        let m = mem();
        let dead = ClaimId::from_pid(reaped_pid(), 3).unwrap();
        m[word::CLAIM].store(dead.get(), Ordering::Relaxed); // claimed, magic never stored
        assert_eq!(reclaim_if_dead(&m), Ok(dead));

        let m = mem();
        m[word::MAGIC].store(0x1234, Ordering::Relaxed); // not a shmsnap header
        m[word::CLAIM].store(dead.get(), Ordering::Relaxed);
        assert!(matches!(
            reclaim_if_dead(&m),
            Err(ReclaimError::NotARegion { .. })
        ));
        assert_eq!(m[word::CLAIM].load(Ordering::Relaxed), dead.get());

        let short: Vec<AtomicU64> = (0..word::CLAIM).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(
            reclaim_if_dead(&short),
            Err(ReclaimError::TooShort { words: word::CLAIM })
        );
    }
}
