//! The state writer thread: the only writer of the state DB's events, episodes and
//! heartbeat after start-up.
//!
//! It writes the heartbeat once a second and every freeze event and episode it is sent,
//! so the tick thread never waits on disk (a slow disk would otherwise look like a stall).
//! Its queue is bounded; an event that does not fit is counted as dropped, and an episode
//! that does not fit is *folded*: counted per source per day in `episode_folded`, so the
//! API and `report` say how many are missing.
//!
//! A write the DB refuses (a full disk) is held in a bounded in-memory retry queue and
//! written, in order, when the DB takes writes again (retried with backoff); the state
//! DB is reported unhealthy meanwhile, and what does not fit is counted in
//! `stallwatch_state_writes_dropped_total{kind}`. Once a second, with the heartbeat, it
//! checks that the DB's path still names the file it has open; a DB deleted while
//! running is put back at its path (copied from the still-open file) and the deletion
//! is reported. On stop it writes a final, clean heartbeat.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::{read_clocks, real_ns};
use crate::freeze::downtime::Heartbeat;
use crate::freeze::FreezeEvent;
use crate::metrics::Metrics;
use crate::signals::episode::Episode;
use crate::state::{AtPath, StateDb, FACT_RESTORED};
use crate::status::SharedStatus;

/// How often the heartbeat is written: the error of a restart's measured downtime.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Events waiting to be written; freezes are rare, so this only fills if the disk hangs.
pub const PERSIST_QUEUE: usize = 1024;
/// Writes held in memory while the state DB refuses them (a full disk): hours of
/// freezes, or a few polls' worth of episodes, in well under a megabyte.
pub const RETRY_QUEUE: usize = 4096;
/// First wait before retrying held writes after a failure; it doubles on each failure.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between retries: a disk that has space again is written within this.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How long a DB deleted while running keeps the state DB reported unhealthy after it
/// was put back: long enough for the `state_db` alert to fire and be seen.
pub const RECREATED_NOTICE: Duration = Duration::from_secs(120);
/// Recreations of a deleted DB in one run; each keeps the deleted file open (SQLite
/// would delete the new DB's WAL by name when it closed), so a loop of deletions stops.
pub const MAX_RECREATIONS: usize = 8;

enum Msg {
    Event(FreezeEvent),
    Episode(Episode),
    Stop,
}

/// A write waiting for the state DB.
enum Write {
    Event(FreezeEvent),
    Episode(Episode),
}

/// Episodes counted but not queued, per source, since the writer last took them.
type Folds = Arc<Mutex<BTreeMap<String, u64>>>;

/// Where finished freeze events go: counted in the metrics, then queued for the state DB.
#[derive(Clone)]
pub struct EventSink {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
    folds: Folds,
}

impl EventSink {
    /// Records a freeze the detector has decided on, as one `stallwatch.freeze` span: its
    /// kind, lost time, start and the channels that saw it.
    pub fn record(&self, event: FreezeEvent) {
        let channels: Vec<&str> = event.channels.iter().map(|c| c.channel.as_str()).collect();
        let _span = tracing::info_span!(
            "stallwatch.freeze",
            freeze.kind = event.kind.as_str(),
            freeze.duration_seconds = event.duration_ns as f64 / 1e9,
            freeze.started_at = %crate::time::rfc3339_millis(event.started_at_ns),
            freeze.channels = %channels.join(","),
        )
        .entered();
        self.metrics
            .record_freeze(event.kind, event.started_at_ns, event.duration_ns);
        tracing::warn!(
            kind = event.kind.as_str(),
            duration_seconds = event.duration_ns as f64 / 1e9,
            channels = ?channels,
            "freeze detected"
        );
        match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics
                    .dropped_total
                    .with_label_values(&["state_events"])
                    .inc();
            }
        }
    }
}

impl EventSink {
    /// Queues an attributed episode for the state DB (metrics are the caller's). One that
    /// does not fit is folded: counted for its source, and the count stored.
    pub fn record_episode(&self, episode: Episode) {
        if let Err(
            TrySendError::Full(Msg::Episode(e)) | TrySendError::Disconnected(Msg::Episode(e)),
        ) = self.tx.try_send(Msg::Episode(episode))
        {
            self.metrics
                .dropped_total
                .with_label_values(&["state_episodes"])
                .inc();
            fold(&self.folds, &self.metrics, &e.source);
        }
    }
}

/// Counts one episode of `source` as folded.
fn fold(folds: &Folds, metrics: &Metrics, source: &str) {
    metrics
        .episodes_folded_total
        .with_label_values(&[source])
        .inc();
    *folds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(source.to_string())
        .or_default() += 1;
}

/// Handle to the running writer.
pub struct Writer {
    tx: SyncSender<Msg>,
    thread: JoinHandle<()>,
}

