//! The `jsonl` source: a JSON-lines event log, followed like `tail -F` (see [`super::tail`]).
//!
//! Each line is one object with a time, a job key, an event name and optionally a cost.
//! Events become step rows (one job = one workflow, so gaps between a job's events are
//! step gaps) and spend. A line that is not JSON or has no readable time, or whose time
//! is more than [`MAX_LINE_AHEAD_NS`] ahead of the wall clock or [`MAX_LINE_AGE_NS`]
//! behind it, is counted as a bad timestamp and skipped whole: a lying writer's clock
//! must neither move the cost day nor make a days-long step gap. A line longer than
//! [`super::tail::MAX_LINE_BYTES`] is counted as an oversize line and skipped.

use std::path::PathBuf;

use serde_json::Value;

use super::tail::{TailError, Tailer};
use super::{ErrorKind, Observation, Source, SourceError};
use crate::clock::NANOS_PER_SEC;
use crate::config::source::JsonlLayout;
use crate::signals::steps::StepRow;
use crate::timestamp::{to_unix_ns, RawTime};

/// Most lines read per poll.
pub const MAX_LINES_PER_POLL: usize = 50_000;
/// Most bytes read per poll.
pub const MAX_BYTES_PER_POLL: usize = 16 * 1024 * 1024;
/// Furthest a line's time may be ahead of the wall clock: the writer runs on this machine
/// or one kept within milliseconds by NTP, so an hour is only ever a broken clock or a
/// wrong unit, never skew.
pub const MAX_LINE_AHEAD_NS: i64 = 3_600 * NANOS_PER_SEC;
/// Furthest a line's time may be behind the wall clock: 45 days, longer than a
/// monthly-rotated log holds, because every start re-reads the whole file and its old
/// lines are history, not errors. Older is a clock reset (epoch 0, a restored snapshot's
/// stale time) or a unit error.
pub const MAX_LINE_AGE_NS: i64 = 45 * 86_400 * NANOS_PER_SEC;

pub struct JsonlSource {
    tail: Tailer,
    layout: JsonlLayout,
}

impl JsonlSource {
    pub fn new(path: PathBuf, layout: JsonlLayout) -> JsonlSource {
        JsonlSource {
            tail: Tailer::new(path, false),
            layout,
        }
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name).filter(|x| !x.is_null())
}

/// Reads one line into (time, key, event, cost).
pub fn parse_line(
    line: &str,
    layout: &JsonlLayout,
) -> Result<(i64, String, String, Option<f64>), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let time = match field(&v, &layout.time_field) {
        Some(Value::Number(n)) if n.is_i64() => {
            to_unix_ns(RawTime::Int(n.as_i64().expect("checked")))
        }
        Some(Value::Number(n)) => to_unix_ns(RawTime::Float(n.as_f64().unwrap_or(f64::NAN))),
        Some(Value::String(s)) => to_unix_ns(RawTime::Text(s)),
        _ => Err(format!("no {:?} field", layout.time_field)),
    }?;
    let text = |name: &str| match field(&v, name) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let cost = field(&v, &layout.cost_field).and_then(|c| match c {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    });
    Ok((
        time,
        text(&layout.key_field),
        text(&layout.event_field),
        cost,
    ))
}

/// Whether a line dated `at_ns` is believable at wall time `now_ns` (see
/// [`MAX_LINE_AHEAD_NS`] and [`MAX_LINE_AGE_NS`]).
pub fn plausible_time(at_ns: i64, now_ns: i64) -> bool {
    at_ns <= now_ns.saturating_add(MAX_LINE_AHEAD_NS)
        && at_ns >= now_ns.saturating_sub(MAX_LINE_AGE_NS)
}

impl Source for JsonlSource {
    fn poll(&mut self, now_ns: i64) -> Result<Observation, SourceError> {
        let mut obs = Observation::default();
        loop {
            let batch = self
                .tail
                .poll(MAX_LINES_PER_POLL, MAX_BYTES_PER_POLL)
                .map_err(|e| match e {
                    TailError::Missing { .. } => {
                        SourceError::new(ErrorKind::Missing, e.to_string())
                    }
                    TailError::Io { .. } => SourceError::new(ErrorKind::Io, e.to_string()),
                    TailError::NotAFile { .. } => {
                        SourceError::new(ErrorKind::NotAFile, e.to_string())
                    }
                })?;
            obs.oversize_lines += batch.skipped_oversize;
            for line in &batch.lines {
                if line.trim().is_empty() {
                    continue;
                }
                match parse_line(line, &self.layout) {
                    Ok((at, ..)) if !plausible_time(at, now_ns) => obs.bad_timestamps += 1,
                    Ok((at, key, event, cost)) => {
                        if let Some(usd) = cost {
                            obs.spend.push((at, usd));
                        }
                        if !key.is_empty() {
                            obs.steps.push(StepRow {
                                workflow_id: key,
                                workflow_name: String::new(),
                                step: event,
                                started_ns: at,
                                completed_ns: at,
                                deadline_ns: None,
                            });
                        }
                    }
                    Err(_) => obs.bad_timestamps += 1,
                }
            }
            if !batch.more || obs.steps.len() >= MAX_LINES_PER_POLL {
                break;
            }
        }
        obs.steps.sort_by_key(|s| s.completed_ns);
        Ok(obs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> JsonlLayout {
        JsonlLayout {
            time_field: "ts".into(),
            key_field: "key".into(),
            event_field: "event".into(),
            cost_field: "cost_usd".into(),
        }
    }

    #[test]
    fn a_line_gives_time_key_event_and_cost() {
        let (t, k, e, c) = parse_line(
            r#"{"ts":"2025-11-23T12:13:20Z","key":"j1","event":"done","cost_usd":0.25}"#,
            &layout(),
        )
        .unwrap();
        assert_eq!(
            (t, k.as_str(), e.as_str(), c),
            (1_763_900_000_000_000_000, "j1", "done", Some(0.25))
        );
    }

    #[test]
    fn times_far_ahead_or_far_behind_the_wall_clock_are_not_believed() {
        let now = 1_763_900_000 * NANOS_PER_SEC;
        assert!(plausible_time(now, now));
        assert!(plausible_time(now + MAX_LINE_AHEAD_NS, now));
        assert!(!plausible_time(now + MAX_LINE_AHEAD_NS + 1, now));
        assert!(!plausible_time(now + 2 * 86_400 * NANOS_PER_SEC, now));
        assert!(plausible_time(now - MAX_LINE_AGE_NS, now));
        assert!(!plausible_time(now - MAX_LINE_AGE_NS - 1, now));
        assert!(!plausible_time(NANOS_PER_SEC, now));
        assert!(!plausible_time(i64::MAX, now));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse_line("not json", &layout()).is_err());
        assert!(parse_line(r#"{"key":"j1"}"#, &layout()).is_err());
        assert!(parse_line(r#"{"ts":"later"}"#, &layout()).is_err());
    }
}
