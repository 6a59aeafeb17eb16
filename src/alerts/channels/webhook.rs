//! Generic webhook: the notification as a Standard Webhooks event
//! (<https://www.standardwebhooks.com>), signed when a secret is set.
//!
//! Body, the spec's recommended envelope: `{"type": "alert.firing" | "alert.repeat" |
//! "alert.resolved", "timestamp": RFC 3339, "data": {…the notification…}}`. Headers:
//! `webhook-id` (the notification's idempotency key: the same on every retry, so a
//! receiver can drop duplicates), `webhook-timestamp` (send time, unix seconds) and, with
//! a secret, `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! keyed with the base64-decoded part of the secret after `whsec_`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::{
    event_time_ns, json_request, timestamp, truncate, truncate_bytes, unix_seconds, url_secrets,
    Channel, Request, MAX_FREE_TEXT_BYTES,
};
use crate::alerts::{Message, NotificationKind};
use crate::config::channel::{signing_key, Secret, SecretError};

/// Longest title sent: a title is one line; this only bounds the body if one is not.
pub const MAX_TITLE_CHARS: usize = 1024;

pub struct Webhook {
    name: String,
    url: String,
    secret: Option<Secret>,
    /// The HMAC key decoded from `secret` once.
    key: Option<Vec<u8>>,
}

impl Webhook {
    /// `secret` was checked by `config::channel` (a `whsec_` base64 key).
    pub fn new(name: String, url: String, secret: Option<Secret>) -> Webhook {
        let key = secret.as_ref().map(|s| {
            signing_key(s.expose()).expect("config::channel validated the webhook secret")
        });
        Webhook {
            name,
            url,
            secret,
            key,
        }
    }
}

/// The event type of a notification: `alert.firing`, `alert.repeat` or `alert.resolved`.
pub fn event_type(kind: NotificationKind) -> String {
    format!("alert.{}", kind.as_str())
}

/// The JSON body: the Standard Webhooks envelope around the notification.
pub fn body(m: &Message) -> serde_json::Value {
    json!({
        "type": event_type(m.kind),
        "timestamp": timestamp(event_time_ns(m)),
        "data": {
            "key": m.key,
            "fingerprint": m.fingerprint,
            "rule": m.rule,
            "kind": m.kind.as_str(),
            "severity": m.severity.as_str(),
            "labels": m.labels,
            "title": truncate(&m.title, MAX_TITLE_CHARS),
            "text": truncate_bytes(&m.text, MAX_FREE_TEXT_BYTES),
            "started_at": timestamp(m.started_at_ns),
            "ended_at": m.ended_at_ns.map(timestamp),
            "runbook_url": m.runbook_url,
            "host": m.host,
            // A group's message stands for several notifications and events.
            "count": m.group.as_ref().map_or(m.count, |g| g.count),
            "notifications": m.group.as_ref().map_or(1, |g| g.members),
            "caused": m.group.as_ref().map_or(0, |g| g.consequences),
        }
    })
}

/// The `webhook-signature` value for `body` sent as message `id` at `timestamp` (unix
/// seconds) with Standard Webhooks secret `secret` (`whsec_<base64 key>`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SecretError> {
    Ok(sign_with_key(&signing_key(secret)?, id, timestamp, body))
}

