//! `stallwatch verify` as text and JSON: the verdict, each window's evidence, the
//! statistical rule applied with its numbers, what is counted and how much was watched.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{plural, runs_text, secs, sessions_json, watched_text, window_json, window_text};
use crate::report::results::{Side, StartFrom, VerifyResult};
use crate::report::verify::Reason;
use crate::time::human;

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
