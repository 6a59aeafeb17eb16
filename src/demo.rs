//! `stallwatch demo`: a self-contained live demo. It creates a temporary app — a
//! DBOS-style system database, a job queue with dead letters, a lease-based task table
//! and a JSONL cost log — runs a synthetic worker that completes steps, retries,
//! dead-letters, spends toward a cost cap and now and then stalls, and watches it with a
//! real sidecar. Every metric family has live values within 30 s.
//!
//! The worker is the only code in stallwatch that writes to an "app" database, and it
//! writes only to the demo's own temporary files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::clock::{read_clocks, real_ns};
use crate::config::source::{preset_digest_tasks, preset_lab_jobs, JsonlLayout, Location};
use crate::config::{Config, SourceConfig, SourceDetail, SourceKind};

/// How often the synthetic worker acts.
const WORKER_STEP: Duration = Duration::from_millis(300);
/// Daily cost cap of the demo's spend log, in USD; the worker crosses it in minutes.
const DEMO_COST_CAP_USD: f64 = 5.0;
/// Lease of the demo task table: short, so a stuck task shows within 30 s.
const DEMO_LEASE: Duration = Duration::from_secs(10);
/// Every this many workflows, one stops between two steps for [`DEMO_STALL`].
const STALL_EVERY: u64 = 7;
const DEMO_STALL: Duration = Duration::from_secs(8);
/// Every this many workflows (and jobs), one ends as a dead letter.
const DEAD_EVERY: u64 = 5;
/// Longest the worker sleeps without looking at the stop flag: the demo exits this soon
/// after its sidecar stops, even in the middle of an 8 s stall.
const STOP_CHECK: Duration = Duration::from_millis(50);

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS workflow_status (
    workflow_uuid TEXT PRIMARY KEY, status TEXT, name TEXT, queue_name TEXT,
    recovery_attempts INTEGER DEFAULT 0, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    started_at_epoch_ms INTEGER);
CREATE INDEX IF NOT EXISTS workflow_status_created ON workflow_status (created_at);
CREATE TABLE IF NOT EXISTS operation_outputs (
    workflow_uuid TEXT NOT NULL, function_id INTEGER NOT NULL, function_name TEXT NOT NULL DEFAULT '',
    output TEXT, error TEXT, started_at_epoch_ms INTEGER, completed_at_epoch_ms INTEGER,
    PRIMARY KEY (workflow_uuid, function_id));
CREATE INDEX IF NOT EXISTS operation_outputs_completed ON operation_outputs (completed_at_epoch_ms);
CREATE TABLE IF NOT EXISTS jobs (key TEXT PRIMARY KEY, payload TEXT, status TEXT, attempts INTEGER, result TEXT);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS dead_letter (key TEXT, payload TEXT, error TEXT, died REAL);
CREATE TABLE IF NOT EXISTS digest_tasks (
    id INTEGER PRIMARY KEY, status TEXT, claimed_at TEXT, attempts INTEGER, created_at TEXT, updated_at TEXT);
CREATE INDEX IF NOT EXISTS digest_tasks_status ON digest_tasks (status);
";

/// A small deterministic generator: the demo needs variety, not cryptography.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The files of the demo app.
pub struct DemoApp {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub log: PathBuf,
}

impl DemoApp {
    pub fn create(dir: &Path) -> rusqlite::Result<DemoApp> {
        std::fs::create_dir_all(dir)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let app = DemoApp {
            dir: dir.to_path_buf(),
            db: dir.join("app.sqlite"),
            log: dir.join("events.jsonl"),
        };
        Connection::open(&app.db)?.execute_batch(SCHEMA)?;
        std::fs::write(&app.log, b"")
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(app)
    }

