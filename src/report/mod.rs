//! Operator tools that look back, one-shot commands beside the sidecar:
//!
//! - `analyze`: an app's DBOS system database, with no stallwatch history at all — every
//!   step gap and wait overrun in its `operation_outputs`, per UTC day, longest first.
//! - `report`: the state DB over a window — freezes by kind, episodes by kind and cause,
//!   the longest of each; text, JSON, Markdown or a self-contained HTML page with an SVG
//!   timeline.
//! - `verify`: the state DB over a before and an after window — FIXED, NOT FIXED or NOT
//!   ENOUGH DATA, with the evidence and the statistics behind it.
//! - `verify --source` / `report --source` ([`app_verify`]): the app's own history (a DBOS
//!   DB, a queue table, a JSONL log) as evidence, with or without the state DB beside it:
//!   [`app_scan`] reads it, [`app_history`] counts its gaps per window and cause.
//!
//! Pure logic takes values and returns values: [`time`] (parsing and printing times),
//! [`stats`] (quantiles, Poisson), [`analyze`] (gap aggregation), [`verify`] (the verdict),
//! [`coverage`] (watch sessions: what was watched, what is estimated). I/O is thin: [`scan`] reads an app DB through the sources' read-only
//! [`crate::sources::db::Database`], [`history`] reads the state DB read-only. [`render`]
//! and [`html`] turn results into text. Nothing here writes to any database.
//!
//! Exit codes: 2 for anything the operator must fix (bad arguments, a URL that is not a
//! DBOS DB, a missing or unreadable state DB); `verify` returns 0 FIXED, 1 NOT FIXED,
//! 3 NOT ENOUGH DATA; everything else returns 0.

pub mod analyze;
pub mod app_history;
pub mod app_scan;
pub mod app_verify;
pub mod fleet;
pub mod history;
pub mod html;
pub mod prometheus;
pub mod render;
pub mod results;
pub mod scan;
pub mod stats;
pub mod verify;

pub use results::{AnalyzeResult, ReportData, Side, StartFrom, VerifyResult};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::source::{parse_location, Location, SourceKind};
use crate::coverage::Session;
use crate::sources::db::Database;
use crate::sources::postgres::PgReader;
use crate::sources::sqlite::SqliteReader;
use crate::time::{parse_time, parse_window, Window};
use analyze::Analyzer;
use history::{History, HistoryError, KindTotal};
use scan::ScanError;
use verify::Sample;

/// Default `analyze --gap-min`: a minute, well above any step-to-step latency and below
/// any freeze worth a page.
pub const DEFAULT_ANALYZE_GAP_MIN: Duration = Duration::from_secs(60);
/// Default gaps listed, overall and per day.
pub const DEFAULT_TOP: usize = 10;
/// Default `report` window when `--since` is not given: the last week.
pub const DEFAULT_REPORT_SPAN: Duration = Duration::from_secs(7 * 86_400);
/// Longest freezes and episodes listed in a report.
pub const REPORT_LONGEST: usize = 10;
/// Most marks per lane group on the HTML timeline (the longest are kept): more would not
/// be readable at a glance, nor small.
pub const MAX_TIMELINE_MARKS: usize = 2_000;

/// Output formats (not every command has every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
    Html,
}

/// The formats of `analyze` and `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TextFormat {
    Text,
    Json,
}

impl From<TextFormat> for Format {
    fn from(f: TextFormat) -> Format {
        match f {
            TextFormat::Text => Format::Text,
            TextFormat::Json => Format::Json,
        }
    }
}

/// A finished command: what goes to stdout, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

/// A problem the operator must fix: one sentence, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

// ---- analyze ------------------------------------------------------------------------

/// `stallwatch analyze` arguments.
#[derive(Debug, Clone)]
pub struct AnalyzeArgs {
    pub source: String,
    pub gap_min: Duration,
    pub top: usize,
    pub format: Format,
}

