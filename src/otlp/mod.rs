//! OTLP traces: each finished workflow becomes a trace with one span per step (the app's
//! own start and end times), its gaps, and the freezes that hit it; a freeze that hit no
//! traced workflow becomes a trace of its own. Optional: only with an `[otlp]` table.
//!
//! Owns: deciding when a workflow has finished ([`workflows`], pure, one buffer per
//! source), turning workflows and freezes into spans ([`spans`], pure), deciding when
//! each trace is built ([`traces`], pure), the wire format ([`proto`]), the exporter
//! thread ([`exporter`]) and the hand-over of the sidecar's own spans ([`own_spans`]).
//! Does not own: reading the app DB (the sources do; a source
//! thread hands its observations to its [`SourceTraces`] after each poll), detecting
//! freezes (read back from the state DB, as recorded), or the gap rules
//! ([`crate::signals::steps`] and [`crate::signals::attribution`], reused as they are).
//!
//! **Why these spans are built by hand, not through the OpenTelemetry SDK.** They are
//! history: their times come from the app's database and the state DB, often minutes
//! old, and their ids must be chosen (a freeze goes into the trace of the workflow it
//! hit, and a retried export must repeat the same ids). The SDK can do both
//! (`SpanBuilder` start times, a remote parent context), but only by going around its
//! own model. So [`spans`] builds the official `opentelemetry-proto` messages ([`proto`])
//! directly, and the exporter POSTs them with the `reqwest` client the sidecar already
//! has, under the sidecar's own rules (bounded queue, drop and count, full-jitter backoff
//! shared with the alert channels). The sidecar's own work happens now, in `tracing`
//! spans: those do go through the SDK and `tracing-opentelemetry` ([`own_spans`]), into
//! the same exporter queue. The integration test decodes what is sent with the same
//! types.

pub mod exporter;
pub mod own_spans;
pub mod proto;
pub mod spans;
pub mod traces;
pub mod workflows;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::config::otlp::OtlpConfig;

use crate::config::SourceConfig;
use crate::metrics::Metrics;
use crate::sources::Observation;
use crate::state::{StateError, StateReader};
use exporter::DROP_QUEUE;
use own_spans::OwnSpans;
use workflows::{CompletedWorkflow, WorkflowBuffer, COMPLETION_POLLS};

/// Finished workflows on their way from the source threads to the exporter.
pub const WORKFLOW_QUEUE: usize = 1_000;
/// How long a stop waits for the exporter's last batch before leaving it behind:
/// [`exporter::FINAL_FLUSH_TIMEOUT`] plus one loop tick, inside the 5 s an orchestrator
/// gives the whole shutdown.
pub const STOP_DEADLINE: Duration = Duration::from_millis(1_500);

/// A source thread's side of tracing: its workflow buffer and the queue to the exporter.
/// [`SourceTraces::observe`] never blocks: a full queue drops (and counts) a trace.
pub struct SourceTraces {
    buffer: WorkflowBuffer,
    gap_min_ns: i64,
    tx: SyncSender<(CompletedWorkflow, i64)>,
    /// The earliest start of a workflow still buffered (`i64::MAX`: none), for the
    /// exporter's freeze decision.
    buffered_since: Arc<AtomicI64>,
    metrics: Arc<Metrics>,
}

impl SourceTraces {
    /// Feeds one successful poll. Sources without an open set (everything but `dbos`)
    /// cannot say when a workflow finished, and are not traced.
    pub fn observe(&mut self, obs: &Observation, now_ns: i64) {
        let Some(open) = &obs.open_workflows else {
            return;
        };
        let complete = (open.len() as i64) < crate::sources::dbos::MAX_OPEN_WORKFLOWS;
        let observed = self.buffer.observe(&obs.steps, open, complete, now_ns);
        let mut dropped = observed.dropped_spans;
        for w in observed.completed {
            let spans = 1 + w.steps.len() as u64;
            if self.tx.try_send((w, self.gap_min_ns)).is_err() {
                dropped += spans;
            }
        }
        // After the sends: the exporter reads this before draining its queue.
        self.buffered_since.store(
            self.buffer.oldest_start_ns().unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
        if dropped > 0 {
            self.metrics
                .dropped_total
                .with_label_values(&[DROP_QUEUE])
                .inc_by(dropped);
        }
    }
}

/// The running exporter, stopped with [`Otlp::stop`].
pub struct Otlp {
    stop: Arc<AtomicBool>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// What the exporter needs from the rest of the sidecar.
pub struct Setup<'a> {
    pub config: OtlpConfig,
    pub state_db: &'a Path,
    pub metrics: Arc<Metrics>,
    pub sources: &'a [SourceConfig],
    /// How long after a workflow or gap ends before a freeze over it is surely recorded
    /// (the sources' episode settle time).
    pub settle_ns: i64,
    /// When this run started (wall clock): older freezes are not exported on their own.
    pub run_started_ns: i64,
    /// The sidecar's own spans, when the log set-up made them ([`own_spans::layer`]).
    pub own_spans: Option<OwnSpans>,
}

impl Otlp {
    /// Starts the exporter thread; returns it and one [`SourceTraces`] per source, in
    /// the sources' order.
    pub fn spawn(setup: Setup<'_>) -> Result<(Otlp, Vec<SourceTraces>), StateError> {
        let reader = StateReader::open(setup.state_db)?;
        let (tx, rx) = sync_channel(WORKFLOW_QUEUE);
        let slowest_poll_ns = setup
            .sources
            .iter()
            .map(|s| s.poll.as_nanos() as i64)
            .max()
            .unwrap_or(0);
        // A workflow a freeze overlapped is, by then, noticed finished or still buffered.
        let freeze_hold_ns = setup.settle_ns + (i64::from(COMPLETION_POLLS) + 1) * slowest_poll_ns;
        let mut buffered_since = Vec::new();
        let sources = setup
            .sources
            .iter()
            .map(|s| {
                let since = Arc::new(AtomicI64::new(i64::MAX));
                buffered_since.push(since.clone());
                SourceTraces {
                    buffer: WorkflowBuffer::new(&s.name),
                    gap_min_ns: s.gap_min.as_nanos() as i64,
                    tx: tx.clone(),
                    buffered_since: since,
                    metrics: setup.metrics.clone(),
                }
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = exporter::Exporter {
            config: setup.config,
            metrics: setup.metrics,
            reader,
            workflows: rx,
            buffered_since,
            traces: traces::Traces::new(setup.settle_ns, freeze_hold_ns, setup.run_started_ns),
            own_spans: setup.own_spans,
            stop: stop.clone(),
        };
        let (done_tx, done) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("stallwatch-otlp".into())
            .spawn(move || {
                exporter.run();
                let _ = done_tx.send(());
            })
            .expect("spawning a thread");
        Ok((
            Otlp {
                stop,
                done,
                thread: Some(thread),
            },
            sources,
        ))
    }

    /// Builds what is waiting, sends one last batch within [`STOP_DEADLINE`], and stops.
    /// Call after the source threads have stopped.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        match self.done.recv_timeout(STOP_DEADLINE) {
            Ok(()) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
            }
            Err(_) => tracing::warn!("OTLP exporter still busy at the stop deadline; leaving it"),
        }
    }
}
