//! The HTTP surface: `POST /ingest/{pipeline}`, `POST /message` (Janitor), `GET /healthz`
//! and `GET /metrics`.
//!
//! A request to an ingest pipeline goes through, in order: the pipeline exists (404), the
//! body fits its `body_limit` (413), the host checks `auth` (401) — only then does the
//! pipeline's decoder plugin see it; a rejection by the decoder is answered with its 4xx and
//! reason; the decoded messages are appended to the ingress queue and the answer, 202, comes
//! only once that append is synced (group commit shares one sync among concurrent requests).
//! If they cannot be persisted: 503 with `Retry-After`. Never 2xx without persistence.

pub mod auth;
pub mod oidc;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify, Semaphore};

use tocsin_queue::QueueStore;
use tocsin_runtime::{CallError, IngestRequest, Stage, TrapKind};

use crate::settings::HttpLimits;
use crate::status::PipelineStatus;
use crate::worker::state_writes;
use auth::Authenticator;

/// Seconds a client is asked to wait when its request cannot be persisted.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// One ingest pipeline as the HTTP surface sees it.
pub struct IngestEndpoint {
    /// The pipeline's name.
    pub pipeline: String,
    /// Its decoder stage (calls are serialised; a decode takes microseconds).
    pub decoder: Mutex<Stage>,
    /// Who may post.
    pub auth: Authenticator,
    /// The largest body accepted.
    pub body_limit: usize,
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// The storage checks and the pipeline's queue budget: past it, requests are refused
    /// with 503.
    pub budget: crate::budget::PipelineBudget,
    /// Woken after each append.
    pub ingress_ready: Arc<Notify>,
    /// Counters.
    pub status: Arc<PipelineStatus>,
    /// Where each message's steps are recorded.
    pub tracer: Arc<crate::trace::Tracer>,
    /// Where the metrics of messages are kept as time series.
    pub history: Arc<crate::history::History>,
}

/// The ingest pipelines currently running, by name, and those being replaced.
#[derive(Clone, Default)]
pub struct IngestTable {
    endpoints: Arc<RwLock<HashMap<String, Arc<IngestEndpoint>>>>,
    /// Pipelines between their old version's stop and their new version's start: requests
    /// get 503 + Retry-After (a sender retries), not 404 (GitHub, for one, would not).
    reloading: Arc<RwLock<HashSet<String>>>,
    /// Every known pipeline's state: one that is not running (failed to start, disabled)
    /// answers 503 with its state, not 404.
    board: crate::status::StatusBoard,
}

impl IngestTable {
    /// An empty table that tells pipelines of `board` that are not running from unknown ones.
    pub fn with_board(board: crate::status::StatusBoard) -> Self {
        IngestTable {
            board,
            ..IngestTable::default()
        }
    }

    /// The state of a known pipeline.
    fn state_of(&self, name: &str) -> Option<crate::status::PipelineState> {
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        board.get(name).map(|status| status.state())
    }

    /// Makes a pipeline reachable at `/ingest/{name}` (replacing an older version).
    pub fn register(&self, endpoint: Arc<IngestEndpoint>) {
        let mut map = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        map.insert(endpoint.pipeline.clone(), endpoint);
    }

