//! Configuration: the TOML file, `${VAR}` expansion, human durations and validation.
//!
//! Owns turning a file (or nothing) into a validated [`Config`]. Every error a user can
//! cause becomes one [`ConfigError`] sentence naming the file, the key and the problem;
//! the binary maps it to exit code 2. Does not open databases, sockets or clocks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod alerts;
pub mod channel;
pub mod limits;
pub mod otlp;
pub mod postgres_url;
pub mod source;
pub mod value;

pub use alerts::{AlertsConfig, RuleConfig, RuleKind};
pub use channel::ChannelConfig;
pub use limits::{clip, clip_words, quoted, Range};
pub use source::{SourceConfig, SourceDetail, SourceKind};
use value::HumanDuration;
pub use value::{redact_url, DURATION_LIKE};

/// Default listen address: the port docs/design.md fixes, in the exporters' 9100–9999 range
/// (that range of the Prometheus default-port allocations list is fully taken, so no
/// number in it is unclaimed); all interfaces so a Prometheus on another host can scrape it.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9847";
/// Default tick: a stall's start is known to within a tick, so 50 ms keeps a stall's
/// duration within the 50 ms target (benches/idle.sh); 20 wakes a second cost about
/// 0.07 % of a core on a Firecracker VM, most of it the timer wake itself.
pub const DEFAULT_TICK: Duration = Duration::from_millis(50);
/// Overruns shorter than this only feed the histogram: scheduler noise on a busy
/// 2-core VM reaches hundreds of milliseconds, never seconds.
pub const DEFAULT_FREEZE_MIN: Duration = Duration::from_secs(2);
/// A change of REALTIME − MONOTONIC larger than this between ticks is a step, not drift
/// (NTP slews at most 500 ppm, i.e. 0.025 ms per 50 ms tick).
pub const DEFAULT_WALL_STEP: Duration = Duration::from_secs(1);
/// How often network references (SNTP, HTTP Date) are asked: often enough to bound a
/// pause's start, rarely enough to be polite to a shared server.
pub const DEFAULT_REFERENCE_INTERVAL: Duration = Duration::from_secs(10);

/// The validated configuration the sidecar runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub freeze: FreezeConfig,
    pub sources: Vec<SourceConfig>,
    pub alerts: AlertsConfig,
    /// `[otlp]`: where traces go; `None` exports none.
    pub otlp: Option<otlp::OtlpConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FreezeConfig {
    pub tick: Duration,
    pub min: Duration,
    pub wall_step: Duration,
    pub reference_interval: Duration,
    pub references: Vec<ReferenceSpec>,
    /// What a forward wall-clock step that nothing else explains is.
    pub forward_steps: ForwardSteps,
    /// The references are the default (not written in the file): the sidecar then uses
    /// the ones the machine has (`freeze::references::discover`: the RTC, host PTP
    /// clocks) instead of reporting an absent RTC down forever.
    pub references_defaulted: bool,
}

/// How a forward step of REALTIME − MONOTONIC is judged (`freeze.forward_steps`). The
/// rule behind `auto` is in ARCHITECTURE.md ("Forward steps").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ForwardSteps {
    /// Lost time (a `vm_pause` seen by `wall_step`) unless a reference already counted
    /// it, the step undoes measured drift or a reference's offset, or it is within the
    /// kernel's own error bound for the clock: the safe default on VMs that are
    /// snapshotted and restored (Firecracker, Fly).
    #[default]
    Auto,
    /// Every forward step not already counted by a reference is lost time.
    LostTime,
    /// No forward step is lost time (every step is a `wall_clock_step`): for machines
    /// whose clock is set late at boot with stallwatch already running.
    ClockCorrection,
}

impl ForwardSteps {
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardSteps::Auto => "auto",
            ForwardSteps::LostTime => "lost_time",
            ForwardSteps::ClockCorrection => "clock_correction",
        }
    }
}

/// A clock that keeps running while this machine is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceSpec {
    /// `/sys/class/rtc/rtc0/since_epoch` (1 s resolution).
    Rtc,
    /// A PTP hardware clock, e.g. `/dev/ptp0`.
    Ptp(PathBuf),
    /// An SNTP server, `HOST:PORT`.
    Sntp(String),
    /// The `Date` header of an HTTP(S) URL (1 s resolution).
    HttpDate(String),
}

