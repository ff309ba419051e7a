//! Serving the HTTP surface with bounds a client cannot outstay: a cap on open connections,
//! a deadline for each request's headers (which is also how long an idle kept-alive
//! connection may wait), and accept errors that never spin.
//!
//! `axum::serve` sets none of these: a client that sent half a request kept its connection
//! for as long as it liked, and a thousand of them took every file descriptor, so the queue
//! store could not open a file any more. Here each connection takes a permit of a semaphore
//! *before* it is accepted: at the cap, new connections wait in the kernel's backlog instead
//! of taking descriptors, and each permit comes back when its connection ends — at the latest
//! [`HttpLimits::header_timeout`] after its last answer. The body's own deadline is checked
//! where the body is read (`ingest`), since only a handler knows when it wants one.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::settings::HttpLimits;

/// File descriptors kept for everything but HTTP connections (the queue store and its blob
/// files, plugin directories, outbound connections, the pipelines directory watch).
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// At most one "connections at their cap" line this often.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// How long the accept loop pauses after an accept error (`EMFILE`, `ENFILE`, `ENOBUFS`),
/// so it does not spin while descriptors are short.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection cap that fits the process's descriptor limit `nofile`: the configured cap,
/// or less when the limit leaves no room for it besides [`RESERVED_DESCRIPTORS`].
pub fn effective_max_connections(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(RESERVED_DESCRIPTORS).max(16);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The open-files limit in force (the soft limit).
pub fn descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, Resource};
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raises the soft limit on open files to the hard limit, as systemd's guidance asks of
/// services that need many descriptors (the soft limit stays at 1024 for programs using
/// `select()`, which tocsin does not). Called by the binary at start; a library leaves the
/// process's limits alone.
pub fn raise_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        tracing::warn!(error = %e, "cannot raise the open-files limit to its hard limit");
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets open requests finish
/// (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(100);
    let mut last_error_log = None::<tokio::time::Instant>;
    let mut last_cap_log = None::<tokio::time::Instant>;
    loop {
        if permits.available_permits() == 0 {
            let now = tokio::time::Instant::now();
            if last_cap_log.is_none_or(|at| now - at > CAP_LOG_EVERY) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "HTTP connections at their cap (--max-connections); new ones wait in the backlog"
                );
                last_cap_log = Some(now);
            }
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Descriptors are short (or the peer gave up before the accept): log at
                    // most once a second, pause, try again.
                    let now = tokio::time::Instant::now();
                    if last_error_log.is_none_or(|at| now - at > Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "cannot accept an HTTP connection; pausing");
                        last_error_log = Some(now);
                    }
                    drop(permit);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Handlers that log who called (the admin API's access log) read the peer's address.
        let with_peer = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        );
        let service = TowerToHyperService::new(with_peer);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // An error here is the client's (reset, timeout, bad request); nothing to do.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
