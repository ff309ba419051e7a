//! Ingress head → filters → one atomic hand-over to the sink queues.
//!
//! Filters run outside any storage transaction (they are plugins: bounded, but not instant).
//! Then one batch removes the ingress entry, appends the outputs to every sink whose `match`
//! takes them, and writes the plugin state the filters changed. If a filter fails, nothing of
//! that run is kept: the message stays at the head of ingress, is retried with backoff, and
//! after the pipeline's `filter_retry.max_attempts` goes to the pipeline's `@filters` dead letters.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::RetryPolicy;
use tocsin_message::Message;
use tocsin_queue::{now_ms, Envelope, HandOver, QueueStore, StateWrite, FILTERS_QUEUE};
use tocsin_runtime::{CallError, Stage};

use crate::pipeline::{next_due, sleep_or_cancel, state_writes, SinkRoute, IDLE_RECHECK};
use crate::status::{Counters, PipelineStatus, StageEvent};

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
        while let Some((seq, envelope)) =
            next_due(|| queue.ingress_head(&pipeline), &ready, &cancel, &what).await
        {
            self.handle(seq, envelope).await;
        }
    }

    async fn handle(&mut self, seq: u64, mut envelope: Envelope) {
        let status = self.status.clone();
        let c = &status.counters;
        match self.run_filters(&envelope.message).await {
            Ok((outputs, state)) => {
                // Sink envelopes keep the time the message entered the pipeline, so delivery
                // latency covers the whole way.
                let entered = envelope.enqueued_ms;
                let mut hand_over = HandOver {
                    ingress: seq,
                    outputs: Vec::new(),
                    state,
                };
                let mut woken = Vec::new();
                for sink in &self.sinks {
                    let envelopes: Vec<Envelope> = outputs
                        .iter()
                        .filter(|m| sink.route.matches(m))
                        .map(|m| Envelope::new(m.clone(), entered))
                        .collect();
                    if !envelopes.is_empty() {
                        hand_over.outputs.push((sink.name.clone(), envelopes));
                        woken.push(sink.ready.clone());
                    }
                }
                match self.queue.hand_over(&self.pipeline, hand_over).await {
                    Ok(()) => {
                        Counters::bump(&c.handed_over);
                        woken.iter().for_each(|n| n.notify_one());
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %self.pipeline, error = %e, "hand-over failed; will retry");
                        sleep_or_cancel(IDLE_RECHECK, &self.cancel).await;
                    }
                }
            }
            Err((stage, e)) => {
                status.call_failed(&stage, &e);
                envelope.attempts += 1;
                envelope.last_error = Some(e.to_string());
                if envelope.attempts >= self.retry.max_attempts {
                    tracing::error!(pipeline = %self.pipeline, message = %envelope.message.id, attempts = envelope.attempts, error = %e, "filters failed; message moved to dead letters");
                    match self
                        .queue
                        .dead_letter(&self.pipeline, FILTERS_QUEUE, seq, &envelope)
                        .await
                    {
                        Ok(()) => status.record(&stage, StageEvent::DeadLetter),
                        Err(e) => {
                            tracing::error!(pipeline = %self.pipeline, error = %e, "cannot dead-letter")
                        }
                    }
                } else {
                    let delay = self
                        .retry
                        .jittered_delay(envelope.attempts, rand::random::<f64>());
                    envelope.not_before_ms = now_ms() + delay.as_millis() as u64;
                    tracing::warn!(pipeline = %self.pipeline, message = %envelope.message.id, attempts = envelope.attempts, retry_in = ?delay, error = %e, "filters failed; will retry");
                    status.record(&stage, StageEvent::Retry);
                    if let Err(e) = self.queue.update_ingress(&self.pipeline, seq, &envelope) {
                        tracing::error!(pipeline = %self.pipeline, error = %e, "cannot record the failure");
                    }
                }
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
            for m in &current {
                let (out, changes) = stage
                    .process(m)
                    .await
                    .map_err(|e| (format!("filter.{i}"), e))?;
                next.extend(number_outputs(&m.id, out));
                state.extend(state_writes(&format!("filter.{i}"), changes));
            }
            current = next;
        }
        Ok((current, state))
    }
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
