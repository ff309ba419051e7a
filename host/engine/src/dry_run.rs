//! A dry run of a whole pipeline (`tocsin test PIPELINE`): what it would do with one input.
//!
//! The source (a poll, or a decode of a request body) and the filters run for real, with the
//! pipeline's own grants, limits and config. The sinks run too, but nothing leaves the machine:
//! their outbound HTTP is recorded and answered `200 {}`, a granted stdout is captured, and
//! every write grant is remapped to a scratch directory that is deleted afterwards. Plugin
//! state lives in memory for the life of the [`DryRun`], so a sequence of inputs sees the state
//! the earlier ones left (a second identical alert is deduplicated, as in production).
//!
//! Secrets are resolved as `tocsin run` would; one that is not set on this machine is replaced
//! by a placeholder (and said so in [`DryRun::notes`]), so a pipeline can be tried before its
//! secrets are in place. Every secret value is shown as `REDACTED`. The ingest `auth` is not
//! checked: the input is what the decoder would see after it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tocsin_config::{DirGrant, PipelineSpec, Route, StageSpec, Trigger};
use tocsin_message::{idempotency_key, Message, Severity};
use tocsin_runtime::http_policy::{DryRunRecorder, RecordedRequest};
use tocsin_runtime::{
    CallError, DeliveryOutcome, IngestRequest, PluginKind, Rejection, Runtime, Stage, StageContext,
    StateChanges, StateReader,
};

use crate::filtering::number_outputs;
use crate::pipeline::{load_stage_plugin, source_kind};

/// A message as a sample file or an output line shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleMessage {
    /// Defaults to `sample-1`.
    #[serde(default)]
    pub id: Option<String>,
    /// Defaults to now.
    #[serde(default)]
    pub timestamp_ms: Option<u64>,
    /// `none`, `info`, `warning`, `error` or `alert`; defaults to `none`.
    #[serde(default)]
    pub severity: Option<String>,
    /// Short title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The text.
    pub body: String,
    /// Text attributes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Numeric measurements.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Where a person reads more (an http(s) URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The alert's identity, shared by its firing and resolved messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SampleMessage {
    /// The message, with `default_id` when the sample gives none.
    pub fn into_message(self, default_id: &str) -> Result<Message, String> {
        let severity = match self.severity.as_deref() {
            None => Severity::None,
            Some(name) => Severity::parse(name).ok_or_else(|| {
                format!("severity `{name}` is not one of none, info, warning, error, alert")
            })?,
        };
        Ok(Message {
            id: self.id.unwrap_or_else(|| default_id.into()),
            timestamp_ms: self.timestamp_ms.unwrap_or_else(tocsin_queue::now_ms),
            severity,
            summary: self.summary,
            body: self.body,
            labels: self.labels.into_iter().collect(),
            metrics: self.metrics.into_iter().collect(),
            payload: None,
            link: self.link,
            key: self.key,
        })
    }

    /// A message as an output line shows it.
    pub fn from_message(m: &Message) -> Self {
        SampleMessage {
            id: Some(m.id.clone()),
            timestamp_ms: Some(m.timestamp_ms),
            severity: Some(m.severity.as_str().into()),
            summary: m.summary.clone(),
            body: m.body.clone(),
            labels: m.labels.iter().cloned().collect(),
            metrics: m.metrics.iter().cloned().collect(),
            link: m.link.clone(),
            key: m.key.clone(),
        }
    }
}

/// What enters the pipeline.
#[derive(Debug, Clone)]
pub enum Input {
    /// An HTTP request body (and headers) for an ingest pipeline's decoder.
    Request {
        /// The body.
        body: Vec<u8>,
        /// Header names and values (names are lower-cased before the decoder sees them).
        headers: Vec<(String, String)>,
    },
    /// A message that enters the filters as if the source had produced it.
    Message(Message),
    /// Poll a scheduled pipeline's source once, for real.
    Poll,
}

/// What the source stage did.
#[derive(Debug, Clone)]
pub enum SourceStep {
    /// The source was polled or the decoder decoded: these messages.
    Produced(Vec<Message>),
    /// The decoder refused the request (the client would get this status).
    Rejected(Rejection),
    /// The input was a message; the source did not run.
    Skipped(Message),
}

