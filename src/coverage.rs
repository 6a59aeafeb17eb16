//! Watch sessions and coverage, pure: which time the sidecar watched.
//!
//! Freezes are only seen while the sidecar runs. The state DB (schema 5 on) keeps one
//! `watch_session` row per run: when it started, its last heartbeat (updated in place by
//! the heartbeat's own write, see `state.rs`) and how it ended. Coverage of a window is
//! the exact union of the sessions inside it ([`watched`]), to within one heartbeat
//! interval at each session's end.
//!
//! A state DB written before sessions were recorded gets what can be derived from it
//! ([`estimate`]), marked `estimated`: one run from the earliest time a sidecar is known to
//! have been running (the file's creation, its marker, its first write) to its last
//! heartbeat, cut where a recorded `restart` or `reboot` says it was down. A planned stop
//! in that stretch wrote nothing, so an estimate can only over-state what was watched;
//! `report` and `verify` say how much of their coverage is estimated.
//!
//! This module does not own reading or writing sessions (`state.rs`, `history.rs`).

use serde::Serialize;

use crate::time::Window;

/// `watch_session.ended` of a run still going (or killed, until the next start says so).
pub const ENDED_RUNNING: &str = "running";
/// `watch_session.ended` of a run that stopped cleanly (its last heartbeat was clean).
pub const ENDED_STOPPED: &str = "stopped";
/// `watch_session.ended` of a run killed or crashed on the same boot.
pub const ENDED_RESTART: &str = "restart";

/// One run of the sidecar, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub started_ns: i64,
    /// Its last heartbeat.
    pub last_seen_ns: i64,
    /// `running`, `stopped`, `restart` (killed or crashed, same boot) or `reboot`.
    pub ended: String,
    /// Derived from a state DB that predates session records.
    pub estimated: bool,
}

impl Session {
    pub fn span(&self) -> Window {
        Window {
            start_ns: self.started_ns,
            end_ns: self.last_seen_ns.max(self.started_ns),
        }
    }
}

/// How much of a window was watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Watched {
    /// The union of the sessions inside the window.
    pub covered_ns: i64,
    /// Of that, the part from estimated sessions.
    pub estimated_ns: i64,
    /// Sessions that overlap the window.
    pub sessions: u64,
}

/// Union length of `spans` (any order, overlaps counted once).
fn union_ns(mut spans: Vec<Window>) -> i64 {
    spans.retain(|w| w.len_ns() > 0);
    spans.sort_by_key(|w| w.start_ns);
    let mut total = 0;
    let mut current: Option<Window> = None;
    for w in spans {
        match &mut current {
            Some(c) if w.start_ns <= c.end_ns => c.end_ns = c.end_ns.max(w.end_ns),
            _ => {
                if let Some(c) = current {
                    total += c.len_ns();
                }
                current = Some(w);
            }
        }
    }
    total + current.map_or(0, |c| c.len_ns())
}

/// The part of `w` (never past `now_ns`) that `sessions` watched.
pub fn watched(sessions: &[Session], w: Window, now_ns: i64) -> Watched {
    let clip = |s: &Session| s.span().clip(w.start_ns, w.end_ns.min(now_ns));
    let inside: Vec<&Session> = sessions.iter().filter(|s| clip(s).len_ns() > 0).collect();
    let covered_ns = union_ns(inside.iter().map(|s| clip(s)).collect());
    let exact_ns = union_ns(
        inside
            .iter()
            .filter(|s| !s.estimated)
            .map(|s| clip(s))
            .collect(),
    );
    Watched {
        covered_ns,
        estimated_ns: covered_ns - exact_ns,
        sessions: inside.len() as u64,
    }
}

/// A recorded downtime (a `restart` or `reboot` freeze): the sidecar was not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downtime {
    pub kind: String,
    pub started_ns: i64,
    pub duration_ns: i64,
}