fn sign_with_key(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

impl Channel for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn request(&self, message: &Message, now_ns: i64) -> Request {
        let mut request = json_request(self.url.clone(), &body(message));
        let sent_at = unix_seconds(now_ns);
        if let Some(key) = &self.key {
            let signature = sign_with_key(key, &message.key, sent_at, &request.body);
            request
                .headers
                .push(("webhook-signature".into(), signature));
        }
        request
            .headers
            .push(("webhook-id".into(), message.key.clone()));
        request
            .headers
            .push(("webhook-timestamp".into(), sent_at.to_string()));
        request
    }

    fn secrets(&self) -> Vec<String> {
        let mut out = url_secrets(&self.url, true);
        if let Some(secret) = &self.secret {
            out.push(secret.expose().to_string());
            // The base64 key alone, as a receiver's error page may quote it.
            let key = secret.expose().trim_start_matches("whsec_");
            out.push(key.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// The example of the Standard Webhooks specification.
    #[test]
    fn sign_matches_the_specification_example() {
        let got = sign(
            SECRET,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(got, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            sign("MfKQ9r8G", "id", 1, b"x"),
            Err(SecretError::Prefix),
            "a secret without whsec_ is refused, not used raw"
        );
    }

    fn signed() -> Box<dyn Channel> {
        channel(&format!(
            "kind = \"webhook\"\nurl = \"https://h.test/hook\"\nsecret = \"{SECRET}\"\n"
        ))
    }

    #[test]
    fn a_firing_is_a_signed_standard_webhooks_event() {
        let m = firing();
        let r = signed().request(&m, NOW_NS);
        assert_eq!(r.url, "https://h.test/hook");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "webhook-id"), Some(m.key.as_str()));
        let ts = unix_seconds(NOW_NS);
        assert_eq!(
            header(&r, "webhook-timestamp"),
            Some(ts.to_string().as_str())
        );
        let expected = sign(SECRET, &m.key, ts, &r.body).unwrap();
        assert_eq!(header(&r, "webhook-signature"), Some(expected.as_str()));

        let v = json(&r);
        assert_eq!(v["type"], "alert.firing");
        assert_eq!(v["timestamp"], timestamp(STARTED_NS));
        let d = &v["data"];
        assert_eq!(d["key"], m.key.as_str());
        assert_eq!(d["fingerprint"], m.fingerprint.as_str());
        assert_eq!(d["rule"], "stuck_jobs");
        assert_eq!(d["kind"], "firing");
        assert_eq!(d["severity"], "critical");
        assert_eq!(d["labels"]["source"], "lab-q7");
        assert_eq!(d["title"], m.title.as_str());
        assert_eq!(d["text"], m.text.as_str());
        assert_eq!(d["started_at"], "2025-11-20T15:11:15.000Z");
        assert!(d["ended_at"].is_null());
        assert_eq!(d["runbook_url"], m.runbook_url.as_str());
        assert_eq!(d["host"], "web-1");
    }

    #[test]
    fn a_resolve_says_when_it_ended() {
        let r = signed().request(&resolved(), NOW_NS);
        let v = json(&r);
        assert_eq!(v["type"], "alert.resolved");
        assert_eq!(v["timestamp"], timestamp(ENDED_NS));
        assert_eq!(v["data"]["kind"], "resolved");
        assert_eq!(v["data"]["ended_at"], "2025-11-20T16:11:15.000Z");
        // Signed over exactly the bytes sent.
        let sig = sign(SECRET, &resolved().key, unix_seconds(NOW_NS), &r.body).unwrap();
        assert_eq!(header(&r, "webhook-signature"), Some(sig.as_str()));
    }

    #[test]
    fn without_a_secret_the_id_and_timestamp_are_still_sent() {
        let ch = channel("kind = \"webhook\"\nurl = \"https://h.test/hook\"\n");
        let r = ch.request(&firing(), NOW_NS);
        assert_eq!(header(&r, "webhook-id"), Some(firing().key.as_str()));
        assert!(header(&r, "webhook-timestamp").is_some());
        assert_eq!(header(&r, "webhook-signature"), None);
        assert!(!ch.secrets().is_empty());
    }

    #[test]
    fn a_huge_text_is_cut_to_64_kib() {
        let r = signed().request(&huge(firing()), NOW_NS);
        let v = json(&r);
        let text = v["data"]["text"].as_str().unwrap();
        assert!(
            text.len() <= MAX_FREE_TEXT_BYTES && text.ends_with('…'),
            "{}",
            text.len()
        );
        assert!(chars(&v["data"]["title"]) <= MAX_TITLE_CHARS);
        let sig = sign(SECRET, &firing().key, unix_seconds(NOW_NS), &r.body).unwrap();
        assert_eq!(header(&r, "webhook-signature"), Some(sig.as_str()));
    }
}
