//! Ingress head → filters → one atomic hand-over to the sink queues.
//!
//! Filters run outside any storage transaction (they are plugins: bounded, but not instant).
//! The worker takes the due entries at the head of ingress (up to [`HAND_OVER_BATCH`]), runs the
//! filters on each in order (until [`HAND_OVER_MAX_WAIT`] has passed, so slow filters do not
//! hold finished messages back), then one batch removes those ingress entries, appends their
//! outputs to every sink whose `match` takes them and writes the plugin state the filters
//! changed — one commit (one fsync) for the run; the sinks are woken as soon as the batch is
//! applied, not after its fsync (a crash before it leaves the ingress entries in place, to be
//! filtered and delivered again under the same keys). State a filter writes is visible to the next
//! call at once through [`PendingState`]. If a filter fails, nothing of that message's run is
//! kept: the messages before it are handed over, it stays at the head of ingress and is retried
//! with backoff, and after the pipeline's `filter_retry.max_attempts` goes to the pipeline's
//! `@filters` dead letters.
//!
//! At the hand-over each output meets the silences and the pipeline's maintenance windows: one
//! they mute for a sink is not queued for it (counted, traced), and the open-alert register notes, in the same batch,
//! what each sink was handed or held back of each alert (see `open_alerts.rs`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::maintenance::MaintenanceWindow;
use tocsin_config::{RetryPolicy, Route};
use tocsin_message::Message;
use tocsin_queue::{now_ms, Envelope, HandOver, QueueStore, StateWrite, FILTERS_QUEUE};
use tocsin_runtime::{CallError, Stage};

use crate::open_alerts::{RegisterBatch, ACKNOWLEDGED_BY};
use crate::silence_release::RegisterLock;
use crate::silences::{Muting, SilenceSet};
use crate::status::{Counters, PipelineStatus, StageEvent};
use crate::worker::{next_due, sleep_or_cancel, state_writes, IDLE_RECHECK};

/// A sink as the filter worker routes to it.
#[derive(Clone)]
pub struct SinkRoute {
    /// The sink's name.
    pub name: String,
    /// Which messages it takes.
    pub route: Route,
    /// Woken when its queue grows.
    pub ready: Arc<Notify>,
}

/// Moves one pipeline's ingress through its filters.
pub struct FilterWorker {
    /// The pipeline's name.
    pub pipeline: String,
    /// The filter stages, in order.
    pub filters: Vec<Stage>,
    /// How to retry the chain.
    pub retry: RetryPolicy,
    /// The sinks and their routes.
    pub sinks: Vec<SinkRoute>,
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// Woken when ingress grows.
    pub ingress_ready: Arc<Notify>,
    /// Counters.
    pub status: Arc<PipelineStatus>,
    /// Stops the loop between messages.
    pub cancel: CancellationToken,
    /// State written by the current batch, read by the filters before committed state.
    pub pending: Arc<PendingState>,
    /// Where each message's steps are recorded.
    pub tracer: Arc<crate::trace::Tracer>,
    /// How the trace names each filter: `filter.0 (dedup)`.
    pub filter_names: Vec<String>,
    /// The silences, as they change.
    pub silences: tokio::sync::watch::Receiver<Arc<SilenceSet>>,
    /// Held while the open-alert register is read and written (shared with the release
    /// task).
    pub register_lock: RegisterLock,
    /// The pipeline's maintenance windows.
    pub maintenance: Arc<[MaintenanceWindow]>,
    /// Who the pipeline expects reports from (`expect`), told of each report at its
    /// hand-over.
    pub expectations: Option<Arc<crate::absence::Expectations>>,
    /// The pipeline's `[[inhibit]]` rules and the open alerts that inhibit.
    pub inhibitions: Option<Arc<crate::inhibition::Inhibitions>>,
    /// Wakes the release task (an inhibiting alert resolved).
    pub release_wake: Arc<Notify>,
}

