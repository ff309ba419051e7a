//! The admin API, `/api/v1/…` on the main listener: pipelines, queues and dead letters of the
//! running server, as JSON; replay and purge while it runs.
//!
//! Every request needs a token of `--api-tokens` ([`tokens`]): a `read` token for `GET`, an
//! `admin` token for anything that changes state. Without `--api-tokens` the API is off and
//! says so. Every request to it — let in or not — is written to the access log (target
//! `tocsin::access`): time, token name, client address, method, path, status. The routes and
//! what they answer are listed in [`routes::ROUTES`], from which `docs/api.md` is generated.

pub mod client;
pub mod expected;
pub mod routes;
pub mod silences;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use tocsin_queue::{QueueError, QueueStore};

use crate::manager::{Command, CommandRequest};
use crate::operator::{self, Selection};
use crate::status::StatusBoard;
use tokens::{ApiTokens, Caller, Denial, Role};

/// The path every route of this version starts with.
pub const PREFIX: &str = "/api/v1";

/// The most entries a peek at a queue returns.
pub const MAX_PEEK: usize = 1000;

/// What the API reads and acts on: the server's parts it serves.
#[derive(Clone)]
pub struct ServerParts {
    /// The pipelines' states and counters.
    pub board: StatusBoard,
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// To the server's loop, which owns the running pipelines.
    pub commands: tokio::sync::mpsc::Sender<CommandRequest>,
    /// The message trace.
    pub tracer: Arc<crate::trace::Tracer>,
    /// The metrics of messages as time series.
    pub history: Arc<crate::history::History>,
    /// The silences.
    pub silences: Arc<crate::silences::Silences>,
    /// The running pipelines' expected reporters.
    pub expectations: crate::absence::Registry,
    /// The running pipelines' register locks.
    pub register_locks: crate::open_alerts::Locks,
}

/// What the handlers share.
#[derive(Clone)]
struct AdminState {
    tokens: Arc<ApiTokens>,
    parts: ServerParts,
}

impl std::ops::Deref for AdminState {
    type Target = ServerParts;

    fn deref(&self) -> &ServerParts {
        &self.parts
    }
}

/// The API's routes under [`PREFIX`], for the main listener's router; with `tokens` `None`
/// every request is answered 404 with how to turn the API on. Pause, resume and run-now go to
/// `parts.commands`, served by the server's loop.
pub fn router(tokens: Option<Arc<ApiTokens>>, parts: ServerParts) -> Router {
    let Some(tokens) = tokens else {
        let off = || async {
            error(
                StatusCode::NOT_FOUND,
                "the admin API is off: start tocsin with --api-tokens FILE (see docs/api.md)",
            )
        };
        return Router::new()
            .route(PREFIX, axum::routing::any(off))
            .route(&format!("{PREFIX}/{{*rest}}"), axum::routing::any(off));
    };
    let state = AdminState { tokens, parts };
    let api = Router::new()
        .route("/whoami", get(whoami))
        .route("/recent", get(recent))
        .route("/problems", get(problems))
        .route("/pipelines", get(pipelines))
        .route("/pipelines/{pipeline}", get(pipeline))
        .route("/pipelines/{pipeline}/pause", post(pause))
        .route("/pipelines/{pipeline}/resume", post(resume))
        .route("/pipelines/{pipeline}/run", post(run_now))
        .route("/queues", get(queues))
        .route("/pipelines/{pipeline}/queues/{queue}", get(peek))
        .route("/dead-letters", get(dead_letters))
        .route("/silences", get(silences::list).post(silences::add))
        .route("/silences/{id}", axum::routing::delete(silences::expire))
        .route("/alerts", get(silences::alerts))
        .route("/alerts/ack", post(silences::ack))
        .route("/pipelines/{pipeline}/expected", get(expected::list))
        .route(
            "/pipelines/{pipeline}/expected/{reporter}",
            axum::routing::delete(expected::forget),
        )
        .route("/trace/{id}", get(trace))
        .route("/pipelines/{pipeline}/history", get(history_series))
        .route("/pipelines/{pipeline}/history/points", get(history_points))
        .route(
            "/pipelines/{pipeline}/dead-letters/{queue}/{seq}",
            get(dead_letter),
        )
        .route(
            "/pipelines/{pipeline}/dead-letters/{queue}/replay",
            post(replay),
        )
        .route(
            "/pipelines/{pipeline}/dead-letters/{queue}/purge",
            post(purge),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API route; see docs/api.md") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state);
    Router::new().nest(PREFIX, api)
}

/// Lets a request in with a token of the role its method needs, and writes the access log
/// line once it is answered.
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let needs = if matches!(*request.method(), Method::GET | Method::HEAD) {
        Role::Read
    } else {
        Role::Admin
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let (token, response) = match state.tokens.check(request.headers(), needs) {
        // A change made here would not reach the process that delivers (silences, replays,
        // acknowledgements are its to make): refused, naming it.
        Ok(caller) if needs == Role::Admin && !*state.queue.delivers().borrow() => {
            let delivering = state
                .queue
                .delivered_by()
                .unwrap_or_else(|| "another process".into());
            (
                caller.name.clone(),
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("this tocsin process takes ingest only; {delivering} delivers for the shared queue store: send {method} requests to it"),
                ),
            )
        }
        Ok(caller) => {
            let name = caller.name.clone();
            let mut request = request;
            request.extensions_mut().insert(caller);
            (name, next.run(request).await)
        }
        Err(Denial::Unknown(why)) => ("-".to_string(), error(StatusCode::UNAUTHORIZED, why)),
        Err(Denial::Forbidden(name)) => {
            let why = format!(
                "token `{name}` may read only; {method} needs an {} token",
                Role::Admin.as_str()
            );
            (name, error(StatusCode::FORBIDDEN, why))
        }
    };
    tracing::info!(
        target: "tocsin::access",
        token = %token,
        client = %client,
        method = %method,
        path = %tocsin_message::one_line(&path),
        status = response.status().as_u16(),
        "admin API request"
    );
    response
}

