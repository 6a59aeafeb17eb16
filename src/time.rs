//! Times as operators type them and as reports print them. Pure: `now` is an argument.
//!
//! Input ([`parse_time`]): `now`; a duration meaning that long before now (`7d`, `36h`,
//! `90m`); or an absolute time as [`crate::timestamp`] reads it (RFC 3339 /
//! ISO 8601 text, a bare date at 00:00 UTC, epoch seconds or milliseconds). A window is
//! two of those joined by `..` ([`parse_window`]), start included, end excluded.
//!
//! Output: RFC 3339 UTC to the second ([`rfc3339`]), UTC days ([`day_of`],
//! [`day_label`]) and short human durations ([`human`]). Written here rather than through
//! `SystemTime` so times before 1970 or far in the future cannot panic.

use crate::clock::NANOS_PER_SEC;
use crate::timestamp::{to_unix_ns, RawTime};

/// Nanoseconds in a UTC day.
pub const DAY_NS: i64 = 86_400 * NANOS_PER_SEC;

/// A half-open span of wall time `[start_ns, end_ns)`, unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub start_ns: i64,
    pub end_ns: i64,
}

impl Window {
    pub fn len_ns(&self) -> i64 {
        (self.end_ns - self.start_ns).max(0)
    }

    pub fn contains(&self, ns: i64) -> bool {
        self.start_ns <= ns && ns < self.end_ns
    }

    /// The part of this window inside `[from_ns, until_ns)` (empty windows have length 0).
    pub fn clip(&self, from_ns: i64, until_ns: i64) -> Window {
        let start_ns = self.start_ns.max(from_ns);
        Window {
            start_ns,
            end_ns: self.end_ns.min(until_ns).max(start_ns),
        }
    }

    /// Whether the two windows share any time.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start_ns < other.end_ns && other.start_ns < self.end_ns
    }
}

/// Reads one time: `now`, a duration before `now_ns`, or an absolute time.
pub fn parse_time(text: &str, now_ns: i64) -> Result<i64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now_ns);
    }
    // A duration ("7d", "36h") is "that long ago"; a bare number is an epoch time.
    if text.starts_with(|c: char| c.is_ascii_digit())
        && text.ends_with(|c: char| c.is_ascii_alphabetic())
    {
        if let Ok(d) = humantime::parse_duration(text) {
            let ago =
                i64::try_from(d.as_nanos()).map_err(|_| format!("{text:?} is too long ago"))?;
            return Ok(now_ns.saturating_sub(ago));
        }
    }
    to_unix_ns(RawTime::Text(text)).map_err(|_| {
        format!("{text:?} is not a time: use RFC 3339 (2025-11-20T15:11:15Z), a date (2025-11-20), a duration ago (7d) or now")
    })
}

/// Reads `A..B` into a window; `A` must be before `B`.
pub fn parse_window(text: &str, now_ns: i64) -> Result<Window, String> {
    let Some((a, b)) = text.split_once("..") else {
        return Err(format!("{text:?} is not a window: write START..END, e.g. 2025-11-01T00:00:00Z..2025-11-20T00:00:00Z"));
    };
    let start_ns = parse_time(a, now_ns)?;
    let end_ns = parse_time(b, now_ns)?;
    if start_ns >= end_ns {
        return Err(format!(
            "window {text:?} starts at {} which is not before its end {}",
            rfc3339(start_ns),
            rfc3339(end_ns)
        ));
    }
    Ok(Window { start_ns, end_ns })
}

/// The UTC day (days since 1970-01-01) a time falls on.
pub fn day_of(ns: i64) -> i64 {
    ns.div_euclid(DAY_NS)
}