impl Writer {
    pub fn spawn(
        db: StateDb,
        boot_id: String,
        metrics: Arc<Metrics>,
        status: SharedStatus,
    ) -> (Writer, EventSink) {
        let (tx, rx) = sync_channel(PERSIST_QUEUE);
        let folds = Folds::default();
        let sink = EventSink {
            tx: tx.clone(),
            metrics: metrics.clone(),
            folds: folds.clone(),
        };
        let state = WriterState {
            db,
            retired: Vec::new(),
            boot_id,
            metrics,
            status,
            folds,
            held: VecDeque::new(),
            held_folds: BTreeMap::new(),
            retry_at: None,
            backoff: RETRY_BACKOFF_MIN,
            failure: None,
            heartbeat_failure: None,
            notice: None,
        };
        let thread = std::thread::Builder::new()
            .name("stallwatch-state".into())
            .spawn(move || write_loop(state, rx))
            .expect("spawning a thread");
        (Writer { tx, thread }, sink)
    }

    /// Asks the writer to drain its queue, write a clean heartbeat and stop; waits for it.
    pub fn stop(self) {
        // A full queue still drains: send blocks only until the writer catches up.
        let _ = self.tx.send(Msg::Stop);
        let _ = self.thread.join();
    }
}

struct WriterState {
    db: StateDb,
    /// Connections to DBs deleted while open, kept until the end (see `StateDb::recreate`).
    retired: Vec<StateDb>,
    boot_id: String,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    folds: Folds,
    /// Writes the DB refused, oldest first, at most [`RETRY_QUEUE`].
    held: VecDeque<Write>,
    /// Folded counts not yet stored: (source, UTC day) → count.
    held_folds: BTreeMap<(String, i64), u64>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Why the held writes could not be written, while there are some.
    failure: Option<String>,
    heartbeat_failure: Option<String>,
    /// A DB deleted while running: what was done, and until when it is reported.
    notice: Option<(String, Instant)>,
}

impl WriterState {
    fn heartbeat(&self, clean: bool) -> Heartbeat {
        Heartbeat {
            clocks: read_clocks(),
            boot_id: self.boot_id.clone(),
            clean,
        }
    }

    /// Takes a write: held behind the ones waiting, or counted as dropped when full.
    fn hold(&mut self, write: Write) {
        if self.held.len() >= RETRY_QUEUE {
            let kind = match &write {
                Write::Event(_) => "freeze",
                Write::Episode(e) => {
                    fold(&self.folds, &self.metrics, &e.source);
                    "episode"
                }
            };
            self.metrics
                .state_writes_dropped_total
                .with_label_values(&[kind])
                .inc();
            return;
        }
        self.held.push_back(write);
    }

