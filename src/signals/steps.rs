//! Step gaps and stalls from an app's own step records.
//!
//! A **gap** is the time from the end of a workflow's last activity to the start of its
//! next step, or of its next wait (the wait's `DBOS.sleep` placeholder row: a wait that
//! begins late is a gap too — the founding incident's `parse_email` → `DBOS.recv` shape).
//! Intended waits (`DBOS.recv`, `DBOS.sleep`, `DBOS.getEvent`) are activity: their span
//! moves the end forward, so a 60 s debounce is not a 60 s gap. Rows must be
//! fed in the order they completed. A **stall** is a workflow still pending whose last
//! progress is older than `stall_after`.

use std::collections::{HashMap, HashSet};

/// Step names whose span is an intended wait, not work.
pub const INTENDED_WAITS: &[&str] = &["DBOS.recv", "DBOS.sleep", "DBOS.getEvent", "DBOS.get_event"];
/// Workflows remembered for gap tracking; the least recently active are forgotten first.
pub const MAX_TRACKED_WORKFLOWS: usize = 10_000;

pub fn is_intended_wait(step: &str) -> bool {
    INTENDED_WAITS.contains(&step)
}

/// One completed step as the app recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub workflow_id: String,
    pub workflow_name: String,
    pub step: String,
    pub started_ns: i64,
    pub completed_ns: i64,
    /// For a wait's placeholder row (`DBOS.sleep`, whose output is the deadline): when
    /// the wait is due to end.
    pub deadline_ns: Option<i64>,
}

/// The step name of DBOS's wait placeholder: written when a wait starts, its output
/// is the wait's deadline.
pub const WAIT_PLACEHOLDER: &str = "DBOS.sleep";

/// What kind of unexplained time a [`Gap`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// Between the end of one step (or wait) and the start of the next step.
    Step,
    /// An intended wait that ended after its deadline: the process or machine was not
    /// running when it should have woken. Shows no gap between steps at all.
    WaitOverrun,
}

/// Time between two steps of one workflow that no intended wait explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub kind: GapKind,
    pub workflow_id: String,
    pub workflow_name: String,
    pub from_step: String,
    pub to_step: String,
    pub start_ns: i64,
    pub end_ns: i64,
}

impl Gap {
    pub fn duration_ns(&self) -> i64 {
        self.end_ns - self.start_ns
    }
}

#[derive(Debug, Clone)]
struct Activity {
    end_ns: i64,
    last_step: String,
    /// Deadline of the wait in progress, from its placeholder row.
    deadline_ns: Option<i64>,
}

/// Remembers each workflow's last activity and reports the gap before each new step.
#[derive(Debug, Default)]
pub struct GapTracker {
    workflows: HashMap<String, Activity>,
}

impl GapTracker {
    /// Feeds one completed row; returns the gap before it if it is a step (not a wait)
    /// that follows earlier activity of the same workflow, or the overrun if it is a
    /// wait that ended after the deadline its placeholder announced.
    pub fn observe(&mut self, row: &StepRow) -> Option<Gap> {
        if self.workflows.len() >= MAX_TRACKED_WORKFLOWS
            && !self.workflows.contains_key(&row.workflow_id)
        {
            self.forget_oldest();
        }
        let fresh = !self.workflows.contains_key(&row.workflow_id);
        let activity = self
            .workflows
            .entry(row.workflow_id.clone())
            .or_insert_with(|| Activity {
                end_ns: row.completed_ns,
                last_step: row.step.clone(),
                deadline_ns: None,
            });
        let gap = |kind, from_step: &str, start_ns: i64, end_ns: i64| Gap {
            kind,
            workflow_id: row.workflow_id.clone(),
            workflow_name: row.workflow_name.clone(),
            from_step: from_step.to_string(),
            to_step: row.step.clone(),
            start_ns,
            end_ns,
        };
        let found = if row.step == WAIT_PLACEHOLDER && row.deadline_ns.is_some() {
            activity.deadline_ns = row.deadline_ns;
            (!fresh).then(|| {
                gap(
                    GapKind::Step,
                    &activity.last_step,
                    activity.end_ns,
                    row.started_ns.max(activity.end_ns),
                )
            })
        } else if is_intended_wait(&row.step) {
            activity
                .deadline_ns
                .take()
                .filter(|deadline| row.completed_ns > *deadline)
                .map(|deadline| gap(GapKind::WaitOverrun, &row.step, deadline, row.completed_ns))
        } else if fresh {
            None
        } else {
            Some(gap(
                GapKind::Step,
                &activity.last_step,
                activity.end_ns,
                row.started_ns.max(activity.end_ns),
            ))
        };
        if !fresh {
            activity.end_ns = activity.end_ns.max(row.completed_ns);
            activity.last_step = row.step.clone();
        }
        found
    }

