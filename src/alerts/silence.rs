//! Silences: "this rule (for this source) does not page until then", stored in the state
//! DB (`silence` table, migration 7), written by `stallwatch silence` (`crate::silence`),
//! read by the alert engine at every evaluation and by the API.
//!
//! Owns matching a silence to an alert and the pure decision the engine makes for each
//! transition ([`decide`]): a silenced alert is still recorded and shown, its
//! notification is held back (counted `notifications_total{outcome="silenced"}`), and the
//! notification it is owed goes out when the silence ends while it still fires. Does not
//! open the state DB itself: every read takes the caller's connection.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::NotificationKind;
use crate::clock::NANOS_PER_SEC;
use crate::config::alerts::RuleKind;
use crate::time::rfc3339;

/// Longest silence: a month-long one is a rule that should be disabled in the config, and
/// a typo (`--for 2000h`) must not mute a phone for a quarter.
pub const MAX_SILENCE: Duration = Duration::from_secs(30 * 86_400);
/// Shortest silence: anything shorter ends before the engine's next look at it.
pub const MIN_SILENCE: Duration = Duration::from_secs(1);
/// Most silences active at once; the engine reads them all at every evaluation.
pub const MAX_ACTIVE: i64 = 1_000;
/// Ended silences are kept this long for `silence list` and the API, then pruned.
pub const KEEP_ENDED_NS: i64 = 7 * 86_400 * NANOS_PER_SEC;
/// Most silences one list (CLI or API) returns.
pub const MAX_LISTED: i64 = 200;
/// Longest reason stored.
pub const MAX_REASON_CHARS: usize = 200;

/// One stored silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub id: i64,
    pub rule: String,
    /// Matches alerts whose `source` label is this; `None` matches every source.
    pub source: Option<String>,
    pub starts_at_ns: i64,
    pub ends_at_ns: i64,
    pub reason: String,
    pub created_by: String,
    pub created_at_ns: i64,
    /// Set when `silence expire` ended it early (`ends_at_ns` is then that time).
    pub expired_at_ns: Option<i64>,
}

impl Silence {
    pub fn active_at(&self, now_ns: i64) -> bool {
        self.starts_at_ns <= now_ns && now_ns < self.ends_at_ns
    }

    /// Whether it silences an alert of `rule` with `labels`.
    pub fn matches(&self, rule: &str, labels: &BTreeMap<String, String>) -> bool {
        self.rule == rule
            && self
                .source
                .as_ref()
                .is_none_or(|s| labels.get("source") == Some(s))
    }
}

/// Whether a rule's alerts carry a `source` label (a silence may then name one).
pub fn has_source(rule: RuleKind) -> bool {
    !matches!(
        rule,
        RuleKind::Freeze | RuleKind::WallClockStep | RuleKind::OutboxBacklog | RuleKind::StateDb
    )
}

/// The active silence that covers an alert, the one that ends last if several do.
pub fn matching<'a>(
    silences: &'a [Silence],
    rule: &str,
    labels: &BTreeMap<String, String>,
    now_ns: i64,
) -> Option<&'a Silence> {
    silences
        .iter()
        .filter(|s| s.active_at(now_ns) && s.matches(rule, labels))
        .max_by_key(|s| (s.ends_at_ns, s.id))
}

/// A notification a silence held back from a firing alert: owed when the silence ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub silence_id: i64,
    /// `Firing` when the phone was never told the alert started; `Repeat` when it was.
    pub kind: NotificationKind,
}

/// What to do with one transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Notify, as this kind (a repeat owed a held firing goes out as the firing).
    Send(NotificationKind),
    /// Record the alert, notify nobody; this silence held it.
    Hold(i64),
}

