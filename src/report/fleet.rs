//! `verify --prometheus` and `report --prometheus`: a fleet's freeze history read back
//! from Prometheus (or Thanos/Mimir behind the same API) instead of one state DB.
//!
//! **What is read**, per `(job, instance)` and window `[S, E)`, as instant queries at `E`
//! (the operator's `--selector` matchers added to every selector):
//! - freezes: `increase(stallwatch_freezes_total{kind!="wall_clock_step"}[E-S])`, summed
//!   over kinds and rounded to a whole count (over a window of days Prometheus's edge
//!   extrapolation is a tiny fraction of one freeze; a series' very first sample is not an
//!   increase, as everywhere in Prometheus);
//! - frozen time: the same `increase()` of `stallwatch_frozen_seconds_total`;
//! - coverage: the minutes in which Prometheus scraped the instance successfully at least
//!   once, `count_over_time((max_over_time(up[1m]) == 1)[E-S:1m])` × 1 min. A minute with
//!   no successful scrape (target down, Prometheus down, no sample at all) is not watched.
//!   This needs a scrape interval of at most a minute; it is exact to the minute.
//! - which targets are stallwatch sidecars: those with a `stallwatch_freezes_total` sample
//!   in the window; other targets the selector's `up` matches are counted and ignored.
//!
//! **The verdict** is `verify`'s own rule ([`super::verify::decide`], unchanged): once per
//! instance, and once for the pooled fleet (freezes and covered instance-time summed). The
//! fleet is FIXED only if the pooled rate is clearly lower **and** no instance on its own is
//! NOT FIXED; an instance still freezing makes the fleet NOT FIXED, named. No aggregation
//! runs here that Prometheus could do: the sums are PromQL's.
//!
//! This module owns the PromQL and the rendering; `prometheus.rs` owns the transport.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::prometheus::Prometheus;
use super::render::columns;
use super::verify::{decide, Decision, Reason, Sample, Verdict, ALPHA};
use super::{report_window, verify_windows, Format, Outcome, ToolError};
use crate::clock::NANOS_PER_SEC;
use crate::config::quoted;
use crate::time::{human, rfc3339, Window, DAY_NS};

/// Resolution of coverage: one minute, Prometheus's default scrape interval and the
/// longest that still counts every minute of a healthy target.
pub const COVERAGE_STEP_SECONDS: i64 = 60;
/// How far before `--migrated-at` the before window reaches: coverage counts only the
/// minutes with data, so a longer reach costs query time, not accuracy.
pub const MIGRATED_AT_LOOKBACK_DAYS: i64 = 90;
/// Longest `--selector` accepted: a matcher list, not a program.
pub const MAX_SELECTOR_CHARS: usize = 1_000;

/// `verify --prometheus` arguments.
#[derive(Debug, Clone)]
pub struct FleetVerifyArgs {
    pub prometheus: String,
    pub selector: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub migrated_at: Option<String>,
    pub format: Format,
}

/// `report --prometheus` arguments.
#[derive(Debug, Clone)]
pub struct FleetReportArgs {
    pub prometheus: String,
    pub selector: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub format: Format,
}

/// The matchers inside `--selector '{app="precis"}'` (braces optional), checked enough
/// that they can only be label matchers added to a selector; Prometheus parses the rest.
pub fn matchers(selector: Option<&str>) -> Result<String, ToolError> {
    let Some(text) = selector.map(str::trim) else {
        return Ok(String::new());
    };
    let bad = |why: &str| {
        ToolError::Input(format!(
            "--selector {} {why}; give label matchers like '{{app=\"precis\"}}'",
            quoted(text)
        ))
    };
    if text.chars().count() > MAX_SELECTOR_CHARS {
        return Err(bad(&format!(
            "is longer than {MAX_SELECTOR_CHARS} characters"
        )));
    }
    let inner = match text.strip_prefix('{') {
        Some(rest) => rest
            .strip_suffix('}')
            .ok_or_else(|| bad("opens a brace it does not close"))?,
        None => text,
    };
    // Outside quoted values there may be no braces, brackets or parentheses: the matchers
    // must not close the selector they are put into.
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in inner.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if matches!(c, '{' | '}' | '(' | ')' | '[' | ']') || c.is_control() => {
                return Err(bad("is not a list of label matchers"))
            }
            None => {}
        }
    }
    if quote.is_some() {
        return Err(bad("has an unclosed quote"));
    }
    Ok(inner.trim().trim_end_matches(',').trim().to_string())
}

