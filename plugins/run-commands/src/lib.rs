//! `run-commands`: answers chat commands — status, open alerts, acknowledgements, silences —
//! through the server's `control` interface (contract 0.2.1).
//!
//! A filter for a command pipeline: `matrix-commands` reads `!status db1` from a room, this
//! filter does what it asks and turns it into the answer, and the `matrix` sink posts the
//! answer in the room, in reply to the command. Commands:
//!
//! | command | does | group |
//! |---|---|---|
//! | `!status [host]` | a host's latest metrics and open alerts; without a host, one line per host | `status` |
//! | `!alerts` | the open alerts, with the ids `!ack` takes | `status` |
//! | `!ack <id> [comment]` | acknowledges an open alert: its reminders stay back until it resolves | `ack` |
//! | `!silence <matchers> <duration> [reason]` | mutes what matches, e.g. `!silence host=db1 1h kernel upgrade` | `silence` |
//! | `!silences` | the silences in force or pending | `silence` |
//! | `!unsilence <id>` | ends a silence | `silence` |
//! | `!help` | lists the commands | none |
//!
//! Who may do what is the pipeline file's `grants.control`, which the host enforces; someone it
//! does not list gets a polite refusal, or nothing with `refusals = "ignore"`.
//!
//! ```toml
//! [[filter]]
//! plugin = "run-commands"
//! grants = { control = { status = ["*"], ack = ["@alice:example.org"], silence = ["@alice:example.org"] } }
//! ```
//! The answer keeps the command's `matrix_room` and `matrix_event` labels (where and to what
//! the `matrix` sink replies) and carries no `host` label, so a silence of a host never mutes
//! the answer to a command about it.

use serde::Deserialize;
use tocsin_sdk::control::{self, ControlError, HostStatus, OpenAlert, SilenceInfo};
use tocsin_sdk::{export_filter, severity_emoji, Filter, Message, MessageExt, Severity};

/// Answers chat commands (`!status`, `!alerts`, `!ack`, `!silence`, `!unsilence`, `!help`)
/// through the server's control interface.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// What a command begins with.
    #[serde(default = "bang")]
    prefix: String,
    /// The label naming who asked.
    #[serde(default = "sender_label")]
    sender_label: String,
    /// What someone the pipeline does not allow gets: `reply` (a polite refusal) or `ignore`
    /// (nothing).
    #[cfg_attr(test, schemars(extend("enum" = ["reply", "ignore"])))]
    #[serde(default = "reply")]
    refusals: String,
    /// The comment of an acknowledgement made without one.
    #[serde(default = "default_ack_comment")]
    ack_comment: String,
}

fn reply() -> String {
    "reply".into()
}

fn bang() -> String {
    "!".into()
}

fn sender_label() -> String {
    "matrix_sender".into()
}

fn default_ack_comment() -> String {
    "acknowledged from the chat".into()
}

/// One command as parsed.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    Help,
    Status(Option<String>),
    Alerts,
    Ack {
        id: String,
        comment: Option<String>,
    },
    Silence {
        matchers: Vec<String>,
        duration_ms: u64,
        reason: Option<String>,
    },
    Silences,
    Unsilence(String),
}

/// Splits a command line into words; double quotes keep spaces inside a word
/// (`alertname=~"Disk .*"` is one word, quotes kept, as a matcher wants them).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c);
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// `90s`, `30m`, `2h`, `1d`, `1w`, or several run together (`1h30m`), in ms.
fn duration_ms(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 604_800_000,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
        any = true;
    }
    (any && number.is_empty() && total > 0).then_some(total)
}

/// Whether `word` reads as a label matcher (`name=value`, `!=`, `=~`, `!~`).
fn is_matcher(word: &str) -> bool {
    let Some(at) = word.find(['=', '!', '~']) else {
        return false;
    };
    let name = &word[..at];
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && ["=", "!=", "=~", "!~"]
            .iter()
            .any(|op| word[at..].starts_with(op))
}

const USAGE_SILENCE: &str =
    "usage: !silence <matchers> <duration> [reason], e.g. !silence host=db1 1h kernel upgrade";

