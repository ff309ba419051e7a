//! The open-alert register: which alerts of a pipeline are open, and what each sink was last
//! handed of each — the one notion of "an open problem" that silences, grouping,
//! acknowledgement and the status page share.
//!
//! # Which messages are alerts
//! A message is about an alert when its source says which ([`declared_identity`]: its `key`,
//! else its `fingerprint` label) or when it carries a `status` label; its identity is then
//! the declared one, or else its labels other than `status` ([`alert_identity`]), as
//! Alertmanager knows an alert by its label set. It is a **resolution** when its `status`
//! label is `resolved`; any other message of the alert says it is open. Messages about no
//! alert (a push event, a log line) are not registered.
//!
//! # What is kept
//! One record per open alert (and per resolved one something is still held for), host state
//! of the pipeline under stage [`STAGE`], key = identity, JSON ([`OpenAlert`]): since when it
//! is open, its latest summary, severity and labels, and per sink what that sink was last
//! handed of it (`handed`: open or resolved) and the latest message a silence held back from
//! it (`held`). The filter worker writes the records in the same atomic batch as the
//! hand-over that changed them ([`RegisterBatch`]), so the register and the sink queues never
//! disagree after a crash; a record is written only when something changed (or, for an alert
//! that keeps firing, once an hour, to show it is still seen).
//!
//! # When a silence ends
//! `silence_release.rs` looks at every record with something held whose silence no longer
//! mutes it ([`release`]): an alert still open that the sink was not told of is handed to it
//! then (its latest message, once); an alert that opened and resolved inside the silence is
//! never announced; one the sink saw open and that resolved inside the silence gets its
//! resolution.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use tocsin_message::{Message, Severity};
use tocsin_queue::{QueueStore, StateWrite};

use crate::delivery_order::declared_identity;

/// The host-state stage the register's records are kept under.
pub const STAGE: &str = "alerts";

/// An alert still firing is written again this often at most, to show when it was last seen.
pub const SEEN_REFRESH_MS: u64 = 3600 * 1000;

/// A message held back from a sink by a silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The silence that held it (the last one, when several did in turn).
    pub silence: String,
    /// The latest message of the alert the sink did not get.
    pub message: Message,
}

/// Someone is on an open alert: its reminders are not sent until it resolves or `until_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Who acknowledged (the API token's name unless given).
    pub by: String,
    /// What they said.
    pub comment: String,
    /// When.
    pub at_ms: u64,
    /// When it lapses; `None`: when the alert resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    /// The alert's severity when it was acknowledged: a message of higher severity (an
    /// escalation) still goes out.
    pub severity: Severity,
}

impl Ack {
    /// Whether it is in force at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.until_ms.is_none_or(|until| now_ms < until)
    }
}

/// One alert of the register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAlert {
    /// Whether it is open (its latest message was not a resolution).
    pub open: bool,
    /// When it (last) opened, ms since the epoch.
    pub since_ms: u64,
    /// When a message of it was last seen.
    pub seen_ms: u64,
    /// The latest message's summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The latest message's severity.
    pub severity: Severity,
    /// The latest message's labels.
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    /// Per sink: whether the last message of it queued for that sink said open (`true`) or
    /// resolved (`false`).
    #[serde(default)]
    pub handed: BTreeMap<String, bool>,
    /// Per sink: what a silence held back from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub held: BTreeMap<String, Held>,
    /// Its acknowledgement, while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
}

impl OpenAlert {
    /// The acknowledgement that keeps `message` of this alert from `sink` at `now_ms`: one in
    /// force, for a message that is a reminder — not a resolution, no more severe than when
    /// it was acknowledged, to a sink already told the alert is open.
    pub fn ack_mutes(&self, message: &Message, sink: &str, now_ms: u64) -> Option<&Ack> {
        let ack = self.ack.as_ref().filter(|a| a.active(now_ms))?;
        let reminder = self.open
            && !is_resolution(message)
            && message.severity <= ack.severity
            && self.handed.get(sink) == Some(&true);
        reminder.then_some(ack)
    }
}

/// The label an acknowledged alert's messages carry when they do go out.
pub const ACKNOWLEDGED_BY: &str = "acknowledged_by";

/// Whether `message` says its alert is over.
pub fn is_resolution(message: &Message) -> bool {
    message.label("status") == Some("resolved")
}

