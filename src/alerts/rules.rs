//! The built-in alert rules, pure: facts and `now` in, the conditions that hold out.
//!
//! A rule never sends anything and never remembers a notification; deciding what to send
//! is `lifecycle.rs`. The only memory here is [`RuleMemory`], the baseline a rule needs
//! to see *new* things (dead letters), passed in by the caller.

use std::collections::{BTreeMap, HashMap};

use crate::config::alerts::{AlertsConfig, RuleConfig, RuleKind};
use crate::freeze::{FreezeEvent, FreezeKind};
use crate::status::{LiveStatus, SourceStatus};
use crate::time::{human, rfc3339};

/// The outbox as the sidecar-health rules see it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    pub pending: u64,
    /// Creation time of the oldest pending notification, unix ns.
    pub oldest_created_ns: Option<i64>,
}

/// Everything the rules look at in one evaluation.
pub struct Facts<'a> {
    pub now_ns: i64,
    /// Freeze events announced since the last evaluation.
    pub freezes: &'a [FreezeEvent],
    pub status: &'a LiveStatus,
    pub outbox: OutboxStats,
}

/// A condition that holds now (or, for a one-shot rule, an event that just happened).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub rule: RuleKind,
    pub labels: BTreeMap<String, String>,
    /// Tells apart two events of a one-shot rule with the same labels (a freeze's start).
    pub instance: Option<String>,
    pub title: String,
    pub text: String,
    /// When the condition began, unix ns (best known).
    pub started_at_ns: i64,
    /// How many events it stands for (new dead letters); 1 for the others.
    pub count: u64,
}

impl Condition {
    /// Rule + labels (+ the event, for one-shots): one alert's identity.
    pub fn fingerprint(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut f = format!("{}{{{}}}", self.rule.as_str(), labels.join(","));
        if let Some(instance) = &self.instance {
            f.push('@');
            f.push_str(instance);
        }
        f
    }
}

/// Baselines rules need across evaluations.
#[derive(Debug, Default)]
pub struct RuleMemory {
    /// Dead letters seen so far per (source, queue): only an increase is news.
    dead_letters: HashMap<(String, String), u64>,
}

/// Evaluates every enabled rule.
pub fn evaluate(config: &AlertsConfig, facts: &Facts, memory: &mut RuleMemory) -> Vec<Condition> {
    let mut out = Vec::new();
    for rule in config.rules.iter().filter(|r| r.enabled) {
        match rule.kind {
            RuleKind::Freeze => freezes(rule, facts, &mut out),
            RuleKind::WallClockStep => wall_steps(rule, facts, &mut out),
            RuleKind::WorkflowStalled => per_source(facts, &mut out, stalled),
            RuleKind::StuckJobs => per_source(facts, &mut out, |s, out| stuck(rule, s, out)),
            RuleKind::QueueAge => per_source(facts, &mut out, |s, out| {
                queue_age(rule, s, facts.now_ns, out)
            }),
            RuleKind::DeadLetters => dead_letters(rule, facts, memory, &mut out),
            RuleKind::CostCap => per_source(facts, &mut out, |s, out| cost(rule, s, out)),
            RuleKind::SourceDown => per_source(facts, &mut out, |s, out| {
                source_down(rule, s, facts.now_ns, out)
            }),
            RuleKind::RecoveryLoop => per_source(facts, &mut out, |s, out| {
                recovery_loop(rule, s, facts.now_ns, out)
            }),
            RuleKind::QueueBlocked => {
                per_source(facts, &mut out, |s, out| blocked(s, facts.now_ns, out))
            }
            RuleKind::OutboxBacklog => outbox_backlog(rule, facts, &mut out),
            RuleKind::StateDb => state_db(facts, &mut out),
        }
    }
    out
}

