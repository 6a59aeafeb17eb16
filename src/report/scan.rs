//! `stallwatch analyze`, the I/O part: reads a DBOS system database's `operation_outputs`
//! from the beginning, in completion order, and feeds an [`Analyzer`].
//!
//! Through [`Database`], so SQLite and Postgres (schema `dbos`) read the same way, and
//! with the sources' guarantees: read-only, and no read transaction longer than one
//! statement. The history is read in **keyset batches** of [`BATCH_ROWS`] rows ordered by
//! `(completed_at_epoch_ms, workflow_uuid, function_id)` — unique, because
//! `(workflow_uuid, function_id)` is the primary key — each batch one short statement
//! that starts after the last key of the one before (an index range on
//! `completed_at_epoch_ms`, never an `OFFSET`). The row with function id 1 of each
//! workflow also carries the workflow's row count (a covering count on the primary key,
//! evaluated for that row only), so the analyzer can forget a workflow after its last
//! row. Workflow names are read at the end, for the listed gaps only.
//!
//! Rows without a completion time are counted and skipped; a `started_at_epoch_ms` that
//! is missing reads as the completion time (as the live source does). So do times outside
//! [2000-01-01, now + 1 day] ([`crate::timestamp::plausible`]): a completion time
//! of `i64::MIN` or `i64::MAX` ms is counted with the rows without one and never read (the
//! batches only cover the sane range), a start out of range is counted in
//! [`ScanStats::bad_started`] and reads as the completion time (issue 14).

use super::analyze::Analyzer;
use crate::signals::steps::{Gap, StepRow, WAIT_PLACEHOLDER};
use crate::sources::db::Database;
use crate::sources::dbos::wait_deadline_ns;
use crate::sources::session::{Query, Value};
use crate::sources::SourceError;
use crate::timestamp::{epoch_ms_ns, EARLIEST_APP_TIME_NS, FUTURE_SLACK_NS};

/// Rows per batch: large enough that per-statement overhead is noise, small enough that
/// one statement is over in milliseconds and a batch of rows is a few MB.
pub const BATCH_ROWS: i64 = 10_000;
/// Workflow ids per name statement (SQLite's bound-parameter limit is 32,766).
pub const NAME_CHUNK: usize = 500;
/// DBOS numbers a workflow's operations from 1: the row that carries the workflow's row
/// count (one index-only count per workflow, inside the batch statement).
pub const FIRST_FUNCTION_ID: i64 = 1;

const MS: i64 = 1_000_000;

/// What a scan read, besides the gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub backend: &'static str,
    /// SQLite's journal mode; `None` on Postgres.
    pub journal_mode: Option<String>,
    pub rows: u64,
    pub batches: u64,
    /// Rows whose `completed_at_epoch_ms` is NULL or out of range (not read) or
    /// unreadable (skipped).
    pub rows_without_completion: u64,
    /// Rows whose `started_at_epoch_ms` is out of range: read as their completion time.
    pub bad_started: u64,
    /// Whether `workflow_status` was there to name the workflows.
    pub has_workflow_status: bool,
    /// How a SQLite file was opened, when not plainly read-only (`immutable`, and why).
    pub opened: Option<String>,
}

