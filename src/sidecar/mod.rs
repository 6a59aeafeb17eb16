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
use crate::freeze::FreezeEvent;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::otlp::own_spans::OwnSpans;
use crate::otlp::{Otlp, Setup as OtlpSetup, SourceTraces};
use crate::persist::{EventSink, Writer, HEARTBEAT_INTERVAL};
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
pub fn run(
    config: Config,
    started: ClockReading,
    own_spans: Option<OwnSpans>,
) -> Result<(), StartError> {
    runtime()
        .block_on(serve(config, started, own_spans, None))
        .map(|_| ())
}

/// Runs the sidecar with `app` as its child (`stallwatch run -- CMD`) until the app ends
/// (see `supervise.rs`); the app starts once the sidecar is serving.
pub fn run_app(
    config: Config,
    started: ClockReading,
    own_spans: Option<OwnSpans>,
    app: App,
) -> Result<Outcome, StartError> {
    runtime()
        .block_on(serve(config, started, own_spans, Some(app)))
        .map(|outcome| outcome.expect("a supervised run ends with the app's outcome"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("stallwatch-rt")
        .build()
        .expect("building the runtime")
}

/// The sidecar's whole run, step by step; each step's order is part of its meaning (see
/// the module comment).
async fn serve(
    mut config: Config,
    started: ClockReading,
    own_spans: Option<OwnSpans>,
    child: Option<App>,
) -> Result<Option<Outcome>, StartError> {
    let discovered = discover_references(&mut config);
    let db = StateDb::open(&config.data_dir)?;
    let listener = bind(config.listen).await?;
    let boot_id = read_boot_id()?;
    let names = reference_names(&config);
    let (metrics, app_exits) = start_metrics(&config, &names, &db)?;
    let status = live_status(&config, &names, &boot_id, started, &db);
    let startup_freezes =
        close_previous_run(&db, started, &boot_id, &metrics, &status, &app_exits)?;
    let reader = StateReader::open(db.path())?;
    let run = RunStart {
        boot_id,
        started,
        startup_freezes,
        own_spans,
    };
    let workers = Workers::start(&config, db, run, &metrics, &status)?;
    log_running(&config, &names, discovered);
    let http = Http::start(listener, reader, &config, metrics, status);
    let (signal, outcome) = wait_for_the_end(child.as_ref()).await;
    tracing::info!(signal, "stopping");
    workers.stop(http).await;
    record_app_exit(&config, outcome.as_ref());
    tracing::info!("stopped; last heartbeat written");
    Ok(outcome)
}

// ---- start-up steps -------------------------------------------------------------------

/// No references in the file: use the ones this machine has (RTC, host PTP clocks). Their
/// names are logged once the start can no longer be refused (a refusal is one line).
fn discover_references(config: &mut Config) -> Option<Vec<String>> {
    discover::use_discovered(&mut config.freeze, Path::new(discover::SYSFS_ROOT))
        .map(|found| found.iter().map(ReferenceSpec::name).collect())
}

/// Binds before recording anything: a start refused for a taken port must not log the
/// downtime, nor replace the last heartbeat (the next start would see a phantom restart).
async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen {
            addr,
            reason: e.to_string().to_lowercase(),
        })
}

fn read_boot_id() -> Result<String, StartError> {
    clock::boot_id().map_err(|e| StartError::BootId {
        reason: e.to_string(),
    })
}

/// Configured references, then each Postgres source's server clock.
fn reference_names(config: &Config) -> Vec<String> {
    let clocks = config
        .sources
        .iter()
        .filter(|s| matches!(s.location, Location::Postgres(_)))
        .map(|s| database_clock_name(&s.name));
    config
        .freeze
        .references
        .iter()
        .map(ReferenceSpec::name)
        .chain(clocks)
        .collect()
}

/// The app's exits recorded in the state DB (`stallwatch run -- CMD`).
struct AppExits {
    count: u64,
    last_ns: Option<i64>,
}

/// The registry, with what the state DB already knows: the last freeze and the app's
/// restarts (counted from the DB, so the counter survives the sidecar's own restarts —
/// each app exit ends the sidecar's run too).
fn start_metrics(
    config: &Config,
    names: &[String],
    db: &StateDb,
) -> Result<(Arc<Metrics>, AppExits), StartError> {
    let metrics = Arc::new(Metrics::new(names));
    // Each source's folded episodes start at 0, so increase() sees the first fold.
    for source in &config.sources {
        metrics
            .episodes_folded_total
            .with_label_values(&[&source.name]);
    }
    if let Some(ns) = db.last_freeze_started_ns()? {
        metrics.last_freeze_timestamp_seconds.set(ns as f64 / 1e9);
    }
    let (count, last_ns) = db.fact_count(crate::state::FACT_APP_EXIT)?;
    metrics.app_restarts_total.inc_by(count);
    Ok((metrics, AppExits { count, last_ns }))
}

