//! The HTTP surface: `/metrics`, `/healthz`, `/readyz`, `/api/v1/freezes`, `/api/v1/status`,
//! `/api/v1/episodes`, `/api/v1/alerts`, and the status page at `/` (`page/`).
//!
//! Handlers read the metrics registry, the live status snapshot, or the state DB through
//! a read-only connection on the blocking pool. None of them waits for the tick thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::clock::mono_ns;
use crate::metrics::Metrics;
use crate::state::{StateReader, StoredEpisode, StoredEvent};
use crate::status::SharedStatus;

/// Default number of events `/api/v1/freezes` returns.
pub const DEFAULT_EVENT_LIMIT: i64 = 1000;
/// Ticks without progress after which `/healthz` says the detector is wedged.
pub const HEALTHY_TICKS: i64 = 20;
/// Floor for that staleness, so a short tick does not make health flap.
pub const HEALTHY_MIN_NS: i64 = 5_000_000_000;

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub status: SharedStatus,
    pub reader: Arc<Mutex<StateReader>>,
    pub tick_ns: i64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/freezes", get(freezes))
        .route("/api/v1/status", get(status))
        .route("/api/v1/episodes", get(episodes))
        .route("/api/v1/alerts", get(alerts))
        .with_state(state)
}

/// The live status page: a constant document whose script reads the API below.
async fn status_page() -> Response {
    (crate::page::headers(), crate::page::INDEX_HTML).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// Seconds since the tick thread last completed a tick.
fn tick_age_ns(s: &AppState) -> Option<i64> {
    let status = s.status.lock();
    (status.ticks > 0).then(|| mono_ns() - status.last_tick_mono_ns)
}

async fn healthz(State(s): State<AppState>) -> Response {
    let limit = (HEALTHY_TICKS * s.tick_ns).max(HEALTHY_MIN_NS);
    match tick_age_ns(&s) {
        Some(age) if age > limit => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("detector has not ticked for {:.1}s\n", age as f64 / 1e9),
        )
            .into_response(),
        _ => (StatusCode::OK, "ok\n").into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    let status = s.status.snapshot();
    if status.ticks == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "detector has not ticked yet\n",
        )
            .into_response();
    }
    if let Some(error) = status.state_db_error {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state database: {error}\n"),
        )
            .into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    Json(s.status.snapshot()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeQuery {
    since: Option<String>,
    limit: Option<i64>,
    source: Option<String>,
}

#[derive(Serialize)]
struct ChannelJson {
    channel: String,
    estimate_seconds: f64,
}

#[derive(Serialize)]
struct FreezeJson {
    id: i64,
    kind: &'static str,
    started_at: String,
    duration_seconds: f64,
    detected_at: String,
    channels: Vec<ChannelJson>,
}

fn rfc3339(ns: i64) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

fn to_json(e: StoredEvent) -> FreezeJson {
    FreezeJson {
        id: e.id,
        kind: e.event.kind.as_str(),
        started_at: rfc3339(e.event.started_at_ns),
        duration_seconds: e.event.duration_ns as f64 / 1e9,
        detected_at: rfc3339(e.detected_at_ns),
        channels: e
            .event
            .channels
            .into_iter()
            .map(|c| ChannelJson {
                channel: c.channel,
                estimate_seconds: c.estimate_ns as f64 / 1e9,
            })
            .collect(),
    }
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Parses `since` (RFC 3339) and `limit` into nanoseconds and a row count.
fn window(q: &FreezeQuery) -> Result<(i64, i64), Box<Response>> {
    let since_ns = match q.since.as_deref() {
        None => 0,
        Some(text) => match humantime::parse_rfc3339_weak(text) {
            Ok(t) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            Err(_) => {
                return Err(Box::new(bad_request(format!(
                    "`since` must be an RFC 3339 time like 2026-11-23T19:00:00Z, not {text:?}"
                ))))
            }
        },
    };
    let limit = q.limit.unwrap_or(DEFAULT_EVENT_LIMIT);
    if !(1..=crate::state::MAX_EVENTS_PER_QUERY).contains(&limit) {
        return Err(Box::new(bad_request(format!(
            "`limit` must be between 1 and {}",
            crate::state::MAX_EVENTS_PER_QUERY
        ))));
    }
    Ok((since_ns, limit))
}

/// Runs a state DB read on the blocking pool and answers with its JSON.
async fn read_state<T: Serialize + Send + 'static>(
    s: &AppState,
    read: impl FnOnce(&StateReader) -> Result<T, crate::state::StateError> + Send + 'static,
) -> Response {
    let reader = s.reader.clone();
    let result = tokio::task::spawn_blocking(move || {
        let reader = reader.lock().unwrap_or_else(|p| p.into_inner());
        read(&reader)
    })
    .await;
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => {
            s.metrics.state_db_errors_total.inc();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": e.to_string() })),
            )
                .into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "query task failed\n").into_response(),
    }
}

const QUERY_HELP: &str =
    "query parameters are `since` (RFC 3339), `limit` (1-10000) and, for episodes, `source`";

async fn freezes(
    State(s): State<AppState>,
    query: Result<Query<FreezeQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request(QUERY_HELP.into());
    };
    let (since_ns, limit) = match window(&q) {
        Ok(w) => w,
        Err(response) => return *response,
    };
    read_state(&s, move |r| {
        Ok(r.events_since(since_ns, limit)?
            .into_iter()
            .map(to_json)
            .collect::<Vec<_>>())
    })
    .await
}

#[derive(Serialize)]
struct EpisodeJson {
    id: i64,
    source: String,
    kind: &'static str,
    workflow_id: String,
    workflow_name: String,
    from_step: String,
    to_step: String,
    started_at: String,
    duration_seconds: f64,
    cause: &'static str,
    freeze_id: Option<i64>,
    detected_at: String,
}

fn episode_json(e: StoredEpisode) -> EpisodeJson {
    let ep = e.episode;
    EpisodeJson {
        id: e.id,
        kind: ep.kind.as_str(),
        cause: ep.cause.as_str(),
        freeze_id: ep.cause.freeze_id(),
        started_at: rfc3339(ep.started_at_ns),
        duration_seconds: ep.duration_ns as f64 / 1e9,
        detected_at: rfc3339(e.detected_at_ns),
        source: ep.source,
        workflow_id: ep.workflow_id,
        workflow_name: ep.workflow_name,
        from_step: ep.from_step,
        to_step: ep.to_step,
    }
}

async fn episodes(
    State(s): State<AppState>,
    query: Result<Query<FreezeQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request(QUERY_HELP.into());
    };
    let (since_ns, limit) = match window(&q) {
        Ok(w) => w,
        Err(response) => return *response,
    };
    let source = q.source.clone();
    read_state(&s, move |r| {
        Ok(r.episodes_since(since_ns, limit)?
            .into_iter()
            .filter(|e| source.as_ref().is_none_or(|want| &e.episode.source == want))
            .map(episode_json)
            .collect::<Vec<_>>())
    })
    .await
}

async fn alerts(State(s): State<AppState>) -> Response {
    let now = crate::clock::real_ns();
    read_state(&s, move |r| r.alerts_view(now)).await
}
