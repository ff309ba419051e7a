//! A pipeline's expected reporters (`expect`) through the admin API: listed, and forgotten
//! when one is gone for good.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::tokens::Caller;
use super::{blocking, error, store_error, AdminState};

/// The reporters of a pipeline: from the running pipeline (with their deadlines), else as
/// the store keeps them.
pub(super) async fn list(
    State(state): State<AdminState>,
    Path(pipeline): Path<String>,
) -> Response {
    if let Some(running) = state.expectations.get(&pipeline) {
        return Json(running.rows()).into_response();
    }
    let queue = state.queue.clone();
    match blocking(move || crate::absence::stored_rows(queue.as_ref(), &pipeline)).await {
        Ok(rows) => Json(rows).into_response(),
        Err(response) => response,
    }
}

/// Stops expecting a reporter: its records go, an open absence alert of it is resolved.
pub(super) async fn forget(
    State(state): State<AdminState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((pipeline, reporter)): Path<(String, String)>,
) -> Response {
    let forgotten = match state.expectations.get(&pipeline) {
        Some(running) => running.forget(&reporter, &caller.name).await,
        None => {
            crate::absence::forget_stored(state.queue.as_ref(), &pipeline, &reporter, &caller.name)
                .await
        }
    };
    match forgotten {
        Ok(true) => Json(json!({ "pipeline": pipeline, "forgotten": reporter })).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!(
                "pipeline `{pipeline}` expects no reporter `{reporter}` (`tocsin expected ls {pipeline}` lists them)"
            ),
        ),
        Err(e) => store_error(e),
    }
}