/// The decision for a transition of kind `kind` of an alert that `silence` covers now
/// (if any) and that has `held` owed. A firing or repeat under a silence is held; a
/// resolve is held only when its firing was (the phone never heard of it), else it goes
/// out, so what the phone was told is closed (a PagerDuty incident resolves).
pub fn decide(kind: NotificationKind, silence: Option<i64>, held: Option<Held>) -> Decision {
    match (kind, silence, held) {
        (NotificationKind::Resolved, _, Some(h)) if h.kind == NotificationKind::Firing => {
            Decision::Hold(h.silence_id)
        }
        (NotificationKind::Resolved, _, _) => Decision::Send(kind),
        (_, Some(id), _) => Decision::Hold(id),
        (NotificationKind::Repeat, None, Some(h)) => Decision::Send(h.kind),
        (_, None, _) => Decision::Send(kind),
    }
}

/// What is owed after holding a `kind` of a holding (not one-shot) alert under `silence`.
pub fn hold(kind: NotificationKind, silence: i64, before: Option<Held>) -> Option<Held> {
    match kind {
        NotificationKind::Resolved => None,
        NotificationKind::Firing => Some(Held {
            silence_id: silence,
            kind: NotificationKind::Firing,
        }),
        NotificationKind::Repeat => Some(Held {
            silence_id: silence,
            kind: before.map_or(NotificationKind::Repeat, |h| h.kind),
        }),
    }
}

// ---- the state DB -----------------------------------------------------------------------

const COLUMNS: &str = "id, rule, source, starts_at_ns, ends_at_ns, reason, created_by,
                       created_at_ns, expired_at_ns FROM silence";

fn row(r: &rusqlite::Row) -> rusqlite::Result<Silence> {
    Ok(Silence {
        id: r.get(0)?,
        rule: r.get(1)?,
        source: r.get(2)?,
        starts_at_ns: r.get(3)?,
        ends_at_ns: r.get(4)?,
        reason: r.get(5)?,
        created_by: r.get(6)?,
        created_at_ns: r.get(7)?,
        expired_at_ns: r.get(8)?,
    })
}

/// The silences active at `now_ns` (at most [`MAX_ACTIVE`]; indexed by end time).
pub fn read_active(conn: &Connection, now_ns: i64) -> rusqlite::Result<Vec<Silence>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} WHERE ends_at_ns > ?1 AND starts_at_ns <= ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now_ns, MAX_ACTIVE], row)?;
    rows.collect()
}

/// Active silences and those ended within [`KEEP_ENDED_NS`], newest first, bounded.
pub fn read_recent(conn: &Connection, now_ns: i64) -> rusqlite::Result<Vec<Silence>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} WHERE ends_at_ns > ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now_ns - KEEP_ENDED_NS, MAX_LISTED], row)?;
    rows.collect()
}

/// One silence by id.
pub fn read_one(conn: &Connection, id: i64) -> rusqlite::Result<Option<Silence>> {
    conn.query_row(&format!("SELECT {COLUMNS} WHERE id = ?1"), [id], row)
        .optional()
}

/// Stores a new silence (its `id` is ignored); returns its id.
pub fn insert(conn: &Connection, s: &Silence) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO silence (rule, source, starts_at_ns, ends_at_ns, reason, created_by,
                              created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            s.rule,
            s.source,
            s.starts_at_ns,
            s.ends_at_ns,
            s.reason,
            s.created_by,
            s.created_at_ns
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Ends silence `id` at `now_ns` if it is still running; returns whether it was.
pub fn expire(conn: &Connection, id: i64, now_ns: i64) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE silence SET ends_at_ns = ?2, expired_at_ns = ?2 WHERE id = ?1 AND ends_at_ns > ?2",
        params![id, now_ns],
    )?;
    Ok(n > 0)
}

/// Deletes silences that ended more than [`KEEP_ENDED_NS`] ago.
pub fn prune(conn: &Connection, now_ns: i64) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM silence WHERE ends_at_ns < ?1",
        [now_ns - KEEP_ENDED_NS],
    )?;
    Ok(())
}