/// `{"error": why}` with `status`.
fn error(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(json!({ "error": why.into() }))).into_response()
}

/// A store error as an answer: 404 for what is not there, 500 otherwise.
fn store_error(e: QueueError) -> Response {
    match e {
        QueueError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
        QueueError::NotDelivering { .. } => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Runs a store call off the async workers (replay and purge sync the store).
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(store_error),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The name and role of the token the request carries.
async fn whoami(axum::Extension(caller): axum::Extension<Caller>) -> Response {
    Json(json!({ "name": caller.name, "role": caller.role.as_str() })).into_response()
}

/// The query of `GET /recent`.
#[derive(Deserialize)]
struct RecentQuery {
    limit: Option<usize>,
    pipeline: Option<String>,
}

/// The most recent messages and where each is now.
async fn recent(State(state): State<AdminState>, Query(query): Query<RecentQuery>) -> Response {
    let limit = query
        .limit
        .unwrap_or(25)
        .clamp(1, crate::recent::MAX_RECENT);
    let tracer = state.tracer.clone();
    let recent = move || crate::recent::recent_messages(&tracer, query.pipeline.as_deref(), limit);
    match blocking(recent).await {
        Ok(messages) => Json(messages).into_response(),
        Err(response) => response,
    }
}

/// The messages a server's problems are read from: the most recent ones.
const PROBLEM_WINDOW: usize = 50;

/// The open problems ([`operator::problems`]).
async fn problems(State(state): State<AdminState>) -> Response {
    let (board, queue, tracer) = (
        state.board.clone(),
        state.queue.clone(),
        state.tracer.clone(),
    );
    let found = blocking(move || {
        let views = operator::pipelines(&board, queue.as_ref())?;
        let recent = crate::recent::recent_messages(&tracer, None, PROBLEM_WINDOW)?;
        Ok(operator::problems(&views, &recent))
    });
    match found.await {
        Ok(problems) => Json(problems).into_response(),
        Err(response) => response,
    }
}

async fn pipelines(State(state): State<AdminState>) -> Response {
    let (board, queue) = (state.board.clone(), state.queue.clone());
    match blocking(move || operator::pipelines(&board, queue.as_ref())).await {
        Ok(views) => Json(views).into_response(),
        Err(response) => response,
    }
}

async fn pipeline(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    let (board, queue) = (state.board.clone(), state.queue.clone());
    let found = blocking(move || {
        Ok(operator::pipelines(&board, queue.as_ref())?
            .into_iter()
            .find(|p| p.name == name))
    })
    .await;
    match found {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such pipeline"),
        Err(response) => response,
    }
}

/// Hands `command` to the server's loop and answers with what it did.
async fn command(state: &AdminState, command: Command) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.commands.send((command, reply)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping");
    }
    match answer.await {
        Ok(Ok(done)) => Json(json!({ "done": done })).into_response(),
        Ok(Err((status, why))) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            why,
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

async fn pause(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    command(&state, Command::Pause(name)).await
}

async fn resume(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    command(&state, Command::Resume(name)).await
}

async fn run_now(State(state): State<AdminState>, Path(name): Path<String>) -> Response {
    command(&state, Command::RunNow(name)).await
}

async fn queues(State(state): State<AdminState>) -> Response {
    let queue = state.queue.clone();
    match blocking(move || operator::queues(queue.as_ref())).await {
        Ok(rows) => Json(rows).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct PeekQuery {
    limit: Option<usize>,
}

async fn peek(
    State(state): State<AdminState>,
    Path((pipeline, queue_name)): Path<(String, String)>,
    Query(query): Query<PeekQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(10).min(MAX_PEEK);
    let queue = state.queue.clone();
    match blocking(move || operator::peek(queue.as_ref(), &pipeline, &queue_name, limit)).await {
        Ok(entries) => Json(entries).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct DeadLettersQuery {
    pipeline: Option<String>,
}

async fn dead_letters(
    State(state): State<AdminState>,
    Query(query): Query<DeadLettersQuery>,
) -> Response {
    let queue = state.queue.clone();
    let rows = blocking(move || operator::dead_letters(queue.as_ref(), query.pipeline.as_deref()));
    match rows.await {
        Ok(rows) => Json(rows).into_response(),
        Err(response) => response,
    }
}

async fn history_series(State(state): State<AdminState>, Path(pipeline): Path<String>) -> Response {
    let history = state.history.clone();
    match blocking(move || history.series(&pipeline)).await {
        Ok(series) => Json(series).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct PointsQuery {
    #[serde(default)]
    host: String,
    metric: String,
    since: Option<String>,
    step: Option<String>,
}

/// The most points one query answers with (the step is widened to fit).
pub const MAX_POINTS: u64 = 2000;

async fn history_points(
    State(state): State<AdminState>,
    Path(pipeline): Path<String>,
    Query(query): Query<PointsQuery>,
) -> Response {
    let duration = |text: &Option<String>, default: std::time::Duration| match text.as_deref() {
        None | Some("") => Ok(default),
        Some(t) => humantime::parse_duration(t).map_err(|e| format!("`{t}`: {e}")),
    };
    let (since, step) = match (
        duration(&query.since, std::time::Duration::from_secs(24 * 3600)),
        duration(&query.step, std::time::Duration::ZERO),
    ) {
        (Ok(since), Ok(step)) => (since.as_millis() as u64, step.as_millis() as u64),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let until = tocsin_queue::now_ms();
    let from = until.saturating_sub(since);
    // Raw points for six hours or less; wider spans in steps that give at most MAX_POINTS.
    let step = if step == 0 && since <= 6 * 3600 * 1000 {
        0
    } else {
        step.max(since / MAX_POINTS)
    };
    let history = state.history.clone();
    let points = blocking(move || {
        history.points(&pipeline, &query.host, &query.metric, from, until + 1, step)
    });
    match points.await {
        Ok(points) => Json(points).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct TraceQuery {
    pipeline: Option<String>,
}

async fn trace(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    Query(query): Query<TraceQuery>,
) -> Response {
    let tracer = state.tracer.clone();
    match blocking(move || tracer.trace(query.pipeline.as_deref(), &id)).await {
        Ok(events) => Json(
            events
                .into_iter()
                .map(|(pipeline, event)| crate::trace::PipelineEvent { pipeline, event })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(response) => response,
    }
}

async fn dead_letter(
    State(state): State<AdminState>,
    Path((pipeline, queue_name, seq)): Path<(String, String, u64)>,
) -> Response {
    let queue = state.queue.clone();
    let found =
        blocking(move || operator::dead_letter(queue.as_ref(), &pipeline, &queue_name, seq));
    match found.await {
        Ok(envelope) => Json(envelope).into_response(),
        Err(response) => response,
    }
}

async fn replay(
    State(state): State<AdminState>,
    Path((pipeline, queue_name)): Path<(String, String)>,
    Json(selection): Json<Selection>,
) -> Response {
    let disposal = operator::Disposal::Replay;
    dispose(
        &state, disposal, pipeline, queue_name, selection, "replayed",
    )
    .await
}

async fn purge(
    State(state): State<AdminState>,
    Path((pipeline, queue_name)): Path<(String, String)>,
    Json(selection): Json<Selection>,
) -> Response {
    let disposal = operator::Disposal::Purge;
    dispose(&state, disposal, pipeline, queue_name, selection, "purged").await
}

/// Replays or purges dead letters, answering `{answer_key: n}`.
async fn dispose(
    state: &AdminState,
    disposal: operator::Disposal,
    pipeline: String,
    queue_name: String,
    selection: Selection,
    answer_key: &str,
) -> Response {
    if let Err(why) = selection.target() {
        return error(StatusCode::BAD_REQUEST, why);
    }
    let (queue, tracer) = (state.queue.clone(), state.tracer.clone());
    let done = blocking(move || {
        let store = queue.as_ref();
        operator::dispose(
            store,
            Some(&tracer),
            disposal,
            &pipeline,
            &queue_name,
            &selection,
        )
    });
    match done.await {
        Ok(n) => Json(json!({ answer_key: n })).into_response(),
        Err(response) => response,
    }
}
