//! Prometheus Alertmanager (<https://prometheus.io/docs/alerting/latest/clients/>): a JSON
//! POST of a one-alert array to `{url}/api/v2/alerts`.
//!
//! Alertmanager identifies an alert by its labels, so they are the same in every post of
//! one alert: `alertname` (`stallwatch_<rule>`, apart from the `Stallwatch…` names of the
//! Prometheus rules in `alerts/`), `severity`, `host` and the alert's own labels. Title,
//! text and runbook go in annotations, which Alertmanager replaces on each post.
//! Alertmanager forgets an alert whose `endsAt` has passed, as clients are expected to
//! re-send active alerts: a firing alert is re-posted every [`REFRESH_INTERVAL`] with
//! `endsAt` [`ENDS_AFTER_REFRESHES`] intervals ahead; a resolve posts `endsAt` = when it
//! cleared.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    json_request, or_placeholder, runbook_link, timestamp, truncate, truncate_bytes, url_secrets,
    Channel, Request, MAX_FREE_TEXT_BYTES, MAX_LINK_BYTES,
};
use crate::alerts::{Message, NotificationKind};

/// How often a firing alert is posted again. Alertmanager's `resolve_timeout` (5m by
/// default) only applies to alerts posted without `endsAt`; we always send one, and
/// re-posting every minute keeps it in the future.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// `endsAt` of a firing alert is this many refresh intervals after the post (4 minutes):
/// three refreshes may be lost before Alertmanager resolves the alert on its own, and
/// after the sidecar dies its alerts resolve within 4 minutes instead of hanging.
pub const ENDS_AFTER_REFRESHES: u32 = 4;
/// Longest summary annotation: it is a one-line title.
const MAX_SUMMARY: usize = 1024;
/// The API path alerts are posted to, under the configured base URL.
const ALERTS_PATH: &str = "/api/v2/alerts";

pub struct Alertmanager {
    name: String,
    url: String,
}

impl Alertmanager {
    pub fn new(name: String, url: String) -> Alertmanager {
        Alertmanager { name, url }
    }

    /// `{url}/api/v2/alerts`, or the URL as given when it already names that path.
    fn endpoint(&self) -> String {
        let base = self.url.trim_end_matches('/');
        if base.ends_with(ALERTS_PATH) {
            base.to_string()
        } else {
            format!("{base}{ALERTS_PATH}")
        }
    }
}

/// A label name Alertmanager accepts (`[a-zA-Z_][a-zA-Z0-9_]*`, not the reserved `__`
/// prefix): other characters become `_`.
pub fn label_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    if name.starts_with("__") {
        name.insert_str(0, "label");
    }
    name
}

/// The alert's identity: the same labels in its firing, refreshes and resolve.
pub fn labels(m: &Message) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (
            "alertname".to_string(),
            format!("stallwatch_{}", label_name(&m.rule)),
        ),
        ("severity".to_string(), m.severity.as_str().to_string()),
        ("host".to_string(), m.host.clone()),
    ]);
    for (k, v) in &m.labels {
        if v.is_empty() {
            continue;
        }
        let mut name = label_name(k);
        if out.contains_key(&name) {
            name.insert_str(0, "label_");
        }
        out.entry(name).or_insert_with(|| v.clone());
    }
    out.retain(|_, v| !v.is_empty());
    out
}

/// The JSON body: an array of one postable alert; `now_ns` is the send time.
pub fn body(m: &Message, now_ns: i64) -> Value {
    let ends_at_ns = match m.kind {
        NotificationKind::Resolved => m.ended_at_ns.unwrap_or(m.created_at_ns),
        NotificationKind::Firing | NotificationKind::Repeat => {
            let ahead = REFRESH_INTERVAL * ENDS_AFTER_REFRESHES;
            now_ns.saturating_add(ahead.as_nanos() as i64)
        }
    };
    let mut annotations = json!({
        "summary": truncate(or_placeholder(&m.title, &m.rule), MAX_SUMMARY),
        "description": truncate_bytes(&m.text, MAX_FREE_TEXT_BYTES),
    });
    if let Some(link) = runbook_link(m, MAX_LINK_BYTES) {
        annotations["runbook_url"] = Value::String(link);
    }
    json!([{
        "labels": labels(m),
        "annotations": annotations,
        "startsAt": timestamp(m.started_at_ns),
        "endsAt": timestamp(ends_at_ns.max(m.started_at_ns)),
    }])
}

