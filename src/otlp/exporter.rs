//! The exporter thread: finished workflows in (a bounded queue from the source threads),
//! freezes from the state DB (its own read-only connection), spans out to the collector
//! in batches over OTLP/HTTP.
//!
//! Nothing waits for it: sources hand over finished workflows with `try_send` (full →
//! dropped and counted), the tick thread never sees it. It runs its own current-thread
//! runtime for the HTTP client. A collector that is down or slow costs one request per
//! backoff period (full jitter, 1 s doubling to 30 s, `Retry-After` honoured); the batch
//! in flight is kept and retried, new spans queue behind it up to [`MAX_QUEUED_SPANS`]
//! and beyond that are dropped and counted in `stallwatch_dropped_total{queue="otlp_spans"}`.
//! The first failure of a streak is logged, and the recovery; nothing in between.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;

use super::own_spans::OwnSpans;
use super::proto::{
    Attribute, ExportTraceServiceRequest, ExportTraceServiceResponse, InstrumentationScope,
    KeyValue, Resource, ResourceSpans, ScopeSpans, Span,
};
use super::traces::Traces;
use super::workflows::CompletedWorkflow;
use crate::backoff::{classify, describe_transport_error, parse_retry_after, retry_delay, Verdict};
use crate::clock::real_ns;
use crate::config::otlp::OtlpConfig;
use crate::metrics::Metrics;
use crate::state::StateReader;

/// Timeout of one export request, connect included (the OpenTelemetry SDK's default).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect timeout: a collector that does not accept within this is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Spans per request (the OpenTelemetry SDK's default batch size).
pub const MAX_BATCH_SPANS: usize = 512;
/// Spans waiting for the collector; about 300 bytes each, so a few MB at most.
pub const MAX_QUEUED_SPANS: usize = 10_000;
/// How long spans may wait to fill a batch: traces show up within seconds.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Backoff after a failed export: first ceiling, and the most it grows to.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often new freezes are read from the state DB (one indexed query).
pub const FREEZE_READ_INTERVAL: Duration = Duration::from_secs(1);
/// Most freezes one read returns.
pub const MAX_FREEZES_PER_READ: i64 = 1_000;
/// Each read of new freezes looks back this far before the latest start seen (and
/// before now): events are recorded in start order except around a clock step.
pub const FREEZE_READ_OVERLAP_NS: i64 = 600 * 1_000_000_000;
/// Longest sleep of the loop between looks at its queue, clock and stop flag.
pub const LOOP_TICK: Duration = Duration::from_millis(250);
/// At shutdown: the time left for the last batch, after which spans still queued are
/// dropped (counted), so a dead collector cannot hold up a stop.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest collector answer read (a partial-success message is a few bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;

pub(super) struct Exporter {
    pub config: OtlpConfig,
    pub metrics: Arc<Metrics>,
    pub reader: StateReader,
    pub workflows: Receiver<(CompletedWorkflow, i64)>,
    pub buffered_since: Vec<Arc<AtomicI64>>,
    pub traces: Traces,
    pub own_spans: Option<OwnSpans>,
    pub stop: Arc<AtomicBool>,
}

/// Why an export attempt did not deliver.
enum Failure {
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    GiveUp {
        reason: String,
    },
    Stopped,
}

