//! PagerDuty Events API v2 (<https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>):
//! a JSON POST to `/v2/enqueue`. A firing or a reminder is a `trigger` (PagerDuty adds a
//! repeated trigger to the open alert with the same `dedup_key`); a resolve is a
//! `resolve` with that `dedup_key` and no `payload`, which the API needs only for triggers.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{
    event_time_ns, json_request, or_placeholder, runbook_link, timestamp, truncate, truncate_bytes,
    url_secrets, Channel, Request, MAX_FREE_TEXT_BYTES, MAX_LINK_BYTES,
};
use crate::alerts::{Message, NotificationKind, Severity};
use crate::config::channel::Secret;

/// `payload.summary`: at most 1024 characters.
pub const MAX_SUMMARY: usize = 1024;
/// `dedup_key`: at most 255 characters.
pub const MAX_DEDUP_KEY: usize = 255;
/// `payload.source`, `component`, `group`, `class`: PagerDuty documents no limit; these
/// are names, and a longer one is cut rather than refused.
const MAX_NAME: usize = 255;

pub struct Pagerduty {
    name: String,
    url: String,
    routing_key: Secret,
}

impl Pagerduty {
    pub fn new(name: String, url: String, routing_key: Secret) -> Pagerduty {
        Pagerduty {
            name,
            url,
            routing_key,
        }
    }
}

/// The alert's fingerprint, or its SHA-256 when longer than PagerDuty takes: the same for
/// the trigger, its repeats and its resolve.
pub fn dedup_key(fingerprint: &str) -> String {
    if !fingerprint.is_empty() && fingerprint.len() <= MAX_DEDUP_KEY {
        return fingerprint.to_string();
    }
    let digest = Sha256::digest(fingerprint.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("stallwatch-{hex}")
}

/// The JSON body for `routing_key`.
pub fn body(m: &Message, routing_key: &str) -> Value {
    let dedup = dedup_key(&m.fingerprint);
    if m.kind == NotificationKind::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup,
        });
    }
    let severity = match m.severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    let mut payload = json!({
        "summary": truncate(or_placeholder(&m.title, &m.rule), MAX_SUMMARY),
        "source": truncate(or_placeholder(&m.host, "stallwatch"), MAX_NAME),
        "severity": severity,
        "timestamp": timestamp(event_time_ns(m)),
        "component": "stallwatch",
        "group": truncate(&m.rule, MAX_NAME),
        "custom_details": {
            "labels": m.labels,
            "text": truncate_bytes(&m.text, MAX_FREE_TEXT_BYTES),
            "rule": m.rule,
            "notification": m.kind.as_str(),
        },
    });
    if let Some(class) = m.labels.get("kind").filter(|k| !k.is_empty()) {
        payload["class"] = Value::String(truncate(class, MAX_NAME));
    }
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "client": "stallwatch",
        "payload": payload,
    });
    if let Some(link) = runbook_link(m, MAX_LINK_BYTES) {
        event["links"] = json!([{"href": link, "text": "Runbook"}]);
    }
    event
}

impl Channel for Pagerduty {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "pagerduty"
    }

    fn groups(&self) -> bool {
        false
    }

    fn request(&self, message: &Message, _now_ns: i64) -> Request {
        json_request(self.url.clone(), &body(message, self.routing_key.expose()))
    }

    fn secrets(&self) -> Vec<String> {
        let mut out = url_secrets(&self.url, false);
        out.push(self.routing_key.expose().to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn pagerduty() -> Box<dyn Channel> {
        channel("kind = \"pagerduty\"\nrouting_key = \"R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12\"\n")
    }

    #[test]
    fn a_firing_is_a_trigger_with_a_payload() {
        let mut m = firing();
        m.labels.insert("kind".into(), "vm_pause".into());
        let r = pagerduty().request(&m, NOW_NS);
        assert_eq!(r.url, "https://events.pagerduty.com/v2/enqueue");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = json(&r);
        assert_eq!(v["routing_key"], "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], m.fingerprint.as_str());
        let p = &v["payload"];
        assert_eq!(p["summary"], m.title.as_str());
        assert_eq!(p["source"], "web-1");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["timestamp"], "2025-11-20T15:11:15.000Z");
        assert_eq!(p["component"], "stallwatch");
        assert_eq!(p["group"], "stuck_jobs");
        assert_eq!(p["class"], "vm_pause");
        assert_eq!(p["custom_details"]["labels"]["source"], "lab-q7");
        assert_eq!(p["custom_details"]["text"], m.text.as_str());
        assert_eq!(v["links"][0]["href"], m.runbook_url.as_str());
        assert_eq!(v["links"][0]["text"], "Runbook");
        // A reminder is a trigger again, on the same alert.
        let repeat = message(NotificationKind::Repeat, Severity::Warning);
        let v = json(&pagerduty().request(&repeat, NOW_NS));
        assert_eq!(
            (
                &v["event_action"],
                &v["dedup_key"],
                &v["payload"]["severity"]
            ),
            (&json!("trigger"), &json!(m.fingerprint), &json!("warning"))
        );
        assert!(v["payload"].get("class").is_none());
    }

    #[test]
    fn a_resolve_carries_only_the_key_and_action() {
        let v = json(&pagerduty().request(&resolved(), NOW_NS));
        assert_eq!(
            v,
            json!({
                "routing_key": "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12",
                "event_action": "resolve",
                "dedup_key": firing().fingerprint,
            })
        );
    }

    #[test]
    fn a_long_fingerprint_is_hashed_the_same_every_time() {
        let long = format!("workflow_stalled{{workflow_id={}}}", "w".repeat(300));
        let k = dedup_key(&long);
        assert!(
            k.len() <= MAX_DEDUP_KEY && k.starts_with("stallwatch-"),
            "{k}"
        );
        assert_eq!(k, dedup_key(&long));
        assert_ne!(k, dedup_key(&format!("{long}x")));
        let mut m = huge(firing());
        m.fingerprint = long;
        let v = json(&pagerduty().request(&m, NOW_NS));
        assert_eq!(v["dedup_key"], k.as_str());
        assert!(chars(&v["payload"]["summary"]) <= MAX_SUMMARY);
        assert!(
            v["payload"]["custom_details"]["text"]
                .as_str()
                .unwrap()
                .len()
                <= MAX_FREE_TEXT_BYTES
        );
    }
}
