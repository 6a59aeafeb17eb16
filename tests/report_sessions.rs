//! Issue 19 item 1: watch sessions recorded, coverage exact, older DBs estimated.
//!
//! - `the_demos_case_is_not_enough_data_with_the_coverage_stated_exactly`: the state DB a
//!   two-minute `stallwatch demo` leaves (episodes and freezes read back from the app's
//!   history, a month older than the DB; one watch session of two minutes). `verify
//!   --before 2025-10-01..2025-11-01 --after 2025-11-01..now` was FIXED/NOT FIXED with
//!   "covered at most 31d"; it is NOT ENOUGH DATA (exit 3), the before window watched 0 s,
//!   the after window exactly the session; `report` over October says "watched 0 ms of 31d".
//! - `sessions_across_kill_9_clean_stop_and_reboot_give_coverage_to_the_second`: the real
//!   sidecar started four times — killed with SIGKILL, stopped with SIGTERM, killed and
//!   its heartbeat's `boot_id` changed (a reboot, as a new boot reads), then left running.
//!   `report` lists four sessions ended `restart`, `stopped`, `reboot`, `running`, each as
//!   long as the test saw the process live to within a heartbeat, and their sum as the
//!   coverage.
//! - `a_state_db_from_before_sessions_is_estimated_and_says_so`: a schema-4 DB (heartbeat,
//!   one recorded restart, older writes) read by `report` without migrating it, then
//!   opened (migrated to schema 5): both give the same two estimated sessions, cut at the
//!   restart, and the text says how much of the coverage is estimated.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{run_to_exit, Sidecar};
use serde_json::Value;
use stallwatch::clock::ClockReading;
use stallwatch::freeze::downtime::Heartbeat;
use stallwatch::freeze::{ChannelEstimate, FreezeEvent, FreezeKind};
use stallwatch::signals::attribution::Cause;
use stallwatch::signals::episode::{Episode, EpisodeKind};
use stallwatch::state::{StateDb, STATE_DB_FILE};

const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn at(ns: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns as u64)).to_string()
}

fn parse(text: &Value) -> i64 {
    let t = humantime::parse_rfc3339(text.as_str().unwrap()).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec![args[0], "--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    all.extend_from_slice(&["--format", "json"]);
    let out = run_to_exit(all);
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.status.code().unwrap(), v)
}

fn text(dir: &Path, args: &[&str]) -> String {
    let mut all = vec![args[0], "--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    run_to_exit(all).stdout
}

fn heartbeat(db: &StateDb, real_ns: i64, clean: bool) {
    db.write_heartbeat(&Heartbeat {
        clocks: ClockReading {
            mono_ns: 1,
            real_ns,
            boot_ns: 1,
        },
        boot_id: "boot".into(),
        clean,
    })
    .unwrap();
}

fn freeze(db: &StateDb, kind: FreezeKind, start_ns: i64, seconds: i64, detected_ns: i64) {
    let event = FreezeEvent {
        kind,
        started_at_ns: start_ns,
        duration_ns: seconds * S,
        channels: vec![ChannelEstimate {
            channel: "downtime".into(),
            estimate_ns: seconds * S,
        }],
    };
    db.insert_event(&event, detected_ns).unwrap();
}

fn episode(db: &StateDb, workflow: &str, start_ns: i64, seconds: i64, detected_ns: i64) {
    let e = Episode {
        source: "demo-app".into(),
        kind: EpisodeKind::StepGap,
        workflow_id: workflow.into(),
        workflow_name: "reply".into(),
        from_step: "parse".into(),
        to_step: "generate".into(),
        started_at_ns: start_ns,
        duration_ns: seconds * S,
        cause: Cause::Stall,
    };
    assert!(db.insert_episode(&e, detected_ns).unwrap());
}

#[test]
fn the_demos_case_is_not_enough_data_with_the_coverage_stated_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns() / S * S;
    let started = now - 120 * S;
    let db = StateDb::open(dir.path()).unwrap();
    // What the sidecar records at start, then two minutes of heartbeats.
    db.begin_session(started, None).unwrap();
    heartbeat(&db, started, false);
    // The app's history, read back at start: October 2025, older than the DB.
    let october = parse(&Value::from("2025-10-10T00:00:00Z"));
    for i in 0..5 {
        episode(&db, &format!("wf-{i}"), october + i * DAY, 300, started + S);
    }
    freeze(&db, FreezeKind::VmPause, october + DAY / 2, 90, started + S);
    freeze(&db, FreezeKind::VmPause, october + 3 * DAY, 90, started + S);
    heartbeat(&db, now, true);
    drop(db);

    let args = [
        "verify",
        "--before",
        "2025-10-01T00:00:00Z..2025-11-01T00:00:00Z",
        "--after",
        "2025-11-01T00:00:00Z..now",
    ];
    let (code, v) = json(dir.path(), &args);
    assert_eq!(
        (code, v["verdict"].as_str(), v["reason"].as_str()),
        (3, Some("NOT ENOUGH DATA"), Some("before_not_covered")),
        "{v:#}"
    );
    assert_eq!(v["before"]["covered_seconds"], 0.0, "{v:#}");
    assert_eq!(v["after"]["covered_seconds"], 120.0, "{v:#}");
    let out = text(dir.path(), &args);
    assert!(
        out.contains("watched 0 ms of 31d (0 %)") && out.contains("watched 2m of "),
        "{out}"
    );
    assert!(!out.contains("at most"), "{out}");

    // `report` agrees, over October and over the last week.
    let (code, r) = json(
        dir.path(),
        &[
            "report",
            "--since",
            "2025-10-01T00:00:00Z",
            "--until",
            "2025-11-01T00:00:00Z",
        ],
    );
    assert_eq!(
        (code, r["covered_seconds"].as_f64()),
        (0, Some(0.0)),
        "{r:#}"
    );
    assert!(
        r["coverage"]
            .as_str()
            .unwrap()
            .starts_with("coverage: watched 0 ms of 31d (0 %); 0 runs"),
        "{r:#}"
    );
    let (_, week) = json(dir.path(), &["report"]);
    assert_eq!(week["covered_seconds"], 120.0, "{week:#}");
    assert_eq!(
        week["sessions"]["listed"][0]["ended"], "stopped",
        "{week:#}"
    );
}

