//! The HTTP surface: `/metrics`, `/healthz`, `/readyz`, `/api/v1/freezes`, `/api/v1/status`,
//! `/api/v1/episodes`, `/api/v1/alerts`, `/api/v1/silences`, and the status page at `/` (`page/`).
//!
//! Handlers read the metrics registry, the live status snapshot, or the state DB through
//! a read-only connection on the blocking pool. None of them waits for the tick thread.
//!
//! [`serve`] is the accept loop (hyper's HTTP/1 connection under our own loop, not
//! `axum::serve`, which has no timeouts and no limit): a client has
//! [`HEADER_READ_TIMEOUT`] to send each request head, at most [`connection_limit`]
//! connections are open (a share of `RLIMIT_NOFILE` after a reserve for the state DB and
//! the sources), and beyond it the longest-idle connection is closed to make room, so
//! `/healthz` answers however many idle sockets a client holds. Accept errors (EMFILE)
//! pause the loop instead of spinning it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

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
/// A client has this long to send a whole request head, counted from when the server
/// starts waiting for it: from the connect, or from the previous response on a kept-alive
/// connection. So it is both the header timeout (a slowloris trickling bytes is cut) and
/// the keep-alive idle timeout. A scrape sends its ~200-byte head at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors never given to HTTP connections: the state DB's connections (with WAL
/// and shm), the runtime, stdio and logs. The sidecar holds about 30 at rest.
pub const FD_RESERVE: u64 = 64;
/// Further descriptors kept per source (its database, WAL and shm, or a followed file).
pub const FD_RESERVE_PER_SOURCE: u64 = 4;
/// Most HTTP connections open at once, whatever the fd limit: scrapers, a status page and
/// a few people with curl need far fewer.
pub const MAX_CONNECTIONS: usize = 256;
/// Fewest connections allowed, however low the fd limit: `/healthz` and a scrape fit.
pub const MIN_CONNECTIONS: usize = 4;
/// Pause after a failed accept (EMFILE, ENFILE, ENOMEM) before the next, so a full fd
/// table does not spin the loop; an idle connection is closed first to free one.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How often a stopping server looks whether its connections have finished.
const DRAIN_CHECK: Duration = Duration::from_millis(10);

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
        .route("/api/v1/silences", get(silences))
        .layer(axum::middleware::map_response(date_now))
        .with_state(state)
}

