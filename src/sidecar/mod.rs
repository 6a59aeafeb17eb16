//! Wires the sidecar together: state DB, start-up downtime check, tick thread, state
//! writer, network reference tasks, HTTP server, and the two-phase shutdown.
//!
//! Start-up order matters: the state DB is opened and checked before anything listens
//! (a bad one is a clear exit-2 error), the downtime since the last heartbeat is
//! recorded before the first new heartbeat overwrites it, and the port is bound before
//! the threads start so a taken port fails fast.

pub mod poll;
pub mod tick;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alerts::engine::{AlertEngine, FREEZE_QUEUE};
use crate::clock::{self, ClockReading};
use crate::config::source::Location;
use crate::config::{Config, ReferenceSpec};
use crate::freeze::downtime::{self, Heartbeat};
use crate::freeze::references::{self, discover};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::otlp::{Otlp, Setup as OtlpSetup};
use crate::persist::{Writer, HEARTBEAT_INTERVAL};
use crate::state::{StateDb, StateError, StateReader};
use crate::status::{DowntimeStatus, LiveStatus, ReferenceStatus, SharedStatus, SourceStatus};
use crate::supervise::{self, App, Ending, Outcome};
use poll::{SourceRunner, StopSignal};
use tick::{detector_config, NetworkSample, RefSlot, Runner};

/// Time allowed for open HTTP connections to finish after a stop signal; the whole
/// shutdown must fit in the 5 s an orchestrator waits before SIGKILL.
pub const HTTP_DRAIN: Duration = Duration::from_secs(2);
/// Longest wait for the source threads after the stop signal. A poll in flight ends within
/// its own timeouts; a source stuck in a system call (a database that accepted the
/// connection and never answers) is left behind, so the rest of the shutdown — the
/// exporter's last batch, the alert engine, the clean heartbeat — still fits in the 5 s.
pub const SOURCE_STOP_DEADLINE: Duration = Duration::from_millis(2_500);
/// How often the shutdown looks whether the source threads have finished.
const SOURCE_STOP_CHECK: Duration = Duration::from_millis(10);
/// Samples from network references waiting for the tick thread.
pub const NETWORK_SAMPLE_QUEUE: usize = 64;
/// Extra wait after the freeze merge window before an episode is attributed, covering the
/// state writer's queue and a source poll in flight.
pub const SETTLE_MARGIN_NS: i64 = 2_000_000_000;
/// Timeout of one HTTP `Date` reference request.
pub const HTTP_REFERENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The reference name of a Postgres source's server clock.
pub fn database_clock_name(source: &str) -> String {
    format!("postgres:{source}")
}

/// Why the sidecar could not start. Everything here is the operator's to fix: exit 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot listen on {addr}: {reason}; set `listen` or --listen to a free address")]
    Listen { addr: SocketAddr, reason: String },
    #[error("cannot read the boot id from {}: {reason}", clock::BOOT_ID_PATH)]
    BootId { reason: String },
    #[error("cannot open the alert outbox in {path}: {reason}")]
    Outbox { path: String, reason: String },
}

/// Runs the sidecar until SIGTERM or SIGINT. `started` is the clock reading taken as
/// the process began, so a restart's downtime does not include start-up work.
pub fn run(config: Config, started: ClockReading) -> Result<(), StartError> {
    runtime().block_on(serve(config, started, None)).map(|_| ())
}

