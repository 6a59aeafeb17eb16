//! Alert delivery end to end, against docs/alerts.md ("Delivery"): a real `stallwatch run`
//! raises real alerts from a real source and delivers them over real sockets on 127.0.0.1
//! to a receiver that fails on cue (`common/receiver.rs`), or to a real Alertmanager.
//!
//! - a webhook answering 503 three times then 200 gets four attempts of one notification,
//!   all with the same idempotency key, counted as 3 `retried` + 1 `sent`; the resolve
//!   that follows has a key of its own;
//! - `429` with `Retry-After: 3` holds the retry back at least 3 s;
//! - a receiver down for two minutes while 50 alerts fire and resolve gets all 100
//!   notifications once it is back, each key answered 200 once, each firing before its
//!   resolve, and the outbox empties;
//! - a kill -9 with notifications pending loses none: after a restart every pending key
//!   is delivered, and no new key appears;
//! - the `alertmanager` channel's alert reaches a real Alertmanager, which routes the
//!   firing and then the resolved alert to its webhook receiver.
//!
//! Alerts are raised deterministically: `source_down` from a queue-table source whose
//! SQLite file does not exist yet (created later, atomically, to resolve it), or
//! `stuck_jobs` from `running` rows claimed an hour ago under a 1 s lease.

mod common;
mod ecosystem_support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::alertmanager::Alertmanager;
use common::receiver::{show, Received, Receiver, Reply};
use common::{Launch, Metrics, Sidecar, POLL_INTERVAL};
use rusqlite::Connection;
use serde_json::{json, Value};

/// The webhook channel's name, as in `notifications_total{channel}`.
const HOOK: &str = "hook";
/// A Standard Webhooks signing secret (the format the generic webhook takes).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The source whose alerts the tests raise: a name no payload has by accident.
const SOURCE: &str = "payments-db";
/// Source poll interval: a down or recovered source is seen within a second.
const POLL: &str = "1s";
/// From start to the first request of a `source_down` alert: the 1 s threshold, a poll,
/// an evaluation, a send. Seconds normally; generous for a loaded 2-core machine.
const ALERT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long no further request may arrive for a count to be called final: longer than
/// the largest retry wait of the short-backoff tests (`backoff_max` 2 s).
const SETTLE: Duration = Duration::from_secs(4);
/// Lines of the sidecar's stderr quoted in a timeout message (the whole of it is printed
/// when the test fails, by `Sidecar`'s drop).
const LOG_TAIL_LINES: usize = 60;

/// Rules not under test, off so that every request a test sees is one it caused: a
/// `restart` freeze after the kill -9 test's restart, or a stall of this process on a
/// busy machine, must not add a notification. `source_down` is what these tests raise.
fn quiet_rules() -> String {
    common::quiet_rules_except("source_down")
}

// ---- configuration ----------------------------------------------------------------------

fn alerts_section(backoff_initial: &str, backoff_max: &str) -> String {
    format!("[alerts]\ngroup_wait = \"0s\"\nbackoff_initial = \"{backoff_initial}\"\nbackoff_max = \"{backoff_max}\"\n")
}

fn webhook_channel(url: &str) -> String {
    format!(
        "\n[[channel]]\nname = \"{HOOK}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
    )
}

