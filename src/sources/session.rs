//! What a source reads rows through, whichever database holds them: a [`Query`] written
//! for both SQLite (`?N`) and Postgres (`$N`), [`Value`]s back, and the [`Session`] of one
//! poll. `sqlite.rs` and `postgres.rs` implement it; `db.rs` picks one.

use super::SourceError;
use crate::freeze::reference::RefSample;
use crate::timestamp::{to_unix_ns, RawTime};

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Real(f) => Some(*f as i64),
            Value::Text(t) => t
                .trim()
                .parse()
                .ok()
                .or_else(|| t.trim().parse::<f64>().ok().map(|f| f as i64)),
            Value::Null => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Real(f) => Some(*f),
            Value::Text(t) => t.trim().parse().ok(),
            Value::Null => None,
        }
    }

    /// The value as label text (empty for NULL).
    pub fn text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Int(i) => i.to_string(),
            Value::Real(f) => f.to_string(),
            Value::Text(t) => t.clone(),
        }
    }

    /// The value as a time: `None` for NULL, else unix ns or why it is not a time.
    pub fn time_ns(&self) -> Option<Result<i64, String>> {
        match self {
            Value::Null => None,
            Value::Int(i) => Some(to_unix_ns(RawTime::Int(*i))),
            Value::Real(f) => Some(to_unix_ns(RawTime::Float(*f))),
            Value::Text(t) => Some(to_unix_ns(RawTime::Text(t))),
        }
    }
}

/// A query in both dialects.
#[derive(Debug, Clone)]
pub struct Query {
    pub sqlite: String,
    pub postgres: String,
}

impl Query {
    /// The same text for both, with `?N` placeholders turned into `$N` for Postgres.
    pub fn portable(sql: impl Into<String>) -> Query {
        let sqlite = sql.into();
        Query {
            postgres: sqlite.replace('?', "$"),
            sqlite,
        }
    }
}

/// Rows with their column names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Column names; may be empty when there are no rows (Postgres sends names with rows).
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// What a source can do with an open connection during one poll.
pub trait Session {
    fn table(&mut self, query: &Query, params: &[Value]) -> Result<Table, SourceError>;

    fn rows(&mut self, query: &Query, params: &[Value]) -> Result<Vec<Vec<Value>>, SourceError> {
        self.table(query, params).map(|t| t.rows)
    }
    /// SQLite's journal mode; `None` on Postgres.
    fn journal_mode(&mut self) -> Result<Option<String>, SourceError>;
    /// The server's clock as a reference sample, where the database has one of its own.
    fn server_clock(&mut self) -> Result<Option<RefSample>, SourceError>;
}
