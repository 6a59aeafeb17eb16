//! One thread per source: poll on the interval, turn each [`Observation`] into metrics
//! and episodes, and attribute every episode to a freeze or a stall.
//!
//! Episodes wait [`SourceRunner::settle_ns`] after they end before being attributed: a
//! freeze that covers them is only recorded once the freeze detector's merge window has
//! closed, and a gap must not be blamed on the app for being noticed first.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::real_ns;
use crate::config::{SourceConfig, SourceKind};
use crate::metrics::{Metrics, SourceMetrics};
use crate::persist::EventSink;
use crate::sidecar::tick::NetworkSample;
use crate::signals::attribution::{attribute, Cause};
use crate::signals::cost::CostLedger;
use crate::signals::episode::{Episode, EpisodeKind};
use crate::signals::labels::LabelBudget;
use crate::signals::steps::{
    blocked_queues, is_intended_wait, stalled, GapKind, GapTracker, OpenWorkflow, StallClock,
    WAIT_PLACEHOLDER,
};
use crate::sources::{ErrorKind, Observation, Source, SourceError};
use crate::state::StateReader;
use crate::status::{
    BlockedQueueStatus, CostStatus, DeadLetterStatus, QueueAge, QueueCount, SharedStatus,
    StalledWorkflow, MAX_LISTED_STALLS,
};

/// Distinct step names per source kept as label values.
pub const MAX_STEP_LABELS: usize = 100;
/// Distinct workflow names per source kept as label values.
pub const MAX_WORKFLOW_LABELS: usize = 50;
/// Distinct queue/status pairs per source kept as label values.
pub const MAX_QUEUE_LABELS: usize = 100;
/// Longest stretch between polls while the app database stays locked: 8 polls.
pub const MAX_LOCK_BACKOFF: u32 = 8;
/// Distinct label combinations per `sql` source.
pub const MAX_SQL_SERIES: usize = 1_000;
/// How long a workflow that left the open set must have been quiet before the gap
/// tracker forgets it: well past the sources' read overlap, so its last rows are read.
const FINISHED_QUIET_NS: i64 = 120 * crate::clock::NANOS_PER_SEC;
/// Episodes waiting for attribution; beyond this the oldest are attributed at once.
pub const MAX_UNSETTLED_EPISODES: usize = 10_000;

