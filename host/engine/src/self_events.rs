//! The built-in `@tocsin` source: tocsin's own trouble as alerts, routed like any other.
//!
//! A pipeline whose source is `plugin = "@tocsin"` hears about the **other** pipelines and the
//! server: dead letters, a pipeline not running or an edited file refused, a plugin the host
//! keeps stopping, a sink failing for longer than `retrying_for`, a queue budget nearly used,
//! the queues' disk near its free-space reserve. Each is a **condition** with an alert
//! identity (`key` = `tocsin/<event>/<pipeline>/<queue>`): when it appears one firing message
//! goes onto the pipeline's ingress — through its filters, silences, grouping and sinks like
//! any alert — and when it ends, its resolution. Dead letters are announced again when more
//! arrive (one message per look, however many arrived: a storm is one message).
//!
//! - **Durable**: what was announced is kept (host state, stage `tocsin`) in the same append
//!   as the message, so a restart neither announces an open condition twice nor forgets to
//!   resolve one that ended meanwhile.
//! - **No loop**: conditions of pipelines whose source is `@tocsin` — this one and any other —
//!   are never reported to a `@tocsin` pipeline. A sink of this pipeline that fails would
//!   otherwise turn each report into a dead letter and each dead letter into a report. Their
//!   trouble shows where everything shows: the status page, `tocsin status`, `/metrics`.
//! - Stopped plugin calls and failing sinks are counted in memory since this process started;
//!   after a restart such a condition is not resolved until its window (`stops_within`,
//!   `retrying_for`) has passed without it, so a restart alone resolves nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::self_events::{SelfEvent, SelfEventsSpec, TOCSIN_SOURCE};
use tocsin_message::{one_line, Message, Severity};
use tocsin_queue::{now_ms, QueueStore, StateWrite};

use crate::budget::{DiskBudget, StorageReport};
use crate::operator::PipelineView;
use crate::status::{Counters, PipelineStatus, StageEvent, StatusBoard};

/// The host-state stage of the announced conditions.
pub const STAGE: &str = "tocsin";

/// The alert keys of `@tocsin` messages start with this.
pub const KEY_PREFIX: &str = "tocsin/";

/// The longest reason quoted in a summary; the body has it whole.
const SUMMARY_REASON: usize = 160;

/// A sink whose deliveries fail: since when (ms since the epoch), with the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingSink {
    /// The sink's name.
    pub sink: String,
    /// The first failure since its last delivery.
    pub since_ms: u64,
    /// The last failure.
    pub last_error: String,
}

/// What the server knows about itself at one moment, as the conditions read it.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Every pipeline, as the admin API shows it.
    pub views: Vec<PipelineView>,
    /// Per pipeline, its sinks whose deliveries fail.
    pub failing: BTreeMap<String, Vec<FailingSink>>,
    /// Per (pipeline, queue), why its last message was dead-lettered.
    pub dead_letter_errors: BTreeMap<(String, String), String>,
    /// Per (pipeline, stage), the calls the host stopped within `stops_within`.
    pub stops: StageCounts,
    /// The queues' storage.
    pub storage: StorageReport,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
}

/// One thing wrong, with its alert identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Its kind.
    pub event: SelfEvent,
    /// Its alert identity.
    pub key: String,
    /// How bad.
    pub severity: Severity,
    /// `pipeline`, `queue`, `stage`, `sink` as they apply.
    pub labels: Vec<(String, String)>,
    /// One line.
    pub summary: String,
    /// What it is and what to do.
    pub body: String,
    /// The summary of its resolution.
    pub resolved: String,
    /// Dead letters: how many; a rise is announced again. 0 for the others.
    pub count: u64,
}

/// Whether `view`'s source is the built-in `@tocsin` one.
pub fn is_self_source(view: &PipelineView) -> bool {
    view.plugins
        .iter()
        .any(|p| p.stage == "source" && p.plugin == TOCSIN_SOURCE)
}

