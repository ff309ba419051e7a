//! `mastodon`: posts each message as a status on Mastodon, Pleroma or Akkoma.
//!
//! `POST {instance}/api/v1/statuses` with `Authorization: Bearer <token>` and
//! `Idempotency-Key: <idempotency key>` (Mastodon keeps keys for an hour, so a retry within it
//! posts once). The summary becomes `spoiler_text` (the post hides behind it); the severity's
//! emoji goes where the Janitor bot put it: before the summary when there is one, else before
//! the text.
//!
//! ```toml
//! [[sink]]
//! name   = "fediverse"
//! plugin = "mastodon"
//! config = { instance = "https://mastodon.example", visibility = "unlisted" }
//! grants = { hosts = ["mastodon.example"], secrets = { access_token = "env:MASTODON_TOKEN" } }
//! ```
//! `flavor = "pleroma"` (or `"akkoma"`) adds `content_type` (default `text/plain`; Mastodon
//! itself takes plain text only). Outcomes: 2xx delivered; 429 rate-limited until
//! `X-RateLimit-Reset`; other 4xx permanent; 5xx and network errors retryable.

use serde::Deserialize;
use tocsin_sdk::http::Request;
use tocsin_sdk::{
    export_sink, host, severity_emoji, DeliveryError, Group, Message, Notification, Sink,
};

/// Posts each message as a status on Mastodon (or Pleroma, Akkoma), with the delivery's idempotency key as `Idempotency-Key`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Base URL of the instance, such as `https://mastodon.example`.
    #[cfg_attr(test, schemars(extend("pattern" = "^https?://")))]
    instance: String,
    /// `public`, `unlisted` (default), `private` or `direct`.
    #[cfg_attr(test, schemars(extend("enum" = ["public", "unlisted", "private", "direct"])))]
    #[serde(default = "unlisted")]
    visibility: String,
    /// `mastodon` (default), `pleroma` or `akkoma`.
    #[cfg_attr(test, schemars(extend("enum" = ["mastodon", "pleroma", "akkoma"])))]
    #[serde(default = "mastodon")]
    flavor: String,
    /// Pleroma/Akkoma only: `text/plain` (default), `text/markdown` or `text/html`.
    content_type: Option<String>,
    /// ISO 639 language of the posts, if set.
    language: Option<String>,
    /// Longest status text; longer ones are cut with `…` (Mastodon's default limit is 500).
    #[serde(default = "max_chars")]
    max_chars: usize,
    /// The name of the granted secret holding the access token.
    #[serde(default = "token_name")]
    token_secret: String,
}

fn unlisted() -> String {
    "unlisted".into()
}
fn mastodon() -> String {
    "mastodon".into()
}
fn max_chars() -> usize {
    500
}
fn token_name() -> String {
    "access_token".into()
}

