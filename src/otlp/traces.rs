//! When each trace is built. Pure: finished workflows, recorded freezes and `now` in,
//! spans out.
//!
//! A finished workflow waits `settle_ns` after it ended (or after its end was noticed,
//! if later: the sidecar may have been stopped itself) before its trace is built, for
//! the same reason an episode waits before it is attributed: a freeze that covers it is
//! only recorded once the detector's merge window has closed.
//!
//! A recorded freeze waits `freeze_hold_ns` after it ended, long enough for every
//! workflow it overlapped to have finished and been noticed, or to still be buffered by
//! a source. A freeze that a built workflow trace showed is done. One that a workflow
//! still to come overlaps (waiting here, or buffered by a source since before the freeze
//! ended) waits for that trace, up to [`FREEZE_MAX_WAIT_NS`]: a workflow that never
//! finishes must not hide the freeze. Any other is exported as a trace of its own. Only
//! freezes recorded by this run are exported on their own; older ones still appear
//! inside the workflow traces they overlap.

use std::collections::{BTreeMap, VecDeque};

use super::proto::Span;
use super::spans::{freeze_trace, overlaps, workflow_trace};
use super::workflows::CompletedWorkflow;
use crate::state::StoredEvent;

/// Finished workflows waiting to be built; beyond this the oldest is dropped (counted).
pub const MAX_WAITING_WORKFLOWS: usize = 1_000;
/// Freezes remembered for workflow traces; the oldest are forgotten first.
pub const MAX_KNOWN_FREEZES: usize = 1_000;
/// How long a freeze is remembered after it ended: workflows longer than a day do not
/// show freezes from their first day.
pub const FREEZE_RETENTION_NS: i64 = 86_400 * 1_000_000_000;
/// Longest a freeze waits for the trace of a workflow it overlapped that is still
/// running; then it is exported on its own as well (the workflow's trace will show it too).
pub const FREEZE_MAX_WAIT_NS: i64 = 3_600 * 1_000_000_000;

#[derive(Debug)]
struct Known {
    event: StoredEvent,
    /// Exported on its own, or found inside a workflow's trace: nothing more to do.
    decided: bool,
}

/// Traces on their way: workflows waiting to settle, freezes waiting for a decision.
#[derive(Debug)]
pub struct Traces {
    settle_ns: i64,
    freeze_hold_ns: i64,
    /// Freezes detected before this are history: never exported on their own.
    run_started_ns: i64,
    waiting: VecDeque<(CompletedWorkflow, i64)>,
    freezes: BTreeMap<i64, Known>,
}

/// What one call produced.
#[derive(Debug, Default)]
pub struct Built {
    pub spans: Vec<Span>,
    pub workflows: usize,
    pub freezes_alone: usize,
}

impl Traces {
    pub fn new(settle_ns: i64, freeze_hold_ns: i64, run_started_ns: i64) -> Traces {
        Traces {
            settle_ns,
            freeze_hold_ns,
            run_started_ns,
            waiting: VecDeque::new(),
            freezes: BTreeMap::new(),
        }
    }

    /// Queues a finished workflow whose gaps of at least `gap_min_ns` are shown; returns
    /// the spans lost to make room (the oldest waiting workflow's), if any.
    pub fn add_workflow(&mut self, w: CompletedWorkflow, gap_min_ns: i64) -> u64 {
        let mut dropped = 0;
        if self.waiting.len() >= MAX_WAITING_WORKFLOWS {
            if let Some((old, _)) = self.waiting.pop_front() {
                dropped = 1 + old.steps.len() as u64;
            }
        }
        self.waiting.push_back((w, gap_min_ns));
        dropped
    }

    /// Learns freezes from the state DB (seen before or not).
    pub fn add_freezes(&mut self, events: Vec<StoredEvent>) {
        for event in events {
            let history = event.detected_at_ns < self.run_started_ns;
            self.freezes.entry(event.id).or_insert(Known {
                event,
                decided: history,
            });
        }
        while self.freezes.len() > MAX_KNOWN_FREEZES {
            self.freezes.pop_first();
        }
    }

