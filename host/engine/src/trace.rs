//! Where is my alert? Every step a message takes — accepted, each filter's verdict, the sinks
//! its route took, each delivery attempt, delivered, dead-lettered, replayed — recorded with
//! its time and kept for a bounded window, so `tocsin trace ID` and the admin API answer.
//!
//! Recording is off the hot path: a step is pushed onto an in-memory list (one lock, no I/O),
//! and a background task writes the list to the store every [`FLUSH_EVERY`] in one batch per
//! pipeline, apart from the queues (its own trees; not counted in queue budgets). The group
//! commit makes it durable with the next commit, so a crash loses at most the last moments of
//! the trace — never a message. Every [`PRUNE_EVERY`], each pipeline's trace is cut to the
//! retention window and to its most recent records (`--trace-retention`, `--trace-max`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use tocsin_queue::QueueStore;

/// How often recorded steps are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often each pipeline's trace is cut to its bounds.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Steps held in memory at most between two writes; past it (a store far behind) new ones are
/// counted and dropped.
pub const MAX_PENDING: usize = 200_000;
/// The default retention window.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Characters of a message's summary kept with its `accepted` step.
pub const SUMMARY_CHARS: usize = 120;

/// The default number of records kept per pipeline.
pub const DEFAULT_MAX_PER_PIPELINE: usize = 100_000;

/// One step of one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// When, in ms since the epoch.
    pub at_ms: u64,
    /// The message's id (a split's outputs have ids of their own, `<id>/<n>` unless the
    /// filter named them).
    pub id: String,
    /// What happened.
    pub step: Step,
}

/// A step and its pipeline, as the admin API answers a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineEvent {
    /// The pipeline.
    pub pipeline: String,
    /// The step.
    #[serde(flatten)]
    pub event: TraceEvent,
}

/// What happened to a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The source produced it: `via` says how (a request and its client, or a poll).
    Accepted {
        /// `POST /ingest/p from 10.0.0.7:51234`, `poll at 2026-12-05T10:00:00Z`, …
        via: String,
        /// The message's summary, or the first line of its body, cut to [`SUMMARY_CHARS`]
        /// (absent from records written before it was kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
        /// Its severity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        severity: Option<String>,
    },
    /// A filter let it through unchanged.
    Passed {
        /// `filter.0 (dedup)`.
        filter: String,
    },
    /// A filter dropped it.
    Dropped {
        /// `filter.0 (dedup)`.
        filter: String,
    },
    /// A filter changed it.
    Rewritten {
        /// `filter.1 (template)`.
        filter: String,
    },
    /// A filter made several messages of it.
    Split {
        /// The filter.
        filter: String,
        /// The outputs' ids.
        into: Vec<String>,
    },
    /// The filters failed on it (it is retried, or dead-lettered after the last attempt).
    FilterFailed {
        /// The failing filter.
        filter: String,
        /// The error.
        error: String,
    },
    /// Which sinks' `match` took it after the filters; none means it went nowhere.
    Routed {
        /// Sinks it was queued for.
        to: Vec<String>,
        /// Sinks whose `match` did not take it.
        not_to: Vec<String>,
    },
    /// A delivery attempt that failed; it is retried.
    AttemptFailed {
        /// The sink.
        sink: String,
        /// Which attempt (1 is the first).
        attempt: u32,
        /// The error.
        error: String,
        /// When the next attempt is due, in ms since the epoch.
        retry_at_ms: u64,
    },
    /// Delivered.
    Delivered {
        /// The sink.
        sink: String,
        /// Which attempt succeeded.
        attempt: u32,
    },
    /// Moved to dead letters.
    DeadLettered {
        /// The queue (a sink, or `@filters`).
        queue: String,
        /// The last error.
        error: String,
    },
    /// Accepted, but the store could not keep it: the sender was answered 503 (a poll's
    /// messages are lost for that tick).
    NotStored {
        /// Why.
        error: String,
    },
    /// Replayed from dead letters by an operator.
    Replayed {
        /// The queue it went back to.
        queue: String,
    },
    /// A silence kept it from a sink its `match` took it to.
    Silenced {
        /// The sink.
        sink: String,
        /// The silence's id.
        silence: String,
    },
    /// Queued for a sink when the silence that held it back ended (its alert still open, or
    /// resolved after the sink saw it open).
    Released {
        /// The sink.
        sink: String,
        /// The silence's id.
        silence: String,
    },
}

