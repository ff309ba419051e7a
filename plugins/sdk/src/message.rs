//! Conveniences on [`Message`] and [`Severity`].

use crate::{Message, Severity};

/// A number for comparing severities: none 0, info 1, warning 2, error 3, alert 4.
pub fn rank(severity: Severity) -> u8 {
    match severity {
        Severity::None => 0,
        Severity::Info => 1,
        Severity::Warning => 2,
        Severity::Error => 3,
        Severity::Alert => 4,
    }
}

/// The lower-case name of a severity, as in pipeline files and logs.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::None => "none",
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
        Severity::Alert => "alert",
    }
}

/// The emoji chat sinks put before an alert (with a trailing space), Janitor's convention:
/// none, ℹ️, ⚠️, 🔥, 🚨.
pub fn severity_emoji(severity: Severity) -> &'static str {
    match severity {
        Severity::None => "",
        Severity::Info => "ℹ️ ",
        Severity::Warning => "⚠️ ",
        Severity::Error => "🔥 ",
        Severity::Alert => "🚨 ",
    }
}

/// Parses a lower-case severity name.
pub fn severity_from_str(name: &str) -> Option<Severity> {
    Some(match name {
        "none" => Severity::None,
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "error" => Severity::Error,
        "alert" => Severity::Alert,
        _ => return None,
    })
}

/// Reading and writing labels and metrics by name.
pub trait MessageExt {
    /// A message with this id and body, severity none, timestamp `now_ms`.
    fn new(id: impl Into<String>, timestamp_ms: u64, body: impl Into<String>) -> Self;
    /// The first label called `name`.
    fn label(&self, name: &str) -> Option<&str>;
    /// The first metric called `name`.
    fn metric(&self, name: &str) -> Option<f64>;
    /// Sets (or replaces) a label.
    fn set_label(&mut self, name: &str, value: impl Into<String>);
    /// Sets (or replaces) a metric.
    fn set_metric(&mut self, name: &str, value: f64);
    /// Sets the link when it passes [`check_link`] and says whether it did; a link that does
    /// not is left out rather than failing the call.
    fn set_link(&mut self, url: impl Into<String>) -> bool;
    /// The size the host counts against [`crate::MAX_OUTPUT_BYTES`] (the same formula as the
    /// host's `Message::approx_size`): the text's bytes, 8 per metric value, 16 per message.
    fn approx_size(&self) -> usize;
}

