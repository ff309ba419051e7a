//! One message summing up a group of alerts, for a sink that cannot take a group.
//!
//! A sink built against contract 0.1.0 takes one message per call. When its pipeline groups
//! alerts, the host hands it this digest — one post instead of one per alert, the point of
//! grouping — in the words Alertmanager's notifications use: `[FIRING:3] alertname=DiskFull`
//! as the title, a line per alert below it. The SDK's default for 0.2.0 sinks renders a group
//! the same way (`tocsin_sdk::group_digest`).

use tocsin_message::{Message, Severity};

/// What the host knows of a group when it hands one over (the WIT `group` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The labels the group is formed by, with this group's values.
    pub labels: Vec<(String, String)>,
    /// The group's stable name.
    pub key: String,
    /// Notifications of this group delivered before this one.
    pub sequence: u32,
    /// The group's alerts firing after these messages, earlier ones included.
    pub firing: u32,
}

/// The most alerts listed one per line; the rest are counted ("and 27 more").
pub const LISTED: usize = 20;

/// The digest of `messages` (one group's notification) as one message.
pub fn group_digest(messages: &[&Message], group: &GroupInfo) -> Message {
    let resolved = |m: &Message| m.label("status") == Some("resolved");
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
    let summary = if group.firing > 0 {
        format!("[FIRING:{}] {labels}", group.firing)
    } else {
        format!("[RESOLVED] {labels}")
    };
    let mut lines: Vec<String> = messages
        .iter()
        .take(LISTED)
        .map(|m| {
            let text = m.body.lines().next().unwrap_or("");
            let what = match &m.summary {
                Some(s) if !text.is_empty() && s != text => format!("{s}: {text}"),
                Some(s) => s.clone(),
                None => text.to_string(),
            };
            if resolved(m) {
                format!("- resolved: {what}")
            } else {
                format!("- {what}")
            }
        })
        .collect();
    if messages.len() > LISTED {
        lines.push(format!("and {} more", messages.len() - LISTED));
    }
    let severity = messages
        .iter()
        .filter(|m| !resolved(m))
        .map(|m| m.severity)
        .max()
        .unwrap_or(Severity::Info);
    let mut digest_labels = group.labels.clone();
    digest_labels.push((
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
        summary: Some(summary),
        body: lines.join("\n"),
        labels: digest_labels,
        metrics: Vec::new(),
        payload: None,
        link: messages.iter().find_map(|m| m.link.clone()),
        key: Some(group.key.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(host: &str, status: &str, severity: Severity) -> Message {
        Message {
            id: format!("{host}-{status}"),
            timestamp_ms: 1_700_000_000_000,
            severity,
            summary: Some(format!("Disk full on {host}")),
            body: "/ is 97 % full\nmore detail".into(),
            labels: vec![
                ("status".into(), status.into()),
                ("host".into(), host.into()),
            ],
            metrics: vec![],
            payload: None,
            link: None,
            key: None,
        }
    }

    fn group(firing: u32) -> GroupInfo {
        GroupInfo {
            labels: vec![("alertname".into(), "DiskFull".into())],
            key: "abc".into(),
            sequence: 2,
            firing,
        }
    }

    #[test]
    fn a_group_reads_as_alertmanager_titles_it_with_a_line_per_alert() {
        let messages = [
            alert("db1", "firing", Severity::Warning),
            alert("db2", "firing", Severity::Error),
            alert("db3", "resolved", Severity::Info),
        ];
        let all: Vec<&Message> = messages.iter().collect();
        let d = group_digest(&all, &group(4));
        assert_eq!(d.summary.as_deref(), Some("[FIRING:4] alertname=DiskFull"));
        assert_eq!(
            d.body,
            "- Disk full on db1: / is 97 % full\n- Disk full on db2: / is 97 % full\n\
             - resolved: Disk full on db3: / is 97 % full"
        );
        assert_eq!(d.severity, Severity::Error, "the worst firing alert");
        assert_eq!(d.id, "group-abc-2");
        assert_eq!(d.label("status"), Some("firing"));
        let d = group_digest(&all[2..], &group(0));
        assert_eq!(d.summary.as_deref(), Some("[RESOLVED] alertname=DiskFull"));
        assert_eq!(d.severity, Severity::Info);
    }

    #[test]
    fn a_large_group_lists_twenty_and_counts_the_rest() {
        let messages: Vec<Message> = (0..50)
            .map(|i| alert(&format!("h{i}"), "firing", Severity::Warning))
            .collect();
        let all: Vec<&Message> = messages.iter().collect();
        let d = group_digest(&all, &group(50));
        assert_eq!(d.body.lines().count(), LISTED + 1);
        assert!(d.body.ends_with("and 30 more"), "{}", d.body);
    }
}
