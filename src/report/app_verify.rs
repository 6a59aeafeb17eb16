//! `verify --source` and `report --source`: the app's own history as evidence, beside
//! (or without) the sidecar's state DB. Reads through [`super::app_scan`], counts with
//! [`super::app_history`], decides with [`super::verify`] (one Poisson test per kind of
//! evidence, [`verify::combine`]); the text and JSON are built here too (pure, at the end).
//!
//! The state DB is used only when `--data-dir` is given: then the sidecar's own freezes
//! are a second kind of evidence, and the app's gaps are explained against its freezes
//! and watch sessions. Without it every gap is one "the app did not explain", and the
//! output says that is what the verdict rests on.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::app_history::{AppHistory, AppWindow, Explainer};
use super::app_scan::{self, ReadInfo};
use super::history::History;
use super::verify::{self, combine, decide, Decision, EvidenceKind, Sample, Verdict};
use super::{report_window, verify_windows, Format, Outcome, ToolError};
use crate::coverage::{self, Session};
use crate::freeze::FreezeKind;
use crate::signals::attribution::{starved, FreezeSpan};
use crate::signals::steps::GapKind;
use crate::time::{human, rfc3339, rfc3339_millis, Window};

/// How the output defines the app history's coverage (see `app_history.rs`).
pub const COVERAGE_DEFINITION: &str = "coverage of the app's history: the part of each window between its first record and its last (a step's start or end, a queue row's created or claimed time, a log line's time); a gap can only show where the app wrote history, and a stretch inside that span when it wrote nothing still counts, so this is an upper bound";

/// `verify --source` / `report --source` arguments.
#[derive(Debug, Clone)]
pub struct SourceArgs {
    /// A URL or path, or with `config` the name of one of its `[[source]]`s.
    pub source: String,
    pub config: Option<PathBuf>,
    pub gap_min: Duration,
    /// The sidecar's state directory, when the operator gave one.
    pub data_dir: Option<PathBuf>,
    /// `verify`: `--before`/`--after` or `--migrated-at`; `report`: `--since`/`--until`.
    pub before: Option<String>,
    pub after: Option<String>,
    pub migrated_at: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub format: Format,
}

/// One kind of evidence and its test.
#[derive(Debug, Clone)]
pub struct Judged {
    pub kind: EvidenceKind,
    pub before: Sample,
    pub after: Sample,
    pub decision: Decision,
}

/// What `verify --source` found.
#[derive(Debug, Clone)]
pub struct SourceVerify {
    pub now_ns: i64,
    pub info: ReadInfo,
    pub app: AppHistory,
    pub judged: Vec<Judged>,
    pub verdict: Verdict,
    pub decided_by: Option<EvidenceKind>,
    pub state_db: Option<String>,
    pub elapsed: Duration,
}

fn gap_min_ns(d: Duration) -> Result<i64, ToolError> {
    i64::try_from(d.as_nanos()).map_err(|_| ToolError::Input("--gap-min is too long".into()))
}

/// The state DB's freezes (lost-time kinds, at most `MAX_EVENTS`) and sessions.
fn explainer(history: &History, now_ns: i64) -> Result<(Explainer, Vec<Session>), ToolError> {
    let all = Window {
        start_ns: i64::MIN,
        end_ns: i64::MAX,
    };
    let rows = history.longest_freezes(all, crate::state::MAX_EVENTS as usize, false)?;
    let freezes = rows
        .into_iter()
        .filter_map(|r| {
            let kind = FreezeKind::parse(&r.kind)?;
            let event = crate::freeze::FreezeEvent {
                kind,
                started_at_ns: r.started_at_ns,
                duration_ns: r.duration_ns,
                channels: r.channels,
            };
            Some(FreezeSpan {
                id: r.id,
                kind,
                start_ns: r.started_at_ns,
                duration_ns: r.duration_ns,
                starved: starved(&event),
            })
        })
        .collect();
    let sessions = history.sessions()?;
    Ok((Explainer::new(freezes, sessions.clone(), now_ns), sessions))
}

fn read(
    args: &SourceArgs,
    windows: &[Window],
    explainer: Option<&Explainer>,
    now_ns: i64,
) -> Result<(ReadInfo, AppHistory, Duration), ToolError> {
    let (location, kind) =
        app_scan::resolve(&args.source, args.config.as_deref()).map_err(ToolError::Input)?;
    let started = Instant::now();
    let mut app = AppHistory::new(gap_min_ns(args.gap_min)?, windows, explainer.is_some());
    let info =
        app_scan::read(&location, kind, &mut app, explainer, now_ns).map_err(ToolError::Input)?;
    Ok((info, app, started.elapsed()))
}

