//! The alert engine: a thread that evaluates the rules when something they read changed
//! (a source's poll, the state DB's health, a freeze announced, a delivery) or when a time
//! they wait for comes (a `for` hold, a repeat, a resolve, a threshold of a time rule),
//! records transitions in the outbox, and delivers due notifications, at most one in
//! flight per channel. With nothing to do it sleeps.
//!
//! Its own current-thread runtime keeps sends off the HTTP server's runtime; its own
//! state DB connection keeps the outbox off the state writer's queue. A channel whose
//! send fails is not tried again until its backoff expires, so a dead receiver costs one
//! probe per backoff period however many notifications wait for it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::channels::{self, Channel, Method, Request};
use super::db_watch::DbWatch;
use super::group;
use super::lifecycle::{Lifecycle, Transition, ONE_SHOT_MEMORY_NS};
use super::outbox::{notification_key, GroupTarget, HeldUpdate, NewNotification, Outbox};
use super::rules::{self, Facts, OutboxStats, RuleMemory};
use super::silence::{self, Decision, Held, Silence};
use super::{Message, NotificationKind};
use crate::backoff::{self, Verdict};
use crate::clock::{real_ns, NANOS_PER_SEC};
use crate::config::alerts::{AlertsConfig, RuleKind};
use crate::config::channel::DEADMAN_CHANNEL;
use crate::freeze::FreezeEvent;
use crate::metrics::Metrics;
use crate::status::SharedStatus;
use crate::time::{human, rfc3339};

/// Longest sleep between evaluations with nothing changing and nothing due: a guard, so
/// that a due time set by the wall clock is met within a minute even after the wall clock
/// was stepped (due times are wall-clock; the sleep is MONOTONIC).
pub const MAX_IDLE: Duration = Duration::from_secs(60);
/// Freeze announcements waiting for the engine; freezes are rare, so this only fills if
/// the engine is wedged (then they are counted as dropped).
pub const FREEZE_QUEUE: usize = 256;
/// Transitions kept in memory while the state DB cannot be written.
pub const MAX_UNRECORDED: usize = 10_000;
/// How often delivered rows older than a week are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// Time given to sends in flight when the sidecar stops; what is left goes out next start.
pub const STOP_DRAIN: Duration = Duration::from_secs(1);
/// Longest part of an error response kept in the error message (after scrubbing).
const MAX_ERROR_BODY: usize = 300;
/// Longest error response read: secrets are scrubbed from all of it before it is cut to
/// [`MAX_ERROR_BODY`], so a secret straddling the cut cannot leave a fragment behind.
const MAX_ERROR_READ: usize = 64 << 10;
/// Secrets shorter than this are not scrubbed from other text: a 7-character URL path
/// like `/alerts` would garble every message, and no token is that short.
const MIN_SECRET_CHARS: usize = 8;

/// `created_by` of the silences a freeze opens over the alerts it causes.
pub const FREEZE_SILENCE: &str = "freeze";

/// Handle to the running engine.
pub struct AlertEngine {
    stop: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

impl AlertEngine {
    /// Opens the outbox and starts the engine thread. `startup` are freezes recorded
    /// before it started (the downtime since the last run).
    pub fn spawn(
        config: AlertsConfig,
        state_db: &Path,
        metrics: Arc<Metrics>,
        status: SharedStatus,
        freezes: mpsc::Receiver<FreezeEvent>,
        startup: Vec<FreezeEvent>,
    ) -> Result<AlertEngine, rusqlite::Error> {
        let outbox = Outbox::open(state_db, config.outbox_max)?;
        let now = real_ns();
        let (firing, one_shots) = outbox.restore(now - ONE_SHOT_MEMORY_NS)?;
        let names: Vec<String> = config.channels.iter().map(|c| c.name.clone()).collect();
        let abandoned = outbox.abandon_unknown_channels(&names, now)?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "pending notifications of channels no longer configured were given up"
            );
        }
        let held: HashMap<String, Held> = outbox.restore_held()?.into_iter().collect();
        let lifecycle = Lifecycle::restore(&config, firing, one_shots, now);
        let channels: Vec<Arc<dyn Channel>> = config
            .channels
            .iter()
            .map(|c| Arc::from(channels::build::channel(c)))
            .collect();
        for c in &channels {
            metrics.alerts.register_channel(c.name());
        }
        let secrets = channels
            .iter()
            .flat_map(|c| c.secrets())
            .chain(config.heartbeat_url.clone())
            .collect();
        let client = reqwest::Client::builder()
            .user_agent(concat!("stallwatch/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("building an HTTP client");
        let engine = Engine {
            timeouts: config.channels.iter().map(|c| c.timeout).collect(),
            limits: config
                .channels
                .iter()
                .map(|c| (c.max_per_hour, c.rate_window.as_nanos() as i64))
                .collect(),
            config,
            channels,
            outbox,
            lifecycle,
            memory: RuleMemory::default(),
            metrics,
            status,
            host: hostname(),
            secrets,
            client,
            lanes: HashMap::new(),
            refreshed: HashMap::new(),
            unrecorded: Vec::new(),
            unrecorded_held: Vec::new(),
            silences: Vec::new(),
            held,
            freeze_groups: HashMap::new(),
            state_db_failing: false,
        };
        let (stop, stop_rx) = watch::channel(false);
        let db_path = state_db.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("stallwatch-alerts".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the alert runtime")
                    .block_on(engine.run(freezes, stop_rx, startup, db_path))
            })
            .expect("spawning a thread");
        Ok(AlertEngine { stop, thread })
    }

