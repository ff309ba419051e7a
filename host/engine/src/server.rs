//! The whole process: queue store, sandbox runtime, pipelines, directory watching, shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use tocsin_queue::{JetStreamStore, QueueError, QueueStore, SledStore};

use crate::settings::QueueBackend;
use tocsin_runtime::{Runtime, RuntimeConfig};

use crate::ingest::IngestTable;
use crate::manager::Manager;
use crate::pipeline::Shared;
use crate::settings::Settings;
use crate::status::StatusBoard;

/// How long file events are collected before the directory is re-read (editors write a file
/// in several steps).
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);
/// The directory is also re-read this often, in case a file event was missed.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// How often the queue store is asked whether it failed.
pub const STORE_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The queue store could not be opened.
    #[error(transparent)]
    Queue(#[from] tocsin_queue::QueueError),
    /// The sandbox runtime could not be built.
    #[error("{0}")]
    Runtime(String),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        error: String,
    },
    /// The queue store failed while running; a restart reopens it.
    #[error("the queue store failed: {0}; restart tocsin once the disk is writable and has space (systemd's Restart=on-failure does so)")]
    StoreFailed(String),
    /// A setting cannot be used (a secret that does not resolve, say).
    #[error("{0}")]
    Settings(String),
    /// The pipelines directory is missing or unreadable.
    #[error("pipelines directory {path}: {error}")]
    PipelinesDir {
        /// Which directory.
        path: String,
        /// Why.
        error: String,
    },
}

/// A started server: its status board, and a way to stop it.
pub struct Server {
    manager: Manager,
    _watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    queue: Arc<dyn QueueStore>,
    /// Where the message trace and the metric history are kept: the queue store itself on
    /// sled; on a shared store, a sled database of this process's own in the data directory.
    records: Arc<dyn QueueStore>,
    http: Option<(std::net::SocketAddr, tokio::net::TcpListener)>,
    janitor_http: Option<(std::net::SocketAddr, tokio::net::TcpListener)>,
    janitor_pipeline: Option<String>,
    ingest: IngestTable,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown_grace: Duration,
    http_limits: crate::settings::HttpLimits,
    /// The bearer token `/metrics` asks for, if any.
    metrics_token: Option<String>,
    /// The admin API's tokens; `None`: the API is off.
    api_tokens: Option<Arc<crate::admin::tokens::ApiTokens>>,
    board: StatusBoard,
    /// Records each message's steps; written to the store by a task of its own.
    tracer: Arc<crate::trace::Tracer>,
    /// Keeps the metrics of messages; written and folded by a task of its own.
    history: Arc<crate::history::History>,
    /// The silences, for the admin API.
    silences: Arc<crate::silences::Silences>,
    /// The running pipelines' expected reporters, for the admin API.
    expectations: crate::absence::Registry,
    /// The running pipelines' register locks, for the admin API.
    register_locks: crate::open_alerts::Locks,
    /// Operators' commands from the admin API, to the manager.
    commands: (
        mpsc::Sender<crate::manager::CommandRequest>,
        mpsc::Receiver<crate::manager::CommandRequest>,
    ),
    /// `server.json` in the data directory, removed when the server is dropped.
    _announcement: Option<crate::admin::client::ServerFileGuard>,
}

/// The one line that says what this process is and uses: its version, its directories, where
/// it listens, where its queues are and their budget (an operator's first question about a
/// running service).
fn log_start(settings: &Settings, listen: Option<std::net::SocketAddr>) {
    let plugin_dirs: Vec<String> = settings
        .plugin_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pipelines = %settings.pipelines_dir.display(),
        data = %settings.data_dir.display(),
        plugin_dirs = %plugin_dirs.join(":"),
        listen = %listen.map_or_else(|| "off".to_string(), |a| a.to_string()),
        queue = %match &settings.queue {
            QueueBackend::Sled => format!("sled in {}", settings.queue_dir().display()),
            QueueBackend::JetStream(o) => format!(
                "JetStream {} (namespace {}, {} replica{})",
                o.servers.join(","),
                o.namespace,
                o.replicas,
                if o.replicas == 1 { "" } else { "s" }
            ),
        },
        queue_budget = %settings
            .queue_budget
            .map_or_else(|| "none".to_string(), tocsin_config::units::format_size),
        "tocsin started; HTTP serves POST /ingest/{{pipeline}}, GET /healthz, GET /metrics"
    );
}

