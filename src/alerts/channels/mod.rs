//! Delivery channels: one trait, one small file per service.
//!
//! A channel is pure: it turns a [`Message`] into the HTTP request its service documents
//! (payload shape, size limits, signature). Sending, retries and the shared HTTP client
//! live in the alert engine, so no channel repeats them.

pub mod alertmanager;
pub mod build;
pub mod discord;
pub mod ntfy;
pub mod pagerduty;
pub mod pushover;
pub mod slack;
pub mod telegram;
pub mod webhook;

use std::time::Duration;

use base64::Engine as _;

use super::{Message, NotificationKind, Severity};
use crate::clock::NANOS_PER_SEC;

/// An HTTP request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One configured destination.
pub trait Channel: Send + Sync {
    /// The operator's name for it (`[[channel]] name`), used in metrics and logs.
    fn name(&self) -> &str;
    /// The service: `webhook`, `ntfy`, `slack`, … (`[[channel]] kind`).
    fn kind(&self) -> &'static str;
    /// The request that delivers `message`; `now_ns` is the send time (signatures, expiry).
    fn request(&self, message: &Message, now_ns: i64) -> Request;
    /// Every secret in this channel's config (URL tokens, bot tokens, keys), so error
    /// text can be scrubbed before it reaches a log, a metric or the API.
    fn secrets(&self) -> Vec<String>;
    /// How often a still-firing alert must be sent again for the service to keep it
    /// (Alertmanager drops an alert whose `endsAt` has passed); `None` for the others.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }
    /// Whether notifications to it are grouped (`group.rs`); `false` for services that
    /// group and deduplicate alerts themselves (Alertmanager, PagerDuty), which need each
    /// alert as itself.
    fn groups(&self) -> bool {
        true
    }
}

// ---- shared by the channels ------------------------------------------------------------

/// Cap of free text sent to a service that documents no limit of its own (the generic
/// webhook, Alertmanager annotations, PagerDuty `custom_details`): a page of facts, far
/// below every receiver's body limit (PagerDuty takes events up to 512 KB).
pub const MAX_FREE_TEXT_BYTES: usize = 64 * 1024;
/// Longest runbook link sent anywhere: browsers and chat apps cope with far more, but a
/// longer one is a misconfigured `runbook_base`, not a link worth a rejected request.
pub const MAX_LINK_BYTES: usize = 2048;

/// What a notification means to a person, which every service renders in its own scale
/// (priority, colour, emoji): a resolve is good news whatever the alert's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Critical,
    Warning,
    Info,
    Resolved,
}

impl Tone {
    pub fn of(m: &Message) -> Tone {
        match (m.kind, m.severity) {
            (NotificationKind::Resolved, _) => Tone::Resolved,
            (_, Severity::Critical) => Tone::Critical,
            (_, Severity::Warning) => Tone::Warning,
            (_, Severity::Info) => Tone::Info,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tone::Critical => "critical",
            Tone::Warning => "warning",
            Tone::Info => "info",
            Tone::Resolved => "resolved",
        }
    }
}

/// When what a notification reports happened, unix ns: the start of a firing, the end of
/// a resolve, the making of a reminder. Services show it instead of their arrival time,
/// which after an outage of the receiver can be hours later.
pub fn event_time_ns(m: &Message) -> i64 {
    match m.kind {
        NotificationKind::Firing => m.started_at_ns,
        NotificationKind::Repeat => m.created_at_ns,
        NotificationKind::Resolved => m.ended_at_ns.unwrap_or(m.created_at_ns),
    }
}

/// RFC 3339 UTC with milliseconds, the timestamp form every service here documents.
pub fn timestamp(ns: i64) -> String {
    crate::time::rfc3339_millis(ns)
}

/// Whole unix seconds.
pub fn unix_seconds(ns: i64) -> i64 {
    ns.div_euclid(NANOS_PER_SEC)
}

/// `text` cut to at most `max_chars` characters, ending with "…" when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    truncate_by(text, max_chars, |_| 1)
}

/// `text` cut to at most `max_bytes` bytes of UTF-8 on a character boundary, ending with
/// "…" when cut.
pub fn truncate_bytes(text: &str, max_bytes: usize) -> String {
    truncate_by(text, max_bytes, char::len_utf8)
}

