//! A real Prometheus Alertmanager (Debian `prometheus-alertmanager`) on a free loopback port,
//! with clustering off, sending its notifications to a tocsin ingest URL.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// Where Debian installs it.
pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";

/// A running Alertmanager; killed on drop.
pub struct Alertmanager {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Alertmanager {
    /// Starts Alertmanager with one webhook receiver posting to `webhook_url` with the bearer
    /// token in `token_file`. Grouping is per alert (`group_by: ['...']`) with the smallest
    /// waits, so notifications leave at once.
    pub async fn start(webhook_url: &str, token_file: &Path) -> Alertmanager {
        assert!(
            Path::new(ALERTMANAGER_BIN).exists(),
            "{ALERTMANAGER_BIN} is missing: apt-get install prometheus-alertmanager (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "route:
  receiver: tocsin
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: tocsin
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {token}
",
            token = token_file.display()
        );
        std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(ALERTMANAGER_BIN)
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("alertmanager starts");
        let am = Alertmanager {
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/-/ready", am.base)).await {
                if r.status().is_success() {
                    return am;
                }
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pushes alerts through its API (`POST /api/v2/alerts`).
    pub async fn post_alerts(&self, alerts: &Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.base))
            .json(alerts)
            .send()
            .await
            .expect("alertmanager answers");
        assert!(
            resp.status().is_success(),
            "POST /api/v2/alerts: {}",
            resp.status()
        );
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
