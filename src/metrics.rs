//! The Prometheus registry and every metric the sidecar exports (names listed in docs/design.md).
//!
//! Owns names, help texts, buckets and label sets. Metrics are updated with atomic
//! operations by the threads that measure; a scrape only encodes them, so it never
//! waits for the detector and never touches a source.

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::freeze::downtime::DowntimeReason;
use crate::freeze::FreezeKind;

/// The bounded internal queues whose drops `stallwatch_dropped_total{queue}` counts.
pub const DROP_QUEUES: [&str; 6] = [
    "state_events",
    "state_episodes",
    "reference_samples",
    "alert_freezes",
    "alert_transitions",
    "otlp_spans",
];

/// `stallwatch_state_writes_dropped_total{kind}` label values.
pub const WRITE_KINDS: [&str; 2] = ["freeze", "episode"];

/// Buckets for tick overruns: from scheduler noise (1 ms) to a long stall (60 s).
const OVERRUN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for freeze durations: from the 2 s threshold to a lost night.
const FREEZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 28800.0,
];

pub struct Metrics {
    registry: Registry,
    pub freezes_total: IntCounterVec,
    pub frozen_seconds_total: CounterVec,
    pub freeze_duration_seconds: Histogram,
    pub last_freeze_timestamp_seconds: Gauge,
    pub tick_overrun_seconds: Histogram,
    pub wall_clock_drift_seconds: Gauge,
    pub wall_clock_drift_ppm: Gauge,
    pub wall_clock_steps_total: IntCounter,
    pub reference_offset_seconds: GaugeVec,
    pub reference_up: GaugeVec,
    pub cpu_steal_seconds_total: prometheus::Counter,
    pub downtime_seconds_total: CounterVec,
    pub state_db_errors_total: IntCounter,
    pub state_writes_dropped_total: IntCounterVec,
    pub state_writes_pending: Gauge,
    pub state_db_recreated_total: IntCounter,
    pub app_restarts_total: IntCounter,
    pub episodes_folded_total: IntCounterVec,
    pub dropped_total: IntCounterVec,
    pub sources: SourceMetrics,
    pub alerts: AlertMetrics,
    pub host: HostClockMetrics,
    pub http: HttpMetrics,
}

/// What this machine's clocks can show: the kernel's sync state and whether a full VM
/// pause would be seen now.
pub struct HostClockMetrics {
    pub clock_synchronised: Gauge,
    pub clock_max_error_seconds: Gauge,
    pub clock_info: GaugeVec,
    pub vm_pause_visible: Gauge,
}

impl HostClockMetrics {
    fn new(r: &Registry) -> HostClockMetrics {
        let m = HostClockMetrics {
            clock_synchronised: Gauge::with_opts(opts(
                "clock_synchronised",
                "1 when the kernel says a time daemon keeps the wall clock synchronised (adjtimex), else 0.",
            ))
            .expect("valid metric"),
            clock_max_error_seconds: Gauge::with_opts(opts(
                "clock_max_error_seconds",
                "The kernel's bound on the wall clock's error (adjtimex maxerror; 16 when unsynchronised).",
            ))
            .expect("valid metric"),
            clock_info: GaugeVec::new(
                opts("clock_info", "The kernel clocksource behind every clock (value 1)."),
                &["clocksource"],
            )
            .expect("valid metric"),
            vm_pause_visible: Gauge::with_opts(opts(
                "vm_pause_visible",
                "1 when a reference clock that runs through a full VM pause is up now, else 0: \
                 with 0 a pause is seen only if the wall clock is later stepped to the right time.",
            ))
            .expect("valid metric"),
        };
        for g in [
            &m.clock_synchronised,
            &m.clock_max_error_seconds,
            &m.vm_pause_visible,
        ] {
            r.register(Box::new(g.clone())).expect("unique");
        }
        r.register(Box::new(m.clock_info.clone())).expect("unique");
        m
    }
}

/// The HTTP server's connections and its limit (`http::serve`).
pub struct HttpMetrics {
    pub connections: prometheus::IntGauge,
    pub connection_limit: prometheus::IntGauge,
    pub connections_rejected_total: IntCounterVec,
}

