//! `[alerts]` and `[[rule]]`: delivery settings and overrides of the built-in rules.
//!
//! Owns the names of the built-in rules and their defaults, so that zero config gives
//! sensible alerts. Validation errors are `(key, problem)` pairs like the sources'.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::channel::ChannelConfig;
use super::limits::{self, quoted, Range};
use super::value::HumanDuration;

/// How urgent an alert is; channels map it to their own priority scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        [Severity::Info, Severity::Warning, Severity::Critical]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// First retry waits up to this (full jitter), doubling per attempt.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry wait: a receiver back after an outage is used within five minutes.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Pending notifications kept; at ~1 KiB a row the outbox stays under ~20 MB of disk.
pub const DEFAULT_OUTBOX_MAX: usize = 20_000;
/// A reminder of a still-firing alert every four hours (Alertmanager's default).
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// A cleared condition must stay clear this long before the resolve goes out, so a
/// flapping source does not buzz a phone on every poll.
/// How long a new group of notifications collects before it is sent (Alertmanager's
/// `group_wait`): a burst of dead letters is one message, not thirty.
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
/// Between two sends of the same group (Alertmanager's `group_interval`).
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The longest a freeze or a clock step waits for company: it must leave within a second
/// of the freeze ending, and what the freeze caused shows up in the sources' first polls
/// after the wake (a poll that fell due while frozen runs at once).
pub const FREEZE_GROUP_WAIT: Duration = Duration::from_millis(900);
/// How long after a freeze ends the alerts it caused are folded into it.
pub const DEFAULT_FREEZE_SETTLE: Duration = Duration::from_secs(2 * 60);
/// Group by every label: each alert is its own group (Alertmanager's `...`).
pub const GROUP_BY_ALL: &str = "...";
pub const DEFAULT_RESOLVE_AFTER: Duration = Duration::from_secs(30);
/// Dead-man's switch ping period: healthchecks-style services expect about a minute.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);
/// Where each alert's runbook section lives.
pub const DEFAULT_RUNBOOK_BASE: &str =
    "https://github.com/stallwatch/stallwatch/blob/main/alerts/RUNBOOK.md";

/// The built-in rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleKind {
    Freeze,
    WallClockStep,
    WorkflowStalled,
    StuckJobs,
    QueueAge,
    DeadLetters,
    CostCap,
    SourceDown,
    RecoveryLoop,
    QueueBlocked,
    OutboxBacklog,
    StateDb,
}

/// What a rule's `threshold` is measured in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    None,
    Duration(Duration),
    Count(u64),
}