    /// The sidecar configuration that watches this app.
    pub fn config(&self, listen: std::net::SocketAddr) -> Config {
        let mut config = Config::default_with(self.dir.join("stallwatch-state"));
        config.listen = listen;
        let source =
            |name: &str, kind: SourceKind, path: &Path, detail: SourceDetail| SourceConfig {
                name: name.into(),
                kind,
                location: if kind == SourceKind::Jsonl {
                    Location::File(path.to_path_buf())
                } else {
                    Location::Sqlite(path.to_path_buf())
                },
                poll: Duration::from_secs(1),
                stall_after: Duration::from_secs(6),
                gap_min: Duration::from_secs(3),
                cost_cap_usd: None,
                cost_utc_offset_secs: 0,
                detail,
            };
        let mut tasks = preset_digest_tasks();
        tasks.lease = Some(DEMO_LEASE);
        let mut costs = source(
            "demo-costs",
            SourceKind::Jsonl,
            &self.log,
            SourceDetail::Jsonl(JsonlLayout {
                time_field: "ts".into(),
                key_field: "key".into(),
                event_field: "event".into(),
                cost_field: "cost_usd".into(),
            }),
        );
        costs.cost_cap_usd = Some(DEMO_COST_CAP_USD);
        config.sources = vec![
            source("demo-dbos", SourceKind::Dbos, &self.db, SourceDetail::Dbos),
            source(
                "demo-jobs",
                SourceKind::QueueTable,
                &self.db,
                SourceDetail::QueueTable(Box::new(preset_lab_jobs())),
            ),
            source(
                "demo-tasks",
                SourceKind::QueueTable,
                &self.db,
                SourceDetail::QueueTable(Box::new(tasks)),
            ),
            costs,
            source(
                "demo-sql",
                SourceKind::Sql,
                &self.db,
                SourceDetail::Sql {
                    query: "SELECT status, count(*) AS jobs FROM jobs GROUP BY status".into(),
                    labels: vec!["status".into()],
                    values: vec!["jobs".into()],
                },
            ),
        ];
        config
    }
}

/// Sleeps `total` in slices of [`STOP_CHECK`]; false as soon as `stop` is set.
fn pause(stop: &AtomicBool, total: Duration) -> bool {
    let until = std::time::Instant::now() + total;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

/// The synthetic worker: runs until `stop` is set, and returns within [`STOP_CHECK`]
/// of it (every wait looks at the flag).
pub fn run_worker(app: &DemoApp, stop: &AtomicBool) -> rusqlite::Result<()> {
    let conn = Connection::open(&app.db)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // The demo's app shares the sidecar's process: a small page cache keeps what the
    // soak bench measures the sidecar's, not the synthetic app's growing file.
    conn.pragma_update(None, "cache_size", -crate::state::CACHE_KIB)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&app.log)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut dice = Dice(read_clocks().mono_ns as u64 | 1);
    let mut workflow = 0u64;
    let mut job = 0u64;
    let ms = || real_ns() / 1_000_000;
    let now_iso = || humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();

    // One workflow that never progresses: a stalled workflow from the first poll on.
    conn.execute(
        "INSERT OR IGNORE INTO workflow_status (workflow_uuid, status, name, created_at, updated_at)
         VALUES ('demo-stuck', 'PENDING', 'digest', ?1, ?1)",
        params![ms() - 60_000],
    )?;
    // A task claimed long ago and never finished: a stuck job past its lease.
    conn.execute(
        "INSERT OR IGNORE INTO digest_tasks (id, status, claimed_at, attempts, created_at)
         VALUES (1, 'RUNNING', ?1, 1, ?1)",
        params![
            humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(60))
                .to_string()
        ],
    )?;

    while !stop.load(Ordering::Relaxed) {
        // A DBOS-style workflow: fetch → DBOS.sleep(1 s) → summarize → (sometimes a stall) → send.
        workflow += 1;
        let id = format!("wf-{workflow}");
        let queue = if dice.chance(50) {
            "digests"
        } else {
            "replies"
        };
        conn.execute(
            "INSERT INTO workflow_status (workflow_uuid, status, name, queue_name, created_at, updated_at)
             VALUES (?1, 'PENDING', 'digest', ?2, ?3, ?3)",
            params![id, queue, ms()],
        )?;
        let step = |fid: i64, name: &str, work: Duration| -> rusqlite::Result<()> {
            let start = ms();
            pause(stop, work);
            conn.execute(
                "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name, started_at_epoch_ms, completed_at_epoch_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, fid, name, start, ms()],
            )?;
            Ok(())
        };
        step(1, "fetch", Duration::from_millis(50 + dice.next() % 150))?;
        let wake = ms() + 1_000;
        conn.execute(
            "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name, output, started_at_epoch_ms, completed_at_epoch_ms)
             VALUES (?1, 2, 'DBOS.sleep', ?2, ?3, ?2)",
            params![id, wake, ms()],
        )?;
        if !pause(stop, Duration::from_millis(1_000)) {
            break;
        }
        step(
            3,
            "summarize",
            Duration::from_millis(100 + dice.next() % 300),
        )?;
        if workflow % STALL_EVERY == 0 && !pause(stop, DEMO_STALL) {
            break;
        }
        step(4, "send", Duration::from_millis(20 + dice.next() % 80))?;
        let end = if workflow % DEAD_EVERY == 2 {
            "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
        } else {
            "SUCCESS"
        };
        conn.execute(
            "UPDATE workflow_status SET status = ?2, updated_at = ?3 WHERE workflow_uuid = ?1",
            params![id, end, ms()],
        )?;
        if dice.chance(60) {
            conn.execute(
                "INSERT INTO workflow_status (workflow_uuid, status, name, queue_name, created_at, updated_at)
                 VALUES (?1, 'ENQUEUED', 'digest', ?2, ?3, ?3)",
                params![format!("queued-{workflow}"), queue, ms()],
            )?;
        }
        conn.execute(
            "DELETE FROM workflow_status WHERE status = 'ENQUEUED' AND created_at < ?1",
            params![ms() - 20_000],
        )?;

        // The job agent: new jobs arrive, some fail and retry, four failures is a dead letter.
        for _ in 0..3 {
            job += 1;
            conn.execute(
                "INSERT INTO jobs (key, payload, status, attempts) VALUES (?1, '{}', 'pending', 0)",
                params![format!("job-{job}")],
            )?;
        }
        // Poison jobs (every DEAD_EVERY-th) fail every time, so some die within seconds.
        let picked: Vec<(String, i64, bool)> = conn
            .prepare(
                "SELECT key, attempts, CAST(substr(key, 5) AS INTEGER) % ?1 = 0 FROM jobs WHERE status = 'pending'
                 ORDER BY CAST(substr(key, 5) AS INTEGER) % ?1 = 0 DESC, random() LIMIT 3",
            )?
            .query_map(params![DEAD_EVERY as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (key, attempts, poison) in picked {
            if poison || dice.chance(25) {
                if attempts + 1 >= 4 {
                    conn.execute("DELETE FROM jobs WHERE key = ?1", params![key])?;
                    conn.execute(
                        "INSERT INTO dead_letter (key, payload, error, died) VALUES (?1, '{}', 'upstream 503', ?2)",
                        params![key, real_ns() as f64 / 1e9],
                    )?;
                } else {
                    conn.execute(
                        "UPDATE jobs SET attempts = attempts + 1 WHERE key = ?1",
                        params![key],
                    )?;
                }
            } else {
                conn.execute(
                    "UPDATE jobs SET status = 'done', attempts = attempts + 1 WHERE key = ?1",
                    params![key],
                )?;
                let cost = 0.02 + (dice.next() % 10) as f64 / 100.0;
                let line = format!(
                    "{{\"ts\":{:.3},\"key\":\"{key}\",\"event\":\"step_done\",\"cost_usd\":{cost:.2}}}\n",
                    real_ns() as f64 / 1e9
                );
                log.write_all(line.as_bytes())
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            }
        }

        // The task queue: tasks are claimed and finished; the one claimed long ago stays stuck.
        conn.execute(
            "INSERT INTO digest_tasks (status, claimed_at, attempts, created_at) VALUES ('RUNNING', ?1, 1, ?1)",
            params![now_iso()],
        )?;
        conn.execute(
            "UPDATE digest_tasks SET status = 'COMPLETED', updated_at = ?1 WHERE status = 'RUNNING' AND id != 1 AND claimed_at < ?2",
            params![now_iso(), humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(2)).to_string()],
        )?;
        pause(stop, WORKER_STEP);
    }
    Ok(())
}