/// What an old state DB says about its runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OldEvidence {
    /// Times a sidecar is known to have been running: the file's creation (when no write
    /// is older, i.e. it was not copied), its marker's `created_unix_ns`, its first write.
    pub running_at_ns: Vec<i64>,
    /// The heartbeat row: wall time and whether it was clean.
    pub heartbeat: Option<(i64, bool)>,
    pub downtimes: Vec<Downtime>,
}

/// Sessions derived from a state DB without session records (see the module doc). No
/// heartbeat: no sidecar ever ran on it, so nothing was watched.
pub fn estimate(e: &OldEvidence) -> Vec<Session> {
    let Some((beat_ns, clean)) = e.heartbeat else {
        return Vec::new();
    };
    let first = e.running_at_ns.iter().copied().min().unwrap_or(beat_ns);
    let mut cursor = first.min(beat_ns);
    let mut downtimes: Vec<&Downtime> = e.downtimes.iter().collect();
    downtimes.sort_by_key(|d| d.started_ns);
    let mut out = Vec::new();
    for d in downtimes {
        let end = d.started_ns.saturating_add(d.duration_ns.max(0));
        if d.started_ns < cursor || end > beat_ns {
            continue;
        }
        out.push(Session {
            started_ns: cursor,
            last_seen_ns: d.started_ns,
            ended: d.kind.clone(),
            estimated: true,
        });
        cursor = end;
    }
    out.push(Session {
        started_ns: cursor,
        last_seen_ns: beat_ns,
        ended: if clean { ENDED_STOPPED } else { ENDED_RUNNING }.into(),
        estimated: true,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start: i64, end: i64, estimated: bool) -> Session {
        Session {
            started_ns: start,
            last_seen_ns: end,
            ended: ENDED_STOPPED.into(),
            estimated,
        }
    }

    fn w(start_ns: i64, end_ns: i64) -> Window {
        Window { start_ns, end_ns }
    }

    #[test]
    fn coverage_is_the_union_of_sessions_clipped_to_the_window_and_now() {
        let sessions = [s(10, 20, false), s(30, 50, false), s(45, 60, true)];
        assert_eq!(
            watched(&sessions, w(0, 100), 1_000),
            Watched {
                covered_ns: 40,
                estimated_ns: 10,
                sessions: 3
            }
        );
        // Clipped by the window and by now.
        assert_eq!(watched(&sessions, w(15, 100), 40).covered_ns, 5 + 10);
        assert_eq!(watched(&sessions, w(20, 30), 1_000), Watched::default());
        assert_eq!(watched(&[], w(0, 100), 1_000), Watched::default());
    }

    #[test]
    fn an_old_db_is_one_estimated_run_cut_at_its_recorded_downtimes() {
        let e = OldEvidence {
            running_at_ns: vec![100, 50, 70],
            heartbeat: Some((1_000, true)),
            downtimes: vec![
                Downtime {
                    kind: "reboot".into(),
                    started_ns: 600,
                    duration_ns: 100,
                },
                Downtime {
                    kind: "restart".into(),
                    started_ns: 200,
                    duration_ns: 10,
                },
                // Before the first sign of life: a copied DB's history, ignored.
                Downtime {
                    kind: "restart".into(),
                    started_ns: 10,
                    duration_ns: 5,
                },
            ],
        };
        let got = estimate(&e);
        let spans: Vec<(i64, i64, &str)> = got
            .iter()
            .map(|s| (s.started_ns, s.last_seen_ns, s.ended.as_str()))
            .collect();
        assert_eq!(
            spans,
            [
                (50, 200, "restart"),
                (210, 600, "reboot"),
                (700, 1_000, "stopped")
            ]
        );
        assert!(got.iter().all(|s| s.estimated));
        assert_eq!(
            estimate(&OldEvidence {
                heartbeat: None,
                ..e.clone()
            }),
            []
        );
        // Unclean last heartbeat, nothing else known: one instant, still "running".
        let only = estimate(&OldEvidence {
            heartbeat: Some((5, false)),
            ..OldEvidence::default()
        });
        assert_eq!(
            (
                only[0].started_ns,
                only[0].last_seen_ns,
                only[0].ended.as_str()
            ),
            (5, 5, ENDED_RUNNING)
        );
    }
}
