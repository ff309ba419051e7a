//! A small blocking HTTP client over `wasi:http`, for sinks and for sources that poll a
//! service.
//!
//! The host only lets a request out if its authority is in the stage's `grants.hosts`;
//! anything else fails with [`HttpError::Denied`]. The host also bounds the whole call by the
//! stage's `limits.timeout`.
//!
//! ```ignore
//! let resp = tocsin_sdk::http::Request::put("https://matrix.example.org/_matrix/...")
//!     .header("authorization", &format!("Bearer {token}"))
//!     .json(&body)
//!     .send()?;
//! if resp.status == 429 { /* ... */ }
//! ```

use crate::bindings::sink::wasi::http::outgoing_handler;
use crate::bindings::sink::wasi::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::sink::wasi::io::streams::StreamError;
use crate::DeliveryError;

/// Percent-encodes everything but unreserved characters (RFC 3986): for a path segment or a
/// query value taken from settings or messages (a Matrix room id, a transaction id, a token).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Cap on a response body read by [`Request::send`]; more is cut off.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Why a request failed before a response arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpError {
    /// The host refused: the authority is not granted to this stage.
    Denied(String),
    /// The URL could not be parsed.
    BadUrl(String),
    /// DNS, connection, TLS or protocol failure, or a timeout.
    Transport(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "request denied by the host: {m}"),
            HttpError::BadUrl(m) => write!(f, "bad URL: {m}"),
            HttpError::Transport(m) => write!(f, "transport error: {m}"),
        }
    }
}

impl From<HttpError> for DeliveryError {
    /// A denied host or a bad URL never gets better by retrying; transport errors may.
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Denied(_) | HttpError::BadUrl(_) => DeliveryError::Permanent(e.to_string()),
            HttpError::Transport(_) => DeliveryError::Retryable(e.to_string()),
        }
    }
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("response is not the expected JSON: {e}"))
    }

    /// The body as text (lossy), cut to `max` bytes for error messages.
    pub fn text_snippet(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(max).collect()
    }

    /// Maps the status to a delivery outcome the usual way: 2xx Ok; 429 rate-limited (using
    /// `retry_after_ms` if the caller found one, else `Retry-After` seconds, else 1 s); other
    /// 4xx permanent; everything else retryable.
    pub fn delivery_outcome(&self, retry_after_ms: Option<u64>) -> Result<(), DeliveryError> {
        match self.status {
            200..=299 => Ok(()),
            429 => Err(DeliveryError::RateLimited(retry_after_ms.unwrap_or_else(
                || {
                    self.header("retry-after")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map_or(1000, |s| s * 1000)
                },
            ))),
            400..=499 => Err(DeliveryError::Permanent(format!(
                "HTTP {}: {}",
                self.status,
                self.text_snippet(300)
            ))),
            _ => Err(DeliveryError::Retryable(format!(
                "HTTP {}: {}",
                self.status,
                self.text_snippet(300)
            ))),
        }
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.to_ascii_uppercase(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A GET request.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A POST request.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// A PUT request.
    pub fn put(url: &str) -> Self {
        Self::new("PUT", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: serde::Serialize>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// The `Content-Length` this request is sent with: the body's size, known in advance, so
    /// strict servers (which answer a chunked upload with 411 or read it as empty) get a
    /// framed body. `None` when the caller set the header itself, and for a bodiless GET,
    /// HEAD, DELETE or OPTIONS (as curl sends them).
    fn content_length(&self) -> Option<usize> {
        if self.headers.iter().any(|(k, _)| k == "content-length") {
            return None;
        }
        let bodiless = matches!(self.method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS");
        if self.body.is_empty() && bodiless {
            return None;
        }
        Some(self.body.len())
    }

    /// Sends the request and reads the response, blocking.
    ///
    /// The body goes out with a `Content-Length` header (never chunked): its size is known.
    pub fn send(self) -> Result<Response, HttpError> {
        let (scheme, rest) = match self.url.split_once("://") {
            Some(("https", rest)) => (Scheme::Https, rest),
            Some(("http", rest)) => (Scheme::Http, rest),
            _ => {
                return Err(HttpError::BadUrl(format!(
                    "`{}` is not an http(s) URL",
                    self.url
                )))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(HttpError::BadUrl(format!("`{}` has no host", self.url)));
        }
        let mut entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        if let Some(length) = self.content_length() {
            entries.push(("content-length".into(), length.to_string().into_bytes()));
        }
        let fields = Fields::from_list(&entries)
            .map_err(|e| HttpError::BadUrl(format!("invalid header: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let method = match self.method.as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "HEAD" => Method::Head,
            other => Method::Other(other.to_string()),
        };
        let bad = |what: &str| HttpError::BadUrl(format!("invalid {what} in `{}`", self.url));
        request.set_method(&method).map_err(|_| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| bad("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|_| bad("authority"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|_| bad("path"))?;

        let body = request
            .body()
            .map_err(|_| HttpError::Transport("request body unavailable".into()))?;
        let future =
            outgoing_handler::handle(request, None::<RequestOptions>).map_err(transport)?;
        // Write the body. If the host refused the request (or the connection failed), the
        // stream closes early and the real reason arrives through the response future, so a
        // write error is only reported when the future has nothing better to say.
        let mut write_error = None;
        match body.write() {
            Ok(stream) => {
                for chunk in self.body.chunks(4096) {
                    if let Err(e) = stream.blocking_write_and_flush(chunk) {
                        write_error = Some(format!("writing the body: {e:?}"));
                        break;
                    }
                }
            }
            Err(()) => write_error = Some("request body stream unavailable".into()),
        }
        let finished = OutgoingBody::finish(body, None);

        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(transport(code)),
            Some(Err(())) | None => {
                return Err(HttpError::Transport("response future lost".into()))
            }
        };
        if let Some(e) = write_error {
            return Err(HttpError::Transport(e));
        }
        finished.map_err(transport)?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let incoming = response
            .consume()
            .map_err(|_| HttpError::Transport("response body unavailable".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|_| HttpError::Transport("response body stream unavailable".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => {
                        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Transport(format!(
                            "reading the body: {}",
                            e.to_debug_string()
                        )))
                    }
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn transport(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => {
            HttpError::Denied("the host is not in this stage's grants.hosts".into())
        }
        other => HttpError::Transport(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn a_known_body_is_sent_with_its_length() {
        let r = Request::post("http://h/").json(&serde_json::json!({"a": 1}));
        assert_eq!(r.content_length(), Some(br#"{"a":1}"#.len()));
        assert_eq!(Request::put("http://h/").content_length(), Some(0));
    }

    #[test]
    fn a_bodiless_get_has_no_length_and_a_callers_own_header_wins() {
        assert_eq!(Request::get("http://h/").content_length(), None);
        let r = Request::post("http://h/")
            .header("Content-Length", "3")
            .body("abc");
        assert_eq!(r.content_length(), None);
    }
}
