//! `stallwatch analyze` as text and JSON: what was read, then the step gaps and wait
//! overruns, longest first, overall and per UTC day.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{columns, plural, secs, text_table};
use crate::report::analyze::{Day, GapStats};
use crate::report::results::AnalyzeResult;
use crate::signals::steps::{Gap, GapKind, MAX_TRACKED_WORKFLOWS};
use crate::time::{day_label, human, rfc3339, rfc3339_millis};

fn gap_kind(kind: GapKind) -> &'static str {
    match kind {
        GapKind::Step => "step_gap",
        GapKind::WaitOverrun => "wait_overrun",
    }
}

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
    out.push_str(&text_table(
        &[
            "#",
            "duration",
            "seconds",
            "kind",
            "started (UTC)",
            "workflow",
            "steps",
        ],
        n.longest
            .items()
            .iter()
            .enumerate()
            .map(|(i, g)| gap_cells(Some(i + 1), g)),
        "  ",
    ));
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
