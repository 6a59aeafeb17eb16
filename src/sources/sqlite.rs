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
//!
//! **One-shot readers** (`analyze`, `verify --source`; [`SqliteReader::one_shot`]) must
//! leave nothing beside the app's file and must read a read-only mount. A read-only
//! connection to a WAL database creates `-wal` and `-shm` and, unable to checkpoint,
//! leaves them behind at close. So a one-shot reader opens a WAL database with neither
//! beside it as `immutable` (no connection has it open: SQLite deletes them at the last
//! close, so every row is in the main file), and falls back to `immutable` when the
//! normal open fails because nothing can be created beside the file (a read-only
//! directory or mount); then a `-wal` that is there is not read, and
//! [`SqliteReader::opened_as`] says so. The live source never opens immutable: the app
//! writes while it polls.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use rusqlite::types::ValueRef;

use super::file::{open_regular, OpenError};
use super::session::{Query, Session, Table, Value};
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
    /// A one-shot read (see the module doc): may open immutable.
    one_shot: bool,
    /// How the last connection was opened.
    opened_as: Option<OpenedAs>,
}

/// How a one-shot reader opened the file, for its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenedAs {
    /// Read-only, as the live source opens it.
    ReadOnly,
    /// `immutable`: a WAL database that no connection had open (no `-wal` or `-shm`), so
    /// that no `-wal`/`-shm` is created beside it.
    ImmutableUnused,
    /// `immutable`, because the normal open failed: nothing can be created beside the file
    /// (read-only directory or mount). `wal_bytes`: the size of a `-wal` that is there and
    /// is therefore not read.
    ImmutableReadOnlyDir { wal_bytes: Option<u64> },
}

impl OpenedAs {
    /// One sentence for the operator, or `None` for a plain read-only open.
    pub fn note(&self) -> Option<String> {
        match self {
            OpenedAs::ReadOnly => None,
            OpenedAs::ImmutableUnused => Some(
                "opened immutable: a WAL database no app has open (no -wal or -shm beside it), so nothing is created beside it; rows an app writes during this read are not seen".into(),
            ),
            OpenedAs::ImmutableReadOnlyDir { wal_bytes: None } => Some(
                "opened immutable: nothing can be created beside the file (read-only directory or mount); rows an app writes during this read are not seen".into(),
            ),
            OpenedAs::ImmutableReadOnlyDir { wal_bytes: Some(n) } => Some(format!(
                "opened immutable: nothing can be created beside the file (read-only directory or mount); its -wal ({n} bytes) is NOT read, so the newest rows may be missing"
            )),
        }
    }
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
    /// An immutable connection's `PRAGMA journal_mode` says `delete` whatever the file
    /// is: the mode from the file's header instead.
    journal_mode: Option<&'static str>,
}

impl SqliteReader {
    pub fn new(path: PathBuf) -> SqliteReader {
        SqliteReader {
            path,
            conn: None,
            one_shot: false,
            opened_as: None,
        }
    }

    /// A reader for a one-shot operator tool: leaves no `-wal`/`-shm` behind and reads a
    /// read-only mount (see the module doc).
    pub fn one_shot(path: PathBuf) -> SqliteReader {
        SqliteReader {
            one_shot: true,
            ..SqliteReader::new(path)
        }
    }

    /// How the last connection was opened; `None` before the first.
    pub fn opened_as(&self) -> Option<&OpenedAs> {
        self.opened_as.as_ref()
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
            let (opened, how) = open(&self.path, self.one_shot)?;
            self.conn = Some(opened);
            self.opened_as = Some(how);
        }
        let opened = self.conn.as_ref().expect("opened above");
        let mut session = SqliteSession {
            conn: &opened.conn,
            path: &self.path,
            journal_mode: opened.journal_mode,
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
    journal_mode: Option<&'static str>,
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
        if let Some(mode) = self.journal_mode {
            return Ok(Some(mode.to_string()));
        }
        journal_mode(self.conn)
            .map(Some)
            .map_err(|e| classify(self.path, e))
    }

    fn server_clock(&mut self) -> Result<Option<RefSample>, SourceError> {
        Ok(None)
    }
}

/// `-wal`/`-shm` of `path`: its size, if it is there.
fn beside(path: &Path, suffix: &str) -> Option<u64> {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::fs::symlink_metadata(Path::new(&name))
        .ok()
        .map(|m| m.len())
}

/// Whether the file's header says WAL (bytes 18 and 19 are 2), read through the checked
/// descriptor.
fn header_says_wal(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0).is_ok()
        && header.starts_with(b"SQLite format 3\0")
        && header[18] == 2
        && header[19] == 2
}

fn open(path: &Path, one_shot: bool) -> Result<(Opened, OpenedAs), SourceError> {
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
    let wal = header_says_wal(&checked);
    let unused_wal =
        one_shot && wal && beside(path, "-wal").is_none() && beside(path, "-shm").is_none();
    let (conn, how) = if unused_wal {
        (connect(path, true)?, OpenedAs::ImmutableUnused)
    } else {
        match connect(path, false) {
            Ok(conn) => (conn, OpenedAs::ReadOnly),
            Err(e) if one_shot && matches!(e.kind, ErrorKind::Io | ErrorKind::Permission) => (
                connect(path, true).map_err(|_| e)?,
                OpenedAs::ImmutableReadOnlyDir {
                    wal_bytes: beside(path, "-wal").filter(|n| *n > 0),
                },
            ),
            Err(e) => return Err(e),
        }
    };
    Ok((
        Opened {
            conn,
            _checked: checked,
            id: (meta.dev(), meta.ino()),
            journal_mode: (wal && how != OpenedAs::ReadOnly).then_some("wal"),
        },
        how,
    ))
}

/// A read-only connection, set up as every source connection is; `immutable` by URI.
fn connect(path: &Path, immutable: bool) -> Result<Connection, SourceError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = if immutable {
        let escaped = path
            .to_string_lossy()
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23");
        Connection::open_with_flags(
            format!("file:{escaped}?immutable=1"),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    } else {
        Connection::open_with_flags(path, flags)
    }
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
