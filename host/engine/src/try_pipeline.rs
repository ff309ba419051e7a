//! `tocsin test PIPELINE`: a dry run of a whole pipeline, or its behaviour tests.
//!
//! - `tocsin test pipelines/x.toml --input SAMPLE` prints what each stage makes of the sample
//!   and exactly what each sink would send (see [`tocsin::dry_run`]).
//! - `tocsin test pipelines/x.toml` runs `x.test.toml` when it exists; without one (or with
//!   `--poll`), a scheduled pipeline's source is polled once, for real.
//! - `tocsin test pipelines/` (or `x.test.toml`) runs every behaviour-test file there
//!   (see [`tocsin::behaviour`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use tocsin::behaviour;
use tocsin::dry_run::{show_request, DryRun, Input, SampleMessage, SourceStep, Trace};
use tocsin_config::self_events::TOCSIN_SOURCE;
use tocsin_config::{load_file, MachineCheck, PipelineSpec, PluginResolver, Trigger};
use tocsin_message::Message;
use tocsin_runtime::{DeliveryOutcome, Runtime, RuntimeConfig};

/// Where and how to run.
pub struct Options {
    /// A pipeline file, a behaviour-test file or a directory.
    pub path: PathBuf,
    /// A sample: a request body (ingest pipelines) or a message as JSON (scheduled ones).
    pub input: Option<PathBuf>,
    /// Request headers for the sample, `Name: value`.
    pub headers: Vec<(String, String)>,
    /// Poll the source once even when behaviour tests exist.
    pub poll: bool,
    /// Where plugins are looked up by name.
    pub plugin_dirs: Vec<PathBuf>,
    /// The compile cache (none: compile every plugin each time).
    pub cache_dir: Option<PathBuf>,
}

