//! Where the engine finds its pipelines, keeps its data and looks for plugins.

use std::path::PathBuf;

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
        PluginResolver::new(self.plugin_dirs.clone())
    }
}