/// `metric{matchers,extra}`.
fn selector(metric: &str, matchers: &str, extra: &str) -> String {
    let parts: Vec<&str> = [matchers, extra]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    format!("{metric}{{{}}}", parts.join(","))
}

/// The PromQL of one window of `seconds` for one measure.
pub fn queries(matchers: &str, seconds: i64) -> [(Measure, String); 4] {
    let lost = "kind!=\"wall_clock_step\"";
    let step = COVERAGE_STEP_SECONDS;
    [
        (
            Measure::Freezes,
            format!(
                "sum by (job, instance) (increase({}[{seconds}s]))",
                selector("stallwatch_freezes_total", matchers, lost)
            ),
        ),
        (
            Measure::Frozen,
            format!(
                "sum by (job, instance) (increase({}[{seconds}s]))",
                selector("stallwatch_frozen_seconds_total", matchers, lost)
            ),
        ),
        (
            Measure::CoveredMinutes,
            format!(
                "sum by (job, instance) (count_over_time((max_over_time({}[{step}s]) == 1)[{seconds}s:{step}s]))",
                selector("up", matchers, "")
            ),
        ),
        (
            Measure::Sidecar,
            format!(
                "count by (job, instance) (last_over_time({}[{seconds}s]))",
                selector("stallwatch_freezes_total", matchers, "")
            ),
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Freezes,
    Frozen,
    CoveredMinutes,
    Sidecar,
}

/// One instance in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub freezes: u64,
    pub frozen_seconds: f64,
    pub covered_ns: i64,
}

/// `(job, instance)`.
pub type Key = (String, String);

/// One window of the fleet: per instance, and the targets ignored.
#[derive(Debug, Clone)]
pub struct FleetSide {
    pub window: Window,
    pub instances: BTreeMap<Key, Tally>,
    /// Targets `up` matched that export no stallwatch metrics in the window.
    pub other_targets: usize,
}

impl FleetSide {
    pub fn pooled(&self) -> Tally {
        self.instances
            .values()
            .fold(Tally::default(), |a, t| Tally {
                freezes: a.freezes + t.freezes,
                frozen_seconds: a.frozen_seconds + t.frozen_seconds,
                covered_ns: a.covered_ns + t.covered_ns,
            })
    }
}

fn key(labels: &BTreeMap<String, String>) -> Key {
    (
        labels.get("job").cloned().unwrap_or_default(),
        labels.get("instance").cloned().unwrap_or_default(),
    )
}

/// Reads one window: four instant queries at its end.
fn read_side(prom: &Prometheus, matchers: &str, window: Window) -> Result<FleetSide, ToolError> {
    let seconds = window.len_ns() / NANOS_PER_SEC;
    if seconds < COVERAGE_STEP_SECONDS {
        return Err(ToolError::Input(format!(
            "the window {} .. {} is shorter than a minute, the resolution of coverage through Prometheus",
            rfc3339(window.start_ns),
            rfc3339(window.end_ns)
        )));
    }
    let at = window.end_ns as f64 / 1e9;
    let mut side = FleetSide {
        window,
        instances: BTreeMap::new(),
        other_targets: 0,
    };
    let mut covered: BTreeMap<Key, f64> = BTreeMap::new();
    let mut values: BTreeMap<Key, (f64, f64)> = BTreeMap::new();
    let mut sidecars: Vec<Key> = Vec::new();
    for (measure, query) in queries(matchers, seconds) {
        let answer = prom.instant(&query, at).map_err(ToolError::Input)?;
        for s in answer {
            let k = key(&s.labels);
            let v = if s.value.is_finite() {
                s.value.max(0.0)
            } else {
                0.0
            };
            match measure {
                Measure::Freezes => values.entry(k).or_default().0 = v,
                Measure::Frozen => values.entry(k).or_default().1 = v,
                Measure::CoveredMinutes => {
                    covered.insert(k, v);
                }
                Measure::Sidecar => sidecars.push(k),
            }
        }
    }
    for k in sidecars.iter().chain(values.keys()) {
        let (freezes, frozen) = values.get(k).copied().unwrap_or_default();
        let minutes = covered.get(k).copied().unwrap_or(0.0);
        let covered_ns = ((minutes.round() as i64).saturating_mul(COVERAGE_STEP_SECONDS)
            * NANOS_PER_SEC)
            .min(window.len_ns());
        side.instances.insert(
            k.clone(),
            Tally {
                freezes: freezes.round() as u64,
                frozen_seconds: frozen,
                covered_ns,
            },
        );
    }
    side.other_targets = covered
        .keys()
        .filter(|k| !side.instances.contains_key(*k))
        .count();
    Ok(side)
}

/// One instance's verdict line.
#[derive(Debug, Clone)]
pub struct InstanceVerdict {
    pub key: Key,
    pub before: Tally,
    pub after: Tally,
    pub decision: Decision,
}

/// The fleet's verdict: the pooled decision, overruled by any instance NOT FIXED.
#[derive(Debug, Clone)]
pub struct FleetVerdict {
    pub verdict: Verdict,
    pub pooled: Decision,
    /// Instances whose own verdict is NOT FIXED.
    pub not_fixed: Vec<Key>,
    pub instances: Vec<InstanceVerdict>,
}

fn sample(t: &Tally) -> Sample {
    Sample {
        freezes: t.freezes,
        covered_ns: t.covered_ns,
    }
}

/// Pure: both windows' tallies → per-instance and fleet verdicts.
pub fn judge(before: &FleetSide, after: &FleetSide) -> FleetVerdict {
    let mut keys: Vec<&Key> = before
        .instances
        .keys()
        .chain(after.instances.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let instances: Vec<InstanceVerdict> = keys
        .into_iter()
        .map(|k| {
            let b = before.instances.get(k).copied().unwrap_or_default();
            let a = after.instances.get(k).copied().unwrap_or_default();
            InstanceVerdict {
                key: k.clone(),
                before: b,
                after: a,
                decision: decide(sample(&b), sample(&a)),
            }
        })
        .collect();
    let pooled = decide(sample(&before.pooled()), sample(&after.pooled()));
    let not_fixed: Vec<Key> = instances
        .iter()
        .filter(|i| i.decision.verdict == Verdict::NotFixed)
        .map(|i| i.key.clone())
        .collect();
    let verdict = if not_fixed.is_empty() {
        pooled.verdict
    } else {
        Verdict::NotFixed
    };
    FleetVerdict {
        verdict,
        pooled,
        not_fixed,
        instances,
    }
}

fn open(url: &str) -> Result<Prometheus, ToolError> {
    Prometheus::new(url).map_err(ToolError::Input)
}

fn text_or_json(format: Format, command: &str) -> Result<(), ToolError> {
    if matches!(format, Format::Text | Format::Json) {
        Ok(())
    } else {
        Err(ToolError::Input(format!(
            "{command} --prometheus prints --format text or json"
        )))
    }
}

pub fn verify(args: &FleetVerifyArgs, now_ns: i64) -> Result<Outcome, ToolError> {
    text_or_json(args.format, "verify")?;
    let matchers = matchers(args.selector.as_deref())?;
    let (mut before_w, after_w) = verify_windows(
        args.before.as_deref(),
        args.after.as_deref(),
        args.migrated_at.as_deref(),
        now_ns,
    )?;
    if before_w.start_ns == i64::MIN {
        before_w.start_ns = before_w.end_ns - MIGRATED_AT_LOOKBACK_DAYS * DAY_NS;
    }
    let prom = open(&args.prometheus)?;
    let before = read_side(&prom, &matchers, before_w)?;
    let after = read_side(&prom, &matchers, after_w)?;
    let verdict = judge(&before, &after);
    let shown_selector = format!("{{{matchers}}}");
    let stdout = match args.format {
        Format::Json => verify_json(&verdict, &before, &after, prom.shown(), &shown_selector),
        _ => verify_text(&verdict, &before, &after, prom.shown(), &shown_selector),
    };
    Ok(Outcome {
        stdout,
        exit_code: verdict.verdict.exit_code(),
    })
}

pub fn report(args: &FleetReportArgs, now_ns: i64) -> Result<Outcome, ToolError> {
    text_or_json(args.format, "report")?;
    let matchers = matchers(args.selector.as_deref())?;
    let window = report_window(args.since.as_deref(), args.until.as_deref(), now_ns)?;
    let prom = open(&args.prometheus)?;
    let side = read_side(&prom, &matchers, window)?;
    let shown_selector = format!("{{{matchers}}}");
    let stdout = match args.format {
        Format::Json => {
            let v = json!({
                "prometheus": prom.shown(),
                "selector": shown_selector,
                "window": window_json(&window),
                "fleet": tally_json(&side.pooled(), window.len_ns() * side.instances.len() as i64),
                "instances": side.instances.iter().map(|(k, t)| {
                    let mut v = tally_json(t, window.len_ns());
                    v["job"] = json!(k.0);
                    v["instance"] = json!(k.1);
                    v
                }).collect::<Vec<_>>(),
                "other_targets_ignored": side.other_targets,
                "coverage": COVERAGE_NOTE,
                "counted": COUNTED_NOTE,
            });
            serde_json::to_string_pretty(&v).expect("JSON values serialise") + "\n"
        }
        _ => {
            let mut out = format!(
                "fleet freezes {} .. {} ({}), {}\n",
                rfc3339(window.start_ns),
                rfc3339(window.end_ns),
                human(window.len_ns()),
                plural(side.instances.len() as u64, "instance", "instances")
            );
            if side.instances.is_empty() {
                let _ = writeln!(
                    out,
                    "  no stallwatch sidecar matched {shown_selector} in this window"
                );
            }
            let mut rows = vec![vec![
                "instance".to_string(),
                "job".to_string(),
                "freezes".to_string(),
                "frozen".to_string(),
                "watched".to_string(),
            ]];
            for (k, t) in &side.instances {
                rows.push(vec![
                    k.1.clone(),
                    k.0.clone(),
                    t.freezes.to_string(),
                    human(frozen_ns(t)),
                    watched(t.covered_ns, window.len_ns()),
                ]);
            }
            let pooled = side.pooled();
            rows.push(vec![
                "fleet".into(),
                String::new(),
                pooled.freezes.to_string(),
                human(frozen_ns(&pooled)),
                watched(
                    pooled.covered_ns,
                    window.len_ns() * side.instances.len() as i64,
                ),
            ]);
            out.push_str(&columns(&rows, "  "));
            footer(&mut out, &side, &side, prom.shown(), &shown_selector);
            out
        }
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

// ---- rendering ------------------------------------------------------------------------

const COVERAGE_NOTE: &str = "coverage: the minutes in which Prometheus scraped the instance successfully at least once (up == 1), per instance; a minute without a successful scrape is not watched (needs a scrape interval of at most 1m)";
const COUNTED_NOTE: &str = "counted: increase() of stallwatch_freezes_total over the window per instance, every kind but wall_clock_step, rounded to whole freezes; a sidecar's first sample in Prometheus is not an increase";

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn frozen_ns(t: &Tally) -> i64 {
    (t.frozen_seconds * 1e9).round() as i64
}

fn watched(covered_ns: i64, span_ns: i64) -> String {
    let pct = if span_ns > 0 {
        100.0 * covered_ns as f64 / span_ns as f64
    } else {
        0.0
    };
    let pct = if pct > 0.0 && pct < 1.0 {
        format!("{pct:.1}")
    } else {
        format!("{pct:.0}")
    };
    format!("{} of {} ({pct} %)", human(covered_ns), human(span_ns))
}

fn p_text(d: &Decision) -> String {
    match d.p_value {
        None => "-".into(),
        Some(p) if p < 0.001 => "p < 0.001".into(),
        Some(p) => format!("p = {p:.3}"),
    }
}

/// Why a decision is what it is, in a few words.
fn reason_text(d: &Decision) -> &'static str {
    match d.reason {
        Reason::BeforeNotCovered => "nothing watched before",
        Reason::AfterNotCovered => "nothing watched after",
        Reason::NoFreezesEither => "no freezes before or after",
        Reason::FreezesOnlyAfter => "freezes only after",
        Reason::QuietLongEnough => "quiet after, long enough",
        Reason::QuietTooShort => "quiet after, too short to tell",
        Reason::RateClearlyLower => "rate clearly lower",
        Reason::RateNotClearlyLower => "rate not clearly lower",
    }
}

fn headline(v: &FleetVerdict) -> String {
    let mut line = format!("verdict: {}", v.verdict.as_str());
    if !v.not_fixed.is_empty() {
        let names: Vec<&str> = v.not_fixed.iter().map(|k| k.1.as_str()).collect();
        let _ = write!(
            line,
            " — {} still {}: {}",
            plural(names.len() as u64, "instance", "instances"),
            if names.len() == 1 {
                "freezes"
            } else {
                "freeze"
            },
            names.join(", ")
        );
    }
    line
}

fn side_text(name: &str, s: &FleetSide) -> String {
    let p = s.pooled();
    let span = s.window.len_ns() * s.instances.len() as i64;
    format!(
        "  {name:<6} {} .. {} ({}): watched {} instance-time; {}; frozen {}",
        rfc3339(s.window.start_ns),
        rfc3339(s.window.end_ns),
        human(s.window.len_ns()),
        watched(p.covered_ns, span),
        plural(p.freezes, "freeze", "freezes"),
        human(frozen_ns(&p)),
    )
}

fn footer(out: &mut String, before: &FleetSide, after: &FleetSide, url: &str, sel: &str) {
    let _ = writeln!(out, "{COUNTED_NOTE}");
    let _ = writeln!(out, "{COVERAGE_NOTE}");
    let others = before.other_targets.max(after.other_targets);
    if others > 0 {
        let _ = writeln!(
            out,
            "ignored: {} the selector matches in up without stallwatch metrics",
            plural(others as u64, "target", "targets")
        );
    }
    let _ = writeln!(out, "prometheus: {url}, selector {sel}");
}

pub fn verify_text(
    v: &FleetVerdict,
    before: &FleetSide,
    after: &FleetSide,
    url: &str,
    sel: &str,
) -> String {
    let mut out = headline(v);
    out.push('\n');
    let _ = writeln!(
        out,
        "fleet ({}):",
        plural(v.instances.len() as u64, "instance", "instances")
    );
    let _ = writeln!(out, "{}", side_text("before", before));
    let _ = writeln!(out, "{}", side_text("after", after));
    let d = &v.pooled;
    let _ = writeln!(
        out,
        "  pooled: {} ({}; {} expected after at the before rate {}, {}, α = {ALPHA})",
        d.verdict.as_str(),
        reason_text(d),
        d.expected_after.map_or("-".into(), |m| format!("{m:.2}")),
        d.before_per_day
            .map_or("-".into(), |r| format!("{r:.3}/instance-day")),
        p_text(d),
    );
    if !v.not_fixed.is_empty() {
        let _ = writeln!(
            out,
            "  the fleet is not fixed while any instance on its own is not"
        );
    }
    out.push_str("instances:\n");
    let mut rows = vec![vec![
        "instance".to_string(),
        "job".to_string(),
        "before".to_string(),
        "after".to_string(),
        "verdict".to_string(),
        "why".to_string(),
    ]];
    for i in &v.instances {
        rows.push(vec![
            i.key.1.clone(),
            i.key.0.clone(),
            format!(
                "{} in {}",
                plural(i.before.freezes, "freeze", "freezes"),
                watched(i.before.covered_ns, before.window.len_ns())
            ),
            format!(
                "{} in {}",
                plural(i.after.freezes, "freeze", "freezes"),
                watched(i.after.covered_ns, after.window.len_ns())
            ),
            i.decision.verdict.as_str().to_string(),
            format!("{}, {}", reason_text(&i.decision), p_text(&i.decision)),
        ]);
    }
    out.push_str(&columns(&rows, "  "));
    footer(&mut out, before, after, url, sel);
    out
}

fn window_json(w: &Window) -> Value {
    json!({"start": rfc3339(w.start_ns), "end": rfc3339(w.end_ns), "seconds": w.len_ns() as f64 / 1e9})
}

fn tally_json(t: &Tally, span_ns: i64) -> Value {
    json!({
        "freezes": t.freezes,
        "frozen_seconds": t.frozen_seconds,
        "covered_seconds": t.covered_ns as f64 / 1e9,
        "covered_fraction": if span_ns > 0 { t.covered_ns as f64 / span_ns as f64 } else { 0.0 },
    })
}

fn decision_json(d: &Decision) -> Value {
    json!({
        "verdict": d.verdict.as_str(),
        "reason": d.reason,
        "before_rate_per_day": d.before_per_day,
        "after_rate_per_day": d.after_per_day,
        "expected_after": d.expected_after,
        "p_value": d.p_value,
        "needed_after_seconds": d.needed_after_ns.map(|n| n as f64 / 1e9),
    })
}

pub fn verify_json(
    v: &FleetVerdict,
    before: &FleetSide,
    after: &FleetSide,
    url: &str,
    sel: &str,
) -> String {
    let n = v.instances.len() as i64;
    let out = json!({
        "verdict": v.verdict.as_str(),
        "exit_code": v.verdict.exit_code(),
        "not_fixed_instances": v.not_fixed.iter().map(|k| json!({"job": k.0, "instance": k.1})).collect::<Vec<_>>(),
        "pooled": decision_json(&v.pooled),
        "before": {"window": window_json(&before.window), "fleet": tally_json(&before.pooled(), before.window.len_ns() * n)},
        "after": {"window": window_json(&after.window), "fleet": tally_json(&after.pooled(), after.window.len_ns() * n)},
        "instances": v.instances.iter().map(|i| json!({
            "job": i.key.0,
            "instance": i.key.1,
            "before": tally_json(&i.before, before.window.len_ns()),
            "after": tally_json(&i.after, after.window.len_ns()),
            "decision": decision_json(&i.decision),
        })).collect::<Vec<_>>(),
        "other_targets_ignored": before.other_targets.max(after.other_targets),
        "counted": COUNTED_NOTE,
        "coverage": COVERAGE_NOTE,
        "prometheus": url,
        "selector": sel,
    });
    serde_json::to_string_pretty(&out).expect("JSON values serialise") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_become_matchers_or_one_sentence() {
        assert_eq!(matchers(None).unwrap(), "");
        assert_eq!(
            matchers(Some(" {app=\"precis\", env=~\"p.*\",} ")).unwrap(),
            "app=\"precis\", env=~\"p.*\""
        );
        assert_eq!(matchers(Some("app=\"a}b\"")).unwrap(), "app=\"a}b\"");
        for bad in [
            "{app=\"x\"",
            "{app=\"x\"}) or vector(1",
            "app=\"x",
            "{a=\"b\"}[5m]",
        ] {
            let e = matchers(Some(bad)).unwrap_err().to_string();
            assert!(e.starts_with("--selector "), "{bad}: {e}");
            assert!(e.contains("give label matchers"), "{e}");
        }
        let huge = "a".repeat(100_000);
        let e = matchers(Some(&huge)).unwrap_err().to_string();
        assert!(e.contains("longer than 1000") && e.len() < 300, "{e}");
        assert_eq!(
            selector("up", "app=\"p\"", ""),
            "up{app=\"p\"}",
            "no trailing comma"
        );
        assert_eq!(selector("up", "", "k!=\"x\""), "up{k!=\"x\"}");
    }

    fn side(days: i64, rows: &[(&str, u64, i64)]) -> FleetSide {
        FleetSide {
            window: Window {
                start_ns: 0,
                end_ns: days * DAY_NS,
            },
            instances: rows
                .iter()
                .map(|(i, f, d)| {
                    (
                        ("stallwatch".to_string(), i.to_string()),
                        Tally {
                            freezes: *f,
                            frozen_seconds: 0.0,
                            covered_ns: d * DAY_NS,
                        },
                    )
                })
                .collect(),
            other_targets: 0,
        }
    }

    #[test]
    fn one_instance_still_freezing_makes_the_fleet_not_fixed() {
        let before = side(12, &[("a", 10, 12), ("b", 10, 12), ("c", 10, 12)]);
        let after = side(8, &[("a", 0, 8), ("b", 0, 8), ("c", 6, 8)]);
        let v = judge(&before, &after);
        // Pooled, 6 where 20 were expected is clearly lower...
        assert_eq!(v.pooled.verdict, Verdict::Fixed);
        // ...but c on its own is not fixed, so neither is the fleet.
        assert_eq!(v.verdict, Verdict::NotFixed);
        assert_eq!(
            v.not_fixed,
            vec![("stallwatch".to_string(), "c".to_string())]
        );
        let all_quiet = side(8, &[("a", 0, 8), ("b", 0, 8), ("c", 0, 8)]);
        let v = judge(&before, &all_quiet);
        assert_eq!(v.verdict, Verdict::Fixed);
        assert!(v.not_fixed.is_empty());
        assert!(v
            .instances
            .iter()
            .all(|i| i.decision.verdict == Verdict::Fixed));
        // Nothing watched after: not enough data.
        let dark = side(8, &[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]);
        assert_eq!(judge(&before, &dark).verdict, Verdict::NotEnoughData);
    }
}