/// Records steps and answers trace queries.
pub struct Tracer {
    queue: Arc<dyn QueueStore>,
    enabled: bool,
    retention: Duration,
    max_per_pipeline: usize,
    pending: Mutex<Vec<(String, TraceEvent)>>,
    /// Held for a whole flush, from taking `pending` to the store's write: a reader's flush
    /// waits for one in progress, so it never reads between the two and misses those steps.
    flushing: Mutex<()>,
    dropped: AtomicU64,
}

impl Tracer {
    /// A tracer writing to `queue`, keeping `retention` and at most `max_per_pipeline` records
    /// per pipeline; a retention of zero turns tracing off.
    pub fn new(
        queue: Arc<dyn QueueStore>,
        retention: Duration,
        max_per_pipeline: usize,
    ) -> Arc<Self> {
        Arc::new(Tracer {
            queue,
            enabled: !retention.is_zero() && max_per_pipeline > 0,
            retention,
            max_per_pipeline,
            pending: Mutex::new(Vec::new()),
            flushing: Mutex::new(()),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether steps are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Records a step of message `id` of `pipeline`, now.
    pub fn record(&self, pipeline: &str, id: &str, step: Step) {
        if !self.enabled {
            return;
        }
        let event = TraceEvent {
            at_ms: tocsin_queue::now_ms(),
            id: id.to_string(),
            step,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.push((pipeline.to_string(), event));
    }

    /// Records that `messages` were accepted, `via` a request or a poll, with their summaries.
    pub fn record_accepted(&self, pipeline: &str, messages: &[tocsin_message::Message], via: &str) {
        if !self.enabled {
            return;
        }
        for m in messages {
            let text = m.summary.as_deref().unwrap_or(&m.body);
            let first_line = text.lines().next().unwrap_or_default();
            let summary: String = first_line.chars().take(SUMMARY_CHARS).collect();
            let step = Step::Accepted {
                via: via.to_string(),
                summary: (!summary.is_empty()).then_some(summary),
                severity: Some(m.severity.as_str().to_string()),
            };
            self.record(pipeline, &m.id, step);
        }
    }

    /// Records `step` for each of `messages`.
    pub fn record_all(&self, pipeline: &str, messages: &[tocsin_message::Message], step: Step) {
        if !self.enabled {
            return;
        }
        for m in messages {
            self.record(pipeline, &m.id, step.clone());
        }
    }

    /// Steps dropped because the store fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what was recorded so far to the store; when it returns, everything recorded
    /// before the call is readable there.
    pub fn flush(&self) {
        let _whole = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.is_empty() {
            return;
        }
        let mut by_pipeline: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (pipeline, event) in taken {
            if let Ok(bytes) = serde_json::to_vec(&event) {
                by_pipeline
                    .entry(pipeline)
                    .or_default()
                    .push((event.at_ms, bytes));
            }
        }
        for (pipeline, records) in by_pipeline {
            if let Err(e) = self.queue.trace_append(&pipeline, &records) {
                tracing::warn!(pipeline = %pipeline, error = %e, "cannot write the message trace");
            }
        }
    }

    /// Cuts every pipeline's trace to the retention window and the record limit.
    pub fn prune(&self) {
        let before = tocsin_queue::now_ms()
            .saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        for pipeline in self.queue.traced_pipelines().unwrap_or_default() {
            if let Err(e) = self
                .queue
                .trace_prune(&pipeline, before, self.max_per_pipeline)
            {
                tracing::warn!(pipeline = %pipeline, error = %e, "cannot prune the message trace");
            }
        }
    }

    /// Writes and prunes until `stop`, then writes what is left.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if !self.enabled {
            return;
        }
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = flush.tick() => {
                    let tracer = self.clone();
                    let _ = tokio::task::spawn_blocking(move || tracer.flush()).await;
                }
                _ = prune.tick() => {
                    let tracer = self.clone();
                    let _ = tokio::task::spawn_blocking(move || tracer.prune()).await;
                }
            }
        }
        self.flush();
    }

