//! Spans from a finished workflow and the freezes around it. Pure: values in, OTLP
//! spans out; no clock, no I/O.
//!
//! A workflow is one trace:
//!
//! - the **root** span, named after the workflow, from when it started running (or its
//!   first row) to its last row's end;
//! - one child span per **row** the app wrote (steps and intended waits such as
//!   `DBOS.recv`), with the app's own start and end times;
//! - one child span per **gap** of at least `gap_min` (`step_gap`, or `wait_overrun` for
//!   a wait that ended past its deadline), covering the unexplained time, with its cause
//!   (`freeze` or `stall`) decided as episodes are ([`crate::signals::attribution`]). A
//!   span rather than an event on the next step: the gap is a stretch of time, so it shows
//!   as a bar of its own length in a waterfall view, and it is searchable by name and
//!   attributes like any span;
//! - one child span per lost-time **freeze** that overlaps the workflow, with its real
//!   start and end, so the freeze sits inside the trace of the job it hit.
//!
//! A freeze that overlapped no traced workflow is a trace of its own (one `freeze` span).
//!
//! Ids are derived (SHA-256) from what they name: a workflow's trace id from its source
//! and id, a span id from its trace, its kind and its key. Sending the same trace twice
//! (a retry after a timeout the collector did in fact answer) repeats the same spans
//! rather than making new ones.

use sha2::{Digest, Sha256};

use super::proto::{Attribute, KeyValue, Span, SPAN_FLAGS_SAMPLED, SPAN_KIND_INTERNAL};
use super::workflows::CompletedWorkflow;
use crate::signals::attribution::{attribute, FreezeSpan};
use crate::signals::steps::{is_intended_wait, GapKind, GapTracker};
use crate::state::StoredEvent;

/// Name of the span of one freeze, in a workflow's trace or on its own.
pub const FREEZE_SPAN: &str = "freeze";

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The trace id of a workflow: the same however often it is built.
pub fn workflow_trace_id(source: &str, workflow_id: &str) -> TraceId {
    let d = digest(&[
        b"stallwatch/workflow",
        source.as_bytes(),
        workflow_id.as_bytes(),
    ]);
    nonzero(d[..16].try_into().expect("16 bytes"))
}

/// The trace id of a freeze exported on its own.
pub fn freeze_trace_id(e: &StoredEvent) -> TraceId {
    let d = digest(&[
        b"stallwatch/freeze",
        &e.id.to_le_bytes(),
        &e.event.started_at_ns.to_le_bytes(),
        e.event.kind.as_str().as_bytes(),
    ]);
    nonzero(d[..16].try_into().expect("16 bytes"))
}

/// A span id within `trace`, for the span of `kind` named by `key`.
pub fn span_id(trace: &TraceId, kind: &str, key: &[u8]) -> SpanId {
    let d = digest(&[trace, kind.as_bytes(), key]);
    nonzero(d[..8].try_into().expect("8 bytes"))
}

/// All-zero ids are invalid in OTLP.
fn nonzero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|b| *b == 0) {
        id[N - 1] = 1;
    }
    id
}

fn unix_nanos(ns: i64) -> u64 {
    ns.max(0) as u64
}

fn span(
    trace: &TraceId,
    id: SpanId,
    parent: Option<SpanId>,
    name: &str,
    start_ns: i64,
    end_ns: i64,
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: if name.is_empty() {
            "unnamed".into()
        } else {
            name.into()
        },
        kind: SPAN_KIND_INTERNAL,
        start_time_unix_nano: unix_nanos(start_ns),
        end_time_unix_nano: unix_nanos(end_ns.max(start_ns)),
        attributes,
        flags: SPAN_FLAGS_SAMPLED,
        ..Span::default()
    }
}

/// Whether a lost-time freeze overlaps `[start_ns, end_ns]`.
pub fn overlaps(e: &StoredEvent, start_ns: i64, end_ns: i64) -> bool {
    let f = &e.event;
    f.kind.is_lost_time()
        && f.started_at_ns <= end_ns
        && f.started_at_ns + f.duration_ns >= start_ns
}

