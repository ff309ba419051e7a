//! A group of alerts as one message: how a sink renders a group unless it does better.
//!
//! The same rendering the host gives a contract 0.1.0 sink (`host/runtime/src/group_digest.rs`):
//! Alertmanager's title, `[FIRING:3] alertname=DiskFull`, and a line per alert.

use crate::{DeliveryError, Group, Message, MessageExt, Notification, Severity};

/// The most alerts listed one per line; the rest are counted ("and 27 more").
pub const LISTED: usize = 20;

/// The one message of a notification that is not a group, for a sink whose `batch_limit` is
/// 1 (the host never sends it more); several are refused as a permanent error.
pub fn only_message(notification: Notification) -> Result<Message, DeliveryError> {
    let mut messages = notification.messages;
    match messages.len() {
        1 => Ok(messages.remove(0)),
        n => Err(DeliveryError::Permanent(format!(
            "this sink takes one message per call, not {n}"
        ))),
    }
}

/// `[FIRING:3] alertname=DiskFull, host=db1` (or `[RESOLVED] …` when none fires).
pub fn group_title(group: &Group) -> String {
    let labels = if group.labels.is_empty() {
        "all alerts".to_string()
    } else {
        group
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if group.firing > 0 {
        format!("[FIRING:{}] {labels}", group.firing)
    } else {
        format!("[RESOLVED] {labels}")
    }
}

/// One line for an alert of a group: `summary: first line of the body`, marked when resolved.
pub fn group_line(m: &Message) -> String {
    let text = m.body.lines().next().unwrap_or("");
    let what = match &m.summary {
        Some(s) if !text.is_empty() && s != text => format!("{s}: {text}"),
        Some(s) => s.clone(),
        None => text.to_string(),
    };
    if m.label("status") == Some("resolved") {
        format!("- resolved: {what}")
    } else {
        format!("- {what}")
    }
}

/// The notification as one message: [`group_title`] as its summary, a [`group_line`] per
/// alert (at most [`LISTED`], then "and N more"), the worst firing severity, the first link.
pub fn group_digest(notification: &Notification, group: &Group) -> Message {
    let messages = &notification.messages;
    let mut lines: Vec<String> = messages.iter().take(LISTED).map(group_line).collect();
    if messages.len() > LISTED {
        lines.push(format!("and {} more", messages.len() - LISTED));
    }
    let severity = messages
        .iter()
        .filter(|m| m.label("status") != Some("resolved"))
        .map(|m| m.severity)
        .max_by_key(|s| crate::rank(*s))
        .unwrap_or(Severity::Info);
    let mut labels = group.labels.clone();
    labels.push((
        "status".into(),
        if group.firing > 0 {
            "firing"
        } else {
            "resolved"
        }
        .into(),
    ));
    Message {
        id: format!("group-{}-{}", group.key, group.sequence),
        timestamp_ms: messages.iter().map(|m| m.timestamp_ms).max().unwrap_or(0),
        severity,
        summary: Some(group_title(group)),
        body: lines.join("\n"),
        labels,
        metrics: Vec::new(),
        payload: None,
        link: messages.iter().find_map(|m| m.link.clone()),
        key: Some(group.key.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_titled_and_listed_as_the_host_renders_it() {
        let mut a = Message::new("a", 1, "/ is 97 % full");
        a.summary = Some("Disk full on db1".into());
        a.severity = Severity::Error;
        let mut b = Message::new("b", 2, "back to 40 %");
        b.set_label("status", "resolved");
        let group = Group {
            labels: vec![("alertname".into(), "DiskFull".into())],
            key: "k".into(),
            sequence: 0,
            firing: 1,
        };
        let n = Notification {
            messages: vec![a, b],
            group: Some(group.clone()),
        };
        let d = group_digest(&n, &group);
        assert_eq!(d.summary.as_deref(), Some("[FIRING:1] alertname=DiskFull"));
        assert_eq!(
            d.body,
            "- Disk full on db1: / is 97 % full\n- resolved: back to 40 %"
        );
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.id, "group-k-0");
    }
}