/// The identity of the alert `message` is about: its key, else its `fingerprint` label,
/// else its labels other than `status` (as Alertmanager knows an alert by its label set), so
/// a "resolved" with the same labels closes its "firing".
pub fn alert_identity(message: &Message) -> String {
    declared_identity(message).unwrap_or_else(|| {
        let mut labels: Vec<&(String, String)> = message
            .labels
            .iter()
            .filter(|(k, _)| k != "status")
            .collect();
        labels.sort();
        format!("l:{}", label_hash(labels))
    })
}

/// The register's identity of `message`: `None` for a message about no alert (no declared
/// identity and no `status` label).
pub fn registered_identity(message: &Message) -> Option<String> {
    (declared_identity(message).is_some() || message.label("status").is_some())
        .then(|| alert_identity(message))
}

/// A short hash of label pairs, in the order given.
pub fn label_hash<'a>(labels: impl IntoIterator<Item = &'a (String, String)>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (k, v) in labels {
        hash.update(k.as_bytes());
        hash.update([0]);
        hash.update(v.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..8])
}

/// Where one message went at a hand-over: per sink its `match` took it to, the silence that
/// held it back, or `None` when it was queued.
pub type Routed = [(String, Option<String>)];

/// The record after `message` went where `routed` says at `now_ms`, from the record before
/// (`None`: no record — the alert is not open, and nothing is held for it).
pub fn observed(
    before: Option<&OpenAlert>,
    message: &Message,
    routed: &Routed,
    now_ms: u64,
) -> Option<OpenAlert> {
    let open = !is_resolution(message);
    let mut alert = match before {
        Some(a) => a.clone(),
        // A resolution of an alert nobody was told of: nothing to remember.
        None if !open => return None,
        None => OpenAlert {
            open,
            since_ms: now_ms,
            seen_ms: now_ms,
            summary: None,
            severity: message.severity,
            labels: Vec::new(),
            handed: BTreeMap::new(),
            held: BTreeMap::new(),
            ack: None,
        },
    };
    if open && !alert.open {
        alert.since_ms = now_ms;
    }
    // An acknowledgement lasts while the alert is open, and until it lapses.
    if !open || alert.ack.as_ref().is_some_and(|a| !a.active(now_ms)) {
        alert.ack = None;
    }
    alert.open = open;
    alert.seen_ms = now_ms;
    alert.summary = message.summary.clone();
    alert.severity = message.severity;
    alert.labels = message.labels.clone();
    for (sink, silence) in routed {
        match silence {
            None => {
                alert.handed.insert(sink.clone(), open);
                alert.held.remove(sink);
            }
            Some(silence) => {
                alert.held.insert(
                    sink.clone(),
                    Held {
                        silence: silence.clone(),
                        message: message.clone(),
                    },
                );
            }
        }
    }
    (alert.open || !alert.held.is_empty()).then_some(alert)
}

/// Whether going from `before` to `after` must be written.
fn worth_writing(before: Option<&OpenAlert>, after: Option<&OpenAlert>) -> bool {
    match (before, after) {
        (None, None) => false,
        (Some(b), Some(a)) => {
            let unseen = |x: &OpenAlert| OpenAlert {
                seen_ms: 0,
                ..x.clone()
            };
            unseen(b) != unseen(a) || a.seen_ms.saturating_sub(b.seen_ms) >= SEEN_REFRESH_MS
        }
        _ => true,
    }
}

/// What a sink is handed of an alert when the silence that held `held` back from it ended:
/// the held message when the sink's view differs from it — an open alert it was not told
/// of, or the resolution of one it saw open — and nothing otherwise.
pub fn due_on_release(handed: Option<bool>, held: &Message) -> bool {
    let open = !is_resolution(held);
    if open {
        handed != Some(true)
    } else {
        handed == Some(true)
    }
}

