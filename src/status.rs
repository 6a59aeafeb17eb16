//! The live snapshot the tick thread publishes and the HTTP API reads.
//!
//! No lock on most ticks and one short mutex hold a second on the writer side, one clone
//! per request on the reader side: a slow client can never hold up the detector.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// Status of one reference clock.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReferenceStatus {
    pub name: String,
    pub up: bool,
    /// Reference minus this machine's wall clock.
    pub offset_seconds: Option<f64>,
    pub last_error: Option<String>,
}

/// The machine's clock facts and what they let the detector see.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClockStatus {
    /// The kernel clocksource (`kvm-clock`, `tsc`, …).
    pub clocksource: Option<String>,
    /// The kernel says a time daemon keeps the wall clock synchronised.
    pub synchronised: Option<bool>,
    /// The kernel's bound on the wall clock's error.
    pub max_error_seconds: Option<f64>,
    /// `freeze.forward_steps`.
    pub forward_steps: &'static str,
    /// A reference that runs through a full VM pause is up now.
    pub vm_pause_visible: bool,
    /// When a pause is not visible now: why, and the config that would fix it.
    pub vm_pause_blind_spot: Option<String>,
}

/// What `/api/v1/status` shows, and what `/healthz` and `/readyz` decide on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LiveStatus {
    pub version: &'static str,
    pub boot_id: String,
    pub pid: u32,
    pub started_at_unix_ns: i64,
    pub data_dir: String,
    pub tick_seconds: f64,
    pub freeze_min_seconds: f64,
    /// Ticks completed since start (filled in by [`SharedStatus::snapshot`]).
    pub ticks: u64,
    /// MONOTONIC of the last tick (internal: used for health, not shown; filled in by
    /// [`SharedStatus::snapshot`]).
    #[serde(skip)]
    pub last_tick_mono_ns: i64,
    pub wall_clock_drift_ppm: f64,
    pub wall_clock_drift_seconds: f64,
    pub cpu_steal_seconds: f64,
    pub references: Vec<ReferenceStatus>,
    /// What this machine's clocks can show.
    pub clock: ClockStatus,
    /// Why the sidecar was down before this start, if it was.
    pub last_downtime: Option<DowntimeStatus>,
    pub state_db_error: Option<String>,
    /// Writes the state DB refused, held in memory until it takes them again.
    pub state_db_pending_writes: u64,
    /// What happened to the state DB itself this run: started fresh over a lost one, or
    /// deleted while running and put back (kept for the whole run).
    pub state_db_notice: Option<String>,
    pub events_recorded: u64,
    pub sources: Vec<SourceStatus>,
    /// The HTTP server's connections against its limit.
    pub http: HttpStatus,
}

/// The HTTP server's connections: open now, the limit, and how many were refused or cut
/// since start, by `stallwatch_http_connections_rejected_total` reason.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HttpStatus {
    pub connections: u64,
    pub connection_limit: u64,
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
}