/// Why a scan could not run: the source's own one-sentence error, or not a DBOS DB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("{shown} is not a DBOS system database: it has no {table} table (analyze reads DBOS's operation_outputs; pass the app's system database URL)")]
    NotDbos { shown: String, table: &'static str },
    #[error("{0}")]
    Source(#[from] SourceError),
}

/// The statements, in both dialects.
struct Statements {
    tables: Query,
    null_completion: Query,
    batch: Query,
}

/// One statement for both: `{s}` is the schema prefix (`dbos.` on Postgres), `?N` become `$N`.
fn both(sql: &str) -> Query {
    Query {
        sqlite: sql.replace("{s}", ""),
        postgres: sql.replace("{s}", "dbos.").replace('?', "$"),
    }
}

impl Statements {
    fn new() -> Statements {
        Statements {
            tables: Query {
                sqlite: "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')
                         AND name IN ('operation_outputs', 'workflow_status')"
                    .into(),
                postgres: "SELECT table_name FROM information_schema.tables WHERE table_schema = 'dbos'
                           AND table_name IN ('operation_outputs', 'workflow_status')"
                    .into(),
            },
            null_completion: both(
                "SELECT count(*) FROM {s}operation_outputs WHERE completed_at_epoch_ms IS NULL
                 OR completed_at_epoch_ms < ?1 OR completed_at_epoch_ms > ?2",
            ),
            // `completed >= ?1` alone bounds the index range; the OR picks up after the
            // last key within equal completion times.
            batch: both(&format!(
                "SELECT workflow_uuid, function_id, function_name, started_at_epoch_ms, completed_at_epoch_ms,
                        CASE WHEN function_name = '{WAIT_PLACEHOLDER}' THEN output END,
                        CASE WHEN function_id = {FIRST_FUNCTION_ID} THEN
                            (SELECT count(*) FROM {{s}}operation_outputs c WHERE c.workflow_uuid = o.workflow_uuid) END
                 FROM {{s}}operation_outputs o
                 WHERE completed_at_epoch_ms >= ?1
                   AND (completed_at_epoch_ms > ?1 OR workflow_uuid > ?2 OR (workflow_uuid = ?2 AND function_id > ?3))
                   AND completed_at_epoch_ms <= ?5
                 ORDER BY completed_at_epoch_ms, workflow_uuid, function_id
                 LIMIT ?4"
            )),
        }
    }

    /// Name of each of `n` workflows.
    fn names(n: usize) -> Query {
        both(&format!(
            "SELECT workflow_uuid, coalesce(name, '') FROM {{s}}workflow_status WHERE workflow_uuid IN ({})",
            marks(n)
        ))
    }
}

fn marks(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads every completed row of `operation_outputs` into `analyzer`. `shown` names the
/// database in errors (a redacted URL or a path).
pub fn scan(
    db: &mut Database,
    shown: &str,
    analyzer: &mut Analyzer,
) -> Result<ScanStats, ScanError> {
    scan_with(db, shown, analyzer, &mut |_| {})
}

/// [`scan`], handing every gap and overrun the analyzer finds (of any length) to `on_gap`
/// as well: `verify --source` counts them per window.
pub fn scan_with(
    db: &mut Database,
    shown: &str,
    analyzer: &mut Analyzer,
    on_gap: &mut dyn FnMut(&Gap),
) -> Result<ScanStats, ScanError> {
    let q = Statements::new();
    let mut stats = ScanStats {
        backend: if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        },
        ..Default::default()
    };
    let (tables, journal_mode) = db.read(|s| Ok((s.rows(&q.tables, &[])?, s.journal_mode()?)))?;
    let has = |name: &str| tables.iter().any(|r| r[0].text() == name);
    if !has("operation_outputs") {
        return Err(ScanError::NotDbos {
            shown: shown.to_string(),
            table: "operation_outputs",
        });
    }
    stats.has_workflow_status = has("workflow_status");
    stats.journal_mode = journal_mode;
    stats.opened = open_note(db);
    // The sane range of completion times, in the column's milliseconds.
    let now_ns = crate::clock::real_ns();
    let earliest_ms = EARLIEST_APP_TIME_NS / MS;
    let latest_ms = now_ns.saturating_add(FUTURE_SLACK_NS) / MS;
    let range = [Value::Int(earliest_ms), Value::Int(latest_ms)];
    stats.rows_without_completion = db
        .read(|s| s.rows(&q.null_completion, &range))?
        .first()
        .and_then(|r| r[0].as_i64())
        .unwrap_or(0)
        .max(0) as u64;

    // Before every key in the range. Not i64::MIN for the function id: Postgres would
    // read that literal as numeric and give up the index on the bigint column.
    let mut key = (
        Value::Int(earliest_ms),
        Value::Text(String::new()),
        Value::Int(-i64::MAX),
    );
    loop {
        let params = [
            key.0.clone(),
            key.1.clone(),
            key.2.clone(),
            Value::Int(BATCH_ROWS),
            Value::Int(latest_ms),
        ];
        let rows = db.read(|s| s.rows(&q.batch, &params))?;
        let Some(last) = rows.last() else { break };
        stats.batches += 1;
        key = (
            last[4].as_i64().map_or_else(|| last[4].clone(), Value::Int),
            Value::Text(last[0].text()),
            last[1].as_i64().map_or_else(|| last[1].clone(), Value::Int),
        );
        let full = rows.len() as i64 == BATCH_ROWS;
        for mut r in rows {
            let Some(completed_ns) = r[4].as_i64().and_then(|ms| epoch_ms_ns(ms, now_ns).ok())
            else {
                stats.rows_without_completion += 1;
                continue;
            };
            let started_ns = match r[3].as_i64().map(|ms| epoch_ms_ns(ms, now_ns)) {
                Some(Ok(ns)) => ns,
                Some(Err(_)) => {
                    stats.bad_started += 1;
                    completed_ns
                }
                None => completed_ns,
            };
            stats.rows += 1;
            let total_rows = r[6].as_i64().map(|n| n.max(0) as u64);
            let gap = analyzer.observe(
                StepRow {
                    workflow_id: take_text(&mut r[0]),
                    workflow_name: String::new(),
                    step: take_text(&mut r[2]),
                    started_ns,
                    completed_ns,
                    deadline_ns: wait_deadline_ns(&r[5]),
                },
                total_rows,
            );
            if let Some(gap) = &gap {
                on_gap(gap);
            }
        }
        if !full {
            break;
        }
    }
    if stats.has_workflow_status {
        name_listed_workflows(db, analyzer)?;
    }
    Ok(stats)
}

/// How a one-shot SQLite reader opened its file, when that is worth saying.
pub fn open_note(db: &Database) -> Option<String> {
    match db {
        Database::Sqlite(r) => r.opened_as().and_then(|o| o.note()),
        Database::Postgres(_) => None,
    }
}

/// The text of a value, moved out rather than copied.
fn take_text(v: &mut Value) -> String {
    match std::mem::replace(v, Value::Null) {
        Value::Text(t) => t,
        other => other.text(),
    }
}

/// Names the workflows of the gaps the analysis lists (only those: a name per row would
/// cost a `workflow_status` lookup per row).
fn name_listed_workflows(db: &mut Database, analyzer: &mut Analyzer) -> Result<(), ScanError> {
    let ids: Vec<Value> = analyzer
        .analysis
        .listed_workflows()
        .into_iter()
        .map(Value::Text)
        .collect();
    let mut names = std::collections::HashMap::new();
    for chunk in ids.chunks(NAME_CHUNK) {
        let query = Statements::names(chunk.len());
        for r in db.read(|s| s.rows(&query, chunk))? {
            names.insert(r[0].text(), r[1].text());
        }
    }
    analyzer.analysis.name_workflows(&names);
    Ok(())
}
