//! Read-only access to an app's Postgres database.
//!
//! One connection per source, opened lazily and reopened after any error with an
//! exponential backoff. The session is made read-only (`default_transaction_read_only`)
//! with a `statement_timeout`, so every autocommit statement is a short read-only
//! transaction that takes no row locks. Reads use the simple query protocol: every value
//! arrives as text, whatever its type, and parameters are inlined as literals (numbers
//! as digits, text quoted with `'` doubled — the only text inlined comes from config).
//!
//! TLS follows libpq's `sslmode`: `disable`; `prefer` (TLS if the server offers it);
//! `require` (TLS, certificate not checked — libpq's meaning); `verify-ca` and
//! `verify-full` (TLS, certificate checked against the Mozilla roots and the host name).
//! The URL keeps its password; only [`crate::config::redact_url`]'s form is ever shown,
//! which reads a Postgres URL the way this driver does (`config::postgres_url`: userinfo
//! ends at the first `@`); config refuses a URL the driver would split otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::config::SslMode;
use postgres::{Client, NoTls, SimpleQueryMessage};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::session::{Query, Session, Table, Value};
use super::{ErrorKind, SourceError};
use crate::clock::mono_ns;
use crate::config::postgres_url::{split_sslmode, Tls};
use crate::config::redact_url;
use crate::freeze::reference::RefSample;

/// Longest a statement may run: a poll must never hold the app's database for long.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait before reconnecting after a failure.
pub const RECONNECT_MIN: Duration = Duration::from_secs(1);
pub const RECONNECT_MAX: Duration = Duration::from_secs(60);

pub struct PgReader {
    url: String,
    shown: String,
    client: Option<Client>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<SourceError>,
}

impl PgReader {
    pub fn new(url: String) -> PgReader {
        let shown = redact_url(&url);
        PgReader {
            url,
            shown,
            client: None,
            failures: 0,
            retry_at: None,
            last_error: None,
        }
    }

    pub fn session<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Session) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if self.client.is_none() {
            if let (Some(at), Some(last)) = (self.retry_at, &self.last_error) {
                if Instant::now() < at {
                    return Err(SourceError {
                        backing_off: true,
                        ..last.clone()
                    });
                }
            }
            match self.connect() {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    self.failed(&e);
                    return Err(e);
                }
            }
        }
        let mut session = PgSession {
            client: self.client.as_mut().expect("connected above"),
            shown: &self.shown,
        };
        let result = f(&mut session);
        match &result {
            Ok(_) => {
                self.failures = 0;
                self.retry_at = None;
                self.last_error = None;
            }
            Err(e) => {
                self.client = None;
                self.failed(e);
            }
        }
        result
    }

    /// Remembers a failure and when to try again: 1 s, 2 s, 4 s … up to 60 s.
    fn failed(&mut self, e: &SourceError) {
        let wait = RECONNECT_MIN
            .saturating_mul(1 << self.failures.min(6))
            .min(RECONNECT_MAX);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + wait);
        self.last_error = Some(e.clone());
    }

    fn connect(&self) -> Result<Client, SourceError> {
        let (url, tls) = split_sslmode(&self.url)
            .map_err(|m| SourceError::new(ErrorKind::Query, format!("{}: {m}", self.shown)))?;
        let mut config: postgres::Config = url.parse().map_err(|e| {
            SourceError::new(
                ErrorKind::Query,
                format!("{} is not a valid Postgres URL: {e}", self.shown),
            )
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("stallwatch");
        let verify_root = match &tls {
            Tls::VerifyFull(root) => Some(root.clone()),
            _ => None,
        };
        let connected = match tls {
            Tls::Disable => {
                config.ssl_mode(SslMode::Disable);
                config.connect(NoTls)
            }
            Tls::Prefer | Tls::Require => {
                config.ssl_mode(if tls == Tls::Prefer {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                config.connect(tls_connector(None))
            }
            Tls::VerifyFull(root) => {
                config.ssl_mode(SslMode::Require);
                let roots = trusted_roots(root.as_deref())
                    .map_err(|m| SourceError::new(ErrorKind::Io, format!("{}: {m}", self.shown)))?;
                config.connect(tls_connector(Some(roots)))
            }
        };
        let mut client = connected.map_err(|e| match &verify_root {
            Some(root) if unknown_issuer(&e) => SourceError::new(
                ErrorKind::Io,
                format!("{}: {}", self.shown, untrusted_certificate(root.as_deref())),
            ),
            _ => self.error(e),
        })?;
        client
            .batch_execute(&format!(
                "SET default_transaction_read_only = on; SET statement_timeout = {}; SET lock_timeout = {}",
                STATEMENT_TIMEOUT.as_millis(),
                STATEMENT_TIMEOUT.as_millis()
            ))
            .map_err(|e| self.error(e))?;
        Ok(client)
    }

    fn error(&self, e: postgres::Error) -> SourceError {
        classify(&self.shown, e)
    }
}

/// Classifies a Postgres error by SQLSTATE into a source error naming the (redacted) URL.
pub fn classify(shown: &str, e: postgres::Error) -> SourceError {
    use postgres::error::SqlState;
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        // The driver's Display names only the kind of failure; the cause is in the chain.
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(": ");
                text.push_str(&c.to_string());
                cause = c.source();
            }
            text
        }
    };
    let kind = match e.code() {
        Some(c)
            if *c == SqlState::UNDEFINED_TABLE
                || *c == SqlState::UNDEFINED_COLUMN
                || *c == SqlState::INVALID_SCHEMA_NAME =>
        {
            ErrorKind::Schema
        }
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *c == SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            ErrorKind::Permission
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => ErrorKind::Missing,
        Some(c) if *c == SqlState::QUERY_CANCELED => ErrorKind::Timeout,
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => ErrorKind::Locked,
        Some(_) => ErrorKind::Query,
        None => ErrorKind::Io,
    };
    SourceError::new(kind, format!("{shown}: {detail}"))
}