    /// Makes a pipeline unreachable — if `endpoint` is still the registered one.
    pub fn unregister(&self, endpoint: &Arc<IngestEndpoint>) {
        let mut map = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&endpoint.pipeline)
            .is_some_and(|e| Arc::ptr_eq(e, endpoint))
        {
            map.remove(&endpoint.pipeline);
        }
    }

    /// Marks `name` as being replaced, until [`IngestTable::end_reload`].
    pub fn begin_reload(&self, name: &str) {
        let mut set = self.reloading.write().unwrap_or_else(|p| p.into_inner());
        set.insert(name.to_string());
    }

    /// Ends a replacement begun with [`IngestTable::begin_reload`].
    pub fn end_reload(&self, name: &str) {
        let mut set = self.reloading.write().unwrap_or_else(|p| p.into_inner());
        set.remove(name);
    }

    fn is_reloading(&self, name: &str) -> bool {
        let set = self.reloading.read().unwrap_or_else(|p| p.into_inner());
        set.contains(name)
    }

    fn get(&self, name: &str) -> Option<Arc<IngestEndpoint>> {
        let map = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned()
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct HttpState {
    table: IngestTable,
    /// The pipeline `POST /message` goes to (Janitor compatibility), if configured.
    janitor_pipeline: Option<String>,
    /// A body must arrive within this.
    body_timeout: Duration,
    /// KiB of request bodies that may be held at once, all requests of a listener together.
    body_memory: Arc<Semaphore>,
    /// Its size in KiB (at most `u32::MAX`, so one request can always ask for all of it).
    body_memory_kib: u32,
}

impl HttpState {
    fn new(table: IngestTable, janitor_pipeline: Option<String>, limits: &HttpLimits) -> Self {
        let kib = u32::try_from(limits.max_body_memory >> 10)
            .unwrap_or(u32::MAX)
            .max(1);
        HttpState {
            table,
            janitor_pipeline,
            body_timeout: limits.body_timeout,
            body_memory: Arc::new(Semaphore::new(kib as usize)),
            body_memory_kib: kib,
        }
    }
}

/// The HTTP routes: ingest, Janitor's `/message`, health and metrics.
pub fn router(
    table: IngestTable,
    metrics: Arc<crate::metrics::Metrics>,
    janitor_pipeline: Option<String>,
    limits: &HttpLimits,
    metrics_token: Option<String>,
) -> Router {
    let metrics_auth = Arc::new(metrics_token.map_or(Authenticator::None, Authenticator::Bearer));
    let metrics_route = get(move |headers: HeaderMap| {
        let (metrics, auth) = (metrics.clone(), metrics_auth.clone());
        async move {
            if let Err(reason) = auth.check_headers(&headers).await {
                return unauthorized(&auth, reason);
            }
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics.render(),
            )
                .into_response()
        }
    });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", metrics_route)
        .route("/ingest/{pipeline}", post(ingest))
        .route("/message", post(message))
        .with_state(HttpState::new(table, janitor_pipeline, limits))
}

/// The routes of the optional second listener for Janitor clients (which expect port 5000):
/// only `POST /message` and `GET /healthz`.
pub fn janitor_router(
    table: IngestTable,
    janitor_pipeline: Option<String>,
    limits: &HttpLimits,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/message", post(message))
        .with_state(HttpState::new(table, janitor_pipeline, limits))
}

/// 503 with `Retry-After`: nothing was accepted, the client should try again.
fn unavailable(reason: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// 401 with the reason, and the challenge of a bearer scheme.
fn unauthorized(auth: &Authenticator, reason: String) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, reason);
    if matches!(auth, Authenticator::Bearer(_) | Authenticator::Oidc(_)) {
        response
            .headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    response
}

fn error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

/// The client's address, when the listener recorded it (`http_serve` does).
type Client = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

async fn ingest(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    client: Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client = client.map(|c| c.0 .0);
    accept(&state, &name, client, method, uri, headers, body).await
}

