//! `header-echo`: a test-only decoder that reports the request it was handed. Each request
//! becomes one message whose labels are the request's headers (`header.<name>` = value) and
//! whose body is the request's body. Tests use it to see what the host lets a decoder read.

use serde::Deserialize;
use tocsin_sdk::{export_decoder, Decoder, HttpRequest, Message, Rejection, Severity};

#[derive(Deserialize)]
struct Config {}

struct HeaderEcho;

impl Decoder for HeaderEcho {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(HeaderEcho)
    }

    fn decode(&mut self, request: HttpRequest) -> Result<Vec<Message>, Rejection> {
        Ok(vec![Message {
            id: String::new(),
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            severity: Severity::Info,
            summary: None,
            body: String::from_utf8_lossy(&request.body).into_owned(),
            labels: request
                .headers
                .into_iter()
                .map(|(name, value)| (format!("header.{name}"), value))
                .collect(),
            metrics: Vec::new(),
            payload: None,
            link: None,
            key: None,
        }])
    }
}

export_decoder!(HeaderEcho);
