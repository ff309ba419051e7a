//! The message that travels through a tocsin pipeline, and its on-disk encoding.
//!
//! This crate is the host's mirror of the WIT `types.message` record (see `wit/tocsin.wit`).
//! The runtime converts between the two at the sandbox boundary; the queue stores the encoded
//! form; nothing here knows about wasmtime, sled or tokio.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How bad it is. Ordered: `None < Info < Warning < Error < Alert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Not an alert.
    None,
    /// Informational, including "resolved" notices.
    Info,
    /// Needs attention soon.
    Warning,
    /// Something is broken.
    Error,
    /// Wake someone up.
    Alert,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::None,
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Alert,
    ];

    /// The lower-case name used in pipeline files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Alert => "alert",
        }
    }

    /// Parses a lower-case severity name.
    pub fn parse(name: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert or event travelling through a pipeline (the WIT `message` record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Stable id derived from the input, so a re-run step produces the same id.
    pub id: String,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// How bad it is.
    pub severity: Severity,
    /// Short title.
    pub summary: Option<String>,
    /// The text.
    pub body: String,
    /// Text attributes.
    pub labels: Vec<(String, String)>,
    /// Numeric measurements.
    pub metrics: Vec<(String, f64)>,
    /// The original payload, when a decoder keeps it.
    pub payload: Option<String>,
    /// Where a person reads more or acts (an absolute `http`/`https` URL). Contract 0.2.0.
    pub link: Option<String>,
    /// The identity of the alert the message is about, shared by its firing and resolved
    /// messages. Contract 0.2.0.
    pub key: Option<String>,
}

/// A [`Message`] as record format 1 laid it out, before messages carried a link and a key:
/// read from queues written by older builds, never written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageFormat1 {
    id: String,
    timestamp_ms: u64,
    severity: Severity,
    summary: Option<String>,
    body: String,
    labels: Vec<(String, String)>,
    metrics: Vec<(String, f64)>,
    payload: Option<String>,
}

impl From<MessageFormat1> for Message {
    fn from(m: MessageFormat1) -> Self {
        Message {
            id: m.id,
            timestamp_ms: m.timestamp_ms,
            severity: m.severity,
            summary: m.summary,
            body: m.body,
            labels: m.labels,
            metrics: m.metrics,
            payload: m.payload,
            link: None,
            key: None,
        }
    }
}

/// The message as format 1 holds it: without link and key (for tests of old records).
impl From<&Message> for MessageFormat1 {
    fn from(m: &Message) -> Self {
        MessageFormat1 {
            id: m.id.clone(),
            timestamp_ms: m.timestamp_ms,
            severity: m.severity,
            summary: m.summary.clone(),
            body: m.body.clone(),
            labels: m.labels.clone(),
            metrics: m.metrics.clone(),
            payload: m.payload.clone(),
        }
    }
}

impl Record for Message {
    type Format1 = MessageFormat1;
}

