//! The `dbos` source: a DBOS system database (`workflow_status`, `operation_outputs`), on
//! SQLite or on Postgres (schema `dbos`).
//!
//! Per poll, four short statements: steps completed since the high-water mark (on the
//! indexed `completed_at_epoch_ms`), open workflows with their last progress, depth of
//! PENDING/ENQUEUED by queue, and dead letters (`MAX_RECOVERY_ATTEMPTS_EXCEEDED`). On
//! Postgres a fifth reads the server's `clock_timestamp()`, a freeze reference.
//!
//! The high-water mark never passes `now` (a `DBOS.sleep` row is written with its planned
//! wake time as `completed_at`) and each poll looks back [`LATE_COMMIT_LOOKBACK_MS`] for
//! rows committed late by a concurrent workflow, deduplicated by primary key.

use std::collections::HashMap;

use super::db::{Database, Query, Value};
use super::{DeadLetters, Observation, QueueStatus, Source, SourceError, MAX_ROWS_PER_POLL};
use crate::signals::steps::{OpenWorkflow, StepRow};

/// How far each poll looks back for rows that committed after later ones.
pub const LATE_COMMIT_LOOKBACK_MS: i64 = 5_000;
/// On the first poll, how much history to read: what happened while the sidecar was down.
pub const STARTUP_LOOKBACK_MS: i64 = 3_600_000;
/// Most open workflows read per poll.
pub const MAX_OPEN_WORKFLOWS: i64 = 5_000;
/// The status DBOS gives a workflow it gave up recovering: its dead letter.
pub const DEAD_STATUS: &str = "MAX_RECOVERY_ATTEMPTS_EXCEEDED";

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
            steps: both(
                "SELECT o.workflow_uuid, o.function_id, o.function_name, o.started_at_epoch_ms,
                        o.completed_at_epoch_ms, coalesce(w.name, ''),
                        CASE WHEN o.function_name = 'DBOS.sleep' THEN o.output END
                 FROM {s}operation_outputs o LEFT JOIN {s}workflow_status w ON w.workflow_uuid = o.workflow_uuid
                 WHERE o.completed_at_epoch_ms >= ?1 AND o.completed_at_epoch_ms <= ?2
                 ORDER BY o.completed_at_epoch_ms, o.workflow_uuid, o.function_id
                 LIMIT ?3",
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

pub struct DbosSource {
    db: Database,
    queries: Queries,
    hwm_ms: Option<i64>,
    /// Rows already reported within the look-back window: (workflow, function_id) → completed ms.
    recent: HashMap<(String, i64), i64>,
    last_dead: Option<u64>,
}

impl DbosSource {
    pub fn new(db: Database) -> DbosSource {
        DbosSource {
            db,
            queries: Queries::new(),
            hwm_ms: None,
            recent: HashMap::new(),
            last_dead: None,
        }
    }
}

/// The deadline a `DBOS.sleep` placeholder holds as its output: epoch seconds as a JSON
/// number (possibly quoted). Anything else is not a deadline.
pub fn wait_deadline_ns(output: &Value) -> Option<i64> {
    let text = output.text();
    let secs: f64 = text.trim().trim_matches('"').parse().ok()?;
    (secs.is_finite() && secs > 1e9).then_some((secs * 1e9) as i64)
}

/// Whether the latest wait placeholder belongs to a receive that is still going on: a
/// `DBOS.recv`/`getEvent` placeholder finishes milliseconds after it starts (a standalone
/// `DBOS.sleep` row is stamped with its wake time instead), and the receive's own row, one
/// function id before the placeholder, is written only when the wait ends. A standalone
/// sleep cannot be told apart from the step after it (a running step has no row yet), so
/// it is never reported as overdue while it happens.
fn in_recv_wait(output: &Value, placeholder_completed_ms: &Value, receive_rows: &Value) -> bool {
    let (Some(deadline_ns), Some(completed_ms)) =
        (wait_deadline_ns(output), placeholder_completed_ms.as_i64())
    else {
        return false;
    };
    let finished_before_deadline = deadline_ns - completed_ms * MS > PLACEHOLDER_MARGIN_NS;
    finished_before_deadline && receive_rows.as_i64() == Some(0)
}

/// A placeholder whose row is stamped at least this long before its deadline was written
/// at the start of a receive, not as a standalone sleep's wake time.
const PLACEHOLDER_MARGIN_NS: i64 = 10 * MS;

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

impl Source for DbosSource {
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError> {
        let now_ms = now_ns / MS;
        let from_ms = match self.hwm_ms {
            Some(h) => h - LATE_COMMIT_LOOKBACK_MS,
            None => now_ms - STARTUP_LOOKBACK_MS,
        };
        let q = &self.queries;
        let (steps, open, depth, dead, mode, clock) = self.db.read(|s| {
            let steps = s.rows(
                &q.steps,
                &[
                    Value::Int(from_ms),
                    Value::Int(now_ms),
                    Value::Int(MAX_ROWS_PER_POLL),
                ],
            )?;
            let open = s.rows(&q.open, &[Value::Int(MAX_OPEN_WORKFLOWS)])?;
            let depth = s.rows(&q.depth, &[])?;
            let dead = s.rows(&q.dead, &[Value::Text(DEAD_STATUS.into())])?;
            Ok((
                steps,
                open,
                depth,
                dead,
                s.journal_mode()?,
                s.server_clock()?,
            ))
        })?;

        let mut obs = Observation {
            journal_mode: mode,
            server_clock: clock,
            ..Default::default()
        };
        obs.open_workflows = Some(
            open.iter()
                .map(|r| OpenWorkflow {
                    workflow_id: r[0].text(),
                    workflow_name: r[1].text(),
                    created_ns: int(&r[2]) * MS,
                    queue: r[3].text(),
                    recovery_attempts: int(&r[4]),
                    last_completed_ns: r[5].as_i64().map(|ms| ms * MS),
                    wait_deadline_ns: wait_deadline_ns(&r[6]),
                    in_wait: in_recv_wait(&r[6], &r[7], &r[8]),
                })
                .collect(),
        );
        // Recovery re-enqueues a workflow before it runs again: count queued ones too.
        obs.recovery_attempts_max = Some(
            depth
                .iter()
                .filter_map(|r| r[4].as_i64())
                .max()
                .unwrap_or(0),
        );
        obs.queues = depth
            .iter()
            .map(|r| QueueStatus {
                queue: r[0].text(),
                status: r[1].text(),
                depth: int(&r[2]).max(0) as u64,
                oldest_ns: r[3].as_f64().map(|ms| (ms * MS as f64) as i64),
            })
            .collect();
        for r in steps {
            let (workflow_id, function_id, completed_ms) = (r[0].text(), int(&r[1]), int(&r[4]));
            let key = (workflow_id.clone(), function_id);
            if self.recent.contains_key(&key) {
                continue;
            }
            self.recent.insert(key, completed_ms);
            self.hwm_ms = Some(self.hwm_ms.map_or(completed_ms, |h| h.max(completed_ms)));
            obs.steps.push(StepRow {
                workflow_id,
                workflow_name: r[5].text(),
                step: r[2].text(),
                started_ns: r[3].as_i64().unwrap_or(completed_ms) * MS,
                completed_ns: completed_ms * MS,
                deadline_ns: wait_deadline_ns(&r[6]),
            });
        }
        if self.hwm_ms.is_none() {
            self.hwm_ms = Some(from_ms.max(now_ms - LATE_COMMIT_LOOKBACK_MS));
        }
        let keep_from = self.hwm_ms.unwrap_or(now_ms) - LATE_COMMIT_LOOKBACK_MS;
        self.recent.retain(|_, completed| *completed >= keep_from);

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