/// Releases what `alert` holds for sinks no silence mutes any more: returns the holds to
/// queue (each with its message and the silence that held it), per sink, and changes the
/// record as if they were handed over. `muted_by` says
/// which silence still mutes a held message for a sink (it stays held); holds for sinks
/// `exists` does not know (removed from the pipeline) are dropped.
pub fn release(
    alert: &mut OpenAlert,
    exists: impl Fn(&str) -> bool,
    muted_by: impl Fn(&str, &Message) -> Option<String>,
) -> Vec<(String, Held)> {
    let mut due = Vec::new();
    let sinks: Vec<String> = alert.held.keys().cloned().collect();
    for sink in sinks {
        if !exists(&sink) {
            alert.held.remove(&sink);
            continue;
        }
        let held = &alert.held[&sink];
        if let Some(silence) = muted_by(&sink, &held.message) {
            if let Some(h) = alert.held.get_mut(&sink) {
                h.silence = silence;
            }
            continue;
        }
        let Some(held) = alert.held.remove(&sink) else {
            continue;
        };
        if due_on_release(alert.handed.get(&sink).copied(), &held.message) {
            alert
                .handed
                .insert(sink.clone(), !is_resolution(&held.message));
            due.push((sink, held));
        }
    }
    due
}

/// The register as one hand-over batch sees it: records read once from the store, then
/// changed in memory by each message in turn, so that two messages of one alert in a batch
/// see each other; each change is also returned as a state write for the hand-over.
pub struct RegisterBatch<'a> {
    store: &'a dyn QueueStore,
    pipeline: &'a str,
    records: HashMap<String, Option<OpenAlert>>,
}

impl<'a> RegisterBatch<'a> {
    /// A batch over `pipeline`'s register in `store`.
    pub fn new(store: &'a dyn QueueStore, pipeline: &'a str) -> Self {
        RegisterBatch {
            store,
            pipeline,
            records: HashMap::new(),
        }
    }

    /// Notes where `message` went; the state write to make, if anything changed. A record
    /// the store cannot read or decode counts as absent (logged): the register is a
    /// derived view, and the message goes on.
    pub fn observe(
        &mut self,
        message: &Message,
        routed: &Routed,
        now_ms: u64,
    ) -> Option<StateWrite> {
        let identity = registered_identity(message)?;
        let before = match self.records.get(&identity) {
            Some(record) => record.clone(),
            None => self.read(&identity),
        };
        let after = observed(before.as_ref(), message, routed, now_ms);
        let write = worth_writing(before.as_ref(), after.as_ref()).then(|| StateWrite {
            stage: STAGE.to_string(),
            key: identity.clone(),
            value: after.as_ref().and_then(|a| serde_json::to_vec(a).ok()),
        });
        self.records.insert(identity, after);
        write
    }

    /// The record of the alert `message` is about, as this batch sees it (read once).
    pub fn current(&mut self, message: &Message) -> Option<&OpenAlert> {
        let identity = registered_identity(message)?;
        if !self.records.contains_key(&identity) {
            let record = self.read(&identity);
            self.records.insert(identity.clone(), record);
        }
        self.records.get(&identity)?.as_ref()
    }

    fn read(&self, identity: &str) -> Option<OpenAlert> {
        let bytes = match self.store.state_get(self.pipeline, STAGE, identity) {
            Ok(bytes) => bytes?,
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline, alert = %identity, error = %e, "cannot read the open-alert register");
                return None;
            }
        };
        decode(self.pipeline, identity, &bytes)
    }
}

/// A record's value, or `None` (logged) when it cannot be decoded.
pub fn decode(pipeline: &str, identity: &str, bytes: &[u8]) -> Option<OpenAlert> {
    serde_json::from_slice(bytes)
        .map_err(|e| tracing::warn!(pipeline = %pipeline, alert = %identity, error = %e, "skipping an unreadable open-alert record"))
        .ok()
}

/// The running pipelines' register locks, for changes made from outside a pipeline (an
/// acknowledgement through the API), so they never race a hand-over's batch.
#[derive(Clone, Default)]
pub struct Locks(
    std::sync::Arc<std::sync::Mutex<HashMap<String, crate::silence_release::RegisterLock>>>,
);

impl Locks {
    /// Makes `lock` the register lock of running `pipeline`.
    pub fn insert(&self, pipeline: &str, lock: crate::silence_release::RegisterLock) {
        self.map().insert(pipeline.to_string(), lock);
    }

    /// Forgets `pipeline`'s lock, if it is `lock`.
    pub fn remove(&self, pipeline: &str, lock: &crate::silence_release::RegisterLock) {
        let mut map = self.map();
        if map
            .get(pipeline)
            .is_some_and(|l| std::sync::Arc::ptr_eq(l, lock))
        {
            map.remove(pipeline);
        }
    }

