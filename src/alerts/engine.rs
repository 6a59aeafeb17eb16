//! The alert engine: a thread that evaluates the rules every second (at once when a
//! freeze is announced), records transitions in the outbox, and delivers due
//! notifications, at most one in flight per channel.
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

use super::backoff::{self, Verdict};
use super::channels::{self, Channel, Method, Request};
use super::lifecycle::{Lifecycle, Transition, ONE_SHOT_MEMORY_NS};
use super::outbox::{notification_key, NewNotification, Outbox};
use super::rules::{self, Facts, OutboxStats, RuleMemory};
use super::{Message, NotificationKind};
use crate::clock::real_ns;
use crate::config::alerts::{AlertsConfig, RuleKind};
use crate::freeze::FreezeEvent;
use crate::metrics::Metrics;
use crate::report::time::{human, rfc3339};
use crate::status::SharedStatus;

/// How often the rules are evaluated: sources poll every few seconds, so once a second
/// adds at most a second to an alert's latency.
pub const EVALUATE_INTERVAL: Duration = Duration::from_secs(1);
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
        let lifecycle = Lifecycle::restore(&config, firing, one_shots, now);
        let channels: Vec<Arc<dyn Channel>> = config
            .channels
            .iter()
            .map(|c| Arc::from(channels::build(c)))
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
            state_db_failing: false,
        };
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("stallwatch-alerts".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building the alert runtime")
                    .block_on(engine.run(freezes, stop_rx, startup))
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
}

/// What one send came back with.
struct Attempted {
    channel: usize,
    id: i64,
    attempts: u32,
    message: Message,
    result: Result<(u16, Option<Duration>, String), String>,
}

struct Engine {
    config: AlertsConfig,
    channels: Vec<Arc<dyn Channel>>,
    timeouts: Vec<Duration>,
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
    state_db_failing: bool,
}

impl Engine {
    async fn run(
        mut self,
        mut freezes: mpsc::Receiver<FreezeEvent>,
        mut stop: watch::Receiver<bool>,
        startup: Vec<FreezeEvent>,
    ) {
        let mut inflight: JoinSet<Attempted> = JoinSet::new();
        let mut announced = startup;
        let mut next_eval = Instant::now();
        let mut next_prune = Instant::now();
        let mut next_heartbeat = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_eval || !announced.is_empty() {
                self.evaluate(&std::mem::take(&mut announced));
                next_eval = now + EVALUATE_INTERVAL;
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
            let wake = self.next_wake().map_or(next_eval, |w| w.min(next_eval));
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
                        self.finish(done);
                    }
                }
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

    fn evaluate(&mut self, announced: &[FreezeEvent]) {
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
        let status = self.status.snapshot();
        let facts = Facts {
            now_ns: now,
            freezes: announced,
            status: &status,
            outbox,
        };
        let conditions = rules::evaluate(&self.config, &facts, &mut self.memory);
        let transitions = self.lifecycle.step(&self.config, conditions, now);
        for t in &transitions {
            tracing::warn!(
                rule = t.alert.rule.as_str(),
                fingerprint = %t.alert.fingerprint,
                notification = t.kind.as_str(),
                "{}",
                t.alert.title
            );
        }
        let mut batch: Vec<(Transition, Vec<NewNotification>)> = transitions
            .into_iter()
            .map(|t| {
                let notes = self.route(&t, now);
                (t, notes)
            })
            .collect();
        batch.extend(self.refreshes(now));
        let recorded = !batch.is_empty() || !self.unrecorded.is_empty();
        if recorded {
            self.unrecorded.extend(batch);
            match self.outbox.record(&self.unrecorded, now) {
                Ok(dropped) => {
                    self.unrecorded.clear();
                    self.db_ok();
                    for (channel, n) in dropped {
                        self.count(&channel, "dropped", n);
                    }
                }
                Err(e) => {
                    self.db_failed("writing the outbox", &e);
                    let excess = self.unrecorded.len().saturating_sub(MAX_UNRECORDED);
                    if excess > 0 {
                        self.unrecorded.drain(..excess);
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
            })
            .collect()
    }

    /// Re-sends of firing alerts to channels that forget them (Alertmanager's `endsAt`).
    fn refreshes(&mut self, now: i64) -> Vec<(Transition, Vec<NewNotification>)> {
        let mut out = Vec::new();
        let firing: Vec<_> = self.lifecycle.firing().into_iter().cloned().collect();
        let live: std::collections::HashSet<&str> =
            firing.iter().map(|a| a.fingerprint.as_str()).collect();
        self.refreshed.retain(|(f, _), _| live.contains(f.as_str()));
        for alert in &firing {
            let rule = self.config.rule(alert.rule);
            for (i, c) in self.channels.iter().enumerate() {
                let Some(every) = c.refresh_interval() else {
                    continue;
                };
                if !(rule.channels.is_empty() || rule.channels.iter().any(|n| n == c.name())) {
                    continue;
                }
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
                    channel: c.name().to_string(),
                    message: self.message(&t, i, now),
                };
                out.push((t, vec![note]));
            }
        }
        out
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
            lane.in_flight = true;
            let request = channel.request(&due.message, now);
            inflight.spawn(send(
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
                },
            ));
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
                self.outbox.mark_retry(done.id, done.attempts, next, &error)
            }
            Verdict::GiveUp => {
                lane.blocked_until_ns = 0;
                tracing::error!(channel = %name, key = %done.message.key, error = %error, "channel refused a notification; giving up on it (see /api/v1/alerts)");
                self.count(&name, "failed", 1);
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

/// The `channel` label of the dead-man's switch pings in `notifications_total`.
pub const DEADMAN_CHANNEL: &str = "deadman";
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
