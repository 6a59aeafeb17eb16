//! `stallwatch report` as text, Markdown and JSON: the window and what the state DB says
//! about it (its own facts, coverage), freezes by kind, episodes by kind and cause, the
//! sidecar's alerts and notifications, the longest freezes and episodes. The HTML page
//! ([`crate::report::html`]) takes its table rows and column names from here.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{
    md_table, plural, runs_text, secs, sessions_json, text_table, watched_text, window_json,
    window_text,
};
use crate::coverage::Session;
use crate::report::history::{AlertHistory, EpisodeRow, EpisodeTotal, FreezeRow, KindTotal};
use crate::report::results::ReportData;
use crate::time::{day_label, human, rfc3339, rfc3339_millis, Window};

/// "no data in this window", with where the data are, if anywhere.
pub fn no_data_sentence(d: &ReportData) -> String {
    let s = &d.stored;
    let mut line = format!("no data in this window ({})", window_text(&d.window));
    match (s.first_ns, s.last_ns) {
        (Some(f), Some(l)) => {
            let _ = write!(
                line,
                "; the state DB holds {} and {} from {} to {}",
                plural(s.freezes, "freeze", "freezes"),
                plural(s.episodes, "episode", "episodes"),
                rfc3339(f),
                rfc3339(l)
            );
        }
        _ => line.push_str("; the state DB holds nothing yet"),
    }
    line.push('.');
    line
}

/// Column names of the freezes-by-kind table, for [`kind_cells`].
pub const KIND_COLUMNS: [&str; 4] = ["kind", "count", "total", "longest"];
/// Column names of the episodes-by-kind-and-cause table, for [`episode_total_cells`].
pub const EPISODE_TOTAL_COLUMNS: [&str; 5] = ["kind", "cause", "count", "total", "longest"];
/// Column names of the longest-freezes table, for [`freeze_cells`].
pub const FREEZE_COLUMNS: [&str; 5] = ["duration", "kind", "started (UTC)", "id", "seen by"];
/// Column names of the longest-episodes table.
pub const EPISODE_COLUMNS: [&str; 7] = [
    "duration",
    "kind",
    "cause",
    "started (UTC)",
    "source",
    "workflow",
    "steps",
];
/// Column names of the alerts-per-rule table, for [`alert_rows`].
pub const ALERT_COLUMNS: [&str; 4] = ["rule", "count", "still firing", "longest"];
/// Column names of the notifications-per-channel table, for [`notification_rows`].
pub const NOTIFICATION_COLUMNS: [&str; 5] = ["channel", "sent", "failed", "dropped", "pending"];

/// One row of the freezes-by-kind table, shared by the text, Markdown and HTML forms.
pub fn kind_cells(k: &KindTotal) -> Vec<String> {
    if k.is_lost_time() {
        vec![
            k.kind.clone(),
            k.count.to_string(),
            human(k.total_ns),
            human(k.longest_ns),
        ]
    } else {
        vec![
            format!("{} (not lost time)", k.kind),
            k.count.to_string(),
            "-".into(),
            format!("largest step {}", human(k.longest_ns)),
        ]
    }
}

/// One row of the episodes-by-kind-and-cause table, shared by the text, Markdown and
/// HTML forms.
pub fn episode_total_cells(e: &EpisodeTotal) -> Vec<String> {
    vec![
        e.kind.clone(),
        e.cause.clone(),
        e.count.to_string(),
        human(e.total_ns),
        human(e.longest_ns),
    ]
}

/// One row of the longest-freezes table, shared by the text, Markdown and HTML forms.
pub fn freeze_cells(f: &FreezeRow) -> Vec<String> {
    let channels: Vec<String> = f.channels.iter().map(|c| c.channel.clone()).collect();
    vec![
        human(f.duration_ns),
        f.kind.clone(),
        rfc3339(f.started_at_ns),
        format!("#{}", f.id),
        channels.join(", "),
    ]
}

/// The steps column: `parse → generate`; one side only when the other is not known (a
/// stall has no next step yet, `after parse`); `-` when neither is.
pub fn steps_text(from: &str, to: &str) -> String {
    match (from.is_empty(), to.is_empty()) {
        (false, false) => format!("{from} → {to}"),
        (false, true) => format!("after {from}"),
        (true, false) => format!("before {to}"),
        (true, true) => "-".into(),
    }
}

