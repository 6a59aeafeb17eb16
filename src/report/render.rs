//! Text, Markdown and JSON for `analyze`, `report` and `verify` (HTML: [`super::html`]).
//! Pure: results in, a string out. Times print as RFC 3339 UTC, durations both human
//! (`1h 47m 13s`) and, in JSON, as seconds.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::analyze::{Day, GapStats};
use super::history::{AlertHistory, EpisodeRow, FreezeRow, KindTotal};
use super::results::{AnalyzeResult, ReportData, Side, StartFrom, VerifyResult};
use super::verify::Reason;
use crate::coverage::{Session, Watched, ENDED_RUNNING};
use crate::signals::steps::{Gap, GapKind, MAX_TRACKED_WORKFLOWS};
use crate::time::{day_label, human, rfc3339, rfc3339_millis, Window};

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn gap_kind(kind: GapKind) -> &'static str {
    match kind {
        GapKind::Step => "step_gap",
        GapKind::WaitOverrun => "wait_overrun",
    }
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

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

// ---- analyze ------------------------------------------------------------------------

fn gap_cells(rank: Option<usize>, g: &Gap) -> Vec<String> {
    let mut cells = Vec::new();
    if let Some(rank) = rank {
        cells.push(format!("{rank}."));
    }
    cells.extend([
        human(g.duration_ns()),
        format!("{:.3} s", secs(g.duration_ns())),
        gap_kind(g.kind).replace('_', " "),
        rfc3339(g.start_ns),
        format!(
            "{} ({})",
            g.workflow_id,
            if g.workflow_name.is_empty() {
                "?"
            } else {
                &g.workflow_name
            }
        ),
        match g.kind {
            GapKind::Step => format!("{} → {}", g.from_step, g.to_step),
            GapKind::WaitOverrun => format!("{} past its deadline", g.to_step),
        },
    ]);
    cells
}

fn stats_line(name: &str, s: &GapStats) -> String {
    if s.count == 0 {
        return format!("{name} 0");
    }
    let q = s.quantiles(&[0.5, 0.99]);
    let show = |v: Option<i64>| v.map_or("-".into(), human);
    format!(
        "{name} {}: longest {}, p50 {}, p99 {}{}",
        s.count,
        human(s.longest_ns),
        show(q[0]),
        show(q[1]),
        if s.sampled() {
            " (quantiles from a sample)"
        } else {
            ""
        }
    )
}

pub fn analyze_text(r: &AnalyzeResult) -> String {
    let a = &r.analyzer;
    let n = &a.analysis;
    let mut out = String::new();
    let mode = r
        .scan
        .journal_mode
        .as_ref()
        .map_or(String::new(), |m| format!(", journal_mode {m}"));
    let _ = writeln!(
        out,
        "stallwatch analyze: {} ({}{mode})",
        r.source, r.scan.backend
    );
    if let Some(note) = &r.scan.opened {
        let _ = writeln!(out, "  {note}");
    }
    let span = match (a.first_ns, a.last_ns) {
        (Some(f), Some(l)) => format!(", {} .. {}", rfc3339(f), rfc3339(l)),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "  read {} in {} ({:.2} s){span}",
        plural(a.rows, "step row", "step rows"),
        plural(r.scan.batches, "batch", "batches"),
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  at least {}: {}, {} (intended waits DBOS.recv / DBOS.sleep are not gaps)",
        human(n.gap_min_ns),
        plural(n.step_gaps, "step gap", "step gaps"),
        plural(n.wait_overruns, "wait overrun", "wait overruns"),
    );
    if r.scan.rows_without_completion > 0 {
        let _ = writeln!(
            out,
            "  note: {} had no completion time and were skipped",
            plural(r.scan.rows_without_completion, "row", "rows")
        );
    }
    if !r.scan.has_workflow_status {
        let _ = writeln!(
            out,
            "  note: no workflow_status table, so workflows have no names"
        );
    }
    if a.evicted > 0 {
        let _ = writeln!(
            out,
            "  warning: more than {MAX_TRACKED_WORKFLOWS} workflows were in flight at once: {} forgotten early, a gap of theirs may be missing",
            plural(a.evicted, "workflow was", "workflows were")
        );
    }
    if n.longest.items().is_empty() {
        let _ = writeln!(
            out,
            "\nno step gap or wait overrun of at least {} in {}.",
            human(n.gap_min_ns),
            plural(a.rows, "row", "rows")
        );
        return out;
    }
    let _ = writeln!(out, "\nLongest first:");
    let mut rows = vec![[
        "#",
        "duration",
        "seconds",
        "kind",
        "started (UTC)",
        "workflow",
        "steps",
    ]
    .map(String::from)
    .to_vec()];
    rows.extend(
        n.longest
            .items()
            .iter()
            .enumerate()
            .map(|(i, g)| gap_cells(Some(i + 1), g)),
    );
    out.push_str(&columns(&rows, "  "));
    let _ = writeln!(out, "\nPer day (UTC), longest first:");
    for day in n.days.values() {
        let _ = writeln!(
            out,
            "  {}  {}; {}",
            day_label(day.day),
            stats_line("step gaps", &day.step),
            stats_line("wait overruns", &day.overrun)
        );
        let rows: Vec<Vec<String>> = day
            .longest
            .items()
            .iter()
            .map(|g| gap_cells(None, g))
            .collect();
        out.push_str(&columns(&rows, "      "));
    }
    out
}