/// Status of one job/step source.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceStatus {
    pub name: String,
    pub kind: &'static str,
    pub up: bool,
    pub last_error: Option<String>,
    pub journal_mode: Option<String>,
    pub last_poll_seconds: f64,
    /// Open workflows stalled now, all of them (the list below shows the longest).
    pub stalled_count: u64,
    /// The [`MAX_LISTED_STALLS`] longest-stalled workflows, longest first: id, name,
    /// idle seconds. A workflow still stalled is never pushed off by a newer stall.
    pub stalled: Vec<StalledWorkflow>,
    /// Queues held up by a stalled running workflow, with the workflow named.
    pub blocked_queues: Vec<BlockedQueueStatus>,
    /// Highest `recovery_attempts` of an open DBOS workflow: climbing means a crash loop.
    pub recovery_attempts_max: Option<i64>,
    /// When the current run of failed polls began (unix ns); `None` while up.
    pub down_since_unix_ns: Option<i64>,
    /// Running jobs past their lease, per queue (only queues that have some).
    pub stuck: Vec<QueueCount>,
    /// Age of the oldest job waiting to run, per queue (running jobs excluded).
    pub waiting: Vec<QueueAge>,
    /// Dead letters per queue: now, and how many appeared since the sidecar started.
    pub dead_letters: Vec<DeadLetterStatus>,
    /// Today's spend against the cap, when the source has a cap.
    pub cost: Option<CostStatus>,
    /// Label values folded into `other` since start, by label (`label_overflow_total`):
    /// the source has more distinct queues, steps or workflows than the budget keeps.
    pub label_overflow: std::collections::BTreeMap<&'static str, u64>,
    /// Lines and values skipped since start, by their `source_errors_total` kind
    /// (`bad_timestamp`, `oversize_line`, `bad_value`); kinds never seen are absent.
    pub skipped: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueCount {
    pub queue: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueueAge {
    pub queue: String,
    pub status: String,
    pub oldest_unix_ns: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterStatus {
    pub queue: String,
    pub current: u64,
    /// Dead letters that appeared while this sidecar process watched.
    pub new_since_start: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostStatus {
    pub today_usd: f64,
    pub cap_usd: f64,
    /// The cost day, `YYYY-MM-DD` in the source's cost timezone.
    pub day: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockedQueueStatus {
    pub queue: String,
    pub blocking_workflow_id: String,
    pub blocking_workflow_name: String,
    pub idle_seconds: f64,
    pub waiting: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StalledWorkflow {
    pub workflow_id: String,
    pub workflow_name: String,
    pub idle_seconds: f64,
}

/// Stalled workflows listed per source in the status (all are counted in the metric).
pub const MAX_LISTED_STALLS: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct DowntimeStatus {
    pub reason: &'static str,
    pub seconds: f64,
}

/// Shared handle to the live status, and the signals around it.
///
/// The tick thread's per-tick facts (`ticks`, the last tick's MONOTONIC) are atomics, not
/// fields behind the mutex: a tick takes no lock. [`SharedStatus::publish`] says a writer
/// finished a change the alert rules read (a source's poll, the state DB's health), so the
/// alert engine evaluates when something changed instead of on a timer.
#[derive(Clone, Default)]
pub struct SharedStatus(Arc<Shared>);

#[derive(Default)]
struct Shared {
    status: Mutex<LiveStatus>,
    ticks: AtomicU64,
    last_tick_mono_ns: AtomicI64,
    published: tokio::sync::Notify,
}

impl SharedStatus {
    pub fn new(status: LiveStatus) -> SharedStatus {
        SharedStatus(Arc::new(Shared {
            status: Mutex::new(status),
            ..Default::default()
        }))
    }

    /// Locks for a short update. A panic elsewhere must not take the status page down with it.
    pub fn lock(&self) -> MutexGuard<'_, LiveStatus> {
        self.0
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The whole status, the tick counters included.
    pub fn snapshot(&self) -> LiveStatus {
        let mut status = self.lock().clone();
        (status.ticks, status.last_tick_mono_ns) = self.ticks();
        status
    }

    /// One completed tick at MONOTONIC `mono_ns` (lock-free: the tick thread's only write
    /// on most ticks).
    pub fn tick(&self, mono_ns: i64) {
        self.0.last_tick_mono_ns.store(mono_ns, Ordering::Relaxed);
        self.0.ticks.fetch_add(1, Ordering::Release);
    }

    /// Ticks completed since start, and the MONOTONIC of the last one.
    pub fn ticks(&self) -> (u64, i64) {
        let ticks = self.0.ticks.load(Ordering::Acquire);
        (ticks, self.0.last_tick_mono_ns.load(Ordering::Relaxed))
    }

    /// A change the alert rules read is complete: wakes [`SharedStatus::published`]. Many
    /// publications before the waiter runs wake it once.
    pub fn publish(&self) {
        self.0.published.notify_one();
    }

    /// Waits for the next [`SharedStatus::publish`] (or returns at once for one made since
    /// the last wait). For one waiter: the alert engine.
    pub async fn published(&self) {
        self.0.published.notified().await;
    }
}
