//! `janitor`: an ingest decoder compatible with the Janitor bot's `POST /message`.
//!
//! Janitor clients post form-encoded fields (`curl -X POST -d "hostname=…&message=…"`), or the
//! same fields as JSON: `hostname` (required), `message` (required), `summary` (optional) and
//! `message_type` (`none` — the default —, `info`, `warning`, `error` or `alert`; `alarm`, the
//! name Janitor's server code uses for the last one, is the same as `alert`). The host
//! routes `POST /message` to the pipeline named by `--janitor-pipeline`; point that pipeline's
//! source at this plugin. The hostname becomes the `host` label; the message type the
//! severity (chat sinks put its emoji where Janitor did). Each post is a new event, so its id
//! is the host, the arrival time and a counter.

use serde::Deserialize;
use tocsin_sdk::{
    export_decoder, Decoder, HttpRequest, Message, MessageExt, OutputBudget, Rejection, Severity,
};

/// Decodes the Janitor bot's `POST /message` requests. Takes no settings.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {}

#[derive(Deserialize, Default)]
struct Fields {
    hostname: Option<String>,
    message: Option<String>,
    summary: Option<String>,
    message_type: Option<String>,
}

struct Janitor {
    counter: u64,
}

fn reject(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
    }
}

fn fields(req: &HttpRequest) -> Result<Fields, Rejection> {
    let content_type = req
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        return serde_json::from_slice(&req.body)
            .map_err(|e| reject(400, format!("malformed JSON: {e}")));
    }
    if content_type.is_empty() || content_type.starts_with("application/x-www-form-urlencoded") {
        let mut f = Fields::default();
        for (k, v) in form_urlencoded::parse(&req.body) {
            let v = Some(v.into_owned());
            match &*k {
                "hostname" => f.hostname = v,
                "message" => f.message = v,
                "summary" => f.summary = v,
                "message_type" => f.message_type = v,
                _ => {}
            }
        }
        return Ok(f);
    }
    Err(reject(
        415,
        format!("expected form-encoded fields or JSON, got {content_type}"),
    ))
}

impl Decoder for Janitor {
    type Config = Config;

    fn new(_: Config) -> Result<Self, String> {
        Ok(Janitor { counter: 0 })
    }

    fn decode(&mut self, req: HttpRequest) -> Result<Vec<Message>, Rejection> {
        let f = fields(&req)?;
        let hostname = f
            .hostname
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| reject(400, "missing `hostname`"))?;
        let message = f
            .message
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| reject(400, "missing `message`"))?;
        if hostname.len() > 253 {
            return Err(reject(400, "`hostname` is longer than 253 characters"));
        }
        // The hostname names the message (its id): a character the host refuses there is the
        // client's mistake, said as such.
        if hostname.chars().any(tocsin_sdk::is_unprintable) {
            return Err(reject(
                400,
                "`hostname` holds control or bidirectional-formatting characters",
            ));
        }
        let severity = match f.message_type.as_deref().unwrap_or("none") {
            "none" | "" => Severity::None,
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "error" => Severity::Error,
            // Janitor's documentation says `alert`, its server code `alarm`: clients use both.
            "alert" | "alarm" => Severity::Alert,
            other => {
                let known = "none, info, warning, error, alert or alarm";
                return Err(reject(
                    400,
                    format!("unknown `message_type` `{other}` ({known})"),
                ));
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.counter += 1;
        let mut m = Message::new(
            format!("janitor-{hostname}-{now}-{}", self.counter),
            now,
            message,
        );
        m.severity = severity;
        m.summary = f.summary.filter(|s| !s.is_empty());
        m.set_label("host", hostname);
        m.set_label("source", "janitor");
        // Past the host's cap on one call's output (possible with a `body_limit` over 16 MiB),
        // the host would answer 500: refuse the request instead.
        tocsin_sdk::check_message(&m, now).map_err(|reason| reject(400, reason))?;
        OutputBudget::default()
            .admit(&m)
            .map_err(|reason| reject(413, reason))?;
        Ok(vec![m])
    }
}

export_decoder!(Janitor);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod prop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str, content_type: Option<&str>) -> HttpRequest {
        let headers = content_type
            .map(|c| vec![("content-type".to_string(), c.to_string())])
            .unwrap_or_default();
        HttpRequest {
            method: "POST".into(),
            path: "/message".into(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_documented_curl_call_works() {
        let form = "hostname=MyHostname&message=This+is+a+test+message";
        let m = &Janitor::new(Config {})
            .unwrap()
            .decode(request(form, Some("application/x-www-form-urlencoded")))
            .unwrap()[0];
        assert_eq!(m.body, "This is a test message");
        assert_eq!(m.label("host"), Some("MyHostname"));
        assert_eq!(m.severity, Severity::None);
        assert!(m.summary.is_none());
    }

    #[test]
    fn json_and_every_message_type() {
        let mut j = Janitor::new(Config {}).unwrap();
        for (t, s) in [
            ("none", Severity::None),
            ("info", Severity::Info),
            ("warning", Severity::Warning),
            ("error", Severity::Error),
            ("alert", Severity::Alert),
            ("alarm", Severity::Alert),
        ] {
            let body =
                format!(r#"{{"hostname":"h","message":"m","summary":"s","message_type":"{t}"}}"#);
            let m = &j.decode(request(&body, Some("application/json"))).unwrap()[0];
            assert_eq!(m.severity, s);
            assert_eq!(m.summary.as_deref(), Some("s"));
        }
        let a = j.decode(request("hostname=h&message=m", None)).unwrap();
        let b = j.decode(request("hostname=h&message=m", None)).unwrap();
        assert_ne!(a[0].id, b[0].id, "each post is a new event");
    }

    /// Regression (found by `prop_huge_messages_are_refused_past_the_output_caps`): with a
    /// `body_limit` over 16 MiB, a `message` past 16 MiB made a message larger than the host
    /// takes from one call, and the host answered 500.
    #[test]
    fn messages_past_the_output_cap_are_refused_with_413() {
        let mut j = Janitor::new(Config {}).unwrap();
        let body = format!("hostname=h&message={}", "m".repeat(16 << 20));
        let e = j.decode(request(&body, None)).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(e.reason.contains("bytes of messages"), "{}", e.reason);
        let body = format!("hostname=h&message={}", "m".repeat(15 << 20));
        assert_eq!(j.decode(request(&body, None)).unwrap().len(), 1);
    }

    #[test]
    fn missing_fields_and_unknown_types_are_refused() {
        let mut j = Janitor::new(Config {}).unwrap();
        assert_eq!(
            j.decode(request("message=m", None)).unwrap_err().reason,
            "missing `hostname`"
        );
        assert_eq!(
            j.decode(request("hostname=h", None)).unwrap_err().reason,
            "missing `message`"
        );
        assert!(j
            .decode(request("hostname=h&message=m&message_type=fatal", None))
            .unwrap_err()
            .reason
            .contains("fatal"));
        assert_eq!(
            j.decode(request("{", Some("application/json")))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            j.decode(request("x", Some("text/csv"))).unwrap_err().status,
            415
        );
    }
}
