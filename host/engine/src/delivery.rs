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

use crate::delivery_order::{HeadCache, OrderKeys};
use crate::sink_instances::SinkInstances;
use crate::status::{Counters, PipelineStatus, StageEvent};
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
        let window_len = order.window(concurrency);
        let mut running = FuturesUnordered::new();
        let mut in_flight: HashMap<Seq, String> = HashMap::new();
        let mut head = HeadCache::new();
        loop {
            let mut wake = IDLE_RECHECK;
            let free = self.instances.free();
            if !cancel.is_cancelled() && free > 0 {
                let now = now_ms();
                let read = |limit| self.queue.sink_heads(&self.pipeline, &self.sink, limit);
                match head.take(read, &order, window_len, &in_flight, free, now) {
                    Ok((taken, next_due_ms)) => {
                        if let Some(due) = next_due_ms {
                            wake = wake.min(Duration::from_millis(due.saturating_sub(now)));
                        }
                        for (seq, key, envelope) in taken {
                            let Some(mut stage) = self.instances.take() else {
                                head.put_back(seq, envelope);
                                continue;
                            };
                            let idempotency =
                                idempotency_key(&self.pipeline, &self.sink, &envelope.message.id);
                            in_flight.insert(seq, key);
                            running.push(async move {
                                let result = stage.deliver(&envelope.message, &idempotency).await;
                                (stage, seq, envelope, result)
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
                Some((stage, seq, envelope, result)) = running.next(), if !running.is_empty() => {
                    self.instances.put_back(stage);
                    in_flight.remove(&seq);
                    if let Some(still_queued) = self.settle(seq, envelope, result).await {
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

    /// Records one delivery's outcome: ack, retry later, or dead letters. Returns the entry
    /// when it stays queued (for its retry), as it now is.
    async fn settle(
        &mut self,
        seq: Seq,
        mut envelope: Envelope,
        result: Result<(DeliveryOutcome, StateChanges), CallError>,
    ) -> Option<Envelope> {
        let c = &self.status.counters;
        let (error, retry_after) = match result {
            Ok((DeliveryOutcome::Delivered, changes)) => {
                let state = state_writes(&format!("sink.{}", self.sink), changes);
                match self.queue.ack(&self.pipeline, &self.sink, seq, &state) {
                    Ok(()) => {
                        Counters::bump(&c.delivered);
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
            Err(e) => {
                self.status.call_failed(&format!("sink.{}", self.sink), &e);
                (e.to_string(), None)
            }
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
        envelope.last_error = Some(error);
        self.status
            .record(&format!("sink.{}", self.sink), StageEvent::Retry);
        if let Err(e) = self
            .queue
            .record_failure(&self.pipeline, &self.sink, seq, &envelope)
        {
            tracing::error!(pipeline = %self.pipeline, sink = %self.sink, error = %e, "cannot record the failed attempt");
        }
        Some(envelope)
    }

    /// Moves the entry to dead letters; returns it when that failed and it stays queued.
    async fn dead_letter(
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
                self.status
                    .record(&format!("sink.{}", self.sink), StageEvent::DeadLetter);
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
