//! Time on the command line and in messages: `--at` times, durations, RFC 3339 output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses durations like `100ms`, `2s`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 100ms, 2s, 1m)"))
}

/// A time in ns since the epoch as RFC 3339 UTC (to the second, or to the ns if it has any).
pub fn rfc3339(ns: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns);
    if ns.is_multiple_of(1_000_000_000) {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_nanos(t).to_string()
    }
}

/// Parses `--at`: RFC 3339 (`2026-11-25T21:00:00Z`, `…T22:00:00.5+01:00`; a space for the
/// `T` and a missing zone mean UTC) or `@UNIX_SECONDS` (`@1795734000`, `@1795734000.25`), to
/// ns since the Unix epoch.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let hint = "use RFC 3339 (2026-11-25T21:00:00Z, 2026-11-25T22:00:00+01:00) or \
                @UNIX_SECONDS (@1795734000)";
    if let Some(secs) = s.strip_prefix('@') {
        return parse_unix(secs).ok_or_else(|| format!("{s:?} is not @UNIX_SECONDS; {hint}"));
    }
    let (local, offset) =
        split_offset(s).ok_or_else(|| format!("{s:?}: bad zone offset; {hint}"))?;
    let t = humantime::parse_rfc3339_weak(local).map_err(|e| format!("{s:?}: {e}; {hint}"))?;
    let ns = t
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_nanos()).ok())
        .ok_or_else(|| format!("{s:?} is out of range (1970 to 2554); {hint}"))?;
    // UTC = local time - offset.
    ns.checked_add_signed(-offset)
        .ok_or_else(|| format!("{s:?} is out of range (1970 to 2554); {hint}"))
}

/// Splits a trailing `±HH:MM` zone offset off `s`: `(rest, offset in ns)`; `Z` and no zone
/// are left to humantime (UTC). `None` for an offset out of range.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    let b = s.as_bytes();
    if b.len() < 6 + 19 {
        return Some((s, 0));
    }
    let z = &b[b.len() - 6..];
    let sign = match z[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((s, 0)),
    };
    if z[3] != b':' {
        return Some((s, 0));
    }
    let two = |x: &[u8]| -> Option<i64> {
        x.iter()
            .all(u8::is_ascii_digit)
            .then(|| i64::from(x[0] - b'0') * 10 + i64::from(x[1] - b'0'))
    };
    let (h, m) = (two(&z[1..3])?, two(&z[4..6])?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((
        &s[..s.len() - 6],
        sign * (h * 3600 + m * 60) * 1_000_000_000,
    ))
}

/// `SECONDS[.FRACTION]` to ns.
fn parse_unix(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let secs: u64 = whole.parse().ok()?;
    let frac_ns: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Now, in ns since the Unix epoch (0 before it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A duration in milliseconds, for log fields.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_suffixes() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        let s = 1_795_734_000u64; // 2026-11-26T23:00:00Z
        let ns = s * 1_000_000_000;
        assert_eq!(parse_time("@1795734000"), Ok(ns));
        assert_eq!(parse_time("@1795734000.25"), Ok(ns + 250_000_000));
        assert_eq!(parse_time("2026-11-26T23:00:00Z"), Ok(ns));
        assert_eq!(parse_time("2026-11-26 23:00:00"), Ok(ns));
        assert_eq!(parse_time("2026-11-27T00:00:00+01:00"), Ok(ns));
        assert_eq!(parse_time("2026-11-26T18:30:00-04:30"), Ok(ns));
        assert_eq!(parse_time("2026-11-26T23:00:00.5Z"), Ok(ns + 500_000_000));
        assert_eq!(parse_time("2026-11-26T23:00:00+00:00"), Ok(ns));
        for bad in [
            "yesterday",
            "@",
            "@12x",
            "@1.1234567891",
            "2026-11-26T20:20:00+25:00",
            "2026-13-26T20:20:00Z",
            "1969-12-31T23:59:59Z",
            "@18446744073709551615",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
        assert_eq!(rfc3339(ns), "2026-11-26T23:00:00Z");
    }
}
