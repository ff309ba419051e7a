//! Behaviour tests of a pipeline, written as TOML next to it and run as dry runs.
//!
//! `backup.toml` is tested by `backup.test.toml` in the same directory (such files are never
//! loaded as pipelines). Each `[[case]]` feeds inputs through a fresh [`DryRun`] — plugin state
//! carries over between the inputs of one case, not between cases — and checks what came out:
//!
//! ```toml
//! [[case]]
//! name  = "a failed job pages the ops room"
//! input = '{"severity": "error", "summary": "backup failed", "body": "exit 2"}'
//!
//! [[case.expect]]            # one entry per message the sink gets, in order
//! sink          = "ops-room"
//! severity      = "error"
//! summary       = "backup failed"
//! sends         = ["PUT https://matrix.example.org/", "backup failed"]
//!
//! [[case]]
//! name           = "info is not paged"
//! message        = { severity = "info", body = "all fine" }
//! no_output_from = ["ops-room"]
//! ```
//!
//! See `docs/testing-pipelines.md` for every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tocsin_config::{PipelineSpec, Trigger, BEHAVIOUR_TEST_SUFFIX};
use tocsin_message::{Message, Severity};
use tocsin_runtime::{DeliveryOutcome, Runtime};

use crate::dry_run::{
    redact, show_request, Delivery, DryRun, Input, SampleMessage, SourceStep, Trace,
};

/// A behaviour-test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The cases, run in order, each on a fresh dry run of the pipeline.
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

/// One `[[case]]`: inputs and what must come out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// Ingest pipelines: one request body.
    pub input: Option<String>,
    /// Ingest pipelines: several request bodies, in order.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Ingest pipelines: a file holding the request body, relative to the test file.
    pub input_file: Option<String>,
    /// Request headers for `input`/`inputs`/`input_file`, e.g. `{ "X-GitHub-Event" = "push" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A message that enters the filters as if the source had made it (any pipeline).
    pub message: Option<SampleMessage>,
    /// Several such messages, in order.
    #[serde(default)]
    pub messages: Vec<SampleMessage>,
    /// Scheduled pipelines: poll the source once, for real (it reads its granted directories).
    #[serde(default)]
    pub poll: bool,
    /// Pipelines with `expect`: the absence alert of the reporter with these key labels
    /// (`{ host = "db1" }`), then its resolution, as the pipeline raises them.
    pub absent: Option<BTreeMap<String, String>>,
    /// `@tocsin` pipelines: one of tocsin's own events, announced then resolved, e.g.
    /// `{ event = "dead_letter", pipeline = "alerts", queue = "chat" }`.
    pub tocsin_event: Option<TocsinEventCase>,
    /// The decoder must refuse the (last) request with this status.
    pub rejected: Option<u16>,
    /// One entry per message a sink must get, in the order it gets them. A sink named here
    /// gets exactly as many messages as it has entries.
    #[serde(default)]
    pub expect: Vec<Expect>,
    /// Stages that must let nothing out: a sink's name (it gets no message), `source`, or
    /// `filter.N` (the N-th filter, from 0, drops everything it is given).
    #[serde(default)]
    pub no_output_from: Vec<String>,
    /// The time the case runs at, RFC 3339 (`"2026-12-07T02:30:00+01:00"`), for the
    /// pipeline's maintenance windows [default: now].
    pub at: Option<String>,
}

/// A case's `tocsin_event`: which condition, about what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TocsinEventCase {
    /// `dead_letter`, `pipeline_failed`, `pipeline_invalid`, `plugin_stopped`,
    /// `sink_retrying`, `queue_budget` or `disk_reserve`.
    pub event: String,
    /// The pipeline it is about [default: `alerts`].
    #[serde(default = "default_event_pipeline")]
    pub pipeline: String,
    /// `dead_letter`: the queue [default: `chat`].
    pub queue: Option<String>,
    /// `sink_retrying`: the sink [default: `chat`].
    pub sink: Option<String>,
    /// `plugin_stopped`: the stage [default: `filter.0`].
    pub stage: Option<String>,
}

fn default_event_pipeline() -> String {
    "alerts".into()
}

