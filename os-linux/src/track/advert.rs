//! Where the client's tracked mapping is: a 4-word record the client publishes in the region
//! header, and the host's hostile-input validation of it against `/proc/PID/maps`.

use std::fmt;
use std::io;
use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags};
use rustix::io::{retry_on_intr, Errno};
use rustix::process::Pid;

/// `"TRAK"`, in the high half of word 0.
const MAGIC: u32 = u32::from_be_bytes(*b"TRAK");
/// The record layout version, in the low half of word 0.
const VERSION: u32 = 1;

/// The client's advertisement of its tracked mapping: 4 little-endian `u64` words.
///
/// | word | meaning |
/// |---|---|
/// | 0 | `MAGIC << 32 \| VERSION` (`"TRAK"`, 1); all-zero words = "no tracking" |
/// | 1 | start address of the client's mapping (page-aligned) |
/// | 2 | length of the mapping in bytes (whole pages) |
/// | 3 | generation: even = stable, odd = the client is changing its registration |
///
/// Protocol (client): before dropping or replacing a [`Tracker`](super::Tracker), store an odd
/// generation; after the new registration returned, store the address, length and the next
/// even generation. Host: read the record before and after each scan; trust the scan as a
/// delta only if both reads are equal, even, and equal to the generation of the previous
/// successful scan (otherwise the scan may straddle two registrations: full snapshot).
/// The record format owner places the four words in the region header; they are written with
/// ordinary atomic stores, read by the host as hostile input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// Start address of the client's mapping in the client's address space.
    pub addr: u64,
    /// Length of the mapping, bytes.
    pub len: u64,
    /// Even: stable; odd: changing. Bumped by the client at each change of registration.
    pub generation: u64,
}

impl Advertisement {
    /// Number of `u64` words the record occupies.
    pub const WORDS: usize = 4;

    /// The four words to store. Order of the stores does not matter to the host: it trusts
    /// the record only when two reads around a scan are equal and the generation is even.
    pub fn encode(&self) -> [u64; Self::WORDS] {
        [
            (u64::from(MAGIC) << 32) | u64::from(VERSION),
            self.addr,
            self.len,
            self.generation,
        ]
    }

    /// Decodes four words read from the region; checks only the magic and version (see
    /// [`validate`] for the rest).
    ///
    /// # Errors
    ///
    /// [`AdvertError::NotAdvertised`] for all-zero words (the client does not track);
    /// [`AdvertError::BadMagic`] / [`AdvertError::UnsupportedVersion`] otherwise.
    pub fn decode(words: [u64; Self::WORDS]) -> Result<Self, AdvertError> {
        if words == [0; Self::WORDS] {
            return Err(AdvertError::NotAdvertised);
        }
        let (magic, version) = ((words[0] >> 32) as u32, words[0] as u32);
        if magic != MAGIC {
            return Err(AdvertError::BadMagic(words[0]));
        }
        if version != VERSION {
            return Err(AdvertError::UnsupportedVersion(version));
        }
        Ok(Self {
            addr: words[1],
            len: words[2],
            generation: words[3],
        })
    }

    /// `generation` is even: the client is not in the middle of changing its registration.
    pub fn is_stable(&self) -> bool {
        self.generation.is_multiple_of(2)
    }
}

/// Why the host refuses an advertisement (the caller then takes full snapshots).
#[derive(Debug)]
pub enum AdvertError {
    /// All-zero record: the client does not track writes.
    NotAdvertised,
    /// Word 0 does not carry the magic.
    BadMagic(u64),
    /// A record version this build does not understand.
    UnsupportedVersion(u32),
    /// Odd generation: the client is changing its registration right now.
    Unstable(u64),
    /// Address or length not page-aligned, length zero, or `addr + len` overflows.
    BadRange {
        /// Advertised address.
        addr: u64,
        /// Advertised length.
        len: u64,
    },
    /// The length is not the region's length rounded up to whole pages.
    WrongLength {
        /// Advertised length.
        advertised: u64,
        /// Expected length.
        expected: u64,
    },
    /// No mapping of the client is exactly the advertised range.
    NoSuchMapping {
        /// Advertised address.
        addr: u64,
        /// Advertised length.
        len: u64,
    },
    /// The mapping at the advertised range is not the region (another file, another offset,
    /// private or read-only).
    NotTheRegion(String),
    /// The client maps the region a second time elsewhere: stores there would go untracked.
    SecondMapping {
        /// Start of the other mapping.
        start: u64,
        /// End of the other mapping.
        end: u64,
    },
    /// A line of `/proc/PID/maps` could not be parsed.
    Unparsable(String),
    /// The client process is gone.
    Gone,
    /// Reading `/proc/PID/maps` or `fstat` of the region failed.
    Io(io::Error),
}

