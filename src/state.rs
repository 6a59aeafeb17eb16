//! The sidecar's own SQLite state database: freeze events and the heartbeat.
//!
//! Owns the schema (versioned migrations in `user_version`), WAL with
//! `synchronous=NORMAL` (a heartbeat a second without an fsync each), and the refusal to
//! touch a file it cannot trust: a corrupt, newer or unwritable state DB is an error
//! naming the file, never deleted. Never opens an app database.
//!
//! It also owns knowing that the file is still the one it opened: the (dev, inode) of
//! the DB and its `-wal`/`-shm` at open time ([`StateDb::still_at_path`]), a copy of a
//! DB deleted while it is still open ([`StateDb::recreate`]), readers that follow a DB
//! recreated at their path, and the marker file ([`STATE_DB_MARKER`]) that says a data
//! dir held a state DB, so a start over a lost one says so instead of starting fresh
//! silently.

use std::cell::RefCell;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
/// Page cache of each of the sidecar's own connections to the state DB, in KiB (SQLite's
/// default is 2,000 per connection). Its reads are small and recent; a dozen connections
/// each caching 2 MB of a growing file made the process's memory climb for hours before
/// levelling off (benches/soak.sh). The OS page cache still holds the file.
pub const CACHE_KIB: i64 = 256;
/// Freeze events kept; older ones are pruned so a flapping clock cannot fill the disk.
pub const MAX_EVENTS: i64 = 100_000;
/// Most events one API query returns.
pub const MAX_EVENTS_PER_QUERY: i64 = 10_000;
/// Marker left in the data dir once a state DB was created there. Hidden, so `rm data/*`
/// or `rm data/stallwatch.sqlite*` leaves it: a start that finds it without the DB says
/// the history was lost instead of starting fresh silently.
pub const STATE_DB_MARKER: &str = ".stallwatch-state-db";
/// Suffix of the copy written beside the DB while recreating it, renamed into place.
const RECREATE_SUFFIX: &str = ".recreating";
/// `state_fact.kind` of a state DB started fresh over a data dir that held one.
pub const FACT_RECREATED: &str = "recreated";
/// `state_fact.kind` of a state DB deleted while running and copied back from the open file.
pub const FACT_RESTORED: &str = "restored";
/// `state_fact.kind` of a supervised child that ended without being asked to (an app
/// restart, `stallwatch run -- CMD`).
pub const FACT_APP_EXIT: &str = "app_exit";

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
    // 4: what happened to the state DB itself (started fresh over a lost one, restored
    // after a deletion), and episodes counted but not stored one by one, per source per
    // UTC day (days since 1970-01-01).
    "CREATE TABLE state_fact (
        id     INTEGER PRIMARY KEY,
        kind   TEXT    NOT NULL,
        at_ns  INTEGER NOT NULL,
        detail TEXT    NOT NULL
     );
     CREATE TABLE episode_folded (
        source TEXT    NOT NULL,
        day    INTEGER NOT NULL,
        count  INTEGER NOT NULL,
        PRIMARY KEY (source, day)
     );",
    // 5: one row per run of the sidecar (see report/coverage.rs). The heartbeat's own
    // write moves the running session's last heartbeat through these triggers, so
    // keeping sessions costs no extra write a second; a clean heartbeat ends it as
    // `stopped`. A DB from before is given estimated sessions ([`StateDb::migrate`]).
    "CREATE TABLE watch_session (
        id            INTEGER PRIMARY KEY,
        started_at_ns INTEGER NOT NULL,
        last_seen_ns  INTEGER NOT NULL,
        ended         TEXT    NOT NULL,
        estimated     INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX watch_session_seen ON watch_session (last_seen_ns);
     CREATE TRIGGER watch_session_beat_insert AFTER INSERT ON heartbeat BEGIN
        UPDATE watch_session SET last_seen_ns = max(started_at_ns, NEW.real_ns),
               ended = CASE WHEN NEW.clean THEN 'stopped' ELSE ended END
         WHERE id = (SELECT max(id) FROM watch_session) AND ended = 'running';
     END;
     CREATE TRIGGER watch_session_beat_update AFTER UPDATE ON heartbeat BEGIN
        UPDATE watch_session SET last_seen_ns = max(started_at_ns, NEW.real_ns),
               ended = CASE WHEN NEW.clean THEN 'stopped' ELSE ended END
         WHERE id = (SELECT max(id) FROM watch_session) AND ended = 'running';
     END;",
    // 6: no query reads sessions by their last heartbeat (coverage reads them all, in
    // order), and the index cost the heartbeat a third page written every second.
    "DROP INDEX watch_session_seen;",
    // 7: silences (`stallwatch silence`, see alerts/silence.rs): an alert a silence matches
    // is recorded but does not notify; `alert.silence_id` is the silence that held back its
    // last notification and `alert.held` which kind it was, so the notification owed when
    // the silence ends survives a restart.
    "CREATE TABLE silence (
        id            INTEGER PRIMARY KEY,
        rule          TEXT    NOT NULL,
        source        TEXT,
        starts_at_ns  INTEGER NOT NULL,
        ends_at_ns    INTEGER NOT NULL,
        reason        TEXT    NOT NULL,
        created_by    TEXT    NOT NULL,
        created_at_ns INTEGER NOT NULL,
        expired_at_ns INTEGER
     );
     CREATE INDEX silence_ends ON silence (ends_at_ns);
     ALTER TABLE alert ADD COLUMN silence_id INTEGER;
     ALTER TABLE alert ADD COLUMN held TEXT;",
    // 8: grouping and rate limits (alerts/group.rs). A group row (`fingerprint` = the
    // group's key) collects members until `sealed` for its first send, so what one
    // idempotency key carries never changes; `release_at_ns` is when the group was due,
    // which spaces its next row by `group_interval`. `folded`: a row a rate limit put
    // into a digest.
    "ALTER TABLE notification ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE notification ADD COLUMN release_at_ns INTEGER;
     CREATE INDEX notification_group ON notification (channel, fingerprint, release_at_ns)
        WHERE release_at_ns IS NOT NULL;
     CREATE INDEX notification_sent ON notification (channel, done_at_ns)
        WHERE state = 'sent';",
];

