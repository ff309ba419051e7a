//! The failed attempts of a queued entry, kept beside it so a retry does not rewrite the
//! whole message.

use crate::Envelope;

/// What failed attempts changed of a queued sink entry, kept beside it (`f` records).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Attempts {
    attempts: u32,
    last_error: Option<String>,
    not_before_ms: u64,
}

impl tocsin_message::Record for Attempts {
    type Format1 = Attempts;
}

impl Attempts {
    pub(crate) fn of(envelope: &Envelope) -> Self {
        Attempts {
            attempts: envelope.attempts,
            last_error: envelope.last_error.clone(),
            not_before_ms: envelope.not_before_ms,
        }
    }

    pub(crate) fn apply(self, envelope: &mut Envelope) {
        envelope.attempts = self.attempts;
        envelope.last_error = self.last_error;
        envelope.not_before_ms = self.not_before_ms;
    }
}
