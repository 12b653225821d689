//! Client side: find the region's fd in the environment, the systemd way.
//!
//! The protocol (`sd_listen_fds(3)`): `LISTEN_PID` is the pid the fds are meant for (it must be
//! ours, or the variables were inherited by accident), `LISTEN_FDS` how many fds were passed,
//! starting at fd 3, and `LISTEN_FDNAMES` their names, colon-separated. We pick the fd whose
//! name is [`DEFAULT_FD_NAME`] (or the name the caller asks for) and remove the three
//! variables so that our own children do not inherit them.
//!
//! # Why not `sd-notify`'s `listen_fds_with_names`
//!
//! `sd-notify` 0.5 was evaluated (its source in the cargo registry): its
//! `listen_fds_with_names` returns an *empty list* when `LISTEN_PID` or `LISTEN_FDS` is missing
//! or `LISTEN_PID` is someone else's pid, so a client cannot say "`LISTEN_PID` is 1234 but we
//! are 5678" — it can only say "not found"; its errors are untyped `io::Error`s with fixed
//! strings ("invalid LISTEN_FDS") that do not show the offending value; non-UTF-8 values are
//! treated as missing; it yields raw fd numbers, leaving ownership to the caller; and it
//! makes every passed fd close-on-exec with `fcntl` on raw numbers. Parsing three variables
//! is ~60 lines, so it is written here with typed errors ([`ListenError`]) and a pure,
//! testable parser ([`parse_listen_env`]).
//!
//! Adopting fd `3 + i` as an [`OwnedFd`] is an `unsafe` `from_raw_fd`, hence
//! `#![allow(unsafe_code)]` in this module; the invariant (the fd was passed to this pid and
//! nothing else owns it) is what `LISTEN_PID` plus the one-shot guard establish.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use shmsnap_core::format;

use crate::mapping::{Mapping, Protection};
use crate::memfd::Memfd;
use crate::track::{Advertisement, TrackError, Tracker};

/// The fd name upstream clients look for.
pub const DEFAULT_FD_NAME: &str = "SHM_SHARED_FD";
/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// Variable holding the pid the fds are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Variable holding the number of passed fds.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// Variable holding the colon-separated fd names.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// More passed fds than this is treated as garbage.
const MAX_FDS: u32 = 1 << 16;

