//! The `[otlp]` table: where traces go, with which headers, under which service name, and
//! whether the sidecar's own work (`stallwatch.*` spans) goes with them.
//!
//! Validated here and called from [`crate::config`], which owns the file; the rules are
//! the same as everywhere else there: unknown keys are errors, and each problem is one
//! sentence naming the key. Header values are secrets (an `authorization` token): no
//! error message, log line or `Debug` output ever shows one.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::value::redact_url;

/// The service name spans carry when the config does not set one.
pub const DEFAULT_SERVICE_NAME: &str = "stallwatch";
/// The OTLP/HTTP path of the traces signal, appended to a base endpoint.
pub const TRACES_PATH: &str = "/v1/traces";
/// Most extra headers accepted: a collector needs one or two (auth, tenant).
pub const MAX_HEADERS: usize = 16;
/// Longest service name accepted (OTLP backends index it; a page of text is a typo).
pub const MAX_SERVICE_NAME_CHARS: usize = 255;

/// `[otlp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    endpoint: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    service_name: Option<String>,
    self_spans: Option<bool>,
}

/// Where and how traces are exported.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The full traces URL: the endpoint with [`TRACES_PATH`] appended unless it ends so.
    pub traces_url: String,
    /// Extra request headers (lower-case names); the values are secrets.
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    /// Export the sidecar's own polls, deliveries and freeze decisions as `stallwatch.*`
    /// spans beside the app's traces (default on).
    pub self_spans: bool,
}

impl OtlpConfig {
    /// The traces URL without userinfo or query, for logs.
    pub fn shown_url(&self) -> String {
        redact_url(&self.traces_url)
    }
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("traces_url", &self.shown_url())
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(name, _)| format!("{name}: ***"))
                    .collect::<Vec<_>>(),
            )
            .field("service_name", &self.service_name)
            .field("self_spans", &self.self_spans)
            .finish()
    }
}

/// Validates `[otlp]`; errors are (key, problem) for [`crate::config::ConfigError::Key`].
pub fn validate(raw: RawOtlp) -> Result<OtlpConfig, (String, String)> {
    let endpoint = raw.endpoint.ok_or_else(|| {
        (
            "otlp.endpoint".to_string(),
            "is missing; set it to the collector's OTLP/HTTP address, like \"http://127.0.0.1:4318\""
                .to_string(),
        )
    })?;
    let traces_url = traces_url(&endpoint).map_err(|problem| ("otlp.endpoint".into(), problem))?;
    if raw.headers.len() > MAX_HEADERS {
        return Err((
            "otlp.headers".into(),
            format!(
                "lists {} headers; at most {MAX_HEADERS} are supported",
                raw.headers.len()
            ),
        ));
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, value) in raw.headers {
        let key = format!("otlp.headers.{name}");
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err((key, "is not a valid HTTP header name".into()));
        }
        if matches!(lower.as_str(), "content-type" | "content-length" | "host") {
            return Err((
                key,
                "is set by the exporter itself (OTLP/HTTP protobuf); remove it".into(),
            ));
        }
        // The value is a secret: say what is wrong with it, never what it is.
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err((
                key,
                "has a value that is not a valid HTTP header value (control characters or non-ASCII)"
                    .into(),
            ));
        }
        headers.push((lower, value));
    }
    let service_name = raw
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    if service_name.trim().is_empty() || service_name.chars().count() > MAX_SERVICE_NAME_CHARS {
        return Err((
            "otlp.service_name".into(),
            format!("must be 1 to {MAX_SERVICE_NAME_CHARS} characters"),
        ));
    }
    Ok(OtlpConfig {
        traces_url,
        headers,
        service_name,
        self_spans: raw.self_spans.unwrap_or(true),
    })
}

/// The traces URL for an endpoint: an http(s) URL with a host, no query or fragment;
/// [`TRACES_PATH`] is appended unless the path already ends with it (a signal-specific
/// endpoint, as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` takes).
fn traces_url(endpoint: &str) -> Result<String, String> {
    let shown = redact_url(endpoint);
    let bad = || {
        format!(
            "must be an http:// or https:// URL of an OTLP/HTTP collector, like \
             \"http://127.0.0.1:4318\", not \"{shown}\""
        )
    };
    let url = reqwest::Url::parse(endpoint.trim()).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "must not have a query or fragment (\"{shown}\"); put credentials in otlp.headers"
        ));
    }
    let base = url.as_str().trim_end_matches('/');
    if base.ends_with(TRACES_PATH) {
        Ok(base.to_string())
    } else {
        Ok(format!("{base}{TRACES_PATH}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(endpoint: &str) -> RawOtlp {
        RawOtlp {
            endpoint: Some(endpoint.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_signal_endpoint_is_kept() {
        let c = validate(raw("http://127.0.0.1:4318")).unwrap();
        assert_eq!(c.traces_url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.service_name, "stallwatch");
        assert!(
            c.self_spans,
            "the sidecar's own spans go out unless turned off"
        );
        let c = validate(raw("https://otel.example/otlp/")).unwrap();
        assert_eq!(c.traces_url, "https://otel.example/otlp/v1/traces");
        let c = validate(raw("https://otel.example/v1/traces")).unwrap();
        assert_eq!(c.traces_url, "https://otel.example/v1/traces");
    }

    #[test]
    fn other_schemes_and_queries_are_refused_without_showing_secrets() {
        for bad in [
            "ftp://collector:4318",
            "127.0.0.1:4318",
            "grpc://x",
            "http://",
        ] {
            let (key, problem) = validate(raw(bad)).unwrap_err();
            assert_eq!(key, "otlp.endpoint", "{bad}");
            assert!(problem.contains("http:// or https://"), "{bad}: {problem}");
        }
        let (_, problem) =
            validate(raw("https://u:hunter2@otel.example/?token=s3cret")).unwrap_err();
        assert!(
            !problem.contains("hunter2") && !problem.contains("s3cret"),
            "{problem}"
        );
    }

    #[test]
    fn header_values_never_reach_an_error_or_debug() {
        let mut r = raw("http://127.0.0.1:4318");
        r.headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        let c = validate(r).unwrap();
        assert_eq!(
            c.headers,
            vec![("authorization".to_string(), "Bearer s3cret".to_string())]
        );
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");

        let mut r = raw("http://127.0.0.1:4318");
        r.headers.insert("x-token".into(), "s3cret\n".into());
        let (key, problem) = validate(r).unwrap_err();
        assert_eq!(key, "otlp.headers.x-token");
        assert!(!problem.contains("s3cret"), "{problem}");
    }

    #[test]
    fn an_otlp_table_without_endpoint_says_what_to_set() {
        let (key, problem) = validate(RawOtlp::default()).unwrap_err();
        assert_eq!(key, "otlp.endpoint");
        assert!(problem.contains("4318"), "{problem}");
    }
}
