//! `json`: an ingest decoder for tocsin's own message schema.
//!
//! The body is one message object or an array of them:
//! ```json
//! {"severity": "warning", "summary": "Disk almost full", "body": "/ is 93 % full",
//!  "labels": {"host": "db1"}, "metrics": {"disk-used-percent": 93.0}}
//! ```
//! A message needs a `body` or a `summary` (a summary alone is the message's text, said once);
//! `id` (default: derived by the host from the request), `timestamp_ms`
//! (default: now), `severity` (`none`…`alert`, default `info`), `summary`, `labels`, `metrics`
//! `payload`, `link` (an http(s) URL a person opens to act: shown as a link by every sink) and
//! `key` (the alert's identity, the same on its firing and its resolved message) are optional. Unknown fields are refused, so a typo does not silently drop
//! information. A body without a content type, or sent as curl's default form type
//! (`application/x-www-form-urlencoded`, what `curl -d` says), is read as JSON when it is JSON.
//! Answers: malformed JSON 400, valid JSON of the wrong shape 422, another declared content
//! type (or a form that is not JSON) 415, more than 1000 messages or 16 MiB of them (what the host
//! takes from one call) 413. Numbers are read exactly (`float_roundtrip`): a metric keeps the
//! value its text names.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::error::Category;
use tocsin_sdk::{
    check_message, export_decoder, severity_from_str, Decoder, HttpRequest, Message, OutputBudget,
    Rejection, Severity,
};

/// Decodes ingest requests whose body is one JSON message or an array of them. Takes no settings.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    id: Option<String>,
    timestamp_ms: Option<u64>,
    severity: Option<String>,
    summary: Option<String>,
    body: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
    payload: Option<String>,
    link: Option<String>,
    key: Option<String>,
}

struct Json;

fn reject(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn malformed(e: serde_json::Error) -> Rejection {
    reject(400, format!("malformed JSON: {e}"))
}

/// Parses the body in one pass straight into messages. serde_json tells a syntax error (400)
/// from valid JSON of the wrong shape (422); since it stops at the first error, a document
/// of the wrong shape is checked for syntax to the end before it is called merely wrong.
/// (A parse into `serde_json::Value` first, then into messages, cost three passes and a deep
/// copy, and was the largest part of batched ingest's CPU time.)
fn parse(body: &[u8]) -> Result<Vec<Incoming>, Rejection> {
    let shape_error = |reason: String| match serde_json::from_slice::<IgnoredAny>(body) {
        Err(syntax) => malformed(syntax),
        Ok(_) => reject(422, reason),
    };
    let parsed = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice::<Vec<Incoming>>(body),
        Some(b'{') => serde_json::from_slice::<Incoming>(body).map(|m| vec![m]),
        _ => {
            return Err(shape_error(
                "expected a message object or an array of them".into(),
            ))
        }
    };
    parsed.map_err(|e| match e.classify() {
        Category::Data => shape_error(format!("not a message: {e}")),
        Category::Syntax | Category::Eof | Category::Io => malformed(e),
    })
}

impl Decoder for Json {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(Json)
    }

    fn decode(&mut self, request: HttpRequest) -> Result<Vec<Message>, Rejection> {
        let content_type = request
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.to_ascii_lowercase());
        let form = "application/x-www-form-urlencoded";
        let json_type = |ct: &str| {
            let essence = ct.split(';').next().unwrap_or("").trim();
            essence == "application/json" || essence.ends_with("+json")
        };
        match content_type.as_deref() {
            None => {}
            Some(ct) if json_type(ct) => {}
            // `curl -d '{…}'` sends JSON under the form type: take it when it is JSON.
            Some(ct)
                if ct.starts_with(form)
                    && serde_json::from_slice::<IgnoredAny>(&request.body).is_ok() => {}
            Some(ct) if ct.starts_with(form) => {
                return Err(reject(
                    415,
                    "the body was sent as a form (application/x-www-form-urlencoded) and is not \
                     JSON: post a JSON message, with -H 'Content-Type: application/json'",
                ))
            }
            Some(ct) => return Err(reject(415, format!("expected application/json, got {ct}"))),
        }
        let now = now_ms();
        // More messages or bytes than the host takes from one call would fail the call (a
        // 500 for the client's input): refuse the request instead.
        let mut budget = OutputBudget::default();
        let too_large = |reason| reject(413, reason);
        parse(&request.body)?
            .into_iter()
            .map(|m| {
                let severity = match m.severity.as_deref() {
                    None => Severity::Info,
                    Some(name) => severity_from_str(name).ok_or_else(|| {
                        reject(
                            422,
                            format!(
                                "unknown severity `{name}` (none, info, warning, error, alert)"
                            ),
                        )
                    })?,
                };
                // A summary alone is the text, said once (not a title over an empty text).
                let (summary, body) = match (m.summary, m.body) {
                    (summary, Some(body)) => (summary, body),
                    (Some(summary), None) => (None, summary),
                    (None, None) => {
                        return Err(reject(
                            422,
                            "not a message: give it a `body` or a `summary` (or both)",
                        ))
                    }
                };
                let message = Message {
                    id: m.id.unwrap_or_default(),
                    timestamp_ms: m.timestamp_ms.unwrap_or(now),
                    severity,
                    summary,
                    body,
                    labels: m.labels.into_iter().collect(),
                    metrics: m.metrics.into_iter().collect(),
                    payload: m.payload,
                    link: m.link,
                    key: m.key,
                };
                check_message(&message, now).map_err(|reason| reject(422, reason))?;
                budget.admit(&message).map_err(too_large)?;
                Ok(message)
            })
            .collect()
    }
}

