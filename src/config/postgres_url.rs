//! Postgres URLs, read the way the driver reads them (tokio-postgres's `UrlParser`, which
//! follows libpq): the user name and password end at the FIRST `@` anywhere after the
//! scheme and split at their first `:`; the host list ends at the next `/` or `?`; the
//! database name at `?`; `#` means nothing. A generic URL reader disagrees (it ends the
//! authority at `/`, `?` or `#`, and takes the last `@`), so a password holding a raw
//! `#`, `?`, `/` or `@` was shown half-redacted, or connected to a host made of the
//! password.
//!
//! Owns two things: [`check`], which refuses at config time a URL the driver would split
//! differently from what its writer meant (and a port that is not a port), and
//! [`redact`], which hides everything up to the last `@` and drops the query, so even a
//! URL that was never checked shows no part of its password.

use super::limits::quoted;

const SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

/// Whether `url` is a Postgres URL (`postgres://` or `postgresql://`).
pub fn is_postgres(url: &str) -> bool {
    SCHEMES.iter().any(|s| url.starts_with(s))
}

fn split_scheme(url: &str) -> Option<(&str, &str)> {
    SCHEMES
        .iter()
        .find_map(|s| url.strip_prefix(s).map(|rest| (&s[..s.len() - 3], rest)))
}

/// The URL as logs, errors, the API and the state DB may show it: user name and password
/// replaced by `***`, query (which may hold `password=`) dropped.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = split_scheme(url) else {
        return url.split(['?', '#']).next().unwrap_or(url).to_string();
    };
    let (hidden, after) = match rest.rfind('@') {
        Some(at) => ("***@", &rest[at + 1..]),
        None => ("", rest),
    };
    let kept = after.split(['?', '#']).next().unwrap_or(after);
    format!("{scheme}://{hidden}{kept}")
}

/// Refuses a URL the driver would read differently from its writer's intent, or whose
/// port is not a number between 1 and 65535. The problem never quotes the user
/// name or password.
pub fn check(url: &str) -> Result<(), String> {
    let Some((_, rest)) = split_scheme(url) else {
        return Err("must start with postgres:// or postgresql://".into());
    };
    const ENCODE: &str =
        "percent-encode it (# as %23, ? as %3F, / as %2F, @ as %40), in a password too";
    if rest.contains('#') {
        return Err(format!(
            "holds a raw \"#\", which the Postgres driver keeps as part of the URL; {ENCODE}"
        ));
    }
    let after_credentials = match rest.find('@') {
        Some(at) => {
            let credentials = &rest[..at];
            if let Some(c) = credentials.chars().find(|c| matches!(c, '/' | '?')) {
                return Err(format!(
                    "holds a raw \"{c}\" before its \"@\": the user name or password would be cut there; {ENCODE}"
                ));
            }
            let after = &rest[at + 1..];
            if after.contains('@') {
                return Err(format!(
                    "holds more than one \"@\": the driver ends the user name and password at the first one and would take the rest for the host; {ENCODE}"
                ));
            }
            after
        }
        None => rest,
    };
    let hosts = after_credentials
        .split(['/', '?'])
        .next()
        .unwrap_or(after_credentials);
    for chunk in hosts.split(',').filter(|c| !c.is_empty()) {
        let port = if let Some(v6) = chunk.strip_prefix('[') {
            let Some((_, tail)) = v6.split_once(']') else {
                return Err(format!("has host {} with an unclosed \"[\"", quoted(chunk)));
            };
            match tail.strip_prefix(':') {
                Some(port) => Some(port),
                None if tail.is_empty() => None,
                None => {
                    return Err(format!(
                        "has host {}: after \"]\" only \":PORT\" may follow",
                        quoted(chunk)
                    ))
                }
            }
        } else {
            chunk.split_once(':').map(|(_, port)| port)
        };
        if let Some(port) = port {
            if !port.parse::<u16>().is_ok_and(|p| p >= 1) {
                return Err(format!(
                    "has port {}; a port is a number between 1 and 65535",
                    quoted(port)
                ));
            }
        }
    }
    Ok(())
}

/// How TLS is used, from `sslmode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    Disable,
    Prefer,
    Require,
    /// Check the certificate and host name: against `sslrootcert` if the URL names one
    /// (libpq's meaning: only that CA), else against the Mozilla roots.
    VerifyFull(Option<std::path::PathBuf>),
}