impl ReferenceSpec {
    /// The label value used in metrics and events. URLs lose their query and userinfo
    /// so a token in them never reaches a label or a log.
    pub fn name(&self) -> String {
        match self {
            ReferenceSpec::Rtc => "rtc".to_string(),
            ReferenceSpec::Ptp(p) => format!("ptp:{}", p.display()),
            ReferenceSpec::Sntp(hp) => format!("sntp:{hp}"),
            ReferenceSpec::HttpDate(url) => format!("http_date:{}", redact_url(url)),
        }
    }

    /// Network references are read by async tasks every `reference_interval`; local
    /// ones (RTC, PTP) on every tick.
    pub fn is_network(&self) -> bool {
        matches!(self, ReferenceSpec::Sntp(_) | ReferenceSpec::HttpDate(_))
    }

    fn parse(text: &str) -> Result<Self, String> {
        if text == "rtc" {
            return Ok(ReferenceSpec::Rtc);
        }
        if let Some(path) = text.strip_prefix("ptp:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{} needs an absolute device path, like \"ptp:/dev/ptp0\"",
                    quoted(text)
                ));
            }
            return Ok(ReferenceSpec::Ptp(PathBuf::from(path)));
        }
        if let Some(hp) = text.strip_prefix("sntp:") {
            let port_ok = hp
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "{} needs HOST:PORT, like \"sntp:127.0.0.1:123\"",
                    quoted(text)
                ));
            }
            return Ok(ReferenceSpec::Sntp(hp.to_string()));
        }
        if let Some(url) = text.strip_prefix("http_date:") {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{} needs an http:// or https:// URL",
                    quoted(&redact_url(text))
                ));
            }
            return Ok(ReferenceSpec::HttpDate(url.to_string()));
        }
        Err(format!(
            "{} is not a reference; use \"rtc\", \"ptp:/dev/ptpN\", \"sntp:HOST:PORT\" or \"http_date:URL\"",
            quoted(&redact_url(text))
        ))
    }
}

