//! The `queue_table` source: any table with a status column (presets `lab-jobs`,
//! `digest-tasks`, or an explicit mapping).
//!
//! Only open rows are read — `WHERE status IN (open…)` is an index range search where a
//! status index exists, while counting finished rows would scan them all. Dead letters in
//! their own table are counted incrementally above a high-water mark on their time
//! column. Every statement is one short read; see [`super::sqlite`].

use std::collections::HashMap;
use std::path::PathBuf;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use super::sqlite::{classify, journal_mode, SqliteReader};
use super::timestamp::{to_unix_ns, RawTime};
use super::{DeadLetters, Observation, QueueStatus, Source, SourceError, MAX_ROWS_PER_POLL};
use crate::config::source::QueueLayout;

pub struct QueueTableSource {
    db: SqliteReader,
    layout: QueueLayout,
    /// Failed attempts of each open row at the last poll, to count new retries.
    attempts: HashMap<String, i64>,
    last_dead_status: Option<HashMap<String, u64>>,
    dead_hwm: Option<Value>,
    dead_total: u64,
}

fn q(identifier: &str) -> String {
    identifier
        .split('.')
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join(".")
}

fn raw_time(v: &Value) -> Option<Result<i64, String>> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(to_unix_ns(RawTime::Int(*i))),
        Value::Real(f) => Some(to_unix_ns(RawTime::Float(*f))),
        Value::Text(t) => Some(to_unix_ns(RawTime::Text(t))),
        Value::Blob(_) => Some(Err("a blob is not a time".into())),
    }
}

impl QueueTableSource {
    pub fn new(path: PathBuf, layout: QueueLayout) -> QueueTableSource {
        QueueTableSource {
            db: SqliteReader::new(path),
            layout,
            attempts: HashMap::new(),
            last_dead_status: None,
            dead_hwm: None,
            dead_total: 0,
        }
    }

    fn placeholders(n: usize) -> String {
        vec!["?"; n].join(", ")
    }
}

struct Reads {
    depth: Vec<(String, String, i64, Value)>,
    attempts: Vec<(String, String, i64)>,
    claimed: Vec<(String, Value)>,
    dead_status: Vec<(String, i64)>,
    dead_table: Option<(i64, Value)>,
    mode: String,
}

