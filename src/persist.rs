//! The state writer thread: the only writer of the state DB after start-up.
//!
//! It writes the heartbeat once a second and every freeze event it is sent, so the
//! tick thread never waits on disk (a slow disk would otherwise look like a stall).
//! Its queue is bounded; an event that does not fit is counted as dropped. On stop it
//! writes a final, clean heartbeat.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::{read_clocks, real_ns};
use crate::freeze::downtime::Heartbeat;
use crate::freeze::FreezeEvent;
use crate::metrics::Metrics;
use crate::signals::episode::Episode;
use crate::state::StateDb;
use crate::status::SharedStatus;

/// How often the heartbeat is written: the error of a restart's measured downtime.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Events waiting to be written; freezes are rare, so this only fills if the disk hangs.
pub const PERSIST_QUEUE: usize = 1024;

enum Msg {
    Event(FreezeEvent),
    Episode(Episode),
    Stop,
}

/// Where finished freeze events go: counted in the metrics, then queued for the state DB.
#[derive(Clone)]
pub struct EventSink {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    pub fn record(&self, event: FreezeEvent) {
        self.metrics
            .record_freeze(event.kind, event.started_at_ns, event.duration_ns);
        tracing::warn!(
            kind = event.kind.as_str(),
            duration_seconds = event.duration_ns as f64 / 1e9,
            channels = ?event.channels.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(),
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
    /// Queues an attributed episode for the state DB (metrics are the caller's).
    pub fn record_episode(&self, episode: Episode) {
        if self.tx.try_send(Msg::Episode(episode)).is_err() {
            self.metrics
                .dropped_total
                .with_label_values(&["state_episodes"])
                .inc();
        }
    }
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
        let sink = EventSink {
            tx: tx.clone(),
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("stallwatch-state".into())
            .spawn(move || write_loop(db, rx, boot_id, metrics, status))
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

fn write_loop(
    db: StateDb,
    rx: Receiver<Msg>,
    boot_id: String,
    metrics: Arc<Metrics>,
    status: SharedStatus,
) {
    let heartbeat = |clean: bool| Heartbeat {
        clocks: read_clocks(),
        boot_id: boot_id.clone(),
        clean,
    };
    let report = |result: Result<(), crate::state::StateError>| match result {
        Ok(()) => {
            let mut s = status.lock();
            if s.state_db_error.take().is_some() {
                tracing::info!(path = %db.path().display(), "state database writable again");
            }
        }
        Err(e) => {
            metrics.state_db_errors_total.inc();
            let mut s = status.lock();
            if s.state_db_error.is_none() {
                tracing::error!(error = %e, "state database write failed; freeze detection continues");
            }
            s.state_db_error = Some(e.to_string());
        }
    };
    let mut next_beat = std::time::Instant::now();
    loop {
        let wait = next_beat.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Event(event)) => {
                let result = db.insert_event(&event, real_ns()).map(|_| ());
                if result.is_ok() {
                    status.lock().events_recorded += 1;
                }
                report(result);
            }
            Ok(Msg::Episode(episode)) => report(db.insert_episode(&episode, real_ns()).map(|_| ())),
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Event(event) => report(db.insert_event(&event, real_ns()).map(|_| ())),
                        Msg::Episode(episode) => {
                            report(db.insert_episode(&episode, real_ns()).map(|_| ()))
                        }
                        Msg::Stop => {}
                    }
                }
                report(db.write_heartbeat(&heartbeat(true)));
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                report(db.write_heartbeat(&heartbeat(false)));
                next_beat += HEARTBEAT_INTERVAL;
                let now = std::time::Instant::now();
                if next_beat <= now {
                    next_beat = now + HEARTBEAT_INTERVAL;
                }
            }
        }
    }
}
