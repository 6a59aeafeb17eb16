//! The durable outbox: alerts and their notifications in the state DB.
//!
//! Every notification is written here, in the same transaction as its alert's new state,
//! before any attempt to send it; a kill -9 at any point leaves either nothing (the alert
//! is evaluated again) or a pending row that goes out after the restart with the same
//! idempotency key. The outbox is bounded: past `max_pending`, the oldest rows of the
//! lowest severity are marked dropped (counted, visible), never silently deleted.
//! Owned by the alert engine's thread; the HTTP API reads through [`read_view`].

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::lifecycle::{Alert, Transition};
use super::rules::OutboxStats;
use super::{Message, NotificationKind, Severity};
use crate::clock::NANOS_PER_SEC;
use crate::config::alerts::RuleKind;
use crate::state::BUSY_TIMEOUT;
use crate::time::rfc3339_millis;

/// Delivered, refused and dropped notifications are kept this long for the API and `report`.
pub const KEEP_DONE_NS: i64 = 7 * 86_400 * NANOS_PER_SEC;
/// Most rows `/api/v1/alerts` lists per section.
pub const MAX_LISTED: i64 = 100;
/// Longest error text stored per notification.
const MAX_ERROR_CHARS: usize = 500;

/// A notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub channel: String,
    pub message: Message,
    /// The group it travels in; `None`: a row of its own, due at once.
    pub group: Option<GroupTarget>,
}

/// Where a grouped notification goes.
#[derive(Debug, Clone)]
pub struct GroupTarget {
    pub key: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub wait_ns: i64,
    pub interval_ns: i64,
    /// A freeze's consequence: joins the freeze's open row if there is one (said as
    /// "meanwhile"), and is never a row of its own.
    pub consequence: bool,
}

impl GroupTarget {
    /// A freeze's consequence joining the freeze's group `key`.
    pub fn consequence(key: &str) -> GroupTarget {
        GroupTarget {
            key: key.to_string(),
            labels: Default::default(),
            wait_ns: 0,
            interval_ns: 0,
            consequence: true,
        }
    }
}

/// What recording did besides storing: rows dropped to stay bounded, notifications that
/// joined a group row already waiting, per channel.
#[derive(Debug, Default)]
pub struct Recorded {
    pub dropped: Vec<(String, u64)>,
    pub grouped: Vec<(String, u64)>,
}

/// Adds `n` to the count of `channel` in a per-channel tally.
fn add(counts: &mut Vec<(String, u64)>, channel: &str, n: u64) {
    match counts.iter_mut().find(|(c, _)| c == channel) {
        Some((_, total)) => *total += n,
        None => counts.push((channel.to_string(), n)),
    }
}

/// Which silence held back an alert's notification, and what the alert is owed.
#[derive(Debug, Clone)]
pub struct HeldUpdate {
    pub fingerprint: String,
    pub silence_id: Option<i64>,
    pub owed: Option<NotificationKind>,
}

/// The next notification to send on a channel, and how many unreadable rows were given up
/// on the way to it.
#[derive(Debug)]
pub struct NextDue {
    pub due: Option<Due>,
    pub unreadable: u64,
}

/// A pending notification, due now.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    pub attempts: u32,
    pub message: Message,
}