/// `YYYY-MM-DD` of a UTC day number.
pub fn day_label(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 UTC to the second: `2025-11-20T15:11:15Z`.
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let tod = secs.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        day_label(secs.div_euclid(86_400)),
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

/// RFC 3339 UTC to the millisecond: `2025-11-20T15:11:15.004Z`.
pub fn rfc3339_millis(ns: i64) -> String {
    let whole = rfc3339(ns);
    let millis = ns.rem_euclid(NANOS_PER_SEC) / 1_000_000;
    format!("{}.{millis:03}Z", &whole[..whole.len() - 1])
}

/// A short human duration: `850 ms`, `4.2 s`, `1h 47m 13s`, `3d 2h`.
pub fn human(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    if abs < 1_000_000_000 {
        return format!("{sign}{} ms", abs / 1_000_000);
    }
    if abs < 60_000_000_000 {
        return format!("{sign}{:.1} s", abs as f64 / 1e9);
    }
    let total = (abs + 500_000_000) / 1_000_000_000;
    let parts = [
        (total / 86_400, "d"),
        (total % 86_400 / 3600, "h"),
        (total % 3600 / 60, "m"),
        (total % 60, "s"),
    ];
    let shown: Vec<String> = parts
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, unit)| format!("{v}{unit}"))
        .collect();
    format!("{sign}{}", shown.join(" "))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses a UTC offset like `"UTC"`, `"+02:00"`, `"-05:30"` into seconds.
pub fn parse_utc_offset(text: &str) -> Option<i64> {
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return Some(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = text[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60 && h.to_string().len() <= 2).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_utc_offset("UTC"), Some(0));
        assert_eq!(parse_utc_offset("+02:00"), Some(7200));
        assert_eq!(parse_utc_offset("-05:30"), Some(-19800));
        assert_eq!(parse_utc_offset("Europe/Paris"), None);
    }

    const S: i64 = NANOS_PER_SEC;
    /// 2025-11-20T15:11:15Z, the incident's parse_email.
    const PARSE: i64 = 1_763_651_475 * S;

    #[test]
    fn formats_utc_times_and_days() {
        assert_eq!(rfc3339(PARSE), "2025-11-20T15:11:15Z");
        assert_eq!(
            rfc3339_millis(PARSE + 4_000_000),
            "2025-11-20T15:11:15.004Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-S), "1969-12-31T23:59:59Z");
        assert_eq!(day_label(day_of(PARSE)), "2025-11-20");
        assert_eq!(day_label(day_of(-1)), "1969-12-31");
        // Leap days.
        assert_eq!(rfc3339(951_782_400 * S), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_400 * S), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn parses_absolute_relative_and_now() {
        let now = PARSE;
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("2025-11-20T15:11:15Z", 0), Ok(PARSE));
        assert_eq!(parse_time("2025-11-20T16:11:15+01:00", 0), Ok(PARSE));
        assert_eq!(
            parse_time("2025-11-20", 0),
            Ok(PARSE - (15 * 3600 + 11 * 60 + 15) * S)
        );
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400 * S));
        assert_eq!(parse_time("90m", now), Ok(now - 5_400 * S));
        assert_eq!(parse_time("1763651475", 0), Ok(PARSE), "epoch seconds");
        let err = parse_time("yesterday", now).unwrap_err();
        assert!(err.contains("\"yesterday\" is not a time"), "{err}");
    }

    #[test]
    fn windows_must_run_forwards() {
        let w = parse_window("2025-11-20T15:00:00Z..2025-11-20T16:00:00Z", 0).unwrap();
        assert_eq!(w.len_ns(), 3600 * S);
        assert!(w.contains(w.start_ns) && !w.contains(w.end_ns));
        assert!(
            parse_window("2025-11-20T16:00:00Z..2025-11-20T15:00:00Z", 0)
                .unwrap_err()
                .contains("is not before its end")
        );
        assert!(parse_window("2025-11-20", 0)
            .unwrap_err()
            .contains("START..END"));
        assert_eq!(
            parse_window("2d..now", 10 * DAY_NS).unwrap().len_ns(),
            2 * DAY_NS
        );
    }

    #[test]
    fn clipping_and_overlap() {
        let w = Window {
            start_ns: 10,
            end_ns: 20,
        };
        assert_eq!(
            w.clip(15, 100),
            Window {
                start_ns: 15,
                end_ns: 20
            }
        );
        assert_eq!(w.clip(30, 40).len_ns(), 0);
        assert!(w.overlaps(&Window {
            start_ns: 19,
            end_ns: 25
        }));
        assert!(
            !w.overlaps(&Window {
                start_ns: 20,
                end_ns: 25
            }),
            "half-open"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(850_000_000), "850 ms");
        assert_eq!(human(4_240_000_000), "4.2 s");
        assert_eq!(human(6_432_990_000_000), "1h 47m 13s");
        assert_eq!(human(3 * 86_400 * S + 2 * 3600 * S), "3d 2h");
        assert_eq!(human(60 * S), "1m");
        assert_eq!(human(-2 * S), "-2.0 s");
    }
}
