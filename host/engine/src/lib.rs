//! The tocsin engine: runs alert pipelines of sandboxed WebAssembly plugins with durable
//! queues between their stages.
//!
//! # Layout
//! - [`settings`]: where things are (pipelines, data, plugins) — from flags or environment.
//! - [`server`]: [`server::run`], the whole process: opens the queue store and the sandbox
//!   runtime, starts every pipeline, watches the pipelines directory, stops on a signal.
//! - [`manager`]: the set of running pipelines; applies added, changed and deleted files one
//!   pipeline at a time (hot reload) and keeps each pipeline's status.
//! - [`pipeline`]: one running pipeline — builds its stages, then runs its tasks (an ingest
//!   pipeline registers its decoder with [`ingest`] instead of running a scheduler):
//!   - [`schedule`]: cron ticks → `source.poll` → ingress queue;
//!   - [`filtering`]: ingress head → filters → one atomic hand-over to the sink queues;
//!   - [`delivery`]: each sink queue head → `sink.deliver`, with retry, backoff and dead letters;
//!     [`delivery_order`] picks what may go at once (order per alert, not per sink).
//! - [`ingest`]: the HTTP surface — `POST /ingest/{pipeline}` (auth checked by the host,
//!   then the pipeline's decoder plugin, then a durable append before 202) and `GET /healthz`.
//! - [`metrics`]: `GET /metrics`, Prometheus text: counters, queue depths, delivery latency.
//! - [`history`]: the metrics messages carry, kept as time series per host for graphs.
//! - [`trace`]: each message's steps, for `tocsin trace` ("where is my alert?"); [`recent`]
//!   folds them into the latest messages and where each is now.
//! - [`status_page`]: the page at `/` — pipelines, problems, dead letters, recent messages and
//!   per-host graphs, drawn in the browser from the admin API.
//! - [`admin`]: the admin API, `/api/v1/…` (tokens, access log), over the views and actions of
//!   [`operator`], which the `dlq` and `queue` commands print too.
//! - [`silences`]: silences (label matchers, start, end), applied at the hand-over;
//!   [`open_alerts`]: which alerts are open and what each sink was handed of them;
//!   [`silence_release`]: what a silence held back, announced when it ends if still open.
//! - [`budget`]: the queues' disk budget (back-pressure: 503 on ingest, paused cron sources).
//! - [`dry_run`]: `tocsin test PIPELINE` — one input through the whole pipeline, sinks recorded
//!   instead of sent; [`behaviour`] runs the `NAME.test.toml` cases written next to a pipeline.
//! - [`status`]: counters and states shown by logs, `/metrics` and the admin API.
//! - [`plugin_reference`]: a plugin's reference page, from its settings schema and its docs.
//!
//! The crates below it: `tocsin-config` (pipeline files), `tocsin-runtime` (the sandbox,
//! the only place that names wasmtime), `tocsin-queue` (durable queues, the only place that
//! names sled), `tocsin-message` (the message model).

pub mod absence;
pub mod admin;
pub mod behaviour;
pub mod budget;
pub mod control;
pub mod delivery;
pub mod delivery_order;
pub mod dry_run;
pub mod embedded_plugins;
pub mod filtering;
pub mod group_delivery;
pub mod history;
pub mod http_serve;
pub mod ingest;
pub mod inhibition;
pub mod manager;
pub mod metrics;
pub mod open_alerts;
pub mod operator;
pub mod paused;
pub mod pipeline;
pub mod plugin_memory;
pub mod plugin_reference;
pub mod recent;
pub mod schedule;
pub mod self_events;
pub mod server;
pub mod settings;
pub mod silence_release;
pub mod silences;
pub mod sink_instances;
pub mod status;
pub mod status_page;
pub mod trace;
pub mod watchdog;
pub mod worker;

pub use settings::Settings;