/// A user-caused configuration problem: one sentence, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// `{key} must be …, not …`; a problem that is a statement of its own ("unknown source
    /// kind …") follows the key after a colon.
    #[error("config file {path}: {key}{}", key_problem(problem))]
    Key {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

fn key_problem(problem: &str) -> String {
    if problem.starts_with("unknown ") {
        format!(": {problem}")
    } else {
        format!(" {problem}")
    }
}

// ---- the file as written -------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    freeze: RawFreeze,
    #[serde(default)]
    source: Vec<source::RawSource>,
    #[serde(default)]
    alerts: alerts::RawAlerts,
    #[serde(default)]
    channel: Vec<channel::RawChannel>,
    #[serde(default)]
    rule: Vec<alerts::RawRule>,
    otlp: Option<otlp::RawOtlp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFreeze {
    tick: Option<HumanDuration>,
    min: Option<HumanDuration>,
    wall_step: Option<HumanDuration>,
    reference_interval: Option<HumanDuration>,
    references: Option<Vec<String>>,
    forward_steps: Option<ForwardSteps>,
}

impl Config {
    /// The configuration `stallwatch run` uses without a file: freeze detector only.
    pub fn default_with(data_dir: PathBuf) -> Config {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            data_dir,
            log_format: LogFormat::Text,
            freeze: FreezeConfig {
                tick: DEFAULT_TICK,
                min: DEFAULT_FREEZE_MIN,
                wall_step: DEFAULT_WALL_STEP,
                reference_interval: DEFAULT_REFERENCE_INTERVAL,
                references: vec![ReferenceSpec::Rtc],
                forward_steps: ForwardSteps::Auto,
                references_defaulted: true,
            },
            sources: Vec::new(),
            alerts: AlertsConfig::default(),
            otlp: None,
        }
    }

    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string().to_lowercase(),
        })?;
        Config::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses config text; `env` resolves `${VAR}` (injected so tests need no process env).
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            reason: syntax_reason(text, &e),
        })?;
        expand_env(&mut value, "", env).map_err(|(key, problem)| ConfigError::Key {
            path: path.to_path_buf(),
            key: clip(&key).into_owned(),
            problem,
        })?;
        let written = value.clone();
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let at = value_at(&written, e.path());
            let inner = e.into_inner().to_string();
            let (key, problem) =
                describe_serde_error(&key, &inner, at, &|| enum_variants(&written, &key));
            ConfigError::Key {
                path: path.to_path_buf(),
                key: clip(&key).into_owned(),
                problem: clip_words(&problem),
            }
        })?;
        Config::validate(path, raw)
    }

    fn validate(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Key {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        let mut config =
            Config::default_with(raw.data_dir.clone().unwrap_or_else(default_data_dir));
        if let Some(listen) = raw.listen {
            config.listen = listen.parse().map_err(|_| {
                bad(
                    "listen",
                    format!(
                        "must be IP:PORT like \"0.0.0.0:9847\", not {}",
                        quoted(&listen)
                    ),
                )
            })?;
        }
        if let Some(dir) = &raw.data_dir {
            if dir.as_os_str().is_empty() {
                return Err(bad("data_dir", "must not be empty".into()));
            }
        }
        if let Some(format) = raw.log_format {
            config.log_format = format;
        }
        let f = raw.freeze;
        let freeze = &mut config.freeze;
        let ranged = |key: &str, value: Option<HumanDuration>, range: Range<Duration>| {
            value
                .map(|HumanDuration(d)| range.check(d).map_err(|p| bad(key, p)))
                .transpose()
        };
        if let Some(tick) = ranged("freeze.tick", f.tick, limits::FREEZE_TICK)? {
            freeze.tick = tick;
        }
        if let Some(min) = ranged("freeze.min", f.min, limits::FREEZE_MIN)? {
            freeze.min = min;
        }
        if freeze.min < 2 * freeze.tick {
            return Err(bad(
                "freeze.min",
                format!(
                    "must be at least two ticks ({}), or every scheduler hiccup becomes a freeze",
                    humantime::format_duration(2 * freeze.tick)
                ),
            ));
        }
        if let Some(step) = ranged("freeze.wall_step", f.wall_step, limits::FREEZE_WALL_STEP)? {
            freeze.wall_step = step;
        }
        if let Some(interval) = ranged(
            "freeze.reference_interval",
            f.reference_interval,
            limits::FREEZE_REFERENCE_INTERVAL,
        )? {
            freeze.reference_interval = interval;
        }
        if let Some(mode) = f.forward_steps {
            freeze.forward_steps = mode;
        }
        if let Some(refs) = f.references {
            freeze.references_defaulted = false;
            freeze.references = Vec::with_capacity(refs.len());
            for (i, text) in refs.iter().enumerate() {
                let spec = ReferenceSpec::parse(text).map_err(|problem| {
                    bad(
                        &format!("freeze.references[{i}]"),
                        format!("is invalid: {problem}"),
                    )
                })?;
                if freeze.references.contains(&spec) {
                    return Err(bad(
                        &format!("freeze.references[{i}]"),
                        format!("repeats \"{}\"", spec.name()),
                    ));
                }
                freeze.references.push(spec);
            }
        }
        if raw.source.len() > source::MAX_SOURCES {
            return Err(bad(
                "source",
                format!(
                    "lists {} sources; at most {} are supported",
                    raw.source.len(),
                    source::MAX_SOURCES
                ),
            ));
        }
        for (i, src) in raw.source.into_iter().enumerate() {
            let validated = source::validate(i, src, &config.sources)
                .map_err(|(key, problem)| bad(&key, problem))?;
            config.sources.push(validated);
        }
        if raw.channel.len() > channel::MAX_CHANNELS {
            return Err(bad(
                "channel",
                format!(
                    "lists {} channels; at most {} are supported",
                    raw.channel.len(),
                    channel::MAX_CHANNELS
                ),
            ));
        }
        let mut channels: Vec<ChannelConfig> = Vec::new();
        for (i, raw_channel) in raw.channel.into_iter().enumerate() {
            let validated = channel::validate(i, raw_channel, &channels)
                .map_err(|(key, problem)| bad(&key, problem))?;
            channels.push(validated);
        }
        config.alerts = alerts::validate(raw.alerts, raw.rule, channels)
            .map_err(|(key, problem)| bad(&key, problem))?;
        if let Some(otlp) = raw.otlp {
            config.otlp = Some(otlp::validate(otlp).map_err(|(key, problem)| bad(&key, problem))?);
        }
        Ok(config)
    }
}

/// Where state lives when neither the config nor `--data-dir` says: the FHS place for
/// root, the XDG state dir otherwise.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/stallwatch");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("stallwatch");
    }
    match std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/stallwatch"),
        None => PathBuf::from("stallwatch-data"),
    }
}

