//! The `sql` source: an operator's own query. Label columns become labels, each value
//! column becomes the gauge `stallwatch_sql_<column>{source, <labels>}`.
//!
//! The query runs on the same read-only connection as every source (`query_only` on
//! SQLite, a read-only session with a statement timeout on Postgres), so a statement that
//! would write fails instead; rows are capped at [`MAX_ROWS_PER_POLL`].

use super::db::Database;
use super::session::Query;
use super::{ErrorKind, Observation, Sample, Source, SourceError, MAX_ROWS_PER_POLL};

pub struct SqlSource {
    db: Database,
    query: Query,
    labels: Vec<String>,
    values: Vec<String>,
}

impl SqlSource {
    pub fn new(db: Database, query: String, labels: Vec<String>, values: Vec<String>) -> SqlSource {
        // The operator's query is used as written on either backend; the row cap wraps it.
        let capped = format!(
            "SELECT * FROM ({query}) AS stallwatch_q LIMIT {}",
            MAX_ROWS_PER_POLL + 1
        );
        SqlSource {
            db,
            query: Query {
                sqlite: capped.clone(),
                postgres: capped,
            },
            labels,
            values,
        }
    }
}

impl Source for SqlSource {
    fn poll(&mut self, _now_ns: i64) -> Result<Observation, SourceError> {
        let query = &self.query;
        let (table, mode, clock) = self
            .db
            .read(|s| Ok((s.table(query, &[])?, s.journal_mode()?, s.server_clock()?)))?;
        let mut obs = Observation {
            journal_mode: mode,
            server_clock: clock,
            ..Default::default()
        };
        if table.rows.is_empty() {
            return Ok(obs);
        }
        let find = |want: &String| {
            table.columns.iter().position(|n| n == want).ok_or_else(|| {
                SourceError::new(
                    ErrorKind::Schema,
                    format!(
                        "the query returns no column {want:?} (it returns {:?})",
                        table.columns
                    ),
                )
            })
        };
        let label_at: Vec<usize> = self.labels.iter().map(find).collect::<Result<_, _>>()?;
        let value_at: Vec<usize> = self.values.iter().map(find).collect::<Result<_, _>>()?;
        for row in table.rows.iter().take(MAX_ROWS_PER_POLL as usize) {
            let labels: Vec<String> = label_at.iter().map(|i| row[*i].text()).collect();
            for (column, i) in self.values.iter().zip(&value_at) {
                match row[*i].as_f64() {
                    Some(value) => obs.samples.push(Sample {
                        column: column.clone(),
                        labels: labels.clone(),
                        value,
                    }),
                    None => obs.bad_values += 1,
                }
            }
        }
        Ok(obs)
    }
}
