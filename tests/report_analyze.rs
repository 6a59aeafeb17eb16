//! Issue 8, `stallwatch analyze`: every step gap and wait overrun in a DBOS system
//! database's history, with no stallwatch history at all.
//!
//! - `incident_shape_on_sqlite_names_the_107_minute_gap_first`: a generated SQLite DB in
//!   the DBOS 3.4 schema holding the incident (`parse_email` done at 15:11:15, a 60 s
//!   `DBOS.recv` debounce with its `DBOS.sleep` placeholder, `generate_reply` at
//!   16:59:28) among ordinary workflows, a 2 h `DBOS.sleep`, a 45 s gap, a 3 min gap and
//!   a 10 min wait overrun on the next day. The incident's 6432.990 s gap is listed first,
//!   exactly; the waits are not gaps; per-day counts, longest and quantiles are exact; the
//!   threshold moves what is counted; the file is not modified.
//! - `incident_shape_on_postgres_reads_the_same`: the same rows in schema `dbos` of a fresh
//!   Postgres database give the same gaps.
//! - `keyset_batches_lose_and_repeat_no_row`: 25,000 rows in 250 runs of 100 rows that
//!   share one completion millisecond (ties across batch edges) are read exactly once each.
//! - `a_long_gap_among_more_workflows_than_the_tracker_holds_is_found`: 12,000 workflows
//!   (the gap tracker holds 10,000) pass during one workflow's 107-minute gap; it is found
//!   and no workflow is evicted.
//! - `not_a_dbos_database_is_one_sentence_and_exit_2`: a SQLite DB without
//!   `operation_outputs`, a file that is not SQLite, a missing file, a Postgres database
//!   without schema `dbos`, a bad --gap-min: one line on stderr, exit 2, no panic.
//! - `real_dbos_app_stopped_between_steps_is_one_gap`: a real DBOS app (PyPI `dbos`,
//!   `tests/dbos/app.py` in mode `reply`, in the venv `scripts/dbos-venv.sh` makes)
//!   SIGSTOPped for 5 s between `generate` and `send`: `--gap-min 3s` finds that one gap,
//!   as long as the stop, and `--gap-min 1s` still finds only it (the 2 s recv waits are
//!   not gaps).
//!
//! Nothing is skipped: without Postgres on 127.0.0.1:5432 or the DBOS venv the tests that
//! need them fail, saying what is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::dbos::{App, Hold, Journal, Mode, SystemDb};
use common::dbos_schema;
use common::pgdb::TestDb;
use common::{run_to_exit, Finished};
use rusqlite::{params, Connection};
use serde_json::Value;
use tempfile::TempDir;

/// 2025-11-20T15:11:15.000Z: the incident's `parse_email` completes.
const PARSE_DONE_MS: i64 = 1_763_651_475_000;
const MIN_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// 2025-11-21T00:00:00Z.
const DAY2_MS: i64 = 1_763_683_200_000;
/// The incident's gap: 16:59:28.000 − 15:12:15.010 (the end of the debounce).
const INCIDENT_GAP_SECONDS: f64 = 6_432.990;

/// `operation_outputs` and `workflow_status` as DBOS 3.4 creates them on SQLite (the
/// columns analyze does not read are kept, so the schema is the real one).
const DBOS_SQLITE_SCHEMA: &str = "
CREATE TABLE workflow_status (
    workflow_uuid TEXT PRIMARY KEY, status TEXT, name TEXT, authenticated_user TEXT,
    assumed_role TEXT, authenticated_roles TEXT, request TEXT, output TEXT, error TEXT,
    executor_id TEXT, created_at INTEGER NOT NULL DEFAULT (strftime('%s','now') * 1000),
    updated_at INTEGER NOT NULL DEFAULT (strftime('%s','now') * 1000),
    application_version TEXT, application_id TEXT, class_name TEXT DEFAULT NULL,
    config_name TEXT DEFAULT NULL, recovery_attempts INTEGER DEFAULT 0, queue_name TEXT,
    workflow_timeout_ms INTEGER, workflow_deadline_epoch_ms INTEGER, inputs TEXT,
    started_at_epoch_ms INTEGER, deduplication_id TEXT, priority INTEGER NOT NULL DEFAULT 0);