struct Mastodon {
    url: String,
    config: Config,
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The characters Mastodon counts for a URL in a status, however long it is.
const URL_CHARS: usize = 23;

/// The JSON body of the status for a message.
fn status_body(msg: &Message, c: &Config) -> serde_json::Value {
    let mark = severity_emoji(msg.severity);
    // A body that only repeats the summary is said once.
    let summary = msg.summary.as_ref().filter(|s| s.trim() != msg.body.trim());
    let (status, spoiler) = match summary {
        Some(summary) => (msg.body.clone(), Some(format!("{mark}{summary}"))),
        None => (format!("{mark}{}", msg.body), None),
    };
    // Mastodon counts any URL as 23 characters (`characters_reserved_per_url`), whatever its
    // length: the text is cut to what is left beside the link on its own line.
    let status = match &msg.link {
        Some(link) => format!(
            "{}\n{link}",
            cut(&status, c.max_chars.saturating_sub(URL_CHARS + 1))
        ),
        None => cut(&status, c.max_chars),
    };
    let mut body = serde_json::json!({
        "status": status,
        "visibility": c.visibility,
    });
    if let Some(spoiler) = spoiler {
        body["spoiler_text"] = spoiler.into();
    }
    if c.flavor != "mastodon" {
        body["content_type"] = c
            .content_type
            .clone()
            .unwrap_or_else(|| "text/plain".into())
            .into();
    }
    if let Some(lang) = &c.language {
        body["language"] = lang.clone().into();
    }
    body
}

/// A group's notification as one message whose text fits `max_chars`: a line per alert while
/// they fit beside an "and N more" line counting the rest.
fn group_status(notification: &Notification, group: &Group, max_chars: usize) -> Message {
    let mut msg = tocsin_sdk::group::group_digest(notification, group);
    let lines: Vec<String> = notification
        .messages
        .iter()
        .map(tocsin_sdk::group::group_line)
        .collect();
    let total = lines.len();
    let mut body = String::new();
    for (shown, line) in lines.iter().enumerate() {
        let rest = total - shown - 1;
        let tail = if rest > 0 {
            format!("\nand {rest} more")
        } else {
            String::new()
        };
        let sep = if body.is_empty() { "" } else { "\n" };
        let with = body.chars().count() + sep.len() + line.chars().count() + tail.chars().count();
        if with > max_chars {
            let more = total - shown;
            body += &format!("{sep}and {more} more");
            break;
        }
        body += sep;
        body += line;
    }
    msg.body = body;
    msg.link = None;
    msg
}

/// Milliseconds until an `X-RateLimit-Reset` timestamp; at least 1 s.
fn until(reset: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339_weak(reset.trim()).ok()?;
    let ms = at
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_millis() as u64);
    Some(ms.max(1000))
}

impl Sink for Mastodon {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(c.instance.starts_with("https://") || c.instance.starts_with("http://")) {
            return Err(format!(
                "instance `{}` must start with https:// or http://",
                c.instance
            ));
        }
        if !matches!(
            c.visibility.as_str(),
            "public" | "unlisted" | "private" | "direct"
        ) {
            return Err(format!(
                "visibility `{}` must be public, unlisted, private or direct",
                c.visibility
            ));
        }
        if !matches!(c.flavor.as_str(), "mastodon" | "pleroma" | "akkoma") {
            return Err(format!(
                "flavor `{}` must be mastodon, pleroma or akkoma",
                c.flavor
            ));
        }
        if c.flavor == "mastodon"
            && c.content_type
                .as_deref()
                .is_some_and(|ct| ct != "text/plain")
        {
            return Err(
                "Mastodon takes text/plain only; content_type needs flavor pleroma or akkoma"
                    .into(),
            );
        }
        if let Some(ct) = &c.content_type {
            if !matches!(ct.as_str(), "text/plain" | "text/markdown" | "text/html") {
                return Err(format!(
                    "content_type `{ct}` must be text/plain, text/markdown or text/html"
                ));
            }
        }
        Ok(Mastodon {
            url: format!("{}/api/v1/statuses", c.instance.trim_end_matches('/')),
            config: c,
        })
    }

    /// A group of alerts is one status: its title as the content warning, as many alerts as
    /// fit the instance's limit, then "and N more".
    fn deliver_notification(
        &mut self,
        notification: Notification,
        key: &str,
    ) -> Result<(), DeliveryError> {
        match &notification.group {
            Some(group) => {
                let msg = group_status(&notification, group, self.config.max_chars);
                self.deliver(msg, key)
            }
            None => {
                let msg = tocsin_sdk::group::only_message(notification)?;
                self.deliver(msg, key)
            }
        }
    }

    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        let token = host::require_secret(&self.config.token_secret)?;
        let response = Request::post(&self.url)
            .header("authorization", &format!("Bearer {token}"))
            .header("idempotency-key", key)
            .json(&status_body(&msg, &self.config))
            .send()?;
        let retry_after = match response.status {
            429 => response.header("x-ratelimit-reset").and_then(until),
            _ => None,
        };
        response.delivery_outcome(retry_after)
    }
}

