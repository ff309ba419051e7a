//! A grouped sink's queue → one notification per group of alerts (`group = { by, wait,
//! interval }` in the pipeline file): Alertmanager's `group_by`, `group_wait` and
//! `group_interval`, durable across `kill -9`.
//!
//! - A message's **group** is the values of the `by` labels (a missing one counts as empty).
//!   Members wait in the sink queue itself, so a group in the making is as durable as any
//!   queued message.
//! - A group's first queued message waits `wait` for others; then every queued message of the
//!   group (up to the policy's `max_messages`, [`MAX_GROUP_MESSAGES`] unless the file says)
//!   goes out in one notification. What arrives later goes
//!   out together once `interval` has passed since the group's last notification (and `wait`
//!   after the first of it arrived); a group with more queued than one notification carries
//!   sends the rest at once.
//! - Before a notification is sent, its members are written down as the group's **flush
//!   record**, synced. Until it is delivered, every attempt — after a restart too — sends
//!   exactly those members under the same idempotency key,
//!   `<pipeline>/<sink>/group-<group>-<sequence>`, so `kill -9` during a send posts nothing
//!   twice, and `kill -9` during `wait` loses nothing.
//! - Delivered: the members are acknowledged; the last acknowledgement carries the group's new
//!   state (its sequence, when it was last sent, the alerts still firing) and the removal of
//!   the flush record. sled recovers a prefix of its log, so a crash between acknowledgements
//!   leaves the record, and the rest go out again under the same key.
//! - Failed: the record counts the attempt and waits with the sink's backoff (or the
//!   service's retry-after); a permanent error, or the sink's `max_attempts` used up, moves
//!   every member to the dead letters.
//! - **Firing alerts** are counted per group by alert identity (the message's `key`, else its
//!   `fingerprint` label, else its labels but `status`); a message whose `status` label is
//!   `resolved` closes its alert. Sinks show the count ("[FIRING:3]").
//!
//! Groups are independent: different groups are sent side by side, up to the sink's
//! `concurrency`; one group's notifications go one at a time, in order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use tocsin_config::{GroupPolicy, MAX_GROUP_MESSAGES};
use tocsin_message::{idempotency_key, Message};
use tocsin_queue::{now_ms, Envelope, Seq, StateWrite};
use tocsin_runtime::{CallError, DeliveryOutcome, GroupInfo, Stage, StateChanges};

use crate::delivery::DeliveryWorker;
use crate::open_alerts::{alert_identity, label_hash};
use crate::status::Counters;
use crate::trace::Step;
use crate::worker::{state_writes, IDLE_RECHECK};

/// The most queued messages read to form groups at once.
const WINDOW: usize = 4 * MAX_GROUP_MESSAGES;

/// What a group remembers between its notifications.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct GroupState {
    /// Notifications delivered so far.
    sequence: u32,
    /// When the last one was delivered (ms since the epoch).
    last_sent_ms: u64,
    /// Whether the last one carried as many messages as a notification may (more waited).
    last_full: bool,
    /// The identities of the group's alerts firing after the last one.
    firing: BTreeSet<String>,
}

/// A notification decided on and not yet delivered: exactly these members, under this
/// sequence (hence this idempotency key), until it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FlushRecord {
    sequence: u32,
    seqs: Vec<Seq>,
    attempts: u32,
    not_before_ms: u64,
}

/// A group as read from the queue: its labels and its queued messages, in queue order.
type Forming = (Vec<(String, String)>, Vec<(Seq, Envelope)>);

/// One group's notification, ready to send.
struct Send {
    group: String,
    info: GroupInfo,
    members: Vec<(Seq, Envelope)>,
    flush: FlushRecord,
    state: GroupState,
}

/// Delivers a grouped sink's queue (see the module documentation).
pub struct GroupWorker {
    /// The sink's delivery worker: its names, instances, queue, retry policy and counters,
    /// and how it dead-letters a message.
    pub delivery: DeliveryWorker,
    /// How the sink groups.
    pub policy: GroupPolicy,
}