/// The schema version that added `watch_session`.
const SESSIONS_VERSION: i64 = 5;
/// The schema version that added the `silence` table.
pub const SILENCES_VERSION: i64 = 7;
/// Watch sessions kept; older ones are pruned (a crash loop must not fill the disk).
pub const MAX_SESSIONS: i64 = 100_000;

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
    #[error("state database {path}: no space left on device; free space on that filesystem or choose another data_dir")]
    NoSpace { path: PathBuf },
    #[error("state database {path} {what}, not a file; move it aside or choose another data_dir")]
    NotAFile { path: PathBuf, what: &'static str },
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

/// The errno behind the last failed call on `conn` (0 when there is none).
fn system_errno(conn: &Connection) -> i32 {
    // SAFETY: the handle is valid while `conn` lives; sqlite3_system_errno only reads it.
    unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) }
}

/// An error of a call on `conn`: a full disk reads "no space left on device" whether
/// SQLite said `SQLITE_FULL` or a "disk I/O error" whose errno was ENOSPC.
fn classify_on(conn: &Connection, path: &Path, e: rusqlite::Error) -> StateError {
    let io = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::SystemIoFailure)
    );
    if io && system_errno(conn) == libc::ENOSPC {
        return StateError::NoSpace {
            path: path.to_path_buf(),
        };
    }
    classify(path, e)
}