/// `text` cut to at most `max_units` UTF-16 code units (what JavaScript's `length`
/// counts: an emoji is two), ending with "…" when cut. Used where a service's count is
/// not documented as code points, as it is never more than the code points.
pub fn truncate_utf16(text: &str, max_units: usize) -> String {
    truncate_by(text, max_units, char::len_utf16)
}

/// The longest prefix of `text` whose size plus the ellipsis' fits `max`.
fn truncate_by(text: &str, max: usize, size: fn(char) -> usize) -> String {
    if text.chars().map(size).sum::<usize>() <= max {
        return text.to_string();
    }
    const ELLIPSIS: char = '…';
    let Some(budget) = max.checked_sub(size(ELLIPSIS)) else {
        return String::new();
    };
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        used += size(c);
        if used > budget {
            break;
        }
        end = i + c.len_utf8();
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len_utf8());
    out.push_str(&text[..end]);
    out.push(ELLIPSIS);
    out
}

/// `text` escaped for a markup and cut so the escaped result has at most `max_chars`
/// characters, never in the middle of an escape.
pub fn truncate_escaped(text: &str, max_chars: usize, escape: fn(&str) -> String) -> String {
    let fits = |keep: usize| {
        let out = escape(&truncate(text, keep));
        (out.chars().count() <= max_chars).then_some(out)
    };
    if let Some(whole) = fits(max_chars) {
        return whole;
    }
    // The escaped length grows with what is kept: find the most that fits.
    let (mut fitting, mut too_long) = (0, max_chars);
    while too_long - fitting > 1 {
        let mid = fitting + (too_long - fitting) / 2;
        if fits(mid).is_some() {
            fitting = mid;
        } else {
            too_long = mid;
        }
    }
    fits(fitting).unwrap_or_default()
}

/// `text`, or `fallback` when it is blank (services refuse empty fields).
pub fn or_placeholder<'a>(text: &'a str, fallback: &'a str) -> &'a str {
    if text.trim().is_empty() {
        fallback
    } else {
        text
    }
}

/// One line of the alert's identity for a footer: `warning · stuck_jobs · source=db, queue=q`.
pub fn context_line(m: &Message) -> String {
    let mut line = format!("{} · {}", Tone::of(m).as_str(), m.rule);
    if !m.labels.is_empty() {
        let labels: Vec<String> = m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push_str(" · ");
        line.push_str(&labels.join(", "));
    }
    line
}

/// The runbook link if it is an http(s) URL of at most `max_bytes` once made ASCII
/// (non-ASCII bytes, spaces and controls percent-encoded, as a header or a form needs).
pub fn runbook_link(m: &Message, max_bytes: usize) -> Option<String> {
    let url = m.runbook_url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return None;
    }
    let mut out = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii_graphic() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    (out.len() <= max_bytes).then_some(out)
}

/// A service whose whole config is a webhook URL that is itself the credential (Slack,
/// Discord): the JSON its file's `body` makes of a message, posted to that URL.
pub struct UrlWebhook {
    name: String,
    url: String,
    kind: &'static str,
    body: fn(&Message) -> serde_json::Value,
}

impl UrlWebhook {
    pub fn new(
        name: String,
        url: String,
        kind: &'static str,
        body: fn(&Message) -> serde_json::Value,
    ) -> UrlWebhook {
        UrlWebhook {
            name,
            url,
            kind,
            body,
        }
    }
}

impl Channel for UrlWebhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn request(&self, message: &Message, _now_ns: i64) -> Request {
        json_request(self.url.clone(), &(self.body)(message))
    }

    fn secrets(&self) -> Vec<String> {
        url_secrets(&self.url, true)
    }
}

/// A POST of `body` as JSON.
pub fn json_request(url: String, body: &serde_json::Value) -> Request {
    Request {
        method: Method::Post,
        url,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: serde_json::to_vec(body).expect("a JSON value serializes"),
    }
}

