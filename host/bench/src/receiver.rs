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
}

impl Receiver {
    /// Starts on a free port; `clock` is the base the senders' `sent_us` counts from.
    pub async fn start(clock: Instant) -> anyhow::Result<Receiver> {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let seen = latencies.clone();
        let app = axum::Router::new().route(
            "/hook",
            post(move |body: Bytes| {
                let seen = seen.clone();
                async move {
                    let now = clock.elapsed().as_micros() as u64;
                    let sent = sent_times(&body);
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    seen.extend(sent.into_iter().map(|s| now.saturating_sub(s)));
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { port, latencies })
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

/// The `sent_us` of every message in a body: tocsin's webhook sink sends one message with
/// `labels.sent_us`; Alertmanager sends `alerts[].labels.sent_us`.
fn sent_times(body: &[u8]) -> Vec<u64> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let label = |v: &serde_json::Value| -> Option<u64> {
        v.get("labels")?.get("sent_us")?.as_str()?.parse().ok()
    };
    match value.get("alerts").and_then(|a| a.as_array()) {
        Some(alerts) => alerts.iter().filter_map(label).collect(),
        None => label(&value).into_iter().collect(),
    }
}