/// The earliest time (unix ns) a rule that depends on time alone would hold with these
/// facts unchanged: a job's wait, a source's down time or the outbox's oldest row reaching
/// its threshold. Every other rule changes only with the facts.
pub fn next_due(config: &AlertsConfig, facts: &Facts) -> Option<i64> {
    let mut due: Option<i64> = None;
    let mut at = |since: i64, threshold: std::time::Duration| {
        let t = since.saturating_add(threshold.as_nanos() as i64);
        if t > facts.now_ns {
            due = Some(due.map_or(t, |d| d.min(t)));
        }
    };
    for rule in config.rules.iter().filter(|r| r.enabled) {
        let threshold = rule.threshold_duration();
        match rule.kind {
            RuleKind::QueueAge => facts
                .status
                .sources
                .iter()
                .flat_map(|s| &s.waiting)
                .for_each(|w| at(w.oldest_unix_ns, threshold)),
            RuleKind::SourceDown => facts
                .status
                .sources
                .iter()
                .filter_map(|s| s.down_since_unix_ns)
                .for_each(|since| at(since, threshold)),
            RuleKind::OutboxBacklog => {
                if let Some(oldest) = facts.outbox.oldest_created_ns {
                    at(oldest, threshold)
                }
            }
            RuleKind::Freeze
            | RuleKind::WallClockStep
            | RuleKind::WorkflowStalled
            | RuleKind::StuckJobs
            | RuleKind::DeadLetters
            | RuleKind::CostCap
            | RuleKind::RecoveryLoop
            | RuleKind::QueueBlocked
            | RuleKind::StateDb => {}
        }
    }
    due
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn per_source(
    facts: &Facts,
    out: &mut Vec<Condition>,
    mut rule: impl FnMut(&SourceStatus, &mut Vec<Condition>),
) {
    for source in &facts.status.sources {
        rule(source, out);
    }
}

fn freezes(rule: &RuleConfig, facts: &Facts, out: &mut Vec<Condition>) {
    let min = rule.threshold_duration().as_nanos() as i64;
    for e in facts.freezes {
        if !e.kind.is_lost_time() || e.duration_ns < min {
            continue;
        }
        let seen_only_by_resync = e.channels.iter().all(|c| c.channel == "wall_step");
        let what = match e.kind {
            FreezeKind::VmPause if seen_only_by_resync => {
                "the whole machine did not run (a VM pause or snapshot restore with its clocks \
                 stopped, seen when the wall clock was stepped to the right time)"
            }
            FreezeKind::VmPause => "the whole machine (VM) was paused",
            FreezeKind::Suspend => "the machine was suspended",
            FreezeKind::ProcessStall => "the sidecar's process did not run (stalled or starved)",
            FreezeKind::Restart => "the sidecar was not running (killed and restarted)",
            FreezeKind::Reboot => "the machine rebooted",
            FreezeKind::WallClockStep => unreachable!("filtered above"),
        };
        out.push(Condition {
            rule: rule.kind,
            labels: labels(&[("kind", e.kind.as_str())]),
            instance: Some(e.started_at_ns.to_string()),
            count: 1,
            title: freeze_headline(e),
            text: format!(
                "{what} for {} from {} to {}. Evidence: {}. Jobs that were running lost this \
                 time; a step gap of about this length in them is this freeze, not the app.",
                human(e.duration_ns),
                rfc3339(e.started_at_ns),
                rfc3339(e.started_at_ns + e.duration_ns),
                evidence(e),
            ),
            started_at_ns: e.started_at_ns,
        });
    }
}

/// The first line a phone shows: what happened, in plain words, and whether it was the
/// machine or the app.
fn freeze_headline(e: &FreezeEvent) -> String {
    let d = human(e.duration_ns);
    match e.kind {
        FreezeKind::VmPause => format!("The VM froze for {d}: the machine stopped, not the app"),
        FreezeKind::Suspend => format!("The machine was suspended for {d}: not the app's doing"),
        FreezeKind::ProcessStall if e.channels.iter().any(|c| c.channel == "cgroup_freeze") => {
            format!("The container was frozen for {d}: its cgroup stopped, not the app")
        }
        FreezeKind::ProcessStall => format!("stallwatch did not run for {d}: its process stalled"),
        FreezeKind::Restart => format!("stallwatch was down for {d} (killed and restarted)"),
        FreezeKind::Reboot => format!("The machine rebooted: {d} without it"),
        FreezeKind::WallClockStep => format!("The wall clock stepped by {d}"),
    }
}

fn evidence(e: &FreezeEvent) -> String {
    e.channels
        .iter()
        .map(|c| format!("{} saw {}", c.channel, human(c.estimate_ns)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn wall_steps(rule: &RuleConfig, facts: &Facts, out: &mut Vec<Condition>) {
    let min = rule.threshold_duration().as_nanos() as i64;
    for e in facts.freezes {
        if e.kind != FreezeKind::WallClockStep || e.duration_ns.abs() < min {
            continue;
        }
        let direction = if e.duration_ns > 0 {
            "forward"
        } else {
            "backward"
        };
        out.push(Condition {
            rule: rule.kind,
            labels: BTreeMap::new(),
            instance: Some(e.started_at_ns.to_string()),
            count: 1,
            title: format!(
                "wall clock stepped {direction} by {}",
                human(e.duration_ns.abs())
            ),
            text: format!(
                "The wall clock (CLOCK_REALTIME) jumped {direction} by {} at {} while the \
                 monotonic clock ran on: an NTP step, a manual date change or a snapshot \
                 restore. Timestamps written around then are off by that much; no time was lost.",
                human(e.duration_ns.abs()),
                rfc3339(e.started_at_ns),
            ),
            started_at_ns: e.started_at_ns,
        });
    }
}

/// Workflows named in one `workflow_stalled` alert's text; the rest are counted.
const NAMED_STALLS: usize = 5;

/// One alert per source while any of its workflows is stalled: how many, and the longest
/// by name. Per source, not per workflow, so the alert is true whatever the count: a
/// workflow still stalled is never "resolved" because others outnumber the list.
fn stalled(s: &SourceStatus, out: &mut Vec<Condition>) {
    let Some(worst) = s.stalled.first() else {
        return;
    };
    let count = s.stalled_count.max(s.stalled.len() as u64);
    let worst_for = human(secs_to_ns(worst.idle_seconds));
    let (title, text) = if count == 1 {
        (
            format!(
                "Workflow {} stalled for {worst_for} in {}: the machine was running",
                worst.workflow_id, s.name
            ),
            format!(
                "Workflow {} ({}) of source {} has made no progress for {worst_for} while this \
                 machine kept running: the app is stuck, not frozen.",
                worst.workflow_id, worst.workflow_name, s.name,
            ),
        )
    } else {
        let named: Vec<String> = s
            .stalled
            .iter()
            .take(NAMED_STALLS)
            .map(|w| {
                format!(
                    "{} ({}, {})",
                    w.workflow_id,
                    w.workflow_name,
                    human(secs_to_ns(w.idle_seconds))
                )
            })
            .collect();
        let more = count.saturating_sub(named.len() as u64);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        (
            format!(
                "{count} workflows stalled in {}, longest {} for {worst_for}: the machine was running",
                s.name, worst.workflow_id
            ),
            format!(
                "{count} open workflows of source {} have made no progress for longer than its \
                 stall_after while this machine kept running: the app is stuck, not frozen. \
                 Longest first: {}{more}.",
                s.name,
                named.join(", "),
            ),
        )
    };
    out.push(Condition {
        rule: RuleKind::WorkflowStalled,
        labels: labels(&[("source", &s.name)]),
        instance: None,
        count: 1,
        title,
        text,
        started_at_ns: 0,
    });
}

/// `queue "mail"`, or `the unnamed queue` for jobs whose queue column is empty (a
/// queue table without queue names, DBOS workflows not started on a queue).
fn queue_phrase(queue: &str) -> String {
    if queue.is_empty() {
        "the unnamed queue".into()
    } else {
        format!("queue {queue:?}")
    }
}

fn stuck(rule: &RuleConfig, s: &SourceStatus, out: &mut Vec<Condition>) {
    for q in s.stuck.iter().filter(|q| q.count >= rule.threshold_count()) {
        out.push(Condition {
            rule: rule.kind,
            labels: labels(&[("source", &s.name), ("queue", &q.queue)]),
            instance: None,
            count: 1,
            title: format!(
                "{} job(s) stuck past their lease in {}, {}",
                q.count,
                s.name,
                queue_phrase(&q.queue)
            ),
            text: format!(
                "{} running job(s) in {} of source {} are past their lease: the worker \
                 that claimed them stopped (machine auto-stopped, killed, or frozen) and nobody \
                 has picked them up.",
                q.count,
                queue_phrase(&q.queue),
                s.name
            ),
            started_at_ns: 0,
        });
    }
}

fn queue_age(rule: &RuleConfig, s: &SourceStatus, now_ns: i64, out: &mut Vec<Condition>) {
    let limit = rule.threshold_duration().as_nanos() as i64;
    let mut oldest: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for w in &s.waiting {
        let slot = oldest
            .entry(&w.queue)
            .or_insert((w.oldest_unix_ns, &w.status));
        if w.oldest_unix_ns < slot.0 {
            *slot = (w.oldest_unix_ns, &w.status);
        }
    }
    for (queue, (since, status)) in oldest {
        let age = now_ns - since;
        if age < limit {
            continue;
        }
        out.push(Condition {
            rule: rule.kind,
            labels: labels(&[("source", &s.name), ("queue", queue)]),
            instance: None,
            count: 1,
            title: format!("{}: oldest {status} job has waited {}", s.name, human(age)),
            text: format!(
                "The oldest {status} job in {} of source {} has waited {} (since \
                 {}): no worker is taking jobs from this queue.",
                queue_phrase(queue),
                s.name,
                human(age),
                rfc3339(since)
            ),
            started_at_ns: since,
        });
    }
}

fn dead_letters(
    rule: &RuleConfig,
    facts: &Facts,
    memory: &mut RuleMemory,
    out: &mut Vec<Condition>,
) {
    for s in &facts.status.sources {
        for d in &s.dead_letters {
            // Counted from 0 at the sidecar's start (its first poll reports none as new).
            let seen = memory
                .dead_letters
                .entry((s.name.clone(), d.queue.clone()))
                .or_insert(0);
            let new = d.new_since_start.saturating_sub(*seen);
            if new < rule.threshold_count() {
                continue; // below the threshold they add up until they reach it
            }
            *seen = d.new_since_start;
            out.push(Condition {
                rule: rule.kind,
                labels: labels(&[("source", &s.name), ("queue", &d.queue)]),
                instance: Some(format!("{}:{}", facts.now_ns, d.new_since_start)),
                count: new,
                title: format!("{}: {new} new dead letter(s)", s.name),
                text: format!(
                    "{new} job(s) in {} of source {} were given up on and became dead \
                     letters ({} dead letters there now). They will not run again on their own.",
                    queue_phrase(&d.queue),
                    s.name,
                    d.current
                ),
                started_at_ns: facts.now_ns,
            });
        }
    }
}

fn cost(rule: &RuleConfig, s: &SourceStatus, out: &mut Vec<Condition>) {
    let Some(c) = &s.cost else { return };
    if c.cap_usd <= 0.0 {
        return;
    }
    let percent = c.today_usd / c.cap_usd * 100.0;
    for level in rule.levels.iter().filter(|l| percent >= **l as f64) {
        let level_text = level.to_string();
        out.push(Condition {
            rule: rule.kind,
            labels: labels(&[("source", &s.name), ("level", &level_text), ("day", &c.day)]),
            instance: None,
            count: 1,
            title: format!(
                "{}: spend reached {level}% of the daily cap (${:.2} of ${:.2})",
                s.name, c.today_usd, c.cap_usd
            ),
            text: format!(
                "Source {} has spent ${:.2} on cost day {}, {:.0}% of its ${:.2} cap.",
                s.name, c.today_usd, c.day, percent, c.cap_usd
            ),
            started_at_ns: 0,
        });
    }
}

fn source_down(rule: &RuleConfig, s: &SourceStatus, now_ns: i64, out: &mut Vec<Condition>) {
    let Some(since) = s.down_since_unix_ns else {
        return;
    };
    let down_for = now_ns - since;
    if down_for < rule.threshold_duration().as_nanos() as i64 {
        return;
    }
    out.push(Condition {
        rule: rule.kind,
        labels: labels(&[("source", &s.name)]),
        instance: None,
        count: 1,
        title: format!("{}: source down for {}", s.name, human(down_for)),
        text: format!(
            "Source {} ({}) has failed every poll since {}: {}. Its jobs are not being watched.",
            s.name,
            s.kind,
            rfc3339(since),
            s.last_error.as_deref().unwrap_or("no error recorded"),
        ),
        started_at_ns: since,
    });
}

fn recovery_loop(rule: &RuleConfig, s: &SourceStatus, now_ns: i64, out: &mut Vec<Condition>) {
    let Some(attempts) = s.recovery_attempts_max else {
        return;
    };
    if attempts < rule.threshold_count() as i64 {
        return;
    }
    out.push(Condition {
        rule: rule.kind,
        labels: labels(&[("source", &s.name)]),
        instance: None,
        count: 1,
        title: format!("{}: DBOS recovered a workflow {attempts} times", s.name),
        text: format!(
            "A workflow of source {} has been recovered {attempts} times: the app is crashing \
             during start-up (out of memory, a bad deploy) and DBOS retries it at every boot \
             until MAX_RECOVERY_ATTEMPTS_EXCEEDED.",
            s.name
        ),
        started_at_ns: now_ns,
    });
}

fn blocked(s: &SourceStatus, now_ns: i64, out: &mut Vec<Condition>) {
    for b in &s.blocked_queues {
        out.push(Condition {
            rule: RuleKind::QueueBlocked,
            labels: labels(&[("source", &s.name), ("queue", &b.queue)]),
            instance: None,
            count: 1,
            title: format!(
                "{}: queue {} blocked by workflow {}",
                s.name, b.queue, b.blocking_workflow_id
            ),
            text: format!(
                "Queue {:?} of source {} is held by workflow {} ({}), idle for {}, while {} \
                 workflow(s) wait behind it.",
                b.queue,
                s.name,
                b.blocking_workflow_id,
                b.blocking_workflow_name,
                human(secs_to_ns(b.idle_seconds)),
                b.waiting
            ),
            started_at_ns: now_ns - secs_to_ns(b.idle_seconds),
        });
    }
}

fn outbox_backlog(rule: &RuleConfig, facts: &Facts, out: &mut Vec<Condition>) {
    let Some(oldest) = facts.outbox.oldest_created_ns else {
        return;
    };
    let age = facts.now_ns - oldest;
    if age < rule.threshold_duration().as_nanos() as i64 {
        return;
    }
    out.push(Condition {
        rule: rule.kind,
        labels: BTreeMap::new(),
        instance: None,
        count: 1,
        title: format!(
            "{} alert notification(s) undelivered for {}",
            facts.outbox.pending,
            human(age)
        ),
        text: format!(
            "{} notification(s) are waiting in the outbox; the oldest since {}. A channel is \
             failing: see /api/v1/alerts for the last error of each.",
            facts.outbox.pending,
            rfc3339(oldest)
        ),
        started_at_ns: oldest,
    });
}

fn state_db(facts: &Facts, out: &mut Vec<Condition>) {
    let Some(error) = &facts.status.state_db_error else {
        return;
    };
    out.push(Condition {
        rule: RuleKind::StateDb,
        labels: BTreeMap::new(),
        instance: None,
        count: 1,
        title: "state database needs attention".into(),
        text: format!(
            "stallwatch's state database: {error}. Freeze detection goes on; see \
             /api/v1/status for what is held in memory or was lost."
        ),
        started_at_ns: facts.now_ns,
    });
}

fn secs_to_ns(seconds: f64) -> i64 {
    (seconds * 1e9) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NANOS_PER_SEC;
    use crate::freeze::ChannelEstimate;
    use crate::status::{CostStatus, DeadLetterStatus, QueueAge, QueueCount};

    const S: i64 = NANOS_PER_SEC;
    const NOW: i64 = 1_800_000_000 * S;

    fn source(name: &str) -> SourceStatus {
        SourceStatus {
            name: name.into(),
            kind: "queue_table",
            up: true,
            ..Default::default()
        }
    }

    fn run(
        status: &LiveStatus,
        freezes: &[FreezeEvent],
        memory: &mut RuleMemory,
    ) -> Vec<Condition> {
        let facts = Facts {
            now_ns: NOW,
            freezes,
            status,
            outbox: OutboxStats::default(),
        };
        evaluate(&AlertsConfig::default(), &facts, memory)
    }

    /// The alert engine sleeps until [`next_due`]: each time rule holds exactly then, not
    /// a nanosecond before.
    #[test]
    fn a_time_rule_holds_from_its_due_time_on() {
        let config = AlertsConfig::default();
        let mut status = LiveStatus::default();
        let mut s = source("lab");
        s.waiting = vec![QueueAge {
            queue: "mail".into(),
            status: "PENDING".into(),
            oldest_unix_ns: NOW - 3 * S,
        }];
        s.down_since_unix_ns = Some(NOW - 2 * S);
        status.sources.push(s);
        let outbox = OutboxStats {
            pending: 1,
            oldest_created_ns: Some(NOW - S),
        };
        let at = |now_ns| Facts {
            now_ns,
            freezes: &[],
            status: &status,
            outbox,
        };
        let mut due = next_due(&config, &at(NOW)).expect("three rules wait for time");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let holding = |now| -> Vec<RuleKind> {
                let mut memory = RuleMemory::default();
                evaluate(&config, &at(now), &mut memory)
                    .into_iter()
                    .map(|c| c.rule)
                    .collect()
            };
            let before = holding(due - 1);
            let after = holding(due);
            let new: Vec<_> = after.iter().filter(|r| !before.contains(r)).collect();
            assert_eq!(new.len(), 1, "at {due}: {before:?} -> {after:?}");
            seen.push(*new[0]);
            match next_due(&config, &at(due)) {
                Some(next) => {
                    assert!(next > due);
                    due = next;
                }
                None => break,
            }
        }
        seen.sort_by_key(|r| r.as_str());
        assert_eq!(
            seen,
            [
                RuleKind::OutboxBacklog,
                RuleKind::QueueAge,
                RuleKind::SourceDown
            ]
        );
        assert_eq!(next_due(&config, &at(due)), None, "all three hold now");
    }

    #[test]
    fn freezes_below_the_threshold_and_steps_below_theirs_stay_quiet() {
        let freeze = |kind, secs: i64| FreezeEvent {
            kind,
            started_at_ns: NOW - 200 * S,
            duration_ns: secs * S,
            channels: vec![ChannelEstimate {
                channel: "rtc".into(),
                estimate_ns: secs * S,
            }],
        };
        let events = [
            freeze(FreezeKind::VmPause, 6480),
            freeze(FreezeKind::ProcessStall, 3),
            freeze(FreezeKind::WallClockStep, -60),
            freeze(FreezeKind::WallClockStep, 2),
        ];
        let c = run(&LiveStatus::default(), &events, &mut RuleMemory::default());
        assert_eq!(c.len(), 2, "{c:#?}");
        assert_eq!(c[0].rule, RuleKind::Freeze);
        assert_eq!(
            c[0].title,
            "The VM froze for 1h 48m: the machine stopped, not the app"
        );
        assert!(c[0].text.contains("rtc saw 1h 48m"), "{}", c[0].text);
        assert_eq!(c[1].rule, RuleKind::WallClockStep);
        assert!(c[1].title.contains("backward by 1m"), "{}", c[1].title);
        assert_ne!(c[0].fingerprint(), c[1].fingerprint());
    }

    #[test]
    fn cost_levels_hold_once_crossed_and_carry_the_day() {
        let mut status = LiveStatus::default();
        let mut s = source("lab");
        s.cost = Some(CostStatus {
            today_usd: 8.5,
            cap_usd: 10.0,
            day: "2026-11-23".into(),
        });
        status.sources.push(s);
        let c = run(&status, &[], &mut RuleMemory::default());
        let levels: Vec<&str> = c.iter().map(|c| c.labels["level"].as_str()).collect();
        assert_eq!(levels, ["50", "80"]);
        assert_eq!(
            c[0].fingerprint(),
            "cost_cap{day=2026-11-23,level=50,source=lab}"
        );
    }

    #[test]
    fn a_source_is_down_only_after_the_threshold() {
        let mut status = LiveStatus::default();
        let mut s = source("app");
        s.down_since_unix_ns = Some(NOW - 299 * S);
        status.sources.push(s.clone());
        assert!(run(&status, &[], &mut RuleMemory::default()).is_empty());
        status.sources[0].down_since_unix_ns = Some(NOW - 300 * S);
        let c = run(&status, &[], &mut RuleMemory::default());
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].fingerprint(), "source_down{source=app}");
    }

    #[test]
    fn only_new_dead_letters_fire_and_stuck_and_waiting_queues_are_named() {
        let mut status = LiveStatus::default();
        let mut s = source("lab");
        s.dead_letters = vec![DeadLetterStatus {
            queue: "q".into(),
            current: 7,
            new_since_start: 0,
        }];
        s.stuck = vec![QueueCount {
            queue: "q".into(),
            count: 2,
        }];
        s.waiting = vec![QueueAge {
            queue: "q".into(),
            status: "PENDING".into(),
            oldest_unix_ns: NOW - 3600 * S,
        }];
        status.sources.push(s);
        let mut memory = RuleMemory::default();
        let c = run(&status, &[], &mut memory);
        let rules: Vec<RuleKind> = c.iter().map(|c| c.rule).collect();
        assert_eq!(rules, [RuleKind::StuckJobs, RuleKind::QueueAge]);
        status.sources[0].dead_letters[0].new_since_start = 2;
        let c = run(&status, &[], &mut memory);
        let dead: Vec<_> = c
            .iter()
            .filter(|c| c.rule == RuleKind::DeadLetters)
            .collect();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].title.contains("2 new dead letter"),
            "{}",
            dead[0].title
        );
        let again = run(&status, &[], &mut memory);
        assert!(again.iter().all(|c| c.rule != RuleKind::DeadLetters));
    }

    #[test]
    fn an_unnamed_queue_is_said_as_such_not_as_an_empty_string() {
        // Issue 19 item 4: `in queue ""` for a queue table without queue names.
        let mut status = LiveStatus::default();
        let mut s = source("lab");
        s.dead_letters = vec![DeadLetterStatus {
            queue: String::new(),
            current: 3,
            new_since_start: 0,
        }];
        s.stuck = vec![QueueCount {
            queue: String::new(),
            count: 2,
        }];
        s.waiting = vec![QueueAge {
            queue: String::new(),
            status: "PENDING".into(),
            oldest_unix_ns: NOW - 3600 * S,
        }];
        status.sources.push(s);
        let mut memory = RuleMemory::default();
        run(&status, &[], &mut memory);
        status.sources[0].dead_letters[0].new_since_start = 2;
        let c = run(&status, &[], &mut memory);
        assert_eq!(c.len(), 3, "{c:#?}");
        for c in &c {
            assert!(
                c.text.contains(" in the unnamed queue of source lab") && !c.text.contains("\"\""),
                "{}",
                c.text
            );
        }
    }

    #[test]
    fn stalls_are_one_alert_per_source_that_holds_while_any_is_stalled() {
        use crate::status::StalledWorkflow;
        let wf = |id: &str, idle: f64| StalledWorkflow {
            workflow_id: id.into(),
            workflow_name: "reply".into(),
            idle_seconds: idle,
        };
        let mut status = LiveStatus::default();
        let mut s = source("app");
        s.stalled_count = 5_000;
        s.stalled = (0..20)
            .map(|i| wf(&format!("w{i}"), 7200.0 - i as f64))
            .collect();
        status.sources.push(s);
        let c = run(&status, &[], &mut RuleMemory::default());
        assert_eq!(c.len(), 1, "{c:#?}");
        assert_eq!(c[0].fingerprint(), "workflow_stalled{source=app}");
        assert_eq!(
            c[0].title,
            "5000 workflows stalled in app, longest w0 for 2h: the machine was running"
        );
        assert!(c[0].text.contains("and 4995 more"), "{}", c[0].text);

        // Whichever workflows the list shows, the alert is the same one: nothing that
        // is still stalled resolves because another took its place on the list.
        status.sources[0].stalled = vec![wf("w7", 9000.0)];
        let again = run(&status, &[], &mut RuleMemory::default());
        assert_eq!(again[0].fingerprint(), c[0].fingerprint());

        status.sources[0].stalled_count = 1;
        let one = run(&status, &[], &mut RuleMemory::default());
        assert_eq!(
            one[0].title,
            "Workflow w7 stalled for 2h 30m in app: the machine was running"
        );

        status.sources[0].stalled_count = 0;
        status.sources[0].stalled.clear();
        assert!(run(&status, &[], &mut RuleMemory::default()).is_empty());
    }
}
