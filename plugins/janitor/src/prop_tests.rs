//! Property tests ("fuzzing") of the `janitor` decoder (`POST /message`), form-encoded and JSON
//! bodies alike: any body under any content type, fields near valid ones and huge ones decode
//! to messages the host accepts or are refused with a 4xx; valid fields make the documented
//! message. Named `prop_*` (`cargo test prop_`); `PROPTEST_CASES` raises the number of cases.

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tocsin_sdk::fuzz;

use super::*;

const FIELDS: [&str; 4] = ["hostname", "message", "summary", "message_type"];
const TYPES: [&str; 8] = [
    "none", "info", "warning", "error", "alert", "alarm", "", "Warning",
];

fn decode(content_type: Option<&str>, body: Vec<u8>) -> Result<Vec<Message>, Rejection> {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("content-type", ct))
        .into_iter()
        .collect();
    Janitor::new(Config {})
        .unwrap()
        .decode(fuzz::request(&headers, body))
}

fn form_content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(
        &[
            None,
            Some("application/x-www-form-urlencoded"),
            Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        ][..],
    )
}

fn any_content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        form_content_type().prop_map(|ct| ct.map(String::from)),
        Just(Some("application/json".to_string())),
        Just(Some("application/json; charset=utf-8".to_string())),
        fuzz::text().prop_map(Some),
    ]
}

/// A field's value: text, a hostname-like name, blank, or past 253 bytes.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => fuzz::text(),
        2 => "[a-zA-Z0-9.-]{1,30}",
        1 => prop::sample::select(&["", " ", "\t\n"][..]).prop_map(String::from),
        1 => (254..300usize).prop_map(|n| "h".repeat(n)),
        2 => prop::sample::select(&TYPES[..]).prop_map(String::from),
    ]
}

/// Form fields, known and unknown, repeated or not.
fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        4 => prop::sample::select(&FIELDS[..]).prop_map(String::from),
        1 => fuzz::text(),
    ];
    prop::collection::vec((key, value()), 0..8)
}

fn form(pairs: &[(String, String)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

/// What the fields must make: the message, or the refusal's status.
fn expected(
    get: impl Fn(&str) -> Option<String>,
) -> Result<(String, String, Severity, Option<String>), u16> {
    let hostname = get("hostname")
        .filter(|h| !h.trim().is_empty())
        .ok_or(400u16)?;
    let message = get("message")
        .filter(|m| !m.trim().is_empty())
        .ok_or(400u16)?;
    if hostname.len() > 253 || hostname.chars().any(tocsin_sdk::is_unprintable) {
        return Err(400);
    }
    let severity = match get("message_type").as_deref().unwrap_or("none") {
        "none" | "" => Severity::None,
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "error" => Severity::Error,
        "alert" | "alarm" => Severity::Alert,
        _ => return Err(400),
    };
    Ok((
        hostname,
        message,
        severity,
        get("summary").filter(|s| !s.is_empty()),
    ))
}

fn check_expected(
    decoded: &Result<Vec<Message>, Rejection>,
    expected: Result<(String, String, Severity, Option<String>), u16>,
) -> Result<(), TestCaseError> {
    fuzz::check_decoded(decoded)?;
    match (decoded, expected) {
        (Ok(ms), Ok((hostname, message, severity, summary))) => {
            prop_assert_eq!(ms.len(), 1);
            let m = &ms[0];
            prop_assert_eq!(&m.body, &message);
            prop_assert_eq!(m.label("host"), Some(hostname.as_str()));
            prop_assert_eq!(m.label("source"), Some("janitor"));
            prop_assert_eq!(m.severity, severity);
            prop_assert_eq!(&m.summary, &summary);
            let prefix = format!("janitor-{hostname}-");
            prop_assert!(m.id.starts_with(&prefix), "{}", m.id);
        }
        (Err(r), Err(status)) => prop_assert_eq!(r.status, status, "{}", r.reason),
        (got, want) => prop_assert!(false, "got {:?}, expected {:?}", got, want),
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    /// Any bytes, any JSON, under any content type.
    #[test]
    fn prop_any_body_decodes_or_is_refused(
        ct in any_content_type(),
        body in prop_oneof![
            fuzz::body(fuzz::any_json()),
            prop::collection::vec(any::<u8>(), 0..512),
        ],
    ) {
        fuzz::check_decoded(&decode(ct.as_deref(), body))?;
    }

    /// Form-encoded fields, known and unknown, repeated (the last one counts), blank, long:
    /// the documented message, or a 400.
    #[test]
    fn prop_form_fields_make_the_documented_message(ct in form_content_type(), pairs in pairs()) {
        let last = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        check_expected(&decode(ct, form(&pairs)), expected(last))?;
    }

    /// Form bodies with bytes changed: percent signs, `+`, `&`, `=` and invalid UTF-8.
    #[test]
    fn prop_mangled_form_bodies_decode_or_are_refused(
        pairs in pairs(),
        changes in prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                prop_oneof![Just(b'%'), Just(b'+'), Just(b'&'), Just(b'='), any::<u8>()],
            ),
            1..6,
        ),
    ) {
        let mut body = form(&pairs);
        for (at, b) in changes {
            let i = at.index(body.len() + 1);
            body.insert(i, b);
        }
        fuzz::check_decoded(&decode(None, body))?;
    }

    /// The same fields as JSON: the documented message, or a 400.
    #[test]
    fn prop_json_fields_make_the_documented_message(
        fields in prop::collection::btree_map(prop::sample::select(&FIELDS[..]), value(), 0..5),
    ) {
        let doc: Map<String, Value> =
            fields.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let decoded = decode(Some("application/json"), serde_json::to_vec(&doc).unwrap());
        check_expected(&decoded, expected(|name| fields.get(name).cloned()))?;
    }

    /// JSON near valid fields: retyped, removed, added, made huge, nested.
    #[test]
    fn prop_near_valid_json_decodes_or_is_refused(
        body in fuzz::body(fuzz::near(
            prop::collection::btree_map(prop::sample::select(&FIELDS[..]), value(), 0..5)
                .prop_map(|f| json!(f)),
        )),
    ) {
        fuzz::check_decoded(&decode(Some("application/json"), body))?;
    }
}

/// A message past the host's 16 MiB (with a `body_limit` that lets it in): refused. (Each
/// case is 16–20 MiB: 2 cases, `PROPTEST_CASES / 1000` in a long run.)
#[test]
fn prop_huge_messages_are_refused_past_the_output_caps() {
    let cases = ((16usize << 20)..(20 << 20), any::<bool>());
    fuzz::run_scaled(2, 1000, cases, |(len, as_json)| {
        let fields = [
            ("hostname".to_string(), "h".to_string()),
            ("message".to_string(), "m".repeat(len)),
        ];
        let decoded = if as_json {
            let doc: Map<String, Value> =
                fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            decode(Some("application/json"), serde_json::to_vec(&doc).unwrap())
        } else {
            decode(None, form(&fields))
        };
        fuzz::check_decoded(&decoded)
    });
}
