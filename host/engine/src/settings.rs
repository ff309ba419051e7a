//! Where the engine finds its pipelines, keeps its data and looks for plugins.

use std::path::PathBuf;
use std::time::Duration;

use tocsin_config::PluginResolver;

/// Server-level settings (the pipeline files hold everything per pipeline).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The directory of `*.toml` pipeline files, watched for changes.
    pub pipelines_dir: PathBuf,
    /// Queues, plugin state and the compile cache live here.
    pub data_dir: PathBuf,
    /// Directories searched for `<plugin>.wasm`, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// Where the HTTP surface (ingest, health, metrics) listens; `None` for no listener.
    pub listen: Option<std::net::SocketAddr>,
    /// The ingest pipeline that Janitor's `POST /message` goes to.
    pub janitor_pipeline: Option<String>,
    /// A second listener serving only `POST /message` (Janitor clients expect port 5000).
    pub janitor_listen: Option<std::net::SocketAddr>,
    /// Disk budget of the queue store in bytes; `None` for none.
    pub queue_budget: Option<u64>,
    /// Free space (bytes) kept on the queues' filesystem: below it, new messages are refused
    /// (503) until space returns.
    pub min_free_space: u64,
    /// How long the full scan of the queue store at start may take before the store is
    /// declared damaged.
    pub store_check_timeout: std::time::Duration,
    /// How long a shutdown waits for in-flight requests and plugin calls before abandoning
    /// them (their messages stay queued).
    pub shutdown_grace: std::time::Duration,
    /// A PEM file of extra certificate authorities that sinks' HTTPS requests trust, besides
    /// the compiled-in Mozilla roots and the system's store (an internal CA).
    pub tls_ca_file: Option<PathBuf>,
    /// Bounds of the HTTP surface against slow, idle and oversized clients.
    pub http: HttpLimits,
    /// The memory caps of all plugin instances together, in bytes; `None` for half of this
    /// machine's memory.
    pub max_plugin_memory: Option<u64>,
    /// When set, `GET /metrics` asks for `Authorization: Bearer <this secret>` (the metrics
    /// name every pipeline).
    pub metrics_token: Option<tocsin_config::SecretRef>,
    /// How long each message's steps are kept for `tocsin trace`; zero turns tracing off.
    pub trace_retention: Duration,
    /// The most trace records kept per pipeline (the oldest go first).
    pub trace_max: usize,
    /// The admin API's tokens file (`/api/v1`, see `docs/api.md`); `None`: the API is off.
    pub api_tokens: Option<PathBuf>,
    /// How far ahead of this machine's clock a message's timestamp may be (clock skew of the
    /// senders); `None` for a day. Earlier than 2000-01-01 is always refused.
    pub max_timestamp_ahead: Option<Duration>,
    /// Where the queues are kept.
    pub queue: QueueBackend,
}

/// Where the queues, dead letters and plugin state are kept.
#[derive(Debug, Clone, Default)]
pub enum QueueBackend {
    /// sled, in the data directory's `queue/` (one machine).
    #[default]
    Sled,
    /// NATS JetStream (streams replicated across servers).
    JetStream(tocsin_queue::JetStreamOptions),
}

/// Bounds of the HTTP listeners (each listener has its own connection cap).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once; more wait in the kernel's backlog. Lowered at start when the
    /// open-files limit leaves no room for it (see `http_serve`).
    pub max_connections: usize,
    /// A request's headers must arrive within this; it is also how long an idle kept-alive
    /// connection stays open.
    pub header_timeout: Duration,
    /// A request's body must arrive within this (408 otherwise).
    pub body_timeout: Duration,
    /// Request bodies held in memory at once, all requests of a listener together; past it, 503 with
    /// `Retry-After` before the body is read.
    pub max_body_memory: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body_memory: 256 << 20,
        }
    }
}

/// The default [`Settings::store_check_timeout`]: generous, since a scan of millions of
/// queued messages takes seconds; a damaged file makes sled loop forever, not slowly.
pub const DEFAULT_STORE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The default [`Settings::shutdown_grace`]: below systemd's default stop timeout (90 s) and
/// Kubernetes' termination grace (30 s), so tocsin exits on its own before being killed.
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Settings {
    /// The queue database directory.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// The compiled-plugin cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("compile-cache")
    }

    /// The plugin resolver for these settings.
    pub fn resolver(&self) -> PluginResolver {
        crate::embedded_plugins::resolver(self.plugin_dirs.clone())
    }
}
