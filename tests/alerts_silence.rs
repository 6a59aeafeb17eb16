//! Silences end to end (issue 15 item 4): a real `stallwatch run` with a queue-table
//! source raises a real `stuck_jobs` alert, `stallwatch silence` (another process) writes
//! the silence into its state DB, and a webhook receiver on 127.0.0.1 shows what was sent.
//!
//! - a silenced rule's alert fires: recorded (`/api/v1/alerts` marks it silenced with the
//!   silence id), no request reaches the receiver, counted `outcome="silenced"`; when the
//!   silence runs out while the alert still fires, exactly one firing goes out then;
//! - a silence of another source does not hold this source's alert;
//! - a silence survives a kill -9 and restart of the sidecar, and `silence expire` ends it
//!   at once: the held firing goes out within seconds, once;
//! - with nothing else waking the engine (a source polled once a minute), `silence
//!   expire` in another process is noticed at once (the engine's inotify watch on the
//!   state DB), not at the next poll;
//! - a deploy's planned stop under a freeze silence: the `restart` freeze is recorded and
//!   shown, and not delivered;
//! - `silence add/list/expire` refuse bad input and state DBs with exit 2 and one sentence.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::receiver::{show, Received, Receiver};
use common::{run_to_exit, Launch, Metrics, Sidecar, POLL_INTERVAL, QUIET_RULES};
use rusqlite::Connection;
use serde_json::Value;
use tempfile::TempDir;

const HOOK: &str = "hook";
const SOURCE: &str = "payments-db";
/// From a stuck job's row to its alert being decided: a 1 s poll, an evaluation.
const ALERT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long nothing more may arrive for a count to be final.
const SETTLE: Duration = Duration::from_secs(4);
/// `silence expire` to the held notification at the receiver: the engine re-reads the
/// silences at its next evaluation, which a 1 s source poll brings within a second.
const EXPIRE_LATENCY: Duration = Duration::from_secs(5);

const STUCK_JOBS_RULE: &str = "
[[rule]]
rule = \"stuck_jobs\"
threshold = 1
resolve_after = \"0s\"
";

fn config(receiver: &Receiver, db: &Path, rules: &str) -> Launch {
    config_polling(receiver, db, rules, "1s")
}

fn config_polling(receiver: &Receiver, db: &Path, rules: &str, poll: &str) -> Launch {
    Launch {
        config: Some(format!(
            "[alerts]\ngroup_wait = \"0s\"\nbackoff_initial = \"200ms\"\nbackoff_max = \"2s\"\n
[[channel]]
name = \"{HOOK}\"
kind = \"webhook\"
url = \"{}\"

[[source]]
name = \"{SOURCE}\"
kind = \"queue_table\"
url = \"sqlite://{}\"
poll = \"{poll}\"
table = \"jobs\"
key_column = \"id\"
status_column = \"status\"
queue_column = \"queue\"
claimed_column = \"claimed_at\"
running_status = \"running\"
lease = \"1s\"
open_statuses = [\"queued\", \"running\"]
{STUCK_JOBS_RULE}{rules}",
            receiver.url("/hook"),
            db.display()
        )),
        ..Launch::default()
    }
}

/// `jobs` with one `running` job claimed an hour ago when `stuck`, else none; built beside
/// and renamed into place so the polling sidecar never sees it half made.
fn write_jobs_db(db: &Path, stuck: bool) {
    let building = db.with_extension("building");
    let _ = std::fs::remove_file(&building);
    {
        let conn = Connection::open(&building).unwrap();
        conn.execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, status TEXT NOT NULL, claimed_at REAL);",
        )
        .unwrap();
        if stuck {
            let claimed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                - 3600.0;
            conn.execute(
                "INSERT INTO jobs (queue, status, claimed_at) VALUES ('q1', 'running', ?1)",
                [claimed],
            )
            .unwrap();
        }
    }
    std::fs::rename(&building, db).unwrap();
}

/// A temp dir, a jobs DB in it (no stuck job yet), a webhook receiver, and a state dir
/// for the sidecar.
fn setup() -> (TempDir, PathBuf, Receiver, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    write_jobs_db(&db, false);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    (dir, db, Receiver::start(), state)
}

