//! The CLI's side of the admin API: finding the server that runs on a data directory, and
//! calling it.
//!
//! A running server writes `server.json` into its data directory (its pid and the URL of its
//! listener) and removes it when it stops. `tocsin dlq` and `tocsin queue` open the store
//! themselves when they can; when a server holds it, they read that file and ask the server,
//! with the token from `TOCSIN_API_TOKEN` (or `--token-file`), and print the same thing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use tocsin_queue::{Envelope, Seq};

use crate::operator::{DeadLetterRow, PipelineView, QueueRow, Selection};

/// The file a running server writes into its data directory.
pub const SERVER_FILE: &str = "server.json";

/// What `server.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's process id.
    pub pid: u32,
    /// Its main listener, as a local client reaches it (`http://127.0.0.1:8470` for a server
    /// listening on `0.0.0.0:8470`).
    pub url: String,
}

/// Writes `server.json` for a server listening on `addr`; the file is removed by dropping the
/// returned guard.
pub fn announce(data_dir: &Path, addr: SocketAddr) -> std::io::Result<ServerFileGuard> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let info = ServerInfo {
        pid: std::process::id(),
        url: format!("http://{}", SocketAddr::new(ip, addr.port())),
    };
    let path = data_dir.join(SERVER_FILE);
    let text = serde_json::to_string_pretty(&info).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(ServerFileGuard(path))
}

/// Removes `server.json` when dropped.
pub struct ServerFileGuard(PathBuf);

impl Drop for ServerFileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the server running on `data_dir` announced, if it did.
pub fn announced(data_dir: &Path) -> Option<ServerInfo> {
    let text = std::fs::read_to_string(data_dir.join(SERVER_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A client of one server's admin API.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the server at `url` (`http://host:port`) with `token`.
    pub fn new(url: &str, token: String) -> ApiClient {
        ApiClient {
            base: format!("{}{}", url.trim_end_matches('/'), super::PREFIX),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// The API's URL with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|e| format!("`{}` is not a URL: {e}", self.base))?;
        url.path_segments_mut()
            .map_err(|()| format!("`{}` cannot take a path", self.base))?
            .extend(segments);
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, String> {
        let response =
            request.bearer_auth(&self.token).send().await.map_err(|e| {
                format!("cannot reach the server's admin API at {}: {e}", self.base)
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            let why = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(format!("the server answered {status}: {why}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("an answer this tocsin cannot read: {e}"))
    }

    /// `GET /silences`.
    pub async fn silences(&self) -> Result<Vec<crate::silences::SilenceView>, String> {
        self.call(self.http.get(self.url(&["silences"])?)).await
    }

    /// `POST /silences`.
    pub async fn add_silence(
        &self,
        new: &crate::silences::NewSilence,
    ) -> Result<crate::silences::SilenceView, String> {
        self.call(self.http.post(self.url(&["silences"])?).json(new))
            .await
    }

    /// `DELETE /silences/{id}`.
    pub async fn expire_silence(&self, id: &str) -> Result<crate::silences::SilenceView, String> {
        self.call(self.http.delete(self.url(&["silences", id])?))
            .await
    }

    /// `GET /alerts`.
    pub async fn alerts(
        &self,
        pipeline: Option<&str>,
    ) -> Result<Vec<crate::admin::silences::AlertRow>, String> {
        let mut url = self.url(&["alerts"])?;
        if let Some(p) = pipeline {
            url.query_pairs_mut().append_pair("pipeline", p);
        }
        self.call(self.http.get(url)).await
    }

    /// `POST /alerts/ack`.
    pub async fn acknowledge(
        &self,
        new: &crate::open_alerts::NewAck,
    ) -> Result<crate::admin::silences::AlertRow, String> {
        self.call(self.http.post(self.url(&["alerts", "ack"])?).json(new))
            .await
    }

    /// `GET /pipelines/{pipeline}/expected`.
    pub async fn expected(
        &self,
        pipeline: &str,
    ) -> Result<Vec<crate::absence::ReporterRow>, String> {
        self.call(
            self.http
                .get(self.url(&["pipelines", pipeline, "expected"])?),
        )
        .await
    }

    /// `DELETE /pipelines/{pipeline}/expected/{reporter}`.
    pub async fn forget_expected(&self, pipeline: &str, reporter: &str) -> Result<(), String> {
        let url = self.url(&["pipelines", pipeline, "expected", reporter])?;
        self.call::<serde_json::Value>(self.http.delete(url))
            .await
            .map(drop)
    }

    /// `GET /dead-letters`.
    pub async fn dead_letters(&self, pipeline: Option<&str>) -> Result<Vec<DeadLetterRow>, String> {
        let mut url = self.url(&["dead-letters"])?;
        if let Some(p) = pipeline {
            url.query_pairs_mut().append_pair("pipeline", p);
        }
        self.call(self.http.get(url)).await
    }

    /// `GET /pipelines/{p}/dead-letters/{q}/{seq}`.
    pub async fn dead_letter(
        &self,
        pipeline: &str,
        queue: &str,
        seq: Seq,
    ) -> Result<Envelope, String> {
        let seq = seq.to_string();
        let url = self.url(&["pipelines", pipeline, "dead-letters", queue, &seq])?;
        self.call(self.http.get(url)).await
    }

    /// `POST /pipelines/{p}/dead-letters/{q}/replay` or `…/purge`; returns how many.
    pub async fn act(
        &self,
        action: &str,
        pipeline: &str,
        queue: &str,
        selection: &Selection,
    ) -> Result<usize, String> {
        let url = self.url(&["pipelines", pipeline, "dead-letters", queue, action])?;
        let answer: serde_json::Value = self.call(self.http.post(url).json(selection)).await?;
        let key = if action == "replay" {
            "replayed"
        } else {
            "purged"
        };
        answer
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| format!("the server's answer has no `{key}`"))
    }

    /// `GET /pipelines`.
    pub async fn pipelines(&self) -> Result<Vec<PipelineView>, String> {
        self.call(self.http.get(self.url(&["pipelines"])?)).await
    }

    /// `POST /pipelines/{p}/pause`, `…/resume` or `…/run`; returns what the server did.
    pub async fn command(&self, action: &str, pipeline: &str) -> Result<String, String> {
        let url = self.url(&["pipelines", pipeline, action])?;
        let answer: serde_json::Value = self.call(self.http.post(url)).await?;
        answer
            .get("done")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "the server's answer has no `done`".into())
    }

    /// `GET /trace/{id}`.
    pub async fn trace(
        &self,
        pipeline: Option<&str>,
        id: &str,
    ) -> Result<Vec<crate::trace::PipelineEvent>, String> {
        let mut url = self.url(&["trace", id])?;
        if let Some(p) = pipeline {
            url.query_pairs_mut().append_pair("pipeline", p);
        }
        self.call(self.http.get(url)).await
    }

    /// `GET /problems`.
    pub async fn problems(&self) -> Result<Vec<crate::operator::Problem>, String> {
        self.call(self.http.get(self.url(&["problems"])?)).await
    }

    /// `GET /recent?limit=N`.
    pub async fn recent(&self, limit: usize) -> Result<Vec<crate::recent::RecentMessage>, String> {
        let mut url = self.url(&["recent"])?;
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        self.call(self.http.get(url)).await
    }

    /// `GET /queues`.
    pub async fn queues(&self) -> Result<Vec<QueueRow>, String> {
        self.call(self.http.get(self.url(&["queues"])?)).await
    }
}
