//! Property tests ("fuzzing") of the `alertmanager-webhook` decoder: any body, payloads near
//! valid ones, and payloads past the host's output caps decode to messages the host accepts or
//! are refused with a 4xx; valid payloads decode to one message per alert, as documented.
//! Named `prop_*` (`cargo test prop_`); `PROPTEST_CASES` raises the number of cases.

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Value};
use tocsin_sdk::{fuzz, MAX_OUTPUT_MESSAGES};

use super::*;

fn decode(body: Vec<u8>) -> Result<Vec<Message>, Rejection> {
    AlertmanagerWebhook.decode(fuzz::request(&[("content-type", "application/json")], body))
}

/// An RFC 3339 time between 2000 and 2023 (the host takes 2000 to a day from now), with or without milliseconds, and its ms.
fn starts_at() -> impl Strategy<Value = (String, u64)> {
    (946_684_800..1_700_000_000u64, prop::option::of(0..1000u64)).prop_map(|(secs, ms)| {
        let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms.unwrap_or(0));
        let text = match ms {
            Some(_) => humantime::format_rfc3339_millis(t).to_string(),
            None => humantime::format_rfc3339_seconds(t).to_string(),
        };
        (text, secs * 1000 + ms.unwrap_or(0))
    })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    let severity = prop::sample::select(
        &[
            "critical", "page", "alert", "error", "high", "info", "low", "none", "warning",
            "Critical", "?",
        ][..],
    );
    (
        prop::collection::btree_map(fuzz::text(), fuzz::text(), 0..4),
        prop::option::of(severity),
        prop::option::of(fuzz::text()),
    )
        .prop_map(|(mut l, severity, name)| {
            if let Some(s) = severity {
                l.insert("severity".into(), s.into());
            }
            if let Some(n) = name {
                l.insert("alertname".into(), n);
            }
            l
        })
}

fn valid_alert() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["firing", "resolved"][..]),
        labels(),
        prop::collection::btree_map(
            prop::sample::select(&["summary", "description", "runbook"][..]),
            fuzz::text(),
            0..3,
        ),
        starts_at(),
        prop::option::of(fuzz::text()),
        "[0-9a-f]{1,64}",
    )
        .prop_map(|(status, labels, annotations, (starts, _), url, fp)| {
            let mut a = json!({
                "status": status, "labels": labels, "annotations": annotations,
                "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "fingerprint": fp,
            });
            if let Some(url) = url {
                a["generatorURL"] = url.into();
            }
            a
        })
}

fn valid_payload() -> impl Strategy<Value = Value> {
    (fuzz::text(), prop::collection::vec(valid_alert(), 0..5)).prop_map(|(receiver, alerts)| {
        json!({
            "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
            "receiver": receiver, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am:9093", "alerts": alerts,
        })
    })
}

fn small_alert() -> Value {
    json!({"status": "firing", "startsAt": "2026-11-24T10:00:00Z", "fingerprint": "f"})
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    /// Any body at all.
    #[test]
    fn prop_any_body_decodes_or_is_refused(body in fuzz::body(fuzz::any_json())) {
        fuzz::check_decoded(&decode(body))?;
    }

    /// Payloads near valid ones: fields retyped, removed, added, made huge, nested.
    #[test]
    fn prop_near_valid_payloads_decode_or_are_refused(
        body in fuzz::body(fuzz::near(valid_payload())),
    ) {
        fuzz::check_decoded(&decode(body))?;
    }

    /// A valid payload: one message per alert, with the documented id, time, severity,
    /// summary, body and labels.
    #[test]
    fn prop_valid_payloads_decode_one_message_per_alert(payload in valid_payload()) {
        let decoded = decode(serde_json::to_vec(&payload).unwrap());
        fuzz::check_decoded(&decoded)?;
        let decoded = fuzz::accepted(decoded)?;
        let alerts = payload["alerts"].as_array().unwrap();
        prop_assert_eq!(decoded.len(), alerts.len());
        for (m, a) in decoded.iter().zip(alerts) {
            let s = |v: &Value| v.as_str().unwrap().to_string();
            let status = s(&a["status"]);
            let started = humantime::parse_rfc3339(a["startsAt"].as_str().unwrap()).unwrap();
            let ms = started.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
            prop_assert_eq!(&m.id, &format!("{}-{}-{}", s(&a["fingerprint"]), status, ms));
            prop_assert_eq!(m.timestamp_ms, ms);
            let name = a["labels"].get("alertname").map_or("alert".into(), s);
            let summary = a["annotations"].get("summary").map_or(name, s);
            let summary = if status == "resolved" {
                format!("RESOLVED: {summary}")
            } else {
                summary
            };
            // Without a description the summary is the body, and there is no summary.
            match a["annotations"].get("description") {
                Some(description) => {
                    prop_assert_eq!(&m.body, &s(description));
                    prop_assert_eq!(m.summary.as_deref(), Some(summary.as_str()));
                }
                None => {
                    prop_assert_eq!(&m.body, &summary);
                    prop_assert_eq!(m.summary.as_deref(), None);
                }
            }
            let label = a["labels"].get("severity").map(|v| s(v).to_ascii_lowercase());
            let expected_severity = match (status.as_str(), label.as_deref()) {
                ("resolved", _) => Severity::Info,
                (_, Some("critical" | "page" | "alert")) => Severity::Alert,
                (_, Some("error" | "high")) => Severity::Error,
                (_, Some("info" | "low")) => Severity::Info,
                (_, Some("none")) => Severity::None,
                _ => Severity::Warning,
            };
            prop_assert_eq!(m.severity, expected_severity);
            prop_assert_eq!(m.label("status"), Some(status.as_str()));
            prop_assert_eq!(m.label("fingerprint"), a["fingerprint"].as_str());
            for (k, v) in a["labels"].as_object().unwrap() {
                if !matches!(k.as_str(), "status" | "receiver" | "generator-url" | "fingerprint") {
                    prop_assert_eq!(m.label(k), v.as_str());
                }
            }
        }
    }

    /// Up to 1500 small alerts: past the host's 1000 messages, refused with 413.
    #[test]
    fn prop_many_alerts_are_refused_past_the_output_caps(n in 0..1500usize) {
        let payload = json!({"version": "4", "alerts": vec![small_alert(); n]});
        let decoded = decode(serde_json::to_vec(&payload).unwrap());
        fuzz::check_decoded(&decoded)?;
        prop_assert_eq!(decoded.is_ok(), n <= MAX_OUTPUT_MESSAGES);
        if let Err(r) = decoded {
            prop_assert_eq!(r.status, 413, "{}", r.reason);
        }
    }
}

/// The receiver (and the alert's own strings) are copied into every message: a payload well
/// under the default 1 MiB body limit can ask for far more than the host takes. (Each case
/// builds up to 16 MiB of messages: 2 cases, `PROPTEST_CASES / 1000` in a long run.)
#[test]
fn prop_amplifying_payloads_are_refused_past_the_output_caps() {
    let cases = (300..1000usize, (16usize << 10)..(40 << 10));
    fuzz::run_scaled(2, 1000, cases, |(n, receiver_len)| {
        let (receiver, alerts) = ("r".repeat(receiver_len), vec![small_alert(); n]);
        let payload = json!({"version": "4", "receiver": receiver, "alerts": alerts});
        fuzz::check_decoded(&decode(serde_json::to_vec(&payload).unwrap()))
    });
}