fn classify(path: &Path, e: rusqlite::Error) -> StateError {
    use rusqlite::ErrorCode::*;
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(DiskFull) => StateError::NoSpace { path },
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

/// Where a file sits on disk: what tells the file at a path from the one opened there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The file at `path` now, if there is one.
    pub fn of(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Whether the state DB's path still names the file the writer has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtPath {
    /// The same file.
    Same,
    /// Nothing there: the DB (or the data dir) was deleted while open.
    Missing,
    /// Another file: the DB was deleted and something else put there, or moved aside.
    Replaced,
}

pub struct StateDb {
    conn: Connection,
    path: PathBuf,
    /// The DB file and its WAL and shared-memory files as opened.
    id: Option<FileId>,
    wal_id: Option<FileId>,
    shm_id: Option<FileId>,
    /// Set when this open started a new DB over a data dir that held one: what was lost.
    notice: Option<String>,
}

/// `path` with `suffix` appended to its file name (`x.sqlite` → `x.sqlite-wal`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Refuses a state DB path that exists but is not a regular file (a directory, a FIFO).
fn check_is_file(path: &Path) -> Result<(), StateError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "is a directory"
    } else if kind.is_fifo() {
        "is a FIFO"
    } else if kind.is_socket() {
        "is a socket"
    } else {
        "is a device"
    };
    Err(StateError::NotAFile {
        path: path.to_path_buf(),
        what,
    })
}

/// What says a state DB existed at `path` before: the marker, or its WAL or shm files.
fn evidence_of_lost_db(path: &Path) -> Option<String> {
    let marker = path.with_file_name(STATE_DB_MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let created = text
            .lines()
            .find_map(|l| l.strip_prefix("created_unix_ns="))
            .and_then(|n| n.trim().parse::<i64>().ok())
            .map(|ns| format!(" created {}", crate::time::rfc3339(ns)))
            .unwrap_or_default();
        return Some(format!("{}{created}", marker.display()));
    }
    ["-wal", "-shm"]
        .iter()
        .map(|s| sibling(path, s))
        .find(|p| p.exists())
        .map(|p| format!("{} left over", p.display()))
}

impl StateDb {
    /// Opens (creating if absent) the state DB in `data_dir`, checks it and migrates it.
    /// A new DB over a data dir that held one prints one warning naming what was lost
    /// and records a [`FACT_RECREATED`] fact, so `report` says history starts there.
    pub fn open(data_dir: &Path) -> Result<StateDb, StateError> {
        StateDb::open_inner(data_dir, None)
    }

