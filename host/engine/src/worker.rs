//! What the workers — [`crate::schedule`], [`crate::filtering`], [`crate::delivery`] and
//! [`crate::ingest`] — share: waiting for a queue's head to be due, sleeping unless cancelled,
//! and turning a plugin call's state changes into store writes. It sits below them, so the
//! engine reads top-down: manager → pipeline → workers → these pieces.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use tocsin_queue::StateWrite;
use tocsin_runtime::StateChanges;

/// Turns a call's state changes into writes owned by `stage`.
pub fn state_writes(stage: &str, changes: StateChanges) -> Vec<StateWrite> {
    changes
        .into_iter()
        .map(|(key, value)| StateWrite {
            stage: stage.to_string(),
            key,
            value,
        })
        .collect()
}

/// Waits until the head of a queue is due and returns it; `None` once cancelled.
///
/// `head` reads the queue's oldest entry. An empty queue waits for `ready` (or an idle
/// recheck); a head whose `not_before_ms` lies ahead waits until then; a read error is logged
/// as `what` and retried.
pub async fn next_due(
    mut head: impl FnMut() -> tocsin_queue::Result<Option<(tocsin_queue::Seq, tocsin_queue::Envelope)>>,
    ready: &Notify,
    cancel: &CancellationToken,
    what: &str,
) -> Option<(tocsin_queue::Seq, tocsin_queue::Envelope)> {
    while !cancel.is_cancelled() {
        match head() {
            Err(e) => {
                tracing::error!(error = %e, "cannot read {what}");
                sleep_or_cancel(IDLE_RECHECK, cancel).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = ready.notified() => {}
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
            Ok(Some((seq, envelope))) => {
                let now = tocsin_queue::now_ms();
                if envelope.not_before_ms <= now {
                    return Some((seq, envelope));
                }
                let wait = Duration::from_millis(envelope.not_before_ms - now);
                sleep_or_cancel(wait, cancel).await;
            }
        }
    }
    None
}

/// How often an idle worker looks at its queue even without a wake-up.
pub const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Sleeps for `duration` unless cancelled first; returns `false` when cancelled.
pub async fn sleep_or_cancel(duration: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => true,
        _ = cancel.cancelled() => false,
    }
}