/// A queue-table source on `db` (`jobs(id, queue, status, claimed_at)`), with a 1 s lease
/// on `running` rows, so a row claimed long ago is a stuck job of its queue.
fn jobs_source(db: &Path) -> String {
    format!(
        "
[[source]]
name = \"{SOURCE}\"
kind = \"queue_table\"
url = \"sqlite://{}\"
poll = \"{POLL}\"
table = \"jobs\"
key_column = \"id\"
status_column = \"status\"
queue_column = \"queue\"
claimed_column = \"claimed_at\"
running_status = \"running\"
lease = \"1s\"
open_statuses = [\"queued\", \"running\"]
",
        db.display()
    )
}

/// `source_down` after 1 s, resolved as soon as the source reads again.
const SOURCE_DOWN_RULE: &str = "
[[rule]]
rule = \"source_down\"
threshold = \"1s\"
resolve_after = \"0s\"
";

/// `stuck_jobs` from one stuck job, resolved as soon as there is none.
const STUCK_JOBS_RULE: &str = "
[[rule]]
rule = \"stuck_jobs\"
threshold = 1
resolve_after = \"0s\"
";

fn launch(parts: &[&str]) -> Launch {
    Launch {
        config: Some(parts.concat()),
        ..Launch::default()
    }
}

/// A fresh state directory under `dir`.
fn state_dir(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("creating the state dir");
    state
}

// ---- the app database -------------------------------------------------------------------

fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Writes `db` with one `running` job claimed an hour ago per queue in `stuck_queues`.
/// Built beside it and renamed into place, so a polling sidecar never sees it half made.
fn write_jobs_db(db: &Path, stuck_queues: &[String]) {
    let building = db.with_extension("building");
    let _ = std::fs::remove_file(&building);
    {
        let conn = Connection::open(&building).expect("creating the app database");
        conn.execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, status TEXT NOT NULL, claimed_at REAL);
             CREATE INDEX jobs_status ON jobs (status);",
        )
        .expect("creating the jobs table");
        let claimed = now_unix_s() - 3600.0;
        for queue in stuck_queues {
            conn.execute(
                "INSERT INTO jobs (queue, status, claimed_at) VALUES (?1, 'running', ?2)",
                rusqlite::params![queue, claimed],
            )
            .expect("inserting a job");
        }
    }
    std::fs::rename(&building, db).expect("moving the app database into place");
}

/// Marks every job done, as a worker that came back would.
fn finish_all_jobs(db: &Path) {
    let conn = Connection::open(db).expect("opening the app database");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute("UPDATE jobs SET status = 'done'", [])
        .expect("marking the jobs done");
}

fn queue_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("q{i:02}")).collect()
}

// ---- what the sidecar shows --------------------------------------------------------------

/// The last lines of the sidecar's stderr, for timeout messages.
fn log_tail(sidecar: &Sidecar) -> String {
    let log = sidecar.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Polls `probe` until it returns `Ok`; after `timeout` panics naming `what`, with the
/// last thing `probe` saw and the tail of the sidecar's log.
#[track_caller]
fn wait<T>(
    sidecar: &Sidecar,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!(
                "timed out after {timeout:?} waiting for {what}\nlast seen: {last}\n\
                 ---- stallwatch stderr (last {LOG_TAIL_LINES} lines) ----\n{}",
                log_tail(sidecar)
            ),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Waits until the receiver's requests satisfy `done`; the panic lists every request
/// and the sidecar's log.
#[track_caller]
fn wait_requests(
    receiver: &Receiver,
    sidecar: &Sidecar,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Received]) -> bool,
) -> Vec<Received> {
    wait(sidecar, what, timeout, || {
        let got = receiver.requests();
        if done(&got) {
            Ok(got)
        } else {
            Err(format!("{} request(s):\n{}", got.len(), show(&got)))
        }
    })
}

