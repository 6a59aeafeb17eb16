//! Job and step sources: read an app's own database or log, read-only, on an interval,
//! and report what they saw as an [`Observation`].
//!
//! Each kind is one file behind the [`Source`] trait. A source only reads and converts;
//! what the readings mean (gaps, stalls, attribution, metrics) is decided in
//! [`crate::signals`] and applied by [`runner`]. Invariant: a source never writes to the
//! app's database and never holds a read transaction longer than one statement.

pub mod build;
pub mod db;
pub mod dbos;
pub mod file;
pub mod jsonl;
pub mod postgres;
pub mod queue_table;
pub mod session;
pub mod sql;
pub mod sqlite;
pub mod tail;

use crate::signals::steps::{OpenWorkflow, StepRow};

/// Most rows one query of one poll reads; the rest waits for the next poll.
pub const MAX_ROWS_PER_POLL: i64 = 10_000;

/// Depth and age of one (queue, status).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStatus {
    pub queue: String,
    pub status: String,
    pub depth: u64,
    /// Creation time of the oldest row, when the table has one.
    pub oldest_ns: Option<i64>,
}

/// Dead letters of one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetters {
    pub queue: String,
    pub current: u64,
    /// Dead letters that appeared since the previous poll (0 on the first).
    pub new: u64,
}

/// One value of one row of a `sql` source: which value column, the row's label values, the number.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub column: String,
    pub labels: Vec<String>,
    pub value: f64,
}

/// Everything one poll of one source saw. Empty vectors mean "this source has none".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub queues: Vec<QueueStatus>,
    /// Retries (failed attempts) first seen in this poll, per queue.
    pub retries: Vec<(String, u64)>,
    pub dead_letters: Vec<DeadLetters>,
    /// Running jobs whose lease has expired, per queue.
    pub stuck: Vec<(String, u64)>,
    /// Steps completed since the previous poll, in completion order.
    pub steps: Vec<StepRow>,
    /// Workflows still open, when the source has workflows.
    pub open_workflows: Option<Vec<OpenWorkflow>>,
    /// Highest recovery count of a workflow still to run (PENDING or ENQUEUED).
    pub recovery_attempts_max: Option<i64>,
    /// Spend events since the previous poll: (time, USD).
    pub spend: Vec<(i64, f64)>,
    /// Timestamps that could not be read (counted and skipped).
    pub bad_timestamps: u64,
    /// Log lines longer than [`tail::MAX_LINE_BYTES`], skipped without being kept
    /// (`source_errors_total{kind="oversize_line"}`).
    pub oversize_lines: u64,
    /// Values of an operator's query, for `sql` sources.
    pub samples: Vec<Sample>,
    /// Values of an operator's query that were not numbers (counted and skipped).
    pub bad_values: u64,
    /// Reads that hit [`MAX_ROWS_PER_POLL`] with more to read: what they counted is a
    /// lower bound (`source_errors_total{kind="rows_capped"}`).
    pub capped_reads: u64,
    /// SQLite journal mode of the app database.
    pub journal_mode: Option<String>,
    /// The database server's clock, read during the poll (Postgres): a freeze reference.
    pub server_clock: Option<crate::freeze::reference::RefSample>,
}

/// Why a poll failed; `kind` is the label of `stallwatch_source_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: ErrorKind,
    pub message: String,
    /// The source did not try this poll (it is backing off after `message`): not a new
    /// failure to count or log.
    pub backing_off: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Missing,
    NotADatabase,
    Schema,
    Locked,
    Timeout,
    Permission,
    Corrupt,
    Io,
    Query,
    /// The path names a FIFO, directory, device or socket, never opened.
    NotAFile,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Missing,
        ErrorKind::NotADatabase,
        ErrorKind::Schema,
        ErrorKind::Locked,
        ErrorKind::Timeout,
        ErrorKind::Permission,
        ErrorKind::Corrupt,
        ErrorKind::Io,
        ErrorKind::Query,
        ErrorKind::NotAFile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Missing => "missing",
            ErrorKind::NotADatabase => "not_a_database",
            ErrorKind::Schema => "schema",
            ErrorKind::Locked => "locked",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Permission => "permission",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Io => "io",
            ErrorKind::Query => "query",
            ErrorKind::NotAFile => "not_a_file",
        }
    }
}

impl SourceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> SourceError {
        SourceError {
            kind,
            message: message.into(),
            backing_off: false,
        }
    }
}

/// A plug-in that reads one app database or log.
pub trait Source: Send {
    /// Reads what changed since the last poll. `now_ns` is the wall clock (unix ns).
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError>;
}