/// One filter's outputs, over every message that reached it.
#[derive(Debug, Clone)]
pub struct FilterStep {
    /// `filter.0`, `filter.1`, …
    pub stage: String,
    /// The plugin as the file names it.
    pub plugin: String,
    /// How many messages it was given.
    pub inputs: usize,
    /// What it passed on.
    pub outputs: Vec<Message>,
}

/// One sink's handling of one message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The sink's name.
    pub sink: String,
    /// The message it was given.
    pub message: Message,
    /// What the sink answered, or why the call failed.
    pub outcome: Result<DeliveryOutcome, String>,
    /// The HTTP requests it would have sent.
    pub requests: Vec<RecordedRequest>,
    /// Files it would have written: (path as the plugin sees it, bytes added).
    pub written: Vec<(String, Vec<u8>)>,
    /// What it would have printed on stdout.
    pub stdout: Vec<u8>,
}

/// Everything one input did, stage by stage.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The source stage.
    pub source: SourceStep,
    /// Each filter, in order (stops at a failing one).
    pub filters: Vec<FilterStep>,
    /// The stage that failed, and why; later stages did not run.
    pub failure: Option<(String, String)>,
    /// Each routed (sink, message) pair, in order.
    pub deliveries: Vec<Delivery>,
    /// Messages a sink's `match` did not take: (sink, message id).
    pub unrouted: Vec<(String, String)>,
    /// Messages a maintenance window muted for a sink: (sink, message id, window id).
    pub muted: Vec<(String, String, String)>,
    /// Messages held for a grouping sink until the run's end: (sink, message id).
    pub grouped: Vec<(String, String)>,
    /// The `Content-Type` the request was given because the input named none (see
    /// [`sniff_content_type`]).
    pub assumed_content_type: Option<&'static str>,
}

impl Trace {
    /// The messages that came out of the last filter (or the source, without filters).
    pub fn outputs(&self) -> Vec<&Message> {
        match self.filters.last() {
            Some(step) => step.outputs.iter().collect(),
            None => match &self.source {
                SourceStep::Produced(messages) => messages.iter().collect(),
                SourceStep::Skipped(message) => vec![message],
                SourceStep::Rejected(_) => Vec::new(),
            },
        }
    }
}

/// A pipeline loaded for dry runs.
pub struct DryRun {
    spec: PipelineSpec,
    /// `None` for the built-in `@tocsin` source.
    source: Option<Stage>,
    filters: Vec<Stage>,
    sinks: Vec<DrySink>,
    state: Arc<MemoryState>,
    /// Placeholder secrets: (secret name, value used), to redact.
    placeholders: Vec<(String, String)>,
    /// Things the operator should know about this dry run (placeholder secrets, …).
    pub notes: Vec<String>,
    /// The time the run takes as now for maintenance windows (ms since the epoch); the
    /// clock's when `None`.
    pub at_ms: Option<u64>,
    _scratch: tempfile::TempDir,
}

struct DrySink {
    name: String,
    route: Route,
    stage: Stage,
    recorder: Arc<DryRunRecorder>,
    /// Remapped write grants: (guest path, scratch directory).
    writes: Vec<(String, PathBuf)>,
    /// Its `group`, if it groups.
    group: Option<tocsin_config::GroupPolicy>,
    /// A grouping sink's messages of this run, until [`DryRun::flush_groups`].
    held: Vec<Message>,
}

