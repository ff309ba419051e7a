//! The local webhook receiver both tocsin and Alertmanager deliver to: answers 200 at once and
//! records, for each message it finds in a body, the latency from its `sent_us` label.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::routing::post;

/// A running receiver.
pub struct Receiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    latencies: Arc<Mutex<Vec<u64>>>,
    posts: Arc<Mutex<Posts>>,
}

/// The requests received (for grouped notifications, where one request carries many alerts
/// and a system may send an alert again in a later notification of its group).
#[derive(Debug, Default, Clone)]
pub struct Posts {
    /// Requests received.
    pub requests: u64,
    /// Distinct alert ids seen.
    pub distinct: std::collections::HashSet<String>,
    /// When (µs on the clock) the request that brought the last new alert arrived.
    pub last_new_us: u64,
}

impl Receiver {
    /// Starts on a free port; `clock` is the base the senders' `sent_us` counts from.
    pub async fn start(clock: Instant) -> anyhow::Result<Receiver> {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Posts::default()));
        let (seen, counted) = (latencies.clone(), posts.clone());
        let app = axum::Router::new()
            .route(
                "/hook",
                post(move |body: Bytes| {
                    let (seen, counted) = (seen.clone(), counted.clone());
                    async move {
                        let now = clock.elapsed().as_micros() as u64;
                        let items = items(&body);
                        {
                            let mut posts = counted.lock().unwrap_or_else(|p| p.into_inner());
                            posts.requests += 1;
                            let mut new = false;
                            for (id, _) in &items {
                                new |= posts.distinct.insert(id.clone());
                            }
                            if new {
                                posts.last_new_us = now;
                            }
                        }
                        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        seen.extend(items.into_iter().map(|(_, s)| now.saturating_sub(s)));
                        "ok"
                    }
                }),
            )
            // A grouped notification of Alertmanager's lists every alert of its group: 20 000
            // alerts are megabytes, past axum's default limit of 2 MB.
            .layer(axum::extract::DefaultBodyLimit::disable());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver {
            port,
            latencies,
            posts,
        })
    }

    /// Distinct alerts seen so far (not taken).
    pub fn posts_distinct(&self) -> usize {
        self.posts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .distinct
            .len()
    }

    /// Takes the request counts so far.
    pub fn take_posts(&self) -> Posts {
        std::mem::take(&mut *self.posts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the latencies (µs) recorded so far, sorted.
    pub fn take(&self) -> Vec<u64> {
        let mut taken =
            std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|p| p.into_inner()));
        taken.sort_unstable();
        taken
    }

    /// How many messages arrived so far (not taken).
    pub fn count(&self) -> usize {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
}

/// The id and `sent_us` of every message in a body: tocsin's webhook sink sends one message
/// (`id`, `labels.sent_us`), an array of them (`batch`) or a group (`messages: [...]`);
/// Alertmanager sends `alerts[]` with `labels.id` and `labels.sent_us`.
fn items(body: &[u8]) -> Vec<(String, u64)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let item = |v: &serde_json::Value| -> Option<(String, u64)> {
        let labels = v.get("labels")?;
        let sent = labels.get("sent_us")?.as_str()?.parse().ok()?;
        let id = v
            .get("id")
            .or_else(|| labels.get("id"))
            .and_then(|i| i.as_str())
            .unwrap_or("")
            .to_string();
        Some((id, sent))
    };
    let list = value
        .get("alerts")
        .or_else(|| value.get("messages"))
        .or(if value.is_array() { Some(&value) } else { None })
        .and_then(|a| a.as_array());
    match list {
        Some(items) => items.iter().filter_map(item).collect(),
        None => item(&value).into_iter().collect(),
    }
}
