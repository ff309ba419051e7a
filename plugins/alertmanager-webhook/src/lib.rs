//! `alertmanager-webhook`: an ingest decoder for Prometheus Alertmanager's webhook (payload
//! version 4).
//!
//! One message per alert, firing and resolved alike. The id is
//! `<fingerprint>-<status>-<startsAt>`, so Alertmanager's repeated notifications of the same
//! alert state are the same message (and the sinks' idempotency keys post them once), while
//! its resolution is a new one. Labels: every alert label, plus `status` and `receiver`.
//! Severity: the alert's `severity` label (`critical`/`page` → alert, `error`, `warning`,
//! `info`), `warning` when absent; a resolved alert is `info`.
//!
//! One notification makes at most 1000 messages and 16 MiB of them (what the host takes from
//! one call); a larger one is refused with 413, so set `max_alerts` (1000 or fewer) in the
//! receiver's `webhook_config`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tocsin_sdk::{
    export_decoder, Decoder, HttpRequest, Message, MessageExt, OutputBudget, Rejection, Severity,
    MAX_OUTPUT_MESSAGES,
};

/// Decodes Prometheus Alertmanager webhook notifications, one message per alert. Takes no settings.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    version: String,
    #[serde(default)]
    receiver: String,
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    /// Alertmanager writes `generatorURL`, which `camelCase` would spell `generatorUrl`.
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
    fingerprint: String,
}

struct AlertmanagerWebhook;

fn reject(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

fn severity(alert: &Alert) -> Severity {
    if alert.status == "resolved" {
        return Severity::Info;
    }
    match alert
        .labels
        .get("severity")
        .map(|s| s.to_ascii_lowercase())
        .as_deref()
    {
        Some("critical" | "page" | "alert") => Severity::Alert,
        Some("error" | "high") => Severity::Error,
        Some("info" | "low") => Severity::Info,
        Some("none") => Severity::None,
        _ => Severity::Warning,
    }
}

impl Decoder for AlertmanagerWebhook {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(AlertmanagerWebhook)
    }

    fn decode(&mut self, req: HttpRequest) -> Result<Vec<Message>, Rejection> {
        let value: serde_json::Value = serde_json::from_slice(&req.body)
            .map_err(|e| reject(400, format!("malformed JSON: {e}")))?;
        let payload: Payload = serde_json::from_value(value)
            .map_err(|e| reject(422, format!("not an Alertmanager webhook payload: {e}")))?;
        if payload.version != "4" {
            return Err(reject(
                422,
                format!(
                    "payload version {} is not supported (expected 4)",
                    payload.version
                ),
            ));
        }
        // More messages or bytes than the host takes from one call would fail the call (a 500,
        // which Alertmanager retries for ever): refuse with a 413 before building them.
        if payload.alerts.len() > MAX_OUTPUT_MESSAGES {
            return Err(reject(
                413,
                format!(
                    "{} alerts in one notification; at most {MAX_OUTPUT_MESSAGES} are taken \
                     (set `max_alerts` in the webhook_config)",
                    payload.alerts.len()
                ),
            ));
        }
        let mut budget = OutputBudget::default();
        payload
            .alerts
            .into_iter()
            .map(|alert| {
                if !matches!(alert.status.as_str(), "firing" | "resolved") {
                    return Err(reject(
                        422,
                        format!(
                            "alert status `{}` is neither firing nor resolved",
                            alert.status
                        ),
                    ));
                }
                if alert.fingerprint.is_empty() || alert.fingerprint.len() > 64 {
                    return Err(reject(
                        422,
                        "an alert fingerprint must be 1 to 64 characters",
                    ));
                }
                let started = humantime::parse_rfc3339_weak(&alert.starts_at)
                    .map_err(|e| reject(422, format!("startsAt `{}`: {e}", alert.starts_at)))?;
                let started_ms = started
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let name = alert
                    .labels
                    .get("alertname")
                    .cloned()
                    .unwrap_or_else(|| "alert".into());
                let summary = alert
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_else(|| name.clone());
                let summary = if alert.status == "resolved" {
                    format!("RESOLVED: {summary}")
                } else {
                    summary
                };
                let id = format!("{}-{}-{}", alert.fingerprint, alert.status, started_ms);
                // Without a description the summary is all there is to say: it becomes the
                // body, once (a chat sink shows summary and body, so it was shown twice).
                let (summary, body) = match alert.annotations.get("description") {
                    Some(description) => (Some(summary), description.clone()),
                    None => (None, summary),
                };
                let mut m = Message::new(id, started_ms, body);
                m.severity = severity(&alert);
                m.summary = summary;
                for (k, v) in &alert.labels {
                    m.set_label(k, v.clone());
                }
                m.set_label("status", alert.status.clone());
                // The alert's identity across its notifications: a sink with `concurrency`
                // keeps each alert's messages in order by it ("resolved" after "firing").
                m.set_label("fingerprint", alert.fingerprint.clone());
                if !payload.receiver.is_empty() {
                    m.set_label("receiver", payload.receiver.clone());
                }
                if !alert.generator_url.is_empty() {
                    m.set_label("generator-url", alert.generator_url.clone());
                    // The graph or rule that fired: the message's link, when it is a
                    // plain http(s) URL (an odd one stays only in the label).
                    m.set_link(alert.generator_url.clone());
                }
                m.key = Some(alert.fingerprint.clone());
                // A startsAt before 2000 or an unprintable fingerprint: say so (the host would
                // refuse the output, and Alertmanager retry a 500 for ever).
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                tocsin_sdk::check_message(&m, now).map_err(|reason| reject(422, reason))?;
                budget.admit(&m).map_err(|reason| reject(413, reason))?;
                Ok(m)
            })
            .collect()
    }
}