    /// `lost_while_running`: why a DB deleted while this process ran could not be copied.
    fn open_inner(
        data_dir: &Path,
        lost_while_running: Option<&str>,
    ) -> Result<StateDb, StateError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StateError::DataDir {
            path: data_dir.to_path_buf(),
            reason: e.to_string().to_lowercase(),
        })?;
        let path = data_dir.join(STATE_DB_FILE);
        check_is_file(&path)?;
        let lost = if path.exists() {
            None
        } else {
            evidence_of_lost_db(&path)
        };
        let conn = Connection::open(&path).map_err(|e| classify(&path, e))?;
        let mut db = StateDb {
            conn,
            path,
            id: None,
            wal_id: None,
            shm_id: None,
            notice: None,
        };
        db.configure()
            .map_err(|e| classify_on(&db.conn, &db.path, e))?;
        db.check()?;
        db.migrate()?;
        db.id = FileId::of(&db.path);
        db.wal_id = FileId::of(&sibling(&db.path, "-wal"));
        db.shm_id = FileId::of(&sibling(&db.path, "-shm"));
        let notice = match (lost_while_running, lost) {
            (Some(why), _) => Some(format!(
                "state database {} was deleted while stallwatch ran and could not be copied \
                 back ({why}); a new one starts here: the freezes, episodes, alerts and \
                 heartbeat recorded before are lost",
                db.path.display()
            )),
            (None, Some(evidence)) => Some(format!(
                "state database {} is missing but this data dir held one ({evidence}); \
                 starting a new one: its freeze history, episodes, alerts and last heartbeat \
                 are lost, so the downtime before this start cannot be classified",
                db.path.display()
            )),
            (None, None) => None,
        };
        if let Some(text) = &notice {
            if lost_while_running.is_none() {
                tracing::warn!("{text}");
            }
            db.insert_fact(FACT_RECREATED, crate::clock::real_ns(), text)?;
        }
        db.notice = notice;
        db.write_marker();
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What this open found lost, if it started a new DB over one that existed.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    fn err(&self, e: rusqlite::Error) -> StateError {
        classify_on(&self.conn, &self.path, e)
    }

    /// Leaves the marker that says a state DB lives here (best effort: without it a lost
    /// DB is still told by its WAL files).
    fn write_marker(&self) {
        let marker = self.path.with_file_name(STATE_DB_MARKER);
        if marker.exists() {
            return;
        }
        let text = format!(
            "stallwatch created its state database {STATE_DB_FILE} in this directory.\n\
             If that file goes missing, its history is lost; stallwatch says so when it \
             starts a new one.\ncreated_unix_ns={}\n",
            crate::clock::real_ns()
        );
        if let Err(e) = std::fs::write(&marker, text) {
            tracing::warn!(path = %marker.display(), error = %e, "cannot write the state database marker");
        }
    }

    /// Whether the path still names the file this connection has open.
    pub fn still_at_path(&self) -> AtPath {
        match FileId::of(&self.path) {
            None => AtPath::Missing,
            Some(id) if Some(id) == self.id => AtPath::Same,
            Some(_) => AtPath::Replaced,
        }
    }

    /// After [`StateDb::still_at_path`] said the file is gone: puts a state DB back at the
    /// path and opens it. When nothing else is there, the history is copied from this
    /// still-open (deleted) file, so nothing is lost; else what is at the path is opened,
    /// or a new DB started. Returns the new DB and whether the history was kept.
    ///
    /// This connection must stay open (the caller keeps it): SQLite deletes the `-wal`
    /// and `-shm` files by name when the last connection to a DB closes, and those names
    /// now belong to the new DB.
    pub fn recreate(&self) -> Result<(StateDb, bool), StateError> {
        let data_dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(data_dir).map_err(|e| StateError::DataDir {
            path: data_dir.to_path_buf(),
            reason: e.to_string().to_lowercase(),
        })?;
        let copied = if self.still_at_path() == AtPath::Missing {
            Some(self.copy_into_place())
        } else {
            None
        };
        // Our WAL and shm must not be taken for the new DB's (SQLite would replay them).
        for (suffix, ours) in [("-wal", self.wal_id), ("-shm", self.shm_id)] {
            let p = sibling(&self.path, suffix);
            if ours.is_some() && FileId::of(&p) == ours {
                let _ = std::fs::remove_file(&p);
            }
        }
        match copied {
            Some(Ok(tmp)) => {
                std::fs::rename(&tmp, &self.path).map_err(|e| StateError::Unwritable {
                    path: self.path.clone(),
                    reason: e.to_string().to_lowercase(),
                })?;
                Ok((StateDb::open_inner(data_dir, None)?, true))
            }
            Some(Err(e)) => Ok((StateDb::open_inner(data_dir, Some(&e.to_string()))?, false)),
            None => Ok((StateDb::open_inner(data_dir, None)?, false)),
        }
    }

    /// `VACUUM INTO` a file beside the path: a whole, consistent copy of what this
    /// connection sees, renamed into place by the caller.
    fn copy_into_place(&self) -> Result<PathBuf, StateError> {
        let tmp = sibling(&self.path, RECREATE_SUFFIX);
        let _ = std::fs::remove_file(&tmp);
        let text = tmp.to_string_lossy().into_owned();
        match self.conn.execute("VACUUM INTO ?1", [&text]) {
            Ok(_) => Ok(tmp),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(self.err(e))
            }
        }
    }

    /// Moves every WAL frame into the DB file and empties the WAL, so nothing is lost if
    /// another connection deletes the WAL by name when it closes.
    pub fn checkpoint(&self) -> Result<(), StateError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.err(e))
    }

    /// Records what happened to the state DB itself.
    pub fn insert_fact(&self, kind: &str, at_ns: i64, detail: &str) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO state_fact (kind, at_ns, detail) VALUES (?1, ?2, ?3)",
                params![kind, at_ns, detail],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// How many facts of `kind` are stored, and the time of the latest.
    pub fn fact_count(&self, kind: &str) -> Result<(u64, Option<i64>), StateError> {
        self.conn
            .query_row(
                "SELECT count(*), max(at_ns) FROM state_fact WHERE kind = ?1",
                [kind],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .map_err(|e| self.err(e))
    }

    /// Adds episodes that were counted but not stored one by one: `(source, UTC day, count)`.
    pub fn add_folded(&self, folds: &[(String, i64, u64)]) -> Result<(), StateError> {
        let run = || -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            for (source, day, count) in folds {
                tx.execute(
                    "INSERT INTO episode_folded (source, day, count) VALUES (?1, ?2, ?3)
                     ON CONFLICT (source, day) DO UPDATE SET count = count + excluded.count",
                    params![source, day, *count as i64],
                )?;
            }
            tx.commit()
        };
        run().map_err(|e| self.err(e))
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
        self.conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        Ok(())
    }

    fn check(&self) -> Result<(), StateError> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if verdict != "ok" {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                reason: verdict,
            });
        }
        // Prove it is writable now rather than at the first heartbeat.
        self.conn
            .execute_batch("BEGIN IMMEDIATE; COMMIT;")
            .map_err(|e| self.err(e))
    }

    fn migrate(&self) -> Result<(), StateError> {
        let err = |e| self.err(e);
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
            let run = || -> rusqlite::Result<()> {
                self.conn
                    .execute_batch(&format!("BEGIN IMMEDIATE; {sql};"))?;
                // A DB that already held history: the runs it can tell of, estimated.
                if version == SESSIONS_VERSION && found > 0 {
                    let old = old_run_evidence(&self.conn, &self.path)?;
                    for s in crate::coverage::estimate(&old) {
                        insert_session(&self.conn, &s)?;
                    }
                }
                self.conn
                    .execute_batch(&format!("PRAGMA user_version = {version}; COMMIT;"))
            };
            if let Err(e) = run() {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(err(e));
            }
        }
        Ok(())
    }

    /// Starts this run's watch session, ending the previous run's as `previous_ended`
    /// (how the start-up classified the gap: `stopped`, `restart`, `reboot`). Call before
    /// the run's first heartbeat, which the session then follows.
    pub fn begin_session(
        &self,
        started_at_ns: i64,
        previous_ended: Option<&str>,
    ) -> Result<(), StateError> {
        let run = || -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute(
                "UPDATE watch_session SET ended = ?1 WHERE ended = 'running'",
                [previous_ended.unwrap_or(crate::coverage::ENDED_RESTART)],
            )?;
            let id = insert_session(
                &tx,
                &crate::coverage::Session {
                    started_ns: started_at_ns,
                    last_seen_ns: started_at_ns,
                    ended: crate::coverage::ENDED_RUNNING.into(),
                    estimated: false,
                },
            )?;
            tx.execute(
                "DELETE FROM watch_session WHERE id <= ?1",
                [id - MAX_SESSIONS],
            )?;
            tx.commit()
        };
        run().map_err(|e| self.err(e))
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
        tx().map_err(|e| self.err(e))
    }

    /// Events that started at or after `since_ns`, oldest first, at most `limit`.
    pub fn events_since(&self, since_ns: i64, limit: i64) -> Result<Vec<StoredEvent>, StateError> {
        read_events(&self.conn, since_ns, limit).map_err(|e| self.err(e))
    }

    /// Start time of the most recent lost-time freeze, to restore the gauge after a restart.
    pub fn last_freeze_started_ns(&self) -> Result<Option<i64>, StateError> {
        self.conn
            .query_row(
                "SELECT max(started_at_ns) FROM freeze_event WHERE kind != 'wall_clock_step'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Replaces the heartbeat.
    pub fn write_heartbeat(&self, hb: &Heartbeat) -> Result<(), StateError> {
        // Once a second for the whole run: prepared once, one statement, one transaction
        // (the session's last_seen moves with it by trigger, in the same transaction).
        self.conn
            .prepare_cached(
                "INSERT INTO heartbeat (id, mono_ns, real_ns, boot_ns, boot_id, pid, clean)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET mono_ns = ?1, real_ns = ?2, boot_ns = ?3,
                     boot_id = ?4, pid = ?5, clean = ?6",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    hb.clocks.mono_ns,
                    hb.clocks.real_ns,
                    hb.clocks.boot_ns,
                    hb.boot_id,
                    std::process::id(),
                    hb.clean
                ])
            })
            .map(|_| ())
            .map_err(|e| self.err(e))
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
            .map_err(|e| self.err(e))
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
            .map_err(|e| self.err(e))
    }
}