impl DryRun {
    /// Loads every plugin of `spec` (digests and kinds checked), remaps write grants to a
    /// scratch directory and runs the filters' and sinks' `init`, as `tocsin run` would at
    /// start (the source's runs when it is first called).
    pub async fn load(runtime: &Runtime, spec: PipelineSpec) -> Result<Self, String> {
        let scratch = scratch_dir("tocsin-dry-run-")?;
        let state = Arc::new(MemoryState::default());
        let mut builder = Builder::new(runtime, &spec.name, scratch.path(), &state);
        let source = match (&spec.source.stage, source_kind(&spec.source.trigger)) {
            (Some(stage), Some(kind)) => Some(builder.stage("source", stage, kind).await?.0),
            _ => None,
        };
        let mut filters = Vec::new();
        for (i, filter) in spec.filters.iter().enumerate() {
            let stage_name = format!("filter.{i}");
            filters.push(
                builder
                    .stage(&stage_name, filter, PluginKind::Filter)
                    .await?
                    .0,
            );
        }
        let mut sinks = Vec::new();
        for sink in &spec.sinks {
            let stage_name = format!("sink.{}", sink.name);
            let (stage, recorder, writes) = builder
                .stage(&stage_name, &sink.stage, PluginKind::Sink)
                .await?;
            sinks.push(DrySink {
                name: sink.name.clone(),
                route: sink.route.clone(),
                stage,
                recorder,
                writes,
                group: sink.group.clone(),
                held: Vec::new(),
            });
        }
        let Builder {
            placeholders,
            notes,
            ..
        } = builder;
        let mut dry = DryRun {
            spec,
            source,
            filters,
            sinks,
            state,
            placeholders,
            notes,
            at_ms: None,
            _scratch: scratch,
        };
        if matches!(dry.spec.source.trigger, Trigger::Ingest(_)) {
            dry.notes.push(
                "the ingest `auth` is not checked in a dry run: the input is what the decoder \
                 sees once a request is let in"
                    .into(),
            );
        }
        // The source's `init` runs on its first poll or decode: a case that feeds a message
        // straight to the filters can run on a machine without the source's directories.
        for stage in dry
            .filters
            .iter_mut()
            .chain(dry.sinks.iter_mut().map(|s| &mut s.stage))
        {
            let name = stage.context().stage.clone();
            stage.start().await.map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(dry)
    }

    /// The pipeline it runs.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// Every secret value a dry run may show (granted and placeholder), for redaction.
    pub fn secret_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self
            .sinks
            .iter()
            .map(|s| &s.stage)
            .chain(&self.filters)
            .chain(self.source.iter())
            .flat_map(|stage| stage.context().secrets.iter().map(|(_, v)| v.clone()))
            .chain(self.placeholders.iter().map(|(_, v)| v.clone()))
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        values
    }

    /// Runs one input through the pipeline.
    pub async fn run(&mut self, input: Input) -> Trace {
        let mut trace = Trace {
            source: SourceStep::Produced(Vec::new()),
            filters: Vec::new(),
            failure: None,
            deliveries: Vec::new(),
            unrouted: Vec::new(),
            muted: Vec::new(),
            grouped: Vec::new(),
            assumed_content_type: None,
        };
        let produced = match self.run_source(input, &mut trace).await {
            Ok(step) => step,
            Err(e) => {
                trace.failure = Some(("source".into(), e));
                return trace;
            }
        };
        let mut current = match &produced {
            SourceStep::Produced(messages) => messages.clone(),
            SourceStep::Skipped(message) => vec![message.clone()],
            SourceStep::Rejected(_) => Vec::new(),
        };
        trace.source = produced;
        for (i, stage) in self.filters.iter_mut().enumerate() {
            let stage_name = format!("filter.{i}");
            let mut step = FilterStep {
                stage: stage_name.clone(),
                plugin: self.spec.filters[i].plugin.name.clone(),
                inputs: current.len(),
                outputs: Vec::new(),
            };
            for message in &current {
                match stage.process(message.clone()).await {
                    Ok((out, changes)) => {
                        self.state.apply(&stage_name, changes);
                        step.outputs.extend(number_outputs(&message.id, out));
                    }
                    Err(e) => {
                        trace.failure = Some((stage_name, e.to_string()));
                        trace.filters.push(step);
                        return trace;
                    }
                }
            }
            current = step.outputs.clone();
            trace.filters.push(step);
        }
        let now = self.at_ms.unwrap_or_else(tocsin_queue::now_ms);
        for message in &current {
            for sink in &mut self.sinks {
                if !sink.route.matches(message) {
                    trace.unrouted.push((sink.name.clone(), message.id.clone()));
                    continue;
                }
                // Silences live in the server's store; a dry run knows only the file's windows.
                if let Some(window) = self
                    .spec
                    .maintenance
                    .iter()
                    .find(|w| w.mutes(&sink.name, message, now))
                {
                    let muted = (sink.name.clone(), message.id.clone(), window.id());
                    trace.muted.push(muted);
                    continue;
                }
                if sink.group.is_some() {
                    // Its group waits for the rest of the run: `flush_groups`.
                    sink.held.push(message.clone());
                    trace.grouped.push((sink.name.clone(), message.id.clone()));
                    continue;
                }
                let delivery = sink.deliver(&self.spec.name, message, &self.state).await;
                trace.deliveries.push(delivery);
            }
        }
        trace
    }