impl Server {
    /// Opens the store and runtime and starts every valid pipeline of the directory.
    pub async fn start(settings: Settings) -> Result<Server, ServerError> {
        if !settings.pipelines_dir.is_dir() {
            return Err(ServerError::PipelinesDir {
                path: settings.pipelines_dir.display().to_string(),
                error: "not a directory".into(),
            });
        }
        let (queue, records) = open_queue(&settings).await?;
        let silences = crate::silences::Silences::load(queue.clone())?;
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(settings.cache_dir()),
            tls: tocsin_runtime::TlsTrust {
                extra_ca_file: settings.tls_ca_file.clone(),
            },
            max_timestamp_ahead: settings.max_timestamp_ahead,
        })
        .map_err(ServerError::Runtime)?;
        let http = bind(settings.listen).await?;
        log_start(&settings, http.as_ref().map(|(addr, _)| *addr));
        let announcement = http.as_ref().and_then(|(addr, _)| {
            crate::admin::client::announce(&settings.data_dir, *addr)
                .map_err(|e| tracing::warn!(error = %e, "cannot write server.json into the data directory; `tocsin dlq` and `tocsin queue` will need --server"))
                .ok()
        });
        let janitor_http = bind(settings.janitor_listen).await?;
        if let Some((addr, _)) = &janitor_http {
            tracing::info!(addr = %addr, pipeline = ?settings.janitor_pipeline, "listening for Janitor clients (POST /message)");
        }
        let janitor_pipeline = settings.janitor_pipeline.clone();
        let shutdown_grace = settings.shutdown_grace;
        let metrics_token = match &settings.metrics_token {
            None => None,
            Some(secret) => match secret.resolve() {
                Ok(token) if !token.trim().is_empty() => Some(token),
                Ok(_) => return Err(ServerError::Settings("--metrics-token is empty".into())),
                Err(e) => return Err(ServerError::Settings(format!("--metrics-token: {e}"))),
            },
        };
        let api_tokens = match &settings.api_tokens {
            None => {
                tracing::info!("the admin API (/api/v1) is off: no --api-tokens");
                None
            }
            Some(path) => {
                let tokens = crate::admin::tokens::ApiTokens::load(path)
                    .map_err(|e| ServerError::Settings(format!("--api-tokens: {e}")))?;
                tracing::info!(
                    admin_tokens = tokens.count(crate::admin::tokens::Role::Admin),
                    read_tokens = tokens.count(crate::admin::tokens::Role::Read),
                    "the admin API (/api/v1) is on"
                );
                Some(Arc::new(tokens))
            }
        };
        let mut http_limits = settings.http;
        let nofile = crate::http_serve::descriptor_limit();
        http_limits.max_connections =
            crate::http_serve::effective_max_connections(http_limits.max_connections, nofile);
        if http_limits.max_connections < settings.http.max_connections {
            tracing::warn!(
                open_files_limit = nofile,
                max_connections = http_limits.max_connections,
                "the open-files limit leaves room for fewer HTTP connections than configured; raise LimitNOFILE"
            );
        }
        let board = crate::manager::new_board();
        let ingest = IngestTable::with_board(board.clone());
        let metrics = crate::metrics::Metrics::new(board.clone(), queue.clone());
        let tracer = crate::trace::Tracer::new(
            records.clone(),
            settings.trace_retention,
            settings.trace_max,
        );
        let history = crate::history::History::new(records.clone());
        let expectations = crate::absence::Registry::default();
        let register_locks = crate::open_alerts::Locks::default();
        let shared = Shared {
            board: board.clone(),
            register_locks: register_locks.clone(),
            expectations: expectations.clone(),
            silences: silences.clone(),
            history: history.clone(),
            tracer: tracer.clone(),
            queue: queue.clone(),
            runtime,
            ingest: ingest.clone(),
            metrics: metrics.clone(),
            budget: crate::budget::DiskBudget::new(
                settings.queue_budget,
                settings.min_free_space,
                // On JetStream the queues are on the servers' disks; what is kept here is
                // the data directory (compile cache, server.json).
                match settings.queue {
                    QueueBackend::Sled => settings.queue_dir(),
                    QueueBackend::JetStream(_) => settings.data_dir.clone(),
                },
                queue.clone(),
            ),
            plugin_memory: crate::plugin_memory::PluginMemory::new(
                settings
                    .max_plugin_memory
                    .unwrap_or_else(crate::plugin_memory::default_limit),
            ),
        };
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = watch(&settings, tx);
        let mut manager = Manager::new(shared, settings, board.clone());
        let report = manager.reconcile().await;
        tracing::info!(
            started = report.started.len(),
            invalid = report.invalid.len(),
            failed = report.failed.len(),
            "pipelines loaded"
        );
        Ok(Server {
            manager,
            _watcher: watcher,
            events,
            queue,
            records,
            http,
            janitor_http,
            janitor_pipeline,
            ingest,
            metrics,
            shutdown_grace,
            http_limits,
            metrics_token,
            api_tokens,
            board,
            commands: mpsc::channel(16),
            tracer,
            history,
            silences,
            expectations,
            register_locks,
            _announcement: announcement,
        })
    }

    /// The address the HTTP surface is bound to, if any (the real port when 0 was asked).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|(addr, _)| *addr)
    }

    /// The address of the Janitor listener, if any.
    pub fn janitor_addr(&self) -> Option<std::net::SocketAddr> {
        self.janitor_http.as_ref().map(|(addr, _)| *addr)
    }

    /// The queue store (for in-process inspection, e.g. by tests).
    pub fn queue(&self) -> Arc<dyn QueueStore> {
        self.queue.clone()
    }

    /// The status of every pipeline.
    pub fn board(&self) -> StatusBoard {
        self.manager.board()
    }

    /// Applies directory changes until `shutdown` resolves, then stops every pipeline and
    /// flushes the store.
    ///
    /// Returns [`ServerError::StoreFailed`] when it stopped because the queue store failed
    /// (it refuses writes until reopened): the process exits and its supervisor restarts it,
    /// which reopens the store with everything acknowledged so far.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        tokio::pin!(shutdown);
        let http_stop = tokio_util::sync::CancellationToken::new();
        let mut http_tasks = Vec::new();
        let main_app = self.http.take().map(|(_, listener)| {
            let app = crate::ingest::router(
                self.ingest.clone(),
                self.metrics.clone(),
                self.janitor_pipeline.clone(),
                &self.http_limits,
                self.metrics_token.take(),
            )
            .merge(crate::admin::router(
                self.api_tokens.take(),
                crate::admin::ServerParts {
                    board: self.board.clone(),
                    queue: self.queue.clone(),
                    commands: self.commands.0.clone(),
                    tracer: self.tracer.clone(),
                    history: self.history.clone(),
                    silences: self.silences.clone(),
                    expectations: self.expectations.clone(),
                    register_locks: self.register_locks.clone(),
                },
            ))
            .merge(crate::status_page::router());
            (listener, app)
        });
        let janitor_app = self.janitor_http.take().map(|(_, listener)| {
            let app = crate::ingest::janitor_router(
                self.ingest.clone(),
                self.janitor_pipeline.clone(),
                &self.http_limits,
            );
            (listener, app)
        });
        for (listener, app) in main_app.into_iter().chain(janitor_app) {
            let stop = http_stop.clone();
            let limits = self.http_limits;
            http_tasks.push(tokio::spawn(crate::http_serve::serve(
                listener, app, limits, stop,
            )));
        }
        let trace_stop = tokio_util::sync::CancellationToken::new();
        let trace_task = tokio::spawn(self.tracer.clone().run(trace_stop.clone()));
        let history_task = tokio::spawn(self.history.clone().run(trace_stop.clone()));
        let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
        rescan.tick().await;
        let mut store_watch = tokio::time::interval(STORE_WATCH_INTERVAL);
        let mut store_failure = None;
        let mut delivers = self.queue.delivers();
        let mut watching_delivery = !*delivers.borrow_and_update();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = delivers.changed(), if watching_delivery => {
                    if changed.is_err() || !*delivers.borrow_and_update() {
                        watching_delivery = changed.is_ok();
                        continue;
                    }
                    // Another process delivered until now: what it changed is in the store.
                    tracing::info!("this process delivers now (it took over from another tocsin process on the shared queue store); starting every pipeline whole");
                    // The silences are read again beside the restart, not before it: right
                    // after a NATS server is lost, reading them can wait for the cluster to
                    // elect leaders (tens of seconds on a loaded machine), and delivery should
                    // not. The pipelines watch the silences and take the new set when it lands.
                    // (On a blocking thread: the store's read blocks while it waits.)
                    let silences = self.silences.clone();
                    let runtime = tokio::runtime::Handle::current();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = runtime.block_on(silences.reload()) {
                            tracing::error!(error = %e, "cannot read the silences again; keeping those read at start");
                        }
                    });
                    self.manager.restart_all().await;
                    watching_delivery = false;
                }
                _ = store_watch.tick() => {
                    if let Some(failure) = self.queue.failure().or_else(|| self.records.failure()) {
                        tracing::error!(error = %failure, "the queue store failed and refuses writes until reopened; stopping so the supervisor restarts tocsin (what was acknowledged is on disk)");
                        store_failure = Some(failure);
                        break;
                    }
                }
                event = self.events.recv() => {
                    if event.is_none() { continue; }
                    tokio::time::sleep(RELOAD_DEBOUNCE).await;
                    while self.events.try_recv().is_ok() {}
                    self.manager.reconcile().await;
                }
                _ = rescan.tick() => { self.manager.reconcile().await; }
                Some((command, reply)) = self.commands.1.recv() => {
                    let answer = self.manager.command(command).await;
                    let _ = reply.send(answer);
                }
            }
        }
        let grace = self.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: no new requests; stopping pipelines between messages");
        let deadline = tokio::time::Instant::now() + grace;
        http_stop.cancel();
        for mut task in http_tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!("an HTTP request was still open at the shutdown deadline; closed it unanswered (nothing of it was acknowledged)");
            }
        }
        self.manager.stop_all(deadline).await;
        trace_stop.cancel();
        let _ = trace_task.await;
        let _ = history_task.await;
        if let Err(e) = self.queue.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        if !Arc::ptr_eq(&self.queue, &self.records) {
            if let Err(e) = self.records.flush().await {
                tracing::error!(error = %e, "final flush of the trace and metric history failed");
            }
        }
        tracing::info!("stopped");
        match store_failure {
            Some(failure) => Err(ServerError::StoreFailed(failure)),
            None => Ok(()),
        }
    }
}