/// Parses the text after the prefix; `Err` is the answer for a command written wrong.
fn parse(text: &str) -> Result<Command, String> {
    let words = words(text);
    let Some((name, args)) = words.split_first() else {
        return Ok(Command::Help);
    };
    let rest = |from: usize| -> Option<String> {
        let joined = args.get(from..).unwrap_or_default().join(" ");
        (!joined.trim().is_empty()).then_some(joined)
    };
    match name.to_ascii_lowercase().as_str() {
        "help" => Ok(Command::Help),
        "status" => match args {
            [] => Ok(Command::Status(None)),
            [host] => Ok(Command::Status(Some(host.clone()))),
            _ => Err("usage: !status [host]".into()),
        },
        "alerts" => Ok(Command::Alerts),
        "ack" => match args.first() {
            Some(id) => Ok(Command::Ack {
                id: id.clone(),
                comment: rest(1),
            }),
            None => Err("usage: !ack <id> [comment] (!alerts lists the ids)".into()),
        },
        "silence" => {
            let matchers: Vec<String> =
                args.iter().take_while(|w| is_matcher(w)).cloned().collect();
            if matchers.is_empty() {
                return Err(USAGE_SILENCE.into());
            }
            let Some(duration_ms) = args.get(matchers.len()).and_then(|d| duration_ms(d)) else {
                return Err(USAGE_SILENCE.into());
            };
            Ok(Command::Silence {
                reason: rest(matchers.len() + 1),
                matchers,
                duration_ms,
            })
        }
        "silences" => Ok(Command::Silences),
        "unsilence" => match args {
            [id] => Ok(Command::Unsilence(id.clone())),
            _ => Err("usage: !unsilence <id> (!silences lists the ids)".into()),
        },
        other => Err(format!("I do not know `{other}`. !help lists what I do.")),
    }
}

/// An answer: a title and lines.
struct Answer {
    title: String,
    lines: Vec<String>,
}

impl Answer {
    fn new(title: impl Into<String>) -> Answer {
        Answer {
            title: title.into(),
            lines: Vec::new(),
        }
    }

    fn line(mut self, line: impl Into<String>) -> Answer {
        self.lines.push(line.into());
        self
    }
}

fn help(prefix: &str) -> Answer {
    let p = prefix;
    Answer::new("What I answer")
        .line(format!(
            "{p}status [host] — a host's latest metrics and open alerts"
        ))
        .line(format!("{p}alerts — the open alerts and their ids"))
        .line(format!("{p}ack <id> [comment] — acknowledge an open alert"))
        .line(format!(
            "{p}silence <matchers> <duration> [reason] — e.g. {p}silence host=db1 1h kernel upgrade"
        ))
        .line(format!("{p}silences — the silences in force"))
        .line(format!("{p}unsilence <id> — end a silence"))
}