    /// Sends what grouping sinks held during the runs since the last flush, as the server
    /// would once their groups' `wait` ended: per group (in the order its first message came),
    /// notifications of at most `max_messages`, each one call of the sink. Per notification, a
    /// [`Delivery`] per member, each with the notification's requests.
    pub async fn flush_groups(&mut self) -> Vec<Vec<Delivery>> {
        let mut deliveries = Vec::new();
        for sink in &mut self.sinks {
            let Some(policy) = sink.group.clone() else {
                continue;
            };
            let held = std::mem::take(&mut sink.held);
            // (its key, its labels, its members), in the order their first message came.
            type Forming = (String, Vec<(String, String)>, Vec<Message>);
            let mut groups: Vec<Forming> = Vec::new();
            for message in held {
                let labels = crate::group_delivery::group_labels(&message, &policy.by);
                let key = crate::group_delivery::group_key(&labels);
                match groups.iter_mut().find(|(k, _, _)| *k == key) {
                    Some((_, _, members)) => members.push(message),
                    None => groups.push((key, labels, vec![message])),
                }
            }
            for (key, labels, members) in groups {
                let mut firing = std::collections::BTreeSet::new();
                for (sequence, chunk) in members.chunks(policy.max_messages.max(1)).enumerate() {
                    for message in chunk {
                        crate::group_delivery::note_firing(&mut firing, message);
                    }
                    let info = tocsin_runtime::GroupInfo {
                        labels: labels.clone(),
                        key: key.clone(),
                        sequence: sequence as u32,
                        firing: firing.len() as u32,
                    };
                    deliveries.push(
                        sink.deliver_group(&self.spec.name, chunk, &info, &self.state)
                            .await,
                    );
                }
            }
        }
        deliveries
    }

    async fn run_source(&mut self, input: Input, trace: &mut Trace) -> Result<SourceStep, String> {
        let result: Result<SourceStep, CallError> = match (input, &mut self.source) {
            (Input::Message(message), _) => return Ok(SourceStep::Skipped(message)),
            (_, None) => {
                return Err(
                    "the @tocsin source reports tocsin's own events: give a message (or, in a \
                     behaviour case, `tocsin_event`)"
                        .into(),
                )
            }
            (Input::Poll, Some(source)) => {
                if !matches!(self.spec.source.trigger, Trigger::Schedule(_)) {
                    return Err(
                        "an ingest pipeline's source is fed by requests: give a request body"
                            .into(),
                    );
                }
                source
                    .poll(tocsin_queue::now_ms())
                    .await
                    .map(|(messages, changes)| {
                        self.state.apply("source", changes);
                        SourceStep::Produced(messages)
                    })
            }
            (Input::Request { body, headers }, Some(source)) => {
                if !matches!(self.spec.source.trigger, Trigger::Ingest(_)) {
                    return Err(
                        "a scheduled pipeline's source takes no request: give a message, or poll"
                            .into(),
                    );
                }
                let (request, assumed) =
                    sample_request(format!("/ingest/{}", self.spec.name), headers, body);
                trace.assumed_content_type = assumed;
                source.decode(&request).await.map(|(decoded, changes)| {
                    self.state.apply("source", changes);
                    match decoded {
                        Ok(mut messages) => {
                            crate::ingest::derive_missing_ids(&request.body, &mut messages);
                            SourceStep::Produced(messages)
                        }
                        Err(rejection) => SourceStep::Rejected(rejection),
                    }
                })
            }
        };
        result.map_err(|e| e.to_string())
    }
}