impl Message {
    /// A message with `id`, `severity` and `labels`, everything else empty (time 0): the
    /// starting point of a message the host makes itself, and of tests'.
    pub fn with_labels(id: &str, severity: Severity, labels: &[(&str, &str)]) -> Message {
        Message {
            id: id.to_string(),
            timestamp_ms: 0,
            severity,
            summary: None,
            body: String::new(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics: Vec::new(),
            payload: None,
            link: None,
            key: None,
        }
    }

    /// The value of the first label called `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first metric called `name`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    /// An approximate in-memory size in bytes, used to enforce output caps.
    pub fn approx_size(&self) -> usize {
        self.id.len()
            + self.summary.as_ref().map_or(0, String::len)
            + self.body.len()
            + self
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.metrics.iter().map(|(k, _)| k.len() + 8).sum::<usize>()
            + self.payload.as_ref().map_or(0, String::len)
            + self.link.as_ref().map_or(0, String::len)
            + self.key.as_ref().map_or(0, String::len)
            + 16
    }
}

/// The earliest timestamp a message may carry: 2000-01-01T00:00:00Z. Older ones are a bug or a
/// forgery (a `timestamp_ms` of 0, or one in seconds).
pub const MIN_TIMESTAMP_MS: u64 = 946_684_800_000;
/// How far ahead of the host's clock a message's timestamp may be (clock skew). A timestamp
/// far in the future would mute its key in time-window filters (`rate-limit`) for ever.
pub const MAX_TIMESTAMP_AHEAD_MS: u64 = 24 * 3600 * 1000;
/// The longest message id, in bytes. Ids become parts of keys, paths, headers and log lines.
pub const MAX_ID_BYTES: usize = 512;

/// Whether a message that leaves a plugin may enter a queue: a timestamp between
/// [`MIN_TIMESTAMP_MS`] and `now_ms` + `ahead_ms` (by default [`MAX_TIMESTAMP_AHEAD_MS`];
/// `tocsin run --max-timestamp-ahead`), and an id of at most
/// [`MAX_ID_BYTES`] without control or bidirectional-formatting characters. The reason says
/// which rule and what came (shortened and escaped).
pub fn check_message(m: &Message, now_ms: u64, ahead_ms: u64) -> Result<(), String> {
    let latest = now_ms.saturating_add(ahead_ms);
    if m.timestamp_ms < MIN_TIMESTAMP_MS || m.timestamp_ms > latest {
        return Err(format!(
            "message `{}` has timestamp_ms {}, outside 2000-01-01 to {} s from now ({} ms \
             since the epoch): timestamps are milliseconds since 1970-01-01 UTC",
            one_line(&shorten(&m.id, 64)),
            m.timestamp_ms,
            ahead_ms / 1000,
            latest
        ));
    }
    if m.id.len() > MAX_ID_BYTES {
        return Err(format!(
            "message id `{}…` is {} bytes long; the most is {MAX_ID_BYTES}",
            one_line(&shorten(&m.id, 64)),
            m.id.len()
        ));
    }
    if m.id.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(format!(
            "message id `{}` holds control or bidirectional-formatting characters",
            one_line(&shorten(&m.id, 64))
        ));
    }
    if let Some(link) = &m.link {
        check_link(link).map_err(|why| {
            format!(
                "message `{}` has link `{}`: {why}",
                one_line(&shorten(&m.id, 64)),
                one_line(&shorten(link, 80))
            )
        })?;
    }
    if let Some(key) = &m.key {
        if key.is_empty() || key.len() > MAX_ID_BYTES {
            return Err(format!(
                "message `{}` has a key of {} bytes; a key has 1 to {MAX_ID_BYTES}",
                one_line(&shorten(&m.id, 64)),
                key.len()
            ));
        }
        if key.chars().any(|c| c.is_control() || is_bidi_control(c)) {
            return Err(format!(
                "message `{}` has key `{}` holding control or bidirectional-formatting characters",
                one_line(&shorten(&m.id, 64)),
                one_line(&shorten(key, 64))
            ));
        }
    }
    Ok(())
}

/// The longest link a message may carry, in bytes.
pub const MAX_LINK_BYTES: usize = 2048;

/// Whether `link` may be a message's link: an absolute `http://` or `https://` URL with a
/// host, at most [`MAX_LINK_BYTES`], without spaces, control or bidirectional-formatting
/// characters — so every sink can put it in an `href` or a chat line as it is, and a
/// `javascript:` or `data:` link never reaches a room. The error says which rule.
pub fn check_link(link: &str) -> Result<(), &'static str> {
    if link.len() > MAX_LINK_BYTES {
        return Err("longer than 2048 bytes");
    }
    let rest = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"))
        .ok_or("not an http:// or https:// URL")?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_end == 0 {
        return Err("no host after the scheme");
    }
    if link.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || is_bidi_control(c)
            || matches!(c, '"' | '<' | '>' | '`')
    }) {
        return Err(
            "holds spaces, quotes, angle brackets or control characters (percent-encode them)",
        );
    }
    Ok(())
}

/// At most `max` characters of `text`.
fn shorten(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// The longest idempotency key handed to a sink; longer keys are replaced by a hash.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The idempotency key of a message for one sink of one pipeline:
/// `<pipeline>/<sink>/<message id>`, or `sha256:<hex>` of that when it is longer than
/// [`MAX_IDEMPOTENCY_KEY_LEN`], contains characters a URL path segment would need escaped, or
/// contains `..` (a sink that used it as a file or URL path would climb out of it).
/// The same on every retry, so services that remember keys (Matrix txnId, Mastodon
/// Idempotency-Key) post once.
pub fn idempotency_key(pipeline: &str, sink: &str, message_id: &str) -> String {
    let key = format!("{pipeline}/{sink}/{message_id}");
    let plain = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':'));
    if key.len() <= MAX_IDEMPOTENCY_KEY_LEN && plain && !key.contains("..") {
        key
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }
}

