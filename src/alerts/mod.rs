//! Alerts that reach a phone: rules, the alert lifecycle, the durable outbox and the
//! channels that deliver it.
//!
//! Owns deciding *when* to tell someone (pure: `rules.rs` turns facts and `now` into
//! conditions, `lifecycle.rs` turns conditions into firing / repeat / resolved
//! notifications) and *getting it there* (`outbox.rs` stores every notification before
//! any send; `engine.rs` delivers through `channels/`, one small file per service, with
//! full-jitter backoff from `backoff.rs`). Does not detect freezes or read sources: it
//! reads what the detector and the sources already published.

pub mod channels;
pub mod db_watch;
pub mod engine;
pub mod group;
pub mod lifecycle;
pub mod outbox;
pub mod rules;
pub mod silence;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::config::alerts::Severity;

/// What a notification says about its alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    /// The alert started (or a one-shot event happened).
    Firing,
    /// The alert still holds: a reminder every `repeat_interval`, or a channel's refresh
    /// (Alertmanager forgets an alert whose `endsAt` passes).
    Repeat,
    /// The condition cleared.
    Resolved,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Firing => "firing",
            NotificationKind::Repeat => "repeat",
            NotificationKind::Resolved => "resolved",
        }
    }
}

/// One notification as every channel renders it. Stored as JSON in the outbox, so it is
/// rendered for its channel at send time and no secret is ever written to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Idempotency key: the same across retries and restarts of this notification.
    pub key: String,
    /// Rule + labels: the same for an alert's firing, repeats and resolve.
    pub fingerprint: String,
    pub rule: String,
    pub kind: NotificationKind,
    pub severity: Severity,
    /// Rule-specific facts with bounded values: `source`, `queue`, `kind`, `workflow_id`…
    pub labels: BTreeMap<String, String>,
    /// One line: what happened, e.g. "vm_pause: this machine was frozen for 1h 48m 13s".
    pub title: String,
    /// The facts: what, when, how long, which evidence. Plain text, no runbook link
    /// (channels add `runbook_url` where their format has a place for it).
    pub text: String,
    /// When the condition began, unix ns.
    pub started_at_ns: i64,
    /// When it cleared (resolved notifications), unix ns.
    pub ended_at_ns: Option<i64>,
    /// When this notification was made, unix ns.
    pub created_at_ns: i64,
    pub runbook_url: String,
    /// The machine the sidecar watches (its hostname).
    pub host: String,
    /// How many events it stands for: a dead-letter notification can be several.
    #[serde(default = "one")]
    pub count: u64,
    /// Set on a row that carries a group of notifications (`group.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

fn one() -> u64 {
    1
}

/// What one stored group row carries besides its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Channel-free identity of the group: `dead_letters{source=demo-jobs}`.
    pub key: String,
    /// Notifications in it.
    pub members: u64,
    /// Events they stand for (a dead-letter notification can stand for several).
    pub count: u64,
    pub firing: u64,
    pub resolved: u64,
    /// Alerts a freeze in this group caused, folded in instead of paging alone.
    pub consequences: u64,
    /// The first [`group::KEPT`] members.
    pub items: Vec<Item>,
    /// The group's first notification as it would read alone.
    pub first: Box<Message>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub fingerprint: String,
    pub kind: NotificationKind,
    /// Its own first line, without the host prefix.
    pub title: String,
    pub count: u64,
    #[serde(default)]
    pub consequence: bool,
}