fn episode_cells(e: &EpisodeRow) -> Vec<String> {
    let cause = match e.freeze_id {
        Some(id) => format!("{} (#{id})", e.cause),
        None => e.cause.clone(),
    };
    vec![
        human(e.duration_ns),
        e.kind.clone(),
        cause,
        rfc3339(e.started_at_ns),
        e.source.clone(),
        format!("{} ({})", e.workflow_id, e.workflow_name),
        steps_text(&e.from_step, &e.to_step),
    ]
}

/// The sessions that overlap `w` (up to now), oldest first.
fn sessions_in(sessions: &[Session], w: &Window, now_ns: i64) -> Vec<Session> {
    let w = w.clip(i64::MIN, now_ns);
    sessions
        .iter()
        .filter(|s| s.span().clip(w.start_ns, w.end_ns).len_ns() > 0 || w.contains(s.started_ns))
        .cloned()
        .collect()
}

/// Coverage in one line: how much of the window the sidecar watched, in how many runs.
fn coverage_line(d: &ReportData) -> String {
    let span = d.window.clip(i64::MIN, d.generated_ns).len_ns();
    format!(
        "coverage: {}; {}",
        watched_text(&d.watched, span),
        runs_text(&sessions_in(&d.sessions, &d.window, d.generated_ns))
    )
}

pub fn report_text(d: &ReportData) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "stallwatch report: {}", d.state_db);
    let _ = writeln!(out, "  window {}", window_text(&d.window));
    for line in state_fact_lines(d) {
        let _ = writeln!(out, "  {line}");
    }
    if d.is_empty() {
        let _ = writeln!(out, "{}", no_data_sentence(d));
        return out;
    }
    let _ = writeln!(out, "  {}", coverage_line(d));
    let _ = writeln!(out, "\n{}", freezes_title(d));
    if !d.freezes.is_empty() {
        out.push_str(&text_table(
            &KIND_COLUMNS,
            d.freezes.iter().map(kind_cells),
            "  ",
        ));
    }
    let _ = writeln!(out, "\n{}", episodes_title(d));
    if !d.episodes.is_empty() {
        out.push_str(&text_table(
            &EPISODE_TOTAL_COLUMNS,
            d.episodes.iter().map(episode_total_cells),
            "  ",
        ));
    }
    for line in folded_lines(d) {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str(&alerts_text(d));
    if !d.longest_freezes.is_empty() {
        let _ = writeln!(out, "\nLongest freezes:");
        out.push_str(&text_table(
            &FREEZE_COLUMNS,
            d.longest_freezes.iter().map(freeze_cells),
            "  ",
        ));
    }
    if !d.longest_episodes.is_empty() {
        let _ = writeln!(out, "\nLongest episodes:");
        out.push_str(&text_table(
            &EPISODE_COLUMNS,
            d.longest_episodes.iter().map(episode_cells),
            "  ",
        ));
    }
    out
}

/// `Freezes: 3, 1m 12s frozen`: the heading of the freezes-by-kind table.
fn freezes_title(d: &ReportData) -> String {
    format!(
        "Freezes: {}, {} frozen",
        d.freeze_count(),
        human(d.frozen_ns())
    )
}

/// `Episodes: 7`: the heading of the episodes-by-kind-and-cause table.
fn episodes_title(d: &ReportData) -> String {
    format!("Episodes: {}", d.episode_count())
}

/// The sentence for a state DB without alert history.
pub const NO_ALERT_HISTORY: &str =
    "not stored: this state DB was written before stallwatch kept alert history";

/// Stuck jobs, dead letters and every rule's alerts, then notifications by channel.
pub fn alert_rows(a: &AlertHistory) -> Vec<Vec<String>> {
    a.rules
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.count.to_string(),
                r.firing.to_string(),
                if r.longest_ns > 0 {
                    human(r.longest_ns)
                } else {
                    "-".into()
                },
            ]
        })
        .collect()
}

/// One row per channel: sent, failed, dropped, pending.
pub fn notification_rows(a: &AlertHistory) -> Vec<Vec<String>> {
    let mut channels: Vec<&str> = a.notifications.iter().map(|n| n.channel.as_str()).collect();
    channels.dedup();
    channels
        .into_iter()
        .map(|c| {
            let of = |state: &str| {
                a.notifications
                    .iter()
                    .filter(|n| n.channel == c && n.state == state)
                    .map(|n| n.count)
                    .sum::<u64>()
                    .to_string()
            };
            vec![
                c.to_string(),
                of("sent"),
                of("failed"),
                of("dropped"),
                of("pending"),
            ]
        })
        .collect()
}

