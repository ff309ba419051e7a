//! `pubsub-push`: an ingest decoder for Google Cloud Pub/Sub push deliveries, with Cloud
//! Storage notifications understood.
//!
//! The envelope: `{"message": {"data": <base64>, "attributes": {…}, "messageId": …,
//! "publishTime": …}, "subscription": "projects/P/subscriptions/S"}` (the older snake_case
//! `message_id` / `publish_time` are read too). The message id is `messageId`, so Pub/Sub's
//! redeliveries are the same message. Attributes become labels; a Cloud Storage notification
//! (attributes `bucketId`, `objectId`, `eventType`) is labelled `bucket`, `object` and
//! `event-type`, and its body says what happened to which object.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use tocsin_sdk::{
    export_decoder, Decoder, HttpRequest, Message, MessageExt, OutputBudget, Rejection, Severity,
};

/// Decodes Google Cloud Pub/Sub push deliveries, Cloud Storage notifications understood.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Severity of the messages (default `info`); a storage deletion can be made louder with
    /// a filter.
    #[serde(default)]
    severity: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    message: PushMessage,
    #[serde(default)]
    subscription: String,
}

#[derive(Deserialize)]
struct PushMessage {
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(rename = "messageId", alias = "message_id")]
    message_id: String,
    #[serde(rename = "publishTime", alias = "publish_time", default)]
    publish_time: Option<String>,
}

struct PubsubPush {
    severity: Severity,
}

fn reject(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

impl Decoder for PubsubPush {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let severity = match c.severity.as_deref() {
            None => Severity::Info,
            Some(name) => {
                tocsin_sdk::severity_from_str(name).ok_or(format!("unknown severity `{name}`"))?
            }
        };
        Ok(PubsubPush { severity })
    }

    fn decode(&mut self, req: HttpRequest) -> Result<Vec<Message>, Rejection> {
        let value: serde_json::Value = serde_json::from_slice(&req.body)
            .map_err(|e| reject(400, format!("malformed JSON: {e}")))?;
        let envelope: Envelope = serde_json::from_value(value)
            .map_err(|e| reject(422, format!("not a Pub/Sub push envelope: {e}")))?;
        let m = envelope.message;
        if m.message_id.is_empty() || m.message_id.len() > 128 {
            return Err(reject(422, "messageId must be 1 to 128 characters"));
        }
        let data = match &m.data {
            None => Vec::new(),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| reject(422, format!("message.data is not base64: {e}")))?,
        };
        // Without a (sane) publish time, the time it arrived: the host refuses timestamps
        // before 2000 or more than a day ahead, and Pub/Sub would redeliver a refusal for ever.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let published_ms = m
            .publish_time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .filter(|ms| {
                (tocsin_sdk::MIN_TIMESTAMP_MS..=now + tocsin_sdk::MAX_TIMESTAMP_AHEAD_MS)
                    .contains(ms)
            })
            .unwrap_or(now);
        let text = String::from_utf8(data.clone()).ok();
        let storage = (
            m.attributes.get("bucketId"),
            m.attributes.get("objectId"),
            m.attributes.get("eventType"),
        );
        let (summary, body) = match storage {
            (Some(bucket), Some(object), Some(event)) => (
                format!("Cloud Storage {event}"),
                format!("{event} gs://{bucket}/{object}"),
            ),
            _ => (
                format!("Pub/Sub message on {}", envelope.subscription),
                text.clone()
                    .unwrap_or_else(|| format!("{} bytes of binary data", data.len())),
            ),
        };
        let mut msg = Message::new(m.message_id.clone(), published_ms, body);
        msg.severity = self.severity;
        msg.summary = Some(summary);
        msg.set_label("subscription", envelope.subscription.clone());
        for (k, v) in &m.attributes {
            msg.set_label(&format!("attr.{k}"), v.clone());
        }
        if let (Some(bucket), Some(object), Some(event)) = storage {
            msg.set_label("bucket", bucket.clone());
            msg.set_label("object", object.clone());
            msg.set_label("event-type", event.clone());
        }
        msg.payload = text;
        tocsin_sdk::check_message(&msg, now).map_err(|reason| reject(422, reason))?;
        // Text data is both body and payload: past the host's cap on one call's output
        // (possible with a `body_limit` over 11 MiB) the host would answer 500; refuse instead.
        OutputBudget::default()
            .admit(&msg)
            .map_err(|reason| reject(413, reason))?;
        Ok(vec![msg])
    }
}

