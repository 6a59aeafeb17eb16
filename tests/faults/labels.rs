//! Fault cases: label cardinality (issue 14, items 5 and 6).
//!
//! A queue table with 100,000 distinct queues once gave 33,335 `dead_letters` series,
//! 10,000 `stuck_jobs`, a 5.5 MB `/metrics` and 10,051 alert rows. Every family
//! labelled by queue now goes through the source's one label budget: the first 100
//! values are kept, the rest are summed under `other` and counted in
//! `label_overflow_total`. And `workflow_stalled` is one alert per source, so a
//! workflow still stalled can never be "resolved" because others outnumber a list.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::common::{poll_until, Launch, Metrics, Sidecar};

/// Distinct queues in the hostile table.
const QUEUES: usize = 100_000;
/// Queue label values a source keeps (`MAX_QUEUE_LABELS`), plus `other`.
const MAX_QUEUE_SERIES: usize = 101;
/// Rows one read of the source takes (`MAX_ROWS_PER_POLL`).
const ROWS_PER_READ: usize = 10_000;
/// How long the first poll of 100,000 rows may take on a busy debug build.
const FIRST_POLL: Duration = Duration::from_secs(60);

/// Families labelled by queue, each of which once grew a series per queue.
const QUEUE_FAMILIES: [&str; 5] = [
    "stallwatch_queue_depth",
    "stallwatch_job_retries_total",
    "stallwatch_dead_letters",
    "stallwatch_dead_letters_total",
    "stallwatch_stuck_jobs",
];

