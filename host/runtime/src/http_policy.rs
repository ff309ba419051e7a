//! Outbound HTTP for sinks: only to the hosts the pipeline grants.
//!
//! The check runs in wasmtime-wasi-http's `send_request` hook, on the request's scheme and
//! authority as the host will really connect — not on a `Host` header, which guests cannot
//! set (it is a forbidden header), so a guest cannot smuggle a request to another host.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tocsin_config::host_grant::HostGrant;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::outbound::OutboundPool;

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

/// The granted authorities of one stage, and where granted requests go out.
pub struct HostAllowList {
    /// The stage's `grants.hosts`, parsed once when its instance is made: `host` (the
    /// scheme's default port), `host:port` (that port only), `*.domain` (names below it).
    /// Entries were checked when the pipeline file was read; one that does not parse grants
    /// nothing (see [`HostAllowList::parse_grants`]).
    pub grants: Vec<HostGrant>,
    /// Pipeline and stage, for the log line when a request is refused.
    pub who: String,
    /// In a dry run, granted requests are recorded here and answered `200 {}` instead of sent.
    pub recorder: Option<Arc<DryRunRecorder>>,
    /// The stage's connection pool, which sends granted requests.
    pub(crate) outbound: Arc<OutboundPool>,
    /// The stage's log budget: a plugin retrying a refused host in a loop must not write the
    /// host's log full.
    pub(crate) log: crate::log_budget::LogBudget,
}

/// What a plugin would have sent out in a dry run (`tocsin test`): its outbound HTTP requests,
/// recorded instead of sent, and what it wrote to standard output, captured instead of printed.
#[derive(Debug)]
pub struct DryRunRecorder {
    requests: Mutex<Vec<RecordedRequest>>,
    stdout: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    stdout_taken: Mutex<usize>,
}

impl Default for DryRunRecorder {
    fn default() -> Self {
        DryRunRecorder {
            requests: Mutex::default(),
            stdout: wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(crate::stage::MAX_OUTPUT_BYTES),
            stdout_taken: Mutex::new(0),
        }
    }
}

/// One request a sink made in a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Full URL.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl DryRunRecorder {
    /// Takes the requests recorded so far.
    pub fn take(&self) -> Vec<RecordedRequest> {
        std::mem::take(&mut *self.requests.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes what was written to standard output since the last call.
    pub fn take_stdout(&self) -> Vec<u8> {
        let all = self.stdout.contents();
        let mut taken = self.stdout_taken.lock().unwrap_or_else(|p| p.into_inner());
        let new = all.get(*taken..).unwrap_or_default().to_vec();
        *taken = all.len();
        new
    }

    /// The stream a granted `stdout` writes to in a dry run.
    pub(crate) fn stdout_pipe(&self) -> wasmtime_wasi::p2::pipe::MemoryOutputPipe {
        self.stdout.clone()
    }
}

impl HostAllowList {
    /// Parses a stage's `grants.hosts` entries, leaving out any that do not parse (a grant
    /// that cannot be read grants nothing).
    pub fn parse_grants(hosts: &[String]) -> Vec<HostGrant> {
        hosts
            .iter()
            .filter_map(|entry| HostGrant::parse(entry).ok())
            .collect()
    }

    /// Whether a request to `scheme://host[:port]` may go out.
    pub fn allows(&self, scheme: Option<&str>, host: &str, port: Option<u16>) -> bool {
        let default_port = match scheme {
            Some("http") => 80,
            Some("https") | None => 443,
            Some(_) => return false,
        };
        let port = port.unwrap_or(default_port);
        // A grant without a port is the scheme's own: https to port 80 is not granted.
        self.grants
            .iter()
            .any(|granted| granted.allows(host, port, default_port))
    }
}

impl WasiHttpHooks for HostAllowList {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> SendFuture {
        let uri = request.uri();
        let allowed = uri
            .host()
            .is_some_and(|host| self.allows(uri.scheme_str(), host, uri.port_u16()));
        if !allowed {
            if !self.log.admit() {
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
            tracing::warn!(
                stage = %self.who,
                uri = %format!("{}://{}", uri.scheme_str().unwrap_or("?"), uri.authority().map_or("", |a| a.as_str())),
                "outbound HTTP request refused: host not granted"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        drop(fut);
        if let Some(recorder) = self.recorder.clone() {
            return Box::new(record(recorder, request));
        }
        let outbound = self.outbound.clone();
        Box::new(async move {
            let response = outbound.send(request, options).await?;
            // The pool drives the connection itself; nothing is left for the caller to await.
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// Reads the whole request into `recorder` and answers `200 {}`.
async fn record(
    recorder: Arc<DryRunRecorder>,
    request: http::Request<WasiBody>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    use http_body_util::{BodyExt, Full};
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    recorder
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(RecordedRequest {
            method: parts.method.to_string(),
            url: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
        });
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(
            Full::new(bytes::Bytes::from_static(b"{}"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|_| HttpError::InternalError(None))?;
    Ok((response, Box::new(async { Ok(()) }) as IoFuture))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granting(hosts: &[&str]) -> HostAllowList {
        HostAllowList {
            grants: HostAllowList::parse_grants(
                &hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            ),
            who: String::new(),
            recorder: None,
            outbound: Arc::new(OutboundPool::new(
                Arc::new(crate::outbound::TlsContext::new(&Default::default()).unwrap()),
                String::new(),
            )),
            log: crate::log_budget::LogBudget::new("p", "s"),
        }
    }

    #[test]
    fn host_grants_cover_default_ports_and_host_port_grants_one_port() {
        let list = granting(&["matrix.example.org", "127.0.0.1:8008"]);
        assert!(list.allows(Some("https"), "matrix.example.org", None));
        assert!(list.allows(Some("http"), "MATRIX.example.org", Some(80)));
        // The scheme's own port only: https to port 80, or http to 443, is not granted.
        assert!(!list.allows(Some("https"), "matrix.example.org", Some(80)));
        assert!(!list.allows(Some("http"), "matrix.example.org", Some(443)));
        assert!(!list.allows(Some("https"), "matrix.example.org", Some(8448)));
        assert!(list.allows(Some("http"), "127.0.0.1", Some(8008)));
        assert!(!list.allows(Some("http"), "127.0.0.1", Some(8009)));
        assert!(!list.allows(Some("https"), "evil.example.org", None));
        assert!(!list.allows(Some("ftp"), "matrix.example.org", None));
    }

    #[test]
    fn ipv6_grants_match_with_and_without_a_port() {
        let list = granting(&["[::1]:8008", "[fd00::7]", "fd00::8"]);
        // wasi:http hands the host over in brackets, as URLs write it.
        assert!(list.allows(Some("http"), "[::1]", Some(8008)));
        assert!(!list.allows(Some("http"), "[::1]", Some(8009)));
        assert!(list.allows(Some("https"), "[fd00::7]", None));
        assert!(list.allows(Some("https"), "fd00::8", None));
        assert!(!list.allows(Some("https"), "fd00::9", None));
    }

    #[test]
    fn a_wildcard_grant_covers_the_names_below_its_domain() {
        let list = granting(&["*.hooks.example.org"]);
        assert!(list.allows(Some("https"), "eu.hooks.example.org", None));
        assert!(!list.allows(Some("https"), "hooks.example.org", None));
        assert!(!list.allows(Some("https"), "eu.hooks.example.org.evil.net", None));
        // An entry that could not be checked (`*`) grants nothing.
        assert!(!granting(&["*"]).allows(Some("https"), "example.org", None));
    }
}