impl RuleKind {
    pub const ALL: [RuleKind; 12] = [
        RuleKind::Freeze,
        RuleKind::WallClockStep,
        RuleKind::WorkflowStalled,
        RuleKind::StuckJobs,
        RuleKind::QueueAge,
        RuleKind::DeadLetters,
        RuleKind::CostCap,
        RuleKind::SourceDown,
        RuleKind::RecoveryLoop,
        RuleKind::QueueBlocked,
        RuleKind::OutboxBacklog,
        RuleKind::StateDb,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Freeze => "freeze",
            RuleKind::WallClockStep => "wall_clock_step",
            RuleKind::WorkflowStalled => "workflow_stalled",
            RuleKind::StuckJobs => "stuck_jobs",
            RuleKind::QueueAge => "queue_age",
            RuleKind::DeadLetters => "dead_letters",
            RuleKind::CostCap => "cost_cap",
            RuleKind::SourceDown => "source_down",
            RuleKind::RecoveryLoop => "recovery_loop",
            RuleKind::QueueBlocked => "queue_blocked",
            RuleKind::OutboxBacklog => "outbox_backlog",
            RuleKind::StateDb => "state_db",
        }
    }

    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The section of alerts/RUNBOOK.md that tells the on-call person what to check.
    pub fn runbook_anchor(self) -> &'static str {
        match self {
            RuleKind::Freeze => "stallwatchfreezerecorded",
            RuleKind::WallClockStep => "stallwatchwallclockstep",
            RuleKind::WorkflowStalled => "stallwatchstalledworkflows",
            RuleKind::StuckJobs => "stallwatchstuckjobs",
            RuleKind::QueueAge => "stallwatchqueueoldestagehigh",
            RuleKind::DeadLetters => "stallwatchnewdeadletters",
            RuleKind::CostCap => "stallwatchcostcapnear",
            RuleKind::SourceDown => "stallwatchsourcedown",
            RuleKind::RecoveryLoop => "stallwatchdbosrecoveryloop",
            RuleKind::QueueBlocked => "stallwatchqueueblocked",
            RuleKind::OutboxBacklog => "stallwatchoutboxbacklog",
            RuleKind::StateDb => "stallwatchstatedberrors",
        }
    }

    /// A rule's `group_wait` when `[alerts]` says `wait`: a freeze or clock step waits
    /// [`FREEZE_GROUP_WAIT`] at most.
    pub fn group_wait(self, wait: Duration) -> Duration {
        match self {
            RuleKind::Freeze | RuleKind::WallClockStep => wait.min(FREEZE_GROUP_WAIT),
            _ => wait,
        }
    }

    /// A rule's `group_interval` when `[alerts]` says `interval`: a second freeze never
    /// waits for the first one's interval.
    pub fn group_interval(self, interval: Duration) -> Duration {
        match self {
            RuleKind::Freeze | RuleKind::WallClockStep => Duration::ZERO,
            _ => interval,
        }
    }

    /// Rules whose alerts a freeze can cause: the app's jobs and workflows, which were
    /// frozen with the machine, and a source whose connection the wake dropped.
    pub fn freeze_consequence(self) -> bool {
        matches!(
            self,
            RuleKind::WorkflowStalled
                | RuleKind::StuckJobs
                | RuleKind::QueueAge
                | RuleKind::SourceDown
                | RuleKind::RecoveryLoop
                | RuleKind::QueueBlocked
        )
    }

    /// One-shot rules fire once per event and never repeat or resolve.
    pub fn one_shot(self) -> bool {
        matches!(
            self,
            RuleKind::Freeze | RuleKind::WallClockStep | RuleKind::DeadLetters | RuleKind::CostCap
        )
    }

    /// The default threshold, which also fixes the unit `threshold` is written in.
    pub fn default_threshold(self) -> Threshold {
        let secs = |s| Threshold::Duration(Duration::from_secs(s));
        match self {
            // A phone buzz for a freeze long enough to hurt a job, not a scheduler hiccup.
            RuleKind::Freeze => secs(10),
            RuleKind::WallClockStep => secs(10),
            RuleKind::StuckJobs | RuleKind::DeadLetters => Threshold::Count(1),
            RuleKind::QueueAge => secs(15 * 60),
            RuleKind::SourceDown => secs(5 * 60),
            // DBOS gives up at 100 attempts by default; three boots in a row is a loop.
            RuleKind::RecoveryLoop => Threshold::Count(3),
            RuleKind::OutboxBacklog => secs(15 * 60),
            RuleKind::WorkflowStalled
            | RuleKind::CostCap
            | RuleKind::QueueBlocked
            | RuleKind::StateDb => Threshold::None,
        }
    }

    pub fn default_severity(self) -> Severity {
        match self {
            RuleKind::Freeze
            | RuleKind::StuckJobs
            | RuleKind::RecoveryLoop
            | RuleKind::QueueBlocked
            | RuleKind::StateDb => Severity::Critical,
            RuleKind::WallClockStep
            | RuleKind::WorkflowStalled
            | RuleKind::QueueAge
            | RuleKind::DeadLetters
            | RuleKind::CostCap
            | RuleKind::SourceDown
            | RuleKind::OutboxBacklog => Severity::Warning,
        }
    }
}

