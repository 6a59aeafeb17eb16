//! Discord execute-webhook (<https://discord.com/developers/docs/resources/webhook>):
//! JSON with a short `content` (what the push notification shows) and one embed: title,
//! description (the facts), colour by severity, timestamp, runbook link and the labels as
//! fields. `allowed_mentions` is empty, so an `@everyone` in a label pings no one.
//!
//! Limits (Discord's embed limits): content 2000, title 256, description 4096, 25 fields
//! of name 256 and value 1024, footer 2048, 6000 characters over the embed. Lengths are
//! counted in UTF-16 units, which is never fewer than Discord's count.

use serde_json::{json, Value};

use super::{
    event_time_ns, or_placeholder, runbook_link, timestamp, truncate_utf16, Tone, UrlWebhook,
    MAX_LINK_BYTES,
};
use crate::alerts::Message;

pub const MAX_CONTENT: usize = 2000;
pub const MAX_TITLE: usize = 256;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_FIELDS: usize = 25;
pub const MAX_FIELD_NAME: usize = 256;
pub const MAX_FIELD_VALUE: usize = 1024;
pub const MAX_EMBED_TOTAL: usize = 6000;
/// What the fields may take of the 6000, so the description keeps its full 4096.
const FIELDS_BUDGET: usize = 1500;
const FOOTER: &str = "stallwatch";

/// The embed's side colour: red, amber, blue, green.
fn color(tone: Tone) -> u32 {
    match tone {
        Tone::Critical => 0xD32F2F,
        Tone::Warning => 0xF9A825,
        Tone::Info => 0x1E88E5,
        Tone::Resolved => 0x2E7D32,
    }
}

fn units(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Severity, rule, host and the labels as inline fields, within [`FIELDS_BUDGET`].
fn fields(m: &Message) -> (Vec<Value>, usize) {
    let facts = [
        ("Severity", Tone::of(m).as_str()),
        ("Rule", m.rule.as_str()),
        ("Host", m.host.as_str()),
    ];
    let labels = m.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut out = Vec::new();
    let mut used = 0;
    for (name, value) in facts.into_iter().chain(labels).take(MAX_FIELDS) {
        let name = truncate_utf16(or_placeholder(name, "-"), MAX_FIELD_NAME);
        let value = truncate_utf16(or_placeholder(value, "-"), MAX_FIELD_VALUE);
        let size = units(&name) + units(&value);
        if used + size > FIELDS_BUDGET {
            break;
        }
        used += size;
        out.push(json!({"name": name, "value": value, "inline": true}));
    }
    (out, used)
}

/// The JSON body.
pub fn body(m: &Message) -> Value {
    let tone = Tone::of(m);
    let title = truncate_utf16(or_placeholder(&m.title, &m.rule), MAX_TITLE);
    let (fields, fields_size) = fields(m);
    let room = MAX_EMBED_TOTAL - units(&title) - fields_size - units(FOOTER);
    let description = truncate_utf16(or_placeholder(&m.text, &m.title), MAX_DESCRIPTION.min(room));
    let mut embed = json!({
        "title": title,
        "description": description,
        "color": color(tone),
        "timestamp": timestamp(event_time_ns(m)),
        "fields": fields,
        "footer": {"text": FOOTER},
    });
    if let Some(link) = runbook_link(m, MAX_LINK_BYTES) {
        embed["url"] = Value::String(link);
    }
    json!({
        "content": truncate_utf16(or_placeholder(&m.title, &m.rule), MAX_CONTENT),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    })
}

/// The channel: [`body`] posted to the webhook URL, whose path is its secret.
pub fn webhook(name: String, url: String) -> UrlWebhook {
    UrlWebhook::new(name, url, "discord", body)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Channel;
    use super::*;

    fn discord() -> Box<dyn Channel> {
        channel("kind = \"discord\"\nurl = \"https://discord.test/api/webhooks/1/tok\"\n")
    }

    /// Characters of the embed as Discord totals them.
    fn embed_total(e: &Value) -> usize {
        let s = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
        let fields: usize = e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| s(&f["name"]) + s(&f["value"]))
            .sum();
        s(&e["title"]) + s(&e["description"]) + s(&e["footer"]["text"]) + fields
    }

    #[test]
    fn a_firing_is_content_and_one_embed() {
        let m = firing();
        let r = discord().request(&m, NOW_NS);
        assert_eq!(r.url, "https://discord.test/api/webhooks/1/tok");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = json(&r);
        assert_eq!(v["content"], m.title.as_str());
        assert_eq!(v["allowed_mentions"]["parse"], json!([]));
        let e = &v["embeds"][0];
        assert_eq!(v["embeds"].as_array().unwrap().len(), 1);
        assert_eq!(e["title"], m.title.as_str());
        assert_eq!(e["description"], m.text.as_str());
        assert_eq!(e["color"], 0xD32F2F);
        assert_eq!(e["timestamp"], "2025-11-20T15:11:15.000Z");
        assert_eq!(e["url"], m.runbook_url.as_str());
        let fields: Vec<(&str, &str)> = e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["name"].as_str().unwrap(), f["value"].as_str().unwrap()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("Severity", "critical"),
                ("Rule", "stuck_jobs"),
                ("Host", "web-1"),
                ("queue", "emails"),
                ("source", "lab-q7")
            ]
        );
    }

    #[test]
    fn a_resolve_is_green_and_timed_at_its_end() {
        let v = json(&discord().request(&resolved(), NOW_NS));
        let e = &v["embeds"][0];
        assert_eq!(e["color"], 0x2E7D32);
        assert_eq!(e["timestamp"], "2025-11-20T16:11:15.000Z");
        assert_eq!(e["fields"][0]["value"], "resolved");
    }

    #[test]
    fn a_huge_message_stays_within_discords_limits() {
        let mut m = huge(firing());
        for i in 0..40 {
            m.labels.insert(format!("label{i}"), "v".repeat(2_000));
        }
        m.labels.insert("empty".into(), String::new());
        let v = json(&discord().request(&m, NOW_NS));
        assert!(chars(&v["content"]) <= MAX_CONTENT);
        let e = &v["embeds"][0];
        assert!(chars(&e["title"]) <= MAX_TITLE);
        assert!(chars(&e["description"]) <= MAX_DESCRIPTION);
        let fields = e["fields"].as_array().unwrap();
        assert!(fields.len() <= MAX_FIELDS);
        for f in fields {
            assert!((1..=MAX_FIELD_NAME).contains(&chars(&f["name"])), "{f}");
            assert!((1..=MAX_FIELD_VALUE).contains(&chars(&f["value"])), "{f}");
        }
        assert!(embed_total(e) <= MAX_EMBED_TOTAL, "{}", embed_total(e));
    }
}
