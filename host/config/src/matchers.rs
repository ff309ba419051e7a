//! Label matchers, written as Alertmanager writes them: `host=db1`, `env!=test`,
//! `alertname=~"Disk.*"`, `job!~"batch|cron"`.
//!
//! Silences (and, later, maintenance windows and inhibition) pick messages with them. The rules
//! are Alertmanager's, so a matcher copied from `amtool` means the same here:
//! - a label the message lacks has the empty value: `host=""` picks messages without `host`,
//!   `host!=""` those with one;
//! - a regular expression must match the **whole** value (`=~"db"` does not pick `db1`);
//! - the name `severity`, on a message without a `severity` label, is the message's own
//!   severity (`none`, `info`, `warning`, `error`, `alert`).
//!
//! A value is written bare when it holds no space, quote, comma or backslash, and otherwise
//! in double quotes with JSON escapes; [`Matcher`]'s `Display` writes what [`Matcher::parse`]
//! reads back.

use std::fmt;

use tocsin_message::Message;

/// The longest value (or regular expression) a matcher may hold, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

/// The most memory a matcher's compiled regular expression may take (the `regex` crate's
/// size limit): a hostile expression is refused, not compiled.
const REGEX_SIZE_LIMIT: usize = 256 << 10;

/// How a matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchOp {
    /// `=`: the value equals.
    Equal,
    /// `!=`: the value differs.
    NotEqual,
    /// `=~`: the whole value matches the regular expression.
    Regex,
    /// `!~`: the whole value does not match the regular expression.
    NotRegex,
}

impl MatchOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// The label's name.
    pub name: String,
    /// How it compares.
    pub op: MatchOp,
    /// The value, or the regular expression as written.
    pub value: String,
    /// The expression, anchored at both ends (for `=~` and `!~`).
    regex: Option<regex::Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Eq for Matcher {}

/// Why a matcher was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("matcher {text:?}: {why}")]
pub struct MatcherError {
    /// The matcher as given.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl Matcher {
    /// A matcher from its parts; the value is checked (and compiled, for a regex).
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        if !is_label_name(name) {
            return Err(format!(
                "{name:?} is not a label name (a letter or `_`, then letters, digits or `_`)"
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "the value is {} bytes; at most {MAX_VALUE_BYTES}",
                value.len()
            ));
        }
        let regex = match op {
            MatchOp::Equal | MatchOp::NotEqual => None,
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("not a regular expression: {e}"))?,
            ),
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    /// Reads `name OP value`: `OP` one of `=`, `!=`, `=~`, `!~`; `value` bare or in double
    /// quotes (JSON escapes). Spaces around the operator are allowed.
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let refuse = |why: String| MatcherError {
            text: text.to_string(),
            why,
        };
        let trimmed = text.trim();
        let name_end = trimmed
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| {
                refuse(
                    "no operator: write name=value, name!=value, name=~regex or name!~regex".into(),
                )
            })?;
        let name = &trimmed[..name_end];
        let rest = trimmed[name_end..].trim_start();
        let (op, rest) = [
            ("=~", MatchOp::Regex),
            ("!~", MatchOp::NotRegex),
            ("!=", MatchOp::NotEqual),
            ("=", MatchOp::Equal),
        ]
        .into_iter()
        .find_map(|(written, op)| rest.strip_prefix(written).map(|r| (op, r)))
        .ok_or_else(|| {
            refuse(format!(
                "{:?} after the name is not an operator (=, !=, =~ or !~)",
                rest.chars().take(2).collect::<String>()
            ))
        })?;
        let rest = rest.trim_start();
        let value = if rest.starts_with('"') {
            serde_json::from_str::<String>(rest)
                .map_err(|e| refuse(format!("the quoted value does not end well: {e}")))?
        } else {
            let bare = rest.trim_end();
            if let Some(c) = bare.chars().find(|c| needs_quotes(*c)) {
                return Err(refuse(format!(
                    "put the value in double quotes: it holds {c:?}"
                )));
            }
            bare.to_string()
        };
        Matcher::new(name, op, &value).map_err(refuse)
    }

    /// Whether `message` is picked.
    pub fn matches(&self, message: &Message) -> bool {
        let value = match message.label(&self.name) {
            Some(v) => v,
            None if self.name == "severity" => message.severity.as_str(),
            None => "",
        };
        self.matches_value(value)
    }

    /// Whether a label's value (empty when absent) is picked.
    pub fn matches_value(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            // `new` compiles every regex matcher.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.op.as_str())?;
        // A bare value starting with `~` would turn `=` into `=~`.
        if self.value.is_empty()
            || self.value.starts_with('~')
            || self.value.chars().any(needs_quotes)
        {
            let quoted = serde_json::to_string(&self.value).map_err(|_| fmt::Error)?;
            f.write_str(&quoted)
        } else {
            f.write_str(&self.value)
        }
    }
}

impl std::str::FromStr for Matcher {
    type Err = MatcherError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Matcher::parse(s)
    }
}

impl serde::Serialize for Matcher {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Matcher {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Matcher::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether every matcher of `matchers` picks `message` (an empty list picks everything).
pub fn all_match(matchers: &[Matcher], message: &Message) -> bool {
    matchers.iter().all(|m| m.matches(message))
}

/// Whether `matchers` would pick every message: each of them matches the empty value, so a
/// message without those labels is picked. A silence refuses such a list, as Alertmanager
/// does, so a typo cannot mute everything.
pub fn picks_everything(matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.matches_value(""))
}

/// Whether `name` is a label name: a letter or `_`, then letters, digits or `_`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Characters a bare value cannot hold.
fn needs_quotes(c: char) -> bool {
    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | ',' | '{' | '}' | '\'')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tocsin_message::Severity;

