//! Telegram Bot API `sendMessage` (<https://core.telegram.org/bots/api#sendmessage>): a
//! POST to `{url}/bot{token}/sendMessage` with `chat_id` and `text`.
//!
//! The text is plain, without `parse_mode`: with HTML or MarkdownV2 every `<`, `&`, `_`
//! or `*` in a label or a workflow id must be escaped, and one that is not makes Telegram
//! refuse the message ("can't parse entities"), a retry-proof failure at the worst time.
//! Plain text cannot be refused for its content, and Telegram's clients still turn the
//! runbook URL into a link. Link previews are off (`link_preview_options`, which replaced
//! `disable_web_page_preview` in Bot API 7.0) so the message stays compact.

use serde_json::json;

use super::{
    context_line, json_request, or_placeholder, runbook_link, truncate_utf16, url_secrets, Channel,
    Request, Tone, MAX_LINK_BYTES,
};
use crate::alerts::Message;
use crate::config::channel::Secret;

/// `text` of `sendMessage`: 1-4096 characters. Counted in UTF-16 units, as Telegram
/// measures text (its entity offsets are UTF-16), which is never fewer than characters.
pub const MAX_TEXT: usize = 4096;

pub struct Telegram {
    name: String,
    url: String,
    token: Secret,
    chat_id: String,
}

impl Telegram {
    pub fn new(name: String, url: String, token: Secret, chat_id: String) -> Telegram {
        Telegram {
            name,
            url,
            token,
            chat_id,
        }
    }
}

/// The message as a person reads it: title, facts, identity line, runbook link. The
/// facts are cut so the title, identity and link always fit.
pub fn text(m: &Message) -> String {
    let head = truncate_utf16(or_placeholder(&m.title, &m.rule), MAX_TEXT / 8);
    let mut tail = format!("\n\n{}", truncate_utf16(&context_line(m), MAX_TEXT / 8));
    if let Some(link) = runbook_link(m, MAX_LINK_BYTES) {
        tail.push_str(&format!("\nRunbook: {link}"));
    }
    // head ≤ 512, tail ≤ 2 + 512 + 10 + MAX_LINK_BYTES: the facts keep over 1000.
    let room = MAX_TEXT - head.encode_utf16().count() - tail.encode_utf16().count() - 2;
    format!("{head}\n\n{}{tail}", truncate_utf16(&m.text, room))
}

impl Channel for Telegram {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "telegram"
    }

    fn request(&self, message: &Message, _now_ns: i64) -> Request {
        let base = self.url.trim_end_matches('/');
        // Severity decides whether the phone makes a sound: an info alert or a resolve
        // arrives silently (`disable_notification`), a warning or critical one rings.
        let quiet = matches!(Tone::of(message), Tone::Info | Tone::Resolved);
        let body = json!({
            "chat_id": self.chat_id,
            "text": text(message),
            "link_preview_options": {"is_disabled": true},
            "disable_notification": quiet,
        });
        json_request(
            format!("{base}/bot{}/sendMessage", self.token.expose()),
            &body,
        )
    }

    fn secrets(&self) -> Vec<String> {
        let mut out = url_secrets(&self.url, false);
        let token = self.token.expose();
        out.push(token.to_string());
        // `<bot id>:<secret>`: the part after ':' is the credential on its own.
        if let Some((_, secret)) = token.split_once(':') {
            out.push(secret.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn telegram(url: &str) -> Box<dyn Channel> {
        channel(&format!(
            "kind = \"telegram\"\ntoken = \"123456:ABC-def\"\nchat_id = -1001234\n{url}"
        ))
    }

    #[test]
    fn a_firing_is_sent_to_the_bot_method_as_plain_text() {
        let m = firing();
        let r = telegram("").request(&m, NOW_NS);
        assert_eq!(
            r.url,
            "https://api.telegram.org/bot123456:ABC-def/sendMessage"
        );
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = json(&r);
        assert_eq!(v["chat_id"], "-1001234");
        assert_eq!(v["link_preview_options"]["is_disabled"], true);
        assert!(v.get("parse_mode").is_none());
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{}\n\n{}", m.title, m.text)),
            "{text}"
        );
        assert!(text.contains("critical · stuck_jobs"), "{text}");
        assert!(
            text.ends_with(&format!("Runbook: {}", m.runbook_url)),
            "{text}"
        );
    }

    #[test]
    fn a_resolve_and_an_own_api_server() {
        let r = telegram("url = \"http://127.0.0.1:8081/\"\n").request(&resolved(), NOW_NS);
        assert_eq!(r.url, "http://127.0.0.1:8081/bot123456:ABC-def/sendMessage");
        let text = json(&r)["text"].as_str().unwrap().to_string();
        assert!(text.contains("resolved · stuck_jobs"), "{text}");
        assert_eq!(
            json(&r)["disable_notification"],
            true,
            "a resolve arrives silently"
        );
    }

    #[test]
    fn a_critical_alert_rings_and_an_info_one_arrives_silently() {
        let loud = json(&telegram("").request(&firing(), NOW_NS));
        assert_eq!(loud["disable_notification"], false);
        let info = message(
            crate::alerts::NotificationKind::Firing,
            crate::alerts::Severity::Info,
        );
        let quiet = json(&telegram("").request(&info, NOW_NS));
        assert_eq!(quiet["disable_notification"], true);
    }

    #[test]
    fn a_huge_message_stays_within_4096() {
        let v = json(&telegram("").request(&huge(firing()), NOW_NS));
        let text = v["text"].as_str().unwrap();
        assert!(
            text.encode_utf16().count() <= MAX_TEXT,
            "{}",
            text.encode_utf16().count()
        );
        assert!(text.contains("Runbook: https://"), "the link survives");
    }
}
