//! Shared helpers of the `alerts_*` tests: the `source_down` fixture (a `lab-jobs` source
//! whose database does not exist yet), `/api/v1/alerts` and its series, and independent
//! readers of what the channels send: RFC 3339 times, form bodies and Standard Webhooks
//! signatures, written here from the specifications rather than taken from `src/`, so a
//! mistake in the sidecar cannot cancel out in the test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::common::{faketime, poll_until, Sidecar};

/// Poll interval of every source under test: many polls per second of test time.
pub const POLL: &str = "300ms";
/// How long an alert may take from its condition to a receiver: a 300 ms poll, the 1 s
/// rule evaluation, a 1 s `threshold`, the send, stretched for a loaded 2-core machine.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for several polls and rule evaluations to pass, to show nothing more is sent.
pub const SEVERAL_EVALUATIONS: Duration = Duration::from_secs(4);
/// Standard Webhooks: a receiver rejects a `webhook-timestamp` further than this from its
/// clock (the specification's suggested tolerance).
pub const WEBHOOK_TOLERANCE_SECS: i64 = 5 * 60;

/// Unix seconds of a wall time.
pub fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

pub fn now_unix_s() -> f64 {
    unix_s(SystemTime::now())
}

// ---- the source_down fixture -----------------------------------------------------------

/// A `lab-jobs` queue source on `db`, polled every [`POLL`]. While `db` does not exist
/// every poll fails, so the source is down; [`create_lab_db`] brings it up.
pub fn lab_source(name: &str, db: &Path) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\nkind = \"queue_table\"\npreset = \"lab-jobs\"\nurl = \"sqlite://{}\"\npoll = \"{POLL}\"\n\n",
        db.display()
    )
}

/// `source_down` after 1 s, resolved as soon as the source is back.
pub const SOURCE_DOWN_RULE: &str =
    "[[rule]]\nrule = \"source_down\"\nthreshold = \"1s\"\nresolve_after = \"0s\"\n\n";

/// Creates `db` with the `lab-jobs` schema (the job agent's tables) and one pending job,
/// written to a temporary name and renamed so no poll sees a file without tables.
pub fn create_lab_db(db: &Path) {
    let tmp = db.with_extension("creating");
    {
        let conn = rusqlite::Connection::open(&tmp).expect("creating the app database");
        conn.execute_batch(
            "CREATE TABLE jobs (key TEXT PRIMARY KEY, payload, status TEXT, attempts INTEGER, result);
             CREATE INDEX jobs_status ON jobs (status);
             CREATE TABLE dead_letter (key, payload, error, died REAL);
             INSERT INTO jobs VALUES ('job-1', '{}', 'pending', 0, NULL);",
        )
        .expect("creating the lab-jobs schema");
    }
    std::fs::rename(&tmp, db).expect("moving the app database into place");
}

// ---- what the sidecar reports ----------------------------------------------------------

/// `GET /api/v1/alerts`, which must answer 200 with a JSON object.
#[track_caller]
pub fn alerts(sidecar: &Sidecar) -> Value {
    let r = sidecar.get("/api/v1/alerts");
    assert_eq!(r.status, 200, "/api/v1/alerts: {r:?}");
    let v = r.json();
    assert!(v.is_object(), "/api/v1/alerts is not an object: {v}");
    v
}

/// The alerts of `list` (`"firing"` or `"recent"`) of rule `rule`.
pub fn alerts_of(api: &Value, list: &str, rule: &str) -> Vec<Value> {
    api[list]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v1/alerts has no {list:?} list: {api}"))
        .iter()
        .filter(|a| a["rule"] == rule)
        .cloned()
        .collect()
}

/// The notifications `/api/v1/alerts` lists.
pub fn notifications(api: &Value) -> Vec<Value> {
    api["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("/api/v1/alerts has no \"notifications\" list: {api}"))
        .clone()
}

pub fn firing_series(rule: &str) -> String {
    format!("stallwatch_alerts_firing{{rule=\"{rule}\"}}")
}

pub fn notifications_series(channel: &str, outcome: &str) -> String {
    format!("stallwatch_notifications_total{{channel=\"{channel}\",outcome=\"{outcome}\"}}")
}

/// Waits until `/metrics` has `series` at `want` or more, and returns the value.
#[track_caller]
pub fn wait_series_at_least(sidecar: &Sidecar, series: &str, want: f64, timeout: Duration) -> f64 {
    poll_until(&format!("{series} ≥ {want}"), timeout, || {
        match sidecar.metrics().value(series) {
            Some(v) if v >= want => Ok(v),
            other => Err(format!("{series} is {other:?}")),
        }
    })
}

// ---- RFC 3339 ------------------------------------------------------------------------

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 date-time (`2026-11-23T23:59:30.5Z`, `…+02:00`) as unix seconds; `None`
/// for anything else (a missing offset, a space for the `T`, a number).
pub fn rfc3339_unix_s(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac = 0.0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        frac = format!("0.{}", &text[start..i]).parse().ok()?;
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let off = digits(i + 1..i + 3)? * 3600 + digits(i + 4..i + 6)? * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + s - offset_s) as f64 + frac)
}

