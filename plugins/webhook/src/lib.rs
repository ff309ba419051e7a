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
//! `body`, `labels`, `metrics`, `link`, `key`); with `batch = N` (N > 1, no `body`), a queue
//! that has several messages waiting sends up to N of them in one request, as a JSON array
//! (one message alone is still sent as an object); a message retried after a failure or a crash
//! may go out in another array than before, under another `Idempotency-Key`, so a receiver of
//! arrays leaves out the messages whose `id` it has. A group of alerts (the sink's `group`
//! setting) is one request: `{"group": {labels, key, sequence, firing, status}, "messages":
//! [...]}`, or the `body` template rendered over the group summed up as one message
//! (`[FIRING:3] alertname=DiskFull` as its summary, a line per alert as its body). Every request carries `Idempotency-Key`. `headers` adds
//! headers; a value `secret:NAME` is replaced by the granted secret `NAME`. Outcomes: 2xx
//! delivered; 429 rate-limited (`Retry-After`); other 4xx permanent; 5xx and network errors
//! retryable.

use std::collections::BTreeMap;

use serde::Deserialize;
use tocsin_sdk::http::Request;
use tocsin_sdk::template::Template;
use tocsin_sdk::{
    export_sink, host, severity_name, DeliveryError, Group, Message, Notification, Sink,
};

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
    /// Up to this many waiting messages in one request, as a JSON array (1, the default: one
    /// message per request). Needs the default JSON body (no `body` template). A retried
    /// message may go out in another array than before: a receiver dedupes arrays by `id`.
    #[cfg_attr(test, schemars(range(min = 1, max = 1000)))]
    #[serde(default = "one")]
    batch: u32,
}

fn one() -> u32 {
    1
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

fn default_body(msg: &Message) -> serde_json::Value {
    let labels: BTreeMap<&str, &str> = msg
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let metrics: BTreeMap<&str, f64> = msg.metrics.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    serde_json::json!({
        "id": msg.id, "timestamp_ms": msg.timestamp_ms, "severity": severity_name(msg.severity),
        "summary": msg.summary, "body": msg.body, "labels": labels, "metrics": metrics,
        "link": msg.link, "key": msg.key,
    })
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
        if c.batch == 0 || c.batch > 1000 {
            return Err(format!("batch must be 1 to 1000, not {}", c.batch));
        }
        if c.batch > 1 && body.is_some() {
            return Err("batch sends messages as a JSON array: it cannot be used with a `body` template, which renders one message".into());
        }
        Ok(Webhook { config: c, body })
    }

    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        let body = match &self.body {
            Some(t) => t.render(&msg).map_err(DeliveryError::Permanent)?,
            None => default_body(&msg).to_string(),
        };
        self.send(body, key)
    }

    fn batch_limit(&self) -> u32 {
        self.config.batch
    }

    fn deliver_notification(
        &mut self,
        notification: Notification,
        key: &str,
    ) -> Result<(), DeliveryError> {
        if let Some(group) = &notification.group {
            let body = match &self.body {
                // A body template renders one message: the group summed up.
                Some(t) => t
                    .render(&tocsin_sdk::group::group_digest(&notification, group))
                    .map_err(DeliveryError::Permanent)?,
                None => group_body(&notification, group).to_string(),
            };
            return self.send(body, key);
        }
        let mut messages = notification.messages;
        if messages.len() == 1 {
            return self.deliver(messages.remove(0), key);
        }
        let array: Vec<serde_json::Value> = messages.iter().map(default_body).collect();
        self.send(serde_json::Value::Array(array).to_string(), key)
    }
}

/// A group's notification as JSON: the group (its labels, key, sequence, how many fire,
/// `status`) and its alerts, each as a message is sent alone — the shape of Alertmanager's
/// webhook, in tocsin's words.
fn group_body(notification: &Notification, group: &Group) -> serde_json::Value {
    let labels: BTreeMap<&str, &str> = group
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    serde_json::json!({
        "group": {
            "labels": labels,
            "key": group.key,
            "sequence": group.sequence,
            "firing": group.firing,
            "status": if group.firing > 0 { "firing" } else { "resolved" },
        },
        "messages": notification.messages.iter().map(default_body).collect::<Vec<_>>(),
    })
}

impl Webhook {
    /// Sends `body` with the configured method, content type and headers.
    fn send(&self, body: String, key: &str) -> Result<(), DeliveryError> {
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
        let plain: serde_json::Value = default_body(&m);
        assert_eq!(plain["body"], "say \"hi\"");
    }

    #[test]
    fn batch_needs_the_default_body_and_a_sane_size() {
        let make = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"url": "https://h.example/x"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            Webhook::new(serde_json::from_value(c).unwrap())
        };
        assert_eq!(
            make(serde_json::json!({"batch": 50}))
                .ok()
                .unwrap()
                .batch_limit(),
            50
        );
        assert_eq!(make(serde_json::json!({})).ok().unwrap().batch_limit(), 1);
        let e = make(serde_json::json!({"batch": 5, "body": "{{ body }}"}))
            .err()
            .unwrap();
        assert!(e.contains("body"), "{e}");
        assert!(make(serde_json::json!({"batch": 0})).is_err());
    }

    #[test]
    fn a_group_is_one_request_with_the_group_and_its_messages() {
        let mut a = Message::new("a", 1, "disk full");
        a.set_label("host", "db1");
        let group = Group {
            labels: vec![("alertname".into(), "DiskFull".into())],
            key: "k".into(),
            sequence: 3,
            firing: 2,
        };
        let n = Notification {
            messages: vec![a],
            group: Some(group.clone()),
        };
        let b = group_body(&n, &group);
        assert_eq!(b["group"]["labels"]["alertname"], "DiskFull");
        assert_eq!(b["group"]["status"], "firing");
        assert_eq!(b["group"]["sequence"], 3);
        assert_eq!(b["messages"][0]["labels"]["host"], "db1");
    }
}
