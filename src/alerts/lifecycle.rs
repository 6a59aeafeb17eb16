//! The alert lifecycle, pure: conditions and `now` in, notifications to send out.
//!
//! A holding rule's alert goes pending → firing (after `for`) → a repeat every
//! `repeat_interval` while it holds → clearing when the condition goes away → resolved
//! once it has stayed away for `resolve_after`; a condition that comes back while
//! clearing just keeps firing, so flapping does not buzz the phone. A one-shot rule's
//! event fires exactly once per fingerprint; the fingerprints are remembered (and
//! stored by the caller) long enough to cover a cost day.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::rules::Condition;
use super::{NotificationKind, Severity};
use crate::clock::NANOS_PER_SEC;
use crate::config::alerts::{AlertsConfig, RuleKind};

/// One-shot fingerprints are remembered this long: longer than a cost day in any zone.
pub const ONE_SHOT_MEMORY_NS: i64 = 3 * 86_400 * NANOS_PER_SEC;
/// After a restart, an alert that was firing is not cleared for this long past its rule's
/// threshold, so facts that take a while to come back (a source's down time restarts from
/// zero) do not resolve and re-fire it.
pub const RESTART_GRACE_NS: i64 = 30 * NANOS_PER_SEC;

/// An alert as the API and the outbox see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub fingerprint: String,
    #[serde(serialize_with = "rule_name")]
    pub rule: RuleKind,
    pub severity: Severity,
    pub labels: BTreeMap<String, String>,
    pub title: String,
    pub text: String,
    pub started_at_ns: i64,
    /// Set once resolved.
    pub ended_at_ns: Option<i64>,
    pub last_notified_ns: i64,
    /// How many events it stands for (new dead letters); not stored.
    #[serde(skip)]
    pub count: u64,
}

fn rule_name<S: serde::Serializer>(r: &RuleKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// What to tell the channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub kind: NotificationKind,
    pub alert: Alert,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Holding, but not yet for `for`.
    Pending {
        since_ns: i64,
    },
    Firing,
    /// Was firing; the condition has been away since then.
    Clearing {
        since_ns: i64,
    },
}

#[derive(Debug, Clone)]
struct Tracked {
    alert: Alert,
    phase: Phase,
    /// Not cleared before this time (alerts restored after a restart).
    keep_until_ns: i64,
}

/// The lifecycle state of every alert.
#[derive(Debug, Default)]
pub struct Lifecycle {
    alerts: HashMap<String, Tracked>,
    one_shots: HashMap<String, i64>,
}

impl Lifecycle {
    /// Restores what was firing and which one-shots fired, from the state DB.
    pub fn restore(
        config: &AlertsConfig,
        firing: Vec<Alert>,
        one_shots: Vec<(String, i64)>,
        now_ns: i64,
    ) -> Lifecycle {
        let mut l = Lifecycle::default();
        for alert in firing {
            let threshold = config.rule(alert.rule).threshold_duration().as_nanos() as i64;
            l.alerts.insert(
                alert.fingerprint.clone(),
                Tracked {
                    keep_until_ns: now_ns + threshold + RESTART_GRACE_NS,
                    alert,
                    phase: Phase::Firing,
                },
            );
        }
        l.one_shots.extend(one_shots);
        l
    }

    /// Alerts firing now (clearing ones included: they have not resolved yet).
    pub fn firing(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self
            .alerts
            .values()
            .filter(|t| !matches!(t.phase, Phase::Pending { .. }))
            .map(|t| &t.alert)
            .collect();
        v.sort_by(|a, b| (a.started_at_ns, &a.fingerprint).cmp(&(b.started_at_ns, &b.fingerprint)));
        v
    }

    /// When [`Lifecycle::step`] may next change something with the conditions unchanged
    /// (unix ns): a pending alert's `for` ends, a firing one's repeat is due, a clearing one
    /// resolves, or a restored one may start clearing. One-shots need no time.
    pub fn next_due(&self, config: &AlertsConfig) -> Option<i64> {
        self.alerts
            .values()
            .map(|t| {
                let rule = config.rule(t.alert.rule);
                let at = match t.phase {
                    Phase::Pending { since_ns } => since_ns + rule.hold.as_nanos() as i64,
                    Phase::Firing => {
                        t.alert.last_notified_ns + rule.repeat_interval.as_nanos() as i64
                    }
                    Phase::Clearing { since_ns } => since_ns + rule.resolve_after.as_nanos() as i64,
                };
                if t.keep_until_ns > 0 {
                    at.min(t.keep_until_ns)
                } else {
                    at
                }
            })
            .min()
    }

