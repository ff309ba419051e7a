//! Sinks' outbound HTTP: a keep-alive connection pool per stage, and TLS with a fixed crypto
//! provider and a known set of trusted authorities.
//!
//! wasmtime-wasi-http's default sender opens a new connection for every request (and a new
//! TLS session, with a TLS configuration built from scratch each time); a sink posting
//! thousands of messages to one homeserver paid a TCP (and TLS) handshake for each. It also
//! takes rustls' process-wide default crypto provider, which this binary cannot have
//! implicitly: two providers are compiled in (ring for wasmtime-wasi-http, aws-lc-rs for the
//! host's own reqwest), and rustls then panics on the first HTTPS request instead of choosing.
//!
//! So the host sends granted requests itself, through [`OutboundPool`]:
//! - **one pool per stage** — connections are reused by the stage that opened them and by no
//!   other plugin, so one plugin's connection (and whatever the server ties to it) never
//!   carries another plugin's request;
//! - the allow-list check stays in `http_policy` and runs on every request before it gets here;
//!   redirects are not followed (a sink sees the 3xx), so no request leaves for a host that was
//!   not checked;
//! - TLS trusts the Mozilla roots compiled in (as wasmtime-wasi-http did), the system's store
//!   (`/etc/ssl/certs`, `SSL_CERT_FILE`) and, if the operator names one, a PEM file of extra
//!   authorities ([`TlsTrust::extra_ca_file`], `tocsin run --tls-ca-file`) — an internal CA in
//!   front of a self-hosted homeserver. It is built once per runtime, when the first stage
//!   sends its first request (the connector needs it even for plain HTTP).
//! - a request body goes out with a `Content-Length` whenever its size can be known: the SDK
//!   sets the header itself; for a guest that does not, a body up to [`FRAMING_BUFFER`] that
//!   the guest finishes writing is read first and sent framed ([`with_known_length`]). Only a
//!   body that is larger, or carries trailers, is sent chunked — strict receivers answer a
//!   chunked upload with 411 or read it as empty.
//! - a guest's `request-options` are honoured: connect and first-byte timeouts together bound
//!   the wait for the response head (a pooled request may not connect at all), and the
//!   between-bytes timeout bounds each wait for more of the body. The stage's own call timeout
//!   bounds all of it anyway.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// An idle pooled connection is closed after this long (many servers close theirs sooner; a
/// request that finds its connection closed before it was sent is retried on a new one).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per host by one stage. Its instances (up to a sink's `concurrency`,
/// at most 64) share the pool and each makes about one request at a time, so a storm keeps one
/// connection per instance in flight instead of opening and closing the ones over a smaller cap.
const MAX_IDLE_PER_HOST: usize = 64;
/// Connecting (TCP) gives up after this long, whatever the guest asked for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// wasmtime-wasi-http's default for each timeout a guest does not set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// A request body without a `Content-Length` is read up to this size to learn its length;
/// past it, it is sent chunked as it comes.
const FRAMING_BUFFER: usize = 1 << 20;

/// Which certificate authorities sinks' HTTPS requests trust, besides the compiled-in Mozilla
/// roots and the system's store.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    /// A PEM file of extra CA certificates (an internal CA).
    pub extra_ca_file: Option<PathBuf>,
}

/// The TLS client configuration of one runtime, built on the first outbound request (loading
/// the system store takes milliseconds that start-up and `tocsin validate` need not pay).
pub(crate) struct TlsContext {
    extra: Vec<CertificateDer<'static>>,
    config: OnceLock<Arc<rustls::ClientConfig>>,
}

impl TlsContext {
    /// Reads the extra authorities now, so a bad file is an error at start, not at 3 am.
    pub(crate) fn new(trust: &TlsTrust) -> Result<Self, String> {
        let mut extra = Vec::new();
        if let Some(path) = &trust.extra_ca_file {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                extra.push(cert.map_err(|e| {
                    format!("the CA file {} is not valid PEM: {e}", path.display())
                })?);
            }
            if extra.is_empty() {
                return Err(format!(
                    "the CA file {} holds no PEM certificate",
                    path.display()
                ));
            }
            // Each must be usable as a trust anchor.
            let mut check = rustls::RootCertStore::empty();
            for cert in &extra {
                check.add(cert.clone()).map_err(|e| {
                    format!(
                        "the CA file {} holds a certificate rustls cannot use as an authority: {e}",
                        path.display()
                    )
                })?;
            }
        }
        Ok(TlsContext {
            extra,
            config: OnceLock::new(),
        })
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.into(),
                };
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::warn!(%error, "cannot read part of the system's CA store");
                }
                roots.add_parsable_certificates(native.certs);
                roots.add_parsable_certificates(self.extra.iter().cloned());
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Arc::new(config)
            })
            .clone()
    }
}