/// The wall time now, to the nanosecond.
fn wall() -> i64 {
    now_ns()
}

#[test]
fn sessions_across_kill_9_clean_stop_and_reboot_give_coverage_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t0 = wall();
    // (spawned, ended) as the test saw each run.
    let mut lives = Vec::new();

    // 1: killed.
    let spawned = wall();
    let mut s = Sidecar::start(&data);
    std::thread::sleep(Duration::from_millis(3_300));
    s.kill_hard();
    lives.push((spawned, wall()));
    drop(s);
    std::thread::sleep(Duration::from_secs(2));

    // 2: stopped cleanly.
    let spawned = wall();
    let mut s = Sidecar::start(&data);
    std::thread::sleep(Duration::from_millis(2_600));
    s.signal(libc::SIGTERM);
    let stopping = wall();
    assert!(s
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|e| e.success()));
    lives.push((spawned, stopping));
    drop(s);
    std::thread::sleep(Duration::from_secs(2));

    // 3: killed, then the machine "reboots": the next start reads another boot_id in
    // the heartbeat than its own.
    let spawned = wall();
    let mut s = Sidecar::start(&data);
    std::thread::sleep(Duration::from_millis(2_400));
    s.kill_hard();
    lives.push((spawned, wall()));
    drop(s);
    let conn = rusqlite::Connection::open(data.join(STATE_DB_FILE)).unwrap();
    conn.execute(
        "UPDATE heartbeat SET boot_id = 'a-boot-before-this-one'",
        [],
    )
    .unwrap();
    drop(conn);
    std::thread::sleep(Duration::from_secs(2));

    // 4: still running.
    let spawned = wall();
    let s = Sidecar::start(&data);
    std::thread::sleep(Duration::from_millis(2_200));
    let (code, r) = json(&data, &["report", "--since", &at(t0 / S * S - S)]);
    lives.push((spawned, wall()));
    assert_eq!(code, 0, "{r:#}");
    drop(s);

    let listed = r["sessions"]["listed"].as_array().unwrap();
    let ended: Vec<&str> = listed
        .iter()
        .map(|s| s["ended"].as_str().unwrap())
        .collect();
    assert_eq!(ended, ["restart", "stopped", "reboot", "running"], "{r:#}");
    let mut sum = 0.0;
    for (i, (session, (spawned, gone))) in listed.iter().zip(&lives).enumerate() {
        let (start, last) = (
            parse(&session["started"]),
            parse(&session["last_heartbeat"]),
        );
        let seconds = session["seconds"].as_f64().unwrap();
        sum += seconds;
        let lived = (gone - spawned) as f64 / 1e9;
        eprintln!("session {i}: {seconds:.3} s watched, the process lived {lived:.3} s");
        assert_eq!(session["estimated"], false);
        // Its start is the process's start; its end is within a heartbeat (1 s) of the
        // death, or at the clean stop.
        assert!(start + S >= *spawned && start <= *gone, "{session:#}");
        assert!(
            last <= gone + S && last + 1_600_000_000 >= *gone,
            "session {i}: {session:#} vs {lived}"
        );
        assert!(
            (seconds - lived).abs() <= 1.6,
            "session {i}: {seconds} vs {lived}"
        );
    }
    let covered = r["covered_seconds"].as_f64().unwrap();
    assert!((covered - sum).abs() < 0.01, "{covered} vs {sum}: {r:#}");
    let lived: f64 = lives.iter().map(|(a, b)| (b - a) as f64 / 1e9).sum();
    assert!((covered - lived).abs() <= 4.0, "{covered} vs {lived}");
    // The downtimes between are not watched: the window minus the runs is at least 6 s.
    assert!(
        r["window"]["seconds"].as_f64().unwrap() - covered >= 6.0,
        "{r:#}"
    );
}