    /// Workflows and freezes waiting (for tests and shutdown).
    pub fn pending(&self) -> (usize, usize) {
        (
            self.waiting.len(),
            self.freezes.values().filter(|k| !k.decided).count(),
        )
    }

    /// Builds what is due at `now_ns` (everything when `all`, at shutdown).
    /// `buffered_since` holds, per source, the earliest start of a workflow it still
    /// buffers.
    pub fn build(&mut self, now_ns: i64, buffered_since: &[Option<i64>], all: bool) -> Built {
        let mut built = Built::default();
        let any_due = self
            .waiting
            .iter()
            .any(|(w, _)| all || w.end_ns().max(w.noticed_ns) + self.settle_ns <= now_ns);
        let known: Vec<StoredEvent> = if any_due {
            self.freezes.values().map(|k| k.event.clone()).collect()
        } else {
            Vec::new()
        };
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        for (w, gap_min_ns) in self.waiting.drain(..) {
            let due = w.end_ns().max(w.noticed_ns) + self.settle_ns <= now_ns;
            if !(due || all) {
                keep.push_back((w, gap_min_ns));
                continue;
            }
            let (start, end) = (w.start_ns(), w.end_ns());
            for k in self.freezes.values_mut() {
                if overlaps(&k.event, start, end) {
                    k.decided = true;
                }
            }
            built.spans.extend(workflow_trace(&w, &known, gap_min_ns));
            built.workflows += 1;
        }
        self.waiting = keep;

        for k in self.freezes.values_mut().filter(|k| !k.decided) {
            let f = &k.event.event;
            let end = f.started_at_ns + f.duration_ns.max(0);
            if !(all || end + self.freeze_hold_ns <= now_ns) {
                continue;
            }
            // At shutdown the waiting workflows are built already; buffered ones will
            // not finish in this run.
            let trace_to_come = self
                .waiting
                .iter()
                .any(|(w, _)| overlaps(&k.event, w.start_ns(), w.end_ns()))
                || buffered_since
                    .iter()
                    .flatten()
                    .any(|since| *since <= end && f.kind.is_lost_time());
            if trace_to_come && !all && now_ns < end + FREEZE_MAX_WAIT_NS {
                continue;
            }
            k.decided = true;
            built.spans.extend(freeze_trace(&k.event));
            built.freezes_alone += 1;
        }
        self.freezes.retain(|_, k| {
            let f = &k.event.event;
            !k.decided || f.started_at_ns + f.duration_ns.max(0) + FREEZE_RETENTION_NS > now_ns
        });
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeze::{ChannelEstimate, FreezeEvent, FreezeKind};
    use crate::otlp::workflows::TracedStep;

    const S: i64 = 1_000_000_000;
    const SETTLE: i64 = 4 * S;
    const HOLD: i64 = 10 * S;

    fn workflow(id: &str, start_s: i64, end_s: i64, noticed_s: i64) -> CompletedWorkflow {
        CompletedWorkflow {
            source: "app".into(),
            workflow_id: id.into(),
            workflow_name: "ingest".into(),
            queue: String::new(),
            created_ns: None,
            recovery_attempts: 0,
            steps: vec![TracedStep {
                step: "work".into(),
                started_ns: start_s * S,
                completed_ns: end_s * S,
                deadline_ns: None,
            }],
            dropped_steps: 0,
            noticed_ns: noticed_s * S,
        }
    }

    fn freeze(id: i64, start_s: i64, duration_s: i64, detected_s: i64) -> StoredEvent {
        StoredEvent {
            id,
            detected_at_ns: detected_s * S,
            event: FreezeEvent {
                kind: FreezeKind::ProcessStall,
                started_at_ns: start_s * S,
                duration_ns: duration_s * S,
                channels: vec![ChannelEstimate {
                    channel: "tick".into(),
                    estimate_ns: duration_s * S,
                }],
            },
        }
    }

    fn names(b: &Built) -> Vec<&str> {
        b.spans.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_workflow_waits_to_settle_and_then_shows_its_freeze_which_is_not_sent_again() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        t.add_workflow(workflow("w", 100, 110, 112), 2 * S);
        t.add_freezes(vec![freeze(1, 103, 3, 108)]);
        assert!(
            t.build(115 * S, &[None], false).spans.is_empty(),
            "112 + 4 > 115"
        );
        let b = t.build(116 * S, &[None], false);
        assert_eq!(names(&b), ["ingest", "work", "freeze"]);
        let later = t.build(200 * S, &[None], false);
        assert!(later.spans.is_empty(), "{:?}", names(&later));
    }

    #[test]
    fn a_freeze_no_workflow_overlaps_is_a_trace_of_its_own_after_the_hold() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        t.add_freezes(vec![freeze(1, 100, 3, 105)]);
        assert!(t.build(112 * S, &[None], false).spans.is_empty());
        let b = t.build(113 * S, &[None], false);
        assert_eq!((names(&b), b.freezes_alone), (vec!["freeze"], 1));
        // Seen again in the next read of the state DB: not sent twice.
        t.add_freezes(vec![freeze(1, 100, 3, 105)]);
        assert!(t.build(114 * S, &[None], false).spans.is_empty());
    }