    /// Forgets a workflow that finished (its next row, if any, starts fresh).
    pub fn forget(&mut self, workflow_id: &str) {
        self.workflows.remove(workflow_id);
    }

    /// Forgets the workflows that are no longer open and have had no step since
    /// `quiet_since_ns`: they finished, and their last rows have been read (the caller
    /// picks `quiet_since_ns` past its read overlap). Without this the tracker holds
    /// every workflow it ever saw until the cap, so memory grows with workflows seen.
    pub fn forget_finished(&mut self, open: &HashSet<&str>, quiet_since_ns: i64) {
        self.workflows
            .retain(|id, a| open.contains(id.as_str()) || a.end_ns >= quiet_since_ns);
    }

    pub fn tracked(&self) -> usize {
        self.workflows.len()
    }

    fn forget_oldest(&mut self) {
        let mut ends: Vec<i64> = self.workflows.values().map(|a| a.end_ns).collect();
        let cut = ends.len() / 10;
        let (_, threshold, _) = ends.select_nth_unstable(cut);
        let threshold = *threshold;
        self.workflows.retain(|_, a| a.end_ns > threshold);
    }
}

/// A workflow the app still has open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWorkflow {
    pub workflow_id: String,
    pub workflow_name: String,
    /// The queue it runs on ("" when it was not enqueued).
    pub queue: String,
    /// When it started running (dispatched from its queue), else when it was created.
    pub created_ns: i64,
    /// End of its latest completed row.
    pub last_completed_ns: Option<i64>,
    /// Deadline of its latest wait (from the `DBOS.sleep` placeholder), if it has waited.
    pub wait_deadline_ns: Option<i64>,
    /// It is inside that wait now (a receive whose own row is not written yet).
    pub in_wait: bool,
    /// How many times the app has recovered it after a crash.
    pub recovery_attempts: i64,
}

impl OpenWorkflow {
    /// Its last progress: the latest completed row, or the deadline of a wait it is in
    /// (a workflow inside a wait is making progress until the deadline).
    pub fn last_progress_ns(&self) -> Option<i64> {
        self.last_completed_ns.max(self.wait_deadline_ns)
    }

    /// How far past its wait's deadline it is at `now_ns`, if it is still inside the wait.
    pub fn overdue_ns(&self, now_ns: i64) -> Option<i64> {
        let deadline = self.wait_deadline_ns.filter(|_| self.in_wait)?;
        (now_ns > deadline).then_some(now_ns - deadline)
    }

    /// Since when it has made no progress.
    pub fn idle_since_ns(&self) -> i64 {
        self.last_progress_ns()
            .map_or(self.created_ns, |p| p.max(self.created_ns))
    }
}

/// A queue whose running workflows have all made no progress for `stall_after` while
/// others wait behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedQueue {
    pub queue: String,
    /// The running workflow idle the longest: the one holding the queue.
    pub blocking_workflow_id: String,
    pub blocking_workflow_name: String,
    pub idle_since_ns: i64,
    pub waiting: u64,
}

