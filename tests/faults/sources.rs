//! Fault cases: sources that went blind for good, and numbers from the app that were used
//! as they came (issue 14, items 1, 2 and 8).
//!
//! - A DBOS burst of more rows than one read takes (`MAX_ROWS_PER_POLL`, 10,000) at one
//!   `completed_at_epoch_ms` once wedged the read mark: nothing written later was seen.
//!   Now steps are read by a keyset cursor; a gap written after the burst is counted,
//!   once, on SQLite and on the real Postgres.
//! - A sidecar started with its wall clock a day ahead (libfaketime), then stepped back,
//!   kept its mark in the future (blind for a day) and called a pending workflow "stalled
//!   for 1d". Now the mark is pulled back and the stall clock is monotonic.
//! - Attempts of `i64::MAX`, `1e300` and `inf` wrapped `job_retries_total`; DBOS times of
//!   `i64::MAX`/`i64::MIN` ms gave 56-year steps, and `analyze` printed 1677 and an
//!   85,962-day gap. Now they are counted as `bad_value`/`bad_timestamp` and never used.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::Client;
use rusqlite::{params, Connection};
use serde_json::Value;

use crate::common::dbos_schema;
use crate::common::faketime::FakeClock;
use crate::common::pgdb::TestDb;
use crate::common::{poll_until, run_to_exit, Launch, Metrics, Sidecar};

/// The source's name in every config here.
const SOURCE: &str = "app";
/// Rows one read takes (`MAX_ROWS_PER_POLL`); the burst holds more at one millisecond.
const ROWS_PER_READ: i64 = 10_000;
/// Workflows × steps of the burst: 10,100 rows, more than one read.
const BURST_WORKFLOWS: i64 = 101;
const BURST_STEPS: i64 = 100;
/// The gap written after the burst, and the shortest gap the source records.
const GAP_MS: i64 = 2_500;
const GAP_MIN: &str = "1s";
/// Until a gap is counted: a few 200 ms polls, the freeze merge window and settling.
const EPISODE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the awaited count, how long to watch that nothing more is counted.
const WATCH: Duration = Duration::from_secs(3);
/// A day, as libfaketime's offset (seconds).
const DAY_SECS: i64 = 86_400;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const STEP: &str = "INSERT INTO operation_outputs
    (workflow_uuid, function_id, function_name, started_at_epoch_ms, completed_at_epoch_ms)
    VALUES (?1, ?2, ?3, ?4, ?5)";
const WORKFLOW: &str = "INSERT INTO workflow_status
    (workflow_uuid, status, name, created_at, updated_at) VALUES (?1, ?2, 'job', ?3, ?3)";

fn dbos_sqlite(dir: &Path) -> PathBuf {
    let path = dir.join("dbos.sqlite");
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.execute_batch(dbos_schema::SQLITE).unwrap();
    path
}

fn dbos_config(url: &str, extra: &str) -> String {
    format!(
        "[[source]]\nname = \"{SOURCE}\"\nkind = \"dbos\"\nurl = \"{url}\"\n\
         poll = \"200ms\"\ngap_min = \"{GAP_MIN}\"\n{extra}"
    )
}

fn start(dir: &Path, config: String, env: Vec<(String, String)>) -> Sidecar {
    Sidecar::start_with(
        &dir.join("state"),
        &Launch {
            config: Some(config),
            env,
        },
    )
}

fn counter(m: &Metrics, family: &str, cause: &str) -> f64 {
    m.value(&format!(
        "stallwatch_{family}{{cause=\"{cause}\",source=\"{SOURCE}\"}}"
    ))
    .unwrap_or(0.0)
}

fn source_error(m: &Metrics, kind: &str) -> f64 {
    m.value(&format!(
        "stallwatch_source_errors_total{{kind=\"{kind}\",source=\"{SOURCE}\"}}"
    ))
    .unwrap_or(0.0)
}

