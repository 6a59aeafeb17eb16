//! Pushover message API (<https://pushover.net/api>): a form POST to `messages.json` with
//! `token`, `user`, `title`, `message`, `priority`, `timestamp` and the runbook as `url`.
//!
//! Priorities: critical 1 (high: bypasses quiet hours), warning 0, info -1 (quiet), or
//! the configured one for alerts; a resolve is 0, or quieter if its alert was. Emergency
//! (2) repeats until acknowledged and is not used.

use super::{
    event_time_ns, or_placeholder, runbook_link, truncate, unix_seconds, url_secrets, Channel,
    Method, Request, Tone,
};
use crate::alerts::Message;
use crate::config::channel::Secret;

/// Pushover's limits ("Limitations" in its API documentation), in characters.
pub const MAX_MESSAGE: usize = 1024;
pub const MAX_TITLE: usize = 250;
pub const MAX_URL: usize = 512;
pub const MAX_URL_TITLE: usize = 100;

pub struct Pushover {
    name: String,
    url: String,
    token: Secret,
    user: Secret,
    priority: Option<i8>,
}

impl Pushover {
    pub fn new(
        name: String,
        url: String,
        token: Secret,
        user: Secret,
        priority: Option<i8>,
    ) -> Pushover {
        Pushover {
            name,
            url,
            token,
            user,
            priority,
        }
    }

    fn priority_of(&self, m: &Message) -> i8 {
        let alert = self.priority.unwrap_or(match m.severity {
            crate::alerts::Severity::Critical => 1,
            crate::alerts::Severity::Warning => 0,
            crate::alerts::Severity::Info => -1,
        });
        match Tone::of(m) {
            Tone::Resolved => alert.min(0),
            _ => alert,
        }
    }

    /// The form fields, in order.
    pub fn fields(&self, m: &Message) -> Vec<(&'static str, String)> {
        let title = or_placeholder(&m.title, &m.rule);
        let mut fields = vec![
            ("token", self.token.expose().to_string()),
            ("user", self.user.expose().to_string()),
            ("title", truncate(title, MAX_TITLE)),
            (
                "message",
                truncate(or_placeholder(&m.text, title), MAX_MESSAGE),
            ),
            ("priority", self.priority_of(m).to_string()),
            ("timestamp", unix_seconds(event_time_ns(m)).to_string()),
        ];
        // A cut URL would be a broken link: a longer one is left out.
        if let Some(link) = runbook_link(m, MAX_URL) {
            fields.push(("url", link));
            fields.push(("url_title", truncate("Runbook", MAX_URL_TITLE)));
        }
        fields
    }
}

/// `application/x-www-form-urlencoded`: unreserved bytes as is, space as `+`, the rest
/// percent-encoded (UTF-8).
pub fn form_urlencoded(fields: &[(&str, String)]) -> Vec<u8> {
    let mut out = String::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, part) in [*name, value.as_str()].into_iter().enumerate() {
            if j > 0 {
                out.push('=');
            }
            for b in part.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                        out.push(b as char)
                    }
                    b' ' => out.push('+'),
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
        }
    }
    out.into_bytes()
}

impl Channel for Pushover {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "pushover"
    }

    fn request(&self, message: &Message, _now_ns: i64) -> Request {
        Request {
            method: Method::Post,
            url: self.url.clone(),
            headers: vec![(
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            )],
            body: form_urlencoded(&self.fields(message)),
        }
    }

    fn secrets(&self) -> Vec<String> {
        let mut out = url_secrets(&self.url, false);
        out.push(self.token.expose().to_string());
        out.push(self.user.expose().to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::testing::*;
    use super::*;
    use crate::alerts::{NotificationKind, Severity};

    /// Reads a form body back, as a server does.
    fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
        let text = std::str::from_utf8(body).expect("a form body is ASCII");
        let decode = |s: &str| {
            let mut bytes = Vec::new();
            let mut it = s.bytes();
            while let Some(b) = it.next() {
                match b {
                    b'+' => bytes.push(b' '),
                    b'%' => {
                        let hex: Vec<u8> = it.by_ref().take(2).collect();
                        let hex = std::str::from_utf8(&hex).unwrap();
                        bytes.push(u8::from_str_radix(hex, 16).unwrap());
                    }
                    b => bytes.push(b),
                }
            }
            String::from_utf8(bytes).unwrap()
        };
        text.split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (decode(k), decode(v))
            })
            .collect()
    }

    fn pushover(extra: &str) -> Box<dyn Channel> {
        channel(&format!(
            "kind = \"pushover\"\ntoken = \"azGDORePK8\"\nuser = \"uQiRzpo4DX\"\n{extra}"
        ))
    }

    #[test]
    fn a_firing_is_a_form_with_the_documented_fields() {
        let m = firing();
        let r = pushover("").request(&m, NOW_NS);
        assert_eq!(r.url, "https://api.pushover.net/1/messages.json");
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let f = parse_form(&r.body);
        assert_eq!(f["token"], "azGDORePK8");
        assert_eq!(f["user"], "uQiRzpo4DX");
        assert_eq!(f["title"], m.title);
        assert_eq!(f["message"], m.text);
        assert_eq!(f["priority"], "1");
        assert_eq!(f["timestamp"], (STARTED_NS / 1_000_000_000).to_string());
        assert_eq!(f["url"], m.runbook_url);
        assert_eq!(f["url_title"], "Runbook");
    }

    #[test]
    fn priorities_follow_severity_and_a_resolve_is_never_louder() {
        let p = |ch: &dyn Channel, kind, severity| {
            parse_form(&ch.request(&message(kind, severity), NOW_NS).body)["priority"].clone()
        };
        let ch = pushover("");
        use NotificationKind::*;
        assert_eq!(p(&*ch, Firing, Severity::Warning), "0");
        assert_eq!(p(&*ch, Repeat, Severity::Info), "-1");
        assert_eq!(p(&*ch, Resolved, Severity::Critical), "0");
        assert_eq!(p(&*ch, Resolved, Severity::Info), "-1");
        let loud = pushover("priority = 1\n");
        assert_eq!(p(&*loud, Firing, Severity::Info), "1");
        assert_eq!(p(&*loud, Resolved, Severity::Info), "0");
        let r = pushover("").request(&resolved(), NOW_NS);
        assert_eq!(
            parse_form(&r.body)["timestamp"],
            (ENDED_NS / 1_000_000_000).to_string()
        );
    }

    #[test]
    fn a_huge_message_stays_within_pushovers_limits() {
        let mut m = huge(firing());
        m.runbook_url = format!("https://wiki.test/{}", "a".repeat(600));
        let f = parse_form(&pushover("").request(&m, NOW_NS).body);
        assert!(f["message"].chars().count() <= MAX_MESSAGE);
        assert!(f["title"].chars().count() <= MAX_TITLE);
        assert!(
            !f.contains_key("url"),
            "a URL over 512 is left out, not cut"
        );
        assert_eq!(
            form_urlencoded(&[("a b", "ä&=+".into())]),
            b"a+b=%C3%A4%26%3D%2B".to_vec()
        );
    }
}