/// Runs the sidecar with `app` as its child (`stallwatch run -- CMD`) until the app ends
/// (see `supervise.rs`); the app starts once the sidecar is serving.
pub fn run_app(config: Config, started: ClockReading, app: App) -> Result<Outcome, StartError> {
    runtime()
        .block_on(serve(config, started, Some(app)))
        .map(|outcome| outcome.expect("a supervised run ends with the app's outcome"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("stallwatch-rt")
        .build()
        .expect("building the runtime")
}

async fn serve(
    mut config: Config,
    started: ClockReading,
    child: Option<App>,
) -> Result<Option<Outcome>, StartError> {
    // No references in the file: use the ones this machine has (RTC, host PTP clocks).
    // Logged once the start can no longer be refused: a refusal is one line on stderr.
    let discovered = discover::use_discovered(&mut config.freeze, Path::new(discover::SYSFS_ROOT))
        .map(|found| {
            found
                .iter()
                .map(ReferenceSpec::name)
                .collect::<Vec<String>>()
        });
    let db = StateDb::open(&config.data_dir)?;
    // Bind before recording anything: a start refused for a taken port must not log the
    // downtime, nor replace the last heartbeat (the next start would see a phantom restart).
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen {
            addr: config.listen,
            reason: e.to_string().to_lowercase(),
        })?;
    let boot_id = clock::boot_id().map_err(|e| StartError::BootId {
        reason: e.to_string(),
    })?;
    // Configured references, then each Postgres source's server clock.
    let names: Vec<String> = config
        .freeze
        .references
        .iter()
        .map(ReferenceSpec::name)
        .chain(
            config
                .sources
                .iter()
                .filter(|s| matches!(s.location, Location::Postgres(_)))
                .map(|s| database_clock_name(&s.name)),
        )
        .collect();
    let metrics = Arc::new(Metrics::new(&names));
    // Each source's folded episodes start at 0, so increase() sees the first fold.
    for source in &config.sources {
        metrics
            .episodes_folded_total
            .with_label_values(&[&source.name]);
    }
    if let Some(ns) = db.last_freeze_started_ns()? {
        metrics.last_freeze_timestamp_seconds.set(ns as f64 / 1e9);
    }
    // App restarts are counted from the state DB, so the counter survives the sidecar's
    // own restarts (each app exit ends the sidecar's run too).
    let (app_exits, last_app_exit_ns) = db.fact_count(crate::state::FACT_APP_EXIT)?;
    metrics.app_restarts_total.inc_by(app_exits);

    let status = SharedStatus::new(LiveStatus {
        version: env!("CARGO_PKG_VERSION"),
        boot_id: boot_id.clone(),
        pid: std::process::id(),
        started_at_unix_ns: started.real_ns,
        data_dir: config.data_dir.display().to_string(),
        tick_seconds: config.freeze.tick.as_secs_f64(),
        freeze_min_seconds: config.freeze.min.as_secs_f64(),
        references: names
            .iter()
            .map(|n| ReferenceStatus {
                name: n.clone(),
                ..Default::default()
            })
            .collect(),
        sources: config
            .sources
            .iter()
            .map(|s| SourceStatus {
                name: s.name.clone(),
                kind: s.kind.as_str(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });

    // A new state DB over a lost one: said on stderr by the open, shown all run long.
    status.lock().state_db_notice = db.notice().map(str::to_string);
    // The gap since the previous run, before the first heartbeat of this one replaces it.
    let mut startup_freezes = Vec::new();
    let mut previous_ended = None;
    if let Some(last) = db.last_heartbeat()? {
        let gap = downtime::classify(
            &last,
            started,
            &boot_id,
            HEARTBEAT_INTERVAL.as_nanos() as i64,
        );
        let seconds = gap.duration_ns as f64 / 1e9;
        metrics
            .downtime_seconds_total
            .with_label_values(&[gap.reason.as_str()])
            .inc_by(seconds);
        tracing::info!(
            reason = gap.reason.as_str(),
            seconds,
            "sidecar was down before this start"
        );
        // The app's exit stopped the last run (its fact is written after the clean
        // heartbeat): the downtime is the app's restart, not a freeze.
        if last.clean && last_app_exit_ns.is_some_and(|at| at >= last.clocks.real_ns) {
            tracing::info!(
                app_restarts = app_exits,
                "the last run ended with its app's exit: this start is an app restart"
            );
        }
        status.lock().last_downtime = Some(DowntimeStatus {
            reason: gap.reason.as_str(),
            seconds,
        });
        previous_ended = Some(gap.reason.as_str());
        if let Some(event) = gap.event {
            startup_freezes.push(event.clone());
            metrics.record_freeze(event.kind, event.started_at_ns, event.duration_ns);
            db.insert_event(&event, clock::real_ns())?;
            status.lock().events_recorded += 1;
        }
    }
    // This run's watch session, which its heartbeats then follow; the previous one ends
    // as the gap was classified.
    db.begin_session(started.real_ns, previous_ended)?;
    db.write_heartbeat(&Heartbeat {
        clocks: clock::read_clocks(),
        boot_id: boot_id.clone(),
        clean: false,
    })?;

    let reader = StateReader::open(db.path())?;
    let source_readers = config
        .sources
        .iter()
        .map(|_| StateReader::open(db.path()))
        .collect::<Result<Vec<_>, _>>()?;

    let db_path = db.path().to_path_buf();
    let (writer, sink) = Writer::spawn(db, boot_id, metrics.clone(), status.clone());
    let (announce, announced) = tokio::sync::mpsc::channel(FREEZE_QUEUE);
    let alerts = AlertEngine::spawn(
        config.alerts.clone(),
        &db_path,
        metrics.clone(),
        status.clone(),
        announced,
        startup_freezes,
    )
    .map_err(|e| StartError::Outbox {
        path: db_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let (sample_tx, sample_rx) = sync_channel::<NetworkSample>(NETWORK_SAMPLE_QUEUE);
    let mut slots = Vec::new();
    let mut network_tasks = Vec::new();
    for (index, spec) in config.freeze.references.iter().enumerate() {
        match references::open_local(spec) {
            Some(reader) => slots.push((spec.name(), RefSlot::Local(reader))),
            None => {
                slots.push((spec.name(), RefSlot::Network));
                network_tasks.push(tokio::spawn(poll_network_reference(
                    spec.clone(),
                    index,
                    config.freeze.reference_interval,
                    sample_tx.clone(),
                    metrics.clone(),
                )));
            }
        }
    }
    let detector = detector_config(&config);
    let settle_ns = detector.merge_window_ns + SETTLE_MARGIN_NS;
    let source_stop = Arc::new(StopSignal::default());
    let (otlp, mut source_traces) = match &config.otlp {
        Some(otlp) => {
            let (exporter, traces) = Otlp::spawn(OtlpSetup {
                config: otlp.clone(),
                state_db: &db_path,
                metrics: metrics.clone(),
                sources: &config.sources,
                settle_ns,
                run_started_ns: started.real_ns,
            })?;
            (Some(exporter), traces.into_iter().map(Some).collect())
        }
        None => (None, Vec::new()),
    };
    let source_threads: Vec<_> = config
        .sources
        .iter()
        .zip(source_readers)
        .enumerate()
        .map(|(index, (source, freezes))| {
            let clock = matches!(source.location, Location::Postgres(_)).then(|| {
                slots.push((database_clock_name(&source.name), RefSlot::Network));
                (slots.len() - 1, sample_tx.clone())
            });
            let thread = SourceRunner {
                clock,
                config: source.clone(),
                index,
                source: crate::sources::build::open(source),
                metrics: metrics.clone(),
                status: status.clone(),
                sink: sink.clone(),
                freezes,
                stop: source_stop.clone(),
                settle_ns,
                traces: source_traces.get_mut(index).and_then(Option::take),
            }
            .spawn();
            (source.name.clone(), thread)
        })
        .collect();
    let tick = Runner {
        config: config.freeze.clone(),
        detector,
        references: slots,
        network_samples: sample_rx,
        metrics: metrics.clone(),
        status: status.clone(),
        events: sink,
        announce,
        stop: stop.clone(),
    }
    .spawn();

    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        tick_ms = config.freeze.tick.as_millis() as u64,
        references = ?names,
        sources = config.sources.len(),
        channels = config.alerts.channels.len(),
        "stallwatch running"
    );
    if let Some(found) = discovered {
        tracing::info!(references = ?found, "no references configured; using the ones discovered on this machine");
    }

    let app = http::router(AppState {
        metrics: metrics.clone(),
        status: status.clone(),
        reader: Arc::new(Mutex::new(reader)),
        tick_ns: config.freeze.tick.as_nanos() as i64,
    });
    let nofile = http::nofile_limit();
    let limit = http::connection_limit(nofile, config.sources.len());
    tracing::info!(
        connection_limit = limit,
        nofile,
        "HTTP connections limited to a share of the open-file limit"
    );
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, app, limit, metrics, status, async {
        let _ = drain_rx.await;
    }));

    let (signal, outcome) = match &child {
        None => (stop_signal().await.to_string(), None),
        Some(child) => {
            let outcome = supervise::supervise(child).await;
            (outcome.reason.clone(), Some(outcome))
        }
    };
    tracing::info!(signal, "stopping");
    let sources_deadline = std::time::Instant::now() + SOURCE_STOP_DEADLINE;
    // Phase 1: stop taking work.
    let _ = drain_tx.send(());
    stop.store(true, Ordering::Relaxed);
    source_stop.stop();
    for task in network_tasks {
        task.abort();
    }
    // Phase 2: drain, each with a deadline.
    if tokio::time::timeout(HTTP_DRAIN, server).await.is_err() {
        tracing::warn!("HTTP connections still open after the drain deadline; closing them");
    }
    tokio::task::spawn_blocking(move || {
        let _ = tick.join();
        join_sources(source_threads, sources_deadline);
        // After the sources: their last finished workflows are in its queue.
        if let Some(otlp) = otlp {
            otlp.stop();
        }
        alerts.stop();
        writer.stop();
    })
    .await
    .expect("joining the worker threads");
    // After the writer's clean heartbeat, so the next start reads the order: clean stop,
    // then the app's exit.
    if let Some(outcome) = outcome.as_ref().filter(|o| o.ending == Ending::AppExit) {
        let recorded = StateDb::open(&config.data_dir).and_then(|db| {
            db.insert_fact(
                crate::state::FACT_APP_EXIT,
                clock::real_ns(),
                &outcome.status.describe(),
            )
        });
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the app's exit in the state database");
        }
    }
    tracing::info!("stopped; last heartbeat written");
    Ok(outcome)
}

/// Joins the source threads (by source name) that finish by `deadline`; the others are
/// left running, each named in a warning, and end with the process.
fn join_sources(threads: Vec<(String, std::thread::JoinHandle<()>)>, deadline: std::time::Instant) {
    let mut waiting = threads;
    while !waiting.is_empty() && std::time::Instant::now() < deadline {
        let (done, busy): (Vec<_>, Vec<_>) =
            waiting.into_iter().partition(|(_, t)| t.is_finished());
        for (_, thread) in done {
            let _ = thread.join();
        }
        waiting = busy;
        if !waiting.is_empty() {
            std::thread::sleep(SOURCE_STOP_CHECK);
        }
    }
    for (source, _) in waiting {
        tracing::warn!(
            source = %source,
            deadline_ms = SOURCE_STOP_DEADLINE.as_millis() as u64,
            "source thread still busy at the shutdown deadline; leaving it behind"
        );
    }
}

/// Waits for SIGTERM or SIGINT. SIGHUP (a closed terminal, `systemctl reload`) is logged
/// and ignored: config reload is not supported, and its default action would kill the
/// process without a clean heartbeat. With an app (`run -- CMD`), `supervise.rs` waits
/// instead and passes all three on to the app.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = hup.recv() => tracing::info!(
                signal = "SIGHUP",
                "ignored: config reload is not supported; restart to apply a new config"
            ),
        }
    }
}

async fn poll_network_reference(
    spec: ReferenceSpec,
    index: usize,
    interval: Duration,
    tx: std::sync::mpsc::SyncSender<NetworkSample>,
    metrics: Arc<Metrics>,
) {
    let client = reqwest::Client::builder()
        .timeout(HTTP_REFERENCE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building an HTTP client");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sample = references::read_network(&spec, &client).await;
        if tx.try_send((index, sample)).is_err() {
            metrics
                .dropped_total
                .with_label_values(&["reference_samples"])
                .inc();
        }
    }
}