/// The conditions `spec` reports, for the pipeline `own`, in `evidence`.
pub fn conditions(spec: &SelfEventsSpec, own: &str, evidence: &Evidence) -> Vec<Condition> {
    let mut found = Vec::new();
    let wanted = |e: SelfEvent| spec.events.contains(&e);
    let now = evidence.now_ms;
    for view in &evidence.views {
        let p = &view.name;
        if p == own || is_self_source(view) {
            continue;
        }
        let pipeline = [("pipeline".to_string(), p.clone())];
        if wanted(SelfEvent::PipelineFailed) && view.state == "failed" {
            let reason = view.reason.clone().unwrap_or_default();
            found.push(Condition {
                event: SelfEvent::PipelineFailed,
                key: key(SelfEvent::PipelineFailed, &[p]),
                severity: Severity::Error,
                labels: pipeline.to_vec(),
                summary: format!("{p} is not running: {}", short(&reason)),
                body: format!(
                    "Pipeline {p} is not running: {reason}\nIts file is read again when it \
                     changes, and a pipeline that failed to start is tried again with backoff. \
                     `tocsin validate` names the file, line and field of a mistake."
                ),
                resolved: format!("{p} is running again"),
                count: 0,
            });
        }
        if wanted(SelfEvent::PipelineInvalid) {
            if let Some(errors) = &view.file_error {
                found.push(Condition {
                    event: SelfEvent::PipelineInvalid,
                    key: key(SelfEvent::PipelineInvalid, &[p]),
                    severity: Severity::Warning,
                    labels: pipeline.to_vec(),
                    summary: format!(
                        "{p}: the edited file is refused, the previous version still runs: {}",
                        short(errors)
                    ),
                    body: format!(
                        "The file of pipeline {p} changed and is not valid:\n{errors}\nThe \
                         previous version keeps running until the file is fixed."
                    ),
                    resolved: format!("{p}: its file is valid again"),
                    count: 0,
                });
            }
        }
        if wanted(SelfEvent::DeadLetter) {
            for (queue, &count) in &view.dead_letters {
                if count == 0 {
                    continue;
                }
                let (s, waits) = if count == 1 {
                    ("", "waits")
                } else {
                    ("s", "wait")
                };
                let why = evidence
                    .dead_letter_errors
                    .get(&(p.clone(), queue.clone()))
                    .map(|e| format!(": {}", short(e)))
                    .unwrap_or_default();
                found.push(Condition {
                    event: SelfEvent::DeadLetter,
                    key: key(SelfEvent::DeadLetter, &[p, queue]),
                    severity: Severity::Error,
                    labels: labels(&[("pipeline", p), ("queue", queue)]),
                    summary: format!("{p}/{queue}: {count} dead letter{s}{why}"),
                    body: format!(
                        "{count} message{s} of pipeline {p} could not be delivered by \
                         {queue} and {waits} in its dead letters{why}.\nSee them with `tocsin dlq \
                         ls {p}`, send them again with `tocsin dlq replay {p} {queue} --all`."
                    ),
                    resolved: format!("{p}/{queue}: no dead letters left"),
                    count: count as u64,
                });
            }
        }
        if wanted(SelfEvent::SinkRetrying) {
            for failing in evidence.failing.get(p).into_iter().flatten() {
                let waiting = view
                    .queues
                    .iter()
                    .find(|q| q.queue == failing.sink)
                    .map_or(0, |q| q.depth);
                let failing_for = now.saturating_sub(failing.since_ms);
                if waiting == 0 || failing_for < spec.retrying_for.as_millis() as u64 {
                    continue;
                }
                let sink = &failing.sink;
                found.push(Condition {
                    event: SelfEvent::SinkRetrying,
                    key: key(SelfEvent::SinkRetrying, &[p, sink]),
                    severity: Severity::Warning,
                    labels: labels(&[("pipeline", p), ("sink", sink)]),
                    summary: format!(
                        "{p}/{sink}: deliveries failing for {} ({waiting} waiting): {}",
                        spoken(failing_for),
                        short(&failing.last_error)
                    ),
                    body: format!(
                        "Sink {sink} of pipeline {p} has not delivered since its first failure \
                         {} ago; {waiting} message(s) wait and are retried with backoff.\nLast \
                         error: {}",
                        spoken(failing_for),
                        failing.last_error
                    ),
                    resolved: format!("{p}/{sink}: delivering again"),
                    count: 0,
                });
            }
        }
        if wanted(SelfEvent::PluginStopped) {
            for ((pipe, stage), &n) in evidence.stops.range((p.clone(), String::new())..) {
                if pipe != p {
                    break;
                }
                if n < u64::from(spec.plugin_stops) {
                    continue;
                }
                found.push(Condition {
                    event: SelfEvent::PluginStopped,
                    key: key(SelfEvent::PluginStopped, &[p, stage]),
                    severity: Severity::Warning,
                    labels: labels(&[("pipeline", p), ("stage", stage)]),
                    summary: format!(
                        "{p}/{stage}: the host stopped its plugin {n} times in {}",
                        spoken(spec.stops_within.as_millis() as u64)
                    ),
                    body: format!(
                        "The plugin of stage {stage} of pipeline {p} was stopped {n} times \
                         within {} (a trap, or its CPU, memory or time limit). Its messages are \
                         retried; the log says why each call was stopped.",
                        spoken(spec.stops_within.as_millis() as u64)
                    ),
                    resolved: format!("{p}/{stage}: its plugin runs without being stopped"),
                    count: 0,
                });
            }
        }
        if wanted(SelfEvent::QueueBudget) {
            if let Some(budget) = view.queue_budget {
                if let Some(c) = budget_condition(spec, p, view.stored_bytes, budget) {
                    found.push(c);
                }
            }
        }
    }
    let storage = &evidence.storage;
    if wanted(SelfEvent::QueueBudget) {
        if let Some(limit) = storage.limit {
            if let Some(c) = budget_condition(spec, "server", storage.held, limit) {
                found.push(c);
            }
        }
    }
    if wanted(SelfEvent::DiskReserve) {
        let disk_key = key(SelfEvent::DiskReserve, &["server"]);
        if let Some(why) = &storage.refusal {
            found.push(Condition {
                event: SelfEvent::DiskReserve,
                key: disk_key,
                severity: Severity::Error,
                labels: vec![],
                summary: format!("new messages are refused: {}", short(why)),
                body: format!(
                    "The queues refuse new messages: {why}.\nIngest answers 503 and scheduled \
                     sources skip their ticks until there is room; deliveries go on."
                ),
                resolved: "the queues take new messages again".into(),
                count: 0,
            });
        } else if let Some(free) = storage
            .free_bytes
            .filter(|free| *free < storage.reserve.saturating_mul(2))
        {
            found.push(Condition {
                event: SelfEvent::DiskReserve,
                key: disk_key,
                severity: Severity::Warning,
                labels: vec![],
                summary: format!(
                    "the queues' disk has {} free; new messages are refused under {}",
                    tocsin_config::units::human_size(free),
                    tocsin_config::units::human_size(storage.reserve)
                ),
                body: format!(
                    "The filesystem of the queues has {} free, less than twice its reserve of \
                     {} (--min-free-space). Below the reserve, ingest answers 503 and \
                     scheduled sources skip their ticks.",
                    tocsin_config::units::human_size(free),
                    tocsin_config::units::human_size(storage.reserve)
                ),
                resolved: "the queues' disk has room again".into(),
                count: 0,
            });
        }
    }
    found
}

