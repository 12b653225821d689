//! A task of a process group as a census saw it (named in timeout errors).

use std::fmt;

/// A task (thread) of the group, with the state it was seen in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    /// The process (thread group) id.
    pub pid: i32,
    /// The thread id.
    pub tid: i32,
    /// The state letter of `stat` (`R`, `S`, `D`, `T`, `t`, `Z`, ...).
    pub state: char,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} tid {} state {}", self.pid, self.tid, self.state)
    }
}