/// Replaces `${VAR}` in every string value; `$$` is a literal `$`. Returns the key path
/// and problem of the first unset variable.
fn expand_env(
    value: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) => {
            *s = expand_str(s, env).map_err(|problem| (key.to_string(), problem))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{key}[{i}]"), env)?;
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let path = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                expand_env(v, &path, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| {
                "has an unclosed \"${\"; write \"$$\" for a literal dollar sign".to_string()
            })?;
            let name = &body[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "refers to {}, which is not a variable name",
                    quoted(&format!("${{{name}}}"))
                ));
            }
            let value = env(name).ok_or_else(|| {
                format!(
                    "refers to environment variable {}, which is not set",
                    clip(name)
                )
            })?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns serde's messages into the user's terms: "KEY must be WHAT, not WHAT-WAS-WRITTEN"
/// (`at` is the value written at the key, when there is one), unknown fields name the key
/// itself, unknown enum values list the choices. `variants` finds an enum key's choices
/// when serde only says "string only" (a number where a name goes).
fn describe_serde_error(
    path: &str,
    message: &str,
    at: Option<&toml::Value>,
    variants: &dyn Fn() -> Option<String>,
) -> (String, String) {
    // toml appends "\nin `source.kind`" (the key again, without indices).
    let message = first_line(message);
    let message = match message.rfind(" in `") {
        Some(i) if message.ends_with('`') => &message[..i],
        _ => &message[..],
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let key = if path == "." || path.is_empty() {
            field.to_string()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path.to_string()
        } else {
            format!("{path}.{field}")
        };
        let expected = rest
            .split_once("expected ")
            .map(|(_, e)| names(e.lines().next().unwrap_or(e)))
            .map(|n| match n.contains(',') {
                true => format!("; expected one of {n}"),
                false => format!("; expected {n}"),
            })
            .unwrap_or_default();
        return (key, format!("is not a known setting{expected}"));
    }
    let key = if path == "." || path.is_empty() {
        "(top level)".to_string()
    } else {
        path.to_string()
    };
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        let key = if path == "." || path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return (key, "is required".to_string());
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let written = rest.split('`').next().unwrap_or(rest);
        let choices = rest
            .split_once("expected ")
            .map(|(_, e)| names(e))
            .unwrap_or_default();
        let problem = match what_kind(&key) {
            Some(what) => format!(
                "unknown {what} {}; expected one of {choices}",
                quoted(written)
            ),
            None => format!("must be one of {choices}, not {}", quoted(written)),
        };
        return (key, problem);
    }
    let expected = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|r| r.split_once(", expected "))
        .map(|(_, e)| e.trim());
    if let Some(expected) = expected {
        let wanted = match expected {
            "string only" | "a valid enum variant" => match variants() {
                Some(choices) => format!("one of {choices}"),
                None => "a name".to_string(),
            },
            "a string" | "a borrowed string" | "a character" => "a string".to_string(),
            "path string" => "a path (a string)".to_string(),
            "a sequence" | "a tuple" => "a list".to_string(),
            "a boolean" => "true or false".to_string(),
            "a map" | "map" => "a table".to_string(),
            e if e.starts_with("struct ") || e.starts_with("enum ") => "a table".to_string(),
            e if e.starts_with('u') && e[1..].parse::<u32>().is_ok() => {
                "a whole number, 0 or more".to_string()
            }
            "usize" => "a whole number, 0 or more".to_string(),
            e if e.starts_with('i') && e[1..].parse::<u32>().is_ok() => {
                "a whole number".to_string()
            }
            "f32" | "f64" => "a number".to_string(),
            other => other.to_string(),
        };
        let written = match at {
            Some(v) => written_as(&key, v),
            None => "that".to_string(),
        };
        return (key, format!("must be {wanted}, not {written}"));
    }
    (key, first_line(message))
}

/// serde's "`a`, `b` or `c`" / "one of `a`, `b`" as "a, b, c".
fn names(expected: &str) -> String {
    let list = expected.trim().trim_start_matches("one of ");
    list.replace(" or ", ", ")
        .split(',')
        .map(|n| n.trim().trim_matches('`'))
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The thing a `kind` key names, for "unknown source kind …".
fn what_kind(key: &str) -> Option<&'static str> {
    if key.starts_with("source[") && key.ends_with("].kind") {
        Some("source kind")
    } else {
        None
    }
}

/// A value as the user wrote it, in words: `the number 5`, `"fast"`, `a list`. The value
/// of a key that may hold a secret is not repeated, only its type.
fn written_as(key: &str, v: &toml::Value) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    let secret = ["token", "key", "secret", "password", "url", "user"]
        .iter()
        .any(|s| last.contains(s));
    match v {
        toml::Value::String(_) if secret => "a string".to_string(),
        toml::Value::String(s) => quoted(s),
        toml::Value::Integer(_) | toml::Value::Float(_) if secret => "a number".to_string(),
        toml::Value::Integer(n) => format!("the number {n}"),
        toml::Value::Float(x) => format!("the number {}", clip(&x.to_string())),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) if !secret => format!("the date {d}"),
        toml::Value::Datetime(_) => "a date".to_string(),
        toml::Value::Array(_) => "a list".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// The value at serde's path in the file as written.