fn silence(args: &[&str], data_dir: &Path) -> common::Finished {
    let mut all: Vec<&str> = vec!["silence"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", data_dir.to_str().unwrap()]);
    run_to_exit(all)
}

/// `silence add …` that must succeed; returns the new silence's id.
#[track_caller]
fn add(data_dir: &Path, args: &[&str]) -> i64 {
    let mut all = vec!["add"];
    all.extend_from_slice(args);
    all.extend(["--format", "json"]);
    let out = silence(&all, data_dir);
    assert!(out.status.success(), "silence add failed: {out:?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("silence add --format json");
    v["id"].as_i64().expect("an id")
}

/// `stallwatch_notifications_total{channel="hook", outcome}`, 0 if not exported yet.
fn notifications(m: &Metrics, outcome: &str) -> f64 {
    m.labelled(
        "stallwatch_notifications_total",
        &[("channel", HOOK), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

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
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!(
                "timed out after {timeout:?} waiting for {what}\nlast seen: {last}\n{}",
                sidecar.log()
            ),
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// The alert of `rule` in list `list` (`firing`, `recent`) of `/api/v1/alerts`, once
/// there is one.
fn alert_in(sidecar: &Sidecar, list: &str, rule: &str) -> Result<Value, String> {
    let api = sidecar.get("/api/v1/alerts").json();
    api[list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["rule"] == rule)
        .cloned()
        .ok_or_else(|| api.to_string())
}

/// The firing alert of `rule` in `/api/v1/alerts`, once there is one.
fn firing(sidecar: &Sidecar, rule: &str) -> Result<Value, String> {
    alert_in(sidecar, "firing", rule)
}

fn type_of(r: &Received) -> String {
    r.json()["type"].as_str().unwrap_or_default().to_string()
}

/// Waits for the silenced `stuck_jobs` alert to be recorded and counted; asserts the
/// receiver heard nothing.
fn assert_recorded_not_sent(sidecar: &Sidecar, receiver: &Receiver, silence_id: i64) {
    let alert = wait(
        sidecar,
        "the silenced stuck_jobs alert",
        ALERT_TIMEOUT,
        || {
            let a = firing(sidecar, "stuck_jobs")?;
            if notifications(&sidecar.metrics(), "silenced") >= 1.0 {
                Ok(a)
            } else {
                Err(format!("not counted silenced yet: {a}"))
            }
        },
    );
    assert_eq!(alert["silenced"], true, "{alert}");
    assert_eq!(alert["silence_id"], silence_id, "{alert}");
    assert_eq!(alert["labels"]["source"], SOURCE, "{alert}");
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert!(
        got.is_empty(),
        "a silenced alert reached the receiver:\n{}",
        show(&got)
    );
    let m = sidecar.metrics();
    assert_eq!(
        (notifications(&m, "silenced"), notifications(&m, "sent")),
        (1.0, 0.0),
        "one notification held back, none sent"
    );
}

#[test]
fn a_silenced_alert_is_recorded_not_sent_and_notifies_once_when_the_silence_ends() {
    const SILENCE: Duration = Duration::from_secs(12);
    let (_dir, db, receiver, state) = setup();
    let sidecar = Sidecar::start_with(&state, &config(&receiver, &db, QUIET_RULES));

    let id = add(
        &state,
        &["--rule", "stuck_jobs", "--for", "12s", "--reason", "deploy"],
    );
    let added = Instant::now();
    let listed = sidecar.get("/api/v1/silences").json();
    assert_eq!(listed[0]["id"], id, "{listed}");
    assert_eq!(listed[0]["state"], "active", "{listed}");
    assert_eq!(listed[0]["reason"], "deploy", "{listed}");

    write_jobs_db(&db, true);
    assert_recorded_not_sent(&sidecar, &receiver, id);
    assert!(
        added.elapsed() < SILENCE,
        "the machine was too slow to check the silence while it ran"
    );

    // The silence runs out while the job is still stuck: the firing goes out then, once.
    let got = receiver.wait_for(1, SILENCE + ALERT_TIMEOUT);
    let at = added.elapsed();
    assert!(
        at + Duration::from_millis(100) >= SILENCE,
        "the held firing went out {at:?} after a {SILENCE:?} silence began"
    );
    assert_eq!(type_of(&got[0]), "alert.firing", "{}", show(&got));
    assert!(
        got[0]
            .text()
            .contains(&format!("Held back by silence {id}")),
        "{:?}",
        got[0]
    );
    eprintln!("held firing sent {at:?} after the silence began (it ran {SILENCE:?})");
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert_eq!(
        got.len(),
        1,
        "exactly one notification after the silence:\n{}",
        show(&got)
    );
    let alert = firing(&sidecar, "stuck_jobs").unwrap();
    assert_eq!(alert["silenced"], false, "{alert}");
    let listed = sidecar.get("/api/v1/silences").json();
    assert_eq!(listed[0]["state"], "expired", "{listed}");
}

#[test]
fn a_silence_of_another_source_does_not_hold_this_one() {
    let (_dir, db, receiver, state) = setup();
    let sidecar = Sidecar::start_with(&state, &config(&receiver, &db, QUIET_RULES));
    add(
        &state,
        &[
            "--rule",
            "stuck_jobs",
            "--source",
            "other-db",
            "--for",
            "1h",
            "--reason",
            "their deploy",
        ],
    );
    write_jobs_db(&db, true);
    let got = receiver.wait_for(1, ALERT_TIMEOUT);
    assert_eq!(type_of(&got[0]), "alert.firing", "{}", show(&got));
    assert!(got[0].text().contains(SOURCE), "{:?}", got[0]);
    let alert = firing(&sidecar, "stuck_jobs").unwrap();
    assert_eq!(alert["silenced"], false, "{alert}");
    wait(&sidecar, "1 sent, 0 silenced", ALERT_TIMEOUT, || {
        let m = sidecar.metrics();
        let seen = (notifications(&m, "sent"), notifications(&m, "silenced"));
        if seen == (1.0, 0.0) {
            Ok(())
        } else {
            Err(format!("(sent, silenced) = {seen:?}"))
        }
    });
}

#[test]
fn a_silence_survives_a_restart_and_expire_ends_it_at_once() {
    let (_dir, db, receiver, state) = setup();
    let launch = config(&receiver, &db, QUIET_RULES);
    let mut sidecar = Sidecar::start_with(&state, &launch);
    let id = add(
        &state,
        &[
            "--rule",
            "stuck_jobs",
            "--source",
            SOURCE,
            "--for",
            "1h",
            "--reason",
            "deploy",
        ],
    );
    write_jobs_db(&db, true);
    assert_recorded_not_sent(&sidecar, &receiver, id);

    // kill -9 and start again: still silenced, still owed, still not sent.
    sidecar.kill_hard();
    let sidecar = Sidecar::start_with(&state, &launch);
    wait(
        &sidecar,
        "the alert restored, silenced",
        ALERT_TIMEOUT,
        || {
            let a = firing(&sidecar, "stuck_jobs")?;
            if a["silenced"] == true && a["silence_id"] == id {
                Ok(())
            } else {
                Err(a.to_string())
            }
        },
    );
    std::thread::sleep(SETTLE);
    assert!(
        receiver.requests().is_empty(),
        "sent after the restart:\n{}",
        show(&receiver.requests())
    );

    let out = silence(&["expire", &id.to_string()], &state);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains(&format!("silence {id} expired")),
        "{out:?}"
    );
    let expired = Instant::now();
    let got = receiver.wait_for(1, ALERT_TIMEOUT);
    let latency = expired.elapsed();
    assert!(
        latency <= EXPIRE_LATENCY,
        "the held firing went out {latency:?} after silence expire"
    );
    eprintln!("silence expire → held firing at the receiver: {latency:?}");
    assert_eq!(type_of(&got[0]), "alert.firing", "{}", show(&got));
    std::thread::sleep(SETTLE);
    assert_eq!(
        receiver.requests().len(),
        1,
        "{}",
        show(&receiver.requests())
    );
    // Expiring it again says so and changes nothing.
    let again = silence(&["expire", &id.to_string()], &state);
    assert!(again.status.success(), "{again:?}");
    assert!(again.stdout.contains("had already ended"), "{again:?}");
    let list = silence(&["list"], &state);
    assert!(list.status.success(), "{list:?}");
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id.to_string()))
        .unwrap_or_else(|| panic!("silence {id} not listed:\n{}", list.stdout));
    assert!(
        row.contains("stuck_jobs") && row.contains(SOURCE) && row.contains("expired"),
        "{row}"
    );
}

#[test]
fn a_planned_stop_under_a_freeze_silence_is_recorded_and_not_delivered() {
    let (_dir, db, receiver, state) = setup();
    // The freeze rule on, from 1 s: the downtime of the restart below is a `restart` freeze.
    let rules = format!(
        "\n[[rule]]\nrule = \"freeze\"\nthreshold = \"1s\"\n\n{}",
        common::quiet_rules_except("freeze")
    );
    let launch = config(&receiver, &db, &rules);
    let mut sidecar = Sidecar::start_with(&state, &launch);
    // What a preStop hook runs before the deploy stops the machine.
    let id = add(
        &state,
        &["--rule", "freeze", "--for", "10m", "--reason", "deploy"],
    );
    sidecar.kill_hard();
    std::thread::sleep(Duration::from_secs(3));
    let sidecar = Sidecar::start_with(&state, &launch);
    let alert = wait(
        &sidecar,
        "the restart freeze's alert",
        ALERT_TIMEOUT,
        || alert_in(&sidecar, "recent", "freeze"),
    );
    assert_eq!(alert["silenced"], true, "{alert}");
    assert_eq!(alert["silence_id"], id, "{alert}");
    assert_eq!(alert["labels"]["kind"], "restart", "{alert}");
    std::thread::sleep(SETTLE);
    let got = receiver.requests();
    assert!(
        got.is_empty(),
        "the silenced freeze was delivered:\n{}",
        show(&got)
    );
    assert_eq!(notifications(&sidecar.metrics(), "silenced"), 1.0);
    // `report` counts it among the freeze alerts, as silenced, with no notification made.
    let report = run_to_exit([
        "report",
        "--data-dir",
        state.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(report.status.success(), "{report:?}");
    let r: Value = serde_json::from_str(&report.stdout).unwrap();
    let freeze = r["alerts"]["by_rule"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["rule"] == "freeze")
        .unwrap_or_else(|| panic!("no freeze alert in the report: {}", r["alerts"]));
    assert_eq!(
        (freeze["count"].as_u64(), freeze["silenced"].as_u64()),
        (Some(1), Some(1)),
        "{freeze}"
    );
    assert_eq!(
        r["alerts"]["notifications"],
        serde_json::json!([]),
        "{}",
        r["alerts"]
    );
}

#[test]
fn silence_refuses_bad_input_and_bad_state_dbs_with_exit_2_and_one_sentence() {
    let (dir, db, receiver, state) = setup();
    let launch = config(&receiver, &db, QUIET_RULES);
    let mut sidecar = Sidecar::start_with(&state, &launch);
    sidecar.kill_hard();
    let config_file = dir.path().join("stallwatch.toml");
    // data_dir is a top-level key: it must come before the first table.
    std::fs::write(
        &config_file,
        format!(
            "data_dir = \"{}\"\n{}",
            state.display(),
            launch.config.unwrap()
        ),
    )
    .unwrap();

    #[track_caller]
    fn refused(out: common::Finished, says: &str) {
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "one sentence: {out:?}");
        assert!(
            lines[0].contains(says),
            "{:?} should say {says:?}",
            lines[0]
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    let add = |extra: &[&str]| {
        let mut a = vec!["add"];
        a.extend_from_slice(extra);
        silence(&a, &state)
    };
    refused(
        add(&["--rule", "stuck", "--for", "1h", "--reason", "x"]),
        "--rule must be one of freeze,",
    );
    refused(
        add(&["--rule", "freeze", "--for", "soon", "--reason", "x"]),
        "--for must be a duration",
    );
    refused(
        add(&["--rule", "freeze", "--for", "31d", "--reason", "x"]),
        "--for must be between 1s and 30d, not 31d",
    );
    refused(
        add(&["--rule", "freeze", "--for", "0s", "--reason", "x"]),
        "--for must be between 1s and 30d",
    );
    refused(
        add(&[
            "--rule", "freeze", "--source", "a", "--for", "1h", "--reason", "x",
        ]),
        "--source does not apply to rule freeze",
    );
    let long = "x".repeat(100_000);
    refused(
        add(&["--rule", "freeze", "--for", "1h", "--reason", &long]),
        "--reason must say why in 1 to 200 characters",
    );
    refused(
        add(&["--rule", "freeze", "--for", "1h", "--reason", "  "]),
        "--reason must say why",
    );
    refused(
        add(&["--rule", "freeze", "--for", "1h"]),
        "--reason is required",
    );
    refused(silence(&["expire", "41"], &state), "there is no silence 41");
    refused(silence(&["expire", "-3"], &state), "must be a silence id");
    // --config: its data_dir, and --source must be one of its sources.
    let cfg = config_file.to_str().unwrap();
    let add_with_config = |source: &str| {
        run_to_exit([
            "silence",
            "add",
            "--rule",
            "stuck_jobs",
            "--source",
            source,
            "--for",
            "1h",
            "--reason",
            "x",
            "--config",
            cfg,
        ])
    };
    refused(
        add_with_config("nope"),
        "--source \"nope\" is not a [[source]] of the config (it has payments-db)",
    );
    let out = add_with_config(SOURCE);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with("silence 1 added"), "{out:?}");
    // Nothing above wrote a silence but the last.
    let list = run_to_exit(["silence", "list", "--format", "json", "--config", cfg]);
    let v: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");

    // State DBs: missing, a directory, not a state DB, from before silences.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    refused(silence(&["list"], &empty), "no state database at");
    refused(
        silence(
            &["add", "--rule", "freeze", "--for", "1h", "--reason", "x"],
            &empty,
        ),
        "no state database at",
    );
    assert!(
        !empty.join("stallwatch.sqlite").exists(),
        "silence add must never create a state DB"
    );
    let as_dir = dir.path().join("as-dir");
    std::fs::create_dir_all(as_dir.join("stallwatch.sqlite")).unwrap();
    refused(silence(&["list"], &as_dir), "no state database at");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    Connection::open(other.join("stallwatch.sqlite"))
        .unwrap()
        .execute_batch("CREATE TABLE orders (id INTEGER)")
        .unwrap();
    refused(
        silence(&["list"], &other),
        "is not a stallwatch state database",
    );
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(
        state.join("stallwatch.sqlite"),
        old.join("stallwatch.sqlite"),
    )
    .unwrap();
    Connection::open(old.join("stallwatch.sqlite"))
        .unwrap()
        .execute_batch("PRAGMA user_version = 6")
        .unwrap();
    refused(
        silence(
            &["add", "--rule", "freeze", "--for", "1h", "--reason", "x"],
            &old,
        ),
        "from before silences",
    );
}

#[test]
fn expire_is_noticed_at_once_without_a_poll_to_wake_the_engine() {
    let (_dir, db, receiver, state) = setup();
    // A first run makes the state DB; the silence goes in while no sidecar runs.
    let launch = config_polling(&receiver, &db, QUIET_RULES, "60s");
    Sidecar::start_with(&state, &launch).kill_hard();
    let id = add(
        &state,
        &[
            "--rule",
            "stuck_jobs",
            "--for",
            "1h",
            "--reason",
            "maintenance",
        ],
    );
    write_jobs_db(&db, true);
    // Its first poll, at start, sees the stuck job: held. The next poll is a minute away.
    let sidecar = Sidecar::start_with(&state, &launch);
    assert_recorded_not_sent(&sidecar, &receiver, id);
    let out = silence(&["expire", &id.to_string()], &state);
    assert!(out.status.success(), "{out:?}");
    let expired = Instant::now();
    let got = receiver.wait_for(1, Duration::from_secs(90));
    let latency = expired.elapsed();
    eprintln!("silence expire → held firing, no poll to wake the engine: {latency:?}");
    assert!(
        latency <= EXPIRE_LATENCY,
        "the held firing went out {latency:?} after silence expire: the write was not noticed"
    );
    assert_eq!(type_of(&got[0]), "alert.firing", "{}", show(&got));
}