/// One message a sink must get.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The sink's name.
    pub sink: String,
    /// The message's severity.
    pub severity: Option<String>,
    /// The whole summary.
    pub summary: Option<String>,
    /// Text the summary contains.
    pub summary_contains: Option<String>,
    /// The whole body.
    pub body: Option<String>,
    /// Text the body contains.
    pub body_contains: Option<String>,
    /// Labels the message has, with these values (others may exist).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Metrics the message has, with these values.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Text that must appear in what the sink would send: its HTTP requests (method, URL,
    /// headers, body; secrets REDACTED), the bytes it would write, what it would print.
    #[serde(default)]
    pub sends: Vec<String>,
    /// Text that must not appear in what the sink would send (a summary said twice, a
    /// secret, a field that should be gone).
    #[serde(default)]
    pub not_sends: Vec<String>,
    /// What the sink must answer: `delivered` (the default), `retry`, `rate-limited`,
    /// `permanent`.
    pub outcome: Option<String>,
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Why it failed; empty when it passed.
    pub failures: Vec<String>,
}

/// The behaviour-test file of a pipeline file: `x.toml` → `x.test.toml`.
pub fn tests_of(pipeline_file: &Path) -> PathBuf {
    let stem = pipeline_file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    pipeline_file.with_file_name(format!("{stem}{BEHAVIOUR_TEST_SUFFIX}"))
}

/// The pipeline file a behaviour-test file tests: `x.test.toml` → `x.toml`; `None` when the
/// name does not end in `.test.toml`.
pub fn pipeline_of(test_file: &Path) -> Option<PathBuf> {
    let name = test_file.file_name()?.to_str()?;
    let stem = name.strip_suffix(BEHAVIOUR_TEST_SUFFIX)?;
    Some(test_file.with_file_name(format!("{stem}.toml")))
}

/// The behaviour-test files of a directory, sorted.
pub fn test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| pipeline_of(p).is_some() && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a behaviour-test file; the error names the file and, for TOML errors, the line.
pub fn load(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: TestFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!(":{line}")
            })
            .unwrap_or_default();
        format!("{}{at}: {}", path.display(), e.message())
    })?;
    if file.cases.is_empty() {
        return Err(format!("{}: no [[case]]", path.display()));
    }
    Ok(file)
}

/// Runs every case of `file` (read from `path`) against `spec`.
pub async fn run(
    runtime: &Runtime,
    spec: &PipelineSpec,
    path: &Path,
    file: &TestFile,
) -> Vec<CaseResult> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut results = Vec::new();
    for case in &file.cases {
        let failures = match run_case(runtime, spec, base, case).await {
            Ok(failures) => failures,
            Err(e) => vec![e],
        };
        results.push(CaseResult {
            name: case.name.clone(),
            failures,
        });
    }
    results
}

async fn run_case(
    runtime: &Runtime,
    spec: &PipelineSpec,
    base: &Path,
    case: &Case,
) -> Result<Vec<String>, String> {
    check_names(spec, case)?;
    let at_ms = match &case.at {
        Some(at) => {
            let t = chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
                format!("at = {at:?}: {e} (write a time as \"2026-12-07T02:30:00+01:00\")")
            })?;
            Some(u64::try_from(t.timestamp_millis()).unwrap_or(0))
        }
        None => None,
    };
    let inputs = inputs(spec, base, case, at_ms.unwrap_or_else(tocsin_queue::now_ms))?;
    let mut dry = DryRun::load(runtime, spec.clone()).await?;
    dry.at_ms = at_ms;
    let secrets = dry.secret_values();
    let mut traces = Vec::new();
    for input in inputs {
        traces.push(dry.run(input).await);
    }
    // Grouping sinks send once the case's inputs are in, as after their groups' `wait`.
    let grouped = dry.flush_groups().await;
    if let Some(last) = traces.last_mut() {
        last.deliveries.extend(grouped.into_iter().flatten());
    }
    Ok(check(case, &traces, &secrets))
}

/// Refuses names that are not stages of the pipeline (a typo would make a check vacuous).
fn check_names(spec: &PipelineSpec, case: &Case) -> Result<(), String> {
    let sinks: Vec<&str> = spec.sinks.iter().map(|s| s.name.as_str()).collect();
    let known_sink = |name: &str| {
        if sinks.contains(&name) {
            Ok(())
        } else {
            Err(format!(
                "`{name}` is not a sink of {} (its sinks: {})",
                spec.name,
                sinks.join(", ")
            ))
        }
    };
    for expect in &case.expect {
        known_sink(&expect.sink)?;
        if let Some(severity) = &expect.severity {
            parse_severity(severity)?;
        }
        if let Some(outcome) = &expect.outcome {
            if !["delivered", "retry", "rate-limited", "permanent"].contains(&outcome.as_str()) {
                return Err(format!(
                    "outcome `{outcome}` is not one of delivered, retry, rate-limited, permanent"
                ));
            }
        }
    }
    for name in &case.no_output_from {
        let is_filter = name
            .strip_prefix("filter.")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < spec.filters.len());
        if name != "source" && !is_filter {
            known_sink(name).map_err(|e| {
                format!(
                    "{e}; `no_output_from` takes a sink, `source` or `filter.0`..`filter.{}`",
                    spec.filters.len().saturating_sub(1)
                )
            })?;
        }
    }
    Ok(())
}