/// `POST /message`, Janitor's endpoint: the same as `POST /ingest/{janitor pipeline}`, but
/// answered `200 OK` as Janitor's own server did.
async fn message(
    State(state): State<HttpState>,
    client: Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(name) = &state.janitor_pipeline else {
        return error(
            StatusCode::NOT_FOUND,
            "POST /message is not routed anywhere: start tocsin with --janitor-pipeline NAME",
        );
    };
    let client = client.map(|c| c.0 .0);
    let mut response = accept(&state, name, client, method, uri, headers, body).await;
    if response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// Checks, decodes and durably appends one request to pipeline `name`.
///
/// Everything that can be checked without the body is checked before it is read: the
/// pipeline, the declared size, a bearer or OIDC token (a GitHub signature needs the body, but
/// its header must be there), the disk budget and the memory budget for bodies. Then the body
/// must arrive within the body timeout.
async fn accept(
    state: &HttpState,
    name: &str,
    client: Option<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let table = &state.table;
    let name = name.to_string();
    let Some(endpoint) = table.get(&name) else {
        if table.is_reloading(&name) {
            return unavailable("the pipeline is being reloaded; nothing was accepted, try again");
        }
        // A known pipeline that is not running says so (a sender retries a 503, and GitHub,
        // for one, never retries a 404). The reason is the operator's to read, in the log or
        // the admin API: it may name files and settings.
        use crate::status::PipelineState;
        let not_running = match table.state_of(&name) {
            // Running without an endpoint: a scheduled pipeline. Stopped: its file is gone.
            None
            | Some(PipelineState::Running | PipelineState::IngestOnly | PipelineState::Stopped) => {
                None
            }
            Some(PipelineState::Starting) => Some("is starting"),
            Some(PipelineState::Failed(_)) => Some(
                "failed to start (its file is invalid or a plugin did not start; see the \
                 server's log)",
            ),
            Some(PipelineState::Disabled) => Some("is disabled"),
            Some(PipelineState::Paused) => Some("is paused"),
        };
        if let Some(state) = not_running {
            return unavailable(&format!(
                "pipeline `{name}` {state}; nothing was accepted, try again later"
            ));
        }
        return error(
            StatusCode::NOT_FOUND,
            format!("no ingest pipeline named `{name}`"),
        );
    };
    let response = accept_known(state, &endpoint, client, method, uri, headers, body).await;
    if !response.status().is_success() {
        endpoint.status.record_rejection(response.status().as_u16());
    }
    response
}

/// Headers that carry credentials. The host checks them (`auth`); the decoder, third-party
/// code, never sees them.
const CREDENTIAL_HEADERS: [axum::http::HeaderName; 3] = [
    axum::http::header::AUTHORIZATION,
    axum::http::header::PROXY_AUTHORIZATION,
    axum::http::header::COOKIE,
];

/// Whether the header `name` (lower case) carries credentials, which no decoder gets.
pub fn is_credential_header(name: &str) -> bool {
    CREDENTIAL_HEADERS.iter().any(|h| h.as_str() == name)
}

/// The request's headers as the decoder gets them: all but [`CREDENTIAL_HEADERS`].
fn decoder_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !is_credential_header(name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// [`accept`] once the pipeline is found.
async fn accept_known(
    state: &HttpState,
    endpoint: &IngestEndpoint,
    client: Option<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let name = endpoint.pipeline.clone();
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than this pipeline's limit of {} bytes",
                endpoint.body_limit
            ),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > endpoint.body_limit) {
        return too_large();
    }
    if let Err(reason) = endpoint.auth.check_headers(&headers).await {
        return unauthorized(&endpoint.auth, reason);
    }
    if let Some(why) = endpoint.budget.refusal() {
        return unavailable(&format!("{why}; nothing was accepted, try again later"));
    }
    // A request never asks for more than the whole budget (then it waits for nothing else).
    let need_kib = u32::try_from(declared.unwrap_or(endpoint.body_limit).div_ceil(1024))
        .unwrap_or(u32::MAX)
        .clamp(1, state.body_memory_kib);
    let Ok(_body_memory) = state.body_memory.clone().try_acquire_many_owned(need_kib) else {
        return unavailable(
            "too many request bodies are being read at once; nothing was accepted, try again",
        );
    };
    let read = Limited::new(body, endpoint.body_limit).collect();
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {}; nothing was accepted",
                    humantime::format_duration(state.body_timeout)
                ),
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    if let Err(reason) = endpoint.auth.check_body(&headers, &body) {
        return unauthorized(&endpoint.auth, reason);
    }
    let request = IngestRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
        headers: decoder_headers(&headers),
        body: body.to_vec(),
    };
    let c = &endpoint.status.counters;
    let decoded = endpoint.decoder.lock().await.decode(&request).await;
    let (mut messages, changes) = match decoded {
        Ok((Ok(messages), changes)) => (messages, changes),
        Ok((Err(rejection), _)) => {
            let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, rejection.reason);
        }
        Err(CallError::Trap {
            kind: TrapKind::Memory,
            ..
        }) => {
            // Its memory follows `body_limit` (validation), so what did not fit is this
            // body's shape, something parsing into far more than itself: the client's input,
            // answered 413 and counted as a rejection, not as a plugin fault.
            let memory = endpoint.decoder.lock().await.context().limits.memory;
            tracing::warn!(pipeline = %name, bytes = body.len(), "the decoder ran out of its memory on a request; answered 413");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the decoder ran out of its memory (the source's limits.memory, {}) on \
                     this {}-byte body; nothing was accepted: send it in smaller requests",
                    tocsin_config::units::format_size(memory),
                    body.len()
                ),
            );
        }
        Err(e) => {
            endpoint.status.call_failed("source", &e);
            tracing::error!(pipeline = %name, error = %e, "decoder failed; request not accepted");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the pipeline's decoder failed; nothing was accepted",
            );
        }
    };
    derive_missing_ids(&body, &mut messages);
    let state = state_writes("source", changes);
    let size = endpoint.queue.append_size_bound(&messages, &state);
    let reserved = match endpoint.budget.admit(size) {
        Ok(reservation) => reservation,
        Err(why) => return unavailable(&format!("{why}; nothing was accepted, try again later")),
    };
    // Traced before the append: the filters may take the messages as soon as it is applied.
    if endpoint.tracer.enabled() {
        let client = client.map_or_else(String::new, |a| format!(" from {a}"));
        let via = format!("{} {}{client}", request.method, request.path);
        endpoint.tracer.record_accepted(&name, &messages, &via);
    }
    let commit = endpoint.queue.append_ingress(&name, &messages, &state);
    drop(reserved); // the store counts the messages now
    match commit.await {
        Ok(()) => {
            c.produced
                .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
            endpoint.ingress_ready.notify_one();
            endpoint.history.record(&name, &messages);
            let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "accepted": messages.len(), "ids": ids })),
            )
                .into_response()
        }
        Err(e) => {
            let step = crate::trace::Step::NotStored {
                error: e.to_string(),
            };
            endpoint.tracer.record_all(&name, &messages, step);
            tracing::error!(pipeline = %name, error = %e, "cannot persist ingested messages");
            unavailable("the messages could not be stored; nothing was accepted, try again")
        }
    }
}