/// The request a decoder gets for a sample body posted to `path` with `headers` (`Name`,
/// `value`), as the live endpoint would hand it over: names in lower case, without the headers
/// that carry credentials, and with the content type the body looks like when none was given
/// (returned, so the caller can say what it assumed).
pub fn sample_request(
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> (IngestRequest, Option<&'static str>) {
    let mut headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .filter(|(name, _)| !crate::ingest::is_credential_header(name))
        .collect();
    let mut body = body;
    let mut assumed = None;
    if !headers.iter().any(|(name, _)| name == "content-type") {
        let content_type;
        (body, content_type) = as_posted(body);
        assumed = Some(content_type);
        headers.push(("content-type".into(), content_type.into()));
    }
    let request = IngestRequest {
        method: "POST".into(),
        path,
        headers,
        body,
    };
    (request, assumed)
}

/// A sample request body that names no content type, as a client would post it: with the
/// content type it looks like ([`sniff_content_type`]), and for form fields without line
/// breaks — `curl -d @file` drops them, and an editor leaves one at the end of a file, which
/// would otherwise end the last field's value.
pub fn as_posted(mut body: Vec<u8>) -> (Vec<u8>, &'static str) {
    let content_type = sniff_content_type(&body);
    if content_type == FORM {
        body.retain(|b| *b != b'\n' && *b != b'\r');
    }
    (body, content_type)
}

/// Form encoding, what `curl -d` sends.
const FORM: &str = "application/x-www-form-urlencoded";

/// The `Content-Type` a client posting `body` would most likely have sent, for a sample that
/// names none: JSON for a JSON document, form encoding for `name=value&…` (what `curl -d`
/// sends), plain text otherwise. The live endpoint hands the decoder whatever the client sent;
/// a dry run must guess, and says what it guessed.
pub fn sniff_content_type(body: &[u8]) -> &'static str {
    const JSON: &str = "application/json";
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return JSON;
    }
    let text = body.trim_ascii();
    let form_byte = |b: &u8| b.is_ascii_alphanumeric() || b"%+-_.~*=&;:/,@!$'()".contains(b);
    let looks_like_form = !text.is_empty()
        && text.iter().all(form_byte)
        && text
            .split(|b| *b == b'&')
            .all(|pair| pair.contains(&b'=') && !pair.starts_with(b"="));
    if looks_like_form {
        FORM
    } else {
        "text/plain"
    }
}

impl DrySink {
    /// One group notification: a [`Delivery`] per member, each with its requests.
    async fn deliver_group(
        &mut self,
        pipeline: &str,
        members: &[Message],
        info: &tocsin_runtime::GroupInfo,
        state: &MemoryState,
    ) -> Vec<Delivery> {
        let before = file_sizes(&self.writes);
        let key =
            crate::group_delivery::notification_key(pipeline, &self.name, &info.key, info.sequence);
        let stage_name = format!("sink.{}", self.name);
        let refs: Vec<&Message> = members.iter().collect();
        let outcome = match self.stage.deliver_group(&refs, info, &key).await {
            Ok((outcome, changes)) => {
                if outcome == DeliveryOutcome::Delivered {
                    state.apply(&stage_name, changes);
                }
                Ok(outcome)
            }
            Err(e) => Err(e.to_string()),
        };
        let (requests, written, stdout) = (
            self.recorder.take(),
            written_since(&self.writes, &before),
            self.recorder.take_stdout(),
        );
        members
            .iter()
            .map(|message| Delivery {
                sink: self.name.clone(),
                message: message.clone(),
                outcome: outcome.clone(),
                requests: requests.clone(),
                written: written.clone(),
                stdout: stdout.clone(),
            })
            .collect()
    }

    async fn deliver(
        &mut self,
        pipeline: &str,
        message: &Message,
        state: &MemoryState,
    ) -> Delivery {
        let before = file_sizes(&self.writes);
        let key = idempotency_key(pipeline, &self.name, &message.id);
        let stage_name = format!("sink.{}", self.name);
        let outcome = match self.stage.deliver(message, &key).await {
            Ok((outcome, changes)) => {
                if outcome == DeliveryOutcome::Delivered {
                    state.apply(&stage_name, changes);
                }
                Ok(outcome)
            }
            Err(e) => Err(e.to_string()),
        };
        Delivery {
            sink: self.name.clone(),
            message: message.clone(),
            outcome,
            requests: self.recorder.take(),
            written: written_since(&self.writes, &before),
            stdout: self.recorder.take_stdout(),
        }
    }
}

