//! The messages accepted most recently and where each is now, read from the message trace:
//! what the status page lists under "Recent messages" and `GET /api/v1/recent` answers.
//!
//! Nothing is kept for it: a message's steps (accepted, the filters' verdicts, routed, each
//! attempt, delivered, dead-lettered, replayed) are folded into one state, so the list is as
//! durable and as bounded as the trace itself.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::trace::{Step, TraceEvent, Tracer};

/// The most messages `GET /recent` lists.
pub const MAX_RECENT: usize = 500;
/// How far back [`recent_messages`] looks, widening until it has found enough.
const WINDOWS: [Duration; 3] = [
    Duration::from_secs(3600),
    Duration::from_secs(24 * 3600),
    Duration::from_secs(30 * 24 * 3600),
];

/// The `limit` messages accepted most recently (of `pipeline`, or of all) and where each is
/// now, newest first: the last hour's trace first, then wider windows while fewer were found.
pub fn recent_messages(
    tracer: &Tracer,
    pipeline: Option<&str>,
    limit: usize,
) -> Result<Vec<RecentMessage>, tocsin_queue::QueueError> {
    let now = tocsin_queue::now_ms();
    let mut found = Vec::new();
    for window in WINDOWS {
        let from = now.saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        found = recent(&tracer.events_since(pipeline, from)?, limit);
        if found.len() >= limit {
            break;
        }
    }
    Ok(found)
}

/// One recent message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentMessage {
    /// Its pipeline.
    pub pipeline: String,
    /// Its id.
    pub id: String,
    /// When it was accepted (ms since the epoch).
    pub accepted_at_ms: u64,
    /// Its summary, or the first line of its body.
    pub summary: Option<String>,
    /// Its severity.
    pub severity: Option<String>,
    /// Where it is now: `queued`, `retrying`, `delivered`, `dropped`, `dead_lettered`,
    /// `filter_failed`, `not_stored`, `routed_nowhere`, `split`.
    pub state: String,
    /// What the state concerns: the sinks it was delivered to, the filter that dropped it,
    /// the last error.
    pub detail: Option<String>,
    /// Its last step's time.
    pub last_at_ms: u64,
}

/// Where a message stands with one sink.
#[derive(Debug, Clone, PartialEq)]
enum AtSink {
    Queued,
    Retrying(String),
    Delivered,
    Dead(String),
    Silenced(String),
}

/// Folds the steps of one message, in time order, into its state and detail.
pub fn state_of(steps: &[&TraceEvent]) -> (String, Option<String>) {
    let mut sinks: BTreeMap<String, AtSink> = BTreeMap::new();
    let mut before_sinks: Option<(&str, Option<String>)> = None;
    for event in steps {
        match &event.step {
            Step::Accepted { .. } | Step::Passed { .. } | Step::Rewritten { .. } => {}
            Step::Dropped { filter } => {
                before_sinks = Some(("dropped", Some(format!("by {filter}"))))
            }
            Step::Split { filter, into } => {
                before_sinks = Some(("split", Some(format!("by {filter} into {}", into.len()))))
            }
            Step::FilterFailed { filter, error } => {
                before_sinks = Some(("filter_failed", Some(format!("{filter}: {error}"))))
            }
            Step::NotStored { error } => before_sinks = Some(("not_stored", Some(error.clone()))),
            Step::Routed { to, .. } => {
                before_sinks = to.is_empty().then_some(("routed_nowhere", None));
                for sink in to {
                    sinks.insert(sink.clone(), AtSink::Queued);
                }
            }
            Step::AttemptFailed { sink, error, .. } => {
                sinks.insert(sink.clone(), AtSink::Retrying(error.clone()));
            }
            Step::Delivered { sink, .. } => {
                sinks.insert(sink.clone(), AtSink::Delivered);
            }
            Step::DeadLettered { queue, error } => {
                if queue == tocsin_queue::FILTERS_QUEUE {
                    before_sinks = Some(("dead_lettered", Some(format!("{queue}: {error}"))));
                } else {
                    sinks.insert(queue.clone(), AtSink::Dead(error.clone()));
                }
            }
            Step::Silenced { sink, silence } => {
                sinks.insert(sink.clone(), AtSink::Silenced(silence.clone()));
            }
            Step::Released { sink, .. } => {
                sinks.insert(sink.clone(), AtSink::Queued);
            }
            Step::Replayed { queue } => {
                if queue == tocsin_queue::FILTERS_QUEUE {
                    before_sinks = None;
                } else {
                    sinks.insert(queue.clone(), AtSink::Queued);
                }
            }
        }
    }
    if sinks.is_empty() {
        let (state, detail) = before_sinks.unwrap_or(("queued", None));
        return (state.to_string(), detail);
    }
    let listed = |wanted: fn(&AtSink) -> Option<String>| {
        let found: Vec<String> = sinks
            .iter()
            .filter_map(|(sink, at)| wanted(at).map(|why| format!("{sink}{why}")))
            .collect();
        (!found.is_empty()).then(|| found.join(", "))
    };
    if let Some(dead) = listed(|at| match at {
        AtSink::Dead(error) => Some(format!(": {error}")),
        _ => None,
    }) {
        return ("dead_lettered".into(), Some(dead));
    }
    if let Some(retrying) = listed(|at| match at {
        AtSink::Retrying(error) => Some(format!(": {error}")),
        _ => None,
    }) {
        return ("retrying".into(), Some(retrying));
    }
    if let Some(queued) = listed(|at| (*at == AtSink::Queued).then(String::new)) {
        return ("queued".into(), Some(format!("for {queued}")));
    }
    let delivered = listed(|at| (*at == AtSink::Delivered).then(String::new));
    let silenced = listed(|at| match at {
        AtSink::Silenced(silence) => Some(format!(" by {silence}")),
        _ => None,
    });
    match (delivered, silenced) {
        (None, Some(silenced)) => ("silenced".into(), Some(format!("for {silenced}"))),
        (Some(to), Some(silenced)) => (
            "delivered".into(),
            Some(format!("to {to}; silenced for {silenced}")),
        ),
        (delivered, None) => ("delivered".into(), delivered.map(|to| format!("to {to}"))),
    }
}