fn freeze_attributes(e: &StoredEvent) -> Vec<KeyValue> {
    let f = &e.event;
    let mut attributes = vec![
        KeyValue::string("freeze.kind", f.kind.as_str()),
        KeyValue::double("freeze.duration_seconds", f.duration_ns as f64 / 1e9),
        KeyValue::int("freeze.id", e.id),
        KeyValue::strings(
            "freeze.channels",
            f.channels.iter().map(|c| c.channel.clone()),
        ),
    ];
    // Channel names are bounded: the evidence channels and the configured references.
    attributes.extend(f.channels.iter().map(|c| {
        KeyValue::double(
            &format!("freeze.channel.{}.estimate_seconds", c.channel),
            c.estimate_ns as f64 / 1e9,
        )
    }));
    attributes
}

/// The span of one freeze. A wall-clock step is not lost time: it is a point (the
/// moment of the step), its size in `freeze.duration_seconds`.
fn freeze_span(trace: &TraceId, parent: Option<SpanId>, e: &StoredEvent) -> Span {
    let f = &e.event;
    let end = if f.kind.is_lost_time() {
        f.started_at_ns + f.duration_ns
    } else {
        f.started_at_ns
    };
    span(
        trace,
        span_id(trace, "freeze", &e.id.to_le_bytes()),
        parent,
        FREEZE_SPAN,
        f.started_at_ns,
        end,
        freeze_attributes(e),
    )
}

/// A freeze that overlapped no traced workflow, as a trace of its own.
pub fn freeze_trace(e: &StoredEvent) -> Vec<Span> {
    vec![freeze_span(&freeze_trace_id(e), None, e)]
}

