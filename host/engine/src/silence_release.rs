//! When a silence ends (or a maintenance window closes), what it held back: one task per
//! pipeline that wakes when the silences change, one of them begins or ends, or a window
//! opens or closes (on whole minutes), and hands to the sinks what the open-alert
//! register holds for them and no silence mutes any more (see [`crate::open_alerts::release`]:
//! an alert still open is announced once, one that opened and resolved inside the silence
//! never).
//!
//! The release and the register's changes are one atomic append, so a crash either leaves
//! the hold in place (released again after the restart) or has queued the message and
//! cleared the hold: never both, never neither. The task and the filter worker change the
//! register under one lock per pipeline ([`RegisterLock`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use tocsin_config::maintenance::MaintenanceWindow;
use tocsin_queue::{now_ms, Envelope, QueueStore, StateWrite};

use crate::filtering::SinkRoute;
use crate::open_alerts::{self, Held, STAGE};
use crate::silences::{Muting, SilenceSet};
use crate::trace::{Step, Tracer};

/// Held by whoever reads and writes a pipeline's open-alert register: the filter worker for
/// a hand-over, the release task for a release.
pub type RegisterLock = Arc<tokio::sync::Mutex<()>>;

/// The longest the task sleeps without looking at the silences.
const RECHECK: Duration = Duration::from_secs(60);

/// The register is read whole at least this often, to forget stale alerts.
const SWEEP_EVERY_MS: u64 = 3600 * 1000;

/// An open alert no message was seen of for this long, with nothing held, is forgotten (its
/// source will never resolve it: a host gone, a decoder that sends no resolutions).
pub const FORGET_AFTER_MS: u64 = 7 * 24 * 3600 * 1000;

/// A pipeline's release task.
pub struct SilenceRelease {
    /// The pipeline's name.
    pub pipeline: String,
    /// The store.
    pub queue: Arc<dyn QueueStore>,
    /// The pipeline's sinks, to queue for and wake.
    pub sinks: Vec<SinkRoute>,
    /// The silences, as they change.
    pub silences: watch::Receiver<Arc<SilenceSet>>,
    /// Shared with the filter worker.
    pub lock: RegisterLock,
    /// Where released messages' steps are recorded.
    pub tracer: Arc<Tracer>,
    /// Stops the task.
    pub cancel: CancellationToken,
    /// The pipeline's maintenance windows: what they held is released when they close.
    pub maintenance: Arc<[MaintenanceWindow]>,
    /// The pipeline's inhibitions: what they held is released when their source resolves.
    pub inhibitions: Option<Arc<crate::inhibition::Inhibitions>>,
    /// Woken by the filter worker when an inhibiting alert resolved.
    pub wake: Arc<tokio::sync::Notify>,
}

impl SilenceRelease {
    /// Runs until cancelled: a release at start (silences may have ended while tocsin was
    /// down), then one at every change.
    pub async fn run(mut self) {
        // Read the register when the silences changed, one ended since the last read, or
        // an hour passed: not at every wake-up, since it may hold thousands of alerts.
        let mut changed = true;
        let mut last_read_ms = 0;
        let mut windows_open = Vec::new();
        loop {
            let now = now_ms();
            // A window that closed (or opened) since the last look.
            let open: Vec<bool> = self.maintenance.iter().map(|w| w.open_at(now)).collect();
            let windows_changed = open != windows_open;
            windows_open = open;
            let due = changed
                || windows_changed
                || self.silences.borrow().ended_between(last_read_ms, now)
                || now.saturating_sub(last_read_ms) >= SWEEP_EVERY_MS;
            if due {
                match self.release_due(now).await {
                    Ok(()) => last_read_ms = now,
                    Err(e) => {
                        tracing::error!(pipeline = %self.pipeline, error = %e, "cannot release what silences held; will retry")
                    }
                }
            }
            changed = false;
            let mut wait = self
                .silences
                .borrow()
                .next_change_after(now)
                .map_or(RECHECK, |at| Duration::from_millis(at - now).min(RECHECK));
            if !self.maintenance.is_empty() {
                // Windows open and close on whole minutes.
                let to_next_minute = 60_000 - now % 60_000 + 20;
                wait = wait.min(Duration::from_millis(to_next_minute));
            }
            tokio::select! {
                seen = self.silences.changed() => {
                    if seen.is_err() {
                        return;
                    }
                    changed = true;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => changed = true,
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// Queues what no silence holds back any more, with the register's changes, in one
    /// commit; forgets alerts unseen for [`FORGET_AFTER_MS`].
    async fn release_due(&mut self, now: u64) -> tocsin_queue::Result<()> {
        let _register = self.lock.lock().await;
        let set = self.silences.borrow().clone();
        let muting = Muting::at(&set, &self.maintenance, now);
        let mut outputs: Vec<(String, Vec<Envelope>)> = Vec::new();
        let mut writes = Vec::new();
        let mut released = Vec::new();
        for (identity, mut alert) in open_alerts::list(self.queue.as_ref(), &self.pipeline)? {
            if alert.held.is_empty() {
                if now.saturating_sub(alert.seen_ms) >= FORGET_AFTER_MS {
                    writes.push(StateWrite {
                        stage: STAGE.to_string(),
                        key: identity,
                        value: None,
                    });
                }
                continue;
            }
            let before = alert.clone();
            let inhibitions = self.inhibitions.as_deref();
            let due = open_alerts::release(
                &mut alert,
                |sink| self.sinks.iter().any(|s| s.name == sink),
                |sink, message| {
                    muting
                        .muted_by(&self.pipeline, sink, message)
                        .or_else(|| inhibitions.and_then(|i| i.inhibited_by(&identity, message)))
                },
            );
            if alert == before {
                continue;
            }
            for (sink, Held { silence, message }) in due {
                released.push((message.id.clone(), sink.clone(), silence));
                match outputs.iter_mut().find(|(s, _)| *s == sink) {
                    Some((_, envelopes)) => envelopes.push(Envelope::new(message, now)),
                    None => outputs.push((sink, vec![Envelope::new(message, now)])),
                }
            }
            let keep = alert.open || !alert.held.is_empty();
            writes.push(StateWrite {
                stage: STAGE.to_string(),
                key: identity,
                value: keep.then(|| serde_json::to_vec(&alert).unwrap_or_default()),
            });
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.queue
            .append_to_sinks(&self.pipeline, &outputs, &writes)
            .await?;
        for (sink, _) in &outputs {
            if let Some(route) = self.sinks.iter().find(|s| s.name == *sink) {
                route.ready.notify_one();
            }
        }
        for (id, sink, silence) in released {
            tracing::info!(pipeline = %self.pipeline, message_id = %id, sink = %sink, silence = %silence, "a silence ended: announcing the alert it held back");
            self.tracer
                .record(&self.pipeline, &id, Step::Released { sink, silence });
        }
        Ok(())
    }
}
