//! The tick thread: reads the real clocks on a MONOTONIC schedule and feeds the pure
//! [`Detector`]. This is the thin I/O layer around the decision.
//!
//! A dedicated OS thread sleeping to absolute deadlines (`clock_nanosleep`,
//! `TIMER_ABSTIME`), not a runtime timer: nothing else scheduled on the runtime can
//! delay it, and a late wake is never followed by a burst of catch-up ticks (the next
//! deadline is one tick after the late wake). It does no blocking I/O besides local
//! reference reads (sysfs, PTP) and, at most once a second, `/proc/stat`, `adjtimex` and
//! the host evidence ([`HostEvidence`]: its own schedstat, the cgroup's `cpu.stat`, an
//! inotify descriptor, a `SIGCONT` time); events go to the state writer through a
//! bounded queue. A tick takes no lock: it counts itself in atomics, and drift, steal and
//! offsets reach the metrics and the status in the once-a-second block, only when changed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::clock::{self, read_clocks, sleep_until_mono, StealReader, NANOS_PER_SEC};
use crate::config::source::Location;
use crate::config::{Config, FreezeConfig, ReferenceSpec};
use crate::freeze::detector::{Detector, DetectorConfig, Wake};
use crate::freeze::evidence::HostEvidence;
use crate::freeze::forward_step::StepVerdict;
use crate::freeze::reference::{RefOutcome, RefSample};
use crate::freeze::references::local::LocalReference;
use crate::freeze::visibility::{self, Sight};
use crate::metrics::Metrics;
use crate::persist::EventSink;
use crate::status::SharedStatus;

/// How often steal time (`/proc/stat`), the host evidence and the kernel clock state
/// (`adjtimex`) are read: none needs tick resolution, and a stall is at least two ticks.
pub const STEAL_INTERVAL_NS: i64 = NANOS_PER_SEC;
/// How often the clocksource name is read again (it changes only when the kernel
/// finds the current one unstable).
pub const CLOCKSOURCE_INTERVAL_NS: i64 = 60 * NANOS_PER_SEC;
/// Shortest time an event stays open for other channels to add evidence.
pub const MIN_MERGE_WINDOW_NS: i64 = 2 * NANOS_PER_SEC;

/// A sample of a network reference, sent by its task to the tick thread.
pub type NetworkSample = (usize, Result<RefSample, String>);

/// One configured reference as the tick thread sees it.
pub enum RefSlot {
    /// Read on every tick by this thread.
    Local(Box<dyn LocalReference>),
    /// Read by an async task; samples arrive on the channel.
    Network,
}

pub struct Runner {
    pub config: FreezeConfig,
    pub detector: DetectorConfig,
    pub references: Vec<(String, RefSlot)>,
    pub network_samples: Receiver<NetworkSample>,
    pub metrics: Arc<Metrics>,
    pub status: SharedStatus,
    pub events: EventSink,
    /// Freezes as soon as they are seen, for the alert engine (bounded; full → dropped).
    pub announce: tokio::sync::mpsc::Sender<crate::freeze::FreezeEvent>,
    pub stop: Arc<AtomicBool>,
}

/// The detector thresholds for a config. Events stay open long enough for the slowest
/// reference — a network reference, or a Postgres source's server clock, read once per
/// poll — to be read once more.
pub fn detector_config(whole: &Config) -> DetectorConfig {
    let config = &whole.freeze;
    let tick_ns = config.tick.as_nanos() as i64;
    let network = config
        .references
        .iter()
        .any(ReferenceSpec::is_network)
        .then_some(config.reference_interval);
    let database_clocks = whole
        .sources
        .iter()
        .filter(|s| matches!(s.location, Location::Postgres(_)))
        .map(|s| s.poll);
    let slowest = network
        .into_iter()
        .chain(database_clocks)
        .max()
        .map_or(tick_ns, |d| d.as_nanos() as i64);
    DetectorConfig {
        tick_ns,
        min_ns: config.min.as_nanos() as i64,
        wall_step_ns: config.wall_step.as_nanos() as i64,
        merge_window_ns: (slowest + 2 * tick_ns).max(MIN_MERGE_WINDOW_NS),
        forward_steps: config.forward_steps,
    }
}

