//! The app's own history as evidence, the I/O part: reads a DBOS system database, a queue
//! table or a JSON-lines log once, read-only, into an [`AppHistory`] (pure, see
//! [`super::app_history`]).
//!
//! - **DBOS**: exactly `analyze`'s read ([`super::scan::scan_with`]: keyset batches of
//!   `operation_outputs` through the sources' read-only sessions, the same gap tracker),
//!   with every gap handed on as it is found.
//! - **Queue table**: one job is one unit of work with two times, `created` and `claimed`
//!   (the layout's `created_column` and `claimed_column`); the wait between them is its
//!   gap (a frozen worker claims nothing). Read in keyset batches by the key column, one
//!   short statement each. A layout without both columns (the `lab-jobs` preset) has no
//!   history to read and is refused.
//! - **JSONL**: the whole file once, line by line (a line over the tail's
//!   `MAX_LINE_BYTES` is skipped and counted); one job key is one workflow, as for the
//!   live source, through the same gap tracker. Unlike the live source, old lines are
//!   history, not errors: a time is believed within [2000-01-01, now + 1 day].
//!
//! Without `--config`, the kind is found from what is there: a file that is not SQLite is
//! a JSONL log (fields `ts`, `key`, `event`); a database with DBOS's `operation_outputs`
//! is DBOS; one with a `digest_tasks` or `jobs` table is that preset's queue table. With
//! `--config FILE`, `--source` names one of its `[[source]]`s, layout and all.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::analyze::Analyzer;
use super::app_history::{AppHistory, Explainer};
use super::scan::{open_note, scan_with};
use crate::config::source::{
    parse_location, preset_digest_tasks, preset_lab_jobs, JsonlLayout, Location, QueueLayout,
    SourceDetail, SourceKind,
};
use crate::signals::steps::{Gap, GapKind, StepRow};
use crate::sources::db::Database;
use crate::sources::file::{open_regular, OpenError};
use crate::sources::jsonl::parse_line;
use crate::sources::postgres::PgReader;
use crate::sources::session::{Query, Value};
use crate::sources::sqlite::SqliteReader;
use crate::sources::tail::MAX_LINE_BYTES;
use crate::timestamp::plausible;

/// Queue rows per batch: as `analyze`'s batches, one short statement each.
pub const QUEUE_BATCH_ROWS: i64 = 10_000;

/// What to read.
#[derive(Debug, Clone)]
pub enum AppKind {
    Dbos,
    QueueTable(Box<QueueLayout>),
    Jsonl(JsonlLayout),
}

impl AppKind {
    pub fn name(&self) -> &'static str {
        match self {
            AppKind::Dbos => "dbos",
            AppKind::QueueTable(_) => "queue_table",
            AppKind::Jsonl(_) => "jsonl",
        }
    }
}

/// How the history was read, for the output.
#[derive(Debug, Clone, Default)]
pub struct ReadInfo {
    /// The source as it may be shown (a path, or a URL without its password).
    pub shown: String,
    pub kind: &'static str,
    /// `sqlite`, `postgres` or `file`.
    pub backend: &'static str,
    pub journal_mode: Option<String>,
    /// How a SQLite file was opened, when not plainly read-only.
    pub opened: Option<String>,
    /// Workflows the gap tracker had to drop while in flight (a gap of theirs is missed).
    pub evicted: u64,
    /// The queue table read, or the preset it was found by.
    pub detail: Option<String>,
}

