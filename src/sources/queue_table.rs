//! The `queue_table` source: any table with a status column (presets `lab-jobs`,
//! `digest-tasks`, or an explicit mapping), on SQLite or Postgres.
//!
//! Only open rows are read — `WHERE status IN (open…)` is an index range search where a
//! status index exists, while counting finished rows would scan them all. Dead letters in
//! their own table are counted incrementally above a high-water mark on their time
//! column. Every statement is one short read-only statement.

use std::collections::HashMap;

use super::db::{Database, Query, Value};
use super::{DeadLetters, Observation, QueueStatus, Source, SourceError, MAX_ROWS_PER_POLL};
use crate::config::source::QueueLayout;

/// Largest attempt or recovery count read from an app: a million retries of one job is
/// already a broken loop; `i64::MAX`, `1e300` or `inf` are broken values, not counts.
pub const MAX_ATTEMPTS: i64 = 1_000_000;

/// An attempt count as the app wrote it: `None` for NULL, else a count within
/// 0..=[`MAX_ATTEMPTS`] or why it is not one (counted as `bad_value`, never used).
pub fn attempts(v: &Value) -> Option<Result<i64, String>> {
    let n = match v {
        Value::Null => return None,
        Value::Int(i) => *i as f64,
        other => match other.as_f64() {
            Some(f) => f,
            None => return Some(Err(format!("{:?} is not a count", other.text()))),
        },
    };
    Some(
        if n.is_finite() && (0.0..=MAX_ATTEMPTS as f64).contains(&n) {
            Ok(n as i64)
        } else {
            Err(format!("{n} is not an attempt count (0..={MAX_ATTEMPTS})"))
        },
    )
}

/// The statements of one layout, built once.
struct Queries {
    depth: Query,
    attempts: Option<Query>,
    claimed: Option<Query>,
    dead_status: Option<Query>,
    dead_count: Option<Query>,
    dead_mark: Option<Query>,
    dead_since: Option<Query>,
}

/// A quoted identifier (`schema.table` quotes each part).
fn q(identifier: &str) -> String {
    identifier
        .split('.')
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join(".")
}

