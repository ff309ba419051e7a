//! `matrix`: posts each message to a Matrix room through the client-server API v3.
//!
//! `PUT {homeserver}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txnId}` with the
//! message as plain text and HTML. The transaction id is the idempotency key, so a retry of
//! the same message with the same access token posts once (Synapse remembers transaction ids
//! per device for 24 hours).
//!
//! ```toml
//! [[sink]]
//! name   = "ops-room"
//! plugin = "matrix"
//! config = { homeserver = "https://matrix.example.org", room = "!abc:example.org" }
//! grants = { hosts = ["matrix.example.org"], secrets = { access_token = "env:MATRIX_TOKEN" } }
//! ```
//! Outcomes: 2xx delivered; 429 rate-limited by the server's `retry_after_ms`; other 4xx
//! permanent (a bad token or room will not fix itself); 5xx and network errors retryable.
//!
//! **Answers.** A message that carries a `matrix_room` label naming `room` or one of `rooms`
//! is posted there instead, as a reply to the event its `matrix_reply_to` label names (else
//! its `matrix_event`, the label `matrix-commands` gives a command): so a pipeline that answers
//! commands read by `matrix-commands` replies where it was asked. A `matrix_room` not on the
//! list is not obeyed (the message goes to `room`): the message's content never chooses where
//! the bot may post.

use serde::Deserialize;
use tocsin_sdk::http::{encode_component, Request};
use tocsin_sdk::{
    export_sink, group, host, severity_emoji, DeliveryError, Group, Message, MessageExt,
    Notification, Sink,
};

/// Posts each message to a Matrix room, with the delivery's idempotency key as the transaction id.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Base URL of the homeserver, such as `https://matrix.example.org`.
    #[cfg_attr(test, schemars(extend("pattern" = "^https?://")))]
    homeserver: String,
    /// The room id (`!…:server`) to post to.
    room: String,
    /// `m.notice` (default: bots' messages, no notification loops) or `m.text`.
    #[cfg_attr(test, schemars(extend("enum" = ["m.notice", "m.text"])))]
    #[serde(default = "notice")]
    msgtype: String,
    /// The name of the granted secret holding the access token.
    #[serde(default = "token_name")]
    token_secret: String,
    /// Other room ids a message may be answered into (its `matrix_room` label); `room` always
    /// may.
    #[serde(default)]
    rooms: Vec<String>,
}

fn notice() -> String {
    "m.notice".into()
}

fn token_name() -> String {
    "access_token".into()
}

struct Matrix {
    homeserver: String,
    room: String,
    msgtype: String,
    token_secret: String,
    rooms: Vec<String>,
}

/// Where a message goes: a room, and the event it answers, if any.
#[derive(Debug, PartialEq)]
struct Target<'a> {
    room: &'a str,
    reply_to: Option<&'a str>,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The plain and HTML bodies of a message; its link, when it has one, is the summary's
/// link in HTML (or a line of its own without a summary) and a line of its own in plain text.
fn render(msg: &Message) -> (String, String) {
    let (plain, html) = render_text(msg);
    match &msg.link {
        None => (plain, html),
        Some(link) => {
            let href = escape_html(link);
            let html = if html.starts_with("<p><strong>") {
                html.replacen("<p><strong>", &format!("<p><strong><a href=\"{href}\">"), 1)
                    .replacen("</strong>", "</a></strong>", 1)
            } else {
                format!("{html}<p><a href=\"{href}\">{href}</a></p>")
            };
            (format!("{plain}\n{link}"), html)
        }
    }
}

/// The plain and HTML bodies of a message's text.
fn render_text(msg: &Message) -> (String, String) {
    let mark = severity_emoji(msg.severity);
    // A body that only repeats the summary is said once.
    let summary = msg.summary.as_ref().filter(|s| s.trim() != msg.body.trim());
    match summary {
        Some(summary) => (
            format!("{mark}{summary}\n{}", msg.body),
            format!(
                "<p><strong>{mark}{}</strong></p><p>{}</p>",
                escape_html(summary),
                escape_html(&msg.body).replace('\n', "<br>")
            ),
        ),
        None => (
            format!("{mark}{}", msg.body),
            format!(
                "<p>{mark}{}</p>",
                escape_html(&msg.body).replace('\n', "<br>")
            ),
        ),
    }
}

#[derive(Deserialize)]
struct MatrixError {
    retry_after_ms: Option<u64>,
}

