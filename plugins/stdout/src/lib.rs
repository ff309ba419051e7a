//! `stdout`: prints each message as one line on the host's standard output (needs
//! `grants = { stdout = true }`). `format = "json"` prints JSON lines instead of text.

use serde::Deserialize;
use tocsin_sdk::{export_sink, severity_name, DeliveryError, Message, Sink};

/// Prints each message as one line on the host's standard output (needs `grants = { stdout = true }`).
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// `text` (default): one readable line per message; `json`: one JSON object per line.
    #[serde(default)]
    format: Format,
}

/// How each message is printed.
#[derive(Deserialize, Default, PartialEq)]
#[cfg_attr(test, derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Text,
    Json,
}

struct Stdout(Format);

impl Sink for Stdout {
    type Config = Config;
    fn new(c: Config) -> Result<Self, String> {
        Ok(Stdout(c.format))
    }
    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        use std::io::Write;
        let line = match self.0 {
            Format::Json => serde_json::json!({
                "idempotency_key": key,
                "id": msg.id,
                "severity": severity_name(msg.severity),
                "summary": msg.summary,
                "body": msg.body,
                "labels": msg.labels,
                "metrics": msg.metrics,
                "link": msg.link,
                "key": msg.key,
            })
            .to_string(),
            Format::Text => {
                let labels: Vec<String> =
                    msg.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "[{}] {}{} ({}){}",
                    severity_name(msg.severity),
                    msg.summary.map(|s| format!("{s}: ")).unwrap_or_default(),
                    msg.body.replace('\n', " | "),
                    labels.join(" "),
                    msg.link.map(|l| format!(" {l}")).unwrap_or_default()
                )
            }
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| {
                DeliveryError::Permanent(format!(
                    "cannot write to stdout (is `grants.stdout` set?): {e}"
                ))
            })
    }
}

export_sink!(Stdout);
tocsin_sdk::declare_settings!(Config);
