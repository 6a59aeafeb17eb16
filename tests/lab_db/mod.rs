//! Fixtures for the job-source tests: SQLite files with the `lab-jobs` schema (issue 4),
//! written with rusqlite the way the job agent writes them, the `[[source]]` config that
//! watches them, and the `/metrics` series the tests read.
//!
//! The schema is the real one: `jobs(key TEXT PRIMARY KEY, payload, status TEXT, attempts
//! INTEGER, result)` with an index on `status`, and `dead_letter(key, payload, error, died
//! REAL)` with `died` in unix seconds.

// Each test binary uses its own part of the fixtures.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

use crate::common::{poll_until, Launch, Metrics, Sidecar};

/// Poll interval of every source under test: many polls per second of test time.
pub const POLL: &str = "300ms";
/// How long a change in a source may take to show in `/metrics`: one 300 ms poll plus a
/// 500 ms busy timeout, stretched for a loaded 2-core machine.
pub const SEEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for several polls to pass, to show a value stays put (no double counting).
pub const SEVERAL_POLLS: Duration = Duration::from_secs(2);

/// The `lab-jobs` schema as the job agent creates it.
pub const SCHEMA: &str = "
    CREATE TABLE jobs (key TEXT PRIMARY KEY, payload, status TEXT, attempts INTEGER, result);
    CREATE INDEX jobs_status ON jobs (status);
    CREATE TABLE dead_letter (key, payload, error, died REAL);
";

/// How the app database journals, and the name SQLite reports for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    Wal,
    Rollback,
}

impl Journal {
    /// What `PRAGMA journal_mode` reports, and so `stallwatch_source_info{journal_mode}`.
    pub fn reported(self) -> &'static str {
        match self {
            Journal::Wal => "wal",
            Journal::Rollback => "delete",
        }
    }
}

/// Wall clock as unix seconds (the `died` column's unit).
pub fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Opens (creating) `path` as the app would, in `journal` mode, with the schema.
pub fn create(path: &Path, journal: Journal) -> Connection {
    let conn = Connection::open(path).expect("creating the app database");
    let mode: String = conn
        .query_row(
            &format!("PRAGMA journal_mode = {}", journal.reported()),
            [],
            |r| r.get(0),
        )
        .expect("setting the journal mode");
    assert_eq!(
        mode,
        journal.reported(),
        "journal mode of {}",
        path.display()
    );
    conn.execute_batch(SCHEMA).expect("creating the schema");
    conn
}

/// Adds a job.
pub fn insert_job(conn: &Connection, key: &str, status: &str, attempts: i64) {
    conn.execute(
        "INSERT INTO jobs (key, payload, status, attempts, result) VALUES (?1, ?2, ?3, ?4, NULL)",
        params![
            key,
            format!("{{\"url\":\"https://example.org/{key}\"}}"),
            status,
            attempts
        ],
    )
    .expect("inserting a job");
}

/// Adds a dead letter that died at `died` (unix seconds).
pub fn insert_dead_letter(conn: &Connection, key: &str, died: f64) {
    conn.execute(
        "INSERT INTO dead_letter (key, payload, error, died) VALUES (?1, '{}', 'gave up after 4 attempts', ?2)",
        params![key, died],
    )
    .expect("inserting a dead letter");
}

/// A small healthy queue: what [`HEALTHY_PENDING`] and [`HEALTHY_RETRIES`] describe.
pub fn create_healthy(path: &Path, journal: Journal) -> Connection {
    let conn = create(path, journal);
    let tx = conn.unchecked_transaction().expect("transaction");
    for i in 0..HEALTHY_PENDING {
        insert_job(&tx, &format!("healthy-{i}"), "pending", i64::from(i % 2));
    }
    for i in 0..4 {
        insert_job(&tx, &format!("healthy-done-{i}"), "done", 1);
    }
    insert_dead_letter(&tx, "healthy-dead", now_unix_s() - 60.0);
    tx.commit().expect("commit");
    conn
}

/// Pending jobs in [`create_healthy`]'s queue.
pub const HEALTHY_PENDING: u32 = 5;

/// A `[[source]]` table watching `path` with the `lab-jobs` preset.
pub fn lab_source(name: &str, path: &Path) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\nkind = \"queue_table\"\nurl = \"sqlite://{}\"\npreset = \"lab-jobs\"\npoll = \"{POLL}\"\n\n",
        path.display()
    )
}

/// Starts a sidecar whose config is `sources` (concatenated `[[source]]` tables).
pub fn start(dir: &Path, sources: &str) -> Sidecar {
    Sidecar::start_with(
        &dir.join("data"),
        &Launch {
            config: Some(sources.to_string()),
            env: Vec::new(),
        },
    )
}

// ---- series ----------------------------------------------------------------------------

pub fn up(source: &str) -> String {
    format!("stallwatch_source_up{{source=\"{source}\"}}")
}

pub fn errors(source: &str, kind: &str) -> String {
    format!("stallwatch_source_errors_total{{kind=\"{kind}\",source=\"{source}\"}}")
}

pub fn depth(source: &str, status: &str) -> String {
    format!("stallwatch_queue_depth{{queue=\"\",source=\"{source}\",status=\"{status}\"}}")
}

pub fn dead_letters(source: &str) -> String {
    format!("stallwatch_dead_letters{{queue=\"\",source=\"{source}\"}}")
}

pub fn dead_letters_total(source: &str) -> String {
    format!("stallwatch_dead_letters_total{{queue=\"\",source=\"{source}\"}}")
}

pub fn retries_total(source: &str) -> String {
    format!("stallwatch_job_retries_total{{queue=\"\",source=\"{source}\"}}")
}

pub fn info(source: &str, journal: Journal) -> String {
    format!(
        "stallwatch_source_info{{journal_mode=\"{}\",kind=\"queue_table\",source=\"{source}\"}}",
        journal.reported()
    )
}

/// The value of `series`, or "absent" for a probe's report.
pub fn shown(m: &Metrics, series: &str) -> String {
    m.value(series)
        .map_or_else(|| format!("{series} absent"), |v| format!("{series} {v}"))
}

/// Waits until every `(series, value)` holds in one scrape, and returns that scrape.
#[track_caller]
pub fn wait_metrics(sidecar: &Sidecar, what: &str, expected: &[(String, f64)]) -> Metrics {
    poll_until(what, SEEN_TIMEOUT, || {
        let m = sidecar.metrics();
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(s, v)| m.value(s) != Some(*v))
            .map(|(s, v)| format!("{} (want {v})", shown(&m, s)))
            .collect();
        if wrong.is_empty() {
            Ok(m)
        } else {
            Err(wrong.join("; "))
        }
    })
}

/// The healthy source is up and reads its exact depth.
pub fn healthy_ok(name: &str) -> Vec<(String, f64)> {
    vec![
        (up(name), 1.0),
        (depth(name, "pending"), f64::from(HEALTHY_PENDING)),
    ]
}