impl Sink for Matrix {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if !(c.homeserver.starts_with("https://") || c.homeserver.starts_with("http://")) {
            return Err(format!(
                "homeserver `{}` must start with https:// or http://",
                c.homeserver
            ));
        }
        if !c.room.starts_with('!') {
            return Err(format!(
                "room `{}` must be a room id (`!…:server`), not an alias",
                c.room
            ));
        }
        if let Some(bad) = c.rooms.iter().find(|r| !r.starts_with('!')) {
            return Err(format!(
                "rooms: `{bad}` must be a room id (`!…:server`), not an alias"
            ));
        }
        if !matches!(c.msgtype.as_str(), "m.notice" | "m.text") {
            return Err(format!(
                "msgtype `{}` must be m.notice or m.text",
                c.msgtype
            ));
        }
        Ok(Matrix {
            homeserver: c.homeserver.trim_end_matches('/').to_string(),
            room: c.room,
            msgtype: c.msgtype,
            token_secret: c.token_secret,
            rooms: c.rooms,
        })
    }

    fn deliver(&mut self, msg: Message, key: &str) -> Result<(), DeliveryError> {
        let (plain, html) = render(&msg);
        let target = self.target(&msg);
        self.post(&target, plain, html, key)
    }

    /// A group of alerts is one post: its title, then a list item per alert (its summary the
    /// alert's link, when it has one).
    fn deliver_notification(
        &mut self,
        notification: Notification,
        key: &str,
    ) -> Result<(), DeliveryError> {
        match &notification.group {
            Some(group) => {
                let (plain, html) = render_group(&notification, group);
                let target = Target {
                    room: &self.room,
                    reply_to: None,
                };
                self.post(&target, plain, html, key)
            }
            None => {
                let msg = tocsin_sdk::group::only_message(notification)?;
                self.deliver(msg, key)
            }
        }
    }
}

/// The plain and HTML bodies of a group's notification: its title (`[FIRING:3] …`, with the
/// worst firing alert's emoji), then a line per alert — its link after it in plain text, its
/// summary linked in HTML — at most [`group::LISTED`], then how many more.
fn render_group(notification: &Notification, group: &Group) -> (String, String) {
    let digest = group::group_digest(notification, group);
    let mark = severity_emoji(digest.severity);
    let title = group::group_title(group);
    let mut plain = format!("{mark}{title}");
    let mut html = format!("<p><strong>{mark}{}</strong></p><ul>", escape_html(&title));
    for m in notification.messages.iter().take(group::LISTED) {
        let line = group::group_line(m);
        let text = escape_html(line.trim_start_matches("- "));
        match &m.link {
            Some(link) => {
                plain += &format!("\n{line} {link}");
                html += &format!("<li><a href=\"{}\">{text}</a></li>", escape_html(link));
            }
            None => {
                plain += &format!("\n{line}");
                html += &format!("<li>{text}</li>");
            }
        }
    }
    html += "</ul>";
    let more = notification.messages.len().saturating_sub(group::LISTED);
    if more > 0 {
        plain += &format!("\nand {more} more");
        html += &format!("<p>and {more} more</p>");
    }
    (plain, html)
}

impl Matrix {
    /// Where `msg` goes: the room its `matrix_room` label names when that room is `room` or one
    /// of `rooms`, answering the event of its `matrix_reply_to` (else `matrix_event`) label;
    /// otherwise `room`.
    fn target<'a>(&'a self, msg: &'a Message) -> Target<'a> {
        let asked = msg.label("matrix_room");
        match asked.filter(|r| *r == self.room || self.rooms.iter().any(|o| o == r)) {
            Some(room) => Target {
                room,
                reply_to: msg
                    .label("matrix_reply_to")
                    .or_else(|| msg.label("matrix_event")),
            },
            None => Target {
                room: &self.room,
                reply_to: None,
            },
        }
    }

    /// Sends one room message to `target` under transaction id `key`.
    fn post(
        &self,
        target: &Target,
        plain: String,
        html: String,
        key: &str,
    ) -> Result<(), DeliveryError> {
        let token = host::require_secret(&self.token_secret)?;
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            self.homeserver,
            encode_component(target.room),
            encode_component(key)
        );
        let mut body = serde_json::json!({
            "msgtype": self.msgtype,
            "body": plain,
            "format": "org.matrix.custom.html",
            "formatted_body": html,
        });
        if let Some(event) = target.reply_to {
            body["m.relates_to"] = serde_json::json!({ "m.in_reply_to": { "event_id": event } });
        }
        let response = Request::put(&url)
            .header("authorization", &format!("Bearer {token}"))
            .json(&body)
            .send()?;
        let retry_after = if response.status == 429 {
            response
                .json::<MatrixError>()
                .ok()
                .and_then(|e| e.retry_after_ms)
        } else {
            None
        };
        response.delivery_outcome(retry_after)
    }
}