/// Opens the queue store the settings name, and the store of this process's own records
/// (message trace, metric history): sled in the data directory, checked, for both; or
/// JetStream, connected to (waiting while a cluster elects a leader), and sled in the data
/// directory for the records — each node keeps the trace of the steps it ran and the history
/// of the messages it took in.
async fn open_queue(
    settings: &Settings,
) -> Result<(Arc<dyn QueueStore>, Arc<dyn QueueStore>), ServerError> {
    let open_sled = || -> Result<Arc<SledStore>, ServerError> {
        let store = SledStore::open(&settings.queue_dir())?;
        let checking = std::time::Instant::now();
        let report = store.verify(settings.store_check_timeout)?;
        tracing::info!(records = report.records, took = ?checking.elapsed(), "queue store checked");
        Ok(store)
    };
    match &settings.queue {
        QueueBackend::Sled => {
            let store: Arc<dyn QueueStore> = open_sled()?;
            Ok((store.clone(), store))
        }
        QueueBackend::JetStream(options) => {
            // The data directory still holds the compile cache and server.json.
            std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
                ServerError::Queue(QueueError::Storage(format!(
                    "cannot create the data directory {}: {e}",
                    settings.data_dir.display()
                )))
            })?;
            // Opened first: a second process on this data directory stops here, naming the
            // first, before it joins the namespace.
            let records: Arc<dyn QueueStore> = open_sled()?;
            let options = options.clone();
            let servers = options.servers.join(",");
            let connecting = std::time::Instant::now();
            // The connection waits on the client's own runtime: not on this one's workers.
            let store = tokio::task::spawn_blocking(move || JetStreamStore::connect(options))
                .await
                .map_err(|e| ServerError::Queue(QueueError::Storage(e.to_string())))??;
            tracing::info!(servers = %servers, took = ?connecting.elapsed(), "queue store on JetStream connected");
            Ok((Arc::new(store), records))
        }
    }
}

/// Starts the server and runs it until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::start(settings).await?.run_until(shutdown).await
}

/// Binds a listener, if an address is configured; returns the address really bound (the
/// port the system chose when 0 was asked).
async fn bind(
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<(std::net::SocketAddr, tokio::net::TcpListener)>, ServerError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let failed = |e: std::io::Error| ServerError::Listen {
        addr: addr.to_string(),
        error: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok(Some((bound, listener)))
}

fn watch(settings: &Settings, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut watcher) => {
            match watcher.watch(&settings.pipelines_dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the pipelines directory; changes are picked up every {:?}", RESCAN_INTERVAL);
                    None
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; changes are picked up every {:?}", RESCAN_INTERVAL);
            None
        }
    }
}
