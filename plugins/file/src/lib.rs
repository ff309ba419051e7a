//! `file`: appends each message as a JSON line to a file in a directory granted read-write
//! (`grants = { write_dirs = ["/var/lib/alerts"] }`).
//!
//! Each line carries the idempotency key. Before appending, the sink checks the file's tail
//! for the same key, so a retry after a crash between write and acknowledgement does not
//! write the line twice.

use std::io::{Read, Seek, SeekFrom, Write};

use serde::Deserialize;
use tocsin_sdk::{export_sink, severity_name, DeliveryError, Message, Sink};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The file to append to; its directory must be granted in `write_dirs`.
    path: String,
}

struct FileSink {
    path: String,
}

/// How much of the file's end is searched for a repeated key.
const DEDUP_TAIL_BYTES: u64 = 64 * 1024;

impl Sink for FileSink {
    type Config = Config;
    fn new(c: Config) -> Result<Self, String> {
        Ok(FileSink { path: c.path })
    }
    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        let io = |e: std::io::Error| DeliveryError::Retryable(format!("{}: {e}", self.path));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| {
                DeliveryError::Permanent(format!(
                    "cannot open {} (is its directory in grants.write_dirs?): {e}",
                    self.path
                ))
            })?;
        let len = file.metadata().map_err(io)?.len();
        let mut tail = String::new();
        file.seek(SeekFrom::Start(len.saturating_sub(DEDUP_TAIL_BYTES)))
            .map_err(io)?;
        file.read_to_string(&mut tail).map_err(io)?;
        let key_field = serde_json::to_string(key).unwrap_or_default();
        if tail.contains(&format!("\"idempotency_key\":{key_field}")) {
            return Ok(());
        }
        let line = serde_json::json!({
            "idempotency_key": key,
            "id": msg.id,
            "timestamp_ms": msg.timestamp_ms,
            "severity": severity_name(msg.severity),
            "summary": msg.summary,
            "body": msg.body,
            "labels": msg.labels,
            "metrics": msg.metrics,
        });
        // One write of the whole line, so readers never see half a line mid-write.
        file.write_all(format!("{line}\n").as_bytes())
            .and_then(|_| file.flush())
            .map_err(io)
    }
}

export_sink!(FileSink);