/// The source to read: a URL or path found by what is there, or (with `config`) the name
/// of one of the config's `[[source]]`s.
pub fn resolve(source: &str, config: Option<&Path>) -> Result<(Location, Option<AppKind>), String> {
    if let Some(file) = config {
        let c = crate::config::Config::load(file).map_err(|e| e.to_string())?;
        let s = c.sources.iter().find(|s| s.name == source).ok_or_else(|| {
            let names: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
            format!(
                "--source {:?} names no [[source]] in {} (it has: {})",
                crate::config::clip(source),
                file.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
        let kind = match &s.detail {
            SourceDetail::Dbos => AppKind::Dbos,
            SourceDetail::QueueTable(l) => AppKind::QueueTable(l.clone()),
            SourceDetail::Jsonl(l) => AppKind::Jsonl(l.clone()),
            SourceDetail::Sql { .. } => {
                return Err(format!(
                    "source {:?} is a sql source, which has no step history; verify --source reads dbos, queue_table or jsonl",
                    s.name
                ))
            }
        };
        return Ok((s.location.clone(), Some(kind)));
    }
    let location = parse_location(source, SourceKind::Dbos).map_err(|p| format!("--source {p}"))?;
    if let Location::Sqlite(path) = &location {
        if !is_sqlite(path)? {
            return Ok((
                Location::File(path.clone()),
                Some(AppKind::Jsonl(default_jsonl())),
            ));
        }
    }
    Ok((location, None))
}

/// The live source's default JSONL fields.
fn default_jsonl() -> JsonlLayout {
    JsonlLayout {
        time_field: "ts".into(),
        key_field: "key".into(),
        event_field: "event".into(),
        cost_field: "cost_usd".into(),
    }
}

fn open_error(e: OpenError) -> String {
    e.to_string()
}

/// Whether the regular file at `path` starts with SQLite's header (an empty file is not).
fn is_sqlite(path: &Path) -> Result<bool, String> {
    let (mut file, _) =
        open_regular(path, "a DBOS database, queue table or JSONL log").map_err(open_error)?;
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(read == 16 && &header == b"SQLite format 3\0")
}

/// Reads the history at `location` into `history`, explaining gaps with `explainer`.
pub fn read(
    location: &Location,
    kind: Option<AppKind>,
    history: &mut AppHistory,
    explainer: Option<&Explainer>,
    now_ns: i64,
) -> Result<ReadInfo, String> {
    let shown = location.shown();
    if let Location::File(path) = location {
        let layout = match kind {
            Some(AppKind::Jsonl(l)) => l,
            _ => default_jsonl(),
        };
        return read_jsonl(path, &shown, &layout, history, explainer, now_ns);
    }
    let mut db = match location {
        Location::Postgres(url) => Database::Postgres(Box::new(PgReader::new(url.clone()))),
        Location::Sqlite(path) | Location::File(path) => {
            Database::Sqlite(SqliteReader::one_shot(path.clone()))
        }
    };
    let kind = match kind {
        Some(k) => k,
        None => detect(&mut db, &shown)?,
    };
    let mut info = ReadInfo {
        kind: kind.name(),
        backend: if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        },
        ..Default::default()
    };
    match kind {
        AppKind::Dbos => {
            let mut analyzer = Analyzer::new(history.gap_min_ns, 0);
            let stats = scan_with(&mut db, &shown, &mut analyzer, &mut |g| {
                history.gap(g, explainer)
            })
            .map_err(|e| e.to_string())?;
            history.set_span(analyzer.first_ns, analyzer.last_ns);
            history.records = stats.rows;
            history.skipped = stats.rows_without_completion;
            info.journal_mode = stats.journal_mode;
            info.opened = stats.opened;
            info.evicted = analyzer.evicted;
        }
        AppKind::QueueTable(layout) => {
            info.detail = Some(layout.table.clone());
            read_queue(&mut db, &layout, history, explainer, now_ns)?;
            info.journal_mode = db.read(|s| s.journal_mode()).map_err(|e| e.to_string())?;
            info.opened = open_note(&db);
        }
        AppKind::Jsonl(_) => unreachable!("a JSONL log is a file, read above"),
    }
    info.shown = shown;
    Ok(info)
}

/// The kind of a database nobody named: DBOS, or a preset's queue table.
fn detect(db: &mut Database, shown: &str) -> Result<AppKind, String> {
    let tables = Query {
        sqlite: "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')".into(),
        postgres: "SELECT CASE WHEN table_schema = 'dbos' THEN 'dbos.' ELSE '' END || table_name
                   FROM information_schema.tables
                   WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            .into(),
    };
    let names: Vec<String> = db
        .read(|s| s.rows(&tables, &[]))
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r[0].text())
        .collect();
    let has = |n: &str| names.iter().any(|t| t == n);
    if has("operation_outputs") || has("dbos.operation_outputs") {
        Ok(AppKind::Dbos)
    } else if has("digest_tasks") {
        Ok(AppKind::QueueTable(Box::new(preset_digest_tasks())))
    } else if has("jobs") {
        Ok(AppKind::QueueTable(Box::new(preset_lab_jobs())))
    } else {
        Err(format!(
            "{shown} holds neither DBOS's operation_outputs nor a digest_tasks or jobs table; for another queue table give --config FILE and the [[source]] name as --source"
        ))
    }
}

/// A quoted identifier (`schema.table` quotes each part).
fn quoted(identifier: &str) -> String {
    identifier
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

fn read_queue(
    db: &mut Database,
    layout: &QueueLayout,
    history: &mut AppHistory,
    explainer: Option<&Explainer>,
    now_ns: i64,
) -> Result<(), String> {
    let (Some(created), Some(claimed)) = (&layout.created_column, &layout.claimed_column) else {
        return Err(format!(
            "queue table {} has no created and claimed time columns to read its history from (set created_column and claimed_column in a [[source]] and pass --config)",
            layout.table
        ));
    };
    let (table, key) = (quoted(&layout.table), quoted(&layout.key_column));
    let select = format!(
        "SELECT CAST({key} AS TEXT) AS stallwatch_key_text, {c1}, {c2}, {key} AS stallwatch_key FROM {table}",
        c1 = quoted(created),
        c2 = quoted(claimed)
    );
    let first = Query::portable(format!("{select} ORDER BY {key} LIMIT {QUEUE_BATCH_ROWS}"));
    let next = Query::portable(format!(
        "{select} WHERE {key} > ?1 ORDER BY {key} LIMIT {QUEUE_BATCH_ROWS}"
    ));
    let time = |v: &Value| v.time_ns().map(|t| t.and_then(|ns| plausible(ns, now_ns)));
    let mut after: Option<Value> = None;
    loop {
        let rows = db
            .read(|s| match &after {
                None => s.rows(&first, &[]),
                Some(k) => s.rows(&next, std::slice::from_ref(k)),
            })
            .map_err(|e| e.to_string())?;
        let full = rows.len() as i64 == QUEUE_BATCH_ROWS;
        after = rows.last().map(|r| r[3].clone());
        for r in &rows {
            let (c, k) = (time(&r[1]), time(&r[2]));
            for t in [&c, &k] {
                match t {
                    Some(Ok(ns)) => history.record(*ns),
                    Some(Err(_)) => history.skipped += 1,
                    None => {}
                }
            }
            if let (Some(Ok(c)), Some(Ok(k))) = (c, k) {
                if k >= c {
                    history.gap(
                        &Gap {
                            kind: GapKind::Step,
                            workflow_id: r[0].text(),
                            workflow_name: layout.table.clone(),
                            from_step: "created".into(),
                            to_step: "claimed".into(),
                            start_ns: c,
                            end_ns: k,
                        },
                        explainer,
                    );
                }
            }
        }
        if !full {
            return Ok(());
        }
    }
}

fn read_jsonl(
    path: &Path,
    shown: &str,
    layout: &JsonlLayout,
    history: &mut AppHistory,
    explainer: Option<&Explainer>,
    now_ns: i64,
) -> Result<ReadInfo, String> {
    let (file, _) = open_regular(path, "a JSON-lines log").map_err(open_error)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut analyzer = Analyzer::new(history.gap_min_ns, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES && line.last() != Some(&b'\n') {
            // Too long: skip to the end of the line without keeping it.
            history.skipped += 1;
            loop {
                let buf = reader
                    .fill_buf()
                    .map_err(|e| format!("cannot read {shown}: {e}"))?;
                if buf.is_empty() {
                    break;
                }
                match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        reader.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = buf.len();
                        reader.consume(len);
                    }
                }
            }
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(&text, layout).and_then(|(at, k, e, _)| Ok((plausible(at, now_ns)?, k, e)))
        {
            Ok((at, key, event)) => {
                history.record(at);
                if key.is_empty() {
                    continue;
                }
                let gap = analyzer.observe(
                    StepRow {
                        workflow_id: key,
                        workflow_name: String::new(),
                        step: event,
                        started_ns: at,
                        completed_ns: at,
                        deadline_ns: None,
                    },
                    None,
                );
                if let Some(g) = &gap {
                    history.gap(g, explainer);
                }
            }
            Err(_) => history.skipped += 1,
        }
    }
    Ok(ReadInfo {
        shown: shown.to_string(),
        kind: "jsonl",
        backend: "file",
        evicted: analyzer.evicted,
        ..Default::default()
    })
}
