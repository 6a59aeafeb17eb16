//! `stallwatch silence add | list | expire`: silences in the state DB of a sidecar that
//! may be running on it (see `alerts/silence.rs` for what a silence does).
//!
//! Never creates or migrates a state DB: one that is missing, not a state DB, newer than
//! this build or older than silences (schema 7) is refused with one sentence, exit 2.
//! A write is one short statement; the running engine reads silences at every
//! evaluation, so an added silence holds back every notification decided after it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::alerts::silence::{self, Silence, SilenceView};
use crate::config::alerts::RuleKind;
use crate::config::quoted;
use crate::report::history::{History, READ_BUSY_TIMEOUT};
use crate::report::{Outcome, TextFormat, ToolError};
use crate::state::{SILENCES_VERSION, STATE_DB_FILE};
use crate::time::rfc3339;

/// Longest `--source` name accepted.
const MAX_SOURCE_CHARS: usize = 100;
/// Longest `created_by` stored.
const MAX_USER_CHARS: usize = 64;

/// Where the state DB is and which sources the config names (when `--config` was given).
pub struct Target {
    pub data_dir: PathBuf,
    pub sources: Option<Vec<String>>,
}

/// `silence add` arguments.
pub struct AddArgs {
    pub rule: String,
    pub source: Option<String>,
    pub duration: Duration,
    pub reason: String,
    pub format: TextFormat,
}

fn input(s: String) -> ToolError {
    ToolError::Input(s)
}

/// Opens the state DB in `data_dir`: read-only, or read-write without creating it.
fn open(data_dir: &Path, write: bool) -> Result<Connection, ToolError> {
    // Missing, not a state DB, newer: History says so in one sentence.
    drop(History::open(data_dir)?);
    let path = data_dir.join(STATE_DB_FILE);
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let fail = |e: rusqlite::Error| {
        input(format!(
            "state database {} cannot be {}: {e}",
            path.display(),
            if write { "written" } else { "read" }
        ))
    };
    let conn = Connection::open_with_flags(&path, flags).map_err(fail)?;
    conn.busy_timeout(READ_BUSY_TIMEOUT).map_err(fail)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(fail)?;
    if version < SILENCES_VERSION {
        return Err(input(format!(
            "state database {} has schema version {version}, from before silences; start \
             this version of the sidecar on it once to upgrade it",
            path.display()
        )));
    }
    Ok(conn)
}

/// Who is adding a silence: the login name, else the uid.
fn user() -> String {
    let name = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_USER_CHARS)
        .collect()
}

