//! The programs under test, as child processes: tocsin (the release binary) and Prometheus
//! Alertmanager (the Debian package), each in a directory of its own, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs Alertmanager.
pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A child killed (SIGKILL) on drop.
pub struct Process {
    /// The child.
    pub child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Process {
    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait up to `bound` for it to exit (SIGKILL after that). A stopped tocsin
    /// has synced its acks, so nothing it delivered is delivered again by its successor.
    pub fn stop(&mut self, bound: std::time::Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + bound;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.kill();
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tocsin installation in a directory: `pipelines/`, `data/`, its log.
pub struct Tocsin {
    /// The binary.
    pub bin: PathBuf,
    /// Built plugins.
    pub plugin_dir: PathBuf,
    /// Holds `pipelines/` and `data/`.
    pub dir: PathBuf,
    /// Environment of `tocsin run` besides the defaults (settings by their `TOCSIN_…` twins).
    pub env: Vec<(String, String)>,
}

impl Tocsin {
    /// A fresh installation under `dir`.
    pub fn new(bin: &Path, plugin_dir: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("pipelines"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        Ok(Tocsin {
            bin: bin.to_path_buf(),
            plugin_dir: std::fs::canonicalize(plugin_dir)?,
            dir: dir.to_path_buf(),
            env: Vec::new(),
        })
    }

    /// Writes `pipelines/NAME.toml`.
    pub fn pipeline(&self, name: &str, text: &str) -> anyhow::Result<()> {
        std::fs::write(self.dir.join(format!("pipelines/{name}.toml")), text)?;
        Ok(())
    }

    /// Starts `tocsin run` on `port` (logs to `tocsin.log`, warnings only).
    pub fn spawn(&self, port: u16) -> anyhow::Result<Process> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tocsin.log"))?;
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--pipelines")
            .arg(self.dir.join("pipelines"))
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--plugin-dir")
            .arg(&self.plugin_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Process { child, port })
    }
}

/// Polls `GET path` until it answers 2xx; the time it took from `since`.
pub async fn wait_ready(
    port: u16,
    path: &str,
    since: Instant,
    bound: Duration,
) -> anyhow::Result<Duration> {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}{path}");
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > bound {
            anyhow::bail!("{url} did not answer within {bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Starts Alertmanager with clustering off and the smallest waits it accepts, sending every
/// alert as its own notification (`group_by: ['...']`) to `webhook_url`.
pub async fn alertmanager(dir: &Path, webhook_url: &str) -> anyhow::Result<Process> {
    alertmanager_with(dir, &alertmanager_config(webhook_url)).await
}

/// Starts Alertmanager with `config` (YAML) in `dir`.
pub async fn alertmanager_with(dir: &Path, config: &str) -> anyhow::Result<Process> {
    anyhow::ensure!(
        Path::new(ALERTMANAGER_BIN).exists(),
        "{ALERTMANAGER_BIN} is missing: apt-get install prometheus-alertmanager"
    );
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    std::fs::write(dir.join("alertmanager.yml"), config)?;
    let log = std::fs::File::create(dir.join("alertmanager.log"))?;
    let child = Command::new(ALERTMANAGER_BIN)
        .arg(format!(
            "--config.file={}",
            dir.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let process = Process { child, port };
    wait_ready(port, "/-/ready", Instant::now(), Duration::from_secs(30)).await?;
    Ok(process)
}

/// The grouped storm's configuration: every alert of one `alertname` in one group, sent
/// `wait` after its first alert and then at most every `interval`.
pub fn alertmanager_grouped_config(webhook_url: &str, wait: &str, interval: &str) -> String {
    alertmanager_route(webhook_url, "'alertname'", wait, interval)
}

/// The configuration the report quotes: every alert its own group, sent at once.
pub fn alertmanager_config(webhook_url: &str) -> String {
    alertmanager_route(webhook_url, "'...'", "0s", "1s")
}

/// One route to the bench's webhook, grouping by `group_by` (YAML list items).
fn alertmanager_route(webhook_url: &str, group_by: &str, wait: &str, interval: &str) -> String {
    format!(
        "route:
  receiver: bench
  group_by: [{group_by}]
  group_wait: {wait}
  group_interval: {interval}
  repeat_interval: 24h
receivers:
  - name: bench
    webhook_configs:
      - url: {webhook_url}
        send_resolved: false
        max_alerts: 0
"
    )
}