/// One ingress entry through the filters.
struct Filtered {
    /// Its place in ingress.
    seq: u64,
    /// When it entered the pipeline.
    entered_ms: u64,
    /// What the filters made of it.
    outputs: Vec<Message>,
    /// The plugin state they wrote on the way.
    state: Vec<StateWrite>,
    /// The reporter it reports for, when the pipeline expects reports.
    reporter: Option<(String, Vec<(String, String)>)>,
}

/// The most ingress entries one hand-over commit takes: filters run on each in turn, then one
/// atomic batch and one fsync hand them all over (instead of one fsync per message, which caps
/// a pipeline at the disk's sync rate).
pub const HAND_OVER_BATCH: usize = 128;

/// A run is handed over once its filters have taken this long, with what is done so far: the
/// rest waits for the next run. Fast filters fill a batch well within it; a slow one (a
/// filter taking 0.9 s per message) no longer holds back each output until the whole batch
/// of 128 is through.
pub const HAND_OVER_MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Plugin state the filters wrote for messages of the current batch, not yet committed: the
/// filters' state readers look here first, so the second of two identical messages in one batch
/// sees what the first one wrote (dedup), as it would with one commit per message.
#[derive(Default)]
pub struct PendingState {
    writes: std::sync::Mutex<std::collections::HashMap<StateKey, Option<Vec<u8>>>>,
}

/// (stage, key).
type StateKey = (String, String);

impl PendingState {
    /// What the batch wrote to `key` of `stage`: `Some(None)` when it deleted it, `None` when
    /// it did not touch it.
    pub fn get(&self, stage: &str, key: &str) -> Option<Option<Vec<u8>>> {
        let writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        writes.get(&(stage.to_string(), key.to_string())).cloned()
    }

    fn record(&self, changes: &[StateWrite]) {
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        for w in changes {
            writes.insert((w.stage.clone(), w.key.clone()), w.value.clone());
        }
    }

    fn clear(&self) {
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl FilterWorker {
    /// Runs until cancelled.
    pub async fn run(mut self) {
        let what = format!("the ingress queue of {}", self.pipeline);
        let (queue, ready, cancel) = (
            self.queue.clone(),
            self.ingress_ready.clone(),
            self.cancel.clone(),
        );
        let pipeline = self.pipeline.clone();
        loop {
            // One read of the head and the entries behind it (ingress records hold whole
            // appends, so reading the head alone would decode its record twice).
            let mut heads = Vec::new();
            let read = |heads: &mut Vec<_>| {
                *heads = queue.ingress_heads(&pipeline, HAND_OVER_BATCH)?;
                Ok(heads.first().cloned())
            };
            if next_due(|| read(&mut heads), &ready, &cancel, &what)
                .await
                .is_none()
            {
                return;
            }
            // The head is due; take the due entries right behind it too.
            let now = now_ms();
            let run = heads
                .into_iter()
                .take_while(|(_, e)| e.not_before_ms <= now)
                .collect();
            self.handle(run).await;
        }
    }

    /// Filters a run of due ingress entries, oldest first, and hands the outputs over in one
    /// commit. A failing entry stops the run: the ones before it are handed over, it is retried
    /// (or dead-lettered), and the ones after it wait, so order is kept.
    async fn handle(&mut self, run: Vec<(u64, Envelope)>) {
        let status = self.status.clone();
        let c = &status.counters;
        let mut filtered: Vec<Filtered> = Vec::new();
        let mut woken = vec![false; self.sinks.len()];
        let mut failure = None;
        let started = tokio::time::Instant::now();
        for (seq, envelope) in run {
            if !filtered.is_empty() && started.elapsed() >= HAND_OVER_MAX_WAIT {
                break;
            }
            match self.run_filters(&envelope.message).await {
                Ok((outputs, state)) => {
                    if self.tracer.enabled() {
                        self.trace_routes(&outputs);
                    }
                    let reporter = self
                        .expectations
                        .as_ref()
                        .and_then(|e| crate::absence::reporter_of(e.policy(), &envelope.message));
                    // Sink envelopes keep the time the message entered the pipeline, so
                    // delivery latency covers the whole way.
                    filtered.push(Filtered {
                        seq,
                        entered_ms: envelope.enqueued_ms,
                        outputs,
                        state,
                        reporter,
                    });
                }
                Err(e) => {
                    failure = Some((seq, envelope, e));
                    break;
                }
            }
        }
        // The run's filters are done: their writes go to the store with the hand-over (or,
        // if it fails, are redone with the retried messages).
        self.pending.clear();
        let handed = filtered.len() as u64;
        if handed > 0 {
            // The register is read and written under its lock, until the batch is applied.
            let lock = self.register_lock.clone();
            let register = lock.lock().await;
            let hand_overs = self.route(filtered, &mut woken);
            let commit = self.queue.hand_over_all(&self.pipeline, hand_overs);
            drop(register);
            if commit.applied() {
                // The sinks start at once, while the commit's fsync runs: if the process dies
                // before it is durable, the ingress entries are still there, and are filtered
                // and delivered again under the same idempotency keys.
                for (sink, woken) in self.sinks.iter().zip(woken) {
                    if woken {
                        sink.ready.notify_one();
                    }
                }
            }
            match commit.await {
                Ok(()) => {
                    Counters::add(&c.handed_over, handed);
                }
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline, error = %e, "hand-over failed; will retry");
                    sleep_or_cancel(IDLE_RECHECK, &self.cancel).await;
                    return;
                }
            }
        }
        if let Some((seq, envelope, (stage, e))) = failure {
            self.failed(seq, envelope, stage, e).await;
        }
    }

