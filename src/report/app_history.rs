//! The app's own history as evidence (`verify --source`, `report --source`), the pure
//! part: gaps and wait overruns in, counts per window by cause and the covered length out.
//! The rows are read by [`super::app_scan`]; this module reads nothing.
//!
//! **What counts.** Every step gap and wait overrun of at least `--gap-min` that *started*
//! in the window (as `analyze` finds them: intended waits are not gaps). Each gets a cause:
//!
//! - `freeze`: a freeze recorded in the state DB covers at least half of it
//!   ([`crate::signals::attribution::attribute`], the sidecar's own rule);
//! - `stall`: the sidecar watched at least half of it and no freeze covers it (the machine
//!   ran; a `process_stall` that was CPU starvation counts here too);
//! - `unexplained`: nobody can tell — no state DB was given, or the sidecar was not
//!   running then. A gap the app did not explain may be a freeze or a stall of the app.
//!
//! The freeze test counts `freeze` and `unexplained` gaps ([`AppWindow::counted`]): a gap
//! the sidecar watched through and saw no freeze in was the app, not the machine.
//!
//! **Coverage** ([`AppWindow::covered_ns`]): the part of the window between the history's
//! first record and its last (a DBOS step's start or end, a queue row's time, a JSONL
//! line's time). A gap can only show where the app was writing history; the history's
//! span is what it covers. A stretch inside that span when the app wrote nothing at all
//! still counts as covered, so the coverage is an upper bound and a rate from it a lower
//! bound.

use serde::Serialize;

use super::analyze::Longest;
use crate::coverage::{watched, Session};
use crate::signals::attribution::{attribute, Cause, FreezeSpan, OVERLAP_SLACK_NS};
use crate::signals::steps::{Gap, GapKind};
use crate::time::Window;

/// Longest gaps listed per window.
pub const LISTED_PER_WINDOW: usize = 5;

/// What a gap in the app's history was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapCause {
    Freeze,
    Stall,
    Unexplained,
}

/// What the state DB says about the time of the app's history: its freezes and the
/// sidecar's watch sessions.
#[derive(Debug, Clone, Default)]
pub struct Explainer {
    pub freezes: Vec<FreezeSpan>,
    pub sessions: Vec<Session>,
    /// Report time: a session still running is watched up to here.
    pub now_ns: i64,
    /// The longest freeze: how early one that covers a gap can start.
    longest_ns: i64,
}

impl Explainer {
    /// Sorts the freezes by start, so [`Explainer::cause`] looks only at those near a gap
    /// (a million gaps against a hundred thousand freezes must not be 10¹¹ comparisons).
    pub fn new(mut freezes: Vec<FreezeSpan>, sessions: Vec<Session>, now_ns: i64) -> Explainer {
        freezes.sort_by_key(|f| f.start_ns);
        Explainer {
            longest_ns: freezes
                .iter()
                .map(|f| f.duration_ns.max(0))
                .max()
                .unwrap_or(0),
            freezes,
            sessions,
            now_ns,
        }
    }

    /// The cause of the gap `[start_ns, end_ns]`; see the module doc.
    pub fn cause(&self, start_ns: i64, end_ns: i64) -> GapCause {
        // Only a freeze that starts before the gap ends (plus slack) and ends after it
        // starts can cover it; the longest freeze bounds how early that one can start.
        let from = start_ns
            .saturating_sub(self.longest_ns)
            .saturating_sub(OVERLAP_SLACK_NS);
        let lo = self.freezes.partition_point(|f| f.start_ns < from);
        let hi = self
            .freezes
            .partition_point(|f| f.start_ns <= end_ns.saturating_add(OVERLAP_SLACK_NS));
        match attribute(start_ns, end_ns, &self.freezes[lo..hi.max(lo)]) {
            Cause::Freeze { .. } => GapCause::Freeze,
            Cause::Starvation { .. } => GapCause::Stall,
            Cause::Stall => {
                let gap = Window { start_ns, end_ns };
                let seen = watched(&self.sessions, gap, self.now_ns).covered_ns;
                if gap.len_ns() > 0 && 2 * seen >= gap.len_ns() {
                    GapCause::Stall
                } else {
                    GapCause::Unexplained
                }
            }
        }
    }
}

