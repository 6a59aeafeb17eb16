//! Text, Markdown and JSON for the one-shot commands, one file per command:
//! [`analyze`], [`report`] and [`verify`] (HTML: [`super::html`]). Pure: results in, a
//! string out. Times print as RFC 3339 UTC, durations both human (`1h 47m 13s`) and, in
//! JSON, as seconds.
//!
//! Owns what more than one command prints the same way: seconds, plurals, aligned text
//! columns, Markdown tables, windows, watched time and the runs behind it. Does not own
//! any command's layout (its own file does), nor the HTML page.

pub mod analyze;
pub mod report;
pub mod verify;

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::coverage::{Session, Watched, ENDED_RUNNING};
use crate::time::{human, rfc3339, rfc3339_millis, Window};

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// Left-aligned columns, two spaces apart, each as wide as its widest cell.
pub(super) fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::from(indent);
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A header row and `rows` below it, as [`columns`].
fn text_table(
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<String>>,
    indent: &str,
) -> String {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    all.extend(rows);
    columns(&all, indent)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn md_table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        let cells: Vec<String> = r.iter().map(|c| md_escape(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

fn window_text(w: &Window) -> String {
    format!(
        "{} .. {} ({})",
        rfc3339(w.start_ns),
        rfc3339(w.end_ns),
        human(w.len_ns())
    )
}

fn window_json(w: &Window) -> Value {
    json!({"start": rfc3339(w.start_ns), "end": rfc3339(w.end_ns), "seconds": secs(w.len_ns())})
}

/// Most sessions listed in JSON (the latest in the window); the counts cover them all.
pub const MAX_LISTED_SESSIONS: usize = 100;

/// `watched 3d 4h of 7d (46 %)`, and how much of it is an estimate. `span_ns` is the
/// window's length up to now.
pub fn watched_text(w: &Watched, span_ns: i64) -> String {
    let pct = if span_ns > 0 {
        100.0 * w.covered_ns as f64 / span_ns as f64
    } else {
        0.0
    };
    let pct = if pct == 0.0 || pct >= 10.0 {
        format!("{pct:.0}")
    } else {
        format!("{pct:.1}")
    };
    let mut text = format!(
        "watched {} of {} ({pct} %)",
        human(w.covered_ns),
        human(span_ns)
    );
    if w.estimated_ns > 0 {
        let _ = write!(
            text,
            ", of which {} is estimated from a state DB written before watch sessions were recorded (a planned stop then cannot be seen, so that part is at most)",
            human(w.estimated_ns)
        );
    }
    text
}

/// How the runs in a window ended: `3 runs (1 stopped, 1 restart, 1 running)`.
fn runs_text(sessions: &[Session]) -> String {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for s in sessions {
        match counts.iter_mut().find(|(k, _)| *k == s.ended) {
            Some((_, n)) => *n += 1,
            None => counts.push((&s.ended, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let mut text = plural(sessions.len() as u64, "run", "runs");
    if !parts.is_empty() {
        let _ = write!(text, " ({})", parts.join(", "));
    }
    if let Some(last) = sessions.last().filter(|s| s.ended == ENDED_RUNNING) {
        let _ = write!(text, "; last heartbeat {}", rfc3339(last.last_seen_ns));
    }
    text
}

fn sessions_json(sessions: &[Session]) -> Value {
    let skip = sessions.len().saturating_sub(MAX_LISTED_SESSIONS);
    json!({
        "count": sessions.len(),
        "listed": sessions[skip..].iter().map(|s| json!({
            "started": rfc3339_millis(s.started_ns),
            "last_heartbeat": rfc3339_millis(s.last_seen_ns),
            "seconds": secs(s.span().len_ns()),
            "ended": s.ended,
            "estimated": s.estimated,
        })).collect::<Vec<_>>(),
    })
}