impl MessageExt for Message {
    fn new(id: impl Into<String>, timestamp_ms: u64, body: impl Into<String>) -> Self {
        Message {
            id: id.into(),
            timestamp_ms,
            severity: Severity::None,
            summary: None,
            body: body.into(),
            labels: Vec::new(),
            metrics: Vec::new(),
            payload: None,
            link: None,
            key: None,
        }
    }

    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    fn set_label(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.labels.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.labels.push((name.to_string(), value)),
        }
    }

    fn set_link(&mut self, url: impl Into<String>) -> bool {
        let url = url.into();
        let ok = check_link(&url).is_ok();
        if ok {
            self.link = Some(url);
        }
        ok
    }

    fn set_metric(&mut self, name: &str, value: f64) {
        match self.metrics.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.metrics.push((name.to_string(), value)),
        }
    }

    fn approx_size(&self) -> usize {
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

/// The earliest timestamp the host takes: 2000-01-01T00:00:00Z (the host refuses older ones).
pub const MIN_TIMESTAMP_MS: u64 = 946_684_800_000;
/// How far ahead of the host's clock a timestamp may be: one day.
pub const MAX_TIMESTAMP_AHEAD_MS: u64 = 24 * 3600 * 1000;
/// The longest message id the host takes, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// The host's rules for a message leaving a plugin, checked here so a decoder can refuse the
/// client's request with a 4xx and the reason (the host would fail the call instead): a
/// timestamp between [`MIN_TIMESTAMP_MS`] and `now_ms` + [`MAX_TIMESTAMP_AHEAD_MS`], an id
/// of at most [`MAX_ID_BYTES`] without control characters.
pub fn check_message(m: &Message, now_ms: u64) -> Result<(), String> {
    if m.timestamp_ms < MIN_TIMESTAMP_MS
        || m.timestamp_ms > now_ms.saturating_add(MAX_TIMESTAMP_AHEAD_MS)
    {
        return Err(format!(
            "timestamp_ms {} is outside 2000-01-01 to a day from now (milliseconds since \
             1970-01-01 UTC)",
            m.timestamp_ms
        ));
    }
    if m.id.len() > MAX_ID_BYTES {
        return Err(format!(
            "an id is {} bytes long; the most is {MAX_ID_BYTES}",
            m.id.len()
        ));
    }
    if m.id.chars().any(is_unprintable) {
        return Err("an id holds control or bidirectional-formatting characters".into());
    }
    if let Some(link) = &m.link {
        check_link(link).map_err(|why| format!("the link `{link}` is {why}"))?;
    }
    if let Some(key) = &m.key {
        if key.is_empty() || key.len() > MAX_ID_BYTES {
            return Err(format!(
                "a key has 1 to {MAX_ID_BYTES} bytes, not {}",
                key.len()
            ));
        }
        if key.chars().any(is_unprintable) {
            return Err("a key holds control or bidirectional-formatting characters".into());
        }
    }
    Ok(())
}

/// Whether `c` is a control or bidirectional-formatting character: what the host refuses in
/// an id or a key (a decoder that builds an id from a client's field refuses such a field).
pub fn is_unprintable(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{2028}' | '\u{2029}')
}

/// The longest link a message may carry, in bytes (the host's rule).
pub const MAX_LINK_BYTES: usize = 2048;

/// Whether `link` may be a message's link, by the host's rule: an absolute `http://` or
/// `https://` URL with a host, at most [`MAX_LINK_BYTES`], without spaces, quotes, angle
/// brackets, control or bidirectional-formatting characters. The host refuses a call whose
/// output breaks it; [`MessageExt::set_link`] keeps only links that pass.
pub fn check_link(link: &str) -> Result<(), &'static str> {
    if link.len() > MAX_LINK_BYTES {
        return Err("longer than 2048 bytes");
    }
    let rest = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"))
        .ok_or("not an http:// or https:// URL")?;
    if rest.find(['/', '?', '#']).unwrap_or(rest.len()) == 0 {
        return Err("without a host after the scheme");
    }
    if link.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || is_bidi_control(c)
            || matches!(c, '"' | '<' | '>' | '`')
    }) {
        return Err("holding spaces, quotes, angle brackets or control characters");
    }
    Ok(())
}

/// Counts what a call is about to return against the host's output caps
/// ([`crate::MAX_OUTPUT_MESSAGES`], [`crate::MAX_OUTPUT_BYTES`]).
///
/// The host fails a call whose output is over either cap; for a decoder that is a 500 and a
/// failed stage, for input the client controls. A decoder admits each message as it builds
/// it and refuses the request (413) at the first one past a cap, before building the rest:
///
/// ```ignore
/// let mut budget = OutputBudget::default();
/// for alert in payload.alerts {
///     let m = to_message(alert);
///     budget.admit(&m).map_err(|reason| Rejection { status: 413, reason })?;
///     out.push(m);
/// }
/// ```
#[derive(Debug, Default, Clone)]
pub struct OutputBudget {
    messages: usize,
    bytes: usize,
}

impl OutputBudget {
    /// Counts one more message; an error saying which cap it passes, if it does.
    pub fn admit(&mut self, msg: &Message) -> Result<(), String> {
        self.messages += 1;
        self.bytes = self.bytes.saturating_add(msg.approx_size());
        if self.messages > crate::MAX_OUTPUT_MESSAGES {
            return Err(format!(
                "the request makes more than {} messages, the most one request may make",
                crate::MAX_OUTPUT_MESSAGES
            ));
        }
        if self.bytes > crate::MAX_OUTPUT_BYTES {
            return Err(format!(
                "the request makes more than {} bytes of messages, the most one request may make",
                crate::MAX_OUTPUT_BYTES
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_admits_up_to_the_caps() {
        let small = Message::new("id", 0, "body");
        let mut b = OutputBudget::default();
        for _ in 0..crate::MAX_OUTPUT_MESSAGES {
            b.admit(&small).unwrap();
        }
        assert!(b.admit(&small).unwrap_err().contains("1000 messages"));
        let big = Message::new("", 0, "x".repeat(crate::MAX_OUTPUT_BYTES - 16));
        OutputBudget::default().admit(&big).unwrap();
        let mut b = OutputBudget::default();
        b.admit(&big).unwrap();
        assert!(b.admit(&small).unwrap_err().contains("bytes of messages"));
    }
}