/// `42.5`, `0.25`, `1200`: a reading as a person reads it.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// `just now`, `5 min ago`, `3 h ago`, `2 days ago`.
fn ago(then_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

fn alert_line(a: &OpenAlert, now_ms: u64) -> String {
    let what = a.summary.clone().unwrap_or_else(|| {
        a.labels
            .iter()
            .find(|(k, _)| k == "alertname")
            .map_or_else(|| "an alert".to_string(), |(_, v)| v.clone())
    });
    let mut line = format!(
        "{}[{}] {what} — {}, since {}",
        severity_emoji(a.severity),
        a.id,
        a.pipeline,
        ago(a.since_ms, now_ms)
    );
    if let Some(by) = &a.acknowledged_by {
        line += &format!(", acknowledged by {by}");
    }
    line
}

fn host_answer(status: &HostStatus, now_ms: u64) -> Answer {
    let mut answer = Answer::new(format!("Status of {}", status.host));
    for r in &status.readings {
        answer = answer.line(format!(
            "{} {} ({}, {})",
            r.metric,
            number(r.value),
            r.pipeline,
            ago(r.at_ms, now_ms)
        ));
    }
    answer = if status.alerts.is_empty() {
        answer.line("No open alerts.")
    } else {
        answer.line(format!("Open alerts ({}):", status.alerts.len()))
    };
    for a in &status.alerts {
        answer = answer.line(alert_line(a, now_ms));
    }
    answer
}

fn hosts_answer(hosts: &[HostStatus]) -> Answer {
    let mut answer = Answer::new(format!("{} hosts", hosts.len()));
    for h in hosts {
        let alerts = match h.alerts.len() {
            0 => "no open alerts".to_string(),
            1 => "1 open alert".to_string(),
            n => format!("{n} open alerts"),
        };
        answer = answer.line(format!(
            "{}: {} readings, {alerts}",
            h.host,
            h.readings.len()
        ));
    }
    answer
}

fn silence_line(s: &SilenceInfo, now_ms: u64) -> String {
    let state = if s.ends_at_ms <= now_ms {
        "ended".to_string()
    } else if s.starts_at_ms > now_ms {
        "pending".to_string()
    } else {
        format!("ends in {}", left(s.ends_at_ms - now_ms))
    };
    format!(
        "[{}] {} — {state}, by {}: {}",
        s.id,
        s.matchers.join(" "),
        s.created_by,
        s.comment
    )
}

/// `59 min`, `3 h 20 min`, `2 days`.
fn left(ms: u64) -> String {
    let m = ms.div_ceil(60_000);
    match m {
        0..=59 => format!("{m} min"),
        60..=2879 if m.is_multiple_of(60) => format!("{} h", m / 60),
        60..=2879 => format!("{} h {} min", m / 60, m % 60),
        _ => format!("{} days", m / 1440),
    }
}

struct RunCommands {
    config: Config,
}

impl RunCommands {
    /// What `command` asked by `who` (the command `request`) answers, or `None` when a
    /// refusal is to be ignored.
    fn run(&self, command: Command, who: &str, request: &str, now_ms: u64) -> Option<Answer> {
        let outcome: Result<Answer, ControlError> = match command {
            Command::Help => Ok(help(&self.config.prefix)),
            Command::Status(host) => {
                control::status(who, host.as_deref()).map(|hosts| match (host, hosts.as_slice()) {
                    (Some(_), [one]) => host_answer(one, now_ms),
                    (Some(host), _) => Answer::new(format!("Status of {host}"))
                        .line("Nothing known: no readings and no open alerts."),
                    (None, []) => Answer::new("No hosts reported yet."),
                    (None, all) => hosts_answer(all),
                })
            }
            Command::Alerts => control::alerts(who).map(|alerts| {
                if alerts.is_empty() {
                    return Answer::new("No open alerts.");
                }
                alerts.iter().fold(
                    Answer::new(format!("Open alerts ({})", alerts.len())),
                    |a, x| a.line(alert_line(x, now_ms)),
                )
            }),
            Command::Ack { id, comment } => {
                let comment = comment.unwrap_or_else(|| self.config.ack_comment.clone());
                control::acknowledge(who, &id, &comment, None).map(|a| {
                    Answer::new(format!("Acknowledged [{}]", a.id))
                        .line(alert_line(&a, now_ms))
                        .line(format!("Reminders stay back until it resolves. {comment}"))
                })
            }
            Command::Silence {
                matchers,
                duration_ms,
                reason,
            } => {
                let reason = reason.unwrap_or_else(|| format!("silenced from the chat by {who}"));
                control::silence(who, request, &matchers, duration_ms, &reason).map(|s| {
                    Answer::new(format!("Silenced [{}]", s.id))
                        .line(silence_line(&s, now_ms))
                        .line(format!("{}unsilence {} ends it.", self.config.prefix, s.id))
                })
            }
            Command::Silences => control::silences(who).map(|all| {
                if all.is_empty() {
                    return Answer::new("No silences.");
                }
                all.iter()
                    .fold(Answer::new(format!("Silences ({})", all.len())), |a, s| {
                        a.line(silence_line(s, now_ms))
                    })
            }),
            Command::Unsilence(id) => control::unsilence(who, &id).map(|s| {
                Answer::new(format!("Ended silence [{}]", s.id)).line(silence_line(&s, now_ms))
            }),
        };
        match outcome {
            Ok(answer) => Some(answer),
            Err(ControlError::Denied(_)) if self.config.refusals == "ignore" => None,
            Err(ControlError::Denied(why)) => {
                Some(Answer::new("Sorry, you may not do that here.").line(why))
            }
            Err(e) => Some(Answer::new("That did not work.").line(control::explain(&e))),
        }
    }
}

impl Filter for RunCommands {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.prefix.trim().is_empty() {
            return Err("prefix must not be empty".into());
        }
        if !matches!(config.refusals.as_str(), "reply" | "ignore") {
            return Err(format!(
                "refusals `{}` must be reply or ignore",
                config.refusals
            ));
        }
        if config.ack_comment.trim().is_empty() {
            return Err("ack_comment must not be empty".into());
        }
        Ok(RunCommands { config })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        let Some(text) = msg.body.trim().strip_prefix(self.config.prefix.as_str()) else {
            return Ok(Vec::new());
        };
        let Some(who) = msg.label(&self.config.sender_label).map(str::to_string) else {
            tocsin_sdk::host::warn(&format!(
                "a command without a `{}` label, dropped",
                self.config.sender_label
            ));
            return Ok(Vec::new());
        };
        let answer = match parse(text) {
            Ok(command) => self.run(command, &who, &msg.id, msg.timestamp_ms),
            Err(usage) => Some(Answer::new(usage)),
        };
        let Some(answer) = answer else {
            return Ok(Vec::new());
        };
        let mut reply = Message::new(msg.id.clone(), msg.timestamp_ms, answer.lines.join("\n"));
        reply.summary = Some(answer.title);
        reply.severity = Severity::None;
        for name in ["matrix_room", "matrix_event"] {
            if let Some(value) = msg.label(name) {
                reply.set_label(name, value);
            }
        }
        reply.set_label("command", text.split_whitespace().next().unwrap_or("help"));
        Ok(vec![reply])
    }
}