    /// Applies one evaluation's conditions.
    pub fn step(
        &mut self,
        config: &AlertsConfig,
        conditions: Vec<Condition>,
        now_ns: i64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut holding = std::collections::HashSet::new();
        for c in conditions {
            let rule = config.rule(c.rule);
            let fingerprint = c.fingerprint();
            let alert = Alert {
                fingerprint: fingerprint.clone(),
                rule: c.rule,
                severity: rule.severity,
                labels: c.labels,
                title: c.title,
                text: c.text,
                started_at_ns: if c.started_at_ns > 0 {
                    c.started_at_ns
                } else {
                    now_ns
                },
                ended_at_ns: None,
                last_notified_ns: now_ns,
                count: c.count,
            };
            if c.rule.one_shot() {
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    self.one_shots.entry(fingerprint)
                {
                    slot.insert(now_ns);
                    out.push(Transition {
                        kind: NotificationKind::Firing,
                        alert,
                    });
                }
                continue;
            }
            holding.insert(fingerprint.clone());
            let hold_ns = rule.hold.as_nanos() as i64;
            let repeat_ns = rule.repeat_interval.as_nanos() as i64;
            match self.alerts.get_mut(&fingerprint) {
                None => {
                    let phase = if hold_ns == 0 {
                        out.push(Transition {
                            kind: NotificationKind::Firing,
                            alert: alert.clone(),
                        });
                        Phase::Firing
                    } else {
                        Phase::Pending { since_ns: now_ns }
                    };
                    self.alerts.insert(
                        fingerprint,
                        Tracked {
                            alert,
                            phase,
                            keep_until_ns: 0,
                        },
                    );
                }
                Some(t) => {
                    // Fresh facts, same identity and start.
                    t.alert.title = alert.title;
                    t.alert.text = alert.text;
                    t.alert.severity = alert.severity;
                    match t.phase {
                        Phase::Pending { since_ns } if now_ns - since_ns >= hold_ns => {
                            t.phase = Phase::Firing;
                            t.alert.last_notified_ns = now_ns;
                            out.push(Transition {
                                kind: NotificationKind::Firing,
                                alert: t.alert.clone(),
                            });
                        }
                        Phase::Pending { .. } => {}
                        Phase::Firing | Phase::Clearing { .. } => {
                            t.phase = Phase::Firing;
                            if now_ns - t.alert.last_notified_ns >= repeat_ns {
                                t.alert.last_notified_ns = now_ns;
                                out.push(Transition {
                                    kind: NotificationKind::Repeat,
                                    alert: t.alert.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }

        let mut resolved = Vec::new();
        for (fingerprint, t) in self.alerts.iter_mut() {
            if holding.contains(fingerprint) || now_ns < t.keep_until_ns {
                continue;
            }
            let resolve_after = config.rule(t.alert.rule).resolve_after.as_nanos() as i64;
            match t.phase {
                Phase::Pending { .. } => resolved.push((fingerprint.clone(), None)),
                Phase::Firing => {
                    t.phase = Phase::Clearing { since_ns: now_ns };
                    if resolve_after == 0 {
                        resolved.push((fingerprint.clone(), Some(now_ns)));
                    }
                }
                Phase::Clearing { since_ns } if now_ns - since_ns >= resolve_after => {
                    resolved.push((fingerprint.clone(), Some(since_ns)));
                }
                Phase::Clearing { .. } => {}
            }
        }
        resolved.sort();
        for (fingerprint, ended) in resolved {
            let t = self.alerts.remove(&fingerprint).expect("listed above");
            if let Some(ended_at_ns) = ended {
                let mut alert = t.alert;
                alert.ended_at_ns = Some(ended_at_ns);
                alert.last_notified_ns = now_ns;
                out.push(Transition {
                    kind: NotificationKind::Resolved,
                    alert,
                });
            }
        }
        self.one_shots
            .retain(|_, at| now_ns - *at < ONE_SHOT_MEMORY_NS);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::alerts::RuleConfig;
    use std::time::Duration;

    const S: i64 = NANOS_PER_SEC;

    fn config(edit: impl FnOnce(&mut RuleConfig)) -> AlertsConfig {
        let mut c = AlertsConfig::default();
        let rule = c.rules.iter_mut().find(|r| r.kind == RuleKind::SourceDown);
        edit(rule.expect("every rule has a config"));
        c
    }

    fn down(source: &str) -> Condition {
        Condition {
            rule: RuleKind::SourceDown,
            labels: [("source".to_string(), source.to_string())].into(),
            instance: None,
            count: 1,
            title: format!("{source} down"),
            text: String::new(),
            started_at_ns: 0,
        }
    }

    fn kinds(t: &[Transition]) -> Vec<NotificationKind> {
        t.iter().map(|t| t.kind).collect()
    }

    /// The alert engine steps the lifecycle only when the conditions change or at
    /// [`Lifecycle::next_due`]; that must send exactly what stepping every second sends,
    /// at the same times.
    #[test]
    fn stepping_at_changes_and_due_times_sends_what_stepping_every_second_sends() {
        let c = config(|r| {
            r.hold = Duration::from_secs(7);
            r.repeat_interval = Duration::from_secs(40);
            r.resolve_after = Duration::from_secs(15);
        });
        // Which sources are down, from each time on (seconds): flaps, holds, clears.
        let script: &[(i64, &[&str])] = &[
            (0, &[]),
            (3, &["a"]),
            (5, &["a", "b"]),
            (8, &["b"]),
            (30, &["a", "b"]),
            (31, &["a"]),
            (52, &[]),
            (60, &["a"]),
            (61, &[]),
            (200, &["b"]),
            (265, &[]),
        ];
        let holding = |t: i64| {
            let (_, down_now) = script.iter().rev().find(|(at, _)| *at <= t).unwrap();
            down_now.iter().map(|s| down(s)).collect::<Vec<_>>()
        };
        let sent = |l: &mut Lifecycle, t: i64, out: &mut Vec<(i64, NotificationKind, String)>| {
            for tr in l.step(&c, holding(t / S), t) {
                out.push((t, tr.kind, tr.alert.fingerprint));
            }
        };
        let mut every_second = Vec::new();
        let mut l = Lifecycle::default();
        for t in 0..400 {
            sent(&mut l, t * S, &mut every_second);
        }
        let mut on_wake = Vec::new();
        let mut l = Lifecycle::default();
        let mut t = 0;
        let mut steps = 0;
        while t < 400 * S {
            sent(&mut l, t, &mut on_wake);
            steps += 1;
            let change = script.iter().map(|(at, _)| at * S).find(|at| *at > t);
            t = [change, l.next_due(&c)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(400 * S)
                .max(t + 1);
        }
        assert_eq!(on_wake, every_second);
        assert!(every_second.len() >= 6, "{every_second:?}");
        assert!(steps < 40, "{steps} steps for 400 s");
        assert_eq!(l.next_due(&c), None, "nothing tracked, nothing due");
    }

    #[test]
    fn fires_repeats_and_resolves_after_the_damping() {
        let c = config(|r| {
            r.repeat_interval = Duration::from_secs(60);
            r.resolve_after = Duration::from_secs(30);
        });
        let mut l = Lifecycle::default();
        assert_eq!(
            kinds(&l.step(&c, vec![down("a")], 0)),
            [NotificationKind::Firing]
        );
        assert!(l.step(&c, vec![down("a")], 59 * S).is_empty());
        assert_eq!(
            kinds(&l.step(&c, vec![down("a")], 60 * S)),
            [NotificationKind::Repeat]
        );
        // Clears, comes back within the damping window: nothing sent either way.
        assert!(l.step(&c, vec![], 61 * S).is_empty());
        assert!(l.step(&c, vec![down("a")], 70 * S).is_empty());
        assert!(l.step(&c, vec![], 80 * S).is_empty());
        let t = l.step(&c, vec![], 110 * S);
        assert_eq!(kinds(&t), [NotificationKind::Resolved]);
        assert_eq!(t[0].alert.ended_at_ns, Some(80 * S));
        assert!(l.firing().is_empty());
    }

    #[test]
    fn for_holds_before_firing_and_a_short_blip_never_fires() {
        let c = config(|r| r.hold = Duration::from_secs(10));
        let mut l = Lifecycle::default();
        assert!(l.step(&c, vec![down("a")], 0).is_empty());
        assert!(l.step(&c, vec![], 5 * S).is_empty());
        assert!(l.step(&c, vec![down("a")], 6 * S).is_empty());
        assert_eq!(
            kinds(&l.step(&c, vec![down("a")], 16 * S)),
            [NotificationKind::Firing]
        );
    }

    #[test]
    fn one_shots_fire_once_per_fingerprint_and_are_forgotten_after_days() {
        let c = AlertsConfig::default();
        let cap = |day: &str| Condition {
            rule: RuleKind::CostCap,
            labels: [
                ("level".to_string(), "50".to_string()),
                ("day".to_string(), day.to_string()),
            ]
            .into(),
            instance: None,
            count: 1,
            title: String::new(),
            text: String::new(),
            started_at_ns: 0,
        };
        let mut l = Lifecycle::default();
        assert_eq!(l.step(&c, vec![cap("d1")], 0).len(), 1);
        assert!(l.step(&c, vec![cap("d1")], S).is_empty());
        assert_eq!(l.step(&c, vec![cap("d1"), cap("d2")], 2 * S).len(), 1);
        let restored = Lifecycle::restore(&c, vec![], vec![(cap("d1").fingerprint(), 0)], S);
        let mut l = restored;
        assert!(l.step(&c, vec![cap("d1")], 3 * S).is_empty());
    }

    #[test]
    fn a_restored_alert_is_kept_through_the_grace_then_resolved() {
        let c = config(|r| {
            r.threshold = crate::config::alerts::Threshold::Duration(Duration::from_secs(60));
            r.resolve_after = Duration::ZERO;
        });
        let mut first = Lifecycle::default();
        let fired = first.step(&c, vec![down("a")], 0);
        let alert = fired[0].alert.clone();
        let mut l = Lifecycle::restore(&c, vec![alert], vec![], 100 * S);
        assert!(l.step(&c, vec![], 150 * S).is_empty());
        // The condition is back before the grace ends: still the same alert, no re-fire.
        assert!(l.step(&c, vec![down("a")], 170 * S).is_empty());
        let t = l.step(&c, vec![], 200 * S);
        assert_eq!(kinds(&t), [NotificationKind::Resolved]);
    }
}