/// The spans of one finished workflow: root, rows, gaps of at least `gap_min_ns`, and
/// the lost-time freezes among `freezes` that overlap it.
pub fn workflow_trace(
    w: &CompletedWorkflow,
    freezes: &[StoredEvent],
    gap_min_ns: i64,
) -> Vec<Span> {
    let trace = workflow_trace_id(&w.source, &w.workflow_id);
    let root_id = span_id(&trace, "workflow", b"");
    let (start, end) = (w.start_ns(), w.end_ns());
    let hit: Vec<&StoredEvent> = freezes.iter().filter(|e| overlaps(e, start, end)).collect();
    let spans_of_freezes: Vec<FreezeSpan> =
        hit.iter().map(|e| FreezeSpan::of(e.id, &e.event)).collect();

    let mut children = Vec::new();
    let mut steps = w.steps.clone();
    steps.sort_by_key(|s| (s.started_ns, s.completed_ns));
    for (index, s) in steps.iter().enumerate() {
        let mut attributes = vec![
            KeyValue::string("step.name", s.step.as_str()),
            KeyValue::int("step.index", index as i64),
        ];
        if is_intended_wait(&s.step) {
            attributes.push(KeyValue::bool("step.intended_wait", true));
        }
        let key = [
            (index as u64).to_le_bytes().as_slice(),
            s.step.as_bytes(),
            &s.started_ns.to_le_bytes(),
        ]
        .concat();
        children.push(span(
            &trace,
            span_id(&trace, "step", &key),
            Some(root_id),
            &s.step,
            s.started_ns,
            s.completed_ns,
            attributes,
        ));
    }

    let mut gaps = GapTracker::default();
    let mut gap_count = 0;
    for row in w.rows_in_completion_order() {
        let Some(gap) = gaps.observe(&row) else {
            continue;
        };
        if gap.duration_ns() < gap_min_ns {
            continue;
        }
        gap_count += 1;
        let cause = attribute(gap.start_ns, gap.end_ns, &spans_of_freezes);
        let name = match gap.kind {
            GapKind::Step => "step_gap",
            GapKind::WaitOverrun => "wait_overrun",
        };
        let mut attributes = vec![
            KeyValue::double("gap.seconds", gap.duration_ns() as f64 / 1e9),
            KeyValue::string("gap.cause", cause.as_str()),
            KeyValue::string("gap.from_step", gap.from_step.as_str()),
            KeyValue::string("gap.to_step", gap.to_step.as_str()),
        ];
        if let Some(freeze_id) = cause.freeze_id() {
            attributes.push(KeyValue::int("freeze.id", freeze_id));
        }
        let key = [gap.start_ns.to_le_bytes(), gap.end_ns.to_le_bytes()].concat();
        children.push(span(
            &trace,
            span_id(&trace, name, &key),
            Some(root_id),
            name,
            gap.start_ns,
            gap.end_ns,
            attributes,
        ));
    }

    for e in &hit {
        children.push(freeze_span(&trace, Some(root_id), e));
    }

    let mut attributes = vec![
        KeyValue::string("workflow.id", w.workflow_id.as_str()),
        KeyValue::string("workflow.name", w.workflow_name.as_str()),
        KeyValue::string("stallwatch.source", w.source.as_str()),
        KeyValue::int("workflow.steps", w.steps.len() as i64),
        KeyValue::int("workflow.gaps", gap_count),
        KeyValue::int("workflow.freezes", hit.len() as i64),
    ];
    if !w.queue.is_empty() {
        attributes.push(KeyValue::string("workflow.queue", w.queue.as_str()));
    }
    if w.recovery_attempts > 0 {
        attributes.push(KeyValue::int(
            "workflow.recovery_attempts",
            w.recovery_attempts,
        ));
    }
    if w.dropped_steps > 0 {
        attributes.push(KeyValue::int(
            "workflow.dropped_steps",
            w.dropped_steps as i64,
        ));
    }
    let root = span(
        &trace,
        root_id,
        None,
        &w.workflow_name,
        start,
        end,
        attributes,
    );
    let mut spans = vec![root];
    spans.extend(children);
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeze::{ChannelEstimate, FreezeEvent, FreezeKind};
    use crate::otlp::proto::Value;
    use crate::otlp::workflows::TracedStep;

    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;

    fn step(name: &str, started_ms: i64, completed_ms: i64) -> TracedStep {
        TracedStep {
            step: name.into(),
            started_ns: started_ms * MS,
            completed_ns: completed_ms * MS,
            deadline_ns: None,
        }
    }

    fn workflow(steps: Vec<TracedStep>) -> CompletedWorkflow {
        CompletedWorkflow {
            source: "app".into(),
            workflow_id: "wf-1".into(),
            workflow_name: "ingest".into(),
            queue: String::new(),
            created_ns: Some(0),
            recovery_attempts: 1,
            steps,
            dropped_steps: 0,
            noticed_ns: 20 * S,
        }
    }

    fn freeze(id: i64, kind: FreezeKind, start_ms: i64, duration_ms: i64) -> StoredEvent {
        StoredEvent {
            id,
            detected_at_ns: 0,
            event: FreezeEvent {
                kind,
                started_at_ns: start_ms * MS,
                duration_ns: duration_ms * MS,
                channels: vec![ChannelEstimate {
                    channel: "tick".into(),
                    estimate_ns: duration_ms * MS,
                }],
            },
        }
    }

    fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_freeze_during_a_step_is_a_child_of_the_root_and_a_later_gap_is_a_stall() {
        let w = workflow(vec![
            step("fetch", 0, 100),
            step("crunch", 110, 6_110),
            step("store", 9_200, 9_300),
        ]);
        let freezes = [
            freeze(7, FreezeKind::ProcessStall, 1_000, 3_000),
            freeze(8, FreezeKind::ProcessStall, 50_000, 3_000),
        ];
        let spans = workflow_trace(&w, &freezes, 2 * S);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["ingest", "fetch", "crunch", "store", "step_gap", "freeze"]
        );
        let root = &spans[0];
        assert!(root.parent_span_id.is_empty());
        assert_eq!(
            (root.start_time_unix_nano, root.end_time_unix_nano),
            (0, 9_300 * MS as u64)
        );
        for child in &spans[1..] {
            assert_eq!(child.trace_id, root.trace_id);
            assert_eq!(child.parent_span_id, root.span_id);
        }
        let crunch = &spans[2];
        assert_eq!(
            (crunch.start_time_unix_nano, crunch.end_time_unix_nano),
            (110 * MS as u64, 6_110 * MS as u64)
        );
        let gap = &spans[4];
        assert_eq!(
            attr(gap, "gap.cause"),
            Some(&Value::StringValue("stall".into()))
        );
        assert_eq!(
            (gap.start_time_unix_nano, gap.end_time_unix_nano),
            (6_110 * MS as u64, 9_200 * MS as u64)
        );
        let f = &spans[5];
        assert_eq!(
            attr(f, "freeze.kind"),
            Some(&Value::StringValue("process_stall".into()))
        );
        assert_eq!(
            attr(f, "freeze.duration_seconds"),
            Some(&Value::DoubleValue(3.0))
        );
        // Built twice, the same ids.
        assert_eq!(workflow_trace(&w, &freezes, 2 * S), spans);
    }

    #[test]
    fn a_gap_covered_by_a_freeze_is_caused_by_it_and_waits_are_not_gaps() {
        let w = workflow(vec![
            step("parse", 0, 100),
            step("DBOS.recv", 105, 2_110),
            step("DBOS.sleep", 110, 111),
            step("generate", 8_000, 8_100),
        ]);
        let freezes = [freeze(3, FreezeKind::VmPause, 2_200, 5_700)];
        let spans = workflow_trace(&w, &freezes, 2 * S);
        let gaps: Vec<&Span> = spans.iter().filter(|s| s.name == "step_gap").collect();
        assert_eq!(gaps.len(), 1, "the recv is a wait, not a gap");
        assert_eq!(
            attr(gaps[0], "gap.cause"),
            Some(&Value::StringValue("freeze".into()))
        );
        assert_eq!(attr(gaps[0], "freeze.id"), Some(&Value::IntValue(3)));
        let recv = spans.iter().find(|s| s.name == "DBOS.recv").unwrap();
        assert_eq!(
            attr(recv, "step.intended_wait"),
            Some(&Value::BoolValue(true))
        );
    }

    /// Issue 13: a stall spent waiting for a CPU is starvation on the gap, with its id.
    #[test]
    fn a_gap_covered_by_a_cpu_starved_stall_is_starvation() {
        let w = workflow(vec![step("parse", 0, 100), step("generate", 4_000, 4_100)]);
        let mut starved = freeze(4, FreezeKind::ProcessStall, 200, 3_700);
        starved.event.channels.push(ChannelEstimate {
            channel: "run_delay".into(),
            estimate_ns: 3_600 * MS,
        });
        let spans = workflow_trace(&w, &[starved], 2 * S);
        let gap = spans.iter().find(|s| s.name == "step_gap").unwrap();
        assert_eq!(
            attr(gap, "gap.cause"),
            Some(&Value::StringValue("starvation".into()))
        );
        assert_eq!(attr(gap, "freeze.id"), Some(&Value::IntValue(4)));
    }

    #[test]
    fn a_wall_clock_step_is_never_inside_a_workflow_and_stands_alone_as_a_point() {
        let w = workflow(vec![step("a", 0, 5_000)]);
        let step_event = freeze(9, FreezeKind::WallClockStep, 1_000, -30_000);
        let spans = workflow_trace(&w, std::slice::from_ref(&step_event), 2 * S);
        assert!(spans.iter().all(|s| s.name != FREEZE_SPAN));
        let alone = freeze_trace(&step_event);
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].start_time_unix_nano, alone[0].end_time_unix_nano);
        assert!(alone[0].parent_span_id.is_empty());
    }
}