impl Queries {
    fn new(l: &QueueLayout) -> Queries {
        let table = q(&l.table);
        let status = q(&l.status_column);
        let queue = l.queue_column.as_deref().map_or("''".to_string(), q);
        let open = (1..=l.open_statuses.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let oldest = l
            .created_column
            .as_deref()
            .map_or("NULL".to_string(), |c| format!("min({})", q(c)));
        Queries {
            depth: Query::portable(format!(
                "SELECT {queue}, {status}, count(*), {oldest} FROM {table} WHERE {status} IN ({open}) GROUP BY 1, 2"
            )),
            attempts: l.attempts_column.as_deref().map(|a| {
                Query::portable(format!(
                    "SELECT {queue}, CAST({key} AS TEXT), {a} FROM {table} WHERE {status} IN ({open}) AND {a} > 0 ORDER BY {key} LIMIT {MAX_ROWS_PER_POLL}",
                    key = q(&l.key_column),
                    a = q(a)
                ))
            }),
            claimed: match (&l.running_status, &l.claimed_column, l.lease) {
                (Some(_), Some(c), Some(_)) => Some(Query::portable(format!(
                    "SELECT {queue}, {c} FROM {table} WHERE {status} = ?1 LIMIT {MAX_ROWS_PER_POLL}",
                    c = q(c)
                ))),
                _ => None,
            },
            dead_status: l
                .dead_status
                .as_ref()
                .map(|_| Query::portable(format!("SELECT {queue}, count(*) FROM {table} WHERE {status} = ?1 GROUP BY 1"))),
            dead_count: l
                .dead_letter_table
                .as_ref()
                .map(|dl| Query::portable(format!("SELECT count(*) FROM {}", q(dl)))),
            // New dead letters: above the highest rowid seen on SQLite (robust to clock
            // steps and equal times); above the newest time seen on Postgres.
            dead_mark: match (&l.dead_letter_table, &l.dead_letter_time_column) {
                (Some(dl), Some(c)) => Some(Query {
                    sqlite: format!("SELECT count(*), max(rowid) FROM {}", q(dl)),
                    postgres: format!("SELECT count(*), max({}) FROM {}", q(c), q(dl)),
                }),
                _ => None,
            },
            dead_since: match (&l.dead_letter_table, &l.dead_letter_time_column) {
                (Some(dl), Some(c)) => Some(Query {
                    sqlite: format!("SELECT count(*), max(rowid) FROM {} WHERE rowid > ?1", q(dl)),
                    postgres: format!("SELECT count(*), max({c}) FROM {dl} WHERE {c} > $1", dl = q(dl), c = q(c)),
                }),
                _ => None,
            },
        }
    }
}

pub struct QueueTableSource {
    db: Database,
    layout: QueueLayout,
    queries: Queries,
    /// Failed attempts of each open row at the last poll, to count new retries.
    attempts: HashMap<String, i64>,
    last_dead_status: Option<HashMap<String, u64>>,
    /// Newest dead letter seen (rowid on SQLite, time on Postgres), once the table was read.
    dead_hwm: Option<Value>,
}

impl QueueTableSource {
    pub fn new(db: Database, layout: QueueLayout) -> QueueTableSource {
        QueueTableSource {
            db,
            queries: Queries::new(&layout),
            layout,
            attempts: HashMap::new(),
            last_dead_status: None,
            dead_hwm: None,
        }
    }
}

type Rows = Vec<Vec<Value>>;

struct Reads {
    depth: Rows,
    attempts: Rows,
    claimed: Rows,
    dead_status: Rows,
    /// (dead letters now, (count, mark) above the previous mark).
    dead_table: Option<(Rows, Rows)>,
    mode: Option<String>,
    clock: Option<crate::freeze::reference::RefSample>,
}

fn count(v: &Value) -> u64 {
    v.as_i64().unwrap_or(0).max(0) as u64
}

impl Source for QueueTableSource {
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError> {
        let (l, qs) = (&self.layout, &self.queries);
        let open: Vec<Value> = l
            .open_statuses
            .iter()
            .map(|s| Value::Text(s.clone()))
            .collect();
        let dead_hwm = self.dead_hwm.clone();
        let reads = self.db.read(|s| {
            let mut rows = |query: &Option<Query>, params: &[Value]| match query {
                Some(query) => s.rows(query, params),
                None => Ok(Vec::new()),
            };
            let depth = rows(&Some(qs.depth.clone()), &open)?;
            let attempts = rows(&qs.attempts, &open)?;
            let running = l
                .running_status
                .clone()
                .map(Value::Text)
                .unwrap_or(Value::Null);
            let claimed = rows(&qs.claimed, &[running])?;
            let dead = l
                .dead_status
                .clone()
                .map(Value::Text)
                .unwrap_or(Value::Null);
            let dead_status = rows(&qs.dead_status, &[dead])?;
            let dead_table = match &dead_hwm {
                _ if qs.dead_count.is_none() => None,
                None | Some(Value::Null) => {
                    Some((rows(&qs.dead_count, &[])?, rows(&qs.dead_mark, &[])?))
                }
                Some(mark) => Some((
                    rows(&qs.dead_count, &[])?,
                    rows(&qs.dead_since, std::slice::from_ref(mark))?,
                )),
            };
            Ok(Reads {
                depth,
                attempts,
                claimed,
                dead_status,
                dead_table,
                mode: s.journal_mode()?,
                clock: s.server_clock()?,
            })
        })?;

        let mut obs = Observation {
            journal_mode: reads.mode,
            server_clock: reads.clock,
            ..Default::default()
        };
        for r in &reads.depth {
            let oldest_ns = match r[3].time_ns() {
                Some(Ok(ns)) => Some(ns),
                Some(Err(_)) => {
                    obs.bad_timestamps += 1;
                    None
                }
                None => None,
            };
            obs.queues.push(QueueStatus {
                queue: r[0].text(),
                status: r[1].text(),
                depth: count(&r[2]),
                oldest_ns,
            });
        }

        // Retries: a row's failed attempts; increases since the last poll are new retries.
        let not_retries = i64::from(self.layout.attempts_count_claims);
        let mut seen = HashMap::with_capacity(reads.attempts.len());
        let mut retries: HashMap<String, u64> = HashMap::new();
        for r in &reads.attempts {
            let key = r[1].text();
            let before = self.attempts.get(&key).copied().unwrap_or(0);
            let failed = match attempts(&r[2]) {
                Some(Ok(n)) => (n - not_retries).max(0),
                None => 0,
                // Counted, never used: the row keeps what it had.
                Some(Err(_)) => {
                    obs.bad_values += 1;
                    seen.insert(key, before);
                    continue;
                }
            };
            if failed > before {
                *retries.entry(r[0].text()).or_default() += (failed - before) as u64;
            }
            seen.insert(key, failed);
        }
        // A capped read saw only part of the open rows: remember the rest too, or a row
        // that comes back into the window would count its attempts again.
        if reads.attempts.len() as i64 >= MAX_ROWS_PER_POLL
            && self.attempts.len() < 4 * MAX_ROWS_PER_POLL as usize
        {
            self.attempts.extend(seen);
        } else {
            self.attempts = seen;
        }
        obs.retries = retries.into_iter().collect();
        obs.retries.sort();

        if let Some(lease) = self.layout.lease {
            let lease_ns = lease.as_nanos() as i64;
            let mut stuck: HashMap<String, u64> = HashMap::new();
            for r in &reads.claimed {
                let slot = stuck.entry(r[0].text()).or_default();
                match r[1].time_ns() {
                    Some(Ok(at)) if now_ns - at > lease_ns => *slot += 1,
                    Some(Ok(_)) | None => {}
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
                .iter()
                .map(|r| (r[0].text(), count(&r[1])))
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
        if let Some((now, since)) = reads.dead_table {
            let current = now.first().map_or(0, |r| count(&r[0]));
            let (above, mark) = since
                .first()
                .map_or((0, Value::Null), |r| (count(&r[0]), r[1].clone()));
            // The first read only sets the mark; an empty table's first rows are all new.
            let new = match &self.dead_hwm {
                None => 0,
                Some(_) => above,
            };
            if !mark.is_null() || self.dead_hwm.is_none() {
                self.dead_hwm = Some(mark);
            }
            obs.dead_letters.push(DeadLetters {
                queue: String::new(),
                current,
                new,
            });
        }
        Ok(obs)
    }
}