impl GroupWorker {
    /// Runs until cancelled, then lets the notifications in flight finish and settles them.
    pub async fn run(mut self) {
        let (ready, cancel) = (self.delivery.ready.clone(), self.delivery.cancel.clone());
        let mut running = FuturesUnordered::new();
        let mut busy: HashSet<String> = HashSet::new();
        loop {
            let mut wake = IDLE_RECHECK;
            if !cancel.is_cancelled() && self.delivery.instances.free() > 0 {
                match self.due(&busy).await {
                    Ok((sends, next_due_ms)) => {
                        if let Some(due) = next_due_ms {
                            let now = now_ms();
                            wake = wake.min(Duration::from_millis(due.saturating_sub(now)));
                        }
                        for send in sends {
                            let Some(stage) = self.delivery.instances.take() else {
                                break;
                            };
                            busy.insert(send.group.clone());
                            running.push(self.send(stage, send));
                        }
                    }
                    Err(e) => tracing::error!(
                        pipeline = %self.delivery.pipeline,
                        sink = %self.delivery.sink,
                        error = %e,
                        "cannot read the sink's queue to form its groups"
                    ),
                }
            }
            if cancel.is_cancelled() && running.is_empty() {
                return;
            }
            tokio::select! {
                Some((stage, send, result)) = running.next(), if !running.is_empty() => {
                    self.delivery.instances.put_back(stage);
                    busy.remove(&send.group);
                    self.settle(send, result).await;
                }
                _ = ready.notified(), if !cancel.is_cancelled() => {}
                _ = tokio::time::sleep(wake), if !cancel.is_cancelled() => {}
                _ = cancel.cancelled(), if !cancel.is_cancelled() => {}
            }
        }
    }

    /// The state stage of this sink's groups.
    fn stage(&self) -> String {
        format!("group.{}", self.delivery.sink)
    }