impl Exporter {
    pub fn run(mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the OTLP runtime");
        let client = reqwest::Client::builder()
            .user_agent(concat!("stallwatch/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .build()
            .expect("building an HTTP client");
        tracing::info!(
            url = %self.config.shown_url(),
            service_name = %self.config.service_name,
            "exporting traces over OTLP/HTTP"
        );
        let mut queue: VecDeque<Span> = VecDeque::new();
        let mut freeze_cursor: Option<i64> = None;
        let mut last_freeze_read: Option<Instant> = None;
        let mut oldest_queued: Option<Instant> = None;
        let mut next_attempt = Instant::now();
        let mut failures: u32 = 0;
        let mut told_rejected = false;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            // Read the sources' buffers before draining their queue: a workflow that left
            // a buffer is then already in the queue.
            let buffered: Vec<Option<i64>> = self
                .buffered_since
                .iter()
                .map(|a| Some(a.load(Ordering::SeqCst)).filter(|v| *v != i64::MAX))
                .collect();
            while let Ok((w, gap_min_ns)) = self.workflows.try_recv() {
                let lost = self.traces.add_workflow(w, gap_min_ns);
                self.dropped(lost);
            }
            if stopping || last_freeze_read.is_none_or(|t| t.elapsed() >= FREEZE_READ_INTERVAL) {
                self.read_freezes(&mut freeze_cursor);
                last_freeze_read = Some(Instant::now());
            }
            let built = self.traces.build(real_ns(), &buffered, stopping);
            if built.workflows + built.freezes_alone > 0 {
                tracing::debug!(
                    workflows = built.workflows,
                    freezes = built.freezes_alone,
                    spans = built.spans.len(),
                    "traces built"
                );
            }
            let mut spans = built.spans;
            if let Some(own) = &self.own_spans {
                // Only what fits: the rest waits in the hand-over (itself bounded).
                let room = MAX_QUEUED_SPANS.saturating_sub(queue.len() + spans.len());
                let (taken, lost) = own.take(room);
                self.dropped(lost);
                spans.extend(taken);
            }
            let room = MAX_QUEUED_SPANS.saturating_sub(queue.len());
            let lost = spans.len().saturating_sub(room);
            self.dropped(lost as u64);
            if !spans.is_empty() && queue.is_empty() {
                oldest_queued = Some(Instant::now());
            }
            queue.extend(spans.into_iter().take(room));

            if stopping {
                self.final_flush(&runtime, &client, queue);
                return;
            }
            let batch_ready = queue.len() >= MAX_BATCH_SPANS
                || oldest_queued.is_some_and(|t| t.elapsed() >= BATCH_DELAY);
            if !queue.is_empty() && batch_ready && Instant::now() >= next_attempt {
                let n = queue.len().min(MAX_BATCH_SPANS);
                let batch: Vec<Span> = queue.iter().take(n).cloned().collect();
                let result = runtime.block_on(self.send(&client, batch, None));
                match result {
                    Ok(rejected) => {
                        queue.drain(..n);
                        oldest_queued = (!queue.is_empty()).then(Instant::now);
                        if failures > 0 {
                            tracing::info!(
                                url = %self.config.shown_url(),
                                failed_attempts = failures,
                                "OTLP collector reachable again; queued spans are going out"
                            );
                        }
                        failures = 0;
                        if rejected > 0 {
                            self.dropped(rejected);
                            if !told_rejected {
                                tracing::warn!(
                                    url = %self.config.shown_url(),
                                    rejected_spans = rejected,
                                    "OTLP collector rejected some spans (partial success); counted as dropped, not retried"
                                );
                                told_rejected = true;
                            }
                        }
                    }
                    Err(Failure::Stopped) => {}
                    Err(Failure::GiveUp { reason }) => {
                        queue.drain(..n);
                        self.dropped(n as u64);
                        if failures == 0 {
                            tracing::warn!(
                                url = %self.config.shown_url(),
                                spans = n,
                                error = %reason,
                                "OTLP collector refused spans; dropped them (check otlp.endpoint and otlp.headers)"
                            );
                        }
                        failures += 1;
                        next_attempt = Instant::now() + self.backoff(failures, None);
                    }
                    Err(Failure::Retry {
                        reason,
                        retry_after,
                    }) => {
                        if failures == 0 {
                            tracing::warn!(
                                url = %self.config.shown_url(),
                                error = %reason,
                                queued_spans = queue.len(),
                                "OTLP collector unreachable; keeping spans and retrying with backoff"
                            );
                        }
                        failures += 1;
                        next_attempt = Instant::now() + self.backoff(failures, retry_after);
                    }
                }
            }
            match self.workflows.recv_timeout(LOOP_TICK) {
                Ok((w, gap_min_ns)) => {
                    let lost = self.traces.add_workflow(w, gap_min_ns);
                    self.dropped(lost);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every source is gone: only the stop flag is left to wait for.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(LOOP_TICK),
            }
        }
    }

    fn dropped(&self, n: u64) {
        if n > 0 {
            self.metrics
                .dropped_total
                .with_label_values(&[DROP_QUEUE])
                .inc_by(n);
        }
    }

    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        retry_delay(
            failures,
            INITIAL_BACKOFF,
            MAX_BACKOFF,
            retry_after,
            fastrand::f64(),
        )
        .max(LOOP_TICK)
    }

    /// Reads freezes recorded since the last read (with overlap; duplicates are ignored).
    fn read_freezes(&mut self, cursor: &mut Option<i64>) {
        let now = real_ns();
        let since = match *cursor {
            Some(latest) => latest.min(now) - FREEZE_READ_OVERLAP_NS,
            None => now - super::traces::FREEZE_RETENTION_NS,
        };
        match self.reader.events_since(since, MAX_FREEZES_PER_READ) {
            Ok(events) => {
                let latest = events.iter().map(|e| e.event.started_at_ns).max();
                *cursor = Some(cursor.unwrap_or(since).max(latest.unwrap_or(since)));
                self.traces.add_freezes(events);
            }
            Err(e) => {
                self.metrics.state_db_errors_total.inc();
                tracing::warn!(error = %e, "cannot read freezes for traces; trying again");
            }
        }
    }

    fn request(&self, spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        KeyValue::string("service.name", self.config.service_name.as_str()),
                        KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
                    ],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "stallwatch".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
        .encode_to_vec()
    }

