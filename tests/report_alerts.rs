//! Issue 8, `stallwatch report` on the sidecar's own alert history (state DB schema v3):
//! stuck jobs, dead letters, alerts per rule and notifications per channel and outcome, in
//! every format; and a state DB written before alert history (schema v2) still reports,
//! saying the history is not stored, without being migrated.
//!
//! The state DB is made by `stallwatch::state::StateDb` (the real schema); the alert and
//! notification rows are written with SQL in the shape `alerts/outbox.rs` writes them.

mod common;

use std::path::Path;

use common::{run_to_exit, Finished};
use rusqlite::{params, Connection};
use serde_json::Value;
use stallwatch::state::{StateDb, STATE_DB_FILE};
use stallwatch::time::rfc3339;

const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;

fn now_ns() -> i64 {
    stallwatch::clock::real_ns()
}

fn run(dir: &Path, args: &[&str]) -> Finished {
    let mut all = vec!["report", "--data-dir", dir.to_str().unwrap()];
    all.extend_from_slice(args);
    run_to_exit(all)
}

fn alert(
    conn: &Connection,
    fingerprint: &str,
    rule: &str,
    state: &str,
    start: i64,
    end: Option<i64>,
) {
    conn.execute(
        "INSERT INTO alert (fingerprint, rule, severity, labels, title, text, state,
                            started_at_ns, ended_at_ns, last_notified_ns, updated_at_ns)
         VALUES (?1, ?2, 'warning', '{}', ?1, '', ?3, ?4, ?5, ?4, ?4)",
        params![fingerprint, rule, state, start, end],
    )
    .unwrap();
}

fn notification(conn: &Connection, key: &str, channel: &str, state: &str, at: i64) {
    conn.execute(
        "INSERT INTO notification (key, fingerprint, channel, kind, severity, message, state,
                                   next_attempt_at_ns, created_at_ns)
         VALUES (?1, 'f', ?2, 'firing', 1, '{}', ?3, ?4, ?4)",
        params![key, channel, state, at],
    )
    .unwrap();
}

#[test]
fn report_counts_stuck_jobs_dead_letters_alerts_and_notifications() {
    let dir = tempfile::tempdir().unwrap();
    drop(StateDb::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(STATE_DB_FILE)).unwrap();
    let t0 = now_ns() - 2 * DAY;
    // In the window: two stuck-job alerts (10 min and 25 min), one still firing; two
    // dead-letter one-shots; a source down for 3 min. Before it: one more stuck job.
    alert(
        &conn,
        "stuck_jobs{queue=a}",
        "stuck_jobs",
        "resolved",
        t0,
        Some(t0 + 600 * S),
    );
    alert(
        &conn,
        "stuck_jobs{queue=b}",
        "stuck_jobs",
        "resolved",
        t0 + 3600 * S,
        Some(t0 + 3600 * S + 1500 * S),
    );
    alert(
        &conn,
        "dead_letters{queue=a}@1",
        "dead_letters",
        "fired",
        t0 + 100 * S,
        None,
    );
    alert(
        &conn,
        "dead_letters{queue=a}@2",
        "dead_letters",
        "fired",
        t0 + 200 * S,
        None,
    );
    alert(
        &conn,
        "source_down{source=app}",
        "source_down",
        "resolved",
        t0 + 300 * S,
        Some(t0 + 480 * S),
    );
    alert(
        &conn,
        "stuck_jobs{queue=old}",
        "stuck_jobs",
        "resolved",
        t0 - 3 * DAY,
        Some(t0 - 2 * DAY),
    );
    for (i, state) in ["sent", "sent", "sent", "failed", "pending"]
        .iter()
        .enumerate()
    {
        notification(
            &conn,
            &format!("k{i}"),
            "phone",
            state,
            t0 + (i as i64 + 1) * S,
        );
    }
    notification(&conn, "k9", "hook", "dropped", t0 + 10 * S);
    notification(&conn, "k-old", "hook", "sent", t0 - 3 * DAY);
    drop(conn);

    let since = rfc3339(t0 - S);
    let until = rfc3339(t0 + DAY);
    let win = ["--since", since.as_str(), "--until", until.as_str()];
    let out = run(dir.path(), &[&win[..], &["--format", "json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let a = &v["alerts"];
    assert_eq!(v["no_data"], false, "{v:#}");
    assert_eq!(a["count"], 5, "{a:#}");
    assert_eq!(a["stuck_jobs"]["alerts"], 2, "{a:#}");
    assert_eq!(a["stuck_jobs"]["longest_seconds"], 1500.0, "{a:#}");
    assert_eq!(a["dead_letters"]["alerts"], 2, "{a:#}");
    let down = a["by_rule"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "source_down")
        .unwrap();
    assert_eq!(
        (down["count"].as_u64(), down["longest_seconds"].as_f64()),
        (Some(1), Some(180.0))
    );
    let count = |channel: &str, state: &str| {
        a["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["channel"] == channel && n["state"] == state)
            .map(|n| n["count"].as_u64().unwrap())
    };
    assert_eq!(count("phone", "sent"), Some(3));
    assert_eq!(count("phone", "failed"), Some(1));
    assert_eq!(count("phone", "pending"), Some(1));
    assert_eq!(count("hook", "dropped"), Some(1));
    assert_eq!(
        count("hook", "sent"),
        None,
        "the old one is outside the window"
    );

    let text = run(dir.path(), &win).stdout;
    assert!(
        text.contains("Stuck jobs: 2 alert(s), longest 25m"),
        "{text}"
    );
    assert!(text.contains("Dead letters: 2 alert(s)"), "{text}");
    assert!(
        text.contains("Notifications:") && text.contains("phone"),
        "{text}"
    );
    let md = run(dir.path(), &[&win[..], &["--format", "markdown"]].concat()).stdout;
    assert!(
        md.contains("## Alerts") && md.contains("| stuck_jobs | 2 | 0 | 25m |"),
        "{md}"
    );
    let html = run(dir.path(), &[&win[..], &["--format", "html"]].concat()).stdout;
    assert!(
        html.contains("Alerts, stuck jobs and dead letters") && html.contains("<td>phone</td>"),
        "{html}"
    );
}

#[test]
fn a_state_db_from_before_alert_history_still_reports_and_is_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    drop(StateDb::open(dir.path()).unwrap());
    let path = dir.path().join(STATE_DB_FILE);
    {
        // What an older stallwatch left: schema v2, no alert tables.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE notification; DROP TABLE alert; PRAGMA user_version = 2;")
            .unwrap();
        conn.execute(
            "INSERT INTO freeze_event (kind, started_at_ns, duration_ns, detected_at_ns, channels)
             VALUES ('vm_pause', ?1, ?2, ?1, '[]')",
            params![now_ns() - DAY, 60 * S],
        )
        .unwrap();
    }
    let out = run(dir.path(), &["--since", "3d"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("Alerts: not stored"), "{}", out.stdout);
    let v: Value =
        serde_json::from_str(&run(dir.path(), &["--since", "3d", "--format", "json"]).stdout)
            .unwrap();
    assert!(v["alerts"].is_null(), "{v:#}");
    assert_eq!(v["freezes"]["count"], 1);
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2, "report never migrates");
}
