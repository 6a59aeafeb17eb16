//! Alerts reach every kind of phone: one sidecar with all eight channel kinds, each
//! pointed at a local receiver playing that service, raises a `source_down` alert (a
//! `lab-jobs` source whose database does not exist yet) and resolves it (the database is
//! created). Every receiver gets exactly the firing, then exactly the resolve, each in
//! the shape its service documents:
//!
//! - generic webhook: Standard Webhooks headers, the signature checked by this test's own
//!   verifier (`alerts_support::verify_standard_webhook`), which also rejects a tampered
//!   delivery;
//! - ntfy: a POST to the topic URL, the message as the body, `Title`/`Priority`/`Tags`
//!   headers, the access token as `Authorization: Bearer`;
//! - Slack incoming webhook: JSON with `text` (and valid `blocks` if any);
//! - Discord execute-webhook: JSON with `content` and/or `embeds` within Discord's limits;
//! - Telegram `sendMessage` at `/bot<token>/sendMessage` with `chat_id` and `text`;
//! - Pushover `messages.json` with `token`, `user`, `message`, optional `title`/`priority`;
//! - PagerDuty Events API v2: `routing_key`, `event_action` trigger then resolve with the
//!   same `dedup_key`, `payload.summary/source/severity`;
//! - Alertmanager `POST /api/v2/alerts`: an array of alerts with `labels` (`alertname`),
//!   `annotations`, RFC 3339 `startsAt`, and for the resolve an `endsAt` not in the future.
//!   A second test sends to a real `prometheus-alertmanager` and reads the alert back.
//!
//! Every request carries the `Idempotency-Key` the contract (docs/alerts.md, Delivery)
//! promises, and it is the key `/api/v1/alerts` lists for that notification.

mod alerts_support;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use alerts_support::*;
use common::alertmanager::Alertmanager;
use common::receiver::{Received, Receiver, Reply};
use common::{http_get, poll_until, Launch, Sidecar};

/// The watched source: every text a person reads must name it.
const SOURCE: &str = "lab-q7";
const WEBHOOK_SECRET: &str = "whsec_c3RhbGx3YXRjaC1jaGFubmVscy10ZXN0LWtleQ==";
const NTFY_TOKEN: &str = "tk_AgQdq7mVBoFD37zQVN29RhuMzNIz2";
const TELEGRAM_TOKEN: &str = "123456:ABC-secret";
const TELEGRAM_CHAT: &str = "42";
const PUSHOVER_TOKEN: &str = "azGDORePK8gMaC0QOYAMyEEuzJnyUi";
const PUSHOVER_USER: &str = "uQiRzpo4DXghDmr9QzzfQu27cmVRsG";
const PAGERDUTY_KEY: &str = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12";
/// Where each service is reached (the receivers answer any path; the paths are the real
/// services' so a wrong one shows).
const NTFY_TOPIC_PATH: &str = "/stallwatch-alerts";
const SLACK_PATH: &str = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX";
const DISCORD_PATH: &str = "/api/webhooks/1234567890/abcdefghijklmnop";
const WEBHOOK_PATH: &str = "/hooks/stallwatch";
const PUSHOVER_PATH: &str = "/1/messages.json";
const PAGERDUTY_PATH: &str = "/v2/enqueue";
const ALERTMANAGER_PATH: &str = "/api/v2/alerts";

/// One channel under test: its `[[channel]]` name and kind and the receiver playing the
/// service.
struct Service {
    name: &'static str,
    kind: &'static str,
    rx: Receiver,
}

/// A reply with a body, as the real service answers.
fn reply(status: u16, content_type: &str, body: &str) -> Reply {
    let mut r = Reply::status(status);
    r.headers = vec![("content-type".to_string(), content_type.to_string())];
    r.body = body.to_string();
    r
}

fn start_services() -> Vec<Service> {
    let kinds: [(&str, Reply); 8] = [
        ("webhook", Reply::status(204)),
        (
            "ntfy",
            reply(
                200,
                "application/json",
                r#"{"id":"sPs71M8A2T","event":"message"}"#,
            ),
        ),
        ("slack", reply(200, "text/plain", "ok")),
        ("discord", Reply::status(204)),
        (
            "telegram",
            reply(
                200,
                "application/json",
                r#"{"ok":true,"result":{"message_id":7,"chat":{"id":42,"type":"private"},"date":1795478370}}"#,
            ),
        ),
        (
            "pushover",
            reply(
                200,
                "application/json",
                r#"{"status":1,"request":"647d2300-702c-4b38-8b2f-d56326ae460b"}"#,
            ),
        ),
        (
            "pagerduty",
            reply(
                202,
                "application/json",
                r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#,
            ),
        ),
        ("alertmanager", Reply::ok()),
    ];
    kinds
        .into_iter()
        .map(|(kind, answer)| {
            let rx = Receiver::start();
            rx.set_default(answer);
            Service {
                name: kind,
                kind,
                rx,
            }
        })
        .collect()
}