/// Splits `sslmode` and `sslrootcert` off a URL (the driver knows neither the verify
/// modes nor a root certificate file).
pub fn split_sslmode(url: &str) -> Result<(String, Tls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Tls::Prefer));
    };
    let mut tls = Tls::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", mode)) => {
                tls = match mode {
                    "disable" => Tls::Disable,
                    "allow" | "prefer" => Tls::Prefer,
                    "require" => Tls::Require,
                    "verify-ca" | "verify-full" => Tls::VerifyFull(None),
                    other => return Err(format!("sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full")),
                }
            }
            Some(("sslrootcert", path)) => root_cert = Some(std::path::PathBuf::from(path)),
            _ => kept.push(pair),
        }
    }
    if let Tls::VerifyFull(root) = &mut tls {
        *root = root_cert;
    } else if root_cert.is_some() {
        return Err("sslrootcert is only used with sslmode=verify-ca or verify-full".into());
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_split_off_and_other_parameters_kept() {
        let (url, tls) =
            split_sslmode("postgres://u:p@h/db?sslmode=require&application_name=x").unwrap();
        assert_eq!(
            (url.as_str(), tls),
            ("postgres://u:p@h/db?application_name=x", Tls::Require)
        );
        assert_eq!(
            split_sslmode("postgresql://h/db?sslmode=disable")
                .unwrap()
                .1,
            Tls::Disable
        );
        assert_eq!(
            split_sslmode("postgresql://h/db?sslmode=verify-full")
                .unwrap()
                .1,
            Tls::VerifyFull(None)
        );
        assert_eq!(split_sslmode("postgresql://h/db").unwrap().1, Tls::Prefer);
        assert!(split_sslmode("postgresql://h/db?sslmode=maybe").is_err());
        let (url, tls) =
            split_sslmode("postgresql://h/db?sslrootcert=/etc/ca.pem&sslmode=verify-full").unwrap();
        assert_eq!(
            (url.as_str(), tls),
            (
                "postgresql://h/db",
                Tls::VerifyFull(Some("/etc/ca.pem".into()))
            )
        );
        assert!(
            split_sslmode("postgresql://h/db?sslrootcert=/etc/ca.pem&sslmode=require").is_err()
        );
    }

    #[test]
    fn redaction_follows_the_driver_whatever_the_password_holds() {
        for (url, shown) in [
            (
                "postgres://u:p@h:5432/db?sslmode=require",
                "postgres://***@h:5432/db",
            ),
            ("postgres://role:Hash#x@h/db", "postgres://***@h/db"),
            ("postgres://role:a?b@h/db", "postgres://***@h/db"),
            ("postgres://role:a/b@h/db", "postgres://***@h/db"),
            ("postgres://role:p@ss@h/db", "postgres://***@h/db"),
            ("postgresql://h/db?password=secret", "postgresql://h/db"),
            ("postgres://role:Ha%23sh%40@h/db", "postgres://***@h/db"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn an_ambiguous_url_is_refused_with_how_to_encode() {
        for url in [
            "postgres://role:Ha#sh@h/db",
            "postgres://role:Ha?sh@h/db",
            "postgres://role:Ha/sh@h/db",
            "postgres://role:p@ss@h/db",
        ] {
            let e = check(url).unwrap_err();
            assert!(e.contains("percent-encode"), "{url}: {e}");
            assert!(!e.contains("Ha") && !e.contains("ss@"), "{url}: {e}");
        }
        assert!(check("postgres://role:Ha%23sh%40x%2F%3F@h:5432/db?sslmode=disable").is_ok());
        assert!(check("postgres://h/db").is_ok());
        assert!(check("postgres://u@[::1]:5433,h2:5434/db").is_ok());
    }

    #[test]
    fn a_port_must_be_a_port() {
        for port in ["notaport", "0", "65536", ""] {
            let e = check(&format!("postgres://u:pw@h:{port}/db")).unwrap_err();
            assert!(e.contains("between 1 and 65535"), "{port}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
        assert!(check("postgres://u@[::1]:x/db").is_err());
        assert!(check("postgres://h,h2:99999/db").is_err());
    }
}
