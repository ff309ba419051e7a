//! Property tests ("fuzzing") of the `pubsub-push` decoder: any body, envelopes near valid
//! ones (both spellings of the fields) and huge ones decode to messages the host accepts or are
//! refused with a 4xx; a valid envelope is one message with the documented id, body and labels.
//! Named `prop_*` (`cargo test prop_`); `PROPTEST_CASES` raises the number of cases.

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Value};
use tocsin_sdk::fuzz;

use super::*;

fn decode(body: Vec<u8>) -> Result<Vec<Message>, Rejection> {
    PubsubPush::new(Config { severity: None })
        .unwrap()
        .decode(fuzz::request(&[("content-type", "application/json")], body))
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The data of a push: text or arbitrary bytes.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        fuzz::text().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn attributes() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::collection::btree_map(fuzz::text(), fuzz::text(), 0..4),
        prop::option::of((fuzz::text(), fuzz::text(), fuzz::text())),
    )
        .prop_map(|(mut a, storage)| {
            if let Some((bucket, object, event)) = storage {
                a.insert("bucketId".into(), bucket);
                a.insert("objectId".into(), object);
                a.insert("eventType".into(), event);
            }
            a
        })
}

/// A valid envelope (camelCase or snake_case), with the values it was made of.
fn valid_envelope() -> impl Strategy<Value = (Value, Vec<u8>, String, u64)> {
    (
        prop::option::of(data()),
        attributes(),
        prop_oneof!["[0-9]{1,20}", "[^\u{0}]{1,32}"]
            .prop_filter("1 to 128 bytes", |id: &String| id.len() <= 128)
            .prop_filter("an id the host takes", |id: &String| {
                let m = <tocsin_sdk::Message as tocsin_sdk::MessageExt>::new(
                    id.clone(),
                    tocsin_sdk::MIN_TIMESTAMP_MS,
                    "",
                );
                tocsin_sdk::check_message(&m, tocsin_sdk::MIN_TIMESTAMP_MS).is_ok()
            }),
        // Publish times the host takes: 2000-01-01 to 2023.
        prop::option::of((946_684_800..1_700_000_000u64, 0..1000u64)),
        prop::option::of(fuzz::text()),
        any::<bool>(),
    )
        .prop_map(|(data, attributes, id, published, subscription, snake)| {
            let mut message = json!({ "attributes": attributes });
            if let Some(d) = &data {
                message["data"] = b64(d).into();
            }
            let (id_key, time_key) = if snake {
                ("message_id", "publish_time")
            } else {
                ("messageId", "publishTime")
            };
            message[id_key] = id.clone().into();
            let mut ms = 0;
            if let Some((secs, millis)) = published {
                let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
                message[time_key] = humantime::format_rfc3339_millis(t).to_string().into();
                ms = secs * 1000 + millis;
            }
            let mut envelope = json!({ "message": message });
            if let Some(s) = subscription {
                envelope["subscription"] = s.into();
            }
            (envelope, data.unwrap_or_default(), id, ms)
        })
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    /// Any body at all.
    #[test]
    fn prop_any_body_decodes_or_is_refused(body in fuzz::body(fuzz::any_json())) {
        fuzz::check_decoded(&decode(body))?;
    }

    /// Envelopes near valid ones: fields retyped, removed, added, made huge, nested; data that
    /// is not base64.
    #[test]
    fn prop_near_valid_envelopes_decode_or_are_refused(
        body in fuzz::body(fuzz::near(valid_envelope().prop_map(|(e, ..)| e))),
    ) {
        fuzz::check_decoded(&decode(body))?;
    }

    /// A valid envelope is one message: its id, publish time, data (or the storage event) as
    /// body, the data as payload when it is text, attributes as labels.
    #[test]
    fn prop_valid_envelopes_are_one_message((envelope, data, id, ms) in valid_envelope()) {
        let decoded = decode(serde_json::to_vec(&envelope).unwrap());
        fuzz::check_decoded(&decoded)?;
        let decoded = fuzz::accepted(decoded)?;
        prop_assert_eq!(decoded.len(), 1);
        let m = &decoded[0];
        prop_assert_eq!(&m.id, &id);
        if ms == 0 {
            // No publish time: the time it arrived.
            prop_assert!(m.timestamp_ms >= tocsin_sdk::MIN_TIMESTAMP_MS);
        } else {
            prop_assert_eq!(m.timestamp_ms, ms);
        }
        prop_assert_eq!(m.severity, Severity::Info);
        let text = String::from_utf8(data.clone()).ok();
        prop_assert_eq!(&m.payload, &text);
        let attributes = envelope["message"]["attributes"].as_object().unwrap();
        let attr = |k: &str| attributes.get(k).and_then(Value::as_str);
        match (attr("bucketId"), attr("objectId"), attr("eventType")) {
            (Some(b), Some(o), Some(e)) => {
                prop_assert_eq!(&m.body, &format!("{e} gs://{b}/{o}"));
                prop_assert_eq!(m.label("bucket"), Some(b));
            }
            _ => {
                let expected =
                    text.unwrap_or_else(|| format!("{} bytes of binary data", data.len()));
                prop_assert_eq!(&m.body, &expected);
            }
        }
        for (k, v) in attributes {
            prop_assert_eq!(m.label(&format!("attr.{k}")), v.as_str());
        }
        let subscription = envelope.get("subscription").and_then(Value::as_str).unwrap_or("");
        prop_assert_eq!(m.label("subscription"), Some(subscription));
    }
}

/// Text data is both body and payload: past the host's 16 MiB of messages, refused. (Each
/// case is 11–16 MiB: 2 cases, `PROPTEST_CASES / 1000` in a long run.)
#[test]
fn prop_huge_envelopes_are_refused_past_the_output_caps() {
    fuzz::run_scaled(2, 1000, (8usize << 20)..(12 << 20), |len| {
        let data = b64("d".repeat(len).as_bytes());
        let envelope = json!({"message": {"data": data, "messageId": "1"}});
        fuzz::check_decoded(&decode(serde_json::to_vec(&envelope).unwrap()))
    });
}