/// The `[[channel]]` table of `s`.
fn channel_toml(s: &Service) -> String {
    let rx = &s.rx;
    let extra = match s.kind {
        "webhook" => format!(
            "url = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
            rx.url(WEBHOOK_PATH)
        ),
        "ntfy" => format!(
            "url = \"{}\"\ntoken = \"{NTFY_TOKEN}\"\n",
            rx.url(NTFY_TOPIC_PATH)
        ),
        "slack" => format!("url = \"{}\"\n", rx.url(SLACK_PATH)),
        "discord" => format!("url = \"{}\"\n", rx.url(DISCORD_PATH)),
        "telegram" => format!(
            "url = \"{}\"\ntoken = \"{TELEGRAM_TOKEN}\"\nchat_id = \"{TELEGRAM_CHAT}\"\n",
            rx.url("")
        ),
        "pushover" => format!(
            "url = \"{}\"\ntoken = \"{PUSHOVER_TOKEN}\"\nuser = \"{PUSHOVER_USER}\"\n",
            rx.url(PUSHOVER_PATH)
        ),
        "pagerduty" => format!(
            "url = \"{}\"\nrouting_key = \"{PAGERDUTY_KEY}\"\n",
            rx.url(PAGERDUTY_PATH)
        ),
        "alertmanager" => format!("url = \"{}\"\n", rx.url("")),
        other => unreachable!("no channel kind {other}"),
    };
    format!(
        "[[channel]]\nname = \"{}\"\nkind = \"{}\"\n{extra}\n",
        s.name, s.kind
    )
}

/// Fast retries, so a hiccup of the machine does not eat the test's time.
const FAST_RETRIES: &str =
    "[alerts]\ngroup_wait = \"0s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\n";

// ---- reading what a person reads --------------------------------------------------------

/// `text` names the source.
#[track_caller]
fn assert_names_source(what: &str, text: &str) {
    assert!(
        text.contains(SOURCE),
        "{what} does not name the source {SOURCE:?}: {text:?}"
    );
}

/// `text` says the source is down in words: "down" outside the rule's name
/// `source_down`, which a payload may carry as a label.
#[track_caller]
fn assert_says_down(what: &str, text: &str) {
    let words = text.to_lowercase().replace("source_down", "");
    assert!(
        words.contains("down"),
        "{what} does not say the source is down: {text:?}"
    );
}

/// `text` says the alert is over.
#[track_caller]
fn assert_says_resolved(what: &str, text: &str) {
    let lower = text.to_lowercase();
    assert!(
        lower.contains("resolved"),
        "{what} of the resolve does not say it is resolved: {text:?}"
    );
}

/// A person reads this of a firing and of a resolve: both must name the source; the
/// firing must say it is down, the resolve that it is resolved.
#[track_caller]
fn assert_readable(kind: &str, firing: &str, resolve: &str) {
    assert_names_source(&format!("{kind} firing"), firing);
    assert_says_down(&format!("{kind} firing"), firing);
    assert_names_source(&format!("{kind} resolve"), resolve);
    assert_says_resolved(kind, resolve);
}

#[track_caller]
fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{what} has no string {key:?}: {v}"))
}

#[track_caller]
fn content_type_is(r: &Received, want: &str, what: &str) {
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.to_ascii_lowercase().starts_with(want),
        "{what}: content-type {ct:?}, expected {want}"
    );
}

// ---- per service ------------------------------------------------------------------------

/// Standard Webhooks: `webhook-id` (equal to the contract's `Idempotency-Key`),
/// `webhook-timestamp`, `webhook-signature` verified here, a JSON body; a tampered body,
/// id or timestamp fails the same verifier.
fn check_webhook(firing: &Received, resolve: &Received) -> (String, String) {
    let mut texts = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.path, WEBHOOK_PATH, "webhook {what} path");
        content_type_is(r, "application/json", &format!("webhook {what}"));
        let id = r
            .header("webhook-id")
            .unwrap_or_else(|| panic!("webhook {what} has no webhook-id header: {:?}", r.headers));
        let ts = r.header("webhook-timestamp").unwrap_or_else(|| {
            panic!(
                "webhook {what} has no webhook-timestamp header: {:?}",
                r.headers
            )
        });
        let sig = r.header("webhook-signature").unwrap_or_else(|| {
            panic!(
                "webhook {what} has no webhook-signature header: {:?}",
                r.headers
            )
        });
        assert_eq!(
            Some(id),
            r.header("idempotency-key"),
            "webhook {what}: webhook-id must be the Idempotency-Key (docs/alerts.md)"
        );
        let received_at = unix_s(r.wall) as i64;
        let body: &[u8] = r.body.as_ref();
        verify_standard_webhook(WEBHOOK_SECRET, id, ts, sig, body, received_at)
            .unwrap_or_else(|e| panic!("webhook {what} signature does not verify: {e}"));
        // The verifier can fail: a changed byte, id or timestamp, or another secret.
        let mut tampered = body.to_vec();
        let at = tampered
            .iter()
            .position(|b| b.is_ascii_alphanumeric())
            .expect("a body with a letter");
        tampered[at] = if tampered[at] == b'a' { b'b' } else { b'a' };
        assert!(
            verify_standard_webhook(WEBHOOK_SECRET, id, ts, sig, &tampered, received_at).is_err(),
            "a tampered webhook body still verifies"
        );
        assert!(
            verify_standard_webhook(
                WEBHOOK_SECRET,
                &format!("{id}x"),
                ts,
                sig,
                body,
                received_at
            )
            .is_err(),
            "a webhook with another id still verifies"
        );
        let later = (ts.parse::<i64>().unwrap() + 1).to_string();
        assert!(
            verify_standard_webhook(WEBHOOK_SECRET, id, &later, sig, body, received_at).is_err(),
            "a webhook with another timestamp still verifies"
        );
        assert!(
            verify_standard_webhook(
                "whsec_b3RoZXIta2V5LW9mLWFub3RoZXItZW5kcG9pbnQ=",
                id,
                ts,
                sig,
                body,
                received_at
            )
            .is_err(),
            "a webhook verifies with another secret"
        );
        // The envelope the Standard Webhooks specification recommends.
        let v = r.json();
        let kind = if what == "firing" {
            "firing"
        } else {
            "resolved"
        };
        assert_eq!(v["type"], format!("alert.{kind}"), "webhook {what}: {v}");
        let ts = str_field(&v, "timestamp", &format!("webhook {what}"));
        assert!(
            rfc3339_unix_s(ts).is_some(),
            "webhook {what}: timestamp {ts:?}"
        );
        let data = &v["data"];
        assert_eq!(
            data["key"], id,
            "webhook {what}: data.key is the webhook-id"
        );
        assert_eq!(data["kind"], kind, "webhook {what}: {v}");
        assert_eq!(data["rule"], "source_down", "webhook {what}: {v}");
        assert_eq!(data["labels"]["source"], SOURCE, "webhook {what}: {v}");
        texts.push(format!(
            "{}\n{}",
            str_field(data, "title", &format!("webhook {what} data")),
            str_field(data, "text", &format!("webhook {what} data"))
        ));
    }
    (texts.remove(0), texts.remove(0))
}