CREATE INDEX workflow_status_created_at_index ON workflow_status (created_at);
CREATE TABLE operation_outputs (
    workflow_uuid TEXT NOT NULL, function_id INTEGER NOT NULL,
    function_name TEXT NOT NULL DEFAULT '', output TEXT, error TEXT, child_workflow_id TEXT,
    started_at_epoch_ms INTEGER, completed_at_epoch_ms INTEGER, serialization TEXT,
    application_name TEXT DEFAULT NULL,
    retention_timestamp INTEGER NOT NULL DEFAULT (strftime('%s','now') * 1000),
    PRIMARY KEY (workflow_uuid, function_id));
CREATE INDEX idx_operation_outputs_completed_at_function_name_v2
    ON operation_outputs (completed_at_epoch_ms, function_name, application_name);
";

/// One `operation_outputs` row.
#[derive(Debug, Clone)]
struct Op {
    workflow: String,
    function_id: i64,
    name: &'static str,
    started_ms: i64,
    completed_ms: i64,
    output: Option<String>,
}

fn op(
    workflow: &str,
    function_id: i64,
    name: &'static str,
    started_ms: i64,
    completed_ms: i64,
) -> Op {
    Op {
        workflow: workflow.into(),
        function_id,
        name,
        started_ms,
        completed_ms,
        output: None,
    }
}

/// A `DBOS.recv` of `timeout_ms` starting at `at_ms` as DBOS 3.4 writes it: the recv at
/// `fid`, written at its end (`ends_ms`), and the `DBOS.sleep` placeholder at `fid + 1`,
/// written 2 ms in, whose output is the deadline in epoch seconds.
fn recv(workflow: &str, fid: i64, at_ms: i64, timeout_ms: i64, ends_ms: i64) -> [Op; 2] {
    let placeholder_ms = at_ms + 2;
    let deadline_ms = placeholder_ms + timeout_ms;
    [
        op(workflow, fid, "DBOS.recv", at_ms, ends_ms),
        Op {
            output: Some(format!("{}.{:03}", deadline_ms / 1000, deadline_ms % 1000)),
            ..op(
                workflow,
                fid + 1,
                "DBOS.sleep",
                placeholder_ms,
                placeholder_ms + 1,
            )
        },
    ]
}