/// Gives messages without an id one derived from the request body (`req-<hash>-<n>`), so a
/// client's retry of the same request produces the same ids and the sinks' idempotency keys
/// catch it.
pub fn derive_missing_ids(body: &[u8], messages: &mut [tocsin_message::Message]) {
    let digest = hex::encode(&Sha256::digest(body)[..8]);
    for (n, m) in messages.iter_mut().enumerate() {
        if m.id.is_empty() {
            m.id = format!("req-{digest}-{n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn post(app: Router, path: &str) -> (StatusCode, Option<String>) {
        let request = axum::http::Request::post(path)
            .body(Body::from("{}"))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let retry = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (response.status(), retry)
    }

    #[tokio::test]
    async fn a_pipeline_being_reloaded_answers_503_not_404() {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn QueueStore> = tocsin_queue::SledStore::open(dir.path()).unwrap();
        let metrics = crate::metrics::Metrics::new(crate::manager::new_board(), queue);
        let table = IngestTable::default();
        let app = || {
            router(
                table.clone(),
                metrics.clone(),
                None,
                &HttpLimits::default(),
                None,
            )
        };
        assert_eq!(
            post(app(), "/ingest/hooks").await,
            (StatusCode::NOT_FOUND, None)
        );
        table.begin_reload("hooks");
        assert_eq!(
            post(app(), "/ingest/hooks").await,
            (StatusCode::SERVICE_UNAVAILABLE, Some("5".to_string()))
        );
        table.end_reload("hooks");
        assert_eq!(post(app(), "/ingest/hooks").await.0, StatusCode::NOT_FOUND);
        // Janitor's route without a configured pipeline says how to configure it.
        assert_eq!(post(app(), "/message").await.0, StatusCode::NOT_FOUND);
    }
}
