//! Sink queue head → `sink.deliver`, in order per alert, with retry, backoff and dead letters.
//!
//! With `concurrency = N` (8 by default), up to N messages are delivered at once on up to N
//! plugin instances ([`SinkInstances`]: made when the queue has work for them), but never two
//! of one ordering key (one alert: see [`crate::delivery_order`]): a key's messages go
//! strictly in queue order, and a retrying message holds back only the later messages of its
//! own key, so "resolved" never overtakes its "firing". With `concurrency = 1`, one message
//! is in flight per sink and a retrying head blocks the whole queue. Outcomes:
//! - delivered → removed from the queue (with the state the sink wrote);
//! - retryable, a plugin error or trap → attempt counted, retried after exponential backoff
//!   with jitter;
//! - rate-limited(ms) → attempt counted, retried after at least `ms`;
//! - permanent, or the attempts used up → moved to the sink's dead letters with the last error.
//!
//! Every attempt carries the same idempotency key, `<pipeline>/<sink>/<message id>`.
//!
//! **Batches.** A sink that takes several messages per call (contract 0.2.0 `batch-limit`
//! over 1: `file`, `forward`, `webhook` with `batch`) gets the due messages of different
//! alerts spread over its free instances, up to its limit per call — one call instead of
//! many when a storm queues up, one message per call when the queue is quiet. A batch
//! succeeds or fails as a whole: each of its messages then counts the attempt and waits for
//! its own retry, as alone. Its idempotency key is the hash of its members' keys
//! (`sha256:…`), the same whenever the same messages are batched again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::RetryPolicy;
use tocsin_message::idempotency_key;
use tocsin_queue::{now_ms, Envelope, QueueStore, Seq};
use tocsin_runtime::{CallError, DeliveryOutcome, StateChanges};

use crate::delivery_order::{batches, HeadCache, OrderKeys};
use crate::sink_instances::SinkInstances;
use crate::status::{Counters, PipelineStatus};
use crate::trace::Step;
use crate::worker::{state_writes, IDLE_RECHECK};

/// Delivers one sink's queue.
pub struct DeliveryWorker {
    /// The pipeline's name.
    pub pipeline: String,
    /// The sink's name.
    pub sink: String,
    /// The sink's plugin instances: one per delivery in flight, up to its `concurrency`.
    pub instances: SinkInstances,
    /// Its `concurrency`: deliveries in flight at most.
    pub concurrency: usize,
    /// How to retry.
    pub retry: RetryPolicy,
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// Woken when the queue grows.
    pub ready: Arc<Notify>,
    /// Counters.
    pub status: Arc<PipelineStatus>,
    /// Where delivery latency is recorded.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Stops the loop between deliveries.
    pub cancel: CancellationToken,
    /// Where each message's steps are recorded.
    pub tracer: Arc<crate::trace::Tracer>,
}

