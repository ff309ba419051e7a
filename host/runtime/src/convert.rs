//! Conversions between the WIT message records (contract 0.2.0 and 0.1.0) and the host's
//! [`tocsin_message::Message`].
//!
//! A 0.1.0 plugin knows no link and no key: what it outputs has none, and what it receives
//! loses them (a 0.1.0 filter's outputs inherit its input's: see `Stage::process`).

use crate::bindings::v0_1::wit_types as wit1;
use crate::bindings::wit_types as wit;
use tocsin_message::{Message, Severity};

/// Maps one contract version's `severity` enum to the host's, and back.
macro_rules! severity_conversions {
    ($to:ident, $from:ident, $wit:path) => {
        pub(crate) fn $to(s: Severity) -> $wit {
            use $wit as W;
            match s {
                Severity::None => W::None,
                Severity::Info => W::Info,
                Severity::Warning => W::Warning,
                Severity::Error => W::Error,
                Severity::Alert => W::Alert,
            }
        }

        pub(crate) fn $from(s: $wit) -> Severity {
            use $wit as W;
            match s {
                W::None => Severity::None,
                W::Info => Severity::Info,
                W::Warning => Severity::Warning,
                W::Error => Severity::Error,
                W::Alert => Severity::Alert,
            }
        }
    };
}

severity_conversions!(severity_to_wit, severity_from_wit, wit::Severity);
severity_conversions!(severity_to_wit1, severity_from_wit1, wit1::Severity);

/// The WIT record of a message the caller keeps (its strings are copied).
pub(crate) fn to_wit(m: &Message) -> wit::Message {
    into_wit(m.clone())
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
        link: m.link,
        key: m.key,
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
        link: m.link,
        key: m.key,
    }
}

/// The 0.1.0 record of a message (link and key left behind).
pub(crate) fn into_wit1(m: Message) -> wit1::Message {
    wit1::Message {
        id: m.id,
        timestamp_ms: m.timestamp_ms,
        severity: severity_to_wit1(m.severity),
        summary: m.summary,
        body: m.body,
        labels: m.labels,
        metrics: m.metrics,
        payload: m.payload,
    }
}

/// A message a 0.1.0 plugin made: no link, no key.
pub(crate) fn from_wit1(m: wit1::Message) -> Message {
    Message {
        id: m.id,
        timestamp_ms: m.timestamp_ms,
        severity: severity_from_wit1(m.severity),
        summary: m.summary,
        body: m.body,
        labels: m.labels,
        metrics: m.metrics,
        payload: m.payload,
        link: None,
        key: None,
    }
}

/// The 0.1.0 delivery error as the current one (the variants did not change).
pub(crate) fn delivery_error_from_wit1(e: wit1::DeliveryError) -> wit::DeliveryError {
    match e {
        wit1::DeliveryError::Retryable(m) => wit::DeliveryError::Retryable(m),
        wit1::DeliveryError::Permanent(m) => wit::DeliveryError::Permanent(m),
        wit1::DeliveryError::RateLimited(ms) => wit::DeliveryError::RateLimited(ms),
    }
}