export_decoder!(Json);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod prop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str, content_type: Option<&str>) -> Result<Vec<Message>, Rejection> {
        let headers = content_type
            .map(|ct| vec![("content-type".to_string(), ct.to_string())])
            .unwrap_or_default();
        Json.decode(HttpRequest {
            method: "POST".into(),
            path: "/ingest/x".into(),
            headers,
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn one_message_or_many() {
        let one = decode(r#"{"body": "hi", "severity": "error", "labels": {"host": "db1"}, "metrics": {"cpu": 93.5}}"#, Some("application/json")).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].severity, Severity::Error);
        assert_eq!(one[0].labels, vec![("host".to_string(), "db1".to_string())]);
        assert_eq!(one[0].metrics, vec![("cpu".to_string(), 93.5)]);
        let many = decode(r#"[{"body": "a", "id": "x1"}, {"body": "b"}]"#, None).unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0].id, "x1");
        assert_eq!(many[1].id, "", "the host derives missing ids");
    }

    #[test]
    fn a_link_and_a_key_are_taken_and_a_link_that_is_not_http_is_refused() {
        let one = decode(
            r#"{"body": "db1 down", "link": "https://grafana.example/d/1", "key": "db1/down"}"#,
            None,
        )
        .unwrap();
        assert_eq!(one[0].link.as_deref(), Some("https://grafana.example/d/1"));
        assert_eq!(one[0].key.as_deref(), Some("db1/down"));
        let e = decode(r#"{"body": "x", "link": "javascript:alert(1)"}"#, None).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.reason.contains("not an http"), "{}", e.reason);
    }

    /// Regression (found by `prop_large_arrays_are_refused_past_the_output_caps`): 1001
    /// messages in one request (12 KB of JSON) came back from the decoder, and the host, which
    /// takes at most 1000 from one call, failed the call: a 500 and a failed stage for the
    /// client's input.
    #[test]
    fn more_messages_than_the_host_takes_are_refused_with_413() {
        let many = format!("[{}]", vec![r#"{"body":""}"#; 1001].join(","));
        let e = decode(&many, None).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("1000 messages"), "{}", e.reason);
        let big = format!(r#"{{"body":"{}"}}"#, "x".repeat(17 << 20));
        assert_eq!(decode(&big, None).unwrap_err().status, 413);
        let most = format!("[{}]", vec![r#"{"body":""}"#; 1000].join(","));
        assert_eq!(decode(&most, None).unwrap().len(), 1000);
    }

    /// Regression (found by `prop_valid_documents_decode_to_their_messages`): serde_json's
    /// default float parsing is off by one unit in the last place for some numbers, so a
    /// metric came out different from the number posted.
    #[test]
    fn metrics_keep_the_exact_value_posted() {
        let one = decode(
            r#"{"body": "", "metrics": {"m": -7.119615826851568e189}}"#,
            None,
        )
        .unwrap();
        assert_eq!(one[0].metrics[0].1, -7.119615826851568e189);
    }

    #[test]
    fn bad_input_gets_the_right_status_and_a_reason() {
        assert_eq!(decode("{\"body\": ", None).unwrap_err().status, 400);
        assert_eq!(decode("42", None).unwrap_err().status, 422);
        assert_eq!(decode(" \"text\"", None).unwrap_err().status, 422);
        assert_eq!(decode("", None).unwrap_err().status, 400);
        assert_eq!(decode("[1, 2", None).unwrap_err().status, 400);
        // Of the wrong shape at its first element and malformed further on: malformed.
        let e = decode(r#"[{"bdy": 1}, {"body": "#, None).unwrap_err();
        assert_eq!(e.status, 400, "{}", e.reason);
        assert_eq!(
            decode(r#"[{"body": "a"}, 7]"#, None).unwrap_err().status,
            422
        );
        let e = decode(r#"{"bdy": "typo"}"#, None).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.reason.contains("bdy"), "{}", e.reason);
        let e = decode(r#"{"body": "x", "severity": "fatal"}"#, None).unwrap_err();
        assert!(e.reason.contains("unknown severity `fatal`"));
        assert_eq!(
            decode(r#"{"body": "x"}"#, Some("text/plain"))
                .unwrap_err()
                .status,
            415
        );
    }

    #[test]
    fn a_first_post_as_curl_sends_it_is_taken() {
        // `curl -d '{…}'`: JSON under the form type, or no type at all.
        let form = Some("application/x-www-form-urlencoded");
        for ct in [form, None, Some("application/json; charset=utf-8")] {
            let m = decode(r#"{"summary": "x", "body": "y"}"#, ct).unwrap();
            assert_eq!(
                (m[0].summary.as_deref(), m[0].body.as_str()),
                (Some("x"), "y")
            );
        }
        // A real form is not JSON: 415, saying what to send.
        let e = decode("summary=x&body=y", form).unwrap_err();
        assert_eq!(e.status, 415);
        assert!(
            e.reason.contains("Content-Type: application/json"),
            "{}",
            e.reason
        );
        // A summary alone is the text, said once; neither is a 422 saying so.
        let m = decode(r#"{"summary": "Disk almost full"}"#, None).unwrap();
        assert_eq!(
            (m[0].summary.as_deref(), m[0].body.as_str()),
            (None, "Disk almost full")
        );
        let e = decode(r#"{"severity": "error"}"#, None).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.reason.contains("`body` or a `summary`"), "{}", e.reason);
        assert_eq!(
            decode(r#"{"body": "x"}"#, Some("application/problem+json"))
                .unwrap()
                .len(),
            1
        );
    }
}
