//! `[[source]]` tables: where job and step timestamps come from, validated per kind.
//!
//! One flat table per source; a key that does not apply to the source's kind is an
//! error naming both, so a `lease` on a `dbos` source cannot be silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::limits::{self, quoted};
use super::value::HumanDuration;
use crate::time::parse_utc_offset;

/// Default poll interval: fresh enough for a 3 a.m. page, cheap enough for the app DB.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Default idle time after which a pending workflow counts as stalled.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(600);
/// Default shortest gap between steps recorded as an episode.
pub const DEFAULT_GAP_MIN: Duration = Duration::from_secs(5);
/// Most sources one sidecar watches (each has a thread and a connection).
pub const MAX_SOURCES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Dbos,
    QueueTable,
    Jsonl,
    Sql,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Dbos => "dbos",
            SourceKind::QueueTable => "queue_table",
            SourceKind::Jsonl => "jsonl",
            SourceKind::Sql => "sql",
        }
    }
}

/// How a queue table is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLayout {
    pub table: String,
    pub key_column: String,
    pub status_column: String,
    pub queue_column: Option<String>,
    pub attempts_column: Option<String>,
    pub created_column: Option<String>,
    pub claimed_column: Option<String>,
    /// Statuses of rows still to be done (counted for depth and age).
    pub open_statuses: Vec<String>,
    /// The status of a claimed row whose lease can expire.
    pub running_status: Option<String>,
    pub lease: Option<Duration>,
    /// Dead letters kept as a status value of the same table.
    pub dead_status: Option<String>,
    /// Dead letters kept in their own table, with a time column (for new-since-last-poll).
    pub dead_letter_table: Option<String>,
    pub dead_letter_time_column: Option<String>,
    pub max_attempts: Option<u32>,
    /// The attempts column is incremented when a job is claimed (so a job's first
    /// attempt is not a retry), rather than when an attempt fails.
    pub attempts_count_claims: bool,
}

/// Where a JSON-lines log keeps its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonlLayout {
    pub time_field: String,
    pub key_field: String,
    pub event_field: String,
    pub cost_field: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceDetail {
    Dbos,
    QueueTable(Box<QueueLayout>),
    Jsonl(JsonlLayout),
    Sql {
        query: String,
        labels: Vec<String>,
        values: Vec<String>,
    },
}

/// One validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub location: Location,
    pub poll: Duration,
    pub stall_after: Duration,
    pub gap_min: Duration,
    pub cost_cap_usd: Option<f64>,
    pub cost_utc_offset_secs: i64,
    pub detail: SourceDetail,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    name: Option<String>,
    kind: Option<SourceKind>,
    url: Option<String>,
    poll: Option<HumanDuration>,
    stall_after: Option<HumanDuration>,
    gap_min: Option<HumanDuration>,
    cost_cap_usd: Option<f64>,
    cost_timezone: Option<String>,
    // queue_table
    preset: Option<String>,
    table: Option<String>,
    key_column: Option<String>,
    status_column: Option<String>,
    queue_column: Option<String>,
    attempts_column: Option<String>,
    created_column: Option<String>,
    claimed_column: Option<String>,
    open_statuses: Option<Vec<String>>,
    running_status: Option<String>,
    lease: Option<HumanDuration>,
    dead_status: Option<String>,
    dead_letter_table: Option<String>,
    dead_letter_time_column: Option<String>,
    max_attempts: Option<u32>,
    attempts_count_claims: Option<bool>,
    // jsonl
    time_field: Option<String>,
    key_field: Option<String>,
    event_field: Option<String>,
    cost_field: Option<String>,
    // sql
    query: Option<String>,
    labels: Option<Vec<String>>,
    values: Option<Vec<String>>,
}