export_decoder!(AlertmanagerWebhook);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod prop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{
      "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
      "receiver": "tocsin", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
      "externalURL": "http://am:9093",
      "alerts": [
        {"status": "firing", "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "db1"},
         "annotations": {"summary": "Disk full on db1", "description": "/ is 99 % full"},
         "startsAt": "2026-11-24T10:00:00.123Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prom/graph", "fingerprint": "c0ffee1234"},
        {"status": "resolved", "labels": {"alertname": "CPUHigh"}, "annotations": {},
         "startsAt": "2026-11-24T09:00:00Z", "endsAt": "2026-11-24T09:30:00Z", "fingerprint": "beef"}
      ]}"#;

    fn decode(body: &str) -> Result<Vec<Message>, Rejection> {
        AlertmanagerWebhook.decode(HttpRequest {
            method: "POST".into(),
            path: "/".into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn every_alert_becomes_a_message_with_a_stable_id() {
        let ms = decode(PAYLOAD).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].id, "c0ffee1234-firing-1795514400123");
        assert_eq!(ms[0].severity, Severity::Alert);
        assert_eq!(ms[0].summary.as_deref(), Some("Disk full on db1"));
        assert_eq!(ms[0].body, "/ is 99 % full");
        assert_eq!(ms[0].label("instance"), Some("db1"));
        assert_eq!(ms[0].label("status"), Some("firing"));
        assert_eq!(ms[0].label("fingerprint"), Some("c0ffee1234"));
        // The graph that fired is the message's link (and a label).
        assert_eq!(ms[0].link.as_deref(), Some("http://prom/graph"));
        assert_eq!(ms[0].label("generator-url"), Some("http://prom/graph"));
        assert_eq!(ms[1].link, None);
        assert_eq!(ms[1].severity, Severity::Info);
        // No description: the summary is the body, said once.
        assert_eq!(ms[1].summary, None);
        assert_eq!(ms[1].body, "RESOLVED: CPUHigh");
        assert_eq!(ms[1].label("status"), Some("resolved"));
        assert_eq!(
            decode(PAYLOAD).unwrap()[0].id,
            ms[0].id,
            "the same notification, the same id"
        );
    }

    /// Regression (found by `prop_many_alerts_are_refused_past_the_output_caps` and
    /// `prop_amplifying_payloads_are_refused_past_the_output_caps`): 1001 alerts, or a long
    /// receiver copied into each of a few hundred alerts (under 1 MiB of JSON), made more
    /// messages or bytes than the host takes from one call, so the host failed the call and
    /// answered 500, which Alertmanager retries for ever.
    #[test]
    fn notifications_past_the_output_caps_are_refused_with_413() {
        let alert =
            r#"{"status": "firing", "startsAt": "2026-11-24T10:00:00Z", "fingerprint": "f"}"#;
        let many = format!(
            r#"{{"version": "4", "alerts": [{}]}}"#,
            vec![alert; 1001].join(",")
        );
        let e = decode(&many).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("max_alerts"), "{}", e.reason);
        let wide = format!(
            r#"{{"version": "4", "receiver": "{}", "alerts": [{}]}}"#,
            "r".repeat(40 << 10),
            vec![alert; 500].join(",")
        );
        assert!(wide.len() < 1 << 20);
        let e = decode(&wide).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("bytes of messages"), "{}", e.reason);
        let most = format!(
            r#"{{"version": "4", "alerts": [{}]}}"#,
            vec![alert; 1000].join(",")
        );
        assert_eq!(decode(&most).unwrap().len(), 1000);
    }

    #[test]
    fn wrong_versions_shapes_and_garbage_are_rejected() {
        assert_eq!(
            decode(&PAYLOAD.replace("\"version\": \"4\"", "\"version\": \"3\""))
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(decode("{\"version\": \"4\"}").unwrap_err().status, 422);
        assert_eq!(decode("[1,2").unwrap_err().status, 400);
        assert!(
            decode(&PAYLOAD.replace("2026-11-24T09:00:00Z", "yesterday"))
                .unwrap_err()
                .reason
                .contains("startsAt")
        );
        assert!(
            decode(&PAYLOAD.replace("\"status\": \"resolved\"", "\"status\": \"odd\"")).is_err()
        );
    }
}
