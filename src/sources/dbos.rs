//! The `dbos` source: a DBOS system database (`workflow_status`, `operation_outputs`), on
//! SQLite or on Postgres (schema `dbos`).
//!
//! Per poll, five short statements: steps completed after the cursor, a sweep of the
//! look-back window for rows committed late, open workflows with their last progress,
//! depth of PENDING/ENQUEUED by queue, and dead letters (`MAX_RECOVERY_ATTEMPTS_EXCEEDED`).
//! On Postgres another reads the server's `clock_timestamp()`, a freeze reference.
//!
//! Steps are read by a **keyset cursor** on `(completed_at_epoch_ms, workflow_uuid,
//! function_id)` — a total order, `(workflow_uuid, function_id)` being the primary key —
//! never by a time alone: a burst of more rows than one read takes at one millisecond is
//! read over several polls instead of wedging the mark (issue 14). The cursor never
//! passes `now` (a `DBOS.sleep` row is written with its planned wake time as
//! `completed_at`); a cursor found ahead of the clock means the clock was stepped back,
//! and it is pulled back to `now` − [`LATE_COMMIT_LOOKBACK_MS`]. Rows committed late by a
//! concurrent workflow are found by sweeping [`LATE_COMMIT_LOOKBACK_MS`] behind the cursor,
//! a bounded page per poll, deduplicated by primary key, for [`LATE_SWEEP_AFTER_MOVE`]
//! after the cursor last moved.
//!
//! Times and counts the app wrote are used only when sane ([`crate::timestamp::plausible`],
//! [`super::queue_table::MAX_ATTEMPTS`]); the rest are counted as `bad_timestamp` or
//! `bad_value` and never used.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::db::Database;
use super::queue_table::attempts;
use super::session::{Query, Value};
use super::{DeadLetters, Observation, QueueStatus, Source, SourceError, MAX_ROWS_PER_POLL};
use crate::signals::steps::{OpenWorkflow, StepRow};
use crate::timestamp::{epoch_ms_ns, EARLIEST_APP_TIME_NS, LATEST_DEADLINE_NS};

/// How far each poll looks back for rows that committed after later ones.
pub const LATE_COMMIT_LOOKBACK_MS: i64 = 5_000;
/// How long after the cursor last moved the look-back window is swept: a row commits
/// within [`LATE_COMMIT_LOOKBACK_MS`] of its completion time, so twice that finds it, and
/// an app that has gone quiet after a burst costs no re-reads of the burst every poll.
pub const LATE_SWEEP_AFTER_MOVE: Duration =
    Duration::from_millis(2 * LATE_COMMIT_LOOKBACK_MS as u64);
/// On the first poll, how much history to read: what happened while the sidecar was down.
pub const STARTUP_LOOKBACK_MS: i64 = 3_600_000;
/// Most open workflows read per poll.
pub const MAX_OPEN_WORKFLOWS: i64 = 5_000;
/// The status DBOS gives a workflow it gave up recovering: its dead letter.
pub const DEAD_STATUS: &str = "MAX_RECOVERY_ATTEMPTS_EXCEEDED";
/// Rows remembered for de-duplication past `now`: after a small backward clock step the
/// rows read just before it are read again without counting twice; rows stamped further
/// ahead (a clock a day ahead, stepped back) are forgotten, and seen once more when the
/// clock reaches them (as a gap of 0).
pub const DEDUP_FUTURE_SLACK_MS: i64 = 60_000;
/// Most rows remembered for de-duplication: a burst of more within the look-back window
/// narrows the late-commit sweep to the newest of them instead of growing without bound
/// (counted as `source_errors_total{kind="rows_capped"}`).
pub const MAX_RECENT_KEYS: usize = 4 * MAX_ROWS_PER_POLL as usize;

const MS: i64 = 1_000_000;

/// The four queries, with the schema prefix each backend needs.
struct Queries {
    steps: Query,
    open: Query,
    depth: Query,
    dead: Query,
}

