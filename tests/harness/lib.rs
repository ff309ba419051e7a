//! The test harness: build the plugins and the binary once, run the real engine in a temp
//! directory, start real servers (Synapse) on free loopback ports.
//!
//! A test reads like its scenario:
//! ```ignore
//! let env = Env::new();
//! env.write_pipeline("nightly", &text);
//! let server = env.start().await;
//! wait_for(|| env.read_lines("out/alerts.jsonl").len() == 1, "one alert").await;
//! ```

pub mod alertmanager;
pub mod browser;
pub mod load;
pub mod mastodon;
pub mod nats;
pub mod process;
pub mod python;
pub mod receiver;
pub mod strict_http;
pub mod synapse;
pub mod tmpfs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tocsin::server::Server;
use tocsin::status::{Counters, PipelineState};
use tocsin::Settings;
use tocsin_queue::QueueStore;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds every plugin (shipped and test-only) once per test process; returns their directory.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let plugins = repo_root().join("plugins");
        let status = Command::new("cargo")
            .args(["build", "--release", "--workspace", "--quiet"])
            .current_dir(&plugins)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the plugins failed");
        plugins.join("target/wasm32-wasip2/release")
    })
}

/// Builds the `tocsin` binary once per test process; returns its path.
pub fn tocsin_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new("cargo")
            .args(["build", "-p", "tocsin", "--bin", "tocsin", "--quiet"])
            .current_dir(repo_root())
            // `cargo test` sets it; left in, it changes build scripts' fingerprints (ring's)
            // and rebuilds half the tree on every run.
            .env_remove("CARGO_MANIFEST_DIR")
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building tocsin failed");
        let exe = std::env::current_exe().expect("test exe path");
        // target/<profile>/deps/integration-… → target/<profile>/tocsin
        exe.parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("tocsin")
    })
}

/// A temporary tocsin installation: a pipelines directory and a data directory.
pub struct Env {
    /// Holds the directory alive.
    pub dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// A fresh, empty environment.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Env { dir }
    }

    /// A path inside the environment.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates a directory inside the environment and returns its absolute path.
    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Writes (or replaces) `pipelines/<name>.toml`.
    pub fn write_pipeline(&self, name: &str, text: &str) {
        let path = self.path(&format!("pipelines/{name}.toml"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, path).unwrap();
    }

    /// The engine settings of this environment.
    pub fn settings(&self) -> Settings {
        Settings {
            pipelines_dir: self.path("pipelines"),
            data_dir: self.path("data"),
            plugin_dirs: vec![plugins_dir().to_path_buf()],
            listen: Some(([127, 0, 0, 1], 0).into()),
            janitor_pipeline: None,
            janitor_listen: None,
            queue_budget: None,
            min_free_space: tocsin::budget::DEFAULT_MIN_FREE_SPACE,
            shutdown_grace: tocsin::settings::DEFAULT_SHUTDOWN_GRACE,
            store_check_timeout: tocsin::settings::DEFAULT_STORE_CHECK_TIMEOUT,
            tls_ca_file: None,
            http: tocsin::settings::HttpLimits::default(),
            max_plugin_memory: None,
            metrics_token: None,
            api_tokens: None,
            trace_retention: tocsin::trace::DEFAULT_RETENTION,
            trace_max: tocsin::trace::DEFAULT_MAX_PER_PIPELINE,
            max_timestamp_ahead: None,
            queue: tocsin::settings::QueueBackend::Sled,
        }
    }

    /// Starts the engine in-process. Set `RUST_LOG` (e.g. `RUST_LOG=tocsin=debug`) to see
    /// its log in the test output.
    pub async fn start(&self) -> Running {
        self.start_with(|_| {}).await
    }

    /// Starts the engine in-process with adjusted settings.
    pub async fn start_with(&self, adjust: impl FnOnce(&mut Settings)) -> Running {
        init_test_logging();
        let mut settings = self.settings();
        adjust(&mut settings);
        let server = Server::start(settings).await.expect("server starts");
        let janitor_url = server.janitor_addr().map(|a| format!("http://{a}"));
        let queue = server.queue();
        let board = server.board();
        let http_addr = server.http_addr().expect("the test server listens");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .run_until(async {
                    let _ = rx.await;
                })
                .await;
        });
        Running {
            stop: Some(tx),
            task: Some(task),
            queue,
            board,
            base_url: format!("http://{http_addr}"),
            janitor_url,
        }
    }

    /// The complete lines of a text file in the environment (empty when it does not exist
    /// yet). A last line still being written, without its newline, is left out.
    pub fn read_lines(&self, rel: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.path(rel)).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Runs the `tocsin` binary with `args` on this environment's data directory (the server
    /// stopped), asserts it succeeded, and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(tocsin_bin())
            .args(args)
            .arg("--data")
            .arg(self.path("data"))
            .output()
            .expect("tocsin runs");
        assert!(
            out.status.success(),
            "tocsin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// JSON lines of a file sink's output.
    pub fn read_json_lines(&self, rel: &str) -> Vec<serde_json::Value> {
        self.read_lines(rel)
            .iter()
            .map(|l| serde_json::from_str(l).expect("file sink writes JSON lines"))
            .collect()
    }
}

/// An engine running in-process.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Its queue store.
    pub queue: Arc<dyn QueueStore>,
    /// Its status board.
    pub board: tocsin::status::StatusBoard,
    /// `http://127.0.0.1:<port>` of its HTTP surface.
    pub base_url: String,
    /// `http://127.0.0.1:<port>` of its Janitor listener, when started with one.
    pub janitor_url: Option<String>,
}

