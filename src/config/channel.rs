//! `[[channel]]` tables: where alerts are delivered, validated per kind.
//!
//! One flat table per channel, like `[[source]]`: a key that does not apply to the
//! channel's kind is an error naming both, so a `chat_id` on a `slack` channel cannot be
//! silently ignored. Owns checking what a user wrote; rendering and sending live in
//! `alerts::channels`. No error text ever carries a secret: tokens, signing keys, routing
//! keys and user keys are never echoed, and a URL (whose path is the credential for Slack,
//! Discord and ntfy) is never echoed either.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::value::HumanDuration;

/// Most channels one sidecar delivers to: each has its own delivery lane and metrics
/// series, and a handful covers every phone and chat of a team.
pub const MAX_CHANNELS: usize = 16;
/// Default time one delivery attempt may take: long enough for a slow chat API, short
/// enough that a hung receiver does not hold its lane for minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The window `max_per_hour` counts sends in.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(3600);
/// A phone channel's default `max_per_hour`: past it, a person stops reading.
pub const PHONE_MAX_PER_HOUR: u32 = 20;
/// Longest channel name: it is a metric label value.
pub const MAX_NAME_CHARS: usize = 64;
/// Most ntfy tags: ntfy shows them as emojis and words next to the title.
pub const MAX_TAGS: usize = 10;
/// Longest ntfy tag.
pub const MAX_TAG_CHARS: usize = 64;

/// The Telegram Bot API when `url` is not set.
pub const TELEGRAM_URL: &str = "https://api.telegram.org";
/// Pushover's message API when `url` is not set.
pub const PUSHOVER_URL: &str = "https://api.pushover.net/1/messages.json";
/// PagerDuty's Events API v2 when `url` is not set (the EU service region is
/// `https://events.eu.pagerduty.com/v2/enqueue`).
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// The `channel` label of the dead-man's switch pings in `notifications_total`: a name
/// no configured channel may take.
pub const DEADMAN_CHANNEL: &str = "deadman";

/// The service a channel delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Webhook,
    Ntfy,
    Slack,
    Discord,
    Telegram,
    Pushover,
    Pagerduty,
    Alertmanager,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 8] = [
        ChannelKind::Webhook,
        ChannelKind::Ntfy,
        ChannelKind::Slack,
        ChannelKind::Discord,
        ChannelKind::Telegram,
        ChannelKind::Pushover,
        ChannelKind::Pagerduty,
        ChannelKind::Alertmanager,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Ntfy => "ntfy",
            ChannelKind::Slack => "slack",
            ChannelKind::Discord => "discord",
            ChannelKind::Telegram => "telegram",
            ChannelKind::Pushover => "pushover",
            ChannelKind::Pagerduty => "pagerduty",
            ChannelKind::Alertmanager => "alertmanager",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The URL used when `url` is not set; `None` where the user must give one.
    /// Channels that buzz a phone (ntfy, Pushover, Telegram) are limited by default; the
    /// others are read by machines or by people at a desk.
    pub fn default_max_per_hour(self) -> u32 {
        match self {
            ChannelKind::Ntfy | ChannelKind::Pushover | ChannelKind::Telegram => PHONE_MAX_PER_HOUR,
            _ => 0,
        }
    }

    pub fn default_url(self) -> Option<&'static str> {
        match self {
            ChannelKind::Telegram => Some(TELEGRAM_URL),
            ChannelKind::Pushover => Some(PUSHOVER_URL),
            ChannelKind::Pagerduty => Some(PAGERDUTY_URL),
            _ => None,
        }
    }

    /// Whether the URL's path is itself the credential (a Slack or Discord webhook, an
    /// ntfy topic, a generic webhook with a token in its path).
    pub fn url_path_is_secret(self) -> bool {
        matches!(
            self,
            ChannelKind::Webhook | ChannelKind::Ntfy | ChannelKind::Slack | ChannelKind::Discord
        )
    }
}

