//! The `tocsin` command: run pipelines, validate pipeline files, inspect queues and dead
//! letters. See `docs/cli.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod alerts_cli;
mod expected_cli;
mod init_cli;
mod plugin_cli;
mod queue_args;
mod scaffold;
mod silence_cli;
mod try_pipeline;
mod try_plugin;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use tocsin::operator;
use tocsin::Settings;
use tocsin_config::{load_dir, MachineCheck};
use tocsin_queue::{QueueStore, SledStore};

/// mimalloc instead of glibc's malloc: sled and the HTTP stack allocate and free small blocks
/// on every message from several threads, and glibc's allocator was a fifth of the server's
/// CPU time under single-message ingest. Built without transparent huge pages (`no_thp`),
/// which more than doubled idle RSS (docs/benchmarks.md, "Tuning").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tocsin",
    version,
    about = "Alert pipelines of sandboxed WebAssembly plugins, with durable queues"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "TOCSIN_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// Languages `plugin new` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum Lang {
    /// Rust, with the tocsin SDK.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where plugins are looked up by name when no `--plugin-dir` is given (the Debian package
/// installs none there: the shipped plugins are built into the binary; a `.wasm` dropped here
/// overrides one of them or adds another).
const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/tocsin/plugins";

#[derive(clap::Args, Clone)]
struct Paths {
    /// Directory of pipeline files (*.toml), watched for changes.
    #[arg(long, env = "TOCSIN_PIPELINES", default_value = "pipelines")]
    pipelines: PathBuf,
    #[command(flatten)]
    plugins: PluginDirs,
}

/// Where plugins are looked up by name: `run`, `validate`, `test`, `plugin ls`.
#[derive(clap::Args, Clone)]
struct PluginDirs {
    /// Where plugins are looked up by name (repeat, or separate with ':'), before the ones
    /// built into tocsin.
    #[arg(
        long = "plugin-dir",
        env = "TOCSIN_PLUGIN_DIRS",
        value_delimiter = ':',
        default_value = DEFAULT_PLUGIN_DIR
    )]
    plugin_dirs: Vec<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct DataDir {
    /// Directory of queues, plugin state and the compile cache.
    #[arg(
        long = "data",
        env = "TOCSIN_DATA",
        default_value = "data",
        global = true
    )]
    data: PathBuf,
}

/// How a command reaches a running server's admin API (used when a server holds the store).
#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// The server's URL, e.g. http://127.0.0.1:8470 [default: what the server running on
    /// --data announced in DATA/server.json]; its admin API must be on (docs/api.md).
    #[arg(long, env = "TOCSIN_SERVER")]
    server: Option<String>,
    /// A file holding the API token [default: the TOCSIN_API_TOKEN variable].
    #[arg(long, env = "TOCSIN_API_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

