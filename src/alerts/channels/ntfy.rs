//! ntfy (<https://docs.ntfy.sh/publish/>): a POST to the topic URL with the message as a
//! plain-text body and the title, priority, tags and click link as headers.
//!
//! The headers are sent as `X-Title`, `X-Priority`, `X-Tags` and `X-Click`, the first of
//! the names ntfy documents for each: a bare `Priority` is also an HTTP header of its own
//! (RFC 9218) that proxies such as Cloudflare add, and ntfy ignores one that looks like
//! theirs. HTTP header values are ASCII, so a title or tag with other characters is sent
//! as RFC 2047 encoded words (`=?UTF-8?B?…?=`), which ntfy decodes.

use base64::Engine as _;

use super::{
    or_placeholder, runbook_link, truncate, truncate_bytes, url_secrets, Channel, Method, Request,
    Tone, MAX_LINK_BYTES,
};
use crate::alerts::{Message, NotificationKind};
use crate::config::channel::Secret;

/// ntfy's default `message-size-limit`: a longer body is turned into an attachment.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest title sent: ntfy documents no limit, and a phone shows one line of it.
pub const MAX_TITLE_CHARS: usize = 256;
/// Bytes of UTF-8 per RFC 2047 encoded word: 45 bytes are 60 base64 characters, and with
/// `=?UTF-8?B?` and `?=` the word stays within RFC 2047's 75.
const ENCODED_WORD_BYTES: usize = 45;

pub struct Ntfy {
    name: String,
    url: String,
    token: Option<Secret>,
    priority: Option<u8>,
    tags: Vec<String>,
}

impl Ntfy {
    pub fn new(
        name: String,
        url: String,
        token: Option<Secret>,
        priority: Option<u8>,
        tags: Vec<String>,
    ) -> Ntfy {
        Ntfy {
            name,
            url,
            token,
            priority,
            tags,
        }
    }

    /// 1-5: the configured priority for alerts, else by severity; a resolve is always
    /// default (3) so good news never wakes anyone.
    fn priority_of(&self, m: &Message) -> u8 {
        match (Tone::of(m), self.priority) {
            (Tone::Resolved, _) => 3,
            (_, Some(p)) => p,
            (Tone::Critical, None) => 5,
            (Tone::Warning, None) => 4,
            (Tone::Info, None) => 3,
        }
    }
}

/// The emoji tag ntfy shows in front of the title.
fn tone_tag(tone: Tone) -> &'static str {
    match tone {
        Tone::Critical => "rotating_light",
        Tone::Warning => "warning",
        Tone::Info => "information_source",
        Tone::Resolved => "white_check_mark",
    }
}

/// `text` as an ASCII header value: control characters become spaces, and text with
/// other characters (or an `=?` ntfy would try to decode) becomes RFC 2047 encoded words.
pub fn header_value(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.is_ascii() && !clean.contains("=?") {
        return clean;
    }
    let mut words = Vec::new();
    let mut rest = clean.as_str();
    while !rest.is_empty() {
        let mut end = rest.len().min(ENCODED_WORD_BYTES);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        words.push(format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(chunk)
        ));
        rest = tail;
    }
    // Whitespace between adjacent encoded words is dropped by the decoder.
    words.join(" ")
}

