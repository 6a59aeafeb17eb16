//! `[[channel]]` as `Config::parse` reads it: the tests of `channel.rs` that need a whole file.

use super::channel::*;
use super::Config;
use std::path::Path;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(Path::new("/etc/sw.toml"), text, &|_| None).map_err(|e| e.to_string())
}

fn channel(body: &str) -> Result<ChannelConfig, String> {
    parse(&format!("[[channel]]\nname = \"c\"\n{body}")).map(|c| c.alerts.channels[0].clone())
}

#[track_caller]
fn fails(body: &str, want: &str) -> String {
    let e = channel(body).expect_err(body);
    assert!(e.contains(want), "{body}\n→ {e}\nwanted {want:?}");
    e
}

const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn each_kind_with_its_keys_is_accepted() {
    let cases = [
        ("kind = \"webhook\"\nurl = \"https://h.test/hook\"\n", ChannelKind::Webhook),
        ("kind = \"ntfy\"\nurl = \"https://ntfy.sh/topic\"\ntoken = \"tk_x\"\npriority = 5\ntags = [\"fire\"]\n", ChannelKind::Ntfy),
        ("kind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"\n", ChannelKind::Slack),
        ("kind = \"discord\"\nurl = \"https://discord.com/api/webhooks/1/x\"\n", ChannelKind::Discord),
        ("kind = \"telegram\"\ntoken = \"123:abc\"\nchat_id = -100123\n", ChannelKind::Telegram),
        ("kind = \"pushover\"\ntoken = \"a1\"\nuser = \"u1\"\npriority = \"-1\"\n", ChannelKind::Pushover),
        ("kind = \"pagerduty\"\nrouting_key = \"R0UT1NG\"\n", ChannelKind::Pagerduty),
        ("kind = \"alertmanager\"\nurl = \"http://am:9093\"\n", ChannelKind::Alertmanager),
    ];
    for (body, kind) in cases {
        let c = channel(body).unwrap_or_else(|e| panic!("{body}: {e}"));
        assert_eq!(c.kind, kind);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }
}

#[test]
fn defaults_fill_the_url_of_telegram_pushover_and_pagerduty() {
    let t = channel("kind = \"telegram\"\ntoken = \"1:a\"\nchat_id = \"@alerts\"\n").unwrap();
    assert_eq!(t.url, TELEGRAM_URL);
    assert_eq!(
        t.detail,
        ChannelDetail::Telegram {
            token: Secret::new("1:a"),
            chat_id: "@alerts".into()
        }
    );
    let p = channel("kind = \"pushover\"\ntoken = \"t\"\nuser = \"u\"\n").unwrap();
    assert_eq!(p.url, PUSHOVER_URL);
    let d = channel("kind = \"pagerduty\"\nrouting_key = \"k\"\n").unwrap();
    assert_eq!(d.url, PAGERDUTY_URL);
    let own = channel("kind = \"pagerduty\"\nrouting_key = \"k\"\nurl = \"https://events.eu.pagerduty.com/v2/enqueue\"\n").unwrap();
    assert_eq!(own.url, "https://events.eu.pagerduty.com/v2/enqueue");
}

#[test]
fn unknown_kind_lists_the_kinds() {
    let e = fails("kind = \"sms\"\n", "channel[0].kind: unknown channel kind \"sms\"; expected one of webhook, ntfy, slack, discord, telegram, pushover, pagerduty, alertmanager");
    assert!(
        e.starts_with("config file /etc/sw.toml: channel[0].kind: "),
        "{e}"
    );
    fails("url = \"https://x.test\"\n", "channel[0].kind is required");
}

#[test]
fn names_are_required_plain_and_unique() {
    let e = parse("[[channel]]\nkind = \"slack\"\nurl = \"https://h.test/x\"\n").unwrap_err();
    assert!(e.contains("channel[0].name is required"), "{e}");
    let bad =
        parse("[[channel]]\nname = \"my phone\"\nkind = \"slack\"\nurl = \"https://h.test/x\"\n")
            .unwrap_err();
    assert!(
        bad.contains("channel[0].name \"my phone\" must be 1-64 letters"),
        "{bad}"
    );
    let empty = parse("[[channel]]\nname = \"\"\nkind = \"slack\"\nurl = \"https://h.test/x\"\n")
        .unwrap_err();
    assert!(empty.contains(": channel[0].name "), "{empty}");
    let two = "[[channel]]\nname = \"a\"\nkind = \"slack\"\nurl = \"https://h.test/x\"\n[[channel]]\nname = \"a\"\nkind = \"discord\"\nurl = \"https://h.test/y\"\n";
    let e = parse(two).unwrap_err();
    assert!(
        e.contains("channel[1].name \"a\" is used by another channel"),
        "{e}"
    );
    let reserved = format!(
        "[[channel]]\nname = \"{DEADMAN_CHANNEL}\"\nkind = \"slack\"\nurl = \"https://h.test/x\"\n"
    );
    assert!(parse(&reserved).unwrap_err().contains("reserved"));
}

#[test]
fn the_url_is_required_where_there_is_no_default_and_must_be_http() {
    for kind in ["webhook", "ntfy", "slack", "discord", "alertmanager"] {
        fails(
            &format!("kind = \"{kind}\"\n"),
            &format!("channel[0].url is required for a {kind} channel"),
        );
    }
    fails(
        "kind = \"slack\"\nurl = \"ftp://h.test/x\"\n",
        "channel[0].url has scheme \"ftp\"",
    );
    fails(
        "kind = \"slack\"\nurl = \"hooks.slack.com/x\"\n",
        "must be an http:// or https:// URL",
    );
    fails("kind = \"slack\"\nurl = \"https:///x\"\n", "has no host");
    fails(
        "kind = \"slack\"\nurl = \"https://h.test/a b\"\n",
        "must not contain spaces",
    );
}

#[test]
fn a_key_of_another_kind_is_named() {
    fails(
        "kind = \"slack\"\nurl = \"https://h.test/x\"\nchat_id = \"1\"\n",
        "channel[0].chat_id does not apply to a slack channel",
    );
    fails(
        "kind = \"discord\"\nurl = \"https://h.test/x\"\nsecret = \"whsec_AAAA\"\n",
        "channel[0].secret does not apply to a discord channel",
    );
    fails(
        "kind = \"webhook\"\nurl = \"https://h.test/x\"\ntoken = \"t\"\n",
        "channel[0].token does not apply to a webhook channel",
    );
    fails(
        "kind = \"telegram\"\ntoken = \"1:a\"\nchat_id = 1\ntags = [\"x\"]\n",
        "channel[0].tags does not apply to a telegram channel",
    );
    fails(
        "kind = \"slack\"\nurl = \"https://h.test/x\"\nwebhook = \"x\"\n",
        "channel[0].webhook is not a known setting",
    );
}

#[test]
fn required_keys_of_each_kind() {
    fails(
        "kind = \"telegram\"\nchat_id = 1\n",
        "channel[0].token is required for a telegram channel",
    );
    fails(
        "kind = \"telegram\"\ntoken = \"1:a\"\n",
        "channel[0].chat_id is required for a telegram channel",
    );
    fails(
        "kind = \"pushover\"\nuser = \"u\"\n",
        "channel[0].token is required for a pushover channel",
    );
    fails(
        "kind = \"pushover\"\ntoken = \"t\"\n",
        "channel[0].user is required for a pushover channel",
    );
    fails(
        "kind = \"pagerduty\"\n",
        "channel[0].routing_key is required for a pagerduty channel",
    );
    fails(
        "kind = \"telegram\"\ntoken = \"1:a\"\nchat_id = \"my chat\"\n",
        "channel[0].chat_id \"my chat\" must be a chat id",
    );
}

#[test]
fn webhook_secrets_are_standard_webhooks_keys() {
    let ok = channel(&format!(
        "kind = \"webhook\"\nurl = \"https://h.test/x\"\nsecret = \"{HOOK_SECRET}\"\n"
    ))
    .unwrap();
    assert_eq!(
        ok.detail,
        ChannelDetail::Webhook {
            secret: Some(Secret::new(HOOK_SECRET))
        }
    );
    assert_eq!(signing_key(HOOK_SECRET).unwrap().len(), 24);
    let e = fails(
        "kind = \"webhook\"\nurl = \"https://h.test/x\"\nsecret = \"hunter2-very-secret\"\n",
        "channel[0].secret must start with \"whsec_\"",
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = fails(
        "kind = \"webhook\"\nurl = \"https://h.test/x\"\nsecret = \"whsec_not*base64!\"\n",
        "channel[0].secret must be base64 after \"whsec_\"",
    );
    assert!(!e.contains("not*base64"), "{e}");
    fails(
        "kind = \"webhook\"\nurl = \"https://h.test/x\"\nsecret = \"whsec_\"\n",
        "has no key",
    );
}

#[test]
fn priorities_and_tags_are_checked() {
    let n = channel("kind = \"ntfy\"\nurl = \"https://n.test/t\"\npriority = \"high\"\ntags = [\" skull \", \"db\"]\n").unwrap();
    assert_eq!(
        n.detail,
        ChannelDetail::Ntfy {
            token: None,
            priority: Some(4),
            tags: vec!["skull".into(), "db".into()]
        }
    );
    fails(
        "kind = \"ntfy\"\nurl = \"https://n.test/t\"\npriority = 7\n",
        "channel[0].priority 7 is not an ntfy priority",
    );
    fails(
        "kind = \"ntfy\"\nurl = \"https://n.test/t\"\ntags = [\"a,b\"]\n",
        "channel[0].tags \"a,b\" must be",
    );
    fails(
        "kind = \"pushover\"\ntoken = \"t\"\nuser = \"u\"\npriority = 2\n",
        "2 (emergency) is not supported",
    );
    fails(
        "kind = \"pushover\"\ntoken = \"t\"\nuser = \"u\"\npriority = \"loud\"\n",
        "\"loud\" is not a Pushover priority",
    );
}

#[test]
fn timeout_is_bounded() {
    let c = channel("kind = \"slack\"\nurl = \"https://h.test/x\"\ntimeout = \"3s\"\n").unwrap();
    assert_eq!(c.timeout, Duration::from_secs(3));
    fails(
        "kind = \"slack\"\nurl = \"https://h.test/x\"\ntimeout = \"500ms\"\n",
        "channel[0].timeout must be between 1s and 1m",
    );
    fails(
        "kind = \"slack\"\nurl = \"https://h.test/x\"\ntimeout = \"2m\"\n",
        "channel[0].timeout must be between 1s and 1m",
    );
}

#[test]
fn no_error_or_debug_text_shows_a_secret() {
    let token = "SECRETTOKEN123";
    let cases = [
        format!("kind = \"slack\"\nurl = \"ftp://hooks.test/services/{token}\"\n"),
        format!("kind = \"slack\"\nurl = \"https://hooks.test/services/{token} \"\n"),
        format!("kind = \"telegram\"\ntoken = \"{token}/x\"\nchat_id = 1\n"),
        format!("kind = \"telegram\"\ntoken = \"{token} \"\nchat_id = 1\n"),
        format!("kind = \"pushover\"\ntoken = \"{token}\"\nuser = \"{token} x\"\n"),
        format!("kind = \"pagerduty\"\nrouting_key = \"{token}\\n\"\n"),
        format!("kind = \"webhook\"\nurl = \"https://h.test/x\"\nsecret = \"{token}\"\n"),
        format!("kind = \"ntfy\"\nurl = \"https://u:{token}@n.test/t\"\ntoken = \"\"\n"),
    ];
    for body in &cases {
        let e = channel(body).expect_err(body);
        assert!(!e.contains(token), "{body}\n→ {e}");
    }
    // A valid config printed with {:?} (a test failure, a debug log) hides them too.
    let all = format!(
        "[[channel]]\nname = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.test/services/{token}\"\n\
         [[channel]]\nname = \"t\"\nkind = \"telegram\"\ntoken = \"1:{token}\"\nchat_id = 1\n\
         [[channel]]\nname = \"p\"\nkind = \"pushover\"\ntoken = \"{token}\"\nuser = \"{token}U\"\n\
         [[channel]]\nname = \"d\"\nkind = \"pagerduty\"\nrouting_key = \"{token}\"\n\
         [[channel]]\nname = \"a\"\nkind = \"alertmanager\"\nurl = \"http://u:{token}@am:9093/?k={token}\"\n"
    );
    let config = parse(&all).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains(token), "{shown}");
    assert!(shown.contains("https://hooks.test/***"), "{shown}");
}
