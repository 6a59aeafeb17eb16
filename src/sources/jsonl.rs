//! The `jsonl` source: a JSON-lines event log, followed like `tail -F` (see [`super::tail`]).
//!
//! Each line is one object with a time, a job key, an event name and optionally a cost.
//! Events become step rows (one job = one workflow, so gaps between a job's events are
//! step gaps) and spend. A line that is not JSON or has no readable time is counted as a
//! bad timestamp and skipped.

use std::path::PathBuf;

use serde_json::Value;

use super::tail::{TailError, Tailer};
use super::timestamp::{to_unix_ns, RawTime};
use super::{ErrorKind, Observation, Source, SourceError};
use crate::config::source::JsonlLayout;
use crate::signals::steps::StepRow;

/// Most lines read per poll.
pub const MAX_LINES_PER_POLL: usize = 50_000;
/// Most bytes read per poll.
pub const MAX_BYTES_PER_POLL: usize = 16 * 1024 * 1024;

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

impl Source for JsonlSource {
    fn poll(&mut self, _now_ns: i64) -> Result<Observation, SourceError> {
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
                })?;
            for line in &batch.lines {
                if line.trim().is_empty() {
                    continue;
                }
                match parse_line(line, &self.layout) {
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
    fn bad_lines_are_errors() {
        assert!(parse_line("not json", &layout()).is_err());
        assert!(parse_line(r#"{"key":"j1"}"#, &layout()).is_err());
        assert!(parse_line(r#"{"ts":"later"}"#, &layout()).is_err());
    }
}