/// Waits for the source to be up, then for a few polls more.
fn wait_polled(sidecar: &Sidecar) {
    poll_until("the source to be up", EPISODE_TIMEOUT, || {
        let m = sidecar.metrics();
        match m.value(&format!("stallwatch_source_up{{source=\"{SOURCE}\"}}")) {
            Some(1.0) => Ok(()),
            other => Err(format!("source_up {other:?}")),
        }
    });
    // A few 200 ms polls over the burst.
    std::thread::sleep(Duration::from_secs(1));
}

/// Waits until a step gap is counted with cause `stall`, then watches that it
/// stays one (a re-read must not count it twice).
fn expect_one_gap(sidecar: &Sidecar) {
    poll_until("the gap written later", EPISODE_TIMEOUT, || {
        let m = sidecar.metrics();
        match counter(&m, "step_gaps_total", "stall") {
            n if n >= 1.0 => Ok(()),
            _ => Err(m
                .0
                .lines()
                .filter(|l| l.contains("step_gap") || l.contains("duration_seconds_count"))
                .collect::<Vec<_>>()
                .join("\n")),
        }
    });
    std::thread::sleep(WATCH);
    let m = sidecar.metrics();
    assert_eq!(
        counter(&m, "step_gaps_total", "stall"),
        1.0,
        "one gap was written, once"
    );
}

// ---- item 1: a burst at one millisecond ------------------------------------------------

/// The burst rows, all at `at_ms`, as (workflow, function id).
fn burst_keys() -> impl Iterator<Item = (String, i64)> {
    (0..BURST_WORKFLOWS).flat_map(|w| (1..=BURST_STEPS).map(move |f| (format!("burst-{w:03}"), f)))
}

#[test]
fn a_dbos_burst_past_one_read_at_one_millisecond_does_not_blind_the_source_sqlite() {
    const { assert!(BURST_WORKFLOWS * BURST_STEPS > ROWS_PER_READ) };
    let dir = tempfile::tempdir().unwrap();
    let db = dbos_sqlite(dir.path());
    let mut conn = Connection::open(&db).unwrap();
    let at = now_ms() - 20_000;
    let tx = conn.transaction().unwrap();
    for (w, f) in burst_keys() {
        tx.execute(STEP, params![w, f, "burst", at, at]).unwrap();
    }
    tx.commit().unwrap();
    let sidecar = start(
        dir.path(),
        dbos_config(&format!("sqlite://{}", db.display()), ""),
        Vec::new(),
    );
    wait_polled(&sidecar);

    let t = now_ms();
    conn.execute(
        STEP,
        params!["after", 1, "fetch", t - GAP_MS - 600, t - GAP_MS - 500],
    )
    .unwrap();
    conn.execute(STEP, params!["after", 2, "send", t - 500, t - 400])
        .unwrap();
    expect_one_gap(&sidecar);
}

#[test]
fn a_dbos_burst_past_one_read_at_one_millisecond_does_not_blind_the_source_postgres() {
    let db = TestDb::create("burst");
    let mut c = db.client();
    c.batch_execute(dbos_schema::POSTGRES).unwrap();
    let at = now_ms() - 20_000;
    c.execute(
        &format!(
            "INSERT INTO dbos.operation_outputs
                 (workflow_uuid, function_id, function_name, started_at_epoch_ms, completed_at_epoch_ms)
             SELECT 'burst-' || lpad(w::text, 3, '0'), f, 'burst', $1, $1
             FROM generate_series(0, {}) w, generate_series(1, {BURST_STEPS}) f",
            BURST_WORKFLOWS - 1
        ),
        &[&at],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), dbos_config(&db.url(), ""), Vec::new());
    wait_polled(&sidecar);

    let t = now_ms();
    let step = "INSERT INTO dbos.operation_outputs
        (workflow_uuid, function_id, function_name, started_at_epoch_ms, completed_at_epoch_ms)
        VALUES ($1, $2, $3, $4, $5)";
    c.execute(
        step,
        &[
            &"after",
            &1i32,
            &"fetch",
            &(t - GAP_MS - 600),
            &(t - GAP_MS - 500),
        ],
    )
    .unwrap();
    c.execute(step, &[&"after", &2i32, &"send", &(t - 500), &(t - 400)])
        .unwrap();
    expect_one_gap(&sidecar);
}

