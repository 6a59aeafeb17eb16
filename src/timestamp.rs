//! Reading timestamps the way apps write them: epoch seconds (integer or float), epoch
//! milliseconds, ISO 8601 / RFC 3339 text, and SQLite `datetime()` text
//! (`YYYY-MM-DD HH:MM:SS[.fff]`, UTC). Pure.
//!
//! Numbers are told apart by magnitude: below 10^11 they are seconds (10^11 s is the
//! year 5138), below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds.
//! A value that fits none is an error the caller counts as `bad_timestamp` and skips.
//!
//! A time that parses is still only used when it is one an app could have written:
//! [`plausible`] keeps times within [`EARLIEST_APP_TIME_NS`] (2000-01-01) and a day past
//! the sidecar's own clock ([`FUTURE_SLACK_NS`]); `i64::MAX` or `0` milliseconds are
//! broken values, not history, and must never become a 56-year step.

use crate::clock::NANOS_PER_SEC;

/// Earliest time an app's row may carry: 2000-01-01T00:00:00Z. Older is a broken value
/// (0, a negative, `i64::MIN`), not history.
pub const EARLIEST_APP_TIME_NS: i64 = 946_684_800 * NANOS_PER_SEC;
/// How far past the sidecar's clock a written time may be: a day covers an app whose
/// clock is ahead or a zone written as UTC, while `i64::MAX` ms (year 292 million) is out.
pub const FUTURE_SLACK_NS: i64 = 86_400 * NANOS_PER_SEC;
/// Latest deadline a planned wait may hold (2200-01-01): a wake time can be far ahead,
/// but not past where i64 nanoseconds end (2262).
pub const LATEST_DEADLINE_NS: i64 = 7_258_118_400 * NANOS_PER_SEC;

/// `ns` when it is a time an app could have written by `now_ns`: within
/// [[`EARLIEST_APP_TIME_NS`], `now_ns` + [`FUTURE_SLACK_NS`]].
pub fn plausible(ns: i64, now_ns: i64) -> Result<i64, String> {
    let latest = now_ns.saturating_add(FUTURE_SLACK_NS);
    if ns < EARLIEST_APP_TIME_NS {
        Err(format!("{ns} ns is before 2000"))
    } else if ns > latest {
        Err(format!("{ns} ns is more than a day ahead of this clock"))
    } else {
        Ok(ns)
    }
}

/// Epoch milliseconds (DBOS's `*_epoch_ms` columns) as unix ns, when [`plausible`].
pub fn epoch_ms_ns(ms: i64, now_ns: i64) -> Result<i64, String> {
    let ns = ms
        .checked_mul(1_000_000)
        .ok_or_else(|| format!("{ms} ms is not a time"))?;
    plausible(ns, now_ns)
}

/// Largest magnitude read as seconds; larger is milliseconds.
const SECONDS_BELOW: f64 = 1e11;
/// Largest magnitude read as milliseconds; larger is microseconds.
const MILLIS_BELOW: f64 = 1e14;
/// Largest magnitude read as microseconds; larger is nanoseconds.
const MICROS_BELOW: f64 = 1e17;

/// A timestamp value as it comes out of a database or a JSON document.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime<'a> {
    Int(i64),
    Float(f64),
    Text(&'a str),
}

/// Converts a raw timestamp into unix nanoseconds.
pub fn to_unix_ns(raw: RawTime<'_>) -> Result<i64, String> {
    match raw {
        RawTime::Int(i) => int_to_ns(i),
        RawTime::Float(f) => float_to_ns(f),
        RawTime::Text(t) => text_to_ns(t.trim()),
    }
}

/// Nanoseconds per unit for a number of this magnitude (seconds, ms, µs or ns).
fn unit_ns(magnitude: f64) -> i64 {
    if magnitude < SECONDS_BELOW {
        NANOS_PER_SEC
    } else if magnitude < MILLIS_BELOW {
        1_000_000
    } else if magnitude < MICROS_BELOW {
        1_000
    } else {
        1
    }
}

fn int_to_ns(i: i64) -> Result<i64, String> {
    if i <= 0 {
        return Err(format!("{i} is not a time"));
    }
    i.checked_mul(unit_ns(i as f64))
        .ok_or_else(|| format!("{i} is too far in the future"))
}

fn float_to_ns(f: f64) -> Result<i64, String> {
    if !f.is_finite() || f <= 0.0 {
        return Err(format!("{f} is not a time"));
    }
    let unit = unit_ns(f);
    // Whole units and the fraction separately, so 1763900000.25 s is exact to the ns.
    let whole = f.trunc();
    let frac_ns = ((f - whole) * unit as f64).round() as i64;
    (whole as i64)
        .checked_mul(unit)
        .and_then(|ns| ns.checked_add(frac_ns))
        .ok_or_else(|| format!("{f} is too far in the future"))
}