    fn load<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, String> {
        let bytes = self
            .delivery
            .queue
            .state_get(&self.delivery.pipeline, &self.stage(), key)
            .map_err(|e| e.to_string())?;
        match bytes {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("the group record `{key}` is damaged: {e}")),
        }
    }

    fn write<T: Serialize>(&self, key: String, value: Option<&T>) -> StateWrite {
        StateWrite {
            stage: self.stage(),
            key,
            value: value.map(|v| serde_json::to_vec(v).expect("plain records serialise")),
        }
    }

    /// The notifications due now (of groups without one in flight), and when the next one
    /// becomes due.
    async fn due(&mut self, busy: &HashSet<String>) -> Result<(Vec<Send>, Option<u64>), String> {
        // Owned, not borrowed from `self`: the worker's instances are not `Sync`, so no
        // reference to it may be held across an await.
        let (queue, pipeline) = (self.delivery.queue.clone(), self.delivery.pipeline.clone());
        let heads = queue
            .sink_heads(&pipeline, &self.delivery.sink, WINDOW)
            .map_err(|e| e.to_string())?;
        let mut groups: BTreeMap<String, Forming> = BTreeMap::new();
        for (seq, envelope) in heads {
            let labels = group_labels(&envelope.message, &self.policy.by);
            let entry = groups
                .entry(group_key(&labels))
                .or_insert_with(|| (labels, Vec::new()));
            entry.1.push((seq, envelope));
        }
        let now = now_ms();
        let (mut sends, mut next_due) = (Vec::new(), None::<u64>);
        let mut soonest = |at: u64| next_due = Some(next_due.map_or(at, |n| n.min(at)));
        for (group, (labels, entries)) in groups {
            if busy.contains(&group) {
                continue;
            }
            let state: GroupState = self.load(&format!("g/{group}"))?.unwrap_or_default();
            let flush = match self.load::<FlushRecord>(&format!("f/{group}"))? {
                Some(flush) => {
                    if now < flush.not_before_ms {
                        soonest(flush.not_before_ms);
                        continue;
                    }
                    flush
                }
                None => {
                    let first = entries
                        .iter()
                        .map(|(_, e)| e.enqueued_ms)
                        .min()
                        .unwrap_or(now);
                    let mut due_at = first + self.policy.wait.as_millis() as u64;
                    if state.sequence > 0 && !state.last_full {
                        due_at = due_at
                            .max(state.last_sent_ms + self.policy.interval.as_millis() as u64);
                    }
                    if now < due_at {
                        soonest(due_at);
                        continue;
                    }
                    let flush = FlushRecord {
                        sequence: state.sequence,
                        seqs: entries
                            .iter()
                            .take(self.policy.max_messages)
                            .map(|(seq, _)| *seq)
                            .collect(),
                        attempts: 0,
                        not_before_ms: 0,
                    };
                    // Written down, synced, before anything is sent: a restart sends exactly
                    // these members under the same key.
                    let record = self.write(format!("f/{group}"), Some(&flush));
                    queue
                        .put_state(&pipeline, &[record])
                        .await
                        .map_err(|e| e.to_string())?;
                    flush
                }
            };
            let wanted: HashSet<Seq> = flush.seqs.iter().copied().collect();
            let members: Vec<(Seq, Envelope)> = entries
                .into_iter()
                .filter(|(seq, _)| wanted.contains(seq))
                .collect();
            if members.is_empty() {
                // Its members left the queue another way (purged, or settled by a build that
                // crashed before removing the record): nothing is left to send.
                let record = self.write::<FlushRecord>(format!("f/{group}"), None);
                queue
                    .put_state(&pipeline, &[record])
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            let mut firing = state.firing.clone();
            for (_, e) in &members {
                note_firing(&mut firing, &e.message);
            }
            let info = GroupInfo {
                labels,
                key: group.clone(),
                sequence: flush.sequence,
                firing: firing.len() as u32,
            };
            let state = GroupState {
                sequence: flush.sequence + 1,
                last_sent_ms: 0,
                last_full: members.len() >= self.policy.max_messages,
                firing,
            };
            sends.push(Send {
                group,
                info,
                members,
                flush,
                state,
            });
        }
        Ok((sends, next_due))
    }

    /// Sends one notification on `stage`.
    fn send(
        &self,
        mut stage: Stage,
        send: Send,
    ) -> impl std::future::Future<
        Output = (
            Stage,
            Send,
            Result<(DeliveryOutcome, StateChanges), CallError>,
        ),
    > {
        let key = notification_key(
            &self.delivery.pipeline,
            &self.delivery.sink,
            &send.group,
            send.info.sequence,
        );
        async move {
            let messages: Vec<&Message> = send.members.iter().map(|(_, e)| &e.message).collect();
            let result = stage.deliver_group(&messages, &send.info, &key).await;
            (stage, send, result)
        }
    }

    /// Records a notification's outcome (see the module documentation).
    async fn settle(
        &mut self,
        mut send: Send,
        result: Result<(DeliveryOutcome, StateChanges), CallError>,
    ) {
        let sink_stage = format!("sink.{}", self.delivery.sink);
        let (error, retry_after, permanent) = match result {
            Ok((DeliveryOutcome::Delivered, changes)) => {
                send.state.last_sent_ms = now_ms();
                let mut last = state_writes(&sink_stage, changes);
                last.push(self.write(format!("g/{}", send.group), Some(&send.state)));
                last.push(self.write::<FlushRecord>(format!("f/{}", send.group), None));
                self.delivered(send.members, last);
                return;
            }
            Ok((DeliveryOutcome::Permanent(reason), _)) => {
                (format!("permanent: {reason}"), None, true)
            }
            Ok((DeliveryOutcome::Retryable(reason), _)) => (reason, None, false),
            Ok((DeliveryOutcome::RateLimited(ms), _)) => (
                format!("rate limited for {ms} ms"),
                Some(Duration::from_millis(ms)),
                false,
            ),
            Err(e) => {
                self.delivery.status.call_failed(&sink_stage, &e);
                (e.to_string(), None, false)
            }
        };
        send.flush.attempts += 1;
        let d = &mut self.delivery;
        if permanent || send.flush.attempts >= d.retry.max_attempts {
            let reason = if permanent {
                error
            } else {
                format!("gave up after {} attempts: {error}", send.flush.attempts)
            };
            for (seq, mut envelope) in send.members {
                envelope.attempts = send.flush.attempts;
                // A member that could not be moved stays queued; a later notification takes it.
                let _ = d.dead_letter(seq, envelope, reason.clone()).await;
            }
            let record = self.write::<FlushRecord>(format!("f/{}", send.group), None);
            self.put(record, "cannot remove a dead-lettered group's flush record")
                .await;
            return;
        }
        let delay = retry_after.unwrap_or_else(|| {
            d.retry
                .jittered_delay(send.flush.attempts, rand::random::<f64>())
        });
        send.flush.not_before_ms = now_ms() + delay.as_millis() as u64;
        tracing::warn!(pipeline = %d.pipeline, sink = %d.sink, group = %send.group, members = send.members.len(), attempts = send.flush.attempts, retry_in = ?delay, error = %error, "group notification failed; will retry");
        d.status.sink_failed(&d.sink, &error);
        for (_, envelope) in &send.members {
            d.tracer.record(
                &d.pipeline,
                &envelope.message.id,
                Step::AttemptFailed {
                    sink: d.sink.clone(),
                    attempt: send.flush.attempts,
                    error: error.clone(),
                    retry_at_ms: send.flush.not_before_ms,
                },
            );
        }
        let record = self.write(format!("f/{}", send.group), Some(&send.flush));
        self.put(
            record,
            "cannot record a group notification's failed attempt",
        )
        .await;
    }

    /// Writes one group record, logging `failed` when that fails.
    async fn put(&mut self, record: StateWrite, failed: &str) {
        let (queue, pipeline) = (self.delivery.queue.clone(), self.delivery.pipeline.clone());
        if let Err(e) = queue.put_state(&pipeline, &[record]).await {
            tracing::error!(pipeline = %pipeline, sink = %self.delivery.sink, error = %e, "{failed}");
        }
    }

    /// Acknowledges a delivered notification's members, the last one with `last` (the
    /// group's state, the flush record's removal, the sink's own state).
    fn delivered(&self, members: Vec<(Seq, Envelope)>, last: Vec<StateWrite>) {
        let d = &self.delivery;
        d.status.sink_delivered(&d.sink);
        let count = members.len();
        for (i, (seq, envelope)) in members.into_iter().enumerate() {
            let state: &[StateWrite] = if i + 1 == count { &last } else { &[] };
            if let Err(e) = d.queue.ack(&d.pipeline, &d.sink, seq, state) {
                tracing::error!(pipeline = %d.pipeline, sink = %d.sink, error = %e, "cannot remove a delivered message; it may be delivered again under the same idempotency key");
                return;
            }
            Counters::bump(&d.status.counters.delivered);
            d.tracer.record(
                &d.pipeline,
                &envelope.message.id,
                Step::Delivered {
                    sink: d.sink.clone(),
                    attempt: envelope.attempts + 1,
                },
            );
            let latency_ms = now_ms().saturating_sub(envelope.enqueued_ms);
            d.metrics
                .observe_delivery(&d.pipeline, &d.sink, latency_ms as f64 / 1000.0);
        }
    }
}

