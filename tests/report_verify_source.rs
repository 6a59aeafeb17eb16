//! Issue 19 item 2, `verify --source` / `report --source`: the app's own history as
//! evidence, for an operator who installed stallwatch after the incident.
//!
//! Every history is generated relative to now: a unit of work an hour (a DBOS workflow of
//! three steps, a `digest_tasks` row created and claimed, a JSONL job of three events),
//! some with a 10-minute gap; the migration T is 20 days ago. At `--gap-min 60s`:
//!
//! - `dbos_history_*`, `queue_table_history_*`, `jsonl_history_*`: 12 gaps over the 30
//!   days before T and none in the 20 days after → FIXED, exit 0 (μ = 8, p = e^-8); 2
//!   gaps in a history that covers 5 days after T → NOT FIXED, exit 1 (μ = 2,
//!   P(X ≤ 2 | 2) = 0.68); a history that ends a day after T → NOT ENOUGH DATA, exit 3
//!   (μ = 0.4, e^-0.4 = 0.67). Each verdict names the evidence (gaps the app did not
//!   explain) and its p-value, and the coverage is the history's span in each window.
//! - `two_gaps_over_twenty_days_is_a_clearly_lower_rate`: 2 gaps over the full 20 days
//!   after → FIXED with reason rate_clearly_lower (p = P(X ≤ 2 | 8) = 0.0138), the same
//!   rule `verify` applies to freezes.
//! - `with_a_state_db_gaps_are_freezes_or_stalls`: the same DBOS history with a state
//!   DB whose sidecar watched the after window: a gap a recorded freeze covers is a
//!   freeze and counts, one it watched with no freeze is a stall and does not; both kinds
//!   of evidence are tested and the decisive one is named.
//! - `dbos_history_on_postgres_reads_the_same` (schema `dbos`, FIXED and NOT FIXED) and
//!   `digest_tasks_on_postgres_with_timestamptz_columns` (the digest worker's table).
//! - `config_names_a_source_with_its_own_layout`: `--config FILE --source NAME` reads a
//!   JSONL log with its own field names; the default names find no times (NOT ENOUGH DATA).
//! - `report_source_counts_gaps_by_window`; `bad_sources_are_one_sentence_and_exit_2`
//!   (missing file, directory, FIFO, a DB of neither kind, the lab-jobs preset without
//!   times, an unreachable Postgres, a missing state DB, a 3 MB JSONL line skipped).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pgdb::TestDb;
use common::{dbos_schema, run_to_exit, Finished};
use rusqlite::{params, Connection};
use serde_json::Value;
use stallwatch::clock::ClockReading;
use stallwatch::freeze::downtime::Heartbeat;
use stallwatch::freeze::{ChannelEstimate, FreezeEvent, FreezeKind};
use stallwatch::state::StateDb;
use tempfile::TempDir;

