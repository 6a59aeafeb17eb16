//! Grouping, pure: which notifications travel together, and what the one message that
//! carries them says.
//!
//! A group is one channel, one rule and the values of the rule's `group_by` labels
//! (`source` by default): thirty dead letters of one source in a minute are one group.
//! The outbox keeps a group as one pending row that collects members until it is sealed
//! for sending (`outbox.rs`); this module only builds that row's [`Message`]: a group of
//! one reads exactly as the notification alone, a larger one says how many and names the
//! first few. A freeze's group also collects the alerts the freeze caused (members marked
//! `consequence`), said as "meanwhile". A digest is the same summary for the notifications
//! a channel's rate limit held back.

use std::collections::BTreeMap;

use super::{Group, Item, Message, NotificationKind};
use crate::config::alerts::{RuleConfig, GROUP_BY_ALL};

/// Members named in a group's message; the rest are counted.
pub const NAMED: usize = 5;
/// Members whose details a stored group row keeps (for the message and the API).
pub const KEPT: usize = 20;

/// The labels a rule's notifications are grouped by.
pub fn labels(rule: &RuleConfig, labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    if rule.group_by.iter().any(|l| l == GROUP_BY_ALL) {
        return labels.clone();
    }
    rule.group_by
        .iter()
        .filter_map(|l| labels.get(l).map(|v| (l.clone(), v.clone())))
        .collect()
}

/// A group's identity: the rule and its group labels (`rule{k=v,…}`).
pub fn key(rule: &str, labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{rule}{{{}}}", parts.join(","))
}

fn plain_title(m: &Message) -> String {
    let prefix = format!("[{}] ", m.host);
    m.title
        .strip_prefix(&prefix)
        .unwrap_or(&m.title)
        .to_string()
}

fn item(m: &Message, consequence: bool) -> Item {
    Item {
        fingerprint: m.fingerprint.clone(),
        kind: m.kind,
        title: plain_title(m),
        count: m.count,
        consequence,
    }
}

/// The message of a new group row whose first member is `m`: `m` itself, with the group
/// attached (so the row reads as `m`, labels included, until a second member joins).
pub fn start(m: Message, key: String) -> Message {
    let mut row = m.clone();
    let first = item(&m, false);
    row.group = Some(Group {
        key: key.clone(),
        members: 1,
        count: m.count,
        firing: u64::from(m.kind != NotificationKind::Resolved),
        resolved: u64::from(m.kind == NotificationKind::Resolved),
        consequences: 0,
        items: vec![first],
        first: Box::new(m),
    });
    row.fingerprint = key;
    row
}

