//! Cron ticks → `source.poll` → the ingress queue.
//!
//! Ticks missed while the process was down, or while a previous poll was still running, are
//! skipped: after each poll the next tick is computed from *now*. So a restart never floods
//! a room with catch-up runs; `run_on_start = true` adds one poll at start instead.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_config::ScheduleSpec;
use tocsin_queue::QueueStore;
use tocsin_runtime::{CallError, Stage};

use crate::status::{Counters, PipelineStatus};
use crate::worker::{sleep_or_cancel, state_writes};

/// Runs a scheduled source.
pub struct Scheduler {
    /// The pipeline's name.
    pub pipeline: String,
    /// When to poll.
    pub schedule: ScheduleSpec,
    /// The source stage.
    pub source: Stage,
    /// Where polled messages go.
    pub queue: Arc<dyn QueueStore>,
    /// The storage checks and the pipeline's queue budget: past it, ticks are skipped.
    pub budget: crate::budget::PipelineBudget,
    /// Woken after each append.
    pub ingress_ready: Arc<Notify>,
    /// Notified to poll now, besides the schedule (the admin API's "run now").
    pub run_now: Arc<Notify>,
    /// Where each message's steps are recorded.
    pub tracer: Arc<crate::trace::Tracer>,
    /// Where the metrics of messages are kept as time series.
    pub history: Arc<crate::history::History>,
    /// Counters.
    pub status: Arc<PipelineStatus>,
    /// Stops the loop.
    pub cancel: CancellationToken,
}

impl Scheduler {
    /// Polls at each tick until cancelled.
    pub async fn run(mut self) {
        if self.schedule.run_on_start {
            let now_s = Utc::now().timestamp();
            self.tick(now_s as u64 * 1000).await;
        }
        loop {
            let now = Utc::now().with_timezone(&self.schedule.timezone);
            let Some(next) = self.schedule.cron.after(&now).next() else {
                tracing::info!(pipeline = %self.pipeline, "the schedule has no more ticks");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                go_on = sleep_or_cancel(wait, &self.cancel) => {
                    if !go_on {
                        return;
                    }
                    self.tick(next.timestamp_millis().max(0) as u64).await;
                }
                () = self.run_now.notified() => {
                    tracing::info!(pipeline = %self.pipeline, "polling now, as asked");
                    let now_ms = Utc::now().timestamp_millis().max(0) as u64;
                    self.tick(now_ms).await;
                }
            }
        }
    }

    async fn tick(&mut self, tick_ms: u64) {
        if let Some(why) = self.budget.refusal() {
            tracing::warn!(pipeline = %self.pipeline, reason = %why, "this tick is skipped");
            return;
        }
        let c = &self.status.counters;
        Counters::bump(&c.polls);
        let (mut messages, changes) = match self.source.poll(tick_ms).await {
            Ok(r) => r,
            Err(e) => {
                self.status.call_failed("source", &e);
                let level_error = matches!(e, CallError::Trap { .. } | CallError::Init(_));
                if level_error {
                    tracing::error!(pipeline = %self.pipeline, stage = "source", error = %e, "poll failed; the next tick will try again");
                } else {
                    tracing::warn!(pipeline = %self.pipeline, stage = "source", error = %e, "poll failed; the next tick will try again");
                }
                return;
            }
        };
        for (n, m) in messages.iter_mut().enumerate() {
            if m.id.is_empty() {
                m.id = format!("tick-{tick_ms}-{n}");
            }
        }
        let state = state_writes("source", changes);
        if messages.is_empty() && state.is_empty() {
            return;
        }
        // The poll's output is weighed before it is written: a source that produced more than
        // its pipeline has room for loses this tick (its state is not written either, so a
        // cursor is read again at the next one), as a tick skipped by the check above would.
        let size = self.queue.append_size_bound(&messages, &state);
        let reserved = match self.budget.admit(size) {
            Ok(reservation) => reservation,
            Err(why) => {
                tracing::warn!(pipeline = %self.pipeline, reason = %why, messages = messages.len(), "this tick's messages are not stored; the next tick polls again");
                return;
            }
        };
        // Traced before the append: the filters may take the messages as soon as it is applied.
        if self.tracer.enabled() {
            let via = format!(
                "poll of the tick at {}",
                chrono::DateTime::from_timestamp_millis(tick_ms as i64)
                    .map_or_else(|| tick_ms.to_string(), |t| t.to_rfc3339())
            );
            self.tracer.record_accepted(&self.pipeline, &messages, &via);
        }
        let commit = self.queue.append_ingress(&self.pipeline, &messages, &state);
        drop(reserved); // the store counts the messages now
        match commit.await {
            Ok(()) => {
                c.produced
                    .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
                self.history.record(&self.pipeline, &messages);
                self.ingress_ready.notify_one();
            }
            Err(e) => {
                let step = crate::trace::Step::NotStored {
                    error: e.to_string(),
                };
                self.tracer.record_all(&self.pipeline, &messages, step);
                tracing::error!(pipeline = %self.pipeline, error = %e, "cannot persist polled messages; they are lost for this tick")
            }
        }
    }
}