export_sink!(Matrix);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::Severity;

    fn sink(rooms: &[&str]) -> Matrix {
        Matrix {
            homeserver: "https://m.example.org".into(),
            room: "!alerts:example.org".into(),
            msgtype: "m.notice".into(),
            token_secret: "access_token".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn an_answer_goes_to_the_room_it_names_only_when_that_room_is_allowed() {
        let matrix = sink(&["!ops:example.org"]);
        let mut m = Message::new("$cmd", 0, "db1: load 0.4");
        assert_eq!(
            matrix.target(&m),
            Target {
                room: "!alerts:example.org",
                reply_to: None
            }
        );
        m.set_label("matrix_room", "!ops:example.org");
        m.set_label("matrix_event", "$cmd");
        assert_eq!(
            matrix.target(&m),
            Target {
                room: "!ops:example.org",
                reply_to: Some("$cmd")
            }
        );
        m.set_label("matrix_reply_to", "$other");
        assert_eq!(matrix.target(&m).reply_to, Some("$other"));
        m.set_label("matrix_room", "!elsewhere:example.org");
        assert_eq!(
            matrix.target(&m),
            Target {
                room: "!alerts:example.org",
                reply_to: None
            },
            "a room not on the list is not obeyed"
        );
    }

    #[test]
    fn a_summary_is_a_title_above_the_text_and_said_once_when_the_text_repeats_it() {
        let mut m = Message::new("1", 0, "/ is 99 % full");
        m.severity = Severity::Warning;
        m.summary = Some("Disk full on db1".into());
        assert_eq!(render(&m).0, "⚠️ Disk full on db1\n/ is 99 % full");
        m.body = "Disk full on db1".into();
        let (plain, html) = render(&m);
        assert_eq!(plain, "⚠️ Disk full on db1");
        assert_eq!(html, "<p>⚠️ Disk full on db1</p>");
    }

    #[test]
    fn a_link_is_the_titles_link_in_html_and_its_own_line_in_plain_text() {
        let mut m = Message::new("1", 0, "checks failed on main");
        m.summary = Some("ada's run #12 failed".into());
        m.link = Some("https://github.com/o/r/actions/runs/1?a=1&b=\"2\"".into());
        let (plain, html) = render(&m);
        assert_eq!(
            plain,
            "ada's run #12 failed\nchecks failed on main\nhttps://github.com/o/r/actions/runs/1?a=1&b=\"2\""
        );
        assert_eq!(
            html,
            "<p><strong><a href=\"https://github.com/o/r/actions/runs/1?a=1&amp;b=&quot;2&quot;\">ada's run #12 failed</a></strong></p><p>checks failed on main</p>"
        );
        m.summary = None;
        let (_, html) = render(&m);
        assert_eq!(
            html,
            "<p>checks failed on main</p><p><a href=\"https://github.com/o/r/actions/runs/1?a=1&amp;b=&quot;2&quot;\">https://github.com/o/r/actions/runs/1?a=1&amp;b=&quot;2&quot;</a></p>"
        );
    }

    #[test]
    fn a_group_is_one_post_with_a_list_item_per_alert_linked_when_it_has_a_link() {
        let mut a = Message::new("a", 1, "/ is 97 % full");
        a.summary = Some("Disk full on db1".into());
        a.severity = Severity::Error;
        a.link = Some("https://grafana.example/d?h=db1&x=1".into());
        let mut b = Message::new("b", 2, "back to 40 %");
        b.set_label("status", "resolved");
        let group = Group {
            labels: vec![("alertname".into(), "DiskFull".into())],
            key: "k".into(),
            sequence: 0,
            firing: 1,
        };
        let n = Notification {
            messages: vec![a, b],
            group: Some(group.clone()),
        };
        let (plain, html) = render_group(&n, &group);
        assert_eq!(
            plain,
            "🔥 [FIRING:1] alertname=DiskFull\n- Disk full on db1: / is 97 % full https://grafana.example/d?h=db1&x=1\n- resolved: back to 40 %"
        );
        assert_eq!(
            html,
            "<p><strong>🔥 [FIRING:1] alertname=DiskFull</strong></p><ul><li><a href=\"https://grafana.example/d?h=db1&amp;x=1\">Disk full on db1: / is 97 % full</a></li><li>resolved: back to 40 %</li></ul>"
        );
    }
}