/// The idempotency key of a notification: derived once from what it is, then stored.
pub fn notification_key(
    fingerprint: &str,
    kind: NotificationKind,
    channel: &str,
    at_ns: i64,
) -> String {
    let mut h = Sha256::new();
    for part in [fingerprint, kind.as_str(), channel, &at_ns.to_string()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("sw_{hex}")
}

/// What a restart takes back: the alerts that were firing, and the one-shot fingerprints
/// (with when they fired) that must not fire again.
pub type Restored = (Vec<Alert>, Vec<(String, i64)>);

pub struct Outbox {
    conn: Connection,
    max_pending: usize,
    path: std::path::PathBuf,
    /// The file `conn` was opened on, to notice a state DB put back at the path.
    opened: Option<crate::state::FileId>,
}

fn severity_rank(s: Severity) -> i64 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

impl Outbox {
    /// Opens the (already migrated) state DB for the alert engine.
    pub fn open(path: &Path, max_pending: usize) -> rusqlite::Result<Outbox> {
        let conn = Self::connect(path)?;
        Ok(Outbox {
            conn,
            max_pending,
            path: path.to_path_buf(),
            opened: crate::state::FileId::of(path),
        })
    }

    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -crate::state::CACHE_KIB)?;
        Ok(conn)
    }

    /// Follows a state DB the writer put back at the path after it was deleted (see
    /// `persist.rs`): a different file there now → reopen, so alerts and notifications
    /// go into the DB that is kept, not the deleted one. Returns whether it moved.
    ///
    /// The old connection is never closed: SQLite deletes a WAL database's `-wal` and
    /// `-shm` *by name* when the last connection to it closes, and those names now belong
    /// to the new DB. The writer caps recreations, so at most a few are held to exit.
    pub fn follow_path(&mut self) -> rusqlite::Result<bool> {
        let now = crate::state::FileId::of(&self.path);
        if now.is_none() || now == self.opened {
            return Ok(false);
        }
        let conn = Self::connect(&self.path)?;
        std::mem::forget(std::mem::replace(&mut self.conn, conn));
        self.opened = now;
        Ok(true)
    }

    /// Alerts that were firing, and one-shot fingerprints fired since `since_ns`.
    pub fn restore(&self, since_ns: i64) -> rusqlite::Result<Restored> {
        let mut firing = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT fingerprint, rule, severity, labels, title, text, started_at_ns, last_notified_ns
             FROM alert WHERE state = 'firing'",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        for row in rows {
            let (fingerprint, rule, severity, labels, title, text, started, notified) = row?;
            // Rows of a rule this build does not know are left alone.
            let Some(rule) = RuleKind::parse(&rule) else {
                continue;
            };
            firing.push(Alert {
                fingerprint,
                rule,
                severity: Severity::parse(&severity).unwrap_or(Severity::Warning),
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                title,
                text,
                started_at_ns: started,
                ended_at_ns: None,
                last_notified_ns: notified,
                count: 1,
            });
        }
        let mut stmt = self
            .conn
            .prepare("SELECT fingerprint, started_at_ns FROM alert WHERE state = 'fired' AND updated_at_ns >= ?1")?;
        let one_shots = stmt
            .query_map([since_ns], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((firing, one_shots))
    }

    /// Stores the transitions of one evaluation and their notifications, atomically.
    /// Returns how many pending notifications were dropped per channel to stay bounded.
    pub fn record(
        &mut self,
        transitions: &[(Transition, Vec<NewNotification>)],
        now_ns: i64,
    ) -> rusqlite::Result<Recorded> {
        self.record_with(transitions, &[], now_ns)
    }

    /// [`Outbox::record`], and in the same transaction which silence held back each
    /// alert's notification and what it is owed (`None`: nothing held).
    pub fn record_with(
        &mut self,
        transitions: &[(Transition, Vec<NewNotification>)],
        held: &[HeldUpdate],
        now_ns: i64,
    ) -> rusqlite::Result<Recorded> {
        let mut recorded = Recorded::default();
        let tx = self.conn.transaction()?;
        for (t, notes) in transitions {
            let a = &t.alert;
            let state = match t.kind {
                NotificationKind::Resolved => "resolved",
                _ if a.rule.one_shot() => "fired",
                _ => "firing",
            };
            tx.execute(
                "INSERT INTO alert (fingerprint, rule, severity, labels, title, text, state,
                                    started_at_ns, ended_at_ns, last_notified_ns, updated_at_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (fingerprint) DO UPDATE SET
                    severity = excluded.severity, title = excluded.title, text = excluded.text,
                    state = excluded.state, started_at_ns = excluded.started_at_ns,
                    ended_at_ns = excluded.ended_at_ns,
                    last_notified_ns = excluded.last_notified_ns,
                    updated_at_ns = excluded.updated_at_ns",
                params![
                    a.fingerprint,
                    a.rule.as_str(),
                    a.severity.as_str(),
                    serde_json::to_string(&a.labels).expect("labels serialise"),
                    a.title,
                    a.text,
                    state,
                    a.started_at_ns,
                    a.ended_at_ns,
                    a.last_notified_ns,
                    now_ns,
                ],
            )?;
            for n in notes {
                if let Some(g) = &n.group {
                    if Self::join_group(&tx, n, g)? {
                        if !g.consequence {
                            add(&mut recorded.grouped, &n.channel, 1);
                        }
                        continue;
                    }
                    if !g.consequence {
                        Self::start_group(&tx, n, g, now_ns)?;
                    }
                    continue;
                }
                tx.execute(
                    "INSERT OR IGNORE INTO notification
                        (key, fingerprint, channel, kind, severity, message, state,
                         next_attempt_at_ns, created_at_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?7)",
                    params![
                        n.message.key,
                        a.fingerprint,
                        n.channel,
                        n.message.kind.as_str(),
                        severity_rank(n.message.severity),
                        serde_json::to_string(&n.message).expect("messages serialise"),
                        now_ns,
                    ],
                )?;
            }
        }
        for h in held {
            tx.execute(
                "UPDATE alert SET silence_id = ?2, held = ?3 WHERE fingerprint = ?1",
                params![h.fingerprint, h.silence_id, h.owed.map(|k| k.as_str())],
            )?;
        }
        recorded.dropped = Self::enforce_bound(&tx, self.max_pending, now_ns)?;
        tx.commit()?;
        Ok(recorded)
    }

    /// Adds `n` to its group's open row (pending, not yet sealed by a send); returns
    /// whether there was one.
    fn join_group(
        tx: &rusqlite::Transaction,
        n: &NewNotification,
        g: &GroupTarget,
    ) -> rusqlite::Result<bool> {
        let open: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, message FROM notification
                 WHERE state = 'pending' AND channel = ?1 AND fingerprint = ?2 AND sealed = 0
                 ORDER BY id DESC LIMIT 1",
                params![n.channel, g.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((id, text)) = open else {
            return Ok(false);
        };
        let Ok(mut row) = serde_json::from_str::<Message>(&text) else {
            return Ok(false); // unreadable: next_due gives it up; this one starts anew
        };
        super::group::join(&mut row, &n.message, g.consequence);
        tx.execute(
            "UPDATE notification SET message = ?2, kind = ?3, severity = ?4 WHERE id = ?1",
            params![
                id,
                serde_json::to_string(&row).expect("messages serialise"),
                row.kind.as_str(),
                severity_rank(row.severity),
            ],
        )?;
        Ok(true)
    }

    /// A new row for `n`'s group, due after `group_wait`, and no sooner than
    /// `group_interval` after the group's previous row was due.
    fn start_group(
        tx: &rusqlite::Transaction,
        n: &NewNotification,
        g: &GroupTarget,
        now_ns: i64,
    ) -> rusqlite::Result<()> {
        let last: Option<i64> = tx.query_row(
            "SELECT max(release_at_ns) FROM notification
             WHERE channel = ?1 AND fingerprint = ?2 AND release_at_ns IS NOT NULL",
            params![n.channel, g.key],
            |r| r.get(0),
        )?;
        let release = (now_ns + g.wait_ns).max(last.map_or(i64::MIN, |l| l + g.interval_ns));
        let row = super::group::start(n.message.clone(), g.key.clone());
        tx.execute(
            "INSERT OR IGNORE INTO notification
                (key, fingerprint, channel, kind, severity, message, state,
                 next_attempt_at_ns, created_at_ns, release_at_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?7)",
            params![
                row.key,
                g.key,
                n.channel,
                row.kind.as_str(),
                severity_rank(row.severity),
                serde_json::to_string(&row).expect("messages serialise"),
                release,
                now_ns,
            ],
        )?;
        Ok(())
    }

    /// Takes back the unsent notifications of alert `fingerprint`: its own pending rows and
    /// the group rows it is the only member of, never a sealed one (a send may be under
    /// way). They are kept as `explained`; returns (channel, the alert's own message) for
    /// each.
    pub fn retract(
        &mut self,
        fingerprint: &str,
        now_ns: i64,
    ) -> rusqlite::Result<Vec<(String, Message)>> {
        let tx = self.conn.transaction()?;
        let rows: Vec<(i64, String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, channel, message FROM notification
                 WHERE state = 'pending' AND sealed = 0 AND attempts = 0",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut taken = Vec::new();
        for (id, channel, text) in rows {
            let Ok(m) = serde_json::from_str::<Message>(&text) else {
                continue;
            };
            let own = match &m.group {
                None if m.fingerprint == fingerprint => Some(m.clone()),
                Some(g)
                    if g.members == 1
                        && g.consequences == 0
                        && g.first.fingerprint == fingerprint =>
                {
                    Some((*g.first).clone())
                }
                _ => None,
            };
            let Some(own) = own else { continue };
            tx.execute(
                "UPDATE notification SET state = 'explained', sealed = 1, done_at_ns = ?2,
                    last_error = 'caused by a freeze announced just after it; folded into it'
                 WHERE id = ?1",
                params![id, now_ns],
            )?;
            taken.push((channel, own));
        }
        tx.commit()?;
        Ok(taken)
    }

    /// Seals a group row for its first send: from now on it carries exactly what this
    /// send carries, under this idempotency key; new members start the next row.
    pub fn seal(&self, id: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE notification SET sealed = 1 WHERE id = ?1 AND sealed = 0",
            [id],
        )?;
        Ok(())
    }

    /// Sends of `channel` delivered since `since_ns`, oldest first (their delivery times).
    pub fn sent_since(&self, channel: &str, since_ns: i64) -> rusqlite::Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT done_at_ns FROM notification
             WHERE state = 'sent' AND channel = ?1 AND done_at_ns >= ?2 ORDER BY done_at_ns",
        )?;
        let rows = stmt.query_map(params![channel, since_ns], |r| r.get(0))?;
        rows.collect()
    }

    /// Folds every notification of `channel` due at `now_ns` into one digest row, due at
    /// once, in one transaction: the folded rows are kept (state `folded`, naming the
    /// digest), nothing is lost. Returns how many were folded (0: fewer than two due).
    pub fn fold_digest(&mut self, channel: &str, limit: u32, now_ns: i64) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let rows: Vec<(i64, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, message FROM notification
                 WHERE state = 'pending' AND channel = ?1 AND next_attempt_at_ns <= ?2
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![channel, now_ns], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let messages: Vec<Message> = rows
            .iter()
            .filter_map(|(_, text)| serde_json::from_str(text).ok())
            .collect();
        if messages.len() < 2 {
            return Ok(0);
        }
        let key = notification_key(
            &format!("digest:{channel}"),
            NotificationKind::Firing,
            channel,
            now_ns,
        );
        let Some(digest) = super::group::digest(&messages, channel, limit, key.clone(), now_ns)
        else {
            return Ok(0);
        };
        let mut folded = 0;
        for (id, text) in &rows {
            if serde_json::from_str::<Message>(text).is_err() {
                continue; // next_due gives it up and counts it
            }
            tx.execute(
                "UPDATE notification SET state = 'folded', done_at_ns = ?2, sealed = 1,
                    last_error = ?3 WHERE id = ?1",
                params![
                    id,
                    now_ns,
                    format!("folded into digest {key} by the rate limit")
                ],
            )?;
            folded += 1;
        }
        tx.execute(
            "INSERT INTO notification
                (key, fingerprint, channel, kind, severity, message, state, sealed,
                 next_attempt_at_ns, created_at_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 1, ?7, ?7)",
            params![
                digest.key,
                digest.fingerprint,
                channel,
                digest.kind.as_str(),
                severity_rank(digest.severity),
                serde_json::to_string(&digest).expect("messages serialise"),
                now_ns,
            ],
        )?;
        tx.commit()?;
        Ok(folded)
    }

    /// The silences active now (the engine reads them at every evaluation, so one added
    /// by `stallwatch silence add` in another process counts from the next one).
    pub fn silences(&self, now_ns: i64) -> rusqlite::Result<Vec<super::silence::Silence>> {
        super::silence::read_active(&self.conn, now_ns)
    }

    /// Stores a silence the engine opens itself (a freeze's); returns its id.
    pub fn insert_silence(&self, s: &super::silence::Silence) -> rusqlite::Result<i64> {
        super::silence::insert(&self.conn, s)
    }

    /// Firing alerts whose notification a silence held back: what each is owed.
    pub fn restore_held(&self) -> rusqlite::Result<Vec<(String, super::silence::Held)>> {
        let mut stmt = self.conn.prepare(
            "SELECT fingerprint, silence_id, held FROM alert
             WHERE state = 'firing' AND silence_id IS NOT NULL AND held IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fingerprint, silence_id, held) = row?;
            let kind = match held.as_str() {
                "firing" => NotificationKind::Firing,
                _ => NotificationKind::Repeat,
            };
            out.push((fingerprint, super::silence::Held { silence_id, kind }));
        }
        Ok(out)
    }

    fn enforce_bound(
        tx: &rusqlite::Transaction,
        max_pending: usize,
        now_ns: i64,
    ) -> rusqlite::Result<Vec<(String, u64)>> {
        let pending: i64 = tx.query_row(
            "SELECT count(*) FROM notification WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?;
        let excess = pending - max_pending as i64;
        if excess <= 0 {
            return Ok(Vec::new());
        }
        let mut stmt = tx.prepare(
            "SELECT id, channel FROM notification WHERE state = 'pending'
             ORDER BY severity ASC, id ASC LIMIT ?1",
        )?;
        let victims = stmt
            .query_map([excess], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut by_channel: Vec<(String, u64)> = Vec::new();
        for (id, channel) in victims {
            tx.execute(
                "UPDATE notification SET state = 'dropped', done_at_ns = ?2,
                    last_error = 'dropped: the outbox was full' WHERE id = ?1",
                params![id, now_ns],
            )?;
            add(&mut by_channel, &channel, 1);
        }
        Ok(by_channel)
    }

    /// The next notification of `channel` due at `now_ns`: the oldest whose alert has no
    /// earlier notification still pending on this channel, so a resolve never overtakes
    /// its firing.
    pub fn next_due(&self, channel: &str, now_ns: i64) -> rusqlite::Result<NextDue> {
        let mut unreadable = 0;
        loop {
            let row = self
                .conn
                .query_row(
                    "SELECT n.id, n.attempts, n.message FROM notification n
                     WHERE n.state = 'pending' AND n.channel = ?1 AND n.next_attempt_at_ns <= ?2
                       AND NOT EXISTS (SELECT 1 FROM notification e
                                       WHERE e.state = 'pending' AND e.channel = n.channel
                                         AND e.fingerprint = n.fingerprint AND e.id < n.id)
                     ORDER BY n.id LIMIT 1",
                    params![channel, now_ns],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, u32>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    },
                )
                .optional()?;
            let Some((id, attempts, text)) = row else {
                return Ok(NextDue {
                    due: None,
                    unreadable,
                });
            };
            match serde_json::from_str::<Message>(&text) {
                Ok(message) => {
                    return Ok(NextDue {
                        due: Some(Due {
                            id,
                            attempts,
                            message,
                        }),
                        unreadable,
                    })
                }
                // Written by another version, or edited by hand: it can never be sent, and
                // left pending it would hold up every notification behind it.
                Err(e) => {
                    self.mark_failed(
                        id,
                        attempts,
                        &format!("the stored notification cannot be read: {e}"),
                        now_ns,
                    )?;
                    unreadable += 1;
                }
            }
        }
    }

    /// Earliest time a pending notification of `channel` becomes due.
    pub fn next_attempt_at(&self, channel: &str) -> rusqlite::Result<Option<i64>> {
        self.conn.query_row(
            "SELECT min(next_attempt_at_ns) FROM notification WHERE state = 'pending' AND channel = ?1",
            [channel],
            |r| r.get(0),
        )
    }

    pub fn mark_sent(&self, id: i64, attempts: u32, now_ns: i64) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE notification SET state = 'sent', attempts = ?2, done_at_ns = ?3, last_error = NULL
             WHERE id = ?1",
            params![id, attempts, now_ns],
        )?;
        Ok(())
    }

    pub fn mark_retry(
        &self,
        id: i64,
        attempts: u32,
        next_at_ns: i64,
        error: &str,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE notification SET attempts = ?2, next_attempt_at_ns = ?3, last_error = ?4 WHERE id = ?1",
            params![id, attempts, next_at_ns, clip(error)],
        )?;
        Ok(())
    }

    pub fn mark_failed(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        now_ns: i64,
    ) -> rusqlite::Result<()> {
        self.conn.execute(
            "UPDATE notification SET state = 'failed', attempts = ?2, last_error = ?3, done_at_ns = ?4
             WHERE id = ?1",
            params![id, attempts, clip(error), now_ns],
        )?;
        Ok(())
    }

    /// Pending rows of a channel no longer configured can never be sent: give them up.
    pub fn abandon_unknown_channels(
        &self,
        known: &[String],
        now_ns: i64,
    ) -> rusqlite::Result<usize> {
        let list = serde_json::to_string(known).expect("names serialise");
        self.conn.execute(
            "UPDATE notification SET state = 'failed', done_at_ns = ?2,
                last_error = 'the channel is no longer configured'
             WHERE state = 'pending' AND channel NOT IN (SELECT value FROM json_each(?1))",
            params![list, now_ns],
        )
    }

    /// Size and age of what is pending (indexed: cheap with 10,000 rows waiting).
    pub fn stats(&self) -> rusqlite::Result<OutboxStats> {
        self.conn.query_row(
            "SELECT
                (SELECT count(*) FROM notification WHERE state = 'pending'),
                (SELECT created_at_ns FROM notification WHERE state = 'pending'
                 ORDER BY id LIMIT 1)",
            [],
            |r| {
                Ok(OutboxStats {
                    pending: r.get::<_, i64>(0)? as u64,
                    oldest_created_ns: r.get(1)?,
                })
            },
        )
    }

    /// Deletes finished notifications and alerts older than [`KEEP_DONE_NS`].
    pub fn prune(&self, now_ns: i64) -> rusqlite::Result<()> {
        let before = now_ns - KEEP_DONE_NS;
        self.conn.execute(
            "DELETE FROM notification WHERE state <> 'pending' AND done_at_ns < ?1",
            [before],
        )?;
        self.conn.execute(
            "DELETE FROM alert WHERE state <> 'firing' AND updated_at_ns < ?1
               AND NOT EXISTS (SELECT 1 FROM notification n
                               WHERE n.fingerprint = alert.fingerprint AND n.state = 'pending')",
            [before],
        )?;
        super::silence::prune(&self.conn, now_ns)?;
        Ok(())
    }
}