    /// The hand-overs of a filtered run: each output queued for every sink whose `match`
    /// takes it and no silence mutes it there, and the open-alert register's changes and the
    /// reports seen (`expect`) with the filters' state. Marks in `woken` the sinks that get
    /// something.
    fn route(&self, filtered: Vec<Filtered>, woken: &mut [bool]) -> Vec<HandOver> {
        let silences = self.silences.borrow().clone();
        let now = now_ms();
        let muting = Muting::at(&silences, &self.maintenance, now);
        let mut register = RegisterBatch::new(self.queue.as_ref(), &self.pipeline);
        let mut hand_overs = Vec::with_capacity(filtered.len());
        let mut reports = Vec::new();
        for Filtered {
            seq,
            entered_ms: entered,
            outputs,
            mut state,
            reporter,
        } in filtered
        {
            if let Some((reporter, labels)) = reporter {
                reports.push(crate::absence::Report {
                    reporter,
                    labels,
                    at_ms: entered,
                });
            }
            let mut per_sink: Vec<Vec<Envelope>> = vec![Vec::new(); self.sinks.len()];
            for m in outputs {
                let mut routed = Vec::new();
                let identity = self
                    .inhibitions
                    .as_ref()
                    .and_then(|_| crate::open_alerts::registered_identity(&m));
                let inhibited = match (&self.inhibitions, &identity) {
                    (Some(inhibitions), Some(identity)) => inhibitions.inhibited_by(identity, &m),
                    _ => None,
                };
                // An acknowledged alert: its reminders stay back, what goes out says who.
                let record = register
                    .current(&m)
                    .filter(|r| r.ack.as_ref().is_some_and(|a| a.active(now)))
                    .cloned();
                let labelled = record.as_ref().and_then(|r| r.ack.as_ref()).map(|ack| {
                    let mut labelled = m.clone();
                    labelled
                        .labels
                        .push((ACKNOWLEDGED_BY.to_string(), ack.by.clone()));
                    labelled
                });
                let to_send = labelled.as_ref().unwrap_or(&m);
                for (i, sink) in self.sinks.iter().enumerate() {
                    if !sink.route.matches(&m) {
                        continue;
                    }
                    if let Some(ack) = record
                        .as_ref()
                        .and_then(|r| r.ack_mutes(&m, &sink.name, now))
                    {
                        let stage = format!("sink.{}", sink.name);
                        self.status.record(&stage, StageEvent::Acknowledged);
                        let step = crate::trace::Step::Silenced {
                            sink: sink.name.clone(),
                            silence: format!("acknowledgement of {}", ack.by),
                        };
                        self.tracer.record(&self.pipeline, &m.id, step);
                        continue;
                    }
                    let muted = (!muting.is_empty())
                        .then(|| muting.muted_by(&self.pipeline, &sink.name, &m))
                        .flatten()
                        .or_else(|| inhibited.clone());
                    match &muted {
                        None => {
                            per_sink[i].push(Envelope::new(to_send.clone(), entered));
                            woken[i] = true;
                        }
                        Some(silence) => {
                            self.status
                                .record(&format!("sink.{}", sink.name), StageEvent::Silenced);
                            let step = crate::trace::Step::Silenced {
                                sink: sink.name.clone(),
                                silence: silence.clone(),
                            };
                            self.tracer.record(&self.pipeline, &m.id, step);
                        }
                    }
                    routed.push((sink.name.clone(), muted));
                }
                state.extend(register.observe(&m, &routed, now));
                if let (Some(inhibitions), Some(identity)) = (&self.inhibitions, &identity) {
                    if inhibitions.observe(identity, &m) {
                        self.release_wake.notify_one();
                    }
                }
            }
            let outputs = self
                .sinks
                .iter()
                .zip(per_sink)
                .filter(|(_, envelopes)| !envelopes.is_empty())
                .map(|(sink, envelopes)| (sink.name.clone(), envelopes))
                .collect();
            hand_overs.push(HandOver {
                ingress: seq,
                outputs,
                state,
            });
        }
        // The run's reports, written with its last hand-over (the batch is one commit).
        if let (Some(expectations), Some(last)) = (&self.expectations, hand_overs.last_mut()) {
            if !reports.is_empty() {
                last.state.extend(expectations.note(reports));
            }
        }
        hand_overs
    }

