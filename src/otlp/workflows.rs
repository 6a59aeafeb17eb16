//! Which workflows finished, with every row they wrote. Pure: one source's polls in
//! (completed rows, open workflows, `now`), completed workflows out.
//!
//! A source sees a workflow through its rows (`operation_outputs`, written as each step
//! ends) and through the open set (`workflow_status` PENDING). A workflow is **complete**
//! once it has been out of the open set and written no row for [`COMPLETION_POLLS`]
//! polls in a row: one poll is not enough, because a poll reads rows before it reads the
//! open set, so a workflow that writes its last row and finishes between the two reads
//! looks finished one poll before its last row is seen.
//!
//! Only workflows this run watched are traced. A row that completed before the first
//! poll, of a workflow not open and not buffered, is history a source reads on start-up
//! (a workflow that finished while the sidecar was down, or that the previous run
//! exported already): it is skipped, so a restart does not export old traces again.
//!
//! Bounded: [`MAX_TRACED_WORKFLOWS`] workflows, [`MAX_STEPS_PER_WORKFLOW`] rows each,
//! [`MAX_BUFFERED_STEPS`] rows in all. What does not fit is dropped and counted as spans
//! lost; a workflow refused for room is not traced at all (no partial trace of it).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::signals::steps::{OpenWorkflow, StepRow};

/// Consecutive polls a workflow must be out of the open set, writing nothing, before it
/// counts as complete (see the module doc for why one is not enough).
pub const COMPLETION_POLLS: u32 = 2;
/// Workflows buffered per source; each costs a few hundred bytes plus its rows.
pub const MAX_TRACED_WORKFLOWS: usize = 1_000;
/// Rows kept per workflow: a trace with more steps than this is no longer readable.
pub const MAX_STEPS_PER_WORKFLOW: usize = 500;
/// Rows buffered per source across all workflows (about 100 bytes each: a few MB).
pub const MAX_BUFFERED_STEPS: usize = 20_000;
/// Finished (or refused) workflow ids remembered, so their late rows are not taken for
/// a new workflow.
pub const MAX_REMEMBERED_IDS: usize = 10_000;

/// One row of a workflow, without the workflow's own fields repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedStep {
    pub step: String,
    pub started_ns: i64,
    pub completed_ns: i64,
    pub deadline_ns: Option<i64>,
}

/// A workflow that finished, with the rows it wrote (in the order they were seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedWorkflow {
    pub source: String,
    pub workflow_id: String,
    pub workflow_name: String,
    /// Its queue ("" when not enqueued, or never seen open).
    pub queue: String,
    /// When it started running, from the open set, if it was seen open.
    pub created_ns: Option<i64>,
    pub recovery_attempts: i64,
    pub steps: Vec<TracedStep>,
    /// Rows it wrote beyond the buffer's bounds, not in `steps`.
    pub dropped_steps: u64,
    /// When its completion was noticed (wall clock): it may be long after its last row
    /// when the sidecar itself was stopped.
    pub noticed_ns: i64,
}

impl CompletedWorkflow {
    /// Its start: when it started running, or its first row's start.
    pub fn start_ns(&self) -> i64 {
        let first = self.steps.iter().map(|s| s.started_ns).min();
        match (self.created_ns, first) {
            (Some(c), Some(f)) => c.min(f),
            (c, f) => c.or(f).unwrap_or(self.noticed_ns),
        }
    }

    /// Its end: its last row's end (DBOS does not say when a workflow returned).
    pub fn end_ns(&self) -> i64 {
        self.steps
            .iter()
            .map(|s| s.completed_ns)
            .max()
            .unwrap_or_else(|| self.start_ns())
            .max(self.start_ns())
    }

    /// Its rows as [`StepRow`]s, in the order they completed (what `GapTracker` needs).
    pub fn rows_in_completion_order(&self) -> Vec<StepRow> {
        let mut rows: Vec<StepRow> = self
            .steps
            .iter()
            .map(|s| StepRow {
                workflow_id: self.workflow_id.clone(),
                workflow_name: self.workflow_name.clone(),
                step: s.step.clone(),
                started_ns: s.started_ns,
                completed_ns: s.completed_ns,
                deadline_ns: s.deadline_ns,
            })
            .collect();
        rows.sort_by_key(|r| (r.completed_ns, r.started_ns));
        rows
    }
}

#[derive(Debug)]
struct Tracked {
    workflow_name: String,
    queue: String,
    created_ns: Option<i64>,
    recovery_attempts: i64,
    steps: Vec<TracedStep>,
    dropped_steps: u64,
    seen_open: bool,
    /// Consecutive polls out of the open set with no new row.
    quiet_polls: u32,
}

