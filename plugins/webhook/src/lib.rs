//! `webhook`: POSTs each message to any HTTP endpoint, as JSON or through a body template.
//!
//! ```toml
//! [[sink]]
//! name   = "chat"
//! plugin = "webhook"
//! config = { url = "https://chat.example/hooks/abc", body = '{"text": {{ (emoji ~ summary ~ ": " ~ body) | tojson }}}' }
//! grants = { hosts = ["chat.example"] }
//! ```
//! Without `body`, the message is sent as JSON (`id`, `timestamp_ms`, `severity`, `summary`,
//! `body`, `labels`, `metrics`). Every request carries `Idempotency-Key`. `headers` adds
//! headers; a value `secret:NAME` is replaced by the granted secret `NAME`. Outcomes: 2xx
//! delivered; 429 rate-limited (`Retry-After`); other 4xx permanent; 5xx and network errors
//! retryable.

use std::collections::BTreeMap;

use serde::Deserialize;
use tocsin_sdk::http::Request;
use tocsin_sdk::template::Template;
use tocsin_sdk::{export_sink, host, severity_name, DeliveryError, Message, Sink};

/// Sends each message to an HTTP endpoint, as JSON or through a body template.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// The endpoint's URL (its host must be granted in `hosts`).
    #[cfg_attr(test, schemars(extend("pattern" = "^https?://")))]
    url: String,
    /// The HTTP method: `POST` (default), `PUT` or `PATCH`.
    #[cfg_attr(test, schemars(extend("enum" = ["POST", "PUT", "PATCH"])))]
    #[serde(default = "post")]
    method: String,
    /// A Jinja template for the request body; the message as JSON when absent.
    body: Option<String>,
    /// The request's `Content-Type` (default `application/json`).
    #[serde(default = "json_type")]
    content_type: String,
    /// Extra request headers; a value `secret:NAME` is replaced by the granted secret `NAME`.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn post() -> String {
    "POST".into()
}
fn json_type() -> String {
    "application/json".into()
}

struct Webhook {
    config: Config,
    body: Option<Template>,
}

fn default_body(msg: &Message) -> String {
    let labels: BTreeMap<&str, &str> = msg
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let metrics: BTreeMap<&str, f64> = msg.metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    serde_json::json!({
        "id": msg.id, "timestamp_ms": msg.timestamp_ms, "severity": severity_name(msg.severity),
        "summary": msg.summary, "body": msg.body, "labels": labels, "metrics": metrics,
    })
    .to_string()
}

impl Sink for Webhook {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(c.url.starts_with("https://") || c.url.starts_with("http://")) {
            return Err(format!(
                "url `{}` must start with https:// or http://",
                c.url
            ));
        }
        if !matches!(c.method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(format!("method `{}` must be POST, PUT or PATCH", c.method));
        }
        let body = c
            .body
            .as_deref()
            .map(|b| Template::compile("body", b))
            .transpose()?;
        Ok(Webhook { config: c, body })
    }

    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        let body = match &self.body {
            Some(t) => t.render(&msg).map_err(DeliveryError::Permanent)?,
            None => default_body(&msg),
        };
        let mut request = Request::new(&self.config.method, &self.config.url)
            .header("content-type", &self.config.content_type)
            .header("idempotency-key", key);
        for (name, value) in &self.config.headers {
            let value = match value.strip_prefix("secret:") {
                Some(secret) => host::require_secret(secret)?,
                None => value.clone(),
            };
            request = request.header(name, &value);
        }
        request.body(body).send()?.delivery_outcome(None)
    }
}

export_sink!(Webhook);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::MessageExt;

    #[test]
    fn body_templates_render_json_safely() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "url": "https://chat.example/h", "body": "{\"text\": {{ (summary ~ \": \" ~ body) | tojson }}}"
        }))
        .unwrap();
        let w = Webhook::new(c).unwrap();
        let mut m = Message::new("1", 0, "say \"hi\"");
        m.summary = Some("db1".into());
        let rendered = w.body.as_ref().unwrap().render(&m).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&rendered).unwrap();
        assert_eq!(parsed["text"], "db1: say \"hi\"");
        let plain: serde_json::Value = serde_json::from_str(&default_body(&m)).unwrap();
        assert_eq!(plain["body"], "say \"hi\"");
    }
}