/// Runs each stage's `init` on its config in the sandbox, as `tocsin run` does at start, with
/// nothing leaving the machine (outbound HTTP recorded and answered, writes to a scratch
/// directory, a secret not set here replaced by a placeholder): what `tocsin validate` checks
/// beyond the file, so that a pipeline it calls valid starts. A scheduled source's `init` runs
/// only with `with_source` (it may read directories that exist only where the pipeline runs:
/// `validate --env`); an ingest decoder's always. Every stage that refused, as (field, why):
/// `source`, `filter[0]`, `sink[1]`.
pub async fn init_each_stage(
    runtime: &Runtime,
    spec: &PipelineSpec,
    with_source: bool,
) -> Result<Vec<(String, String)>, String> {
    let scratch = scratch_dir("tocsin-dry-init-")?;
    let state = Arc::new(MemoryState::default());
    let mut builder = Builder::new(runtime, &spec.name, scratch.path(), &state);
    let mut stages: Vec<(String, String, &StageSpec, PluginKind)> = Vec::new();
    if let (Some(stage), Some(kind)) = (&spec.source.stage, source_kind(&spec.source.trigger)) {
        if with_source || kind == PluginKind::Decoder {
            stages.push(("source".into(), "source".into(), stage, kind));
        }
    }
    for (i, filter) in spec.filters.iter().enumerate() {
        stages.push((
            format!("filter[{i}]"),
            format!("filter.{i}"),
            filter,
            PluginKind::Filter,
        ));
    }
    for (i, sink) in spec.sinks.iter().enumerate() {
        let name = format!("sink.{}", sink.name);
        stages.push((format!("sink[{i}]"), name, &sink.stage, PluginKind::Sink));
    }
    let mut refused = Vec::new();
    for (field, name, stage_spec, kind) in stages {
        match builder.stage(&name, stage_spec, kind).await {
            Ok((mut stage, _, _)) => {
                if let Err(e) = stage.start().await {
                    refused.push((field, e.to_string()));
                }
            }
            Err(e) => refused.push((field, e)),
        }
    }
    Ok(refused)
}

/// Builds the dry-run stages of one pipeline.
struct Builder<'a> {
    runtime: &'a Runtime,
    pipeline: &'a str,
    scratch: &'a Path,
    state: &'a Arc<MemoryState>,
    placeholders: Vec<(String, String)>,
    notes: Vec<String>,
}

/// A scratch directory for a dry run's writes, deleted when dropped.
fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| format!("cannot create a scratch directory: {e}"))
}

impl<'a> Builder<'a> {
    fn new(
        runtime: &'a Runtime,
        pipeline: &'a str,
        scratch: &'a Path,
        state: &'a Arc<MemoryState>,
    ) -> Self {
        Builder {
            runtime,
            pipeline,
            scratch,
            state,
            placeholders: Vec::new(),
            notes: Vec::new(),
        }
    }

    async fn stage(
        &mut self,
        stage: &str,
        spec: &StageSpec,
        expected: PluginKind,
    ) -> Result<(Stage, Arc<DryRunRecorder>, Vec<(String, PathBuf)>), String> {
        let plugin = load_stage_plugin(self.runtime, stage, spec, expected).await?;
        let mut secrets = Vec::new();
        for (name, reference) in &spec.grants.secrets {
            let value = match reference.resolve() {
                Ok(value) if value.len() < MIN_REDACTABLE_SECRET => {
                    let placeholder = format!("dry-run-placeholder-for-{name}");
                    self.notes.push(format!(
                        "{stage}: secret `{name}` is only {} characters long, too short to find \
                         and redact in the output; the dry run uses a placeholder",
                        value.len()
                    ));
                    self.placeholders.push((name.clone(), placeholder.clone()));
                    placeholder
                }
                Ok(value) => value,
                Err(why) => {
                    let placeholder = format!("dry-run-placeholder-for-{name}");
                    self.notes.push(format!(
                        "{stage}: secret `{name}`: {why}; the dry run uses a placeholder"
                    ));
                    self.placeholders.push((name.clone(), placeholder.clone()));
                    placeholder
                }
            };
            secrets.push((name.clone(), value));
        }
        let mut grants = spec.grants.clone();
        let mut writes = Vec::new();
        for (i, dir) in grants.write_dirs.iter_mut().enumerate() {
            let scratch = self.scratch.join(stage).join(i.to_string());
            std::fs::create_dir_all(&scratch)
                .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
            writes.push((dir.guest.clone(), scratch.clone()));
            *dir = DirGrant {
                host: scratch,
                guest: dir.guest.clone(),
            };
        }
        let recorder = Arc::new(DryRunRecorder::default());
        let ctx = StageContext {
            pipeline: self.pipeline.to_string(),
            stage: stage.to_string(),
            config_json: spec.config_json.clone(),
            grants,
            limits: spec.limits,
            secrets: Arc::new(secrets),
            state: Arc::new(StageState {
                all: self.state.clone(),
                stage: stage.to_string(),
            }),
            dry_run: Some(recorder.clone()),
            control: None,
        };
        Ok((Stage::new(self.runtime, plugin, ctx), recorder, writes))
    }
}