/// A read-only connection for the HTTP API, so queries never wait on the writer's thread.
///
/// It follows the DB: when the file at its path is no longer the one it opened (the
/// writer recreated a deleted DB there), the next read opens the new one. While nothing
/// is at the path it keeps reading the file it has open.
pub struct StateReader {
    open: RefCell<(Connection, Option<FileId>)>,
    path: PathBuf,
}

fn open_read_only(path: &Path) -> Result<Connection, StateError> {
    check_is_file(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| classify(path, e))?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(|e| classify(path, e))?;
    Ok(conn)
}

impl StateReader {
    pub fn open(path: &Path) -> Result<StateReader, StateError> {
        let conn = open_read_only(path)?;
        Ok(StateReader {
            open: RefCell::new((conn, FileId::of(path))),
            path: path.to_path_buf(),
        })
    }

    /// The connection to the file at the path now (one `stat` a read).
    fn current(&self) -> std::cell::Ref<'_, Connection> {
        let now = FileId::of(&self.path);
        if now.is_some() && now != self.open.borrow().1 {
            match open_read_only(&self.path) {
                Ok(conn) => *self.open.borrow_mut() = (conn, now),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the recreated state database; reading the one open")
                }
            }
        }
        std::cell::Ref::map(self.open.borrow(), |(conn, _)| conn)
    }

    pub fn events_since(&self, since_ns: i64, limit: i64) -> Result<Vec<StoredEvent>, StateError> {
        let conn = self.current();
        read_events(&conn, since_ns, limit).map_err(|e| classify(&self.path, e))
    }

    /// Runs one read of tables another part owns (the outbox's alerts, the silences)
    /// on the current connection, with this reader's error classification.
    pub fn read_with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let conn = self.current();
        f(&conn).map_err(|e| classify(&self.path, e))
    }

    /// Lost-time freezes that may overlap `[from_ns, to_ns]` (started up to a day before it).
    pub fn freezes_overlapping(
        &self,
        from_ns: i64,
        to_ns: i64,
    ) -> Result<Vec<FreezeSpan>, StateError> {
        let conn = self.current();
        let run = || -> rusqlite::Result<Vec<FreezeSpan>> {
            let mut stmt = conn.prepare_cached(
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
        let conn = self.current();
        let run = || -> rusqlite::Result<Vec<StoredEpisode>> {
            let mut stmt = conn.prepare_cached(
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

    /// Episodes counted but not stored one by one, per source, on the UTC days from the
    /// one `since_ns` falls on: `(source, count, first day, last day)`, by source. A DB
    /// from before they were counted (schema < 4) has none.
    pub fn folded_since(&self, since_ns: i64) -> Result<Vec<FoldedEpisodes>, StateError> {
        let conn = self.current();
        read_folded(&conn, crate::time::day_of(since_ns), i64::MAX)
            .map_err(|e| classify(&self.path, e))
    }
}

/// Episodes a source produced that were counted but not stored one by one (the state
/// writer's queue was full, or its retry queue while the disk refused writes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FoldedEpisodes {
    pub source: String,
    pub count: u64,
    /// UTC days (since 1970-01-01) of the first and last count.
    pub first_day: i64,
    pub last_day: i64,
}

/// Folded episodes per source on UTC days `[from_day, to_day]`; none before schema 4.
pub fn read_folded(
    conn: &Connection,
    from_day: i64,
    to_day: i64,
) -> rusqlite::Result<Vec<FoldedEpisodes>> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 4 {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT source, sum(count), min(day), max(day) FROM episode_folded
         WHERE day >= ?1 AND day <= ?2 GROUP BY source ORDER BY source",
    )?;
    let rows = stmt.query_map(params![from_day, to_day], |r| {
        Ok(FoldedEpisodes {
            source: r.get(0)?,
            count: r.get::<_, i64>(1)?.max(0) as u64,
            first_day: r.get(2)?,
            last_day: r.get(3)?,
        })
    })?;
    rows.collect()
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

fn insert_session(conn: &Connection, s: &crate::coverage::Session) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO watch_session (started_at_ns, last_seen_ns, ended, estimated)
         VALUES (?1, ?2, ?3, ?4)",
        params![s.started_ns, s.last_seen_ns, s.ended, s.estimated],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Every watch session stored, oldest first (at most [`MAX_SESSIONS`]).
pub fn read_sessions(conn: &Connection) -> rusqlite::Result<Vec<crate::coverage::Session>> {
    let mut stmt = conn.prepare_cached(
        "SELECT started_at_ns, last_seen_ns, ended, estimated FROM watch_session ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(crate::coverage::Session {
            started_ns: r.get(0)?,
            last_seen_ns: r.get(1)?,
            ended: r.get(2)?,
            estimated: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// What a state DB of schema 2..=4 at `path` says about the runs that wrote it (see
/// `report::coverage::estimate`): its first write, the file's creation unless a write is
/// older (then it was copied), the data dir's marker, the heartbeat, restarts and reboots.
pub fn old_run_evidence(
    conn: &Connection,
    path: &Path,
) -> rusqlite::Result<crate::coverage::OldEvidence> {
    use crate::coverage::{Downtime, OldEvidence};
    let has_episodes: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'episode'",
        [],
        |r| r.get(0),
    )?;
    let first_write: Option<i64> = conn.query_row(
        if has_episodes {
            "SELECT min(t) FROM (SELECT min(detected_at_ns) AS t FROM freeze_event
                                 UNION ALL SELECT min(detected_at_ns) FROM episode)"
        } else {
            "SELECT min(detected_at_ns) FROM freeze_event"
        },
        [],
        |r| r.get(0),
    )?;
    let born = std::fs::metadata(path)
        .and_then(|m| m.created())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .filter(|b| first_write.is_none_or(|w| *b <= w));
    let marker = std::fs::read_to_string(path.with_file_name(STATE_DB_MARKER))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("created_unix_ns="))
                .and_then(|n| n.trim().parse::<i64>().ok())
        });
    let heartbeat = conn
        .query_row(
            "SELECT real_ns, clean FROM heartbeat WHERE id = 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
        )
        .optional()?;
    // Only signs of life before the last heartbeat say when watching began.
    let running_at_ns = [first_write, born, marker]
        .into_iter()
        .flatten()
        .filter(|t| heartbeat.is_none_or(|(h, _)| *t <= h))
        .collect();
    let mut stmt = conn.prepare(
        "SELECT kind, started_at_ns, duration_ns FROM freeze_event
         WHERE kind IN ('restart', 'reboot') ORDER BY started_at_ns LIMIT ?1",
    )?;
    let downtimes = stmt
        .query_map([MAX_SESSIONS], |r| {
            Ok(Downtime {
                kind: r.get(0)?,
                started_ns: r.get(1)?,
                duration_ns: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(OldEvidence {
        running_at_ns,
        heartbeat,
        downtimes,
    })
}

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

    /// Issue 14 item 9: a DB deleted while open is put back from the open file.
    #[test]
    fn a_db_deleted_while_open_is_copied_back_with_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        db.insert_event(&event(FreezeKind::ProcessStall, 10), 11)
            .unwrap();
        assert_eq!(db.still_at_path(), AtPath::Same);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(sibling(db.path(), suffix));
        }
        assert_eq!(db.still_at_path(), AtPath::Missing);
        let (new, kept) = db.recreate().unwrap();
        assert!(kept);
        assert_eq!(new.still_at_path(), AtPath::Same);
        assert_eq!(new.events_since(0, 10).unwrap().len(), 1);
        assert!(new.notice().is_none(), "nothing was lost");
        new.insert_event(&event(FreezeKind::VmPause, 20), 21)
            .unwrap();
        let reader = StateReader::open(new.path()).unwrap();
        assert_eq!(reader.events_since(0, 10).unwrap().len(), 2);
    }

    /// Issue 14 item 9: a reader follows the DB recreated at its path.
    #[test]
    fn a_reader_follows_a_db_recreated_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        let reader = StateReader::open(db.path()).unwrap();
        db.insert_event(&event(FreezeKind::ProcessStall, 10), 11)
            .unwrap();
        // SQLite opens the WAL at the first read; after that the path no longer matters.
        assert_eq!(reader.events_since(0, 10).unwrap().len(), 1);
        std::fs::remove_file(db.path()).unwrap();
        // Nothing at the path: it reads the file it has open.
        assert_eq!(reader.events_since(0, 10).unwrap().len(), 1);
        let (new, _) = db.recreate().unwrap();
        new.insert_event(&event(FreezeKind::VmPause, 20), 21)
            .unwrap();
        assert_eq!(reader.events_since(0, 10).unwrap().len(), 2);
    }

    /// Issue 14 item 9: a start over a data dir whose DB is gone records where history starts.
    #[test]
    fn a_missing_db_beside_its_marker_is_recorded_as_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDb::open(dir.path()).unwrap();
        assert!(first.notice().is_none());
        let path = first.path().to_path_buf();
        drop(first);
        assert!(dir.path().join(STATE_DB_MARKER).is_file());
        std::fs::remove_file(&path).unwrap();
        let second = StateDb::open(dir.path()).unwrap();
        let notice = second.notice().expect("a notice").to_string();
        assert!(
            notice.contains("is missing but this data dir held one"),
            "{notice}"
        );
        let kinds: Vec<String> = second
            .conn
            .prepare("SELECT kind FROM state_fact")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kinds, [FACT_RECREATED]);
        // A fresh data dir is not a loss.
        let fresh = tempfile::tempdir().unwrap();
        assert!(StateDb::open(fresh.path()).unwrap().notice().is_none());
    }

    #[test]
    fn folded_counts_add_up_per_source_and_day() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(dir.path()).unwrap();
        db.add_folded(&[("a".into(), 100, 5), ("b".into(), 100, 1)])
            .unwrap();
        db.add_folded(&[("a".into(), 100, 2), ("a".into(), 101, 3)])
            .unwrap();
        let reader = StateReader::open(db.path()).unwrap();
        let day = 86_400 * 1_000_000_000i64;
        let all = reader.folded_since(100 * day).unwrap();
        let got: Vec<_> = all
            .iter()
            .map(|f| (f.source.as_str(), f.count, f.first_day, f.last_day))
            .collect();
        assert_eq!(got, [("a", 10, 100, 101), ("b", 1, 100, 100)]);
        let later = reader.folded_since(101 * day + 5).unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].count, 3);
    }

    #[test]
    fn a_directory_where_the_db_should_be_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DB_FILE)).unwrap();
        let err = StateDb::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