    fn message(labels: &[(&str, &str)]) -> Message {
        Message::with_labels("m", Severity::Warning, labels)
    }

    fn m(text: &str) -> Matcher {
        Matcher::parse(text).unwrap()
    }

    #[test]
    fn each_operator_compares_as_alertmanager_does() {
        let db1 = message(&[("host", "db1"), ("alertname", "DiskFull")]);
        assert!(m("host=db1").matches(&db1));
        assert!(!m("host=db2").matches(&db1));
        assert!(m("host!=db2").matches(&db1));
        assert!(!m("host!=db1").matches(&db1));
        assert!(m("alertname=~\"Disk.*\"").matches(&db1));
        assert!(m("alertname=~Disk.*").matches(&db1));
        assert!(!m("host=~db").matches(&db1), "the whole value must match");
        assert!(m("host!~\"web.*|cache\"").matches(&db1));
        assert!(!m("host!~db.").matches(&db1));
    }

    #[test]
    fn a_missing_label_is_the_empty_value() {
        let bare = message(&[]);
        assert!(m("host=\"\"").matches(&bare));
        assert!(!m("host!=\"\"").matches(&bare));
        assert!(m("host!=db1").matches(&bare));
        assert!(m("host=~\".*\"").matches(&bare));
    }

    #[test]
    fn severity_falls_back_to_the_messages_own() {
        assert!(m("severity=warning").matches(&message(&[])));
        assert!(m("severity=~\"warning|error\"").matches(&message(&[])));
        // A label of that name wins (Alertmanager alerts carry theirs).
        assert!(m("severity=critical").matches(&message(&[("severity", "critical")])));
    }

    #[test]
    fn spaces_quotes_and_escapes_are_read() {
        assert_eq!(m(" host = db1 ").value, "db1");
        let quoted = m(r#"summary="disk \"data\" full""#);
        assert_eq!(quoted.value, "disk \"data\" full");
        assert_eq!(quoted.to_string(), r#"summary="disk \"data\" full""#);
        assert_eq!(m("host=\"\"").to_string(), "host=\"\"");
    }

    #[test]
    fn bad_matchers_say_what_is_wrong() {
        let why = |text: &str| Matcher::parse(text).unwrap_err().why;
        assert!(why("host").contains("no operator"), "{}", why("host"));
        assert!(why("host>db1").contains("not an operator"));
        assert!(why("1host=db1").contains("not a label name"));
        assert!(why("=db1").contains("not a label name"));
        assert!(why("host=db 1").contains("double quotes"));
        assert!(why("host=\"db1").contains("quoted value"));
        assert!(why("host=~\"(db\"").contains("not a regular expression"));
        assert!(why(&format!("host={}", "x".repeat(2000))).contains("at most 1024"));
    }

    #[test]
    fn a_list_that_picks_everything_is_recognised() {
        assert!(picks_everything(&[m("host=~\".*\"")]));
        assert!(picks_everything(&[m("host!=db1"), m("env=\"\"")]));
        assert!(picks_everything(&[]));
        assert!(!picks_everything(&[m("host!=db1"), m("env=prod")]));
    }

    fn op() -> impl Strategy<Value = MatchOp> {
        prop_oneof![
            Just(MatchOp::Equal),
            Just(MatchOp::NotEqual),
            Just(MatchOp::Regex),
            Just(MatchOp::NotRegex),
        ]
    }

    proptest! {
        /// What a matcher writes, `parse` reads back: the CLI, the API and the store use the
        /// written form.
        #[test]
        fn a_written_matcher_reads_back(
            name in "[A-Za-z_][A-Za-z0-9_]{0,12}",
            op in op(),
            value in "\\PC{0,24}",
        ) {
            // A value that is not a valid regex cannot make a regex matcher.
            if let Ok(matcher) = Matcher::new(&name, op, &value) {
                let written = matcher.to_string();
                let read = Matcher::parse(&written).unwrap();
                prop_assert_eq!(&read, &matcher);
                let json = serde_json::to_string(&matcher).unwrap();
                prop_assert_eq!(serde_json::from_str::<Matcher>(&json).unwrap(), matcher);
            }
        }

        /// `=` and `!=` (and `=~`, `!~` of an escaped value) are exact opposites, and `=~` of
        /// an escaped value is `=`.
        #[test]
        fn negations_are_complements(
            value in "\\PC{0,12}",
            label in proptest::option::of("\\PC{0,12}"),
        ) {
            let labels: Vec<(&str, &str)> = label.iter().map(|v| ("host", v.as_str())).collect();
            let msg = message(&labels);
            let eq = Matcher::new("host", MatchOp::Equal, &value).unwrap();
            let ne = Matcher::new("host", MatchOp::NotEqual, &value).unwrap();
            let re = Matcher::new("host", MatchOp::Regex, &regex::escape(&value)).unwrap();
            let nre = Matcher::new("host", MatchOp::NotRegex, &regex::escape(&value)).unwrap();
            prop_assert_ne!(eq.matches(&msg), ne.matches(&msg));
            prop_assert_ne!(re.matches(&msg), nre.matches(&msg));
            prop_assert_eq!(eq.matches(&msg), re.matches(&msg));
        }

        /// Anything at all is answered with a matcher or an error, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,40}") {
            let _ = Matcher::parse(&text);
        }
    }
}
