//! A small client of Prometheus's HTTP query API (`/api/v1/query`), for `verify
//! --prometheus` and `report --prometheus`. Thanos Query and Mimir serve the same API under
//! a path prefix, so the base URL may carry one (`http://mimir/prometheus`).
//!
//! It owns the transport and its bounds, not the PromQL (`fleet.rs`). Every answer is
//! bounded: at most [`MAX_RESPONSE_BYTES`] are read, at most [`MAX_SERIES`] series are
//! accepted, each query waits at most [`QUERY_TIMEOUT`]. Every failure is one sentence an
//! operator can act on; the URL is shown redacted (userinfo and query dropped).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::backoff::describe_transport_error;
use crate::config::{clip_words, quoted, redact_url};

/// Longest wait for one query: Prometheus's own default query timeout is 2 min; a
/// verdict over 90 days of a fleet takes seconds on a healthy server.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of one answer read: 10,000 series of a few labels are about 2 MB, so this
/// only stops a runaway answer (a selector that matched the whole server).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Most series one answer may hold: one per (job, instance) of the fleet; more than this
/// is not a fleet of sidecars but a selector that matched too much.
pub const MAX_SERIES: usize = 10_000;

/// One series of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus query API at one base URL.
pub struct Prometheus {
    base: reqwest::Url,
    shown: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Prometheus {
    /// Checks the URL (http or https, a host) and builds the client; nothing is sent yet.
    pub fn new(url: &str) -> Result<Prometheus, String> {
        let shown = redact_url(url.trim());
        let bad = || {
            format!(
                "--prometheus {} is not an http:// or https:// URL of a Prometheus server; give its base URL, e.g. http://prometheus:9090",
                quoted(&shown)
            )
        };
        let mut base = reqwest::Url::parse(url.trim()).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none_or(str::is_empty) {
            return Err(bad());
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an async runtime: {e}"))?;
        Ok(Prometheus {
            base,
            shown,
            client,
            runtime,
        })
    }

    /// The URL as it may be shown.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// An instant query evaluated at `time_s` (unix seconds); the result must be a vector.
    pub fn instant(&self, query: &str, time_s: f64) -> Result<Vec<Sample>, String> {
        let url = self
            .base
            .join("api/v1/query")
            .expect("a relative path joins onto an http URL");
        let time = format!("{time_s:.3}");
        let timeout = format!("{}s", QUERY_TIMEOUT.as_secs());
        let params = [
            ("query", query),
            ("time", time.as_str()),
            ("timeout", timeout.as_str()),
        ];
        let body = self
            .runtime
            .block_on(self.get(url, &params))
            .map_err(|e| clip_words(&e))?;
        parse_vector(&body, &self.shown)
    }

    async fn get(&self, url: reqwest::Url, params: &[(&str, &str)]) -> Result<Vec<u8>, String> {
        let shown = &self.shown;
        let mut response = self
            .client
            .get(url)
            .query(params)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach Prometheus at {shown}: {}; check --prometheus and that the server is up",
                    describe(&e)
                )
            })?;
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(format!(
                            "Prometheus at {shown} answered with more than {} MiB; narrow --selector or the window",
                            MAX_RESPONSE_BYTES >> 20
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                        "Prometheus at {shown} broke off its answer: {}",
                        describe(&e)
                    ))
                }
            }
        }
        // A PromQL error is a JSON body with status "error" and HTTP 400/422/503.
        if status.is_success() || body.first() == Some(&b'{') {
            return Ok(body);
        }
        Err(format!(
            "{shown} did not answer as a Prometheus query API (HTTP {}); give the server's base URL, e.g. http://prometheus:9090",
            status.as_u16()
        ))
    }
}

/// An `/api/v1/query` answer → its vector; an `error` answer → its sentence.
pub fn parse_vector(body: &[u8], shown: &str) -> Result<Vec<Sample>, String> {
    let not_api = || {
        format!(
            "{shown} did not answer as a Prometheus query API (not its JSON); give the server's base URL, e.g. http://prometheus:9090"
        )
    };
    let v: Value = serde_json::from_slice(body).map_err(|_| not_api())?;
    match v["status"].as_str() {
        Some("success") => {}
        Some("error") => {
            let kind = v["errorType"].as_str().unwrap_or("error");
            let error = v["error"].as_str().unwrap_or("no reason given");
            let hint = if kind == "bad_data" {
                "; check --selector (a PromQL label matcher list like '{app=\"precis\"}')"
            } else {
                ""
            };
            return Err(clip_words(&format!(
                "Prometheus at {shown} refused the query ({kind}): {error}{hint}"
            )));
        }
        _ => return Err(not_api()),
    }
    if v["data"]["resultType"] != "vector" {
        return Err(format!(
            "Prometheus at {shown} answered a {} where a vector was asked for",
            v["data"]["resultType"].as_str().unwrap_or("something else")
        ));
    }
    let result = v["data"]["result"].as_array().ok_or_else(not_api)?;
    if result.len() > MAX_SERIES {
        return Err(format!(
            "the query matched {} series, more than the {MAX_SERIES} instances stallwatch reads; narrow --selector",
            result.len()
        ));
    }
    let mut out = Vec::with_capacity(result.len());
    for series in result {
        let labels = series["metric"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let value = series["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(not_api)?;
        out.push(Sample { labels, value });
    }
    Ok(out)
}

/// A transport error as one line, without the URL (it may carry credentials).
fn describe(e: &reqwest::Error) -> String {
    let timed_out = format!("no answer within {} s", QUERY_TIMEOUT.as_secs());
    describe_transport_error(e, &timed_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_are_not_http_are_refused_in_one_sentence() {
        for bad in ["prometheus:9090", "ftp://x/", "http://", "/tmp/fifo", ""] {
            let e = Prometheus::new(bad).err().unwrap();
            assert!(
                e.contains("is not an http:// or https:// URL"),
                "{bad}: {e}"
            );
        }
        let p = Prometheus::new("http://user:secret@127.0.0.1:9/mimir/prometheus?x=1").unwrap();
        assert_eq!(p.shown(), "http://***@127.0.0.1:9/mimir/prometheus");
        assert_eq!(p.base.path(), "/mimir/prometheus/");
    }

    #[test]
    fn answers_are_read_or_refused() {
        let ok = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"instance":"a:1","job":"j"},"value":[1700000000,"3.5"]}]}}"#;
        let v = parse_vector(ok, "P").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].value, 3.5);
        assert_eq!(v[0].labels["instance"], "a:1");
        let err =
            br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#;
        let e = parse_vector(err, "P").unwrap_err();
        assert!(
            e.contains("refused the query (bad_data): 1:5: parse error"),
            "{e}"
        );
        assert!(e.contains("check --selector"), "{e}");
        assert!(parse_vector(b"<html>", "P")
            .unwrap_err()
            .contains("did not answer as a Prometheus query API"));
        let mut many =
            String::from(r#"{"status":"success","data":{"resultType":"vector","result":["#);
        for i in 0..=MAX_SERIES {
            if i > 0 {
                many.push(',');
            }
            many.push_str(&format!(
                r#"{{"metric":{{"instance":"{i}"}},"value":[1,"1"]}}"#
            ));
        }
        many.push_str("]}}");
        let e = parse_vector(many.as_bytes(), "P").unwrap_err();
        assert!(e.contains("narrow --selector"), "{e}");
    }
}