/// Secrets shorter than this are not used in a dry run: replacing every occurrence of `x` or
/// `org` by `REDACTED` would garble the output and, by where it cuts, reveal the value.
pub const MIN_REDACTABLE_SECRET: usize = 8;

/// Plugin state of a dry run: in memory, per stage.
#[derive(Default)]
struct MemoryState {
    values: Mutex<HashMap<(String, String), Vec<u8>>>,
}

impl MemoryState {
    fn apply(&self, stage: &str, changes: StateChanges) {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        for (key, value) in changes {
            match value {
                Some(value) => values.insert((stage.to_string(), key), value),
                None => values.remove(&(stage.to_string(), key)),
            };
        }
    }
}

struct StageState {
    all: Arc<MemoryState>,
    stage: String,
}

impl StateReader for StageState {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let values = self.all.values.lock().unwrap_or_else(|p| p.into_inner());
        Ok(values.get(&(self.stage.clone(), key.to_string())).cloned())
    }
}

/// Sizes of every file under the scratch directories, by host path.
fn file_sizes(writes: &[(String, PathBuf)]) -> BTreeMap<PathBuf, u64> {
    let mut sizes = BTreeMap::new();
    for (_, dir) in writes {
        collect_sizes(dir, &mut sizes);
    }
    sizes
}

fn collect_sizes(dir: &Path, sizes: &mut BTreeMap<PathBuf, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.metadata() {
            Ok(meta) if meta.is_dir() => collect_sizes(&path, sizes),
            Ok(meta) => {
                sizes.insert(path, meta.len());
            }
            Err(_) => {}
        }
    }
}

/// What was added to each file since `before` (a file that shrank is shown whole), named by
/// the path the plugin used.
fn written_since(
    writes: &[(String, PathBuf)],
    before: &BTreeMap<PathBuf, u64>,
) -> Vec<(String, Vec<u8>)> {
    let mut written = Vec::new();
    for (path, size) in file_sizes(writes) {
        let old = before.get(&path).copied().unwrap_or(0);
        if before.get(&path) == Some(&size) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let start = if size >= old { old as usize } else { 0 };
        let guest = writes
            .iter()
            .find_map(|(guest, dir)| {
                path.strip_prefix(dir)
                    .ok()
                    .map(|rel| Path::new(guest).join(rel).display().to_string())
            })
            .unwrap_or_else(|| path.display().to_string());
        written.push((guest, bytes.get(start..).unwrap_or_default().to_vec()));
    }
    written
}

/// A recorded request as text, each secret value replaced by `REDACTED`.
pub fn show_request(request: &RecordedRequest, secrets: &[String]) -> String {
    let mut out = format!("{} {}\n", request.method, redact(&request.url, secrets));
    for (name, value) in &request.headers {
        out.push_str(&format!("{name}: {}\n", redact(value, secrets)));
    }
    out.push('\n');
    out.push_str(&redact(&String::from_utf8_lossy(&request.body), secrets));
    out.push('\n');
    out
}

/// `text` with every secret value replaced by `REDACTED`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|value| !value.is_empty())
        .fold(text.to_string(), |t, value| {
            t.replace(value.as_str(), "REDACTED")
        })
}

#[cfg(test)]
mod tests {
    use super::sniff_content_type;

    #[test]
    fn a_sample_without_a_content_type_is_sent_as_what_it_looks_like() {
        assert_eq!(
            sniff_content_type(br#" {"body": "x"} "#),
            "application/json"
        );
        assert_eq!(sniff_content_type(b"[1, 2]\n"), "application/json");
        assert_eq!(
            sniff_content_type(b"hostname=web1&message=This+is+a+test%21\n"),
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            sniff_content_type(b"message=a"),
            "application/x-www-form-urlencoded"
        );
        assert_eq!(sniff_content_type(b"disk full on db1"), "text/plain");
        assert_eq!(sniff_content_type(b"{\"broken\": "), "text/plain");
        assert_eq!(sniff_content_type(b"=x"), "text/plain");
        assert_eq!(sniff_content_type(b""), "text/plain");
    }
}