    #[test]
    fn a_freeze_over_a_workflow_still_running_waits_for_that_workflow() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        t.add_freezes(vec![freeze(1, 100, 3, 105)]);
        // A source still buffers a workflow that started at 90 s.
        let b = t.build(200 * S, &[None, Some(90 * S)], false);
        assert!(b.spans.is_empty());
        t.add_workflow(workflow("w", 90, 300, 301), 2 * S);
        let b = t.build(310 * S, &[None, None], false);
        assert_eq!(names(&b), ["ingest", "work", "freeze"]);
    }

    #[test]
    fn a_workflow_that_never_finishes_does_not_hide_a_freeze_for_long() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        t.add_freezes(vec![freeze(1, 100, 3, 105)]);
        let stuck = [Some(50 * S)];
        let almost = 103 * S + FREEZE_MAX_WAIT_NS - 1;
        assert!(t.build(almost, &stuck, false).spans.is_empty());
        let b = t.build(almost + 1, &stuck, false);
        assert_eq!((names(&b), b.freezes_alone), (vec!["freeze"], 1));
        assert!(t.build(almost + 2, &stuck, false).spans.is_empty());
    }

    #[test]
    fn a_freeze_recorded_after_an_overlapping_trace_was_built_still_goes_out() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        t.add_workflow(workflow("w", 100, 110, 110), 2 * S);
        assert_eq!(t.build(120 * S, &[None], false).workflows, 1);
        t.add_freezes(vec![freeze(1, 105, 3, 125)]);
        let b = t.build(125 * S, &[None], false);
        assert_eq!(names(&b), ["freeze"]);
    }

    #[test]
    fn freezes_from_before_this_run_only_appear_inside_workflows() {
        let mut t = Traces::new(SETTLE, HOLD, 1_000 * S);
        t.add_freezes(vec![freeze(1, 100, 3, 105)]);
        assert!(t.build(2_000 * S, &[None], false).spans.is_empty());
    }

    #[test]
    fn at_shutdown_everything_waiting_is_built() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        t.add_workflow(workflow("w", 100, 110, 110), 2 * S);
        t.add_freezes(vec![freeze(1, 200, 3, 204)]);
        let b = t.build(111 * S, &[None], true);
        assert_eq!(names(&b), ["ingest", "work", "freeze"]);
        assert_eq!(t.pending(), (0, 0));
    }

    #[test]
    fn the_waiting_line_is_bounded() {
        let mut t = Traces::new(SETTLE, HOLD, 0);
        let mut dropped = 0;
        for i in 0..MAX_WAITING_WORKFLOWS + 2 {
            dropped += t.add_workflow(workflow(&format!("w{i}"), 1, 2, 3), 2 * S);
        }
        assert_eq!(dropped, 4, "two workflows of one root and one step each");
        assert_eq!(t.pending().0, MAX_WAITING_WORKFLOWS);
    }
}