/// Runs the demo until SIGINT/SIGTERM: app, worker and sidecar.
pub fn run(
    listen: std::net::SocketAddr,
    started: crate::clock::ClockReading,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("stallwatch-demo-{}", std::process::id()));
    let app = DemoApp::create(&dir)?;
    let config = app.config(listen);
    println!("stallwatch demo: a synthetic app in {}", dir.display());
    println!("  metrics:   http://{listen}/metrics");
    println!("  freezes:   http://{listen}/api/v1/freezes");
    println!("  episodes:  http://{listen}/api/v1/episodes   (a workflow stalls for 8 s every {STALL_EVERY} runs)");
    println!("  status:    http://{listen}/api/v1/status");
    println!(
        "  try:       kill -STOP {pid}; sleep 3; kill -CONT {pid}   (a process_stall freeze)",
        pid = std::process::id()
    );
    println!("Ctrl-C stops the demo and removes its files.");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let app = DemoApp {
            dir: app.dir.clone(),
            db: app.db.clone(),
            log: app.log.clone(),
        };
        std::thread::Builder::new()
            .name("demo-worker".into())
            .spawn(move || {
                if let Err(e) = run_worker(&app, &stop) {
                    tracing::error!(error = %e, "demo worker failed");
                }
            })?
    };
    let result = crate::sidecar::run(config, started);
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(Into::into)
}