    /// One POST of `spans`; the spans the collector rejected (partial success) on 2xx.
    /// Gives up early when the stop flag is raised, or after `deadline`.
    async fn send(
        &self,
        client: &reqwest::Client,
        spans: Vec<Span>,
        deadline: Option<Duration>,
    ) -> Result<u64, Failure> {
        let mut request = client
            .post(&self.config.traces_url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(self.request(spans));
        if let Some(d) = deadline {
            request = request.timeout(d);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let attempt = async {
            let response = request.send().await.map_err(|e| Failure::Retry {
                reason: describe(&e),
                retry_after: None,
            })?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            match classify(status, retry_after) {
                Verdict::Delivered => {
                    let body = response.bytes().await.unwrap_or_default();
                    Ok(rejected_spans(&body))
                }
                Verdict::Retry { retry_after } => Err(Failure::Retry {
                    reason: format!("HTTP {status}"),
                    retry_after,
                }),
                Verdict::GiveUp => Err(Failure::GiveUp {
                    reason: format!("HTTP {status}"),
                }),
            }
        };
        // A stop must not wait out a hung collector.
        let stopped = async {
            if deadline.is_some() {
                return std::future::pending().await;
            }
            while !self.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(LOOP_TICK).await;
            }
        };
        tokio::select! {
            result = attempt => result,
            () = stopped => Err(Failure::Stopped),
        }
    }

    /// At shutdown: one last batch within [`FINAL_FLUSH_TIMEOUT`]; the rest is counted.
    fn final_flush(
        &self,
        runtime: &tokio::runtime::Runtime,
        client: &reqwest::Client,
        mut queue: VecDeque<Span>,
    ) {
        let started = Instant::now();
        while !queue.is_empty() {
            let left = FINAL_FLUSH_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let n = queue.len().min(MAX_BATCH_SPANS);
            let batch: Vec<Span> = queue.drain(..n).collect();
            match runtime.block_on(self.send(client, batch, Some(left))) {
                Ok(rejected) => self.dropped(rejected),
                Err(_) => {
                    self.dropped(n as u64);
                    break;
                }
            }
        }
        if !queue.is_empty() {
            tracing::warn!(
                spans = queue.len(),
                "stopping with spans the OTLP collector did not take; dropped"
            );
            self.dropped(queue.len() as u64);
        }
    }
}

/// The spans a 2xx answer says were rejected (OTLP partial success); 0 when it says none
/// or is not a protobuf answer.
fn rejected_spans(body: &[u8]) -> u64 {
    if body.len() > MAX_RESPONSE_BYTES {
        return 0;
    }
    ExportTraceServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_spans.max(0) as u64)
}

/// The `queue` label of `stallwatch_dropped_total` for spans that were never exported.
pub const DROP_QUEUE: &str = "otlp_spans";

/// A transport error as one line, without the URL (it may carry credentials).
fn describe(e: &reqwest::Error) -> String {
    describe_transport_error(e, "timed out")
}