/// One rule with its settings, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub kind: RuleKind,
    pub enabled: bool,
    pub threshold: Threshold,
    /// `cost_cap` only: percentages of the cap, ascending.
    pub levels: Vec<u32>,
    /// Channel names; empty means every channel.
    pub channels: Vec<String>,
    pub repeat_interval: Duration,
    pub resolve_after: Duration,
    pub hold: Duration,
    pub severity: Severity,
    /// Held this long for company before a new group is sent; 0 sends each alone, at once.
    pub group_wait: Duration,
    /// At least this long between two sends of one group.
    pub group_interval: Duration,
    /// The labels that, with the rule and the channel, make a group; [`GROUP_BY_ALL`]
    /// makes each alert its own group.
    pub group_by: Vec<String>,
}

impl RuleConfig {
    pub fn default_for(kind: RuleKind) -> RuleConfig {
        RuleConfig {
            kind,
            enabled: true,
            threshold: kind.default_threshold(),
            levels: if kind == RuleKind::CostCap {
                vec![50, 80, 100]
            } else {
                Vec::new()
            },
            channels: Vec::new(),
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            resolve_after: DEFAULT_RESOLVE_AFTER,
            hold: Duration::ZERO,
            severity: kind.default_severity(),
            group_wait: kind.group_wait(DEFAULT_GROUP_WAIT),
            group_interval: kind.group_interval(DEFAULT_GROUP_INTERVAL),
            group_by: vec!["source".to_string()],
        }
    }

    /// Whether this rule's notifications are grouped at all.
    pub fn groups(&self) -> bool {
        !self.group_wait.is_zero()
    }

    /// The threshold as a duration (0 when the rule has none).
    pub fn threshold_duration(&self) -> Duration {
        match self.threshold {
            Threshold::Duration(d) => d,
            _ => Duration::ZERO,
        }
    }

    /// The threshold as a count (1 when the rule has none).
    pub fn threshold_count(&self) -> u64 {
        match self.threshold {
            Threshold::Count(n) => n,
            _ => 1,
        }
    }
}

/// Delivery settings and every rule (all built-ins, overridden by `[[rule]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub outbox_max: usize,
    pub heartbeat_url: Option<String>,
    pub heartbeat_interval: Duration,
    pub runbook_base: String,
    /// How long after a freeze ends the alerts it caused fold into its notification.
    pub freeze_settle: Duration,
    pub rules: Vec<RuleConfig>,
    pub channels: Vec<ChannelConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            outbox_max: DEFAULT_OUTBOX_MAX,
            heartbeat_url: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            runbook_base: DEFAULT_RUNBOOK_BASE.to_string(),
            freeze_settle: DEFAULT_FREEZE_SETTLE,
            rules: RuleKind::ALL
                .into_iter()
                .map(RuleConfig::default_for)
                .collect(),
            channels: Vec::new(),
        }
    }
}

impl AlertsConfig {
    pub fn rule(&self, kind: RuleKind) -> &RuleConfig {
        self.rules
            .iter()
            .find(|r| r.kind == kind)
            .expect("every rule kind has a config")
    }
}

// ---- the file as written -------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    backoff_initial: Option<HumanDuration>,
    backoff_max: Option<HumanDuration>,
    outbox_max: Option<usize>,
    heartbeat_url: Option<String>,
    heartbeat_interval: Option<HumanDuration>,
    runbook_base: Option<String>,
    group_wait: Option<HumanDuration>,
    group_interval: Option<HumanDuration>,
    group_by: Option<Vec<String>>,
    freeze_settle: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    rule: String,
    enabled: Option<bool>,
    threshold: Option<toml::Value>,
    levels: Option<Vec<u32>>,
    channels: Option<Vec<String>>,
    repeat_interval: Option<HumanDuration>,
    resolve_after: Option<HumanDuration>,
    #[serde(rename = "for")]
    hold: Option<HumanDuration>,
    severity: Option<String>,
    group_wait: Option<HumanDuration>,
    group_interval: Option<HumanDuration>,
    group_by: Option<Vec<String>>,
}

type Problem = (String, String);