/// A stop flag threads can sleep on.
#[derive(Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl StopSignal {
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Sleeps up to `d`; returns true if stop was requested.
    pub fn sleep(&self, d: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

pub struct SourceRunner {
    pub config: SourceConfig,
    /// Where this source's database clock samples go (reference index, queue), if it has one.
    pub clock: Option<(usize, SyncSender<NetworkSample>)>,
    pub index: usize,
    pub source: Box<dyn Source>,
    pub metrics: Arc<Metrics>,
    pub status: SharedStatus,
    pub sink: EventSink,
    pub freezes: StateReader,
    pub stop: Arc<StopSignal>,
    /// How long after an episode ends before it is attributed.
    pub settle_ns: i64,
    /// Where finished workflows go to become traces, when `[otlp]` is set.
    pub traces: Option<crate::otlp::SourceTraces>,
}

struct Derived {
    gaps: GapTracker,
    steps: LabelBudget,
    workflows: LabelBudget,
    queues: LabelBudget,
    cost: CostLedger,
    stalled: HashSet<String>,
    unsettled: Vec<Episode>,
    last_error: Option<String>,
    queue_series: HashSet<(String, String)>,
    sql_series: HashSet<(String, Vec<String>)>,
    blocked_series: HashSet<String>,
    blocked_logged: HashSet<String>,
    /// Poll interval multiplier while the app database is locked.
    lock_backoff: u32,
    sql_combinations: LabelBudget,
    journal_mode: Option<String>,
    /// Idle time of open workflows, robust to wall-clock steps.
    stall_clock: StallClock,
}

impl SourceRunner {
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("stallwatch-src-{}", self.config.name))
            .spawn(move || self.run())
            .expect("spawning a thread")
    }

    fn run(mut self) {
        let m = self.metrics.clone();
        let name = self.config.name.clone();
        let sm = &m.sources;
        for kind in ErrorKind::ALL {
            sm.source_errors_total
                .with_label_values(&[&name, kind.as_str()]);
        }
        for kind in ["bad_timestamp", "rows_capped"] {
            sm.source_errors_total.with_label_values(&[&name, kind]);
        }
        if self.config.kind == SourceKind::Jsonl {
            sm.source_errors_total
                .with_label_values(&[&name, "oversize_line"]);
        }
        let has_steps = matches!(self.config.kind, SourceKind::Dbos | SourceKind::Jsonl);
        for cause in Cause::LABELS.into_iter().filter(|_| has_steps) {
            sm.step_gaps_total.with_label_values(&[&name, cause]);
            if self.config.kind == SourceKind::Dbos {
                sm.stalls_total.with_label_values(&[&name, cause]);
                sm.wait_overruns_total.with_label_values(&[&name, cause]);
            }
        }
        if self.config.kind == SourceKind::Dbos {
            sm.wait_overrun_seconds.with_label_values(&[&name]);
            sm.waits_overdue.with_label_values(&[&name]).set(0.0);
            sm.dbos_recovery_attempts_max
                .with_label_values(&[&name])
                .set(0.0);
        }
        // The labels this kind can overflow start at 0, so increase() sees the first.
        let capped: &[&str] = match self.config.kind {
            SourceKind::Dbos => &["queue", "step", "workflow"],
            SourceKind::Jsonl => &["step", "workflow"],
            SourceKind::QueueTable => &["queue"],
            SourceKind::Sql => &["sql_series"],
        };
        for label in capped {
            sm.label_overflow_total
                .with_label_values(&[name.as_str(), label]);
        }
        if let crate::config::SourceDetail::QueueTable(layout) = &self.config.detail {
            // Without a queue column every series has queue="": start them at 0 so the
            // first increase() sees the first retry and dead letter.
            if layout.queue_column.is_none() {
                if layout.attempts_column.is_some() {
                    sm.job_retries_total.with_label_values(&[&name, ""]);
                }
                if layout.dead_status.is_some() || layout.dead_letter_table.is_some() {
                    sm.dead_letters_total.with_label_values(&[&name, ""]);
                }
            }
        }
        sm.source_up.with_label_values(&[&name]).set(0.0);
        if let Some(cap) = self.config.cost_cap_usd {
            sm.cost_cap_usd.with_label_values(&[&name]).set(cap);
            sm.cost_usd_today.with_label_values(&[&name]).set(0.0);
        }
        let mut d = Derived {
            gaps: GapTracker::default(),
            steps: LabelBudget::new(MAX_STEP_LABELS),
            workflows: LabelBudget::new(MAX_WORKFLOW_LABELS),
            queues: LabelBudget::new(MAX_QUEUE_LABELS),
            cost: CostLedger::new(self.config.cost_utc_offset_secs),
            stalled: HashSet::new(),
            unsettled: Vec::new(),
            last_error: None,
            queue_series: HashSet::new(),
            sql_series: HashSet::new(),
            blocked_series: HashSet::new(),
            blocked_logged: HashSet::new(),
            lock_backoff: 1,
            sql_combinations: LabelBudget::new(MAX_SQL_SERIES),
            journal_mode: None,
            stall_clock: StallClock::default(),
        };
        loop {
            self.pass(&mut d);
            if self.stop.sleep(self.config.poll * d.lock_backoff) {
                break;
            }
        }
        self.settle(&mut d, i64::MAX, true);
    }

    /// One poll and what follows from it, as one `stallwatch.poll` span: read the app's
    /// database, update metrics and status, settle episodes, and let the alert engine
    /// evaluate.
    fn pass(&mut self, d: &mut Derived) {
        let span = tracing::info_span!(
            "stallwatch.poll",
            source = %self.config.name,
            source.kind = self.config.kind.as_str(),
            outcome = tracing::field::Empty,
            steps = tracing::field::Empty,
            error.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _in = span.enter();
        let name = self.config.name.clone();
        let started = Instant::now();
        let now = real_ns();
        let result = self.source.poll(now);
        // Yield to the app's writer: while it holds the lock (SQLite rollback-journal
        // mode above all), poll less often instead of queueing behind it every time.
        let locked = matches!(&result, Err(e) if e.kind == ErrorKind::Locked && !e.backing_off);
        let slower = if locked {
            (d.lock_backoff * 2).min(MAX_LOCK_BACKOFF)
        } else {
            1
        };
        if slower > 1 && d.lock_backoff == 1 {
            tracing::info!(source = %name, "app database busy: polling less often until it is free");
        }
        d.lock_backoff = slower;
        let elapsed = started.elapsed().as_secs_f64();
        self.metrics
            .sources
            .source_poll_duration_seconds
            .with_label_values(&[&name])
            .set(elapsed);
        match result {
            Ok(obs) => {
                span.record("outcome", "ok");
                // As i64: `tracing-opentelemetry` exports unsigned fields as strings.
                span.record("steps", obs.steps.len() as i64);
                if d.last_error.take().is_some() {
                    tracing::info!(source = %name, "source readable again");
                }
                self.metrics
                    .sources
                    .source_up
                    .with_label_values(&[&name])
                    .set(1.0);
                if let Some(traces) = &mut self.traces {
                    traces.observe(&obs, now);
                }
                self.apply(d, obs, now);
                let mut status = self.status.lock();
                let s = &mut status.sources[self.index];
                s.up = true;
                s.last_error = None;
                s.down_since_unix_ns = None;
                s.last_poll_seconds = elapsed;
            }
            // A source backing off reports its last failure again: nothing new to
            // count, log or show.
            Err(e) if e.backing_off => {
                span.record("outcome", "backing_off");
            }
            Err(e) => {
                span.record("outcome", "error");
                span.record("error.kind", e.kind.as_str());
                span.record("otel.status_code", "ERROR");
                self.send_clock(Err(e.message.clone()));
                self.failed(d, e);
            }
        }
        self.settle(d, real_ns(), false);
        // This poll's facts are all in the status: the alert engine evaluates them now.
        self.status.publish();
    }

    fn failed(&self, d: &mut Derived, e: SourceError) {
        let name = &self.config.name;
        let sm = &self.metrics.sources;
        sm.source_up.with_label_values(&[name]).set(0.0);
        sm.source_errors_total
            .with_label_values(&[name, e.kind.as_str()])
            .inc();
        if d.last_error.as_deref() != Some(e.message.as_str()) {
            tracing::warn!(source = %name, kind = e.kind.as_str(), error = %e.message, "source poll failed; other sources keep going");
        }
        d.last_error = Some(e.message.clone());
        let mut status = self.status.lock();
        let s = &mut status.sources[self.index];
        s.up = false;
        s.last_error = Some(e.message);
        s.down_since_unix_ns.get_or_insert_with(real_ns);
    }

    /// Counts `n` lines or values skipped as `kind`: in `source_errors_total` and in the
    /// source's status.
    fn skipped(&self, kind: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let name = self.config.name.as_str();
        self.metrics
            .sources
            .source_errors_total
            .with_label_values(&[name, kind])
            .inc_by(n);
        let mut status = self.status.lock();
        *status.sources[self.index].skipped.entry(kind).or_default() += n;
    }

    /// Counts `n` label values folded into `other` for `label`: in `label_overflow_total`
    /// and in the source's status, so a limit that is hit is said where people look.
    fn overflowed(&self, label: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        self.metrics
            .sources
            .label_overflow_total
            .with_label_values(&[self.config.name.as_str(), label])
            .inc_by(n);
        let mut status = self.status.lock();
        *status.sources[self.index]
            .label_overflow
            .entry(label)
            .or_default() += n;
    }

    /// Passes a database clock reading to the freeze detector.
    fn send_clock(&self, sample: Result<crate::freeze::reference::RefSample, String>) {
        if let Some((index, tx)) = &self.clock {
            if tx.try_send((*index, sample)).is_err() {
                self.metrics
                    .dropped_total
                    .with_label_values(&["reference_samples"])
                    .inc();
            }
        }
    }

    fn apply(&self, d: &mut Derived, mut obs: Observation, now: i64) {
        if let Some(sample) = obs.server_clock {
            self.send_clock(Ok(sample));
        }
        let name = self.config.name.as_str();
        let sm: &SourceMetrics = &self.metrics.sources;
        let overflow = |label: &'static str, budget: &LabelBudget, before: u64| {
            self.overflowed(label, budget.overflowed() - before);
        };

        // Queues: gauges for what is there now; series seen before and gone now drop to 0.
        let before = d.queues.overflowed();
        let mut present: HashMap<(String, String), (u64, Option<i64>)> = HashMap::new();
        for q in &obs.queues {
            let key = (
                d.queues.admit(&q.queue).to_string(),
                d.queues.admit(&q.status).to_string(),
            );
            let slot = present.entry(key).or_insert((0, None));
            slot.0 += q.depth;
            slot.1 = match (slot.1, q.oldest_ns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        fold_queue_labels(&mut d.queues, &mut obs);
        overflow("queue", &d.queues, before);
        for key in d.queue_series.iter().filter(|k| !present.contains_key(*k)) {
            sm.queue_depth
                .with_label_values(&[name, &key.0, &key.1])
                .set(0.0);
            let _ = sm
                .queue_oldest_age_seconds
                .remove_label_values(&[name, &key.0, &key.1]);
        }
        for ((queue, status), (depth, oldest)) in &present {
            sm.queue_depth
                .with_label_values(&[name, queue, status])
                .set(*depth as f64);
            if let Some(oldest) = oldest {
                let age = (now - oldest).max(0) as f64 / 1e9;
                sm.queue_oldest_age_seconds
                    .with_label_values(&[name, queue, status])
                    .set(age);
            }
            d.queue_series.insert((queue.clone(), status.clone()));
        }
        for (queue, n) in &obs.retries {
            sm.job_retries_total
                .with_label_values(&[name, queue])
                .inc_by(*n);
        }
        for dl in &obs.dead_letters {
            sm.dead_letters
                .with_label_values(&[name, &dl.queue])
                .set(dl.current as f64);
            sm.dead_letters_total
                .with_label_values(&[name, &dl.queue])
                .inc_by(dl.new);
        }
        for (queue, n) in &obs.stuck {
            sm.stuck_jobs
                .with_label_values(&[name, queue])
                .set(*n as f64);
        }
        self.publish_queue_facts(&obs, &present);
        self.skipped("rows_capped", obs.capped_reads);
        self.skipped("bad_timestamp", obs.bad_timestamps);
        self.skipped("oversize_line", obs.oversize_lines);

        // Steps: durations, gaps, gap episodes.
        let gap_min = self.config.gap_min.as_nanos() as i64;
        let (steps_before, workflows_before) = (d.steps.overflowed(), d.workflows.overflowed());
        for row in &obs.steps {
            if !is_intended_wait(&row.step) && row.completed_ns > row.started_ns {
                let step = d.steps.admit(&row.step);
                sm.step_duration_seconds
                    .with_label_values(&[name, step])
                    .observe((row.completed_ns - row.started_ns) as f64 / 1e9);
            }
            if let Some(gap) = d.gaps.observe(row) {
                let seconds = gap.duration_ns() as f64 / 1e9;
                let kind = match gap.kind {
                    GapKind::Step => {
                        let workflow = d.workflows.admit(&gap.workflow_name);
                        sm.step_gap_seconds
                            .with_label_values(&[name, workflow])
                            .observe(seconds);
                        EpisodeKind::StepGap
                    }
                    GapKind::WaitOverrun => {
                        sm.wait_overrun_seconds
                            .with_label_values(&[name])
                            .observe(seconds);
                        EpisodeKind::WaitOverrun
                    }
                };
                if gap.duration_ns() >= gap_min {
                    d.unsettled.push(Episode {
                        source: name.to_string(),
                        kind,
                        workflow_id: gap.workflow_id,
                        workflow_name: gap.workflow_name,
                        from_step: gap.from_step,
                        to_step: gap.to_step,
                        started_at_ns: gap.start_ns,
                        duration_ns: gap.end_ns - gap.start_ns,
                        cause: Cause::Stall,
                    });
                }
            }
        }
        overflow("step", &d.steps, steps_before);
        overflow("workflow", &d.workflows, workflows_before);

        // Stalls: open workflows idle past stall_after; a new one becomes an episode.
        if let Some(open) = &obs.open_workflows {
            // Every idle time below is on the stall clock, not the app's raw times.
            let written = obs.steps.iter().map(|r| r.completed_ns);
            let written = written.chain(open.iter().map(|w| w.created_ns));
            let open = &d
                .stall_clock
                .rebase(open, written, now, crate::clock::mono_ns());
            let stall_after = self.config.stall_after.as_nanos() as i64;
            let now_stalled = stalled(open, now, stall_after);
            sm.stalled_workflows
                .with_label_values(&[name])
                .set(now_stalled.len() as f64);
            let ids: HashSet<String> = now_stalled.iter().map(|w| w.workflow_id.clone()).collect();
            for w in &now_stalled {
                if !d.stalled.contains(&w.workflow_id) {
                    d.unsettled.push(Episode {
                        source: name.to_string(),
                        kind: EpisodeKind::Stall,
                        workflow_id: w.workflow_id.clone(),
                        workflow_name: w.workflow_name.clone(),
                        from_step: String::new(),
                        to_step: String::new(),
                        started_at_ns: w.idle_since_ns(),
                        duration_ns: now - w.idle_since_ns(),
                        cause: Cause::Stall,
                    });
                }
            }
            d.stalled = ids;
            // Finished workflows leave the gap tracker once their last rows are surely
            // read; a capped open set proves nothing about what is missing from it.
            if (open.len() as i64) < crate::sources::dbos::MAX_OPEN_WORKFLOWS {
                let open_ids: HashSet<&str> = open.iter().map(|w| w.workflow_id.as_str()).collect();
                d.gaps.forget_finished(&open_ids, now - FINISHED_QUIET_NS);
            }
            let mut longest = now_stalled.clone();
            longest.sort_by(|a, b| {
                (a.idle_since_ns(), &a.workflow_id).cmp(&(b.idle_since_ns(), &b.workflow_id))
            });
            let listed = longest
                .iter()
                .take(MAX_LISTED_STALLS)
                .map(|w| StalledWorkflow {
                    workflow_id: w.workflow_id.clone(),
                    workflow_name: w.workflow_name.clone(),
                    idle_seconds: (now - w.idle_since_ns()) as f64 / 1e9,
                })
                .collect();
            let mut status = self.status.lock();
            let s = &mut status.sources[self.index];
            s.stalled_count = now_stalled.len() as u64;
            s.stalled = listed;
            drop(status);
            self.workflow_health(d, open, &obs.queues, obs.recovery_attempts_max, now);
        }

        // An operator's query: set what is there, remove series that went away.
        if let crate::config::SourceDetail::Sql { labels, .. } = &self.config.detail {
            let before = d.sql_combinations.overflowed();
            let mut now_series = HashSet::new();
            for sample in &obs.samples {
                let combination = sample.labels.join("\u{1f}");
                if d.sql_combinations.admit(&combination) != combination {
                    continue;
                }
                let mut values: Vec<&str> = vec![name];
                values.extend(sample.labels.iter().map(String::as_str));
                sm.sql_gauge(&sample.column, labels)
                    .with_label_values(&values)
                    .set(sample.value);
                now_series.insert((sample.column.clone(), sample.labels.clone()));
            }
            overflow("sql_series", &d.sql_combinations, before);
            for (column, old) in d.sql_series.difference(&now_series) {
                let mut values: Vec<&str> = vec![name];
                values.extend(old.iter().map(String::as_str));
                let _ = sm.sql_gauge(column, labels).remove_label_values(&values);
            }
            d.sql_series = now_series;
        }
        self.skipped("bad_value", obs.bad_values);

        // Spend.
        for (at, usd) in &obs.spend {
            d.cost.add(*at, *usd, now);
        }
        if self.config.cost_cap_usd.is_some() || !obs.spend.is_empty() {
            sm.cost_usd_today
                .with_label_values(&[name])
                .set(d.cost.today_usd(now));
        }
        if let Some(cap) = self.config.cost_cap_usd {
            let day = crate::signals::cost::cost_day(now, self.config.cost_utc_offset_secs);
            self.status.lock().sources[self.index].cost = Some(CostStatus {
                today_usd: d.cost.today_usd(now),
                cap_usd: cap,
                day: crate::time::day_label(day),
            });
        }

        if obs.journal_mode != d.journal_mode {
            if let Some(old) = &d.journal_mode {
                let _ = sm
                    .source_info
                    .remove_label_values(&[name, self.config.kind.as_str(), old]);
            }
            if let Some(mode) = &obs.journal_mode {
                sm.source_info
                    .with_label_values(&[name, self.config.kind.as_str(), mode])
                    .set(1.0);
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(
                        source = %name,
                        journal_mode = %mode,
                        "app database is not in WAL mode: every read blocks its writers; set PRAGMA journal_mode=WAL in the app"
                    );
                }
            }
            d.journal_mode = obs.journal_mode.clone();
            self.status.lock().sources[self.index].journal_mode = obs.journal_mode;
        }
    }

    /// Stuck, waiting and dead-lettered jobs per queue, for the alert rules (queue names
    /// already folded by the label budget, so the lists are as bounded as the metrics).
    fn publish_queue_facts(
        &self,
        obs: &Observation,
        present: &HashMap<(String, String), (u64, Option<i64>)>,
    ) {
        let running = self.running_status();
        let mut waiting: Vec<QueueAge> = present
            .iter()
            .filter(|((_, status), _)| Some(status.as_str()) != running)
            .filter_map(|((queue, status), (_, oldest))| {
                oldest.map(|oldest_unix_ns| QueueAge {
                    queue: queue.clone(),
                    status: status.clone(),
                    oldest_unix_ns,
                })
            })
            .collect();
        waiting.sort_by(|a, b| (&a.queue, &a.status).cmp(&(&b.queue, &b.status)));
        let mut status = self.status.lock();
        let s = &mut status.sources[self.index];
        s.waiting = waiting;
        s.stuck = obs
            .stuck
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(queue, n)| QueueCount {
                queue: queue.clone(),
                count: *n,
            })
            .collect();
        for dl in &obs.dead_letters {
            match s.dead_letters.iter_mut().find(|d| d.queue == dl.queue) {
                Some(known) => {
                    known.current = dl.current;
                    known.new_since_start += dl.new;
                }
                None => s.dead_letters.push(DeadLetterStatus {
                    queue: dl.queue.clone(),
                    current: dl.current,
                    new_since_start: dl.new,
                }),
            }
        }
    }

    /// The status of a job that is running (not waiting): DBOS `PENDING`, or the queue
    /// table's running status.
    fn running_status(&self) -> Option<&str> {
        match &self.config.detail {
            crate::config::SourceDetail::Dbos => Some("PENDING"),
            crate::config::SourceDetail::QueueTable(layout) => layout.running_status.as_deref(),
            _ => None,
        }
    }

    /// Recovery loops, blocked queues and waits overdue right now (DBOS workflows).
    fn workflow_health(
        &self,
        d: &mut Derived,
        open: &[OpenWorkflow],
        queues: &[crate::sources::QueueStatus],
        recovery_attempts_max: Option<i64>,
        now: i64,
    ) {
        let name = self.config.name.as_str();
        let sm = &self.metrics.sources;
        let attempts = recovery_attempts_max.unwrap_or(0);
        sm.dbos_recovery_attempts_max
            .with_label_values(&[name])
            .set(attempts as f64);

        // A queue is blocked when everything running on it has stalled while others wait.
        let enqueued: Vec<(String, u64)> = queues
            .iter()
            .filter(|q| q.status == "ENQUEUED")
            .map(|q| (q.queue.clone(), q.depth))
            .collect();
        let stall_after = self.config.stall_after.as_nanos() as i64;
        let blocked = blocked_queues(open, &enqueued, now, stall_after);
        let before = d.queues.overflowed();
        let mut now_blocked = HashSet::new();
        for (queue, _) in &enqueued {
            let queue = d.queues.admit(queue).to_string();
            let is = blocked.iter().any(|b| b.queue == queue);
            sm.queue_blocked
                .with_label_values(&[name, &queue])
                .set(if is { 1.0 } else { 0.0 });
            now_blocked.insert(queue);
        }
        for gone in d.blocked_series.difference(&now_blocked) {
            sm.queue_blocked.with_label_values(&[name, gone]).set(0.0);
        }
        d.blocked_series.extend(now_blocked);
        self.overflowed("queue", d.queues.overflowed() - before);
        for b in &blocked {
            if !d.blocked_logged.contains(&b.queue) {
                tracing::warn!(
                    source = %name,
                    queue = %b.queue,
                    blocking_workflow_id = %b.blocking_workflow_id,
                    blocking_workflow = %b.blocking_workflow_name,
                    waiting = b.waiting,
                    "queue blocked: its running workflow has made no progress while others wait"
                );
            }
        }
        d.blocked_logged = blocked.iter().map(|b| b.queue.clone()).collect();

        // Waits past their deadline, while they are still happening: recorded now (and
        // updated, then attributed, when the wait finally ends).
        let gap_min = self.config.gap_min.as_nanos() as i64;
        let overdue: Vec<(&OpenWorkflow, i64)> = open
            .iter()
            .filter_map(|w| w.overdue_ns(now).map(|o| (w, o)))
            .collect();
        sm.waits_overdue
            .with_label_values(&[name])
            .set(overdue.len() as f64);
        for (w, late) in overdue
            .iter()
            .filter(|(_, late)| *late >= gap_min)
            .take(MAX_LISTED_STALLS)
        {
            self.sink.record_episode(Episode {
                source: name.to_string(),
                kind: EpisodeKind::WaitOverrun,
                workflow_id: w.workflow_id.clone(),
                workflow_name: w.workflow_name.clone(),
                from_step: WAIT_PLACEHOLDER.to_string(),
                to_step: String::new(),
                started_at_ns: w.wait_deadline_ns.unwrap_or(now - late),
                duration_ns: *late,
                cause: Cause::Stall,
            });
        }
        let mut status = self.status.lock();
        let s = &mut status.sources[self.index];
        s.blocked_queues = blocked
            .iter()
            .map(|b| BlockedQueueStatus {
                queue: b.queue.clone(),
                blocking_workflow_id: b.blocking_workflow_id.clone(),
                blocking_workflow_name: b.blocking_workflow_name.clone(),
                idle_seconds: (now - b.idle_since_ns) as f64 / 1e9,
                waiting: b.waiting,
            })
            .collect();
        s.recovery_attempts_max = Some(attempts);
    }

    /// Attributes and records the episodes whose settle time has passed.
    fn settle(&self, d: &mut Derived, now: i64, all: bool) {
        if d.unsettled.is_empty() {
            return;
        }
        let overfull = d.unsettled.len().saturating_sub(MAX_UNSETTLED_EPISODES);
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut d.unsettled)
            .into_iter()
            .enumerate()
            .partition(|(i, e)| {
                all || *i < overfull || e.started_at_ns + e.duration_ns + self.settle_ns <= now
            });
        d.unsettled = waiting.into_iter().map(|(_, e)| e).collect();
        let sm = &self.metrics.sources;
        for (_, mut episode) in ready {
            let end = episode.started_at_ns + episode.duration_ns;
            let freezes = match self.freezes.freezes_overlapping(episode.started_at_ns, end) {
                Ok(f) => f,
                Err(e) => {
                    self.metrics.state_db_errors_total.inc();
                    tracing::warn!(error = %e, "cannot read freezes to attribute an episode; calling it a stall");
                    Vec::new()
                }
            };
            episode.cause = attribute(episode.started_at_ns, end, &freezes);
            let counter = match episode.kind {
                EpisodeKind::StepGap => &sm.step_gaps_total,
                EpisodeKind::Stall => &sm.stalls_total,
                EpisodeKind::WaitOverrun => &sm.wait_overruns_total,
            };
            counter
                .with_label_values(&[&episode.source, episode.cause.as_str()])
                .inc();
            tracing::warn!(
                source = %episode.source,
                kind = episode.kind.as_str(),
                cause = episode.cause.as_str(),
                workflow = %episode.workflow_name,
                workflow_id = %episode.workflow_id,
                seconds = episode.duration_ns as f64 / 1e9,
                "episode recorded"
            );
            self.sink.record_episode(episode);
        }
    }
}

