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
/// Shares of the cost cap the worker announces crossing: the cost_cap rule's ladder.
const COST_LADDER: &[f64] = &[0.5, 0.8, 1.0];
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
    /// The sidecar's data dir: `dir/stallwatch-state`, or the `--keep` directory.
    pub state_dir: PathBuf,
}

impl DemoApp {
    pub fn create(dir: &Path) -> rusqlite::Result<DemoApp> {
        std::fs::create_dir_all(dir)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let app = DemoApp {
            dir: dir.to_path_buf(),
            db: dir.join("app.sqlite"),
            log: dir.join("events.jsonl"),
            state_dir: dir.join("stallwatch-state"),
        };
        Connection::open(&app.db)?.execute_batch(SCHEMA)?;
        std::fs::write(&app.log, b"")
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(app)
    }

    /// The sidecar configuration that watches this app.
    pub fn config(&self, listen: std::net::SocketAddr) -> Config {
        let mut config = Config::default_with(self.state_dir.clone());
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
/// of it (every wait looks at the flag). `say` gets one line for each thing it does on
/// purpose (a stall, the first dead letter of each kind, a step up the cost ladder).
pub fn run_worker(app: &DemoApp, stop: &AtomicBool, say: &dyn Fn(&str)) -> rusqlite::Result<()> {
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
    let mut spent_usd = 0.0f64;
    let mut ladder = COST_LADDER.iter().peekable();
    let (mut said_dead_job, mut said_dead_workflow) = (false, false);

    // One workflow that never progresses: a stalled workflow from the first poll on.
    conn.execute(
        "INSERT OR IGNORE INTO workflow_status (workflow_uuid, status, name, created_at, updated_at)
         VALUES ('demo-stuck', 'PENDING', 'digest', ?1, ?1)",
        params![ms() - 60_000],
    )?;
    say("worker: workflow demo-stuck stays PENDING and never runs a step (a stalled workflow, alert workflow_stalled)");
    // A task claimed long ago and never finished: a stuck job past its lease.
    conn.execute(
        "INSERT OR IGNORE INTO digest_tasks (id, status, claimed_at, attempts, created_at)
         VALUES (1, 'RUNNING', ?1, 1, ?1)",
        params![
            humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(60))
                .to_string()
        ],
    )?;
    say(&format!(
        "worker: task 1 was claimed a minute ago and never finishes (stuck past its {} s lease, alert stuck_jobs)",
        DEMO_LEASE.as_secs()
    ));

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
        if workflow % STALL_EVERY == 0 {
            say(&format!(
                "worker: workflow {id} stalled {} s on purpose after summarize — watch the page",
                DEMO_STALL.as_secs()
            ));
            if !pause(stop, DEMO_STALL) {
                break;
            }
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
        if end != "SUCCESS" && !said_dead_workflow {
            said_dead_workflow = true;
            say(&format!("worker: workflow {id} ended {end}, a DBOS dead letter (every {DEAD_EVERY}th does; only this one is told)"));
        }
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
                    if !said_dead_job {
                        said_dead_job = true;
                        say(&format!("worker: job {key} failed 4 times and went to dead_letter (poison jobs keep doing so; only this one is told)"));
                    }
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
                spent_usd += cost;
                while let Some(&&share) = ladder.peek() {
                    if spent_usd < share * DEMO_COST_CAP_USD {
                        break;
                    }
                    ladder.next();
                    say(&format!(
                        "worker: spent ${spent_usd:.2} of the ${DEMO_COST_CAP_USD:.2} daily cap ({:.0} %, alert cost_cap)",
                        share * 100.0
                    ));
                }
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

/// The demo's log filter when `STALLWATCH_LOG` is not set. The terminal tells what
/// happens one line at a time (the worker's and the [`Narrator`]'s lines on stdout), so
/// the alert engine's and the sources' WARNs, which say the same thing every few seconds,
/// are left out; errors of any part, and the other parts' warnings (a reference that
/// cannot be read, a full VM pause that is not visible here), stay on stderr. A source
/// that fails still shows: its `source_down` alert is narrated.
pub const LOG_FILTER: &str =
    "warn,stallwatch::alerts::engine=error,stallwatch::sidecar::poll=error";

/// How often the narrator looks at the state DB for what the sidecar recorded.
const NARRATE_EVERY: Duration = Duration::from_secs(1);

/// Where `demo --keep DIR` may put its files: a new directory (created here) or an empty
/// one. Anything else (a file, a FIFO, a directory with files in it) is refused with one
/// sentence, before anything is created, so the demo never mixes its files with others.
pub fn prepare_keep_dir(dir: &Path) -> Result<PathBuf, String> {
    let shown = crate::config::quoted(&dir.display().to_string());
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("--keep {shown} cannot be created: {e}"))?;
        }
        Err(e) => return Err(format!("--keep {shown} cannot be read: {e}")),
        Ok(_) => {
            // Through a symlink: what it points at must be a directory.
            let is_dir = std::fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false);
            if !is_dir {
                return Err(format!(
                    "--keep {shown} is not a directory; name a new or empty directory for the demo's files"
                ));
            }
            let mut entries = std::fs::read_dir(dir)
                .map_err(|e| format!("--keep {shown} cannot be read: {e}"))?;
            if entries.next().is_some() {
                return Err(format!(
                    "--keep {shown} is not empty; name a new or empty directory for the demo's files"
                ));
            }
        }
    }
    std::fs::canonicalize(dir).map_err(|e| format!("--keep {shown} cannot be read: {e}"))
}