/// Checks `silence add`'s arguments; every problem is one sentence.
fn check(target: &Target, args: &AddArgs) -> Result<(RuleKind, Option<String>, String), ToolError> {
    let names: Vec<&str> = RuleKind::ALL.iter().map(|r| r.as_str()).collect();
    let rule = RuleKind::parse(args.rule.trim()).ok_or_else(|| {
        input(format!(
            "--rule must be one of {}, not {}",
            names.join(", "),
            quoted(&args.rule)
        ))
    })?;
    if args.duration < silence::MIN_SILENCE || args.duration > silence::MAX_SILENCE {
        return Err(input(format!(
            "--for must be between 1s and 30d, not {}",
            shown(args.duration)
        )));
    }
    let source = match &args.source {
        None => None,
        Some(s) => {
            let s = s.trim();
            if !silence::has_source(rule) {
                return Err(input(format!(
                    "--source does not apply to rule {}: its alerts are about this machine, not a source",
                    rule.as_str()
                )));
            }
            if s.is_empty()
                || s.chars().count() > MAX_SOURCE_CHARS
                || s.chars().any(char::is_control)
            {
                return Err(input(format!(
                    "--source must be a source name of 1 to {MAX_SOURCE_CHARS} characters, not {}",
                    quoted(s)
                )));
            }
            if let Some(known) = &target.sources {
                if !known.iter().any(|k| k == s) {
                    return Err(input(format!(
                        "--source {} is not a [[source]] of the config (it has {})",
                        quoted(s),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
            Some(s.to_string())
        }
    };
    let reason: String = args
        .reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let reason = reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > silence::MAX_REASON_CHARS {
        return Err(input(format!(
            "--reason must say why in 1 to {} characters (it is shown with the silence)",
            silence::MAX_REASON_CHARS
        )));
    }
    Ok((rule, source, reason))
}

/// `stallwatch silence add`.
pub fn add(target: &Target, args: &AddArgs, now_ns: i64) -> Result<Outcome, ToolError> {
    let (rule, source, reason) = check(target, args)?;
    let conn = open(&target.data_dir, true)?;
    let path = target.data_dir.join(STATE_DB_FILE);
    let fail = |e: rusqlite::Error| {
        input(format!(
            "state database {} cannot be written: {e}",
            path.display()
        ))
    };
    let active = silence::read_active(&conn, now_ns).map_err(fail)?;
    if active.len() as i64 >= silence::MAX_ACTIVE {
        return Err(input(format!(
            "{} silences are active already, the most there may be; expire some first (stallwatch silence list)",
            active.len()
        )));
    }
    let mut s = Silence {
        id: 0,
        rule: rule.as_str().to_string(),
        source,
        starts_at_ns: now_ns,
        ends_at_ns: now_ns + args.duration.as_nanos() as i64,
        reason,
        created_by: user(),
        created_at_ns: now_ns,
        expired_at_ns: None,
    };
    s.id = silence::insert(&conn, &s).map_err(fail)?;
    let view = SilenceView::of(&s, now_ns);
    let stdout = match args.format {
        TextFormat::Json => json(&view),
        TextFormat::Text => format!(
            "silence {} added: {}{} does not notify until {} ({})\n",
            s.id,
            s.rule,
            s.source
                .as_ref()
                .map_or(String::new(), |src| format!(" of source {src}")),
            rfc3339(s.ends_at_ns),
            s.reason
        ),
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

/// `stallwatch silence list`: active silences and those ended in the last week.
pub fn list(target: &Target, format: TextFormat, now_ns: i64) -> Result<Outcome, ToolError> {
    let conn = open(&target.data_dir, false)?;
    let views = silence::read_view(&conn, now_ns).map_err(|e| {
        input(format!(
            "state database {} cannot be read: {e}",
            target.data_dir.join(STATE_DB_FILE).display()
        ))
    })?;
    let stdout = match format {
        TextFormat::Json => json(&views),
        TextFormat::Text => table(&views),
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

/// `stallwatch silence expire ID`: ends it now.
pub fn expire(target: &Target, id: i64, now_ns: i64) -> Result<Outcome, ToolError> {
    let conn = open(&target.data_dir, true)?;
    let path = target.data_dir.join(STATE_DB_FILE);
    let fail = |e: rusqlite::Error| {
        input(format!(
            "state database {} cannot be written: {e}",
            path.display()
        ))
    };
    let Some(found) = silence::read_one(&conn, id).map_err(fail)? else {
        return Err(input(format!(
            "there is no silence {id} in {}; stallwatch silence list shows them",
            path.display()
        )));
    };
    let stdout = if silence::expire(&conn, id, now_ns).map_err(fail)? {
        format!(
            "silence {id} expired: {} notifies again from now\n",
            found.rule
        )
    } else {
        format!(
            "silence {id} had already ended at {}\n",
            rfc3339(found.ends_at_ns)
        )
    };
    Ok(Outcome {
        stdout,
        exit_code: 0,
    })
}

/// A duration as the user likely wrote it (`31d`, `800h`), not in months.
fn shown(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => humantime::format_duration(d).to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ => humantime::format_duration(d).to_string(),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("views serialise");
    s.push('\n');
    s
}

fn table(views: &[SilenceView]) -> String {
    if views.is_empty() {
        return "no silences\n".into();
    }
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|v| {
            [
                v.id.to_string(),
                v.rule.clone(),
                v.source.clone().unwrap_or_else(|| "*".into()),
                v.ends_at.clone(),
                v.state.to_string(),
                v.reason.clone(),
            ]
        })
        .collect();
    let head = ["ID", "RULE", "SOURCE", "UNTIL", "STATE", "REASON"];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
