//! Property tests ("fuzzing") of the `json` decoder: any body, any content type, documents
//! near valid ones and arrays past the host's output cap decode to messages the host accepts
//! or are refused with a 4xx; valid documents decode to exactly their messages. Named
//! `prop_*` (`cargo test prop_`); `PROPTEST_CASES` raises the number of cases.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tocsin_sdk::{fuzz, MAX_OUTPUT_BYTES, MAX_OUTPUT_MESSAGES};

use super::*;

const SEVERITIES: [&str; 5] = ["none", "info", "warning", "error", "alert"];

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        Just(Some("Application/JSON; charset=utf-8".to_string())),
        Just(Some("text/plain".to_string())),
        fuzz::text().prop_map(Some),
    ]
}

fn decode(content_type: &Option<String>, body: Vec<u8>) -> Result<Vec<Message>, Rejection> {
    let headers: Vec<(&str, &str)> = content_type
        .iter()
        .map(|ct| ("content-type", ct.as_str()))
        .collect();
    Json.decode(fuzz::request(&headers, body))
}

/// A valid message object: `body` and any of the optional fields.
fn valid_message() -> impl Strategy<Value = Value> {
    (
        fuzz::text(),
        // Ids and timestamps the host takes (see `check_message`); others are refused (422).
        prop::option::of(fuzz::text().prop_filter("an id the host takes", |id| {
            let m = <tocsin_sdk::Message as tocsin_sdk::MessageExt>::new(
                id.clone(),
                tocsin_sdk::MIN_TIMESTAMP_MS,
                "",
            );
            tocsin_sdk::check_message(&m, tocsin_sdk::MIN_TIMESTAMP_MS).is_ok()
        })),
        prop::option::of(tocsin_sdk::MIN_TIMESTAMP_MS..1_700_000_000_000u64),
        prop::option::of(prop::sample::select(&SEVERITIES[..])),
        prop::option::of(fuzz::text()),
        prop::option::of(prop::collection::btree_map(
            fuzz::text(),
            fuzz::text(),
            0..4,
        )),
        prop::option::of(prop::collection::btree_map(
            fuzz::text(),
            any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()),
            0..4,
        )),
        prop::option::of(fuzz::text()),
    )
        .prop_map(
            |(body, id, timestamp_ms, severity, summary, labels, metrics, payload)| {
                let mut m = Map::new();
                m.insert("body".into(), body.into());
                let optional = [
                    ("id", id.map(Value::from)),
                    ("timestamp_ms", timestamp_ms.map(Value::from)),
                    ("severity", severity.map(Value::from)),
                    ("summary", summary.map(Value::from)),
                    ("labels", labels.map(|l| json!(l))),
                    ("metrics", metrics.map(|l| json!(l))),
                    ("payload", payload.map(Value::from)),
                ];
                for (k, v) in optional {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            },
        )
}

/// One message object, or an array of them.
fn valid_document() -> impl Strategy<Value = Value> {
    prop_oneof![
        valid_message(),
        prop::collection::vec(valid_message(), 0..4).prop_map(Value::Array),
    ]
}

/// What a valid message object must decode to (the timestamp, when absent, is "now").
fn expected(doc: &Value) -> Message {
    let s = |k: &str| doc.get(k).and_then(Value::as_str).map(String::from);
    let map = |k: &str| {
        doc.get(k)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    Message {
        id: s("id").unwrap_or_default(),
        timestamp_ms: doc.get("timestamp_ms").and_then(Value::as_u64).unwrap_or(0),
        severity: s("severity").map_or(Severity::Info, |n| severity_from_str(&n).unwrap()),
        summary: s("summary"),
        body: s("body").unwrap(),
        labels: map("labels")
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
            .collect(),
        metrics: map("metrics")
            .into_iter()
            .map(|(k, v)| (k, v.as_f64().unwrap()))
            .collect(),
        payload: s("payload"),
        link: s("link"),
        key: s("key"),
    }
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    /// Any body (bytes, any JSON, broken JSON, deep nesting) under any content type.
    #[test]
    fn prop_any_body_decodes_or_is_refused(
        ct in content_type(),
        body in fuzz::body(fuzz::any_json()),
    ) {
        fuzz::check_decoded(&decode(&ct, body))?;
    }

    /// Documents near valid ones: fields retyped, removed, added, made huge, nested.
    #[test]
    fn prop_near_valid_documents_decode_or_are_refused(
        body in fuzz::body(fuzz::near(valid_document())),
    ) {
        fuzz::check_decoded(&decode(&Some("application/json".into()), body))?;
    }

    /// A valid document decodes to exactly its messages, in order.
    #[test]
    fn prop_valid_documents_decode_to_their_messages(doc in valid_document()) {
        let body = serde_json::to_vec(&doc).unwrap();
        let decoded = decode(&None, body);
        fuzz::check_decoded(&decoded)?;
        let decoded = fuzz::accepted(decoded)?;
        let docs = match &doc {
            Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        prop_assert_eq!(decoded.len(), docs.len());
        for (mut got, doc) in decoded.into_iter().zip(&docs) {
            if doc.get("timestamp_ms").is_none() {
                got.timestamp_ms = 0;
            }
            prop_assert_eq!(got, expected(doc));
        }
    }

    /// Arrays of up to 1500 small messages: past the host's 1000, refused with 413.
    #[test]
    fn prop_large_arrays_are_refused_past_the_output_caps(n in 0..1500usize) {
        let doc = Value::Array(vec![json!({ "body": "" }); n]);
        let decoded = decode(&None, serde_json::to_vec(&doc).unwrap());
        fuzz::check_decoded(&decoded)?;
        prop_assert_eq!(decoded.is_ok(), n <= MAX_OUTPUT_MESSAGES);
        if let Err(r) = decoded {
            prop_assert_eq!(r.status, 413, "{}", r.reason);
        }
    }
}

/// Messages adding up to about the host's 16 MiB: past it, refused with 413. (Each case is up
/// to 20 MiB of JSON: 2 cases, `PROPTEST_CASES / 1000` in a long run.)
#[test]
fn prop_large_bodies_are_refused_past_the_output_caps() {
    let cases = (1..1000usize, (15usize << 20)..(20 << 20));
    fuzz::run_scaled(2, 1000, cases, |(n, total)| {
        let body = "x".repeat(total / n);
        let doc = Value::Array(vec![json!({ "body": body }); n]);
        let decoded = decode(&None, serde_json::to_vec(&doc).unwrap());
        fuzz::check_decoded(&decoded)?;
        prop_assert_eq!(decoded.is_ok(), n * (body.len() + 16) <= MAX_OUTPUT_BYTES);
        if let Err(r) = decoded {
            prop_assert_eq!(r.status, 413, "{}", r.reason);
        }
        Ok(())
    });
}
