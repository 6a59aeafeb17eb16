//! Secrets never leave the config (docs/design.md: "Secrets never appear
//! in logs or pages"): every channel kind is configured with a secret where its service
//! keeps one — URL path tokens (Slack, Discord), a bot token in the path (Telegram), body
//! fields (Pushover token and user, PagerDuty routing key), a signing key (webhook), a
//! bearer token (ntfy), a password in the URL (Alertmanager) — plus a token in the
//! heartbeat URL, and every delivery fails: connections refused, or answers (500, 429,
//! 400) whose bodies echo the request with the secrets in it, as misbehaving proxies and
//! real services do (one Alertmanager proxy echoes the `Authorization` header the URL's
//! password becomes). After the retries, no secret is in the log (at `info` and at
//! `debug` for every crate), `/metrics`, `/api/v1/alerts`, `/api/v1/status`,
//! `/api/v1/freezes`, `/api/v1/episodes`, `/`, or the files of the data dir;
//! and `check-config` on a bad channel does not print the secret either.

mod alerts_support;
mod common;

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use alerts_support::*;
use common::receiver::{Receiver, Reply};
use common::{free_port, poll_until, run_to_exit, Finished, Launch, Sidecar};

/// Every secret here contains this marker, so a leak of any part of one is caught even
/// when it is cut or encoded differently from the list below.
const MARKER: &str = "SECRET";

const SLACK_TOKEN: &str = "SECRETSLACK7q1";
const DISCORD_TOKEN: &str = "SECRETDISCORDx9";
const TELEGRAM_TOKEN: &str = "987654:SECRETTELEGRAMk3";
const PUSHOVER_TOKEN: &str = "SECRETPUSHTOKENa1";
const PUSHOVER_USER: &str = "SECRETPUSHUSERb2";
const ROUTING_KEY: &str = "SECRETROUTINGKEYc3";
/// The webhook's signing key as bytes; the config holds `whsec_` + its base64.
const SIGNING_KEY: &str = "SECRET-WEBHOOK-SIGNING-KEY-d4";
const WEBHOOK_QUERY_TOKEN: &str = "SECRETWEBHOOKQUERYe5";
const NTFY_TOKEN: &str = "tk_SECRETNTFYf6";
const AM_PASSWORD: &str = "SECRETPWg7";
const HEARTBEAT_TOKEN: &str = "SECRETHEARTBEATh8";
/// How long the deliveries are left failing and retrying before the outputs are read.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries each retried channel must have made before the outputs are read.
const MIN_RETRIES: f64 = 2.0;

fn webhook_secret() -> String {
    format!("whsec_{}", STANDARD.encode(SIGNING_KEY))
}

/// The `Authorization: Basic` value the Alertmanager URL's userinfo becomes.
fn am_basic() -> String {
    STANDARD.encode(format!("stallwatch:{AM_PASSWORD}"))
}