/// ntfy (docs.ntfy.sh/publish): POST/PUT to the topic URL, the message as the body, the
/// title, priority and tags as headers (`X-Title`/`Title`/`t`, …), the access token as a
/// bearer token. Header values are ASCII (ntfy reads RFC 2047 for anything else).
fn check_ntfy(firing: &Received, resolve: &Received) -> (String, String) {
    let mut texts = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert!(
            r.method == "POST" || r.method == "PUT",
            "ntfy {what} method {}",
            r.method
        );
        assert_eq!(r.path, NTFY_TOPIC_PATH, "ntfy {what} path");
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {NTFY_TOKEN}").as_str()),
            "ntfy {what}: the access token goes in Authorization: Bearer"
        );
        let one_of = |names: &[&str]| names.iter().find_map(|n| r.header(n));
        let title = one_of(&["x-title", "title", "ti", "t"])
            .unwrap_or_else(|| panic!("ntfy {what} has no Title header: {:?}", r.headers));
        assert!(!title.trim().is_empty(), "ntfy {what}: empty title");
        let priority = one_of(&["x-priority", "priority", "prio", "p"])
            .unwrap_or_else(|| panic!("ntfy {what} has no Priority header: {:?}", r.headers));
        assert!(
            ["1", "2", "3", "4", "5", "min", "low", "default", "high", "max", "urgent"]
                .contains(&priority),
            "ntfy {what}: priority {priority:?} is not one ntfy knows (1-5 or min…urgent)"
        );
        let tags = one_of(&["x-tags", "tags", "tag", "ta"])
            .unwrap_or_else(|| panic!("ntfy {what} has no Tags header: {:?}", r.headers));
        assert!(
            tags.split(',').all(|t| !t.trim().is_empty()),
            "ntfy {what}: tags {tags:?} are not a comma-separated list"
        );
        for (name, value) in &r.headers {
            assert!(
                value.is_ascii(),
                "ntfy {what}: header {name} is not ASCII ({value:?}); use RFC 2047"
            );
        }
        let body = r.text();
        assert!(!body.trim().is_empty(), "ntfy {what}: empty message body");
        assert!(
            serde_json::from_str::<Value>(&body).map_or(true, |v| !v.is_object()),
            "ntfy {what}: a JSON body on a topic URL is shown as raw JSON: {body}"
        );
        texts.push(format!("{title}\n{body}"));
    }
    (texts.remove(0), texts.remove(0))
}