fn value_at<'v>(
    root: &'v toml::Value,
    path: &serde_path_to_error::Path,
) -> Option<&'v toml::Value> {
    use serde_path_to_error::Segment;
    let mut v = root;
    for seg in path.iter() {
        v = match seg {
            Segment::Seq { index } => v.as_array()?.get(*index)?,
            Segment::Map { key } => v.as_table()?.get(key)?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(v)
}

/// An enum key's choices: the same file again with an impossible name at `key`, whose
/// "unknown variant" message lists them.
fn enum_variants(written: &toml::Value, key: &str) -> Option<String> {
    let mut probe = written.clone();
    let mut v = &mut probe;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (part, None),
        };
        v = v.as_table_mut()?.get_mut(name)?;
        if let Some(i) = index {
            v = v.as_array_mut()?.get_mut(i)?;
        }
    }
    *v = toml::Value::String("\u{1}".to_string());
    let e = serde_path_to_error::deserialize::<_, RawConfig>(probe).err()?;
    let message = first_line(&e.into_inner().to_string());
    let rest = message.strip_prefix("unknown variant `")?;
    let expected = rest.split_once("expected ")?.1;
    let expected = match expected.rfind(" in `") {
        Some(i) => &expected[..i],
        None => expected,
    };
    Some(names(expected))
}

/// A TOML syntax error as "line N: what is wrong", without the quoted source line: that
/// line may hold a token or a password.
fn syntax_reason(text: &str, e: &toml::de::Error) -> String {
    let message = first_line(e.message());
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod channel_tests;
#[cfg(test)]
mod source_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/sw.toml"), text, &|name| match name {
            "PORT" => Some("9999".into()),
            _ => None,
        })
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.freeze.tick, DEFAULT_TICK);
        assert_eq!(c.freeze.references, vec![ReferenceSpec::Rtc]);
        assert_eq!(c.listen.port(), 9847);
    }

    #[test]
    fn durations_and_references_parse() {
        let c = parse(
            r#"
            listen = "127.0.0.1:${PORT}"
            [freeze]
            tick = "100ms"
            min = "3s"
            references = ["rtc", "ptp:/dev/ptp0", "sntp:127.0.0.1:123", "http_date:https://example.test/"]
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.freeze.tick, Duration::from_millis(100));
        assert_eq!(c.freeze.min, Duration::from_secs(3));
        assert_eq!(c.freeze.references.len(), 4);
        assert_eq!(c.freeze.references[2].name(), "sntp:127.0.0.1:123");
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let e = parse("[freeze]\ntik = \"1s\"\n").unwrap_err().to_string();
        assert!(e.contains("freeze.tik is not a known setting"), "{e}");
        assert!(e.contains("/etc/sw.toml"), "{e}");
    }

    #[test]
    fn bad_duration_names_key_and_value() {
        let e = parse("[freeze]\ntick = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(": freeze.tick ") && e.contains("\"fast\""),
            "{e}"
        );
    }

    #[test]
    fn unset_variable_is_an_error() {
        let e = parse("data_dir = \"${NOPE}/x\"\n").unwrap_err().to_string();
        assert!(e.contains(": data_dir ") && e.contains("NOPE"), "{e}");
    }

    #[test]
    fn dollar_dollar_is_literal() {
        assert_eq!(expand_str("a$$b", &|_| None).unwrap(), "a$b");
    }

    #[test]
    fn min_must_exceed_two_ticks() {
        let e = parse("[freeze]\ntick = \"1s\"\nmin = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(": freeze.min "), "{e}");
    }

    #[test]
    fn bad_reference_is_rejected() {
        let e = parse("[freeze]\nreferences = [\"gps\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(": freeze.references[0] "), "{e}");
    }

    #[test]
    fn a_syntax_error_names_the_line_but_never_shows_it() {
        let e = parse("[alerts]\nheartbeat_url = \"https://hc.example/ping/SECRET-UUID\nx = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("SECRET-UUID"), "{e}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://u:p@h.test/x?token=1"),
            "https://***@h.test/x"
        );
        assert_eq!(redact_url("http://h.test/a@b"), "http://h.test/a@b");
    }
}