type PooledClient = Client<HttpsConnector<HttpConnector>, WasiBody>;

/// One stage's outbound connections.
pub(crate) struct OutboundPool {
    tls: Arc<TlsContext>,
    client: OnceLock<PooledClient>,
    /// Pipeline and stage, for log lines.
    who: String,
}

impl OutboundPool {
    pub(crate) fn new(tls: Arc<TlsContext>, who: String) -> Self {
        OutboundPool {
            tls,
            client: OnceLock::new(),
            who,
        }
    }

    fn client(&self) -> &PooledClient {
        self.client.get_or_init(|| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(CONNECT_TIMEOUT));
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((*self.tls.client_config()).clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
                .build(connector)
        })
    }

    /// Sends a request the allow-list has granted; answers with the response head and a body
    /// that fails if the server pauses longer than the between-bytes timeout.
    pub(crate) async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let options = options.unwrap_or_default();
        let head_timeout = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT)
            + options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_TIMEOUT)
            .max(Duration::from_nanos(1));
        let sent = async {
            let request = with_known_length(request).await?;
            self.client().request(request).await.map_err(|e| {
                let error = classify(&e);
                tracing::warn!(stage = %self.who, error = %chain(&e), "outbound HTTP request failed");
                error
            })
        };
        let response = match tokio::time::timeout(head_timeout, sent).await {
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(HttpError::ConnectionReadTimeout),
            Ok(Ok(response)) => response,
        };
        Ok(response.map(|incoming| {
            BetweenBytes {
                incoming,
                timeout: between_bytes,
                sleep: None,
            }
            .boxed_unsync()
        }))
    }
}

/// `request` with a body whose length hyper knows, so it is sent with `Content-Length`
/// rather than chunked: a body that already has the header (the SDK's) or an exact size goes
/// as it is; any other is read until it ends — the guest writes its body before it waits for
/// the answer — and sent from memory. A body over [`FRAMING_BUFFER`], or one with trailers,
/// is sent chunked: what was read first, then the rest as it comes.
async fn with_known_length(
    request: http::Request<WasiBody>,
) -> Result<http::Request<WasiBody>, HttpError> {
    use http_body::Body as _;
    if request.headers().contains_key(http::header::CONTENT_LENGTH)
        || request.body().size_hint().exact().is_some()
    {
        return Ok(request);
    }
    let (parts, mut body) = request.into_parts();
    let mut read = bytes::BytesMut::new();
    let rest = loop {
        match body.frame().await {
            None => {
                let whole = http_body_util::Full::new(read.freeze())
                    .map_err(|never| match never {})
                    .boxed_unsync();
                return Ok(http::Request::from_parts(parts, whole));
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.extend_from_slice(&data);
                    if read.len() > FRAMING_BUFFER {
                        break vec![http_body::Frame::data(read.freeze())];
                    }
                }
                Err(trailers) => break vec![http_body::Frame::data(read.freeze()), trailers],
            },
        }
    };
    let streamed = Prefixed {
        first: rest.into_iter().collect(),
        rest: body,
    };
    Ok(http::Request::from_parts(parts, streamed.boxed_unsync()))
}

/// Frames already read from a body, then the rest of it.
struct Prefixed {
    first: std::collections::VecDeque<http_body::Frame<bytes::Bytes>>,
    rest: WasiBody,
}

impl http_body::Body for Prefixed {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Some(frame) = self.first.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_empty() && self.rest.is_end_stream()
    }
}

/// The wasi:http error code that says best what went wrong; the log line has the whole chain.
fn classify(error: &hyper_util::client::legacy::Error) -> HttpError {
    for e in causes(error) {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => HttpError::TlsCertificateError,
                rustls::Error::AlertReceived(alert) => HttpError::TlsAlertReceived {
                    alert_id: Some(u8::from(*alert)),
                    alert_message: Some(format!("{alert:?}")),
                },
                _ => HttpError::TlsProtocolError,
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return HttpError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => return HttpError::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => return HttpError::ConnectionTerminated,
                _ => {}
            }
        }
    }
    if error.is_connect() {
        return HttpError::DestinationUnavailable;
    }
    HttpError::InternalError(Some(chain(error)))
}

/// `error` and everything it wraps. An `io::Error` wrapping another error reports that
/// error's *source* as its own, skipping the wrapped one (which is where rustls' certificate
/// errors sit), so wrapped errors are opened with `get_ref` rather than `source`.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut found = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        found.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    found
}

/// An error and its sources, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A response body that fails with `connection-read-timeout` when no frame arrives within
/// `timeout` of the last one (the default sender's rule).
struct BetweenBytes {
    incoming: hyper::body::Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for BetweenBytes {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(HttpError::from)))
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
