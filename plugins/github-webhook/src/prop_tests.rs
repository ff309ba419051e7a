//! Property tests ("fuzzing") of the `github-webhook` decoder: any headers and body, both
//! content types, deliveries near valid ones and huge ones decode to messages the host accepts
//! or are refused with a 4xx; a valid delivery is one message named by its delivery id.
//! Named `prop_*` (`cargo test prop_`); `PROPTEST_CASES` raises the number of cases.

use proptest::prelude::*;
use serde_json::{json, Value};
use tocsin_sdk::fuzz;

use super::*;

const EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "issues",
    "workflow_run",
    "check_run",
    "check_suite",
    "ping",
    "star",
];

fn event() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(EVENTS).prop_map(String::from),
        1 => fuzz::text(),
    ]
}

fn delivery() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f-]{36}",
        1 => fuzz::text(),
    ]
}

fn plugin(keep_payload: bool, events: Vec<String>) -> GithubWebhook {
    GithubWebhook::new(Config {
        keep_payload,
        events,
    })
    .unwrap()
}

/// A request with these headers (each optional) and the document `body` as JSON, or as the
/// form-encoded `payload=` field.
fn request(event: Option<&str>, delivery: Option<&str>, form: bool, body: Vec<u8>) -> HttpRequest {
    let mut headers = vec![];
    if let Some(e) = event {
        headers.push(("x-github-event", e));
    }
    if let Some(d) = delivery {
        headers.push(("x-github-delivery", d));
    }
    let body = if form {
        headers.push(("content-type", "application/x-www-form-urlencoded"));
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &String::from_utf8_lossy(&body))
            .finish()
            .into_bytes()
    } else {
        headers.push(("content-type", "application/json"));
        body
    };
    fuzz::request(&headers, body)
}

/// A delivery with the fields the decoder reads, for every event it describes.
fn valid_delivery() -> impl Strategy<Value = Value> {
    let t = fuzz::text;
    (
        (t(), t(), prop::collection::vec(Just(json!({})), 0..4), t()),
        (any::<u64>(), t(), any::<u64>(), t()),
        (
            t(),
            prop::sample::select(
                &[
                    "success",
                    "failure",
                    "timed_out",
                    "startup_failure",
                    "cancelled",
                ][..],
            ),
            t(),
            t(),
        ),
        (t(), t(), t()),
    )
        .prop_map(
            |(
                (action, r#ref, commits, pusher),
                (pr, pr_title, issue, issue_title),
                (wf, conclusion, check, app),
                (repo, sender, zen),
            )| {
                json!({
                    "action": action, "ref": r#ref, "commits": commits, "pusher": {"name": pusher},
                    "pull_request": {"number": pr, "title": pr_title},
                    "issue": {"number": issue, "title": issue_title},
                    "workflow_run": {"name": wf, "conclusion": conclusion},
                    "check_run": {"name": check, "conclusion": conclusion, "app": {"name": app}},
                    "check_suite": {"conclusion": conclusion, "app": {"name": app}},
                    "repository": {"full_name": repo}, "sender": {"login": sender}, "zen": zen,
                })
            },
        )
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    /// Any headers (present or not) and any body, in either content type.
    #[test]
    fn prop_any_request_decodes_or_is_refused(
        event in prop::option::of(event()),
        delivery in prop::option::of(delivery()),
        form in any::<bool>(),
        keep_payload in any::<bool>(),
        body in fuzz::body(fuzz::any_json()),
    ) {
        let req = request(event.as_deref(), delivery.as_deref(), form, body);
        fuzz::check_decoded(&plugin(keep_payload, vec![]).decode(req))?;
    }

    /// Arbitrary bytes under any content type, the form one included.
    #[test]
    fn prop_any_bytes_under_any_content_type_decode_or_are_refused(
        content_type in prop::option::of(prop_oneof![
            Just("application/x-www-form-urlencoded".to_string()),
            Just("application/json".to_string()),
            fuzz::text(),
        ]),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut headers = vec![("x-github-event", "push"), ("x-github-delivery", "d")];
        if let Some(ct) = &content_type {
            headers.push(("content-type", ct));
        }
        fuzz::check_decoded(&plugin(false, vec![]).decode(fuzz::request(&headers, body)))?;
    }

    /// Deliveries near valid ones, for every event the decoder describes.
    #[test]
    fn prop_near_valid_deliveries_decode_or_are_refused(
        event in event(),
        form in any::<bool>(),
        body in fuzz::body(fuzz::near(valid_delivery())),
    ) {
        let req = request(Some(&event), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"), form, body);
        fuzz::check_decoded(&plugin(true, vec![]).decode(req))?;
    }

    /// A valid delivery is one message named by its delivery id and labelled with its event,
    /// or none when its event is not wanted; a delivery id outside 1..=100 bytes is a 400.
    #[test]
    fn prop_valid_deliveries_are_one_message_named_by_the_delivery(
        event in event(),
        delivery in delivery(),
        form in any::<bool>(),
        wanted in prop::collection::vec(prop::sample::select(EVENTS).prop_map(String::from), 0..3),
        doc in valid_delivery(),
    ) {
        let body = serde_json::to_vec(&doc).unwrap();
        let req = request(Some(&event), Some(&delivery), form, body);
        let decoded = plugin(true, wanted.clone()).decode(req);
        fuzz::check_decoded(&decoded)?;
        if delivery.is_empty() || delivery.len() > 100 {
            prop_assert_eq!(decoded.unwrap_err().status, 400);
            return Ok(());
        }
        let decoded = fuzz::accepted(decoded)?;
        if !wanted.is_empty() && !wanted.contains(&event) {
            prop_assert!(decoded.is_empty());
            return Ok(());
        }
        prop_assert_eq!(decoded.len(), 1);
        let m = &decoded[0];
        prop_assert_eq!(&m.id, &delivery);
        prop_assert_eq!(m.label("github-event"), Some(event.as_str()));
        prop_assert_eq!(m.label("github-delivery"), Some(delivery.as_str()));
        prop_assert_eq!(m.label("repository"), doc["repository"]["full_name"].as_str());
        prop_assert_eq!(m.label("sender"), doc["sender"]["login"].as_str());
        let payload: Value = serde_json::from_str(m.payload.as_deref().unwrap()).unwrap();
        prop_assert_eq!(payload, doc);
    }
}

/// A delivery kept as payload, or with a huge title, past the host's 16 MiB: refused. (Each
/// case is 16–20 MiB: 2 cases, `PROPTEST_CASES / 1000` in a long run.)
#[test]
fn prop_huge_deliveries_are_refused_past_the_output_caps() {
    let cases = ((16usize << 20)..(20 << 20), any::<bool>());
    fuzz::run_scaled(2, 1000, cases, |(len, keep_payload)| {
        let title = "t".repeat(len);
        let doc = json!({"action": "opened", "pull_request": {"number": 1, "title": title}});
        let body = serde_json::to_vec(&doc).unwrap();
        let req = request(Some("pull_request"), Some("d"), false, body);
        fuzz::check_decoded(&plugin(keep_payload, vec![]).decode(req))
    });
}