impl Runner {
    pub fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("stallwatch-tick".into())
            .spawn(move || self.run())
            .expect("spawning a thread")
    }

    fn run(mut self) {
        let mut detector = Detector::new(self.detector, read_clocks());
        for (name, _) in &self.references {
            detector.add_reference(name.clone());
        }
        let mut refs: Vec<RefState> = self
            .references
            .iter()
            .map(|(name, _)| RefState {
                up: self.metrics.reference_up.with_label_values(&[name]),
                offset: self
                    .metrics
                    .reference_offset_seconds
                    .with_label_values(&[name]),
                last: None,
            })
            .collect();
        let steal = StealReader::new();
        let mut host = HostEvidence::open();
        log_host_evidence(&host);
        let mut last_steal: Option<i64> = None;
        let mut next_second_ns = 0;
        let mut next_clocksource_ns = 0;
        let mut was_visible: Option<bool> = None;
        let mut published = Published::default();
        let tick_ns = self.config.tick.as_nanos() as i64;
        let mut overruns: Vec<f64> =
            Vec::with_capacity((STEAL_INTERVAL_NS / tick_ns.max(1)) as usize + 4);
        let mut deadline = read_clocks().mono_ns + tick_ns;
        // Every reference has been asked once by then (the merge window covers the slowest).
        let first_sight_ns = deadline + self.detector.merge_window_ns;

        // Each tick: the clocks, the decision, local references, and what the decision
        // opened or finished. Everything that does not need tick resolution runs in the
        // once-a-second block.
        while !self.stop.load(Ordering::Relaxed) {
            let slept_at = crate::clock::mono_ns();
            sleep_until_mono(deadline);
            let clocks = read_clocks();
            let report = detector.on_wake(Wake {
                slept_at_ns: slept_at,
                deadline_ns: deadline,
                clocks,
            });
            // Into the histogram once a second: its shards are cold cache lines after a
            // sleep, the most expensive thing a tick would touch.
            if overruns.len() == overruns.capacity() {
                self.observe_overruns(&mut overruns);
            }
            overruns.push(report.overrun_ns as f64 / 1e9);
            if let Some(step) = report.wall_step_ns {
                log_step(step, report.step_verdict);
            }

            // Local references stay per tick: an RTC's 1 Hz edge is timed to within a tick
            // only if it is sampled at every tick, and a PTP clock that stops with a VM
            // pause must be seen on the first tick after it.
            for (i, state) in refs.iter_mut().enumerate() {
                if let RefSlot::Local(reader) = &mut self.references[i].1 {
                    let sample = reader.read();
                    self.apply_sample(&mut detector, i, state, sample);
                }
            }
            while let Ok((i, sample)) = self.network_samples.try_recv() {
                self.apply_sample(&mut detector, i, &mut refs[i], sample);
            }

            if clocks.mono_ns >= next_second_ns {
                next_second_ns = clocks.mono_ns + STEAL_INTERVAL_NS;
                if let Ok(total) = steal.read_ns() {
                    if let Some(prev) = last_steal {
                        self.metrics
                            .cpu_steal_seconds_total
                            .inc_by((total - prev).max(0) as f64 / 1e9);
                    }
                    last_steal = Some(total);
                    detector.on_steal(clocks.mono_ns, total);
                }
                let (sample, news) = host.sample();
                detector.on_host(clocks.mono_ns, sample);
                if news.freezer_events > 0 {
                    tracing::info!(
                        notifications = news.freezer_events,
                        frozen = ?news.frozen_now,
                        "the cgroup freezer acted on this process's cgroup"
                    );
                }
                self.read_kernel_clock(&mut detector);
                if clocks.mono_ns >= next_clocksource_ns {
                    next_clocksource_ns = clocks.mono_ns + CLOCKSOURCE_INTERVAL_NS;
                    self.read_clocksource();
                }
                if clocks.mono_ns >= first_sight_ns {
                    self.publish_sight(&mut was_visible);
                }
                self.publish(&detector, &refs, &mut published);
                self.observe_overruns(&mut overruns);
            }

            for event in detector.take_opened() {
                if self.announce.try_send(event).is_err() {
                    self.metrics
                        .dropped_total
                        .with_label_values(&["alert_freezes"])
                        .inc();
                }
            }
            for event in detector.take_finished() {
                self.events.record(event);
            }
            self.status.tick(clocks.mono_ns);

            deadline += tick_ns;
            if deadline <= clocks.mono_ns {
                deadline = clocks.mono_ns + tick_ns; // late: skip missed ticks, never burst
            }
        }
        self.observe_overruns(&mut overruns);
        for event in detector.flush() {
            self.events.record(event);
        }
    }

    fn observe_overruns(&self, overruns: &mut Vec<f64>) {
        for seconds in overruns.drain(..) {
            self.metrics.tick_overrun_seconds.observe(seconds);
        }
    }

    /// A reference's sample into the decision; its gauge and status change only when its
    /// health does (a local reference is read every tick).
    fn apply_sample(
        &self,
        detector: &mut Detector,
        index: usize,
        state: &mut RefState,
        sample: Result<RefSample, String>,
    ) {
        let name = &self.references[index].0;
        match sample {
            Ok(sample) => {
                match detector.on_reference(index, sample) {
                    RefOutcome::Resync { moved_ns } => {
                        tracing::info!(reference = %name, moved_seconds = moved_ns as f64 / 1e9, "reference clock moved below the freeze threshold; re-synchronised");
                    }
                    RefOutcome::Jump { estimate_ns, .. } => {
                        tracing::info!(reference = %name, jump_seconds = estimate_ns as f64 / 1e9, "reference clock ran while this machine did not");
                    }
                    RefOutcome::Steady | RefOutcome::Refined { .. } => {}
                }
                if state.last != Some(Ok(())) {
                    state.last = Some(Ok(()));
                    state.up.set(1.0);
                    let mut status = self.status.lock();
                    let slot = &mut status.references[index];
                    slot.up = true;
                    slot.last_error = None;
                }
            }
            Err(error) => {
                if state.last.as_ref().and_then(|l| l.as_ref().err()) != Some(&error) {
                    tracing::warn!(reference = %name, %error, "reference clock unreadable");
                    state.up.set(0.0);
                    let mut status = self.status.lock();
                    let slot = &mut status.references[index];
                    slot.up = false;
                    slot.last_error = Some(error.clone());
                    state.last = Some(Err(error));
                }
            }
        }
    }

    fn read_kernel_clock(&self, detector: &mut Detector) {
        let Ok(kernel) = clock::kernel_clock() else {
            return;
        };
        detector.on_kernel_clock(kernel);
        let host = &self.metrics.host;
        host.clock_synchronised
            .set(if kernel.synced { 1.0 } else { 0.0 });
        host.clock_max_error_seconds
            .set(kernel.max_error_ns as f64 / 1e9);
        let mut status = self.status.lock();
        status.clock.synchronised = Some(kernel.synced);
        status.clock.max_error_seconds = Some(kernel.max_error_ns as f64 / 1e9);
    }

    fn read_clocksource(&self) {
        let Ok(name) = clock::clocksource() else {
            return;
        };
        let mut status = self.status.lock();
        if status.clock.clocksource.as_deref() != Some(name.as_str()) {
            self.metrics.host.clock_info.reset();
            self.metrics
                .host
                .clock_info
                .with_label_values(&[&name])
                .set(1.0);
            status.clock.clocksource = Some(name);
        }
    }

    /// Whether a full VM pause is visible now, in the gauge and the status; said loudly
    /// (WARN) whenever it stops being visible.
    fn publish_sight(&self, was_visible: &mut Option<bool>) {
        let mut status = self.status.lock();
        let (up, down): (Vec<_>, Vec<_>) = status.references.iter().partition(|r| r.up);
        let sight = Sight {
            references_up: up.iter().map(|r| r.name.clone()).collect(),
            references_down: down.iter().map(|r| r.name.clone()).collect(),
            forward_steps: self.config.forward_steps,
            state_db: true,
        };
        let pause = visibility::assess(&sight)
            .into_iter()
            .find(|l| l.kind == "vm_pause")
            .expect("every kind is assessed");
        let visible = pause.covered();
        self.metrics
            .host
            .vm_pause_visible
            .set(if visible { 1.0 } else { 0.0 });
        status.clock.vm_pause_visible = visible;
        status.clock.forward_steps = self.config.forward_steps.as_str();
        status.clock.vm_pause_blind_spot = pause.missing.clone();
        drop(status);
        if *was_visible != Some(visible) {
            if !visible {
                tracing::warn!(
                    problem = pause.missing.as_deref().unwrap_or_default(),
                    "a full VM pause is not visible on this machine now"
                );
            } else if was_visible.is_some() {
                tracing::info!(references = ?sight.references_up, "a full VM pause is visible again");
            }
            *was_visible = Some(visible);
        }
    }

    /// Drift, steal and reference offsets into the metrics and the status, once a second
    /// and only what changed since the last time.
    fn publish(&self, detector: &Detector, refs: &[RefState], last: &mut Published) {
        let now = Published {
            drift_ppm: detector.drift_ppm(),
            drift_seconds: detector.drift_ns() as f64 / 1e9,
            steal_seconds: self.metrics.cpu_steal_seconds_total.get(),
            offsets: (0..self.references.len())
                .map(|i| detector.reference_offset_ns(i).map(|o| o as f64 / 1e9))
                .collect(),
        };
        if now == *last {
            return;
        }
        self.metrics.wall_clock_drift_seconds.set(now.drift_seconds);
        self.metrics.wall_clock_drift_ppm.set(now.drift_ppm);
        for (state, offset) in refs.iter().zip(&now.offsets) {
            if let Some(o) = offset {
                state.offset.set(*o);
            }
        }
        let mut status = self.status.lock();
        status.wall_clock_drift_ppm = now.drift_ppm;
        status.wall_clock_drift_seconds = now.drift_seconds;
        status.cpu_steal_seconds = now.steal_seconds;
        for (slot, offset) in status.references.iter_mut().zip(&now.offsets) {
            slot.offset_seconds = *offset;
        }
        drop(status);
        *last = now;
    }
}