pub fn analyze(args: &AnalyzeArgs) -> Result<Outcome, ToolError> {
    if !matches!(args.format, Format::Text | Format::Json) {
        return Err(ToolError::Input(
            "analyze prints --format text or json".into(),
        ));
    }
    let location = parse_location(&args.source, SourceKind::Dbos)
        .map_err(|p| ToolError::Input(format!("--source {p}")))?;
    let shown = location.shown();
    let mut db = match location {
        Location::Postgres(url) => Database::Postgres(Box::new(PgReader::new(url))),
        Location::Sqlite(path) | Location::File(path) => {
            Database::Sqlite(SqliteReader::one_shot(path))
        }
    };
    let gap_min_ns = i64::try_from(args.gap_min.as_nanos())
        .map_err(|_| ToolError::Input("--gap-min is too long".into()))?;
    let started = Instant::now();
    let mut analyzer = Analyzer::new(gap_min_ns, args.top.min(analyze::MAX_TOP));
    let scan = scan::scan(&mut db, &shown, &mut analyzer)?;
    let result = AnalyzeResult {
        source: shown,
        scan,
        analyzer,
        elapsed: started.elapsed(),
    };
    let stdout = match args.format {
        Format::Json => render::analyze::analyze_json(&result),
        _ => render::analyze::analyze_text(&result),
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

// ---- report -------------------------------------------------------------------------

/// `stallwatch report` arguments.
#[derive(Debug, Clone)]
pub struct ReportArgs {
    pub data_dir: PathBuf,
    pub since: Option<String>,
    pub until: Option<String>,
    pub format: Format,
}

/// The report window: `--since` (default: a week before `--until`) to `--until` (default now).
pub fn report_window(
    since: Option<&str>,
    until: Option<&str>,
    now_ns: i64,
) -> Result<Window, ToolError> {
    let input = |flag: &str, e: String| ToolError::Input(format!("--{flag}: {e}"));
    let end_ns = match until {
        Some(t) => parse_time(t, now_ns).map_err(|e| input("until", e))?,
        None => now_ns,
    };
    let start_ns = match since {
        Some(t) => parse_time(t, now_ns).map_err(|e| input("since", e))?,
        None => end_ns - DEFAULT_REPORT_SPAN.as_nanos() as i64,
    };
    if start_ns >= end_ns {
        return Err(ToolError::Input(format!(
            "--since {} is not before --until {}; give a window that runs forwards",
            crate::time::rfc3339(start_ns),
            crate::time::rfc3339(end_ns)
        )));
    }
    Ok(Window { start_ns, end_ns })
}

pub fn report(args: &ReportArgs, now_ns: i64) -> Result<Outcome, ToolError> {
    let window = report_window(args.since.as_deref(), args.until.as_deref(), now_ns)?;
    let history = History::open(&args.data_dir)?;
    let evidence = history.evidence()?;
    let sessions = history.sessions()?;
    let data = ReportData {
        state_db: history.path().display().to_string(),
        window,
        generated_ns: now_ns,
        freezes: history.freeze_totals(window)?,
        episodes: history.episode_totals(window)?,
        longest_freezes: history.longest_freezes(window, REPORT_LONGEST, false)?,
        longest_episodes: history.longest_episodes(window, REPORT_LONGEST)?,
        timeline_freezes: history.longest_freezes(window, MAX_TIMELINE_MARKS, true)?,
        timeline_episodes: history.longest_episodes(window, MAX_TIMELINE_MARKS)?,
        stored: history.stored()?,
        evidence,
        watched: crate::coverage::watched(&sessions, window, now_ns),
        sessions,
        // An alert still firing when the sidecar stopped held until its last heartbeat,
        // as far as anyone can tell; not until this report.
        alerts: history.alert_history(
            window,
            evidence.heartbeat_ns.map_or(now_ns, |h| h.min(now_ns)),
        )?,
        folded: history.folded_totals(window)?,
        state_facts: history.state_facts()?,
    };
    let stdout = match args.format {
        Format::Text => render::report::report_text(&data),
        Format::Json => render::report::report_json(&data),
        Format::Markdown => render::report::report_markdown(&data),
        Format::Html => html::report_html(&data),
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

// ---- verify -------------------------------------------------------------------------

/// `stallwatch verify` arguments: `before` and `after`, or `migrated_at`.
#[derive(Debug, Clone)]
pub struct VerifyArgs {
    pub data_dir: PathBuf,
    pub before: Option<String>,
    pub after: Option<String>,
    pub migrated_at: Option<String>,
    pub format: Format,
}

/// The two windows: `--before A..B --after C..D`, or `--migrated-at T` (everything
/// before T; T to now).
pub fn verify_windows(
    before: Option<&str>,
    after: Option<&str>,
    migrated_at: Option<&str>,
    now_ns: i64,
) -> Result<(Window, Window), ToolError> {
    let (b, a) = match (before, after, migrated_at) {
        (Some(b), Some(a), None) => (
            parse_window(b, now_ns).map_err(|e| ToolError::Input(format!("--before: {e}")))?,
            parse_window(a, now_ns).map_err(|e| ToolError::Input(format!("--after: {e}")))?,
        ),
        (None, None, Some(t)) => {
            let t = parse_time(t, now_ns)
                .map_err(|e| ToolError::Input(format!("--migrated-at: {e}")))?;
            if t >= now_ns {
                return Err(ToolError::Input(format!(
                    "--migrated-at {} is not in the past; there is no after window yet",
                    crate::time::rfc3339(t)
                )));
            }
            (
                Window {
                    start_ns: i64::MIN,
                    end_ns: t,
                },
                Window {
                    start_ns: t,
                    end_ns: now_ns,
                },
            )
        }
        _ => {
            return Err(ToolError::Input(
                "give --before A..B and --after C..D, or --migrated-at T".into(),
            ))
        }
    };
    if b.overlaps(&a) {
        return Err(ToolError::Input(format!(
            "--before and --after overlap ({} .. {} and {} .. {}); the windows must not share time",
            crate::time::rfc3339(b.start_ns),
            crate::time::rfc3339(b.end_ns),
            crate::time::rfc3339(a.start_ns),
            crate::time::rfc3339(a.end_ns)
        )));
    }
    Ok((b, a))
}

fn side(
    history: &History,
    window: Window,
    sessions: &[Session],
    now_ns: i64,
) -> Result<Side, ToolError> {
    let totals = history.freeze_totals(window)?;
    let clock_steps = totals
        .iter()
        .filter(|k| !k.is_lost_time())
        .map(|k| k.count)
        .sum();
    let by_kind: Vec<KindTotal> = totals.into_iter().filter(|k| k.is_lost_time()).collect();
    let (gaps, gap_p99_ns) = history.gap_quantile(window, 0.99)?;
    Ok(Side {
        window,
        watched: crate::coverage::watched(sessions, window, now_ns),
        freezes: by_kind.iter().map(|k| k.count).sum(),
        frozen_ns: by_kind.iter().map(|k| k.total_ns).sum(),
        by_kind,
        clock_steps,
        gaps,
        gap_p99_ns,
        start_from: None,
    })
}

pub fn verify(args: &VerifyArgs, now_ns: i64) -> Result<Outcome, ToolError> {
    if !matches!(args.format, Format::Text | Format::Json) {
        return Err(ToolError::Input(
            "verify prints --format text or json".into(),
        ));
    }
    let (before_w, after_w) = verify_windows(
        args.before.as_deref(),
        args.after.as_deref(),
        args.migrated_at.as_deref(),
        now_ns,
    )?;
    let history = History::open(&args.data_dir)?;
    let evidence = history.evidence()?;
    let sessions = history.sessions()?;
    let mut before = side(&history, before_w, &sessions, now_ns)?;
    // "Everything up to T" starts with the first watch session.
    if before_w.start_ns == i64::MIN {
        let first = sessions.iter().map(|s| s.started_ns).min();
        let (start, from) = match first {
            Some(first) if first < before_w.end_ns => (first, StartFrom::FirstSession),
            _ => (before_w.end_ns, StartFrom::Nothing),
        };
        before = side(
            &history,
            Window {
                start_ns: start,
                end_ns: before_w.end_ns,
            },
            &sessions,
            now_ns,
        )?;
        before.start_from = Some(from);
    }
    let after = side(&history, after_w, &sessions, now_ns)?;
    let decision = verify::decide(
        Sample {
            freezes: before.counted(),
            covered_ns: before.watched.covered_ns,
        },
        Sample {
            freezes: after.counted(),
            covered_ns: after.watched.covered_ns,
        },
    );
    let result = VerifyResult {
        state_db: history.path().display().to_string(),
        now_ns,
        before,
        after,
        sessions,
        evidence,
        decision,
    };
    let stdout = match args.format {
        Format::Json => render::verify::verify_json(&result),
        _ => render::verify::verify_text(&result),
    };
    Ok(Outcome {
        stdout,
        exit_code: decision.verdict.exit_code(),
    })
}