    /// Writes what is held, oldest first, unless a retry is not due yet (or `force`).
    fn flush(&mut self, force: bool) {
        if !force && self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        for (source, count) in
            std::mem::take(&mut *self.folds.lock().unwrap_or_else(|p| p.into_inner()))
        {
            let day = crate::time::day_of(real_ns());
            *self.held_folds.entry((source, day)).or_default() += count;
        }
        let mut result = Ok(());
        while let Some(write) = self.held.front() {
            let written = match write {
                Write::Event(event) => self.db.insert_event(event, real_ns()).map(|_| true),
                Write::Episode(episode) => {
                    self.db.insert_episode(episode, real_ns()).map(|_| false)
                }
            };
            match written {
                Ok(is_event) => {
                    self.held.pop_front();
                    if is_event {
                        self.status.lock().events_recorded += 1;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() && !self.held_folds.is_empty() {
            let folds: Vec<_> = self
                .held_folds
                .iter()
                .map(|((source, day), n)| (source.clone(), *day, *n))
                .collect();
            result = self.db.add_folded(&folds);
            if result.is_ok() {
                self.held_folds.clear();
            }
        }
        match result {
            Ok(()) => {
                if self.failure.take().is_some() {
                    tracing::info!(path = %self.db.path().display(), "state database takes writes again; held writes written");
                }
                self.retry_at = None;
                self.backoff = RETRY_BACKOFF_MIN;
            }
            Err(e) => {
                self.metrics.state_db_errors_total.inc();
                if self.failure.is_none() {
                    tracing::error!(error = %e, held = self.held.len(), "state database write failed; holding writes in memory and retrying; freeze detection continues");
                }
                self.failure = Some(e.to_string());
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_BACKOFF_MAX);
            }
        }
    }

    fn write_heartbeat(&mut self, clean: bool) {
        let result = self.db.write_heartbeat(&self.heartbeat(clean));
        match result {
            Ok(()) => self.heartbeat_failure = None,
            Err(e) => {
                self.metrics.state_db_errors_total.inc();
                if self.heartbeat_failure.is_none() && self.failure.is_none() {
                    tracing::error!(error = %e, "state database heartbeat failed; freeze detection continues");
                }
                self.heartbeat_failure = Some(e.to_string());
                // The heartbeat is a probe too: a failing DB is not written again before
                // the retry is due.
                self.retry_at
                    .get_or_insert_with(|| Instant::now() + RETRY_BACKOFF_MIN);
            }
        }
    }

    /// Once a second: is the file at the path still ours? If not, put one back.
    fn check_path(&mut self) {
        let at_path = self.db.still_at_path();
        if at_path == AtPath::Same || self.retired.len() >= MAX_RECREATIONS {
            return;
        }
        let path = self.db.path().display().to_string();
        let what = match at_path {
            AtPath::Missing => "deleted",
            _ => "replaced by another file",
        };
        let (db, kept) = match self.db.recreate() {
            Ok(new) => new,
            Err(e) => {
                let text = format!(
                    "state database {path} was {what} while stallwatch ran and cannot be put \
                     back ({e}); writes go to the deleted file and are lost at exit"
                );
                if self.notice.is_none() {
                    tracing::error!("{text}");
                }
                self.notice = Some((text, Instant::now() + RECREATED_NOTICE));
                return;
            }
        };
        self.metrics.state_db_recreated_total.inc();
        let now = real_ns();
        let text = if kept {
            format!(
                "state database {path} was {what} while stallwatch ran; it was recreated at {} \
                 from the copy stallwatch still had open, so no history was lost",
                crate::time::rfc3339(now)
            )
        } else {
            match db.notice() {
                Some(lost) => lost.to_string(),
                None => format!(
                    "state database {path} was {what} while stallwatch ran; the file now there \
                     is used from {} on, and what this run recorded before is not in it",
                    crate::time::rfc3339(now)
                ),
            }
        };
        tracing::error!("{text}");
        if kept {
            if let Err(e) = db.insert_fact(FACT_RESTORED, now, &text) {
                tracing::warn!(error = %e, "cannot record the state database's recreation");
            }
        }
        // A DB without this run's history: this run's watching starts in it now.
        if !kept {
            if let Err(e) = db.begin_session(now, None) {
                tracing::warn!(error = %e, "cannot record this run's watch session");
            }
        }
        self.status.lock().state_db_notice = Some(text.clone());
        // The alert engine follows the DB to its new file when it next evaluates.
        self.status.publish();
        self.notice = Some((text, Instant::now() + RECREATED_NOTICE));
        let old = std::mem::replace(&mut self.db, db);
        self.retired.push(old);
        // This run's heartbeat, so a restart after this is classified from the new DB.
        self.write_heartbeat(false);
    }

    /// Publishes the state DB's health: `/readyz`, the `state_db` rule and the status.
    fn publish(&mut self) {
        if self
            .notice
            .as_ref()
            .is_some_and(|(_, until)| Instant::now() >= *until)
        {
            self.notice = None;
        }
        let error = if let Some((text, _)) = &self.notice {
            Some(text.clone())
        } else if let Some(e) = &self.failure {
            Some(format!(
                "{e}; {} write(s) held in memory until it can be written",
                self.held.len()
            ))
        } else {
            self.heartbeat_failure.clone()
        };
        self.metrics
            .state_writes_pending
            .set(self.held.len() as f64);
        let mut s = self.status.lock();
        if s.state_db_error.is_some() && error.is_none() {
            tracing::info!(path = %self.db.path().display(), "state database writable again");
        }
        let changed = s.state_db_error != error;
        s.state_db_error = error;
        s.state_db_pending_writes = self.held.len() as u64;
        drop(s);
        // The state_db rule and the dead-man's switch read the error.
        if changed {
            self.status.publish();
        }
    }

    fn stop(mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Event(event) => self.hold(Write::Event(event)),
                Msg::Episode(episode) => self.hold(Write::Episode(episode)),
                Msg::Stop => {}
            }
        }
        self.flush(true);
        self.write_heartbeat(true);
        if !self.held.is_empty() {
            tracing::error!(
                lost = self.held.len(),
                error = self.failure.as_deref().unwrap_or(""),
                "stopping with writes the state database refused; they are lost"
            );
            for write in &self.held {
                let kind = match write {
                    Write::Event(_) => "freeze",
                    Write::Episode(_) => "episode",
                };
                self.metrics
                    .state_writes_dropped_total
                    .with_label_values(&[kind])
                    .inc();
            }
        }
        if !self.retired.is_empty() {
            // The deleted DBs' connections close after this one and may delete the WAL
            // by name: empty it first.
            if let Err(e) = self.db.checkpoint() {
                tracing::warn!(error = %e, "cannot checkpoint the recreated state database");
            }
        }
        let WriterState { db, retired, .. } = self;
        drop(db);
        drop(retired);
    }
}

fn write_loop(mut w: WriterState, rx: Receiver<Msg>) {
    let mut next_beat = Instant::now();
    loop {
        let wait = next_beat.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Event(event)) => {
                w.hold(Write::Event(event));
                w.flush(false);
                w.publish();
            }
            Ok(Msg::Episode(episode)) => {
                w.hold(Write::Episode(episode));
                w.flush(false);
                w.publish();
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                w.stop(&rx);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                w.check_path();
                let due = w.retry_at.is_none_or(|at| Instant::now() >= at);
                if due {
                    w.write_heartbeat(false);
                }
                w.flush(false);
                w.publish();
                next_beat += HEARTBEAT_INTERVAL;
                let now = Instant::now();
                if next_beat <= now {
                    next_beat = now + HEARTBEAT_INTERVAL;
                }
            }
        }
    }
}