// Parsed once per process: `run`'s many settings being larger than the other commands'
// costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Write a starter pipelines directory: a commented pipeline per scenario (Matrix, Mastodon,
    /// GitHub, Alertmanager, Pub/Sub, agents, tocsin itself), each disabled until its blanks are
    /// filled in, with its behaviour tests.
    Init {
        /// Where to write them (created; nothing in it is overwritten).
        #[arg(default_value = "pipelines")]
        dir: PathBuf,
    },
    /// Run every pipeline of the pipelines directory until SIGINT or SIGTERM.
    Run {
        #[command(flatten)]
        paths: Paths,
        #[command(flatten)]
        data: DataDir,
        /// Address of the HTTP surface (ingest, health, metrics), or `none`.
        #[arg(long, env = "TOCSIN_LISTEN", default_value = "127.0.0.1:8470")]
        listen: String,
        /// The ingest pipeline Janitor clients' `POST /message` goes to.
        #[arg(long, env = "TOCSIN_JANITOR_PIPELINE")]
        janitor_pipeline: Option<String>,
        /// A second listener for Janitor clients only (they expect port 5000), e.g. 0.0.0.0:5000.
        #[arg(long, env = "TOCSIN_JANITOR_LISTEN")]
        janitor_listen: Option<String>,
        /// Budget of the queues, e.g. 2GiB, for what they hold and what their files take: past
        /// it, ingest answers 503 and cron sources skip ticks until deliveries free space. Each
        /// pipeline may hold at most half of it, or its own `queue_budget`.
        #[arg(long, env = "TOCSIN_QUEUE_BUDGET")]
        queue_budget: Option<String>,
        /// Free space kept on the queues' filesystem, e.g. 64MiB: below it (or when the
        /// filesystem is read-only) ingest answers 503 and cron sources skip ticks.
        #[arg(long, env = "TOCSIN_MIN_FREE_SPACE", default_value = "64MiB", value_parser = parse_size)]
        min_free_space: u64,
        /// On SIGTERM/SIGINT: how long to wait for in-flight requests and deliveries before
        /// abandoning them (they stay queued and are delivered after the restart).
        #[arg(long, env = "TOCSIN_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
        shutdown_grace: std::time::Duration,
        /// At start every queued record is read once; a scan that takes longer than this
        /// means a damaged database (sled loops on a truncated file) and tocsin refuses to run.
        #[arg(long, env = "TOCSIN_STORE_CHECK_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
        store_check_timeout: std::time::Duration,
        /// A PEM file of certificate authorities that sinks' HTTPS requests also trust (an
        /// internal CA), besides the compiled-in Mozilla roots and the system's store.
        #[arg(long, env = "TOCSIN_TLS_CA_FILE")]
        tls_ca_file: Option<PathBuf>,
        /// HTTP connections open at once, per listener; more wait in the kernel's backlog.
        /// Lowered at start if the open-files limit (LimitNOFILE) leaves no room for it.
        /// Alertmanager in front opens about one connection per notification in flight.
        #[arg(long, env = "TOCSIN_MAX_CONNECTIONS", default_value_t = 4096)]
        max_connections: usize,
        /// A request's headers must arrive within this; also how long an idle kept-alive
        /// connection stays open.
        #[arg(long, env = "TOCSIN_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        header_timeout: std::time::Duration,
        /// A request's body must arrive within this, or the answer is 408.
        #[arg(long, env = "TOCSIN_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
        body_timeout: std::time::Duration,
        /// Request bodies held in memory at once, all requests of a listener together, e.g.
        /// 256MiB; past it, ingest answers 503 + Retry-After before reading a body.
        #[arg(long, env = "TOCSIN_MAX_BODY_MEMORY", default_value = "256MiB", value_parser = parse_size)]
        max_body_memory: u64,
        /// The memory caps (`limits.memory`) of all plugin instances together, e.g. 8GiB; a
        /// pipeline that would pass it does not start. Default: half of this machine's memory.
        #[arg(long, env = "TOCSIN_MAX_PLUGIN_MEMORY", value_parser = parse_size)]
        max_plugin_memory: Option<u64>,
        /// `GET /metrics` asks for this bearer token, `env:NAME` or `file:/path` (Prometheus:
        /// `authorization: { credentials_file: … }`). Without it the metrics, which name every
        /// pipeline, are open to whoever reaches --listen.
        #[arg(long, env = "TOCSIN_METRICS_TOKEN")]
        metrics_token: Option<String>,
        /// How long each message's steps (accepted, filtered, routed, delivery attempts) are
        /// kept for `tocsin trace`, e.g. 7d; 0 turns tracing off.
        #[arg(long, env = "TOCSIN_TRACE_RETENTION", value_parser = parse_duration, default_value = "7d")]
        trace_retention: std::time::Duration,
        /// The most trace records kept per pipeline; the oldest go first.
        #[arg(long, env = "TOCSIN_TRACE_MAX", default_value_t = tocsin::trace::DEFAULT_MAX_PER_PIPELINE)]
        trace_max: usize,
        /// Turns the admin API (/api/v1: pipelines, queues, dead letters; replay and purge
        /// while running) on with the named tokens of this TOML file; see docs/api.md.
        #[arg(long, env = "TOCSIN_API_TOKENS")]
        api_tokens: Option<PathBuf>,
        /// How far ahead of this machine's clock a message's timestamp may be, e.g. 1h; a
        /// plugin output dated later (or before 2000-01-01) is refused. Default: a day.
        #[arg(long, env = "TOCSIN_MAX_TIMESTAMP_AHEAD", value_parser = parse_duration)]
        max_timestamp_ahead: Option<std::time::Duration>,
        #[command(flatten)]
        queue: queue_args::QueueArgs,
    },
    /// Check pipeline files without running anything; exit 1 if any is invalid.
    Validate {
        /// A directory of pipeline files, or one file.
        path: PathBuf,
        /// Also check what depends on this machine: granted directories exist, secrets are set,
        /// and scheduled sources' `init` accepts its settings here.
        #[arg(long)]
        env: bool,
        #[command(flatten)]
        plugins: PluginDirs,
        /// Compile cache of plugins [default: $XDG_CACHE_HOME/tocsin or ~/.cache/tocsin].
        #[arg(long, env = "TOCSIN_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Inspect, replay or purge dead letters: through the admin API of the server running on
    /// --data (or --server), or in the store when none runs.
    Dlq {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Try a pipeline or one plugin without the server: sources and filters run for real,
    /// sinks run dry and print exactly what they would send (secrets REDACTED), sending nothing.
    /// On a pipeline without --input, runs its behaviour tests (NAME.test.toml) if it has them.
    Test {
        /// A pipeline file, a behaviour-test file (NAME.test.toml), or a directory (every
        /// behaviour-test file in it).
        #[arg(required_unless_present = "plugin", conflicts_with = "plugin")]
        path: Option<PathBuf>,
        /// Try one plugin component (.wasm) instead of a pipeline.
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// The sample: a request body (ingest pipelines, decoders) or a message as JSON
        /// (scheduled pipelines, filters, sinks).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Poll a scheduled pipeline's source once, for real, even when the pipeline has
        /// behaviour tests.
        #[arg(long, conflicts_with_all = ["input", "plugin"])]
        poll: bool,
        /// A request header sent with the sample to an ingest pipeline or a decoder,
        /// `Name: value` (repeat). `Authorization`, `Proxy-Authorization` and `Cookie` are
        /// dropped, as the live endpoint drops them.
        #[arg(long = "header", value_parser = try_pipeline::parse_header)]
        headers: Vec<(String, String)>,
        /// With --plugin: the stage's `config`, a JSON object or @FILE with JSON or TOML.
        #[arg(long, requires = "plugin")]
        config: Option<String>,
        /// With --plugin: a host the sink may reach (repeat); its requests are recorded, never sent.
        #[arg(long = "grant-host", requires = "plugin")]
        hosts: Vec<String>,
        /// With --plugin: a secret the plugin is granted, NAME=VALUE (repeat); shown as REDACTED.
        #[arg(long = "secret", value_parser = try_plugin::parse_secret, requires = "plugin")]
        secrets: Vec<(String, String)>,
        #[command(flatten)]
        plugins: PluginDirs,
        /// Compile cache of plugins [default: $XDG_CACHE_HOME/tocsin or ~/.cache/tocsin].
        #[arg(long, env = "TOCSIN_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Tools for plugin authors.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// What the status page shows, as text: every pipeline (state, counters, queues with their
    /// oldest message's age, dead letters), the open problems and the recent messages — from
    /// the server running on --data (or --server); from the store when none runs.
    Status {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Every step a message took: accepted, each filter's verdict, the sinks it was routed to,
    /// each delivery attempt, delivered or dead-lettered, replayed.
    Trace {
        /// The message's id (as the 202 answer or the sink's output shows it).
        id: String,
        /// Only this pipeline's steps.
        #[arg(long)]
        pipeline: Option<String>,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pause, resume or poll now a pipeline of the running server (through its admin API).
    Pipeline {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: PipelineAction,
    },
    /// Mute alerts for a while: add, list and expire silences (label matchers, a start and an
    /// end) — through the admin API of the server running on --data (or --server), or in the
    /// store when none runs.
    Silence {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: silence_cli::SilenceAction,
    },
    /// The open alerts (the open-alert register) of PIPELINE, or of every pipeline: identity,
    /// state, severity, summary, who acknowledged — through the admin API of the server
    /// running on --data (or --server), or in the store when none runs.
    Alerts {
        /// Only this pipeline.
        pipeline: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Acknowledge an open alert ("I'm on it"): its reminders stay back until it resolves or
    /// --for has passed; what still goes out of it (an escalation, its resolution) says who.
    Ack {
        /// The pipeline.
        pipeline: String,
        /// The alert's identity as `tocsin alerts` lists it, or enough of it to name one.
        alert: String,
        /// What is being done (required).
        #[arg(long, short)]
        comment: String,
        /// How long, e.g. 4h [default: until it resolves].
        #[arg(long = "for")]
        duration: Option<String>,
        /// Who [default: the API token's name; without a server, $USER].
        #[arg(long)]
        author: Option<String>,
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The reporters a pipeline with `expect` knows: list them, forget one gone for good —
    /// through the admin API of the server running on --data (or --server), or in the store
    /// when none runs.
    Expected {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: expected_cli::ExpectedAction,
    },
    /// Show queue depths of every pipeline, deleted ones included: through the admin API of
    /// the server running on --data (or --server), or in the store when none runs.
    Queue {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        action: QueueAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters, of one pipeline or all.
    Ls { pipeline: Option<String> },
    /// Print one dead letter as JSON.
    Show {
        pipeline: String,
        queue: String,
        seq: u64,
    },
    /// Move dead letters back to their queue (one by seq, or all).
    Replay {
        pipeline: String,
        queue: String,
        seq: Option<u64>,
        /// Replay every dead letter of the queue.
        #[arg(long, conflicts_with = "seq")]
        all: bool,
    },
    /// Delete dead letters (one by seq, or all).
    Purge {
        pipeline: String,
        queue: String,
        seq: Option<u64>,
        /// Delete every dead letter of the queue.
        #[arg(long, conflicts_with = "seq")]
        all: bool,
    },
}

#[derive(Subcommand)]
enum PluginAction {
    /// Create a ready-to-build plugin project in DIR/NAME (SDK and contract included).
    New {
        /// The plugin's name (lower-case letters, digits, `-`).
        name: String,
        /// What it is.
        #[arg(long, value_enum)]
        kind: scaffold::Kind,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Where to create the project directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Every plugin a pipeline can name: in the plugin directories, in order, then the ones
    /// built into tocsin; where each comes from and its sha256 (for a pipeline's `sha256` pin).
    Ls {
        #[command(flatten)]
        plugins: PluginDirs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Which world a component implements, its imports, size and sha256, and whether this
    /// host can run it (exit 1 with the reason when not).
    Inspect {
        /// The component (.wasm), or the name of a plugin built into tocsin.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PipelineAction {
    /// Stop it between messages and keep it stopped, across restarts, until resumed (its file
    /// is not touched; ingest answers 503 meanwhile).
    Pause { pipeline: String },
    /// Start a paused pipeline from its file as it is now.
    Resume { pipeline: String },
    /// Have a scheduled source poll now, besides its schedule.
    Run { pipeline: String },
}

#[derive(Subcommand)]
enum QueueAction {
    /// Queue depths per pipeline.
    Ls,
    /// Remove everything stored for a pipeline (queues, dead letters, plugin state); the
    /// server must be stopped.
    Purge { pipeline: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<NoData>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a log redirected to a file or the journal stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            paths,
            data,
            listen,
            janitor_pipeline,
            janitor_listen,
            queue_budget,
            min_free_space,
            shutdown_grace,
            store_check_timeout,
            tls_ca_file,
            max_connections,
            header_timeout,
            body_timeout,
            max_body_memory,
            max_plugin_memory,
            metrics_token,
            api_tokens,
            trace_retention,
            trace_max,
            max_timestamp_ahead,
            queue,
        } => {
            let queue = queue.backend()?;
            let metrics_token = metrics_token
                .map(|text| {
                    tocsin_config::SecretRef::parse(&text, Path::new("."))
                        .map_err(|e| anyhow::anyhow!("--metrics-token: {e}"))
                })
                .transpose()?;
            tocsin::http_serve::raise_descriptor_limit();
            let queue_budget = queue_budget
                .as_deref()
                .map(|text| {
                    tocsin_config::units::parse_size(text)
                        .map_err(|e| anyhow::anyhow!("--queue-budget: {e}"))
                })
                .transpose()?;
            let listen = match listen.as_str() {
                "none" | "" => None,
                addr => Some(parse_addr("--listen", addr)?),
            };
            let janitor_listen = janitor_listen
                .as_deref()
                .map(|addr| parse_addr("--janitor-listen", addr))
                .transpose()?;
            let settings = Settings {
                pipelines_dir: paths.pipelines,
                data_dir: data.data,
                plugin_dirs: paths.plugins.plugin_dirs,
                listen,
                janitor_pipeline,
                janitor_listen,
                queue_budget,
                min_free_space,
                shutdown_grace,
                store_check_timeout,
                tls_ca_file,
                http: tocsin::settings::HttpLimits {
                    max_connections: max_connections.max(1),
                    header_timeout,
                    body_timeout,
                    max_body_memory,
                },
                max_plugin_memory,
                metrics_token,
                api_tokens,
                trace_retention,
                trace_max,
                max_timestamp_ahead,
                queue,
            };
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let shutdown_grace = settings.shutdown_grace;
            let served = rt.block_on(async {
                let shutdown = shutdown_signal()?;
                tokio::pin!(shutdown);
                let server = tokio::select! {
                    started = tocsin::server::Server::start(settings) => match started {
                        Ok(server) => server,
                        Err(e) => return anyhow::Ok(Err(e)),
                    },
                    () = &mut shutdown => {
                        // Stopped before anything ran (JetStream not reachable yet): nothing
                        // to finish, and the wait for it cannot be cancelled from here.
                        tracing::info!("stopped before starting");
                        std::process::exit(0);
                    }
                };
                arm_watchdog(server.queue(), shutdown_grace)?;
                anyhow::Ok(server.run_until(shutdown).await)
            })?;
            match served {
                Ok(()) => Ok(ExitCode::SUCCESS),
                // EX_TEMPFAIL: a restart is the cure (the unit's Restart=on-failure does it).
                Err(e @ tocsin::server::ServerError::StoreFailed(_)) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(EXIT_STORE_FAILED))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Validate {
            path,
            env,
            plugins,
            cache_dir,
        } => validate(
            &path,
            env,
            plugins.plugin_dirs,
            cache_dir.or_else(try_pipeline::default_cache_dir),
        ),
        Command::Dlq {
            data,
            server,
            action,
        } => dlq(&data.data, &server, action),
        Command::Queue {
            data,
            server,
            action,
        } => queue(&data.data, &server, action),
        Command::Status { data, server } => status(&data.data, &server),
        Command::Silence {
            data,
            server,
            action,
        } => silence_cli::run(Target::find(&data.data, &server)?, action),
        Command::Alerts {
            pipeline,
            json,
            data,
            server,
        } => alerts_cli::list(Target::find(&data.data, &server)?, pipeline, json),
        Command::Ack {
            pipeline,
            alert,
            comment,
            duration,
            author,
            data,
            server,
        } => alerts_cli::ack(
            Target::find(&data.data, &server)?,
            tocsin::open_alerts::NewAck {
                pipeline,
                alert,
                comment,
                duration,
                by: author,
            },
        ),
        Command::Expected {
            data,
            server,
            action,
        } => expected_cli::run(Target::find(&data.data, &server)?, action),
        Command::Trace {
            id,
            pipeline,
            data,
            server,
        } => trace(&data.data, &server, pipeline.as_deref(), &id),
        Command::Pipeline {
            data,
            server,
            action,
        } => pipeline_command(&data.data, &server, action),
        Command::Test {
            path,
            plugin,
            input,
            headers,
            poll,
            config,
            hosts,
            secrets,
            plugins,
            cache_dir,
        } => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            match (plugin, path) {
                (Some(plugin), _) => {
                    let trial = try_plugin::Trial {
                        plugin: &plugin,
                        config_json: try_plugin::config_json(config.as_deref())?,
                        input: input.as_deref(),
                        hosts,
                        secrets,
                        headers,
                    };
                    rt.block_on(try_plugin::run(trial))
                }
                (None, Some(path)) => rt.block_on(try_pipeline::run(try_pipeline::Options {
                    path,
                    input,
                    headers,
                    poll,
                    plugin_dirs: plugins.plugin_dirs,
                    cache_dir: cache_dir.or_else(try_pipeline::default_cache_dir),
                })),
                (None, None) => anyhow::bail!("name a pipeline file, or a plugin with --plugin"),
            }
        }
        Command::Init { dir } => init_cli::init(&dir).map(|()| ExitCode::SUCCESS),
        Command::Plugin { action } => match action {
            PluginAction::Ls { plugins, json } => plugin_cli::ls(&plugins.plugin_dirs, json),
            PluginAction::Inspect { file, json } => plugin_cli::inspect(&file, json),
            PluginAction::New {
                name,
                kind,
                lang,
                dir,
            } => plugin_cli::new(&dir, &name, kind, lang),
        },
    }
}

fn parse_addr(flag: &str, addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    addr.parse()
        .with_context(|| format!("{flag} `{addr}` is not an address such as 127.0.0.1:8470"))
}

/// The exit status after the queue store failed at run time (sysexits' EX_TEMPFAIL).
const EXIT_STORE_FAILED: u8 = 75;

/// Starts the watchdog ([`tocsin::watchdog`]): a wedged runtime or store ends the process
/// with [`EXIT_STORE_FAILED`], so the supervisor restarts it instead of it hanging.
fn arm_watchdog(
    queue: std::sync::Arc<dyn QueueStore>,
    shutdown_grace: std::time::Duration,
) -> anyhow::Result<()> {
    use tocsin::watchdog::{Heartbeat, Watched};
    let origin = std::time::Instant::now();
    let heartbeat = Heartbeat::default();
    heartbeat.spawn_beating(origin);
    let watched = Watched {
        queue,
        shutdown_grace,
    };
    tocsin::watchdog::spawn(watched, heartbeat, origin, |wedged| {
        tracing::error!(reason = %wedged.0, "tocsin is wedged; exiting with status 75 so the supervisor restarts it (what was acknowledged is on disk)");
        eprintln!("error: tocsin is wedged: {}; exiting with status {EXIT_STORE_FAILED}", wedged.0);
        std::process::exit(i32::from(EXIT_STORE_FAILED));
    })
    .context("cannot start the watchdog thread")?;
    Ok(())
}

fn parse_size(text: &str) -> Result<u64, String> {
    tocsin_config::units::parse_size(text)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    tocsin_config::units::parse_duration(text)
}

/// Registers the SIGTERM and SIGINT handlers now (so a signal that comes while the server is
/// still starting is not fatal) and returns a future that resolves on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn validate(
    path: &Path,
    env: bool,
    plugin_dirs: Vec<PathBuf>,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let resolver = tocsin::embedded_plugins::resolver(plugin_dirs);
    let machine = if env {
        MachineCheck::Check
    } else {
        MachineCheck::Skip
    };
    let report = if path.is_dir() {
        load_dir(path, &resolver, machine)
            .with_context(|| format!("cannot read {}", path.display()))?
    } else {
        let mut r = tocsin_config::DirReport::default();
        match tocsin_config::load_file(path, &resolver, machine) {
            Ok(spec) => r.pipelines.push(spec),
            Err(d) => r.failures.push((path.to_path_buf(), d)),
        }
        r
    };
    let report = init_each_pipeline(report, env, cache_dir)?;
    for spec in &report.pipelines {
        println!("ok      {}", spec.file.display());
        for (field, plugin) in settings_not_declared(spec) {
            println!(
                "note    {}: {field}: plugin `{plugin}` declares no settings schema; its config \
                 is not checked",
                spec.file.display()
            );
        }
    }
    for (_, diags) in &report.failures {
        for d in diags {
            println!("error   {d}");
        }
    }
    println!(
        "{} valid, {} invalid",
        report.pipelines.len(),
        report.failures.len()
    );
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the `init` of every stage of each valid pipeline on its config, dry
/// ([`tocsin::dry_run::init_each_stage`]); a pipeline a plugin refuses moves to the failures,
/// each refusal named at its stage's `config`. With `machine_checks`, scheduled sources too.
fn init_each_pipeline(
    report: tocsin_config::DirReport,
    machine_checks: bool,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<tocsin_config::DirReport> {
    if report.pipelines.is_empty() {
        return Ok(report);
    }
    let runtime = tocsin_runtime::Runtime::new(tocsin_runtime::RuntimeConfig {
        cache_dir,
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)
    .context("cannot start the sandbox runtime")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut checked = tocsin_config::DirReport {
        failures: report.failures,
        ..Default::default()
    };
    for spec in report.pipelines {
        let refused = rt
            .block_on(tocsin::dry_run::init_each_stage(
                &runtime,
                &spec,
                machine_checks,
            ))
            .map_err(anyhow::Error::msg)?;
        if refused.is_empty() {
            checked.pipelines.push(spec);
            continue;
        }
        let text = std::fs::read_to_string(&spec.file).unwrap_or_default();
        let diagnostics = refused
            .into_iter()
            .map(|(field, why)| {
                let place = tocsin_config::stage_config_place(&text, &field);
                tocsin_config::Diagnostic {
                    file: spec.file.clone(),
                    line: place.map(|p| p.0),
                    column: place.map(|p| p.1),
                    field: format!("{field}.config"),
                    message: why,
                }
            })
            .collect();
        checked.failures.push((spec.file.clone(), diagnostics));
    }
    Ok(checked)
}

/// The stages (field, plugin) whose plugin carries no settings schema, so `validate` could
/// not check their `config` (plugins built before the SDK declared settings).
fn settings_not_declared(spec: &tocsin_config::PipelineSpec) -> Vec<(String, String)> {
    let filters = spec
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("filter[{i}]"), f));
    let sinks = spec
        .sinks
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("sink[{i}]"), &s.stage));
    spec.source
        .stage
        .iter()
        .map(|s| ("source".to_string(), s))
        .chain(filters)
        .chain(sinks)
        .filter(|(_, stage)| !stage.settings_declared)
        .map(|(field, stage)| (field, stage.plugin.name.clone()))
        .collect()
}

/// `--data` names a directory that holds no tocsin store. A usage error (exit code 2):
/// nothing is created there, so a wrong path is not mistaken for an empty store.
#[derive(Debug, thiserror::Error)]
#[error(
    "no tocsin data in {}; is --data right? (`tocsin run` creates its store there on its first start)",
    .0.display()
)]
struct NoData(PathBuf);

/// Opens the store of an existing data directory for an operator command.
fn open_store(data: &Path) -> anyhow::Result<std::sync::Arc<SledStore>> {
    if !SledStore::exists(&data.join("queue")) {
        return Err(NoData(data.to_path_buf()).into());
    }
    let store = match SledStore::open(&data.join("queue")) {
        Ok(store) => store,
        // Says itself who holds the store and what to do.
        Err(e @ tocsin_queue::QueueError::InUse { .. }) => return Err(e.into()),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot open the queues in {}", data.display())))
        }
    };
    store.verify(tocsin::settings::DEFAULT_STORE_CHECK_TIMEOUT)?;
    Ok(store)
}

/// Where `dlq` and `queue` act: the store itself, or the admin API of the server holding it.
enum Target {
    Store(std::sync::Arc<SledStore>),
    Server(tocsin::admin::client::ApiClient, tokio::runtime::Runtime),
}

impl Target {
    /// The server named by `--server`; else the store, opened here; else, when a server
    /// holds it, that server as it announced itself in the data directory.
    fn find(data: &Path, server: &ServerArgs) -> anyhow::Result<Target> {
        if let Some(url) = &server.server {
            return Target::server(url, server);
        }
        match open_store(data) {
            Ok(store) => Ok(Target::Store(store)),
            Err(e) => {
                let in_use = e
                    .downcast_ref::<tocsin_queue::QueueError>()
                    .is_some_and(|e| matches!(e, tocsin_queue::QueueError::InUse { .. }));
                match tocsin::admin::client::announced(data) {
                    Some(info) if in_use => Target::server(&info.url, server).with_context(|| {
                        format!("a server (pid {}) runs on {}", info.pid, data.display())
                    }),
                    _ => Err(e),
                }
            }
        }
    }

    fn server(url: &str, args: &ServerArgs) -> anyhow::Result<Target> {
        let token = match &args.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--token-file {}", path.display()))?,
            None => std::env::var("TOCSIN_API_TOKEN").map_err(|_| {
                anyhow::anyhow!(
                    "its admin API at {url} needs a token: set TOCSIN_API_TOKEN or give                      --token-file (see docs/api.md)"
                )
            })?,
        };
        let client = tocsin::admin::client::ApiClient::new(url, token.trim().to_string());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        Ok(Target::Server(client, rt))
    }

    fn dead_letters(&self, pipeline: Option<&str>) -> anyhow::Result<Vec<operator::DeadLetterRow>> {
        Ok(match self {
            Target::Store(store) => operator::dead_letters(store.as_ref(), pipeline)?,
            Target::Server(api, rt) => rt
                .block_on(api.dead_letters(pipeline))
                .map_err(anyhow::Error::msg)?,
        })
    }

    fn dead_letter(
        &self,
        pipeline: &str,
        queue: &str,
        seq: u64,
    ) -> anyhow::Result<tocsin_queue::Envelope> {
        Ok(match self {
            Target::Store(store) => operator::dead_letter(store.as_ref(), pipeline, queue, seq)?,
            Target::Server(api, rt) => rt
                .block_on(api.dead_letter(pipeline, queue, seq))
                .map_err(anyhow::Error::msg)?,
        })
    }

    fn act(
        &self,
        disposal: operator::Disposal,
        pipeline: &str,
        queue: &str,
        selection: &operator::Selection,
    ) -> anyhow::Result<usize> {
        Ok(match self {
            Target::Store(store) => {
                let tracer = tocsin::trace::Tracer::new(
                    store.clone(),
                    tocsin::trace::DEFAULT_RETENTION,
                    tocsin::trace::DEFAULT_MAX_PER_PIPELINE,
                );
                let tracer = Some(tracer.as_ref());
                operator::dispose(store.as_ref(), tracer, disposal, pipeline, queue, selection)?
            }
            Target::Server(api, rt) => {
                let action = match disposal {
                    operator::Disposal::Replay => "replay",
                    operator::Disposal::Purge => "purge",
                };
                rt.block_on(api.act(action, pipeline, queue, selection))
                    .map_err(anyhow::Error::msg)?
            }
        })
    }

    fn queues(&self) -> anyhow::Result<Vec<operator::QueueRow>> {
        Ok(match self {
            Target::Store(store) => operator::queues(store.as_ref())?,
            Target::Server(api, rt) => rt.block_on(api.queues()).map_err(anyhow::Error::msg)?,
        })
    }
}

fn dlq(data: &Path, server: &ServerArgs, action: DlqAction) -> anyhow::Result<ExitCode> {
    let target = Target::find(data, server)?;
    match action {
        DlqAction::Ls { pipeline } => {
            let rows = target.dead_letters(pipeline.as_deref())?;
            print!("{}", operator::format_dead_letters(&rows));
        }
        DlqAction::Show {
            pipeline,
            queue,
            seq,
        } => {
            let envelope = target.dead_letter(&pipeline, &queue, seq)?;
            println!("{}", serde_json::to_string_pretty(&envelope)?);
        }
        DlqAction::Replay {
            pipeline,
            queue,
            seq,
            all,
        } => {
            let replay = operator::Disposal::Replay;
            let n = target.act(replay, &pipeline, &queue, &selection(seq, all)?)?;
            println!("replayed {n} message(s) to {pipeline}/{queue}");
        }
        DlqAction::Purge {
            pipeline,
            queue,
            seq,
            all,
        } => {
            let purge = operator::Disposal::Purge;
            let n = target.act(purge, &pipeline, &queue, &selection(seq, all)?)?;
            println!("purged {n} dead letter(s) of {pipeline}/{queue}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn selection(seq: Option<u64>, all: bool) -> anyhow::Result<operator::Selection> {
    if seq.is_none() && !all {
        anyhow::bail!("name a dead letter by its seq, or pass --all");
    }
    Ok(operator::Selection {
        seqs: seq.into_iter().collect(),
        all,
    })
}

/// Recent messages `tocsin status` lists.
const STATUS_RECENT: usize = 10;

fn status(data: &Path, server: &ServerArgs) -> anyhow::Result<ExitCode> {
    let (views, problems, recent) = match Target::find(data, server)? {
        Target::Server(api, rt) => rt
            .block_on(async {
                Ok::<_, String>((
                    api.pipelines().await?,
                    api.problems().await?,
                    api.recent(50).await?,
                ))
            })
            .map_err(anyhow::Error::msg)?,
        Target::Store(store) => {
            println!(
                "no server runs on {}; what its store holds:",
                data.display()
            );
            let mut views = operator::pipelines(&tocsin::manager::new_board(), store.as_ref())?;
            for view in &mut views {
                view.state = "stopped".into();
            }
            let tracer = tocsin::trace::Tracer::new(
                store.clone(),
                tocsin::trace::DEFAULT_RETENTION,
                tocsin::trace::DEFAULT_MAX_PER_PIPELINE,
            );
            let recent = tocsin::recent::recent_messages(&tracer, None, 50)?;
            let problems = operator::problems(&views, &recent);
            (views, problems, recent)
        }
    };
    print!("{}", operator::format_pipelines(&views));
    print!("\n{}", operator::format_problems(&problems));
    print!("\n{}", operator::format_recent(&recent, STATUS_RECENT));
    Ok(ExitCode::SUCCESS)
}

fn trace(
    data: &Path,
    server: &ServerArgs,
    pipeline: Option<&str>,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let events: Vec<(String, tocsin::trace::TraceEvent)> = match Target::find(data, server)? {
        Target::Server(api, rt) => rt
            .block_on(api.trace(pipeline, id))
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|e| (e.pipeline, e.event))
            .collect(),
        Target::Store(store) => {
            let tracer = tocsin::trace::Tracer::new(
                store,
                tocsin::trace::DEFAULT_RETENTION,
                tocsin::trace::DEFAULT_MAX_PER_PIPELINE,
            );
            tracer.trace(pipeline, id)?
        }
    };
    if events.is_empty() {
        anyhow::bail!(
            "nothing is known of message `{id}`: the id is wrong, or its steps are older than \
             the trace keeps (--trace-retention, --trace-max)"
        );
    }
    print!("{}", tocsin::trace::format_trace(&events));
    Ok(ExitCode::SUCCESS)
}

fn pipeline_command(
    data: &Path,
    server: &ServerArgs,
    action: PipelineAction,
) -> anyhow::Result<ExitCode> {
    let (verb, name) = match &action {
        PipelineAction::Pause { pipeline } => ("pause", pipeline),
        PipelineAction::Resume { pipeline } => ("resume", pipeline),
        PipelineAction::Run { pipeline } => ("run", pipeline),
    };
    match Target::find(data, server)? {
        Target::Server(api, rt) => {
            let done = rt
                .block_on(api.command(verb, name))
                .map_err(anyhow::Error::msg)?;
            println!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Target::Store(_) => anyhow::bail!(
            "no server runs on {}: `tocsin pipeline {verb}` acts on a running server (to keep a \
             pipeline from starting, set `disabled = true` in its file)",
            data.display()
        ),
    }
}

fn queue(data: &Path, server: &ServerArgs, action: QueueAction) -> anyhow::Result<ExitCode> {
    match action {
        QueueAction::Ls => {
            let rows = Target::find(data, server)?.queues()?;
            print!("{}", operator::format_queues(&rows));
        }
        QueueAction::Purge { pipeline } => {
            let store = open_store(data)?;
            store.purge_pipeline(&pipeline)?;
            println!("removed every queue, dead letter and plugin state of {pipeline}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::Cli;

    /// `docs/cli.md` is generated from the clap definitions above, so it cannot drift:
    /// regenerate it with `TOCSIN_BLESS=1 cargo test -p tocsin --bin tocsin cli_reference`.
    #[test]
    fn cli_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let generated = format!(
            "<!-- Generated from host/engine/src/main.rs by the test `cli_reference_is_current`; \
             do not edit. Regenerate: TOCSIN_BLESS=1 cargo test -p tocsin --bin tocsin cli_reference -->\n\n{}",
            clap_markdown::help_markdown::<Cli>()
        );
        if std::env::var_os("TOCSIN_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/cli.md is out of date: TOCSIN_BLESS=1 cargo test -p tocsin --bin tocsin cli_reference"
        );
    }
}