impl fmt::Display for AdvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client's tracking advertisement refused (full snapshots instead): ")?;
        match self {
            Self::NotAdvertised => f.write_str("the client does not track writes"),
            Self::BadMagic(w) => write!(f, "word 0 is {w:#x}, not the TRAK magic"),
            Self::UnsupportedVersion(v) => write!(f, "record version {v} is not understood"),
            Self::Unstable(g) => write!(f, "generation {g} is odd: registration in progress"),
            Self::BadRange { addr, len } => write!(
                f,
                "range {addr:#x}+{len:#x} is empty, not page-aligned or overflows"
            ),
            Self::WrongLength {
                advertised,
                expected,
            } => write!(
                f,
                "length {advertised} is not the region's {expected} bytes"
            ),
            Self::NoSuchMapping { addr, len } => {
                write!(f, "the client has no mapping exactly at {addr:#x}+{len:#x}")
            }
            Self::NotTheRegion(why) => write!(f, "the mapping is not the region: {why}"),
            Self::SecondMapping { start, end } => write!(
                f,
                "the client maps the region again at {start:#x}-{end:#x}; stores there \
                 would not be tracked"
            ),
            Self::Unparsable(line) => write!(f, "unparsable /proc/PID/maps line {line:?}"),
            Self::Gone => f.write_str("the client process is gone"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AdvertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A client address range the host has validated: page-aligned, nonempty, exactly one shared
/// writable mapping of the region at file offset 0, and the only mapping of the region in
/// that process. Only [`validate`] / [`validate_maps`] make one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedRange {
    /// Start address in the client; page-aligned.
    addr: u64,
    /// Length in bytes; a nonzero multiple of the page size, `addr + len` does not overflow.
    len: u64,
}

impl TrackedRange {
    /// Start address in the client's address space.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes (whole pages, nonzero).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false` (a validated range is nonempty). Here for clippy.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last address (`addr + len`, which validation proved does not overflow).
    pub fn end(&self) -> u64 {
        self.addr + self.len
    }

    /// A range that was never validated, for the pure tests of code that takes one.
    #[cfg(test)]
    pub(crate) fn for_tests(addr: u64, len: u64) -> Self {
        Self { addr, len }
    }
}

/// Checks an advertisement against the client's `/proc/PID/maps` and the region's identity
/// (`fstat` of `region`: device and inode).
///
/// Run it before every scan: the client's mappings can change at any time (and the scan
/// itself fails with [`ScanError::NotRegistered`](super::ScanError::NotRegistered) if the
/// range stopped being registered).
///
/// # Errors
///
/// Every [`AdvertError`]: see [`validate_maps`]; [`AdvertError::Gone`] if the process is
/// gone; [`AdvertError::Io`] if `fstat` or reading the maps fails otherwise.
pub fn validate(
    advert: &Advertisement,
    pid: Pid,
    region: impl AsFd,
    region_len: u64,
) -> Result<TrackedRange, AdvertError> {
    check_shape(advert, region_len)?;
    let st = rustix::fs::fstat(region).map_err(|e| AdvertError::Io(e.into()))?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let maps = read_maps(pid)?;
    validate_maps(advert, region_len, &maps, (major, minor), st.st_ino)
}

/// The pure part of [`validate`]: `maps` is the text of `/proc/PID/maps`, `dev` the region's
/// `(major, minor)` device and `ino` its inode.
///
/// # Errors
///
/// - [`AdvertError::Unstable`] for an odd generation;
/// - [`AdvertError::BadRange`]: zero length, unaligned address or length, overflow;
/// - [`AdvertError::WrongLength`]: not `region_len` rounded up to whole pages;
/// - [`AdvertError::NoSuchMapping`]: no mapping is exactly the range;
/// - [`AdvertError::NotTheRegion`]: that mapping is another file, not at offset 0, private,
///   or not writable;
/// - [`AdvertError::SecondMapping`]: another mapping of the same file exists;
/// - [`AdvertError::Unparsable`]: a line that is not `start-end perms offset dev inode ...`.
pub fn validate_maps(
    advert: &Advertisement,
    region_len: u64,
    maps: &str,
    dev: (u32, u32),
    ino: u64,
) -> Result<TrackedRange, AdvertError> {
    let range = check_shape(advert, region_len)?;
    let vmas = maps
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Vma::parse(l).ok_or_else(|| AdvertError::Unparsable(l.into())))
        .collect::<Result<Vec<_>, _>>()?;
    let same_file = |v: &Vma<'_>| v.dev == dev && v.ino == ino && ino != 0;
    let exact = vmas
        .iter()
        .find(|v| v.start == range.addr && v.end == range.end())
        .ok_or(AdvertError::NoSuchMapping {
            addr: range.addr,
            len: range.len,
        })?;
    if !same_file(exact) {
        return Err(AdvertError::NotTheRegion(format!(
            "it maps device {:x}:{:x} inode {}, the region is {:x}:{:x} inode {ino}",
            exact.dev.0, exact.dev.1, exact.ino, dev.0, dev.1
        )));
    }
    if exact.offset != 0 {
        return Err(AdvertError::NotTheRegion(format!(
            "it starts at file offset {:#x}, not 0",
            exact.offset
        )));
    }
    if !(exact.shared && exact.writable) {
        return Err(AdvertError::NotTheRegion(format!(
            "it is mapped {:?}, not shared and writable",
            exact.perms
        )));
    }
    if let Some(v) = vmas.iter().find(|v| same_file(v) && v.start != range.addr) {
        return Err(AdvertError::SecondMapping {
            start: v.start,
            end: v.end,
        });
    }
    Ok(range)
}