/// Runs `tocsin test` on a pipeline, a behaviour-test file or a directory.
pub async fn run(options: Options) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: options.cache_dir.clone(),
        ..RuntimeConfig::default()
    })
    .map_err(anyhow::Error::msg)?;
    let resolver = tocsin::embedded_plugins::resolver(options.plugin_dirs.clone());
    let path = &options.path;
    if path.is_dir() {
        if options.input.is_some() {
            bail!(
                "--input needs one pipeline file, not the directory {}",
                path.display()
            );
        }
        let files = behaviour::test_files(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if files.is_empty() {
            println!("no behaviour tests (*.test.toml) in {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        return run_test_files(&runtime, &resolver, &files).await;
    }
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    if behaviour::pipeline_of(path).is_some() {
        return run_test_files(&runtime, &resolver, std::slice::from_ref(path)).await;
    }
    let spec = load_pipeline(path, &resolver)?;
    let input = match &options.input {
        Some(sample) => Some(read_input(&spec, sample, &options.headers)?),
        None if options.poll => {
            if !matches!(spec.source.trigger, Trigger::Schedule(_)) {
                bail!(
                    "--poll needs a scheduled pipeline; {} has no schedule",
                    path.display()
                );
            }
            Some(Input::Poll)
        }
        None => None,
    };
    match input {
        Some(input) => dry_run(&runtime, spec, input).await,
        None => {
            let tests = behaviour::tests_of(path);
            if tests.is_file() {
                run_test_files(&runtime, &resolver, &[tests]).await
            } else if matches!(spec.source.trigger, Trigger::Schedule(_)) {
                dry_run(&runtime, spec, Input::Poll).await
            } else if matches!(spec.source.trigger, Trigger::Tocsin(_)) {
                bail!(
                    "{} reports tocsin's own events: give a message with --input FILE, or \
                     write behaviour tests in {}",
                    path.display(),
                    tests.display()
                )
            } else {
                bail!(
                    "{} is fed over HTTP: give a request body with --input FILE, or write \
                     behaviour tests in {}",
                    path.display(),
                    tests.display()
                )
            }
        }
    }
}

fn load_pipeline(path: &Path, resolver: &PluginResolver) -> anyhow::Result<PipelineSpec> {
    load_file(path, resolver, MachineCheck::Skip).map_err(|diagnostics| {
        anyhow::anyhow!(
            "{} is not a valid pipeline:\n{}",
            path.display(),
            diagnostics
                .iter()
                .map(|d| format!("  {d}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn read_input(
    spec: &PipelineSpec,
    sample: &Path,
    headers: &[(String, String)],
) -> anyhow::Result<Input> {
    let bytes =
        std::fs::read(sample).with_context(|| format!("cannot read {}", sample.display()))?;
    match spec.source.trigger {
        Trigger::Ingest(_) => Ok(Input::Request {
            body: bytes,
            headers: headers.to_vec(),
        }),
        Trigger::Schedule(_) | Trigger::Tocsin(_) => {
            let sample: SampleMessage = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not fed over HTTP, so --input is a message entering its filters: \
                     JSON with `body`, and optionally `id`, `severity`, `summary`, `labels`, \
                     `metrics`, `timestamp_ms` (without --input a scheduled source is polled)",
                    spec.name
                )
            })?;
            Ok(Input::Message(
                sample
                    .into_message("sample-1")
                    .map_err(anyhow::Error::msg)?,
            ))
        }
    }
}

/// One input through the pipeline, printed stage by stage.
async fn dry_run(runtime: &Runtime, spec: PipelineSpec, input: Input) -> anyhow::Result<ExitCode> {
    println!("pipeline {} ({})", spec.name, spec.file.display());
    let mut dry = DryRun::load(runtime, spec)
        .await
        .map_err(anyhow::Error::msg)?;
    for note in &dry.notes {
        println!("note: {note}");
    }
    let trace = dry.run(input).await;
    print_trace(&dry, &trace)?;
    let groups = dry.flush_groups().await;
    print_groups(&dry, &groups);
    let ok = trace.failure.is_none()
        && !matches!(trace.source, SourceStep::Rejected(_))
        && trace
            .deliveries
            .iter()
            .chain(groups.iter().flatten())
            .all(|d| matches!(d.outcome, Ok(DeliveryOutcome::Delivered)));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_trace(dry: &DryRun, trace: &Trace) -> anyhow::Result<()> {
    let spec = dry.spec();
    let secrets = dry.secret_values();
    let plugin = spec
        .source
        .stage
        .as_ref()
        .map_or(TOCSIN_SOURCE, |s| s.plugin.name.as_str());
    if let Some(assumed) = trace.assumed_content_type {
        println!(
            "note: the input names no Content-Type; it was sent as `{assumed}`, which it looks \
             like (give --header 'Content-Type: …' to choose another)"
        );
    }
    match &trace.source {
        SourceStep::Skipped(message) => {
            println!("\nsource ({plugin}): skipped, the input enters the filters");
            print_messages(std::slice::from_ref(message))?;
        }
        SourceStep::Produced(messages) => {
            println!("\nsource ({plugin}): {}", count(messages.len()));
            print_messages(messages)?;
        }
        SourceStep::Rejected(r) => {
            println!(
                "\nsource ({plugin}): refused the request: {} {}",
                r.status, r.reason
            );
        }
    }
    for step in &trace.filters {
        println!(
            "\n{} ({}): {} in, {} out",
            step.stage,
            step.plugin,
            step.inputs,
            step.outputs.len()
        );
        print_messages(&step.outputs)?;
    }
    if let Some((stage, why)) = &trace.failure {
        println!("\n{stage} FAILED: {why}");
    }
    for delivery in &trace.deliveries {
        println!("\nsink {} ← {}", delivery.sink, delivery.message.id);
        print_delivery(delivery, &secrets);
    }
    for (sink, id) in &trace.grouped {
        println!("\nsink {sink}: {id} joins its group (sent below, at the end of the run)");
    }
    for (sink, id) in &trace.unrouted {
        println!("\nsink {sink}: {id} not routed here (its `match` does not take it)");
    }
    for (sink, id, window) in &trace.muted {
        println!("\nsink {sink}: {id} muted now by {window}");
    }
    let outputs = trace.outputs().len();
    if trace.failure.is_none() && outputs == 0 {
        println!("\nnothing reaches the sinks");
    }
    Ok(())
}

/// What one delivery would have sent, written and printed, and its outcome.
fn print_delivery(delivery: &tocsin::dry_run::Delivery, secrets: &[String]) {
    for request in &delivery.requests {
        print!("DRY RUN: would send\n{}\n", show_request(request, secrets));
    }
    for (path, bytes) in &delivery.written {
        println!(
            "DRY RUN: would write to {path}:\n{}",
            tocsin::dry_run::redact(&String::from_utf8_lossy(bytes), secrets)
        );
    }
    if !delivery.stdout.is_empty() {
        println!(
            "DRY RUN: would print:\n{}",
            tocsin::dry_run::redact(&String::from_utf8_lossy(&delivery.stdout), secrets)
        );
    }
    match &delivery.outcome {
        Ok(DeliveryOutcome::Delivered) => {
            println!("outcome: delivered (dry run: nothing was sent)")
        }
        Ok(other) => println!("outcome: {other:?}"),
        Err(e) => println!("outcome: the call failed: {e}"),
    }
}

/// The notifications grouping sinks send at the end of the run.
fn print_groups(dry: &DryRun, groups: &[Vec<tocsin::dry_run::Delivery>]) {
    let secrets = dry.secret_values();
    for members in groups {
        let Some(first) = members.first() else {
            continue;
        };
        let ids: Vec<&str> = members.iter().map(|d| d.message.id.as_str()).collect();
        println!(
            "\nsink {} ← one group notification of {}: {}",
            first.sink,
            count(members.len()),
            ids.join(", ")
        );
        print_delivery(first, &secrets);
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 message".into()
    } else {
        format!("{n} messages")
    }
}

fn print_messages(messages: &[Message]) -> anyhow::Result<()> {
    for m in messages {
        println!(
            "  {}",
            serde_json::to_string(&SampleMessage::from_message(m))?
        );
    }
    Ok(())
}

/// Runs behaviour-test files; exit 1 when a case fails or a file cannot run.
async fn run_test_files(
    runtime: &Runtime,
    resolver: &PluginResolver,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    for file in files {
        println!("{}", file.display());
        let pipeline = behaviour::pipeline_of(file).unwrap_or_default();
        let prepared = behaviour::load(file).and_then(|tests| {
            if pipeline.is_file() {
                Ok(tests)
            } else {
                Err(format!(
                    "{}: tests a pipeline that does not exist: {}",
                    file.display(),
                    pipeline.display()
                ))
            }
        });
        let tests = match prepared {
            Ok(tests) => tests,
            Err(e) => {
                println!("  ERROR {e}");
                broken += 1;
                continue;
            }
        };
        let spec = match load_pipeline(&pipeline, resolver) {
            Ok(spec) => spec,
            Err(e) => {
                println!("  ERROR {e:#}");
                broken += 1;
                continue;
            }
        };
        for result in behaviour::run(runtime, &spec, file, &tests).await {
            if result.failures.is_empty() {
                passed += 1;
                println!("  ok    {}", result.name);
            } else {
                failed += 1;
                println!("  FAIL  {}", result.name);
                for failure in &result.failures {
                    println!("        - {failure}");
                }
            }
        }
    }
    println!(
        "{passed} passed, {failed} failed{}",
        if broken > 0 {
            format!(", {broken} file(s) could not run")
        } else {
            String::new()
        }
    );
    Ok(if failed == 0 && broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Parses `Name: value`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("`{text}` is not a header `Name: value`")),
    }
}

/// The default compile cache of `tocsin test`: `$XDG_CACHE_HOME/tocsin`, else
/// `$HOME/.cache/tocsin`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .map(|base| base.join("tocsin"))
}
