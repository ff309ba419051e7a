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

    fn set_metric(&mut self, name: &str, value: f64) {
        match self.metrics.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.metrics.push((name.to_string(), value)),
        }
    }
}