fn parse_severity(name: &str) -> Result<Severity, String> {
    Severity::parse(name)
        .ok_or_else(|| format!("severity `{name}` is not one of none, info, warning, error, alert"))
}

/// The case's inputs: exactly one kind, fitting the pipeline's source; `now` is the time the
/// case runs at.
fn inputs(spec: &PipelineSpec, base: &Path, case: &Case, now: u64) -> Result<Vec<Input>, String> {
    let mut bodies: Vec<Vec<u8>> = case
        .input
        .iter()
        .chain(&case.inputs)
        .map(|text| text.clone().into_bytes())
        .collect();
    if let Some(file) = &case.input_file {
        let path = base.join(file);
        bodies
            .push(std::fs::read(&path).map_err(|e| format!("input_file {}: {e}", path.display()))?);
    }
    let messages: Vec<&SampleMessage> = case.message.iter().chain(&case.messages).collect();
    let kinds = [
        !bodies.is_empty(),
        !messages.is_empty(),
        case.poll,
        case.absent.is_some(),
        case.tocsin_event.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(
            "give exactly one kind of input: `input`/`inputs`/`input_file` (request bodies), \
             `message`/`messages`, `poll = true`, `absent` or `tocsin_event`"
                .into(),
        );
    }
    if let Some(labels) = &case.absent {
        return absence_pair(spec, labels, now);
    }
    if let Some(event) = &case.tocsin_event {
        return tocsin_event_pair(spec, event, now);
    }
    let ingest = matches!(spec.source.trigger, Trigger::Ingest(_));
    if !bodies.is_empty() && !ingest {
        return Err(format!(
            "{} is a scheduled pipeline: its source takes no request body (use `message` or `poll = true`)",
            spec.name
        ));
    }
    if case.poll && ingest {
        return Err(format!(
            "{} is an ingest pipeline: there is nothing to poll (use `input`)",
            spec.name
        ));
    }
    if case.poll {
        return Ok(vec![Input::Poll]);
    }
    let headers: Vec<(String, String)> = case
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !bodies.is_empty() {
        return Ok(bodies
            .into_iter()
            .map(|body| Input::Request {
                body,
                headers: headers.clone(),
            })
            .collect());
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(n, sample)| {
            sample
                .clone()
                .into_message(&format!("case-message-{n}"))
                .map(Input::Message)
        })
        .collect()
}

/// The absence alert of the reporter with key labels `given`, silent for exactly `every +
/// grace` at `now`, and its resolution when it reports then.
fn absence_pair(
    spec: &PipelineSpec,
    given: &BTreeMap<String, String>,
    now: u64,
) -> Result<Vec<Input>, String> {
    let Some(policy) = &spec.expect else {
        return Err(format!(
            "{} has no `expect`: it raises no absence alerts",
            spec.name
        ));
    };
    let mut wanted: Vec<&String> = policy.key_labels.iter().collect();
    wanted.sort();
    if given.keys().collect::<Vec<_>>() != wanted {
        return Err(format!(
            "`absent` names a reporter by the pipeline's expect.key_labels: [{}]",
            policy.key_labels.join(", ")
        ));
    }
    let labels: Vec<(String, String)> = policy
        .key_labels
        .iter()
        .map(|k| (k.clone(), given[k].clone()))
        .collect();
    let silence = policy.allowed_silence().as_millis() as u64;
    let seen = now.saturating_sub(silence);
    let alert = crate::absence::absence_message(&spec.name, policy, &labels, seen, seen, now);
    let absent = crate::absence::Absent {
        labels,
        silent_since_ms: seen,
        due_ms: now,
        raised_ms: now,
        severity: policy.severity,
        message_id: alert.id.clone(),
    };
    let resolution = crate::absence::resolution_message(
        &spec.name,
        &absent,
        crate::absence::Ended::Reported(now),
        now,
    );
    Ok(vec![Input::Message(alert), Input::Message(resolution)])
}

