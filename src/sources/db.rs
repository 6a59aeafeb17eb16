//! One way for sources to read rows, from SQLite or Postgres.
//!
//! A source writes each query twice — `?N` placeholders for SQLite, `$N` for Postgres —
//! and gets rows of [`Value`]s back. SQLite values come typed; Postgres values come as
//! text (the simple query protocol, so any column type, `numeric` and `timestamptz`
//! included, can be read without a type mapping) and the accessors parse them.

use super::postgres::PgReader;
use super::session::Session;
use super::sqlite::SqliteReader;
use super::SourceError;
use crate::config::source::Location;

/// Where a source's rows come from.
pub enum Database {
    Sqlite(SqliteReader),
    Postgres(Box<PgReader>),
}

impl Database {
    /// The database a source at `location` reads.
    pub fn open(location: &Location) -> Database {
        match location {
            Location::Postgres(url) => Database::Postgres(Box::new(PgReader::new(url.clone()))),
            Location::Sqlite(path) | Location::File(path) => {
                Database::Sqlite(SqliteReader::new(path.clone()))
            }
        }
    }

    /// Runs one poll's reads; any error closes the connection so the next poll reopens it.
    pub fn read<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Session) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        match self {
            Database::Sqlite(db) => db.session(f),
            Database::Postgres(db) => db.session(f),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Database::Postgres(_))
    }
}
