//! Absence alerts: a pipeline's `expect = { every, grace, key_labels }` names reporters — the
//! values of `key_labels` in the messages its source produces — and raises one alert when a
//! reporter that has reported stays silent for `every + grace`, and its resolution when it
//! reports again (push monitors' "late ping": healthchecks.io, Cronitor).
//!
//! # Who writes what
//! The records are host state of the pipeline under stage [`STAGE`]:
//! - `seen/<reporter>` ([`Seen`]): its labels and when its latest report entered the pipeline.
//!   Written by the filter worker in the hand-over batch of the reports ([`Expectations::note`]),
//!   so what was handed over and what was seen never disagree after a crash.
//! - `absent/<reporter>` ([`Absent`]): the absence alert raised for it. Written by the absence
//!   task ([`Expectations::run`]) in the same append that puts the alert (or its resolution) on
//!   the pipeline's ingress queue, so an alert is raised once or not at all.
//!
//! Each key has one writer, and both writers (and [`Expectations::forget`]) hold the
//! pipeline's [`RegisterLock`], so the in-memory copy and the store change together.
//!
//! # No false absences
//! A reporter's deadline is `max(last report, start) + every + grace`: the clock starts again
//! when the pipeline starts (a restart of tocsin, an edit of the file), so downtime is never
//! counted against a reporter. An absence is not raised while the ingress queue still holds a
//! message that entered before the deadline (it may be the awaited report, not yet filtered).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::ExpectPolicy;
use tocsin_message::Message;
use tocsin_queue::{now_ms, QueueStore, StateWrite};

use crate::silence_release::RegisterLock;

/// The host-state stage of the records.
pub const STAGE: &str = "expect";

/// The `key` of every absence alert starts with this; such messages are never reports.
pub const KEY_PREFIX: &str = "absence/";

/// The `alertname` label of absence alerts.
pub const ALERTNAME: &str = "NoReport";

/// The reporter name when `key_labels` is empty: the source as a whole.
pub const WHOLE_SOURCE: &str = "source";

/// The most reporters kept per pipeline; a new one beyond is not tracked.
pub const MAX_REPORTERS: usize = 10_000;

/// The longest the task sleeps without looking.
const RECHECK: Duration = Duration::from_secs(60);

/// How soon the task looks again when a report may still be queued.
const BACKLOG_RECHECK: Duration = Duration::from_secs(1);

/// `seen/<reporter>`: a reporter's latest report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// The values of the key labels.
    pub labels: Vec<(String, String)>,
    /// When its latest report entered the pipeline, ms since the epoch.
    pub seen_ms: u64,
}

/// `absent/<reporter>`: the absence alert raised for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Absent {
    /// The values of the key labels.
    pub labels: Vec<(String, String)>,
    /// Since when it was silent: its last report, or the pipeline's start when later.
    pub silent_since_ms: u64,
    /// When it was due.
    pub due_ms: u64,
    /// The alert's severity (its resolution has the same).
    pub severity: tocsin_message::Severity,
    /// When the alert was raised.
    pub raised_ms: u64,
    /// The alert's message id.
    pub message_id: String,
}

/// A report noted at a hand-over.
#[derive(Debug, Clone)]
pub struct Report {
    /// The reporter: `host=db1`.
    pub reporter: String,
    /// The values of the key labels.
    pub labels: Vec<(String, String)>,
    /// When the report entered the pipeline.
    pub at_ms: u64,
}

/// Per reporter, its latest report and its open absence, as stored.
pub type StoredReporters = BTreeMap<String, (Option<Seen>, Option<Absent>)>;

/// A reporter as the task knows it.
#[derive(Debug, Clone)]
struct Reporter {
    labels: Vec<(String, String)>,
    /// Its latest report; 0 when none is known (only an absence record was left).
    seen_ms: u64,
    absent: Option<Absent>,
    /// It reported after its absence was raised: the resolution is due.
    back: bool,
}

/// A reporter, as `tocsin expected ls` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReporterRow {
    /// Its name: `host=db1`, or `source`.
    pub reporter: String,
    /// The values of the key labels.
    pub labels: Vec<(String, String)>,
    /// When its latest report entered the pipeline (absent: none known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// When it is absent if nothing comes (known while the pipeline runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<u64>,
    /// When its open absence alert was raised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_since_ms: Option<u64>,
}