/// One window of the app's history.
#[derive(Debug, Clone)]
pub struct AppWindow {
    pub window: Window,
    pub step_gaps: u64,
    pub wait_overruns: u64,
    pub freeze: u64,
    pub stall: u64,
    pub unexplained: u64,
    pub longest: Longest,
    /// The history's span (first and last record), for [`AppWindow::covered_ns`].
    span: Option<Window>,
}

impl AppWindow {
    fn new(window: Window) -> AppWindow {
        AppWindow {
            window,
            step_gaps: 0,
            wait_overruns: 0,
            freeze: 0,
            stall: 0,
            unexplained: 0,
            longest: Longest::new(LISTED_PER_WINDOW),
            span: None,
        }
    }

    pub fn gaps(&self) -> u64 {
        self.step_gaps + self.wait_overruns
    }

    /// Gaps the freeze test counts: freezes and gaps nobody explained.
    pub fn counted(&self) -> u64 {
        self.freeze + self.unexplained
    }

    /// The part of the window the app's history spans (see the module doc), never past
    /// `now_ns`.
    pub fn covered_ns(&self, now_ns: i64) -> i64 {
        self.span.map_or(0, |s| {
            s.clip(self.window.start_ns, self.window.end_ns.min(now_ns))
                .len_ns()
        })
    }
}

/// Gaps of at least `gap_min_ns` in the app's history, per window.
#[derive(Debug, Clone)]
pub struct AppHistory {
    pub gap_min_ns: i64,
    pub windows: Vec<AppWindow>,
    /// Earliest and latest record read.
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    /// Records read, and records skipped (no readable or believable time).
    pub records: u64,
    pub skipped: u64,
    /// Whether a state DB explained the gaps.
    pub explained: bool,
}

impl AppHistory {
    pub fn new(gap_min_ns: i64, windows: &[Window], explained: bool) -> AppHistory {
        AppHistory {
            gap_min_ns,
            windows: windows.iter().copied().map(AppWindow::new).collect(),
            first_ns: None,
            last_ns: None,
            records: 0,
            skipped: 0,
            explained,
        }
    }

    /// A record of the history at `at_ns` (widens the span).
    pub fn record(&mut self, at_ns: i64) {
        self.records += 1;
        self.first_ns = Some(self.first_ns.map_or(at_ns, |f| f.min(at_ns)));
        self.last_ns = Some(self.last_ns.map_or(at_ns, |l| l.max(at_ns)));
        let span = Window {
            start_ns: self.first_ns.unwrap_or(at_ns),
            end_ns: self.last_ns.unwrap_or(at_ns),
        };
        for w in &mut self.windows {
            w.span = Some(span);
        }
    }

    /// Sets the span from outside (a reader that tracked it itself, as `analyze` does).
    pub fn set_span(&mut self, first_ns: Option<i64>, last_ns: Option<i64>) {
        self.first_ns = first_ns;
        self.last_ns = last_ns;
        let span = first_ns.zip(last_ns).map(|(f, l)| Window {
            start_ns: f,
            end_ns: l.max(f),
        });
        for w in &mut self.windows {
            w.span = span;
        }
    }