impl Queries {
    fn new() -> Queries {
        let both = |sql: &str| Query {
            sqlite: sql.replace("{s}", "").replace("{f}", ""),
            // Postgres: schema `dbos`, epoch columns are bigint, compute in double precision.
            postgres: sql
                .replace("{s}", "dbos.")
                .replace("{f}", "::double precision")
                .replace('?', "$"),
        };
        Queries {
            // After key (?1, ?2, ?3), up to ?4: `completed >= ?1` alone bounds the index
            // range; the OR picks up after the key within equal completion times.
            steps: both(
                "SELECT o.workflow_uuid, o.function_id, o.function_name, o.started_at_epoch_ms,
                        o.completed_at_epoch_ms, coalesce(w.name, ''),
                        CASE WHEN o.function_name = 'DBOS.sleep' THEN o.output END
                 FROM {s}operation_outputs o LEFT JOIN {s}workflow_status w ON w.workflow_uuid = o.workflow_uuid
                 WHERE o.completed_at_epoch_ms >= ?1
                   AND (o.completed_at_epoch_ms > ?1 OR o.workflow_uuid > ?2
                        OR (o.workflow_uuid = ?2 AND o.function_id > ?3))
                   AND o.completed_at_epoch_ms <= ?4
                 ORDER BY o.completed_at_epoch_ms, o.workflow_uuid, o.function_id
                 LIMIT ?5",
            ),
            open: both(
                "SELECT w.workflow_uuid, coalesce(w.name, ''), coalesce(w.started_at_epoch_ms, w.created_at),
                        coalesce(w.queue_name, ''), coalesce(w.recovery_attempts, 0),
                        (SELECT max(o.completed_at_epoch_ms) FROM {s}operation_outputs o
                         WHERE o.workflow_uuid = w.workflow_uuid),
                        p.output, p.completed_at_epoch_ms,
                        (SELECT count(*) FROM {s}operation_outputs r
                         WHERE r.workflow_uuid = w.workflow_uuid AND r.function_id = p.function_id - 1
                           AND r.function_name IN ('DBOS.recv', 'DBOS.getEvent'))
                 FROM {s}workflow_status w
                 LEFT JOIN {s}operation_outputs p ON p.workflow_uuid = w.workflow_uuid
                      AND p.function_id = (SELECT max(s.function_id) FROM {s}operation_outputs s
                                           WHERE s.workflow_uuid = w.workflow_uuid AND s.function_name = 'DBOS.sleep')
                 WHERE w.status = 'PENDING' LIMIT ?1",
            ),
            depth: both(
                "SELECT coalesce(queue_name, ''), status, count(*), min(created_at{f}),
                        max(coalesce(recovery_attempts, 0)) FROM {s}workflow_status
                 WHERE status IN ('PENDING', 'ENQUEUED') GROUP BY 1, 2",
            ),
            dead: both("SELECT count(*) FROM {s}workflow_status WHERE status = ?1"),
        }
    }
}

/// A position in `operation_outputs`' total order: completion time, then primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    completed_ms: i64,
    workflow_id: String,
    function_id: i64,
}

impl Key {
    /// Before every row completed at `ms` or later. Not `i64::MIN`: Postgres would read
    /// that literal as numeric and give up the index on the bigint column.
    fn before(ms: i64) -> Key {
        Key {
            completed_ms: ms,
            workflow_id: String::new(),
            function_id: -i64::MAX,
        }
    }

    fn params(&self, up_to_ms: i64) -> [Value; 5] {
        [
            Value::Int(self.completed_ms),
            Value::Text(self.workflow_id.clone()),
            Value::Int(self.function_id),
            Value::Int(up_to_ms),
            Value::Int(MAX_ROWS_PER_POLL),
        ]
    }

    /// The key of a steps row.
    fn of(row: &[Value]) -> Key {
        Key {
            completed_ms: int(&row[4]),
            workflow_id: row[0].text(),
            function_id: int(&row[1]),
        }
    }
}

pub struct DbosSource {
    db: Database,
    queries: Queries,
    /// The last row the forward read returned (`None` before the first poll).
    cursor: Option<Key>,
    /// Where the late-commit sweep resumes; `None`: at the start of the look-back window.
    sweep: Option<Key>,
    /// When the cursor last moved (or was pulled back), on the monotonic clock.
    cursor_moved: Instant,
    /// Oldest completion time the sweep re-reads: the look-back window's start, raised
    /// when more than [`MAX_RECENT_KEYS`] rows fall in it.
    sweep_floor_ms: i64,
    /// Rows already reported that a sweep may read again: (workflow, function_id) → completed ms.
    recent: HashMap<(String, i64), i64>,
    last_dead: Option<u64>,
}