// ---- item 2: a clock a day ahead, then stepped back --------------------------------------

/// A sidecar started with its wall clock a day ahead over `db`; `pending` adds a
/// workflow pending since a moment ago, its first step done (not stalled by any clock
/// that runs right).
fn start_a_day_ahead(dir: &Path, db: &Path, pending: bool) -> (Sidecar, FakeClock, Connection) {
    let conn = Connection::open(db).unwrap();
    if pending {
        let t = now_ms();
        conn.execute(WORKFLOW, params!["pending", "PENDING", t])
            .unwrap();
        conn.execute(STEP, params!["pending", 1, "fetch", t, t + 10])
            .unwrap();
    }
    let clock = FakeClock::new(dir);
    clock.set(&format!("+{DAY_SECS}"));
    let sidecar = start(
        dir,
        dbos_config(
            &format!("sqlite://{}", db.display()),
            "stall_after = \"1m\"\n",
        ),
        clock.env(),
    );
    wait_polled(&sidecar);
    (sidecar, clock, conn)
}

/// Steps the clock back to the right time, then writes a gap (on the app's one
/// connection, as an app does).
fn step_back_and_write_a_gap(clock: &FakeClock, conn: &Connection) {
    clock.set("+0");
    std::thread::sleep(Duration::from_secs(1));
    let t = now_ms();
    conn.execute(
        STEP,
        params!["after", 1, "fetch", t - GAP_MS - 600, t - GAP_MS - 500],
    )
    .unwrap();
    conn.execute(STEP, params!["after", 2, "send", t - 500, t - 400])
        .unwrap();
}

#[test]
fn a_sidecar_started_a_day_ahead_then_stepped_back_sees_rows_written_after_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dbos_sqlite(dir.path());
    let (sidecar, clock, conn) = start_a_day_ahead(dir.path(), &db, false);
    step_back_and_write_a_gap(&clock, &conn);
    expect_one_gap(&sidecar);
}

#[test]
fn a_sidecar_started_a_day_ahead_then_stepped_back_calls_no_pending_workflow_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let db = dbos_sqlite(dir.path());
    let (sidecar, clock, conn) = start_a_day_ahead(dir.path(), &db, true);
    let no_stall = |when: &str| {
        let m = sidecar.metrics();
        assert_eq!(
            m.value(&format!(
                "stallwatch_stalled_workflows{{source=\"{SOURCE}\"}}"
            )),
            Some(0.0),
            "{when}: a workflow pending for seconds is not stalled"
        );
        assert_eq!(counter(&m, "stalls_total", "stall"), 0.0, "{when}");
        let status = sidecar.status();
        assert!(
            status.to_string().contains("\"stalled\":[]"),
            "{when}: /api/v1/status lists no stall: {status}"
        );
    };
    no_stall("a day ahead");
    step_back_and_write_a_gap(&clock, &conn);
    expect_one_gap(&sidecar);
    no_stall("stepped back");
    let episodes = sidecar.get("/api/v1/episodes").json();
    assert!(
        !episodes.to_string().contains("\"kind\":\"stall\""),
        "no stall episode: {episodes}"
    );
    let alerts = sidecar.get("/api/v1/alerts").json();
    assert!(
        !alerts.to_string().contains("workflow_stalled"),
        "no workflow_stalled alert: {alerts}"
    );
}

// ---- item 8: numbers out of range ---------------------------------------------------------

