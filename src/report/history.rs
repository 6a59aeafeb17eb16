//! The state DB as `report` and `verify` read it: opened read-only, never created,
//! migrated or written (a sidecar may be running on it). Each read is one statement;
//! totals are computed by SQLite (`GROUP BY`), and every list is bounded by a `LIMIT`, so
//! a year of history costs what its index range costs, not what it holds.
//!
//! A state DB with no tables yet (`user_version` 0) reads as empty; one from a newer
//! stallwatch is refused, naming the file; one from before episodes existed (version 1)
//! reads with no episodes; one from before watch sessions (version < 5) gets sessions
//! estimated from what it holds, marked as such.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::stats::rank_index;
use crate::coverage::Session;
use crate::freeze::ChannelEstimate;
use crate::state::{schema_version, STATE_DB_FILE};
use crate::time::Window;

/// How long a read waits for the sidecar's writer.
pub const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The freeze kind that is a clock jump, not lost time (as `FreezeKind::is_lost_time`).
pub const NOT_LOST_TIME: &str = "wall_clock_step";
/// Episode kinds that are time lost between steps (their p99 is "gap p99").
pub const GAP_KINDS: [&str; 2] = ["step_gap", "wait_overrun"];

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no state database at {path}: stallwatch has not run with this data directory; pass --data-dir with the sidecar's data_dir")]
    Missing { path: PathBuf },
    #[error("state database {path} cannot be read: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path} is not a stallwatch state database (it holds other tables); pass --data-dir with the sidecar's data_dir")]
    NotStateDb { path: PathBuf },
    #[error("state database {path} has schema version {found}, newer than this stallwatch understands ({known}); use the stallwatch that wrote it")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

/// Count, total and longest of one freeze kind in a window. For `wall_clock_step` the
/// total is the signed sum of steps and `longest_ns` the largest step in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindTotal {
    pub kind: String,
    pub count: u64,
    pub total_ns: i64,
    pub longest_ns: i64,
}

impl KindTotal {
    pub fn is_lost_time(&self) -> bool {
        self.kind != NOT_LOST_TIME
    }
}

/// Count, total and longest of one (episode kind, cause) in a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EpisodeTotal {
    pub kind: String,
    pub cause: String,
    pub count: u64,
    pub total_ns: i64,
    pub longest_ns: i64,
}

/// A freeze event as stored (kind kept as text, so a newer build's kinds show as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeRow {
    pub id: i64,
    pub kind: String,
    pub started_at_ns: i64,
    pub duration_ns: i64,
    pub channels: Vec<ChannelEstimate>,
}

/// An episode as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeRow {
    pub id: i64,
    pub source: String,
    pub kind: String,
    pub cause: String,
    pub workflow_id: String,
    pub workflow_name: String,
    pub from_step: String,
    pub to_step: String,
    pub started_at_ns: i64,
    pub duration_ns: i64,
    pub freeze_id: Option<i64>,
}

/// What the state DB says about when the sidecar was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Start of the earliest freeze or episode stored.
    pub earliest_record_ns: Option<i64>,
    /// Start of the earliest lost-time freeze stored.
    pub earliest_freeze_ns: Option<i64>,
    /// Latest time the sidecar wrote a freeze or episode (`detected_at_ns`).
    pub latest_write_ns: Option<i64>,
    /// Wall time of the heartbeat (the table keeps only the last one).
    pub heartbeat_ns: Option<i64>,
    /// Whether that heartbeat was written by an orderly shutdown.
    pub heartbeat_clean: Option<bool>,
    /// When the state DB file was created, where the filesystem records it.
    pub created_ns: Option<i64>,
}

/// Everything stored, for "no data in this window" hints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stored {
    pub freezes: u64,
    pub episodes: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
}

/// Alerts of one rule that started in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTotal {
    pub rule: String,
    pub count: u64,
    /// Of those, still firing when the report was made.
    pub firing: u64,
    /// Longest time one of them held (to the window's end if still firing); 0 for one-shots.
    pub longest_ns: i64,
    /// Of those, ones a silence held back (schema 7 on; 0 before).
    pub silenced: u64,
}