/// The queue-budget condition of `whose` (a pipeline, or `server`), if it holds at least
/// `budget_percent` of its budget.
fn budget_condition(
    spec: &SelfEventsSpec,
    whose: &str,
    held: u64,
    budget: u64,
) -> Option<Condition> {
    let percent = held.saturating_mul(100) / budget.max(1);
    if percent < u64::from(spec.budget_percent) {
        return None;
    }
    let (held_text, budget_text) = (
        tocsin_config::units::human_size(held),
        tocsin_config::units::human_size(budget),
    );
    let (subject, labels, refused) = if whose == "server" {
        (
            "the server's queues".to_string(),
            vec![],
            "ingest of every pipeline",
        )
    } else {
        (
            format!("{whose}'s queues"),
            labels(&[("pipeline", whose)]),
            "its ingest",
        )
    };
    Some(Condition {
        event: SelfEvent::QueueBudget,
        key: key(SelfEvent::QueueBudget, &[whose]),
        severity: if held >= budget {
            Severity::Error
        } else {
            Severity::Warning
        },
        labels,
        summary: format!(
            "{subject} use {percent} % of their budget ({held_text} of {budget_text})"
        ),
        body: format!(
            "{subject} use {held_text} of their budget of {budget_text}. At the budget, \
             {refused} answers 503 and scheduled sources skip their ticks until deliveries free \
             room: look for a sink that is down or slow (`tocsin status`)."
        ),
        resolved: format!(
            "{subject} are under {} % of their budget",
            spec.budget_percent
        ),
        count: 0,
    })
}

fn key(event: SelfEvent, parts: &[&str]) -> String {
    format!("{KEY_PREFIX}{}/{}", event.as_str(), parts.join("/"))
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A reason on one line, cut for a summary.
fn short(text: &str) -> String {
    let line = one_line(text);
    match line.char_indices().nth(SUMMARY_REASON) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.into_owned(),
    }
}

