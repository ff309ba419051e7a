//! `template`: rewrites a message's summary and/or body from Jinja templates.
//!
//! ```toml
//! [[filter]]
//! plugin = "template"
//! config = { summary = "{{ labels.host }}: {{ summary }}", body = "{{ body }} ({{ metrics['cpu-percent'] }} %)" }
//! ```
//! Templates see `id`, `severity`, `emoji`, `summary`, `body`, `labels`, `metrics`, `payload`,
//! `timestamp_ms`, `link`, `key`. The filters `duration`, `bytes` and `percent` say numbers for
//! people: `{{ metrics['backup-age-seconds'] | duration }}` is "3 days", `| bytes` "92.3 GiB",
//! `| percent` "92 %". `emoji = true` puts the severity's emoji where the Janitor bot did — before
//! the summary when there is one, else before the body — for sinks that show none themselves
//! (the matrix and mastodon sinks already do).

use serde::Deserialize;
use tocsin_sdk::template::Template;
use tocsin_sdk::{export_filter, severity_emoji, Filter, Message};

/// Rewrites a message's summary and/or body from Jinja templates.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// A Jinja template for the new summary; the summary is kept when absent.
    summary: Option<String>,
    /// A Jinja template for the new body; the body is kept when absent.
    body: Option<String>,
    /// Put the severity's emoji before the summary (or the body when there is no summary).
    #[serde(default)]
    emoji: bool,
}

struct Rewrite {
    summary: Option<Template>,
    body: Option<Template>,
    emoji: bool,
}

impl Filter for Rewrite {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if c.summary.is_none() && c.body.is_none() && !c.emoji {
            return Err("set `summary`, `body` or `emoji = true`".into());
        }
        Ok(Rewrite {
            summary: c
                .summary
                .map(|s| Template::compile("summary", &s))
                .transpose()?,
            body: c.body.map(|s| Template::compile("body", &s)).transpose()?,
            emoji: c.emoji,
        })
    }

    fn process(&mut self, mut msg: Message) -> Result<Vec<Message>, String> {
        let summary = self.summary.as_ref().map(|t| t.render(&msg)).transpose()?;
        let body = self.body.as_ref().map(|t| t.render(&msg)).transpose()?;
        if let Some(s) = summary {
            msg.summary = if s.is_empty() { None } else { Some(s) };
        }
        if let Some(b) = body {
            msg.body = b;
        }
        if self.emoji {
            let mark = severity_emoji(msg.severity);
            match &mut msg.summary {
                Some(s) => s.insert_str(0, mark),
                None => msg.body.insert_str(0, mark),
            }
        }
        Ok(vec![msg])
    }
}

export_filter!(Rewrite);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::{MessageExt, Severity};

    fn filter(c: serde_json::Value) -> Rewrite {
        Rewrite::new(serde_json::from_value(c).unwrap()).unwrap()
    }

    #[test]
    fn templates_see_labels_and_metrics() {
        let mut m = Message::new("1", 0, "cpu high");
        m.set_label("host", "db1");
        m.set_metric("cpu-percent", 93.5);
        let mut f = filter(
            serde_json::json!({"summary": "{{ labels.host }}", "body": "{{ body }}: {{ metrics['cpu-percent'] }} %"}),
        );
        let out = f.process(m).unwrap();
        assert_eq!(out[0].summary.as_deref(), Some("db1"));
        assert_eq!(out[0].body, "cpu high: 93.5 %");
    }

    #[test]
    fn numbers_are_said_for_people_by_the_unit_filters() {
        let mut m = Message::new("1", 0, "stale");
        m.set_metric("backup-age-seconds", 259_393.0);
        m.set_metric("backup-size-bytes", 99_103_948_390.0);
        m.set_metric("disk-used-percent", 92.04);
        let mut f = filter(
            serde_json::json!({"body": "the newest backup is {{ metrics['backup-age-seconds'] | duration }} old ({{ metrics['backup-size-bytes'] | bytes }}), disk {{ metrics['disk-used-percent'] | percent }} full"}),
        );
        assert_eq!(
            f.process(m).unwrap()[0].body,
            "the newest backup is 3 days old (92.3 GiB), disk 92 % full"
        );
    }

    #[test]
    fn emoji_goes_where_janitor_put_it() {
        let mut f = filter(serde_json::json!({"emoji": true}));
        let mut m = Message::new("1", 0, "disk full");
        m.severity = Severity::Alert;
        assert_eq!(f.process(m.clone()).unwrap()[0].body, "🚨 disk full");
        m.summary = Some("db1".into());
        let out = f.process(m).unwrap();
        assert_eq!(
            (out[0].summary.as_deref(), out[0].body.as_str()),
            (Some("🚨 db1"), "disk full")
        );
    }

    #[test]
    fn broken_templates_are_init_errors() {
        let e = Rewrite::new(
            serde_json::from_value(serde_json::json!({"body": "{{ unclosed"})).unwrap(),
        )
        .err()
        .unwrap();
        assert!(e.contains("template `body`"), "{e}");
        assert!(Rewrite::new(serde_json::from_value(serde_json::json!({})).unwrap()).is_err());
    }
}