impl Running {
    /// Stops the engine and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The state of a pipeline, if known.
    pub fn state(&self, pipeline: &str) -> Option<PipelineState> {
        self.board.lock().unwrap().get(pipeline).map(|s| s.state())
    }

    /// Reads a counter of a pipeline (0 when unknown).
    pub fn counter(
        &self,
        pipeline: &str,
        pick: fn(&tocsin::status::Counters) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        self.board
            .lock()
            .unwrap()
            .get(pipeline)
            .map_or(0, |s| Counters::get(pick(&s.counters)))
    }
}

/// Sends the engine's log to the test output when `RUST_LOG` is set.
pub fn init_test_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A `[source]` table: backup-check on the environment's `backups/` directory every second,
/// with `config_extra` (such as `pattern = "*.tar", host = "db1"`) added to its config.
pub fn every_second_backup_source(env: &Env, config_extra: &str) -> String {
    let backups = env.path("backups").display().to_string();
    let sep = if config_extra.is_empty() { "" } else { ", " };
    format!(
        "[source]\nplugin = \"backup-check\"\nschedule = \"* * * * * *\"\n\
         config = {{ dir = \"{backups}\"{sep}{config_extra} }}\n\
         grants = {{ read_dirs = [\"{backups}\"] }}\n"
    )
}

/// A `[[sink]]` table: the `file` sink writing `out/<file>` of the environment.
pub fn file_sink(env: &Env, name: &str, file: &str) -> String {
    let out = env.path("out").display().to_string();
    format!(
        "[[sink]]\nname = \"{name}\"\nplugin = \"file\"\n\
         config = {{ path = \"{out}/{file}\" }}\n\
         grants = {{ write_dirs = [\"{out}\"] }}\n"
    )
}

/// A label of a message as the `file` sink writes it (`labels`: `[[name, value], …]`); empty
/// when it has none of that name.
pub fn file_sink_label(m: &serde_json::Value, name: &str) -> String {
    m["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|pair| pair[0] == name)
        .and_then(|pair| pair[1].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Polls `check` until it holds, or panics after `timeout` naming `what`.
pub async fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `app` on a free loopback port for the rest of the test; returns the port.
pub async fn serve_on_loopback(app: axum::Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("bound").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sets a file's modification time to `age` ago.
pub fn age_file(path: &Path, age: Duration) {
    let when = std::time::SystemTime::now() - age;
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("file exists");
    f.set_modified(when).expect("set mtime");
}

/// A `[source]` table: the `json` decoder on `POST /ingest/<pipeline>`, no authentication.
pub const OPEN_JSON_SOURCE: &str = "[source]\nplugin = \"json\"\nauth = { none = true }\n\n";

/// The text of `<base>/metrics` (no token).
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("tocsin answers /metrics")
        .text()
        .await
        .expect("a text answer")
}

/// What `tocsin plugin inspect PATH` prints (it must succeed).
pub fn plugin_inspect(path: &str) -> String {
    let out = std::process::Command::new(tocsin_bin())
        .args(["plugin", "inspect", path])
        .output()
        .expect("tocsin runs");
    assert!(out.status.success(), "plugin inspect {path}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one series of `/metrics` (`name{labels}` as printed), 0 when absent.
pub async fn metric_value(base: &str, series: &str) -> f64 {
    metrics_text(base)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `GET <base>/api/v1<path>` with `token`: the JSON answer (of a 2xx; panics otherwise).
pub async fn api_get(base: &str, path: &str, token: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("tocsin answers");
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.json().await.expect("a JSON answer")
}

/// Posts `{"id": id, "body": "message <id>"}` to `<base>/ingest/<pipeline>`; returns the status.
pub async fn post_json_message(base: &str, pipeline: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/ingest/{pipeline}"))
        .json(&serde_json::json!({"id": id, "body": format!("message {id}")}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Posts `body` as JSON to `<base>/ingest/<pipeline>` and asserts the 202.
pub async fn post_accepted(base: &str, pipeline: &str, body: serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/ingest/{pipeline}"))
        .json(&body)
        .send()
        .await
        .expect("tocsin answers");
    let status = response.status();
    assert_eq!(status, 202, "{}", response.text().await.unwrap_or_default());
}

/// The `agents` pipeline of the history tests: open JSON ingest, a file sink taking errors
/// only (so healthy samples are dropped after the history took their numbers).
pub fn agents_pipeline(env: &Env) -> String {
    env.mkdir("out");
    format!(
        "{OPEN_JSON_SOURCE}{}match = {{ severity = \">= error\" }}\n",
        file_sink(env, "out", "alerts.jsonl")
    )
}

/// The value of the `admin` token (`alice`) of [`write_api_tokens`].
pub const ADMIN_TOKEN: &str = "admin-0123456789abcdef";
/// The value of the `read` token (`board`) of [`write_api_tokens`].
pub const READ_TOKEN: &str = "reader-0123456789abcdef";

/// Writes an `--api-tokens` file with an `admin` token named `alice` and a `read` token named
/// `board` (values in files beside it); returns its path.
pub fn write_api_tokens(env: &Env) -> PathBuf {
    std::fs::write(env.path("alice.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::write(env.path("board.token"), READ_TOKEN).unwrap();
    let path = env.path("api-tokens.toml");
    std::fs::write(
        &path,
        "[[token]]\nname = \"alice\"\nrole = \"admin\"\nsecret = \"file:alice.token\"\n\n\
         [[token]]\nname = \"board\"\nrole = \"read\"\nsecret = \"file:board.token\"\n",
    )
    .unwrap();
    path
}