/// Every response's `Date` is the wall clock now. hyper's own is cached until its next
/// one-second update, which after the clock is stepped back lies as far in the future as
/// the step, so it stayed stale for that long (an hour for a one-hour step).
async fn date_now(mut response: Response) -> Response {
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    if let Ok(value) = header::HeaderValue::from_str(&now) {
        response.headers_mut().insert(header::DATE, value);
    }
    response
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
    let (ticks, last_tick_mono_ns) = s.status.ticks();
    (ticks > 0).then(|| mono_ns() - last_tick_mono_ns)
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

/// What a `/api/v1/freezes` or `/api/v1/episodes` query asks for, checked.
struct Window {
    since_ns: i64,
    limit: i64,
    source: Option<String>,
}

/// Parses the query: `since` (RFC 3339) and `limit` into nanoseconds and a row count; a
/// query that does not parse, or a value out of range, is the 400 answer saying why.
fn window(query: Result<Query<FreezeQuery>, QueryRejection>) -> Result<Window, Box<Response>> {
    let Ok(Query(q)) = query else {
        return Err(Box::new(bad_request(QUERY_HELP.into())));
    };
    let since_ns = match q.since.as_deref() {
        None => 0,
        Some(text) => match humantime::parse_rfc3339_weak(text) {
            Ok(t) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            Err(_) => {
                return Err(Box::new(bad_request(format!(
                    "`since` must be an RFC 3339 time like 2026-11-23T19:00:00Z, not {}",
                    crate::config::quoted(text)
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
    Ok(Window {
        since_ns,
        limit,
        source: q.source,
    })
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
    let w = match window(query) {
        Ok(w) => w,
        Err(response) => return *response,
    };
    read_state(&s, move |r| {
        Ok(r.events_since(w.since_ns, w.limit)?
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
    let Window {
        since_ns,
        limit,
        source,
    } = match window(query) {
        Ok(w) => w,
        Err(response) => return *response,
    };
    read_state(&s, move |r| {
        let wanted = |name: &str| source.as_deref().is_none_or(|want| name == want);
        let mut rows: Vec<EpisodeRow> = r
            .episodes_since(since_ns, limit)?
            .into_iter()
            .filter(|e| wanted(&e.episode.source))
            .map(|e| EpisodeRow::Episode(episode_json(e)))
            .collect();
        rows.extend(
            r.folded_since(since_ns)?
                .into_iter()
                .filter(|f| wanted(&f.source))
                .map(|f| {
                    EpisodeRow::Folded(FoldedJson {
                        kind: "folded",
                        folded: f.count,
                        first_day: crate::time::day_label(f.first_day),
                        last_day: crate::time::day_label(f.last_day),
                        source: f.source,
                    })
                }),
        );
        Ok(rows)
    })
    .await
}

/// One row of `/api/v1/episodes`: an episode, or after them one summary row per source
/// whose episodes were folded (counted, not stored one by one) on the days from `since`.
#[derive(Serialize)]
#[serde(untagged)]
enum EpisodeRow {
    Episode(EpisodeJson),
    Folded(FoldedJson),
}

#[derive(Serialize)]
struct FoldedJson {
    source: String,
    /// Always `folded`.
    kind: &'static str,
    /// How many episodes of this source were folded.
    folded: u64,
    /// UTC days (`YYYY-MM-DD`) of the first and last folded episode counted.
    first_day: String,
    last_day: String,
}

async fn alerts(State(s): State<AppState>) -> Response {
    let now = crate::clock::real_ns();
    read_state(&s, move |r| {
        r.read_with(|c| crate::alerts::outbox::read_view(c, now))
    })
    .await
}

/// Silences, read-only: they are added and expired with `stallwatch silence` on the
/// machine (a write over HTTP would need authentication this server does not have).
async fn silences(State(s): State<AppState>) -> Response {
    let now = crate::clock::real_ns();
    read_state(&s, move |r| {
        r.read_with(|c| crate::alerts::silence::read_view(c, now))
    })
    .await
}

// ---- serving -------------------------------------------------------------------------

/// How many HTTP connections may be open under a soft `RLIMIT_NOFILE` of `nofile`, with
/// `sources` sources: half of what the reserve leaves, within
/// [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`].
pub fn connection_limit(nofile: u64, sources: usize) -> usize {
    let reserve = FD_RESERVE + FD_RESERVE_PER_SOURCE * sources as u64;
    let share = nofile.saturating_sub(reserve) / 2;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// This process's soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Why a connection was refused or cut, `stallwatch_http_connections_rejected_total{reason}`.
pub const REJECT_REASONS: [&str; 4] = ["idle_evicted", "limit", "accept_error", "header_timeout"];

/// One open connection: when it last finished a request (`None` while one is in
/// flight) and how to close it.
struct Open {
    idle_since: Option<Instant>,
    close: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The open connections, behind a short lock (never held across an await).
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Open>,
}

#[derive(Clone)]
struct Connections {
    registry: Arc<Mutex<Registry>>,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    limit: usize,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reject(&self, reason: &'static str) {
        self.metrics
            .http
            .connections_rejected_total
            .with_label_values(&[reason])
            .inc();
        *self.status.lock().http.rejected.entry(reason).or_default() += 1;
    }

    fn publish(&self, open: usize) {
        self.metrics.http.connections.set(open as i64);
        self.status.lock().http.connections = open as u64;
    }

    /// Closes the connection idle longest; false when every one is busy.
    fn evict_idle(&self) -> bool {
        let mut registry = self.lock();
        let oldest = registry
            .open
            .iter()
            .filter_map(|(id, c)| c.idle_since.map(|t| (t, *id)))
            .min();
        let Some((_, id)) = oldest else {
            return false;
        };
        if let Some(close) = registry.open.get_mut(&id).and_then(|c| c.close.take()) {
            let _ = close.send(());
        }
        registry.open.remove(&id);
        let open = registry.open.len();
        drop(registry);
        self.publish(open);
        self.reject("idle_evicted");
        true
    }

    /// Registers a new connection if there is room (closing the longest-idle one if need
    /// be); `None` when the limit is reached and every connection is busy.
    fn admit(&self) -> Option<(u64, tokio::sync::oneshot::Receiver<()>)> {
        let full = self.lock().open.len() >= self.limit;
        if full && !self.evict_idle() {
            self.reject("limit");
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut registry = self.lock();
        let id = registry.next_id;
        registry.next_id += 1;
        registry.open.insert(
            id,
            Open {
                idle_since: Some(Instant::now()),
                close: Some(tx),
            },
        );
        let open = registry.open.len();
        drop(registry);
        self.publish(open);
        Some((id, rx))
    }

    fn set_busy(&self, id: u64, busy: bool) {
        if let Some(c) = self.lock().open.get_mut(&id) {
            c.idle_since = (!busy).then(Instant::now);
        }
    }

    fn remove(&self, id: u64) {
        let mut registry = self.lock();
        if registry.open.remove(&id).is_some() {
            let open = registry.open.len();
            drop(registry);
            self.publish(open);
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().open.is_empty()
    }
}

/// Marks a connection busy while a request is in flight.
struct Busy {
    connections: Connections,
    id: u64,
}

impl Busy {
    fn enter(connections: &Connections, id: u64) -> Busy {
        connections.set_busy(id, true);
        Busy {
            connections: connections.clone(),
            id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.connections.set_busy(self.id, false);
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets open connections finish
/// their requests (the caller bounds that wait) and returns when all are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limit: usize,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    metrics.http.connection_limit.set(limit as i64);
    for reason in REJECT_REASONS {
        metrics
            .http
            .connections_rejected_total
            .with_label_values(&[reason]);
    }
    status.lock().http.connection_limit = limit as u64;
    let connections = Connections {
        registry: Arc::default(),
        metrics,
        status,
        limit,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let (draining_tx, draining) = tokio::sync::watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                connections.reject("accept_error");
                tracing::warn!(error = %e, "cannot accept an HTTP connection; closing an idle one and pausing");
                connections.evict_idle();
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some((id, evicted)) = connections.admit() else {
            drop(stream);
            continue;
        };
        let service = {
            let connections = connections.clone();
            let tower = hyper_util::service::TowerToHyperService::new(app.clone());
            hyper::service::service_fn(move |request| {
                let busy = Busy::enter(&connections, id);
                let response = hyper::service::Service::call(&tower, request);
                async move {
                    let response = response.await;
                    drop(busy);
                    response
                }
            })
        };
        let builder = builder.clone();
        let connections = connections.clone();
        let mut draining = draining.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => Some(result),
                // Closed to make room: dropping the connection closes its socket.
                _ = evicted => None,
                _ = draining.changed() => {
                    conn.as_mut().graceful_shutdown();
                    Some(conn.await)
                }
            };
            if let Some(Err(e)) = result {
                if e.is_timeout() {
                    connections.reject("header_timeout");
                }
            }
            connections.remove(id);
        });
    }
    drop(listener);
    let _ = draining_tx.send(true);
    while !connections.is_empty() {
        tokio::time::sleep(DRAIN_CHECK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_room_for_the_sources() {
        assert_eq!(connection_limit(256, 0), 96);
        assert_eq!(connection_limit(256, 8), 80);
        assert_eq!(connection_limit(1024, 0), MAX_CONNECTIONS);
        assert_eq!(connection_limit(64, 0), MIN_CONNECTIONS);
        assert_eq!(connection_limit(u64::MAX, 32), MAX_CONNECTIONS);
    }
}
