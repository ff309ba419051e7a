//! Conversions between the WIT message record and the host's [`tocsin_message::Message`].

use crate::bindings::wit_types as wit;
use tocsin_message::{Message, Severity};

pub(crate) fn severity_to_wit(s: Severity) -> wit::Severity {
    match s {
        Severity::None => wit::Severity::None,
        Severity::Info => wit::Severity::Info,
        Severity::Warning => wit::Severity::Warning,
        Severity::Error => wit::Severity::Error,
        Severity::Alert => wit::Severity::Alert,
    }
}

pub(crate) fn severity_from_wit(s: wit::Severity) -> Severity {
    match s {
        wit::Severity::None => Severity::None,
        wit::Severity::Info => Severity::Info,
        wit::Severity::Warning => Severity::Warning,
        wit::Severity::Error => Severity::Error,
        wit::Severity::Alert => Severity::Alert,
    }
}

/// The WIT record of a message the caller keeps (its strings are copied).
pub(crate) fn to_wit(m: &Message) -> wit::Message {
    wit::Message {
        id: m.id.clone(),
        timestamp_ms: m.timestamp_ms,
        severity: severity_to_wit(m.severity),
        summary: m.summary.clone(),
        body: m.body.clone(),
        labels: m.labels.clone(),
        metrics: m.metrics.clone(),
        payload: m.payload.clone(),
    }
}

/// The WIT record of a message the caller gives up (its strings move, nothing is copied).
pub(crate) fn into_wit(m: Message) -> wit::Message {
    wit::Message {
        id: m.id,
        timestamp_ms: m.timestamp_ms,
        severity: severity_to_wit(m.severity),
        summary: m.summary,
        body: m.body,
        labels: m.labels,
        metrics: m.metrics,
        payload: m.payload,
    }
}

pub(crate) fn from_wit(m: wit::Message) -> Message {
    Message {
        id: m.id,
        timestamp_ms: m.timestamp_ms,
        severity: severity_from_wit(m.severity),
        summary: m.summary,
        body: m.body,
        labels: m.labels,
        metrics: m.metrics,
        payload: m.payload,
    }
}