fn gap_json(g: &Gap) -> Value {
    json!({
        "kind": gap_kind(g.kind),
        "workflow_id": g.workflow_id,
        "workflow_name": g.workflow_name,
        "from_step": g.from_step,
        "to_step": g.to_step,
        "started_at": rfc3339_millis(g.start_ns),
        "ended_at": rfc3339_millis(g.end_ns),
        "duration_seconds": secs(g.duration_ns()),
    })
}

fn stats_json(s: &GapStats) -> Value {
    let q = s.quantiles(&[0.5, 0.99]);
    json!({
        "count": s.count,
        "total_seconds": secs(s.total_ns),
        "longest_seconds": (s.count > 0).then(|| secs(s.longest_ns)),
        "p50_seconds": q[0].map(secs),
        "p99_seconds": q[1].map(secs),
        "sampled": s.sampled(),
    })
}

fn day_json(d: &Day) -> Value {
    json!({
        "day": day_label(d.day),
        "step_gaps": stats_json(&d.step),
        "wait_overruns": stats_json(&d.overrun),
        "longest": d.longest.items().iter().map(gap_json).collect::<Vec<_>>(),
    })
}

pub fn analyze_json(r: &AnalyzeResult) -> String {
    let a = &r.analyzer;
    let n = &a.analysis;
    let v = json!({
        "source": r.source,
        "backend": r.scan.backend,
        "journal_mode": r.scan.journal_mode,
        "opened": r.scan.opened,
        "gap_min_seconds": secs(n.gap_min_ns),
        "rows": a.rows,
        "batches": r.scan.batches,
        "rows_without_completion": r.scan.rows_without_completion,
        "first_row_at": a.first_ns.map(rfc3339_millis),
        "last_row_at": a.last_ns.map(rfc3339_millis),
        "elapsed_seconds": r.elapsed.as_secs_f64(),
        "workflows_evicted": a.evicted,
        "step_gaps": n.step_gaps,
        "wait_overruns": n.wait_overruns,
        "longest": n.longest.items().iter().map(gap_json).collect::<Vec<_>>(),
        "days": n.days.values().map(day_json).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&v).expect("JSON values serialise") + "\n"
}

// ---- report -------------------------------------------------------------------------

fn window_text(w: &Window) -> String {
    format!(
        "{} .. {} ({})",
        rfc3339(w.start_ns),
        rfc3339(w.end_ns),
        human(w.len_ns())
    )
}

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

/// One row of the freezes-by-kind table, shared by the text, Markdown and HTML forms.
pub(super) fn kind_cells(k: &KindTotal) -> Vec<String> {
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

fn freeze_cells(f: &FreezeRow) -> Vec<String> {
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

/// The sessions that overlap `w` (up to now), oldest first.
fn sessions_in(sessions: &[Session], w: &Window, now_ns: i64) -> Vec<Session> {
    let w = w.clip(i64::MIN, now_ns);
    sessions
        .iter()
        .filter(|s| s.span().clip(w.start_ns, w.end_ns).len_ns() > 0 || w.contains(s.started_ns))
        .cloned()
        .collect()
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
    let _ = writeln!(
        out,
        "\nFreezes: {}, {} frozen",
        d.freeze_count(),
        human(d.frozen_ns())
    );
    if !d.freezes.is_empty() {
        let mut rows = vec![["kind", "count", "total", "longest"]
            .map(String::from)
            .to_vec()];
        rows.extend(d.freezes.iter().map(kind_cells));
        out.push_str(&columns(&rows, "  "));
    }
    let _ = writeln!(out, "\nEpisodes: {}", d.episode_count());
    let mut rows = vec![["kind", "cause", "count", "total", "longest"]
        .map(String::from)
        .to_vec()];
    if d.episodes.is_empty() {
        rows.clear();
    }
    rows.extend(d.episodes.iter().map(|e| {
        vec![
            e.kind.clone(),
            e.cause.clone(),
            e.count.to_string(),
            human(e.total_ns),
            human(e.longest_ns),
        ]
    }));
    out.push_str(&columns(&rows, "  "));
    for line in folded_lines(d) {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str(&alerts_text(d));
    if !d.longest_freezes.is_empty() {
        let _ = writeln!(out, "\nLongest freezes:");
        let mut rows = vec![["duration", "kind", "started (UTC)", "id", "seen by"]
            .map(String::from)
            .to_vec()];
        rows.extend(d.longest_freezes.iter().map(freeze_cells));
        out.push_str(&columns(&rows, "  "));
    }
    if !d.longest_episodes.is_empty() {
        let _ = writeln!(out, "\nLongest episodes:");
        let mut rows = vec![[
            "duration",
            "kind",
            "cause",
            "started (UTC)",
            "source",
            "workflow",
            "steps",
        ]
        .map(String::from)
        .to_vec()];
        rows.extend(d.longest_episodes.iter().map(episode_cells));
        out.push_str(&columns(&rows, "  "));
    }
    out
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
        let mut rows = vec![["rule", "count", "still firing", "longest"]
            .map(String::from)
            .to_vec()];
        rows.extend(alert_rows(a));
        out.push_str(&columns(&rows, "  "));
    }
    if !a.notifications.is_empty() {
        let _ = writeln!(out, "\nNotifications:");
        let mut rows = vec![["channel", "sent", "failed", "dropped", "pending"]
            .map(String::from)
            .to_vec()];
        rows.extend(notification_rows(a));
        out.push_str(&columns(&rows, "  "));
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
        out.push_str(&md_table(
            &["rule", "count", "still firing", "longest"],
            alert_rows(a),
        ));
    }
    if !a.notifications.is_empty() {
        out.push_str("\n### Notifications\n\n");
        out.push_str(&md_table(
            &["channel", "sent", "failed", "dropped", "pending"],
            notification_rows(a),
        ));
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
        "\n## Freezes: {}, {} frozen\n\n{}",
        d.freeze_count(),
        human(d.frozen_ns()),
        md_table(
            &["kind", "count", "total", "longest"],
            d.freezes.iter().map(kind_cells)
        )
    );
    let _ = writeln!(
        out,
        "## Episodes: {}\n\n{}",
        d.episode_count(),
        md_table(
            &["kind", "cause", "count", "total", "longest"],
            d.episodes.iter().map(|e| {
                vec![
                    e.kind.clone(),
                    e.cause.clone(),
                    e.count.to_string(),
                    human(e.total_ns),
                    human(e.longest_ns),
                ]
            })
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
            md_table(
                &["duration", "kind", "started (UTC)", "id", "seen by"],
                d.longest_freezes.iter().map(freeze_cells)
            )
        );
    }
    if !d.longest_episodes.is_empty() {
        let _ = writeln!(
            out,
            "## Longest episodes\n\n{}",
            md_table(
                &[
                    "duration",
                    "kind",
                    "cause",
                    "started (UTC)",
                    "source",
                    "workflow",
                    "steps"
                ],
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

fn window_json(w: &Window) -> Value {
    json!({"start": rfc3339(w.start_ns), "end": rfc3339(w.end_ns), "seconds": secs(w.len_ns())})
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

// ---- verify -------------------------------------------------------------------------

fn side_line(name: &str, s: &Side, now_ns: i64) -> String {
    let kinds: Vec<String> = s
        .by_kind
        .iter()
        .map(|k| format!("{} {}", k.count, k.kind))
        .collect();
    let kinds = if kinds.is_empty() {
        String::new()
    } else {
        format!(" ({})", kinds.join(", "))
    };
    let per_day = s
        .frozen_seconds_per_day()
        .map_or("-".into(), |v| format!("{v:.1} s/day"));
    let p99 = s.gap_p99_ns.map_or("-".into(), human);
    let span = s.window.clip(i64::MIN, now_ns).len_ns();
    let mut line = format!(
        "  {name:<6} {}\n         {}; {}{kinds}; frozen {} = {per_day}; gap p99 {p99} ({})",
        window_text(&s.window),
        watched_text(&s.watched, span),
        plural(s.freezes, "freeze", "freezes"),
        human(s.frozen_ns),
        plural(s.gaps, "gap", "gaps"),
    );
    if s.clock_steps > 0 {
        let _ = write!(
            line,
            "; {} not counted",
            plural(s.clock_steps, "wall-clock step", "wall-clock steps")
        );
    }
    match s.start_from {
        Some(StartFrom::FirstSession) => {
            line.push_str("\n         (starts with the sidecar's first watch session)")
        }
        Some(StartFrom::Nothing) => {
            line.push_str("\n         (the sidecar watched nothing before the migration)")
        }
        None => {}
    }
    line
}

/// The statistical note: the rule applied, with its numbers.
pub fn verify_note(r: &VerifyResult) -> String {
    let d = &r.decision;
    let rate = d
        .before_per_day
        .map_or("-".into(), |v| format!("{v:.3}/day"));
    let t = human(r.after.watched.covered_ns);
    let needed = d.needed_after_ns.map(human).unwrap_or_default();
    let p = d.p_value.map_or("-".into(), |p| format!("{p:.3}"));
    let mu = d.expected_after.map_or("-".into(), |m| format!("{m:.2}"));
    match d.reason {
        Reason::BeforeNotCovered => "the sidecar watched none of the before window: there is no rate to compare with".into(),
        Reason::AfterNotCovered => format!(
            "the sidecar watched none of the after window (it was not running, or the window is in the future); at the before rate λ = {rate} a quiet after-window must cover at least {needed}"
        ),
        Reason::NoFreezesEither => "no freeze in either window: with no freezes before there is nothing to show fixed".into(),
        Reason::FreezesOnlyAfter => format!(
            "no freeze before but {} after: the after window is worse",
            r.after.counted()
        ),
        Reason::QuietLongEnough => format!(
            "freezes as a Poisson process at the before rate λ = {rate}: over the after window's {t}, P(0 freezes | λt = {mu}) = {p} ≤ 0.05"
        ),
        Reason::QuietTooShort => format!(
            "freezes as a Poisson process at the before rate λ = {rate}: over the after window's {t}, P(0 freezes | λt = {mu}) = {p} > 0.05 — a quiet after-window must cover at least ln(20)/λ = {needed} ({} more)",
            human((d.needed_after_ns.unwrap_or(0) - r.after.watched.covered_ns).max(0))
        ),
        Reason::RateClearlyLower => format!(
            "freezes as a Poisson process at the before rate λ = {rate}: {} after where λt = {mu} were expected; P(X ≤ {} | {mu}) = {p} < 0.05, so the rate is clearly lower — but {} remain",
            r.after.counted(),
            r.after.counted(),
            plural(r.after.counted(), "freeze", "freezes")
        ),
        Reason::RateNotClearlyLower => format!(
            "freezes as a Poisson process at the before rate λ = {rate}: {} after where λt = {mu} were expected; P(X ≤ {} | {mu}) = {p} ≥ 0.05, so the rate is not clearly lower",
            r.after.counted(),
            r.after.counted()
        ),
    }
}

const COUNTED: &str = "counted: freezes of the lost-time kinds (process_stall, vm_pause, suspend, restart, reboot) that started in the window; wall_clock_step is not lost time; planned stops (a clean shutdown and start) are not freeze events and are not counted";

fn coverage_note(r: &VerifyResult) -> String {
    let mut text = "coverage: freezes are only seen while the sidecar runs; each window counts the time its watch sessions cover".to_string();
    let estimated = r.before.watched.estimated_ns + r.after.watched.estimated_ns;
    if estimated > 0 {
        let _ = write!(
            text,
            "; {} of it is estimated from a state DB written before sessions were recorded, where a planned stop cannot be seen",
            human(estimated)
        );
    }
    let _ = write!(text, "; all runs: {}", runs_text(&r.sessions));
    text
}

pub fn verify_text(r: &VerifyResult) -> String {
    let mut out = format!("verdict: {}\n", r.decision.verdict.as_str());
    let _ = writeln!(out, "{}", side_line("before", &r.before, r.now_ns));
    let _ = writeln!(out, "{}", side_line("after", &r.after, r.now_ns));
    let _ = writeln!(out, "statistics: {}", verify_note(r));
    let _ = writeln!(out, "{COUNTED}");
    let _ = writeln!(out, "{}", coverage_note(r));
    let _ = writeln!(out, "state DB: {}", r.state_db);
    out
}

fn side_json(s: &Side) -> Value {
    json!({
        "window": window_json(&s.window),
        "covered_seconds": secs(s.watched.covered_ns),
        "estimated_seconds": secs(s.watched.estimated_ns),
        "sessions": s.watched.sessions,
        "freezes": s.freezes,
        "freezes_counted": s.counted(),
        "by_kind": s.by_kind.iter().map(|k| json!({"kind": k.kind, "count": k.count, "total_seconds": secs(k.total_ns)})).collect::<Vec<_>>(),
        "frozen_seconds": secs(s.frozen_ns),
        "frozen_seconds_per_day": s.frozen_seconds_per_day(),
        "wall_clock_steps_not_counted": s.clock_steps,
        "gaps": s.gaps,
        "gap_p99_seconds": s.gap_p99_ns.map(secs),
    })
}

pub fn verify_json(r: &VerifyResult) -> String {
    let d = &r.decision;
    let v = json!({
        "verdict": d.verdict.as_str(),
        "exit_code": d.verdict.exit_code(),
        "reason": d.reason,
        "before": side_json(&r.before),
        "after": side_json(&r.after),
        "before_rate_per_day": d.before_per_day,
        "after_rate_per_day": d.after_per_day,
        "expected_after": d.expected_after,
        "p_value": d.p_value,
        "needed_after_seconds": d.needed_after_ns.map(secs),
        "statistics": verify_note(r),
        "counted": COUNTED,
        "coverage": {
            "note": coverage_note(r),
            "sessions": sessions_json(&r.sessions),
        },
        "state_db": r.state_db,
    });
    serde_json::to_string_pretty(&v).expect("JSON values serialise") + "\n"
}
