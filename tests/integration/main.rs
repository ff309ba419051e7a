//! tocsin's integration tests: the real engine, real plugins, real servers.
//!
//! - `alertmanager`: a real Alertmanager → tocsin → a real Synapse, firing then resolved.
//! - `corrupt`: a truncated queue database: a clear error and a recovery, never a hang.
//! - `disk`: a tmpfs that fills up or turns read-only: 503, nothing lost, recovery.
//! - `scaffold`: `tocsin plugin new` projects build and their README commands work; `tocsin test`.
//! - `secrets`: tokens never in logs, answers, metrics, dead letters or stored data.
//! - `self_events`: the `@tocsin` source: dead letters, a failing sink, a refused edit — each
//!   announced once and resolved once, across `kill -9`; its own failures never feed it.
//! - `sysmetrics`: /proc through a read-only grant, disks through the host's disk-usage.
//! - `wit_docs`: every item of the plugin contract is documented.
//! - `chat_control`: commands in a Synapse room answered through the `control` interface:
//!   silence, status, acknowledge; refusals; a SIGKILL between commands.
//! - `validate`: `tocsin validate` on the shipped examples and on broken files.
//! - `backup_alerts`: backup-check → threshold → file sink, speaking once per change of state.
//! - `sandbox`: hostile plugins are stopped and reported while another pipeline delivers.
//! - `filters`: template, dedup, rate-limit and the webhook sink through the engine.
//! - `forward`: agent → central with the central instance down, then up: each message once.
//! - `hardening`: the real binary under a 1024 open-files limit: a thousand stalled clients are
//!   cut off by the timeouts while a large request is accepted; an injected EMFILE in the store
//!   is survived or ends the process with 75, never a hang.
//! - `hot_reload`: adding, changing and deleting pipeline files while running.
//! - `howto`: every operator how-to in docs/howto/ runs as written and prints what it shows.
//! - `ingest`: `POST /ingest/{pipeline}`: auth, limits, decoder rejections, durable 202.
//! - `lock`: a second process on a data directory in use is told so, with the holder's pid;
//!   an operator command on a directory without tocsin data says so (exit 2), creating nothing.
//! - `jetstream_run`: the binary on a 3-node JetStream cluster; a NATS server and tocsin
//!   killed mid-stream: every acknowledged message delivered, once.
//! - `jetstream_store`: the queue store on real NATS JetStream, one server and a cluster of three.
//! - `janitor`: Janitor clients' `POST /message` → Mastodon statuses (a checking fake).
//! - `matrix`: the same against a real Synapse, and what a rejected token does.
//! - `ordering`: order per alert: a resolved never overtakes its firing, other alerts go on.
//! - `outbound`: sinks' HTTP: one kept-alive connection; Content-Length, never chunked, for
//!   every sink; HTTPS with an operator's CA, and without.
//! - `packaging`: the systemd unit verifies, is hardened, and its command line runs, saying
//!   what it uses in one start-up line; the stated Rust toolchain is the one dependencies need.
//! - `pipeline_test`: `tocsin test PIPELINE` dry runs, and every shipped pipeline's behaviour tests.
//! - `plugin_cli`: `tocsin plugin inspect` on good plugins and on misfits.
//! - `plugin_reference`: docs/plugins/, a page per shipped plugin generated from its schema.
//! - `pubsub`: Pub/Sub push with OIDC tokens from a generated key pair; storage labels.
//! - `runtime`: loading plugins: compile cache, pins, refusals.
//! - `python_sink`: a sink written in Python (componentize-py) in a real pipeline.
//! - `redelivery`: max attempts → dead letters → `tocsin dlq` → replay; reload keeps queues.
//! - `restart`: the real binary, SIGKILLed during an outage: every message arrives once.
//! - `status_page`: the page at `/` in headless Chromium: replay from a button, graphs per host.
//! - `single_binary`: the binary alone runs shipped plugins; a plugin directory overrides one;
//!   `plugin ls`; pins on built-in plugins.
//! - `shutdown`: SIGTERM: stop accepting, finish or abandon in-flight deliveries, exit in bound.
//! - `torture`: ingest load, 50 random SIGKILLs: nothing acknowledged lost, nothing shown twice.

mod absence;
mod acknowledge;
mod admin;
mod alertmanager;
mod backup_alerts;
mod batches;
mod budgets;
mod chat_control;
mod contract_0_1;
mod contract_0_2;
mod corrupt;
mod disk;
mod filters;
mod forward;
mod grouping;
mod hardening;
mod hot_reload;
mod howto;
mod ingest;
mod janitor;
mod jetstream_run;
mod jetstream_store;
mod lock;
mod matrix;
mod matrix_commands;
mod ordering;
mod outbound;
mod packaging;
mod pipeline_test;
mod plugin_cli;
mod plugin_reference;
mod pubsub;
mod python_sink;
mod redelivery;
mod restart;
mod runtime;
mod sandbox;
mod scaffold;
mod secrets;
mod self_events;
mod shutdown;
mod silences;
mod single_binary;
mod status_page;
mod sysmetrics;
mod torture;
mod trace;
mod validate;
mod wit_docs;
