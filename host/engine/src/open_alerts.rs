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
}

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
        },
    };
    if open && !alert.open {
        alert.since_ms = now_ms;
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
