//! A fake Mastodon that checks the documented `POST /api/v1/statuses` API, for the only
//! service no real server of can run here.
//!
//! It checks what Mastodon checks: the bearer token (401 otherwise), a JSON or form body with
//! a non-empty `status` (422 otherwise), a valid `visibility`, and honours `Idempotency-Key`
//! the way Mastodon does: a repeated key returns the first status and posts nothing new. It can
//! answer the first requests with 429 and an `X-RateLimit-Reset` time, like a busy instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// One status the fake accepted.
#[derive(Debug, Clone)]
pub struct Post {
    /// The `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// The request body as JSON.
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    posts: Vec<Post>,
    by_key: HashMap<String, Value>,
    rate_limit_next: usize,
    rate_limited_keys: Vec<String>,
    token: String,
}

/// A running fake instance.
pub struct FakeMastodon {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its port.
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl FakeMastodon {
    /// Starts on a free loopback port, accepting `token`.
    pub async fn start(token: &str) -> FakeMastodon {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/api/v1/statuses", post(statuses))
            .with_state(inner.clone());
        let port = crate::serve_on_loopback(app).await;
        FakeMastodon {
            base: format!("http://127.0.0.1:{port}"),
            port,
            inner,
        }
    }

    /// Answers the next `n` requests with 429 (reset one second ahead).
    pub fn rate_limit_next(&self, n: usize) {
        self.inner.lock().unwrap().rate_limit_next = n;
    }

    /// The statuses posted so far, in order.
    pub fn posts(&self) -> Vec<Post> {
        self.inner.lock().unwrap().posts.clone()
    }

    /// The idempotency keys of requests answered 429.
    pub fn rate_limited_keys(&self) -> Vec<String> {
        self.inner.lock().unwrap().rate_limited_keys.clone()
    }
}

fn fail(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

async fn statuses(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if inner.rate_limit_next > 0 {
        inner.rate_limit_next -= 1;
        inner.rate_limited_keys.push(key.unwrap_or_default());
        let reset = humantime::format_rfc3339_millis(
            std::time::SystemTime::now() + std::time::Duration::from_secs(1),
        );
        let mut r = fail(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        r.headers_mut()
            .insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
        return r;
    }
    let expected = format!("Bearer {}", inner.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return fail(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed: Value = if content_type.starts_with("application/json") {
        match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(_) => return fail(StatusCode::BAD_REQUEST, "malformed JSON"),
        }
    } else {
        Value::Object(
            form_urlencoded::parse(body.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    };
    let status = parsed.get("status").and_then(Value::as_str).unwrap_or("");
    if status.is_empty() {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Text can't be blank",
        );
    }
    if let Some(v) = parsed.get("visibility").and_then(Value::as_str) {
        if !["public", "unlisted", "private", "direct"].contains(&v) {
            return fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation failed: Visibility is invalid",
            );
        }
    }
    if let Some(previous) = key.as_ref().and_then(|k| inner.by_key.get(k)) {
        return (StatusCode::OK, Json(previous.clone())).into_response();
    }
    let id = (inner.posts.len() + 1).to_string();
    let answer = json!({
        "id": id,
        "content": format!("<p>{status}</p>"),
        "spoiler_text": parsed.get("spoiler_text").cloned().unwrap_or(json!("")),
        "visibility": parsed.get("visibility").cloned().unwrap_or(json!("public")),
    });
    if let Some(k) = &key {
        inner.by_key.insert(k.clone(), answer.clone());
    }
    inner.posts.push(Post {
        idempotency_key: key,
        body: parsed,
    });
    (StatusCode::OK, Json(answer)).into_response()
}