/// A silence as `silence list --format json` and `/api/v1/silences` show it.
#[derive(Debug, Clone, Serialize)]
pub struct SilenceView {
    pub id: i64,
    pub rule: String,
    pub source: Option<String>,
    pub starts_at: String,
    pub ends_at: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: String,
    /// `active` or `expired`.
    pub state: &'static str,
    /// Ended early by `silence expire`.
    pub expired_early: bool,
}

impl SilenceView {
    pub fn of(s: &Silence, now_ns: i64) -> SilenceView {
        SilenceView {
            id: s.id,
            rule: s.rule.clone(),
            source: s.source.clone(),
            starts_at: rfc3339(s.starts_at_ns),
            ends_at: rfc3339(s.ends_at_ns),
            reason: s.reason.clone(),
            created_by: s.created_by.clone(),
            created_at: rfc3339(s.created_at_ns),
            state: if s.active_at(now_ns) {
                "active"
            } else {
                "expired"
            },
            expired_early: s.expired_at_ns.is_some(),
        }
    }
}

/// What `/api/v1/silences` shows.
pub fn read_view(conn: &Connection, now_ns: i64) -> rusqlite::Result<Vec<SilenceView>> {
    Ok(read_recent(conn, now_ns)?
        .iter()
        .map(|s| SilenceView::of(s, now_ns))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use NotificationKind::*;

    fn silence(id: i64, rule: &str, source: Option<&str>, ends: i64) -> Silence {
        Silence {
            id,
            rule: rule.into(),
            source: source.map(str::to_string),
            starts_at_ns: 0,
            ends_at_ns: ends,
            reason: "deploy".into(),
            created_by: "ops".into(),
            created_at_ns: 0,
            expired_at_ns: None,
        }
    }

    fn labels(source: &str) -> BTreeMap<String, String> {
        [("source".to_string(), source.to_string())].into()
    }

    #[test]
    fn a_silence_matches_its_rule_and_source_while_it_runs() {
        let all = [
            silence(1, "stuck_jobs", Some("a"), 100),
            silence(2, "stuck_jobs", None, 50),
            silence(3, "freeze", None, 200),
        ];
        assert_eq!(
            matching(&all, "stuck_jobs", &labels("a"), 10).map(|s| s.id),
            Some(1),
            "the one that ends last"
        );
        assert_eq!(
            matching(&all, "stuck_jobs", &labels("b"), 10).map(|s| s.id),
            Some(2)
        );
        assert_eq!(
            matching(&all, "stuck_jobs", &labels("b"), 50),
            None,
            "ended"
        );
        assert_eq!(matching(&all, "queue_age", &labels("a"), 10), None);
        assert_eq!(
            matching(&all, "freeze", &BTreeMap::new(), 199).map(|s| s.id),
            Some(3)
        );
        let only_a = [silence(1, "stuck_jobs", Some("a"), 100)];
        assert_eq!(matching(&only_a, "stuck_jobs", &BTreeMap::new(), 10), None);
    }

    #[test]
    fn held_firings_are_owed_and_resolves_close_only_what_was_told() {
        // Under a silence: firing and repeat held.
        assert_eq!(decide(Firing, Some(7), None), Decision::Hold(7));
        assert_eq!(decide(Repeat, Some(7), None), Decision::Hold(7));
        // Its firing went out before the silence: the resolve closes it.
        assert_eq!(decide(Resolved, Some(7), None), Decision::Send(Resolved));
        let owed = hold(Firing, 7, None);
        assert_eq!(
            hold(Repeat, 8, owed),
            Some(Held {
                silence_id: 8,
                kind: Firing
            }),
            "a held firing stays owed through held repeats"
        );
        // The phone never heard of it: its resolve is held too, silence or not.
        assert_eq!(decide(Resolved, None, owed), Decision::Hold(7));
        // The silence ended: a repeat of an alert owed its firing goes out as the firing.
        assert_eq!(decide(Repeat, None, owed), Decision::Send(Firing));
        assert_eq!(decide(Firing, None, None), Decision::Send(Firing));
        assert_eq!(hold(Resolved, 7, owed), None);
    }
}
