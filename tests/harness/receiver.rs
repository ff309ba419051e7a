//! A local webhook receiver: records every request a `webhook` sink makes and answers as the
//! test says — accept, fail with a status, rate-limit with `Retry-After`, or hold the answer.
//!
//! It honours `Idempotency-Key` the way Mastodon does: a key it has accepted before is
//! accepted again without being shown twice, so [`Receiver::visible`] is what a user would see.
//! It records each request's peer address, so a test can count connections, and serves HTTPS
//! with a given certificate ([`Receiver::start_tls`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::Value;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200.
    Accept,
    /// This status (e.g. 503: a sink that is down).
    Fail(u16),
    /// 429 with `Retry-After: <seconds>`.
    RateLimit {
        /// The `Retry-After` value, in seconds.
        retry_after_s: u64,
    },
    /// 200, but only after this long.
    Hold(Duration),
    /// This status for messages whose id starts with the prefix; 200 for the others.
    FailIds(&'static str, u16),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its `Idempotency-Key` header.
    pub key: String,
    /// The JSON body (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The message id in the body.
    pub id: String,
    /// When it arrived (since the receiver started).
    pub at: Duration,
    /// The status answered; 0 while a held request is still waiting.
    pub answered: u16,
    /// The client's address: one per connection.
    pub peer: SocketAddr,
}

struct Inner {
    started: Instant,
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Request>>,
}

/// A running receiver on a free loopback port, for the rest of the test.
#[derive(Clone)]
pub struct Receiver {
    /// Its port.
    pub port: u16,
    inner: Arc<Inner>,
    scheme: &'static str,
}

impl Receiver {
    /// Starts a receiver that accepts everything.
    pub async fn start() -> Receiver {
        let (inner, app) = Self::app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("bound").port();
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await });
        Receiver {
            port,
            inner,
            scheme: "http",
        }
    }

    /// Starts a receiver that accepts everything over HTTPS, presenting `cert_pem` (a chain)
    /// with `key_pem`.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (inner, app) = Self::app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("bound").port();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
                tokio::spawn(async move {
                    // A client that refuses our certificate ends here, as it should.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Receiver {
            port,
            inner,
            scheme: "https",
        }
    }

    fn app() -> (Arc<Inner>, axum::Router) {
        let inner = Arc::new(Inner {
            started: Instant::now(),
            behaviour: Mutex::new(Behaviour::Accept),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        (inner, app)
    }

    /// The URL a `webhook` sink posts to.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/hook", self.scheme, self.port)
    }

    /// How many connections the requests so far came over.
    pub fn connections(&self) -> usize {
        let peers: BTreeSet<SocketAddr> = self.requests().iter().map(|r| r.peer).collect();
        peers.len()
    }

    /// The `host:port` to grant.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Changes how the next requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        *self.inner.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Accepted requests, one per idempotency key: what a user sees.
    pub fn visible(&self) -> Vec<Request> {
        let mut seen = BTreeSet::new();
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered) && seen.insert(r.key.clone()))
            .collect()
    }

    /// The message ids of [`Receiver::visible`].
    pub fn visible_ids(&self) -> BTreeSet<String> {
        self.visible().into_iter().map(|r| r.id).collect()
    }

    /// Message ids visible more than once (under different idempotency keys), with counts:
    /// duplicates a user would see.
    pub fn visible_duplicates(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::<String, usize>::new();
        for r in self.visible() {
            *counts.entry(r.id).or_default() += 1;
        }
        counts.retain(|_, n| *n > 1);
        counts
    }

    /// A `[[sink]]` table of the `webhook` plugin posting here, with `retry` (a TOML inline table, e.g. `{ max_attempts = 5, initial = "50ms" }`).
    pub fn sink_toml(&self, name: &str, retry: &str) -> String {
        format!(
            "[[sink]]\nname = \"{name}\"\nplugin = \"webhook\"\n\
             config = {{ url = \"{url}\" }}\n\
             grants = {{ hosts = [\"{host}\"] }}\nretry = {retry}\n",
            url = self.url(),
            host = self.host(),
        )
    }
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let request = Request {
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        id: body["id"].as_str().unwrap_or_default().to_string(),
        body,
        at: inner.started.elapsed(),
        answered: 0,
        peer,
    };
    let index = {
        let mut requests = inner.requests.lock().unwrap();
        requests.push(request);
        requests.len() - 1
    };
    let behaviour = *inner.behaviour.lock().unwrap();
    let response = match behaviour {
        Behaviour::Accept => StatusCode::OK.into_response(),
        Behaviour::Fail(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            // Two lines, as many servers' error pages have: a listing of dead letters must
            // still show one row per letter.
            "receiver told to fail\nsecond line of the error page",
        )
            .into_response(),
        Behaviour::RateLimit { retry_after_s } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", retry_after_s.to_string())],
            "slow down",
        )
            .into_response(),
        Behaviour::Hold(how_long) => {
            tokio::time::sleep(how_long).await;
            StatusCode::OK.into_response()
        }
        Behaviour::FailIds(prefix, status) => {
            let id = inner.requests.lock().unwrap()[index].id.clone();
            if id.starts_with(prefix) {
                StatusCode::from_u16(status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
    };
    inner.requests.lock().unwrap()[index].answered = response.status().as_u16();
    response
}