/// "2 alerts, longest 5m" for the stuck-job and dead-letter lines.
fn rule_summary(a: &AlertHistory, rule: &str) -> String {
    match a.rule(rule) {
        None => "none".into(),
        Some(r) if r.longest_ns > 0 => {
            format!("{} alert(s), longest {}", r.count, human(r.longest_ns))
        }
        Some(r) => format!("{} alert(s)", r.count),
    }
}

fn alerts_text(d: &ReportData) -> String {
    let mut out = String::new();
    let Some(a) = &d.alerts else {
        let _ = writeln!(out, "\nAlerts: {NO_ALERT_HISTORY}");
        return out;
    };
    let _ = writeln!(out, "\nStuck jobs: {}", rule_summary(a, "stuck_jobs"));
    let _ = writeln!(out, "Dead letters: {}", rule_summary(a, "dead_letters"));
    let _ = writeln!(out, "\nAlerts (the sidecar's own rules): {}", a.count());
    if !a.rules.is_empty() {
        out.push_str(&text_table(&ALERT_COLUMNS, alert_rows(a), "  "));
    }
    if !a.notifications.is_empty() {
        let _ = writeln!(out, "\nNotifications:");
        out.push_str(&text_table(
            &NOTIFICATION_COLUMNS,
            notification_rows(a),
            "  ",
        ));
    }
    out
}

fn alerts_markdown(d: &ReportData) -> String {
    let Some(a) = &d.alerts else {
        return format!("\n## Alerts\n\n{NO_ALERT_HISTORY}.\n");
    };
    let mut out = format!(
        "\n## Alerts\n\n- stuck jobs: {}\n- dead letters: {}\n- alerts of the sidecar's own rules: {}\n",
        rule_summary(a, "stuck_jobs"),
        rule_summary(a, "dead_letters"),
        a.count()
    );
    if !a.rules.is_empty() {
        out.push('\n');
        out.push_str(&md_table(&ALERT_COLUMNS, alert_rows(a)));
    }
    if !a.notifications.is_empty() {
        out.push_str("\n### Notifications\n\n");
        out.push_str(&md_table(&NOTIFICATION_COLUMNS, notification_rows(a)));
    }
    out
}

fn alerts_json(d: &ReportData) -> serde_json::Value {
    let Some(a) = &d.alerts else {
        return serde_json::Value::Null;
    };
    let summary = |rule: &str| {
        let r = a.rule(rule);
        json!({
            "alerts": r.map_or(0, |r| r.count),
            "longest_seconds": r.map_or(0.0, |r| secs(r.longest_ns)),
        })
    };
    json!({
        "count": a.count(),
        "stuck_jobs": summary("stuck_jobs"),
        "dead_letters": summary("dead_letters"),
        "by_rule": a.rules.iter().map(|r| json!({
            "rule": r.rule,
            "count": r.count,
            "firing": r.firing,
            "silenced": r.silenced,
            "longest_seconds": secs(r.longest_ns),
        })).collect::<Vec<_>>(),
        "notifications": a.notifications.iter().map(|n| json!({
            "channel": n.channel,
            "state": n.state,
            "count": n.count,
        })).collect::<Vec<_>>(),
    })
}

pub fn report_markdown(d: &ReportData) -> String {
    let mut out = format!(
        "# stallwatch report\n\n- window: {}\n- state DB: `{}`\n",
        window_text(&d.window),
        d.state_db
    );
    if d.is_empty() {
        let _ = writeln!(out, "\n{}", no_data_sentence(d));
        return out;
    }
    let _ = writeln!(out, "- {}", coverage_line(d));
    let _ = writeln!(
        out,
        "\n## {}\n\n{}",
        freezes_title(d),
        md_table(&KIND_COLUMNS, d.freezes.iter().map(kind_cells))
    );
    let _ = writeln!(
        out,
        "## {}\n\n{}",
        episodes_title(d),
        md_table(
            &EPISODE_TOTAL_COLUMNS,
            d.episodes.iter().map(episode_total_cells)
        )
    );
    for line in folded_lines(d) {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out, "{}", alerts_markdown(d).trim_start());
    if !d.longest_freezes.is_empty() {
        let _ = writeln!(
            out,
            "## Longest freezes\n\n{}",
            md_table(&FREEZE_COLUMNS, d.longest_freezes.iter().map(freeze_cells))
        );
    }
    if !d.longest_episodes.is_empty() {
        let _ = writeln!(
            out,
            "## Longest episodes\n\n{}",
            md_table(
                &EPISODE_COLUMNS,
                d.longest_episodes.iter().map(episode_cells)
            )
        );
    }
    out
}