    /// The lock of running `pipeline`.
    pub fn get(&self, pipeline: &str) -> Option<crate::silence_release::RegisterLock> {
        self.map().get(pipeline).cloned()
    }

    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, crate::silence_release::RegisterLock>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An acknowledgement as the API and the CLI ask for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewAck {
    /// The pipeline.
    pub pipeline: String,
    /// The alert's identity as `GET /alerts` lists it, or a prefix naming one.
    pub alert: String,
    /// Why (required): "on it, replacing the disk".
    pub comment: String,
    /// How long it lasts, e.g. `"4h"`; absent: until the alert resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Who; absent: the API token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The request is not one.
    #[error("{0}")]
    Invalid(String),
    /// No such open alert.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] tocsin_queue::QueueError),
}

/// Acknowledges an open alert of `new.pipeline` (under its register lock when it runs): its
/// reminders stay back until it resolves or the acknowledgement lapses. The alert's identity
/// and its record as now written.
pub async fn acknowledge(
    store: &dyn QueueStore,
    locks: &Locks,
    new: &NewAck,
    caller: &str,
    now_ms: u64,
) -> Result<(String, OpenAlert), AckError> {
    if new.comment.trim().is_empty() {
        return Err(AckError::Invalid(
            "an acknowledgement needs a comment: what is being done".into(),
        ));
    }
    let until_ms = match &new.duration {
        None => None,
        Some(text) => {
            let d = humantime::parse_duration(text)
                .map_err(|e| AckError::Invalid(format!("duration `{text}`: {e}")))?;
            Some(now_ms + d.as_millis() as u64)
        }
    };
    let lock = locks.get(&new.pipeline);
    let _register = match &lock {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let records = list(store, &new.pipeline)?;
    let named: Vec<&(String, OpenAlert)> = match records.iter().find(|(id, _)| *id == new.alert) {
        Some(exact) => vec![exact],
        None => records
            .iter()
            .filter(|(id, _)| id.starts_with(&new.alert))
            .collect(),
    };
    let (identity, alert) = match named.as_slice() {
        [one] => (one.0.clone(), one.1.clone()),
        [] => {
            return Err(AckError::NotFound(format!(
                "pipeline `{}` has no alert `{}` (`tocsin alerts {}` lists them)",
                new.pipeline, new.alert, new.pipeline
            )))
        }
        many => {
            return Err(AckError::Invalid(format!(
                "`{}` names {} alerts of `{}`; give more of the identity",
                new.alert,
                many.len(),
                new.pipeline
            )))
        }
    };
    if !alert.open {
        return Err(AckError::NotFound(format!(
            "alert `{identity}` of `{}` is resolved: nothing to acknowledge",
            new.pipeline
        )));
    }
    let mut alert = alert;
    alert.ack = Some(Ack {
        by: new.by.clone().unwrap_or_else(|| caller.to_string()),
        comment: new.comment.clone(),
        at_ms: now_ms,
        until_ms,
        severity: alert.severity,
    });
    let write = StateWrite {
        stage: STAGE.to_string(),
        key: identity.clone(),
        value: serde_json::to_vec(&alert).ok(),
    };
    store.put_state(&new.pipeline, &[write]).await?;
    Ok((identity, alert))
}

/// Every record of `pipeline`'s register, by identity.
pub fn list(
    store: &dyn QueueStore,
    pipeline: &str,
) -> tocsin_queue::Result<Vec<(String, OpenAlert)>> {
    Ok(store
        .state_scan(pipeline, STAGE)?
        .into_iter()
        .filter_map(|(identity, bytes)| {
            decode(pipeline, &identity, &bytes).map(|alert| (identity, alert))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(status: &str) -> Message {
        Message {
            id: format!("m-{status}"),
            timestamp_ms: 0,
            severity: Severity::Error,
            summary: Some("disk full".into()),
            body: String::new(),
            labels: vec![
                ("host".into(), "db1".into()),
                ("status".into(), status.into()),
            ],
            metrics: vec![],
            payload: None,
            link: None,
            key: None,
        }
    }

    fn queued(sink: &str) -> Vec<(String, Option<String>)> {
        vec![(sink.to_string(), None)]
    }

    fn silenced(sink: &str) -> Vec<(String, Option<String>)> {
        vec![(sink.to_string(), Some("s1".to_string()))]
    }

    fn never_muted(_: &str, _: &Message) -> Option<String> {
        None
    }

    #[test]
    fn only_messages_about_an_alert_are_registered() {
        let mut plain = message("firing");
        plain.labels.retain(|(k, _)| k != "status");
        assert_eq!(registered_identity(&plain), None);
        plain.key = Some("backup/db1".into());
        assert_eq!(registered_identity(&plain).as_deref(), Some("k:backup/db1"));
        assert_eq!(
            registered_identity(&message("firing")),
            registered_identity(&message("resolved")),
            "a resolution closes its firing"
        );
    }

    #[test]
    fn an_alert_opens_and_its_resolution_removes_it() {
        let open = observed(None, &message("firing"), &queued("matrix"), 10).unwrap();
        assert!(open.open);
        assert_eq!(open.handed.get("matrix"), Some(&true));
        assert_eq!(
            observed(Some(&open), &message("resolved"), &queued("matrix"), 20),
            None
        );
        assert_eq!(
            observed(None, &message("resolved"), &queued("matrix"), 20),
            None
        );
    }

    fn ack(until_ms: Option<u64>) -> Ack {
        Ack {
            by: "alice".into(),
            comment: "on it".into(),
            at_ms: 10,
            until_ms,
            severity: Severity::Error,
        }
    }

    #[test]
    fn an_acknowledgement_keeps_back_reminders_only() {
        let mut open = observed(None, &message("firing"), &queued("matrix"), 10).unwrap();
        open.ack = Some(ack(Some(100)));
        let reminder = message("firing");
        assert!(open.ack_mutes(&reminder, "matrix", 50).is_some());
        // A sink never told the alert is open gets it; so does an escalation, a resolution,
        // and anything once the acknowledgement lapsed.
        assert!(open.ack_mutes(&reminder, "mastodon", 50).is_none());
        let mut worse = message("firing");
        worse.severity = Severity::Alert;
        assert!(open.ack_mutes(&worse, "matrix", 50).is_none());
        assert!(open.ack_mutes(&message("resolved"), "matrix", 50).is_none());
        assert!(open.ack_mutes(&reminder, "matrix", 100).is_none());
    }

    #[test]
    fn an_acknowledgement_ends_with_its_alert_or_when_it_lapses() {
        let mut open = observed(None, &message("firing"), &queued("matrix"), 10).unwrap();
        open.ack = Some(ack(None));
        let kept = observed(Some(&open), &message("firing"), &[], 20).unwrap();
        assert_eq!(kept.ack, Some(ack(None)), "kept while open");
        let mut muted = open.clone();
        muted.held.insert(
            "m".into(),
            Held {
                silence: "s".into(),
                message: message("firing"),
            },
        );
        let resolved = observed(Some(&muted), &message("resolved"), &silenced("m"), 30).unwrap();
        assert_eq!(resolved.ack, None, "a resolution ends it");
        open.ack = Some(ack(Some(25)));
        assert_eq!(
            observed(Some(&open), &message("firing"), &[], 30)
                .unwrap()
                .ack,
            None,
            "a lapsed one is dropped"
        );
    }

    #[tokio::test]
    async fn acknowledging_names_an_open_alert_by_identity_or_prefix_and_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn QueueStore> =
            tocsin_queue::SledStore::open(dir.path()).unwrap();
        let mut batch = RegisterBatch::new(store.as_ref(), "disks");
        let mut writes = Vec::new();
        let mut other = message("firing");
        other.key = Some("CPU/db1".into());
        let mut disk = message("firing");
        disk.key = Some("Disk/db1".into());
        writes.extend(batch.observe(&disk, &queued("matrix"), 10));
        writes.extend(batch.observe(&other, &queued("matrix"), 10));
        store.put_state("disks", &writes).await.unwrap();
        let new = |alert: &str, comment: &str, duration: Option<&str>| NewAck {
            pipeline: "disks".into(),
            alert: alert.into(),
            comment: comment.into(),
            duration: duration.map(str::to_string),
            by: None,
        };
        let locks = Locks::default();
        let ack_of = |n: NewAck| {
            let store = store.clone();
            let locks = locks.clone();
            async move { acknowledge(store.as_ref(), &locks, &n, "alice", 1_000).await }
        };
        assert!(matches!(
            ack_of(new("k:", "x", None)).await,
            Err(AckError::Invalid(_))
        ));
        assert!(matches!(
            ack_of(new("k:Nope", "x", None)).await,
            Err(AckError::NotFound(_))
        ));
        assert!(matches!(
            ack_of(new("k:Disk", " ", None)).await,
            Err(AckError::Invalid(_))
        ));
        assert!(matches!(
            ack_of(new("k:Disk", "x", Some("soon"))).await,
            Err(AckError::Invalid(_))
        ));
        let (identity, alert) = ack_of(new("k:Disk", "replacing it", Some("1h")))
            .await
            .unwrap();
        assert_eq!(identity, "k:Disk/db1");
        let ack = alert.ack.unwrap();
        assert_eq!((ack.by.as_str(), ack.until_ms), ("alice", Some(3_601_000)));
        let stored = list(store.as_ref(), "disks").unwrap();
        let disk = stored.iter().find(|(id, _)| id == "k:Disk/db1").unwrap();
        assert!(disk.1.ack.is_some(), "written to the store");
    }

    #[test]
    fn an_alert_that_opened_in_a_silence_and_is_still_open_is_released_once() {
        let held = observed(None, &message("firing"), &silenced("matrix"), 10).unwrap();
        assert_eq!(held.held["matrix"].silence, "s1");
        assert!(held.handed.is_empty());
        let mut after = held.clone();
        let due = release(&mut after, |_| true, never_muted);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].0.as_str(), &due[0].1.message),
            ("matrix", &message("firing"))
        );
        assert_eq!(due[0].1.silence, "s1");
        assert!(after.held.is_empty());
        assert_eq!(after.handed.get("matrix"), Some(&true));
        assert!(
            release(&mut after, |_| true, never_muted).is_empty(),
            "once"
        );
    }

    #[test]
    fn an_alert_that_opened_and_resolved_inside_a_silence_is_never_announced() {
        let held = observed(None, &message("firing"), &silenced("matrix"), 10).unwrap();
        let mut resolved = observed(Some(&held), &message("resolved"), &silenced("matrix"), 20)
            .expect("kept while something is held");
        assert!(!resolved.open);
        assert!(release(&mut resolved, |_| true, never_muted).is_empty());
        assert!(resolved.held.is_empty());
    }

    #[test]
    fn a_resolution_muted_for_a_sink_that_saw_the_alert_open_is_released() {
        let open = observed(None, &message("firing"), &queued("matrix"), 10).unwrap();
        let mut held =
            observed(Some(&open), &message("resolved"), &silenced("matrix"), 20).unwrap();
        let due = release(&mut held, |_| true, never_muted);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].0.as_str(), &due[0].1.message),
            ("matrix", &message("resolved"))
        );
    }

    #[test]
    fn a_hold_stays_while_a_silence_mutes_it_and_goes_with_its_sink() {
        let mut held = observed(None, &message("firing"), &silenced("matrix"), 10).unwrap();
        let still = |_: &str, _: &Message| Some("s2".to_string());
        assert!(release(&mut held, |_| true, still).is_empty());
        assert_eq!(held.held["matrix"].silence, "s2");
        assert!(release(&mut held, |_| false, never_muted).is_empty());
        assert!(held.held.is_empty(), "a removed sink's hold is dropped");
    }

    #[test]
    fn a_later_message_the_sink_got_clears_the_hold() {
        let held = observed(None, &message("firing"), &silenced("matrix"), 10).unwrap();
        let got = observed(Some(&held), &message("firing"), &queued("matrix"), 20).unwrap();
        assert!(got.held.is_empty());
        assert_eq!(got.handed.get("matrix"), Some(&true));
    }

    #[test]
    fn a_repeat_that_changes_nothing_is_not_written_until_an_hour_passed() {
        let open = observed(None, &message("firing"), &queued("matrix"), 10).unwrap();
        let again = observed(Some(&open), &message("firing"), &queued("matrix"), 20).unwrap();
        assert!(!worth_writing(Some(&open), Some(&again)));
        let later = observed(
            Some(&open),
            &message("firing"),
            &queued("matrix"),
            10 + SEEN_REFRESH_MS,
        )
        .unwrap();
        assert!(worth_writing(Some(&open), Some(&later)));
        assert!(worth_writing(None, Some(&open)));
        assert!(worth_writing(Some(&open), None));
    }
}