fn app_sample(w: &AppWindow, now_ns: i64) -> Sample {
    Sample {
        freezes: w.counted(),
        covered_ns: w.covered_ns(now_ns),
    }
}

pub fn verify(args: &SourceArgs, now_ns: i64) -> Result<Outcome, ToolError> {
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
    let state = match &args.data_dir {
        Some(dir) => {
            let history = History::open(dir)?;
            let (explainer, sessions) = explainer(&history, now_ns)?;
            Some((history, explainer, sessions))
        }
        None => None,
    };
    let (info, app, elapsed) = read(
        args,
        &[before_w, after_w],
        state.as_ref().map(|s| &s.1),
        now_ns,
    )?;
    let mut judged = Vec::new();
    if let Some((_, _, sessions)) = &state {
        // As `verify` without --source: "everything before T" starts with the first session.
        let first = sessions.iter().map(|s| s.started_ns).min();
        let before_start = match first {
            Some(f) if before_w.start_ns == i64::MIN => f.min(before_w.end_ns),
            _ => before_w.start_ns,
        };
        let b = Window {
            start_ns: before_start,
            end_ns: before_w.end_ns,
        };
        let history = &state.as_ref().expect("matched").0;
        let count = |w: Window| -> Result<Sample, ToolError> {
            let freezes = history
                .freeze_totals(w)?
                .iter()
                .filter(|k| k.is_lost_time())
                .map(|k| k.count)
                .sum();
            Ok(Sample {
                freezes,
                covered_ns: coverage::watched(sessions, w, now_ns).covered_ns,
            })
        };
        let (before, after) = (count(b)?, count(after_w)?);
        judged.push(Judged {
            kind: EvidenceKind::SidecarFreezes,
            before,
            after,
            decision: decide(before, after),
        });
    }
    let (before, after) = (
        app_sample(&app.windows[0], now_ns),
        app_sample(&app.windows[1], now_ns),
    );
    judged.push(Judged {
        kind: if state.is_some() {
            EvidenceKind::AppGaps
        } else {
            EvidenceKind::UnexplainedAppGaps
        },
        before,
        after,
        decision: decide(before, after),
    });
    let decisions: Vec<(EvidenceKind, Decision)> =
        judged.iter().map(|j| (j.kind, j.decision)).collect();
    let (verdict, decided_by) = combine(&decisions);
    let result = SourceVerify {
        now_ns,
        info,
        app,
        judged,
        verdict,
        decided_by,
        state_db: state.map(|s| s.0.path().display().to_string()),
        elapsed,
    };
    Ok(Outcome {
        stdout: match args.format {
            Format::Json => verify_json(&result),
            _ => verify_text(&result),
        },
        exit_code: verdict.exit_code(),
    })
}

