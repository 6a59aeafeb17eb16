//! What `analyze`, `report` and `verify` found, ready to render: the one set of types
//! `mod.rs` fills and `render/` and `html.rs` print.

use std::time::Duration;

use super::analyze::Analyzer;
use super::history::{
    AlertHistory, EpisodeRow, EpisodeTotal, Evidence, FreezeRow, KindTotal, StateFact, Stored,
};
use super::scan::ScanStats;
use super::verify::Decision;
use crate::coverage::{Session, Watched};
use crate::time::{Window, DAY_NS};

/// What `analyze` found, ready to render.
#[derive(Debug)]
pub struct AnalyzeResult {
    /// The database as it may be shown (a path or a redacted URL).
    pub source: String,
    pub scan: ScanStats,
    pub analyzer: Analyzer,
    pub elapsed: Duration,
}

/// A report over one window, ready to render.
#[derive(Debug, Clone)]
pub struct ReportData {
    pub state_db: String,
    pub window: Window,
    pub generated_ns: i64,
    pub freezes: Vec<KindTotal>,
    pub episodes: Vec<EpisodeTotal>,
    pub longest_freezes: Vec<FreezeRow>,
    pub longest_episodes: Vec<EpisodeRow>,
    /// What the timeline draws: the longest [`super::MAX_TIMELINE_MARKS`] of each.
    pub timeline_freezes: Vec<FreezeRow>,
    pub timeline_episodes: Vec<EpisodeRow>,
    pub stored: Stored,
    pub evidence: Evidence,
    /// How much of the window the sidecar watched (its sessions inside it).
    pub watched: Watched,
    /// Every run of the sidecar (for how the runs in the window ended).
    pub sessions: Vec<Session>,
    /// The sidecar's own alerts; `None` when the state DB predates alert history.
    pub alerts: Option<AlertHistory>,
    /// Episodes folded (counted, not stored one by one) per source on the window's days.
    pub folded: Vec<crate::state::FoldedEpisodes>,
    /// What happened to the state DB itself: a fresh start over a lost one is where
    /// history starts.
    pub state_facts: Vec<StateFact>,
}

impl ReportData {
    pub fn is_empty(&self) -> bool {
        self.freezes.is_empty()
            && self.episodes.is_empty()
            && self.alerts.as_ref().is_none_or(|a| a.rules.is_empty())
    }

    pub fn freeze_count(&self) -> u64 {
        self.freezes
            .iter()
            .filter(|k| k.is_lost_time())
            .map(|k| k.count)
            .sum()
    }

    /// Lost time of every freeze that started in the window.
    pub fn frozen_ns(&self) -> i64 {
        self.freezes
            .iter()
            .filter(|k| k.is_lost_time())
            .map(|k| k.total_ns)
            .sum()
    }

    pub fn episode_count(&self) -> u64 {
        self.episodes.iter().map(|e| e.count).sum()
    }

    pub fn timeline_truncated(&self) -> bool {
        let freezes: u64 = self.freezes.iter().map(|k| k.count).sum();
        freezes > self.timeline_freezes.len() as u64
            || self.episode_count() > self.timeline_episodes.len() as u64
    }
}

/// One window's evidence.
#[derive(Debug, Clone)]
pub struct Side {
    pub window: Window,
    /// The sidecar's sessions inside the window.
    pub watched: Watched,
    /// Lost-time kinds only.
    pub by_kind: Vec<KindTotal>,
    pub freezes: u64,
    pub frozen_ns: i64,
    /// Wall-clock steps in the window: shown, not counted.
    pub clock_steps: u64,
    pub gaps: u64,
    pub gap_p99_ns: Option<i64>,
    /// Where the window's start came from, when the operator did not give it.
    pub start_from: Option<StartFrom>,
}

/// Where "everything up to T" starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first watch session: nothing can have been seen before it.
    FirstSession,
    /// No session before T: the window is empty.
    Nothing,
}

impl Side {
    /// Freezes the rate is computed from: every lost-time freeze that started in the window.
    pub fn counted(&self) -> u64 {
        self.freezes
    }

    /// Frozen seconds per watched day.
    pub fn frozen_seconds_per_day(&self) -> Option<f64> {
        let covered = self.watched.covered_ns;
        (covered > 0).then(|| self.frozen_ns as f64 / 1e9 * DAY_NS as f64 / covered as f64)
    }
}

#[derive(Debug, Clone)]
pub struct VerifyResult {
    pub state_db: String,
    pub now_ns: i64,
    pub before: Side,
    pub after: Side,
    pub sessions: Vec<Session>,
    pub evidence: Evidence,
    pub decision: Decision,
}