    /// Counts `gap` in the window it started in, if it is at least `gap_min`.
    pub fn gap(&mut self, gap: &Gap, explainer: Option<&Explainer>) {
        if gap.duration_ns() < self.gap_min_ns {
            return;
        }
        let Some(w) = self
            .windows
            .iter_mut()
            .find(|w| w.window.contains(gap.start_ns))
        else {
            return;
        };
        match gap.kind {
            GapKind::Step => w.step_gaps += 1,
            GapKind::WaitOverrun => w.wait_overruns += 1,
        }
        match explainer.map_or(GapCause::Unexplained, |e| e.cause(gap.start_ns, gap.end_ns)) {
            GapCause::Freeze => w.freeze += 1,
            GapCause::Stall => w.stall += 1,
            GapCause::Unexplained => w.unexplained += 1,
        }
        w.longest.offer(gap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::freeze::FreezeKind;

    const S: i64 = 1_000_000_000;

    fn gap(start_s: i64, secs: i64) -> Gap {
        Gap {
            kind: GapKind::Step,
            workflow_id: "w".into(),
            workflow_name: String::new(),
            from_step: "a".into(),
            to_step: "b".into(),
            start_ns: start_s * S,
            end_ns: (start_s + secs) * S,
        }
    }

    fn windows() -> [Window; 2] {
        [
            Window {
                start_ns: 0,
                end_ns: 1_000 * S,
            },
            Window {
                start_ns: 1_000 * S,
                end_ns: 2_000 * S,
            },
        ]
    }

    #[test]
    fn gaps_count_in_the_window_they_start_in_at_or_above_gap_min() {
        let mut h = AppHistory::new(60 * S, &windows(), false);
        h.gap(&gap(10, 59), None);
        h.gap(&gap(10, 60), None);
        h.gap(&gap(990, 120), None);
        h.gap(&gap(1_500, 600), None);
        h.gap(&gap(5_000, 600), None);
        let counts: Vec<(u64, u64)> = h.windows.iter().map(|w| (w.gaps(), w.counted())).collect();
        assert_eq!(counts, vec![(2, 2), (1, 1)]);
        assert_eq!(h.windows[0].longest.items()[0].duration_ns(), 120 * S);
    }

    #[test]
    fn coverage_is_the_historys_span_inside_each_window() {
        let mut h = AppHistory::new(60 * S, &windows(), false);
        assert_eq!(h.windows[0].covered_ns(i64::MAX), 0);
        h.record(400 * S);
        h.record(1_100 * S);
        h.record(200 * S);
        assert_eq!(h.windows[0].covered_ns(i64::MAX), 800 * S);
        assert_eq!(h.windows[1].covered_ns(i64::MAX), 100 * S);
        assert_eq!(h.windows[1].covered_ns(1_050 * S), 50 * S);
        assert_eq!(
            (h.records, h.first_ns, h.last_ns),
            (3, Some(200 * S), Some(1_100 * S))
        );
    }

    #[test]
    fn with_a_state_db_gaps_are_freezes_stalls_or_unexplained() {
        let freeze = |id, start_s, secs| FreezeSpan {
            id,
            kind: FreezeKind::VmPause,
            start_ns: start_s * S,
            duration_ns: secs * S,
            starved: false,
        };
        let e = Explainer::new(
            // Far ones first: the explainer sorts them and looks only near the gap.
            vec![
                freeze(3, 5_000, 10),
                freeze(1, 100, 300),
                freeze(2, -9_000, 10),
            ],
            vec![Session {
                started_ns: 0,
                last_seen_ns: 1_000 * S,
                ended: "stopped".into(),
                estimated: false,
            }],
            10_000 * S,
        );
        assert_eq!(e.cause(90 * S, 410 * S), GapCause::Freeze);
        assert_eq!(e.cause(500 * S, 700 * S), GapCause::Stall);
        // Half watched is watched; less is nobody's to explain.
        assert_eq!(e.cause(900 * S, 1_100 * S), GapCause::Stall);
        assert_eq!(e.cause(950 * S, 1_150 * S), GapCause::Unexplained);
        let mut h = AppHistory::new(60 * S, &windows(), true);
        for g in [gap(90, 320), gap(500, 200), gap(950, 200)] {
            h.gap(&g, Some(&e));
        }
        let w = &h.windows[0];
        assert_eq!(
            (w.freeze, w.stall, w.unexplained, w.counted()),
            (1, 1, 1, 2)
        );
    }
}
