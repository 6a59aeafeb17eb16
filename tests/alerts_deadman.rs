//! The dead-man's switch (docs/alerts.md, `[alerts] heartbeat_url`): the one failure the
//! sidecar cannot report about itself is its own absence, so it pings a URL while it is
//! healthy and an external service pages when the pings stop. While degraded (here: its
//! own notifications are not getting out) it pings the URL's `/fail` variant instead.
//!
//! Real sidecar, real sockets: a heartbeat receiver and an alert receiver that is down
//! until the test brings it up; the alert is a real `source_down` from a SQLite source
//! whose file does not exist.

mod common;

use std::time::Duration;

use common::receiver::{show, Receiver};
use common::{Launch, Sidecar};

const PING: &str = "/ping/5f3c";

fn paths(r: &Receiver) -> Vec<String> {
    r.requests().into_iter().map(|q| q.path).collect()
}

#[test]
fn pings_while_healthy_fail_while_the_outbox_backs_up_and_stop_when_the_sidecar_dies() {
    let heartbeat = Receiver::start();
    let mut hook = Receiver::start();
    hook.go_down();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[alerts]
group_wait = "0s"
heartbeat_url = "{ping}"
heartbeat_interval = "1s"
backoff_initial = "500ms"
backoff_max = "1s"

[[source]]
name = "app"
kind = "queue_table"
preset = "lab-jobs"
url = "sqlite://{missing}"
poll = "1s"

[[channel]]
name = "hook"
kind = "webhook"
url = "{hook}"

[[rule]]
rule = "source_down"
threshold = "1s"
channels = ["hook"]

[[rule]]
rule = "outbox_backlog"
threshold = "3s"
channels = ["hook"]
resolve_after = "0s"
"#,
        ping = heartbeat.url(PING),
        missing = dir.path().join("missing.db").display(),
        hook = hook.url("/hook"),
    );
    let mut sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &Launch {
            config: Some(config),
            env: vec![],
        },
    );

    // Healthy at first: plain pings, POSTed, once a second.
    heartbeat.wait_until("two healthy pings", Duration::from_secs(15), |r| {
        r.iter().filter(|q| q.path == PING).count() >= 2
    });
    assert_eq!(heartbeat.requests()[0].method, "POST");

    // The source_down notification cannot be delivered: after 3 s the outbox backlog
    // alert fires and the pings turn into /fail.
    let fail = format!("{PING}/fail");
    heartbeat.wait_until("a /fail ping", Duration::from_secs(30), |r| {
        r.iter().any(|q| q.path == fail)
    });
    let alerts = sidecar.get("/api/v1/alerts").json();
    let firing: Vec<&str> = alerts["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert!(firing.contains(&"outbox_backlog"), "{alerts:#}");

    // The receiver comes back: everything is delivered, the backlog clears, pings are
    // healthy again.
    hook.come_up();
    hook.wait_until("the backlog delivered", Duration::from_secs(30), |r| {
        r.iter()
            .any(|q| q.json()["data"]["rule"] == "outbox_backlog")
    });
    let seen = heartbeat.requests().len();
    heartbeat.wait_until(
        "a healthy ping after recovery",
        Duration::from_secs(30),
        |r| r[seen..].iter().any(|q| q.path == PING),
    );
    let metrics = sidecar.metrics();
    assert!(
        metrics.expect("stallwatch_notifications_total{channel=\"deadman\",outcome=\"sent\"}")
            >= 3.0,
        "{}",
        metrics.0
    );

    // Gone: no more pings. This silence is what the external service pages on.
    sidecar.kill_hard();
    let before = paths(&heartbeat).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        paths(&heartbeat).len(),
        before,
        "pings after death:\n{}",
        show(&heartbeat.requests())
    );
}
