//! Command-line mistakes as one sentence in the user's terms: `--gap-min must be a
//! duration like "30s", not "fast"` instead of clap's "invalid value 'fast' for
//! '--gap-min <GAP_MIN>': expected number at 0" and its usage block. Owns the value
//! parsers of flags whose type clap would explain in Rust's words.

use std::error::Error as _;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use stallwatch::config::{clip_words, quoted};

/// A duration flag (`--gap-min 30s`).
pub fn duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| "must be a duration like \"30s\"".into())
}

/// A listen address flag (`--listen 127.0.0.1:9847`).
pub fn address(text: &str) -> Result<std::net::SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| "must be an address like \"127.0.0.1:9847\"".into())
}

/// A count flag (`--top 10`).
pub fn count(text: &str) -> Result<usize, String> {
    text.trim()
        .parse()
        .map_err(|_| "must be a whole number, 0 or more".into())
}

/// An id flag (`silence expire 3`).
pub fn id(text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "must be a silence id, a whole number from 1".into())
}

/// The one line (without the `stallwatch: ` prefix) for a usage error.
pub fn sentence(e: &clap::Error) -> String {
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    // "--gap-min <GAP_MIN>" -> "--gap-min"; a positional "<FILE>" stays as it is.
    let flag = text(ContextKind::InvalidArg).map(|a| match a.split_once(' ') {
        Some((name, _)) if name.starts_with('-') => name.to_string(),
        _ => a,
    });
    let value = text(ContextKind::InvalidValue);
    let line = match (e.kind(), flag, value) {
        (ErrorKind::ValueValidation, Some(flag), Some(value)) => {
            let why = e.source().map(|s| s.to_string()).unwrap_or_default();
            if why.contains(" not ") || why.starts_with("must be between") {
                // The parser said what was written already (or why a good-looking value is out of range).
                format!("{flag} {why}")
            } else if why.is_empty() {
                format!("{flag} does not take {}", quoted(&value))
            } else {
                format!("{flag} {why}, not {}", quoted(&value))
            }
        }
        (ErrorKind::InvalidValue, Some(flag), Some(value)) => {
            let choices = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(v)) => v.join(", "),
                _ => String::new(),
            };
            match (value.is_empty(), choices.is_empty()) {
                (true, true) => format!("{flag} needs a value"),
                (true, false) => format!("{flag} needs a value: one of {choices}"),
                (false, true) => format!("{flag} does not take {}", quoted(&value)),
                (false, false) => {
                    format!("{flag} must be one of {choices}, not {}", quoted(&value))
                }
            }
        }
        _ => {
            // clap's own first line ("unexpected argument '--x' found", "the following
            // required arguments were not provided: --source <SOURCE>"), tips dropped.
            let rendered = e.render().to_string();
            let mut lines = rendered
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"));
            let first = lines.next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // "required arguments were not provided:" lists them on the next lines.
            let first = if first.ends_with(':') {
                let rest: Vec<&str> = lines.take_while(|l| !l.starts_with("Usage:")).collect();
                format!("{first} {}", rest.join(", "))
            } else {
                first.to_string()
            };
            let first =
                match first.strip_prefix("the following required arguments were not provided: ") {
                    Some(missing) => format!("{} is required", required(missing)),
                    None => first,
                };
            format!("{first} (stallwatch --help lists the commands and options)")
        }
    };
    clip_words(&line)
}

/// clap's "--source <SOURCE>, <--before <BEFORE>|--migrated-at <MIGRATED_AT>>" as
/// "--source, --before or --migrated-at".
fn required(missing: &str) -> String {
    let mut out = String::new();
    let mut rest = missing;
    // Drop the value placeholders (" <SOURCE>") but keep a bare positional ("<FILE>" -> "FILE").
    while let Some(i) = rest.find(" <") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 2..];
        rest = rest.split_once('>').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out.replace(['<', '>'], "").replace('|', " or ")
}
