//! The sidecar's own SQLite state database: freeze events and the heartbeat.
//!
//! Owns the schema (versioned migrations in `user_version`), WAL with
//! `synchronous=NORMAL` (a heartbeat a second without an fsync each), and the refusal to
//! touch a file it cannot trust: a corrupt, newer or unwritable state DB is an error
//! naming the file, never deleted or recreated. Never opens an app database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::clock::ClockReading;
use crate::freeze::downtime::Heartbeat;
use crate::freeze::{ChannelEstimate, FreezeEvent, FreezeKind};
use crate::signals::attribution::{Cause, FreezeSpan};
use crate::signals::episode::{Episode, EpisodeKind};

/// File name of the state DB inside the data dir.
pub const STATE_DB_FILE: &str = "stallwatch.sqlite";
/// How long a statement waits for a lock held by another connection (the API reader).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Freeze events kept; older ones are pruned so a flapping clock cannot fill the disk.
pub const MAX_EVENTS: i64 = 100_000;
/// Most events one API query returns.
pub const MAX_EVENTS_PER_QUERY: i64 = 10_000;

/// Schema migrations; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: freeze events and the single-row heartbeat.
    "CREATE TABLE freeze_event (
        id             INTEGER PRIMARY KEY,
        kind           TEXT    NOT NULL,
        started_at_ns  INTEGER NOT NULL,
        duration_ns    INTEGER NOT NULL,
        detected_at_ns INTEGER NOT NULL,
        channels       TEXT    NOT NULL
     );
     CREATE INDEX freeze_event_started ON freeze_event (started_at_ns);
     CREATE TABLE heartbeat (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        mono_ns  INTEGER NOT NULL,
        real_ns  INTEGER NOT NULL,
        boot_ns  INTEGER NOT NULL,
        boot_id  TEXT    NOT NULL,
        pid      INTEGER NOT NULL,
        clean    INTEGER NOT NULL
     );",
    // 2: gap and stall episodes of the watched apps, with their cause.
    "CREATE TABLE episode (
        id             INTEGER PRIMARY KEY,
        source         TEXT    NOT NULL,
        kind           TEXT    NOT NULL,
        workflow_id    TEXT    NOT NULL,
        workflow_name  TEXT    NOT NULL,
        from_step      TEXT    NOT NULL,
        to_step        TEXT    NOT NULL,
        started_at_ns  INTEGER NOT NULL,
        duration_ns    INTEGER NOT NULL,
        cause          TEXT    NOT NULL,
        freeze_id      INTEGER,
        detected_at_ns INTEGER NOT NULL,
        UNIQUE (source, kind, workflow_id, started_at_ns)
     );
     CREATE INDEX episode_started ON episode (started_at_ns);",
    // 3: alerts and the notification outbox (see alerts/outbox.rs).
    "CREATE TABLE alert (
        fingerprint      TEXT    PRIMARY KEY,
        rule             TEXT    NOT NULL,
        severity         TEXT    NOT NULL,
        labels           TEXT    NOT NULL,
        title            TEXT    NOT NULL,
        text             TEXT    NOT NULL,
        state            TEXT    NOT NULL,
        started_at_ns    INTEGER NOT NULL,
        ended_at_ns      INTEGER,
        last_notified_ns INTEGER NOT NULL,
        updated_at_ns    INTEGER NOT NULL
     );
     CREATE INDEX alert_updated ON alert (updated_at_ns);
     CREATE TABLE notification (
        id                 INTEGER PRIMARY KEY,
        key                TEXT    NOT NULL UNIQUE,
        fingerprint        TEXT    NOT NULL,
        channel            TEXT    NOT NULL,
        kind               TEXT    NOT NULL,
        severity           INTEGER NOT NULL,
        message            TEXT    NOT NULL,
        state              TEXT    NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ns INTEGER NOT NULL,
        last_error         TEXT,
        created_at_ns      INTEGER NOT NULL,
        done_at_ns         INTEGER
     );
     CREATE INDEX notification_pending ON notification (channel, fingerprint, id)
        WHERE state = 'pending';
     CREATE INDEX notification_due ON notification (channel, next_attempt_at_ns)
        WHERE state = 'pending';
     CREATE INDEX notification_state ON notification (state, id);
     CREATE INDEX notification_done ON notification (done_at_ns) WHERE state <> 'pending';",
];

/// The schema version this build writes (`PRAGMA user_version` after migrating).
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// A state DB problem, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create data directory {path}: {reason}; set data_dir or --data-dir to a writable directory")]
    DataDir { path: PathBuf, reason: String },
    #[error("state database {path} is not writable: {reason}; fix its permissions or choose another data_dir")]
    Unwritable { path: PathBuf, reason: String },
    #[error("state database {path} is corrupt ({reason}); move it aside to start fresh, stallwatch will not delete it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state database {path} has schema version {found}, newer than this stallwatch understands ({known}); upgrade stallwatch")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// A freeze event as stored, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub detected_at_ns: i64,
    pub event: FreezeEvent,
}

pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

fn classify(path: &Path, e: rusqlite::Error) -> StateError {
    use rusqlite::ErrorCode::*;
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => StateError::Corrupt {
            path,
            reason: e.to_string(),
        },
        Some(ReadOnly | CannotOpen | PermissionDenied) => StateError::Unwritable {
            path,
            reason: e.to_string(),
        },
        _ => StateError::Sqlite { path, source: e },
    }
}

impl StateDb {
    /// Opens (creating if absent) the state DB in `data_dir`, checks it and migrates it.
    pub fn open(data_dir: &Path) -> Result<StateDb, StateError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StateError::DataDir {
            path: data_dir.to_path_buf(),
            reason: e.to_string().to_lowercase(),
        })?;
        let path = data_dir.join(STATE_DB_FILE);
        let conn = Connection::open(&path).map_err(|e| classify(&path, e))?;
        let db = StateDb { conn, path };
        db.configure().map_err(|e| classify(&db.path, e))?;
        db.check()?;
        db.migrate()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some(format!("journal_mode stayed {mode}")),
            ));
        }
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    fn check(&self) -> Result<(), StateError> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| classify(&self.path, e))?;
        if verdict != "ok" {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                reason: verdict,
            });
        }
        // Prove it is writable now rather than at the first heartbeat.
        self.conn
            .execute_batch("BEGIN IMMEDIATE; COMMIT;")
            .map_err(|e| classify(&self.path, e))
    }

    fn migrate(&self) -> Result<(), StateError> {
        let err = |e| classify(&self.path, e);
        let known = MIGRATIONS.len() as i64;
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if found > known {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = i as i64 + 1;
            self.conn
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {version}; COMMIT;"
                ))
                .map_err(err)?;
        }
        Ok(())
    }

    /// Stores a freeze event and returns its id.
    pub fn insert_event(
        &self,
        event: &FreezeEvent,
        detected_at_ns: i64,
    ) -> Result<i64, StateError> {
        let channels = serde_json::to_string(&event.channels).expect("channels serialise");
        let tx = || -> rusqlite::Result<i64> {
            self.conn.execute(
                "INSERT INTO freeze_event (kind, started_at_ns, duration_ns, detected_at_ns, channels)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![event.kind.as_str(), event.started_at_ns, event.duration_ns, detected_at_ns, channels],
            )?;
            let id = self.conn.last_insert_rowid();
            self.conn.execute(
                "DELETE FROM freeze_event WHERE id <= ?1",
                params![id - MAX_EVENTS],
            )?;
            Ok(id)
        };
        tx().map_err(|e| classify(&self.path, e))
    }

    /// Events that started at or after `since_ns`, oldest first, at most `limit`.
    pub fn events_since(&self, since_ns: i64, limit: i64) -> Result<Vec<StoredEvent>, StateError> {
        read_events(&self.conn, since_ns, limit).map_err(|e| classify(&self.path, e))
    }

    /// Start time of the most recent lost-time freeze, to restore the gauge after a restart.
    pub fn last_freeze_started_ns(&self) -> Result<Option<i64>, StateError> {
        self.conn
            .query_row(
                "SELECT max(started_at_ns) FROM freeze_event WHERE kind != 'wall_clock_step'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| classify(&self.path, e))
    }

    /// Replaces the heartbeat.
    pub fn write_heartbeat(&self, hb: &Heartbeat) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO heartbeat (id, mono_ns, real_ns, boot_ns, boot_id, pid, clean)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET mono_ns = ?1, real_ns = ?2, boot_ns = ?3,
                     boot_id = ?4, pid = ?5, clean = ?6",
                params![
                    hb.clocks.mono_ns,
                    hb.clocks.real_ns,
                    hb.clocks.boot_ns,
                    hb.boot_id,
                    std::process::id(),
                    hb.clean
                ],
            )
            .map(|_| ())
            .map_err(|e| classify(&self.path, e))
    }

    /// The heartbeat a previous run left, if any.
    pub fn last_heartbeat(&self) -> Result<Option<Heartbeat>, StateError> {
        self.conn
            .query_row(
                "SELECT mono_ns, real_ns, boot_ns, boot_id, clean FROM heartbeat WHERE id = 1",
                [],
                |r| {
                    Ok(Heartbeat {
                        clocks: ClockReading {
                            mono_ns: r.get(0)?,
                            real_ns: r.get(1)?,
                            boot_ns: r.get(2)?,
                        },
                        boot_id: r.get(3)?,
                        clean: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| classify(&self.path, e))
    }
}

impl StateDb {
    /// Stores an episode, or updates the one with the same source, kind, workflow and start
    /// (a wait overrun recorded while it was still going on, or history re-read after a
    /// restart): the longer duration and the latest attribution win. Returns whether a
    /// row was written.
    pub fn insert_episode(&self, e: &Episode, detected_at_ns: i64) -> Result<bool, StateError> {
        let freeze_id = e.cause.freeze_id();
        self.conn
            .execute(
                "INSERT INTO episode (source, kind, workflow_id, workflow_name, from_step, to_step,
                     started_at_ns, duration_ns, cause, freeze_id, detected_at_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (source, kind, workflow_id, started_at_ns) DO UPDATE SET
                     duration_ns = max(duration_ns, excluded.duration_ns),
                     to_step = CASE WHEN excluded.to_step != '' THEN excluded.to_step ELSE to_step END,
                     from_step = CASE WHEN excluded.to_step != '' THEN excluded.from_step ELSE from_step END,
                     cause = excluded.cause,
                     freeze_id = excluded.freeze_id",
                params![
                    e.source,
                    e.kind.as_str(),
                    e.workflow_id,
                    e.workflow_name,
                    e.from_step,
                    e.to_step,
                    e.started_at_ns,
                    e.duration_ns,
                    e.cause.as_str(),
                    freeze_id,
                    detected_at_ns
                ],
            )
            .map(|n| n == 1)
            .map_err(|e| classify(&self.path, e))
    }
}

/// A read-only connection for the HTTP API, so queries never wait on the writer's thread.
pub struct StateReader {
    conn: Connection,
    path: PathBuf,
}

impl StateReader {
    pub fn open(path: &Path) -> Result<StateReader, StateError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(path, e))?;
        Ok(StateReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn events_since(&self, since_ns: i64, limit: i64) -> Result<Vec<StoredEvent>, StateError> {
        read_events(&self.conn, since_ns, limit).map_err(|e| classify(&self.path, e))
    }

    /// Firing and recent alerts, recent notifications and the outbox's size.
    pub fn alerts_view(
        &self,
        now_ns: i64,
    ) -> Result<crate::alerts::outbox::AlertsView, StateError> {
        crate::alerts::outbox::read_view(&self.conn, now_ns).map_err(|e| classify(&self.path, e))
    }

    /// Lost-time freezes that may overlap `[from_ns, to_ns]` (started up to a day before it).
    pub fn freezes_overlapping(
        &self,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<FreezeSpan>, StateError> {
        let run = || -> rusqlite::Result<Vec<FreezeSpan>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, kind, started_at_ns, duration_ns, channels FROM freeze_event
                 WHERE started_at_ns >= ?1 AND started_at_ns <= ?2 AND kind != 'wall_clock_step'",
            )?;
            let rows = stmt.query_map(params![from_ns - MAX_FREEZE_SPAN_NS, to_ns], |r| {
                let kind: String = r.get(1)?;
                let channels: String = r.get(4)?;
                let event = FreezeEvent {
                    kind: FreezeKind::parse(&kind).unwrap_or(FreezeKind::ProcessStall),
                    started_at_ns: r.get(2)?,
                    duration_ns: r.get(3)?,
                    // The evidence says whether a stall was CPU starvation.
                    channels: serde_json::from_str(&channels).unwrap_or_default(),
                };
                Ok(FreezeSpan::of(r.get(0)?, &event))
            })?;
            rows.collect()
        };
        run().map_err(|e| classify(&self.path, e))
    }

    /// Episodes that started at or after `since_ns`, oldest first.
    pub fn episodes_since(
        &self,
        since_ns: i64,
        limit: i64,
    ) -> Result<Vec<StoredEpisode>, StateError> {
        let run = || -> rusqlite::Result<Vec<StoredEpisode>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id, source, kind, workflow_id, workflow_name, from_step, to_step, started_at_ns,
                        duration_ns, cause, freeze_id, detected_at_ns
                 FROM episode WHERE started_at_ns >= ?1 ORDER BY started_at_ns, id LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![since_ns, limit.clamp(0, MAX_EVENTS_PER_QUERY)],
                |r| {
                    let kind: String = r.get(2)?;
                    let cause: String = r.get(9)?;
                    let freeze_id: Option<i64> = r.get(10)?;
                    Ok(StoredEpisode {
                        id: r.get(0)?,
                        detected_at_ns: r.get(11)?,
                        episode: Episode {
                            source: r.get(1)?,
                            kind: EpisodeKind::parse(&kind).unwrap_or(EpisodeKind::StepGap),
                            workflow_id: r.get(3)?,
                            workflow_name: r.get(4)?,
                            from_step: r.get(5)?,
                            to_step: r.get(6)?,
                            started_at_ns: r.get(7)?,
                            duration_ns: r.get(8)?,
                            cause: Cause::from_stored(&cause, freeze_id),
                        },
                    })
                },
            )?;
            rows.collect()
        };
        run().map_err(|e| classify(&self.path, e))
    }
}