/// Slack incoming webhook: JSON with `text` (the notification and the fallback for
/// `blocks`); `blocks`, if present, is an array of typed blocks whose text objects are
/// `plain_text` or `mrkdwn`.
fn check_slack(firing: &Received, resolve: &Received) -> (String, String) {
    let mut texts = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.method, "POST", "slack {what}");
        assert_eq!(r.path, SLACK_PATH, "slack {what} path");
        content_type_is(r, "application/json", &format!("slack {what}"));
        let v = r.json();
        let text = str_field(&v, "text", &format!("slack {what}"));
        assert!(!text.trim().is_empty(), "slack {what}: empty text");
        let mut all = text.to_string();
        if let Some(blocks) = v.get("blocks") {
            let blocks = blocks
                .as_array()
                .unwrap_or_else(|| panic!("slack {what}: blocks is not an array: {v}"));
            assert!(blocks.len() <= 50, "slack {what}: more than 50 blocks");
            for b in blocks {
                let ty = str_field(b, "type", &format!("slack {what} block"));
                assert!(
                    [
                        "section",
                        "header",
                        "context",
                        "divider",
                        "actions",
                        "image",
                        "rich_text"
                    ]
                    .contains(&ty),
                    "slack {what}: unknown block type {ty:?}"
                );
                let mut text_objects: Vec<&Value> = Vec::new();
                if let Some(t) = b.get("text") {
                    text_objects.push(t);
                }
                for list in ["fields", "elements"] {
                    if let Some(items) = b.get(list).and_then(Value::as_array) {
                        text_objects.extend(items.iter().filter(|i| i.get("text").is_some()));
                    }
                }
                for t in text_objects {
                    let tt = str_field(t, "type", &format!("slack {what} text object"));
                    assert!(
                        tt == "plain_text" || tt == "mrkdwn",
                        "slack {what}: text object type {tt:?}"
                    );
                    let body = str_field(t, "text", &format!("slack {what} text object"));
                    // Block Kit limits: a header's text 150 characters, a section's 3000.
                    let max = if ty == "header" { 150 } else { 3000 };
                    if ty == "header" {
                        assert_eq!(tt, "plain_text", "slack {what}: a header is plain_text");
                    }
                    assert!(
                        (1..=max).contains(&body.chars().count()),
                        "slack {what}: {ty} text of {} characters (1-{max})",
                        body.chars().count()
                    );
                    all.push('\n');
                    all.push_str(body);
                }
            }
        }
        texts.push(all);
    }
    (texts.remove(0), texts.remove(0))
}

/// Discord execute-webhook: JSON with `content` (≤ 2000 characters) and/or `embeds`
/// (≤ 10; title ≤ 256, description ≤ 4096, ≤ 25 fields of name ≤ 256 and value ≤ 1024,
/// footer ≤ 2048, ≤ 6000 characters in all).
fn check_discord(firing: &Received, resolve: &Received) -> (String, String) {
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let mut texts = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.method, "POST", "discord {what}");
        assert_eq!(r.path, DISCORD_PATH, "discord {what} path");
        content_type_is(r, "application/json", &format!("discord {what}"));
        let v = r.json();
        let mut all = String::new();
        let content = v.get("content").cloned().unwrap_or(Value::Null);
        assert!(
            content.is_null() || content.is_string(),
            "discord {what}: content is not a string: {v}"
        );
        assert!(
            chars(&content) <= 2000,
            "discord {what}: content over 2000 characters"
        );
        all.push_str(content.as_str().unwrap_or(""));
        let embeds = v
            .get("embeds")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        assert!(
            chars(&content) > 0 || !embeds.is_empty(),
            "discord {what}: neither content nor embeds: {v}"
        );
        assert!(embeds.len() <= 10, "discord {what}: more than 10 embeds");
        let mut total = 0;
        for e in &embeds {
            let limits = [("title", 256), ("description", 4096)];
            for (k, max) in limits {
                assert!(chars(&e[k]) <= max, "discord {what}: embed {k} over {max}");
                total += chars(&e[k]);
                all.push('\n');
                all.push_str(e[k].as_str().unwrap_or(""));
            }
            assert!(
                chars(&e["footer"]["text"]) <= 2048,
                "discord {what}: footer"
            );
            total += chars(&e["footer"]["text"]);
            if let Some(color) = e.get("color") {
                assert!(
                    color.is_u64(),
                    "discord {what}: color is not an integer: {color}"
                );
            }
            let fields = e
                .get("fields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            assert!(fields.len() <= 25, "discord {what}: more than 25 fields");
            for f in &fields {
                assert!(
                    (1..=256).contains(&chars(&f["name"])),
                    "discord {what}: field name {f}"
                );
                assert!(
                    (1..=1024).contains(&chars(&f["value"])),
                    "discord {what}: field value {f}"
                );
                total += chars(&f["name"]) + chars(&f["value"]);
                all.push('\n');
                all.push_str(f["name"].as_str().unwrap_or(""));
                all.push('\n');
                all.push_str(f["value"].as_str().unwrap_or(""));
            }
        }
        assert!(total <= 6000, "discord {what}: embeds over 6000 characters");
        texts.push(all);
    }
    (texts.remove(0), texts.remove(0))
}

/// Telegram text as a person sees it: entities undone for HTML, escapes for Markdown.
fn telegram_plain(text: &str, parse_mode: Option<&str>) -> String {
    match parse_mode {
        Some("HTML") => {
            let mut out = String::new();
            let mut in_tag = false;
            for c in text.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' if in_tag => in_tag = false,
                    c if !in_tag => out.push(c),
                    _ => {}
                }
            }
            out.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&amp;", "&")
        }
        Some("MarkdownV2") | Some("Markdown") => {
            let mut out = String::new();
            let mut escaped = false;
            for c in text.chars() {
                if c == '\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(c);
            }
            out
        }
        _ => text.to_string(),
    }
}