impl HttpMetrics {
    fn new(r: &Registry) -> HttpMetrics {
        let m = HttpMetrics {
            connections: prometheus::IntGauge::with_opts(opts(
                "http_connections",
                "HTTP connections open now.",
            ))
            .expect("valid metric"),
            connection_limit: prometheus::IntGauge::with_opts(opts(
                "http_connection_limit",
                "Most HTTP connections open at once: a share of RLIMIT_NOFILE after a reserve for the state DB and sources.",
            ))
            .expect("valid metric"),
            connections_rejected_total: IntCounterVec::new(
                opts(
                    "http_connections_rejected_total",
                    "HTTP connections refused or cut, by reason: idle_evicted (the longest-idle one, closed to make room \
                     at the limit), limit (refused: every open one busy), accept_error (EMFILE and the like), \
                     header_timeout (no whole request head in time: idle keep-alive or slowloris).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        };
        r.register(Box::new(m.connections.clone())).expect("unique");
        r.register(Box::new(m.connection_limit.clone()))
            .expect("unique");
        r.register(Box::new(m.connections_rejected_total.clone()))
            .expect("unique");
        m
    }
}

/// Outcomes counted by `stallwatch_notifications_total{channel,outcome}`.
/// `silenced`: recorded but held back by a silence (`stallwatch silence`); `grouped`:
/// joined a group's message already waiting (alerts/group.rs); `explained`: caused by a
/// freeze and folded into its notification; `folded`: held by the channel's rate limit and
/// sent in a digest. Every notification the rules make for a channel is counted once as
/// sent (alone or first of its group), grouped, explained, folded, silenced, dropped or
/// failed; a digest's own send counts as one more `sent`.
pub const NOTIFICATION_OUTCOMES: [&str; 8] = [
    "sent",
    "retried",
    "failed",
    "dropped",
    "silenced",
    "grouped",
    "explained",
    "folded",
];

/// Metrics of the alert engine and its outbox.
pub struct AlertMetrics {
    pub alerts_firing: GaugeVec,
    pub notifications_total: IntCounterVec,
    pub outbox_pending: Gauge,
    pub outbox_oldest_age_seconds: Gauge,
}

impl AlertMetrics {
    fn new(r: &Registry) -> AlertMetrics {
        let m = AlertMetrics {
            alerts_firing: GaugeVec::new(
                opts("alerts_firing", "Alerts of the sidecar's own rules firing now, by rule."),
                &["rule"],
            )
            .expect("valid metric"),
            notifications_total: IntCounterVec::new(
                opts(
                    "notifications_total",
                    "Notifications by channel and outcome (sent, retried, failed, dropped, silenced, grouped, explained, folded).",
                ),
                &["channel", "outcome"],
            )
            .expect("valid metric"),
            outbox_pending: Gauge::with_opts(opts(
                "outbox_pending",
                "Notifications written to the outbox and not yet delivered.",
            ))
            .expect("valid metric"),
            outbox_oldest_age_seconds: Gauge::with_opts(opts(
                "outbox_oldest_age_seconds",
                "Age of the oldest undelivered notification; 0 when none is pending.",
            ))
            .expect("valid metric"),
        };
        for rule in crate::config::RuleKind::ALL {
            m.alerts_firing.with_label_values(&[rule.as_str()]).set(0.0);
        }
        r.register(Box::new(m.alerts_firing.clone()))
            .expect("unique");
        r.register(Box::new(m.notifications_total.clone()))
            .expect("unique");
        r.register(Box::new(m.outbox_pending.clone()))
            .expect("unique");
        r.register(Box::new(m.outbox_oldest_age_seconds.clone()))
            .expect("unique");
        m
    }

    /// Starts every configured channel's counters at 0, so `increase()` sees the first one.
    pub fn register_channel(&self, channel: &str) {
        for outcome in NOTIFICATION_OUTCOMES {
            self.notifications_total
                .with_label_values(&[channel, outcome]);
        }
    }
}

/// Buckets for step durations and gaps: from a fast step (10 ms) to a lost night.
const STEP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// Metrics of job and step sources, all labelled by `source`.
pub struct SourceMetrics {
    pub queue_depth: GaugeVec,
    pub queue_oldest_age_seconds: GaugeVec,
    pub job_retries_total: IntCounterVec,
    pub dead_letters: GaugeVec,
    pub dead_letters_total: IntCounterVec,
    pub stuck_jobs: GaugeVec,
    pub step_duration_seconds: HistogramVec,
    pub step_gap_seconds: HistogramVec,
    pub step_gaps_total: IntCounterVec,
    pub stalls_total: IntCounterVec,
    pub wait_overruns_total: IntCounterVec,
    pub wait_overrun_seconds: HistogramVec,
    pub waits_overdue: GaugeVec,
    pub dbos_recovery_attempts_max: GaugeVec,
    pub queue_blocked: GaugeVec,
    pub stalled_workflows: GaugeVec,
    pub cost_usd_today: GaugeVec,
    pub cost_cap_usd: GaugeVec,
    pub source_up: GaugeVec,
    pub source_poll_duration_seconds: GaugeVec,
    pub source_errors_total: IntCounterVec,
    pub source_info: GaugeVec,
    pub label_overflow_total: IntCounterVec,
    /// `stallwatch_sql_<column>` gauges of `sql` sources, registered on first use.
    sql: std::sync::Mutex<std::collections::HashMap<String, GaugeVec>>,
    registry: Registry,
}

impl SourceMetrics {
    /// The gauge for value column `column` of a `sql` source with these label names.
    /// Config validation guarantees one label set per column across sources.
    pub fn sql_gauge(&self, column: &str, labels: &[String]) -> GaugeVec {
        let mut gauges = self.sql.lock().unwrap_or_else(|p| p.into_inner());
        gauges
            .entry(column.to_string())
            .or_insert_with(|| {
                let mut names: Vec<&str> = vec!["source"];
                names.extend(labels.iter().map(String::as_str));
                let help = format!("Column {column} of an operator's sql source query.");
                let g = GaugeVec::new(opts(&format!("sql_{column}"), &help), &names)
                    .expect("validated names");
                self.registry
                    .register(Box::new(g.clone()))
                    .expect("validated unique");
                g
            })
            .clone()
    }

    fn new(r: &Registry) -> SourceMetrics {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(opts(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace("stallwatch")
                    .buckets(STEP_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique");
            h
        };
        SourceMetrics {
            queue_depth: gauge("queue_depth", "Rows or workflows still to be done, by status.", &["source", "queue", "status"]),
            queue_oldest_age_seconds: gauge(
                "queue_oldest_age_seconds",
                "Age of the oldest row still to be done, by status (tables with a creation time).",
                &["source", "queue", "status"],
            ),
            job_retries_total: counter("job_retries_total", "Failed attempts seen on open jobs.", &["source", "queue"]),
            dead_letters: gauge("dead_letters", "Jobs given up on (dead letters) now.", &["source", "queue"]),
            dead_letters_total: counter(
                "dead_letters_total",
                "Dead letters that appeared while the sidecar watched.",
                &["source", "queue"],
            ),
            stuck_jobs: gauge("stuck_jobs", "Running jobs whose lease has expired.", &["source", "queue"]),
            step_duration_seconds: histogram(
                "step_duration_seconds",
                "Duration of each completed step (intended waits excluded).",
                &["source", "step"],
            ),
            step_gap_seconds: histogram(
                "step_gap_seconds",
                "Time between one step's end and the next step's start in a workflow, minus intended waits.",
                &["source", "workflow"],
            ),
            step_gaps_total: counter(
                "step_gaps_total",
                "Step gaps longer than gap_min, by cause (freeze, starvation or stall).",
                &["source", "cause"],
            ),
            stalls_total: counter(
                "stalls_total",
                "Workflows that went without progress for longer than stall_after, by cause.",
                &["source", "cause"],
            ),
            wait_overruns_total: counter(
                "wait_overruns_total",
                "Intended waits that ended at least gap_min past their deadline, by cause.",
                &["source", "cause"],
            ),
            wait_overrun_seconds: histogram(
                "wait_overrun_seconds",
                "How far past its deadline each intended wait (DBOS.recv) ended.",
                &["source"],
            ),
            waits_overdue: gauge(
                "waits_overdue",
                "Workflows inside an intended wait whose deadline has passed, right now.",
                &["source"],
            ),
            dbos_recovery_attempts_max: gauge(
                "dbos_recovery_attempts_max",
                "Highest recovery_attempts of an open DBOS workflow; climbing with each restart is a crash loop.",
                &["source"],
            ),
            queue_blocked: gauge(
                "queue_blocked",
                "1 when every running workflow of the queue has stalled while others wait in it.",
                &["source", "queue"],
            ),
            stalled_workflows: gauge(
                "stalled_workflows",
                "Open workflows without progress for longer than stall_after.",
                &["source"],
            ),
            cost_usd_today: gauge("cost_usd_today", "Spend logged today (cost day), in US dollars.", &["source"]),
            cost_cap_usd: gauge("cost_cap_usd", "Configured daily cost cap, in US dollars.", &["source"]),
            source_up: gauge("source_up", "1 if the last poll of the source succeeded.", &["source"]),
            source_poll_duration_seconds: gauge(
                "source_poll_duration_seconds",
                "Duration of the last poll of the source.",
                &["source"],
            ),
            source_errors_total: counter("source_errors_total", "Failed polls and skipped values, by kind.", &["source", "kind"]),
            source_info: gauge(
                "source_info",
                "Facts about a source; journal_mode is the SQLite journal mode of the app database.",
                &["source", "kind", "journal_mode"],
            ),
            label_overflow_total: counter(
                "label_overflow_total",
                "Label values folded into \"other\" because a label reached its cap.",
                &["source", "label"],
            ),
            sql: Default::default(),
            registry: r.clone(),
        }
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("stallwatch")
}

impl Metrics {
    /// Builds the registry. `references` are the configured reference names (bounded by config).
    pub fn new(references: &[String]) -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            freezes_total: IntCounterVec::new(opts("freezes_total", "Freeze events detected, by kind."), &["kind"])
                .expect("valid metric"),
            frozen_seconds_total: CounterVec::new(
                opts("frozen_seconds_total", "Time lost to freezes, by kind (wall-clock steps excluded)."),
                &["kind"],
            )
            .expect("valid metric"),
            freeze_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("freeze_duration_seconds", "Duration of each freeze (wall-clock steps excluded).")
                    .namespace("stallwatch")
                    .buckets(FREEZE_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            last_freeze_timestamp_seconds: Gauge::with_opts(opts(
                "last_freeze_timestamp_seconds",
                "Unix time the most recent freeze started; 0 if none is recorded.",
            ))
            .expect("valid metric"),
            tick_overrun_seconds: Histogram::with_opts(
                HistogramOpts::new("tick_overrun_seconds", "How late each tick of the detector loop woke up.")
                    .namespace("stallwatch")
                    .buckets(OVERRUN_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            wall_clock_drift_seconds: Gauge::with_opts(opts(
                "wall_clock_drift_seconds",
                "Change of REALTIME minus MONOTONIC since start, excluding steps.",
            ))
            .expect("valid metric"),
            wall_clock_drift_ppm: Gauge::with_opts(opts(
                "wall_clock_drift_ppm",
                "Rate of the wall clock against MONOTONIC over the last minute, in parts per million.",
            ))
            .expect("valid metric"),
            wall_clock_steps_total: IntCounter::with_opts(opts(
                "wall_clock_steps_total",
                "Steps of the wall clock larger than freeze.wall_step.",
            ))
            .expect("valid metric"),
            reference_offset_seconds: GaugeVec::new(
                opts("reference_offset_seconds", "Reference clock minus this machine's wall clock."),
                &["reference"],
            )
            .expect("valid metric"),
            reference_up: GaugeVec::new(
                opts("reference_up", "1 if the last read of the reference clock succeeded."),
                &["reference"],
            )
            .expect("valid metric"),
            cpu_steal_seconds_total: prometheus::Counter::with_opts(opts(
                "cpu_steal_seconds_total",
                "CPU time stolen by the hypervisor, summed over CPUs, since the sidecar started.",
            ))
            .expect("valid metric"),
            downtime_seconds_total: CounterVec::new(
                opts("downtime_seconds_total", "Time the sidecar was not running, by reason."),
                &["reason"],
            )
            .expect("valid metric"),
            state_db_errors_total: IntCounter::with_opts(opts(
                "state_db_errors_total",
                "Failed writes or reads of the state database.",
            ))
            .expect("valid metric"),
            state_writes_dropped_total: IntCounterVec::new(
                opts(
                    "state_writes_dropped_total",
                    "Writes the state database refused that did not fit the writer's retry queue \
                     (or were still held at exit), by kind: freeze or episode.",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            state_writes_pending: Gauge::with_opts(opts(
                "state_writes_pending",
                "Writes the state database refused, held in memory until it takes them again.",
            ))
            .expect("valid metric"),
            state_db_recreated_total: IntCounter::with_opts(opts(
                "state_db_recreated_total",
                "Times the state database was found deleted or replaced while running and was put back at its path.",
            ))
            .expect("valid metric"),
            app_restarts_total: IntCounter::with_opts(opts(
                "app_restarts_total",
                "Times the app run by `stallwatch run -- CMD` ended on its own (not after a forwarded stop signal), \
                 as recorded in the state database: app restarts, not machine freezes.",
            ))
            .expect("valid metric"),
            episodes_folded_total: IntCounterVec::new(
                opts(
                    "episodes_folded_total",
                    "Episodes counted but not stored one by one (the state writer's queue was full), by source; \
                     the counts are stored per day and shown by /api/v1/episodes and report.",
                ),
                &["source"],
            )
            .expect("valid metric"),
            dropped_total: IntCounterVec::new(
                opts("dropped_total", "Items dropped because a bounded internal queue was full, by queue."),
                &["queue"],
            )
            .expect("valid metric"),
            sources: SourceMetrics::new(&registry),
            alerts: AlertMetrics::new(&registry),
            host: HostClockMetrics::new(&registry),
            http: HttpMetrics::new(&registry),
            registry,
        };
        let build_info = GaugeVec::new(
            opts("build_info", "Build of the running sidecar; always 1."),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);

        for kind in FreezeKind::ALL {
            m.freezes_total.with_label_values(&[kind.as_str()]);
            if kind.is_lost_time() {
                m.frozen_seconds_total.with_label_values(&[kind.as_str()]);
            }
        }
        for reason in [
            DowntimeReason::Restart,
            DowntimeReason::Reboot,
            DowntimeReason::Stopped,
        ] {
            m.downtime_seconds_total
                .with_label_values(&[reason.as_str()]);
        }
        for name in references {
            m.reference_up.with_label_values(&[name]).set(0.0);
        }
        // Known queues start at 0, so increase() sees the first drop.
        for queue in DROP_QUEUES {
            m.dropped_total.with_label_values(&[queue]);
        }
        for kind in WRITE_KINDS {
            m.state_writes_dropped_total.with_label_values(&[kind]);
        }
        let r = &m.registry;
        r.register(Box::new(m.freezes_total.clone()))
            .expect("unique");
        r.register(Box::new(m.frozen_seconds_total.clone()))
            .expect("unique");
        r.register(Box::new(m.freeze_duration_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.last_freeze_timestamp_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.tick_overrun_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.wall_clock_drift_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.wall_clock_drift_ppm.clone()))
            .expect("unique");
        r.register(Box::new(m.wall_clock_steps_total.clone()))
            .expect("unique");
        r.register(Box::new(m.reference_offset_seconds.clone()))
            .expect("unique");
        r.register(Box::new(m.reference_up.clone()))
            .expect("unique");
        r.register(Box::new(m.cpu_steal_seconds_total.clone()))
            .expect("unique");
        r.register(Box::new(m.downtime_seconds_total.clone()))
            .expect("unique");
        r.register(Box::new(m.state_db_errors_total.clone()))
            .expect("unique");
        r.register(Box::new(m.dropped_total.clone()))
            .expect("unique");
        r.register(Box::new(m.state_writes_dropped_total.clone()))
            .expect("unique");
        r.register(Box::new(m.state_writes_pending.clone()))
            .expect("unique");
        r.register(Box::new(m.state_db_recreated_total.clone()))
            .expect("unique");
        r.register(Box::new(m.app_restarts_total.clone()))
            .expect("unique");
        r.register(Box::new(m.episodes_folded_total.clone()))
            .expect("unique");
        r.register(Box::new(build_info)).expect("unique");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique");
        m
    }

    /// Counts one freeze event in the freeze metrics.
    pub fn record_freeze(&self, kind: FreezeKind, started_at_ns: i64, duration_ns: i64) {
        self.freezes_total.with_label_values(&[kind.as_str()]).inc();
        if kind.is_lost_time() {
            let secs = duration_ns.max(0) as f64 / 1e9;
            self.frozen_seconds_total
                .with_label_values(&[kind.as_str()])
                .inc_by(secs);
            self.freeze_duration_seconds.observe(secs);
            let started = started_at_ns as f64 / 1e9;
            if started > self.last_freeze_timestamp_seconds.get() {
                self.last_freeze_timestamp_seconds.set(started);
            }
        } else {
            self.wall_clock_steps_total.inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_is_counted_by_kind_and_steps_separately() {
        let m = Metrics::new(&["rtc".into()]);
        m.record_freeze(
            FreezeKind::ProcessStall,
            1_700_000_000_000_000_000,
            3_000_000_000,
        );
        m.record_freeze(
            FreezeKind::WallClockStep,
            1_700_000_100_000_000_000,
            -60_000_000_000,
        );
        let text = m.encode();
        assert!(
            text.contains("stallwatch_freezes_total{kind=\"process_stall\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("stallwatch_frozen_seconds_total{kind=\"process_stall\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("stallwatch_wall_clock_steps_total 1"),
            "{text}"
        );
        assert!(
            text.contains("stallwatch_last_freeze_timestamp_seconds 1700000000"),
            "{text}"
        );
        assert!(
            text.contains("stallwatch_reference_up{reference=\"rtc\"} 0"),
            "{text}"
        );
        assert!(text.contains("stallwatch_build_info{version="), "{text}");
    }
}