/// Errors decoding a stored record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record is empty.
    #[error("empty record")]
    Empty,
    /// The record was written by a format this build does not know.
    #[error(
        "record format version {found} is not supported (this build reads version {supported})"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The record's body is malformed.
    #[error("malformed record: {0}")]
    Malformed(#[from] postcard::Error),
    /// The record goes on after its value ends: a record is exactly one value, so this is
    /// corruption (a length prefix that shrank, say), not a shorter value.
    #[error("malformed record: {extra} bytes after the end of the value")]
    TrailingBytes {
        /// How many bytes follow the value.
        extra: usize,
    },
    /// The record's parts disagree (a header that does not match the entries after it).
    #[error("malformed record: {0}")]
    Inconsistent(&'static str),
    /// The file holding a large record's value is missing or is not what the record says.
    #[error("its value file: {0}")]
    ValueFile(String),
}

/// The version byte that starts every record written by this build: 3, since messages carry a
/// link and a key. Records of [`RECORD_FORMAT_1`] are still read; 2 is the ingress batch
/// record's own layout (in `tocsin-queue`).
pub const RECORD_FORMAT_VERSION: u8 = 3;

/// The version byte of records written before messages carried a link and a key.
pub const RECORD_FORMAT_1: u8 = 1;

/// A value stored as a record: how it is read from a record of [`RECORD_FORMAT_1`].
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    /// The value as format 1 laid it out (`Self` when its layout did not change).
    type Format1: for<'de> Deserialize<'de> + Into<Self>;
}

/// Encodes a value as a stored record: one version byte, then postcard.
pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT_VERSION];
    // postcard cannot fail to serialise our plain data types into a growable Vec.
    out.extend(postcard::to_stdvec(value).expect("postcard serialises plain records"));
    out
}

/// Decodes a record written by [`encode_record`]: exactly one value, nothing after it.
///
/// Never panics, and allocates no more than the record's bytes can fill: a length prefix
/// claiming more than the record holds is an error before anything is reserved for it.
pub fn decode_record<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&RECORD_FORMAT_VERSION, rest)) => decode_exactly::<T>(rest),
        Some((&RECORD_FORMAT_1, rest)) => decode_exactly::<T::Format1>(rest).map(Into::into),
        Some((&found, _)) => Err(DecodeError::UnknownVersion {
            found,
            supported: RECORD_FORMAT_VERSION,
        }),
    }
}

/// Decodes postcard bytes holding exactly one value.
pub fn decode_exactly<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        (_, extra) => Err(DecodeError::TrailingBytes { extra: extra.len() }),
    }
}

/// `text` on one line, for a log line or a table row: line breaks become `\n`, other control
/// characters (ESC, NUL, bidi overrides…) their `\u{…}` escape, and a backslash `\\`, so
/// a plugin's multi-line error cannot print lines that look like the host's own, and the
/// original text can be read back. Text without any is borrowed as it is.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    let needs = |c: char| c == '\\' || c.is_control() || is_bidi_control(c);
    if !text.contains(needs) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Unicode's bidirectional formatting characters, which reorder how a line reads, and its