/// A word for a shell: as is when it is plain, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How to run this binary again: its own path when it is called `stallwatch` (a
/// `cargo run` user has no `stallwatch` on PATH), else the bare name.
fn this_binary() -> String {
    std::env::current_exe()
        .ok()
        .filter(|p| p.file_name().is_some_and(|n| n == "stallwatch"))
        .map(|p| shell_word(&p.display().to_string()))
        .unwrap_or_else(|| "stallwatch".into())
}

/// `HH:MM:SS` (UTC) of now, the prefix of every narrated line.
fn clock_prefix() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.get(11..19).unwrap_or(&t).to_string()
}

/// Prints one line to the demo's terminal.
fn say_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}  {line}", clock_prefix());
    let _ = out.flush();
}

/// Tells, one line each, what the sidecar recorded in its state DB: every freeze and
/// episode, and each alert the first time it fires and when it resolves (a one-shot
/// rule, such as a new dead letter, once). Reads the DB read-only, as `report` does.
struct Narrator {
    path: PathBuf,
    conn: Option<Connection>,
    freeze_id: i64,
    episode_id: i64,
    alert_mark_ns: i64,
    told_firing: std::collections::HashSet<String>,
    told_one_shot: std::collections::HashSet<String>,
}

impl Narrator {
    fn new(state_dir: &Path) -> Narrator {
        Narrator {
            path: state_dir.join(crate::state::STATE_DB_FILE),
            conn: None,
            freeze_id: 0,
            episode_id: 0,
            alert_mark_ns: 0,
            told_firing: Default::default(),
            told_one_shot: Default::default(),
        }
    }