export_decoder!(PubsubPush);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod prop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<Vec<Message>, Rejection> {
        PubsubPush::new(Config { severity: None })
            .unwrap()
            .decode(HttpRequest {
                method: "POST".into(),
                path: "/".into(),
                headers: vec![],
                body: body.as_bytes().to_vec(),
            })
    }

    #[test]
    fn a_cloud_storage_notification_is_labelled_with_bucket_object_and_event() {
        let object = r#"{"name":"backups/db1.tar.zst","bucket":"acme-backups","size":"1024"}"#;
        let data = base64::engine::general_purpose::STANDARD.encode(object);
        let body = format!(
            r#"{{"message":{{"data":"{data}","attributes":{{"bucketId":"acme-backups","objectId":"backups/db1.tar.zst","eventType":"OBJECT_FINALIZE","payloadFormat":"JSON_API_V1"}},"messageId":"2070443601311540","publishTime":"2026-11-24T10:00:00.5Z"}},"subscription":"projects/acme/subscriptions/tocsin"}}"#
        );
        let m = &decode(&body).unwrap()[0];
        assert_eq!(m.id, "2070443601311540");
        assert_eq!(m.label("bucket"), Some("acme-backups"));
        assert_eq!(m.label("object"), Some("backups/db1.tar.zst"));
        assert_eq!(m.label("event-type"), Some("OBJECT_FINALIZE"));
        assert_eq!(
            m.label("subscription"),
            Some("projects/acme/subscriptions/tocsin")
        );
        assert_eq!(
            m.body,
            "OBJECT_FINALIZE gs://acme-backups/backups/db1.tar.zst"
        );
        assert_eq!(m.payload.as_deref(), Some(object));
        assert_eq!(m.timestamp_ms, 1_795_514_400_500);
    }

    #[test]
    fn snake_case_twins_and_plain_data_are_read() {
        let data = base64::engine::general_purpose::STANDARD.encode("hello");
        let body = format!(
            r#"{{"message":{{"data":"{data}","message_id":"42","publish_time":"2026-11-24T10:00:00Z"}},"subscription":"s"}}"#
        );
        let m = &decode(&body).unwrap()[0];
        assert_eq!((m.id.as_str(), m.body.as_str()), ("42", "hello"));
    }

    /// Regression (found by `prop_huge_envelopes_are_refused_past_the_output_caps`): with a
    /// `body_limit` over 11 MiB, 8.4 MB of text data (kept as both body and payload) made a
    /// message larger than the host takes from one call, and the host answered 500, which
    /// Pub/Sub retries.
    #[test]
    fn envelopes_past_the_output_cap_are_refused_with_413() {
        let data = base64::engine::general_purpose::STANDARD.encode("d".repeat(8_401_207));
        let e = decode(&format!(
            r#"{{"message":{{"data":"{data}","messageId":"1"}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("bytes of messages"), "{}", e.reason);
        let data = base64::engine::general_purpose::STANDARD.encode("d".repeat(7 << 20));
        let m = decode(&format!(
            r#"{{"message":{{"data":"{data}","messageId":"1"}}}}"#
        ));
        assert_eq!(m.unwrap()[0].body.len(), 7 << 20);
    }

    #[test]
    fn broken_envelopes_are_rejected_with_a_reason() {
        assert_eq!(decode("{").unwrap_err().status, 400);
        assert_eq!(decode(r#"{"subscription":"s"}"#).unwrap_err().status, 422);
        let e = decode(r#"{"message":{"data":"***","messageId":"1"}}"#).unwrap_err();
        assert!(e.reason.contains("not base64"), "{}", e.reason);
        assert_eq!(
            decode(r#"{"message":{"messageId":""}}"#)
                .unwrap_err()
                .status,
            422
        );
    }
}