fn clip(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

// ---- the API's view --------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct AlertView {
    pub fingerprint: String,
    pub rule: String,
    pub severity: String,
    pub state: String,
    pub labels: serde_json::Value,
    pub title: String,
    pub text: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub last_notified_at: String,
    /// A silence covers it now (firing), or held back its last notification.
    pub silenced: bool,
    pub silence_id: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct NotificationView {
    pub key: String,
    pub fingerprint: String,
    pub channel: String,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub done_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OutboxView {
    pub pending: u64,
    pub oldest_age_seconds: f64,
    pub failed: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct AlertsView {
    pub firing: Vec<AlertView>,
    pub recent: Vec<AlertView>,
    pub notifications: Vec<NotificationView>,
    pub outbox: OutboxView,
}

/// What `/api/v1/alerts` shows, read from the state DB (read-only connection).
pub fn read_view(conn: &Connection, now_ns: i64) -> rusqlite::Result<AlertsView> {
    let alerts = |sql: &str| -> rusqlite::Result<Vec<AlertView>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([MAX_LISTED, now_ns], |r| {
            let silence_id: Option<i64> = r.get(10)?;
            Ok(AlertView {
                fingerprint: r.get(0)?,
                rule: r.get(1)?,
                severity: r.get(2)?,
                state: r.get(3)?,
                labels: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                title: r.get(5)?,
                text: r.get(6)?,
                started_at: rfc3339_millis(r.get(7)?),
                ended_at: r.get::<_, Option<i64>>(8)?.map(rfc3339_millis),
                last_notified_at: rfc3339_millis(r.get(9)?),
                silenced: silence_id.is_some(),
                silence_id,
            })
        })?;
        rows.collect()
    };
    // The silence covering a firing alert now, else the one that held its last notification.
    const COLUMNS: &str = "fingerprint, rule, severity, state, labels, title, text, started_at_ns,
                           ended_at_ns, last_notified_ns,
                           coalesce(CASE WHEN state = 'firing' THEN
                               (SELECT s.id FROM silence s
                                 WHERE s.rule = alert.rule AND s.starts_at_ns <= ?2
                                   AND s.ends_at_ns > ?2
                                   AND (s.source IS NULL
                                        OR s.source = json_extract(alert.labels, '$.source'))
                                 ORDER BY s.ends_at_ns DESC LIMIT 1) END,
                               silence_id)
                           FROM alert";
    let firing = alerts(&format!(
        "SELECT {COLUMNS} WHERE state = 'firing' ORDER BY started_at_ns LIMIT ?1"
    ))?;
    let recent = alerts(&format!(
        "SELECT {COLUMNS} WHERE state <> 'firing' ORDER BY updated_at_ns DESC LIMIT ?1"
    ))?;
    let mut stmt = conn.prepare(
        "SELECT key, fingerprint, channel, kind, state, attempts, last_error, created_at_ns,
                next_attempt_at_ns, done_at_ns
         FROM notification ORDER BY id DESC LIMIT ?1",
    )?;
    let notifications = stmt
        .query_map([MAX_LISTED], |r| {
            let state: String = r.get(4)?;
            let next: i64 = r.get(8)?;
            Ok(NotificationView {
                key: r.get(0)?,
                fingerprint: r.get(1)?,
                channel: r.get(2)?,
                kind: r.get(3)?,
                attempts: r.get(5)?,
                last_error: r.get(6)?,
                created_at: rfc3339_millis(r.get(7)?),
                next_attempt_at: (state == "pending").then(|| rfc3339_millis(next)),
                done_at: r.get::<_, Option<i64>>(9)?.map(rfc3339_millis),
                state,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let stats: (i64, Option<i64>, i64, i64) = conn.query_row(
        "SELECT
            (SELECT count(*) FROM notification WHERE state = 'pending'),
            (SELECT min(created_at_ns) FROM notification WHERE state = 'pending'),
            (SELECT count(*) FROM notification WHERE state = 'failed'),
            (SELECT count(*) FROM notification WHERE state = 'dropped')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    Ok(AlertsView {
        firing,
        recent,
        notifications,
        outbox: OutboxView {
            pending: stats.0 as u64,
            oldest_age_seconds: stats.1.map_or(0.0, |t| (now_ns - t).max(0) as f64 / 1e9),
            failed: stats.2 as u64,
            dropped: stats.3 as u64,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::lifecycle::Alert;

    fn outbox(max: usize) -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::StateDb::open(dir.path()).unwrap();
        let out = Outbox::open(db.path(), max).unwrap();
        (dir, out)
    }

    fn transition(
        fingerprint: &str,
        kind: NotificationKind,
        severity: Severity,
        at: i64,
    ) -> (Transition, Vec<NewNotification>) {
        let alert = Alert {
            fingerprint: fingerprint.into(),
            rule: RuleKind::SourceDown,
            severity,
            labels: Default::default(),
            title: fingerprint.into(),
            text: String::new(),
            started_at_ns: 0,
            ended_at_ns: None,
            last_notified_ns: at,
            count: 1,
        };
        let message = Message {
            key: notification_key(fingerprint, kind, "hook", at),
            fingerprint: fingerprint.into(),
            rule: "source_down".into(),
            kind,
            severity,
            labels: Default::default(),
            title: fingerprint.into(),
            text: String::new(),
            started_at_ns: 0,
            ended_at_ns: None,
            created_at_ns: at,
            runbook_url: String::new(),
            host: "h".into(),
            count: 1,
            group: None,
        };
        (
            Transition { kind, alert },
            vec![NewNotification {
                channel: "hook".into(),
                message,
                group: None,
            }],
        )
    }

    /// Records one notification of `fingerprint` on channel `hook`, made and recorded at `at`.
    fn record(
        o: &mut Outbox,
        fingerprint: &str,
        kind: NotificationKind,
        severity: Severity,
        at: i64,
    ) {
        o.record(&[transition(fingerprint, kind, severity, at)], at)
            .unwrap();
    }

    /// The one value `sql` selects from the outbox's DB.
    fn query<T: rusqlite::types::FromSql>(o: &Outbox, sql: &str) -> T {
        o.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_resolve_waits_for_its_firing_but_other_alerts_do_not() {
        let (_d, mut o) = outbox(100);
        record(&mut o, "a", NotificationKind::Firing, Severity::Warning, 1);
        record(
            &mut o,
            "a",
            NotificationKind::Resolved,
            Severity::Warning,
            2,
        );
        record(&mut o, "b", NotificationKind::Firing, Severity::Warning, 3);
        let first = o.next_due("hook", 10).unwrap().due.unwrap();
        assert_eq!(first.message.fingerprint, "a");
        o.mark_retry(first.id, 1, 1_000, "HTTP 503").unwrap();
        // a's firing is backing off: its resolve may not overtake it; b may go.
        let next = o.next_due("hook", 10).unwrap().due.unwrap();
        assert_eq!(
            (next.message.fingerprint.as_str(), next.message.kind),
            ("b", NotificationKind::Firing)
        );
        o.mark_sent(next.id, 1, 10).unwrap();
        assert!(o.next_due("hook", 10).unwrap().due.is_none());
        assert_eq!(o.next_attempt_at("hook").unwrap(), Some(2));
        let again = o.next_due("hook", 1_000).unwrap().due.unwrap();
        assert_eq!((again.id, again.attempts), (first.id, 1));
        o.mark_sent(again.id, 2, 1_000).unwrap();
        let resolve = o.next_due("hook", 1_000).unwrap().due.unwrap();
        assert_eq!(resolve.message.kind, NotificationKind::Resolved);
        let stats = o.stats().unwrap();
        assert_eq!((stats.pending, stats.oldest_created_ns), (1, Some(2)));
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_lowest_severity_first() {
        let (_d, mut o) = outbox(100);
        for i in 0..60 {
            record(
                &mut o,
                &format!("w{i}"),
                NotificationKind::Firing,
                Severity::Warning,
                i,
            );
        }
        for i in 0..60 {
            record(
                &mut o,
                &format!("c{i}"),
                NotificationKind::Firing,
                Severity::Critical,
                100 + i,
            );
        }
        let stats = o.stats().unwrap();
        let dropped: i64 = query(
            &o,
            "SELECT count(*) FROM notification WHERE state = 'dropped'",
        );
        assert_eq!((stats.pending, dropped), (100, 20));
        // The 20 oldest warnings went; every critical is still there.
        let first = o.next_due("hook", 1_000).unwrap().due.unwrap();
        assert_eq!(first.message.fingerprint, "w20");
    }

    #[test]
    fn an_unreadable_row_is_given_up_and_does_not_hold_up_the_rest() {
        let (_d, mut o) = outbox(100);
        record(&mut o, "a", NotificationKind::Firing, Severity::Warning, 1);
        record(&mut o, "b", NotificationKind::Firing, Severity::Warning, 2);
        o.conn
            .execute(
                "UPDATE notification SET message = '{\"old\": 1}' WHERE fingerprint = 'a'",
                [],
            )
            .unwrap();
        let next = o.next_due("hook", 10).unwrap();
        assert_eq!(next.unreadable, 1);
        assert_eq!(next.due.unwrap().message.fingerprint, "b");
        let state: String = query(&o, "SELECT state FROM notification WHERE fingerprint = 'a'");
        assert_eq!(state, "failed");
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        let k = notification_key("f", NotificationKind::Firing, "hook", 5);
        assert_eq!(
            k,
            notification_key("f", NotificationKind::Firing, "hook", 5)
        );
        assert_ne!(
            k,
            notification_key("f", NotificationKind::Resolved, "hook", 5)
        );
        assert_ne!(
            k,
            notification_key("f", NotificationKind::Firing, "phone", 5)
        );
        assert!(k.starts_with("sw_") && k.len() == 27, "{k}");
    }
}