fn freeze_json(f: &FreezeRow) -> Value {
    json!({
        "id": f.id,
        "kind": f.kind,
        "started_at": rfc3339_millis(f.started_at_ns),
        "duration_seconds": secs(f.duration_ns),
        "channels": f.channels.iter().map(|c| json!({"channel": c.channel, "estimate_seconds": secs(c.estimate_ns)})).collect::<Vec<_>>(),
    })
}

fn episode_json(e: &EpisodeRow) -> Value {
    json!({
        "id": e.id,
        "source": e.source,
        "kind": e.kind,
        "cause": e.cause,
        "freeze_id": e.freeze_id,
        "workflow_id": e.workflow_id,
        "workflow_name": e.workflow_name,
        "from_step": e.from_step,
        "to_step": e.to_step,
        "started_at": rfc3339_millis(e.started_at_ns),
        "duration_seconds": secs(e.duration_ns),
    })
}

pub fn report_json(d: &ReportData) -> String {
    let v = json!({
        "state_db": d.state_db,
        "window": window_json(&d.window),
        "no_data": d.is_empty(),
        "message": d.is_empty().then(|| no_data_sentence(d)),
        "covered_seconds": secs(d.watched.covered_ns),
        "estimated_seconds": secs(d.watched.estimated_ns),
        "coverage": coverage_line(d),
        "sessions": sessions_json(&sessions_in(&d.sessions, &d.window, d.generated_ns)),
        "last_heartbeat": d.evidence.heartbeat_ns.map(rfc3339),
        "freezes": {
            "count": d.freeze_count(),
            "frozen_seconds": secs(d.frozen_ns()),
            "by_kind": d.freezes.iter().map(|k| json!({
                "kind": k.kind,
                "lost_time": k.is_lost_time(),
                "count": k.count,
                "total_seconds": secs(k.total_ns),
                "longest_seconds": secs(k.longest_ns),
            })).collect::<Vec<_>>(),
            "longest": d.longest_freezes.iter().map(freeze_json).collect::<Vec<_>>(),
        },
        "episodes": {
            "count": d.episode_count(),
            "by_kind_and_cause": d.episodes.iter().map(|e| json!({
                "kind": e.kind,
                "cause": e.cause,
                "count": e.count,
                "total_seconds": secs(e.total_ns),
                "longest_seconds": secs(e.longest_ns),
            })).collect::<Vec<_>>(),
            "longest": d.longest_episodes.iter().map(episode_json).collect::<Vec<_>>(),
        },
        "alerts": alerts_json(d),
        "folded_episodes": d.folded.iter().map(|f| json!({
            "source": f.source,
            "count": f.count,
            "first_day": day_label(f.first_day),
            "last_day": day_label(f.last_day),
        })).collect::<Vec<_>>(),
        "state_db_facts": d.state_facts.iter().map(|f| json!({
            "kind": f.kind,
            "at": rfc3339(f.at_ns),
            "detail": f.detail,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).expect("JSON values serialise") + "\n"
}

/// A line per source whose episodes were folded: they are counted, not listed.
fn folded_lines(d: &ReportData) -> Vec<String> {
    d.folded
        .iter()
        .map(|f| {
            format!(
                "{}: {} more episodes folded (counted, not stored one by one)",
                f.source, f.count
            )
        })
        .collect()
}

/// What happened to the state DB itself: where its history starts, or a restore.
fn state_fact_lines(d: &ReportData) -> Vec<String> {
    d.state_facts
        .iter()
        .map(|f| match f.kind.as_str() {
            crate::state::FACT_RECREATED => format!(
                "history starts {}: this state DB was started fresh over a lost one",
                rfc3339(f.at_ns)
            ),
            crate::state::FACT_RESTORED => format!(
                "state DB deleted while running and restored {} from the open copy",
                rfc3339(f.at_ns)
            ),
            crate::state::FACT_APP_EXIT => format!(
                "app run by `stallwatch run --` {} {}; the sidecar stopped with it (an app restart, not a freeze)",
                f.detail,
                rfc3339(f.at_ns)
            ),
            other => format!("state DB {other} {}: {}", rfc3339(f.at_ns), f.detail),
        })
        .collect()
}