/// Generation, alignment, emptiness, overflow and length checks.
fn check_shape(advert: &Advertisement, region_len: u64) -> Result<TrackedRange, AdvertError> {
    if !advert.is_stable() {
        return Err(AdvertError::Unstable(advert.generation));
    }
    let page = super::page_size();
    let (addr, len) = (advert.addr, advert.len);
    let bad = || AdvertError::BadRange { addr, len };
    if len == 0 || !addr.is_multiple_of(page) || !len.is_multiple_of(page) {
        return Err(bad());
    }
    addr.checked_add(len).ok_or_else(bad)?;
    let expected = region_len.div_ceil(page).saturating_mul(page);
    if len != expected {
        return Err(AdvertError::WrongLength {
            advertised: len,
            expected,
        });
    }
    Ok(TrackedRange { addr, len })
}

/// One line of `/proc/PID/maps` (also the header line of each mapping in `smaps`).
pub(super) struct Vma<'a> {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) perms: &'a str,
    pub(super) writable: bool,
    pub(super) shared: bool,
    pub(super) offset: u64,
    pub(super) dev: (u32, u32),
    pub(super) ino: u64,
}

impl<'a> Vma<'a> {
    /// Parses `start-end perms offset major:minor inode [path]` (all hex but the inode).
    pub(super) fn parse(line: &'a str) -> Option<Self> {
        let mut f = line.split_ascii_whitespace();
        let (start, end) = f.next()?.split_once('-')?;
        let perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let (major, minor) = f.next()?.split_once(':')?;
        let ino = f.next()?.parse().ok()?;
        let p = perms.as_bytes();
        if p.len() != 4 {
            return None;
        }
        Some(Self {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            writable: p[1] == b'w',
            shared: p[3] == b's',
            offset,
            dev: (
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            ),
            ino,
        })
    }
}