/// `stallwatch_notifications_total{channel, outcome}`, 0 if not exported yet.
fn notifications_total(m: &Metrics, channel: &str, outcome: &str) -> f64 {
    m.labelled(
        "stallwatch_notifications_total",
        &[("channel", channel), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn alerts_firing(m: &Metrics, rule: &str) -> f64 {
    m.labelled("stallwatch_alerts_firing", &[("rule", rule)])
        .unwrap_or(0.0)
}

/// `GET /api/v1/alerts`.
#[track_caller]
fn alerts_api(sidecar: &Sidecar) -> Value {
    let r = sidecar.get("/api/v1/alerts");
    assert_eq!(r.status, 200, "/api/v1/alerts: {r:?}");
    r.json()
}

/// `outbox.pending` of `/api/v1/alerts`.
#[track_caller]
fn api_pending(api: &Value) -> i64 {
    api["outbox"]["pending"]
        .as_i64()
        .unwrap_or_else(|| panic!("/api/v1/alerts has no outbox.pending: {api}"))
}

// ---- what the receiver got ---------------------------------------------------------------

/// The idempotency key of a request; every request must carry one.
#[track_caller]
fn key_of(r: &Received) -> String {
    r.key()
        .unwrap_or_else(|| panic!("request without an Idempotency-Key header: {r:?}"))
        .to_string()
}

/// The generic webhook's event type: `alert.firing`, `alert.resolved`, …
#[track_caller]
fn type_of(r: &Received) -> String {
    r.json()["type"]
        .as_str()
        .unwrap_or_else(|| panic!("webhook body without a type: {r:?}"))
        .to_string()
}

/// The alert fingerprint a generic webhook request is about.
#[track_caller]
fn fingerprint_of(r: &Received) -> String {
    r.json()["data"]["fingerprint"]
        .as_str()
        .unwrap_or_else(|| panic!("webhook body without data.fingerprint: {r:?}"))
        .to_string()
}

fn statuses(requests: &[Received]) -> Vec<u16> {
    requests.iter().map(|r| r.status).collect()
}

/// Asserts every request of the generic webhook carries its key twice, the same.
#[track_caller]
fn assert_webhook_ids(requests: &[Received]) {
    for r in requests {
        assert_eq!(
            r.header("webhook-id"),
            r.key(),
            "the generic webhook sends its idempotency key as webhook-id too: {r:?}"
        );
    }
}

// ---- the tests ---------------------------------------------------------------------------

#[test]
fn a_webhook_answering_503_three_times_gets_one_notification_in_four_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    let receiver = Receiver::start();
    receiver.script(vec![Reply::status(503); 3]);
    let sidecar = Sidecar::start_with(
        &state_dir(dir.path()),
        &launch(&[
            &alerts_section("200ms", "2s"),
            &webhook_channel(&receiver.url("/hook")),
            &jobs_source(&db),
            SOURCE_DOWN_RULE,
            &quiet_rules(),
        ]),
    );

    wait_requests(&receiver, &sidecar, "4 attempts", ALERT_TIMEOUT, |r| {
        r.len() >= 4
    });
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert_eq!(
        statuses(&got),
        vec![503, 503, 503, 200],
        "three 503s then one 200, and nothing after the 200:\n{}",
        show(&got)
    );
    assert_webhook_ids(&got);
    let key = key_of(&got[0]);
    let fingerprint = fingerprint_of(&got[0]);
    for r in &got {
        assert_eq!(key_of(r), key, "one key across retries:\n{}", show(&got));
        assert_eq!(type_of(r), "alert.firing", "{r:?}");
        assert_eq!(fingerprint_of(r), fingerprint, "{r:?}");
        assert!(
            r.text().contains(SOURCE),
            "the source_down alert names the source {SOURCE:?}: {r:?}"
        );
    }

    wait(
        &sidecar,
        "notifications_total: 1 sent, 3 retried",
        ALERT_TIMEOUT,
        || {
            let m = sidecar.metrics();
            let seen = [
                notifications_total(&m, HOOK, "sent"),
                notifications_total(&m, HOOK, "retried"),
                notifications_total(&m, HOOK, "failed"),
                alerts_firing(&m, "source_down"),
            ];
            if seen == [1.0, 3.0, 0.0, 1.0] {
                Ok(())
            } else {
                Err(format!(
                    "[sent, retried, failed, alerts_firing{{rule=\"source_down\"}}] = {seen:?}"
                ))
            }
        },
    );
    wait(
        &sidecar,
        "/api/v1/alerts to list the notification as sent after 4 attempts",
        ALERT_TIMEOUT,
        || {
            let api = alerts_api(&sidecar);
            let listed = api["notifications"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["key"] == key.as_str());
            match listed {
                Some(n)
                    if n["state"] == "sent"
                        && n["attempts"] == 4
                        && n["channel"] == HOOK
                        && n["kind"] == "firing"
                        && n["fingerprint"] == fingerprint.as_str()
                        && api_pending(&api) == 0 =>
                {
                    Ok(())
                }
                _ => Err(api.to_string()),
            }
        },
    );

    // The app creates its database: the source reads, the alert resolves, with a new key.
    write_jobs_db(&db, &[]);
    wait_requests(&receiver, &sidecar, "the resolve", ALERT_TIMEOUT, |r| {
        r.len() >= 5
    });
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert_eq!(
        statuses(&got),
        vec![503, 503, 503, 200, 200],
        "one resolve after the firing, delivered at once:\n{}",
        show(&got)
    );
    let resolve = &got[4];
    assert_webhook_ids(&got);
    assert_eq!(type_of(resolve), "alert.resolved", "{resolve:?}");
    assert_eq!(fingerprint_of(resolve), fingerprint, "{resolve:?}");
    assert_ne!(
        key_of(resolve),
        key,
        "the resolve is a notification of its own, with its own key"
    );
    wait(
        &sidecar,
        "2 sent, 3 retried, nothing firing",
        ALERT_TIMEOUT,
        || {
            let m = sidecar.metrics();
            let seen = [
                notifications_total(&m, HOOK, "sent"),
                notifications_total(&m, HOOK, "retried"),
                alerts_firing(&m, "source_down"),
            ];
            if seen == [2.0, 3.0, 0.0] {
                Ok(())
            } else {
                Err(format!("[sent, retried, firing] = {seen:?}"))
            }
        },
    );
}

#[test]
fn retry_after_3_holds_the_retry_back_3_seconds() {
    /// Arrival times are read when a whole request has been read; allow for the
    /// granularity of the sidecar's timer and the receiver's thread wake-up, no more.
    const CLOCK_SLACK: Duration = Duration::from_millis(50);
    /// The retry may wait past Retry-After by at most a backoff draw (`backoff_max` 2 s)
    /// plus scheduling on a loaded machine.
    const LATEST: Duration = Duration::from_secs(8);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    let receiver = Receiver::start();
    receiver.script(vec![Reply::status(429).header("Retry-After", "3")]);
    let sidecar = Sidecar::start_with(
        &state_dir(dir.path()),
        &launch(&[
            &alerts_section("200ms", "2s"),
            &webhook_channel(&receiver.url("/hook")),
            &jobs_source(&db),
            SOURCE_DOWN_RULE,
            &quiet_rules(),
        ]),
    );

    wait_requests(
        &receiver,
        &sidecar,
        "the 429 and the retry",
        ALERT_TIMEOUT,
        |r| r.len() >= 2,
    );
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert_eq!(statuses(&got), vec![429, 200], "{}", show(&got));
    let gap = got[1].at - got[0].at;
    assert!(
        gap + CLOCK_SLACK >= Duration::from_secs(3),
        "the retry came {gap:?} after a 429 with Retry-After: 3"
    );
    assert!(
        gap <= LATEST,
        "the retry came as late as {gap:?} after Retry-After: 3"
    );
    eprintln!("retry {gap:?} after a 429 with Retry-After: 3");
    assert_eq!(key_of(&got[0]), key_of(&got[1]), "one key across the retry");
    assert_webhook_ids(&got);
    assert_eq!(type_of(&got[1]), "alert.firing");
    wait(&sidecar, "1 retried, 1 sent", ALERT_TIMEOUT, || {
        let m = sidecar.metrics();
        let seen = [
            notifications_total(&m, HOOK, "retried"),
            notifications_total(&m, HOOK, "sent"),
        ];
        if seen == [1.0, 1.0] {
            Ok(())
        } else {
            Err(format!("[retried, sent] = {seen:?}"))
        }
    });
}

#[test]
fn a_receiver_down_two_minutes_gets_all_100_notifications_once_back() {
    const QUEUES: usize = 50;
    /// Into the outage, the jobs finish: their resolves queue behind the firings.
    const JOBS_DONE_AT: Duration = Duration::from_secs(60);
    /// The outage, from the sidecar's start.
    const BACK_UP_AT: Duration = Duration::from_secs(120);
    /// Once back: a retry wait (`backoff_max` 10 s) until the probe, then the backlog.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    write_jobs_db(&db, &queue_names(QUEUES));
    let mut receiver = Receiver::start();
    receiver.go_down();
    let sidecar = Sidecar::start_with(
        &state_dir(dir.path()),
        &launch(&[
            &alerts_section("500ms", "10s"),
            &webhook_channel(&receiver.url("/hook")),
            &jobs_source(&db),
            STUCK_JOBS_RULE,
            &quiet_rules(),
        ]),
    );
    let started = Instant::now();

    wait(
        &sidecar,
        "50 stuck_jobs alerts firing, 50 notifications pending",
        ALERT_TIMEOUT,
        || {
            let m = sidecar.metrics();
            let api = alerts_api(&sidecar);
            let firing = api["firing"].as_array().map_or(0, Vec::len);
            let seen = (
                alerts_firing(&m, "stuck_jobs"),
                m.labelled("stallwatch_outbox_pending", &[]),
                firing,
                api_pending(&api),
            );
            if seen == (QUEUES as f64, Some(QUEUES as f64), QUEUES, QUEUES as i64) {
                Ok(())
            } else {
                Err(format!(
                    "(alerts_firing, outbox_pending, API firing, API pending) = {seen:?}"
                ))
            }
        },
    );
    let api = alerts_api(&sidecar);
    let queues: BTreeSet<&str> = api["firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["rule"], "stuck_jobs", "{a}");
            assert_eq!(a["labels"]["source"], SOURCE, "{a}");
            a["labels"]["queue"].as_str().unwrap_or("?")
        })
        .collect();
    assert_eq!(queues.len(), QUEUES, "one alert per queue: {queues:?}");
    assert!(receiver.requests().is_empty());

    std::thread::sleep(JOBS_DONE_AT.saturating_sub(started.elapsed()));
    finish_all_jobs(&db);
    wait(&sidecar, "100 notifications pending", ALERT_TIMEOUT, || {
        let m = sidecar.metrics();
        let seen = (
            alerts_firing(&m, "stuck_jobs"),
            m.labelled("stallwatch_outbox_pending", &[]),
        );
        if seen == (0.0, Some(2.0 * QUEUES as f64)) {
            Ok(())
        } else {
            Err(format!("(alerts_firing, outbox_pending) = {seen:?}"))
        }
    });
    let m = sidecar.metrics();
    assert_eq!(notifications_total(&m, HOOK, "sent"), 0.0);
    assert!(
        notifications_total(&m, HOOK, "retried") >= 1.0,
        "sends to a refused port are counted as retried:\n{}",
        m.0
    );

    std::thread::sleep(BACK_UP_AT.saturating_sub(started.elapsed()));
    receiver.come_up();
    let back = Instant::now();
    let all_keys = |r: &[Received]| {
        r.iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.key())
            .collect::<BTreeSet<_>>()
            .len()
            >= 2 * QUEUES
    };
    wait_requests(
        &receiver,
        &sidecar,
        "100 keys answered 200",
        DRAIN_TIMEOUT,
        all_keys,
    );
    let drained_in = back.elapsed();
    wait(&sidecar, "the outbox to empty", ALERT_TIMEOUT, || {
        let m = sidecar.metrics();
        let pending = m.labelled("stallwatch_outbox_pending", &[]);
        let sent = notifications_total(&m, HOOK, "sent");
        if pending == Some(0.0) && sent == 2.0 * QUEUES as f64 {
            Ok(())
        } else {
            Err(format!("outbox_pending {pending:?}, sent {sent}"))
        }
    });
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert_webhook_ids(&got);

    // Each key answered 200 exactly once.
    let mut ok_per_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in got.iter().filter(|r| r.status == 200) {
        *ok_per_key.entry(key_of(r)).or_default() += 1;
    }
    let twice: Vec<_> = ok_per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "keys delivered (200) more than once: {twice:?}"
    );
    assert_eq!(ok_per_key.len(), 2 * QUEUES, "{}", show(&got));

    // Per alert: one firing, then one resolve, with the firing delivered first.
    let mut per_alert: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in &got {
        per_alert.entry(fingerprint_of(r)).or_default().push(r);
    }
    assert_eq!(per_alert.len(), QUEUES, "one fingerprint per queue");
    for (fingerprint, requests) in &per_alert {
        let firing: Vec<_> = requests
            .iter()
            .filter(|r| type_of(r) == "alert.firing")
            .collect();
        let resolved: Vec<_> = requests
            .iter()
            .filter(|r| type_of(r) == "alert.resolved")
            .collect();
        let keys = |rs: &[&&Received]| rs.iter().map(|r| key_of(r)).collect::<BTreeSet<_>>();
        assert!(
            keys(&firing).len() == 1 && keys(&resolved).len() == 1,
            "alert {fingerprint}: one firing and one resolve key:\n{}",
            show(&requests.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
        );
        let firing_ok = firing
            .iter()
            .find(|r| r.status == 200)
            .expect("the firing was answered 200");
        let first_resolve = resolved.iter().map(|r| r.at).min().unwrap();
        assert!(
            firing_ok.at <= first_resolve,
            "alert {fingerprint}: its resolve was sent before its firing was delivered:\n{}",
            show(&requests.iter().map(|r| (*r).clone()).collect::<Vec<_>>())
        );
    }
    eprintln!(
        "backlog of {} drained {drained_in:?} after the receiver came back ({} requests)",
        2 * QUEUES,
        got.len()
    );
}