/// Notifications to one channel made in the window, by outcome so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotificationTotal {
    pub channel: String,
    /// `sent`, `failed`, `dropped` or `pending`.
    pub state: String,
    pub count: u64,
}

/// The sidecar's own alerts in a window (schema v3 on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertHistory {
    pub rules: Vec<RuleTotal>,
    pub notifications: Vec<NotificationTotal>,
}

impl AlertHistory {
    pub fn rule(&self, name: &str) -> Option<&RuleTotal> {
        self.rules.iter().find(|r| r.rule == name)
    }

    pub fn count(&self) -> u64 {
        self.rules.iter().map(|r| r.count).sum()
    }
}

pub struct History {
    /// `None`: the file exists but has no tables yet.
    conn: Option<Connection>,
    has_episodes: bool,
    has_alerts: bool,
    /// Schema 7: `alert.silence_id`.
    has_silences: bool,
    /// Schema 4: folded episode counts and facts about the state DB itself.
    has_facts: bool,
    /// Schema 5: watch sessions.
    has_sessions: bool,
    path: PathBuf,
}

/// A fact about the state DB itself: started fresh over a lost one, or restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFact {
    pub kind: String,
    pub at_ns: i64,
    pub detail: String,
}

impl History {
    /// Opens `DATA_DIR/stallwatch.sqlite` read-only; a missing file is an error, never created.
    pub fn open(data_dir: &Path) -> Result<History, HistoryError> {
        let path = data_dir.join(STATE_DB_FILE);
        if !path.is_file() {
            return Err(HistoryError::Missing { path });
        }
        let unreadable = |e: rusqlite::Error| HistoryError::Unreadable {
            path: path.clone(),
            reason: e.to_string(),
        };
        let (conn, found) = match connect(&path, false) {
            Ok(opened) => opened,
            // A WAL database with no `-shm` beside it, in a directory this user cannot
            // write (an operator reading the sidecar's DB as another user): SQLite cannot
            // make the shared-memory file. With neither `-wal` nor `-shm` present no
            // connection has it open and everything is in the main file, so it is read
            // as immutable.
            Err(e)
                if is_read_only(&e)
                    && !sidecar_file(&path, "-wal")
                    && !sidecar_file(&path, "-shm") =>
            {
                connect(&path, true).map_err(unreadable)?
            }
            Err(e) => return Err(unreadable(e)),
        };
        let known = schema_version();
        if found > known {
            return Err(HistoryError::TooNew { path, found, known });
        }
        // Version 0 is a state DB the sidecar has not yet migrated only if it is empty;
        // any version must hold the freeze table (an app's DB named like ours holds neither).
        let tables: i64 = conn
            .query_row(
                "SELECT count(*), coalesce(sum(name = 'freeze_event'), 0) FROM sqlite_master
                 WHERE type = 'table'",
                [],
                |r| {
                    Ok(if r.get::<_, i64>(1)? > 0 {
                        -1
                    } else {
                        r.get(0)?
                    })
                },
            )
            .map_err(unreadable)?;
        if (found == 0 && tables != 0) || (found > 0 && tables != -1) {
            return Err(HistoryError::NotStateDb { path });
        }
        Ok(History {
            // Version 0: the file exists but has no tables yet.
            conn: (found > 0).then_some(conn),
            has_episodes: found >= 2,
            has_alerts: found >= 3,
            has_facts: found >= 4,
            has_sessions: found >= 5,
            has_silences: found >= crate::state::SILENCES_VERSION,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> HistoryError {
        HistoryError::Unreadable {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Episodes folded (counted, not stored one by one) per source on the UTC days `w` covers.
    pub fn folded_totals(
        &self,
        w: Window,
    ) -> Result<Vec<crate::state::FoldedEpisodes>, HistoryError> {
        let Some(conn) = self.conn.as_ref().filter(|_| self.has_facts) else {
            return Ok(Vec::new());
        };
        let last = crate::time::day_of(w.end_ns.saturating_sub(1));
        crate::state::read_folded(conn, crate::time::day_of(w.start_ns), last)
            .map_err(|e| self.err(e))
    }

    /// What happened to the state DB itself, oldest first (a few rows at most).
    pub fn state_facts(&self) -> Result<Vec<StateFact>, HistoryError> {
        let Some(conn) = self.conn.as_ref().filter(|_| self.has_facts) else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<StateFact>> {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, at_ns, detail FROM state_fact ORDER BY at_ns, id LIMIT 100",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StateFact {
                    kind: r.get(0)?,
                    at_ns: r.get(1)?,
                    detail: r.get(2)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Every run of the sidecar, oldest first: as recorded (schema 5 on), or estimated
    /// from what an older DB holds (`report::coverage::estimate`).
    pub fn sessions(&self) -> Result<Vec<Session>, HistoryError> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        if self.has_sessions {
            crate::state::read_sessions(conn).map_err(|e| self.err(e))
        } else {
            crate::state::old_run_evidence(conn, &self.path)
                .map(|old| crate::coverage::estimate(&old))
                .map_err(|e| self.err(e))
        }
    }

    /// Freezes per kind that started in `w`, by kind name.
    pub fn freeze_totals(&self, w: Window) -> Result<Vec<KindTotal>, HistoryError> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<KindTotal>> {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, count(*), coalesce(sum(duration_ns), 0), coalesce(max(abs(duration_ns)), 0)
                 FROM freeze_event WHERE started_at_ns >= ?1 AND started_at_ns < ?2
                 GROUP BY kind ORDER BY kind",
            )?;
            let rows = stmt.query_map(params![w.start_ns, w.end_ns], |r| {
                Ok(KindTotal {
                    kind: r.get(0)?,
                    count: r.get::<_, i64>(1)?.max(0) as u64,
                    total_ns: r.get(2)?,
                    longest_ns: r.get(3)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// Episodes per (kind, cause) that started in `w`.
    pub fn episode_totals(&self, w: Window) -> Result<Vec<EpisodeTotal>, HistoryError> {
        let Some(conn) = self.episodes_conn() else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<EpisodeTotal>> {
            let mut stmt = conn.prepare_cached(
                "SELECT kind, cause, count(*), coalesce(sum(duration_ns), 0), coalesce(max(duration_ns), 0)
                 FROM episode WHERE started_at_ns >= ?1 AND started_at_ns < ?2
                 GROUP BY kind, cause ORDER BY kind, cause",
            )?;
            let rows = stmt.query_map(params![w.start_ns, w.end_ns], |r| {
                Ok(EpisodeTotal {
                    kind: r.get(0)?,
                    cause: r.get(1)?,
                    count: r.get::<_, i64>(2)?.max(0) as u64,
                    total_ns: r.get(3)?,
                    longest_ns: r.get(4)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// The `limit` longest freezes that started in `w`, longest first; lost time only
    /// unless `all_kinds`.
    pub fn longest_freezes(
        &self,
        w: Window,
        limit: usize,
        all_kinds: bool,
    ) -> Result<Vec<FreezeRow>, HistoryError> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<FreezeRow>> {
            let mut stmt = conn.prepare_cached(
                "SELECT id, kind, started_at_ns, duration_ns, channels FROM freeze_event
                 WHERE started_at_ns >= ?1 AND started_at_ns < ?2 AND (?3 OR kind != ?4)
                 ORDER BY abs(duration_ns) DESC, started_at_ns, id LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![w.start_ns, w.end_ns, all_kinds, NOT_LOST_TIME, limit as i64],
                |r| {
                    let channels: String = r.get(4)?;
                    Ok(FreezeRow {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        started_at_ns: r.get(2)?,
                        duration_ns: r.get(3)?,
                        channels: serde_json::from_str(&channels).unwrap_or_default(),
                    })
                },
            )?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// The `limit` longest episodes that started in `w`, longest first.
    pub fn longest_episodes(
        &self,
        w: Window,
        limit: usize,
    ) -> Result<Vec<EpisodeRow>, HistoryError> {
        let Some(conn) = self.episodes_conn() else {
            return Ok(Vec::new());
        };
        let run = || -> rusqlite::Result<Vec<EpisodeRow>> {
            let mut stmt = conn.prepare_cached(
                "SELECT id, source, kind, cause, workflow_id, workflow_name, from_step, to_step,
                        started_at_ns, duration_ns, freeze_id
                 FROM episode WHERE started_at_ns >= ?1 AND started_at_ns < ?2
                 ORDER BY duration_ns DESC, started_at_ns, id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![w.start_ns, w.end_ns, limit as i64], |r| {
                Ok(EpisodeRow {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    kind: r.get(2)?,
                    cause: r.get(3)?,
                    workflow_id: r.get(4)?,
                    workflow_name: r.get(5)?,
                    from_step: r.get(6)?,
                    to_step: r.get(7)?,
                    started_at_ns: r.get(8)?,
                    duration_ns: r.get(9)?,
                    freeze_id: r.get(10)?,
                })
            })?;
            rows.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// The number of gap episodes (step gaps and wait overruns) that started in `w`, and
    /// their nearest-rank `q` quantile: a count, then one row at that rank.
    pub fn gap_quantile(&self, w: Window, q: f64) -> Result<(u64, Option<i64>), HistoryError> {
        let Some(conn) = self.episodes_conn() else {
            return Ok((0, None));
        };
        let run = || -> rusqlite::Result<(u64, Option<i64>)> {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM episode
                 WHERE started_at_ns >= ?1 AND started_at_ns < ?2 AND kind IN (?3, ?4)",
                params![w.start_ns, w.end_ns, GAP_KINDS[0], GAP_KINDS[1]],
                |r| r.get(0),
            )?;
            let n = n.max(0) as u64;
            let Some(at) = rank_index(n as usize, q) else {
                return Ok((n, None));
            };
            let value = conn.query_row(
                "SELECT duration_ns FROM episode
                 WHERE started_at_ns >= ?1 AND started_at_ns < ?2 AND kind IN (?3, ?4)
                 ORDER BY duration_ns LIMIT 1 OFFSET ?5",
                params![w.start_ns, w.end_ns, GAP_KINDS[0], GAP_KINDS[1], at as i64],
                |r| r.get(0),
            )?;
            Ok((n, Some(value)))
        };
        run().map_err(|e| self.err(e))
    }

    /// When the sidecar was seen running: records, heartbeat and the file's birth time.
    pub fn evidence(&self) -> Result<Evidence, HistoryError> {
        let created_ns = std::fs::metadata(&self.path)
            .and_then(|m| m.created())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_nanos()).ok());
        let mut e = Evidence {
            created_ns,
            ..Evidence::default()
        };
        let Some(conn) = &self.conn else {
            return Ok(e);
        };
        let run = |e: &mut Evidence| -> rusqlite::Result<()> {
            let bounds = |table: &str| {
                conn.query_row(
                    &format!("SELECT min(started_at_ns), max(detected_at_ns) FROM {table}"),
                    [],
                    |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
                )
            };
            let (f0, f1) = bounds("freeze_event")?;
            let (e0, e1) = if self.has_episodes {
                bounds("episode")?
            } else {
                (None, None)
            };
            let (first, last) = (min_opt(f0, e0), f1.max(e1));
            e.earliest_record_ns = first;
            e.earliest_freeze_ns = conn.query_row(
                "SELECT min(started_at_ns) FROM freeze_event WHERE kind != ?1",
                [NOT_LOST_TIME],
                |r| r.get(0),
            )?;
            e.latest_write_ns = last;
            if let Some((real_ns, clean)) = conn
                .query_row(
                    "SELECT real_ns, clean FROM heartbeat WHERE id = 1",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
                )
                .optional()?
            {
                e.heartbeat_ns = Some(real_ns);
                e.heartbeat_clean = Some(clean);
            }
            Ok(())
        };
        run(&mut e).map_err(|err| self.err(err))?;
        Ok(e)
    }

    /// Everything stored, whatever the window.
    pub fn stored(&self) -> Result<Stored, HistoryError> {
        let Some(conn) = &self.conn else {
            return Ok(Stored::default());
        };
        let run = || -> rusqlite::Result<Stored> {
            let one = |table: &str| {
                conn.query_row(
                    &format!(
                        "SELECT count(*), min(started_at_ns), max(started_at_ns) FROM {table}"
                    ),
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?.max(0) as u64,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, Option<i64>>(2)?,
                        ))
                    },
                )
            };
            let (freezes, f0, f1) = one("freeze_event")?;
            let (episodes, e0, e1) = if self.has_episodes {
                one("episode")?
            } else {
                (0, None, None)
            };
            Ok(Stored {
                freezes,
                episodes,
                first_ns: min_opt(f0, e0),
                last_ns: f1.max(e1),
            })
        };
        run().map_err(|e| self.err(e))
    }

    /// Alerts that started in `w` and notifications made in it; `None` when the state DB
    /// predates alert history (schema < 3). `now_ns` ends a still-firing alert's duration.
    pub fn alert_history(
        &self,
        w: Window,
        now_ns: i64,
    ) -> Result<Option<AlertHistory>, HistoryError> {
        let Some(conn) = self.conn.as_ref().filter(|_| self.has_alerts) else {
            return Ok(None);
        };
        let until = now_ns.min(w.end_ns);
        let run = || -> rusqlite::Result<AlertHistory> {
            let silenced = if self.has_silences {
                "coalesce(sum(silence_id IS NOT NULL), 0)"
            } else {
                "0"
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT rule, count(*), coalesce(sum(state = 'firing'), 0),
                        coalesce(max(CASE WHEN state = 'fired' THEN 0
                                          ELSE coalesce(ended_at_ns, ?3) - started_at_ns END), 0),
                        {silenced}
                 FROM alert WHERE started_at_ns >= ?1 AND started_at_ns < ?2
                 GROUP BY rule ORDER BY rule"
            ))?;
            let rules = stmt
                .query_map(params![w.start_ns, w.end_ns, until], |r| {
                    Ok(RuleTotal {
                        rule: r.get(0)?,
                        count: r.get::<_, i64>(1)?.max(0) as u64,
                        firing: r.get::<_, i64>(2)?.max(0) as u64,
                        longest_ns: r.get::<_, i64>(3)?.max(0),
                        silenced: r.get::<_, i64>(4)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut stmt = conn.prepare_cached(
                "SELECT channel, state, count(*) FROM notification
                 WHERE created_at_ns >= ?1 AND created_at_ns < ?2
                 GROUP BY channel, state ORDER BY channel, state",
            )?;
            let notifications = stmt
                .query_map(params![w.start_ns, w.end_ns], |r| {
                    Ok(NotificationTotal {
                        channel: r.get(0)?,
                        state: r.get(1)?,
                        count: r.get::<_, i64>(2)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(AlertHistory {
                rules,
                notifications,
            })
        };
        run().map(Some).map_err(|e| self.err(e))
    }

    fn episodes_conn(&self) -> Option<&Connection> {
        self.conn.as_ref().filter(|_| self.has_episodes)
    }
}

/// A read-only connection and the schema version it sees.
fn connect(path: &Path, immutable: bool) -> rusqlite::Result<(Connection, i64)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = if immutable {
        let escaped = path
            .to_string_lossy()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23");
        Connection::open_with_flags(format!("file:{escaped}?immutable=1"), flags)?
    } else {
        Connection::open_with_flags(path, flags)?
    };
    conn.busy_timeout(READ_BUSY_TIMEOUT)?;
    let found = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok((conn, found))
}

fn is_read_only(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    )
}

fn sidecar_file(db: &Path, suffix: &str) -> bool {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    Path::new(&name).exists()
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