/// An episode as stored, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEpisode {
    pub id: i64,
    pub detected_at_ns: i64,
    pub episode: Episode,
}

/// Longest freeze looked back for when attributing: a day.
pub const MAX_FREEZE_SPAN_NS: i64 = 86_400 * 1_000_000_000;

fn read_events(conn: &Connection, since_ns: i64, limit: i64) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, started_at_ns, duration_ns, detected_at_ns, channels FROM freeze_event
         WHERE started_at_ns >= ?1 ORDER BY started_at_ns, id LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![since_ns, limit.clamp(0, MAX_EVENTS_PER_QUERY)],
        |r| {
            let kind: String = r.get(1)?;
            let channels: String = r.get(5)?;
            Ok(StoredEvent {
                id: r.get(0)?,
                detected_at_ns: r.get(4)?,
                event: FreezeEvent {
                    // Unknown kinds from a newer build read as a process stall rather than failing the query.
                    kind: FreezeKind::parse(&kind).unwrap_or(FreezeKind::ProcessStall),
                    started_at_ns: r.get(2)?,
                    duration_ns: r.get(3)?,
                    channels: serde_json::from_str::<Vec<ChannelEstimate>>(&channels)
                        .unwrap_or_default(),
                },
            })
        },
    )?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: FreezeKind, start: i64) -> FreezeEvent {
        FreezeEvent {
            kind,
            started_at_ns: start,
            duration_ns: 3_000_000_000,
            channels: vec![ChannelEstimate {
                channel: "tick".into(),
                estimate_ns: 3_000_000_000,
            }],
        }
    }

    #[test]
    fn events_and_heartbeat_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = StateDb::open(dir.path()).unwrap();
            db.insert_event(&event(FreezeKind::ProcessStall, 10), 11)
                .unwrap();
            db.insert_event(&event(FreezeKind::VmPause, 20), 21)
                .unwrap();
            let hb = Heartbeat {
                clocks: ClockReading {
                    mono_ns: 1,
                    real_ns: 2,
                    boot_ns: 3,
                },
                boot_id: "b".into(),
                clean: false,
            };
            db.write_heartbeat(&hb).unwrap();
        }
        let db = StateDb::open(dir.path()).unwrap();
        let events = db.events_since(15, 100).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, event(FreezeKind::VmPause, 20));
        assert_eq!(db.last_heartbeat().unwrap().unwrap().boot_id, "b");
        assert_eq!(db.last_freeze_started_ns().unwrap(), Some(20));
        let reader = StateReader::open(db.path()).unwrap();
        assert_eq!(reader.events_since(0, 100).unwrap().len(), 2);
    }

    /// Issue 13: a stall whose stored evidence says CPU starvation is attributed as such,
    /// and the episode's cause reads back as it was written.
    #[test]
    fn a_starved_stall_reads_back_as_starved_and_so_does_its_episode() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let stopped = db
            .insert_event(&event(FreezeKind::ProcessStall, 10), 11)
            .unwrap();
        let mut starving = event(FreezeKind::ProcessStall, 50);
        starving.channels.push(ChannelEstimate {
            channel: "throttled".into(),
            estimate_ns: 2_000_000_000,
        });
        let starved = db.insert_event(&starving, 51).unwrap();
        let reader = StateReader::open(db.path()).unwrap();
        let spans = reader.freezes_overlapping(0, 100).unwrap();
        let flags: Vec<_> = spans.iter().map(|f| (f.id, f.starved)).collect();
        assert_eq!(flags, vec![(stopped, false), (starved, true)]);

        let episode = Episode {
            source: "app".into(),
            kind: EpisodeKind::StepGap,
            workflow_id: "w".into(),
            workflow_name: "n".into(),
            from_step: "a".into(),
            to_step: "b".into(),
            started_at_ns: 50,
            duration_ns: 3_000_000_000,
            cause: Cause::Starvation { freeze_id: starved },
        };
        assert!(db.insert_episode(&episode, 60).unwrap());
        let stored = reader.episodes_since(0, 10).unwrap();
        assert_eq!(stored[0].episode, episode);
    }

    #[test]
    fn corrupt_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_DB_FILE);
        let garbage = vec![0x5au8; 8192];
        std::fs::write(&path, &garbage).unwrap();
        let err = StateDb::open(dir.path())
            .err()
            .expect("corrupt file must be refused");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(STATE_DB_FILE), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(STATE_DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = StateDb::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn data_dir_under_a_file_is_a_data_dir_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let err = StateDb::open(&file.join("sub")).err().unwrap();
        assert!(matches!(err, StateError::DataDir { .. }), "{err}");
    }
}