/// Every secret as it may appear: as configured, and in the encodings a request carries.
fn secrets() -> Vec<String> {
    let mut all: Vec<String> = [
        SLACK_TOKEN,
        DISCORD_TOKEN,
        TELEGRAM_TOKEN,
        "SECRETTELEGRAMk3",
        PUSHOVER_TOKEN,
        PUSHOVER_USER,
        ROUTING_KEY,
        SIGNING_KEY,
        WEBHOOK_QUERY_TOKEN,
        NTFY_TOKEN,
        AM_PASSWORD,
        HEARTBEAT_TOKEN,
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    all.push(webhook_secret());
    all.push(STANDARD.encode(SIGNING_KEY));
    all.push(am_basic());
    all
}

/// The secrets (or the marker) found in `text`.
fn leaks(text: &str) -> Vec<String> {
    let mut found: Vec<String> = secrets()
        .into_iter()
        .filter(|s| text.contains(s.as_str()))
        .collect();
    if found.is_empty() && text.contains(MARKER) {
        let at = text.find(MARKER).unwrap();
        let start = text[..at]
            .char_indices()
            .rev()
            .nth(60)
            .map_or(0, |(i, _)| i);
        let end = (at + 60).min(text.len());
        let end = (end..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        found.push(format!("a part of a secret: …{}…", &text[start..end]));
    }
    found
}

/// The last 20 000 bytes of `text` (a debug log is long), cut at a character boundary.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(20_000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[track_caller]
fn assert_no_leak(what: &str, text: &str) {
    let found = leaks(text);
    assert!(
        found.is_empty(),
        "{what} shows secrets {found:?}:\n{}",
        tail(text)
    );
}

fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut r = Reply::status(status);
    r.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    r.body = body.to_string();
    r
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// The receivers that answer (with echoes) and the config naming them all.
struct Setup {
    _receivers: Vec<Receiver>,
    config: String,
    channels: Vec<&'static str>,
}

fn setup(db: &Path) -> Setup {
    let closed = free_port();
    let telegram = Receiver::start();
    telegram.set_default(reply(
        400,
        &[JSON],
        &format!(
            r#"{{"ok":false,"error_code":400,"description":"Bad Request: chat not found","request":"POST /bot{TELEGRAM_TOKEN}/sendMessage"}}"#
        ),
    ));
    let pushover = Receiver::start();
    pushover.set_default(reply(
        500,
        &[JSON],
        &format!(
            r#"{{"status":0,"errors":["internal error"],"echo":{{"token":"{PUSHOVER_TOKEN}","user":"{PUSHOVER_USER}"}}}}"#
        ),
    ));
    let pagerduty = Receiver::start();
    // A long error page: the routing key starts at character 290, so an error text cut
    // to a few hundred characters before it is scrubbed would keep a piece of it.
    let prefix = r#"{"status":"error","message":""#;
    let middle = r#"","echo":{"routing_key":""#;
    let filler = "x".repeat(290 - prefix.len() - middle.len());
    pagerduty.set_default(reply(
        500,
        &[JSON],
        &format!("{prefix}{filler}{middle}{ROUTING_KEY}\"}}}}"),
    ));
    let webhook = Receiver::start();
    webhook.set_default(reply(
        503,
        &[("content-type", "text/plain")],
        &format!(
            "upstream down; you sent POST /hook?token={WEBHOOK_QUERY_TOKEN} signed with {}",
            webhook_secret()
        ),
    ));
    let ntfy = Receiver::start();
    ntfy.set_default(reply(
        429,
        &[JSON, ("retry-after", "1")],
        &format!(
            r#"{{"code":42901,"http":429,"error":"limit reached","echo":"Authorization: Bearer {NTFY_TOKEN}"}}"#
        ),
    ));
    // An Alertmanager behind a proxy that echoes the request, headers included: the
    // URL's password arrives as `Authorization: Basic base64(user:password)`.
    let alertmanager = Receiver::start();
    alertmanager.set_default(reply(
        500,
        &[("content-type", "text/plain")],
        &format!(
            "proxy error; request was:\nPOST /api/v2/alerts HTTP/1.1\nauthorization: Basic {}\ncontent-type: application/json",
            am_basic()
        ),
    ));
    let am_echo_url =
        alertmanager
            .url("")
            .replacen("http://", &format!("http://stallwatch:{AM_PASSWORD}@"), 1);
    let config = format!(
        r#"[alerts]
group_wait = "0s"
backoff_initial = "100ms"
backoff_max = "500ms"
heartbeat_url = "http://127.0.0.1:{closed}/ping/{HEARTBEAT_TOKEN}"
heartbeat_interval = "1s"

{source}{rule}
[[channel]]
name = "slack"
kind = "slack"
url = "https://127.0.0.1:1/T0000/B0000/{SLACK_TOKEN}"

[[channel]]
name = "discord"
kind = "discord"
url = "http://127.0.0.1:{closed}/api/webhooks/123/{DISCORD_TOKEN}"

[[channel]]
name = "telegram"
kind = "telegram"
url = "{telegram_url}"
token = "{TELEGRAM_TOKEN}"
chat_id = "42"

[[channel]]
name = "pushover"
kind = "pushover"
url = "{pushover_url}"
token = "{PUSHOVER_TOKEN}"
user = "{PUSHOVER_USER}"

[[channel]]
name = "pagerduty"
kind = "pagerduty"
url = "{pagerduty_url}"
routing_key = "{ROUTING_KEY}"

[[channel]]
name = "webhook"
kind = "webhook"
url = "{webhook_url}"
secret = "{secret}"

[[channel]]
name = "ntfy"
kind = "ntfy"
url = "{ntfy_url}"
token = "{NTFY_TOKEN}"

[[channel]]
name = "alertmanager"
kind = "alertmanager"
url = "http://stallwatch:{AM_PASSWORD}@127.0.0.1:{closed}"

[[channel]]
name = "alertmanager-echo"
kind = "alertmanager"
url = "{am_echo_url}"
"#,
        source = lab_source("lab", db),
        rule = SOURCE_DOWN_RULE,
        telegram_url = telegram.url(""),
        pushover_url = pushover.url("/1/messages.json"),
        pagerduty_url = pagerduty.url("/v2/enqueue"),
        webhook_url = webhook.url(&format!("/hook?token={WEBHOOK_QUERY_TOKEN}")),
        secret = webhook_secret(),
        ntfy_url = ntfy.url("/alerts"),
    );
    Setup {
        _receivers: vec![telegram, pushover, pagerduty, webhook, ntfy, alertmanager],
        config,
        channels: vec![
            "slack",
            "discord",
            "telegram",
            "pushover",
            "pagerduty",
            "webhook",
            "ntfy",
            "alertmanager",
            "alertmanager-echo",
        ],
    }
}

/// Channels whose failures are retried (all but Telegram's 400, which gives up).
const RETRIED: [&str; 8] = [
    "slack",
    "discord",
    "pushover",
    "pagerduty",
    "webhook",
    "ntfy",
    "alertmanager",
    "alertmanager-echo",
];

/// Every file of the data dir, read as bytes (the state DB, its WAL).
fn data_dir_text(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).expect("reading the data dir") {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            out.push_str(&format!("==== {}\n", path.display()));
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

/// Runs the failing setup with `log_filter` as `STALLWATCH_LOG` (and `RUST_LOG`), waits
/// until every channel has failed and retried, then looks for secrets everywhere.
///
/// Fails today: src/alerts/engine.rs `send` cuts an error answer's body to
/// `MAX_ERROR_BODY` (300) characters, and only then does `finish` scrub the secrets out of
/// it (`redact`). The PagerDuty answer here has the routing key at character 290, so the
/// cut leaves `SECRETROUT`, which no secret matches whole: it reaches the log, the
/// notification's `last_error` in `/api/v1/alerts` and the state DB. Scrubbing the whole
/// body before cutting it fixes it.
fn no_secret_anywhere(log_filter: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&dir.path().join("app.db"));
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &Launch {
            config: Some(s.config.clone()),
            env: vec![
                ("STALLWATCH_LOG".into(), log_filter.into()),
                ("RUST_LOG".into(), log_filter.into()),
            ],
        },
    );

    // The errors happened: retries on the retried channels, a give-up on Telegram's 400,
    // an error stored with every notification.
    for channel in RETRIED {
        wait_series_at_least(
            &sidecar,
            &notifications_series(channel, "retried"),
            MIN_RETRIES,
            RETRY_TIMEOUT,
        );
    }
    wait_series_at_least(
        &sidecar,
        &notifications_series("telegram", "failed"),
        1.0,
        RETRY_TIMEOUT,
    );
    let api = poll_until("an error stored for every channel", RETRY_TIMEOUT, || {
        let api = alerts(&sidecar);
        let listed = notifications(&api);
        let missing: Vec<&str> = s
            .channels
            .iter()
            .copied()
            .filter(|c| {
                !listed.iter().any(|n| {
                    n["channel"] == *c && n["last_error"].as_str().is_some_and(|e| !e.is_empty())
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(api)
        } else {
            Err(format!("no last_error for {missing:?}: {api}"))
        }
    });
    assert!(
        !alerts_of(&api, "firing", "source_down").is_empty(),
        "the source_down alert is not firing: {api}"
    );

    // Nowhere a secret.
    let log = sidecar.log();
    for c in &s.channels {
        assert!(
            log.contains(c),
            "the log never mentions channel {c:?}, so its errors are not logged:\n{log}"
        );
    }
    assert_no_leak(&format!("the log (STALLWATCH_LOG={log_filter})"), &log);
    assert_no_leak("/metrics", &sidecar.metrics().0);
    for path in [
        "/api/v1/alerts",
        "/api/v1/status",
        "/api/v1/freezes",
        "/api/v1/episodes",
    ] {
        let r = sidecar.get(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_no_leak(path, &r.body);
    }
    // The status page (docs/design.md), whatever this build answers there.
    assert_no_leak("/", &sidecar.get("/").body);
    assert_no_leak("the data dir's files", &data_dir_text(&sidecar.data_dir));
    // The receivers did get the secrets: the check above had something to find.
    assert!(!leaks(&s.config).is_empty());
}

#[test]
fn no_secret_in_the_log_metrics_api_or_state_at_info() {
    no_secret_anywhere("info");
}

#[test]
fn no_secret_in_the_log_metrics_api_or_state_at_debug() {
    no_secret_anywhere("debug");
}

/// Asserts exit 2 with one stderr line naming `key`, and no secret anywhere in the output.
#[track_caller]
fn assert_refused_without_secret(out: &Finished, key: &str, how: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{how}: expected exit 2, got {}\nstderr:\n{}",
        out.status,
        out.stderr
    );
    let lines = out.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "{how}: expected ONE line on stderr:\n{}",
        out.stderr
    );
    assert!(
        lines[0].contains(key),
        "{how}: {:?} does not name {key}",
        lines[0]
    );
    assert_no_leak(&format!("{how} stderr"), &out.stderr);
    assert_no_leak(&format!("{how} stdout"), &out.stdout);
}

#[test]
fn check_config_does_not_print_a_bad_channels_secret() {
    let cases: [(&str, &str); 8] = [
        // A Slack webhook URL without a scheme.
        (
            "name = \"s\"\nkind = \"slack\"\nurl = \"hooks.slack.com/services/T0/B0/SECRETSLACKCFG1\"\n",
            "channel[0].url",
        ),
        // An Alertmanager URL with a password and a scheme that is not HTTP.
        (
            "name = \"a\"\nkind = \"alertmanager\"\nurl = \"ftp://admin:SECRETPWCFG2@127.0.0.1:9093\"\n",
            "channel[0].url",
        ),
        // A signing secret that is not whsec_ + base64.
        (
            "name = \"w\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\nsecret = \"whsec_SECRET!!CFG3\"\n",
            "channel[0].secret",
        ),
        // A Telegram bot without a chat.
        (
            "name = \"t\"\nkind = \"telegram\"\ntoken = \"123:SECRETTGCFG4\"\n",
            "channel[0].chat_id",
        ),
        // A Pushover channel without its user key.
        (
            "name = \"p\"\nkind = \"pushover\"\ntoken = \"SECRETPOCFG5\"\n",
            "channel[0].user",
        ),
        // An ntfy URL with a password, and a timeout that is not a duration.
        (
            "name = \"n\"\nkind = \"ntfy\"\nurl = \"https://u:SECRETNTFYCFG7@ntfy.example/topic\"\ntimeout = \"soon\"\n",
            "channel[0].timeout",
        ),
        // A PagerDuty channel whose URL is not a URL.
        (
            "name = \"d\"\nkind = \"pagerduty\"\nrouting_key = \"SECRETPDCFG8\"\nurl = \"not a url SECRETPDCFG8\"\n",
            "channel[0].url",
        ),
        // An unknown kind with a token.
        (
            "name = \"x\"\nkind = \"sms\"\ntoken = \"SECRETSMSCFG9\"\n",
            "channel[0].kind",
        ),
    ];
    for (channel, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("[[channel]]\n{channel}")).unwrap();
        let checked = run_to_exit(["check-config".as_ref(), path.as_os_str()]);
        assert_refused_without_secret(&checked, key, &format!("check-config on {channel:?}"));
        let ran = run_to_exit([
            "run".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--config".into(),
            path.display().to_string(),
        ]);
        assert_refused_without_secret(&ran, key, &format!("run on {channel:?}"));
    }
}

/// A valid config full of secrets: `check-config` says it is valid and prints none of them.
#[test]
fn check_config_of_a_valid_config_does_not_print_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&dir.path().join("app.db"));
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &s.config).unwrap();
    let out = run_to_exit(["check-config".as_ref(), path.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check-config failed:\n{}",
        out.stderr
    );
    assert_no_leak("check-config stdout", &out.stdout);
    assert_no_leak("check-config stderr", &out.stderr);
}
