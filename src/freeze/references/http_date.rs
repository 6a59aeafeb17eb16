//! The `Date` header of an HTTP(S) server (RFC 9110 §6.6.1): one-second resolution,
//! available through almost any firewall.

use crate::clock::{mono_ns, NANOS_PER_SEC};
use crate::config::redact_url;
use crate::freeze::reference::RefSample;

/// Sends a HEAD request and turns the `Date` header into an offset interval.
pub async fn query(client: &reqwest::Client, url: &str) -> Result<RefSample, String> {
    let m0 = mono_ns();
    let response = client
        .head(url)
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {}", redact_url(url), e.without_url()))?;
    let m1 = mono_ns();
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .ok_or_else(|| format!("{} sent no Date header", redact_url(url)))?
        .to_str()
        .map_err(|_| format!("{} sent a Date header that is not text", redact_url(url)))?;
    let value_ns = parse_date_ns(date)
        .ok_or_else(|| format!("{} sent an unreadable Date {date:?}", redact_url(url)))?;
    Ok(RefSample::from_read(m0, m1, value_ns, NANOS_PER_SEC))
}

/// Parses an IMF-fixdate into unix nanoseconds.
pub fn parse_date_ns(date: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(date).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(secs as i64 * NANOS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate_parses() {
        assert_eq!(
            parse_date_ns("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777 * NANOS_PER_SEC)
        );
        assert_eq!(parse_date_ns("yesterday"), None);
    }
}
