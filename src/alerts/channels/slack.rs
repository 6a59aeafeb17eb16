//! Slack incoming webhook (<https://api.slack.com/messaging/webhooks>): JSON with `text`
//! (the notification and fallback) and Block Kit `blocks`: a header, the facts as a
//! `mrkdwn` section, and a context line with the severity, labels and runbook link.
//!
//! Slack reads `&`, `<` and `>` as markup in `mrkdwn` and in `text` (`<!channel>` would
//! notify everyone), so they are escaped there as Slack documents; `plain_text` (the
//! header) is shown as is.

use serde_json::json;

use super::{
    context_line, or_placeholder, runbook_link, truncate, truncate_escaped, UrlWebhook,
    MAX_LINK_BYTES,
};
use crate::alerts::Message;

/// A header block's `plain_text` (Block Kit reference, header block).
pub const MAX_HEADER_CHARS: usize = 150;
/// A section block's text (Block Kit reference, section block).
pub const MAX_SECTION_CHARS: usize = 3000;
/// The top-level `text`: Slack takes up to 40 000 characters, but as the fallback of
/// blocks it is the notification preview, which a section's size covers.
pub const MAX_TEXT_CHARS: usize = 3000;
/// A context element's text (Block Kit text object).
pub const MAX_CONTEXT_CHARS: usize = 3000;

/// Slack's escaping of the three characters it reads as markup.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The JSON body.
pub fn body(m: &Message) -> serde_json::Value {
    let title = or_placeholder(&m.title, &m.rule);
    let text = or_placeholder(&m.text, title);
    let fallback = format!("{title}\n{text}");
    // `|` and `>` would end the link; the URL is ASCII already.
    let link = runbook_link(m, MAX_LINK_BYTES)
        .map(|url| format!(" · <{}|Runbook>", escape(&url).replace('|', "%7C")))
        .filter(|l| l.chars().count() < MAX_CONTEXT_CHARS / 2)
        .unwrap_or_default();
    let budget = MAX_CONTEXT_CHARS - link.chars().count();
    let context = truncate_escaped(&context_line(m), budget, escape) + &link;
    json!({
        "text": truncate_escaped(&fallback, MAX_TEXT_CHARS, escape),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate(title, MAX_HEADER_CHARS),
                    "emoji": true
                }
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": truncate_escaped(text, MAX_SECTION_CHARS, escape)
                }
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": context}
                ]
            }
        ]
    })
}

/// The channel: [`body`] posted to the webhook URL, whose path is its secret.
pub fn webhook(name: String, url: String) -> UrlWebhook {
    UrlWebhook::new(name, url, "slack", body)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Channel;
    use super::*;

    fn slack() -> Box<dyn Channel> {
        channel("kind = \"slack\"\nurl = \"https://hooks.slack.test/services/T0/B0/XYZ\"\n")
    }

    #[test]
    fn a_firing_has_text_and_three_blocks() {
        let m = firing();
        let r = slack().request(&m, NOW_NS);
        assert_eq!(r.url, "https://hooks.slack.test/services/T0/B0/XYZ");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = json(&r);
        assert_eq!(v["text"], format!("{}\n{}", m.title, m.text));
        let blocks = v["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert_eq!(blocks[0]["text"]["text"], m.title.as_str());
        assert_eq!(blocks[1]["type"], "section");
        assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
        assert_eq!(blocks[1]["text"]["text"], m.text.as_str());
        assert_eq!(blocks[2]["type"], "context");
        let context = blocks[2]["elements"][0]["text"].as_str().unwrap();
        assert!(
            context.starts_with("critical · stuck_jobs · queue=emails"),
            "{context}"
        );
        assert!(
            context.ends_with(&format!("<{}|Runbook>", m.runbook_url)),
            "{context}"
        );
    }

    #[test]
    fn a_resolve_says_resolved_and_markup_is_escaped() {
        let mut m = resolved();
        m.text = "queue <!channel> & <@U123> cleared".into();
        let v = json(&slack().request(&m, NOW_NS));
        let section = v["blocks"][1]["text"]["text"].as_str().unwrap();
        assert_eq!(
            section,
            "queue &lt;!channel&gt; &amp; &lt;@U123&gt; cleared"
        );
        assert!(!v["text"].as_str().unwrap().contains("<!channel>"));
        let context = v["blocks"][2]["elements"][0]["text"].as_str().unwrap();
        assert!(context.starts_with("resolved · "), "{context}");
    }

    #[test]
    fn a_huge_message_stays_within_block_kit_limits() {
        let v = json(&slack().request(&huge(firing()), NOW_NS));
        assert!(chars(&v["text"]) <= MAX_TEXT_CHARS);
        assert!(chars(&v["blocks"][0]["text"]["text"]) <= MAX_HEADER_CHARS);
        let section = v["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(section.chars().count() <= MAX_SECTION_CHARS);
        assert!(section.ends_with('…'));
        let context = v["blocks"][2]["elements"][0]["text"].as_str().unwrap();
        assert!(context.chars().count() <= MAX_CONTEXT_CHARS);
        assert!(
            context.ends_with("|Runbook>"),
            "the link survives a long context"
        );
    }
}