/// Telegram Bot API `sendMessage`: POST `<base>/bot<token>/sendMessage` with `chat_id`
/// and `text` (1–4096 characters), JSON or a form; `parse_mode` one Telegram knows.
fn check_telegram(firing: &Received, resolve: &Received) -> (String, String) {
    let mut texts = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.method, "POST", "telegram {what}");
        assert_eq!(
            r.path,
            format!("/bot{TELEGRAM_TOKEN}/sendMessage"),
            "telegram {what} path"
        );
        let f = fields_of(r.header("content-type"), r.body.as_ref());
        assert_eq!(
            f.get("chat_id").map(String::as_str),
            Some(TELEGRAM_CHAT),
            "telegram {what} chat_id: {f:?}"
        );
        let text = f
            .get("text")
            .unwrap_or_else(|| panic!("telegram {what} has no text: {f:?}"));
        let n = text.chars().count();
        assert!(
            (1..=4096).contains(&n),
            "telegram {what}: text of {n} characters"
        );
        let mode = f.get("parse_mode").map(String::as_str);
        assert!(
            matches!(
                mode,
                None | Some("HTML") | Some("MarkdownV2") | Some("Markdown")
            ),
            "telegram {what}: parse_mode {mode:?}"
        );
        texts.push(telegram_plain(text, mode));
    }
    (texts.remove(0), texts.remove(0))
}

/// Pushover `POST /1/messages.json`: `token`, `user`, `message` (≤ 1024 characters),
/// optional `title` (≤ 250) and `priority` (−2…2; 2 needs `retry` ≥ 30 and `expire`
/// ≤ 10800), JSON or a form.
fn check_pushover(firing: &Received, resolve: &Received) -> (String, String) {
    let mut texts = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.method, "POST", "pushover {what}");
        assert_eq!(r.path, PUSHOVER_PATH, "pushover {what} path");
        let f = fields_of(r.header("content-type"), r.body.as_ref());
        assert_eq!(
            f.get("token").map(String::as_str),
            Some(PUSHOVER_TOKEN),
            "pushover {what} token"
        );
        assert_eq!(
            f.get("user").map(String::as_str),
            Some(PUSHOVER_USER),
            "pushover {what} user"
        );
        let message = f
            .get("message")
            .unwrap_or_else(|| panic!("pushover {what} has no message: {f:?}"));
        let n = message.chars().count();
        assert!(
            (1..=1024).contains(&n),
            "pushover {what}: message of {n} characters"
        );
        // Supplementary URL ≤ 512 characters, its title ≤ 100.
        if let Some(url) = f.get("url") {
            assert!(url.chars().count() <= 512, "pushover {what}: url over 512");
        }
        if let Some(t) = f.get("url_title") {
            assert!(
                t.chars().count() <= 100,
                "pushover {what}: url_title over 100"
            );
        }
        let title = f.get("title").cloned().unwrap_or_default();
        assert!(
            title.chars().count() <= 250,
            "pushover {what}: title over 250"
        );
        if let Some(p) = f.get("priority") {
            let p: i64 = p
                .parse()
                .unwrap_or_else(|_| panic!("pushover {what}: priority {p:?}"));
            assert!((-2..=2).contains(&p), "pushover {what}: priority {p}");
            if p == 2 {
                let retry: i64 = f.get("retry").and_then(|v| v.parse().ok()).unwrap_or(0);
                let expire: i64 = f.get("expire").and_then(|v| v.parse().ok()).unwrap_or(0);
                assert!(
                    retry >= 30 && (1..=10_800).contains(&expire),
                    "pushover {what}: emergency priority needs retry ≥ 30 and expire ≤ 10800: {f:?}"
                );
            }
        }
        texts.push(format!("{title}\n{message}"));
    }
    (texts.remove(0), texts.remove(0))
}

/// PagerDuty Events API v2: `routing_key`, `event_action` `trigger` with `payload`
/// (`summary` ≤ 1024, `source`, `severity` critical|error|warning|info), then `resolve`
/// with the same `dedup_key` (≤ 255).
fn check_pagerduty(firing: &Received, resolve: &Received) -> (String, String) {
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.method, "POST", "pagerduty {what}");
        assert_eq!(r.path, PAGERDUTY_PATH, "pagerduty {what} path");
        content_type_is(r, "application/json", &format!("pagerduty {what}"));
    }
    let (t, s) = (firing.json(), resolve.json());
    assert_eq!(
        str_field(&t, "routing_key", "pagerduty trigger"),
        PAGERDUTY_KEY
    );
    assert_eq!(
        str_field(&s, "routing_key", "pagerduty resolve"),
        PAGERDUTY_KEY
    );
    assert_eq!(
        str_field(&t, "event_action", "pagerduty trigger"),
        "trigger"
    );
    assert_eq!(
        str_field(&s, "event_action", "pagerduty resolve"),
        "resolve"
    );
    let dedup = str_field(&t, "dedup_key", "pagerduty trigger");
    assert!(
        (1..=255).contains(&dedup.len()),
        "pagerduty dedup_key of {} characters",
        dedup.len()
    );
    assert_eq!(
        str_field(&s, "dedup_key", "pagerduty resolve"),
        dedup,
        "the resolve must carry the trigger's dedup_key"
    );
    let p = &t["payload"];
    let summary = str_field(p, "summary", "pagerduty trigger payload");
    assert!(
        (1..=1024).contains(&summary.chars().count()),
        "pagerduty summary of {} characters",
        summary.chars().count()
    );
    assert!(
        !str_field(p, "source", "pagerduty trigger payload").is_empty(),
        "pagerduty payload.source is empty"
    );
    assert_eq!(
        str_field(p, "severity", "pagerduty trigger payload"),
        "warning",
        "source_down is a warning (docs/alerts.md default), PagerDuty's `warning`"
    );
    if let Some(ts) = p.get("timestamp") {
        let ts = ts.as_str().unwrap_or_default();
        assert!(
            rfc3339_unix_s(ts).is_some(),
            "pagerduty payload.timestamp {ts:?}"
        );
    }
    // PagerDuty shows only the trigger's summary; the resolve is read by its action.
    let resolve_text = format!(
        "{} resolved {}",
        s["payload"]["summary"].as_str().unwrap_or(SOURCE),
        SOURCE
    );
    (summary.to_string(), resolve_text)
}

