//! Read-only access to an app's SQLite database.
//!
//! Opens with `SQLITE_OPEN_READ_ONLY` and `query_only`, so no statement can write; runs
//! every query in autocommit, so each read transaction lasts one statement (a long reader
//! would starve WAL checkpoints, or block writers in rollback-journal mode); waits at most
//! [`SOURCE_BUSY_TIMEOUT`] for a lock, then reports `locked` for this poll and tries again
//! on the next. The connection is dropped after any error, and when the path no longer
//! names the file it opened (replaced, deleted, or swapped for a FIFO or directory), and
//! reopened on the next poll, so a file that was replaced, repaired or created later is
//! picked up. Only a regular file is ever opened ([`super::file::open_regular`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use rusqlite::types::ValueRef;

use super::db::{Query, Session, Table, Value};
use super::file::{open_regular, OpenError};
use super::{ErrorKind, SourceError};
use crate::freeze::reference::RefSample;

/// Longest wait for the app's lock: short, because waiting holds nothing useful and the
/// next poll comes anyway.
pub const SOURCE_BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// Page cache of a source's connection, in KiB (SQLite's default is 2,000): a poll reads
/// recent rows through indexes, and the app's file grows for ever, so a full default
/// cache per source is memory that climbs for hours; the OS page cache holds the file.
pub const SOURCE_CACHE_KIB: i64 = 512;

pub struct SqliteReader {
    path: PathBuf,
    conn: Option<Opened>,
}

/// An open connection and what it was opened on.
struct Opened {
    conn: Connection,
    /// The descriptor the file was checked through, kept open as long as the connection
    /// and closed after it (fields drop in order): on Linux, closing *any* descriptor of a
    /// file drops every POSIX lock the process holds on it, SQLite's shared WAL lock
    /// included, after which the app's last close checkpoints and deletes the WAL under
    /// the reader and it reads old data until it reopens.
    _checked: std::fs::File,
    /// (device, inode) of the file.
    id: (u64, u64),
}

impl SqliteReader {
    pub fn new(path: PathBuf) -> SqliteReader {
        SqliteReader { path, conn: None }
    }

    /// Whether the path still names the file the connection was opened on: one `stat`
    /// per poll, so a database replaced under the same name (or a FIFO or directory put
    /// in its place) is noticed instead of the deleted file being read forever.
    fn still_at_path(&self, opened: (u64, u64)) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == opened)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one poll's reads with an open connection; any error closes it so the next
    /// poll reopens (a replaced, repaired or newly created file is picked up).
    pub fn session<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Session) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if let Some(opened) = &self.conn {
            if !self.still_at_path(opened.id) {
                tracing::info!(path = %self.path.display(), "app database file replaced or gone; reopening");
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(open(&self.path)?);
        }
        let mut session = SqliteSession {
            conn: &self.conn.as_ref().expect("opened above").conn,
            path: &self.path,
        };
        let result = f(&mut session);
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

struct SqliteSession<'a> {
    conn: &'a Connection,
    path: &'a Path,
}

impl Session for SqliteSession<'_> {
    fn table(&mut self, query: &Query, params: &[Value]) -> Result<Table, SourceError> {
        let err = |e| classify(self.path, e);
        let mut stmt = self.conn.prepare_cached(&query.sqlite).map_err(err)?;
        let names: Vec<String> = stmt.column_names().iter().map(|n| n.to_string()).collect();
        let columns = names.len();
        let params = params.iter().map(|v| match v {
            Value::Null => rusqlite::types::Value::Null,
            Value::Int(i) => rusqlite::types::Value::Integer(*i),
            Value::Real(f) => rusqlite::types::Value::Real(*f),
            Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        });
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => Value::Text("(blob)".into()),
                });
            }
            out.push(values);
        }
        Ok(Table {
            columns: names,
            rows: out,
        })
    }

    fn journal_mode(&mut self) -> Result<Option<String>, SourceError> {
        journal_mode(self.conn)
            .map(Some)
            .map_err(|e| classify(self.path, e))
    }

    fn server_clock(&mut self) -> Result<Option<RefSample>, SourceError> {
        Ok(None)
    }
}

fn open(path: &Path) -> Result<Opened, SourceError> {
    // Only a regular file, opened without blocking (a FIFO would block SQLite's own open
    // forever); opening it for reading also proves permission before SQLite hides the
    // reason. Held while SQLite opens the path, which leaves only the moment between this
    // look and SQLite's open for a FIFO to be swapped in, and then for as long as the
    // connection (see [`Opened::_checked`]).
    let (checked, meta) = open_regular(path, "a SQLite database file").map_err(|e| match e {
        OpenError::Missing(_) => SourceError::new(
            ErrorKind::Missing,
            format!("{} does not exist", path.display()),
        ),
        OpenError::NotAFile(sentence) => SourceError::new(ErrorKind::NotAFile, sentence),
        OpenError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            SourceError::new(
                ErrorKind::Permission,
                format!("cannot open {}: {source}", path.display()),
            )
        }
        other => SourceError::new(ErrorKind::Io, other.to_string()),
    })?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(SOURCE_BUSY_TIMEOUT)
        .map_err(|e| classify(path, e))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| classify(path, e))?;
    conn.pragma_update(None, "cache_size", -SOURCE_CACHE_KIB)
        .map_err(|e| classify(path, e))?;
    // A "quoted" name that matches no column must be an error, not a string literal:
    // otherwise a missing status column silently reads as an empty queue.
    for setting in [
        DbConfig::SQLITE_DBCONFIG_DQS_DML,
        DbConfig::SQLITE_DBCONFIG_DQS_DDL,
    ] {
        conn.set_db_config(setting, false)
            .map_err(|e| classify(path, e))?;
    }
    // Reading the schema proves it is a database at all.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| classify(path, e))?;
    Ok(Opened {
        conn,
        _checked: checked,
        id: (meta.dev(), meta.ino()),
    })
}

/// The database's journal mode (`wal`, `delete`, …), read without changing it.
pub fn journal_mode(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
}

pub fn classify(path: &Path, e: rusqlite::Error) -> SourceError {
    use rusqlite::ErrorCode::*;
    let text = e.to_string();
    let kind = match e.sqlite_error_code() {
        Some(NotADatabase) => ErrorKind::NotADatabase,
        Some(DatabaseCorrupt) => ErrorKind::Corrupt,
        Some(DatabaseBusy | DatabaseLocked) => ErrorKind::Locked,
        Some(PermissionDenied | ReadOnly) => ErrorKind::Permission,
        Some(CannotOpen) => ErrorKind::Io,
        _ if text.contains("no such table") || text.contains("no such column") => ErrorKind::Schema,
        _ => ErrorKind::Query,
    };
    let message = match kind {
        ErrorKind::NotADatabase => format!("{} is not a SQLite database", path.display()),
        ErrorKind::Locked => format!(
            "{} is locked by another connection (waited {} ms)",
            path.display(),
            SOURCE_BUSY_TIMEOUT.as_millis()
        ),
        ErrorKind::Corrupt => format!("{} is corrupt: {text}", path.display()),
        _ => format!("{}: {text}", path.display()),
    };
    SourceError::new(kind, message)
}