/// Builds the alerts config from `[alerts]`, `[[rule]]` and the validated channels.
pub(super) fn validate(
    raw: RawAlerts,
    rules: Vec<RawRule>,
    channels: Vec<ChannelConfig>,
) -> Result<AlertsConfig, Problem> {
    let mut config = AlertsConfig::default();
    let bad = |key: &str, problem: &str| Err((key.to_string(), problem.to_string()));
    if let Some(d) = ranged(
        "alerts.backoff_initial",
        raw.backoff_initial,
        limits::ALERTS_BACKOFF_INITIAL,
    )? {
        config.backoff_initial = d;
    }
    if let Some(d) = ranged(
        "alerts.backoff_max",
        raw.backoff_max,
        limits::ALERTS_BACKOFF_MAX,
    )? {
        if d < config.backoff_initial {
            return bad(
                "alerts.backoff_max",
                "must be at least alerts.backoff_initial",
            );
        }
        config.backoff_max = d;
    }
    if let Some(n) = raw.outbox_max {
        config.outbox_max = limits::ALERTS_OUTBOX_MAX
            .check(n)
            .map_err(|p| ("alerts.outbox_max".to_string(), p))?;
    }
    if let Some(url) = raw.heartbeat_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return bad("alerts.heartbeat_url", "must be an http:// or https:// URL");
        }
        config.heartbeat_url = Some(url);
    }
    if let Some(d) = ranged(
        "alerts.heartbeat_interval",
        raw.heartbeat_interval,
        limits::ALERTS_HEARTBEAT_INTERVAL,
    )? {
        config.heartbeat_interval = d;
    }
    if let Some(base) = raw.runbook_base {
        config.runbook_base = base.trim_end_matches('#').to_string();
    }
    if let Some(d) = ranged(
        "alerts.freeze_settle",
        raw.freeze_settle,
        limits::FREEZE_SETTLE,
    )? {
        config.freeze_settle = d;
    }
    let wait = ranged("alerts.group_wait", raw.group_wait, limits::GROUP_WAIT)?;
    let interval = ranged(
        "alerts.group_interval",
        raw.group_interval,
        limits::GROUP_INTERVAL,
    )?;
    let group_by = raw
        .group_by
        .map(|labels| check_group_by("alerts.group_by", labels))
        .transpose()?;
    for rule in &mut config.rules {
        if let Some(w) = wait {
            rule.group_wait = rule.kind.group_wait(w);
        }
        if let Some(i) = interval {
            rule.group_interval = rule.kind.group_interval(i);
        }
        if let Some(labels) = &group_by {
            rule.group_by = labels.clone();
        }
    }

    let mut seen = Vec::new();
    for (i, raw) in rules.into_iter().enumerate() {
        let key = |k: &str| format!("rule[{i}].{k}");
        let Some(kind) = RuleKind::parse(&raw.rule) else {
            let names: Vec<_> = RuleKind::ALL.iter().map(|r| r.as_str()).collect();
            return Err((
                key("rule"),
                format!(
                    "unknown rule {}; expected one of {}",
                    quoted(&raw.rule),
                    names.join(", ")
                ),
            ));
        };
        if seen.contains(&kind) {
            return Err((
                key("rule"),
                format!("repeats {:?}; write one [[rule]] per rule", raw.rule),
            ));
        }
        seen.push(kind);
        let slot = config
            .rules
            .iter_mut()
            .find(|r| r.kind == kind)
            .expect("every rule kind has a config");
        if let Some(enabled) = raw.enabled {
            slot.enabled = enabled;
        }
        if let Some(value) = raw.threshold {
            slot.threshold = parse_threshold(kind, &value).map_err(|p| (key("threshold"), p))?;
        }
        if let Some(levels) = raw.levels {
            if kind != RuleKind::CostCap {
                return Err((key("levels"), "applies only to the cost_cap rule".into()));
            }
            let ascending = levels.windows(2).all(|w| w[0] < w[1]);
            let in_range = levels
                .iter()
                .all(|l| limits::RULE_LEVEL_PERCENT.check(*l).is_ok());
            if levels.is_empty() || !ascending || !in_range {
                return Err((
                    key("levels"),
                    "must be ascending percentages between 1 and 1000, like [50, 80, 100]".into(),
                ));
            }
            slot.levels = levels;
        }
        if let Some(names) = raw.channels {
            for (j, name) in names.iter().enumerate() {
                if !channels.iter().any(|c| &c.name == name) {
                    return Err((
                        format!("rule[{i}].channels[{j}]"),
                        format!(
                            "names channel {}, which no [[channel]] defines",
                            quoted(name)
                        ),
                    ));
                }
            }
            slot.channels = names;
        }
        if let Some(d) = ranged(
            &key("repeat_interval"),
            raw.repeat_interval,
            limits::RULE_REPEAT_INTERVAL,
        )? {
            slot.repeat_interval = d;
        }
        if let Some(d) = ranged(
            &key("resolve_after"),
            raw.resolve_after,
            limits::RULE_RESOLVE_AFTER,
        )? {
            slot.resolve_after = d;
        }
        if let Some(d) = ranged(&key("for"), raw.hold, limits::RULE_FOR)? {
            slot.hold = d;
        }
        if let Some(d) = ranged(&key("group_wait"), raw.group_wait, limits::GROUP_WAIT)? {
            slot.group_wait = d;
        }
        if let Some(d) = ranged(
            &key("group_interval"),
            raw.group_interval,
            limits::GROUP_INTERVAL,
        )? {
            slot.group_interval = d;
        }
        if let Some(labels) = raw.group_by {
            slot.group_by = check_group_by(&key("group_by"), labels)?;
        }
        if let Some(s) = raw.severity {
            slot.severity = Severity::parse(&s).ok_or_else(|| {
                (
                    key("severity"),
                    format!("must be one of info, warning, critical, not {}", quoted(&s)),
                )
            })?;
        }
    }
    config.channels = channels;
    Ok(config)
}