impl Channel for Alertmanager {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "alertmanager"
    }

    fn groups(&self) -> bool {
        false
    }

    fn request(&self, message: &Message, now_ns: i64) -> Request {
        json_request(self.endpoint(), &body(message, now_ns))
    }

    fn secrets(&self) -> Vec<String> {
        url_secrets(&self.url, false)
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(REFRESH_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::alerts::Severity;

    fn am(url: &str) -> Box<dyn Channel> {
        channel(&format!("kind = \"alertmanager\"\nurl = \"{url}\"\n"))
    }

    fn valid_label_name(name: &str) -> bool {
        let mut c = name.chars();
        c.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with("__")
    }

    #[test]
    fn a_firing_is_one_alert_ending_four_minutes_after_the_post() {
        let m = firing();
        let r = am("http://am.test:9093").request(&m, NOW_NS);
        assert_eq!(r.url, "http://am.test:9093/api/v2/alerts");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = json(&r);
        let alerts = v.as_array().unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(
            a["labels"],
            json!({
                "alertname": "stallwatch_stuck_jobs",
                "severity": "critical",
                "host": "web-1",
                "queue": "emails",
                "source": "lab-q7",
            })
        );
        assert_eq!(a["annotations"]["summary"], m.title.as_str());
        assert_eq!(a["annotations"]["description"], m.text.as_str());
        assert_eq!(a["annotations"]["runbook_url"], m.runbook_url.as_str());
        assert_eq!(a["startsAt"], "2025-11-20T15:11:15.000Z");
        assert_eq!(a["endsAt"], timestamp(NOW_NS + 240 * 1_000_000_000));
        assert!(a.get("generatorURL").is_none());
        assert_eq!(
            am("http://am.test").refresh_interval(),
            Some(REFRESH_INTERVAL)
        );
    }

    #[test]
    fn a_resolve_is_the_same_alert_ending_when_it_cleared() {
        let f = json(&am("http://am.test/").request(&firing(), NOW_NS));
        let refresh = message(NotificationKind::Repeat, Severity::Critical);
        let rf = json(&am("http://am.test/").request(&refresh, NOW_NS + 60_000_000_000));
        let r = am("http://am.test/").request(&resolved(), NOW_NS);
        assert_eq!(r.url, "http://am.test/api/v2/alerts");
        let v = json(&r);
        assert_eq!(v[0]["labels"], f[0]["labels"]);
        assert_eq!(rf[0]["labels"], f[0]["labels"]);
        assert_eq!(v[0]["startsAt"], f[0]["startsAt"]);
        assert_eq!(v[0]["endsAt"], "2025-11-20T16:11:15.000Z");
        let full = am("https://am.test/api/v2/alerts").request(&firing(), NOW_NS);
        assert_eq!(full.url, "https://am.test/api/v2/alerts");
    }

    #[test]
    fn label_names_are_made_valid_and_never_replace_the_identity() {
        let mut m = firing();
        m.labels.insert("workflow-id".into(), "w1".into());
        m.labels.insert("9lives".into(), "x".into());
        m.labels.insert("__name__".into(), "y".into());
        m.labels.insert("severity".into(), "shadow".into());
        m.labels.insert("empty".into(), String::new());
        let l = labels(&m);
        for name in l.keys() {
            assert!(valid_label_name(name), "{name}");
        }
        assert_eq!(l["workflow_id"], "w1");
        assert_eq!(l["_9lives"], "x");
        assert_eq!(l["label__name__"], "y");
        assert_eq!(l["severity"], "critical");
        assert_eq!(l["label_severity"], "shadow");
        assert!(!l.contains_key("empty"));
    }

    #[test]
    fn a_huge_message_is_still_one_valid_alert() {
        let v = json(&am("http://am.test").request(&huge(firing()), NOW_NS));
        let a = &v[0];
        assert!(chars(&a["annotations"]["summary"]) <= MAX_SUMMARY);
        assert!(a["annotations"]["description"].as_str().unwrap().len() <= MAX_FREE_TEXT_BYTES);
        for name in a["labels"].as_object().unwrap().keys() {
            assert!(valid_label_name(name), "{name}");
        }
    }
}
