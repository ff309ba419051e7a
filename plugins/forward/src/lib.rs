//! `forward`: sends each message to a central tocsin's ingest endpoint, so many machines can
//! report to one instance (an agent's `sysmetrics` → `forward`, the central one's `json` →
//! threshold → Mastodon).
//!
//! `POST {central}/ingest/{pipeline}` with `Authorization: Bearer <token>` and the message in
//! the `json` decoder's schema. The id is `<agent>/<original id>`, so messages of different
//! agents never collide and a retry carries the same id (the central sinks' idempotency keys
//! catch it). While the central instance is down, messages wait in this agent's queue and are
//! retried with backoff: nothing is lost.
//!
//! ```toml
//! [[sink]]
//! name   = "central"
//! plugin = "forward"
//! config = { central = "https://alerts.example.org", pipeline = "fleet", agent = "db1" }
//! grants = { hosts = ["alerts.example.org"], secrets = { token = "env:CENTRAL_TOKEN" } }
//! retry  = { max_attempts = 1000, initial = "1s", max = "5m" }
//! ```

use serde::Deserialize;
use tocsin_sdk::http::Request;
use tocsin_sdk::{export_sink, host, severity_name, DeliveryError, Message, Notification, Sink};

/// Sends each message to an ingest pipeline of a central tocsin, keeping its id.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Base URL of the central tocsin.
    #[cfg_attr(test, schemars(extend("pattern" = "^https?://")))]
    central: String,
    /// The ingest pipeline on the central instance (its source should be `json`).
    pipeline: String,
    /// This machine's name: prefixes ids and becomes the `agent` label.
    agent: String,
    /// The name of the granted secret holding the central pipeline's bearer token.
    #[serde(default = "token_name")]
    token_secret: String,
}

fn token_name() -> String {
    "token".into()
}

struct Forward {
    url: String,
    agent: String,
    token_secret: String,
}

/// The message in the `json` decoder's schema, renamed for the central instance.
fn body(msg: &Message, agent: &str) -> serde_json::Value {
    let mut labels: serde_json::Map<String, serde_json::Value> = msg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    labels.insert("agent".into(), agent.into());
    let metrics: serde_json::Map<String, serde_json::Value> = msg
        .metrics
        .iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    let mut body = serde_json::json!({
        "id": format!("{agent}/{}", msg.id),
        "timestamp_ms": msg.timestamp_ms,
        "severity": severity_name(msg.severity),
        "summary": msg.summary,
        "body": msg.body,
        "labels": labels,
        "metrics": metrics,
        "payload": msg.payload,
    });
    // Only what the message has: a central tocsin of an older version refuses unknown fields.
    if let Some(link) = &msg.link {
        body["link"] = link.clone().into();
    }
    if let Some(key) = &msg.key {
        body["key"] = format!("{agent}/{key}").into();
    }
    body
}

impl Sink for Forward {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(c.central.starts_with("https://") || c.central.starts_with("http://")) {
            return Err(format!(
                "central `{}` must start with https:// or http://",
                c.central
            ));
        }
        if c.agent.is_empty() || c.agent.contains(char::is_whitespace) {
            return Err("agent must be a non-empty name without spaces".into());
        }
        Ok(Forward {
            url: format!("{}/ingest/{}", c.central.trim_end_matches('/'), c.pipeline),
            agent: c.agent,
            token_secret: c.token_secret,
        })
    }

    fn deliver(&mut self, msg: Message, _key: &str) -> Result<(), DeliveryError> {
        self.post(&body(&msg, &self.agent))
    }

    /// Up to [`BATCH`] messages go to the central tocsin as one JSON array: one request and
    /// one durable append there, instead of one each.
    fn batch_limit(&self) -> u32 {
        BATCH
    }

    fn deliver_notification(
        &mut self,
        notification: Notification,
        _key: &str,
    ) -> Result<(), DeliveryError> {
        let batch: Vec<serde_json::Value> = notification
            .messages
            .iter()
            .map(|m| body(m, &self.agent))
            .collect();
        match batch.as_slice() {
            [one] => self.post(one),
            _ => self.post(&serde_json::Value::Array(batch)),
        }
    }
}

/// The most messages one request to the central tocsin carries.
const BATCH: u32 = 100;

impl Forward {
    /// POSTs `json` (a message or an array of them) to the central tocsin's ingest endpoint.
    fn post(&self, json: &serde_json::Value) -> Result<(), DeliveryError> {
        let token = host::require_secret(&self.token_secret)?;
        let response = Request::post(&self.url)
            .header("authorization", &format!("Bearer {token}"))
            .json(json)
            .send()?;
        // The central instance answers 503 + Retry-After when it cannot persist.
        if response.status == 503 {
            if let Some(secs) = response
                .header("retry-after")
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                return Err(DeliveryError::RateLimited(secs * 1000));
            }
        }
        response.delivery_outcome(None)
    }
}

export_sink!(Forward);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::{MessageExt, Severity};

    #[test]
    fn messages_are_renamed_and_labelled_by_agent() {
        let mut m = Message::new("tick-1", 5, "cpu 93");
        m.severity = Severity::Warning;
        m.set_label("host", "db1");
        m.set_metric("cpu-percent", 93.0);
        let b = body(&m, "db1");
        assert_eq!(b["id"], "db1/tick-1");
        assert_eq!(b["severity"], "warning");
        assert_eq!(b["labels"]["agent"], "db1");
        assert_eq!(b["metrics"]["cpu-percent"], 93.0);
    }
}