impl Channel for Ntfy {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "ntfy"
    }

    fn request(&self, message: &Message, _now_ns: i64) -> Request {
        let tone = Tone::of(message);
        let mut tags = vec![tone_tag(tone).to_string()];
        if message.kind == NotificationKind::Repeat {
            tags.push("repeat".into());
        }
        tags.extend(self.tags.iter().cloned());
        let title = truncate(
            or_placeholder(&message.title, &message.rule),
            MAX_TITLE_CHARS,
        );
        let mut headers = vec![
            (
                "Content-Type".to_string(),
                "text/plain; charset=utf-8".to_string(),
            ),
            ("X-Title".to_string(), header_value(&title)),
            (
                "X-Priority".to_string(),
                self.priority_of(message).to_string(),
            ),
            ("X-Tags".to_string(), header_value(&tags.join(","))),
        ];
        if let Some(link) = runbook_link(message, MAX_LINK_BYTES) {
            headers.push(("X-Click".into(), link));
        }
        if let Some(token) = &self.token {
            headers.push(("Authorization".into(), format!("Bearer {}", token.expose())));
        }
        let body = truncate_bytes(or_placeholder(&message.text, &title), MAX_MESSAGE_BYTES);
        Request {
            method: Method::Post,
            url: self.url.clone(),
            headers,
            body: body.into_bytes(),
        }
    }

    fn secrets(&self) -> Vec<String> {
        // The topic is the password of a public ntfy server.
        let mut out = url_secrets(&self.url, true);
        out.extend(self.token.iter().map(|t| t.expose().to_string()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::alerts::Severity;

    /// Decodes RFC 2047 `B` words the way ntfy (Go's `mime.WordDecoder`) does, for the test.
    fn decode(value: &str) -> String {
        if !value.starts_with("=?") {
            return value.to_string();
        }
        let mut bytes = Vec::new();
        for word in value.split(' ') {
            let inner = word
                .strip_prefix("=?UTF-8?B?")
                .and_then(|w| w.strip_suffix("?="))
                .unwrap_or_else(|| panic!("not an encoded word: {word:?}"));
            assert!(
                word.len() <= 75,
                "encoded word longer than RFC 2047 allows: {word}"
            );
            bytes.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(inner)
                    .unwrap(),
            );
        }
        String::from_utf8(bytes).expect("each word holds whole characters")
    }

    fn ntfy(extra: &str) -> Box<dyn Channel> {
        channel(&format!(
            "kind = \"ntfy\"\nurl = \"https://ntfy.test/alerts-x7\"\ntoken = \"tk_abc\"\n{extra}"
        ))
    }

    #[test]
    fn a_firing_is_posted_to_the_topic_with_its_headers() {
        let m = firing();
        let r = ntfy("").request(&m, NOW_NS);
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.url, "https://ntfy.test/alerts-x7");
        assert_eq!(
            header(&r, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(header(&r, "x-title"), Some(m.title.as_str()));
        assert_eq!(header(&r, "x-priority"), Some("5"));
        assert_eq!(header(&r, "x-tags"), Some("rotating_light"));
        assert_eq!(header(&r, "x-click"), Some(m.runbook_url.as_str()));
        assert_eq!(header(&r, "authorization"), Some("Bearer tk_abc"));
        assert_eq!(String::from_utf8(r.body).unwrap(), m.text);
        let warning = message(NotificationKind::Firing, Severity::Warning);
        let r = ntfy("").request(&warning, NOW_NS);
        assert_eq!(
            (header(&r, "x-priority"), header(&r, "x-tags")),
            (Some("4"), Some("warning"))
        );
    }

    #[test]
    fn a_resolve_is_default_priority_with_a_check_mark() {
        let r = ntfy("priority = \"max\"\ntags = [\"db\"]\n").request(&resolved(), NOW_NS);
        assert_eq!(header(&r, "x-priority"), Some("3"));
        assert_eq!(header(&r, "x-tags"), Some("white_check_mark,db"));
        assert!(String::from_utf8(r.body).unwrap().contains("Host: web-1"));
    }

    #[test]
    fn the_configured_priority_and_tags_apply_to_alerts() {
        let info = message(NotificationKind::Repeat, Severity::Info);
        let r = ntfy("priority = 5\ntags = [\"db\", \"skull\"]\n").request(&info, NOW_NS);
        assert_eq!(header(&r, "x-priority"), Some("5"));
        assert_eq!(
            header(&r, "x-tags"),
            Some("information_source,repeat,db,skull")
        );
        let anonymous = channel("kind = \"ntfy\"\nurl = \"https://ntfy.test/t\"\n");
        assert_eq!(
            header(&anonymous.request(&info, NOW_NS), "authorization"),
            None
        );
    }

    #[test]
    fn non_ascii_titles_and_tags_are_rfc_2047_encoded() {
        let mut m = firing();
        m.title = "[wéb-1] Warteschlange „Aufträge“ hängt 🚨 seit 5 Minuten, bitte prüfen".into();
        let r = ntfy("tags = [\"🔥\"]\n").request(&m, NOW_NS);
        for (name, value) in &r.headers {
            assert!(value.is_ascii(), "{name}: {value}");
        }
        assert_eq!(decode(header(&r, "x-title").unwrap()), m.title);
        assert_eq!(decode(header(&r, "x-tags").unwrap()), "rotating_light,🔥");
        // Text that merely looks encoded is encoded, so ntfy shows it as written.
        assert_eq!(decode(&header_value("=?x?= a\r\nb")), "=?x?= a  b");
        assert_eq!(header_value("plain\ttitle"), "plain title");
    }

    #[test]
    fn a_huge_message_stays_within_ntfys_limits() {
        let r = ntfy("").request(&huge(firing()), NOW_NS);
        let body = String::from_utf8(r.body.clone()).expect("UTF-8 cut on a boundary");
        assert!(
            body.len() <= MAX_MESSAGE_BYTES && body.ends_with('…'),
            "{}",
            body.len()
        );
        let title = decode(header(&r, "x-title").unwrap());
        assert!(title.chars().count() <= MAX_TITLE_CHARS);
        assert!(r.headers.iter().all(|(_, v)| v.is_ascii()));
    }
}
