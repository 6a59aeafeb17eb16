//! The cost ladder (docs/alerts.md, `cost_cap`: "today's spend crossed a level of the
//! source's `cost_cap_usd` (each level once per cost day)", levels 50/80/100 by default):
//! a `jsonl` spend log against a 10 USD cap, a webhook channel to a local receiver.
//!
//! - 40 % sends nothing; 60 % sends level 50; 90 % level 80; 110 % level 100; more spend
//!   sends nothing more: exactly three notifications, with labels `level` 50/80/100 of
//!   the same `day`, three keys and three fingerprints.
//! - A restart (SIGKILL) on the same data dir re-reads the day's spend and sends nothing:
//!   the levels already sent are remembered in the state DB.
//! - Under libfaketime the wall clock reaches midnight during the test: spend of the new
//!   day crossing 50 % sends level 50 again, with the new day's label.
//!
//! The cost day is UTC (no `cost_timezone`), and the `day` label is its date.

mod alerts_support;
mod common;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use alerts_support::*;
use common::receiver::{Received, Receiver};
use common::{poll_until, Launch, Metrics, Sidecar};

/// The cap of the source under test.
const CAP_USD: f64 = 10.0;
/// How long an appended line may take to show in `/metrics`.
const SEEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest run of the real-clock test, with room: the UTC day must not turn during it.
const LONGEST_TEST: Duration = Duration::from_secs(150);
/// Wall-clock seconds before midnight the faked clock starts at.
const BEFORE_MIDNIGHT_S: i64 = 30;
const WEBHOOK_SECRET: &str = "whsec_Y29zdC1sYWRkZXItdGVzdC1rZXktMDEyMzQ1";
const COST_TODAY: &str = "stallwatch_cost_usd_today{source=\"spend\"}";

/// If the UTC day would turn during the test, wait for it to turn first.
fn avoid_utc_midnight() {
    let left = 86_400.0 - now_unix_s().rem_euclid(86_400.0);
    if left < LONGEST_TEST.as_secs_f64() {
        std::thread::sleep(Duration::from_secs_f64(left + 1.0));
    }
}

/// Appends one spend event at unix time `ts`, as the job agent logs it.
fn spend(log: &Path, ts: f64, usd: f64) {
    let line = format!(
        "{{\"ts\": {ts:.6}, \"key\": \"job-1\", \"event\": \"step_done\", \"cost_usd\": {usd}}}\n"
    );
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("opening {} to append: {e}", log.display()));
    f.write_all(line.as_bytes()).expect("appending");
}

fn config(log: &Path, rx: &Receiver) -> String {
    format!(
        "[alerts]\ngroup_wait = \"0s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n\n\
         [[source]]\nname = \"spend\"\nkind = \"jsonl\"\nurl = \"{}\"\npoll = \"{POLL}\"\ncost_cap_usd = {CAP_USD:?}\n\n\
         [[rule]]\nrule = \"cost_cap\"\n\n\
         [[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
        log.display(),
        rx.url("/cost")
    )
}

/// Waits until `/metrics` shows exactly `usd` spent today.
#[track_caller]
fn wait_spent(sidecar: &Sidecar, usd: f64) -> Metrics {
    poll_until(&format!("{usd} USD spent today"), SEEN_TIMEOUT, || {
        let m = sidecar.metrics();
        match m.value(COST_TODAY) {
            Some(v) if v == usd => Ok(m),
            other => Err(format!("{COST_TODAY} is {other:?}")),
        }
    })
}

/// Waits for the `n`-th request, then shows that no other comes for a while.
#[track_caller]
fn exactly(rx: &Receiver, n: usize, what: &str) -> Vec<Received> {
    if n > 0 {
        rx.wait_for(n, DELIVERY_TIMEOUT);
    }
    std::thread::sleep(SEVERAL_EVALUATIONS);
    let got = rx.requests();
    assert_eq!(
        got.len(),
        n,
        "{what}: expected exactly {n} notification(s), got {}: {:#?}",
        got.len(),
        got.iter().map(Received::text).collect::<Vec<_>>()
    );
    got
}

