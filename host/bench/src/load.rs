//! An HTTP load generator: one HTTP/1.1 keep-alive connection per client task, no pooling
//! layer in between, so the generator takes as little of the 2 cores as it can.
//!
//! - [`closed_loop`]: each connection sends its next request as soon as the last is answered
//!   (the most a server sustains at that concurrency).
//! - [`open_loop`]: requests are due at a fixed rate whatever the server does; each body carries
//!   its due time (`sent_us`), so a receiver measures latency from when the request *should*
//!   have left (no coordinated omission).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// Where requests go.
#[derive(Clone)]
pub struct Target {
    /// The server.
    pub addr: SocketAddr,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
}

/// Makes the body of request number `n`, due at `due_us` (µs since the run's clock base).
pub type BodyFn = Arc<dyn Fn(u64, u64) -> Bytes + Send + Sync>;

/// What a load run saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// 2xx answers.
    pub ok: u64,
    /// Other answers and transport errors.
    pub failed: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    /// 2xx answers per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// One kept-alive HTTP/1.1 connection.
pub(crate) struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Connects to `addr`.
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Connection { sender })
    }

    /// Sends one POST; true for a 2xx answer.
    pub(crate) async fn post(&mut self, target: &Target, body: Bytes) -> anyhow::Result<bool> {
        self.sender.ready().await?;
        let mut request = hyper::Request::post(target.path.as_str())
            .header(hyper::header::HOST, target.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in &target.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        Ok(ok)
    }
}

async fn post_counting(
    conn: &mut Option<Connection>,
    target: &Target,
    body: Bytes,
    ok: &AtomicU64,
    failed: &AtomicU64,
) {
    if conn.is_none() {
        *conn = Connection::open(target.addr).await.ok();
    }
    let Some(c) = conn.as_mut() else {
        failed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    };
    match c.post(target, body).await {
        Ok(true) => {
            ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {
            failed.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            failed.fetch_add(1, Ordering::Relaxed);
            *conn = None;
        }
    }
}

/// `connections` clients posting back to back for `duration`.
pub async fn closed_loop(
    target: &Target,
    connections: usize,
    duration: Duration,
    clock: Instant,
    body: BodyFn,
) -> Outcome {
    closed_loop_until(target, connections, Stop::After(duration), clock, body).await
}

/// `connections` clients posting back to back until `requests` were sent (a storm of a fixed
/// size).
pub async fn closed_loop_count(
    target: &Target,
    connections: usize,
    requests: u64,
    clock: Instant,
    body: BodyFn,
) -> Outcome {
    closed_loop_until(target, connections, Stop::Sent(requests), clock, body).await
}

/// When a closed loop stops.
#[derive(Clone, Copy)]
enum Stop {
    After(Duration),
    Sent(u64),
}

async fn closed_loop_until(
    target: &Target,
    connections: usize,
    stop: Stop,
    clock: Instant,
    body: BodyFn,
) -> Outcome {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (target, ok, failed, next, body) = (
            target.clone(),
            ok.clone(),
            failed.clone(),
            next.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let done = match stop {
                    Stop::After(duration) => start.elapsed() >= duration,
                    Stop::Sent(requests) => n >= requests,
                };
                if done {
                    break;
                }
                let now_us = clock.elapsed().as_micros() as u64;
                post_counting(&mut conn, &target, body(n, now_us), &ok, &failed).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Outcome {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

/// `rate` requests per second for `duration`, over up to `connections` clients.
pub async fn open_loop(
    target: &Target,
    rate: f64,
    connections: usize,
    duration: Duration,
    clock: Instant,
    body: BodyFn,
) -> Outcome {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (target, ok, failed, next, body) = (
            target.clone(),
            ok.clone(),
            failed.clone(),
            next.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let due = start + interval.mul_f64(n as f64);
                tokio::time::sleep_until(due.into()).await;
                let due_us = due.saturating_duration_since(clock).as_micros() as u64;
                post_counting(&mut conn, &target, body(n, due_us), &ok, &failed).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Outcome {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}