/// Queues (by name) with `enqueued` workflows waiting whose every open (running)
/// workflow is stalled. A queue with no running workflow is not blocked by one.
pub fn blocked_queues(
    open: &[OpenWorkflow],
    enqueued: &[(String, u64)],
    now_ns: i64,
    stall_after_ns: i64,
) -> Vec<BlockedQueue> {
    let mut out = Vec::new();
    for (queue, waiting) in enqueued.iter().filter(|(q, n)| *n > 0 && !q.is_empty()) {
        let running: Vec<&OpenWorkflow> = open.iter().filter(|w| &w.queue == queue).collect();
        let all_stalled = !running.is_empty()
            && running
                .iter()
                .all(|w| now_ns - w.idle_since_ns() > stall_after_ns);
        if let (true, Some(holder)) = (
            all_stalled,
            running.iter().min_by_key(|w| w.idle_since_ns()),
        ) {
            out.push(BlockedQueue {
                queue: queue.clone(),
                blocking_workflow_id: holder.workflow_id.clone(),
                blocking_workflow_name: holder.workflow_name.clone(),
                idle_since_ns: holder.idle_since_ns(),
                waiting: *waiting,
            });
        }
    }
    out
}

/// A sidecar clock this far ahead of the newest time the app wrote (advanced by the
/// monotonic time since it was read) is taken to be wrong, not the app to be idle: a clock
/// a day ahead at start must not make every pending workflow "stalled for 1d". An hour:
/// far above the lag of a poll, and an app silent for longer before a start has its
/// stalls counted from the newest time it wrote.
pub const CLOCK_AHEAD_OF_APP_NS: i64 = 3_600 * 1_000_000_000;

/// Less than this between the app-frame idle time and the wall clock's is read jitter,
/// not a clock step: the workflow's times are used as written.
pub const CLOCKS_AGREE_NS: i64 = 1_000_000_000;

/// How long open workflows have made no progress, measured so that a wall-clock step
/// either way neither invents nor erases stall time (issue 14). Pure: clocks are passed in.
///
/// A workflow's idle time is read once, when it is first seen with its latest progress,
/// in the app's frame (the sidecar's clock, or the newest time the app wrote plus the
/// monotonic time since, when the sidecar's clock is more than [`CLOCK_AHEAD_OF_APP_NS`]
/// ahead of that); from then on it grows with the monotonic clock only. A wall step
/// either way changes nothing already seen. Progress stamped ahead of now counts from
/// that time, as DBOS stamps a sleep with its wake time: a workflow last stamped by a
/// clock that was ahead (and has been stepped back) is not stalled before that time.
#[derive(Debug, Default)]
pub struct StallClock {
    /// max(time the app wrote − monotonic time it was read): the app's clock, on ours.
    app_minus_mono: Option<i64>,
    /// Per open workflow: its progress mark, the monotonic time it was first seen with
    /// it, and its idle time then.
    seen: HashMap<String, (i64, i64, i64)>,
}

impl StallClock {
    /// `open` with every time moved so that [`OpenWorkflow::idle_since_ns`] is `now_ns`
    /// minus its idle time. `written_ns`: times the app wrote in this poll (rows read,
    /// workflows created) that are not past `now_ns` (a wake time is not a write time).
    pub fn rebase(
        &mut self,
        open: &[OpenWorkflow],
        written_ns: impl IntoIterator<Item = i64>,
        now_ns: i64,
        mono_ns: i64,
    ) -> Vec<OpenWorkflow> {
        for t in written_ns.into_iter().filter(|t| *t <= now_ns) {
            let v = t.saturating_sub(mono_ns);
            self.app_minus_mono = Some(self.app_minus_mono.map_or(v, |best| best.max(v)));
        }
        let app_now = match self.app_minus_mono.map(|v| v.saturating_add(mono_ns)) {
            Some(app) if now_ns.saturating_sub(app) >= CLOCK_AHEAD_OF_APP_NS => app,
            _ => now_ns,
        };
        let mut seen = HashMap::with_capacity(open.len());
        let rebased = open
            .iter()
            .map(|w| {
                let mark = w.idle_since_ns();
                let (_, first_mono, first_idle) = match self.seen.get(&w.workflow_id) {
                    Some(e) if e.0 == mark => *e,
                    // Negative while a wait's deadline or a sleep's wake time is ahead.
                    _ => (mark, mono_ns, app_now.saturating_sub(mark)),
                };
                seen.insert(w.workflow_id.clone(), (mark, first_mono, first_idle));
                let watched = mono_ns.saturating_sub(first_mono).max(0);
                let idle = first_idle.saturating_add(watched);
                // Within a second the clocks agree (their reads are a poll apart): the app's
                // own times stay exactly as written, so a live episode keeps its start.
                let delta = match now_ns.saturating_sub(idle).saturating_sub(mark) {
                    d if d.abs() < CLOCKS_AGREE_NS => 0,
                    d => d,
                };
                OpenWorkflow {
                    created_ns: w.created_ns.saturating_add(delta),
                    last_completed_ns: w.last_completed_ns.map(|t| t.saturating_add(delta)),
                    wait_deadline_ns: w.wait_deadline_ns.map(|t| t.saturating_add(delta)),
                    ..w.clone()
                }
            })
            .collect();
        self.seen = seen;
        rebased
    }
}