/// The keys of the notifications in `/api/v1/alerts` whose row `keep` keeps.
fn notification_keys(api: &Value, keep: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    api["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| keep(n))
        .filter_map(|n| n["key"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn kill_9_with_notifications_pending_loses_none() {
    const QUEUES: usize = 5;
    /// After the restart: the sidecar retries pending rows within `backoff_max` (10 s).
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    write_jobs_db(&db, &queue_names(QUEUES));
    let mut receiver = Receiver::start();
    receiver.go_down();
    let state = state_dir(dir.path());
    let config = launch(&[
        &alerts_section("500ms", "10s"),
        &webhook_channel(&receiver.url("/hook")),
        &jobs_source(&db),
        STUCK_JOBS_RULE,
        &quiet_rules(),
    ]);
    let mut sidecar = Sidecar::start_with(&state, &config);

    let pending: BTreeSet<String> = wait(
        &sidecar,
        "5 notifications pending in /api/v1/alerts",
        ALERT_TIMEOUT,
        || {
            let api = alerts_api(&sidecar);
            let keys = notification_keys(&api, |n| {
                n["state"] != "sent" && n["state"] != "failed" && n["state"] != "dropped"
            });
            if api_pending(&api) >= QUEUES as i64 && keys.len() >= QUEUES {
                Ok(keys)
            } else {
                Err(api.to_string())
            }
        },
    );
    assert_eq!(
        pending.len(),
        QUEUES,
        "one notification per stuck queue: {pending:?}"
    );
    let status = sidecar.kill_hard();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(receiver.requests().is_empty());

    receiver.come_up();
    let sidecar = Sidecar::start_with(&state, &config);
    let delivered = |r: &[Received]| {
        r.iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.key())
            .map(str::to_string)
            .collect::<BTreeSet<_>>()
    };
    wait_requests(
        &receiver,
        &sidecar,
        "every key pending at the kill delivered",
        DELIVERY_TIMEOUT,
        |r| delivered(r).is_superset(&pending),
    );
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    let keys: BTreeSet<String> = got.iter().map(key_of).collect();
    assert_eq!(
        keys,
        pending,
        "the restarted sidecar sends exactly the notifications pending at the kill (no new \
         firing for alerts that were already firing):\n{}",
        show(&got)
    );
    assert_eq!(delivered(&got), pending);
    assert_webhook_ids(&got);
    for r in &got {
        assert_eq!(type_of(r), "alert.firing", "{r:?}");
    }
    wait(
        &sidecar,
        "the outbox to empty after the restart",
        ALERT_TIMEOUT,
        || {
            let api = alerts_api(&sidecar);
            let sent = notification_keys(&api, |n| n["state"] == "sent");
            if api_pending(&api) == 0 && sent.is_superset(&pending) {
                Ok(())
            } else {
                Err(api.to_string())
            }
        },
    );
}

/// A real `prometheus-alertmanager` routing every alert to `webhook_url` with resolves,
/// 1 s group wait and interval.
fn start_alertmanager(dir: &Path, webhook_url: &str) -> Alertmanager {
    let binary = ecosystem_support::tool("prometheus-alertmanager", "prometheus-alertmanager");
    let config = json!({
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "source"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{
            "name": "hook",
            "webhook_configs": [{"url": webhook_url, "send_resolved": true}],
        }],
    });
    Alertmanager::start(
        &binary,
        dir,
        &serde_json::to_string_pretty(&config).unwrap(),
    )
}

/// Whether an Alertmanager webhook payload has `status` and an alert about [`SOURCE`].
fn am_payload_about_source(r: &Received, status: &str) -> bool {
    let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
        return false;
    };
    body["status"] == status
        && body["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["status"] == status && a["labels"]["source"] == SOURCE)
}

/// Waits for Alertmanager's webhook payload with `status` about [`SOURCE`]; returns the
/// payload and its alert about the source.
fn wait_am_payload(
    receiver: &Receiver,
    sidecar: &Sidecar,
    status: &str,
    timeout: Duration,
) -> (Value, Value) {
    let got = wait_requests(
        receiver,
        sidecar,
        &format!("a {status} payload from Alertmanager"),
        timeout,
        |r| r.iter().any(|r| am_payload_about_source(r, status)),
    );
    let payload = got
        .iter()
        .find(|r| am_payload_about_source(r, status))
        .unwrap()
        .json();
    let alert = payload["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["source"] == SOURCE)
        .unwrap()
        .clone();
    (payload, alert)
}

#[test]
fn alertmanager_routes_the_firing_then_the_resolved_alert() {
    /// group_wait 1 s after the sidecar's post, then Alertmanager's webhook send.
    const AM_TIMEOUT: Duration = Duration::from_secs(60);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing.db");
    let receiver = Receiver::start();
    let am = start_alertmanager(dir.path(), &receiver.url("/am"));
    let sidecar = Sidecar::start_with(
        &state_dir(dir.path()),
        &launch(&[
            &alerts_section("200ms", "2s"),
            &format!(
                "\n[[channel]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://{}\"\n",
                am.addr
            ),
            &jobs_source(&db),
            SOURCE_DOWN_RULE,
            &quiet_rules(),
        ]),
    );

    let (firing, alert) =
        wait_am_payload(&receiver, &sidecar, "firing", ALERT_TIMEOUT + AM_TIMEOUT);
    assert_eq!(firing["receiver"], "hook", "{firing}");
    let m = sidecar.metrics();
    assert!(
        notifications_total(&m, "am", "sent") >= 1.0,
        "the sidecar counts its post to Alertmanager as sent:\n{}",
        m.0
    );

    write_jobs_db(&db, &[]);
    let (_, same) = wait_am_payload(&receiver, &sidecar, "resolved", ALERT_TIMEOUT + AM_TIMEOUT);
    assert_eq!(
        same["labels"], alert["labels"],
        "the resolved alert is the one that fired"
    );
    assert_eq!(same["fingerprint"], alert["fingerprint"]);
    assert_eq!(
        same["startsAt"], alert["startsAt"],
        "the alert keeps its start time when it resolves"
    );
}
