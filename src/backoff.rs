//! Delivery decisions, pure: what an HTTP answer means for a notification, how long to
//! wait before the next attempt (full-jitter exponential backoff, `Retry-After`), and a
//! request that got no answer described in one line.

use std::time::Duration;

/// The longest `Retry-After` honoured: a service asking for more is treated as asking
/// for this, so a typo on its side cannot park an alert for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one attempt's result means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later; `retry_after` is the service's own request, if it made one.
    Retry {
        retry_after: Option<Duration>,
    },
    /// The service refused this notification for good (a 4xx other than 408 and 429).
    GiveUp,
}

/// Classifies an HTTP status: 2xx delivered; 408, 429 and 5xx retried; the rest refused.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 | 500..=599 => Verdict::Retry {
            retry_after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
        },
        _ => Verdict::GiveUp,
    }
}

/// Parses a `Retry-After` value: delta seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before attempt `failures + 1`, after `failures` failed attempts (≥ 1):
/// uniform in `[0, min(max, initial × 2^(failures−1))]` ("full jitter", so a fleet of
/// sidecars does not retry in step), and never shorter than the service's `Retry-After`.
/// `unit` is a uniform random number in `[0, 1)`, passed in so this stays testable.
pub fn retry_delay(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
    let ceiling = initial.saturating_mul(doubling).min(max);
    let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

/// A transport error (no HTTP answer) as one line: `timed_out` when it timed out, else
/// whether it could not connect, then its causes; never the URL, which may carry
/// credentials.
pub fn describe_transport_error(e: &reqwest::Error, timed_out: &str) -> String {
    let mut text = if e.is_timeout() {
        timed_out.to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !part.is_empty() && !text.contains(&part) && !part.contains("://") {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn statuses_are_classified_as_the_services_document() {
        assert_eq!(classify(200, None), Verdict::Delivered);
        assert_eq!(classify(204, None), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(classify(s, None), Verdict::Retry { .. }), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(classify(s, None), Verdict::GiveUp, "{s}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let (i, m) = (1000 * MS, 60_000 * MS);
        assert_eq!(retry_delay(1, i, m, None, 0.999_999).as_millis(), 999);
        assert_eq!(retry_delay(3, i, m, None, 0.5), 2000 * MS);
        assert_eq!(retry_delay(20, i, m, None, 0.5), 30_000 * MS);
        assert_eq!(retry_delay(1000, i, m, None, 1.0), m);
        assert_eq!(retry_delay(1, i, m, None, 0.0), Duration::ZERO);
        assert_eq!(retry_delay(1, i, m, Some(3000 * MS), 0.1), 3000 * MS);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            classify(429, Some(Duration::from_secs(86_400))),
            Verdict::Retry {
                retry_after: Some(MAX_RETRY_AFTER)
            }
        );
    }
}