/// The `lab-jobs` preset: a job agent's `jobs` + `dead_letter` tables.
pub fn preset_lab_jobs() -> QueueLayout {
    QueueLayout {
        table: "jobs".into(),
        key_column: "key".into(),
        status_column: "status".into(),
        queue_column: None,
        attempts_column: Some("attempts".into()),
        created_column: None,
        claimed_column: None,
        open_statuses: vec!["pending".into()],
        running_status: None,
        lease: None,
        dead_status: None,
        dead_letter_table: Some("dead_letter".into()),
        dead_letter_time_column: Some("died".into()),
        max_attempts: Some(4),
        attempts_count_claims: false,
    }
}

/// The `digest-tasks` preset: a lease-based task queue claimed with `FOR UPDATE SKIP LOCKED`.
pub fn preset_digest_tasks() -> QueueLayout {
    QueueLayout {
        table: "digest_tasks".into(),
        key_column: "id".into(),
        status_column: "status".into(),
        queue_column: None,
        attempts_column: Some("attempts".into()),
        created_column: Some("created_at".into()),
        claimed_column: Some("claimed_at".into()),
        open_statuses: vec!["PENDING".into(), "RUNNING".into()],
        running_status: Some("RUNNING".into()),
        lease: Some(Duration::from_secs(600)),
        dead_status: Some("FAILED".into()),
        dead_letter_table: None,
        dead_letter_time_column: None,
        max_attempts: None,
        attempts_count_claims: true,
    }
}

/// Where a source reads from.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A Postgres URL (may hold a password: show it only through [`Location::shown`]).
    Postgres(String),
    /// A plain file (`jsonl`).
    File(PathBuf),
}

impl Location {
    /// The location as it may appear in logs and errors: passwords removed.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(p) | Location::File(p) => p.display().to_string(),
            Location::Postgres(url) => super::value::redact_url(url),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.shown())
    }
}

/// Reads a source URL: `postgres://…` / `postgresql://…` for Postgres (not for `jsonl`),
/// else a path as [`url_to_path`] reads it.
pub fn parse_location(url: &str, kind: SourceKind) -> Result<Location, String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if kind == SourceKind::Jsonl {
            return Err("is a Postgres URL; a jsonl source reads a file".into());
        }
        super::postgres_url::check(url)?;
        let (driver_url, _) = super::postgres_url::split_sslmode(url)?;
        // The driver's own reading, so what it would refuse at connect time is refused here.
        if let Err(e) = driver_url.parse::<postgres::Config>() {
            return Err(format!(
                "is not a Postgres URL the driver accepts: {}",
                limits::clip_words(&e.to_string())
            ));
        }
        return Ok(Location::Postgres(url.to_string()));
    }
    let path = url_to_path(url)?;
    Ok(if kind == SourceKind::Jsonl {
        Location::File(path)
    } else {
        Location::Sqlite(path)
    })
}

/// Turns a source URL into a path: `sqlite:///abs/path`, `sqlite://relative`,
/// `sqlite:relative`, `file:///abs` or a plain path.
pub fn url_to_path(url: &str) -> Result<PathBuf, String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .or_else(|| url.strip_prefix("file://"))
        .unwrap_or(url);
    if rest.contains("://") {
        return Err(format!(
            "has an unknown scheme in {}; use sqlite:///ABSOLUTE/PATH or a path",
            quoted(&super::value::redact_url(url))
        ));
    }
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() {
        return Err("has no path".into());
    }
    Ok(PathBuf::from(path))
}