/// Updates the identities of a group's firing alerts with one member: a `status=resolved`
/// message closes its alert, any other opens (or keeps) it.
pub(crate) fn note_firing(firing: &mut BTreeSet<String>, message: &Message) {
    let identity = alert_identity(message);
    if message.label("status") == Some("resolved") {
        firing.remove(&identity);
    } else {
        firing.insert(identity);
    }
}

/// The idempotency key of a group's notification number `sequence`.
pub(crate) fn notification_key(pipeline: &str, sink: &str, group: &str, sequence: u32) -> String {
    idempotency_key(pipeline, sink, &format!("group-{group}-{sequence}"))
}

/// The `by` labels of `message` with its values (empty when it lacks one), in `by`'s order.
pub(crate) fn group_labels(message: &Message, by: &[String]) -> Vec<(String, String)> {
    by.iter()
        .map(|name| (name.clone(), message.label(name).unwrap_or("").to_string()))
        .collect()
}

/// A group's stable name: a short hash of its labels and values.
pub(crate) fn group_key(labels: &[(String, String)]) -> String {
    label_hash(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(labels: &[(&str, &str)]) -> Message {
        Message::with_labels("m", tocsin_message::Severity::Warning, labels)
    }

    #[test]
    fn a_group_is_the_values_of_its_labels_and_a_missing_one_is_empty() {
        let by = vec!["alertname".to_string(), "host".to_string()];
        let a = group_labels(&message(&[("host", "db1"), ("alertname", "DiskFull")]), &by);
        assert_eq!(
            a,
            [
                ("alertname".to_string(), "DiskFull".to_string()),
                ("host".to_string(), "db1".to_string())
            ]
        );
        let b = group_labels(
            &message(&[("alertname", "DiskFull"), ("host", "db1"), ("x", "y")]),
            &by,
        );
        assert_eq!(group_key(&a), group_key(&b), "other labels do not matter");
        let c = group_labels(&message(&[("alertname", "DiskFull")]), &by);
        assert_ne!(group_key(&a), group_key(&c));
        assert_eq!(c[1].1, "");
        assert_eq!(group_labels(&message(&[("h", "1")]), &[]), vec![]);
        // A value that contains the separator of another split cannot collide.
        let d = vec![("a".to_string(), "b\u{0}c".to_string())];
        let e = vec![
            ("a".to_string(), "b".to_string()),
            ("c".to_string(), String::new()),
        ];
        assert_ne!(group_key(&d), group_key(&e));
    }

    #[test]
    fn an_alert_is_known_by_its_key_else_its_fingerprint_else_its_labels() {
        let mut m = message(&[("fingerprint", "f1")]);
        assert_eq!(alert_identity(&m), "f:f1");
        m.key = Some("k1".into());
        assert_eq!(alert_identity(&m), "k:k1");
        let firing = message(&[("host", "db1"), ("status", "firing")]);
        let mut resolved = message(&[("status", "resolved"), ("host", "db1")]);
        resolved.id = "other".into();
        assert_eq!(alert_identity(&firing), alert_identity(&resolved));
        assert_ne!(
            alert_identity(&firing),
            alert_identity(&message(&[("host", "db2")]))
        );
    }
}
