//! `{{name}}`: a tocsin sink. It POSTs each message as JSON to `url`, with the idempotency key
//! in an `Idempotency-Key` header, so a retried delivery is not shown twice. The pipeline must
//! grant the host: `grants = { hosts = ["alerts.example.org"] }`.

use serde::Deserialize;
use tocsin_sdk::http::Request;
use tocsin_sdk::{export_sink, severity_name, DeliveryError, Message, Sink};

/// The stage's `config = { … }` table in the pipeline file. Its schema, settings.schema.json,
/// travels in the component: `tocsin validate` checks pipelines against it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where to POST.
    url: String,
}

struct Plugin {
    url: String,
}

impl Sink for Plugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !config.url.starts_with("http://") && !config.url.starts_with("https://") {
            return Err(format!("`url` must be http(s), not `{}`", config.url));
        }
        Ok(Plugin { url: config.url })
    }

    /// `Ok` when delivered; `Retryable` is tried again with backoff, `Permanent` goes to the
    /// dead letters, `RateLimited(ms)` waits at least that long.
    fn deliver(&mut self, msg: Message, idempotency_key: &str) -> Result<(), DeliveryError> {
        let body = serde_json::json!({
            "id": msg.id,
            "severity": severity_name(msg.severity),
            "summary": msg.summary,
            "body": msg.body,
        });
        Request::new("POST", &self.url)
            .header("idempotency-key", idempotency_key)
            .json(&body)
            .send()?
            .delivery_outcome(None)
    }
}

export_sink!(Plugin);
// Embeds settings.schema.json; its test fails when `Config` changes without it
// (`TOCSIN_BLESS=1` with the unit tests rewrites it).
tocsin_sdk::declare_settings!(Config);