impl DbosSource {
    pub fn new(db: Database) -> DbosSource {
        DbosSource {
            db,
            queries: Queries::new(),
            cursor: None,
            sweep: None,
            cursor_moved: Instant::now(),
            sweep_floor_ms: i64::MIN,
            recent: HashMap::new(),
            last_dead: None,
        }
    }

    /// The cursor for a poll at `now_ms`: the last one, unless the clock went back past it.
    fn cursor_at(&mut self, now_ms: i64) -> Key {
        match self.cursor.take() {
            Some(c) if c.completed_ms <= now_ms => c,
            Some(c) => {
                // The mark was taken under a clock that was ahead: re-read from just
                // before now (the sweep and `recent` keep what was read from counting twice).
                tracing::info!(
                    mark_ms = c.completed_ms,
                    now_ms,
                    "wall clock is behind the DBOS read mark (stepped back): reading again from now"
                );
                self.sweep = None;
                self.sweep_floor_ms = i64::MIN;
                self.cursor_moved = Instant::now();
                Key::before(now_ms - LATE_COMMIT_LOOKBACK_MS)
            }
            None => Key::before(now_ms - STARTUP_LOOKBACK_MS),
        }
    }

    /// Forgets rows no sweep will read again, keeping at most [`MAX_RECENT_KEYS`];
    /// whether that limit narrowed the sweep.
    fn forget_old(&mut self, cursor_ms: i64, now_ms: i64) -> bool {
        let mut floor = cursor_ms - LATE_COMMIT_LOOKBACK_MS;
        let latest = now_ms.saturating_add(DEDUP_FUTURE_SLACK_MS);
        self.recent.retain(|_, c| *c >= floor && *c <= latest);
        let narrowed = self.recent.len() > MAX_RECENT_KEYS;
        if narrowed {
            let mut times: Vec<i64> = self.recent.values().copied().collect();
            let cut = times.len() - MAX_RECENT_KEYS;
            let (_, nth, _) = times.select_nth_unstable(cut);
            floor = *nth + 1;
            self.recent.retain(|_, c| *c >= floor);
        }
        self.sweep_floor_ms = floor;
        narrowed
    }
}

/// The deadline a `DBOS.sleep` placeholder holds as its output: epoch seconds as a JSON
/// number (possibly quoted). Anything else is not a deadline.
pub fn wait_deadline_ns(output: &Value) -> Option<i64> {
    let text = output.text();
    let secs: f64 = text.trim().trim_matches('"').parse().ok()?;
    let ns = secs * 1e9;
    (ns.is_finite() && ns >= EARLIEST_APP_TIME_NS as f64 && ns <= LATEST_DEADLINE_NS as f64)
        .then_some(ns as i64)
}

/// Whether the latest wait placeholder belongs to a receive that is still going on: a
/// `DBOS.recv`/`getEvent` placeholder finishes milliseconds after it starts (a standalone
/// `DBOS.sleep` row is stamped with its wake time instead), and the receive's own row, one
/// function id before the placeholder, is written only when the wait ends. A standalone
/// sleep cannot be told apart from the step after it (a running step has no row yet), so
/// it is never reported as overdue while it happens.
fn in_recv_wait(output: &Value, placeholder_completed_ms: &Value, receive_rows: &Value) -> bool {
    let (Some(deadline_ns), Some(completed_ns)) = (
        wait_deadline_ns(output),
        placeholder_completed_ms
            .as_i64()
            .and_then(|ms| ms.checked_mul(MS)),
    ) else {
        return false;
    };
    let finished_before_deadline = deadline_ns.saturating_sub(completed_ns) > PLACEHOLDER_MARGIN_NS;
    finished_before_deadline && receive_rows.as_i64() == Some(0)
}