#[test]
fn attempts_of_i64_max_1e300_and_inf_are_bad_values_not_retries() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE jobs (id TEXT PRIMARY KEY, queue TEXT, status TEXT, attempts);",
    )
    .unwrap();
    let insert = "INSERT INTO jobs VALUES (?1, 'q', 'pending', ?2)";
    conn.execute(insert, params!["max", i64::MAX]).unwrap();
    conn.execute(insert, params!["huge", 1e300]).unwrap();
    conn.execute(insert, params!["inf", "inf"]).unwrap();
    conn.execute(insert, params!["neg", -5]).unwrap();
    conn.execute(insert, params!["sane", 3]).unwrap();
    let config = format!(
        "[[source]]\nname = \"{SOURCE}\"\nkind = \"queue_table\"\nurl = \"sqlite://{}\"\n\
         poll = \"200ms\"\ntable = \"jobs\"\nkey_column = \"id\"\nstatus_column = \"status\"\n\
         queue_column = \"queue\"\nattempts_column = \"attempts\"\nopen_statuses = [\"pending\"]\n",
        db.display()
    );
    let sidecar = start(dir.path(), config, Vec::new());
    let retries = "stallwatch_job_retries_total{queue=\"q\",source=\"app\"}";
    let m = poll_until("the bad attempts to be counted", EPISODE_TIMEOUT, || {
        let m = sidecar.metrics();
        if source_error(&m, "bad_value") >= 3.0 && m.value(retries).is_some() {
            Ok(m)
        } else {
            Err(format!(
                "bad_value {}, retries {:?}",
                source_error(&m, "bad_value"),
                m.value(retries)
            ))
        }
    });
    // The first poll sets what each row had; then one sane retry more.
    let base = m.expect(retries);
    conn.execute("UPDATE jobs SET attempts = 4 WHERE id = 'sane'", [])
        .unwrap();
    conn.execute("UPDATE jobs SET attempts = 9.9e300 WHERE id = 'huge'", [])
        .unwrap();
    let m = poll_until("the one sane retry", EPISODE_TIMEOUT, || {
        let m = sidecar.metrics();
        match m.expect(retries) {
            n if n > base => Ok(m),
            n => Err(format!("retries {n}")),
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let m2 = sidecar.metrics();
    assert_eq!(
        m2.expect(retries) - base,
        1.0,
        "one retry of one sane row; nothing of i64::MAX, 1e300 or inf:\n{}",
        m.0
    );
    assert!(
        base <= 3.0,
        "retries at first sight are at most the sane row's: {base}"
    );
}

#[test]
fn dbos_times_of_i64_max_and_min_are_bad_timestamps_not_56_year_steps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dbos_sqlite(dir.path());
    let conn = Connection::open(&db).unwrap();
    let t = now_ms() - 5_000;
    // A step started at i64::MIN ms and one at i64::MAX ms, both completed now.
    conn.execute(STEP, params!["w", 1, "min_start", i64::MIN, t])
        .unwrap();
    conn.execute(STEP, params!["w", 2, "max_start", i64::MAX, t + 10])
        .unwrap();
    // Pending workflows created at i64::MIN and i64::MAX ms: idle 56 years, or overflow.
    conn.execute(WORKFLOW, params!["old", "PENDING", i64::MIN])
        .unwrap();
    conn.execute(WORKFLOW, params!["new", "PENDING", i64::MAX])
        .unwrap();
    conn.execute(STEP, params!["new", 1, "future", t, i64::MAX])
        .unwrap();
    let sidecar = start(
        dir.path(),
        dbos_config(
            &format!("sqlite://{}", db.display()),
            "stall_after = \"1m\"\n",
        ),
        Vec::new(),
    );
    let m = poll_until("the bad times to be counted", EPISODE_TIMEOUT, || {
        let m = sidecar.metrics();
        if source_error(&m, "bad_timestamp") >= 4.0 {
            Ok(m)
        } else {
            Err(format!(
                "bad_timestamp {}",
                source_error(&m, "bad_timestamp")
            ))
        }
    });
    assert_eq!(
        m.value(&format!("stallwatch_source_up{{source=\"{SOURCE}\"}}")),
        Some(1.0),
        "the source keeps going"
    );
    assert_eq!(
        m.value(&format!(
            "stallwatch_stalled_workflows{{source=\"{SOURCE}\"}}"
        )),
        Some(0.0),
        "nothing has been idle for 56 years"
    );
    for line in m.0.lines().filter(|l| {
        l.starts_with("stallwatch_step_duration_seconds_sum") && l.contains("source=\"app\"")
    }) {
        let v: f64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(v < 60.0, "no step took years: {line}");
    }
}

fn analyze_json(source: &str) -> Value {
    let out = run_to_exit([
        "analyze",
        "--source",
        source,
        "--gap-min",
        "1s",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "analyze failed: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

#[test]
fn analyze_counts_times_of_i64_max_and_min_and_never_prints_1677() {
    let dir = tempfile::tempdir().unwrap();
    let db = dbos_sqlite(dir.path());
    let conn = Connection::open(&db).unwrap();
    let t = now_ms() - 3_600_000;
    conn.execute(STEP, params!["w", 1, "fetch", t - 100, t])
        .unwrap();
    conn.execute(STEP, params!["w", 2, "min_done", t, i64::MIN])
        .unwrap();
    conn.execute(STEP, params!["w", 3, "max_done", t, i64::MAX])
        .unwrap();
    conn.execute(STEP, params!["w", 4, "zero_start", 0, t + 100])
        .unwrap();
    conn.execute(STEP, params!["w", 5, "send", t + 3_000, t + 3_100])
        .unwrap();
    drop(conn);
    let v = analyze_json(&format!("sqlite://{}", db.display()));
    // The run's own timing and the temp path are not read from the table (an elapsed
    // 0.001677 s once matched "1677").
    let mut times = v.clone();
    let fields = times.as_object_mut().unwrap();
    fields.remove("elapsed_seconds");
    fields.remove("source");
    let text = times.to_string();
    assert_eq!(v["rows_without_completion"], 2, "{v:#}");
    assert_eq!(v["rows"], 3, "{v:#}");
    assert!(!text.contains("1677") && !text.contains("2262"), "{v:#}");
    assert_eq!(v["days"].as_array().map(Vec::len), Some(1), "{v:#}");
    // The one gap: zero_start (read as starting at its completion) → send, 2.9 s.
    let longest = v["longest"][0]["duration_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("a longest gap: {v:#}"));
    assert!((longest - 2.9).abs() < 0.01, "{v:#}");
}

// ---- item 1 in queue_table: every paged read -------------------------------------------

/// Open rows with attempts: more than one read takes.
const OPEN_ROWS: i64 = ROWS_PER_READ + 50;

/// Waits for `job_retries_total{queue=""}` to reach `want`; what it read.
fn wait_for_retries(sidecar: &Sidecar, want: f64, what: &str) -> f64 {
    let retries = "stallwatch_job_retries_total{queue=\"\",source=\"app\"}";
    poll_until(what, EPISODE_TIMEOUT, || {
        let m = sidecar.metrics();
        match m.value(retries) {
            Some(n) if n >= want => Ok(n),
            n => Err(format!("job_retries_total {n:?}")),
        }
    })
}

/// Each open row's first attempt is counted, the rows past the first read included;
/// then `bump_last` makes the last row by key fail once more: one retry more, once.
fn expect_every_open_row_counted(sidecar: &Sidecar, bump_last: impl FnOnce()) {
    let all = OPEN_ROWS as f64;
    assert_eq!(wait_for_retries(sidecar, all, "every open row read"), all);
    bump_last();
    wait_for_retries(sidecar, all + 1.0, "the retry of a row past the first read");
    std::thread::sleep(WATCH);
    assert_eq!(
        wait_for_retries(sidecar, 0.0, "the count"),
        all + 1.0,
        "each retry counted once across the pages"
    );
}

fn jobs_config(url: &str) -> String {
    format!(
        "[[source]]\nname = \"{SOURCE}\"\nkind = \"queue_table\"\nurl = \"{url}\"\n\
         poll = \"200ms\"\ntable = \"jobs\"\nkey_column = \"key\"\nstatus_column = \"status\"\n\
         attempts_column = \"attempts\"\nopen_statuses = [\"pending\"]\n"
    )
}

#[test]
fn retries_of_open_rows_past_the_first_read_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let mut conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE jobs (key TEXT PRIMARY KEY, status TEXT, attempts INTEGER);",
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..OPEN_ROWS {
        tx.execute(
            "INSERT INTO jobs VALUES (?1, 'pending', 1)",
            params![format!("k{i:06}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let url = format!("sqlite://{}", db.display());
    let sidecar = start(dir.path(), jobs_config(&url), Vec::new());
    expect_every_open_row_counted(&sidecar, || {
        conn.execute(
            "UPDATE jobs SET attempts = 2 WHERE key = ?1",
            params![format!("k{:06}", OPEN_ROWS - 1)],
        )
        .unwrap();
    });
}

#[test]
fn retries_of_open_rows_past_the_first_read_are_counted_postgres() {
    let db = TestDb::create("retries");
    let mut c = db.client();
    c.batch_execute(&format!(
        "CREATE TABLE jobs (key bigint PRIMARY KEY, status text, attempts int);
         INSERT INTO jobs SELECT k, 'pending', 1 FROM generate_series(0, {}) k;",
        OPEN_ROWS - 1
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), jobs_config(&db.url()), Vec::new());
    expect_every_open_row_counted(&sidecar, || {
        c.execute(
            "UPDATE jobs SET attempts = 2 WHERE key = $1",
            &[&(OPEN_ROWS - 1)],
        )
        .unwrap();
    });
}

#[test]
fn dead_letters_at_the_marks_own_time_or_after_a_future_one_are_counted_postgres() {
    let db = TestDb::create("dead");
    let mut c = db.client();
    c.batch_execute(
        "CREATE TABLE jobs (key text PRIMARY KEY, status text, attempts int);
         CREATE TABLE dead_letter (key text, payload text, error text, died double precision);",
    )
    .unwrap();
    let now_s = || now_ms() as f64 / 1000.0;
    let at = now_s() - 60.0;
    let dead = |c: &mut Client, key: &str, died: f64| {
        c.execute(
            "INSERT INTO dead_letter (key, died) VALUES ($1, $2)",
            &[&key, &died],
        )
        .unwrap();
    };
    dead(&mut c, "first", at);
    let config = format!(
        "[[source]]\nname = \"{SOURCE}\"\nkind = \"queue_table\"\npreset = \"lab-jobs\"\n\
         url = \"{}\"\npoll = \"200ms\"\n",
        db.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start(dir.path(), config, Vec::new());
    wait_polled(&sidecar);
    let total = "stallwatch_dead_letters_total{queue=\"\",source=\"app\"}";
    let wait_for = |want: f64, what: &str| {
        poll_until(what, EPISODE_TIMEOUT, || {
            let m = sidecar.metrics();
            match m.value(total) {
                Some(n) if n >= want => Ok(n),
                n => Err(format!("dead_letters_total {n:?}")),
            }
        })
    };
    dead(&mut c, "same-time", at);
    wait_for(1.0, "a dead letter at the mark's own time");
    dead(&mut c, "future", now_s() + DAY_SECS as f64);
    wait_for(2.0, "a dead letter stamped a day ahead");
    dead(&mut c, "after-future", now_s());
    wait_for(3.0, "a dead letter after one stamped in the future");
    std::thread::sleep(WATCH);
    assert_eq!(sidecar.metrics().expect(total), 3.0, "each counted once");
}