/// The `cost_cap` alert behind each received request, in the order received: its labels
/// come from `/api/v1/alerts` (`notifications[].key` → `fingerprint` → alert).
fn alerts_received(sidecar: &Sidecar, got: &[Received]) -> Vec<Value> {
    let api = alerts(sidecar);
    let listed = notifications(&api);
    let mut all = alerts_of(&api, "recent", "cost_cap");
    all.extend(alerts_of(&api, "firing", "cost_cap"));
    got.iter()
        .map(|r| {
            let key = r
                .header("idempotency-key")
                .unwrap_or_else(|| panic!("no Idempotency-Key: {:?}", r.headers));
            let n = listed
                .iter()
                .find(|n| n["key"] == key)
                .unwrap_or_else(|| panic!("key {key} is not among the notifications: {api}"));
            assert_eq!(n["channel"], "hook", "{n}");
            assert_eq!(n["kind"], "firing", "a cost level only fires: {n}");
            all.iter()
                .find(|a| a["fingerprint"] == n["fingerprint"])
                .unwrap_or_else(|| panic!("no cost_cap alert with the fingerprint of {n}: {api}"))
                .clone()
        })
        .collect()
}

#[track_caller]
fn label<'a>(alert: &'a Value, name: &str) -> &'a str {
    alert["labels"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no label {name:?}: {alert}"))
}