/// One job per queue, in thirds: dead, running past its lease, pending after 2 attempts.
fn hostile_table(path: &Path) {
    let conn = Connection::open(path).expect("creating the app DB");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE jobs (id TEXT PRIMARY KEY, queue TEXT, status TEXT, attempts INTEGER,
                            claimed_at REAL);
         CREATE INDEX jobs_status ON jobs (status);",
    )
    .expect("schema");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO jobs VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for i in 0..QUEUES {
            let (status, attempts, claimed) = match i % 3 {
                0 => ("dead", 5, None),
                1 => ("running", 1, Some(now - 3600.0)),
                _ => ("pending", 2, None),
            };
            insert
                .execute(params![
                    format!("job-{i}"),
                    format!("q{i:06}"),
                    status,
                    attempts,
                    claimed
                ])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn config(db: &Path) -> String {
    format!(
        r#"
[[source]]
name = "wide"
kind = "queue_table"
url = "sqlite://{}"
poll = "2s"
table = "jobs"
key_column = "id"
status_column = "status"
queue_column = "queue"
attempts_column = "attempts"
claimed_column = "claimed_at"
open_statuses = ["pending", "running"]
running_status = "running"
lease = "1m"
dead_status = "dead"

[[rule]]
rule = "stuck_jobs"
threshold = 1
"#,
        db.display()
    )
}

/// Distinct `queue` label values of `family` in a scrape.
fn queue_values(m: &Metrics, family: &str) -> HashSet<String> {
    m.0.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.split("queue=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_hundred_thousand_queues_stay_within_the_label_budget_in_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    hostile_table(&db);
    let state = dir.path().join("state");
    let sidecar = Sidecar::start_with(
        &state,
        &Launch {
            config: Some(config(&db)),
            ..Launch::default()
        },
    );

    let m = poll_until("the first poll of 100,000 queues", FIRST_POLL, || {
        let m = sidecar.metrics();
        let stuck = queue_values(&m, "stallwatch_stuck_jobs");
        if stuck.contains("other") && m.value(r#"stallwatch_source_up{source="wide"}"#) == Some(1.0)
        {
            Ok(m)
        } else {
            Err(format!("{} stuck_jobs series so far", stuck.len()))
        }
    });
    for family in QUEUE_FAMILIES {
        let values = queue_values(&m, family);
        assert!(
            values.len() <= MAX_QUEUE_SERIES,
            "{family} has {} queue values, more than the budget's {MAX_QUEUE_SERIES}",
            values.len()
        );
    }
    // Folded, not lost: `other` carries the sum of every queue past the budget.
    let stuck_total: f64 =
        m.0.lines()
            .filter(|l| l.starts_with("stallwatch_stuck_jobs{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
    // 33,333 rows run; one read takes the 10,000 oldest claims, and says it was capped.
    assert_eq!(
        stuck_total as usize, ROWS_PER_READ,
        "the oldest claims, under their queue or under other"
    );
    let capped = m.expect(r#"stallwatch_source_errors_total{kind="rows_capped",source="wide"}"#);
    assert!(capped > 0.0, "the capped read is counted");
    let dead_total: f64 =
        m.0.lines()
            .filter(|l| l.starts_with("stallwatch_dead_letters{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
    assert_eq!(dead_total as usize, QUEUES.div_ceil(3), "every dead letter");
    let overflow = m.expect(r#"stallwatch_label_overflow_total{label="queue",source="wide"}"#);
    assert!(overflow > 0.0, "the overflow is counted: {overflow}");
    // And the status says so, where an operator looks first.
    let status = sidecar.status();
    let source = &status["sources"][0];
    assert!(
        source["label_overflow"]["queue"].as_u64() > Some(0),
        "label_overflow in /api/v1/status: {source}"
    );
    assert!(
        source["skipped"]["rows_capped"].as_u64() > Some(0),
        "rows_capped in /api/v1/status: {source}"
    );
    assert!(
        m.0.len() < 256 * 1024,
        "/metrics is {} bytes with 100,000 queues",
        m.0.len()
    );

    // The alert facts come from the same folded values: a bounded number of alert rows
    // in the state DB (the API lists at most 100, so it is counted there).
    let state_db = state.join("stallwatch.sqlite");
    let rows = poll_until("the stuck_jobs alerts", FIRST_POLL, || {
        let conn =
            Connection::open_with_flags(&state_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| e.to_string())?;
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM alert WHERE rule = 'stuck_jobs'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if n > 0 {
            Ok(n)
        } else {
            Err("no stuck_jobs alert yet".into())
        }
    });
    assert!(
        rows as usize <= MAX_QUEUE_SERIES,
        "{rows} stuck_jobs alerts from one table"
    );
    // More polls of the same table stay within the budget too.
    std::thread::sleep(Duration::from_secs(5));
    let again = sidecar.metrics();
    for family in QUEUE_FAMILIES {
        let values = queue_values(&again, family);
        assert!(
            values.len() <= MAX_QUEUE_SERIES,
            "{family} has {} queue values after more polls",
            values.len()
        );
    }
}

/// Stalled workflows in the DBOS DB at the start, and those added later, stalled longer
/// (together within the 5,000 open workflows one poll reads).
const STALLED: usize = 4_000;
const STALLED_LATER: usize = 100;

/// Writes `n` PENDING workflows `prefix-i`, each with one step finished `idle_s + i` ms
/// ago plus `idle_s` seconds: stalled for any `stall_after` under `idle_s`.
fn pending_workflows(conn: &Connection, prefix: &str, n: usize, idle_s: i64) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let done = now_ms - idle_s * 1000 - i as i64;
        tx.execute(
            "INSERT INTO workflow_status (workflow_uuid, status, name, created_at, updated_at)
             VALUES (?1, 'PENDING', 'reply', ?2, ?2)",
            params![id, done - 1000],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO operation_outputs
             (workflow_uuid, function_id, function_name, started_at_epoch_ms, completed_at_epoch_ms)
             VALUES (?1, 1, 'fetch', ?2, ?3)",
            params![id, done - 10, done],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// `workflow_stalled` rows in the state DB: (fingerprint, state).
fn stalled_alerts(state: &Path) -> Vec<(String, String)> {
    let conn = Connection::open_with_flags(
        state.join("stallwatch.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT fingerprint, state FROM alert WHERE rule = 'workflow_stalled'")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

/// Issue 14 item 6: with 5,000 stalled workflows only the 20 listed had alerts, and one
/// still stalled was "resolved" once a longer stall took its place on the list.
#[test]
fn thousands_of_stalled_workflows_are_one_alert_that_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dbos.sqlite");
    let conn = Connection::open(&db).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(crate::common::dbos_schema::SQLITE)
        .unwrap();
    pending_workflows(&conn, "wf", STALLED, 600);
    let state = dir.path().join("state");
    let sidecar = Sidecar::start_with(
        &state,
        &Launch {
            config: Some(format!(
                "[[source]]\nname = \"app\"\nkind = \"dbos\"\nurl = \"sqlite://{}\"\n\
                 poll = \"1s\"\nstall_after = \"1m\"\n\n\
                 [[rule]]\nrule = \"workflow_stalled\"\nresolve_after = \"0s\"\n",
                db.display()
            )),
            ..Launch::default()
        },
    );
    poll_until("the stalled workflows", FIRST_POLL, || {
        let status = sidecar.status();
        let n = status["sources"][0]["stalled_count"].as_u64();
        match (n, stalled_alerts(&state).len()) {
            (Some(n), 1..) if n as usize == STALLED => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Longer stalls appear: they lead the list now, and nothing still stalled resolves.
    pending_workflows(&conn, "older", STALLED_LATER, 1200);
    poll_until(
        "the longer stalls at the head of the list",
        FIRST_POLL,
        || {
            let status = sidecar.status();
            let source = &status["sources"][0];
            let first = source["stalled"][0]["workflow_id"].as_str().unwrap_or("");
            if first.starts_with("older-") {
                Ok(())
            } else {
                Err(source.to_string())
            }
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let alerts = stalled_alerts(&state);
    assert_eq!(
        alerts,
        [(
            "workflow_stalled{source=app}".to_string(),
            "firing".to_string()
        )],
        "one alert for the source, still firing"
    );
    let status = sidecar.status();
    let source = &status["sources"][0];
    assert!(
        source["stalled_count"].as_u64() >= Some(STALLED as u64),
        "every stalled workflow counted: {source}"
    );
    assert!(
        source["stalled"].as_array().map_or(0, Vec::len) <= 20,
        "the list stays bounded"
    );
}