/// One reference as the tick loop keeps it: its gauges, and its last health (`None`
/// before the first sample) so an unchanged one is not written again.
struct RefState {
    up: prometheus::Gauge,
    offset: prometheus::Gauge,
    last: Option<Result<(), String>>,
}

/// The once-a-second facts as last published.
#[derive(Debug, Default, PartialEq)]
struct Published {
    drift_ppm: f64,
    drift_seconds: f64,
    steal_seconds: f64,
    offsets: Vec<Option<f64>>,
}

/// What this machine lets the tick thread see of a stall's cause, once at start.
fn log_host_evidence(host: &HostEvidence) {
    tracing::info!(
        run_delay = host.has_run_delay(),
        throttling = host.throttle_file().as_deref().unwrap_or("none"),
        freezer = ?host.freezer_files(),
        in_v1_freezer_cgroup = host.in_v1_freezer_cgroup(),
        sigcont = host.has_sigcont(),
        "stall evidence"
    );
}

/// One log line per wall-clock step, saying what the detector made of it.
fn log_step(step_ns: i64, verdict: Option<StepVerdict>) {
    let step_seconds = step_ns as f64 / 1e9;
    match verdict {
        Some(StepVerdict::LostTime { lost_ns, .. }) => tracing::warn!(
            step_seconds,
            lost_seconds = lost_ns as f64 / 1e9,
            "wall clock stepped forward over time this machine did not run: a freeze"
        ),
        Some(StepVerdict::Correction { why, .. }) => tracing::warn!(
            step_seconds,
            why = why.as_str(),
            "wall clock stepped forward: a clock correction"
        ),
        None => tracing::warn!(step_seconds, "wall clock stepped back"),
    }
}