impl DeliveryWorker {
    /// Runs until cancelled, then lets the deliveries in flight finish and settles them.
    ///
    /// Whenever an instance is free, it reads the queue's head (a window of it) and starts
    /// what [`pick`] allows — due entries whose key has nothing earlier in flight or waiting —
    /// each on a free instance; each outcome is settled as soon as it arrives.
    pub async fn run(mut self) {
        let what = format!("the queue of {}/{}", self.pipeline, self.sink);
        let (ready, cancel) = (self.ready.clone(), self.cancel.clone());
        let concurrency = self.concurrency;
        let order = OrderKeys::for_concurrency(concurrency);
        let batch_limit = self.batch_limit().await;
        let window_len = order
            .window(concurrency)
            .max(concurrency * batch_limit)
            .min(crate::delivery_order::MAX_LOOK_AHEAD);
        let mut running = FuturesUnordered::new();
        let mut in_flight: HashMap<Seq, String> = HashMap::new();
        let mut head = HeadCache::new();
        loop {
            let mut wake = IDLE_RECHECK;
            let free = self.instances.free();
            if !cancel.is_cancelled() && free > 0 {
                let now = now_ms();
                let read = |limit| self.queue.sink_heads(&self.pipeline, &self.sink, limit);
                let wanted = free * batch_limit;
                match head.take(
                    read,
                    &order,
                    window_len,
                    &in_flight,
                    wanted,
                    batch_limit,
                    now,
                ) {
                    Ok((taken, next_due_ms)) => {
                        if let Some(due) = next_due_ms {
                            wake = wake.min(Duration::from_millis(due.saturating_sub(now)));
                        }
                        for batch in batches(taken, free, batch_limit) {
                            let Some(mut stage) = self.instances.take() else {
                                for (seq, _, envelope) in batch {
                                    head.put_back(seq, envelope);
                                }
                                continue;
                            };
                            let idempotency = self.batch_key(&batch);
                            let mut entries = Vec::with_capacity(batch.len());
                            for (seq, key, envelope) in batch {
                                in_flight.insert(seq, key);
                                entries.push((seq, envelope));
                            }
                            running.push(async move {
                                let messages: Vec<&tocsin_message::Message> =
                                    entries.iter().map(|(_, e)| &e.message).collect();
                                let result = stage.deliver_batch(&messages, &idempotency).await;
                                (stage, entries, result)
                            });
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read {what}");
                        head.mark_stale();
                    }
                }
            }
            if cancel.is_cancelled() && running.is_empty() {
                return;
            }
            tokio::select! {
                Some((stage, entries, result)) = running.next(), if !running.is_empty() => {
                    self.instances.put_back(stage);
                    for (seq, _) in &entries {
                        in_flight.remove(seq);
                    }
                    for (seq, still_queued) in self.settle_batch(entries, result).await {
                        head.put_back(seq, still_queued);
                    }
                }
                _ = ready.notified(), if !cancel.is_cancelled() => head.mark_stale(),
                // Also what changed behind the worker (a replay) is read within a second.
                _ = tokio::time::sleep(wake), if !cancel.is_cancelled() => head.mark_stale(),
                _ = cancel.cancelled(), if !cancel.is_cancelled() => {}
            }
        }
    }

    /// The sink's `batch-limit` (1 when its first instance cannot say).
    async fn batch_limit(&mut self) -> usize {
        let Some(mut stage) = self.instances.take() else {
            return 1;
        };
        let limit = stage.batch_limit().await.unwrap_or(1);
        self.instances.put_back(stage);
        limit as usize
    }

    /// The idempotency key of a delivery: the message's own for one message, else the hash
    /// of its members' keys, in order.
    fn batch_key(&self, batch: &[(Seq, String, Envelope)]) -> String {
        let id_of = |e: &Envelope| idempotency_key(&self.pipeline, &self.sink, &e.message.id);
        match batch {
            [(_, _, only)] => id_of(only),
            _ => {
                let mut hash = <sha2::Sha256 as sha2::Digest>::new();
                for (_, _, envelope) in batch {
                    sha2::Digest::update(&mut hash, id_of(envelope).as_bytes());
                    sha2::Digest::update(&mut hash, b"\n");
                }
                format!("sha256:{}", hex::encode(sha2::Digest::finalize(hash)))
            }
        }
    }

    /// Records a delivery's outcome for each of its messages; returns those that stay
    /// queued (for their retries), as they now are. The state the sink wrote is committed
    /// with the first acknowledgement.
    async fn settle_batch(
        &mut self,
        entries: Vec<(Seq, Envelope)>,
        result: Result<(DeliveryOutcome, StateChanges), CallError>,
    ) -> Vec<(Seq, Envelope)> {
        if let Err(e) = &result {
            // One failed call, counted once, whatever it carried.
            self.status.call_failed(&format!("sink.{}", self.sink), e);
        }
        let mut result = result.map_err(|e| e.to_string());
        let mut still_queued = Vec::new();
        for (seq, envelope) in entries {
            let this = match &mut result {
                Ok((outcome, changes)) => Ok((outcome.clone(), std::mem::take(changes))),
                Err(e) => Err(e.clone()),
            };
            if let Some(envelope) = self.settle(seq, envelope, this).await {
                still_queued.push((seq, envelope));
            }
        }
        still_queued
    }

    /// Records one delivery's outcome: ack, retry later, or dead letters. Returns the entry
    /// when it stays queued (for its retry), as it now is.
    async fn settle(
        &mut self,
        seq: Seq,
        mut envelope: Envelope,
        result: Result<(DeliveryOutcome, StateChanges), String>,
    ) -> Option<Envelope> {
        let c = &self.status.counters;
        let (error, retry_after) = match result {
            Ok((DeliveryOutcome::Delivered, changes)) => {
                let state = state_writes(&format!("sink.{}", self.sink), changes);
                match self.queue.ack(&self.pipeline, &self.sink, seq, &state) {
                    Ok(()) => {
                        Counters::bump(&c.delivered);
                        self.status.sink_delivered(&self.sink);
                        self.tracer.record(
                            &self.pipeline,
                            &envelope.message.id,
                            Step::Delivered {
                                sink: self.sink.clone(),
                                attempt: envelope.attempts + 1,
                            },
                        );
                        let latency_ms = now_ms().saturating_sub(envelope.enqueued_ms);
                        self.metrics.observe_delivery(
                            &self.pipeline,
                            &self.sink,
                            latency_ms as f64 / 1000.0,
                        );
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %self.pipeline, sink = %self.sink, error = %e, "cannot remove a delivered message; it may be delivered again under the same idempotency key")
                    }
                }
                return None;
            }
            Ok((DeliveryOutcome::Permanent(reason), _)) => {
                // This attempt counts too: a message refused at its first try shows 1.
                envelope.attempts += 1;
                return self
                    .dead_letter(seq, envelope, format!("permanent: {reason}"))
                    .await;
            }
            Ok((DeliveryOutcome::Retryable(reason), _)) => (reason, None),
            Ok((DeliveryOutcome::RateLimited(ms), _)) => (
                format!("rate limited for {ms} ms"),
                Some(Duration::from_millis(ms)),
            ),
            Err(e) => (e, None),
        };
        self.failed(seq, envelope, error, retry_after).await
    }