const S_MS: i64 = 1_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
const GAP_MS: i64 = 600_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A whole hour, so every time in the test is whole seconds.
fn hour_floor(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

fn at(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// One unit of work: a start, and whether its second step comes 10 minutes late.
#[derive(Debug, Clone, Copy)]
struct Job {
    start_ms: i64,
    gap: bool,
}

/// A job an hour from `from_ms` to `to_ms`, `gaps` of them spread evenly with a gap.
fn jobs(from_ms: i64, to_ms: i64, gaps: usize) -> Vec<Job> {
    let mut out: Vec<Job> = (0..)
        .map(|i| from_ms + i * HOUR_MS)
        .take_while(|t| *t < to_ms)
        .map(|start_ms| Job {
            start_ms,
            gap: false,
        })
        .collect();
    let n = out.len();
    for k in 0..gaps {
        out[(2 * k + 1) * n / (2 * gaps)].gap = true;
    }
    out
}

/// The three steps (name, start, end) of a job.
fn steps(j: &Job) -> [(&'static str, i64, i64); 3] {
    let s = j.start_ms;
    let late = if j.gap { GAP_MS } else { 0 };
    [
        ("fetch", s, s + 500),
        ("summarize", s + S_MS + late, s + S_MS + late + 500),
        ("send", s + 2 * S_MS + late, s + 2 * S_MS + late + 500),
    ]
}

/// History: T = 20 days ago; `before` jobs over the 30 days before T, `after` jobs over
/// `after_days` after T.
struct Scenario {
    t_ms: i64,
    jobs: Vec<Job>,
}

fn scenario(gaps_before: usize, after_days: i64, gaps_after: usize) -> Scenario {
    let t_ms = hour_floor(now_ms()) - 20 * DAY_MS;
    let mut all = jobs(t_ms - 30 * DAY_MS, t_ms, gaps_before);
    all.extend(jobs(t_ms, t_ms + after_days * DAY_MS, gaps_after));
    Scenario { t_ms, jobs: all }
}

fn dbos_sqlite(dir: &Path, s: &Scenario) -> PathBuf {
    let path = dir.join("dbos.sqlite");
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(dbos_schema::SQLITE).unwrap();
    let tx = conn.transaction().unwrap();
    for (i, j) in s.jobs.iter().enumerate() {
        let id = format!("wf-{i:05}");
        tx.execute(
            "INSERT INTO workflow_status (workflow_uuid, status, name, created_at, updated_at)
             VALUES (?1, 'SUCCESS', 'digest', ?2, ?2)",
            params![id, j.start_ms],
        )
        .unwrap();
        for (fid, (name, start, end)) in steps(j).into_iter().enumerate() {
            tx.execute(
                "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name,
                     started_at_epoch_ms, completed_at_epoch_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, fid as i64 + 1, name, start, end],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    path
}

/// The `digest-tasks` preset's table: created, then claimed 2 s later (or 10 min).
fn queue_sqlite(dir: &Path, s: &Scenario) -> PathBuf {
    let path = dir.join("tasks.sqlite");
    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE digest_tasks (id INTEGER PRIMARY KEY, status TEXT NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0, created_at REAL, claimed_at REAL);",
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    for j in &s.jobs {
        let claimed = steps(j)[2].1;
        tx.execute(
            "INSERT INTO digest_tasks (status, attempts, created_at, claimed_at)
             VALUES ('COMPLETED', 1, ?1, ?2)",
            params![j.start_ms as f64 / 1e3, claimed as f64 / 1e3],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    path
}

/// A JSON-lines log, one line per step end, in time order.
fn jsonl(dir: &Path, s: &Scenario) -> PathBuf {
    let mut lines: Vec<(i64, String)> = Vec::new();
    for (i, j) in s.jobs.iter().enumerate() {
        for (name, _, end) in steps(j) {
            lines.push((
                end,
                format!(
                    r#"{{"ts":{},"key":"job-{i}","event":"{name}"}}"#,
                    end as f64 / 1e3
                ),
            ));
        }
    }
    lines.sort();
    let path = dir.join("events.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for (_, l) in lines {
        writeln!(f, "{l}").unwrap();
    }
    path
}

#[track_caller]
fn verify(source: &Path, t_ms: i64, extra: &[&str]) -> (i32, Value) {
    verify_url(source.to_str().unwrap(), t_ms, extra)
}

#[track_caller]
fn verify_url(source: &str, t_ms: i64, extra: &[&str]) -> (i32, Value) {
    let mut args = vec![
        "verify".to_string(),
        "--source".into(),
        source.into(),
        "--migrated-at".into(),
        at(t_ms),
        "--format".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_to_exit(&args);
    let v: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.status.code().unwrap(), v)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The three verdicts of the issue on one kind of history.
fn three_verdicts(write: fn(&Path, &Scenario) -> PathBuf, kind: &str) {
    // 12 gaps before, none in 20 days after: FIXED.
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 20, 0);
    let (code, v) = verify(&write(dir.path(), &s), s.t_ms, &[]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(v["decided_by"], "unexplained_app_gaps", "{v:#}");
    let app = &v["app_history"];
    assert_eq!(app["kind"], kind, "{v:#}");
    let (before, after) = (&app["windows"][0], &app["windows"][1]);
    assert_eq!(
        (before["gaps"].as_u64(), after["gaps"].as_u64()),
        (Some(12), Some(0))
    );
    assert_eq!(before["unexplained"], 12);
    // Coverage: the history's span in each window (the first job starts 30 days before T;
    // the last ends a little under 20 days after it).
    let covered_before = f(&before["covered_seconds"]);
    assert!(
        (covered_before - 30.0 * 86_400.0).abs() < 1.0,
        "{covered_before}"
    );
    let covered_after = f(&after["covered_seconds"]);
    assert!(
        covered_after > 20.0 * 86_400.0 - 7_200.0 && covered_after < 20.0 * 86_400.0,
        "{covered_after}"
    );
    let e = &v["evidence"][0];
    let mu = 12.0 * covered_after / covered_before;
    assert!((f(&e["expected_after"]) - mu).abs() < 1e-6, "{e:#}");
    assert!((f(&e["p_value"]) - (-mu).exp()).abs() < 1e-9, "{e:#}");
    assert!(
        v["rests_on"]
            .as_str()
            .unwrap()
            .contains("gaps the app did not explain"),
        "{v:#}"
    );

    // 2 gaps in a history that covers 5 days after T: NOT FIXED.
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 5, 2);
    let (code, v) = verify(&write(dir.path(), &s), s.t_ms, &[]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (1, Some("NOT FIXED")),
        "{v:#}"
    );
    assert_eq!(v["app_history"]["windows"][1]["gaps"], 2, "{v:#}");
    let p = f(&v["evidence"][0]["p_value"]);
    assert!(p > 0.6 && p < 0.7, "P(X ≤ 2 | ~2) = {p}");

    // A history that ends a day after T: NOT ENOUGH DATA, and how long it must be.
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 1, 0);
    let (code, v) = verify(&write(dir.path(), &s), s.t_ms, &[]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (3, Some("NOT ENOUGH DATA")),
        "{v:#}"
    );
    assert_eq!(v["evidence"][0]["reason"], "quiet_too_short", "{v:#}");
    let needed = f(&v["evidence"][0]["needed_after_seconds"]);
    assert!(
        (needed - 20f64.ln() * 30.0 * 86_400.0 / 12.0).abs() < 1.0,
        "{needed}"
    );

    // Text: the verdict line names the evidence.
    let out = run_to_exit([
        "verify",
        "--source",
        write(TempDir::new().unwrap().path(), &scenario(12, 20, 0))
            .to_str()
            .unwrap(),
        "--migrated-at",
        &at(scenario(12, 20, 0).t_ms),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("verdict: FIXED — decided by gaps the app did not explain"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("coverage of the app's history"),
        "{}",
        out.stdout
    );
}

#[test]
fn dbos_history_fixed_not_fixed_not_enough_data() {
    three_verdicts(dbos_sqlite, "dbos");
}

#[test]
fn queue_table_history_fixed_not_fixed_not_enough_data() {
    three_verdicts(queue_sqlite, "queue_table");
}

#[test]
fn jsonl_history_fixed_not_fixed_not_enough_data() {
    three_verdicts(jsonl, "jsonl");
}

#[test]
fn two_gaps_over_twenty_days_is_a_clearly_lower_rate() {
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 20, 2);
    let (code, v) = verify(&dbos_sqlite(dir.path(), &s), s.t_ms, &[]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(v["evidence"][0]["reason"], "rate_clearly_lower", "{v:#}");
    let p = f(&v["evidence"][0]["p_value"]);
    assert!((p - 0.0138).abs() < 0.001, "{p}");
}

/// A state DB whose sidecar watched from `from_ms` to `to_ms`, with freezes.
fn state_db(dir: &Path, from_ms: i64, to_ms: i64, freezes: &[(i64, i64)]) {
    let db = StateDb::open(dir).unwrap();
    db.begin_session(from_ms * 1_000_000, None).unwrap();
    for (start_ms, secs) in freezes {
        let event = FreezeEvent {
            kind: FreezeKind::VmPause,
            started_at_ns: start_ms * 1_000_000,
            duration_ns: secs * 1_000_000_000,
            channels: vec![ChannelEstimate {
                channel: "rtc".into(),
                estimate_ns: secs * 1_000_000_000,
            }],
        };
        db.insert_event(&event, (start_ms + secs * 1_000) * 1_000_000)
            .unwrap();
    }
    db.write_heartbeat(&Heartbeat {
        clocks: ClockReading {
            mono_ns: 1,
            real_ns: to_ms * 1_000_000,
            boot_ns: 1,
        },
        boot_id: "boot".into(),
        clean: true,
    })
    .unwrap();
}

#[test]
fn with_a_state_db_gaps_are_freezes_or_stalls() {
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 20, 2);
    let source = dbos_sqlite(dir.path(), &s);
    let after_gaps: Vec<Job> = s
        .jobs
        .iter()
        .filter(|j| j.gap && j.start_ms >= s.t_ms)
        .copied()
        .collect();
    assert_eq!(after_gaps.len(), 2);
    // The sidecar was installed at T and watched to now; the first gap after T was a
    // recorded freeze, the second was not.
    let first_gap_ms = steps(&after_gaps[0])[0].2;
    let data = TempDir::new().unwrap();
    state_db(
        data.path(),
        s.t_ms,
        now_ms(),
        &[(first_gap_ms + 1_000, GAP_MS / 1_000)],
    );
    let (code, v) = verify(
        &source,
        s.t_ms,
        &["--data-dir", data.path().to_str().unwrap()],
    );
    let after = &v["app_history"]["windows"][1];
    assert_eq!(
        (
            after["freeze"].as_u64(),
            after["stall"].as_u64(),
            after["unexplained"].as_u64()
        ),
        (Some(1), Some(1), Some(0)),
        "{v:#}"
    );
    assert_eq!(after["counted"], 1, "{v:#}");
    // Before T nobody watched: all 12 are unexplained, and counted.
    assert_eq!(v["app_history"]["windows"][0]["unexplained"], 12, "{v:#}");
    let kinds: Vec<&str> = v["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["sidecar_freezes", "app_gaps"], "{v:#}");
    // The sidecar saw nothing before T: not enough data on its own.
    assert_eq!(v["evidence"][0]["verdict"], "NOT ENOUGH DATA", "{v:#}");
    // App gaps: 1 counted after over ~20 days where 8 were expected: FIXED, decided by it.
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(v["decided_by"], "app_gaps", "{v:#}");
    assert!(v["state_db"].as_str().is_some(), "{v:#}");
}

#[test]
fn report_source_counts_gaps_by_window() {
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 20, 2);
    let source = dbos_sqlite(dir.path(), &s);
    let out = run_to_exit([
        "report",
        "--source",
        source.to_str().unwrap(),
        "--since",
        &at(s.t_ms),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["windows"][0]["gaps"], 2, "{v:#}");
    assert_eq!(
        v["windows"][0]["longest"][0]["duration_seconds"], 600.5,
        "{v:#}"
    );
    assert_eq!(v["kind"], "dbos");
    let text = run_to_exit([
        "report",
        "--source",
        source.to_str().unwrap(),
        "--since",
        "30d",
    ]);
    assert!(text.status.success(), "{text:?}");
    assert!(
        text.stdout.contains("gaps the app did not explain")
            || text.stdout.contains("did not explain"),
        "{}",
        text.stdout
    );
}

#[track_caller]
fn assert_one_sentence_exit_2(out: &Finished, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:#?}");
    assert!(
        lines[0].starts_with("stallwatch: ") && lines[0].contains(needle),
        "{lines:?} lacks {needle:?}"
    );
}

#[test]
fn bad_sources_are_one_sentence_and_exit_2() {
    let dir = TempDir::new().unwrap();
    let v = |source: &str| run_to_exit(["verify", "--source", source, "--migrated-at", "1d"]);
    assert_one_sentence_exit_2(
        &v(dir.path().join("missing.sqlite").to_str().unwrap()),
        "does not exist",
    );
    assert_one_sentence_exit_2(&v(dir.path().to_str().unwrap()), "directory");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    assert_one_sentence_exit_2(&v(fifo.to_str().unwrap()), "FIFO");
    // A SQLite file with none of the known tables.
    let other = dir.path().join("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert_one_sentence_exit_2(&v(other.to_str().unwrap()), "neither DBOS");
    // The lab-jobs preset has no times to read.
    let lab = dir.path().join("lab.sqlite");
    Connection::open(&lab)
        .unwrap()
        .execute_batch("CREATE TABLE jobs (key TEXT PRIMARY KEY, payload TEXT, status TEXT, attempts INTEGER, result TEXT)")
        .unwrap();
    assert_one_sentence_exit_2(&v(lab.to_str().unwrap()), "no created and claimed");
    assert_one_sentence_exit_2(&v("postgres://nobody@127.0.0.1:1/none"), "127.0.0.1");
    // A state DB asked for and missing.
    let out = run_to_exit([
        "verify",
        "--source",
        other.to_str().unwrap(),
        "--migrated-at",
        "1d",
        "--data-dir",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A huge JSONL line is skipped and counted, not kept.
    let big = dir.path().join("big.jsonl");
    let mut file = std::fs::File::create(&big).unwrap();
    file.write_all(&vec![b'x'; 3 * 1024 * 1024]).unwrap();
    file.write_all(b"\n{\"ts\": 1700000000, \"key\": \"a\", \"event\": \"e\"}\n")
        .unwrap();
    drop(file);
    let out = run_to_exit([
        "verify",
        "--source",
        big.to_str().unwrap(),
        "--migrated-at",
        "1d",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (
            v["app_history"]["skipped"].as_u64(),
            v["app_history"]["records"].as_u64()
        ),
        (Some(1), Some(1)),
        "{v:#}"
    );
}

/// The scenario in schema `dbos` of a fresh Postgres database.
fn dbos_postgres(s: &Scenario) -> TestDb {
    let db = TestDb::create("verify_src");
    let mut c = db.client();
    c.batch_execute(dbos_schema::POSTGRES).unwrap();
    let mut tx = c.transaction().unwrap();
    for (i, j) in s.jobs.iter().enumerate() {
        let id = format!("wf-{i:05}");
        for (fid, (name, start, end)) in steps(j).into_iter().enumerate() {
            tx.execute(
                "INSERT INTO dbos.operation_outputs (workflow_uuid, function_id, function_name,
                     started_at_epoch_ms, completed_at_epoch_ms) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &(fid as i32 + 1), &name, &start, &end],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    db
}

#[test]
fn dbos_history_on_postgres_reads_the_same() {
    let s = scenario(12, 20, 0);
    let db = dbos_postgres(&s);
    let (code, v) = verify_url(&db.url(), s.t_ms, &[]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(
        (
            v["app_history"]["kind"].as_str(),
            v["app_history"]["backend"].as_str()
        ),
        (Some("dbos"), Some("postgres"))
    );
    let s = scenario(12, 5, 2);
    let db = dbos_postgres(&s);
    let (code, v) = verify_url(&db.url(), s.t_ms, &[]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (1, Some("NOT FIXED")),
        "{v:#}"
    );
}

#[test]
fn digest_tasks_on_postgres_with_timestamptz_columns() {
    // The digest worker of docs/design.md (case 3): Postgres, claimed_at a timestamptz.
    let s = scenario(12, 20, 0);
    let db = TestDb::create("verify_digest");
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE digest_tasks (id BIGSERIAL PRIMARY KEY, status TEXT NOT NULL,
             attempts INT NOT NULL DEFAULT 0, created_at TIMESTAMPTZ, claimed_at TIMESTAMPTZ)",
    )
    .unwrap();
    let mut tx = c.transaction().unwrap();
    for j in &s.jobs {
        let claimed = steps(j)[2].1;
        tx.execute(
            "INSERT INTO digest_tasks (status, attempts, created_at, claimed_at)
             VALUES ('COMPLETED', 1, to_timestamp($1::float8), to_timestamp($2::float8))",
            &[&(j.start_ms as f64 / 1e3), &(claimed as f64 / 1e3)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let (code, v) = verify_url(&db.url(), s.t_ms, &[]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(v["app_history"]["windows"][0]["gaps"], 12, "{v:#}");
    assert_eq!(v["app_history"]["table"], "digest_tasks", "{v:#}");
}

#[test]
fn config_names_a_source_with_its_own_layout() {
    // A JSONL log with its own field names, named by its [[source]] in a config file.
    let dir = TempDir::new().unwrap();
    let s = scenario(12, 20, 0);
    let log = jsonl(dir.path(), &s);
    let text = std::fs::read_to_string(&log)
        .unwrap()
        .replace("\"ts\"", "\"time\"")
        .replace("\"key\"", "\"job\"");
    std::fs::write(&log, text).unwrap();
    let config = dir.path().join("stallwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"agent\"\nkind = \"jsonl\"\nurl = \"{}\"\ntime_field = \"time\"\nkey_field = \"job\"\n",
            log.display()
        ),
    )
    .unwrap();
    let (code, v) = verify_url("agent", s.t_ms, &["--config", config.to_str().unwrap()]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("FIXED")), "{v:#}");
    assert_eq!(v["app_history"]["windows"][0]["gaps"], 12, "{v:#}");
    // Without the layout, the default field names find no times: nothing to go on.
    let (code, v) = verify(&log, s.t_ms, &[]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (3, Some("NOT ENOUGH DATA")),
        "{v:#}"
    );
    assert!(v["app_history"]["skipped"].as_u64().unwrap() > 0, "{v:#}");
    let out = run_to_exit([
        "verify",
        "--source",
        "nosuch",
        "--config",
        config.to_str().unwrap(),
        "--migrated-at",
        "1d",
    ]);
    assert_one_sentence_exit_2(&out, "names no [[source]]");
}