/// Open workflows idle for longer than `stall_after_ns` at `now_ns`.
pub fn stalled(open: &[OpenWorkflow], now_ns: i64, stall_after_ns: i64) -> Vec<&OpenWorkflow> {
    open.iter()
        .filter(|w| now_ns - w.idle_since_ns() > stall_after_ns)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;

    fn row(step: &str, started_ms: i64, completed_ms: i64) -> StepRow {
        StepRow {
            workflow_id: "w1".into(),
            workflow_name: "reply".into(),
            step: step.into(),
            started_ns: started_ms * MS,
            completed_ns: completed_ms * MS,
            deadline_ns: None,
        }
    }

    fn placeholder(started_ms: i64, deadline_ms: i64) -> StepRow {
        StepRow {
            deadline_ns: Some(deadline_ms * MS),
            ..row("DBOS.sleep", started_ms, started_ms + 1)
        }
    }

    #[test]
    fn a_wait_that_ends_past_its_deadline_is_an_overrun_not_a_gap() {
        // Frozen 8 s in the middle of a 2 s recv: no gap between steps, the wait overruns.
        let mut t = GapTracker::default();
        t.observe(&row("parse", 0, 100));
        let begun = t.observe(&placeholder(105, 2_105)).unwrap();
        assert_eq!((begun.kind, begun.duration_ns()), (GapKind::Step, 5 * MS));
        let o = t.observe(&row("DBOS.recv", 104, 10_105)).unwrap();
        assert_eq!(
            (o.kind, o.start_ns, o.duration_ns()),
            (GapKind::WaitOverrun, 2_105 * MS, 8_000 * MS)
        );
        let g = t.observe(&row("generate", 10_110, 10_300)).unwrap();
        assert_eq!((g.kind, g.duration_ns()), (GapKind::Step, 5 * MS));
    }

    /// The founding incident's shape on a machine whose clock is set right only after a
    /// restore: `parse` ends, the machine stops, the clock is stepped, the wait begins.
    #[test]
    fn a_wait_that_begins_late_is_a_gap_before_it() {
        let mut t = GapTracker::default();
        t.observe(&row("parse", 0, 100));
        let g = t.observe(&placeholder(6_432_100, 6_492_100)).unwrap();
        assert_eq!(
            (
                g.kind,
                g.from_step.as_str(),
                g.to_step.as_str(),
                g.duration_ns()
            ),
            (GapKind::Step, "parse", "DBOS.sleep", 6_432_000 * MS)
        );
        assert_eq!(t.observe(&row("DBOS.recv", 6_432_099, 6_440_000)), None);
    }

    #[test]
    fn a_wait_answered_before_its_deadline_is_nothing() {
        let mut t = GapTracker::default();
        t.observe(&row("parse", 0, 100));
        t.observe(&placeholder(105, 60_105));
        assert_eq!(t.observe(&row("DBOS.recv", 104, 3_000)), None);
    }

    #[test]
    fn recv_wait_is_not_a_gap() {
        // As DBOS 3.4 writes it, in completion order: parse, the sleep placeholder at the
        // start of the wait, the recv row at its end, then generate.
        let mut t = GapTracker::default();
        assert_eq!(t.observe(&row("parse", 1_000, 1_100)), None);
        let g = t.observe(&row("DBOS.sleep", 1_110, 1_111));
        assert_eq!(g, None, "a wait has no gap before it");
        assert_eq!(t.observe(&row("DBOS.recv", 1_105, 3_110)), None);
        let g = t.observe(&row("generate", 3_114, 3_300)).unwrap();
        assert_eq!(
            (g.from_step.as_str(), g.duration_ns()),
            ("DBOS.recv", 4 * MS)
        );
    }

    #[test]
    fn the_108_minute_incident_is_one_gap_after_the_debounce() {
        let t0 = 1_700_000_000_000; // parse_email at 15:11:15
        let mut t = GapTracker::default();
        t.observe(&row("parse_email", t0 - 200, t0));
        t.observe(&row("DBOS.sleep", t0 + 5, t0 + 6));
        t.observe(&row("DBOS.recv", t0 + 4, t0 + 60_000)); // 60 s debounce
        let g = t
            .observe(&row("generate_reply", t0 + 6_493_000, t0 + 6_494_000))
            .unwrap();
        // 16:59:28 - 15:12:15 = 107 min 13 s of gap, after the minute of intended wait.
        assert_eq!(g.duration_ns(), 6_433_000 * MS);
    }

    #[test]
    fn overlapping_rows_never_give_a_negative_gap() {
        let mut t = GapTracker::default();
        t.observe(&row("a", 0, 500));
        assert_eq!(t.observe(&row("b", 400, 600)).unwrap().duration_ns(), 0);
    }

    #[test]
    fn workflows_are_tracked_separately_and_bounded() {
        let mut t = GapTracker::default();
        for i in 0..(MAX_TRACKED_WORKFLOWS as i64 + 5) {
            t.observe(&StepRow {
                workflow_id: format!("w{i}"),
                ..row("a", i, i + 1)
            });
        }
        assert!(t.tracked() <= MAX_TRACKED_WORKFLOWS);
    }

    fn open(
        id: &str,
        queue: &str,
        completed_s: Option<i64>,
        deadline_s: Option<i64>,
    ) -> OpenWorkflow {
        OpenWorkflow {
            workflow_id: id.into(),
            workflow_name: "digest".into(),
            queue: queue.into(),
            created_ns: 0,
            last_completed_ns: completed_s.map(|c| c * S),
            wait_deadline_ns: deadline_s.map(|d| d * S),
            in_wait: deadline_s.is_some() && completed_s.is_none_or(|c| Some(c) < deadline_s),
            recovery_attempts: 0,
        }
    }

    #[test]
    fn a_workflow_in_a_wait_is_overdue_only_past_its_deadline_and_until_it_moves_on() {
        let waiting = open("a", "", Some(10), Some(70)); // recv started at 10 s, deadline 70 s
        assert_eq!(waiting.overdue_ns(60 * S), None);
        assert_eq!(waiting.overdue_ns(76 * S), Some(6 * S));
        assert_eq!(
            waiting.idle_since_ns(),
            70 * S,
            "inside the wait it is not idle"
        );
        let moved_on = OpenWorkflow {
            in_wait: false,
            ..open("b", "", Some(10), Some(70))
        };
        assert_eq!(
            moved_on.overdue_ns(90 * S),
            None,
            "its receive row is written: the wait is over"
        );
    }

    #[test]
    fn a_queue_is_blocked_when_its_running_workflows_all_stall_while_others_wait() {
        let open = vec![
            open("run-1", "digests", Some(10), None),
            open("run-2", "other", Some(95), None),
        ];
        let enqueued = vec![
            ("digests".to_string(), 3),
            ("other".to_string(), 2),
            ("idle".to_string(), 4),
        ];
        let blocked = blocked_queues(&open, &enqueued, 100 * S, 30 * S);
        assert_eq!(blocked.len(), 1, "{blocked:?}");
        assert_eq!(
            (
                blocked[0].queue.as_str(),
                blocked[0].blocking_workflow_id.as_str(),
                blocked[0].waiting
            ),
            ("digests", "run-1", 3)
        );
        assert!(
            blocked_queues(&open, &enqueued, 35 * S, 30 * S).is_empty(),
            "not yet stalled"
        );
    }

    const DAY: i64 = 86_400 * S;

    fn idle_s(clock: &mut StallClock, w: &OpenWorkflow, now: i64, mono: i64) -> i64 {
        let r = clock.rebase(std::slice::from_ref(w), [w.created_ns], now, mono);
        (now - r[0].idle_since_ns()) / S
    }

    /// Issue 14 item 2: a sidecar a day ahead of the app saw a pending workflow "stalled for 1d".
    #[test]
    fn a_clock_a_day_ahead_of_the_app_invents_no_stall_time() {
        let t = 1_763_900_000 * S;
        let w = OpenWorkflow {
            created_ns: t,
            ..open("p", "", None, None)
        };
        let mut c = StallClock::default();
        assert_eq!(idle_s(&mut c, &w, t + DAY, 0), 0);
        assert_eq!(idle_s(&mut c, &w, t + DAY + 10 * S, 10 * S), 10);
        // Stepped back to the right time: still 20 s watched, not a day less.
        assert_eq!(idle_s(&mut c, &w, t + 20 * S, 20 * S), 20);
    }

    #[test]
    fn a_backward_step_erases_no_watched_time_and_a_forward_one_adds_none() {
        let t = 1_763_900_000 * S;
        // Written (and first seen) while the shared clock was a day ahead.
        let w = OpenWorkflow {
            created_ns: t + DAY,
            ..open("p", "", None, None)
        };
        let mut c = StallClock::default();
        assert_eq!(idle_s(&mut c, &w, t + DAY + 5 * S, 0), 5);
        assert_eq!(
            idle_s(&mut c, &w, t + 30 * S, 25 * S),
            30,
            "stepped back a day"
        );
        let w = OpenWorkflow {
            created_ns: t,
            ..open("q", "", None, None)
        };
        let mut c = StallClock::default();
        assert_eq!(
            idle_s(&mut c, &w, t + 60 * S, 0),
            60,
            "idle at first sight counts"
        );
        assert_eq!(
            idle_s(&mut c, &w, t + DAY, 10 * S),
            70,
            "stepped forward a day"
        );
    }

    /// A wait's deadline ahead of now is not progress stamped by a wrong clock: the
    /// workflow is overdue only once it has passed.
    #[test]
    fn a_wait_deadline_ahead_keeps_its_time_on_the_stall_clock() {
        let t = 1_763_900_000 * S;
        let w = OpenWorkflow {
            created_ns: t,
            last_completed_ns: Some(t),
            wait_deadline_ns: Some(t + 2 * S),
            in_wait: true,
            ..open("w", "", None, None)
        };
        let mut c = StallClock::default();
        let r = c.rebase(std::slice::from_ref(&w), [t], t + S / 2, 0);
        assert_eq!(r[0].overdue_ns(t + S / 2), None);
        let r = c.rebase(std::slice::from_ref(&w), [], t + 3 * S, 5 * S / 2);
        assert_eq!(r[0].overdue_ns(t + 3 * S), Some(S));
    }

    #[test]
    fn stall_counts_from_last_progress_and_respects_future_wakes() {
        let open = vec![
            open("a", "", Some(10), None),
            open("b", "", Some(20), Some(100)), // inside a wait due at 100 s
            open("c", "", None, None),
        ];
        let ids: Vec<_> = stalled(&open, 80 * S, 30 * S)
            .iter()
            .map(|w| w.workflow_id.as_str())
            .collect();
        assert_eq!(ids, vec!["a", "c"]);
    }

    #[test]
    fn finished_workflows_are_forgotten_once_quiet_and_open_ones_kept() {
        let mut t = GapTracker::default();
        for id in ["done", "open", "recent"] {
            t.observe(&StepRow {
                workflow_id: id.into(),
                ..row("a", 0, if id == "recent" { 50_000 } else { 1_000 })
            });
        }
        let open: HashSet<&str> = ["open"].into_iter().collect();
        t.forget_finished(&open, 10_000 * MS);
        assert_eq!(
            t.tracked(),
            2,
            "'done' is forgotten, 'open' and 'recent' kept"
        );
        // The forgotten one starts fresh: no gap back to its last step.
        assert!(t
            .observe(&StepRow {
                workflow_id: "done".into(),
                ..row("b", 90_000, 91_000)
            })
            .is_none());
        let g = t.observe(&StepRow {
            workflow_id: "open".into(),
            ..row("b", 90_000, 91_000)
        });
        assert!(g.is_some(), "an open workflow keeps its history");
    }
}