#[test]
fn a_state_db_from_before_sessions_is_estimated_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns() / S * S;
    let db = StateDb::open(dir.path()).unwrap();
    // First write 10 days ago; a restart 5 days ago that was down an hour; the last
    // heartbeat a day ago, clean.
    episode(&db, "wf-old", now - 11 * DAY, 60, now - 10 * DAY);
    freeze(
        &db,
        FreezeKind::Restart,
        now - 5 * DAY,
        3_600,
        now - 5 * DAY + 3_600 * S,
    );
    heartbeat(&db, now - DAY, true);
    drop(db);
    // Back to schema 4, as a DB from before sessions is.
    let path = dir.path().join(STATE_DB_FILE);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP TRIGGER watch_session_beat_insert; DROP TRIGGER watch_session_beat_update;
         DROP TABLE watch_session; DROP TABLE silence; ALTER TABLE alert DROP COLUMN silence_id;
         ALTER TABLE alert DROP COLUMN held;
         DROP INDEX notification_group; DROP INDEX notification_sent;
         ALTER TABLE notification DROP COLUMN sealed;
         ALTER TABLE notification DROP COLUMN release_at_ns; PRAGMA user_version = 4;",
    )
    .unwrap();
    drop(conn);

    let expect = |r: &Value, what: &str| {
        let listed = r["sessions"]["listed"].as_array().unwrap();
        let spans: Vec<(i64, i64, &str, bool)> = listed
            .iter()
            .map(|s| {
                (
                    parse(&s["started"]),
                    parse(&s["last_heartbeat"]),
                    s["ended"].as_str().unwrap(),
                    s["estimated"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            spans,
            [
                (now - 10 * DAY, now - 5 * DAY, "restart", true),
                (now - 5 * DAY + 3_600 * S, now - DAY, "stopped", true),
            ],
            "{what}: {r:#}"
        );
        let watched = (9 * DAY - 3_600 * S) as f64 / 1e9;
        assert_eq!(
            r["covered_seconds"].as_f64(),
            Some(watched),
            "{what}: {r:#}"
        );
        assert_eq!(
            r["estimated_seconds"].as_f64(),
            Some(watched),
            "{what}: {r:#}"
        );
    };
    // Read-only, not migrated.
    let (code, r) = json(dir.path(), &["report", "--since", "30d"]);
    assert_eq!(code, 0);
    expect(&r, "read-only");
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4, "report must not migrate");
    let out = text(dir.path(), &["report", "--since", "30d"]);
    assert!(
        out.contains("watched 8d 23h of 30d (30 %), of which 8d 23h is estimated"),
        "{out}"
    );

    // Migrated by the sidecar's open: the same sessions, stored.
    let start = Instant::now();
    drop(StateDb::open(dir.path()).unwrap());
    eprintln!("migration to schema 5: {:?}", start.elapsed());
    let (_, r) = json(dir.path(), &["report", "--since", "30d"]);
    expect(&r, "migrated");
}