    /// Every recorded step of message `id` (and of the messages a filter split it into), in
    /// time order, with their pipelines; of one pipeline, or of all.
    pub fn trace(
        &self,
        pipeline: Option<&str>,
        id: &str,
    ) -> Result<Vec<(String, TraceEvent)>, tocsin_queue::QueueError> {
        let split_prefix = format!("{id}/");
        let mut found = self.read(pipeline, 0, &|event| {
            event.id == id || event.id.starts_with(&split_prefix)
        })?;
        found.sort_by_key(|(_, e)| e.at_ms);
        Ok(found)
    }

    /// Every step recorded since about `from_ms` (whole writes begun at or after it), of
    /// `pipeline` or of all, with their pipelines.
    pub fn events_since(
        &self,
        pipeline: Option<&str>,
        from_ms: u64,
    ) -> Result<Vec<(String, TraceEvent)>, tocsin_queue::QueueError> {
        self.read(pipeline, from_ms, &|_| true)
    }

    /// The steps `keep` takes of those recorded since about `from_ms` (all written so far
    /// included), of `pipeline` or of all, with their pipelines.
    fn read(
        &self,
        pipeline: Option<&str>,
        from_ms: u64,
        keep: &dyn Fn(&TraceEvent) -> bool,
    ) -> Result<Vec<(String, TraceEvent)>, tocsin_queue::QueueError> {
        self.flush();
        let pipelines = match pipeline {
            Some(p) => vec![p.to_string()],
            None => self.queue.traced_pipelines()?,
        };
        let mut found = Vec::new();
        for p in pipelines {
            self.queue.trace_scan_since(&p, from_ms, &mut |bytes| {
                if let Ok(event) = serde_json::from_slice::<TraceEvent>(bytes) {
                    if keep(&event) {
                        found.push((p.clone(), event));
                    }
                }
            })?;
        }
        Ok(found)
    }
}

/// A trace as `tocsin trace` prints it: one line per step.
pub fn format_trace(events: &[(String, TraceEvent)]) -> String {
    let mut out = String::new();
    for (pipeline, event) in events {
        let at = chrono::DateTime::from_timestamp_millis(i64::try_from(event.at_ms).unwrap_or(0))
            .map_or_else(
                || event.at_ms.to_string(),
                |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
            );
        let what = match &event.step {
            Step::Accepted { via, .. } => format!("accepted: {via}"),
            Step::Passed { filter } => format!("passed {filter}"),
            Step::Dropped { filter } => format!("dropped by {filter}"),
            Step::Rewritten { filter } => format!("rewritten by {filter}"),
            Step::Split { filter, into } => format!("split by {filter} into {}", into.join(", ")),
            Step::FilterFailed { filter, error } => format!("{filter} failed: {error}"),
            Step::Routed { to, not_to } if to.is_empty() => {
                format!("matched no sink (not {})", not_to.join(", "))
            }
            Step::Routed { to, not_to } if not_to.is_empty() => {
                format!("queued for {}", to.join(", "))
            }
            Step::Routed { to, not_to } => {
                format!("queued for {} (not {})", to.join(", "), not_to.join(", "))
            }
            Step::AttemptFailed {
                sink,
                attempt,
                error,
                ..
            } => format!("{sink}: attempt {attempt} failed: {error}"),
            Step::Delivered { sink, attempt } => format!("{sink}: delivered (attempt {attempt})"),
            Step::DeadLettered { queue, error } => format!("dead-lettered in {queue}: {error}"),
            Step::NotStored { error } => {
                format!("not stored ({error}); the sender was told to retry")
            }
            Step::Replayed { queue } => format!("replayed to {queue}"),
            Step::Silenced { sink, silence } => format!("silenced by {silence} for {sink}"),
            Step::Released { sink, silence } => {
                format!("queued for {sink}: silence {silence} ended with the alert still to tell")
            }
        };
        out += &format!(
            "{at}  {pipeline:<20} {:<24} {}\n",
            tocsin_message::one_line(&event.id),
            tocsin_message::one_line(&what)
        );
    }
    out
}