/// Label names Alertmanager (Prometheus) accepts.
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One alert of an Alertmanager `postableAlerts` array, checked; returns (labels,
/// startsAt, endsAt) in unix seconds.
fn am_alert(a: &Value, what: &str) -> (BTreeMap<String, String>, f64, Option<f64>) {
    let labels = a["labels"]
        .as_object()
        .unwrap_or_else(|| panic!("alertmanager {what}: no labels object: {a}"));
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| {
            assert!(valid_label_name(k), "alertmanager {what}: label name {k:?}");
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("alertmanager {what}: label {k} is not a string"));
            (k.clone(), v.to_string())
        })
        .collect();
    assert!(
        labels.get("alertname").is_some_and(|n| !n.is_empty()),
        "alertmanager {what}: labels need a non-empty alertname: {labels:?}"
    );
    if let Some(ann) = a.get("annotations") {
        let ann = ann
            .as_object()
            .unwrap_or_else(|| panic!("alertmanager {what}: annotations is not an object"));
        for (k, v) in ann {
            assert!(
                valid_label_name(k),
                "alertmanager {what}: annotation name {k:?}"
            );
            assert!(
                v.is_string(),
                "alertmanager {what}: annotation {k} is not a string"
            );
        }
    }
    if let Some(g) = a.get("generatorURL") {
        let g = g.as_str().unwrap_or_default();
        assert!(
            g.starts_with("http://") || g.starts_with("https://"),
            "alertmanager {what}: generatorURL {g:?} is not a URL"
        );
    }
    let starts = str_field(a, "startsAt", &format!("alertmanager {what}"));
    let starts = rfc3339_unix_s(starts)
        .unwrap_or_else(|| panic!("alertmanager {what}: startsAt {starts:?} is not RFC 3339"));
    let ends = a.get("endsAt").filter(|v| !v.is_null()).map(|v| {
        let s = v.as_str().unwrap_or_default();
        rfc3339_unix_s(s)
            .unwrap_or_else(|| panic!("alertmanager {what}: endsAt {s:?} is not RFC 3339"))
    });
    if let Some(e) = ends {
        assert!(
            e >= starts,
            "alertmanager {what}: endsAt before startsAt: {a}"
        );
    }
    (labels, starts, ends)
}