impl Source for QueueTableSource {
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError> {
        let l = self.layout.clone();
        let path = self.db.path().to_path_buf();
        let err = |e: rusqlite::Error| classify(&path, e);
        let table = q(&l.table);
        let status = q(&l.status_column);
        let queue = l.queue_column.as_deref().map_or("''".to_string(), q);
        let open = Self::placeholders(l.open_statuses.len());
        let dead_hwm = self.dead_hwm.clone();

        let reads = self.db.with(|conn: &Connection| {
            let created = l.created_column.as_deref().map_or("NULL".to_string(), q);
            let sql = format!(
                "SELECT {queue}, {status}, count(*), min({created}) FROM {table} WHERE {status} IN ({open}) GROUP BY 1, 2"
            );
            let depth = conn
                .prepare_cached(&sql)
                .map_err(err)?
                .query_map(params_from_iter(l.open_statuses.iter()), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;

            let attempts = match &l.attempts_column {
                None => Vec::new(),
                Some(col) => {
                    let sql = format!(
                        "SELECT {queue}, CAST({key} AS TEXT), {a} FROM {table} WHERE {status} IN ({open}) AND {a} > 0 LIMIT {MAX_ROWS_PER_POLL}",
                        key = q(&l.key_column),
                        a = q(col)
                    );
                    conn.prepare_cached(&sql)
                        .map_err(err)?
                        .query_map(params_from_iter(l.open_statuses.iter()), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .map_err(err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(err)?
                }
            };

            let claimed = match (&l.running_status, &l.claimed_column, l.lease) {
                (Some(running), Some(col), Some(_)) => {
                    let sql = format!("SELECT {queue}, {c} FROM {table} WHERE {status} = ?1 LIMIT {MAX_ROWS_PER_POLL}", c = q(col));
                    conn.prepare_cached(&sql)
                        .map_err(err)?
                        .query_map([running], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(err)?
                }
                _ => Vec::new(),
            };

            let dead_status = match &l.dead_status {
                None => Vec::new(),
                Some(dead) => {
                    let sql = format!("SELECT {queue}, count(*) FROM {table} WHERE {status} = ?1 GROUP BY 1");
                    conn.prepare_cached(&sql)
                        .map_err(err)?
                        .query_map([dead], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(err)?
                }
            };

            let dead_table = match (&l.dead_letter_table, &l.dead_letter_time_column) {
                (Some(dl), Some(col)) => {
                    let (dl, col) = (q(dl), q(col));
                    let row = match &dead_hwm {
                        None => conn.query_row(&format!("SELECT count(*), max({col}) FROM {dl}"), [], |r| Ok((r.get(0)?, r.get(1)?))),
                        Some(h) => conn.query_row(
                            &format!("SELECT count(*), max({col}) FROM {dl} WHERE {col} > ?1"),
                            [h],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        ),
                    };
                    Some(row.map_err(err)?)
                }
                _ => None,
            };
            let mode = journal_mode(conn).map_err(err)?;
            Ok(Reads { depth, attempts, claimed, dead_status, dead_table, mode })
        })?;

        let mut obs = Observation {
            journal_mode: Some(reads.mode),
            ..Default::default()
        };
        for (queue, status, count, oldest) in reads.depth {
            let oldest_ns = match raw_time(&oldest) {
                Some(Ok(ns)) => Some(ns),
                Some(Err(_)) => {
                    obs.bad_timestamps += 1;
                    None
                }
                None => None,
            };
            obs.queues.push(QueueStatus {
                queue,
                status,
                depth: count as u64,
                oldest_ns,
            });
        }

        // Retries: a row's failed attempts; increases since the last poll are new retries.
        let not_retries = i64::from(self.layout.attempts_count_claims);
        let mut seen = HashMap::with_capacity(reads.attempts.len());
        let mut retries: HashMap<String, u64> = HashMap::new();
        for (queue, key, attempts) in reads.attempts {
            let failed = (attempts - not_retries).max(0);
            let before = self.attempts.get(&key).copied().unwrap_or(0);
            if failed > before {
                *retries.entry(queue).or_default() += (failed - before) as u64;
            }
            seen.insert(key, failed);
        }
        self.attempts = seen;
        obs.retries = retries.into_iter().collect();
        obs.retries.sort();

        if let Some(lease) = self.layout.lease {
            let lease_ns = lease.as_nanos() as i64;
            let mut stuck: HashMap<String, u64> = HashMap::new();
            for (queue, claimed) in reads.claimed {
                match raw_time(&claimed) {
                    Some(Ok(at)) if now_ns - at > lease_ns => *stuck.entry(queue).or_default() += 1,
                    Some(Ok(_)) | None => {
                        stuck.entry(queue).or_default();
                    }
                    Some(Err(_)) => obs.bad_timestamps += 1,
                }
            }
            if stuck.is_empty() {
                stuck.insert(String::new(), 0);
            }
            obs.stuck = stuck.into_iter().collect();
            obs.stuck.sort();
        }

        if self.layout.dead_status.is_some() {
            let now: HashMap<String, u64> = reads
                .dead_status
                .into_iter()
                .map(|(q, c)| (q, c as u64))
                .collect();
            for (queue, current) in &now {
                let new = self.last_dead_status.as_ref().map_or(0, |before| {
                    current.saturating_sub(before.get(queue).copied().unwrap_or(0))
                });
                obs.dead_letters.push(DeadLetters {
                    queue: queue.clone(),
                    current: *current,
                    new,
                });
            }
            if now.is_empty() {
                obs.dead_letters.push(DeadLetters {
                    queue: String::new(),
                    current: 0,
                    new: 0,
                });
            }
            self.last_dead_status = Some(now);
        }
        if let Some((count, max)) = reads.dead_table {
            let count = count as u64;
            let new = if self.dead_hwm.is_none() { 0 } else { count };
            self.dead_total = if self.dead_hwm.is_none() {
                count
            } else {
                self.dead_total + count
            };
            if max != Value::Null {
                self.dead_hwm = Some(max);
            } else if self.dead_hwm.is_none() {
                self.dead_hwm = Some(Value::Integer(i64::MIN));
            }
            obs.dead_letters.push(DeadLetters {
                queue: String::new(),
                current: self.dead_total,
                new,
            });
        }
        Ok(obs)
    }
}