/// The alert of one of tocsin's own events and its resolution, as the pipeline's `@tocsin`
/// source announces them.
fn tocsin_event_pair(
    spec: &PipelineSpec,
    case: &TocsinEventCase,
    now: u64,
) -> Result<Vec<Input>, String> {
    let Trigger::Tocsin(source) = &spec.source.trigger else {
        return Err(format!(
            "{}'s source is not `@tocsin`: it hears no tocsin events",
            spec.name
        ));
    };
    let event = tocsin_config::self_events::SelfEvent::parse(&case.event)?;
    let part = case
        .queue
        .as_deref()
        .or(case.sink.as_deref())
        .or(case.stage.as_deref())
        .unwrap_or(match event {
            tocsin_config::self_events::SelfEvent::PluginStopped => "filter.0",
            _ => "chat",
        });
    let pair =
        crate::self_events::sample_pair(source, &spec.name, event, &case.pipeline, part, now)?;
    Ok(pair.into_iter().map(Input::Message).collect())
}

/// Compares what the traces show with what the case expects; every mismatch, in words.
fn check(case: &Case, traces: &[Trace], secrets: &[String]) -> Vec<String> {
    let mut failures = Vec::new();
    for trace in traces {
        if let Some((stage, why)) = &trace.failure {
            failures.push(format!("{stage} failed: {why}"));
        }
    }
    let last_rejection = traces.iter().rev().find_map(|t| match &t.source {
        SourceStep::Rejected(r) => Some(r),
        _ => None,
    });
    match (case.rejected, last_rejection) {
        (Some(status), Some(r)) if r.status == status => {}
        (Some(status), Some(r)) => failures.push(format!(
            "the decoder refused with {} ({}), expected {status}",
            r.status, r.reason
        )),
        (Some(status), None) => failures.push(format!(
            "the decoder accepted the request, expected a {status} refusal"
        )),
        (None, Some(r)) => failures.push(format!(
            "the decoder refused the request: {} {}",
            r.status, r.reason
        )),
        (None, None) => {}
    }
    let deliveries: Vec<&Delivery> = traces.iter().flat_map(|t| &t.deliveries).collect();
    let mut sinks: Vec<&str> = case.expect.iter().map(|e| e.sink.as_str()).collect();
    sinks.dedup();
    sinks.sort_unstable();
    sinks.dedup();
    for sink in sinks {
        let got: Vec<&&Delivery> = deliveries.iter().filter(|d| d.sink == sink).collect();
        let want: Vec<&Expect> = case.expect.iter().filter(|e| e.sink == sink).collect();
        if got.len() != want.len() {
            failures.push(format!(
                "sink `{sink}` got {} message(s), expected {}{}",
                got.len(),
                want.len(),
                describe(got.iter().map(|d| &d.message))
            ));
            continue;
        }
        for (n, (delivery, expect)) in got.iter().zip(want).enumerate() {
            for problem in compare(expect, delivery, secrets) {
                failures.push(format!("sink `{sink}`, message {}: {problem}", n + 1));
            }
        }
    }
    for name in &case.no_output_from {
        let leaked: Vec<&Message> = if name == "source" {
            traces
                .iter()
                .flat_map(|t| match &t.source {
                    SourceStep::Produced(m) => m.iter().collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .collect()
        } else if name.starts_with("filter.") {
            traces
                .iter()
                .flat_map(|t| t.filters.iter().filter(|f| &f.stage == name))
                .flat_map(|f| &f.outputs)
                .collect()
        } else {
            deliveries
                .iter()
                .filter(|d| &d.sink == name)
                .map(|d| &d.message)
                .collect()
        };
        if !leaked.is_empty() {
            failures.push(format!(
                "`{name}` let {} message(s) out, expected none{}",
                leaked.len(),
                describe(leaked.into_iter())
            ));
        }
    }
    failures
}

/// ": id (severity) summary; …" for a failure message.
fn describe<'a>(messages: impl Iterator<Item = &'a Message>) -> String {
    let shown: Vec<String> = messages
        .map(|m| {
            format!(
                "{} ({}) {}",
                m.id,
                m.severity.as_str(),
                m.summary.as_deref().unwrap_or(&m.body)
            )
        })
        .collect();
    if shown.is_empty() {
        String::new()
    } else {
        format!(": {}", shown.join("; "))
    }
}

fn compare(expect: &Expect, delivery: &Delivery, secrets: &[String]) -> Vec<String> {
    let m = &delivery.message;
    let mut problems = Vec::new();
    if let Some(severity) = &expect.severity {
        if parse_severity(severity).ok() != Some(m.severity) {
            problems.push(format!(
                "severity is {}, expected {severity}",
                m.severity.as_str()
            ));
        }
    }
    let summary = m.summary.as_deref().unwrap_or("");
    if let Some(want) = &expect.summary {
        if summary != want {
            problems.push(format!("summary is {summary:?}, expected {want:?}"));
        }
    }
    if let Some(want) = &expect.summary_contains {
        if !summary.contains(want.as_str()) {
            problems.push(format!("summary {summary:?} does not contain {want:?}"));
        }
    }
    if let Some(want) = &expect.body {
        if &m.body != want {
            problems.push(format!("body is {:?}, expected {want:?}", m.body));
        }
    }
    if let Some(want) = &expect.body_contains {
        if !m.body.contains(want.as_str()) {
            problems.push(format!("body {:?} does not contain {want:?}", m.body));
        }
    }
    for (key, want) in &expect.labels {
        match m.label(key) {
            Some(value) if value == want => {}
            got => problems.push(format!("label {key} is {got:?}, expected {want:?}")),
        }
    }
    for (key, want) in &expect.metrics {
        let got = m.metrics.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        if got != Some(*want) {
            problems.push(format!("metric {key} is {got:?}, expected {want}"));
        }
    }
    let outcome = match &delivery.outcome {
        Ok(DeliveryOutcome::Delivered) => "delivered".to_string(),
        Ok(DeliveryOutcome::Retryable(_)) => "retry".to_string(),
        Ok(DeliveryOutcome::RateLimited(_)) => "rate-limited".to_string(),
        Ok(DeliveryOutcome::Permanent(_)) => "permanent".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    let want_outcome = expect.outcome.as_deref().unwrap_or("delivered");
    if outcome != want_outcome {
        problems.push(format!(
            "the sink answered {outcome}{}, expected {want_outcome}",
            match &delivery.outcome {
                Ok(DeliveryOutcome::Retryable(why) | DeliveryOutcome::Permanent(why)) =>
                    format!(" ({why})"),
                _ => String::new(),
            }
        ));
    }
    if !expect.sends.is_empty() || !expect.not_sends.is_empty() {
        let sent = sent_text(delivery, secrets);
        for want in &expect.sends {
            if !sent.contains(want.as_str()) {
                problems.push(format!(
                    "what it would send does not contain {want:?}; it would send:\n{}",
                    indent(&sent)
                ));
            }
        }
        for unwanted in &expect.not_sends {
            if sent.contains(unwanted.as_str()) {
                problems.push(format!(
                    "what it would send contains {unwanted:?}; it would send:\n{}",
                    indent(&sent)
                ));
            }
        }
    }
    problems
}

/// Everything a delivery would have let out, as text, secrets REDACTED.
pub fn sent_text(delivery: &Delivery, secrets: &[String]) -> String {
    let mut text = String::new();
    for request in &delivery.requests {
        text.push_str(&show_request(request, secrets));
    }
    for (path, bytes) in &delivery.written {
        text.push_str(&format!(
            "write {path}:\n{}",
            redact(&String::from_utf8_lossy(bytes), secrets)
        ));
    }
    if !delivery.stdout.is_empty() {
        text.push_str(&format!(
            "stdout:\n{}",
            redact(&String::from_utf8_lossy(&delivery.stdout), secrets)
        ));
    }
    text
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_aux::serde_introspection::serde_introspect;

    /// The rows of the table under `heading` in docs/testing-pipelines.md: its first column.
    fn documented(heading: &str) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/testing-pipelines.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let section = doc
            .split("\n### ")
            .find(|s| s.starts_with(heading))
            .unwrap_or_else(|| panic!("no section {heading}"));
        section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`').map(|(name, _)| name.to_string()))
            .collect()
    }

    #[test]
    fn the_test_file_reference_documents_exactly_the_fields_the_parser_accepts() {
        for (heading, fields) in [
            ("`[[case]]`", serde_introspect::<Case>()),
            ("`[[case.expect]]`", serde_introspect::<Expect>()),
        ] {
            let mut accepted: Vec<&str> = fields.to_vec();
            accepted.sort_unstable();
            let doc = documented(heading);
            let mut shown: Vec<&str> = doc.iter().map(String::as_str).collect();
            shown.sort_unstable();
            assert_eq!(
                shown, accepted,
                "docs/testing-pipelines.md, {heading}: documented fields (left) differ from \
                 the fields behaviour.rs accepts (right)"
            );
        }
    }

    #[test]
    fn test_files_pair_with_their_pipelines() {
        let pipeline = Path::new("pipelines/backup.toml");
        assert_eq!(tests_of(pipeline), Path::new("pipelines/backup.test.toml"));
        assert_eq!(pipeline_of(&tests_of(pipeline)).as_deref(), Some(pipeline));
        assert_eq!(pipeline_of(Path::new("pipelines/backup.toml")), None);
    }
}
