//! What DBOS wrote, as the real-DBOS tests read it to hold the sidecar's numbers against:
//! its `operation_outputs` rows and the gaps between them, and on SQLite the system DB
//! opened read-only and the deadline of a workflow's wait. Each test reads the rows from
//! its own database (SQLite or Postgres) into [`StepRow`]s.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// One `operation_outputs` row.
#[derive(Debug, Clone)]
pub struct StepRow {
    pub workflow_id: String,
    pub function_id: i64,
    pub step: String,
    pub started_ms: i64,
    pub completed_ms: i64,
}

impl StepRow {
    pub fn duration_seconds(&self) -> f64 {
        (self.completed_ms - self.started_ms) as f64 / 1e3
    }
}

/// The gaps DBOS's rows show, in seconds: per workflow, end of the previous activity (a
/// step or an intended wait) to the start of each following step.
pub fn gaps(rows: &[StepRow]) -> Vec<f64> {
    let mut by_workflow: BTreeMap<&str, Vec<&StepRow>> = BTreeMap::new();
    for r in rows {
        by_workflow.entry(&r.workflow_id).or_default().push(r);
    }
    let mut gaps = Vec::new();
    for (_, mut rows) in by_workflow {
        rows.sort_by_key(|r| (r.completed_ms, r.function_id));
        let mut end: Option<i64> = None;
        for r in rows {
            // A wait's placeholder row marks when the wait began: the time before it is
            // a gap like the time before a step.
            let wait = r.step.starts_with("DBOS.") && r.step != "DBOS.sleep";
            if let (Some(e), false) = (end, wait) {
                gaps.push((r.started_ms.max(e) - e) as f64 / 1e3);
            }
            end = Some(end.map_or(r.completed_ms, |e| e.max(r.completed_ms)));
        }
    }
    gaps
}

/// The app's SQLite system DB, read-only.
pub fn open_read_only(db: &Path) -> Connection {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {} read-only: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

/// The deadline (unix seconds) of the latest wait of `workflow_id` in a SQLite system
/// DB: the output of its `DBOS.sleep` placeholder, a JSON number DBOS writes as the wait
/// starts.
pub fn wait_deadline(db: &Path, workflow_id: &str) -> Option<f64> {
    let output: Option<String> = open_read_only(db)
        .query_row(
            "SELECT output FROM operation_outputs WHERE workflow_uuid = ?1 \
             AND function_name = 'DBOS.sleep' ORDER BY function_id DESC LIMIT 1",
            [workflow_id],
            |r| r.get(0),
        )
        .optional()
        .unwrap_or_else(|e| panic!("reading the DBOS.sleep row of {workflow_id}: {e}"));
    let output = output?;
    let deadline = output.trim().trim_matches('"').parse().unwrap_or_else(|e| {
        panic!("the DBOS.sleep output of {workflow_id} is not epoch seconds ({e}): {output:?}")
    });
    Some(deadline)
}