fn text_to_ns(t: &str) -> Result<i64, String> {
    if t.is_empty() {
        return Err("empty text is not a time".into());
    }
    if let Ok(i) = t.parse::<i64>() {
        return int_to_ns(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        return float_to_ns(f);
    }
    let bad = || format!("{t:?} is not an ISO 8601 time");
    // SQLite's datetime() and Postgres write a space where RFC 3339 wants a 'T'.
    let mut s = t.replacen(' ', "T", 1);
    if s.len() == 10 {
        s.push_str("T00:00:00"); // a bare date
    }
    // The zone starts after "YYYY-MM-DDTHH:MM:SS": Z, ±HH, ±HHMM or ±HH:MM; none is UTC.
    let zone_at = s
        .get(19..)
        .and_then(|tail| tail.find(['Z', 'z', '+', '-']))
        .map(|i| i + 19);
    let (base, offset_secs) = match zone_at {
        None => (s.as_str(), 0),
        Some(i) => (&s[..i], zone_offset_secs(&s[i..]).ok_or_else(bad)?),
    };
    let time = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let ns = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{t:?} is before 1970"))?
        .as_nanos();
    // i64 nanoseconds end in 2262: a later year must not wrap into the past.
    let ns = i64::try_from(ns).map_err(|_| format!("{t:?} is too far in the future"))?;
    Ok(ns - offset_secs * NANOS_PER_SEC)
}

/// Seconds east of UTC for `Z`, `±HH`, `±HHMM` or `±HH:MM`.
fn zone_offset_secs(zone: &str) -> Option<i64> {
    if zone.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
    if !(digits.len() == 2 || digits.len() == 4) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    Some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_763_900_000; // 2025-11-23T12:13:20Z

    #[test]
    fn numbers_by_magnitude() {
        assert_eq!(to_unix_ns(RawTime::Int(T)), Ok(T * NANOS_PER_SEC));
        assert_eq!(
            to_unix_ns(RawTime::Int(T * 1000 + 250)),
            Ok(T * NANOS_PER_SEC + 250_000_000)
        );
        assert_eq!(
            to_unix_ns(RawTime::Float(T as f64 + 0.5)),
            Ok(T * NANOS_PER_SEC + 500_000_000)
        );
        assert_eq!(
            to_unix_ns(RawTime::Int(T * 1_000_000)),
            Ok(T * NANOS_PER_SEC)
        );
        assert_eq!(
            to_unix_ns(RawTime::Text("1763900000.25")),
            Ok(T * NANOS_PER_SEC + 250_000_000)
        );
    }

    #[test]
    fn iso_and_sqlite_text() {
        let want = T * NANOS_PER_SEC;
        assert_eq!(to_unix_ns(RawTime::Text("2025-11-23T12:13:20Z")), Ok(want));
        assert_eq!(to_unix_ns(RawTime::Text("2025-11-23 12:13:20")), Ok(want));
        assert_eq!(
            to_unix_ns(RawTime::Text("2025-11-23T14:13:20+02:00")),
            Ok(want)
        );
        assert_eq!(
            to_unix_ns(RawTime::Text("2025-11-23T12:13:20.5Z")),
            Ok(want + 500_000_000)
        );
        assert_eq!(
            to_unix_ns(RawTime::Text("2025-11-23 07:13:20.000-05:00")),
            Ok(want)
        );
        // Postgres timestamptz text.
        assert_eq!(
            to_unix_ns(RawTime::Text("2025-11-23 12:13:20.123456+00")),
            Ok(want + 123_456_000)
        );
        assert_eq!(
            to_unix_ns(RawTime::Text("2025-11-23 17:43:20+0530")),
            Ok(want)
        );
        assert_eq!(
            to_unix_ns(RawTime::Text("2025-11-23")),
            Ok(want - 44_000 * NANOS_PER_SEC)
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(to_unix_ns(RawTime::Text("soon")).is_err());
        assert!(to_unix_ns(RawTime::Text("")).is_err());
        assert!(to_unix_ns(RawTime::Int(0)).is_err());
        assert!(to_unix_ns(RawTime::Float(f64::NAN)).is_err());
        assert!(
            to_unix_ns(RawTime::Text("2999-01-01T00:00:00Z")).is_err(),
            "past i64 ns: no wrap"
        );
    }

    /// Issue 14 item 8: DBOS times of `i64::MAX`/`i64::MIN` ms gave 56-year steps.
    #[test]
    fn times_outside_2000_to_a_day_ahead_are_not_used() {
        let now = T * NANOS_PER_SEC;
        assert_eq!(epoch_ms_ns(T * 1000, now), Ok(now));
        assert!(epoch_ms_ns(i64::MAX, now).is_err());
        assert!(epoch_ms_ns(i64::MIN, now).is_err());
        assert!(epoch_ms_ns(0, now).is_err());
        assert!(
            epoch_ms_ns(T * 1000 + 86_401_000, now).is_err(),
            "over a day ahead"
        );
        assert!(
            epoch_ms_ns(T * 1000 + 86_399_000, now).is_ok(),
            "within a day ahead"
        );
        assert!(
            plausible(i64::MAX, i64::MAX).is_ok(),
            "no overflow at the edge"
        );
        assert!(plausible(EARLIEST_APP_TIME_NS - 1, now).is_err());
    }
}