/// The parts of a configured URL that can carry a credential: the URL itself, its
/// userinfo (also as the Basic credentials it is sent as) and its query, and its path where the path is the credential (a Slack or
/// Discord webhook, an ntfy topic). Each is scrubbed from error text on its own, since a
/// transport error may quote only a part.
pub fn url_secrets(url: &str, path_is_secret: bool) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let (before_query, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    if let Some(q) = query {
        out.push(q.split('#').next().unwrap_or(q).to_string());
    }
    let rest = before_query
        .split_once("://")
        .map_or(before_query, |(_, r)| r);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        out.push(userinfo.to_string());
        // The HTTP client sends it as `Authorization: Basic base64(user:password)`,
        // which a proxy's error page may echo.
        out.push(base64::engine::general_purpose::STANDARD.encode(userinfo));
        if let Some((_, password)) = userinfo.split_once(':') {
            out.push(password.to_string());
        }
    }
    let path = path.split('#').next().unwrap_or(path).trim_end_matches('/');
    if path_is_secret && path.len() > 1 {
        out.push(path.to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! Messages and configs shared by the channels' tests.

    use std::collections::BTreeMap;

    use super::*;
    use crate::config::channel::ChannelConfig;
    use crate::config::channel::{validate, RawChannel};

    /// 2025-11-20T15:11:15Z.
    pub const STARTED_NS: i64 = 1_763_651_475_000_000_000;
    pub const ENDED_NS: i64 = STARTED_NS + 3_600 * NANOS_PER_SEC;
    pub const NOW_NS: i64 = ENDED_NS + 2 * NANOS_PER_SEC;
    /// About 100 KB of text with multi-byte characters, for the truncation tests.
    pub fn huge_text() -> String {
        "Zeile mit Umlauten äöü und Emoji 🚨 <b>&amp; *bold*\n".repeat(2_000)
    }

    pub fn message(kind: NotificationKind, severity: Severity) -> Message {
        let labels = BTreeMap::from([
            ("queue".to_string(), "emails".to_string()),
            ("source".to_string(), "lab-q7".to_string()),
        ]);
        Message {
            key: "sw_0123456789abcdef01234567".into(),
            fingerprint: "stuck_jobs{queue=emails,source=lab-q7}".into(),
            rule: "stuck_jobs".into(),
            kind,
            severity,
            labels,
            title: "[web-1] lab-q7: 3 job(s) stuck past their lease".into(),
            text: "3 running jobs of queue emails are past their lease.\nHost: web-1.".into(),
            started_at_ns: STARTED_NS,
            ended_at_ns: (kind == NotificationKind::Resolved).then_some(ENDED_NS),
            created_at_ns: if kind == NotificationKind::Resolved {
                ENDED_NS
            } else {
                STARTED_NS
            },
            runbook_url: "https://github.com/stallwatch/stallwatch/blob/main/alerts/RUNBOOK.md#stallwatchstuckjobs".into(),
            host: "web-1".into(),
            count: 1,
            group: None,
        }
    }

    pub fn firing() -> Message {
        message(NotificationKind::Firing, Severity::Critical)
    }

    pub fn resolved() -> Message {
        message(NotificationKind::Resolved, Severity::Critical)
    }

    /// The message with title and text of about 100 KB each.
    pub fn huge(mut m: Message) -> Message {
        m.title = huge_text();
        m.text = huge_text();
        m.labels.insert("workflow_id".into(), "w".repeat(5_000));
        m
    }

    /// A channel from `[[channel]]` text, as the config reads it.
    pub fn config(toml_body: &str) -> ChannelConfig {
        let raw: RawChannel = toml::from_str(&format!("name = \"test\"\n{toml_body}"))
            .unwrap_or_else(|e| panic!("{toml_body}: {e}"));
        validate(0, raw, &[]).unwrap_or_else(|e| panic!("{toml_body}: {e:?}"))
    }

    pub fn channel(toml_body: &str) -> Box<dyn Channel> {
        build::channel(&config(toml_body))
    }

    pub fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(r: &Request) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&r.body)
            )
        })
    }

    /// Characters of a JSON string field; panics when it is not a string.
    pub fn chars(v: &serde_json::Value) -> usize {
        v.as_str()
            .unwrap_or_else(|| panic!("not a string: {v}"))
            .chars()
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn truncate_cuts_on_character_boundaries_and_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly10!", 10), "exactly10!");
        assert_eq!(truncate("abcdefghijk", 5), "abcd…");
        assert_eq!(truncate("äöüäöü", 4), "äöü…");
        assert_eq!(truncate("abc", 0), "");
        assert_eq!(truncate_bytes("ääää", 5), "ä…");
        assert!(truncate_bytes("ääää", 5).len() <= 5);
        assert_eq!(truncate_bytes("ääää", 2), "");
        assert_eq!(truncate_utf16("🚨🚨🚨", 4), "🚨…");
        for max in 0..40 {
            let t = truncate_bytes(&huge_text(), max);
            assert!(t.len() <= max, "{max}: {t:?}");
            let t = truncate_utf16(&huge_text(), max);
            assert!(t.encode_utf16().count() <= max, "{max}: {t:?}");
        }
    }

    #[test]
    fn truncate_escaped_never_cuts_an_escape() {
        fn esc(s: &str) -> String {
            s.replace('&', "&amp;")
        }
        let t = truncate_escaped("&&&&&&&&&&", 12, esc);
        assert!(t.chars().count() <= 12, "{t}");
        assert!(t.ends_with('…') && !t.contains("&am…"), "{t}");
        assert_eq!(truncate_escaped("a&b", 10, esc), "a&amp;b");
    }

    #[test]
    fn tone_and_event_time_follow_the_notification_kind() {
        let f = firing();
        assert_eq!(Tone::of(&f), Tone::Critical);
        assert_eq!(event_time_ns(&f), STARTED_NS);
        let r = resolved();
        assert_eq!(Tone::of(&r), Tone::Resolved);
        assert_eq!(event_time_ns(&r), ENDED_NS);
        assert_eq!(timestamp(STARTED_NS), "2025-11-20T15:11:15.000Z");
        assert_eq!(
            context_line(&f),
            "critical · stuck_jobs · queue=emails, source=lab-q7"
        );
    }

    #[test]
    fn runbook_links_are_ascii_http_and_bounded() {
        let mut m = firing();
        assert_eq!(
            runbook_link(&m, 2048).as_deref(),
            Some(m.runbook_url.as_str())
        );
        m.runbook_url = "https://wiki.test/Überblick#a b".into();
        assert_eq!(
            runbook_link(&m, 2048).as_deref(),
            Some("https://wiki.test/%C3%9Cberblick#a%20b")
        );
        assert_eq!(runbook_link(&m, 10), None);
        m.runbook_url = "javascript:alert(1)".into();
        assert_eq!(runbook_link(&m, 2048), None);
    }

    #[test]
    fn url_secrets_name_every_part_that_can_hold_a_credential() {
        let s = url_secrets(
            "https://user:pw123@h.test/services/T1/B2/XyZ?token=abc#frag",
            true,
        );
        for part in [
            "https://user:pw123@h.test/services/T1/B2/XyZ?token=abc#frag",
            "user:pw123",
            "dXNlcjpwdzEyMw==",
            "pw123",
            "token=abc",
            "/services/T1/B2/XyZ",
        ] {
            assert!(s.iter().any(|x| x == part), "{part} missing from {s:?}");
        }
        let plain = url_secrets("https://api.telegram.org", false);
        assert_eq!(plain, vec!["https://api.telegram.org".to_string()]);
    }

    /// Every credential of every kind's config is among its channel's secrets, as a
    /// whole string of its own (so it is scrubbed even where it appears alone).
    #[test]
    fn no_channel_misses_a_secret_of_its_config() {
        let cases: [(&str, &[&str]); 8] = [
            (
                "kind = \"webhook\"\nurl = \"https://h.test/in/HOOKPATH1?sig=QUERY1\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                &[
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "/in/HOOKPATH1",
                    "sig=QUERY1",
                ],
            ),
            (
                "kind = \"ntfy\"\nurl = \"https://u:NTFYPASS@ntfy.test/TOPIC1\"\ntoken = \"tk_NTFYTOKEN\"\n",
                &["tk_NTFYTOKEN", "/TOPIC1", "NTFYPASS"],
            ),
            (
                "kind = \"slack\"\nurl = \"https://hooks.slack.test/services/T0/B0/SLACKSECRET\"\n",
                &["/services/T0/B0/SLACKSECRET"],
            ),
            (
                "kind = \"discord\"\nurl = \"https://discord.test/api/webhooks/1/DISCORDSECRET\"\n",
                &["/api/webhooks/1/DISCORDSECRET"],
            ),
            (
                "kind = \"telegram\"\ntoken = \"123:TELEGRAMSECRET\"\nchat_id = 42\n",
                &["123:TELEGRAMSECRET", "TELEGRAMSECRET"],
            ),
            (
                "kind = \"pushover\"\ntoken = \"PUSHOVERTOKEN\"\nuser = \"PUSHOVERUSER\"\n",
                &["PUSHOVERTOKEN", "PUSHOVERUSER"],
            ),
            (
                "kind = \"pagerduty\"\nrouting_key = \"PDROUTINGKEY\"\nurl = \"https://pd.test/v2/enqueue?k=PDQUERY\"\n",
                &["PDROUTINGKEY", "k=PDQUERY"],
            ),
            (
                "kind = \"alertmanager\"\nurl = \"https://am:AMPASS@am.test\"\n",
                // base64("am:AMPASS"), as the Basic credentials.
                &["AMPASS", "YW06QU1QQVNT"],
            ),
        ];
        for (body, wanted) in cases {
            let c = config(body);
            let ch = build::channel(&c);
            let secrets = ch.secrets();
            assert!(
                secrets.contains(&c.url),
                "{body}: the URL itself: {secrets:?}"
            );
            for w in wanted {
                assert!(
                    secrets.iter().any(|s| s == w),
                    "{}: {w:?} is not among its secrets {secrets:?}",
                    c.kind.as_str()
                );
            }
            // And what is scrubbed leaves nothing of a credential in the request's
            // address or headers, where an error would quote them.
            let r = ch.request(&firing(), NOW_NS);
            let mut shown = format!("{} {:?}", r.url, r.headers);
            for s in &secrets {
                shown = shown.replace(s.as_str(), "***");
            }
            for w in wanted {
                assert!(
                    !shown.contains(w),
                    "{}: {w} left in {shown}",
                    c.kind.as_str()
                );
            }
        }
    }

    #[test]
    fn every_kind_is_built_with_its_name_and_kind() {
        for (body, kind) in [
            (
                "kind = \"webhook\"\nurl = \"https://h.test/x\"\n",
                "webhook",
            ),
            ("kind = \"ntfy\"\nurl = \"https://h.test/x\"\n", "ntfy"),
            ("kind = \"slack\"\nurl = \"https://h.test/x\"\n", "slack"),
            (
                "kind = \"discord\"\nurl = \"https://h.test/x\"\n",
                "discord",
            ),
            (
                "kind = \"telegram\"\ntoken = \"1:a\"\nchat_id = 1\n",
                "telegram",
            ),
            (
                "kind = \"pushover\"\ntoken = \"t\"\nuser = \"u\"\n",
                "pushover",
            ),
            ("kind = \"pagerduty\"\nrouting_key = \"k\"\n", "pagerduty"),
            (
                "kind = \"alertmanager\"\nurl = \"https://h.test\"\n",
                "alertmanager",
            ),
        ] {
            let ch = channel(body);
            assert_eq!((ch.name(), ch.kind()), ("test", kind));
            assert_eq!(
                ch.refresh_interval().is_some(),
                kind == "alertmanager",
                "{kind}"
            );
            for m in [firing(), resolved(), huge(firing()), huge(resolved())] {
                let r = ch.request(&m, NOW_NS);
                assert_eq!(r.method, Method::Post, "{kind}");
                assert!(
                    header(&r, "content-type").is_some(),
                    "{kind}: no Content-Type"
                );
                assert!(
                    r.headers.iter().all(|(n, v)| n.is_ascii()
                        && v.bytes().all(|b| b == b' ' || b.is_ascii_graphic())),
                    "{kind}: a header that is not visible ASCII: {:?}",
                    r.headers
                );
                assert!(
                    r.body.len() <= 200 * 1024,
                    "{kind}: body of {} bytes",
                    r.body.len()
                );
            }
        }
    }
}
