//! Read-only access to an app's SQLite database.
//!
//! Opens with `SQLITE_OPEN_READ_ONLY` and `query_only`, so no statement can write; runs
//! every query in autocommit, so each read transaction lasts one statement (a long reader
//! would starve WAL checkpoints, or block writers in rollback-journal mode); waits at most
//! [`SOURCE_BUSY_TIMEOUT`] for a lock, then reports `locked` for this poll and tries again
//! on the next. The connection is dropped after any error and reopened on the next poll,
//! so a file that was replaced, repaired or created later is picked up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{ErrorKind, SourceError};

/// Longest wait for the app's lock: short, because waiting holds nothing useful and the
/// next poll comes anyway.
pub const SOURCE_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

pub struct SqliteReader {
    path: PathBuf,
    conn: Option<Connection>,
}

impl SqliteReader {
    pub fn new(path: PathBuf) -> SqliteReader {
        SqliteReader { path, conn: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with an open connection; any error closes it so the next poll reopens.
    pub fn with<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(open(&self.path)?);
        }
        let result = f(self.conn.as_ref().expect("opened above"));
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Classifies a SQLite error into a source error naming the file.
    pub fn error(&self, e: rusqlite::Error) -> SourceError {
        classify(&self.path, e)
    }
}

fn open(path: &Path) -> Result<Connection, SourceError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SourceError::new(
                ErrorKind::Missing,
                format!("{} does not exist", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(SourceError::new(
                ErrorKind::Permission,
                format!("{}: permission denied", path.display()),
            ));
        }
        Err(e) => {
            return Err(SourceError::new(
                ErrorKind::Io,
                format!("{}: {e}", path.display()),
            ))
        }
        Ok(_) => {}
    }
    // Opening the file for reading proves permission before SQLite hides the reason.
    if let Err(e) = std::fs::File::open(path) {
        let kind = if e.kind() == std::io::ErrorKind::PermissionDenied {
            ErrorKind::Permission
        } else {
            ErrorKind::Io
        };
        return Err(SourceError::new(
            kind,
            format!("cannot open {}: {e}", path.display()),
        ));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(path, e))?;
    conn.busy_timeout(SOURCE_BUSY_TIMEOUT)
        .map_err(|e| classify(path, e))?;
    conn.pragma_update(None, "query_only", true)
        .map_err(|e| classify(path, e))?;
    // Reading the schema proves it is a database at all.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| classify(path, e))?;
    Ok(conn)
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
