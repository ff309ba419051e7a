//! Text a plugin hands the host — errors, refusals, log lines — made safe to store and log.
//!
//! Two things are done to it, in this order:
//! - **granted secret values are replaced by `REDACTED`**. A sink that reports "HTTP 400:" and
//!   the server's error page may be echoing the token it sent (some servers do); that text
//!   ends up in the log, in `tocsin dlq` and in the queue database. Values shorter than
//!   [`MIN_SCRUBBED_LEN`] bytes are left alone: replacing a two-letter value everywhere would
//!   garble every message, and so short a secret protects nothing anyway.
//! - **it is put on one line** (`tocsin_message::one_line`): a multi-line error in the text
//!   log format would print lines that look like the host's own.
//!
//! It is also cut to [`MAX_GUEST_TEXT`] bytes.

use std::sync::Arc;

/// Secret values shorter than this are not scrubbed (see the module doc).
pub const MIN_SCRUBBED_LEN: usize = 4;
/// The longest text kept from a plugin (an error, a refusal, a log line).
pub const MAX_GUEST_TEXT: usize = 4096;

/// Cleans one stage's text; cheap to clone.
#[derive(Clone, Default)]
pub struct GuestText {
    /// Values to scrub, longest first (so a secret containing another is replaced whole).
    secrets: Arc<Vec<String>>,
}

impl GuestText {
    /// For a stage granted `secrets` (name, value).
    pub fn new(secrets: &[(String, String)]) -> Self {
        let mut values: Vec<String> = secrets
            .iter()
            .map(|(_, value)| value.clone())
            .filter(|v| v.len() >= MIN_SCRUBBED_LEN)
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        GuestText {
            secrets: Arc::new(values),
        }
    }

    /// `text` with secrets redacted, on one line, at most [`MAX_GUEST_TEXT`] bytes.
    pub fn clean(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in self.secrets.iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "REDACTED");
            }
        }
        let mut text = tocsin_message::one_line(&text).into_owned();
        cut(&mut text, MAX_GUEST_TEXT);
        text
    }
}

/// Cuts `text` to at most `max` bytes (at a character boundary), marking the cut with `…`.
pub(crate) fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_lines_joined_and_length_bounded() {
        let clean = GuestText::new(&[
            ("token".into(), "syt_secret_token".into()),
            ("short".into(), "ab".into()),
        ]);
        assert_eq!(
            clean.clean("HTTP 400: bad token syt_secret_token\nat line 2"),
            "HTTP 400: bad token REDACTED\\nat line 2"
        );
        assert_eq!(clean.clean("a cab"), "a cab", "short values are left alone");
        let long = clean.clean(&"é".repeat(5000));
        assert!(
            long.len() <= MAX_GUEST_TEXT + '…'.len_utf8(),
            "{}",
            long.len()
        );
    }
}