/// The reporter a message reports for: its name and key labels, or `None` when it lacks a key
/// label or is an absence alert itself.
pub fn reporter_of(
    policy: &ExpectPolicy,
    message: &Message,
) -> Option<(String, Vec<(String, String)>)> {
    if message
        .key
        .as_deref()
        .is_some_and(|k| k.starts_with(KEY_PREFIX))
    {
        return None;
    }
    if policy.key_labels.is_empty() {
        return Some((WHOLE_SOURCE.to_string(), Vec::new()));
    }
    let mut labels = Vec::with_capacity(policy.key_labels.len());
    for name in &policy.key_labels {
        labels.push((name.clone(), message.label(name)?.to_string()));
    }
    Some((reporter_name(&labels), labels))
}

/// `host=db1,dc=fra`; [`WHOLE_SOURCE`] for no labels.
pub fn reporter_name(labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return WHOLE_SOURCE.to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds from `ms` (since the epoch) to now.
pub fn now_seconds_since(ms: u64) -> f64 {
    now_ms().saturating_sub(ms) as f64 / 1000.0
}

/// When a reporter last seen at `seen_ms` is absent, for a pipeline started at `started_ms`.
pub fn due_ms(policy: &ExpectPolicy, seen_ms: u64, started_ms: u64) -> u64 {
    seen_ms.max(started_ms) + policy.allowed_silence().as_millis() as u64
}

/// A duration as a summary says it: whole minutes from a minute on (`20m`, `1h 5m`), else
/// seconds.
fn spoken(ms: u64) -> String {
    let secs = ms / 1000;
    let rounded = if secs >= 60 { secs / 60 * 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// Who the summary names: the key labels' values (`db1`), or the pipeline.
fn subject(pipeline: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return pipeline.to_string();
    }
    labels
        .iter()
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn alert_labels(labels: &[(String, String)], status: &str) -> Vec<(String, String)> {
    let mut all = vec![("alertname".to_string(), ALERTNAME.to_string())];
    all.extend(labels.iter().cloned());
    all.push(("status".to_string(), status.to_string()));
    all
}

/// The absence alert of a reporter last seen at `seen_ms` (0: not since its record was kept).
pub fn absence_message(
    pipeline: &str,
    policy: &ExpectPolicy,
    labels: &[(String, String)],
    seen_ms: u64,
    since_ms: u64,
    now: u64,
) -> Message {
    let name = reporter_name(labels);
    let who = subject(pipeline, labels);
    let silent_for = now.saturating_sub(seen_ms.max(since_ms));
    let last = if seen_ms == 0 {
        "its last report is not known".to_string()
    } else {
        format!("it last reported at {}", rfc3339(seen_ms))
    };
    Message {
        id: format!("{KEY_PREFIX}{name}/{now}"),
        timestamp_ms: now,
        severity: policy.severity,
        summary: Some(format!("{who}: no report for {}", spoken(silent_for))),
        body: format!(
            "{name} is expected to report to pipeline {pipeline} every {} (grace {}); {last}.",
            humantime::format_duration(policy.every),
            humantime::format_duration(policy.grace),
        ),
        labels: alert_labels(labels, "firing"),
        metrics: vec![],
        payload: None,
        link: None,
        key: Some(format!("{KEY_PREFIX}{name}")),
    }
}

/// Why an absence ended.
pub enum Ended<'a> {
    /// The reporter reported again at this time.
    Reported(u64),
    /// An operator forgot the reporter.
    Forgotten(&'a str),
}

/// The resolution of `absent`.
pub fn resolution_message(pipeline: &str, absent: &Absent, ended: Ended<'_>, now: u64) -> Message {
    let name = reporter_name(&absent.labels);
    let who = subject(pipeline, &absent.labels);
    let (summary, body) = match ended {
        Ended::Reported(at) => (
            format!(
                "{who}: reporting again after {}",
                spoken(at.saturating_sub(absent.silent_since_ms))
            ),
            format!("{name} reported to pipeline {pipeline} at {}.", rfc3339(at)),
        ),
        Ended::Forgotten(by) => (
            format!("{who}: no longer expected"),
            format!(
                "{name} was forgotten by {by}: pipeline {pipeline} no longer expects its reports."
            ),
        ),
    };
    Message {
        id: format!("{}/resolved", absent.message_id),
        timestamp_ms: now,
        severity: absent.severity,
        summary: Some(summary),
        body,
        labels: alert_labels(&absent.labels, "resolved"),
        metrics: vec![],
        payload: None,
        link: None,
        key: Some(format!("{KEY_PREFIX}{name}")),
    }
}

fn seen_key(name: &str) -> String {
    format!("seen/{name}")
}

fn absent_key(name: &str) -> String {
    format!("absent/{name}")
}

fn write<T: Serialize>(key: String, value: Option<&T>) -> StateWrite {
    StateWrite {
        stage: STAGE.to_string(),
        key,
        value: value.map(|v| serde_json::to_vec(v).unwrap_or_default()),
    }
}

/// The records kept for `pipeline`: per reporter, its latest report and its open absence.
pub fn stored(queue: &dyn QueueStore, pipeline: &str) -> tocsin_queue::Result<StoredReporters> {
    let mut reporters = StoredReporters::new();
    for (key, bytes) in queue.state_scan(pipeline, STAGE)? {
        if let Some(name) = key.strip_prefix("seen/") {
            if let Ok(seen) = serde_json::from_slice::<Seen>(&bytes) {
                reporters.entry(name.to_string()).or_default().0 = Some(seen);
            }
        } else if let Some(name) = key.strip_prefix("absent/") {
            if let Ok(absent) = serde_json::from_slice::<Absent>(&bytes) {
                reporters.entry(name.to_string()).or_default().1 = Some(absent);
            }
        }
    }
    Ok(reporters)
}

/// The reporters kept for a pipeline that is not running (no deadlines: they depend on its
/// start).
pub fn stored_rows(
    queue: &dyn QueueStore,
    pipeline: &str,
) -> tocsin_queue::Result<Vec<ReporterRow>> {
    Ok(stored(queue, pipeline)?
        .into_iter()
        .map(|(reporter, (seen, absent))| ReporterRow {
            reporter,
            labels: seen
                .as_ref()
                .map(|s| s.labels.clone())
                .or_else(|| absent.as_ref().map(|a| a.labels.clone()))
                .unwrap_or_default(),
            last_seen_ms: seen.map(|s| s.seen_ms),
            due_ms: None,
            absent_since_ms: absent.map(|a| a.raised_ms),
        })
        .collect())
}

/// Every record of the stage, deleted: for a pipeline whose file no longer has `expect`.
pub fn clear_writes(
    queue: &dyn QueueStore,
    pipeline: &str,
) -> tocsin_queue::Result<Vec<StateWrite>> {
    Ok(queue
        .state_scan(pipeline, STAGE)?
        .into_iter()
        .map(|(key, _)| write::<()>(key, None))
        .collect())
}

/// A pipeline's reporters and its absence task.
pub struct Expectations {
    pipeline: String,
    policy: ExpectPolicy,
    /// When the pipeline started: no reporter is due before `started_ms + every + grace`.
    started_ms: u64,
    queue: Arc<dyn QueueStore>,
    /// Shared with the filter worker and the release task.
    lock: RegisterLock,
    /// Woken when the task appended to ingress.
    ingress_ready: Arc<Notify>,
    tracer: Arc<crate::trace::Tracer>,
    reporters: Mutex<HashMap<String, Reporter>>,
    /// A reporter with an open absence reported.
    wake: Notify,
    /// A reporter beyond [`MAX_REPORTERS`] was refused (logged once).
    full_logged: std::sync::atomic::AtomicBool,
}

impl Expectations {
    /// Reads the pipeline's reporters from the store; records made under other key labels
    /// (the file changed them) are deleted, an absence open for one resolved first.
    #[allow(clippy::too_many_arguments)]
    pub async fn load(
        pipeline: &str,
        policy: ExpectPolicy,
        started_ms: u64,
        queue: Arc<dyn QueueStore>,
        lock: RegisterLock,
        ingress_ready: Arc<Notify>,
        tracer: Arc<crate::trace::Tracer>,
    ) -> tocsin_queue::Result<Arc<Self>> {
        let mut reporters = HashMap::new();
        let mut stale = Vec::new();
        let mut resolutions = Vec::new();
        for (name, (seen, absent)) in stored(queue.as_ref(), pipeline)? {
            let labels = match (&seen, &absent) {
                (Some(s), _) => s.labels.clone(),
                (None, Some(a)) => a.labels.clone(),
                (None, None) => continue,
            };
            let names_match = labels.len() == policy.key_labels.len()
                && labels
                    .iter()
                    .zip(&policy.key_labels)
                    .all(|((k, _), want)| k == want);
            if !names_match {
                stale.push(write::<()>(seen_key(&name), None));
                stale.push(write::<()>(absent_key(&name), None));
                if let Some(absent) = &absent {
                    resolutions.push(resolution_message(
                        pipeline,
                        absent,
                        Ended::Forgotten("a change of expect.key_labels"),
                        now_ms(),
                    ));
                }
                continue;
            }
            let seen_ms = seen.map_or(0, |s| s.seen_ms);
            let back = absent.as_ref().is_some_and(|a| seen_ms > a.due_ms);
            reporters.insert(
                name,
                Reporter {
                    labels,
                    seen_ms,
                    absent,
                    back,
                },
            );
        }
        if !stale.is_empty() {
            queue.append_ingress(pipeline, &resolutions, &stale).await?;
            tracing::info!(pipeline = %pipeline, records = stale.len() / 2, "expect.key_labels changed: forgot the reporters named by the old ones");
        }
        Ok(Arc::new(Expectations {
            pipeline: pipeline.to_string(),
            policy,
            started_ms,
            queue,
            lock,
            ingress_ready,
            tracer,
            reporters: Mutex::new(reporters),
            wake: Notify::new(),
            full_logged: Default::default(),
        }))
    }

    /// The policy.
    pub fn policy(&self) -> &ExpectPolicy {
        &self.policy
    }

    fn reporters(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reporter>> {
        self.reporters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the reports of a hand-over (reporter, key labels, when the report entered the
    /// pipeline); the state writes go in the same batch. Called under the register lock.
    pub fn note(&self, reports: Vec<Report>) -> Vec<StateWrite> {
        let mut latest: BTreeMap<String, Seen> = BTreeMap::new();
        // The task is woken for a reporter back from absence (its resolution is due) and for
        // a new one (its deadline may come before the task's next look).
        let mut wake = false;
        {
            let mut reporters = self.reporters();
            for Report {
                reporter: name,
                labels,
                at_ms: at,
            } in reports
            {
                let known = reporters.len();
                let reporter = match reporters.get_mut(&name) {
                    Some(r) => r,
                    None if known >= MAX_REPORTERS => {
                        if !self
                            .full_logged
                            .swap(true, std::sync::atomic::Ordering::Relaxed)
                        {
                            tracing::warn!(pipeline = %self.pipeline, reporter = %name, max = MAX_REPORTERS, "this pipeline tracks as many reporters as it may; new ones are not expected (forget gone ones with `tocsin expected forget`)");
                        }
                        continue;
                    }
                    None => {
                        wake = true;
                        reporters.entry(name.clone()).or_insert(Reporter {
                            labels: labels.clone(),
                            seen_ms: 0,
                            absent: None,
                            back: false,
                        })
                    }
                };
                reporter.seen_ms = reporter.seen_ms.max(at);
                if reporter.absent.is_some() && !reporter.back {
                    reporter.back = true;
                    wake = true;
                }
                latest.insert(
                    name,
                    Seen {
                        labels,
                        seen_ms: reporter.seen_ms,
                    },
                );
            }
        }
        if wake {
            self.wake.notify_one();
        }
        latest
            .into_iter()
            .map(|(name, seen)| write(seen_key(&name), Some(&seen)))
            .collect()
    }

    /// The reporters with their deadlines.
    pub fn rows(&self) -> Vec<ReporterRow> {
        let mut rows: Vec<ReporterRow> = self
            .reporters()
            .iter()
            .map(|(name, r)| ReporterRow {
                reporter: name.clone(),
                labels: r.labels.clone(),
                last_seen_ms: (r.seen_ms > 0).then_some(r.seen_ms),
                due_ms: r
                    .absent
                    .is_none()
                    .then(|| due_ms(&self.policy, r.seen_ms, self.started_ms)),
                absent_since_ms: r.absent.as_ref().map(|a| a.raised_ms),
            })
            .collect();
        rows.sort_by(|a, b| a.reporter.cmp(&b.reporter));
        rows
    }

    /// Stops expecting `reporter`: its records are deleted and an open absence resolved.
    /// `Ok(false)` when it is not known.
    pub async fn forget(&self, reporter: &str, by: &str) -> tocsin_queue::Result<bool> {
        let _register = self.lock.lock().await;
        let Some(known) = self.reporters().get(reporter).cloned() else {
            return Ok(false);
        };
        let now = now_ms();
        let messages: Vec<Message> = known
            .absent
            .iter()
            .map(|a| resolution_message(&self.pipeline, a, Ended::Forgotten(by), now))
            .collect();
        let writes = [
            write::<()>(seen_key(reporter), None),
            write::<()>(absent_key(reporter), None),
        ];
        self.append(&messages, &writes, &format!("{reporter} forgotten by {by}"))
            .await?;
        self.reporters().remove(reporter);
        tracing::info!(pipeline = %self.pipeline, reporter = %reporter, by = %by, "reporter forgotten");
        Ok(true)
    }

    /// Puts `messages` on the pipeline's ingress with `writes`, in one commit.
    async fn append(
        &self,
        messages: &[Message],
        writes: &[StateWrite],
        via: &str,
    ) -> tocsin_queue::Result<()> {
        self.tracer.record_accepted(&self.pipeline, messages, via);
        self.queue
            .append_ingress(&self.pipeline, messages, writes)
            .await?;
        if !messages.is_empty() {
            self.ingress_ready.notify_one();
        }
        Ok(())
    }

    /// Raises the absences that are due and the resolutions of reporters that came back, in
    /// one commit. `queued_since`: when the oldest message still on ingress entered it. The
    /// time to look again.
    async fn step(&self, now: u64, queued_since: Option<u64>) -> tocsin_queue::Result<Duration> {
        let _register = self.lock.lock().await;
        let mut messages = Vec::new();
        let mut writes = Vec::new();
        let mut raised: Vec<(String, Absent)> = Vec::new();
        let mut resolved: Vec<String> = Vec::new();
        let mut next = now + RECHECK.as_millis() as u64;
        {
            let reporters = self.reporters();
            for (name, r) in reporters.iter() {
                match &r.absent {
                    Some(absent) if r.back => {
                        messages.push(resolution_message(
                            &self.pipeline,
                            absent,
                            Ended::Reported(r.seen_ms),
                            now,
                        ));
                        writes.push(write::<()>(absent_key(name), None));
                        resolved.push(name.clone());
                        next = next.min(due_ms(&self.policy, r.seen_ms, self.started_ms));
                    }
                    Some(_) => {}
                    None => {
                        let due = due_ms(&self.policy, r.seen_ms, self.started_ms);
                        if due > now {
                            next = next.min(due);
                        } else if queued_since.is_some_and(|t| t <= due) {
                            // A report of before the deadline may still be on its way.
                            next = next.min(now + BACKLOG_RECHECK.as_millis() as u64);
                        } else {
                            let message = absence_message(
                                &self.pipeline,
                                &self.policy,
                                &r.labels,
                                r.seen_ms,
                                self.started_ms,
                                now,
                            );
                            let absent = Absent {
                                labels: r.labels.clone(),
                                silent_since_ms: r.seen_ms.max(self.started_ms),
                                due_ms: due,
                                severity: self.policy.severity,
                                raised_ms: now,
                                message_id: message.id.clone(),
                            };
                            writes.push(write(absent_key(name), Some(&absent)));
                            messages.push(message);
                            raised.push((name.clone(), absent));
                        }
                    }
                }
            }
        }
        if !messages.is_empty() {
            self.append(&messages, &writes, "absence of reports (expect)")
                .await?;
            let mut reporters = self.reporters();
            for (name, absent) in raised {
                tracing::warn!(pipeline = %self.pipeline, reporter = %name, "no report for longer than expected: absence alert raised");
                if let Some(r) = reporters.get_mut(&name) {
                    r.absent = Some(absent);
                    r.back = false;
                }
            }
            for name in resolved {
                tracing::info!(pipeline = %self.pipeline, reporter = %name, "reporting again: absence resolved");
                if let Some(r) = reporters.get_mut(&name) {
                    r.absent = None;
                    r.back = false;
                }
            }
        }
        Ok(Duration::from_millis(next.saturating_sub(now)))
    }

    /// Runs the pipeline's absence task until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let now = now_ms();
            // Read before the reporters: a report handed over after this read was noted
            // before it left ingress, so it is seen by `step`.
            let queued_since = match self.queue.ingress_head(&self.pipeline) {
                Ok(head) => head.map(|(_, e)| e.enqueued_ms),
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline, error = %e, "cannot read the ingress queue; absences wait");
                    Some(0)
                }
            };
            let wait = match self.step(now, queued_since).await {
                Ok(wait) => wait,
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline, error = %e, "cannot raise or resolve absence alerts; will retry");
                    BACKLOG_RECHECK
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// The running pipelines' expectations, for the admin API.
#[derive(Clone, Default)]
pub struct Registry {
    running: Arc<Mutex<HashMap<String, Arc<Expectations>>>>,
}

impl Registry {
    /// Makes `expectations` the running ones of `pipeline`.
    pub fn insert(&self, pipeline: &str, expectations: Arc<Expectations>) {
        self.lock().insert(pipeline.to_string(), expectations);
    }

    /// Forgets the running ones of `pipeline`, if they are `expectations`.
    pub fn remove(&self, pipeline: &str, expectations: &Arc<Expectations>) {
        let mut running = self.lock();
        if running
            .get(pipeline)
            .is_some_and(|e| Arc::ptr_eq(e, expectations))
        {
            running.remove(pipeline);
        }
    }

    /// The running expectations of `pipeline`.
    pub fn get(&self, pipeline: &str) -> Option<Arc<Expectations>> {
        self.lock().get(pipeline).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Expectations>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Forgets `reporter` of a pipeline that is not running: its records are deleted and an open
/// absence's resolution queued on ingress (handled when the pipeline runs). `Ok(false)` when
/// it is not known.
pub async fn forget_stored(
    queue: &dyn QueueStore,
    pipeline: &str,
    reporter: &str,
    by: &str,
) -> tocsin_queue::Result<bool> {
    let Some((_, absent)) = stored(queue, pipeline)?.remove(reporter) else {
        return Ok(false);
    };
    let messages: Vec<Message> = absent
        .iter()
        .map(|a| resolution_message(pipeline, a, Ended::Forgotten(by), now_ms()))
        .collect();
    let writes = [
        write::<()>(seen_key(reporter), None),
        write::<()>(absent_key(reporter), None),
    ];
    queue.append_ingress(pipeline, &messages, &writes).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::Severity;

    fn policy(key_labels: &[&str]) -> ExpectPolicy {
        ExpectPolicy {
            every: Duration::from_secs(15 * 60),
            grace: Duration::from_secs(5 * 60),
            key_labels: key_labels.iter().map(|s| s.to_string()).collect(),
            severity: Severity::Error,
        }
    }

    #[test]
    fn a_message_reports_for_its_key_labels_unless_it_lacks_one_or_is_an_absence() {
        let p = policy(&["host", "dc"]);
        let m = Message::with_labels("1", Severity::Info, &[("dc", "fra"), ("host", "db1")]);
        let (name, labels) = reporter_of(&p, &m).unwrap();
        assert_eq!(name, "host=db1,dc=fra");
        assert_eq!(labels[0], ("host".to_string(), "db1".to_string()));
        let partial = Message::with_labels("2", Severity::Info, &[("host", "db1")]);
        assert!(reporter_of(&p, &partial).is_none());
        let mut own = m.clone();
        own.key = Some(format!("{KEY_PREFIX}host=db1,dc=fra"));
        assert!(reporter_of(&p, &own).is_none());
        let whole = reporter_of(&policy(&[]), &partial).unwrap();
        assert_eq!(whole, (WHOLE_SOURCE.to_string(), vec![]));
    }

    #[test]
    fn the_deadline_counts_from_the_later_of_the_last_report_and_the_start() {
        let p = policy(&["host"]);
        let twenty_min = 20 * 60 * 1000;
        assert_eq!(due_ms(&p, 1_000, 500), 1_000 + twenty_min);
        // Reported long before a restart: the clock starts at the restart.
        assert_eq!(due_ms(&p, 1_000, 9_000_000), 9_000_000 + twenty_min);
    }

    #[test]
    fn absence_and_resolution_say_who_since_when_and_share_a_key() {
        let p = policy(&["host"]);
        let labels = vec![("host".to_string(), "db1".to_string())];
        let seen = 1_700_000_000_000;
        let now = seen + 20 * 60 * 1000 + 17_000;
        let alert = absence_message("janitor", &p, &labels, seen, 0, now);
        assert_eq!(alert.summary.as_deref(), Some("db1: no report for 20m"));
        assert_eq!(alert.label("status"), Some("firing"));
        assert_eq!(alert.label("alertname"), Some(ALERTNAME));
        assert_eq!(alert.label("host"), Some("db1"));
        assert_eq!(alert.severity, Severity::Error);
        assert!(
            alert.body.contains("every 15m (grace 5m)"),
            "{}",
            alert.body
        );
        let absent = Absent {
            labels: labels.clone(),
            silent_since_ms: seen,
            due_ms: seen + 20 * 60 * 1000,
            severity: Severity::Error,
            raised_ms: now,
            message_id: alert.id.clone(),
        };
        let back = resolution_message("janitor", &absent, Ended::Reported(seen + 47 * 60_000), now);
        assert_eq!(
            back.summary.as_deref(),
            Some("db1: reporting again after 47m")
        );
        assert_eq!(back.label("status"), Some("resolved"));
        assert_eq!(back.key, alert.key);
        assert_ne!(back.id, alert.id);
        let gone = resolution_message("janitor", &absent, Ended::Forgotten("alice"), now);
        assert!(gone.body.contains("forgotten by alice"));
        let whole = absence_message("backup", &policy(&[]), &[], 0, seen, now);
        assert_eq!(whole.summary.as_deref(), Some("backup: no report for 20m"));
        assert!(whole.body.contains("not known"));
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        queue: Arc<dyn QueueStore>,
        tracer: Arc<crate::trace::Tracer>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn QueueStore> = tocsin_queue::SledStore::open(dir.path()).unwrap();
        let tracer = crate::trace::Tracer::new(queue.clone(), Duration::from_secs(60), 10);
        Fixture {
            _dir: dir,
            queue,
            tracer,
        }
    }

    impl Fixture {
        async fn load(&self, policy: ExpectPolicy, started_ms: u64) -> Arc<Expectations> {
            Expectations::load(
                "janitor",
                policy,
                started_ms,
                self.queue.clone(),
                RegisterLock::default(),
                Arc::new(Notify::new()),
                self.tracer.clone(),
            )
            .await
            .unwrap()
        }

        /// The messages on ingress, oldest first; taken off it.
        async fn take_ingress(&self) -> Vec<Message> {
            let heads = self.queue.ingress_heads("janitor", 100).unwrap();
            let messages = heads.iter().map(|(_, e)| e.message.clone()).collect();
            let hand_overs = heads
                .into_iter()
                .map(|(seq, _)| tocsin_queue::HandOver {
                    ingress: seq,
                    outputs: vec![],
                    state: vec![],
                })
                .collect();
            self.queue
                .hand_over_all("janitor", hand_overs)
                .await
                .unwrap();
            messages
        }

        fn stored_keys(&self) -> Vec<String> {
            self.queue
                .state_scan("janitor", STAGE)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        }
    }

    /// every 1 s, grace 1 s: absent 2 s after the last report.
    fn short(key_labels: &[&str]) -> ExpectPolicy {
        ExpectPolicy {
            every: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            key_labels: key_labels.iter().map(|s| s.to_string()).collect(),
            severity: Severity::Warning,
        }
    }

    fn db1() -> Vec<(String, String)> {
        vec![("host".to_string(), "db1".to_string())]
    }

    /// Notes a report as the filter worker does: in memory and, with the hand-over, stored.
    async fn report(f: &Fixture, e: &Expectations, at: u64) {
        let writes = e.note(vec![Report {
            reporter: "host=db1".into(),
            labels: db1(),
            at_ms: at,
        }]);
        f.queue.put_state("janitor", &writes).await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_reporter_raises_one_absence_and_one_resolution_when_it_returns() {
        let f = fixture();
        let t0 = 1_000_000;
        let e = f.load(short(&["host"]), t0).await;
        report(&f, &e, t0 + 100).await;
        let woken = tokio::time::timeout(Duration::ZERO, e.wake.notified()).await;
        assert!(
            woken.is_ok(),
            "a new reporter wakes the task: its deadline may come first"
        );
        e.step(t0 + 2_000, None).await.unwrap();
        assert!(
            f.take_ingress().await.is_empty(),
            "not due before every + grace"
        );
        let wait = e.step(t0 + 2_200, None).await.unwrap();
        let raised = f.take_ingress().await;
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].key.as_deref(), Some("absence/host=db1"));
        assert_eq!(raised[0].label("status"), Some("firing"));
        assert_eq!(raised[0].severity, Severity::Warning);
        assert_eq!(wait, RECHECK, "nothing else is due");
        assert_eq!(e.rows()[0].absent_since_ms, Some(t0 + 2_200));
        // Still silent: nothing more.
        e.step(t0 + 60_000, None).await.unwrap();
        assert!(f.take_ingress().await.is_empty(), "one alert per absence");
        // It reports again: one resolution, and its deadline runs from the report.
        report(&f, &e, t0 + 70_000).await;
        let wait = e.step(t0 + 70_010, None).await.unwrap();
        assert_eq!(
            wait,
            Duration::from_millis(1_990),
            "its next deadline bounds the wait"
        );
        let back = f.take_ingress().await;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].label("status"), Some("resolved"));
        assert_eq!(back[0].key, raised[0].key);
        assert_eq!(
            back[0].summary.as_deref(),
            Some("db1: reporting again after 1m")
        );
        assert_eq!(f.stored_keys(), ["seen/host=db1"]);
        assert_eq!(e.rows()[0].due_ms, Some(t0 + 72_000));
    }

    #[tokio::test]
    async fn no_absence_is_raised_while_a_report_of_before_the_deadline_is_queued() {
        let f = fixture();
        let t0 = 1_000_000;
        let e = f.load(short(&["host"]), t0).await;
        report(&f, &e, t0).await;
        let wait = e.step(t0 + 5_000, Some(t0 + 1_500)).await.unwrap();
        assert!(f.take_ingress().await.is_empty());
        assert_eq!(wait, BACKLOG_RECHECK);
        // What is queued entered after the deadline: the reporter was absent by then.
        e.step(t0 + 5_000, Some(t0 + 4_000)).await.unwrap();
        assert_eq!(f.take_ingress().await.len(), 1);
    }

    #[tokio::test]
    async fn after_a_restart_the_clock_starts_again_and_open_absences_are_not_raised_twice() {
        let f = fixture();
        let t0 = 1_000_000;
        let e = f.load(short(&["host"]), t0).await;
        report(&f, &e, t0).await;
        let other = vec![("host".to_string(), "db2".to_string())];
        let writes = e.note(vec![Report {
            reporter: "host=db2".into(),
            labels: other,
            at_ms: t0,
        }]);
        f.queue.put_state("janitor", &writes).await.unwrap();
        e.step(t0 + 2_500, None).await.unwrap();
        assert_eq!(f.take_ingress().await.len(), 2, "both absent");
        report(&f, &e, t0 + 3_000).await;
        drop(e);
        // Down for an hour; db1's return was stored but not yet resolved.
        let restart = t0 + 3_600_000;
        let e = f.load(short(&["host"]), restart).await;
        e.step(restart + 500, None).await.unwrap();
        let after = f.take_ingress().await;
        assert_eq!(after.len(), 1, "only db1's resolution: {after:?}");
        assert_eq!(after[0].label("host"), Some("db1"));
        assert_eq!(after[0].label("status"), Some("resolved"));
        // db1 is due from the restart, not from its report before it.
        e.step(restart + 1_900, None).await.unwrap();
        assert!(
            f.take_ingress().await.is_empty(),
            "no false absence after a restart"
        );
        e.step(restart + 2_100, None).await.unwrap();
        let again = f.take_ingress().await;
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].label("host"), Some("db1"));
        assert_eq!(again[0].label("status"), Some("firing"));
    }

    #[tokio::test]
    async fn forgetting_a_reporter_resolves_its_absence_and_deletes_its_records() {
        let f = fixture();
        let t0 = 1_000_000;
        let e = f.load(short(&["host"]), t0).await;
        report(&f, &e, t0).await;
        e.step(t0 + 2_500, None).await.unwrap();
        f.take_ingress().await;
        assert!(!e.forget("host=db9", "alice").await.unwrap());
        assert!(e.forget("host=db1", "alice").await.unwrap());
        let gone = f.take_ingress().await;
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].label("status"), Some("resolved"));
        assert!(gone[0].body.contains("alice"));
        assert!(f.stored_keys().is_empty());
        assert!(e.rows().is_empty());
        e.step(t0 + 100_000, None).await.unwrap();
        assert!(f.take_ingress().await.is_empty());
        // Stored only (the pipeline not running): the same.
        report(&f, &e, t0 + 100_000).await;
        assert!(
            forget_stored(f.queue.as_ref(), "janitor", "host=db1", "bob")
                .await
                .unwrap()
        );
        assert!(f.take_ingress().await.is_empty(), "nothing was open");
        assert!(f.stored_keys().is_empty());
    }

    #[tokio::test]
    async fn reporters_named_by_other_key_labels_are_dropped_when_the_file_changes_them() {
        let f = fixture();
        let t0 = 1_000_000;
        let e = f.load(short(&["host"]), t0).await;
        report(&f, &e, t0).await;
        e.step(t0 + 2_500, None).await.unwrap();
        f.take_ingress().await;
        drop(e);
        let e = f.load(short(&["instance"]), t0 + 3_000).await;
        let resolved = f.take_ingress().await;
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].label("status"), Some("resolved"));
        assert!(e.rows().is_empty());
        assert!(f.stored_keys().is_empty());
    }

    #[test]
    fn open_absence_and_resolution_are_alerts_of_one_identity() {
        let p = policy(&["host"]);
        let labels = vec![("host".to_string(), "db1".to_string())];
        let alert = absence_message("j", &p, &labels, 1, 0, 2);
        let absent = Absent {
            labels,
            silent_since_ms: 1,
            due_ms: 1,
            severity: Severity::Error,
            raised_ms: 2,
            message_id: alert.id.clone(),
        };
        let back = resolution_message("j", &absent, Ended::Reported(3), 4);
        assert_eq!(
            crate::open_alerts::alert_identity(&alert),
            crate::open_alerts::alert_identity(&back)
        );
        assert!(crate::open_alerts::is_resolution(&back));
        assert!(!crate::open_alerts::is_resolution(&alert));
    }
}
