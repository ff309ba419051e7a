//! Inhibition (`[[inhibit]]` in a pipeline file): while an open alert of the pipeline matches
//! a rule's `source`, messages of other alerts matching its `target`, with equal values of its
//! `equal` labels, are muted — held in the open-alert register like a silence's, and released
//! by `silence_release.rs` when the source resolves.
//!
//! Which source alerts are open is kept in memory ([`Inhibitions`]): read from the register
//! when the pipeline starts, then changed by the filter worker at each hand-over of a source
//! alert's message, under the register lock. A resolution of a source wakes the release task.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tocsin_config::InhibitRule;
use tocsin_message::Message;

use crate::open_alerts::{is_resolution, OpenAlert};

/// (rule, values of its `equal` labels) → identities of the open source alerts.
type OpenSources = HashMap<(usize, Vec<String>), BTreeSet<String>>;

/// A pipeline's inhibition rules and the open alerts that inhibit.
pub struct Inhibitions {
    rules: Vec<InhibitRule>,
    open: Mutex<OpenSources>,
}

/// The values of `labels` in `message` (a missing one is empty).
fn values(labels: &[String], message: &Message) -> Vec<String> {
    labels
        .iter()
        .map(|l| message.label(l).unwrap_or_default().to_string())
        .collect()
}

/// The message an open-alert record stands for, to match it.
fn as_message(alert: &OpenAlert) -> Message {
    let mut m = Message::with_labels("", alert.severity, &[]);
    m.labels = alert.labels.clone();
    m
}

impl Inhibitions {
    /// The rules, with the open alerts of `register` that match a source.
    pub fn new(rules: Vec<InhibitRule>, register: &[(String, OpenAlert)]) -> Self {
        let inhibitions = Inhibitions {
            rules,
            open: Mutex::new(HashMap::new()),
        };
        for (identity, alert) in register.iter().filter(|(_, a)| a.open) {
            inhibitions.observe(identity, &as_message(alert));
        }
        inhibitions
    }

    fn open(&self) -> std::sync::MutexGuard<'_, OpenSources> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a message of alert `identity` handed over: a source alert opens or resolves.
    /// `true` when one resolved (what it held may be due).
    pub fn observe(&self, identity: &str, message: &Message) -> bool {
        let mut resolved = false;
        let mut open = self.open();
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.source.iter().all(|m| m.matches(message)) {
                continue;
            }
            let key = (i, values(&rule.equal, message));
            if is_resolution(message) {
                if let Some(set) = open.get_mut(&key) {
                    resolved |= set.remove(identity);
                    if set.is_empty() {
                        open.remove(&key);
                    }
                }
            } else {
                open.entry(key).or_default().insert(identity.to_string());
            }
        }
        resolved
    }

    /// What mutes `message` of alert `identity`: `inhibited by <source identity>`, or `None`.
    pub fn inhibited_by(&self, identity: &str, message: &Message) -> Option<String> {
        let open = self.open();
        if open.is_empty() {
            return None;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.target.iter().all(|m| m.matches(message)) {
                continue;
            }
            let key = (i, values(&rule.equal, message));
            if let Some(source) = open
                .get(&key)
                .and_then(|set| set.iter().find(|s| *s != identity))
            {
                return Some(format!("inhibited by {source}"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_config::matchers::Matcher;
    use tocsin_message::Severity;

    fn rule() -> InhibitRule {
        InhibitRule {
            source: vec![Matcher::parse("severity=alert").unwrap()],
            target: vec![Matcher::parse("severity=warning").unwrap()],
            equal: vec!["host".into()],
        }
    }

    fn alert(host: &str, severity: Severity, status: &str) -> Message {
        Message::with_labels(
            "m",
            severity,
            &[("alertname", "X"), ("host", host), ("status", status)],
        )
    }

    #[test]
    fn an_open_source_mutes_targets_with_equal_labels_until_it_resolves() {
        let inhibitions = Inhibitions::new(vec![rule()], &[]);
        let warning = alert("db1", Severity::Warning, "firing");
        assert_eq!(inhibitions.inhibited_by("w1", &warning), None);
        assert!(!inhibitions.observe("down/db1", &alert("db1", Severity::Alert, "firing")));
        assert_eq!(
            inhibitions.inhibited_by("w1", &warning).as_deref(),
            Some("inhibited by down/db1")
        );
        // Another host, another severity, the source itself: not muted.
        assert_eq!(
            inhibitions.inhibited_by("w2", &alert("db2", Severity::Warning, "firing")),
            None
        );
        assert_eq!(
            inhibitions.inhibited_by("e1", &alert("db1", Severity::Error, "firing")),
            None
        );
        assert_eq!(
            inhibitions.inhibited_by("down/db1", &alert("db1", Severity::Alert, "firing")),
            None
        );
        assert!(inhibitions.observe("down/db1", &alert("db1", Severity::Alert, "resolved")));
        assert_eq!(inhibitions.inhibited_by("w1", &warning), None);
    }

    #[test]
    fn open_sources_are_read_from_the_register_at_start() {
        let record = OpenAlert {
            open: true,
            since_ms: 0,
            seen_ms: 0,
            summary: None,
            severity: Severity::Alert,
            labels: vec![("host".into(), "db1".into())],
            handed: Default::default(),
            held: Default::default(),
            ack: None,
        };
        let closed = OpenAlert {
            open: false,
            labels: vec![("host".into(), "db2".into())],
            ..record.clone()
        };
        let inhibitions =
            Inhibitions::new(vec![rule()], &[("a".into(), record), ("b".into(), closed)]);
        assert!(inhibitions
            .inhibited_by("w", &alert("db1", Severity::Warning, "firing"))
            .is_some());
        assert!(inhibitions
            .inhibited_by("w", &alert("db2", Severity::Warning, "firing"))
            .is_none());
    }
}