    /// A failed attempt: retried later (the entry is returned), or dead-lettered.
    async fn failed(
        &mut self,
        seq: Seq,
        mut envelope: Envelope,
        error: String,
        retry_after: Option<Duration>,
    ) -> Option<Envelope> {
        envelope.attempts += 1;
        if envelope.attempts >= self.retry.max_attempts {
            let reason = format!("gave up after {} attempts: {error}", envelope.attempts);
            return self.dead_letter(seq, envelope, reason).await;
        }
        let backoff = self
            .retry
            .jittered_delay(envelope.attempts, rand::random::<f64>());
        let delay = retry_after.unwrap_or(backoff);
        envelope.not_before_ms = now_ms() + delay.as_millis() as u64;
        self.tracer.record(
            &self.pipeline,
            &envelope.message.id,
            Step::AttemptFailed {
                sink: self.sink.clone(),
                attempt: envelope.attempts,
                error: error.clone(),
                retry_at_ms: envelope.not_before_ms,
            },
        );
        tracing::warn!(pipeline = %self.pipeline, sink = %self.sink, message_id = %envelope.message.id, attempts = envelope.attempts, retry_in = ?delay, error = %error, "delivery failed; will retry");
        self.status.sink_failed(&self.sink, &error);
        envelope.last_error = Some(error);
        if let Err(e) = self
            .queue
            .record_failure(&self.pipeline, &self.sink, seq, &envelope)
        {
            tracing::error!(pipeline = %self.pipeline, sink = %self.sink, error = %e, "cannot record the failed attempt");
        }
        Some(envelope)
    }

    /// Moves the entry to dead letters; returns it when that failed and it stays queued.
    pub(crate) async fn dead_letter(
        &mut self,
        seq: Seq,
        mut envelope: Envelope,
        error: String,
    ) -> Option<Envelope> {
        tracing::error!(pipeline = %self.pipeline, sink = %self.sink, message_id = %envelope.message.id, error = %error, "message moved to dead letters");
        self.tracer.record(
            &self.pipeline,
            &envelope.message.id,
            Step::DeadLettered {
                queue: self.sink.clone(),
                error: error.clone(),
            },
        );
        envelope.last_error = Some(error);
        match self
            .queue
            .dead_letter(&self.pipeline, &self.sink, seq, &envelope)
            .await
        {
            Ok(()) => {
                self.status.dead_lettered(
                    &format!("sink.{}", self.sink),
                    &self.sink,
                    envelope.last_error.as_deref().unwrap_or_default(),
                );
                None
            }
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline, sink = %self.sink, error = %e, "cannot dead-letter; will retry");
                envelope.not_before_ms = now_ms() + IDLE_RECHECK.as_millis() as u64;
                Some(envelope)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_message::Message;

    fn taken(n: usize) -> Vec<(Seq, String, Envelope)> {
        (0..n)
            .map(|i| {
                let message = Message {
                    id: format!("m{i}"),
                    timestamp_ms: 1,
                    severity: tocsin_message::Severity::Info,
                    summary: None,
                    body: String::new(),
                    labels: vec![],
                    metrics: vec![],
                    payload: None,
                    link: None,
                    key: None,
                };
                (i as Seq, format!("i:m{i}"), Envelope::new(message, 0))
            })
            .collect()
    }

    fn sizes(b: &[Vec<(Seq, String, Envelope)>]) -> Vec<usize> {
        b.iter().map(Vec::len).collect()
    }

    #[test]
    fn a_quiet_queue_goes_one_message_per_call_and_a_storm_fills_the_calls() {
        assert_eq!(sizes(&batches(taken(3), 8, 100)), [1, 1, 1]);
        assert_eq!(sizes(&batches(taken(20), 8, 100)), [3, 3, 3, 3, 3, 3, 2]);
        assert_eq!(sizes(&batches(taken(800), 8, 100)), [100; 8]);
        assert_eq!(sizes(&batches(taken(5), 8, 1)), [1; 5]);
        assert!(batches(taken(0), 8, 100).is_empty());
        let order: Vec<Seq> = batches(taken(20), 8, 100)
            .into_iter()
            .flatten()
            .map(|(seq, _, _)| seq)
            .collect();
        assert_eq!(order, (0..20).collect::<Vec<Seq>>(), "queue order is kept");
    }
}