/// The `limit` most recently accepted messages among `events` (each with its pipeline), newest
/// first. A split's outputs (`<id>/<n>`) count as messages of their own only when they were
/// accepted themselves.
pub fn recent(events: &[(String, TraceEvent)], limit: usize) -> Vec<RecentMessage> {
    let mut by_message: HashMap<(&str, &str), Vec<&TraceEvent>> = HashMap::new();
    for (pipeline, event) in events {
        by_message
            .entry((pipeline.as_str(), event.id.as_str()))
            .or_default()
            .push(event);
    }
    let mut messages: Vec<RecentMessage> = by_message
        .into_iter()
        .filter_map(|((pipeline, id), mut steps)| {
            steps.sort_by_key(|e| e.at_ms);
            let accepted = steps
                .iter()
                .find(|e| matches!(e.step, Step::Accepted { .. }))?;
            let (summary, severity) = match &accepted.step {
                Step::Accepted {
                    summary, severity, ..
                } => (summary.clone(), severity.clone()),
                _ => (None, None),
            };
            let (state, detail) = state_of(&steps);
            Some(RecentMessage {
                pipeline: pipeline.to_string(),
                id: id.to_string(),
                accepted_at_ms: accepted.at_ms,
                summary,
                severity,
                state,
                detail,
                last_at_ms: steps.last().map_or(accepted.at_ms, |e| e.at_ms),
            })
        })
        .collect();
    messages.sort_by(|a, b| {
        (b.accepted_at_ms, &b.pipeline, &b.id).cmp(&(a.accepted_at_ms, &a.pipeline, &a.id))
    });
    messages.truncate(limit);
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64, id: &str, step: Step) -> (String, TraceEvent) {
        (
            "p".to_string(),
            TraceEvent {
                at_ms,
                id: id.into(),
                step,
            },
        )
    }

    fn accepted(summary: &str) -> Step {
        Step::Accepted {
            via: "POST /ingest/p".into(),
            summary: Some(summary.into()),
            severity: Some("error".into()),
        }
    }

    fn routed(to: &[&str]) -> Step {
        Step::Routed {
            to: to.iter().map(|s| s.to_string()).collect(),
            not_to: vec![],
        }
    }

    #[test]
    fn each_message_is_folded_into_where_it_is_now() {
        let events = vec![
            at(1, "gone", accepted("disk full")),
            at(
                2,
                "gone",
                Step::Dropped {
                    filter: "filter.0 (dedup)".into(),
                },
            ),
            at(3, "sent", accepted("backup late")),
            at(4, "sent", routed(&["matrix", "mastodon"])),
            at(
                5,
                "sent",
                Step::Delivered {
                    sink: "matrix".into(),
                    attempt: 1,
                },
            ),
            at(6, "dead", accepted("cpu hot")),
            at(7, "dead", routed(&["matrix"])),
            at(
                8,
                "dead",
                Step::DeadLettered {
                    queue: "matrix".into(),
                    error: "HTTP 400".into(),
                },
            ),
            at(
                9,
                "sent",
                Step::AttemptFailed {
                    sink: "mastodon".into(),
                    attempt: 1,
                    error: "HTTP 503".into(),
                    retry_at_ms: 20,
                },
            ),
            at(10, "nowhere", accepted("fine")),
            at(11, "nowhere", routed(&[])),
        ];
        let recent = recent(&events, 10);
        let states: Vec<(&str, &str, Option<&str>)> = recent
            .iter()
            .map(|m| (m.id.as_str(), m.state.as_str(), m.detail.as_deref()))
            .collect();
        assert_eq!(
            states,
            [
                ("nowhere", "routed_nowhere", None),
                ("dead", "dead_lettered", Some("matrix: HTTP 400")),
                ("sent", "retrying", Some("mastodon: HTTP 503")),
                ("gone", "dropped", Some("by filter.0 (dedup)")),
            ]
        );
        assert_eq!(recent[2].summary.as_deref(), Some("backup late"));
        assert_eq!(recent[2].last_at_ms, 9);

        // Delivered by the retry; a dead letter replayed and delivered.
        let mut more = events.clone();
        more.push(at(
            12,
            "sent",
            Step::Delivered {
                sink: "mastodon".into(),
                attempt: 2,
            },
        ));
        more.push(at(
            13,
            "dead",
            Step::Replayed {
                queue: "matrix".into(),
            },
        ));
        let recent = super::recent(&more, 2);
        assert_eq!(recent.len(), 2, "cut to the limit");
        let dead = super::recent(&more, 10)
            .into_iter()
            .find(|m| m.id == "dead")
            .unwrap();
        assert_eq!(
            (dead.state.as_str(), dead.detail.as_deref()),
            ("queued", Some("for matrix"))
        );
        let sent = super::recent(&more, 10)
            .into_iter()
            .find(|m| m.id == "sent")
            .unwrap();
        assert_eq!(
            (sent.state.as_str(), sent.detail.as_deref()),
            ("delivered", Some("to mastodon, matrix"))
        );
    }
}