/// Reads `/proc/PID/maps` whole (`open` + `read` until end of file).
fn read_maps(pid: Pid) -> Result<String, AdvertError> {
    let path = format!("/proc/{}/maps", pid.as_raw_nonzero());
    let gone = |e: Errno| {
        if e == Errno::NOENT || e == Errno::SRCH {
            AdvertError::Gone
        } else {
            AdvertError::Io(e.into())
        }
    };
    let fd =
        rustix::fs::open(&path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(gone)?;
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = retry_on_intr(|| rustix::io::read(&fd, &mut buf)).map_err(gone)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    // Paths may be arbitrary bytes; the fields we parse are ASCII.
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn adv(addr: u64, len: u64, generation: u64) -> Advertisement {
        Advertisement {
            addr,
            len,
            generation,
        }
    }

    const MAPS: &str = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234  /usr/bin/client
7f0000000000-7f0000004000 rw-s 00000000 00:01 42    /memfd:region (deleted)
7f0000010000-7f0000012000 rw-s 00000000 00:01 43    /memfd:other (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0     [stack]
";

    #[test]
    fn record_round_trips_and_rejects_foreign_words() {
        let a = adv(0x7f00_0000_0000, 4 * PAGE, 2);
        assert_eq!(Advertisement::decode(a.encode()).unwrap(), a);
        assert!(matches!(
            Advertisement::decode([0; 4]),
            Err(AdvertError::NotAdvertised)
        ));
        let mut w = a.encode();
        w[0] ^= 1 << 40;
        assert!(matches!(
            Advertisement::decode(w),
            Err(AdvertError::BadMagic(_))
        ));
        let mut w = a.encode();
        w[0] += 1;
        assert!(matches!(
            Advertisement::decode(w),
            Err(AdvertError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn advertisement_matching_the_only_mapping_of_the_region_is_accepted() {
        if super::super::page_size() != PAGE {
            return; // the fixture assumes 4 KiB pages
        }
        let r = validate_maps(
            &adv(0x7f00_0000_0000, 4 * PAGE, 0),
            3 * PAGE + 8,
            MAPS,
            (0, 1),
            42,
        )
        .unwrap();
        assert_eq!(
            (r.addr(), r.len(), r.end()),
            (0x7f00_0000_0000, 4 * PAGE, 0x7f00_0000_4000)
        );
    }

    #[test]
    fn hostile_advertisements_are_refused() {
        if super::super::page_size() != PAGE {
            return;
        }
        let v = |a: Advertisement| validate_maps(&a, 4 * PAGE, MAPS, (0, 1), 42).unwrap_err();
        assert!(matches!(
            v(adv(0x7f00_0000_0000, 4 * PAGE, 1)),
            AdvertError::Unstable(1)
        ));
        assert!(matches!(
            v(adv(0x7f00_0000_0008, 4 * PAGE, 0)),
            AdvertError::BadRange { .. }
        ));
        assert!(matches!(
            v(adv(0x7f00_0000_0000, 0, 0)),
            AdvertError::BadRange { .. }
        ));
        assert!(matches!(
            v(adv(u64::MAX - PAGE + 1, 4 * PAGE, 0)),
            AdvertError::BadRange { .. }
        ));
        assert!(matches!(
            v(adv(0x7f00_0000_0000, 8 * PAGE, 0)),
            AdvertError::WrongLength { .. }
        ));
        assert!(matches!(
            v(adv(0x7f00_0000_1000, 4 * PAGE, 0)),
            AdvertError::NoSuchMapping { .. }
        ));
        // Right size, but the other memfd:
        let e = validate_maps(
            &adv(0x7f00_0001_0000, 2 * PAGE, 0),
            2 * PAGE,
            MAPS,
            (0, 1),
            42,
        )
        .unwrap_err();
        assert!(matches!(e, AdvertError::NotTheRegion(_)), "{e}");
        // The stack (private, other file):
        let e = validate_maps(
            &adv(0x7ffd_0000_0000, 0x21 * PAGE, 0),
            0x21 * PAGE,
            MAPS,
            (0, 1),
            42,
        )
        .unwrap_err();
        assert!(matches!(e, AdvertError::NotTheRegion(_)), "{e}");
        // The region mapped twice:
        let twice =
            format!("{MAPS}7f0000020000-7f0000021000 r--s 00000000 00:01 42 /memfd:region\n");
        let e = validate_maps(
            &adv(0x7f00_0000_0000, 4 * PAGE, 0),
            4 * PAGE,
            &twice,
            (0, 1),
            42,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                AdvertError::SecondMapping {
                    start: 0x7f00_0002_0000,
                    ..
                }
            ),
            "{e}"
        );
        // Offset not 0, private, read-only:
        for (perms, off) in [
            ("rw-s", "00001000"),
            ("rw-p", "00000000"),
            ("r--s", "00000000"),
        ] {
            let m = format!("7f0000000000-7f0000004000 {perms} {off} 00:01 42 /memfd:region\n");
            let e = validate_maps(
                &adv(0x7f00_0000_0000, 4 * PAGE, 0),
                4 * PAGE,
                &m,
                (0, 1),
                42,
            )
            .unwrap_err();
            assert!(
                matches!(e, AdvertError::NotTheRegion(_)),
                "{perms} {off}: {e}"
            );
        }
        // Garbage maps text:
        let e = validate_maps(
            &adv(0x7f00_0000_0000, 4 * PAGE, 0),
            4 * PAGE,
            "zz-yy",
            (0, 1),
            42,
        )
        .unwrap_err();
        assert!(matches!(e, AdvertError::Unparsable(_)), "{e}");
    }
}
