//! Silences and the open-alert register through the admin API.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use tocsin_queue::now_ms;

use super::tokens::Caller;
use super::{blocking, error, AdminState};
use crate::open_alerts::OpenAlert;
use crate::silences::{NewSilence, SilenceError, SilenceView};

/// A request's JSON body, or why it is not `what` (for a 400).
fn json_body<T>(body: Result<Json<T>, JsonRejection>, what: &str) -> Result<T, String> {
    body.map(|Json(value)| value)
        .map_err(|rejection| format!("not {what}: {}", rejection.body_text()))
}

/// Every silence kept, expired ones included, with its state now.
pub(super) async fn list(State(state): State<AdminState>) -> Response {
    let now = now_ms();
    let views: Vec<SilenceView> = state
        .silences
        .snapshot()
        .all()
        .iter()
        .map(|s| SilenceView::at(s, now))
        .collect();
    Json(views).into_response()
}

/// Makes a silence; its author is the token's name unless the request names one.
pub(super) async fn add(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<NewSilence>, JsonRejection>,
) -> Response {
    let new = match json_body(body, "a silence") {
        Ok(new) => new,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match state.silences.add(&new, &caller.name).await {
        Ok(silence) => (
            StatusCode::CREATED,
            Json(SilenceView::at(&silence, now_ms())),
        )
            .into_response(),
        Err(e) => silence_error(e),
    }
}

/// Ends a silence now.
pub(super) async fn expire(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    match state.silences.expire(&id).await {
        Ok(silence) => Json(SilenceView::at(&silence, now_ms())).into_response(),
        Err(e) => silence_error(e),
    }
}

fn silence_error(e: SilenceError) -> Response {
    let status = match e {
        SilenceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SilenceError::NotFound(_) => StatusCode::NOT_FOUND,
        SilenceError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// Acknowledges an open alert.
pub(super) async fn ack(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<crate::open_alerts::NewAck>, JsonRejection>,
) -> Response {
    let new = match json_body(body, "an acknowledgement") {
        Ok(new) => new,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let done = crate::open_alerts::acknowledge(
        state.queue.as_ref(),
        &state.register_locks,
        &new,
        &caller.name,
        now_ms(),
    )
    .await;
    match done {
        Ok((identity, alert)) => Json(AlertRow {
            pipeline: new.pipeline,
            identity,
            alert,
        })
        .into_response(),
        Err(e) => {
            let status = match e {
                crate::open_alerts::AckError::Invalid(_) => StatusCode::BAD_REQUEST,
                crate::open_alerts::AckError::NotFound(_) => StatusCode::NOT_FOUND,
                crate::open_alerts::AckError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

/// The query of `GET /alerts`.
#[derive(Deserialize)]
pub(super) struct AlertsQuery {
    pipeline: Option<String>,
}

/// One record of the open-alert register, as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct AlertRow {
    /// The pipeline.
    pub pipeline: String,
    /// The alert's identity (`k:` key, `f:` fingerprint, `l:` label hash).
    pub identity: String,
    /// The record.
    #[serde(flatten)]
    pub alert: OpenAlert,
}

/// The records of the open-alert register of `pipeline`, or of every pipeline, as listed.
pub fn alert_rows(
    store: &dyn tocsin_queue::QueueStore,
    pipeline: Option<String>,
) -> tocsin_queue::Result<Vec<AlertRow>> {
    let pipelines = match pipeline {
        Some(p) => vec![p],
        None => store.pipelines()?,
    };
    let mut rows = Vec::new();
    for pipeline in pipelines {
        for (identity, alert) in crate::open_alerts::list(store, &pipeline)? {
            rows.push(AlertRow {
                pipeline: pipeline.clone(),
                identity,
                alert,
            });
        }
    }
    Ok(rows)
}

/// The open-alert register of one pipeline, or of all.
pub(super) async fn alerts(
    State(state): State<AdminState>,
    Query(query): Query<AlertsQuery>,
) -> Response {
    let queue = state.queue.clone();
    let rows = blocking(move || alert_rows(queue.as_ref(), query.pipeline));
    match rows.await {
        Ok(rows) => Json(rows).into_response(),
        Err(response) => response,
    }
}
