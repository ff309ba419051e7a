//! `raw-http-sink`: a test-only sink that speaks `wasi:http` directly, as a plugin written
//! without the SDK (or in another language) does: it POSTs the message body to `url` in two
//! writes and sets no `Content-Length`, so what framing the request gets on the wire is the
//! host's choice alone.

use serde::Deserialize;
use tocsin_sdk::bindings::sink::wasi::http::outgoing_handler;
use tocsin_sdk::bindings::sink::wasi::http::types::{
    Fields, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use tocsin_sdk::{export_sink, DeliveryError, Message, Sink};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `http://host:port/path`.
    url: String,
}

struct RawHttpSink(Config);

impl Sink for RawHttpSink {
    type Config = Config;
    fn new(c: Config) -> Result<Self, String> {
        Ok(RawHttpSink(c))
    }

    fn deliver(&mut self, msg: Message, _key: &str) -> Result<(), DeliveryError> {
        let fail = |what: &str| DeliveryError::Permanent(what.to_string());
        let rest = self
            .0
            .url
            .strip_prefix("http://")
            .ok_or_else(|| fail("url must be http://"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
            .map_err(|_| fail("headers"))?;
        let request = OutgoingRequest::new(headers);
        request
            .set_method(&Method::Post)
            .map_err(|_| fail("method"))?;
        request
            .set_scheme(Some(&Scheme::Http))
            .map_err(|_| fail("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|_| fail("authority"))?;
        request
            .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
            .map_err(|_| fail("path"))?;
        let body = request.body().map_err(|_| fail("body"))?;
        let future = outgoing_handler::handle(request, None)
            .map_err(|e| DeliveryError::Retryable(format!("{e:?}")))?;
        {
            let stream = body.write().map_err(|_| fail("body stream"))?;
            let text = msg.body.as_bytes();
            let (first, second) = text.split_at(text.len() / 2);
            for part in [first, second] {
                stream
                    .blocking_write_and_flush(part)
                    .map_err(|e| DeliveryError::Retryable(format!("write: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| DeliveryError::Retryable(format!("{e:?}")))?;
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            other => return Err(DeliveryError::Retryable(format!("{other:?}"))),
        };
        match response.status() {
            200..=299 => Ok(()),
            status => Err(DeliveryError::Retryable(format!("HTTP {status}"))),
        }
    }
}

export_sink!(RawHttpSink);