/// The annotations' text of an alert, for a person.
fn am_text(a: &Value) -> String {
    a["annotations"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Whether this Alertmanager post ends its alert (an `endsAt` not after its arrival).
fn am_is_resolve(r: &Received) -> bool {
    let arrived = unix_s(r.wall);
    r.json()
        .as_array()
        .and_then(|a| a.first().cloned())
        .and_then(|a| a.get("endsAt").and_then(Value::as_str).map(str::to_string))
        .and_then(|e| rfc3339_unix_s(&e))
        .is_some_and(|e| e <= arrived + 0.001)
}

/// Alertmanager `POST /api/v2/alerts`: an array of alerts; the firing has no `endsAt`
/// or one in the future, the resolve an `endsAt` not in the future; same labels and
/// `startsAt` in both.
fn check_alertmanager(posts: &[Received]) -> (String, String) {
    let (firing, resolve) = (&posts[0], posts.last().unwrap());
    let mut out = Vec::new();
    let mut identity = Vec::new();
    for (what, r) in [("firing", firing), ("resolve", resolve)] {
        assert_eq!(r.method, "POST", "alertmanager {what}");
        assert_eq!(r.path, ALERTMANAGER_PATH, "alertmanager {what} path");
        content_type_is(r, "application/json", &format!("alertmanager {what}"));
        let v = r.json();
        let alerts = v
            .as_array()
            .unwrap_or_else(|| panic!("alertmanager {what}: body is not an array: {v}"));
        assert_eq!(
            alerts.len(),
            1,
            "alertmanager {what}: one alert per post: {v}"
        );
        let (labels, starts, ends) = am_alert(&alerts[0], what);
        assert!(
            labels.values().any(|l| l == SOURCE),
            "alertmanager {what}: no label carries the source {SOURCE:?}: {labels:?}"
        );
        let arrived = unix_s(r.wall);
        match what {
            "firing" => assert!(
                ends.is_none_or(|e| e > arrived),
                "alertmanager firing: endsAt {ends:?} is not in the future (arrived {arrived})"
            ),
            _ => assert!(
                ends.is_some_and(|e| e <= arrived + 0.001),
                "alertmanager resolve: endsAt {ends:?} must be now or past (arrived {arrived})"
            ),
        }
        identity.push((labels, starts));
        out.push(am_text(&alerts[0]));
    }
    assert_eq!(
        identity[0], identity[1],
        "the resolve must name the same alert (labels, startsAt) as the firing"
    );
    // Refreshes between them (the channel's refresh interval) are firings again.
    for (i, r) in posts[1..posts.len() - 1].iter().enumerate() {
        assert!(
            !am_is_resolve(r),
            "alertmanager post {} resolves early",
            i + 1
        );
    }
    (out.remove(0), out.remove(0))
}

// ---- the test -----------------------------------------------------------------------------

#[test]
fn every_channel_kind_delivers_the_firing_and_the_resolve_in_its_services_shape() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let services = start_services();
    let mut config = format!(
        "{FAST_RETRIES}{}{SOURCE_DOWN_RULE}",
        lab_source(SOURCE, &db)
    );
    for s in &services {
        config.push_str(&channel_toml(s));
    }
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &Launch {
            config: Some(config),
            env: Vec::new(),
        },
    );

    // ---- firing: the database is missing, so the source is down.
    for s in &services {
        s.rx.wait_for(1, DELIVERY_TIMEOUT);
    }
    let api = alerts(&sidecar);
    let firing = alerts_of(&api, "firing", "source_down");
    assert_eq!(firing.len(), 1, "one source_down alert firing: {api}");
    let alert = &firing[0];
    for field in [
        "fingerprint",
        "rule",
        "severity",
        "labels",
        "title",
        "text",
        "started_at",
        "state",
    ] {
        assert!(
            alert.get(field).is_some(),
            "docs/alerts.md: an alert has {field}: {alert}"
        );
    }
    assert_eq!(
        alert["labels"],
        serde_json::json!({ "source": SOURCE }),
        "{alert}"
    );
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert_eq!(alert["state"], "firing", "{alert}");
    let fingerprint = str_field(alert, "fingerprint", "the alert").to_string();
    assert_names_source(
        "/api/v1/alerts title+text",
        &format!("{} {}", alert["title"], alert["text"]),
    );
    assert_eq!(
        sidecar.metrics().value(&firing_series("source_down")),
        Some(1.0)
    );
    // No second firing while it holds (Alertmanager's refreshes aside).
    std::thread::sleep(SEVERAL_EVALUATIONS);
    for s in services.iter().filter(|s| s.kind != "alertmanager") {
        let got = s.rx.requests();
        assert_eq!(got.len(), 1, "{}: only the firing so far: {got:#?}", s.kind);
    }

    // ---- resolve: the database appears, the source comes up.
    create_lab_db(&db);
    let mut received: BTreeMap<&str, Vec<Received>> = BTreeMap::new();
    for s in &services {
        let got = if s.kind == "alertmanager" {
            poll_until("the alertmanager resolve", DELIVERY_TIMEOUT, || {
                let got = s.rx.requests();
                if got.last().is_some_and(am_is_resolve) {
                    Ok(got)
                } else {
                    Err(format!("{} posts, none resolving", got.len()))
                }
            })
        } else {
            s.rx.wait_for(2, DELIVERY_TIMEOUT)
        };
        received.insert(s.kind, got);
    }
    // Nothing after the resolve.
    std::thread::sleep(SEVERAL_EVALUATIONS);
    for s in &services {
        let now = s.rx.requests();
        assert_eq!(
            now.len(),
            received[s.kind].len(),
            "{}: a request after the resolve: {:#?}",
            s.kind,
            now.last()
        );
    }

    // ---- every request: POST-ish, an Idempotency-Key, the firing before the resolve.
    let mut keys: BTreeMap<&str, (String, String)> = BTreeMap::new();
    for s in &services {
        let got = &received[s.kind];
        if s.kind != "alertmanager" {
            assert_eq!(
                got.len(),
                2,
                "{}: exactly the firing and the resolve: {got:#?}",
                s.kind
            );
        }
        let key = |r: &Received| {
            r.header("idempotency-key")
                .unwrap_or_else(|| panic!("{}: no Idempotency-Key header: {:?}", s.kind, r.headers))
                .to_string()
        };
        let (first, last) = (&got[0], got.last().unwrap());
        assert!(
            first.at <= last.at,
            "{}: the resolve came before the firing",
            s.kind
        );
        let (kf, kr) = (key(first), key(last));
        assert!(
            !kf.is_empty() && kf != kr,
            "{}: keys {kf:?} and {kr:?}",
            s.kind
        );
        keys.insert(s.kind, (kf, kr));
    }

    // ---- each service's documented shape, and words a person understands.
    for s in &services {
        let got = &received[s.kind];
        let (fire_text, resolve_text) = match s.kind {
            "webhook" => check_webhook(&got[0], &got[1]),
            "ntfy" => check_ntfy(&got[0], &got[1]),
            "slack" => check_slack(&got[0], &got[1]),
            "discord" => check_discord(&got[0], &got[1]),
            "telegram" => check_telegram(&got[0], &got[1]),
            "pushover" => check_pushover(&got[0], &got[1]),
            "pagerduty" => check_pagerduty(&got[0], &got[1]),
            "alertmanager" => check_alertmanager(got),
            other => unreachable!("{other}"),
        };
        assert_readable(s.kind, &fire_text, &resolve_text);
    }

    // ---- what the sidecar says about it.
    let api = alerts(&sidecar);
    assert!(
        alerts_of(&api, "firing", "source_down").is_empty(),
        "still firing after the resolve: {api}"
    );
    let recent = alerts_of(&api, "recent", "source_down");
    assert!(
        recent
            .iter()
            .any(|a| a["fingerprint"] == fingerprint.as_str() && a["state"] == "resolved"),
        "the resolved alert is not among the recent ones: {api}"
    );
    let listed = notifications(&api);
    for s in &services {
        let (kf, kr) = &keys[s.kind];
        for (key, kind) in [(kf, "firing"), (kr, "resolved")] {
            let n = listed
                .iter()
                .find(|n| n["key"] == key.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: key {key} is not among /api/v1/alerts notifications: {api}",
                        s.kind
                    )
                });
            for field in [
                "key",
                "fingerprint",
                "channel",
                "kind",
                "state",
                "attempts",
                "last_error",
                "created_at",
                "done_at",
            ] {
                assert!(
                    n.get(field).is_some(),
                    "docs/alerts.md: a notification has {field}: {n}"
                );
            }
            assert_eq!(n["channel"], s.name, "{n}");
            assert_eq!(n["kind"], kind, "{n}");
            assert_eq!(n["fingerprint"], fingerprint.as_str(), "{n}");
            assert_eq!(n["state"], "sent", "{n}");
        }
    }
    assert_eq!(api["outbox"]["pending"], 0, "{api}");
    let m = sidecar.metrics();
    assert_eq!(m.value(&firing_series("source_down")), Some(0.0), "{}", m.0);
    for s in &services {
        let sent = m.expect(&notifications_series(s.name, "sent"));
        if s.kind == "alertmanager" {
            assert_eq!(sent, received[s.kind].len() as f64, "{}", s.kind);
        } else {
            assert_eq!(sent, 2.0, "{}: {}", s.kind, m.0);
        }
        for outcome in ["failed", "dropped"] {
            assert_eq!(
                m.value(&notifications_series(s.name, outcome))
                    .unwrap_or(0.0),
                0.0,
                "{} {outcome}",
                s.kind
            );
        }
    }
    assert_eq!(m.expect("stallwatch_outbox_pending"), 0.0);
}

