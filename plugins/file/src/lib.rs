//! `file`: appends each message as a JSON line to a file in a directory granted read-write
//! (`grants = { write_dirs = ["/var/lib/alerts"] }`).
//!
//! Each line carries the idempotency key (in a batch of several messages, the batch's key and
//! `/<n>`). Before appending, the sink checks the file's tail for the same key, so a retry
//! after a crash between write and acknowledgement does not write the lines twice. A batch's
//! key names its members, and a retried message may be batched with others than the first
//! time (after a crash, or when its companions were delivered meanwhile), so a batch also
//! skips each message whose `id` is already on an ungrouped line of the tail. A batch
//! (up to 100 messages when a queue is long) is appended in one write. A group of alerts (the
//! sink's `group` setting) is a line per alert, each with a `group` field: the group's labels,
//! key, sequence and firing count.

use std::io::{Read, Seek, SeekFrom, Write};

use serde::Deserialize;
use tocsin_sdk::{export_sink, severity_name, DeliveryError, Message, Notification, Sink};

/// Appends each message as one JSON line to a file.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
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

/// What [`FileSink::append`] reads back from a line of the tail.
#[derive(Deserialize)]
struct WrittenLine {
    id: String,
    #[serde(default)]
    group: Option<serde::de::IgnoredAny>,
}

/// The ids of the messages on ungrouped lines of `tail` (a cut first line is skipped).
fn ungrouped_ids(tail: &str) -> std::collections::HashSet<String> {
    tail.lines()
        .filter_map(|line| serde_json::from_str::<WrittenLine>(line).ok())
        .filter(|line| line.group.is_none())
        .map(|line| line.id)
        .collect()
}

/// The last [`DEDUP_TAIL_BYTES`] of the file as text; empty when it does not exist yet.
fn read_tail(path: &str) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let mut tail = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(DEDUP_TAIL_BYTES)))
        .is_ok()
    {
        let _ = file.read_to_end(&mut tail);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

impl Sink for FileSink {
    type Config = Config;
    fn new(c: Config) -> Result<Self, String> {
        Ok(FileSink { path: c.path })
    }
    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        self.append(&[(key.to_string(), msg)], None)
    }

    fn batch_limit(&self) -> u32 {
        100
    }

    fn deliver_notification(
        &mut self,
        notification: Notification,
        key: &str,
    ) -> Result<(), DeliveryError> {
        let group = notification.group.as_ref().map(|g| {
            serde_json::json!({
                "labels": g.labels, "key": g.key, "sequence": g.sequence, "firing": g.firing,
            })
        });
        let mut messages = notification.messages;
        if messages.len() == 1 && group.is_none() {
            return self.append(&[(key.to_string(), messages.remove(0))], None);
        }
        let keyed: Vec<(String, Message)> = messages
            .into_iter()
            .enumerate()
            .map(|(n, m)| (format!("{key}/{n}"), m))
            .collect();
        self.append(&keyed, group.as_ref())
    }
}

impl FileSink {
    /// Appends one line per message, each with its key (and the group it went out in, when
    /// grouped), in one write — unless the first key is already in the file's tail (a retry of
    /// lines written before a crash). Ungrouped, a message whose id is on an ungrouped line
    /// of the tail is left out (it went out before in a batch of other members).
    fn append(
        &self,
        keyed: &[(String, Message)],
        group: Option<&serde_json::Value>,
    ) -> Result<(), DeliveryError> {
        let io = |e: std::io::Error| DeliveryError::Retryable(format!("{}: {e}", self.path));
        let Some((first_key, _)) = keyed.first() else {
            return Ok(());
        };
        let key_field = serde_json::to_string(first_key).unwrap_or_default();
        let tail = read_tail(&self.path);
        if tail.contains(&format!("\"idempotency_key\":{key_field}")) {
            return Ok(());
        }
        let written = if group.is_none() {
            ungrouped_ids(&tail)
        } else {
            Default::default()
        };
        let keyed: Vec<&(String, Message)> = keyed
            .iter()
            .filter(|(_, msg)| !written.contains(&msg.id))
            .collect();
        if keyed.is_empty() {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| {
                DeliveryError::Permanent(format!(
                    "cannot open {} (is its directory in grants.write_dirs?): {e}",
                    self.path
                ))
            })?;
        let mut lines = String::new();
        for (key, msg) in keyed {
            let mut line = serde_json::json!({
                "idempotency_key": key,
                "id": msg.id,
                "timestamp_ms": msg.timestamp_ms,
                "severity": severity_name(msg.severity),
                "summary": msg.summary,
                "body": msg.body,
                "labels": msg.labels,
                "metrics": msg.metrics,
                "link": msg.link,
                "key": msg.key,
            });
            if let Some(group) = group {
                line["group"] = group.clone();
            }
            lines.push_str(&format!("{line}\n"));
        }
        // One write of whole lines, so readers never see half a line mid-write.
        file.write_all(lines.as_bytes())
            .and_then(|_| file.flush())
            .map_err(io)
    }
}

export_sink!(FileSink);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::MessageExt;

    #[test]
    fn a_repeated_idempotency_key_is_written_once() {
        let dir = std::env::temp_dir().join(format!("tocsin-file-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl").to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&path);
        let mut sink = FileSink::new(Config { path: path.clone() }).unwrap();
        let msg = Message::new("m1", 0, "hello");
        sink.deliver(msg.clone(), "p/s/m1").unwrap();
        sink.deliver(msg.clone(), "p/s/m1").unwrap();
        sink.deliver(Message::new("m2", 0, "hello"), "p/s/m2")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_message_retried_in_another_batch_is_written_once() {
        let dir = std::env::temp_dir().join(format!("tocsin-file-batch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl").to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&path);
        let mut sink = FileSink::new(Config { path: path.clone() }).unwrap();
        let batch = |ids: &[&str]| Notification {
            messages: ids.iter().map(|id| Message::new(*id, 0, "hello")).collect(),
            group: None,
        };
        sink.deliver_notification(batch(&["a", "b"]), "sha256:ab")
            .unwrap();
        // After a crash, b is batched with c: another key, b already written.
        sink.deliver_notification(batch(&["b", "c"]), "sha256:bc")
            .unwrap();
        sink.deliver(Message::new("c", 0, "hello"), "p/s/c")
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<WrittenLine>(l).unwrap().id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"], "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