/// The live snapshot behind `/api/v1/status`, as it stands before the first tick.
fn live_status(
    config: &Config,
    names: &[String],
    boot_id: &str,
    started: ClockReading,
    db: &StateDb,
) -> SharedStatus {
    let status = SharedStatus::new(LiveStatus {
        version: env!("CARGO_PKG_VERSION"),
        boot_id: boot_id.to_string(),
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
    status
}

/// Classifies the gap since the previous run before the first heartbeat of this one
/// replaces it, records a freeze it proves, ends the previous watch session as the gap
/// says and begins this one. Returns the freezes found, for the alert engine.
fn close_previous_run(
    db: &StateDb,
    started: ClockReading,
    boot_id: &str,
    metrics: &Metrics,
    status: &SharedStatus,
    app_exits: &AppExits,
) -> Result<Vec<FreezeEvent>, StartError> {
    let mut startup_freezes = Vec::new();
    let mut previous_ended = None;
    if let Some(last) = db.last_heartbeat()? {
        let gap = downtime::classify(
            &last,
            started,
            boot_id,
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
        if last.clean
            && app_exits
                .last_ns
                .is_some_and(|at| at >= last.clocks.real_ns)
        {
            tracing::info!(
                app_restarts = app_exits.count,
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
    db.begin_session(started.real_ns, previous_ended)?;
    db.write_heartbeat(&Heartbeat {
        clocks: clock::read_clocks(),
        boot_id: boot_id.to_string(),
        clean: false,
    })?;
    Ok(startup_freezes)
}

/// Every thread and task of a running sidecar, in the order they are stopped.
struct Workers {
    stop: Arc<AtomicBool>,
    source_stop: Arc<StopSignal>,
    network_tasks: Vec<tokio::task::JoinHandle<()>>,
    tick: std::thread::JoinHandle<()>,
    sources: Vec<(String, std::thread::JoinHandle<()>)>,
    otlp: Option<Otlp>,
    alerts: AlertEngine,
    writer: Writer,
}

/// What this run starts from, besides the config and the state DB.
struct RunStart {
    boot_id: String,
    started: ClockReading,
    /// Freezes found at start-up (the downtime since the last heartbeat), for the alerts.
    startup_freezes: Vec<FreezeEvent>,
    /// The sidecar's own spans, when logging was set up to export them.
    own_spans: Option<OwnSpans>,
}

impl Workers {
    /// The state writer (it takes the DB), the alert engine, the reference readers, the
    /// OTLP exporter, a thread per source and the tick thread, in that order.
    fn start(
        config: &Config,
        db: StateDb,
        run: RunStart,
        metrics: &Arc<Metrics>,
        status: &SharedStatus,
    ) -> Result<Workers, StartError> {
        let source_readers = config
            .sources
            .iter()
            .map(|_| StateReader::open(db.path()))
            .collect::<Result<Vec<_>, _>>()?;
        let db_path = db.path().to_path_buf();
        let (writer, sink) = Writer::spawn(db, run.boot_id, metrics.clone(), status.clone());
        let (announce, announced) = tokio::sync::mpsc::channel(FREEZE_QUEUE);
        let alerts = AlertEngine::spawn(
            config.alerts.clone(),
            &db_path,
            metrics.clone(),
            status.clone(),
            announced,
            run.startup_freezes,
        )
        .map_err(|e| StartError::Outbox {
            path: db_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let (sample_tx, sample_rx) = sync_channel::<NetworkSample>(NETWORK_SAMPLE_QUEUE);
        let (mut slots, network_tasks) = start_references(config, &sample_tx, metrics);
        let detector = detector_config(config);
        let settle_ns = detector.merge_window_ns + SETTLE_MARGIN_NS;
        let (otlp, traces) = start_otlp(
            config,
            &db_path,
            metrics,
            settle_ns,
            run.started,
            run.own_spans,
        )?;
        let source_stop = Arc::new(StopSignal::default());
        let sources = spawn_sources(SourceThreads {
            config,
            readers: source_readers,
            traces,
            slots: &mut slots,
            samples: &sample_tx,
            metrics,
            status,
            sink: &sink,
            stop: &source_stop,
            settle_ns,
        });
        let stop = Arc::new(AtomicBool::new(false));
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
        Ok(Workers {
            stop,
            source_stop,
            network_tasks,
            tick,
            sources,
            otlp,
            alerts,
            writer,
        })
    }

    /// Two phases: stop taking work (HTTP drain, stop flags, reference tasks aborted),
    /// then drain, each with a deadline; the writer's clean heartbeat is the last write.
    async fn stop(self, http: Http) {
        let sources_deadline = std::time::Instant::now() + SOURCE_STOP_DEADLINE;
        let _ = http.drain.send(());
        self.stop.store(true, Ordering::Relaxed);
        self.source_stop.stop();
        for task in self.network_tasks {
            task.abort();
        }
        if tokio::time::timeout(HTTP_DRAIN, http.server).await.is_err() {
            tracing::warn!("HTTP connections still open after the drain deadline; closing them");
        }
        let Workers {
            tick,
            sources,
            otlp,
            alerts,
            writer,
            ..
        } = self;
        tokio::task::spawn_blocking(move || {
            let _ = tick.join();
            join_sources(sources, sources_deadline);
            // After the sources: their last finished workflows are in its queue.
            if let Some(otlp) = otlp {
                otlp.stop();
            }
            alerts.stop();
            writer.stop();
        })
        .await
        .expect("joining the worker threads");
    }
}

/// The OTLP exporter when `[otlp]` is set, and each source's handle into it; the
/// sidecar's own spans go out through it too.
fn start_otlp(
    config: &Config,
    db_path: &Path,
    metrics: &Arc<Metrics>,
    settle_ns: i64,
    started: ClockReading,
    own_spans: Option<OwnSpans>,
) -> Result<(Option<Otlp>, Vec<SourceTraces>), StartError> {
    let Some(otlp) = &config.otlp else {
        return Ok((None, Vec::new()));
    };
    let (exporter, traces) = Otlp::spawn(OtlpSetup {
        config: otlp.clone(),
        state_db: db_path,
        metrics: metrics.clone(),
        sources: &config.sources,
        settle_ns,
        run_started_ns: started.real_ns,
        own_spans,
    })?;
    Ok((Some(exporter), traces))
}

/// What the source threads are started with.
struct SourceThreads<'a> {
    config: &'a Config,
    readers: Vec<StateReader>,
    traces: Vec<SourceTraces>,
    slots: &'a mut Vec<(String, RefSlot)>,
    samples: &'a std::sync::mpsc::SyncSender<NetworkSample>,
    metrics: &'a Arc<Metrics>,
    status: &'a SharedStatus,
    sink: &'a EventSink,
    stop: &'a Arc<StopSignal>,
    settle_ns: i64,
}

/// A thread per source, by source name. A Postgres source's server clock becomes a
/// reference slot the tick thread reads the samples of.
fn spawn_sources(t: SourceThreads<'_>) -> Vec<(String, std::thread::JoinHandle<()>)> {
    let mut traces: Vec<Option<SourceTraces>> = t.traces.into_iter().map(Some).collect();
    t.config
        .sources
        .iter()
        .zip(t.readers)
        .enumerate()
        .map(|(index, (source, freezes))| {
            let clock = matches!(source.location, Location::Postgres(_)).then(|| {
                t.slots
                    .push((database_clock_name(&source.name), RefSlot::Network));
                (t.slots.len() - 1, t.samples.clone())
            });
            let thread = SourceRunner {
                clock,
                config: source.clone(),
                index,
                source: crate::sources::build::open(source),
                metrics: t.metrics.clone(),
                status: t.status.clone(),
                sink: t.sink.clone(),
                freezes,
                stop: t.stop.clone(),
                settle_ns: t.settle_ns,
                traces: traces.get_mut(index).and_then(Option::take),
            }
            .spawn();
            (source.name.clone(), thread)
        })
        .collect()
}

/// A slot per configured reference for the tick thread: a local clock it reads itself,
/// or a network one an async task polls and sends samples of.
fn start_references(
    config: &Config,
    samples: &std::sync::mpsc::SyncSender<NetworkSample>,
    metrics: &Arc<Metrics>,
) -> (Vec<(String, RefSlot)>, Vec<tokio::task::JoinHandle<()>>) {
    let mut slots = Vec::new();
    let mut tasks = Vec::new();
    for (index, spec) in config.freeze.references.iter().enumerate() {
        match references::open_local(spec) {
            Some(reader) => slots.push((spec.name(), RefSlot::Local(reader))),
            None => {
                slots.push((spec.name(), RefSlot::Network));
                tasks.push(tokio::spawn(poll_network_reference(
                    spec.clone(),
                    index,
                    config.freeze.reference_interval,
                    samples.clone(),
                    metrics.clone(),
                )));
            }
        }
    }
    (slots, tasks)
}

fn log_running(config: &Config, names: &[String], discovered: Option<Vec<String>>) {
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
}

/// The HTTP server, serving until `drain` is sent.
struct Http {
    server: tokio::task::JoinHandle<()>,
    drain: tokio::sync::oneshot::Sender<()>,
}

impl Http {
    fn start(
        listener: tokio::net::TcpListener,
        reader: StateReader,
        config: &Config,
        metrics: Arc<Metrics>,
        status: SharedStatus,
    ) -> Http {
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
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(listener, app, limit, metrics, status, async {
            let _ = drained.await;
        }));
        Http { server, drain }
    }
}

// ---- the end ------------------------------------------------------------------------

/// SIGTERM or SIGINT, or with a supervised app, the app's end (which forwards those).
async fn wait_for_the_end(child: Option<&App>) -> (String, Option<Outcome>) {
    match child {
        None => (stop_signal().await.to_string(), None),
        Some(child) => {
            let outcome = supervise::supervise(child).await;
            (outcome.reason.clone(), Some(outcome))
        }
    }
}

/// An app that ended on its own is an app restart: recorded after the writer's clean
/// heartbeat, so the next start reads the order — clean stop, then the app's exit.
fn record_app_exit(config: &Config, outcome: Option<&Outcome>) {
    let Some(outcome) = outcome.filter(|o| o.ending == Ending::AppExit) else {
        return;
    };
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