export_sink!(Mastodon);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::{MessageExt, Severity};

    fn config(flavor: &str) -> Config {
        serde_json::from_value(
            serde_json::json!({"instance": "https://m.example", "flavor": flavor}),
        )
        .unwrap()
    }

    #[test]
    fn the_emoji_goes_before_the_summary_or_else_the_text() {
        let mut m = Message::new("1", 0, "disk / is 93 % full");
        m.severity = Severity::Warning;
        let b = status_body(&m, &config("mastodon"));
        assert_eq!(b["status"], "⚠️ disk / is 93 % full");
        assert!(b.get("spoiler_text").is_none());
        assert!(
            b.get("content_type").is_none(),
            "Mastodon gets no content_type"
        );
        m.summary = Some("db1".into());
        let b = status_body(&m, &config("pleroma"));
        assert_eq!(b["spoiler_text"], "⚠️ db1");
        assert_eq!(b["status"], "disk / is 93 % full");
        assert_eq!(b["content_type"], "text/plain");
        assert_eq!(b["visibility"], "unlisted");
    }

    #[test]
    fn a_body_that_repeats_the_summary_is_said_once() {
        let mut m = Message::new("1", 0, "e2e alert i-45");
        m.severity = Severity::Warning;
        m.summary = Some("e2e alert i-45".into());
        let b = status_body(&m, &config("mastodon"));
        assert_eq!(b["status"], "⚠️ e2e alert i-45");
        assert!(b.get("spoiler_text").is_none());
    }

    #[test]
    fn long_statuses_are_cut_and_bad_configs_refused() {
        let m = Message::new("1", 0, "x".repeat(600));
        assert_eq!(
            status_body(&m, &config("mastodon"))["status"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            500
        );
        let mut linked = m.clone();
        linked.link = Some(format!("https://ci.example/{}", "r".repeat(200)));
        let status = status_body(&linked, &config("mastodon"))["status"]
            .as_str()
            .unwrap()
            .to_string();
        let (text, link) = status.split_once('\n').unwrap();
        assert_eq!(link, linked.link.as_deref().unwrap(), "the link is whole");
        assert_eq!(
            text.chars().count() + 1 + URL_CHARS,
            500,
            "the text is cut to what Mastodon leaves beside a URL"
        );
        let bad = serde_json::json!({"instance": "m.example"});
        assert!(Mastodon::new(serde_json::from_value(bad).unwrap()).is_err());
        let bad = serde_json::json!({"instance": "https://m.example", "content_type": "text/html"});
        assert!(Mastodon::new(serde_json::from_value(bad).unwrap())
            .err()
            .unwrap()
            .contains("pleroma"));
    }

    #[test]
    fn rate_limit_reset_is_read_as_a_time() {
        let later = humantime::format_rfc3339(
            std::time::SystemTime::now() + std::time::Duration::from_secs(30),
        )
        .to_string();
        let ms = until(&later).unwrap();
        assert!((25_000..=30_000).contains(&ms), "{ms}");
        assert_eq!(until("2000-01-01T00:00:00Z"), Some(1000));
        assert_eq!(until("soon"), None);
    }

    #[test]
    fn a_group_fits_the_instance_limit_and_counts_the_rest() {
        let messages: Vec<Message> = (0..30)
            .map(|i| {
                let mut m = Message::new(format!("m{i}"), 1, "/ is 97 % full");
                m.summary = Some(format!("Disk full on host{i}"));
                m.severity = Severity::Warning;
                m
            })
            .collect();
        let group = Group {
            labels: vec![("alertname".into(), "DiskFull".into())],
            key: "k".into(),
            sequence: 0,
            firing: 30,
        };
        let n = Notification {
            messages,
            group: Some(group.clone()),
        };
        let m = group_status(&n, &group, 500);
        assert!(m.body.chars().count() <= 500, "{}", m.body.chars().count());
        let shown = m.body.lines().filter(|l| l.starts_with("- ")).count();
        assert!(shown > 5, "{}", m.body);
        assert!(
            m.body.ends_with(&format!("and {} more", 30 - shown)),
            "{}",
            m.body
        );
        let b = status_body(&m, &config("mastodon"));
        assert_eq!(b["spoiler_text"], "⚠️ [FIRING:30] alertname=DiskFull");
        assert_eq!(b["status"].as_str().unwrap(), m.body, "nothing cut by `…`");
    }
}