/// Adds `m` to the group row `row` (as a consequence of the row's freeze when
/// `consequence`) and rewrites the row's message. The row keeps the labels all its
/// members share (the group's own labels among them), as Alertmanager's common labels.
pub fn join(row: &mut Message, m: &Message, consequence: bool) {
    let Some(g) = row.group.as_mut() else {
        return;
    };
    if consequence {
        g.consequences += 1;
    } else {
        g.members += 1;
        g.count += m.count;
        if m.kind == NotificationKind::Resolved {
            g.resolved += 1;
        } else {
            g.firing += 1;
        }
        row.labels.retain(|k, v| m.labels.get(k) == Some(v));
        row.severity = row.severity.max(m.severity);
        row.started_at_ns = row.started_at_ns.min(m.started_at_ns);
        row.ended_at_ns = match (row.ended_at_ns, m.ended_at_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    if g.items.len() < KEPT {
        g.items.push(item(m, consequence));
    }
    render(row);
}

/// Rewrites a group row's kind, title and text from its group.
fn render(row: &mut Message) {
    let Some(g) = row.group.as_ref() else {
        return;
    };
    let first = &g.first;
    let host = &row.host;
    row.kind = if g.firing == 0 {
        NotificationKind::Resolved
    } else if g
        .items
        .iter()
        .all(|i| i.kind == NotificationKind::Repeat || i.consequence)
    {
        NotificationKind::Repeat
    } else {
        NotificationKind::Firing
    };
    let own: Vec<&Item> = g.items.iter().filter(|i| !i.consequence).collect();
    let caused: Vec<&Item> = g.items.iter().filter(|i| i.consequence).collect();
    let (title, mut text) = if g.members == 1 {
        (first.title.clone(), strip_host_line(&first.text, host))
    } else {
        let scope = row
            .labels
            .get("source")
            .cloned()
            .unwrap_or_else(|| "this machine".to_string());
        let title = match first.rule.as_str() {
            "dead_letters" => format!("{} new dead letters in {scope}", g.count),
            rule => format!(
                "{} {rule} notifications for {scope} ({} firing, {} resolved)",
                g.members, g.firing, g.resolved
            ),
        };
        let title = format!("[{host}] {title}{}", named(&own, g.members));
        let mut text = format!(
            "{} notifications of rule {} for {scope}, sent together:",
            g.members, first.rule
        );
        for i in own.iter().take(NAMED) {
            text.push_str(&format!("\n- {}{}", i.title, kind_note(i.kind)));
        }
        let more = g.members.saturating_sub(own.len().min(NAMED) as u64);
        if more > 0 {
            text.push_str(&format!("\n… and {more} more (all in /api/v1/alerts)."));
        }
        (title, text)
    };
    if g.consequences > 0 {
        text.push_str(&format!(
            "\nMeanwhile, because the machine was frozen ({} alert(s) it caused, not paged \
             on their own):",
            g.consequences
        ));
        for i in caused.iter().take(NAMED) {
            text.push_str(&format!("\n- {}", i.title));
        }
        let more = g
            .consequences
            .saturating_sub(caused.len().min(NAMED) as u64);
        if more > 0 {
            text.push_str(&format!("\n… and {more} more."));
        }
    }
    row.title = title;
    row.text = format!("{text}\nHost: {host}.");
}

/// ` (a, b, c … and 27 more)`: the first members by their distinguishing facts, each
/// name once (thirty dead letters of one queue name it once).
fn named(items: &[&Item], members: u64) -> String {
    let mut names: Vec<String> = Vec::new();
    for i in items {
        let n = short(&i.fingerprint);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    if names.is_empty() || (names.len() == 1 && members > 1 && items.len() as u64 == members) {
        // One name for all of them says nothing the title does not.
        if names.len() == 1 && names[0] != "(unnamed)" {
            return format!(" ({})", names[0]);
        }
        return String::new();
    }
    let shown: Vec<String> = names.iter().take(3).cloned().collect();
    let rest = members.saturating_sub(shown.len() as u64);
    if rest > 0 {
        format!(" ({} … and {rest} more)", shown.join(", "))
    } else {
        format!(" ({})", shown.join(", "))
    }
}

/// A member's name from its fingerprint: its label values without the rule
/// (`stuck_jobs{queue=mail,source=s}` → `mail`), or the rule when it has none.
fn short(fingerprint: &str) -> String {
    let inner = fingerprint
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or("", |(labels, _)| labels);
    let values: Vec<&str> = inner
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k != "source")
        .map(|(_, v)| if v.is_empty() { "(unnamed)" } else { v })
        .collect();
    if values.is_empty() {
        fingerprint
            .split('{')
            .next()
            .unwrap_or(fingerprint)
            .to_string()
    } else {
        values.join("/")
    }
}

fn kind_note(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::Firing => "",
        NotificationKind::Repeat => " (still firing)",
        NotificationKind::Resolved => " (resolved)",
    }
}

/// The engine ends every text with a `Host:` line; a group adds its own once.
fn strip_host_line(text: &str, host: &str) -> String {
    let line = format!("\nHost: {host}.");
    text.strip_suffix(&line).unwrap_or(text).to_string()
}

/// The one message that carries the notifications a channel's rate limit held back.
pub fn digest(
    rows: &[Message],
    channel: &str,
    limit: u32,
    key: String,
    now_ns: i64,
) -> Option<Message> {
    let first = rows.first()?;
    let count = rows.len();
    let mut text = format!(
        "{count} notifications waited while channel {channel} was at its limit of {limit} \
         sends per window; here they are together:"
    );
    for m in rows.iter().take(KEPT) {
        text.push_str(&format!("\n- {}{}", plain_title(m), kind_note(m.kind)));
    }
    if count > KEPT {
        text.push_str(&format!(
            "\n… and {} more (all in /api/v1/alerts).",
            count - KEPT
        ));
    }
    text.push_str(&format!("\nHost: {}.", first.host));
    let firing = rows.iter().any(|m| m.kind != NotificationKind::Resolved);
    Some(Message {
        key,
        fingerprint: format!("digest:{channel}:{now_ns}"),
        rule: "digest".into(),
        kind: if firing {
            NotificationKind::Firing
        } else {
            NotificationKind::Resolved
        },
        severity: rows.iter().map(|m| m.severity).max()?,
        labels: BTreeMap::new(),
        title: format!(
            "[{}] {count} notifications held back by the rate limit, together",
            first.host
        ),
        text,
        started_at_ns: rows.iter().map(|m| m.started_at_ns).min()?,
        ended_at_ns: None,
        created_at_ns: now_ns,
        runbook_url: first.runbook_url.clone(),
        host: first.host.clone(),
        count: rows.iter().map(|m| m.count).sum(),
        group: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Severity;

    fn note(fingerprint: &str, kind: NotificationKind, count: u64) -> Message {
        Message {
            key: format!("k-{fingerprint}-{}", kind.as_str()),
            fingerprint: fingerprint.into(),
            rule: "dead_letters".into(),
            kind,
            severity: Severity::Warning,
            labels: [("source".to_string(), "demo-jobs".to_string())].into(),
            title: format!("[h] demo-jobs: {count} new dead letter(s)"),
            text: format!("{count} job(s) were given up on.\nHost: h."),
            started_at_ns: 10,
            ended_at_ns: None,
            created_at_ns: 10,
            runbook_url: String::new(),
            host: "h".into(),
            count,
            group: None,
        }
    }

    #[test]
    fn a_group_of_one_reads_as_the_notification_alone() {
        let mut m = note(
            "dead_letters{queue=mail,source=demo-jobs}@1",
            NotificationKind::Firing,
            2,
        );
        m.labels.insert("queue".into(), "mail".into());
        let g = labels(
            &RuleConfig::default_for(crate::config::alerts::RuleKind::DeadLetters),
            &m.labels,
        );
        let row = start(m.clone(), key("dead_letters", &g));
        // Its labels too: a receiver routing on `queue` or `kind` sees them.
        assert_eq!(row.labels, m.labels);
        assert_eq!(
            (row.title.as_str(), row.text.as_str(), row.key.as_str()),
            (m.title.as_str(), m.text.as_str(), m.key.as_str())
        );
        assert_eq!(row.fingerprint, "dead_letters{source=demo-jobs}");
    }

    #[test]
    fn thirty_dead_letters_are_one_message_that_counts_them_all() {
        let m = |i: u64| {
            let mut m = note(
                &format!("dead_letters{{queue=q{i},source=demo-jobs}}@{i}"),
                NotificationKind::Firing,
                1 + i % 2,
            );
            m.labels.insert("queue".into(), format!("q{i}"));
            m
        };
        let g: BTreeMap<String, String> = [("source".to_string(), "demo-jobs".to_string())].into();
        let mut row = start(m(0), key("dead_letters", &g));
        let mut total = 1;
        for i in 1..20 {
            join(&mut row, &m(i), false);
            total += 1 + i % 2;
        }
        // The labels every member shares: the source, not one member's queue.
        assert_eq!(row.labels, g);
        assert_eq!(row.group.as_ref().unwrap().count, total);
        assert!(
            row.title.starts_with(&format!(
                "[h] {total} new dead letters in demo-jobs (q0, q1, q2 … and 17 more)"
            )),
            "{}",
            row.title
        );
        assert!(
            row.text.contains("… and 15 more") && row.text.ends_with("Host: h."),
            "{}",
            row.text
        );
        assert_eq!(row.text.matches("Host:").count(), 1);
    }

    #[test]
    fn consequences_are_said_as_meanwhile_and_keep_the_freeze_first() {
        let mut freeze = note("freeze{kind=vm_pause}@5", NotificationKind::Firing, 1);
        freeze.rule = "freeze".into();
        freeze.title = "[h] The VM was paused for 20s".into();
        let row_labels = BTreeMap::new();
        let mut row = start(freeze.clone(), key("freeze", &row_labels));
        let mut stuck = note("stuck_jobs{queue=,source=lab}", NotificationKind::Firing, 1);
        stuck.title = "[h] lab: 1 job(s) stuck past their lease".into();
        join(&mut row, &stuck, true);
        assert_eq!(row.title, freeze.title);
        assert!(
            row.text.contains("Meanwhile") && row.text.contains("lab: 1 job(s) stuck"),
            "{}",
            row.text
        );
        assert_eq!(row.kind, NotificationKind::Firing);
    }

    #[test]
    fn a_digest_names_what_it_carries_and_its_severity_is_the_highest() {
        let mut rows: Vec<Message> = (0..40)
            .map(|i| note(&format!("f{i}"), NotificationKind::Firing, 1))
            .collect();
        rows[7].severity = Severity::Critical;
        let d = digest(&rows, "phone", 10, "sw_x".into(), 99).unwrap();
        assert_eq!(d.severity, Severity::Critical);
        assert!(d.title.contains("40 notifications"), "{}", d.title);
        assert!(d.text.contains("… and 20 more"), "{}", d.text);
        assert!(digest(&[], "phone", 10, "k".into(), 1).is_none());
    }
}