/// An optional duration checked against its key's range.
/// Label names to group by: known label names, or `["..."]` alone.
fn check_group_by(key: &str, labels: Vec<String>) -> Result<Vec<String>, Problem> {
    const LABELS: [&str; 5] = ["source", "queue", "kind", "level", "day"];
    if labels.iter().any(|l| l == GROUP_BY_ALL) {
        if labels.len() > 1 {
            return Err((
                key.to_string(),
                "\"...\" (each alert alone) cannot be combined with label names".into(),
            ));
        }
        return Ok(labels);
    }
    for l in &labels {
        if !LABELS.contains(&l.as_str()) {
            return Err((
                key.to_string(),
                format!(
                    "names label {}; expected some of {} or [\"...\"]",
                    quoted(l),
                    LABELS.join(", ")
                ),
            ));
        }
    }
    Ok(labels)
}

fn ranged(
    key: &str,
    value: Option<HumanDuration>,
    range: Range<Duration>,
) -> Result<Option<Duration>, Problem> {
    value
        .map(|HumanDuration(d)| range.check(d).map_err(|p| (key.to_string(), p)))
        .transpose()
}

fn parse_threshold(kind: RuleKind, value: &toml::Value) -> Result<Threshold, String> {
    match (kind.default_threshold(), value) {
        (Threshold::None, _) => Err(format!(
            "does not apply to the {} rule (it has no threshold)",
            kind.as_str()
        )),
        (Threshold::Duration(_), toml::Value::String(s)) => humantime::parse_duration(s.trim())
            .map_err(|_| {
                format!(
                    "must be a duration like \"10s\" or \"5m\", not {}",
                    quoted(s)
                )
            })
            .and_then(|d| limits::RULE_THRESHOLD_DURATION.check(d))
            .map(Threshold::Duration),
        (Threshold::Duration(_), _) => Err(format!(
            "must be a duration like \"10s\" for the {} rule",
            kind.as_str()
        )),
        (Threshold::Count(_), toml::Value::Integer(n)) if *n >= 1 => limits::RULE_THRESHOLD_COUNT
            .check(*n as u64)
            .map(Threshold::Count),
        (Threshold::Count(_), _) => Err(format!(
            "must be a whole number of at least 1 for the {} rule",
            kind.as_str()
        )),
    }
}
