//! The values every section of the config reads: a duration as people write it
//! (`"250ms"`, `"5s"`), and a URL with its secrets cut for logs, labels and errors.

use std::time::Duration;

use serde::Deserialize;

use super::limits::quoted;
use super::postgres_url;

/// A duration written as `"250ms"`, `"5s"`, `"10m"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HumanDuration(pub(crate) Duration);

/// How a duration is asked for, in every message about one.
pub const DURATION_LIKE: &str = "a duration like \"5s\"";

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = HumanDuration;
            // A number or a table where a duration goes says "expected a duration like …".
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(DURATION_LIKE)
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(text.trim())
                    .map(HumanDuration)
                    .map_err(|_| {
                        E::custom(format!("must be {DURATION_LIKE}, not {}", quoted(text)))
                    })
            }
        }
        d.deserialize_str(Text)
    }
}

/// Drops userinfo and query from a URL-ish string for logs and labels. A Postgres URL
/// is cut the way its driver reads it ([`super::postgres_url::redact`]).
pub fn redact_url(url: &str) -> String {
    if postgres_url::is_postgres(url) {
        return postgres_url::redact(url);
    }
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    let Some((scheme, rest)) = without_query.split_once("://") else {
        return without_query.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => format!("{scheme}://{rest}"),
    }
}