/// A placeholder whose row is stamped at least this long before its deadline was written
/// at the start of a receive, not as a standalone sleep's wake time.
const PLACEHOLDER_MARGIN_NS: i64 = 10 * MS;

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// What an app wrote as a time: `None` for NULL, else unix ns or a count of a bad one.
fn app_time(v: &Value, now_ns: i64, bad: &mut u64) -> Option<i64> {
    let ms = v.as_i64()?;
    match epoch_ms_ns(ms, now_ns) {
        Ok(ns) => Some(ns),
        Err(_) => {
            *bad += 1;
            None
        }
    }
}

/// A recovery count, when sane; a bad one is counted and read as 0.
fn recovery_attempts(v: &Value, bad: &mut u64) -> i64 {
    match attempts(v) {
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            *bad += 1;
            0
        }
        None => 0,
    }
}

impl Source for DbosSource {
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError> {
        let now_ms = now_ns / MS;
        let cursor = self.cursor_at(now_ms);
        let sweep_from = self
            .sweep
            .clone()
            .filter(|k| k.completed_ms >= self.sweep_floor_ms)
            .unwrap_or_else(|| {
                Key::before(
                    (cursor.completed_ms - LATE_COMMIT_LOOKBACK_MS).max(self.sweep_floor_ms),
                )
            });
        let sweeping = self.sweep.is_some() || self.cursor_moved.elapsed() <= LATE_SWEEP_AFTER_MOVE;
        let q = &self.queries;
        let (late, steps, open, depth, dead, mode, clock) = self.db.read(|s| {
            let late = if sweeping && sweep_from.completed_ms <= cursor.completed_ms {
                s.rows(&q.steps, &sweep_from.params(cursor.completed_ms))?
            } else {
                Vec::new()
            };
            let steps = s.rows(&q.steps, &cursor.params(now_ms))?;
            let open = s.rows(&q.open, &[Value::Int(MAX_OPEN_WORKFLOWS)])?;
            let depth = s.rows(&q.depth, &[])?;
            let dead = s.rows(&q.dead, &[Value::Text(DEAD_STATUS.into())])?;
            Ok((
                late,
                steps,
                open,
                depth,
                dead,
                s.journal_mode()?,
                s.server_clock()?,
            ))
        })?;
        self.sweep = (late.len() as i64 >= MAX_ROWS_PER_POLL)
            .then(|| late.last().map(|r| Key::of(r)))
            .flatten();
        if !steps.is_empty() {
            self.cursor_moved = Instant::now();
        }
        self.cursor = Some(steps.last().map_or(cursor, |r| Key::of(r)));

        let mut obs = Observation {
            journal_mode: mode,
            server_clock: clock,
            // More open workflows than one read takes: stalls and waits past the first
            // MAX_OPEN_WORKFLOWS are not seen this poll, and that is said.
            capped_reads: u64::from(open.len() as i64 >= MAX_OPEN_WORKFLOWS),
            ..Default::default()
        };
        let (mut bad_times, mut bad_values) = (0, 0);
        obs.open_workflows = Some(
            open.iter()
                .map(|r| OpenWorkflow {
                    workflow_id: r[0].text(),
                    workflow_name: r[1].text(),
                    // A broken creation time reads as "now": idle from when it is seen.
                    created_ns: app_time(&r[2], now_ns, &mut bad_times).unwrap_or(now_ns),
                    queue: r[3].text(),
                    recovery_attempts: recovery_attempts(&r[4], &mut bad_values),
                    last_completed_ns: app_time(&r[5], now_ns, &mut bad_times),
                    wait_deadline_ns: wait_deadline_ns(&r[6]),
                    in_wait: in_recv_wait(&r[6], &r[7], &r[8]),
                })
                .collect(),
        );
        // Recovery re-enqueues a workflow before it runs again: count queued ones too.
        obs.recovery_attempts_max = Some(
            depth
                .iter()
                .map(|r| recovery_attempts(&r[4], &mut bad_values))
                .max()
                .unwrap_or(0),
        );
        obs.queues = depth
            .iter()
            .map(|r| QueueStatus {
                queue: r[0].text(),
                status: r[1].text(),
                depth: int(&r[2]).max(0) as u64,
                oldest_ns: app_time(&r[3], now_ns, &mut bad_times),
            })
            .collect();
        for r in late.into_iter().chain(steps) {
            let (workflow_id, function_id, completed_ms) = (r[0].text(), int(&r[1]), int(&r[4]));
            let key = (workflow_id.clone(), function_id);
            if self.recent.contains_key(&key) {
                continue;
            }
            self.recent.insert(key, completed_ms);
            let Some(completed_ns) = app_time(&r[4], now_ns, &mut bad_times) else {
                continue;
            };
            // A broken start reads as the completion time, as a missing one does.
            let started_ns = app_time(&r[3], now_ns, &mut bad_times).unwrap_or(completed_ns);
            obs.steps.push(StepRow {
                workflow_id,
                workflow_name: r[5].text(),
                step: r[2].text(),
                started_ns,
                completed_ns,
                deadline_ns: wait_deadline_ns(&r[6]),
            });
        }
        obs.bad_timestamps = bad_times;
        obs.bad_values = bad_values;
        let cursor_ms = self.cursor.as_ref().map_or(now_ms, |c| c.completed_ms);
        // Late commits older than the narrowed window go unseen: said as `rows_capped`.
        if self.forget_old(cursor_ms, now_ms) {
            obs.capped_reads += 1;
        }

        let dead = dead.first().map_or(0, |r| int(&r[0]).max(0) as u64);
        let new = self
            .last_dead
            .map_or(0, |before| dead.saturating_sub(before));
        self.last_dead = Some(dead);
        obs.dead_letters.push(DeadLetters {
            queue: String::new(),
            current: dead,
            new,
        });
        Ok(obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::sqlite::SqliteReader;

    const SCHEMA: &str = "
        CREATE TABLE workflow_status (workflow_uuid TEXT PRIMARY KEY, status TEXT, name TEXT,
            queue_name TEXT, recovery_attempts INTEGER DEFAULT 0, created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL, started_at_epoch_ms INTEGER);
        CREATE TABLE operation_outputs (workflow_uuid TEXT NOT NULL, function_id INTEGER NOT NULL,
            function_name TEXT NOT NULL DEFAULT '', output TEXT, error TEXT,
            started_at_epoch_ms INTEGER, completed_at_epoch_ms INTEGER,
            PRIMARY KEY (workflow_uuid, function_id));";

    fn step(c: &rusqlite::Connection, wf: &str, fid: i64, started: i64, completed: i64) {
        c.execute(
            "INSERT INTO operation_outputs (workflow_uuid, function_id, function_name,
                 started_at_epoch_ms, completed_at_epoch_ms) VALUES (?1, ?2, 'f', ?3, ?4)",
            rusqlite::params![wf, fid, started, completed],
        )
        .unwrap();
    }

    fn keys(obs: &Observation) -> Vec<(String, i64)> {
        obs.steps
            .iter()
            .map(|r| (r.workflow_id.clone(), r.completed_ns / MS))
            .collect()
    }

    /// A mark taken a day ahead is pulled back; a row written later behind the new
    /// cursor (within the look-back) is found by the sweep, once.
    #[test]
    fn a_mark_from_a_clock_a_day_ahead_is_pulled_back_and_late_rows_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dbos.sqlite");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let t: i64 = 1_763_900_000_000;
        step(&c, "pending", 1, t, t + 10);
        let mut src = DbosSource::new(Database::Sqlite(SqliteReader::new(path)));
        let day = 86_400_000;
        assert!(keys(&src.poll((t + day) * MS).unwrap()).is_empty());
        assert_eq!(
            keys(&src.poll((t + 1_600) * MS).unwrap()),
            vec![("pending".to_string(), t + 10)]
        );
        step(&c, "after", 1, t - 500, t - 400);
        step(&c, "after", 2, t + 2_100, t + 2_200);
        assert_eq!(
            keys(&src.poll((t + 2_700) * MS).unwrap()),
            vec![
                ("after".to_string(), t - 400),
                ("after".to_string(), t + 2_200)
            ]
        );
        assert!(keys(&src.poll((t + 2_900) * MS).unwrap()).is_empty());
    }
}