#[test]
fn each_level_alerts_once_a_day_and_not_again_after_a_restart() {
    avoid_utc_midnight();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    std::fs::File::create(&log).unwrap();
    let rx = Receiver::start();
    let launch = Launch {
        config: Some(config(&log, &rx)),
        env: Vec::new(),
    };
    let data = dir.path().join("data");
    let mut sidecar = Sidecar::start_with(&data, &launch);
    wait_spent(&sidecar, 0.0);

    // 40 %: below every level.
    spend(&log, now_unix_s(), 4.0);
    wait_spent(&sidecar, 4.0);
    exactly(&rx, 0, "at 40 %");
    // 60 %: level 50.
    spend(&log, now_unix_s(), 2.0);
    wait_spent(&sidecar, 6.0);
    exactly(&rx, 1, "at 60 %");
    // 90 %: level 80.
    spend(&log, now_unix_s(), 3.0);
    wait_spent(&sidecar, 9.0);
    exactly(&rx, 2, "at 90 %");
    // 110 %: level 100.
    spend(&log, now_unix_s(), 2.0);
    wait_spent(&sidecar, 11.0);
    exactly(&rx, 3, "at 110 %");
    // More spend over several polls: every level is already sent today.
    let mut spent = 11.0;
    for _ in 0..4 {
        spend(&log, now_unix_s(), 1.5);
        spent += 1.5;
        wait_spent(&sidecar, spent);
    }
    let got = exactly(&rx, 3, "after more spend");

    let today = utc_date(now_unix_s() as i64);
    let received = alerts_received(&sidecar, &got);
    let levels: Vec<&str> = received.iter().map(|a| label(a, "level")).collect();
    assert_eq!(
        levels,
        ["50", "80", "100"],
        "levels in the order sent: {received:#?}"
    );
    for a in &received {
        assert_eq!(label(a, "source"), "spend", "{a}");
        assert_eq!(label(a, "day"), today, "the UTC cost day: {a}");
        assert_eq!(a["rule"], "cost_cap", "{a}");
    }
    let fingerprints: BTreeSet<&str> = received
        .iter()
        .map(|a| a["fingerprint"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        fingerprints.len(),
        3,
        "three alerts, three fingerprints: {received:#?}"
    );
    let keys: BTreeSet<&str> = got
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default())
        .collect();
    assert_eq!(keys.len(), 3, "three notifications, three keys");
    // Each payload is about its level: the webhook body names the source.
    for r in &got {
        assert!(
            r.text().contains("spend"),
            "the payload does not name the source: {}",
            r.text()
        );
    }

    // ---- a restart re-reads today's spend and sends nothing again.
    sidecar.kill_hard();
    drop(sidecar);
    let sidecar = Sidecar::start_with(&data, &launch);
    wait_spent(&sidecar, spent);
    spend(&log, now_unix_s(), 1.0);
    wait_spent(&sidecar, spent + 1.0);
    exactly(&rx, 3, "after the restart");
    let api = alerts(&sidecar);
    let cost_notifications: Vec<&Value> = api["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["channel"] == "hook")
        .collect();
    assert_eq!(
        cost_notifications.len(),
        3,
        "the restart made new notifications: {api}"
    );
    assert_eq!(api["outbox"]["pending"], 0, "{api}");
}

/// The sidecar's clock is `offset_s` ahead; the faked now as unix seconds.
fn fake_now(offset_s: i64) -> f64 {
    now_unix_s() + offset_s as f64
}

#[test]
fn the_next_cost_day_alerts_level_50_again_with_its_own_day() {
    // Start the sidecar's wall clock BEFORE_MIDNIGHT_S before a UTC midnight.
    let now = now_unix_s().ceil() as i64;
    let mut midnight = (now / 86_400 + 1) * 86_400;
    if midnight - BEFORE_MIDNIGHT_S < now {
        midnight += 86_400;
    }
    let offset = midnight - BEFORE_MIDNIGHT_S - now;
    let (day1, day2) = (utc_date(midnight - 1), utc_date(midnight));

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    std::fs::File::create(&log).unwrap();
    let rx = Receiver::start();
    let sidecar = Sidecar::start_with(
        &dir.path().join("data"),
        &Launch {
            config: Some(config(&log, &rx)),
            env: faketime_env(offset),
        },
    );
    // The faked clock is in effect (the Date header is the sidecar's wall clock).
    let date = sidecar
        .get("/healthz")
        .header("date")
        .map(str::to_string)
        .expect("a Date header");
    let seen = httpdate::parse_http_date(&date).expect("an HTTP date");
    let seen = unix_s(seen);
    assert!(
        (seen - fake_now(offset)).abs() < 3.0,
        "the sidecar's clock says {date}, expected about {} (libfaketime not in effect?)",
        fake_now(offset)
    );
    assert!(
        fake_now(offset) < midnight as f64 - 10.0,
        "start-up took too long: the day turned before the first spend"
    );

    // Day 1: 60 % → level 50 of day 1.
    spend(&log, fake_now(offset), 6.0);
    wait_spent(&sidecar, 6.0);
    rx.wait_for(1, DELIVERY_TIMEOUT);

    // Midnight: today's spend is 0 again.
    let until_midnight = midnight as f64 + 1.0 - fake_now(offset);
    if until_midnight > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(until_midnight));
    }
    wait_spent(&sidecar, 0.0);
    assert_eq!(rx.requests().len(), 1, "the day turning sent something");

    // Day 2: 40 % is nothing, 60 % → level 50 of day 2.
    spend(&log, fake_now(offset), 4.0);
    wait_spent(&sidecar, 4.0);
    spend(&log, fake_now(offset), 2.0);
    wait_spent(&sidecar, 6.0);
    let got = exactly(&rx, 2, "a new day crossing 50 %");

    let received = alerts_received(&sidecar, &got);
    let summary: Vec<(&str, &str)> = received
        .iter()
        .map(|a| (label(a, "level"), label(a, "day")))
        .collect();
    assert_eq!(
        summary,
        [("50", day1.as_str()), ("50", day2.as_str())],
        "level 50 on each cost day: {received:#?}"
    );
    assert_ne!(
        received[0]["fingerprint"], received[1]["fingerprint"],
        "the two days' alerts are different alerts"
    );
    assert_ne!(
        got[0].header("idempotency-key"),
        got[1].header("idempotency-key"),
        "the two days' notifications have different keys"
    );
}
