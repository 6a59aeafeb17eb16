//! The tick thread: reads the real clocks on a MONOTONIC schedule and feeds the pure
//! [`Detector`]. This is the thin I/O layer around the decision.
//!
//! A dedicated OS thread sleeping to absolute deadlines (`clock_nanosleep`,
//! `TIMER_ABSTIME`), not a runtime timer: nothing else scheduled on the runtime can
//! delay it, and a late wake is never followed by a burst of catch-up ticks (the next
//! deadline is one tick after the late wake). It does no blocking I/O besides local
//! reference reads (sysfs, PTP) and `/proc/stat`; events go to the state writer
//! through a bounded queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::detector::{Detector, DetectorConfig, Wake};
use super::reference::{RefOutcome, RefSample};
use super::references::LocalReference;
use crate::clock::{read_clocks, sleep_until_mono, StealReader, NANOS_PER_SEC};
use crate::config::source::Location;
use crate::config::{Config, FreezeConfig, ReferenceSpec};
use crate::metrics::Metrics;
use crate::persist::EventSink;
use crate::status::SharedStatus;

/// How often steal time is read from `/proc/stat`.
pub const STEAL_INTERVAL_NS: i64 = NANOS_PER_SEC;
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
    pub announce: tokio::sync::mpsc::Sender<super::FreezeEvent>,
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
        let steal = StealReader::new();
        let mut last_steal: Option<i64> = None;
        let mut next_steal_ns = 0;
        let tick_ns = self.config.tick.as_nanos() as i64;
        let mut deadline = read_clocks().mono_ns + tick_ns;

        while !self.stop.load(Ordering::Relaxed) {
            let slept_at = crate::clock::mono_ns();
            sleep_until_mono(deadline);
            let clocks = read_clocks();
            let report = detector.on_wake(Wake {
                slept_at_ns: slept_at,
                deadline_ns: deadline,
                clocks,
            });
            self.metrics
                .tick_overrun_seconds
                .observe(report.overrun_ns as f64 / 1e9);
            if let Some(step) = report.wall_step_ns {
                tracing::warn!(step_seconds = step as f64 / 1e9, "wall clock stepped");
            }

            for i in 0..self.references.len() {
                if let RefSlot::Local(reader) = &mut self.references[i].1 {
                    let sample = reader.read();
                    self.apply_sample(&mut detector, i, sample);
                }
            }
            while let Ok((i, sample)) = self.network_samples.try_recv() {
                self.apply_sample(&mut detector, i, sample);
            }

            if clocks.mono_ns >= next_steal_ns {
                next_steal_ns = clocks.mono_ns + STEAL_INTERVAL_NS;
                if let Ok(total) = steal.read_ns() {
                    if let Some(prev) = last_steal {
                        self.metrics
                            .cpu_steal_seconds_total
                            .inc_by((total - prev).max(0) as f64 / 1e9);
                    }
                    last_steal = Some(total);
                    detector.on_steal(clocks.mono_ns, total);
                }
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
            self.publish(&detector, clocks.mono_ns);

            deadline += tick_ns;
            if deadline <= clocks.mono_ns {
                deadline = clocks.mono_ns + tick_ns; // late: skip missed ticks, never burst
            }
        }
        for event in detector.flush() {
            self.events.record(event);
        }
    }

    fn apply_sample(
        &self,
        detector: &mut Detector,
        index: usize,
        sample: Result<RefSample, String>,
    ) {
        let name = &self.references[index].0;
        let up = self.metrics.reference_up.with_label_values(&[name]);
        match sample {
            Ok(sample) => {
                up.set(1.0);
                match detector.on_reference(index, sample) {
                    RefOutcome::Resync { moved_ns } => {
                        tracing::info!(reference = %name, moved_seconds = moved_ns as f64 / 1e9, "reference clock moved below the freeze threshold; re-synchronised");
                    }
                    RefOutcome::Jump { estimate_ns, .. } => {
                        tracing::info!(reference = %name, jump_seconds = estimate_ns as f64 / 1e9, "reference clock ran while this machine did not");
                    }
                    RefOutcome::Steady | RefOutcome::Refined { .. } => {}
                }
                let mut status = self.status.lock();
                let slot = &mut status.references[index];
                slot.up = true;
                slot.last_error = None;
            }
            Err(error) => {
                up.set(0.0);
                let mut status = self.status.lock();
                let slot = &mut status.references[index];
                if slot.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(reference = %name, %error, "reference clock unreadable");
                }
                slot.up = false;
                slot.last_error = Some(error);
            }
        }
    }

    fn publish(&self, detector: &Detector, mono_ns: i64) {
        let drift_seconds = detector.drift_ns() as f64 / 1e9;
        self.metrics.wall_clock_drift_seconds.set(drift_seconds);
        self.metrics.wall_clock_drift_ppm.set(detector.drift_ppm());
        let offsets: Vec<Option<f64>> = (0..self.references.len())
            .map(|i| detector.reference_offset_ns(i).map(|o| o as f64 / 1e9))
            .collect();
        for ((name, _), offset) in self.references.iter().zip(&offsets) {
            if let Some(o) = offset {
                self.metrics
                    .reference_offset_seconds
                    .with_label_values(&[name])
                    .set(*o);
            }
        }
        let mut status = self.status.lock();
        status.ticks += 1;
        status.last_tick_mono_ns = mono_ns;
        status.wall_clock_drift_ppm = detector.drift_ppm();
        status.wall_clock_drift_seconds = drift_seconds;
        status.cpu_steal_seconds = self.metrics.cpu_steal_seconds_total.get();
        for (slot, offset) in status.references.iter_mut().zip(offsets) {
            slot.offset_seconds = offset;
        }
    }
}
