//! The `dbos` source: a DBOS system database (`workflow_status`, `operation_outputs`).
//!
//! Per poll, four short statements: steps completed since the high-water mark (on the
//! indexed `completed_at_epoch_ms`), open workflows with their last progress, depth of
//! PENDING/ENQUEUED by queue, and dead letters (`MAX_RECOVERY_ATTEMPTS_EXCEEDED`).
//!
//! The high-water mark never passes `now` (a `DBOS.sleep` row is written with its planned
//! wake time as `completed_at`) and each poll looks back [`LATE_COMMIT_LOOKBACK_MS`] for
//! rows committed late by a concurrent workflow, deduplicated by primary key.

use std::collections::HashMap;
use std::path::PathBuf;

use rusqlite::params;

use super::sqlite::{journal_mode, SqliteReader};
use super::{DeadLetters, Observation, QueueStatus, Source, SourceError, MAX_ROWS_PER_POLL};
use crate::signals::steps::{OpenWorkflow, StepRow};

/// How far each poll looks back for rows that committed after later ones.
pub const LATE_COMMIT_LOOKBACK_MS: i64 = 5_000;
/// On the first poll, how much history to read: what happened while the sidecar was down.
pub const STARTUP_LOOKBACK_MS: i64 = 3_600_000;
/// Most open workflows read per poll.
pub const MAX_OPEN_WORKFLOWS: i64 = 5_000;
/// Workflow statuses that mean "still to do".
pub const OPEN_STATUSES: [&str; 2] = ["PENDING", "ENQUEUED"];
/// The status DBOS gives a workflow it gave up recovering: its dead letter.
pub const DEAD_STATUS: &str = "MAX_RECOVERY_ATTEMPTS_EXCEEDED";

const MS: i64 = 1_000_000;

pub struct DbosSource {
    db: SqliteReader,
    hwm_ms: Option<i64>,
    /// Rows already reported within the look-back window: (workflow, function_id) → completed ms.
    recent: HashMap<(String, i64), i64>,
    last_dead: Option<u64>,
}

impl DbosSource {
    pub fn new(path: PathBuf) -> DbosSource {
        DbosSource {
            db: SqliteReader::new(path),
            hwm_ms: None,
            recent: HashMap::new(),
            last_dead: None,
        }
    }
}

impl Source for DbosSource {
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError> {
        let now_ms = now_ns / MS;
        let from_ms = match self.hwm_ms {
            Some(h) => h - LATE_COMMIT_LOOKBACK_MS,
            None => now_ms - STARTUP_LOOKBACK_MS,
        };
        let path = self.db.path().to_path_buf();
        let err = |e| super::sqlite::classify(&path, e);
        let (rows, open, queues, dead, mode) = self.db.with(|conn| {
            let mut steps = conn
                .prepare_cached(
                    "SELECT o.workflow_uuid, o.function_id, o.function_name, o.started_at_epoch_ms,
                            o.completed_at_epoch_ms, coalesce(w.name, '')
                     FROM operation_outputs o LEFT JOIN workflow_status w ON w.workflow_uuid = o.workflow_uuid
                     WHERE o.completed_at_epoch_ms >= ?1 AND o.completed_at_epoch_ms <= ?2
                     ORDER BY o.completed_at_epoch_ms, o.workflow_uuid, o.function_id
                     LIMIT ?3",
                )
                .map_err(err)?;
            let rows: Vec<(String, i64, String, Option<i64>, i64, String)> = steps
                .query_map(params![from_ms, now_ms, MAX_ROWS_PER_POLL], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;

            let mut open_stmt = conn
                .prepare_cached(
                    "SELECT w.workflow_uuid, coalesce(w.name, ''), w.created_at,
                            (SELECT max(o.completed_at_epoch_ms) FROM operation_outputs o
                             WHERE o.workflow_uuid = w.workflow_uuid)
                     FROM workflow_status w WHERE w.status = 'PENDING' LIMIT ?1",
                )
                .map_err(err)?;
            let open: Vec<OpenWorkflow> = open_stmt
                .query_map(params![MAX_OPEN_WORKFLOWS], |r| {
                    Ok(OpenWorkflow {
                        workflow_id: r.get(0)?,
                        workflow_name: r.get(1)?,
                        created_ns: r.get::<_, i64>(2)? * MS,
                        last_progress_ns: r.get::<_, Option<i64>>(3)?.map(|ms| ms * MS),
                    })
                })
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;

            let mut depth = conn
                .prepare_cached(
                    "SELECT coalesce(queue_name, ''), status, count(*), min(created_at) FROM workflow_status
                     WHERE status IN ('PENDING', 'ENQUEUED') GROUP BY 1, 2",
                )
                .map_err(err)?;
            let queues: Vec<QueueStatus> = depth
                .query_map([], |r| {
                    Ok(QueueStatus {
                        queue: r.get(0)?,
                        status: r.get(1)?,
                        depth: r.get::<_, i64>(2)? as u64,
                        oldest_ns: r.get::<_, Option<i64>>(3)?.map(|ms| ms * MS),
                    })
                })
                .map_err(err)?
                .collect::<Result<_, _>>()
                .map_err(err)?;

            let dead: i64 = conn
                .query_row(
                    "SELECT count(*) FROM workflow_status WHERE status = ?1",
                    params![DEAD_STATUS],
                    |r| r.get(0),
                )
                .map_err(err)?;
            let mode = journal_mode(conn).map_err(err)?;
            Ok((rows, open, queues, dead as u64, mode))
        })?;

        let mut obs = Observation {
            journal_mode: Some(mode),
            open_workflows: Some(open),
            queues,
            ..Default::default()
        };
        for (workflow_id, function_id, step, started_ms, completed_ms, workflow_name) in rows {
            let key = (workflow_id.clone(), function_id);
            if self.recent.contains_key(&key) {
                continue;
            }
            self.recent.insert(key, completed_ms);
            self.hwm_ms = Some(self.hwm_ms.map_or(completed_ms, |h| h.max(completed_ms)));
            obs.steps.push(StepRow {
                workflow_id,
                workflow_name,
                step,
                started_ns: started_ms.unwrap_or(completed_ms) * MS,
                completed_ns: completed_ms * MS,
            });
        }
        if self.hwm_ms.is_none() {
            self.hwm_ms = Some(from_ms.max(now_ms - LATE_COMMIT_LOOKBACK_MS));
        }
        let keep_from = self.hwm_ms.unwrap_or(now_ms) - LATE_COMMIT_LOOKBACK_MS;
        self.recent.retain(|_, completed| *completed >= keep_from);

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