/// `YYYY-MM-DD` of a unix time in UTC.
pub fn utc_date(unix_s: i64) -> String {
    // Inverse of days_from_civil (H. Hinnant's `civil_from_days`).
    let z = unix_s.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

// ---- form bodies -----------------------------------------------------------------------

/// `application/x-www-form-urlencoded` into its fields (last one wins), `+` as space.
pub fn form_fields(body: &[u8]) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A request body as a flat map of string fields, whether it was sent as JSON (an object
/// of scalars) or as a form: Pushover and Telegram document both.
pub fn fields_of(content_type: Option<&str>, body: &[u8]) -> BTreeMap<String, String> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        return form_fields(body);
    }
    assert!(
        ct.starts_with("application/json"),
        "body is neither JSON nor a form (content-type {content_type:?}): {}",
        String::from_utf8_lossy(body)
    );
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("body is not a JSON object: {v}"));
    obj.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), s)
        })
        .collect()
}

// ---- Standard Webhooks -----------------------------------------------------------------

/// Verifies a Standard Webhooks delivery the way a receiver does (specification,
/// "Verifying webhook authenticity"): the key is the base64 after `whsec_`; the signed
/// content is `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` is a
/// space-separated list of `v1,<base64 HMAC-SHA256>` of which one must match; and the
/// timestamp must be within [`WEBHOOK_TOLERANCE_SECS`] of `now_unix_s`.
pub fn verify_standard_webhook(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_unix_s: i64,
) -> Result<(), String> {
    let key_b64 = secret
        .strip_prefix("whsec_")
        .ok_or("the secret does not start with whsec_")?;
    let key = STANDARD
        .decode(key_b64)
        .map_err(|e| format!("the secret is not base64 after whsec_: {e}"))?;
    if id.is_empty() {
        return Err("webhook-id is empty".into());
    }
    if timestamp.is_empty() || !timestamp.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "webhook-timestamp {timestamp:?} is not integer unix seconds"
        ));
    }
    let ts: i64 = timestamp
        .parse()
        .map_err(|e| format!("webhook-timestamp: {e}"))?;
    if (now_unix_s - ts).abs() > WEBHOOK_TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp {ts} is more than {WEBHOOK_TOLERANCE_SECS} s from now ({now_unix_s})"
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    let mut seen = Vec::new();
    for entry in signature_header.split(' ').filter(|e| !e.is_empty()) {
        let Some((version, sig)) = entry.split_once(',') else {
            seen.push(format!("{entry:?} (no version)"));
            continue;
        };
        if version != "v1" {
            seen.push(format!("{entry:?} (not v1)"));
            continue;
        }
        let Ok(sig) = STANDARD.decode(sig) else {
            seen.push(format!("{entry:?} (not base64)"));
            continue;
        };
        // Constant time, as a receiver must compare.
        let equal = sig.len() == expected.len()
            && sig
                .iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if equal {
            return Ok(());
        }
        seen.push(format!("{entry:?} (does not match)"));
    }
    Err(format!(
        "no v1 signature matches {}: {seen:?}",
        STANDARD.encode(expected)
    ))
}

// ---- libfaketime ---------------------------------------------------------------------------

/// The environment that runs a process `offset_s` seconds ahead on the wall clock only:
/// CLOCK_REALTIME = real + offset, advancing in real time; MONOTONIC and BOOTTIME stay
/// real (`FAKETIME_DONT_FAKE_MONOTONIC`), so no freeze or step is seen.
pub fn faketime_env(offset_s: i64) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".into(),
            faketime::libfaketime().display().to_string(),
        ),
        ("FAKETIME".into(), format!("{offset_s:+}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published test vector: the verifier agrees
    /// with the specification before it judges the sidecar.
    #[test]
    fn the_verifier_accepts_the_specification_vector_and_nothing_else() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let at = 1_614_265_330;
        verify_standard_webhook(secret, id, "1614265330", sig, body, at).unwrap();
        // One of several entries may match.
        verify_standard_webhook(
            secret,
            id,
            "1614265330",
            &format!("v1,AAAA {sig}"),
            body,
            at,
        )
        .unwrap();
        // A tampered body, id or timestamp, another secret, a replay, another version.
        let tampered = br#"{"test": 2432232315}"#;
        assert!(verify_standard_webhook(secret, id, "1614265330", sig, tampered, at).is_err());
        assert!(verify_standard_webhook(secret, "msg_x", "1614265330", sig, body, at).is_err());
        assert!(verify_standard_webhook(secret, id, "1614265331", sig, body, at).is_err());
        let other = "whsec_c2VjcmV0LW9mLWFub3RoZXItZW5kcG9pbnQ=";
        assert!(verify_standard_webhook(other, id, "1614265330", sig, body, at).is_err());
        assert!(verify_standard_webhook(secret, id, "1614265330", sig, body, at + 301).is_err());
        let v2 = sig.replacen("v1,", "v2,", 1);
        assert!(verify_standard_webhook(secret, id, "1614265330", &v2, body, at).is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339_unix_s("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            rfc3339_unix_s("2026-11-23T23:59:30Z"),
            Some(1_795_478_370.0)
        );
        assert_eq!(
            rfc3339_unix_s("2026-11-24T01:59:30.250+02:00"),
            Some(1_795_478_370.25)
        );
        assert_eq!(rfc3339_unix_s("2026-11-23 23:59:30Z"), None);
        assert_eq!(rfc3339_unix_s("2026-11-23T23:59:30"), None);
        assert_eq!(utc_date(1_795_478_370), "2026-11-23");
        assert_eq!(utc_date(1_795_478_400), "2026-11-24");
    }

    #[test]
    fn forms() {
        let f = form_fields(b"token=a%2Bb&message=source+lab+is+down&title=");
        assert_eq!(f["token"], "a+b");
        assert_eq!(f["message"], "source lab is down");
        assert_eq!(f["title"], "");
    }
}