/// Checks a `sql` source's columns: usable as metric and label names, `source` not
/// taken, and one label set per value column across sources (they share a metric).
fn sql_columns(
    values: &[String],
    labels: &[String],
    taken: &[SourceConfig],
) -> Result<(), (&'static str, String)> {
    for (k, list) in [("values", values), ("labels", labels)] {
        if let Some(bad) = list.iter().find(|n| !metric_name_part(n)) {
            return Err((
                k,
                format!("{} must be a column name usable in a metric: letters, digits and _, not starting with a digit", quoted(bad)),
            ));
        }
    }
    if labels.iter().any(|l| l == "source") {
        return Err((
            "labels",
            "must not use \"source\": stallwatch sets that label".into(),
        ));
    }
    for other in taken {
        if let SourceDetail::Sql {
            labels: theirs,
            values: their_values,
            ..
        } = &other.detail
        {
            if let Some(shared) = values.iter().find(|v| their_values.contains(v)) {
                if theirs != labels {
                    return Err((
                        "labels",
                        format!(
                            "must equal those of source {:?}, which also exports column {shared:?} as stallwatch_sql_{shared}",
                            other.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether `name` can be part of a Prometheus metric or label name.
fn metric_name_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// A table or column name safe to put in double quotes.
fn identifier(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !value.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(value.to_string())
    } else {
        Err(format!(
            "{} is not a plain table or column name (letters, digits, _ and . only)",
            quoted(value)
        ))
    }
}

pub(super) fn validate(
    i: usize,
    raw: RawSource,
    taken: &[SourceConfig],
) -> Result<SourceConfig, (String, String)> {
    let key = |k: &str| format!("source[{i}].{k}");
    let name = raw
        .name
        .clone()
        .ok_or_else(|| (key("name"), "is required".to_string()))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err((
            key("name"),
            format!(
                "{} must be 1-64 letters, digits, '_', '-' or '.'",
                quoted(&name)
            ),
        ));
    }
    if taken.iter().any(|s| s.name == name) {
        return Err((
            key("name"),
            format!("{} is used by another source", quoted(&name)),
        ));
    }
    let kind = raw.kind.ok_or_else(|| {
        (
            key("kind"),
            "is required: dbos, queue_table, jsonl or sql".to_string(),
        )
    })?;
    let url = raw
        .url
        .clone()
        .ok_or_else(|| (key("url"), "is required".to_string()))?;
    let location = parse_location(&url, kind).map_err(|p| (key("url"), p))?;

    // Keys that only some kinds understand.
    let queue_keys: [(&str, bool); 16] = [
        ("preset", raw.preset.is_some()),
        ("table", raw.table.is_some()),
        ("key_column", raw.key_column.is_some()),
        ("status_column", raw.status_column.is_some()),
        ("queue_column", raw.queue_column.is_some()),
        ("attempts_column", raw.attempts_column.is_some()),
        ("created_column", raw.created_column.is_some()),
        ("claimed_column", raw.claimed_column.is_some()),
        ("open_statuses", raw.open_statuses.is_some()),
        ("running_status", raw.running_status.is_some()),
        ("lease", raw.lease.is_some()),
        ("dead_status", raw.dead_status.is_some()),
        ("dead_letter_table", raw.dead_letter_table.is_some()),
        (
            "dead_letter_time_column",
            raw.dead_letter_time_column.is_some(),
        ),
        ("max_attempts", raw.max_attempts.is_some()),
        ("attempts_count_claims", raw.attempts_count_claims.is_some()),
    ];
    let jsonl_keys = [
        ("time_field", raw.time_field.is_some()),
        ("key_field", raw.key_field.is_some()),
        ("event_field", raw.event_field.is_some()),
        ("cost_field", raw.cost_field.is_some()),
    ];
    let sql_keys = [
        ("query", raw.query.is_some()),
        ("labels", raw.labels.is_some()),
        ("values", raw.values.is_some()),
    ];
    let step_keys = [("gap_min", raw.gap_min.is_some())];
    let workflow_keys = [("stall_after", raw.stall_after.is_some())];
    let mut foreign: Vec<(&str, bool)> = Vec::new();
    if kind != SourceKind::QueueTable {
        foreign.extend(queue_keys);
    }
    if kind != SourceKind::Jsonl {
        foreign.extend(jsonl_keys);
    }
    if kind != SourceKind::Sql {
        foreign.extend(sql_keys);
    }
    if !matches!(kind, SourceKind::Dbos | SourceKind::Jsonl) {
        foreign.extend(step_keys);
    }
    if kind != SourceKind::Dbos {
        foreign.extend(workflow_keys);
    }
    if let Some((k, _)) = foreign.into_iter().find(|(_, present)| *present) {
        return Err((
            key(k),
            format!("does not apply to a source of kind {:?}", kind.as_str()),
        ));
    }

    let ranged =
        |k: &str, value: Option<HumanDuration>, range: limits::Range<Duration>, default| {
            value
                .map_or(Ok(default), |HumanDuration(d)| range.check(d))
                .map_err(|p| (key(k), p))
        };
    let poll = ranged("poll", raw.poll, limits::SOURCE_POLL, DEFAULT_POLL)?;
    let stall_after = ranged(
        "stall_after",
        raw.stall_after,
        limits::SOURCE_STALL_AFTER,
        DEFAULT_STALL_AFTER,
    )?;
    let gap_min = ranged(
        "gap_min",
        raw.gap_min,
        limits::SOURCE_GAP_MIN,
        DEFAULT_GAP_MIN,
    )?;
    let cost_cap_usd = raw
        .cost_cap_usd
        .map(|cap| {
            limits::SOURCE_COST_CAP_USD
                .check(cap)
                .map_err(|p| (key("cost_cap_usd"), format!("{p} (US dollars a day)")))
        })
        .transpose()?;
    let cost_utc_offset_secs = match raw.cost_timezone.as_deref() {
        None => 0,
        Some(tz) => parse_utc_offset(tz).ok_or_else(|| {
            (
                key("cost_timezone"),
                format!(
                    "{} must be \"UTC\" or a fixed offset like \"+02:00\"",
                    quoted(tz)
                ),
            )
        })?,
    };

    let detail = match kind {
        SourceKind::Dbos => SourceDetail::Dbos,
        SourceKind::QueueTable => SourceDetail::QueueTable(Box::new(queue_layout(&raw, &key)?)),
        SourceKind::Jsonl => SourceDetail::Jsonl(JsonlLayout {
            time_field: raw.time_field.clone().unwrap_or_else(|| "ts".into()),
            key_field: raw.key_field.clone().unwrap_or_else(|| "key".into()),
            event_field: raw.event_field.clone().unwrap_or_else(|| "event".into()),
            cost_field: raw.cost_field.clone().unwrap_or_else(|| "cost_usd".into()),
        }),
        SourceKind::Sql => {
            let query = raw
                .query
                .clone()
                .ok_or_else(|| (key("query"), "is required for a sql source".to_string()))?;
            let values = raw.values.clone().unwrap_or_default();
            if values.is_empty() {
                return Err((
                    key("values"),
                    "must name at least one numeric column of the query".into(),
                ));
            }
            // One statement only: the source wraps the query in a read-only SELECT, and a
            // second statement would run outside it. A trailing ';' is just dropped.
            let query = query.trim().trim_end_matches(';').trim_end().to_string();
            if query.contains(';') {
                return Err((
                    key("query"),
                    "must be a single statement without ';' (it runs wrapped in a read-only SELECT)".into(),
                ));
            }
            let labels = raw.labels.clone().unwrap_or_default();
            sql_columns(&values, &labels, taken).map_err(|(k, p)| (key(k), p))?;
            SourceDetail::Sql {
                query,
                labels,
                values,
            }
        }
    };
    if cost_cap_usd.is_some() && !matches!(kind, SourceKind::Jsonl) {
        return Err((
            key("cost_cap_usd"),
            "applies to jsonl sources, where spend is logged".into(),
        ));
    }
    Ok(SourceConfig {
        name,
        kind,
        location,
        poll,
        stall_after,
        gap_min,
        cost_cap_usd,
        cost_utc_offset_secs,
        detail,
    })
}

fn queue_layout(
    raw: &RawSource,
    key: &dyn Fn(&str) -> String,
) -> Result<QueueLayout, (String, String)> {
    let mut layout = match raw.preset.as_deref() {
        Some("lab-jobs") => preset_lab_jobs(),
        Some("digest-tasks") => preset_digest_tasks(),
        Some(other) => {
            return Err((
                key("preset"),
                format!(
                    "{} is not a preset; use \"lab-jobs\" or \"digest-tasks\"",
                    quoted(other)
                ),
            ))
        }
        None => {
            let table = raw
                .table
                .clone()
                .ok_or_else(|| (key("table"), "is required without a preset".to_string()))?;
            QueueLayout {
                table,
                key_column: "id".into(),
                status_column: "status".into(),
                queue_column: None,
                attempts_column: None,
                created_column: None,
                claimed_column: None,
                open_statuses: Vec::new(),
                running_status: None,
                lease: None,
                dead_status: None,
                dead_letter_table: None,
                dead_letter_time_column: None,
                max_attempts: None,
                attempts_count_claims: false,
            }
        }
    };
    let set = |slot: &mut String, k: &str, v: &Option<String>| -> Result<(), (String, String)> {
        if let Some(v) = v {
            *slot = identifier(v).map_err(|p| (key(k), p))?;
        }
        Ok(())
    };
    let set_opt =
        |slot: &mut Option<String>, k: &str, v: &Option<String>| -> Result<(), (String, String)> {
            if let Some(v) = v {
                *slot = Some(identifier(v).map_err(|p| (key(k), p))?);
            }
            Ok(())
        };
    set(&mut layout.table, "table", &raw.table)?;
    set(&mut layout.key_column, "key_column", &raw.key_column)?;
    set(
        &mut layout.status_column,
        "status_column",
        &raw.status_column,
    )?;
    set_opt(&mut layout.queue_column, "queue_column", &raw.queue_column)?;
    set_opt(
        &mut layout.attempts_column,
        "attempts_column",
        &raw.attempts_column,
    )?;
    set_opt(
        &mut layout.created_column,
        "created_column",
        &raw.created_column,
    )?;
    set_opt(
        &mut layout.claimed_column,
        "claimed_column",
        &raw.claimed_column,
    )?;
    set_opt(
        &mut layout.dead_letter_table,
        "dead_letter_table",
        &raw.dead_letter_table,
    )?;
    set_opt(
        &mut layout.dead_letter_time_column,
        "dead_letter_time_column",
        &raw.dead_letter_time_column,
    )?;
    if let Some(s) = &raw.open_statuses {
        layout.open_statuses = s.clone();
    }
    if raw.running_status.is_some() {
        layout.running_status = raw.running_status.clone();
    }
    if raw.dead_status.is_some() {
        layout.dead_status = raw.dead_status.clone();
    }
    if let Some(HumanDuration(l)) = raw.lease {
        layout.lease = Some(
            limits::SOURCE_LEASE
                .check(l)
                .map_err(|p| (key("lease"), p))?,
        );
    }
    if let Some(n) = raw.max_attempts {
        layout.max_attempts = Some(
            limits::SOURCE_MAX_ATTEMPTS
                .check(n)
                .map_err(|p| (key("max_attempts"), p))?,
        );
    }
    if let Some(claims) = raw.attempts_count_claims {
        layout.attempts_count_claims = claims;
    }
    if layout.open_statuses.is_empty() {
        return Err((
            key("open_statuses"),
            "must list the statuses of rows still to be done, like [\"pending\"]".into(),
        ));
    }
    if layout.lease.is_some()
        && (layout.running_status.is_none() || layout.claimed_column.is_none())
    {
        return Err((
            key("lease"),
            "needs running_status and claimed_column to tell when a lease expires".into(),
        ));
    }
    if layout.dead_letter_table.is_some() != layout.dead_letter_time_column.is_some() {
        return Err((
            key("dead_letter_table"),
            "and dead_letter_time_column go together".into(),
        ));
    }
    Ok(layout)
}