/// A credential from the config. Its `Debug` shows `***`, so a config printed in a test
/// failure or a debug log does not leak it; [`Secret::expose`] is the one way in.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// What only some kinds have, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelDetail {
    /// Standard Webhooks signing key (`whsec_…`), if set.
    Webhook {
        secret: Option<Secret>,
    },
    Ntfy {
        /// Access token, sent as `Authorization: Bearer`.
        token: Option<Secret>,
        /// Priority 1-5 for firing and repeat notifications instead of the one by severity.
        priority: Option<u8>,
        /// Tags added to the ones by severity.
        tags: Vec<String>,
    },
    Slack,
    Discord,
    Telegram {
        token: Secret,
        chat_id: String,
    },
    Pushover {
        token: Secret,
        user: Secret,
        /// Priority -2..=1 for firing and repeat notifications instead of the one by
        /// severity (2, emergency, needs acknowledgement settings and is not offered).
        priority: Option<i8>,
    },
    Pagerduty {
        routing_key: Secret,
    },
    Alertmanager,
}

/// One validated channel.
#[derive(Clone, PartialEq)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// Where requests go: as written, or the service's default. May hold a credential
    /// (see [`ChannelKind::url_path_is_secret`]); show it only through [`Self::shown_url`].
    pub url: String,
    pub detail: ChannelDetail,
    /// Time one delivery attempt may take.
    pub timeout: Duration,
    /// At most this many sends in any `rate_window`; beyond it, what is due waits and goes
    /// as one digest when the window opens. 0: no limit.
    pub max_per_hour: u32,
    pub rate_window: Duration,
}

impl ChannelConfig {
    /// The URL as it may appear in logs: scheme and host only when the path is a
    /// credential, else without userinfo and query.
    pub fn shown_url(&self) -> String {
        let redacted = super::value::redact_url(&self.url);
        if !self.kind.url_path_is_secret() {
            return redacted;
        }
        match redacted.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split('/').next().unwrap_or(rest);
                format!("{scheme}://{host}/***")
            }
            None => "***".to_string(),
        }
    }
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.shown_url())
            .field("detail", &self.detail)
            .field("timeout", &self.timeout)
            .field("max_per_hour", &self.max_per_hour)
            .field("rate_window", &self.rate_window)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    name: Option<String>,
    kind: Option<String>,
    url: Option<String>,
    timeout: Option<HumanDuration>,
    max_per_hour: Option<u32>,
    rate_window: Option<HumanDuration>,
    // webhook
    secret: Option<String>,
    // ntfy, telegram, pushover
    token: Option<String>,
    // telegram
    chat_id: Option<toml::Value>,
    // pushover
    user: Option<String>,
    // pagerduty
    routing_key: Option<String>,
    // ntfy, pushover
    priority: Option<toml::Value>,
    // ntfy
    tags: Option<Vec<String>>,
}

type Problem = (String, String);

