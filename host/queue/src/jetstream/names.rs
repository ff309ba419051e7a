//! How tocsin's names become JetStream names.
//!
//! Pipeline, sink and stage names and plugin state keys are free text; stream names, bucket
//! names, subject tokens and KV keys are not. [`token`] escapes a name into `[A-Za-z0-9_]`
//! (every other byte, `_` included, as `_XX`), so a token never holds `.`, `-`, `*` or `>`
//! and [`untoken`] reads it back. `-` separates the namespace from a token.
//!
//! In namespace `tocsin` (the default), pipeline `disk.alerts` keeps:
//! - its queues in stream `tocsin-disk_2Ealerts`, subjects `tocsin.disk_2Ealerts.in`
//!   (ingress), `….sink.<sink>`, `….dead.<queue>` and `….att.<queue>` (failed attempts of
//!   queued entries);
//! - its plugin and host state in KV bucket `tocsin-disk_2Ealerts` (keys `s.<stage>.<key>`);
//! - the server's own state (silences) in bucket `tocsin--server`.

/// `name` as a token of `[A-Za-z0-9_]` (never empty: `""` is `_`).
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(byte as char);
        } else {
            out.push_str(&format!("_{byte:02X}"));
        }
    }
    out
}

/// The name a [`token`] stands for; `None` when `token` is not one.
pub fn untoken(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let hex = token.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `namespace` can prefix stream and bucket names.
pub fn valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 32
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The names of one pipeline's stream, bucket and subjects.
#[derive(Debug, Clone)]
pub struct PipelineNames {
    /// The stream of its queues, and the KV bucket of its state (`<ns>-<pipeline>`).
    pub stream: String,
    subject_prefix: String,
}

impl PipelineNames {
    /// The names of `pipeline` in `namespace`.
    pub fn new(namespace: &str, pipeline: &str) -> Self {
        let pipeline = token(pipeline);
        PipelineNames {
            stream: format!("{namespace}-{pipeline}"),
            subject_prefix: format!("{namespace}.{pipeline}"),
        }
    }

    /// Every subject of the pipeline's stream.
    pub fn all_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// The ingress queue.
    pub fn ingress(&self) -> String {
        format!("{}.in", self.subject_prefix)
    }

    /// A sink's queue.
    pub fn sink(&self, sink: &str) -> String {
        format!("{}.sink.{}", self.subject_prefix, token(sink))
    }

    /// The dead letters of `queue` (a sink, or the filters).
    pub fn dead(&self, queue: &str) -> String {
        format!("{}.dead.{}", self.subject_prefix, token(queue))
    }

    /// The failed-attempt records of a queue's entries (followed by `.<queue token>`).
    pub fn attempts_subject(&self) -> String {
        format!("{}.att", self.subject_prefix)
    }

    /// Which queue a subject of this pipeline's stream is.
    pub fn queue_of(&self, subject: &str) -> Option<Queue> {
        let rest = subject.strip_prefix(&self.subject_prefix)?;
        if rest == ".in" {
            return Some(Queue::Ingress);
        }
        if let Some(sink) = rest.strip_prefix(".sink.") {
            return untoken(sink).map(Queue::Sink);
        }
        if let Some(queue) = rest.strip_prefix(".att.") {
            return untoken(queue).map(Queue::Attempts);
        }
        rest.strip_prefix(".dead.")
            .and_then(untoken)
            .map(Queue::Dead)
    }
}

/// A queue of a pipeline, as its subject names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queue {
    /// Waiting for the filters.
    Ingress,
    /// Waiting for delivery by this sink.
    Sink(String),
    /// Dead letters of this queue (a sink, or [`crate::FILTERS_QUEUE`]).
    Dead(String),
    /// Failed-attempt records of this queue's entries (a sink, or the filters for ingress).
    Attempts(String),
}

/// The KV key of a state value.
pub fn state_key(stage: &str, key: &str) -> String {
    format!("s.{}.{}", token(stage), token(key))
}

/// The KV key prefix of a stage's state values.
pub fn state_prefix(stage: &str) -> String {
    format!("s.{}.", token(stage))
}

/// The stage and key a [`state_key`] names.
pub fn parse_state_key(kv_key: &str) -> Option<(String, String)> {
    let rest = kv_key.strip_prefix("s.")?;
    let (stage, key) = rest.split_once('.')?;
    Some((untoken(stage)?, untoken(key)?))
}

/// The server's own state: its bucket.
pub fn server_bucket(namespace: &str) -> String {
    format!("{namespace}--server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_hold_only_safe_bytes() {
        for name in [
            "p",
            "disk.alerts",
            "a_b-c",
            "@filters",
            "",
            "ünï code",
            "x>y*z",
        ] {
            let t = token(name);
            assert!(
                t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{t}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(name), "{t}");
        }
        assert_eq!(token("disk.alerts"), "disk_2Ealerts");
        assert_eq!(untoken("a_zz"), None);
    }

    #[test]
    fn subjects_name_their_queue() {
        let names = PipelineNames::new("tocsin", "p.1");
        assert_eq!(names.stream, "tocsin-p_2E1");
        assert_eq!(names.queue_of(&names.ingress()), Some(Queue::Ingress));
        assert_eq!(
            names.queue_of(&names.sink("room.a")),
            Some(Queue::Sink("room.a".into()))
        );
        assert_eq!(
            names.queue_of(&names.dead(crate::FILTERS_QUEUE)),
            Some(Queue::Dead(crate::FILTERS_QUEUE.into()))
        );
        assert_eq!(names.queue_of("tocsin.other.in"), None);
        assert_eq!(
            parse_state_key(&state_key("filter.0", "k.1")),
            Some(("filter.0".into(), "k.1".into()))
        );
        assert_eq!(
            names.queue_of(&format!("{}.{}", names.attempts_subject(), token("s"))),
            Some(Queue::Attempts("s".into()))
        );
    }
}