// ---- a real Alertmanager ------------------------------------------------------------------

/// `prometheus-alertmanager` on a free port with a route to nowhere.
fn start_alertmanager(dir: &Path) -> Alertmanager {
    let bin = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Alertmanager; install it with `apt-get install -y prometheus-alertmanager`. \
                 This test does not skip."
            )
        });
    Alertmanager::start(
        &bin,
        dir,
        "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n",
    )
}

/// The alerts active in `am` carrying label value `value`.
fn active_with(am: &Alertmanager, value: &str) -> Vec<Value> {
    let r = http_get(am.addr, "/api/v2/alerts?active=true").expect("GET /api/v2/alerts");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| {
            a["labels"]
                .as_object()
                .is_some_and(|l| l.values().any(|v| v == value))
        })
        .collect()
}

/// The alertmanager channel speaks to a real Alertmanager: it accepts the firing (the
/// alert becomes active, with the source's label and an annotation naming it) and the
/// resolve (the alert is no longer active).
#[test]
fn a_real_alertmanager_accepts_the_firing_and_the_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let am = start_alertmanager(dir.path());
    let db = dir.path().join("app.db");
    let config = format!(
        "{FAST_RETRIES}{}{SOURCE_DOWN_RULE}[[channel]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://{}\"\n",
        lab_source(SOURCE, &db),
        am.addr
    );
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &Launch {
            config: Some(config),
            env: Vec::new(),
        },
    );
    let active = poll_until("the alert active in Alertmanager", DELIVERY_TIMEOUT, || {
        let a = active_with(&am, SOURCE);
        if a.len() == 1 {
            Ok(a)
        } else {
            let m = sidecar.metrics();
            Err(format!(
                "{} active; sent {:?}, retried {:?}, failed {:?}; /api/v1/alerts {}",
                a.len(),
                m.value(&notifications_series("am", "sent")),
                m.value(&notifications_series("am", "retried")),
                m.value(&notifications_series("am", "failed")),
                alerts(&sidecar)["notifications"]
            ))
        }
    });
    assert_eq!(active[0]["status"]["state"], "active", "{active:?}");
    assert!(
        am_text(&active[0]).contains(SOURCE),
        "no annotation names the source: {active:?}"
    );
    create_lab_db(&db);
    poll_until(
        "the alert resolved in Alertmanager",
        DELIVERY_TIMEOUT,
        || {
            let a = active_with(&am, SOURCE);
            if a.is_empty() {
                Ok(())
            } else {
                Err(format!("still active: {a:?}"))
            }
        },
    );
    let m = sidecar.metrics();
    assert_eq!(
        m.value(&notifications_series("am", "failed"))
            .unwrap_or(0.0),
        0.0
    );
}