    /// Stops evaluating, gives sends in flight [`STOP_DRAIN`], and waits for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// The machine's hostname, for message text.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Delivery state of one channel.
#[derive(Debug, Default)]
struct Lane {
    in_flight: bool,
    /// No attempt before this (unix ns): the channel's last send failed.
    blocked_until_ns: i64,
    /// Whether the last attempt failed (to log the change, not every failure).
    failing: bool,
    /// The channel reached its rate limit: when the window opens, what waits goes as
    /// one digest.
    limited: bool,
}

/// What one send came back with.
struct Attempted {
    channel: usize,
    id: i64,
    attempts: u32,
    message: Message,
    result: Result<(u16, Option<Duration>, String), String>,
    /// The attempt as a `stallwatch.deliver` span, from the send to its recorded outcome
    /// (`Span::none()` for the dead-man's switch).
    span: tracing::Span,
}

struct Engine {
    config: AlertsConfig,
    channels: Vec<Arc<dyn Channel>>,
    timeouts: Vec<Duration>,
    /// Per channel: `max_per_hour` (0: none) and its window, ns.
    limits: Vec<(u32, i64)>,
    outbox: Outbox,
    lifecycle: Lifecycle,
    memory: RuleMemory,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    host: String,
    secrets: Vec<String>,
    client: reqwest::Client,
    lanes: HashMap<usize, Lane>,
    /// Last time a firing alert was re-sent to a channel that needs refreshing.
    refreshed: HashMap<(String, usize), i64>,
    unrecorded: Vec<(Transition, Vec<NewNotification>)>,
    /// Silence bookkeeping of `unrecorded`, written with it.
    unrecorded_held: Vec<HeldUpdate>,
    /// The active silences, read at every evaluation (kept when a read fails).
    silences: Vec<Silence>,
    /// Firing alerts whose notification a silence held back: owed when it ends.
    held: HashMap<String, Held>,
    /// The freeze silences opened by this run: silence id → the freeze's group key and
    /// title, so a consequence joins the freeze's notification while it waits.
    freeze_groups: HashMap<i64, (String, String)>,
    state_db_failing: bool,
}

impl Engine {
    async fn run(
        mut self,
        mut freezes: mpsc::Receiver<FreezeEvent>,
        mut stop: watch::Receiver<bool>,
        startup: Vec<FreezeEvent>,
        db_path: std::path::PathBuf,
    ) {
        let mut inflight: JoinSet<Attempted> = JoinSet::new();
        // `stallwatch silence` writing the state DB is a change: evaluate (and re-read
        // the silences) then, not on a timer.
        let db_watch = match DbWatch::new(&db_path) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the state database for silences written by stallwatch silence; they are read at the next evaluation, within a minute");
                None
            }
        };
        let mut announced = startup;
        let status = self.status.clone();
        // Evaluate at start; then when something changed or a time the rules or the
        // lifecycle wait for comes.
        let mut changed = true;
        let mut next_eval = Instant::now();
        let mut next_prune = Instant::now();
        let mut next_heartbeat = Instant::now();
        loop {
            let now = Instant::now();
            // A freeze announced while this wake was for something else (a source's poll
            // on the same wake) is decided in this evaluation, before what it caused.
            while let Ok(event) = freezes.try_recv() {
                announced.push(event);
            }
            if changed || now >= next_eval || !announced.is_empty() {
                changed = false;
                let due_ns = self.evaluate(&std::mem::take(&mut announced));
                next_eval = instant_at(due_ns, now).min(now + MAX_IDLE);
            }
            if now >= next_prune {
                if let Err(e) = self.outbox.prune(real_ns()) {
                    self.db_failed("pruning the outbox", &e);
                }
                next_prune = now + PRUNE_INTERVAL;
            }
            if now >= next_heartbeat {
                if let Some(url) = &self.config.heartbeat_url {
                    inflight.spawn(self.ping(url.clone()));
                }
                next_heartbeat = now + self.config.heartbeat_interval;
            }
            self.dispatch(&mut inflight);
            let mut wake = next_eval.min(next_prune);
            if self.config.heartbeat_url.is_some() {
                wake = wake.min(next_heartbeat);
            }
            if let Some(delivery) = self.next_wake() {
                wake = wake.min(delivery);
            }
            tokio::select! {
                _ = stop.changed() => break,
                Some(event) = freezes.recv() => {
                    announced.push(event);
                    while let Ok(event) = freezes.try_recv() {
                        announced.push(event);
                    }
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(done) = done {
                        // A delivery changes the outbox the backlog rule reads.
                        changed |= done.channel != usize::MAX;
                        self.finish(done);
                    }
                }
                _ = status.published() => changed = true,
                _ = written(db_watch.as_ref()) => changed = true,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        // Sends in flight get a moment; what does not finish stays pending for next start.
        let deadline = tokio::time::Instant::now() + STOP_DRAIN;
        while let Ok(Some(Ok(done))) = tokio::time::timeout_at(deadline, inflight.join_next()).await
        {
            self.finish(done);
        }
    }

    // ---- deciding -----------------------------------------------------------------------

    /// One evaluation of the rules; returns when (unix ns) the next is due with nothing
    /// changing: a `for` hold, repeat or resolve coming due, a time rule's threshold
    /// reached, a refresh, or, while notifications wait, a second (their age is a gauge).
    fn evaluate(&mut self, announced: &[FreezeEvent]) -> Option<i64> {
        match self.outbox.follow_path() {
            Ok(true) => tracing::warn!(
                "state database put back at its path: the alert engine writes there now"
            ),
            Ok(false) => {}
            Err(e) => self.db_failed("reopening the state database", &e),
        }
        let now = real_ns();
        let outbox = match self.outbox.stats() {
            Ok(stats) => stats,
            Err(e) => {
                self.db_failed("reading the outbox", &e);
                OutboxStats::default()
            }
        };
        match self.outbox.silences(now) {
            Ok(s) => self.silences = s,
            Err(e) => self.db_failed("reading the silences", &e),
        }
        let status = self.status.snapshot();
        let facts = Facts {
            now_ns: now,
            freezes: announced,
            status: &status,
            outbox,
        };
        let conditions = rules::evaluate(&self.config, &facts, &mut self.memory);
        let rules_due = rules::next_due(&self.config, &facts);
        let transitions = self.lifecycle.step(&self.config, conditions, now);
        let retracted = self.explain_freezes(&transitions, announced, now);
        for t in &transitions {
            tracing::warn!(
                rule = t.alert.rule.as_str(),
                fingerprint = %t.alert.fingerprint,
                notification = t.kind.as_str(),
                "{}",
                t.alert.title
            );
        }
        let (mut batch, mut held) = self.silence(transitions, now);
        // Consequences that paged before their freeze was announced: taken back from the
        // outbox and folded into the freeze's notification, recorded after it.
        for (t, notes, update) in retracted {
            batch.push((t, notes));
            held.push(update);
        }
        batch.extend(self.refreshes(now));
        let recorded = !batch.is_empty() || !self.unrecorded.is_empty() || !held.is_empty();
        if recorded {
            self.unrecorded.extend(batch);
            self.unrecorded_held.extend(held);
            match self
                .outbox
                .record_with(&self.unrecorded, &self.unrecorded_held, now)
            {
                Ok(recorded) => {
                    self.unrecorded.clear();
                    self.unrecorded_held.clear();
                    self.db_ok();
                    for (channel, n) in recorded.dropped {
                        self.count(&channel, "dropped", n);
                    }
                    for (channel, n) in recorded.grouped {
                        self.count(&channel, "grouped", n);
                    }
                }
                Err(e) => {
                    self.db_failed("writing the outbox", &e);
                    let excess = self.unrecorded.len().saturating_sub(MAX_UNRECORDED);
                    if excess > 0 {
                        self.unrecorded.drain(..excess);
                        let excess = self.unrecorded_held.len().saturating_sub(MAX_UNRECORDED);
                        self.unrecorded_held.drain(..excess);
                        self.metrics
                            .dropped_total
                            .with_label_values(&["alert_transitions"])
                            .inc_by(excess as u64);
                    }
                }
            }
        }
        // What was just recorded counts at once (a fresh read only when something was).
        let outbox = if recorded {
            self.outbox.stats().unwrap_or(outbox)
        } else {
            outbox
        };
        self.publish(now, outbox);
        let backlog_due = (outbox.pending > 0).then_some(now + NANOS_PER_SEC);
        [
            rules_due,
            self.lifecycle.next_due(&self.config),
            self.next_refresh(),
            backlog_due,
            // A silence's end: what it held back is owed then.
            self.silences.iter().map(|s| s.ends_at_ns).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Applies the silences to one evaluation's transitions: a silenced one is recorded
    /// without notifications (counted `silenced` per channel it would have gone to), and
    /// an alert still firing whose silence has ended gets the notification it was owed.
    fn silence(
        &mut self,
        transitions: Vec<Transition>,
        now: i64,
    ) -> (Vec<(Transition, Vec<NewNotification>)>, Vec<HeldUpdate>) {
        let mut batch = Vec::new();
        let mut updates = Vec::new();
        for mut t in transitions {
            let a = &t.alert;
            let covering = silence::matching(&self.silences, a.rule.as_str(), &a.labels, now);
            let before = self.held.get(&a.fingerprint).copied();
            match silence::decide(t.kind, covering.map(|s| s.id), before) {
                Decision::Send(kind) => {
                    t.kind = kind;
                    if self.held.remove(&t.alert.fingerprint).is_some() {
                        updates.push(HeldUpdate {
                            fingerprint: t.alert.fingerprint.clone(),
                            silence_id: None,
                            owed: None,
                        });
                    }
                    let notes = self.route(&t, now);
                    batch.push((t, notes));
                }
                Decision::Hold(id) => {
                    let freeze = self.freeze_groups.get(&id).cloned().or_else(|| {
                        covering
                            .filter(|s| s.created_by == FREEZE_SILENCE)
                            .map(|_| (String::new(), String::new()))
                    });
                    tracing::info!(
                        rule = t.alert.rule.as_str(),
                        fingerprint = %t.alert.fingerprint,
                        notification = t.kind.as_str(),
                        silence = id,
                        "{}",
                        if freeze.is_some() {
                            "caused by a freeze: folded into its notification, not paged"
                        } else {
                            "silenced: recorded, not sent"
                        }
                    );
                    let mut notes = self.route(&t, now);
                    for note in &notes {
                        let outcome = if freeze.is_some() {
                            "explained"
                        } else {
                            "silenced"
                        };
                        self.count(&note.channel, outcome, 1);
                    }
                    // A consequence joins the freeze's notification if it still waits.
                    let joins = match &freeze {
                        Some((key, _)) if !key.is_empty() && t.kind == NotificationKind::Firing => {
                            for note in &mut notes {
                                note.group = Some(GroupTarget::consequence(key));
                            }
                            notes
                        }
                        _ => Vec::new(),
                    };
                    let owed = if t.alert.rule.one_shot() {
                        None
                    } else {
                        silence::hold(t.kind, id, before)
                    };
                    match owed {
                        Some(h) => self.held.insert(t.alert.fingerprint.clone(), h),
                        None => self.held.remove(&t.alert.fingerprint),
                    };
                    updates.push(HeldUpdate {
                        fingerprint: t.alert.fingerprint.clone(),
                        silence_id: Some(id),
                        owed: owed.map(|h| h.kind),
                    });
                    batch.push((t, joins));
                }
            }
        }
        // Owed alerts no silence covers any more: notify now if they still fire.
        let firing: HashMap<String, super::lifecycle::Alert> = self
            .lifecycle
            .firing()
            .into_iter()
            .map(|a| (a.fingerprint.clone(), a.clone()))
            .collect();
        let mut owed: Vec<(String, Held)> =
            self.held.iter().map(|(f, h)| (f.clone(), *h)).collect();
        owed.sort_by(|a, b| a.0.cmp(&b.0));
        for (fingerprint, h) in owed {
            let Some(alert) = firing.get(&fingerprint) else {
                self.held.remove(&fingerprint);
                continue;
            };
            if silence::matching(&self.silences, alert.rule.as_str(), &alert.labels, now).is_some()
            {
                continue;
            }
            self.held.remove(&fingerprint);
            updates.push(HeldUpdate {
                fingerprint: fingerprint.clone(),
                silence_id: None,
                owed: None,
            });
            let t = Transition {
                kind: h.kind,
                alert: alert.clone(),
            };
            let mut notes = self.route(&t, now);
            let by_freeze = self
                .freeze_groups
                .get(&h.silence_id)
                .map(|(_, title)| title.clone());
            for note in &mut notes {
                let why = match &by_freeze {
                    Some(freeze) => format!(
                        "\nIt began during or just after a freeze ({freeze}) and still holds {} \
                         after the machine was running again: not only the freeze's doing.",
                        human(self.config.freeze_settle.as_nanos() as i64)
                    ),
                    None => format!(
                        "\nHeld back by silence {} until it ended at {}.",
                        h.silence_id,
                        rfc3339(now)
                    ),
                };
                note.message.text.push_str(&why);
            }
            tracing::info!(
                rule = alert.rule.as_str(),
                fingerprint = %fingerprint,
                silence = h.silence_id,
                "silence ended while the alert fires: sending what it held back"
            );
            batch.push((t, notes));
        }
        (batch, updates)
    }

    /// Whether an active silence covers this alert now.
    fn silenced(&self, alert: &super::lifecycle::Alert, now: i64) -> bool {
        silence::matching(&self.silences, alert.rule.as_str(), &alert.labels, now).is_some()
    }

    /// One notification per channel the rule sends to.
    fn route(&self, t: &Transition, now: i64) -> Vec<NewNotification> {
        let rule = self.config.rule(t.alert.rule);
        self.channels
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                rule.channels.is_empty() || rule.channels.iter().any(|n| n == c.name())
            })
            .map(|(i, c)| NewNotification {
                channel: c.name().to_string(),
                message: self.message(t, i, now),
                group: (rule.groups() && c.groups()).then(|| {
                    let labels = group::labels(rule, &t.alert.labels);
                    GroupTarget {
                        key: group::key(rule.kind.as_str(), &labels),
                        labels,
                        wait_ns: rule.group_wait.as_nanos() as i64,
                        interval_ns: rule.group_interval.as_nanos() as i64,
                        consequence: false,
                    }
                }),
            })
            .collect()
    }

    /// A freeze that fired and that the app was frozen with opens a silence over the
    /// rules whose alerts it causes, from its start to `freeze_settle` after its end
    /// (stored, so `silence list` and the API show it and a restart keeps it): what
    /// begins then is folded into the freeze's notification; what outlasts it pages then,
    /// saying it began during the freeze. The rule: [`explains_the_app`].
    fn explain_freezes(
        &mut self,
        transitions: &[Transition],
        announced: &[FreezeEvent],
        now: i64,
    ) -> Vec<(Transition, Vec<NewNotification>, HeldUpdate)> {
        let mut retracted = Vec::new();
        if self.config.freeze_settle.is_zero() {
            return retracted;
        }
        let freeze_rule = self.config.rule(RuleKind::Freeze).clone();
        for t in transitions {
            if t.alert.rule != RuleKind::Freeze || t.kind != NotificationKind::Firing {
                continue;
            }
            let Some(event) = announced
                .iter()
                .find(|e| e.started_at_ns == t.alert.started_at_ns)
            else {
                continue;
            };
            if !explains_the_app(event) {
                continue;
            }
            let ends = event.started_at_ns
                + event.duration_ns
                + self.config.freeze_settle.as_nanos() as i64;
            if ends <= now {
                continue;
            }
            let key = group::key(
                RuleKind::Freeze.as_str(),
                &group::labels(&freeze_rule, &t.alert.labels),
            );
            for rule in RuleKind::ALL.into_iter().filter(|r| r.freeze_consequence()) {
                let s = Silence {
                    id: 0,
                    rule: rule.as_str().to_string(),
                    source: None,
                    starts_at_ns: event.started_at_ns,
                    ends_at_ns: ends,
                    reason: format!("caused by the freeze: {}", t.alert.title),
                    created_by: FREEZE_SILENCE.to_string(),
                    created_at_ns: now,
                    expired_at_ns: None,
                };
                match self.outbox.insert_silence(&s) {
                    Ok(id) => {
                        self.freeze_groups
                            .insert(id, (key.clone(), t.alert.title.clone()));
                        self.silences.push(Silence { id, ..s });
                        retracted.extend(self.retract(rule, id, event.started_at_ns, &key, now));
                    }
                    Err(e) => self.db_failed("storing a freeze's silence", &e),
                }
            }
        }
        let live: std::collections::HashSet<i64> = self.silences.iter().map(|s| s.id).collect();
        self.freeze_groups
            .retain(|id, _| live.contains(id) || self.held.values().any(|h| h.silence_id == *id));
        retracted
    }

    /// Alerts of `rule` that fired since `since_ns` and whose notification still waits
    /// unsent (their source's poll was evaluated just before the freeze was announced):
    /// taken out of the outbox (counted `explained`), held by freeze silence `silence_id`
    /// (owed a firing if they outlast it) and folded into the freeze's group `key`.
    fn retract(
        &mut self,
        rule: RuleKind,
        silence_id: i64,
        since_ns: i64,
        key: &str,
        now: i64,
    ) -> Vec<(Transition, Vec<NewNotification>, HeldUpdate)> {
        let alerts: Vec<super::lifecycle::Alert> = self
            .lifecycle
            .firing()
            .into_iter()
            .filter(|a| a.rule == rule && a.last_notified_ns >= since_ns)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for alert in alerts {
            let taken = match self.outbox.retract(&alert.fingerprint, now) {
                Ok(taken) => taken,
                Err(e) => {
                    self.db_failed("taking back a freeze's consequence", &e);
                    continue;
                }
            };
            if taken.is_empty() {
                continue;
            }
            let mut notes = Vec::new();
            for (channel, message) in taken {
                self.count(&channel, "explained", 1);
                notes.push(NewNotification {
                    channel,
                    message,
                    group: Some(GroupTarget::consequence(key)),
                });
            }
            self.held.insert(
                alert.fingerprint.clone(),
                Held {
                    silence_id,
                    kind: NotificationKind::Firing,
                },
            );
            tracing::info!(rule = rule.as_str(), fingerprint = %alert.fingerprint, "caused by a freeze announced just after it: taken back and folded into the freeze's notification");
            out.push((
                Transition {
                    kind: NotificationKind::Firing,
                    alert: alert.clone(),
                },
                notes,
                HeldUpdate {
                    fingerprint: alert.fingerprint,
                    silence_id: Some(silence_id),
                    owed: Some(NotificationKind::Firing),
                },
            ));
        }
        out
    }

    /// Re-sends of firing alerts to channels that forget them (Alertmanager's `endsAt`).
    fn refreshes(&mut self, now: i64) -> Vec<(Transition, Vec<NewNotification>)> {
        let mut out = Vec::new();
        let firing: Vec<_> = self.lifecycle.firing().into_iter().cloned().collect();
        let live: std::collections::HashSet<&str> =
            firing.iter().map(|a| a.fingerprint.as_str()).collect();
        self.refreshed.retain(|(f, _), _| live.contains(f.as_str()));
        for alert in &firing {
            // A silenced alert is not refreshed: the channel lets it lapse.
            if self.silenced(alert, now) {
                continue;
            }
            let lanes: Vec<_> = self.refreshing_channels(alert).collect();
            for (i, every) in lanes {
                let last = self
                    .refreshed
                    .entry((alert.fingerprint.clone(), i))
                    .or_insert(alert.last_notified_ns);
                if now - *last < every.as_nanos() as i64 {
                    continue;
                }
                *last = now;
                let t = Transition {
                    kind: NotificationKind::Repeat,
                    alert: alert.clone(),
                };
                let note = NewNotification {
                    channel: self.channels[i].name().to_string(),
                    message: self.message(&t, i, now),
                    group: None,
                };
                out.push((t, vec![note]));
            }
        }
        out
    }

    /// The channels an alert's rule sends to that forget a firing alert unless it is sent
    /// again, with how often: (channel index, refresh interval).
    fn refreshing_channels<'a>(
        &'a self,
        alert: &super::lifecycle::Alert,
    ) -> impl Iterator<Item = (usize, Duration)> + 'a {
        let rule = self.config.rule(alert.rule);
        self.channels.iter().enumerate().filter_map(move |(i, c)| {
            let sends = rule.channels.is_empty() || rule.channels.iter().any(|n| n == c.name());
            c.refresh_interval()
                .filter(|_| sends)
                .map(|every| (i, every))
        })
    }

    /// When [`Engine::refreshes`] next has a re-send to make.
    fn next_refresh(&self) -> Option<i64> {
        let mut earliest = None;
        let now = real_ns();
        for alert in self.lifecycle.firing() {
            if self.silenced(alert, now) {
                continue;
            }
            for (i, every) in self.refreshing_channels(alert) {
                let last = self
                    .refreshed
                    .get(&(alert.fingerprint.clone(), i))
                    .copied()
                    .unwrap_or(alert.last_notified_ns);
                let at = last + every.as_nanos() as i64;
                earliest = Some(earliest.map_or(at, |e: i64| e.min(at)));
            }
        }
        earliest
    }

    fn message(&self, t: &Transition, channel: usize, now: i64) -> Message {
        let a = &t.alert;
        let (title, text) = match t.kind {
            NotificationKind::Firing => (a.title.clone(), a.text.clone()),
            NotificationKind::Repeat => (
                format!("still firing: {}", a.title),
                format!("{}\nFiring since {}.", a.text, rfc3339(a.started_at_ns)),
            ),
            NotificationKind::Resolved => {
                let ended = a.ended_at_ns.unwrap_or(now);
                (
                    format!(
                        "resolved: {} ({}) after {}",
                        a.rule.as_str(),
                        a.labels.values().cloned().collect::<Vec<_>>().join(", "),
                        human(ended - a.started_at_ns)
                    ),
                    format!(
                        "Cleared at {} after {}. It was: {}",
                        rfc3339(ended),
                        human(ended - a.started_at_ns),
                        a.text
                    ),
                )
            }
        };
        let name = self.channels[channel].name();
        Message {
            key: notification_key(&a.fingerprint, t.kind, name, now),
            fingerprint: a.fingerprint.clone(),
            rule: a.rule.as_str().to_string(),
            kind: t.kind,
            severity: a.severity,
            labels: a.labels.clone(),
            title: format!("[{}] {title}", self.host),
            text: format!("{text}\nHost: {}.", self.host),
            started_at_ns: a.started_at_ns,
            ended_at_ns: a.ended_at_ns,
            created_at_ns: now,
            runbook_url: format!("{}#{}", self.config.runbook_base, a.rule.runbook_anchor()),
            host: self.host.clone(),
            count: a.count.max(1),
            group: None,
        }
    }

    fn publish(&self, now: i64, outbox: OutboxStats) {
        let m = &self.metrics.alerts;
        let mut per_rule: HashMap<RuleKind, usize> = HashMap::new();
        for a in self.lifecycle.firing() {
            *per_rule.entry(a.rule).or_default() += 1;
        }
        for rule in RuleKind::ALL {
            m.alerts_firing
                .with_label_values(&[rule.as_str()])
                .set(per_rule.get(&rule).copied().unwrap_or(0) as f64);
        }
        m.outbox_pending.set(outbox.pending as f64);
        m.outbox_oldest_age_seconds.set(
            outbox
                .oldest_created_ns
                .map_or(0.0, |t| (now - t).max(0) as f64 / 1e9),
        );
    }

    // ---- delivering ---------------------------------------------------------------------

    fn dispatch(&mut self, inflight: &mut JoinSet<Attempted>) {
        let now = real_ns();
        for (i, channel) in self.channels.iter().enumerate() {
            let lane = self.lanes.entry(i).or_default();
            if lane.in_flight || now < lane.blocked_until_ns {
                continue;
            }
            let (limit, window) = self.limits[i];
            if limit > 0 {
                match self.outbox.sent_since(channel.name(), now - window) {
                    Ok(sent) if sent.len() >= limit as usize => {
                        // Full: wait until the oldest send in the window ages out.
                        let opens = sent[sent.len() - limit as usize] + window;
                        if !lane.limited {
                            tracing::warn!(channel = %channel.name(), limit, "channel at its rate limit; what comes due waits and goes as one digest when the window opens");
                        }
                        lane.limited = true;
                        lane.blocked_until_ns = opens.max(now + 1);
                        continue;
                    }
                    Ok(_) if lane.limited => {
                        lane.limited = false;
                        match self.outbox.fold_digest(channel.name(), limit, now) {
                            Ok(folded) => self
                                .metrics
                                .alerts
                                .notifications_total
                                .with_label_values(&[channel.name(), "folded"])
                                .inc_by(folded),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot fold a digest; sending one by one")
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the channel's sends; its rate limit waits")
                    }
                }
            }
            let due = match self.outbox.next_due(channel.name(), now) {
                Ok(next) => {
                    if next.unreadable > 0 {
                        tracing::error!(channel = %channel.name(), count = next.unreadable, "stored notifications could not be read; gave up on them (see /api/v1/alerts)");
                        self.metrics
                            .alerts
                            .notifications_total
                            .with_label_values(&[channel.name(), "failed"])
                            .inc_by(next.unreadable);
                    }
                    match next.due {
                        Some(due) => due,
                        None => continue,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox; delivery waits");
                    continue;
                }
            };
            if due.message.group.is_some() {
                // From here on the row carries exactly what this send carries.
                if let Err(e) = self.outbox.seal(due.id) {
                    tracing::error!(error = %e, "cannot seal a group for sending; delivery waits");
                    continue;
                }
            }
            lane.in_flight = true;
            let request = channel.request(&due.message, now);
            let span = tracing::info_span!(
                "stallwatch.deliver",
                channel = %channel.name(),
                rule = %due.message.rule,
                notification = due.message.kind.as_str(),
                // As i64: `tracing-opentelemetry` exports unsigned fields as strings.
                attempt = i64::from(due.attempts + 1),
                outcome = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let attempt = send(
                self.client.clone(),
                request,
                due.message.key.clone(),
                self.timeouts[i],
                Attempted {
                    channel: i,
                    id: due.id,
                    attempts: due.attempts + 1,
                    message: due.message,
                    result: Err(String::new()),
                    span: span.clone(),
                },
            );
            inflight.spawn(attempt.instrument(span));
        }
    }

    /// When the next notification becomes due on a channel that is free to send.
    fn next_wake(&self) -> Option<Instant> {
        let now = real_ns();
        let mut earliest: Option<i64> = None;
        for (i, channel) in self.channels.iter().enumerate() {
            let lane = self.lanes.get(&i);
            if lane.is_some_and(|l| l.in_flight) {
                continue;
            }
            let Ok(Some(at)) = self.outbox.next_attempt_at(channel.name()) else {
                continue;
            };
            let at = at.max(lane.map_or(0, |l| l.blocked_until_ns));
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        earliest.map(|at| Instant::now() + Duration::from_nanos((at - now).max(0) as u64))
    }

    fn finish(&mut self, done: Attempted) {
        if done.channel == usize::MAX {
            return self.finish_ping(done);
        }
        let now = real_ns();
        let name = self.channels[done.channel].name().to_string();
        let span = done.span.clone();
        let _in = span.enter();
        if let Ok((status, _, _)) = &done.result {
            span.record("http.response.status_code", i64::from(*status));
        }
        let (verdict, error) = match &done.result {
            Ok((status, retry_after, body)) => (
                backoff::classify(*status, *retry_after),
                format!(
                    "HTTP {status}{}",
                    if body.is_empty() {
                        String::new()
                    } else {
                        format!(": {body}")
                    }
                ),
            ),
            Err(e) => (Verdict::Retry { retry_after: None }, e.clone()),
        };
        let error: String = self.redact(&error).chars().take(MAX_ERROR_BODY).collect();
        let error = error.trim().to_string();
        let lane = self.lanes.entry(done.channel).or_default();
        lane.in_flight = false;
        let stored = match verdict {
            Verdict::Delivered => {
                lane.blocked_until_ns = 0;
                if std::mem::take(&mut lane.failing) {
                    tracing::info!(channel = %name, "channel delivering again");
                }
                tracing::info!(
                    channel = %name,
                    rule = %done.message.rule,
                    notification = done.message.kind.as_str(),
                    key = %done.message.key,
                    attempts = done.attempts,
                    "notification delivered"
                );
                self.count(&name, "sent", 1);
                span.record("outcome", "sent");
                self.outbox.mark_sent(done.id, done.attempts, now)
            }
            Verdict::Retry { retry_after } => {
                let delay = backoff::retry_delay(
                    done.attempts,
                    self.config.backoff_initial,
                    self.config.backoff_max,
                    retry_after,
                    fastrand::f64(),
                );
                let next = now + delay.as_nanos() as i64;
                lane.blocked_until_ns = next;
                if !std::mem::replace(&mut lane.failing, true) {
                    tracing::warn!(channel = %name, error = %error, "channel failing; notifications wait in the outbox and are retried");
                } else {
                    tracing::debug!(channel = %name, error = %error, attempts = done.attempts, retry_in_ms = delay.as_millis() as u64, "send failed again");
                }
                self.count(&name, "retried", 1);
                span.record("outcome", "retried");
                span.record("otel.status_code", "ERROR");
                self.outbox.mark_retry(done.id, done.attempts, next, &error)
            }
            Verdict::GiveUp => {
                lane.blocked_until_ns = 0;
                tracing::error!(channel = %name, key = %done.message.key, error = %error, "channel refused a notification; giving up on it (see /api/v1/alerts)");
                self.count(&name, "failed", 1);
                span.record("outcome", "failed");
                span.record("otel.status_code", "ERROR");
                self.outbox.mark_failed(done.id, done.attempts, &error, now)
            }
        };
        if let Err(e) = stored {
            self.db_failed("recording a delivery", &e);
        }
    }

    /// The dead-man's switch: the URL while healthy, its `/fail` variant when not.
    fn ping(&self, url: String) -> impl std::future::Future<Output = Attempted> + 'static {
        let status = self.status.snapshot();
        let degraded = status.state_db_error.is_some()
            || self.state_db_failing
            || self
                .lifecycle
                .firing()
                .iter()
                .any(|a| matches!(a.rule, RuleKind::OutboxBacklog | RuleKind::StateDb));
        let url = if degraded {
            format!("{}/fail", url.trim_end_matches('/'))
        } else {
            url
        };
        let request = Request {
            method: Method::Post,
            url,
            headers: Vec::new(),
            body: Vec::new(),
        };
        send(
            self.client.clone(),
            request,
            String::new(),
            DEADMAN_TIMEOUT,
            Attempted {
                channel: usize::MAX,
                id: 0,
                attempts: 1,
                message: placeholder_message(),
                result: Err(String::new()),
                span: tracing::Span::none(),
            },
        )
    }

    fn finish_ping(&mut self, done: Attempted) {
        let ok = matches!(done.result, Ok((200..=299, _, _)));
        self.count(DEADMAN_CHANNEL, if ok { "sent" } else { "failed" }, 1);
        if !ok {
            let error = match &done.result {
                Ok((status, _, _)) => format!("HTTP {status}"),
                Err(e) => e.clone(),
            };
            tracing::warn!(error = %self.redact(&error), "dead-man's switch ping failed");
        }
    }

    fn count(&self, channel: &str, outcome: &str, n: u64) {
        self.metrics
            .alerts
            .notifications_total
            .with_label_values(&[channel, outcome])
            .inc_by(n);
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self
            .secrets
            .iter()
            .filter(|s| s.chars().count() >= MIN_SECRET_CHARS)
        {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }

    fn db_failed(&mut self, doing: &str, e: &rusqlite::Error) {
        self.metrics.state_db_errors_total.inc();
        if !std::mem::replace(&mut self.state_db_failing, true) {
            tracing::error!(error = %e, "state database error while {doing}; alerts are kept in memory and retried");
        }
    }

    fn db_ok(&mut self) {
        if std::mem::take(&mut self.state_db_failing) {
            tracing::info!("outbox writable again");
        }
    }
}

/// Whether a freeze stopped the app as well as the sidecar, so that the app's alerts
/// around it are its consequences: the machine paused, suspended or rebooted, or the
/// sidecar's process stalled (on a Fly machine or in a container the app shares its
/// cgroup, its CPU and its host) — unless the evidence known when it is announced says
/// only the sidecar was stopped (`sigcont` without `cgroup_freeze`: a `SIGSTOP` of this
/// process). A restart of the sidecar says nothing about the app, whose alerts then page.
/// Evidence is sampled once a second, so it may arrive after the announcement: a `SIGSTOP`
/// of the sidecar alone can then fold the app's alerts of the settle time too; what still
/// holds when it ends pages then.
pub fn explains_the_app(event: &FreezeEvent) -> bool {
    use crate::freeze::FreezeKind as K;
    let saw = |name: &str| event.channels.iter().any(|c| c.channel == name);
    match event.kind {
        K::VmPause | K::Suspend | K::Reboot => true,
        K::ProcessStall => saw("cgroup_freeze") || !saw("sigcont"),
        K::Restart | K::WallClockStep => false,
    }
}

/// Returns when another process wrote the state DB; never without a watch (or after it
/// failed).
async fn written(watch: Option<&DbWatch>) {
    match watch {
        Some(w) if w.written().await.is_ok() => {}
        _ => std::future::pending().await,
    }
}

/// The MONOTONIC instant of wall-clock time `at_ns` (unix ns), `now` if it is past; far
/// off if there is none.
fn instant_at(at_ns: Option<i64>, now: Instant) -> Instant {
    match at_ns {
        Some(at) => now + Duration::from_nanos((at - real_ns()).max(0) as u64),
        None => now + MAX_IDLE,
    }
}

/// Timeout of one dead-man's switch ping.
pub const DEADMAN_TIMEOUT: Duration = Duration::from_secs(10);

fn placeholder_message() -> Message {
    Message {
        key: String::new(),
        fingerprint: String::new(),
        rule: String::new(),
        kind: NotificationKind::Repeat,
        severity: super::Severity::Info,
        labels: Default::default(),
        title: String::new(),
        text: String::new(),
        started_at_ns: 0,
        ended_at_ns: None,
        created_at_ns: 0,
        runbook_url: String::new(),
        host: String::new(),
        count: 1,
        group: None,
    }
}

/// Sends one request; every request carries the notification's idempotency key.
async fn send(
    client: reqwest::Client,
    request: Request,
    key: String,
    timeout: Duration,
    mut done: Attempted,
) -> Attempted {
    let mut builder = match request.method {
        Method::Get => client.get(&request.url),
        Method::Post => client.post(&request.url),
    }
    .timeout(timeout)
    .body(request.body);
    if !key.is_empty() {
        builder = builder.header("Idempotency-Key", key);
    }
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    done.result = match builder.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| backoff::parse_retry_after(v, std::time::SystemTime::now()));
            let body = if response.status().is_success() {
                String::new()
            } else {
                let text = response.text().await.unwrap_or_default();
                text.chars().take(MAX_ERROR_READ).collect::<String>()
            };
            Ok((status, retry_after, body))
        }
        Err(e) => Err(describe(&e.without_url())),
    };
    done
}

/// A transport error as one line, with its causes, and no URL.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}