/// Whether a connection failed because the server's certificate chains to no trusted CA
/// (rustls' `UnknownIssuer`, wrapped in an I/O error by the TLS stream).
fn unknown_issuer(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) =
            tls
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// What to tell the operator when verification found no trusted CA for the server's
/// certificate: rustls only says `UnknownIssuer`, which names neither the cause nor the fix.
fn untrusted_certificate(root: Option<&std::path::Path>) -> String {
    match root {
        None => "the server's TLS certificate is not signed by a CA in the Mozilla roots \
                 (invalid peer certificate: UnknownIssuer); name the CA that signed it with \
                 sslrootcert=/path/to/ca.pem in the URL"
            .to_string(),
        Some(file) => format!(
            "the server's TLS certificate is not signed by the CA in sslrootcert {} \
             (invalid peer certificate: UnknownIssuer); point sslrootcert at the CA that \
             signed it",
            file.display()
        ),
    }
}

struct PgSession<'a> {
    client: &'a mut Client,
    shown: &'a str,
}

/// Inlines `$N` parameters as SQL literals.
fn inline(sql: &str, params: &[Value]) -> String {
    let mut out = sql.to_string();
    // Highest index first, so $1 does not eat the start of $10.
    for (i, v) in params.iter().enumerate().rev() {
        let literal = match v {
            Value::Null => "NULL".to_string(),
            Value::Int(n) => n.to_string(),
            Value::Real(f) => format!("{f:?}"),
            // E'' reads backslashes the same whatever standard_conforming_strings says.
            Value::Text(t) => format!("E'{}'", t.replace('\\', "\\\\").replace('\'', "''")),
        };
        out = out.replace(&format!("${}", i + 1), &literal);
    }
    out
}

impl Session for PgSession<'_> {
    fn table(&mut self, query: &Query, params: &[Value]) -> Result<Table, SourceError> {
        let sql = inline(&query.postgres, params);
        let messages = self
            .client
            .simple_query(&sql)
            .map_err(|e| classify(self.shown, e))?;
        let mut table = Table::default();
        for m in messages {
            if let SimpleQueryMessage::Row(row) = m {
                if table.columns.is_empty() {
                    table.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                table.rows.push(
                    (0..row.len())
                        .map(|i| {
                            row.get(i)
                                .map_or(Value::Null, |t| Value::Text(t.to_string()))
                        })
                        .collect(),
                );
            }
        }
        Ok(table)
    }

    fn journal_mode(&mut self) -> Result<Option<String>, SourceError> {
        Ok(None)
    }

    fn server_clock(&mut self) -> Result<Option<RefSample>, SourceError> {
        let m0 = mono_ns();
        let rows = self
            .client
            .simple_query("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
            .map_err(|e| classify(self.shown, e))?;
        let m1 = mono_ns();
        let micros = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|t| t.parse::<i64>().ok()),
            _ => None,
        });
        Ok(micros.map(|us| RefSample::from_read(m0, m1, us * 1_000, 1_000)))
    }
}

/// The CAs a verifying connection trusts: the PEM file given, else the Mozilla roots.
fn trusted_roots(file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::pem::PemObject;
    let Some(file) = file else {
        return Ok(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| {
            format!(
                "sslrootcert {} is not a PEM certificate file: {e}",
                file.display()
            )
        })?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no certificate",
            file.display()
        ));
    }
    Ok(roots)
}

/// A rustls connector: checking the certificate against `roots`, or, without roots,
/// accepting any certificate (libpq's `prefer`/`require`).
fn tls_connector(roots: Option<rustls::RootCertStore>) -> tokio_postgres_rustls::MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// libpq's `sslmode=require`: encrypt, but accept any certificate. The handshake
/// signature is still checked, so the session key is bound to the presented key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_says_to_set_sslrootcert() {
        use rustls::CertificateError;
        let wrapped = |e: CertificateError| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(e),
            )
        };
        assert!(unknown_issuer(&wrapped(CertificateError::UnknownIssuer)));
        assert!(unknown_issuer(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )));
        assert!(!unknown_issuer(&wrapped(CertificateError::Expired)));
        assert!(!unknown_issuer(&std::io::Error::other(
            "connection refused"
        )));
        let without = untrusted_certificate(None);
        assert!(
            without.contains("sslrootcert=/path/to/ca.pem") && !without.contains('\n'),
            "{without}"
        );
        let with = untrusted_certificate(Some(std::path::Path::new("/etc/app/ca.pem")));
        assert!(with.contains("sslrootcert /etc/app/ca.pem"), "{with}");
    }

    #[test]
    fn parameters_are_inlined_as_literals() {
        let sql = inline(
            "SELECT $1, $2, $10",
            &[
                Value::Int(5),
                Value::Text("it's".into()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Real(1.5),
            ],
        );
        assert_eq!(sql, "SELECT 5, E'it''s', 1.5");
        assert_eq!(
            inline("$1", &[Value::Text("a\\' OR 1=1 --".into())]),
            "E'a\\\\'' OR 1=1 --'"
        );
    }
}