/// Folds the per-queue retries, dead letters and stuck jobs through the source's queue
/// label budget: a queue past the budget counts under `other`, summed with the rest, so
/// every family labelled by queue (and the alert facts built from them) stays bounded
/// however many distinct queues the app's table holds.
fn fold_queue_labels(budget: &mut LabelBudget, obs: &mut Observation) {
    fn fold_counts(budget: &mut LabelBudget, counts: &mut Vec<(String, u64)>) {
        let mut folded: Vec<(String, u64)> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for (queue, n) in counts.drain(..) {
            let label = budget.admit(&queue).to_string();
            match at.get(&label) {
                Some(&i) => folded[i].1 = folded[i].1.saturating_add(n),
                None => {
                    at.insert(label.clone(), folded.len());
                    folded.push((label, n));
                }
            }
        }
        *counts = folded;
    }
    fold_counts(budget, &mut obs.retries);
    fold_counts(budget, &mut obs.stuck);
    let mut dead: Vec<crate::sources::DeadLetters> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for dl in obs.dead_letters.drain(..) {
        let label = budget.admit(&dl.queue).to_string();
        match at.get(&label) {
            Some(&i) => {
                dead[i].current = dead[i].current.saturating_add(dl.current);
                dead[i].new = dead[i].new.saturating_add(dl.new);
            }
            None => {
                at.insert(label.clone(), dead.len());
                dead.push(crate::sources::DeadLetters { queue: label, ..dl });
            }
        }
    }
    obs.dead_letters = dead;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::DeadLetters;

    #[test]
    fn queues_past_the_budget_are_summed_under_other_in_every_family() {
        let mut budget = LabelBudget::new(2);
        let mut obs = Observation {
            retries: (0..5).map(|i| (format!("q{i}"), 1)).collect(),
            stuck: vec![("q0".into(), 3), ("q9".into(), 4), ("q8".into(), 5)],
            dead_letters: (0..4)
                .map(|i| DeadLetters {
                    queue: format!("q{i}"),
                    current: 10,
                    new: 1,
                })
                .collect(),
            ..Observation::default()
        };
        fold_queue_labels(&mut budget, &mut obs);
        assert_eq!(
            obs.retries,
            [("q0".into(), 1), ("q1".into(), 1), ("other".into(), 3)]
        );
        assert_eq!(obs.stuck, [("q0".into(), 3), ("other".into(), 9)]);
        let dead: Vec<(&str, u64, u64)> = obs
            .dead_letters
            .iter()
            .map(|d| (d.queue.as_str(), d.current, d.new))
            .collect();
        assert_eq!(dead, [("q0", 10, 1), ("q1", 10, 1), ("other", 20, 2)]);
        assert!(budget.overflowed() > 0);
    }
}