    /// Lines for what was recorded since the last call.
    fn lines(&mut self) -> rusqlite::Result<Vec<String>> {
        if self.conn.is_none() {
            if !self.path.is_file() {
                return Ok(Vec::new());
            }
            let conn = Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_millis(500))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref().expect("opened above");
        let mut lines = Vec::new();
        let mut stmt = conn.prepare_cached(
            "SELECT id, kind, duration_ns, channels FROM freeze_event WHERE id > ?1 ORDER BY id LIMIT 100",
        )?;
        let freezes = stmt
            .query_map([self.freeze_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (id, kind, duration_ns, channels) in freezes {
            self.freeze_id = id;
            let seen: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&channels)
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["channel"].as_str().map(str::to_string))
                .collect();
            lines.push(format!(
                "sidecar: freeze #{id} recorded, {kind} of {:.1} s, seen by {} (/api/v1/freezes)",
                duration_ns as f64 / 1e9,
                if seen.is_empty() {
                    "?".into()
                } else {
                    seen.join(", ")
                }
            ));
        }
        let mut stmt = conn.prepare_cached(
            "SELECT id, source, kind, workflow_id, from_step, to_step, duration_ns, cause
             FROM episode WHERE id > ?1 ORDER BY id LIMIT 100",
        )?;
        let episodes = stmt
            .query_map([self.episode_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, String>(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (id, source, kind, workflow, from, to, duration_ns, cause) in episodes {
            self.episode_id = id;
            let seconds = duration_ns as f64 / 1e9;
            let what = if kind == "stall" {
                format!("workflow {workflow} stalled {seconds:.1} s")
            } else {
                let between = match (from.is_empty(), to.is_empty()) {
                    (false, false) => format!(" between {from} and {to}"),
                    (false, true) => format!(" after {from}"),
                    _ => String::new(),
                };
                format!("a {seconds:.1} s gap in workflow {workflow}{between}")
            };
            lines.push(format!(
                "sidecar: {source}: {what}, cause {cause} (/api/v1/episodes)"
            ));
        }
        let mut stmt = conn.prepare_cached(
            "SELECT fingerprint, rule, title, state, updated_at_ns FROM alert
             WHERE updated_at_ns > ?1 ORDER BY updated_at_ns LIMIT 100",
        )?;
        let alerts = stmt
            .query_map([self.alert_mark_ns], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (fingerprint, rule, title, state, updated_ns) in alerts {
            self.alert_mark_ns = self.alert_mark_ns.max(updated_ns);
            let line = match state.as_str() {
                "fired" if self.told_one_shot.insert(rule.clone()) => {
                    format!("alert {rule}: {title} (later ones only in /api/v1/alerts)")
                }
                "firing" if self.told_firing.insert(fingerprint.clone()) => {
                    format!("alert {rule} firing: {title}")
                }
                "resolved" if self.told_firing.remove(&fingerprint) => {
                    format!("alert {rule} resolved: {title}")
                }
                _ => continue,
            };
            lines.push(line);
        }
        Ok(lines)
    }
}

/// Folds the kept state DB's WAL into it once the sidecar has stopped: the narrator's
/// read-only connection was the last to close, and a read-only connection cannot, so
/// without this `DIR` keeps a `-wal` file that a copy of the DB alone would miss.
fn checkpoint_kept(dir: &Path) {
    let path = dir.join(crate::state::STATE_DB_FILE);
    let done = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .and_then(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map(|()| c)
        })
        .and_then(|c| c.close().map_err(|(_, e)| e));
    if let Err(e) = done {
        tracing::warn!(error = %e, "cannot fold the kept state DB's WAL into it; keep its -wal file with it");
    }
}

/// Runs the demo until SIGINT/SIGTERM: app, worker, sidecar and the narrator. With
/// `keep`, the app and the state DB stay in that directory (checked by
/// [`prepare_keep_dir`] first) and the `report`/`verify` commands to try on it are
/// printed at the end; without, everything is in a temporary directory removed on exit.
pub fn run(
    listen: std::net::SocketAddr,
    started: crate::clock::ClockReading,
    keep: Option<&Path>,
) -> anyhow::Result<()> {
    let kept = match keep {
        Some(dir) => Some(prepare_keep_dir(dir).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let dir = match &kept {
        Some(k) => k.join("app"),
        None => std::env::temp_dir().join(format!("stallwatch-demo-{}", std::process::id())),
    };
    let mut app = DemoApp::create(&dir)?;
    if let Some(k) = &kept {
        app.state_dir = k.clone();
    }
    let config = app.config(listen);
    println!(
        "stallwatch demo: a synthetic app in {}, watched by a real sidecar",
        dir.display()
    );
    println!("  status page:  http://{listen}/   <- open this");
    println!("  metrics:      http://{listen}/metrics");
    println!("  freezes:      http://{listen}/api/v1/freezes");
    println!("  episodes:     http://{listen}/api/v1/episodes   (a workflow stalls for 8 s every {STALL_EVERY} runs)");
    println!("  alerts:       http://{listen}/api/v1/alerts");
    println!("  status:       http://{listen}/api/v1/status");
    println!(
        "  try:          kill -STOP {pid}; sleep 3; kill -CONT {pid}   (a process_stall freeze)",
        pid = std::process::id()
    );
    match &kept {
        Some(k) => println!(
            "Ctrl-C stops the demo; its state DB stays in {}.",
            k.display()
        ),
        None => println!("Ctrl-C stops the demo and removes its files (--keep DIR keeps them)."),
    }
    println!("What happens, one line each:");
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        let app = DemoApp {
            dir: app.dir.clone(),
            db: app.db.clone(),
            log: app.log.clone(),
            state_dir: app.state_dir.clone(),
        };
        std::thread::Builder::new()
            .name("demo-worker".into())
            .spawn(move || {
                if let Err(e) = run_worker(&app, &stop, &say_line) {
                    tracing::error!(error = %e, "demo worker failed");
                }
            })?
    };
    let narrator = {
        let stop = stop.clone();
        let mut narrator = Narrator::new(&app.state_dir);
        std::thread::Builder::new()
            .name("demo-narrator".into())
            .spawn(move || {
                let mut failed = false;
                while pause(&stop, NARRATE_EVERY) {
                    match narrator.lines() {
                        Ok(lines) => lines.iter().for_each(|l| say_line(l)),
                        Err(e) if !failed => {
                            failed = true;
                            tracing::error!(error = %e, "the demo cannot read its state DB to tell what happens");
                        }
                        Err(_) => {}
                    }
                }
            })?
    };
    let watched_from = crate::clock::real_ns();
    let result = crate::sidecar::run(config, started, None);
    stop.store(true, Ordering::Relaxed);
    let _ = worker.join();
    let _ = narrator.join();
    if let Some(k) = &kept {
        checkpoint_kept(k);
    }
    match &kept {
        None => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Some(k) if result.is_ok() => {
            // The middle of the run: the before and after windows of `verify` both hold
            // part of it (a SIGSTOP tried in the first half is a freeze "before").
            let middle_ns = watched_from + (crate::clock::real_ns() - watched_from) / 2;
            let middle = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_nanos(middle_ns.max(0) as u64),
            );
            let bin = this_binary();
            let data = shell_word(&k.display().to_string());
            println!("The demo's state DB is kept in {}. Try:", k.display());
            println!("  {bin} report --data-dir {data}");
            println!("  {bin} verify --data-dir {data} --migrated-at {middle}   # exit 3 NOT ENOUGH DATA: a demo is short");
            println!("  {bin} report --data-dir {data} --format html > demo-report.html");
        }
        Some(_) => {}
    }
    result.map_err(Into::into)
}