/// Validates `[[channel]]` number `index`; `earlier` are the channels before it.
/// Errors are `(key, problem)`, e.g. `("channel[0].url", "is required for a slack channel")`.
pub fn validate(
    index: usize,
    raw: RawChannel,
    earlier: &[ChannelConfig],
) -> Result<ChannelConfig, Problem> {
    let key = |k: &str| format!("channel[{index}].{k}");
    let name = raw
        .name
        .clone()
        .ok_or_else(|| (key("name"), "is required".to_string()))?;
    let name_ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err((
            key("name"),
            format!(
                "{} must be 1-{MAX_NAME_CHARS} letters, digits, '_' or '-'",
                super::limits::quoted(&name)
            ),
        ));
    }
    if name == DEADMAN_CHANNEL {
        return Err((
            key("name"),
            format!("{name:?} is reserved for the dead-man's switch pings; choose another name"),
        ));
    }
    if earlier.iter().any(|c| c.name == name) {
        return Err((
            key("name"),
            format!(
                "{} is used by another channel",
                super::limits::quoted(&name)
            ),
        ));
    }
    let kind_names = || {
        let names: Vec<&str> = ChannelKind::ALL.iter().map(|k| k.as_str()).collect();
        let (last, rest) = names.split_last().expect("there are channel kinds");
        format!("{} or {last}", rest.join(", "))
    };
    let kind_text = raw
        .kind
        .clone()
        .ok_or_else(|| (key("kind"), format!("is required: {}", kind_names())))?;
    let kind = ChannelKind::parse(&kind_text).ok_or_else(|| {
        (
            key("kind"),
            format!(
                "unknown channel kind {}; expected one of {}",
                super::limits::quoted(&kind_text),
                ChannelKind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let of_kind = format!("a {} channel", kind.as_str());

    // Keys that only some kinds understand.
    use ChannelKind as K;
    let only: [(&str, bool, &[ChannelKind]); 7] = [
        ("secret", raw.secret.is_some(), &[K::Webhook]),
        (
            "token",
            raw.token.is_some(),
            &[K::Ntfy, K::Telegram, K::Pushover],
        ),
        ("chat_id", raw.chat_id.is_some(), &[K::Telegram]),
        ("user", raw.user.is_some(), &[K::Pushover]),
        ("routing_key", raw.routing_key.is_some(), &[K::Pagerduty]),
        ("priority", raw.priority.is_some(), &[K::Ntfy, K::Pushover]),
        ("tags", raw.tags.is_some(), &[K::Ntfy]),
    ];
    if let Some((k, _, _)) = only
        .iter()
        .find(|(_, present, kinds)| *present && !kinds.contains(&kind))
    {
        return Err((key(k), format!("does not apply to {of_kind}")));
    }

    let url = match (raw.url.clone(), kind.default_url()) {
        (Some(url), _) => url,
        (None, Some(default)) => default.to_string(),
        (None, None) => return Err((key("url"), format!("is required for {of_kind}"))),
    };
    check_url(&url).map_err(|p| (key("url"), p))?;

    let timeout = raw.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if let Err(problem) = super::limits::CHANNEL_TIMEOUT.check(timeout) {
        return Err((key("timeout"), problem));
    }

    let max_per_hour = raw.max_per_hour.unwrap_or(kind.default_max_per_hour());
    if let Err(problem) = super::limits::CHANNEL_MAX_PER_HOUR.check(max_per_hour) {
        return Err((key("max_per_hour"), problem));
    }
    let rate_window = raw.rate_window.map_or(DEFAULT_RATE_WINDOW, |d| d.0);
    if let Err(problem) = super::limits::CHANNEL_RATE_WINDOW.check(rate_window) {
        return Err((key("rate_window"), problem));
    }

    let required = |k: &str, value: &Option<String>| -> Result<Secret, Problem> {
        let value = value
            .clone()
            .ok_or_else(|| (key(k), format!("is required for {of_kind}")))?;
        credential(&value).map_err(|p| (key(k), p))?;
        Ok(Secret(value))
    };
    let optional = |k: &str, value: &Option<String>| -> Result<Option<Secret>, Problem> {
        match value {
            None => Ok(None),
            Some(_) => required(k, value).map(Some),
        }
    };

    let detail = match kind {
        K::Webhook => {
            let secret = optional("secret", &raw.secret)?;
            if let Some(s) = &secret {
                signing_key(s.expose()).map_err(|e| (key("secret"), e.to_string()))?;
            }
            ChannelDetail::Webhook { secret }
        }
        K::Ntfy => ChannelDetail::Ntfy {
            token: optional("token", &raw.token)?,
            priority: raw
                .priority
                .as_ref()
                .map(ntfy_priority)
                .transpose()
                .map_err(|p| (key("priority"), p))?,
            tags: ntfy_tags(raw.tags.clone().unwrap_or_default()).map_err(|p| (key("tags"), p))?,
        },
        K::Slack => ChannelDetail::Slack,
        K::Discord => ChannelDetail::Discord,
        K::Telegram => {
            let token = required("token", &raw.token)?;
            if !token
                .expose()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_-".contains(c))
            {
                return Err((
                    key("token"),
                    "must be a bot token as @BotFather gives it: digits, ':' and letters".into(),
                ));
            }
            let chat_id = raw
                .chat_id
                .as_ref()
                .ok_or_else(|| (key("chat_id"), format!("is required for {of_kind}")))?;
            ChannelDetail::Telegram {
                token,
                chat_id: telegram_chat(chat_id).map_err(|p| (key("chat_id"), p))?,
            }
        }
        K::Pushover => ChannelDetail::Pushover {
            token: required("token", &raw.token)?,
            user: required("user", &raw.user)?,
            priority: raw
                .priority
                .as_ref()
                .map(pushover_priority)
                .transpose()
                .map_err(|p| (key("priority"), p))?,
        },
        K::Pagerduty => ChannelDetail::Pagerduty {
            routing_key: required("routing_key", &raw.routing_key)?,
        },
        K::Alertmanager => ChannelDetail::Alertmanager,
    };
    Ok(ChannelConfig {
        name,
        kind,
        url,
        detail,
        timeout,
        max_per_hour,
        rate_window,
    })
}

/// An `http://` or `https://` URL with a host and nothing a request line cannot carry.
/// The URL itself never appears in the problem: its path may be the credential.
fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("must be an http:// or https:// URL".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "has scheme {}; it must be an http:// or https:// URL",
            super::limits::quoted(scheme)
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host; it must be an http:// or https:// URL".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

/// A token or key: non-empty, printable ASCII without spaces (it goes into a header, a
/// URL path or a form field). Never echoed.
fn credential(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be printable ASCII without spaces (check for a stray quote or newline)".into(),
        );
    }
    Ok(())
}

/// A Standard Webhooks signing secret that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must start with \"whsec_\" (a Standard Webhooks signing secret)")]
    Prefix,
    #[error("must be base64 after \"whsec_\" (a Standard Webhooks signing secret)")]
    Base64,
    #[error("has no key after \"whsec_\"")]
    Empty,
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`, decoded.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| SecretError::Base64)?;
    if key.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(key)
}

/// ntfy priority: 1-5 or its names (min, low, default, high, max/urgent).
fn ntfy_priority(value: &toml::Value) -> Result<u8, String> {
    let named = |s: &str| match s {
        "min" => Some(1),
        "low" => Some(2),
        "default" => Some(3),
        "high" => Some(4),
        "max" | "urgent" => Some(5),
        _ => s.parse::<u8>().ok().filter(|n| (1..=5).contains(n)),
    };
    let parsed = match value {
        toml::Value::Integer(n) => u8::try_from(*n).ok().filter(|n| (1..=5).contains(n)),
        toml::Value::String(s) => named(s.trim()),
        _ => None,
    };
    parsed.ok_or_else(|| {
        format!(
            "{} is not an ntfy priority; use 1-5 or min, low, default, high, max",
            shown_value(value)
        )
    })
}

/// Pushover priority -2..=1; 2 (emergency) needs `retry`/`expire` and is not offered.
fn pushover_priority(value: &toml::Value) -> Result<i8, String> {
    let n = match value {
        toml::Value::Integer(n) => Some(*n),
        toml::Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n @ -2..=1) => Ok(n as i8),
        Some(2) => {
            Err("2 (emergency) is not supported: it repeats until acknowledged; use -2 to 1".into())
        }
        _ => Err(format!(
            "{} is not a Pushover priority; use -2, -1, 0 or 1",
            shown_value(value)
        )),
    }
}

fn ntfy_tags(tags: Vec<String>) -> Result<Vec<String>, String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("lists {} tags; at most {MAX_TAGS}", tags.len()));
    }
    let mut out = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim().to_string();
        let ok = !tag.is_empty()
            && tag.chars().count() <= MAX_TAG_CHARS
            && !tag.chars().any(|c| c == ',' || c.is_control());
        if !ok {
            return Err(format!(
                "{} must be 1-{MAX_TAG_CHARS} characters without ',' (like \"warning\" or \"rotating_light\")",
                super::limits::quoted(&tag)
            ));
        }
        out.push(tag);
    }
    Ok(out)
}

/// A Telegram chat: a numeric id (negative for groups and channels) or `@channelname`.
fn telegram_chat(value: &toml::Value) -> Result<String, String> {
    let text = match value {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => s.trim().to_string(),
        _ => String::new(),
    };
    let digits = text.strip_prefix('-').unwrap_or(&text);
    let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let username = text
        .strip_prefix('@')
        .is_some_and(|u| u.len() >= 4 && u.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if numeric || username {
        Ok(text)
    } else {
        Err(format!(
            "{} must be a chat id like \"-1001234567890\" or a channel like \"@mychannel\"",
            shown_value(value)
        ))
    }
}

/// A value a user typed for a non-secret key, short enough for one sentence.
fn shown_value(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => super::limits::quoted(s),
        other => super::limits::clip(&other.to_string()).into_owned(),
    }
}