/// `report --source`: the app history's gaps over one window, by cause.
pub fn report(args: &SourceArgs, now_ns: i64) -> Result<Outcome, ToolError> {
    if !matches!(args.format, Format::Text | Format::Json) {
        return Err(ToolError::Input(
            "report --source prints --format text or json".into(),
        ));
    }
    let window = report_window(args.since.as_deref(), args.until.as_deref(), now_ns)?;
    let state = match &args.data_dir {
        Some(dir) => {
            let history = History::open(dir)?;
            Some((
                explainer(&history, now_ns)?.0,
                history.path().display().to_string(),
            ))
        }
        None => None,
    };
    let (info, app, elapsed) = read(args, &[window], state.as_ref().map(|s| &s.0), now_ns)?;
    let w = &app.windows[0];
    let stdout = match args.format {
        Format::Json => {
            let mut v = app_json(&info, &app, now_ns, elapsed);
            v["window"] = window_json(&w.window);
            v["state_db"] = json!(state.as_ref().map(|s| &s.1));
            format!("{}\n", serde_json::to_string_pretty(&v).expect("JSON"))
        }
        _ => {
            let mut out = format!("stallwatch report --source: {}\n", source_line(&info, &app));
            out.push_str(&window_lines("window", w, &app, now_ns));
            let _ = writeln!(
                out,
                "{}",
                causes_note(&app, state.as_ref().map(|s| s.1.as_str()))
            );
            let _ = writeln!(out, "{COVERAGE_DEFINITION}");
            out
        }
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

// ---- output (pure) ------------------------------------------------------------------

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

fn window_text(w: &Window) -> String {
    let start = if w.start_ns == i64::MIN {
        "the history's start".to_string()
    } else {
        rfc3339(w.start_ns)
    };
    format!("{start} .. {}", rfc3339(w.end_ns))
}

fn window_json(w: &Window) -> Value {
    json!({
        "start": (w.start_ns != i64::MIN).then(|| rfc3339(w.start_ns)),
        "end": rfc3339(w.end_ns),
    })
}

fn source_line(info: &ReadInfo, app: &AppHistory) -> String {
    let mut line = format!("{} ({}, {}", info.shown, info.kind, info.backend);
    if let Some(t) = &info.detail {
        let _ = write!(line, ", table {t}");
    }
    if let Some(m) = &info.journal_mode {
        let _ = write!(line, ", journal_mode {m}");
    }
    line.push(')');
    let span = match (app.first_ns, app.last_ns) {
        (Some(f), Some(l)) => format!(", {} .. {}", rfc3339(f), rfc3339(l)),
        _ => ", nothing in it".into(),
    };
    let _ = write!(line, "\n  read {} records{span}", app.records);
    if app.skipped > 0 {
        let _ = write!(
            line,
            "; {} skipped (no believable time, or a line too long)",
            app.skipped
        );
    }
    if info.evicted > 0 {
        let _ = write!(
            line,
            "; {} workflows dropped by the gap tracker while in flight (their gaps are missed)",
            info.evicted
        );
    }
    if let Some(note) = &info.opened {
        let _ = write!(line, "\n  {note}");
    }
    line
}

fn window_lines(name: &str, w: &AppWindow, app: &AppHistory, now_ns: i64) -> String {
    let covered = w.covered_ns(now_ns);
    let span = w.window.clip(i64::MIN, now_ns);
    let pct = if span.start_ns != i64::MIN && span.len_ns() > 0 {
        format!(" ({:.0} %)", 100.0 * covered as f64 / span.len_ns() as f64)
    } else {
        String::new()
    };
    let mut out = format!(
        "  {name:<6} {}\n         history covers {}{pct}; {} gaps and wait overruns ≥ {} ({} step gaps, {} overruns)",
        window_text(&w.window),
        human(covered),
        w.gaps(),
        human(app.gap_min_ns),
        w.step_gaps,
        w.wait_overruns
    );
    if app.explained {
        let _ = write!(
            out,
            ": {} freeze, {} stall, {} unexplained",
            w.freeze, w.stall, w.unexplained
        );
    }
    out.push('\n');
    for g in w.longest.items() {
        let _ = writeln!(
            out,
            "         {:>10}  {}  {} {} → {}{}",
            human(g.duration_ns()),
            rfc3339(g.start_ns),
            g.workflow_id,
            g.from_step,
            g.to_step,
            if g.kind == GapKind::WaitOverrun {
                " (wait overrun)"
            } else {
                ""
            }
        );
    }
    out
}

fn causes_note(app: &AppHistory, state_db: Option<&str>) -> String {
    match state_db {
        Some(path) => format!(
            "causes, from the state DB {path}: freeze = a recorded freeze covers at least half of the gap; stall = the sidecar watched at least half of it and saw no freeze (not counted: the machine ran); unexplained = the sidecar was not running"
        ),
        None => format!(
            "no state DB (--data-dir) given: every gap of at least {} is one the app did not explain — a freeze of the machine or a stall of the app alike",
            human(app.gap_min_ns)
        ),
    }
}

fn decision_text(j: &Judged) -> String {
    let d = &j.decision;
    let p = d.p_value.map_or("-".into(), |p| format!("{p:.4}"));
    let mu = d.expected_after.map_or("-".into(), |m| format!("{m:.2}"));
    let mut s = format!(
        "{}: {} (p = {p}; {} before over {}, {} after over {}, {mu} expected after at the before rate",
        j.kind.label(),
        d.verdict.as_str(),
        j.before.freezes,
        human(j.before.covered_ns),
        j.after.freezes,
        human(j.after.covered_ns),
    );
    if let Some(n) = d
        .needed_after_ns
        .filter(|_| d.verdict == Verdict::NotEnoughData)
    {
        let _ = write!(s, "; a quiet after-window must cover {}", human(n));
    }
    s.push(')');
    s
}

fn rests_on(r: &SourceVerify) -> String {
    match r.decided_by {
        Some(k) => format!(
            "decided by {}{}",
            k.label(),
            match k {
                EvidenceKind::UnexplainedAppGaps =>
                    " (no state DB: each may be a freeze or a stall of the app)",
                EvidenceKind::AppGaps =>
                    " (a recorded freeze covers it, or the sidecar was not watching)",
                EvidenceKind::SidecarFreezes => "",
            }
        ),
        None => "no kind of evidence has enough data to decide".into(),
    }
}

pub fn verify_text(r: &SourceVerify) -> String {
    let mut out = format!("verdict: {} — {}\n", r.verdict.as_str(), rests_on(r));
    let _ = writeln!(out, "app history: {}", source_line(&r.info, &r.app));
    out.push_str(&window_lines("before", &r.app.windows[0], &r.app, r.now_ns));
    out.push_str(&window_lines("after", &r.app.windows[1], &r.app, r.now_ns));
    let _ = writeln!(out, "evidence (one Poisson test each; any NOT FIXED wins):");
    for j in &r.judged {
        let _ = writeln!(out, "  {}", decision_text(j));
    }
    let _ = writeln!(out, "{}", causes_note(&r.app, r.state_db.as_deref()));
    let _ = writeln!(out, "{COVERAGE_DEFINITION}");
    let _ = writeln!(out, "read in {:.2} s", r.elapsed.as_secs_f64());
    out
}

fn app_window_json(w: &AppWindow, now_ns: i64) -> Value {
    json!({
        "window": window_json(&w.window),
        "covered_seconds": secs(w.covered_ns(now_ns)),
        "gaps": w.gaps(),
        "counted": w.counted(),
        "step_gaps": w.step_gaps,
        "wait_overruns": w.wait_overruns,
        "freeze": w.freeze,
        "stall": w.stall,
        "unexplained": w.unexplained,
        "longest": w.longest.items().iter().map(|g| json!({
            "kind": if g.kind == GapKind::WaitOverrun { "wait_overrun" } else { "step_gap" },
            "workflow_id": g.workflow_id,
            "from_step": g.from_step,
            "to_step": g.to_step,
            "started_at": rfc3339_millis(g.start_ns),
            "duration_seconds": secs(g.duration_ns()),
        })).collect::<Vec<_>>(),
    })
}

fn app_json(info: &ReadInfo, app: &AppHistory, now_ns: i64, elapsed: Duration) -> Value {
    json!({
        "source": info.shown,
        "kind": info.kind,
        "backend": info.backend,
        "table": info.detail,
        "journal_mode": info.journal_mode,
        "opened": info.opened,
        "records": app.records,
        "skipped": app.skipped,
        "workflows_evicted": info.evicted,
        "first_record_at": app.first_ns.map(rfc3339_millis),
        "last_record_at": app.last_ns.map(rfc3339_millis),
        "gap_min_seconds": secs(app.gap_min_ns),
        "explained_by_state_db": app.explained,
        "coverage": COVERAGE_DEFINITION,
        "elapsed_seconds": elapsed.as_secs_f64(),
        "windows": app.windows.iter().map(|w| app_window_json(w, now_ns)).collect::<Vec<_>>(),
    })
}

pub fn verify_json(r: &SourceVerify) -> String {
    let evidence: Vec<Value> = r
        .judged
        .iter()
        .map(|j| {
            let d = &j.decision;
            json!({
                "kind": j.kind,
                "label": j.kind.label(),
                "verdict": d.verdict.as_str(),
                "reason": d.reason,
                "p_value": d.p_value,
                "expected_after": d.expected_after,
                "before_per_day": d.before_per_day,
                "after_per_day": d.after_per_day,
                "needed_after_seconds": d.needed_after_ns.map(secs),
                "before": {"count": j.before.freezes, "covered_seconds": secs(j.before.covered_ns)},
                "after": {"count": j.after.freezes, "covered_seconds": secs(j.after.covered_ns)},
            })
        })
        .collect();
    let v = json!({
        "verdict": r.verdict.as_str(),
        "exit_code": r.verdict.exit_code(),
        "decided_by": r.decided_by,
        "rests_on": rests_on(r),
        "evidence": evidence,
        "app_history": app_json(&r.info, &r.app, r.now_ns, r.elapsed),
        "causes": causes_note(&r.app, r.state_db.as_deref()),
        "state_db": r.state_db,
        "alpha": verify::ALPHA,
    });
    format!("{}\n", serde_json::to_string_pretty(&v).expect("JSON"))
}
