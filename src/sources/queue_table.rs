//! The `queue_table` source: any table with a status column (presets `lab-jobs`,
//! `digest-tasks`, or an explicit mapping), on SQLite or Postgres.
//!
//! Only open rows are read — `WHERE status IN (open…)` is an index range search where a
//! status index exists, while counting finished rows would scan them all. Dead letters in
//! their own table are counted incrementally above a high-water mark on their time
//! column. Every statement is one short read-only statement.

use std::collections::HashMap;

use super::db::Database;
use super::session::{Query, Value};
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

/// Open rows whose attempts are remembered to count new retries; beyond this a row first
/// seen is not remembered and its retries are not counted, said as `rows_capped` (about
/// 100 bytes a row).
pub const MAX_TRACKED_ROWS: usize = 10 * MAX_ROWS_PER_POLL as usize;

/// The statements of one layout, built once.
struct Queries {
    depth: Query,
    /// Open rows with attempts, one page in key order: the first page, and the page after
    /// a key (one more parameter after the open statuses).
    attempts: Option<(Query, Query)>,
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
            // Paged by the key (a keyset cursor), so more open rows than one read takes
            // are all seen, a page per poll, instead of only the first MAX_ROWS_PER_POLL.
            // Aliased: Postgres names `CAST(id AS TEXT)` "id" too, and ORDER BY would be
            // ambiguous.
            attempts: l.attempts_column.as_deref().map(|a| {
                let page = |after: &str| {
                    Query::portable(format!(
                        "SELECT {queue}, CAST({key} AS TEXT) AS stallwatch_key_text, {a}, {key} AS stallwatch_key FROM {table} WHERE {status} IN ({open}) AND {a} > 0{after} ORDER BY {key} LIMIT {MAX_ROWS_PER_POLL}",
                        key = q(&l.key_column),
                        a = q(a)
                    ))
                };
                let after = format!(
                    " AND {} > ?{}",
                    q(&l.key_column),
                    l.open_statuses.len() + 1
                );
                (page(""), page(&after))
            }),
            claimed: match (&l.running_status, &l.claimed_column, l.lease) {
                (Some(_), Some(c), Some(_)) => Some(Query::portable(format!(
                    // Oldest claims first: when more rows run than one read takes, the
                    // ones past their lease are the ones read.
                    "SELECT {queue}, {c} FROM {table} WHERE {status} = ?1 ORDER BY {c} LIMIT {MAX_ROWS_PER_POLL}",
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
    /// Failed attempts of each open row when last read, and the sweep that read it.
    attempts: HashMap<String, (i64, u64)>,
    /// The key the next page of attempts starts after; `None`: a new sweep from the start.
    attempts_after: Option<Value>,
    /// Sweeps of the open rows begun: rows not read by the last whole sweep are closed.
    sweep: u64,
    /// Dead letters in their table at the last poll.
    last_dead_count: Option<u64>,
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
            attempts_after: None,
            sweep: 0,
            last_dead_count: None,
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
        let attempts_after = self.attempts_after.clone();
        let reads = self.db.read(|s| {
            let mut rows = |query: &Option<Query>, params: &[Value]| match query {
                Some(query) => s.rows(query, params),
                None => Ok(Vec::new()),
            };
            let depth = rows(&Some(qs.depth.clone()), &open)?;
            let attempts = match (&qs.attempts, &attempts_after) {
                (None, _) => Vec::new(),
                (Some((first, _)), None) => rows(&Some(first.clone()), &open)?,
                (Some((_, after)), Some(key)) => {
                    let mut params = open.clone();
                    params.push(key.clone());
                    rows(&Some(after.clone()), &params)?
                }
            };
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
        // A sweep reads the open rows a page per poll; a short page ends it.
        let not_retries = i64::from(self.layout.attempts_count_claims);
        if self.attempts_after.is_none() {
            self.sweep += 1;
        }
        let sweep = self.sweep;
        let mut retries: HashMap<String, u64> = HashMap::new();
        let mut untracked = false;
        for r in &reads.attempts {
            let key = r[1].text();
            let known = self.attempts.get(&key).map(|(n, _)| *n);
            let before = known.unwrap_or(0);
            let failed = match attempts(&r[2]) {
                Some(Ok(n)) => (n - not_retries).max(0),
                None => 0,
                // Counted, never used: the row keeps what it had.
                Some(Err(_)) => {
                    obs.bad_values += 1;
                    before
                }
            };
            if known.is_none() && self.attempts.len() >= MAX_TRACKED_ROWS {
                untracked = true;
                continue;
            }
            if failed > before {
                *retries.entry(r[0].text()).or_default() += (failed - before) as u64;
            }
            self.attempts.insert(key, (failed, sweep));
        }
        // Retries of rows past the limit are not counted: a lower bound, and said so.
        if untracked {
            obs.capped_reads += 1;
        }
        let full = reads.attempts.len() as i64 >= MAX_ROWS_PER_POLL;
        self.attempts_after = reads.attempts.last().filter(|_| full).map(|r| r[3].clone());
        if !full {
            // A whole sweep is done: rows it did not read are closed or retry no more.
            self.attempts.retain(|_, (_, seen_in)| *seen_in == sweep);
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
            // A full read whose newest claim is still past its lease may have left more
            // stuck rows unread: the count is a lower bound, and says so.
            let full = reads.claimed.len() as i64 >= MAX_ROWS_PER_POLL;
            let last_stuck = reads
                .claimed
                .last()
                .and_then(|r| r[1].time_ns())
                .is_some_and(|t| matches!(t, Ok(at) if now_ns - at > lease_ns));
            if full && last_stuck {
                obs.capped_reads += 1;
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
            // Never by the mark alone: letters at the mark's own time committed later, or
            // any after a mark stamped in the future, still raise the count.
            let grown = self
                .last_dead_count
                .map_or(0, |before| current.saturating_sub(before));
            self.last_dead_count = Some(current);
            let new = match &self.dead_hwm {
                None => 0,
                Some(_) => above.max(grown),
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
