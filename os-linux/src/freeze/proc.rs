//! `/proc` as hostile input: the tasks of a process group and their scheduler states.
//!
//! `/proc/PID/stat` is `PID (COMM) STATE PPID PGRP ...`; COMM is up to 16 bytes chosen by the
//! process (spaces, parentheses, anything), so the fields are found after the *last* `)`.
//! A process or task that vanishes while it is read (`ENOENT`, `ESRCH`) is gone, not an error.

use std::io;
use std::path::{Path, PathBuf};

use super::error::FreezeError;
use super::proc_task::Task;

/// Longest `stat` line accepted (the kernel's is well under 1 KiB).
const MAX_STAT: usize = 4096;

/// `true` for a state in which a task cannot store into memory: stopped by a signal (`T`),
/// stopped by a tracer (`t`), a zombie (`Z`) or dead (`X`).
pub fn is_stopped(state: char) -> bool {
    matches!(state, 'T' | 't' | 'Z' | 'X')
}

/// What a `stat` line says: state and process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter.
    pub state: char,
    /// The process group.
    pub pgrp: i32,
}

/// Parses a `/proc/PID/stat` (or `.../task/TID/stat`) text.
///
/// # Errors
///
/// A description of what is not the kernel's format.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let close = text
        .rfind(')')
        .ok_or_else(|| "no ')' closing the command name".to_owned())?;
    let rest = text[close + 1..].trim_start_matches(' ');
    let mut f = rest.split(' ');
    let state = f.next().unwrap_or("");
    let mut chars = state.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphabetic() => c,
        _ => return Err(format!("state field {state:?} is not one letter")),
    };
    let _ppid = f.next();
    let pgrp = f
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .filter(|p| *p >= 0)
        .ok_or_else(|| "no numeric process group after the state".to_owned())?;
    Ok(Stat { state, pgrp })
}

/// Which tasks of a member process are checked: all of them, or (the broken twin the tests
/// use to show that checking threads matters) only the main thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every task under `/proc/PID/task`.
    AllTasks,
    /// Only `/proc/PID/stat` — misses a running thread of a stopped process. Tests only.
    #[cfg(test)]
    MainThreadOnly,
}

/// The group's census: how many member processes, and the tasks not stopped.
#[derive(Debug, Default)]
pub struct Census {
    /// Processes whose process group is the one asked for.
    pub members: usize,
    /// Their tasks that are not [`is_stopped`].
    pub running: Vec<Task>,
}

/// Reads every process of `root` (a `/proc`) whose process group is `pgid`, and the state of
/// each of its tasks (per `scope`).
///
/// # Errors
///
/// [`FreezeError::Io`] if `root` cannot be listed; [`FreezeError::Unreadable`] for a `stat`
/// that is not the kernel's.
pub fn census(root: &Path, pgid: i32, scope: Scope) -> Result<Census, FreezeError> {
    let dir = std::fs::read_dir(root)
        .map_err(|e| FreezeError::io(format!("list {}", root.display()), e))?;
    let mut out = Census::default();
    for entry in dir.flatten() {
        let Some(pid) = number(&entry.file_name()) else {
            continue;
        };
        let path = entry.path();
        let Some(stat) = read_stat(&path.join("stat"))? else {
            continue;
        };
        if stat.pgrp != pgid {
            continue;
        }
        out.members += 1;
        match scope {
            Scope::AllTasks => tasks(&path, pid, &mut out.running)?,
            #[cfg(test)]
            Scope::MainThreadOnly => {
                if !is_stopped(stat.state) {
                    out.running.push(Task {
                        pid,
                        tid: pid,
                        state: stat.state,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Adds the tasks of the process at `proc_dir` that are not stopped to `running`.
fn tasks(proc_dir: &Path, pid: i32, running: &mut Vec<Task>) -> Result<(), FreezeError> {
    let task_dir = proc_dir.join("task");
    let list = match std::fs::read_dir(&task_dir) {
        Ok(l) => l,
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(FreezeError::io(format!("list {}", task_dir.display()), e)),
    };
    for entry in list.flatten() {
        let Some(tid) = number(&entry.file_name()) else {
            continue;
        };
        if let Some(stat) = read_stat(&entry.path().join("stat"))? {
            if !is_stopped(stat.state) {
                running.push(Task {
                    pid,
                    tid,
                    state: stat.state,
                });
            }
        }
    }
    Ok(())
}

/// Reads and parses one `stat` file; `None` if its process or task is gone.
fn read_stat(path: &PathBuf) -> Result<Option<Stat>, FreezeError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(FreezeError::io(format!("read {}", path.display()), e)),
    };
    let unreadable = |detail: String| FreezeError::Unreadable {
        path: path.clone(),
        detail,
    };
    if bytes.len() > MAX_STAT {
        return Err(unreadable(format!(
            "{} bytes, longer than a stat line",
            bytes.len()
        )));
    }
    // COMM may hold any bytes: decode lossily, the fields after it are ASCII.
    let text = String::from_utf8_lossy(&bytes);
    parse_stat(text.trim_end_matches('\n'))
        .map(Some)
        .map_err(unreadable)
}

/// A `/proc` entry name that is a positive number (a pid or tid).
fn number(name: &std::ffi::OsStr) -> Option<i32> {
    let s = name.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| *n > 0)
}

/// A process or task that exited between the listing and the read.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_the_last_parenthesis_of_any_command_name() {
        let s = parse_stat("42 (a) b) R (c) T 1 7 7 0 -1").unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'T',
                pgrp: 7
            }
        );
        assert_eq!(
            parse_stat("1 (sh) S 0 1 1 0").unwrap(),
            Stat {
                state: 'S',
                pgrp: 1
            }
        );
        assert!(parse_stat("1 sh S 0 1").is_err(), "no parenthesis");
        assert!(parse_stat("1 (sh) SS 0 1").is_err(), "two letters");
        assert!(parse_stat("1 (sh) 5 0 1").is_err(), "not a letter");
        assert!(parse_stat("1 (sh) S 0").is_err(), "no pgrp");
        assert!(parse_stat("1 (sh) S 0 -3").is_err(), "negative pgrp");
        assert!(parse_stat("1 (sh) S 0 x").is_err(), "not a number");
        assert!(parse_stat("").is_err());
    }

    #[test]
    fn only_stopped_traced_zombie_and_dead_tasks_count_as_stopped() {
        for c in ['T', 't', 'Z', 'X'] {
            assert!(is_stopped(c), "{c}");
        }
        for c in ['R', 'S', 'D', 'I', 'W', 'P', 'K'] {
            assert!(!is_stopped(c), "{c}");
        }
    }

    #[test]
    fn pid_names_are_positive_decimal_numbers_only() {
        use std::ffi::OsStr;
        assert_eq!(number(OsStr::new("123")), Some(123));
        for bad in ["", "self", "-1", "0", "+5", "1a", "99999999999"] {
            assert_eq!(number(OsStr::new(bad)), None, "{bad}");
        }
    }
}