/// A bounded set that forgets its oldest members first.
#[derive(Debug, Default)]
struct Remembered {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Remembered {
    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > MAX_REMEMBERED_IDS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// What one poll produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub completed: Vec<CompletedWorkflow>,
    /// Spans that will never be exported: rows (and roots) beyond the bounds.
    pub dropped_spans: u64,
}

/// One source's workflows between their first row and their completion.
#[derive(Debug)]
pub struct WorkflowBuffer {
    source: String,
    tracked: HashMap<String, Tracked>,
    buffered_steps: usize,
    finished: Remembered,
    refused: Remembered,
    /// `now` of the first poll: rows completed before it are history.
    watch_start_ns: Option<i64>,
}

impl WorkflowBuffer {
    pub fn new(source: &str) -> WorkflowBuffer {
        WorkflowBuffer {
            source: source.to_string(),
            tracked: HashMap::new(),
            buffered_steps: 0,
            finished: Remembered::default(),
            refused: Remembered::default(),
            watch_start_ns: None,
        }
    }

    /// Feeds one poll: the rows completed since the last one and the open set.
    /// `open_complete` is false when the source capped the open set (then absence from
    /// it proves nothing and no workflow completes this poll).
    pub fn observe(
        &mut self,
        rows: &[StepRow],
        open: &[OpenWorkflow],
        open_complete: bool,
        now_ns: i64,
    ) -> Observed {
        let watch_start = *self.watch_start_ns.get_or_insert(now_ns);
        let mut out = Observed::default();
        let mut active: HashSet<&str> = HashSet::new();
        for w in open {
            active.insert(&w.workflow_id);
            let Some(t) = self.admit(&w.workflow_id, &w.workflow_name, false, &mut out) else {
                continue;
            };
            t.seen_open = true;
            t.created_ns = Some(w.created_ns);
            t.queue.clone_from(&w.queue);
            t.recovery_attempts = w.recovery_attempts;
        }
        for row in rows {
            let history = row.completed_ns < watch_start
                && !active.contains(row.workflow_id.as_str())
                && !self.tracked.contains_key(&row.workflow_id);
            if history {
                // Finished before this run watched it: not ours to trace.
                continue;
            }
            active.insert(&row.workflow_id);
            let room = self.buffered_steps < MAX_BUFFERED_STEPS;
            let Some(t) = self.admit(&row.workflow_id, &row.workflow_name, true, &mut out) else {
                continue;
            };
            if !room || t.steps.len() >= MAX_STEPS_PER_WORKFLOW {
                t.dropped_steps += 1;
                out.dropped_spans += 1;
                continue;
            }
            t.steps.push(TracedStep {
                step: row.step.clone(),
                started_ns: row.started_ns,
                completed_ns: row.completed_ns,
                deadline_ns: row.deadline_ns,
            });
            self.buffered_steps += 1;
        }
        let mut done = Vec::new();
        for (id, t) in &mut self.tracked {
            if active.contains(id.as_str()) {
                t.quiet_polls = 0;
            } else if open_complete {
                t.quiet_polls += 1;
                if t.quiet_polls >= COMPLETION_POLLS {
                    done.push(id.clone());
                }
            }
        }
        done.sort();
        for id in done {
            let Some(t) = self.tracked.remove(&id) else {
                continue;
            };
            self.buffered_steps -= t.steps.len();
            self.finished.insert(&id);
            if t.steps.is_empty() {
                // Open, then gone without a row: nothing to show.
                continue;
            }
            out.completed.push(CompletedWorkflow {
                source: self.source.clone(),
                workflow_id: id,
                workflow_name: t.workflow_name,
                queue: t.queue,
                created_ns: t.created_ns,
                recovery_attempts: t.recovery_attempts,
                steps: t.steps,
                dropped_steps: t.dropped_steps,
                noticed_ns: now_ns,
            });
        }
        out
    }