/// The incident's history among ordinary workflows: (operation rows, workflows).
fn incident_history() -> (Vec<Op>, Vec<(String, &'static str)>) {
    let mut ops = Vec::new();
    let mut workflows = Vec::new();
    let p = PARSE_DONE_MS;
    // The incident: parse_email, a 60 s debounce (ends 15:12:15.010, the deadline was
    // .006), then nothing until generate_reply at 16:59:28.
    let wf = "3f1c2a9e-incident";
    workflows.push((wf.to_string(), "reply_to_email"));
    ops.push(op(wf, 1, "parse_email", p - 200, p));
    ops.extend(recv(wf, 2, p + 4, 60_000, p + 60_010));
    let generate = p + 6_493_000; // 16:59:28.000
    ops.push(op(wf, 4, "generate_reply", generate, generate + 3_500));
    ops.push(op(wf, 5, "send_reply", generate + 3_503, generate + 4_000));
    // Ordinary workflows all day: fetch, summarize, send, gaps of 100-300 ms.
    for i in 0..40 {
        let wf = format!("bg-{i:03}");
        workflows.push((wf.clone(), "digest"));
        let t = p - 5 * HOUR_MS + i * 17 * MIN_MS;
        ops.push(op(&wf, 1, "fetch", t, t + 900));
        ops.push(op(
            &wf,
            2,
            "summarize",
            t + 1_000 + (i % 3) * 100,
            t + 1_600 + (i % 3) * 100,
        ));
        ops.push(op(&wf, 3, "send", t + 1_900, t + 2_000));
    }
    // A two-hour DBOS.sleep: an intended wait (completed_at is the planned wake).
    let wf = "sleepy";
    workflows.push((wf.to_string(), "nightly"));
    let t = p - 2 * HOUR_MS;
    ops.push(op(wf, 1, "fetch", t - 500, t));
    ops.push(Op {
        output: Some(format!(
            "{}.{:03}",
            (t + 5 + 2 * HOUR_MS) / 1000,
            (t + 5) % 1000
        )),
        ..op(wf, 2, "DBOS.sleep", t + 5, t + 5 + 2 * HOUR_MS)
    });
    ops.push(op(
        wf,
        3,
        "summarize",
        t + 2 * HOUR_MS + 15,
        t + 2 * HOUR_MS + 400,
    ));
    // A 45 s gap between steps: below a 60 s threshold, above 30 s.
    let wf = "slow-45";
    workflows.push((wf.to_string(), "digest"));
    let t = p + 30 * MIN_MS;
    ops.push(op(wf, 1, "fetch", t - 300, t));
    ops.push(op(wf, 2, "summarize", t + 45_000, t + 45_500));
    // The next day: a 10-minute wait overrun (recv deadline 09:01:00.000, ended 09:11:00.000)
    // and a 3-minute gap between steps.
    let wf = "overrun-day2";
    workflows.push((wf.to_string(), "reply_to_email"));
    let t = DAY2_MS + 9 * HOUR_MS - 2;
    ops.push(op(wf, 1, "parse_email", t - 300, t - 100));
    ops.extend(recv(wf, 2, t, 60_000, t + 2 + 60_000 + 600_000));
    ops.push(op(wf, 4, "generate_reply", t + 660_010, t + 662_000));
    let wf = "gap-day2";
    workflows.push((wf.to_string(), "digest"));
    let t = DAY2_MS + 12 * HOUR_MS;
    ops.push(op(wf, 1, "fetch", t - 500, t));
    ops.push(op(wf, 2, "summarize", t + 180_000, t + 181_000));
    (ops, workflows)
}

fn sqlite_db(dir: &Path, ops: &[Op], workflows: &[(String, &str)]) -> PathBuf {
    let path = dir.join("dbos.sqlite");
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(DBOS_SQLITE_SCHEMA).unwrap();
    let tx = conn.transaction().unwrap();
    for (id, name) in workflows {
        tx.execute(
            "INSERT INTO workflow_status (workflow_uuid, status, name, created_at, updated_at)
             VALUES (?1, 'SUCCESS', ?2, 0, 0)",
            params![id, name],
        )
        .unwrap();
    }
    for o in ops {
        tx.execute(
            "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name, output,
                 started_at_epoch_ms, completed_at_epoch_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                o.workflow,
                o.function_id,
                o.name,
                o.output,
                o.started_ms,
                o.completed_ms
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    path
}

#[track_caller]
fn analyze(source: &str, gap_min: &str) -> Value {
    let out = run_to_exit([
        "analyze",
        "--source",
        source,
        "--gap-min",
        gap_min,
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "analyze failed: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// (kind, workflow, from, to, seconds) of the listed gaps, longest first.
fn listed(v: &Value) -> Vec<(String, String, String, String, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["kind"].as_str().unwrap().to_string(),
                g["workflow_id"].as_str().unwrap().to_string(),
                g["from_step"].as_str().unwrap().to_string(),
                g["to_step"].as_str().unwrap().to_string(),
                f(&g["duration_seconds"]),
            )
        })
        .collect()
}

#[track_caller]
fn assert_seconds(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() < 1e-6, "{what}: {got} s, want {want} s");
}

/// What the incident history must give at --gap-min 60s, whatever the backend.
fn assert_incident_analysis(v: &Value, rows: usize) {
    assert_eq!(v["rows"], rows as u64);
    assert_eq!(v["workflows_evicted"], 0);
    assert_eq!(
        (v["step_gaps"].as_u64(), v["wait_overruns"].as_u64()),
        (Some(2), Some(1)),
        "{v:#}"
    );
    let longest = listed(&v["longest"]);
    let order: Vec<(&str, &str, &str, &str)> = longest
        .iter()
        .map(|(k, w, a, b, _)| (k.as_str(), w.as_str(), a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        order,
        vec![
            (
                "step_gap",
                "3f1c2a9e-incident",
                "DBOS.recv",
                "generate_reply"
            ),
            ("wait_overrun", "overrun-day2", "DBOS.recv", "DBOS.recv"),
            ("step_gap", "gap-day2", "fetch", "summarize"),
        ]
    );
    assert_seconds("incident gap", longest[0].4, INCIDENT_GAP_SECONDS);
    assert_seconds("overrun", longest[1].4, 600.0);
    assert_seconds("day-2 gap", longest[2].4, 180.0);
    let first = &v["longest"][0];
    assert_eq!(first["workflow_name"], "reply_to_email");
    assert_eq!(first["started_at"], "2025-11-20T15:12:15.010Z");
    assert_eq!(first["ended_at"], "2025-11-20T16:59:28.000Z");

    let days = v["days"].as_array().unwrap();
    let labels: Vec<&str> = days.iter().map(|d| d["day"].as_str().unwrap()).collect();
    assert_eq!(labels, vec!["2025-11-20", "2025-11-21"]);
    let d1 = &days[0]["step_gaps"];
    assert_eq!(d1["count"], 1);
    for q in ["longest_seconds", "p50_seconds", "p99_seconds"] {
        assert_seconds(q, f(&d1[q]), INCIDENT_GAP_SECONDS);
    }
    assert_eq!(days[0]["wait_overruns"]["count"], 0);
    let d2 = &days[1];
    assert_eq!(
        (
            d2["step_gaps"]["count"].as_u64(),
            d2["wait_overruns"]["count"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_seconds(
        "day 2 overrun p99",
        f(&d2["wait_overruns"]["p99_seconds"]),
        600.0,
    );
    let d2_ids: Vec<String> = listed(&d2["longest"]).into_iter().map(|g| g.1).collect();
    assert_eq!(
        d2_ids,
        vec!["overrun-day2", "gap-day2"],
        "per day, longest first"
    );
}

#[test]
fn incident_shape_on_sqlite_names_the_107_minute_gap_first() {
    let dir = TempDir::new().unwrap();
    let (ops, workflows) = incident_history();
    let db = sqlite_db(dir.path(), &ops, &workflows);
    let before = std::fs::read(&db).unwrap();
    let url = format!("sqlite://{}", db.display());

    let v = analyze(&url, "60s");
    assert_incident_analysis(&v, ops.len());
    assert_eq!(
        (v["backend"].as_str(), v["journal_mode"].as_str()),
        (Some("sqlite"), Some("wal"))
    );
    assert_eq!(v["first_row_at"], "2025-11-20T10:11:15.000Z");

    // The threshold is inclusive and moves what is counted: the 45 s gap at 30 s and 45 s.
    for gap_min in ["30s", "45s"] {
        let v = analyze(db.to_str().unwrap(), gap_min);
        assert_eq!(v["step_gaps"], 3, "--gap-min {gap_min}");
    }
    assert_eq!(analyze(db.to_str().unwrap(), "46s")["step_gaps"], 2);
    // At no threshold at all, the two-hour sleep and the 60 s debounce are still no gap:
    // nothing but the incident is longer than the 10-minute overrun.
    let all = analyze(db.to_str().unwrap(), "0s");
    let longest = listed(&all["longest"]);
    assert!(longest.iter().skip(2).all(|g| g.4 <= 180.0), "{longest:#?}");
    assert!(
        !longest.iter().any(|g| g.1 == "sleepy" && g.4 > 1.0),
        "{longest:#?}"
    );

    // Text: the incident is the first gap named, with its workflow.
    let out = run_to_exit(["analyze", "--source", &url]);
    assert!(out.status.success(), "{out:?}");
    let first = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1."))
        .unwrap_or_else(|| panic!("no ranked gap:\n{}", out.stdout));
    assert!(
        first.contains("1h 47m 13s")
            && first.contains("3f1c2a9e-incident (reply_to_email)")
            && first.contains("DBOS.recv → generate_reply"),
        "{first}\n{}",
        out.stdout
    );
    eprintln!("{}", out.stdout);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "analyze must not modify the app DB"
    );
}

// ---- Postgres -----------------------------------------------------------------------

#[test]
fn incident_shape_on_postgres_reads_the_same() {
    let db = TestDb::create("incident");
    let (ops, workflows) = incident_history();
    let mut c = db.client();
    c.batch_execute(dbos_schema::POSTGRES).unwrap();
    let mut tx = c.transaction().unwrap();
    for (id, name) in &workflows {
        tx.execute(
            "INSERT INTO dbos.workflow_status (workflow_uuid, status, name, created_at, updated_at)
             VALUES ($1, 'SUCCESS', $2, 0, 0)",
            &[id, name],
        )
        .unwrap();
    }
    for o in &ops {
        tx.execute(
            "INSERT INTO dbos.operation_outputs (workflow_uuid, function_id, function_name, output,
                 started_at_epoch_ms, completed_at_epoch_ms) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &o.workflow,
                &(o.function_id as i32),
                &o.name,
                &o.output,
                &o.started_ms,
                &o.completed_ms,
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();

    let v = analyze(&db.url(), "60s");
    assert_eq!(
        (v["backend"].as_str(), v["journal_mode"].as_str()),
        (Some("postgres"), None)
    );
    assert_incident_analysis(&v, ops.len());
    // The password-free URL is shown as given, minus the query.
    assert!(
        v["source"].as_str().unwrap().ends_with(&db.name),
        "{}",
        v["source"]
    );
}

#[test]
fn keyset_batches_lose_and_repeat_no_row() {
    let dir = TempDir::new().unwrap();
    // 250 workflows of 100 steps, 1 s apart; step i of every workflow completes in the same
    // millisecond, so each of the 100 completion times is shared by 250 rows and batch
    // edges (every 10,000 rows) fall inside ties. Workflow 137 waits 2 min before step 60.
    let mut ops = Vec::new();
    let base = PARSE_DONE_MS;
    for w in 0..250 {
        let wf = format!("wf-{w:03}");
        for step in 0..100i64 {
            let mut done = base + step * 1_000;
            if w == 137 && step >= 60 {
                done += 120_000;
            }
            ops.push(op(&wf, step + 1, "work", done - 200, done));
        }
    }
    let workflows: Vec<(String, &str)> =
        (0..250).map(|w| (format!("wf-{w:03}"), "batch")).collect();
    let path = sqlite_db(dir.path(), &ops, &workflows);
    let v = analyze(path.to_str().unwrap(), "60s");
    assert_eq!(v["rows"], 25_000);
    assert_eq!(v["batches"], 3);
    assert_eq!(v["workflows_evicted"], 0);
    let longest = listed(&v["longest"]);
    assert_eq!(longest.len(), 1, "{longest:#?}");
    assert_eq!(longest[0].1, "wf-137");
    assert_seconds("gap", longest[0].4, 120.8);
    // Every row once: 99 gaps per workflow at a zero threshold (a repeated row would add
    // a gap, a lost one remove one).
    let all = analyze(path.to_str().unwrap(), "0s");
    assert_eq!(all["step_gaps"], 250 * 99);
}

#[test]
fn a_long_gap_among_more_workflows_than_the_tracker_holds_is_found() {
    // 12,000 short workflows (more than the gap tracker's 10,000) run while one workflow
    // waits 107 minutes between its steps. Each workflow's row count comes with its
    // function 1 row, so finished ones are forgotten and the stalled one is kept.
    let dir = TempDir::new().unwrap();
    let base = PARSE_DONE_MS;
    let mut ops = vec![op("stalled", 1, "parse_email", base - 100, base)];
    let mut workflows = vec![("stalled".to_string(), "reply_to_email")];
    for w in 0..12_000i64 {
        let wf = format!("short-{w:05}");
        let t = base + 1_000 + w * 500;
        ops.push(op(&wf, 1, "fetch", t, t + 100));
        ops.push(op(&wf, 2, "send", t + 150, t + 200));
        workflows.push((wf, "digest"));
    }
    let resume = base + 107 * MIN_MS;
    ops.push(op("stalled", 2, "generate_reply", resume, resume + 1_000));
    let path = sqlite_db(dir.path(), &ops, &workflows);
    let v = analyze(path.to_str().unwrap(), "60s");
    assert_eq!(
        (v["rows"].as_u64(), v["workflows_evicted"].as_u64()),
        (Some(24_002), Some(0)),
        "{v:#}"
    );
    let longest = listed(&v["longest"]);
    assert_eq!(longest.len(), 1, "{longest:#?}");
    assert_eq!(
        (longest[0].1.as_str(), longest[0].2.as_str()),
        ("stalled", "parse_email")
    );
    assert_seconds("gap", longest[0].4, 107.0 * 60.0);
}

// ---- bad input ----------------------------------------------------------------------

#[track_caller]
fn assert_one_sentence_exit_2(out: &Finished, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line on stderr: {lines:#?}");
    assert!(
        lines[0].starts_with("stallwatch: ") && lines[0].contains(needle),
        "{lines:?} lacks {needle:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn not_a_dbos_database_is_one_sentence_and_exit_2() {
    let dir = TempDir::new().unwrap();
    let other = dir.path().join("jobs.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE jobs (key TEXT PRIMARY KEY, status TEXT);")
        .unwrap();
    let out = run_to_exit([
        "analyze",
        "--source",
        &format!("sqlite://{}", other.display()),
    ]);
    assert_one_sentence_exit_2(
        &out,
        "is not a DBOS system database: it has no operation_outputs table",
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, it is a text file of some length\n".repeat(100),
    )
    .unwrap();
    let out = run_to_exit(["analyze", "--source", text.to_str().unwrap()]);
    assert_one_sentence_exit_2(&out, "is not a SQLite database");

    let missing = dir.path().join("missing.sqlite");
    let out = run_to_exit(["analyze", "--source", missing.to_str().unwrap()]);
    assert_one_sentence_exit_2(&out, "does not exist");
    assert!(!missing.exists(), "analyze must not create the file");

    let out = run_to_exit(["analyze", "--source", "mysql://h/db"]);
    assert_one_sentence_exit_2(&out, "unknown scheme");

    let pg = TestDb::create("empty");
    let out = run_to_exit(["analyze", "--source", &pg.url()]);
    assert_one_sentence_exit_2(&out, "is not a DBOS system database");

    // Usage errors are exit 2 too, in the same words as config errors.
    let out = run_to_exit([
        "analyze",
        "--source",
        other.to_str().unwrap(),
        "--format",
        "html",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr == "stallwatch: --format must be one of text, json, not \"html\"\n",
        "{out:?}"
    );
    let out = run_to_exit([
        "analyze",
        "--source",
        other.to_str().unwrap(),
        "--gap-min",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--gap-min"), "{out:?}");
}

// ---- real DBOS ----------------------------------------------------------------------

/// How long the app is stopped between `generate` and `send`.
const STOP: Duration = Duration::from_secs(5);
/// What DBOS's own timestamps may add to the stop: the step starts within milliseconds
/// of the resume, and the stop itself is measured from this process.
const STOP_TOLERANCE_SECONDS: f64 = 0.5;

#[test]
fn real_dbos_app_stopped_between_steps_is_one_gap() {
    let dir = TempDir::new().unwrap();
    let db = dir.path().join("dbos.sqlite");
    let mut app = App::start(Mode::Reply, SystemDb::Sqlite(&db, Journal::Wal), dir.path());
    // Two ordinary runs: each has a 2 s recv wait that must not count as a gap.
    for label in ["plain1", "plain2"] {
        app.start_workflow(label, Hold::No);
        app.expect_phase("done", label);
    }
    let workflow_id = app.start_workflow("stopped", Hold::AfterGenerate);
    app.expect_phase("generate-done", "stopped");
    let pid = app.pid();
    common::signal(pid, libc::SIGSTOP);
    let t0 = Instant::now();
    common::wait_stopped("the app", pid);
    app.command("go stopped"); // read the moment it runs again
    std::thread::sleep(STOP.saturating_sub(t0.elapsed()));
    common::signal(pid, libc::SIGCONT);
    let stopped = t0.elapsed().as_secs_f64();
    app.expect_phase("done", "stopped");
    app.quit();

    let source = format!("sqlite://{}", db.display());
    for gap_min in ["3s", "1s"] {
        let v = analyze(&source, gap_min);
        let longest = listed(&v["longest"]);
        eprintln!("--gap-min {gap_min}: stopped {stopped:.3} s; found {longest:?}");
        assert_eq!(
            (v["step_gaps"].as_u64(), v["wait_overruns"].as_u64()),
            (Some(1), Some(0)),
            "{v:#}"
        );
        let (kind, wf, from, to, secs) = &longest[0];
        assert_eq!(
            (kind.as_str(), wf.as_str(), from.as_str(), to.as_str()),
            ("step_gap", workflow_id.as_str(), "generate", "send")
        );
        assert!(
            (secs - stopped).abs() <= STOP_TOLERANCE_SECONDS,
            "gap {secs} s for a stop of {stopped:.3} s"
        );
        assert_eq!(v["longest"][0]["workflow_name"], "reply");
    }
    // The real rows: 3 workflows × (parse, recv, its placeholder, generate, send).
    assert_eq!(analyze(&source, "0s")["rows"], 15);
}

// ---- issue 19 item 4: a WAL database analyze only reads ---------------------------

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `stallwatch ARGS` as an operator who cannot write the directory: as root (who may write
/// anywhere) through `setpriv` as nobody.
fn run_as_operator(args: &[&str]) -> std::process::Output {
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::bin());
        c
    } else {
        Command::new(common::bin())
    };
    cmd.args(args).output().unwrap()
}

#[test]
fn analyze_leaves_no_wal_or_shm_beside_a_wal_database() {
    // Issue 19 item 4: a read-only connection to a WAL database creates -wal and -shm and,
    // unable to checkpoint, left them beside the app's file.
    let dir = TempDir::new().unwrap();
    let (ops, workflows) = incident_history();
    let db = sqlite_db(dir.path(), &ops, &workflows);
    for suffix in ["-wal", "-shm"] {
        assert!(!beside(&db, suffix).exists(), "{suffix} before analyze");
    }
    let v = analyze(db.to_str().unwrap(), "60s");
    assert_incident_analysis(&v, ops.len());
    for suffix in ["-wal", "-shm"] {
        assert!(
            !beside(&db, suffix).exists(),
            "analyze left {suffix} behind"
        );
    }
    let opened = v["opened"].as_str().unwrap_or_default();
    assert!(opened.starts_with("opened immutable"), "{v:#}");
    let text = run_to_exit(["analyze", "--source", db.to_str().unwrap()]);
    assert!(
        text.stdout
            .lines()
            .nth(1)
            .unwrap_or("")
            .contains("opened immutable"),
        "{}",
        text.stdout
    );
}

/// Makes `dir` and the files in it read-only (0555 and 0444), runs `analyze --format
/// json` on `db` as an operator without rights, and restores the directory's mode.
fn analyze_read_only(dir: &Path, db: &Path) -> Value {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = run_as_operator(&[
        "analyze",
        "--source",
        db.to_str().unwrap(),
        "--format",
        "json",
    ]);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn analyze_reads_a_wal_database_in_a_read_only_directory() {
    // Issue 19 item 4: on a read-only mount (here: a 0555 directory and 0444 files, read
    // as a user without rights) a WAL database whose -shm cannot be created failed with
    // "unable to open database file"; it is opened immutable and says its -wal is not read.
    let dir = TempDir::new().unwrap();
    let (ops, workflows) = incident_history();
    let db = sqlite_db(dir.path(), &ops, &workflows);
    // The app still has it open, one more workflow in its -wal.
    let app = Connection::open(&db).unwrap();
    app.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    app.execute(
        "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name,
             started_at_epoch_ms, completed_at_epoch_ms) VALUES ('in-wal', 1, 'a', ?1, ?1)",
        params![PARSE_DONE_MS],
    )
    .unwrap();
    let wal_bytes = std::fs::metadata(beside(&db, "-wal")).unwrap().len();
    assert!(wal_bytes > 0);
    // A copy with its -wal but no -shm (a snapshot, a backup, a volume mounted read-only).
    let copy = TempDir::new().unwrap();
    let copied = copy.path().join("dbos.sqlite");
    std::fs::copy(&db, &copied).unwrap();
    std::fs::copy(beside(&db, "-wal"), beside(&copied, "-wal")).unwrap();
    let v = analyze_read_only(copy.path(), &copied);
    assert_incident_analysis(&v, ops.len());
    let opened = v["opened"].as_str().unwrap_or_default();
    assert!(
        opened.contains("read-only directory or mount")
            && opened.contains(&format!("-wal ({wal_bytes} bytes) is NOT read")),
        "{v:#}"
    );
    assert!(!beside(&copied, "-shm").exists());
    // The app's own directory, read-only with the app running: SQLite reads the -shm
    // the app keeps, the -wal's row included, and nothing is said.
    let v = analyze_read_only(dir.path(), &db);
    assert_eq!(v["rows"], ops.len() + 1, "{v:#}");
    assert_eq!(v["opened"], Value::Null, "{v:#}");
    drop(app);
}
