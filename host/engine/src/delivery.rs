//! Sink queue head → `sink.deliver`, in order, with retry, backoff and dead letters.
//!
//! With the default `concurrency = 1`, one message is in flight per sink: a retrying head
//! blocks the queue, so "resolved" never overtakes "firing". With `concurrency = N`, the worker
//! takes up to N due messages from the head, delivers them at once on N plugin instances and
//! settles each outcome in queue order; messages of one round may arrive in any order, and a
//! retried one after later ones — then the retrying head holds the queue again. Outcomes:
//! - delivered → removed from the queue (with the state the sink wrote);
//! - retryable, a plugin error or trap → attempt counted, retried after exponential backoff
//!   with jitter;
//! - rate-limited(ms) → attempt counted, retried after at least `ms`;
//! - permanent, or the attempts used up → moved to the sink's dead letters with the last error.
//!
//! Every attempt carries the same idempotency key, `<pipeline>/<sink>/<message id>`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::RetryPolicy;
use tocsin_message::idempotency_key;
use tocsin_queue::{now_ms, Envelope, QueueStore, Seq};
use tocsin_runtime::{CallError, DeliveryOutcome, Stage, StateChanges};

use crate::pipeline::{next_due, state_writes};
use crate::status::{Counters, PipelineStatus, StageEvent};
use crate::trace::Step;

/// Delivers one sink's queue.
pub struct DeliveryWorker {
    /// The pipeline's name.
    pub pipeline: String,
    /// The sink's name.
    pub sink: String,
    /// The sink's plugin instances: as many as deliveries may be in flight (its
    /// `concurrency`), at least one.
    pub stages: Vec<Stage>,
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
    /// Runs until cancelled.
    pub async fn run(mut self) {
        let what = format!("the queue of {}/{}", self.pipeline, self.sink);
        let (queue, ready, cancel) = (self.queue.clone(), self.ready.clone(), self.cancel.clone());
        let (pipeline, sink) = (self.pipeline.clone(), self.sink.clone());
        while let Some((seq, envelope)) =
            next_due(|| queue.sink_head(&pipeline, &sink), &ready, &cancel, &what).await
        {
            let mut round = vec![(seq, envelope)];
            if self.stages.len() > 1 {
                let now = now_ms();
                if let Ok(heads) = queue.sink_heads(&pipeline, &sink, self.stages.len()) {
                    let due: Vec<_> = heads
                        .into_iter()
                        .take_while(|(_, e)| e.not_before_ms <= now)
                        .collect();
                    if due.first().map(|(s, _)| *s) == Some(seq) {
                        round = due;
                    }
                }
            }
            // Deliver the round at once, one instance each; settle in queue order.
            let (pipeline_name, sink_name) = (&self.pipeline, &self.sink);
            let calls =
                self.stages
                    .iter_mut()
                    .zip(&round)
                    .map(|(stage, (_, envelope))| async move {
                        let key = idempotency_key(pipeline_name, sink_name, &envelope.message.id);
                        stage.deliver(&envelope.message, &key).await
                    });
            let results = futures::future::join_all(calls).await;
            for ((seq, envelope), result) in round.into_iter().zip(results) {
                self.settle(seq, envelope, result).await;
            }
        }
    }

    /// Records one delivery's outcome: ack, retry later, or dead letters.
    async fn settle(
        &mut self,
        seq: Seq,
        mut envelope: Envelope,
        result: Result<(DeliveryOutcome, StateChanges), CallError>,
    ) {
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
                return;
            }
            Ok((DeliveryOutcome::Permanent(reason), _)) => {
                // This attempt counts too: a message refused at its first try shows 1.
                envelope.attempts += 1;
                self.dead_letter(seq, envelope, format!("permanent: {reason}"))
                    .await;
                return;
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
        self.failed(seq, envelope, error, retry_after).await;
    }

    async fn failed(
        &mut self,
        seq: Seq,
        mut envelope: Envelope,
        error: String,
        retry_after: Option<Duration>,
    ) {
        envelope.attempts += 1;
        if envelope.attempts >= self.retry.max_attempts {
            let reason = format!("gave up after {} attempts: {error}", envelope.attempts);
            self.dead_letter(seq, envelope, reason).await;
            return;
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
    }

    async fn dead_letter(&mut self, seq: Seq, mut envelope: Envelope, error: String) {
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
            Ok(()) => self
                .status
                .record(&format!("sink.{}", self.sink), StageEvent::DeadLetter),
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline, sink = %self.sink, error = %e, "cannot dead-letter; will retry")
            }
        }
    }
}