    /// The earliest start of a workflow still buffered: a freeze that ended after it
    /// overlaps a workflow whose trace is still to come.
    pub fn oldest_start_ns(&self) -> Option<i64> {
        self.tracked
            .values()
            .filter_map(|t| {
                let first = t.steps.iter().map(|s| s.started_ns).min();
                match (t.created_ns, first) {
                    (Some(c), Some(f)) => Some(c.min(f)),
                    (c, f) => c.or(f),
                }
            })
            .min()
    }

    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// The buffer entry of a workflow, made if there is room; `None` for one finished
    /// already or refused for room. What that loses is counted: a refused workflow's
    /// root span once, and each `row` of it.
    fn admit(
        &mut self,
        id: &str,
        name: &str,
        row: bool,
        out: &mut Observed,
    ) -> Option<&mut Tracked> {
        if self.finished.contains(id) {
            // A row that committed after its workflow was exported, or a workflow seen
            // open again (re-enqueued after a crash): its trace is already out.
            out.dropped_spans += u64::from(row);
            return None;
        }
        if self.refused.contains(id) {
            out.dropped_spans += u64::from(row);
            return None;
        }
        if !self.tracked.contains_key(id) && self.tracked.len() >= MAX_TRACED_WORKFLOWS {
            self.refused.insert(id);
            out.dropped_spans += 1 + u64::from(row);
            return None;
        }
        let t = self
            .tracked
            .entry(id.to_string())
            .or_insert_with(|| Tracked {
                workflow_name: name.to_string(),
                queue: String::new(),
                created_ns: None,
                recovery_attempts: 0,
                steps: Vec::new(),
                dropped_steps: 0,
                seen_open: false,
                quiet_polls: 0,
            });
        if t.workflow_name.is_empty() {
            t.workflow_name = name.to_string();
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn row(id: &str, step: &str, started_s: i64, completed_s: i64) -> StepRow {
        StepRow {
            workflow_id: id.into(),
            workflow_name: "digest".into(),
            step: step.into(),
            started_ns: started_s * S,
            completed_ns: completed_s * S,
            deadline_ns: None,
        }
    }

    fn open(id: &str, created_s: i64) -> OpenWorkflow {
        OpenWorkflow {
            workflow_id: id.into(),
            workflow_name: "digest".into(),
            queue: "q".into(),
            created_ns: created_s * S,
            last_completed_ns: None,
            wait_deadline_ns: None,
            in_wait: false,
            recovery_attempts: 1,
        }
    }

    #[test]
    fn a_workflow_completes_after_two_quiet_polls_out_of_the_open_set() {
        let mut b = WorkflowBuffer::new("app");
        assert_eq!(b.observe(&[], &[], true, 100 * S), Observed::default());
        let o = b.observe(&[row("w", "a", 100, 101)], &[open("w", 99)], true, 102 * S);
        assert!(o.completed.is_empty());
        // Finished between the row query and the open query: its last row comes next poll.
        let o = b.observe(&[], &[], true, 103 * S);
        assert!(o.completed.is_empty());
        let o = b.observe(&[row("w", "b", 102, 103)], &[], true, 104 * S);
        assert!(o.completed.is_empty(), "a row this poll: not quiet");
        assert!(b.observe(&[], &[], true, 105 * S).completed.is_empty());
        let o = b.observe(&[], &[], true, 106 * S);
        assert_eq!(o.completed.len(), 1);
        let w = &o.completed[0];
        assert_eq!(
            (w.workflow_id.as_str(), w.queue.as_str(), w.steps.len()),
            ("w", "q", 2)
        );
        assert_eq!((w.start_ns(), w.end_ns()), (99 * S, 103 * S));
        assert_eq!(w.noticed_ns, 106 * S);
        assert_eq!(b.tracked(), 0);
        // A late row of a finished workflow does not start a new one: it is lost.
        let o = b.observe(&[row("w", "c", 103, 104)], &[], true, 107 * S);
        assert_eq!((o.completed.len(), o.dropped_spans), (0, 1));
        assert_eq!(b.tracked(), 0);
    }

    #[test]
    fn history_read_on_start_up_is_not_traced() {
        let mut b = WorkflowBuffer::new("app");
        let old = [row("old", "a", 10, 11), row("old", "b", 11, 12)];
        b.observe(&old, &[], true, 100 * S);
        b.observe(&[], &[], true, 101 * S);
        assert!(b.observe(&[], &[], true, 102 * S).completed.is_empty());
        // A short workflow that ran entirely between two polls after start is traced.
        b.observe(&[row("new", "a", 103, 104)], &[], true, 105 * S);
        b.observe(&[], &[], true, 106 * S);
        let o = b.observe(&[], &[], true, 107 * S);
        assert_eq!(o.completed.len(), 1);
        assert_eq!(o.completed[0].created_ns, None);
    }

    #[test]
    fn a_capped_open_set_completes_nothing() {
        let mut b = WorkflowBuffer::new("app");
        b.observe(&[row("w", "a", 1, 2)], &[open("w", 1)], true, 0);
        for t in 3..10 {
            assert!(b.observe(&[], &[], false, t * S).completed.is_empty());
        }
        assert_eq!(b.tracked(), 1);
    }

    #[test]
    fn bounds_drop_and_count_instead_of_growing() {
        let mut b = WorkflowBuffer::new("app");
        let many: Vec<StepRow> = (0..MAX_STEPS_PER_WORKFLOW as i64 + 3)
            .map(|i| row("big", "s", i, i + 1))
            .collect();
        let o = b.observe(&many, &[open("big", 0)], true, 0);
        assert_eq!(o.dropped_spans, 3);
        let opens: Vec<OpenWorkflow> = (0..MAX_TRACED_WORKFLOWS + 2)
            .map(|i| open(&format!("w{i}"), 0))
            .collect();
        let o = b.observe(&[], &opens, true, S);
        assert_eq!(b.tracked(), MAX_TRACED_WORKFLOWS);
        assert_eq!(o.dropped_spans, 3, "three refused roots");
        // A refused workflow's rows are counted too, and never make a partial trace.
        let id = format!("w{}", MAX_TRACED_WORKFLOWS + 1);
        let o = b.observe(&[row(&id, "a", 1, 2)], &opens, true, 2 * S);
        assert_eq!(
            o.dropped_spans, 1,
            "only the row: its root was counted when refused"
        );
    }

    #[test]
    fn oldest_start_covers_workflows_still_running() {
        let mut b = WorkflowBuffer::new("app");
        assert_eq!(b.oldest_start_ns(), None);
        b.observe(&[row("a", "x", 50, 51)], &[open("b", 40)], true, 60 * S);
        assert_eq!(b.oldest_start_ns(), Some(40 * S));
    }
}
