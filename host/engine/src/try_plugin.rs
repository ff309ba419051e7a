//! `tocsin test --plugin FILE`: one plugin, run for real on a sample, printing what it makes.
//!
//! A source is polled once, a decoder decodes the sample as a request body, a filter processes
//! the sample message, and a sink delivers it in a **dry run**: its outbound HTTP requests are
//! recorded instead of sent (answered `200 {}`), and printed — method, URL, headers and body —
//! with every granted secret's value replaced by `REDACTED`. Nothing leaves the machine.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use tocsin::dry_run::SampleMessage;
use tocsin_config::spec::StageRole;
use tocsin_config::Grants;
use tocsin_message::{idempotency_key, Message};
use tocsin_runtime::http_policy::DryRunRecorder;
use tocsin_runtime::{
    DeliveryOutcome, PluginKind, Runtime, RuntimeConfig, Stage, StageContext, StateReader,
};

/// What to run and on what.
pub struct Trial<'a> {
    /// The component.
    pub plugin: &'a Path,
    /// Its `config`, as JSON.
    pub config_json: String,
    /// The sample: a message (filter, sink) or a request body (decoder); sources need none.
    pub input: Option<&'a Path>,
    /// Hosts the sink may reach (recorded, never contacted).
    pub hosts: Vec<String>,
    /// Secrets granted: (name, value).
    pub secrets: Vec<(String, String)>,
    /// Request headers sent with a decoder's sample: (name, value).
    pub headers: Vec<(String, String)>,
}

struct NoState;
impl StateReader for NoState {
    fn get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

/// Runs the trial, printing its outputs; exit 1 when the plugin fails or refuses.
pub async fn run(trial: Trial<'_>) -> anyhow::Result<ExitCode> {
    let mut trial = trial;
    for (name, value) in trial.secrets.iter_mut() {
        if value.len() < tocsin::dry_run::MIN_REDACTABLE_SECRET {
            eprintln!(
                "note: secret `{name}` is only {} characters long, too short to redact in the \
                 output; the trial uses a placeholder",
                value.len()
            );
            *value = format!("dry-run-placeholder-for-{name}");
        }
    }
    let runtime = Runtime::new(RuntimeConfig::default()).map_err(anyhow::Error::msg)?;
    let plugin = runtime.load(trial.plugin, None)?;
    let kind = plugin.kind;
    let recorder = Arc::new(DryRunRecorder::default());
    // The limits a pipeline would give this kind of plugin, so what passes here does not
    // time out in a pipeline (a filter gets 1 s, not a sink's 30 s).
    let limits = tocsin_config::spec::default_limits(match kind {
        PluginKind::Source | PluginKind::Decoder => StageRole::Source,
        PluginKind::Filter => StageRole::Filter,
        PluginKind::Sink => StageRole::Sink,
    });
    eprintln!(
        "note: the {kind} runs with a pipeline's default limits for it: fuel {}, timeout {}",
        limits.fuel,
        humantime::format_duration(limits.timeout)
    );
    let mut stage = Stage::new(
        &runtime,
        plugin,
        StageContext {
            pipeline: "test".into(),
            stage: kind.to_string(),
            config_json: trial.config_json,
            grants: Grants {
                hosts: trial.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                ..Grants::default()
            },
            limits,
            secrets: Arc::new(trial.secrets.clone()),
            state: Arc::new(NoState),
            dry_run: Some(recorder.clone()),
            control: None,
        },
    );
    let read_input = || -> anyhow::Result<Vec<u8>> {
        let path = trial
            .input
            .with_context(|| format!("a {kind} needs a sample: pass --input FILE"))?;
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let read_message = || -> anyhow::Result<Message> {
        let bytes = read_input()?;
        let sample: SampleMessage =
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                "{} is not a sample message (JSON with `body`, and optionally `id`, `severity`, \
                 `summary`, `labels`, `metrics`, `timestamp_ms`)",
                trial.input.map_or(String::new(), |p| p.display().to_string())
            )
            })?;
        sample.into_message("sample-1").map_err(anyhow::Error::msg)
    };
    if !trial.headers.is_empty() && kind != PluginKind::Decoder {
        bail!("--header goes with a decoder's sample; this plugin is a {kind}");
    }
    let outputs = match kind {
        PluginKind::Source => stage.poll(tocsin_queue::now_ms()).await?.0,
        PluginKind::Decoder => {
            let (request, assumed) = tocsin::dry_run::sample_request(
                "/ingest/test".into(),
                trial.headers.clone(),
                read_input()?,
            );
            if let Some(content_type) = assumed {
                eprintln!("note: the input is sent as `{content_type}`, which it looks like");
            }
            match stage.decode(&request).await?.0 {
                Ok(mut messages) => {
                    tocsin::ingest::derive_missing_ids(&request.body, &mut messages);
                    messages
                }
                Err(rejection) => {
                    println!("rejected: {} {}", rejection.status, rejection.reason);
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        PluginKind::Filter => stage.process(read_message()?).await?.0,
        PluginKind::Sink => {
            let message = read_message()?;
            let key = idempotency_key("test", "sink", &message.id);
            let (outcome, _) = stage.deliver(&message, &key).await?;
            let secrets: Vec<String> = trial.secrets.iter().map(|(_, v)| v.clone()).collect();
            for request in recorder.take() {
                print!(
                    "DRY RUN: would send\n{}\n",
                    tocsin::dry_run::show_request(&request, &secrets)
                );
            }
            return Ok(match outcome {
                DeliveryOutcome::Delivered => {
                    println!("outcome: delivered (dry run: nothing was sent)");
                    ExitCode::SUCCESS
                }
                other => {
                    println!("outcome: {other:?}");
                    ExitCode::FAILURE
                }
            });
        }
    };
    if outputs.is_empty() {
        println!("no output (the {kind} dropped the message)");
    }
    for m in &outputs {
        println!(
            "{}",
            serde_json::to_string(&SampleMessage::from_message(m))?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `NAME=VALUE`.
pub fn parse_secret(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{text}` is not NAME=VALUE")),
    }
}

/// `--config` as JSON text, or `@file` holding JSON or TOML.
pub fn config_json(config: Option<&str>) -> anyhow::Result<String> {
    let Some(config) = config else {
        return Ok("{}".into());
    };
    let text = match config.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => config.to_string(),
    };
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
        if !value.is_object() {
            bail!("--config must be an object, e.g. '{{\"word\": \"disk\"}}'");
        }
        return Ok(value.to_string());
    }
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| "--config is neither a JSON object nor a TOML table")?;
    Ok(serde_json::to_string(&table)?)
}
