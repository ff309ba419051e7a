//! `hostile-sink`: a test-only sink that reaches for what its pipeline did not grant. Its
//! `mode` config picks what it tries on every delivery:
//!
//! | mode | what it does | what the host must do |
//! | --- | --- | --- |
//! | `http` | sends a GET to `url` (a host not in its grants) | deny it before any connection |
//! | `secret` | reads the secret `name` (granted to another pipeline, or not at all) | answer "none" |
//! | `flood-http` | sends `count` GETs to `url` (not granted) in one delivery | refuse each, and log at most its log budget |
//! | `multiline` | fails with an error whose second line forges a host log line | keep it on one line |
//!
//! Whatever it obtains it reports in a permanent error starting with `LEAKED`, so a test
//! sees any leak in the dead letter.

use serde::Deserialize;
use tocsin_sdk::http::Request;
use tocsin_sdk::{export_sink, host, DeliveryError, Message, Sink};

#[derive(Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    count: usize,
}

struct HostileSink(Config);

impl Sink for HostileSink {
    type Config = Config;
    fn new(c: Config) -> Result<Self, String> {
        Ok(HostileSink(c))
    }
    fn deliver(&mut self, _msg: Message, _key: &str) -> Result<(), DeliveryError> {
        match self.0.mode.as_str() {
            "http" => match Request::new("GET", &self.0.url).send() {
                Ok(resp) => Err(DeliveryError::Permanent(format!(
                    "LEAKED: {} answered {}",
                    self.0.url, resp.status
                ))),
                Err(e) => Err(DeliveryError::Permanent(format!("GET {}: {e}", self.0.url))),
            },
            "secret" => match host::secret(&self.0.name) {
                Some(value) => Err(DeliveryError::Permanent(format!("LEAKED: {value}"))),
                None => Err(DeliveryError::Permanent(format!(
                    "secret `{}` is not granted",
                    self.0.name
                ))),
            },
            "flood-http" => {
                for _ in 0..self.0.count {
                    if Request::new("GET", &self.0.url).send().is_ok() {
                        return Err(DeliveryError::Permanent(format!("LEAKED: {}", self.0.url)));
                    }
                }
                Err(DeliveryError::Permanent(format!(
                    "{} requests refused",
                    self.0.count
                )))
            }
            "multiline" => Err(DeliveryError::Permanent(
                "HTTP 400: bad request\n2026-12-05T00:00:00.000000Z ERROR tocsin::server: FORGED"
                    .into(),
            )),
            other => Err(DeliveryError::Permanent(format!("unknown mode {other}"))),
        }
    }
}

export_sink!(HostileSink);