/// Why the region fd could not be taken from the environment.
#[derive(Debug)]
pub enum ListenError {
    /// A variable is not set: the process was not started with fds (not under the host?).
    Missing {
        /// The variable.
        var: &'static str,
    },
    /// A variable's value is not what the protocol allows.
    Garbled {
        /// The variable.
        var: &'static str,
        /// Its value (lossily decoded).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `LISTEN_PID` names another process: the variables were inherited, not meant for us.
    WrongPid {
        /// The value of `LISTEN_PID`.
        listen_pid: u32,
        /// Our pid.
        our_pid: u32,
    },
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` says.
    CountMismatch {
        /// `LISTEN_FDS`.
        fds: u32,
        /// Number of names in `LISTEN_FDNAMES`.
        names: usize,
    },
    /// No passed fd has the requested name.
    NameNotFound {
        /// The requested name.
        name: String,
        /// The names that were passed.
        names: Vec<String>,
    },
    /// This process already took its listen fd (the variables are gone after the first call).
    AlreadyTaken,
    /// The region is sealed against new writers (`F_SEAL_FUTURE_WRITE`): a client that tracks
    /// its writes already opened it for writing, in this process or another.
    AlreadyOpen {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
    },
    /// The fd with the right name is not a usable region.
    BadFd {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What is wrong.
        source: io::Error,
    },
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { var } => write!(
                f,
                "{var} is not set: no fds were passed to this process \
                 (start it under the shmsnap host, or systemd with an fd store)"
            ),
            Self::Garbled { var, value, reason } => {
                write!(f, "{var}={value:?} is invalid: {reason}")
            }
            Self::WrongPid {
                listen_pid,
                our_pid,
            } => write!(
                f,
                "{LISTEN_PID}={listen_pid} but this process is {our_pid}: the fds were meant for \
                 another process (inherited variables?)"
            ),
            Self::CountMismatch { fds, names } => write!(
                f,
                "{LISTEN_FDNAMES} has {names} names but {LISTEN_FDS}={fds}"
            ),
            Self::NameNotFound { name, names } => write!(
                f,
                "no fd named {name:?} in {LISTEN_FDNAMES} (passed: {names:?})"
            ),
            Self::AlreadyTaken => f.write_str("the listen fd was already taken by this process"),
            Self::AlreadyOpen { fd, name } => write!(
                f,
                "fd {fd} ({name:?}): the region is already open for writing (its writer sealed \
                 it so that no other process can write it behind write tracking); open it once \
                 per client process and write through that one mapping (threads may share it; \
                 forked children cannot use it)"
            ),
            Self::BadFd { fd, name, source } => {
                write!(f, "fd {fd} ({name:?}) is not a usable region: {source}")
            }
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadFd { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn garbled(var: &'static str, value: &OsString, reason: &'static str) -> ListenError {
    ListenError::Garbled {
        var,
        value: value.to_string_lossy().into_owned(),
        reason,
    }
}

fn get_str(
    var: &'static str,
    get: &impl Fn(&str) -> Option<OsString>,
) -> Result<(OsString, String), ListenError> {
    let raw = get(var).ok_or(ListenError::Missing { var })?;
    let s = raw
        .to_str()
        .ok_or_else(|| garbled(var, &raw, "not UTF-8"))?
        .to_owned();
    Ok((raw, s))
}

fn parse_number(var: &'static str, raw: &OsString, s: &str) -> Result<u32, ListenError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(garbled(var, raw, "not a decimal number"));
    }
    s.parse::<u32>()
        .map_err(|_| garbled(var, raw, "number too large"))
}

/// Parses `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` as returned by `get` (e.g.
/// `|k| std::env::var_os(k)`) for the process `our_pid`; returns the fd names, the `i`-th
/// name belonging to fd `3 + i`. Pure: reads nothing else, changes nothing.
///
/// # Errors
///
/// [`ListenError::Missing`], [`ListenError::Garbled`], [`ListenError::WrongPid`],
/// [`ListenError::CountMismatch`], each naming the variable.
pub fn parse_listen_env(
    our_pid: u32,
    get: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<String>, ListenError> {
    let (raw, s) = get_str(LISTEN_PID, &get)?;
    let listen_pid = parse_number(LISTEN_PID, &raw, &s)?;
    if listen_pid == 0 {
        return Err(garbled(LISTEN_PID, &raw, "pid 0 is not a process"));
    }
    if listen_pid != our_pid {
        return Err(ListenError::WrongPid {
            listen_pid,
            our_pid,
        });
    }
    let (raw, s) = get_str(LISTEN_FDS, &get)?;
    let fds = parse_number(LISTEN_FDS, &raw, &s)?;
    if fds == 0 {
        return Err(garbled(LISTEN_FDS, &raw, "zero fds passed"));
    }
    if fds > MAX_FDS {
        return Err(garbled(LISTEN_FDS, &raw, "implausibly many fds"));
    }
    let (raw, s) = get_str(LISTEN_FDNAMES, &get)?;
    let names: Vec<String> = s.split(':').map(str::to_owned).collect();
    if names.len() != fds as usize {
        return Err(ListenError::CountMismatch {
            fds,
            names: names.len(),
        });
    }
    if names.iter().any(String::is_empty) {
        return Err(garbled(LISTEN_FDNAMES, &raw, "empty fd name"));
    }
    Ok(names)
}

/// The fd number of the first passed fd named `name`.
///
/// # Errors
///
/// [`ListenError::NameNotFound`] listing the names that were passed.
pub fn fd_for_name(names: &[String], name: &str) -> Result<RawFd, ListenError> {
    let i = names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| ListenError::NameNotFound {
            name: name.to_owned(),
            names: names.to_vec(),
        })?;
    // i < MAX_FDS, so this cannot overflow.
    Ok(LISTEN_FDS_START + i as RawFd)
}

/// Set once this process has adopted its listen fd, so it is never owned twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the passed fd named `name` from the environment (see the [module docs](self)) and
/// removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment — also when
/// they are wrong, so children never inherit them. The fd is made close-on-exec
/// (`fcntl(F_SETFD, FD_CLOEXEC)`); other passed fds are left alone.
///
/// # Thread safety
///
/// This changes the process environment. Call it early in `main`, before starting threads:
/// another thread calling C's `getenv` (directly or inside a library such as a DNS resolver)
/// at the same time is undefined behaviour in libc. (Rust's own `std::env` functions take a
/// lock and are safe among themselves; this crate's edition still calls `remove_var` safe.)
///
/// # References
///  - [`sd_listen_fds(3)`](https://man7.org/linux/man-pages/man3/sd_listen_fds.3.html)
///  - [Linux `fcntl`](https://man7.org/linux/man-pages/man2/fcntl.2.html)
///
/// # Errors
///
/// Any error of [`parse_listen_env`] or [`fd_for_name`]; [`ListenError::AlreadyTaken`] on a
/// second successful call; [`ListenError::BadFd`] if the fd is not open.
pub fn take_listen_fd(name: &str) -> Result<OwnedFd, ListenError> {
    let our_pid = rustix::process::getpid().as_raw_pid().unsigned_abs();
    let parsed = parse_listen_env(our_pid, |k| std::env::var_os(k));
    for var in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
        std::env::remove_var(var);
    }
    let names = match parsed {
        Ok(n) => n,
        // After a first successful call the variables are gone.
        Err(ListenError::Missing { .. }) if TAKEN.load(Ordering::Relaxed) => {
            return Err(ListenError::AlreadyTaken)
        }
        Err(e) => return Err(e),
    };
    let fd = fd_for_name(&names, name)?;
    if TAKEN.swap(true, Ordering::Relaxed) {
        return Err(ListenError::AlreadyTaken);
    }
    // SAFETY: LISTEN_PID equals our pid, so the parent passed fds 3..3+LISTEN_FDS to this very
    // process; `fd` is one of them, and TAKEN guarantees this crate adopts it once. If it is
    // not open, F_SETFD below fails with EBADF and the OwnedFd is forgotten, never closed.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Err(e) = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC) {
        std::mem::forget(owned);
        return Err(ListenError::BadFd {
            fd,
            name: name.to_owned(),
            source: e.into(),
        });
    }
    Ok(owned)
}

/// [`take_listen_fd`], then adopt it as a [`Memfd`], map it read-write and set write
/// tracking up ([`start_tracking`]) when the host asks for it (`SHMSNAP_TRACK=1`, see
/// [`tracking_enabled`]): the host then snapshots only the pages this process writes.
/// Tracking is best effort: where the kernel or a sandbox refuses it, the advertisement is
/// cleared and the host takes full snapshots.
///
/// With tracking on, the mapping is not inherited by `fork` (a child touching it gets
/// `SIGSEGV`) and the region is sealed against every other writer (`write`, `pwrite`, new
/// writable mappings, in any process): see [`start_tracking`]. Open the region once, in the
/// process that writes it.
///
/// The region must be sealed against shrinking (the host does that); see
/// [`Mapping::of_memfd`].
///
/// # Thread safety
///
/// As [`take_listen_fd`]: call before starting threads.
///
/// # Errors
///
/// As [`take_listen_fd`]; [`ListenError::AlreadyOpen`] if the region is sealed against new
/// writers (a tracked client opened it already); [`ListenError::BadFd`] if the fd is not a
/// nonempty regular file, not sealed against shrinking, or cannot be mapped.
pub fn open_client_region(name: &str) -> Result<(Memfd, Mapping), ListenError> {
    let track = tracking_enabled(|k| std::env::var_os(k));
    adopt_region(take_listen_fd(name)?, name, track)
}

/// [`open_client_region`] after [`take_listen_fd`]: adopt, check, map, track if `track`.
fn adopt_region(fd: OwnedFd, name: &str, track: bool) -> Result<(Memfd, Mapping), ListenError> {
    let raw = {
        use std::os::fd::AsRawFd;
        fd.as_raw_fd()
    };
    let bad = |source| ListenError::BadFd {
        fd: raw,
        name: name.to_owned(),
        source,
    };
    let memfd = Memfd::from_fd(fd).map_err(bad)?;
    if memfd.is_write_sealed().map_err(bad)? {
        return Err(ListenError::AlreadyOpen {
            fd: raw,
            name: name.to_owned(),
        });
    }
    let mut map = Mapping::of_memfd(&memfd, Protection::ReadWrite).map_err(bad)?;
    // Best effort by design: whatever happens, the host falls back to full snapshots.
    let _ = start_tracking(&memfd, &mut map, track);
    Ok((memfd, map))
}

/// Environment variable through which the host asks its client to track its writes: `1`
/// under `--strategy queue --incremental auto`, `0` otherwise.
pub const TRACK_ENV: &str = "SHMSNAP_TRACK";

/// `true` only if [`TRACK_ENV`] is `1` in `get` (e.g. `|k| std::env::var_os(k)`); pure.
///
/// Tracking is opt-in because it seals the region against every other writer for good
/// ([`start_tracking`]): only a host that moves a sealed region to a fresh memfd before it
/// starts the next client may ask for it (the shmsnap host does). A client started by anyone
/// else leaves its region as it found it.
pub fn tracking_enabled(get: impl Fn(&str) -> Option<OsString>) -> bool {
    get(TRACK_ENV).is_some_and(|v| v == "1")
}

/// What [`start_tracking`] did.
#[derive(Debug)]
pub enum Tracking {
    /// Registered and advertised at header words `format::word::TRACK`.
    Advertised(Advertisement),
    /// Not asked for (no `SHMSNAP_TRACK=1`); the advertisement is cleared.
    Off,
    /// The region is too small to hold the advertisement (fewer than 44 words).
    TooSmall,
    /// Registration failed (old kernel, sandbox, ...); the advertisement is cleared.
    Failed(TrackError),
}

/// Registers write tracking over `map` (a mapping of `memfd`) and makes it the region's only
/// writer, then advertises it (DESIGN §11):
///
/// 1. [`Tracker::register`], kept in the mapping ([`Mapping::set_tracker`]: dropped before
///    the unmap);
/// 2. [`Mapping::dont_fork`]: a forked child does not inherit the mapping, so no child can
///    store into the region behind the registration (it gets `SIGSEGV` instead, loudly);
/// 3. [`Memfd::seal_future_write`]: from now on no process can `write`/`pwrite` the region or
///    map it writable — this mapping, made before, is the last writable one this process
///    makes (another process's older one is what the host's census looks for);
/// 4. the [`Advertisement`] in header words 40..44 (`format::word::TRACK`), with a generation
///    above the one found there.
///
/// With `enabled` false, or when any step fails, the words are cleared instead (a stale
/// advertisement, e.g. of a restored image, is never left behind) and the tracker is dropped:
/// the host then takes full snapshots. A failed seal leaves the mapping `DONTFORK`.
///
/// Call it once, after mapping the region and before storing into it through other
/// mappings; core's `init`/`attach` never touch these words, so it may run before or after
/// them.
pub fn start_tracking(memfd: &Memfd, map: &mut Mapping, enabled: bool) -> Tracking {
    let track = format::word::TRACK;
    let Some(words) = map.words().get(track.clone()) else {
        return Tracking::TooSmall;
    };
    let old = std::array::from_fn(|i| words[i].load(Ordering::Relaxed));
    let previous = Advertisement::decode(old).map_or(0, |a| a.generation);
    // Odd: "changing". Release on every store here: each orders the stores before it, so a
    // host that reads an even generation with Acquire and then the other words, and the same
    // generation again after its scan, saw one registration's words (a seqlock).
    let odd = previous | 1;
    words[3].store(odd, Ordering::Release);
    // A previous registration of this mapping ends first (a range registers once).
    map.drop_tracker();
    let registered = if enabled {
        register_sole_writer(memfd, map)
    } else {
        Err(TrackError::Unavailable(format!("{TRACK_ENV} is not 1")))
    };
    let (addr, len) = match registered {
        Ok(r) => r,
        Err(e) => {
            map.drop_tracker();
            clear_advert(&map.words()[track.clone()]);
            return if enabled {
                Tracking::Failed(e)
            } else {
                Tracking::Off
            };
        }
    };
    let words = &map.words()[track];
    let advert = Advertisement {
        addr,
        len,
        generation: odd.wrapping_add(1),
    };
    // Release (see above); the generation (index 3) is stored last.
    for (w, v) in words.iter().zip(advert.encode()) {
        w.store(v, Ordering::Release);
    }
    Tracking::Advertised(advert)
}

/// Steps 1–3 of [`start_tracking`]: register, `DONTFORK`, seal; the tracked range.
fn register_sole_writer(memfd: &Memfd, map: &mut Mapping) -> Result<(u64, u64), TrackError> {
    let t = Tracker::register(map)?;
    let (addr, len) = (t.addr(), t.len());
    let io = |op| move |source| TrackError::Io { op, source };
    map.set_tracker(t).map_err(io("keeping the tracker"))?;
    map.dont_fork()
        .map_err(io("madvise(MADV_DONTFORK) of the region"))?;
    memfd.seal_future_write().map_err(io(
        "sealing the region against other writers (F_SEAL_FUTURE_WRITE)",
    ))?;
    Ok((addr, len))
}

/// Zeroes the advertisement ("no tracking"); a half-cleared one fails the host's decode.
fn clear_advert(words: &[std::sync::atomic::AtomicU64]) {
    for w in words {
        // Release: as in `start_tracking`.
        w.store(0, Ordering::Release);
    }
}

/// For tests: [`start_tracking`] on `map`, or `None` — after a `SKIPPED` line — when the kernel
/// lacks write tracking and `SHMSNAP_TEST_ALLOW_MISSING` names `uffd-wp`; a test never passes
/// silently without it ([`shmsnap_testkit::require`]).
///
/// # Panics
///
/// When tracking is missing and not allowed to be, or fails otherwise.
#[cfg(test)]
pub(crate) fn tracked_or_skip(memfd: &Memfd, map: &mut Mapping) -> Option<Advertisement> {
    let probe = match start_tracking(memfd, map, true) {
        Tracking::Advertised(a) => Ok(a),
        Tracking::Failed(TrackError::Unavailable(why)) => Err(why),
        other => panic!("{other:?}"),
    };
    shmsnap_testkit::require::require(
        "uffd-wp",
        "write tracking needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7 or later)",
        probe,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(len: u64) -> (Memfd, Mapping) {
        let memfd = Memfd::create("track-listen", len).unwrap();
        memfd.seal_against_shrink().unwrap();
        let map = Mapping::of_memfd(&memfd, Protection::ReadWrite).unwrap();
        (memfd, map)
    }

    fn advert_words(map: &Mapping) -> [u64; 4] {
        let w = &map.words()[format::word::TRACK];
        std::array::from_fn(|i| w[i].load(Ordering::Relaxed))
    }

    /// A client that tracks seals the region; a second writable open, in this process or any
    /// other, is refused with an error that says why and what to do.
    #[test]
    fn a_second_writable_open_of_a_tracked_region_is_refused_with_a_reason() {
        let (memfd, _map) = region(1 << 16);
        let dup = || rustix::io::fcntl_dupfd_cloexec(&memfd, 0).unwrap();
        let (_first, first_map) = adopt_region(dup(), "r", true).unwrap();
        if first_map.tracker().is_none() {
            eprintln!("skipped: tracking unavailable here, nothing is sealed");
            return;
        }
        assert!(memfd.is_write_sealed().unwrap());
        let e = adopt_region(dup(), "r", false).unwrap_err();
        assert!(matches!(e, ListenError::AlreadyOpen { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("already open for writing") && text.contains("open it once"),
            "{text}"
        );
    }

    #[test]
    fn tracking_is_on_only_when_the_host_asks_with_shmsnap_track_1() {
        assert!(!tracking_enabled(env(&[])), "opt-in: the host asks for it");
        assert!(tracking_enabled(env(&[(TRACK_ENV, "1")])));
        assert!(!tracking_enabled(env(&[(TRACK_ENV, "0")])));
        assert!(!tracking_enabled(env(&[(TRACK_ENV, "yes")])));
    }

    #[test]
    fn the_advert_is_published_and_survives_queue_and_triple_init() {
        let (memfd, mut map) = region(1 << 20);
        let Some(advert) = tracked_or_skip(&memfd, &mut map) else {
            return;
        };
        assert!(map.tracker().is_some());
        assert_eq!(advert.addr, map.words().as_ptr() as u64);
        assert!(advert.is_stable());
        assert_eq!(Advertisement::decode(advert_words(&map)).unwrap(), advert);
        let request = shmsnap_core::LayoutRequest {
            entries: 8,
            data_size: 4096,
        };
        shmsnap_core::Writer::open_or_init(map.words(), request, shmsnap_testkit::CLIENT).unwrap();
        assert_eq!(
            Advertisement::decode(advert_words(&map)).unwrap(),
            advert,
            "queue init wiped the advert"
        );
        shmsnap_core::Writer::attach(map.words(), shmsnap_testkit::CLIENT).unwrap();
        assert_eq!(Advertisement::decode(advert_words(&map)).unwrap(), advert);

        let (memfd, mut map) = region(1 << 20);
        let Tracking::Advertised(advert) = start_tracking(&memfd, &mut map, true) else {
            panic!("tracking worked a moment ago");
        };
        let request = shmsnap_core::triple::TripleRequest {
            buffers: 3,
            buffer_size: 4096,
        };
        shmsnap_core::triple::TripleClient::open_or_init(
            map.words(),
            request,
            shmsnap_testkit::CLIENT,
        )
        .unwrap();
        assert_eq!(
            Advertisement::decode(advert_words(&map)).unwrap(),
            advert,
            "triple init wiped the advert"
        );
    }

    #[test]
    fn a_new_registration_advertises_a_newer_generation_and_off_clears_a_stale_one() {
        let (memfd, mut map) = region(1 << 16);
        let stale = Advertisement {
            addr: 0x7000_0000_0000,
            len: 1 << 16,
            generation: 6,
        };
        for (w, v) in map.words()[format::word::TRACK].iter().zip(stale.encode()) {
            w.store(v, Ordering::Relaxed);
        }
        match start_tracking(&memfd, &mut map, true) {
            Tracking::Advertised(a) => assert_eq!(a.generation, 8),
            Tracking::Failed(TrackError::Unavailable(_)) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            start_tracking(&memfd, &mut map, false),
            Tracking::Off
        ));
        assert!(map.tracker().is_none(), "off must end the registration");
        assert_eq!(advert_words(&map), [0; 4], "off must clear the advert");
        let (memfd, mut tiny) = region(256);
        assert!(matches!(
            start_tracking(&memfd, &mut tiny, true),
            Tracking::TooSmall
        ));
    }
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        parse_listen_env(42, env(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn well_formed_variables_give_names_and_fd_numbers() {
        let names = parse_listen_env(
            42,
            env(&[
                ("LISTEN_PID", "42"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "sock:SHM_SHARED_FD"),
            ]),
        )
        .unwrap();
        assert_eq!(fd_for_name(&names, DEFAULT_FD_NAME).unwrap(), 4);
        assert_eq!(fd_for_name(&names, "sock").unwrap(), 3);
        let e = fd_for_name(&names, "other").unwrap_err();
        assert!(matches!(e, ListenError::NameNotFound { .. }));
        assert!(
            e.to_string().contains("\"other\"") && e.to_string().contains("sock"),
            "{e}"
        );
    }

    #[test]
    fn every_bad_variable_is_named_with_what_is_wrong() {
        let ok = [
            ("LISTEN_PID", "42"),
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "x"),
        ];
        let with = |k: &str, v: &'static str| {
            let mut e: Vec<(&str, &str)> = ok.iter().copied().filter(|(kk, _)| *kk != k).collect();
            e.push((ok.iter().find(|(kk, _)| *kk == k).unwrap().0, v));
            e
        };
        let without = |k: &str| {
            ok.iter()
                .copied()
                .filter(|(kk, _)| *kk != k)
                .collect::<Vec<_>>()
        };

        assert!(err(&without("LISTEN_PID")).starts_with("LISTEN_PID is not set"));
        assert!(err(&without("LISTEN_FDS")).starts_with("LISTEN_FDS is not set"));
        assert!(err(&without("LISTEN_FDNAMES")).starts_with("LISTEN_FDNAMES is not set"));
        let e = err(&with("LISTEN_PID", "41"));
        assert!(e.contains("LISTEN_PID=41") && e.contains("42"), "{e}");
        assert!(err(&with("LISTEN_PID", "4x2"))
            .contains("LISTEN_PID=\"4x2\" is invalid: not a decimal"));
        assert!(err(&with("LISTEN_PID", "")).contains("LISTEN_PID=\"\" is invalid"));
        assert!(err(&with("LISTEN_PID", "-42")).contains("not a decimal"));
        assert!(err(&with("LISTEN_PID", "0")).contains("pid 0"));
        assert!(err(&with("LISTEN_FDS", "one")).contains("LISTEN_FDS=\"one\" is invalid"));
        assert!(err(&with("LISTEN_FDS", "99999999999")).contains("too large"));
        assert!(err(&with("LISTEN_FDS", "0")).contains("zero fds"));
        assert!(err(&with("LISTEN_FDS", "100000")).contains("implausibly many"));
        let e = err(&with("LISTEN_FDNAMES", "a:b"));
        assert!(e.contains("2 names") && e.contains("LISTEN_FDS=1"), "{e}");
        assert!(err(&with("LISTEN_FDNAMES", "")).contains("empty fd name"));
        let bad_utf8 = {
            use std::os::unix::ffi::OsStringExt;
            OsString::from_vec(vec![0xff, b'1'])
        };
        let e = parse_listen_env(42, |k| {
            if k == "LISTEN_PID" {
                Some(bad_utf8.clone())
            } else {
                None
            }
        });
        assert!(e.unwrap_err().to_string().contains("not UTF-8"));
    }

    /// Serializes the tests that change this process's environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn variables_are_removed_even_when_meant_for_another_process() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var(LISTEN_PID, "1");
        std::env::set_var(LISTEN_FDS, "1");
        std::env::set_var(LISTEN_FDNAMES, DEFAULT_FD_NAME);
        let e = take_listen_fd(DEFAULT_FD_NAME).unwrap_err();
        assert!(
            matches!(e, ListenError::WrongPid { listen_pid: 1, .. }),
            "{e}"
        );
        for v in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
            assert!(std::env::var_os(v).is_none(), "{v} was not removed");
        }
        let e = open_client_region(DEFAULT_FD_NAME).unwrap_err();
        assert!(
            matches!(e, ListenError::Missing { var: "LISTEN_PID" }),
            "{e}"
        );
    }

    #[test]
    fn missing_name_is_reported_and_nothing_is_adopted() {
        let _g = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let pid = rustix::process::getpid().as_raw_pid().to_string();
        std::env::set_var(LISTEN_PID, &pid);
        std::env::set_var(LISTEN_FDS, "1");
        std::env::set_var(LISTEN_FDNAMES, "something_else");
        let e = take_listen_fd(DEFAULT_FD_NAME).unwrap_err();
        assert!(matches!(e, ListenError::NameNotFound { .. }), "{e}");
        assert!(!TAKEN.load(Ordering::Relaxed));
        assert!(std::env::var_os(LISTEN_FDNAMES).is_none());
    }
}