export_filter!(RunCommands);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_into_a_matcher_a_duration_and_a_reason() {
        assert_eq!(
            parse("silence host=db1 1h kernel upgrade"),
            Ok(Command::Silence {
                matchers: vec!["host=db1".into()],
                duration_ms: 3_600_000,
                reason: Some("kernel upgrade".into()),
            })
        );
    }

    #[test]
    fn quoted_matchers_keep_their_spaces_and_several_matchers_are_read() {
        assert_eq!(
            parse(r#"silence alertname=~"Disk .*" host!=db2 1h30m"#),
            Ok(Command::Silence {
                matchers: vec![r#"alertname=~"Disk .*""#.into(), "host!=db2".into()],
                duration_ms: 5_400_000,
                reason: None,
            })
        );
    }

    #[test]
    fn a_silence_without_matchers_or_duration_gets_its_usage() {
        for wrong in [
            "silence",
            "silence 1h",
            "silence host=db1",
            "silence host=db1 soon",
        ] {
            assert_eq!(parse(wrong), Err(USAGE_SILENCE.to_string()), "{wrong}");
        }
    }

    #[test]
    fn commands_are_read_whatever_their_case_and_unknown_ones_are_named() {
        assert_eq!(parse("STATUS db1"), Ok(Command::Status(Some("db1".into()))));
        assert_eq!(parse("status"), Ok(Command::Status(None)));
        assert_eq!(parse(""), Ok(Command::Help));
        assert_eq!(
            parse("ack 3fa2 on it, disk ordered"),
            Ok(Command::Ack {
                id: "3fa2".into(),
                comment: Some("on it, disk ordered".into())
            })
        );
        assert_eq!(
            parse("unsilence abcd"),
            Ok(Command::Unsilence("abcd".into()))
        );
        assert!(parse("reboot db1").unwrap_err().contains("`reboot`"));
        assert!(parse("status db1 db2").is_err());
    }

    #[test]
    fn durations_take_units_and_refuse_the_rest() {
        assert_eq!(duration_ms("90s"), Some(90_000));
        assert_eq!(duration_ms("2d"), Some(172_800_000));
        assert_eq!(duration_ms("1w"), Some(604_800_000));
        for wrong in ["", "1", "h", "1x", "0m", "-1h", "1.5h"] {
            assert_eq!(duration_ms(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn readings_and_times_read_as_a_person_reads_them() {
        assert_eq!(number(42.0), "42");
        assert_eq!(number(42.456), "42.46");
        assert_eq!(number(1234.56), "1234.6");
        assert_eq!(ago(0, 30_000), "just now");
        assert_eq!(ago(0, 5 * 60_000), "5 min ago");
        assert_eq!(ago(0, 3 * 3_600_000), "3 h ago");
        assert_eq!(left(3_600_000), "1 h");
        assert_eq!(left(3_600_000 + 60_000), "1 h 1 min");
        assert_eq!(left(1_000), "1 min");
    }

    #[test]
    fn a_host_answer_lists_readings_then_alerts() {
        let status = HostStatus {
            host: "db1".into(),
            readings: vec![control::Reading {
                pipeline: "metrics".into(),
                metric: "cpu-percent".into(),
                value: 97.5,
                at_ms: 0,
            }],
            alerts: vec![OpenAlert {
                id: "3fa2c1d0".into(),
                pipeline: "metrics".into(),
                summary: Some("CPU high on db1".into()),
                severity: Severity::Error,
                labels: vec![],
                since_ms: 0,
                acknowledged_by: Some("@alice:example.org".into()),
            }],
        };
        let answer = host_answer(&status, 120_000);
        assert_eq!(answer.title, "Status of db1");
        assert_eq!(
            answer.lines,
            vec![
                "cpu-percent 97.50 (metrics, 2 min ago)".to_string(),
                "Open alerts (1):".to_string(),
                format!(
                    "{}[3fa2c1d0] CPU high on db1 — metrics, since 2 min ago, acknowledged by @alice:example.org",
                    severity_emoji(Severity::Error)
                ),
            ]
        );
    }
}
