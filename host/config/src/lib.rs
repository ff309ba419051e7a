//! Pipeline files: TOML → a validated [`PipelineSpec`], or every error of the file at once.
//!
//! A pipeline is one `*.toml` file in the pipelines directory; its file stem is its name. This
//! crate reads and checks such files and knows nothing of wasmtime, sled or tokio, so
//! `tocsin validate` can run every check without starting anything.
//!
//! # Layout
//! - [`file`]: the raw serde shape of a pipeline file (`deny_unknown_fields` everywhere).
//! - [`spec`]: the validated model the engine runs.
//! - [`validate`]: raw → spec, collecting [`Diagnostic`]s with file, line and field.
//! - [`schedule`]: cron expressions (with seconds; 5-field crontab lines accepted).
//! - [`units`]: durations (`"1s"`, `"10m"`) and sizes (`"64MiB"`).
//! - [`settings`]: plugins' settings schemas, read from components; `config` checked.
//! - [`host_grant`]: `grants.hosts` entries, parsed and matched against requests.
//! - [`maintenance`]: maintenance windows (`[[maintenance]]`), recurring mutes.
//! - [`matchers`]: label matchers (`host=db1`, `alertname=~"Disk.*"`) for silences.

pub mod file;
pub mod host_grant;
pub mod maintenance;
pub mod matchers;
pub mod plugin_origin;
pub mod schedule;
pub mod self_events;
pub mod settings;
pub mod spec;
pub mod units;
pub mod validate;

pub use spec::*;
pub use validate::{
    is_pipeline_file, load_dir, load_dir_files, load_file, parse_pipeline, pipeline_files,
    stage_config_place, Diagnostic, DirReport, MachineCheck, PluginResolver, BEHAVIOUR_TEST_SUFFIX,
};