    /// Records which sinks' routes took each output.
    fn trace_routes(&self, outputs: &[Message]) {
        for m in outputs {
            let (to, not_to): (Vec<&SinkRoute>, Vec<&SinkRoute>) =
                self.sinks.iter().partition(|s| s.route.matches(m));
            let names = |routes: Vec<&SinkRoute>| routes.iter().map(|r| r.name.clone()).collect();
            let step = crate::trace::Step::Routed {
                to: names(to),
                not_to: names(not_to),
            };
            self.tracer.record(&self.pipeline, &m.id, step);
        }
    }

    /// Records a failed filter run: retry with backoff, or dead letters after the last attempt.
    async fn failed(&mut self, seq: u64, mut envelope: Envelope, stage: String, e: CallError) {
        let status = self.status.clone();
        status.call_failed(&stage, &e);
        envelope.attempts += 1;
        envelope.last_error = Some(e.to_string());
        let filter = stage
            .strip_prefix("filter.")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.filter_names.get(i).cloned())
            .unwrap_or_else(|| stage.clone());
        self.tracer.record(
            &self.pipeline,
            &envelope.message.id,
            crate::trace::Step::FilterFailed {
                filter,
                error: e.to_string(),
            },
        );
        if envelope.attempts >= self.retry.max_attempts {
            tracing::error!(pipeline = %self.pipeline, message_id = %envelope.message.id, attempts = envelope.attempts, error = %e, "filters failed; message moved to dead letters");
            match self
                .queue
                .dead_letter(&self.pipeline, FILTERS_QUEUE, seq, &envelope)
                .await
            {
                Ok(()) => {
                    status.dead_lettered(&stage, FILTERS_QUEUE, &e.to_string());
                    self.tracer.record(
                        &self.pipeline,
                        &envelope.message.id,
                        crate::trace::Step::DeadLettered {
                            queue: FILTERS_QUEUE.into(),
                            error: e.to_string(),
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(pipeline = %self.pipeline, error = %e, "cannot dead-letter")
                }
            }
        } else {
            let delay = self
                .retry
                .jittered_delay(envelope.attempts, rand::random::<f64>());
            envelope.not_before_ms = now_ms() + delay.as_millis() as u64;
            tracing::warn!(pipeline = %self.pipeline, message_id = %envelope.message.id, attempts = envelope.attempts, retry_in = ?delay, error = %e, "filters failed; will retry");
            status.record(&stage, StageEvent::Retry);
            if let Err(e) = self.queue.update_ingress(&self.pipeline, seq, &envelope) {
                tracing::error!(pipeline = %self.pipeline, error = %e, "cannot record the failure");
            }
        }
    }

    /// Runs the chain on one message: the final outputs and every state write made on the way,
    /// or the failing stage's name and error.
    async fn run_filters(
        &mut self,
        msg: &Message,
    ) -> Result<(Vec<Message>, Vec<StateWrite>), (String, CallError)> {
        let mut current = vec![msg.clone()];
        let mut state = Vec::new();
        for (i, stage) in self.filters.iter_mut().enumerate() {
            let mut next = Vec::with_capacity(current.len());
            for m in current {
                let input_id = m.id.clone();
                let before = self.tracer.enabled().then(|| m.clone());
                let (out, changes) = stage
                    .process(m)
                    .await
                    .map_err(|e| (format!("filter.{i}"), e))?;
                let out = number_outputs(&input_id, out);
                if let Some(before) = before {
                    let name = self.filter_names.get(i).map_or("filter", String::as_str);
                    trace_verdict(&self.tracer, &self.pipeline, name, &before, &out);
                }
                next.extend(out);
                if !changes.is_empty() {
                    let writes = state_writes(&format!("filter.{i}"), changes);
                    // Visible to the next call at once (the next output of a split, the next
                    // message of the batch); committed with the hand-over.
                    self.pending.record(&writes);
                    state.extend(writes);
                }
            }
            current = next;
        }
        Ok((current, state))
    }
}

/// Records what `filter` did with `input` of `pipeline`.
fn trace_verdict(
    tracer: &crate::trace::Tracer,
    pipeline: &str,
    filter: &str,
    input: &Message,
    out: &[Message],
) {
    use crate::trace::Step;
    let filter = filter.to_string();
    let step = match out {
        [] => Step::Dropped { filter },
        [one] if one == input => Step::Passed { filter },
        [_] => Step::Rewritten { filter },
        many => Step::Split {
            filter,
            into: many.iter().map(|m| m.id.clone()).collect(),
        },
    };
    tracer.record(pipeline, &input.id, step);
}

/// Gives a split's outputs distinct ids: kept when the filter made them distinct, else
/// `<input id>/<n>`. A single output keeps whatever id the filter gave it (the input's, by
/// default), so a re-run after a crash produces the same ids.
pub fn number_outputs(input_id: &str, mut out: Vec<Message>) -> Vec<Message> {
    if out.len() > 1 {
        let mut ids: Vec<&str> = out.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < out.len() || ids.contains(&input_id) {
            for (n, m) in out.iter_mut().enumerate() {
                m.id = format!("{input_id}/{n}");
            }
        }
    }
    for m in out.iter_mut() {
        if m.id.is_empty() {
            m.id = input_id.to_string();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::Severity;

    fn msg(id: &str) -> Message {
        Message {
            id: id.into(),
            timestamp_ms: 0,
            severity: Severity::Info,
            summary: None,
            body: String::new(),
            labels: vec![],
            metrics: vec![],
            payload: None,
            link: None,
            key: None,
        }
    }

    #[test]
    fn split_outputs_get_numbered_ids_unless_the_filter_named_them() {
        let same = number_outputs("m", vec![msg("m"), msg("m")]);
        assert_eq!(
            same.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m/0", "m/1"]
        );
        let own = number_outputs("m", vec![msg("a"), msg("b")]);
        assert_eq!(
            own.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let single = number_outputs("m", vec![msg("")]);
        assert_eq!(single[0].id, "m");
    }
}
