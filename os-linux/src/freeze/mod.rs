//! Stopping a client's processes for a consistent copy of the region, and never leaving them
//! stopped: the freeze strategy's pause (DESIGN §17).
//!
//! Two mechanisms behind one RAII API, [`Freezer::freeze`] → [`Frozen`]:
//!
//! | mechanism | stop | proof of stopped | resume |
//! |---|---|---|---|
//! | [`cgroup`] | `1` into `cgroup.freeze` | `frozen 1` in `cgroup.events` (inotify wakes the wait) | `0` into `cgroup.freeze` |
//! | [`signal`] | `SIGSTOP` to the process group | every task of every process of the group in state `T`/`t` (`/proc`) | `SIGCONT` to the group |
//!
//! A [`Frozen`] thaws when it is dropped — on an error path, on a panic's unwind — and
//! [`Frozen::thaw`] thaws with the error reported. A freeze that is not complete within its
//! deadline (a task in uninterruptible sleep, a cgroup that never reports frozen) is
//! abandoned: thawed, and returned as [`FreezeError::Timeout`] naming what still ran.
//!
//! Everything read from `/proc` and `cgroup.events` is hostile input: bounded reads, every
//! field parsed or refused ([`FreezeError::Unreadable`]); a process that vanishes during the
//! scan is simply gone.
//!
//! What a freeze cannot stop (DESIGN §17): a device or `io_uring` writing into the region
//! (DMA and kernel workers run on), a process outside the group or cgroup that maps the memfd;
//! with signals, a process that left the group (`setsid`, `setpgid`).

pub mod cgroup;
mod error;
mod guard;
mod proc;
mod proc_task;
pub mod signal;
pub mod stage;

use std::time::Duration;

pub use cgroup::CgroupFreezer;
pub use error::FreezeError;
pub use guard::Frozen;
pub use proc_task::Task;
pub use signal::ProcessGroup;
pub use stage::Staging;

/// How a client is stopped.
#[derive(Debug, Clone)]
pub enum Freezer {
    /// The cgroup v2 freezer of the client's cgroup.
    Cgroup(CgroupFreezer),
    /// `SIGSTOP`/`SIGCONT` to the client's process group.
    Signal(ProcessGroup),
}

impl Freezer {
    /// The mechanism's name (`cgroup` or `signal`), for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Freezer::Cgroup(_) => "cgroup",
            Freezer::Signal(_) => "signal",
        }
    }

    /// Stops every process of the client and waits, at most `deadline`, until all of them
    /// are stopped.
    ///
    /// # Errors
    ///
    /// [`FreezeError::Timeout`] if they did not all stop in time (they are thawed again);
    /// [`FreezeError::Io`] if the stop request failed; [`FreezeError::Unreadable`] for a
    /// `/proc` or `cgroup.events` text that is not the kernel's; [`FreezeError::Gone`] if the
    /// client has no process left. Every error path leaves the client running.
    pub fn freeze(&self, deadline: Duration) -> Result<Frozen, FreezeError> {
        match self {
            Freezer::Cgroup(c) => c.freeze(deadline),
            Freezer::Signal(g) => g.freeze(deadline),
        }
    }
}