/// line and paragraph separators, which some viewers break lines at.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{061c}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_absurd_timestamps_or_ids_are_refused_with_the_reason() {
        let now = 1_800_000_000_000;
        let ok = Message {
            timestamp_ms: now,
            ..sample()
        };
        assert_eq!(check_message(&ok, now, MAX_TIMESTAMP_AHEAD_MS), Ok(()));
        for (ts, why) in [
            (u64::MAX, "outside"),
            (0, "outside"),
            (1_800_000_000, "outside"),
        ] {
            let m = Message {
                timestamp_ms: ts,
                ..ok.clone()
            };
            assert!(
                check_message(&m, now, MAX_TIMESTAMP_AHEAD_MS)
                    .unwrap_err()
                    .contains(why),
                "{ts}"
            );
        }
        let tomorrow = Message {
            timestamp_ms: now + 3_600_000,
            ..ok.clone()
        };
        assert_eq!(
            check_message(&tomorrow, now, MAX_TIMESTAMP_AHEAD_MS),
            Ok(())
        );
        for id in [
            "a\r\nb",
            "nul\0",
            "rtl\u{202e}txt",
            &"x".repeat(MAX_ID_BYTES + 1),
        ] {
            let m = Message {
                id: id.to_string(),
                ..ok.clone()
            };
            let why = check_message(&m, now, MAX_TIMESTAMP_AHEAD_MS).unwrap_err();
            assert!(!why.contains('\n') && why.len() < 300, "{why}");
        }
    }

    #[test]
    fn a_key_that_could_climb_a_path_is_hashed() {
        assert!(idempotency_key("p", "s", "../../../../etc/passwd").starts_with("sha256:"));
        assert_eq!(idempotency_key("p", "s", "a.b"), "p/s/a.b");
    }

    #[test]
    fn one_line_escapes_breaks_controls_and_bidi_and_borrows_plain_text() {
        assert!(matches!(
            one_line("plain text"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            one_line("HTTP 400: bad\n2026-12-05T00:00:00Z ERROR tocsin: forged\r\tx\\y"),
            "HTTP 400: bad\\n2026-12-05T00:00:00Z ERROR tocsin: forged\\r\\tx\\\\y"
        );
        assert_eq!(
            one_line("a\u{1b}[31mred\u{202e}b\0"),
            "a\\u{1b}[31mred\\u{202e}b\\u{0}"
        );
        assert_eq!(one_line("x\u{2028}z\u{85}"), "x\\u{2028}z\\u{85}");
    }

    fn sample() -> Message {
        Message {
            id: "backup/1700000000000".into(),
            timestamp_ms: 1_700_000_000_000,
            severity: Severity::Warning,
            summary: Some("Backup is stale".into()),
            body: "newest backup is 27 h old".into(),
            labels: vec![("host".into(), "db1".into())],
            metrics: vec![("backup-age-seconds".into(), 97200.0)],
            payload: None,
            link: Some("https://backups.example/db1".into()),
            key: Some("backup/db1".into()),
        }
    }

    #[test]
    fn a_record_of_format_1_reads_with_no_link_and_no_key() {
        let m = sample();
        let old = MessageFormat1::from(&m);
        let mut bytes = vec![RECORD_FORMAT_1];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        let back = decode_record::<Message>(&bytes).unwrap();
        assert_eq!(
            back,
            Message {
                link: None,
                key: None,
                ..m
            }
        );
    }

    #[test]
    fn only_plain_http_links_pass() {
        for ok in [
            "https://github.com/o/r/pull/2",
            "http://10.0.0.1:9093/#/alerts?x=1",
        ] {
            assert_eq!(check_link(ok), Ok(()), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "https://",
            "https:///path",
            "ftp://x",
            "https://a b",
            "https://x/\"><script>",
            "/relative",
        ] {
            assert!(check_link(bad).is_err(), "{bad}");
        }
        assert!(check_link(&format!("https://x/{}", "a".repeat(MAX_LINK_BYTES))).is_err());
        let mut m = sample();
        m.link = Some("javascript:alert(1)".into());
        let why = check_message(&m, m.timestamp_ms, 0).unwrap_err();
        assert!(why.contains("not an http"), "{why}");
        m.link = None;
        m.key = Some(String::new());
        assert!(check_message(&m, m.timestamp_ms, 0).is_err());
    }

    #[test]
    fn record_round_trips() {
        let m = sample();
        let bytes = encode_record(&m);
        assert_eq!(bytes[0], RECORD_FORMAT_VERSION);
        assert_eq!(decode_record::<Message>(&bytes).unwrap(), m);
    }

    #[test]
    fn unknown_record_version_is_an_error_not_garbage() {
        let mut bytes = encode_record(&sample());
        bytes[0] = 9;
        let err = decode_record::<Message>(&bytes).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(matches!(
            decode_record::<Message>(&[]),
            Err(DecodeError::Empty)
        ));
    }

    #[test]
    fn truncated_record_is_malformed() {
        let bytes = encode_record(&sample());
        let err = decode_record::<Message>(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    }

    /// Regression (found by `prop_records_with_trailing_bytes_are_refused`): bytes after a
    /// complete record were ignored, so a corrupted record could pass as another value.
    #[test]
    fn trailing_bytes_after_a_record_are_refused() {
        let mut bytes = encode_record(&sample());
        bytes.push(0);
        let err = decode_record::<Message>(&bytes).unwrap_err();
        assert!(
            matches!(err, DecodeError::TrailingBytes { extra: 1 }),
            "{err}"
        );
        assert!(err.to_string().contains("1 bytes after the end"), "{err}");
    }

    #[test]
    fn idempotency_key_is_readable_when_short_and_hashed_when_long_or_odd() {
        assert_eq!(idempotency_key("p", "s", "m-1"), "p/s/m-1");
        let long = "x".repeat(200);
        let hashed = idempotency_key("p", "s", &long);
        assert!(hashed.starts_with("sha256:") && hashed.len() == 7 + 64);
        assert_eq!(hashed, idempotency_key("p", "s", &long), "stable");
        assert!(idempotency_key("p", "s", "a b?").starts_with("sha256:"));
    }

    #[test]
    fn severities_order_and_parse() {
        assert!(Severity::Info < Severity::Warning && Severity::Error < Severity::Alert);
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        assert_eq!(Severity::parse("fatal"), None);
    }
}
