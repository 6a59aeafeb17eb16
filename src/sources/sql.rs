//! The `sql` source: an operator's own query. Label columns become labels, each value
//! column becomes the gauge `stallwatch_sql_<column>{source, <labels>}`.
//!
//! The query runs on the same read-only, `query_only` connection as every source, so a
//! statement that would write fails instead; rows are capped at [`MAX_ROWS_PER_POLL`].

use std::path::PathBuf;

use rusqlite::types::ValueRef;

use super::sqlite::{classify, journal_mode, SqliteReader};
use super::{ErrorKind, Observation, Source, SourceError, MAX_ROWS_PER_POLL};

/// One value of one row: which value column, the row's label values, the number.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub column: String,
    pub labels: Vec<String>,
    pub value: f64,
}

pub struct SqlSource {
    db: SqliteReader,
    query: String,
    labels: Vec<String>,
    values: Vec<String>,
}

impl SqlSource {
    pub fn new(
        path: PathBuf,
        query: String,
        labels: Vec<String>,
        values: Vec<String>,
    ) -> SqlSource {
        SqlSource {
            db: SqliteReader::new(path),
            query,
            labels,
            values,
        }
    }
}

fn label_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => String::new(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(_) => "(blob)".into(),
    }
}

fn number(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Integer(i) => Some(i as f64),
        ValueRef::Real(f) => Some(f),
        ValueRef::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        ValueRef::Null | ValueRef::Blob(_) => None,
    }
}

impl Source for SqlSource {
    fn poll(&mut self, _now_ns: i64) -> Result<Observation, SourceError> {
        let path = self.db.path().to_path_buf();
        let (query, labels, values) = (&self.query, &self.labels, &self.values);
        let (samples, bad, mode) = self.db.with(|conn| {
            let mut stmt = conn.prepare_cached(query).map_err(|e| classify(&path, e))?;
            let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
            let find = |want: &String| {
                names.iter().position(|n| n == want).ok_or_else(|| {
                    SourceError::new(
                        ErrorKind::Schema,
                        format!("the query returns no column {want:?} (it returns {names:?})"),
                    )
                })
            };
            let label_at = labels.iter().map(find).collect::<Result<Vec<_>, _>>()?;
            let value_at = values.iter().map(find).collect::<Result<Vec<_>, _>>()?;
            let mut rows = stmt.query([]).map_err(|e| classify(&path, e))?;
            let (mut samples, mut bad, mut n) = (Vec::new(), 0u64, 0i64);
            while let Some(row) = rows.next().map_err(|e| classify(&path, e))? {
                n += 1;
                if n > MAX_ROWS_PER_POLL {
                    break;
                }
                let row_labels: Vec<String> = label_at
                    .iter()
                    .map(|i| row.get_ref(*i).map(label_text))
                    .collect::<Result<_, _>>()
                    .map_err(|e| classify(&path, e))?;
                for (column, i) in values.iter().zip(&value_at) {
                    match number(row.get_ref(*i).map_err(|e| classify(&path, e))?) {
                        Some(value) => samples.push(Sample {
                            column: column.clone(),
                            labels: row_labels.clone(),
                            value,
                        }),
                        None => bad += 1,
                    }
                }
            }
            Ok((
                samples,
                bad,
                journal_mode(conn).map_err(|e| classify(&path, e))?,
            ))
        })?;
        Ok(Observation {
            samples,
            bad_values: bad,
            journal_mode: Some(mode),
            ..Default::default()
        })
    }
}