/// A duration for people: whole minutes from a minute on, else seconds.
fn spoken(ms: u64) -> String {
    let secs = ms / 1000;
    let rounded = if secs >= 60 { secs / 60 * 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// A condition as announced, kept until its resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announced {
    /// Its kind (`dead_letter`, …).
    pub event: String,
    /// The severity last announced.
    pub severity: Severity,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// The count last announced (dead letters), lowered silently when some are replayed.
    pub count: u64,
    /// The summary of its resolution.
    pub resolved: String,
    /// When it was first announced (ms since the epoch).
    pub since_ms: u64,
}

/// What one look changes: messages for the ingress and the records that go with them.
#[derive(Debug, Default)]
pub struct Changes {
    /// Firing and resolved messages, in key order.
    pub messages: Vec<Message>,
    /// The announced records written or deleted.
    pub writes: Vec<StateWrite>,
}

/// The announced conditions of one `@tocsin` pipeline and the decisions about them.
#[derive(Debug)]
pub struct Announcer {
    spec: SelfEventsSpec,
    /// When this process started watching: conditions counted in memory are not resolved
    /// before their window has passed since then.
    started_ms: u64,
    announced: BTreeMap<String, Announced>,
}

impl Announcer {
    /// An announcer remembering `announced` (as stored), started at `started_ms`.
    pub fn new(
        spec: SelfEventsSpec,
        started_ms: u64,
        announced: BTreeMap<String, Announced>,
    ) -> Self {
        Announcer {
            spec,
            started_ms,
            announced,
        }
    }

    /// The announced conditions, by key.
    pub fn announced(&self) -> &BTreeMap<String, Announced> {
        &self.announced
    }

    /// Compares `found` with what was announced: new conditions fire, dead letters that rose
    /// and changed severities fire again, ended ones resolve. The announcer's memory follows
    /// only once the changes are stored: [`Announcer::commit`].
    pub fn changes(&self, found: &[Condition], now: u64) -> (Changes, BTreeMap<String, Announced>) {
        let mut changes = Changes::default();
        let mut next = self.announced.clone();
        for c in found {
            let fire = match self.announced.get(&c.key) {
                None => true,
                Some(a) => a.severity != c.severity || c.count > a.count,
            };
            let record = Announced {
                event: c.event.as_str().to_string(),
                severity: c.severity,
                labels: c.labels.clone(),
                count: c.count,
                resolved: c.resolved.clone(),
                since_ms: self.announced.get(&c.key).map_or(now, |a| a.since_ms),
            };
            if fire {
                changes.messages.push(message(
                    c.event.alertname(),
                    &c.key,
                    c.severity,
                    &c.labels,
                    "firing",
                    c.summary.clone(),
                    c.body.clone(),
                    now,
                ));
            }
            if self.announced.get(&c.key) != Some(&record) {
                changes.writes.push(write(&c.key, Some(&record)));
                next.insert(c.key.clone(), record);
            }
        }
        for (key, a) in &self.announced {
            if found.iter().any(|c| &c.key == key) || self.holds(a, now) {
                continue;
            }
            let alertname = SelfEvent::parse(&a.event).map_or("Tocsin", |e| e.alertname());
            changes.messages.push(message(
                alertname,
                key,
                a.severity,
                &a.labels,
                "resolved",
                a.resolved.clone(),
                format!(
                    "{} (it began {} ago).",
                    a.resolved,
                    spoken(now.saturating_sub(a.since_ms))
                ),
                now,
            ));
            changes.writes.push(write::<Announced>(key, None));
            next.remove(key);
        }
        (changes, next)
    }

    /// Takes `next` as what is announced, once its changes are stored.
    pub fn commit(&mut self, next: BTreeMap<String, Announced>) {
        self.announced = next;
    }

    /// Whether the resolution of `a` waits: its evidence is counted in memory and this
    /// process has not watched for its window yet.
    fn holds(&self, a: &Announced, now: u64) -> bool {
        let window = match SelfEvent::parse(&a.event) {
            Ok(SelfEvent::PluginStopped) => self.spec.stops_within,
            Ok(SelfEvent::SinkRetrying) => self.spec.retrying_for,
            _ => return false,
        };
        now < self.started_ms + window.as_millis() as u64
            && SelfEvent::parse(&a.event).is_ok_and(|e| self.spec.events.contains(&e))
    }
}

#[allow(clippy::too_many_arguments)]
fn message(
    alertname: &str,
    key: &str,
    severity: Severity,
    labels: &[(String, String)],
    status: &str,
    summary: String,
    body: String,
    now: u64,
) -> Message {
    let mut all = vec![("alertname".to_string(), alertname.to_string())];
    all.extend(labels.iter().cloned());
    all.push(("status".to_string(), status.to_string()));
    Message {
        id: format!("{key}/{now}/{status}"),
        timestamp_ms: now,
        severity,
        summary: Some(summary),
        body,
        labels: all,
        metrics: vec![],
        payload: None,
        link: None,
        key: Some(key.to_string()),
    }
}

fn write<T: Serialize>(key: &str, value: Option<&T>) -> StateWrite {
    StateWrite {
        stage: STAGE.to_string(),
        key: key.to_string(),
        value: value.map(|v| serde_json::to_vec(v).unwrap_or_default()),
    }
}

/// The announced conditions kept for `pipeline`.
pub fn stored(
    queue: &dyn QueueStore,
    pipeline: &str,
) -> tocsin_queue::Result<BTreeMap<String, Announced>> {
    Ok(queue
        .state_scan(pipeline, STAGE)?
        .into_iter()
        .filter_map(|(key, value)| Some((key, serde_json::from_slice(&value).ok()?)))
        .collect())
}

/// A count per (pipeline, stage).
pub type StageCounts = BTreeMap<(String, String), u64>;

/// Stopped calls per (pipeline, stage) within a sliding window, from the process's counters.
#[derive(Debug, Default)]
pub struct StopWindow {
    /// Samples of the counters, oldest first; the first is the baseline.
    samples: VecDeque<(u64, StageCounts)>,
}

impl StopWindow {
    /// Takes a sample of the counters at `now` and returns the stops within `window` (counted
    /// from the first sample when the window reaches further back).
    pub fn observe(&mut self, now: u64, window: Duration, totals: StageCounts) -> StageCounts {
        let start = now.saturating_sub(window.as_millis() as u64);
        // Keep the newest sample at or before the window's start as the baseline.
        while self.samples.len() > 1 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        let stops = match self.samples.front() {
            Some((_, base)) => totals
                .iter()
                .map(|(k, n)| {
                    (
                        k.clone(),
                        n.saturating_sub(base.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
            None => BTreeMap::new(),
        };
        self.samples.push_back((now, totals));
        stops
    }
}

/// A `@tocsin` pipeline's task: looks every `every` and appends what changed to its ingress.
pub struct SelfSource {
    /// The pipeline it feeds.
    pub pipeline: String,
    /// Its file's settings.
    pub spec: SelfEventsSpec,
    /// Every pipeline's status.
    pub board: StatusBoard,
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// The queues' storage checks.
    pub budget: Arc<DiskBudget>,
    /// Its own status (counts what it produces).
    pub status: Arc<PipelineStatus>,
    /// Woken after an append.
    pub ingress_ready: Arc<Notify>,
    /// Records what it appends.
    pub tracer: Arc<crate::trace::Tracer>,
    /// Stops it.
    pub cancel: CancellationToken,
}

impl SelfSource {
    /// Runs until cancelled.
    pub async fn run(self) {
        let started = now_ms();
        let announced = match stored(self.queue.as_ref(), &self.pipeline) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline, error = %e, "cannot read what @tocsin announced; starting from nothing");
                BTreeMap::new()
            }
        };
        let mut announcer = Announcer::new(self.spec.clone(), started, announced);
        let mut stops = StopWindow::default();
        loop {
            let now = now_ms();
            match self.evidence(now, &mut stops).await {
                Ok(evidence) => {
                    let found = conditions(&self.spec, &self.pipeline, &evidence);
                    let (changes, next) = announcer.changes(&found, now);
                    if changes.writes.is_empty() && changes.messages.is_empty() {
                        announcer.commit(next);
                    } else if let Err(e) = self.append(&changes).await {
                        tracing::error!(pipeline = %self.pipeline, error = %e, "cannot append tocsin's own events; will look again");
                    } else {
                        announcer.commit(next);
                    }
                }
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline, error = %e, "cannot read the server's state for @tocsin; will look again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.spec.every) => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// What the server knows about itself now. The store and the filesystem are read on a
    /// blocking thread (as the admin API does), never on the runtime's.
    async fn evidence(&self, now: u64, stops: &mut StopWindow) -> Result<Evidence, String> {
        let (board, queue, budget) = (self.board.clone(), self.queue.clone(), self.budget.clone());
        let (mut evidence, traps) =
            tokio::task::spawn_blocking(move || gather(&board, queue.as_ref(), &budget, now))
                .await
                .map_err(|e| format!("reading the server's state panicked: {e}"))?
                .map_err(|e| e.to_string())?;
        evidence.stops = stops.observe(now, self.spec.stops_within, traps);
        Ok(evidence)
    }

    /// Appends the messages with their records, in one commit. Not held to the queue budget:
    /// these few messages are how an operator hears that the budget is near.
    async fn append(&self, changes: &Changes) -> tocsin_queue::Result<()> {
        self.tracer.record_accepted(
            &self.pipeline,
            &changes.messages,
            "tocsin's own events (@tocsin)",
        );
        self.queue
            .append_ingress(&self.pipeline, &changes.messages, &changes.writes)
            .await?;
        if !changes.messages.is_empty() {
            Counters::add(
                &self.status.counters.produced,
                changes.messages.len() as u64,
            );
            self.ingress_ready.notify_one();
            for m in &changes.messages {
                tracing::info!(pipeline = %self.pipeline, key = m.key.as_deref().unwrap_or_default(), summary = m.summary.as_deref().unwrap_or_default(), "tocsin's own event");
            }
        }
        Ok(())
    }
}

/// The evidence of one look (its stops still to be counted) and the trap counters per
/// (pipeline, stage) they are counted from.
fn gather(
    board: &StatusBoard,
    queue: &dyn QueueStore,
    budget: &DiskBudget,
    now: u64,
) -> tocsin_queue::Result<(Evidence, StageCounts)> {
    let views = crate::operator::pipelines(board, queue)?;
    let mut evidence = Evidence {
        views,
        storage: budget.storage(),
        now_ms: now,
        ..Evidence::default()
    };
    let mut traps = StageCounts::new();
    for (name, status) in crate::status::board_snapshot(board) {
        for (queue, error) in status.dead_letter_errors() {
            evidence
                .dead_letter_errors
                .insert((name.clone(), queue), error);
        }
        for (stage, event, n) in status.stage_events() {
            if event == StageEvent::Trap {
                traps.insert((name.clone(), stage), n);
            }
        }
        evidence.failing.insert(name, status.failing_sinks());
    }
    Ok((evidence, traps))
}

/// One condition of `event` about `pipeline` (`part`: its queue, sink or stage), as the
/// source `spec` of pipeline `own` would announce it at `now`, then its resolution: what a
/// behaviour case's `tocsin_event` runs through the pipeline.
pub fn sample_pair(
    spec: &SelfEventsSpec,
    own: &str,
    event: SelfEvent,
    pipeline: &str,
    part: &str,
    now: u64,
) -> Result<[Message; 2], String> {
    if pipeline == own {
        return Err(format!(
            "a @tocsin pipeline hears nothing about itself: name another pipeline than `{own}`"
        ));
    }
    let mut view = PipelineView::running(pipeline);
    let mut evidence = Evidence {
        now_ms: now,
        ..Evidence::default()
    };
    const SAMPLE: &str = "(a sample error of the behaviour test)";
    match event {
        SelfEvent::DeadLetter => {
            view.dead_letters.insert(part.to_string(), 1);
            evidence.dead_letter_errors.insert(
                (pipeline.to_string(), part.to_string()),
                format!("permanent: {SAMPLE}"),
            );
        }
        SelfEvent::PipelineFailed => {
            view.state = "failed".into();
            view.reason = Some(format!("source: {SAMPLE}"));
        }
        SelfEvent::PipelineInvalid => {
            view.file_error = Some(format!("{pipeline}.toml:1:1: {SAMPLE}"));
        }
        SelfEvent::PluginStopped => {
            evidence.stops.insert(
                (pipeline.to_string(), part.to_string()),
                u64::from(spec.plugin_stops),
            );
        }
        SelfEvent::SinkRetrying => {
            view.queues.push(crate::operator::QueueView {
                queue: part.to_string(),
                depth: 1,
                oldest_age_seconds: None,
            });
            evidence.failing.insert(
                pipeline.to_string(),
                vec![FailingSink {
                    sink: part.to_string(),
                    since_ms: now.saturating_sub(spec.retrying_for.as_millis() as u64),
                    last_error: SAMPLE.to_string(),
                }],
            );
        }
        SelfEvent::QueueBudget => {
            view.queue_budget = Some(100 << 20);
            view.stored_bytes = u64::from(spec.budget_percent) << 20;
        }
        SelfEvent::DiskReserve => {
            evidence.storage = StorageReport {
                free_bytes: Some(DEFAULT_SAMPLE_RESERVE),
                reserve: DEFAULT_SAMPLE_RESERVE,
                ..StorageReport::default()
            };
        }
    }
    evidence.views.push(view);
    let only = SelfEventsSpec {
        events: [event].into(),
        ..spec.clone()
    };
    let found = conditions(&only, own, &evidence);
    let mut announcer = Announcer::new(only, 0, BTreeMap::new());
    let (fired, next) = announcer.changes(&found, now);
    announcer.commit(next);
    let (resolved, _) = announcer.changes(&[], now);
    match (
        fired.messages.into_iter().next(),
        resolved.messages.into_iter().next(),
    ) {
        (Some(firing), Some(resolution)) => Ok([firing, resolution]),
        _ => Err(format!("no `{}` condition to run", event.as_str())),
    }
}

/// The free-space reserve a `disk_reserve` sample assumes (the default `--min-free-space`).
const DEFAULT_SAMPLE_RESERVE: u64 = crate::budget::DEFAULT_MIN_FREE_SPACE;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::{PluginView, QueueView};

    const MIN: u64 = 60_000;

    fn view(name: &str) -> PipelineView {
        PipelineView::running(name)
    }

    fn self_source(name: &str) -> PipelineView {
        let mut v = view(name);
        v.plugins.push(PluginView {
            stage: "source".into(),
            plugin: TOCSIN_SOURCE.into(),
            sha256: String::new(),
        });
        v
    }

    fn keys(found: &[Condition]) -> Vec<&str> {
        found.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn each_kind_of_trouble_is_a_condition_with_its_own_key() {
        let now = 100 * MIN;
        let mut failed = view("backup");
        failed.state = "failed".into();
        failed.reason = Some("source (backup_check.wasm): init: no such dir".into());
        let mut edited = view("chat");
        edited.file_error = Some("chat.toml:3:1: sink[0].plugin: unknown plugin".into());
        let mut alerts = view("alerts");
        alerts.dead_letters.insert("room".into(), 2);
        alerts.dead_letters.insert("hook".into(), 0);
        alerts.queues.push(QueueView {
            queue: "hook".into(),
            depth: 4,
            oldest_age_seconds: Some(900.0),
        });
        alerts.queue_budget = Some(1000);
        alerts.stored_bytes = 850;
        let evidence = Evidence {
            views: vec![failed, edited, alerts],
            failing: BTreeMap::from([(
                "alerts".to_string(),
                vec![FailingSink {
                    sink: "hook".into(),
                    since_ms: now - 11 * MIN,
                    last_error: "503 Service Unavailable".into(),
                }],
            )]),
            dead_letter_errors: BTreeMap::from([(
                ("alerts".to_string(), "room".to_string()),
                "permanent: 400 M_FORBIDDEN".to_string(),
            )]),
            stops: BTreeMap::from([
                (("alerts".to_string(), "filter.0".to_string()), 3),
                (("alerts".to_string(), "sink.room".to_string()), 2),
            ]),
            storage: StorageReport {
                refusal: None,
                free_bytes: Some(100 << 20),
                reserve: 64 << 20,
                held: 10,
                limit: Some(1000),
            },
            now_ms: now,
        };
        let found = conditions(&SelfEventsSpec::default(), "ops", &evidence);
        assert_eq!(
            keys(&found),
            [
                "tocsin/pipeline_failed/backup",
                "tocsin/pipeline_invalid/chat",
                "tocsin/dead_letter/alerts/room",
                "tocsin/sink_retrying/alerts/hook",
                "tocsin/plugin_stopped/alerts/filter.0",
                "tocsin/queue_budget/alerts",
                "tocsin/disk_reserve/server",
            ]
        );
        let dead = &found[2];
        assert_eq!(
            dead.summary,
            "alerts/room: 2 dead letters: permanent: 400 M_FORBIDDEN"
        );
        assert_eq!(dead.count, 2);
        assert_eq!(dead.severity, Severity::Error);
        assert!(found[3]
            .summary
            .starts_with("alerts/hook: deliveries failing for 11m (4 waiting)"));
        assert_eq!(
            found[5].summary,
            "alerts's queues use 85 % of their budget (850 B of 1000 B)"
        );
        assert_eq!(found[6].severity, Severity::Warning);

        // A sink failing for less than `retrying_for`, or with nothing waiting, is not one.
        let mut spec = SelfEventsSpec {
            retrying_for: Duration::from_secs(12 * 60),
            ..SelfEventsSpec::default()
        };
        spec.events.remove(&SelfEvent::DiskReserve);
        let found = conditions(&spec, "ops", &evidence);
        assert!(!keys(&found).iter().any(|k| k.contains("sink_retrying")));
        assert!(!keys(&found).iter().any(|k| k.contains("disk_reserve")));
    }

    #[test]
    fn no_condition_of_a_tocsin_pipeline_reaches_a_tocsin_pipeline() {
        let mut own = self_source("ops");
        own.dead_letters.insert("room".into(), 5);
        let mut other = self_source("ops2");
        other.state = "failed".into();
        let mut plain = view("alerts");
        plain.dead_letters.insert("room".into(), 1);
        let evidence = Evidence {
            views: vec![own, other, plain],
            stops: BTreeMap::from([(("ops".to_string(), "sink.room".to_string()), 9)]),
            ..Evidence::default()
        };
        let found = conditions(&SelfEventsSpec::default(), "ops", &evidence);
        assert_eq!(keys(&found), ["tocsin/dead_letter/alerts/room"]);
    }

    #[test]
    fn the_server_refusing_writes_is_an_error_and_its_budget_a_warning() {
        let evidence = Evidence {
            storage: StorageReport {
                refusal: Some("the queues' filesystem is read-only".into()),
                free_bytes: Some(1 << 40),
                reserve: 64 << 20,
                held: 900,
                limit: Some(1000),
            },
            ..Evidence::default()
        };
        let found = conditions(&SelfEventsSpec::default(), "ops", &evidence);
        assert_eq!(
            keys(&found),
            ["tocsin/queue_budget/server", "tocsin/disk_reserve/server"]
        );
        assert_eq!(found[0].severity, Severity::Warning);
        assert_eq!(found[1].severity, Severity::Error);
        assert!(found[1].summary.contains("read-only"));
    }

    fn dead(count: u64) -> Condition {
        let mut v = view("alerts");
        v.dead_letters.insert("room".into(), count as usize);
        let evidence = Evidence {
            views: vec![v],
            ..Evidence::default()
        };
        conditions(&SelfEventsSpec::default(), "ops", &evidence).remove(0)
    }

    fn statuses(changes: &Changes) -> Vec<(String, String)> {
        changes
            .messages
            .iter()
            .map(|m| {
                let status = m.labels.iter().find(|(k, _)| k == "status").unwrap();
                (m.key.clone().unwrap(), status.1.clone())
            })
            .collect()
    }

    fn step(a: &mut Announcer, found: &[Condition], now: u64) -> Changes {
        let (changes, next) = a.changes(found, now);
        a.commit(next);
        changes
    }

    #[test]
    fn dead_letters_fire_once_again_when_more_arrive_and_resolve_when_gone() {
        let mut a = Announcer::new(SelfEventsSpec::default(), 0, BTreeMap::new());
        let key = "tocsin/dead_letter/alerts/room".to_string();
        let first = step(&mut a, &[dead(2)], MIN);
        assert_eq!(statuses(&first), [(key.clone(), "firing".into())]);
        assert_eq!(first.writes.len(), 1);
        let m = &first.messages[0];
        assert_eq!(
            m.labels[0],
            ("alertname".into(), "TocsinDeadLetters".into())
        );
        assert_eq!(m.severity, Severity::Error);

        // The same count: nothing at all; fewer (some replayed): the record only.
        assert!(step(&mut a, &[dead(2)], 2 * MIN).writes.is_empty());
        let fewer = step(&mut a, &[dead(1)], 3 * MIN);
        assert!(fewer.messages.is_empty());
        assert_eq!(fewer.writes.len(), 1);
        // One more than then: announced again, with the first announcement's start kept.
        let more = step(&mut a, &[dead(2)], 4 * MIN);
        assert_eq!(statuses(&more), [(key.clone(), "firing".into())]);
        assert_eq!(a.announced()[&key].since_ms, MIN);

        let gone = step(&mut a, &[], 5 * MIN);
        assert_eq!(statuses(&gone), [(key.clone(), "resolved".into())]);
        assert_eq!(
            gone.messages[0].summary.as_deref(),
            Some("alerts/room: no dead letters left")
        );
        assert_eq!(gone.writes[0].value, None);
        assert!(a.announced().is_empty());
        assert!(step(&mut a, &[], 6 * MIN).messages.is_empty());
    }

    #[test]
    fn a_restart_announces_nothing_twice_and_resolves_in_memory_counts_only_after_their_window() {
        let spec = SelfEventsSpec::default();
        let mut before = Announcer::new(spec.clone(), 0, BTreeMap::new());
        let stopped = Condition {
            event: SelfEvent::PluginStopped,
            key: "tocsin/plugin_stopped/alerts/filter.0".into(),
            severity: Severity::Warning,
            labels: labels(&[("pipeline", "alerts"), ("stage", "filter.0")]),
            summary: "stopped".into(),
            body: String::new(),
            resolved: "runs".into(),
            count: 0,
        };
        step(&mut before, &[dead(1), stopped.clone()], MIN);

        // The restart: the records as stored.
        let start = 30 * MIN;
        let mut after = Announcer::new(spec.clone(), start, before.announced().clone());
        let same = step(&mut after, &[dead(1)], start + 1000);
        assert!(same.messages.is_empty(), "{:?}", statuses(&same));
        // The stopped plugin, no longer counted since the restart, resolves only once the
        // window has passed since it.
        let window = spec.stops_within.as_millis() as u64;
        assert!(step(&mut after, &[dead(1)], start + window - 1)
            .messages
            .is_empty());
        let later = step(&mut after, &[dead(1)], start + window);
        assert_eq!(
            statuses(&later),
            [(stopped.key.clone(), "resolved".to_string())]
        );
    }

    #[test]
    fn the_stop_window_counts_stops_since_its_start_and_forgets_older_ones() {
        let mut w = StopWindow::default();
        let k = ("alerts".to_string(), "filter.0".to_string());
        let at = |n: u64| BTreeMap::from([(k.clone(), n)]);
        let window = Duration::from_secs(600);
        // Stops before the first look are not counted.
        assert!(w.observe(0, window, at(7)).is_empty());
        assert_eq!(w.observe(5 * MIN, window, at(9))[&k], 2);
        assert_eq!(w.observe(10 * MIN, window, at(10))[&k], 3);
        // Eleven minutes in: the baseline moves to the look at minute 5.
        assert_eq!(w.observe(15 * MIN, window, at(10))[&k], 1);
        assert!(w.observe(25 * MIN, window, at(10)).is_empty());
    }
}
