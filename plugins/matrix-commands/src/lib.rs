//! `matrix-commands`: reads commands from Matrix rooms, for a pipeline that answers them.
//!
//! A scheduled source that polls the client-server API's `/sync` for new `m.room.message`
//! events in the configured rooms, and turns each text message that begins with the prefix
//! (`!` by default) into a message: its id is the event id, its body the command as written,
//! its labels `matrix_room`, `matrix_sender` and `matrix_event`. Ignored: the bot's own
//! posts, notices (`m.notice`, what bots post), messages without the prefix, and senders not
//! in `users` when that list is given.
//!
//! The sync token is kept in the source's state, which the host commits together with the
//! messages of the poll: after a restart the next poll goes on from the last committed token,
//! so no command is missed or produced twice. The first poll of a new pipeline only takes the
//! token: history before it is never answered. When more messages arrived than one sync
//! returns (`limited`), the missing ones are paged back from the room.
//!
//! ```toml
//! [source]
//! plugin   = "matrix-commands"
//! schedule = "* * * * * *"
//! config   = { homeserver = "https://matrix.example.org", rooms = ["!ops:example.org"], users = ["@alice:example.org"] }
//! grants   = { hosts = ["matrix.example.org"], secrets = { access_token = "env:MATRIX_TOKEN" } }
//! ```
//! The bot's account (whose token is granted) must be invited to the rooms; it joins them on
//! its first poll. With `long_poll_ms`, a poll waits that long for a message to arrive (answers
//! come at once instead of at the next tick); keep it below the source's `limits.timeout`.

use serde::Deserialize;
use serde_json::{json, Value};
use tocsin_sdk::http::{encode_component, Request};
use tocsin_sdk::{export_source, host, Message, MessageExt, Source};

/// Reads commands posted in Matrix rooms (messages beginning with a prefix) into messages.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Base URL of the homeserver, such as `https://matrix.example.org`.
    #[cfg_attr(test, schemars(extend("pattern" = "^https?://")))]
    homeserver: String,
    /// The room ids (`!…:server`) to read commands from.
    rooms: Vec<String>,
    /// The user ids (`@…:server`) whose commands are read; empty (the default): anyone in the
    /// rooms.
    #[serde(default)]
    users: Vec<String>,
    /// What a command begins with.
    #[serde(default = "bang")]
    prefix: String,
    /// How long a poll waits for a new message (0, the default: it only looks).
    #[serde(default)]
    long_poll_ms: u64,
    /// The name of the granted secret holding the bot's access token.
    #[serde(default = "token_name")]
    token_secret: String,
}

fn bang() -> String {
    "!".into()
}

fn token_name() -> String {
    "access_token".into()
}

/// The state key of the sync token.
const SINCE: &str = "since";

/// The most events one sync returns per room; more arrived means `limited` and a page back.
const TIMELINE_LIMIT: u64 = 100;

struct MatrixCommands {
    config: Config,
    /// The bot's own user id, once asked.
    me: Option<String>,
    /// Whether the rooms were joined in this process.
    joined: bool,
}

/// The sync filter: message events of the configured rooms, nothing else.
fn sync_filter(rooms: &[String]) -> Value {
    let none = json!({ "types": [] });
    json!({
        "presence": none,
        "account_data": none,
        "room": {
            "rooms": rooms,
            "timeline": { "types": ["m.room.message"], "limit": TIMELINE_LIMIT },
            "state": none,
            "ephemeral": none,
            "account_data": none,
        },
    })
}

/// Who may command, and how commands look.
struct Readers<'a> {
    me: &'a str,
    users: &'a [String],
    prefix: &'a str,
}

impl Readers<'_> {
    /// The command of one timeline event of `room`, if it is one.
    fn command(&self, room: &str, event: &Value) -> Option<Message> {
        if event["type"] != "m.room.message" || event["content"]["msgtype"] != "m.text" {
            return None;
        }
        let sender = event["sender"].as_str()?;
        if sender == self.me || !(self.users.is_empty() || self.users.iter().any(|u| u == sender)) {
            return None;
        }
        let body = event["content"]["body"].as_str()?.trim();
        if !body.starts_with(self.prefix) || body.len() == self.prefix.len() {
            return None;
        }
        let id = event["event_id"].as_str()?;
        let at = event["origin_server_ts"].as_u64().unwrap_or(0);
        let mut m = Message::new(id, at, body);
        m.set_label("matrix_room", room);
        m.set_label("matrix_sender", sender);
        m.set_label("matrix_event", id);
        Some(m)
    }
}

/// The commands of one sync answer's configured rooms, oldest first per room, and the rooms
/// whose timeline was cut (`limited`) with the token to page back from.
fn commands_in(
    sync: &Value,
    rooms: &[String],
    readers: &Readers,
) -> (Vec<Message>, Vec<(String, String)>) {
    let mut out = Vec::new();
    let mut cut = Vec::new();
    for room in rooms {
        let timeline = &sync["rooms"]["join"][room]["timeline"];
        if timeline["limited"] == true {
            if let Some(from) = timeline["prev_batch"].as_str() {
                cut.push((room.clone(), from.to_string()));
            }
        }
        for event in timeline["events"].as_array().into_iter().flatten() {
            out.extend(readers.command(room, event));
        }
    }
    (out, cut)
}

impl MatrixCommands {
    fn token(&self) -> Result<String, String> {
        host::secret(&self.config.token_secret).ok_or_else(|| {
            format!(
                "no secret `{}` is granted to this source",
                self.config.token_secret
            )
        })
    }

    fn get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}{path}", self.config.homeserver.trim_end_matches('/'));
        let response = Request::get(&url)
            .header("authorization", &format!("Bearer {}", self.token()?))
            .send()
            .map_err(|e| format!("GET {}: {e}", path.split('?').next().unwrap_or(path)))?;
        if !(200..300).contains(&response.status) {
            return Err(format!(
                "GET {}: HTTP {}: {}",
                path.split('?').next().unwrap_or(path),
                response.status,
                response.text_snippet(200)
            ));
        }
        response.json()
    }

    /// The bot's own user id (its own posts are never commands).
    fn me(&mut self) -> Result<String, String> {
        if let Some(me) = &self.me {
            return Ok(me.clone());
        }
        let whoami = self.get("/_matrix/client/v3/account/whoami")?;
        let me = whoami["user_id"]
            .as_str()
            .ok_or("whoami: no user_id in the answer")?
            .to_string();
        self.me = Some(me.clone());
        Ok(me)
    }

    /// Joins the rooms (once per process; joining a joined room changes nothing).
    fn join(&mut self) -> Result<(), String> {
        if self.joined {
            return Ok(());
        }
        for room in &self.config.rooms {
            let url = format!(
                "{}/_matrix/client/v3/rooms/{}/join",
                self.config.homeserver.trim_end_matches('/'),
                encode_component(room)
            );
            let response = Request::post(&url)
                .header("authorization", &format!("Bearer {}", self.token()?))
                .json(&json!({}))
                .send()
                .map_err(|e| format!("joining {room}: {e}"))?;
            if !(200..300).contains(&response.status) {
                return Err(format!(
                    "joining {room}: HTTP {} (is the bot invited?): {}",
                    response.status,
                    response.text_snippet(200)
                ));
            }
        }
        self.joined = true;
        Ok(())
    }

    /// The commands a cut timeline left out: paged back from `from` down to `since`, oldest
    /// first.
    fn page_back(
        &self,
        room: &str,
        from: &str,
        since: &str,
        readers: &Readers,
    ) -> Result<Vec<Message>, String> {
        let mut out = Vec::new();
        let mut from = from.to_string();
        loop {
            let page = self.get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit={TIMELINE_LIMIT}&from={}&to={}",
                encode_component(room),
                encode_component(&from),
                encode_component(since)
            ))?;
            let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
            out.extend(chunk.iter().filter_map(|e| readers.command(room, e)));
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() && end != from => from = end.to_string(),
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }
}

impl Source for MatrixCommands {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.rooms.is_empty() {
            return Err("rooms: name at least one room id (`!…:server`)".into());
        }
        if let Some(bad) = config.rooms.iter().find(|r| !r.starts_with('!')) {
            return Err(format!(
                "rooms: {bad:?} is not a room id (`!…:server`); an alias (`#…`) will not do"
            ));
        }
        if let Some(bad) = config
            .users
            .iter()
            .find(|u| !u.starts_with('@') || !u.contains(':'))
        {
            return Err(format!("users: {bad:?} is not a user id (`@name:server`)"));
        }
        if config.prefix.trim().is_empty() {
            return Err("prefix: give what commands begin with, such as `!`".into());
        }
        Ok(MatrixCommands {
            config,
            me: None,
            joined: false,
        })
    }

    fn poll(&mut self, _tick_ms: u64) -> Result<Vec<Message>, String> {
        self.join()?;
        let me = self.me()?;
        let since: Option<String> = host::state_get_json(SINCE);
        let filter = sync_filter(&self.config.rooms).to_string();
        let mut path = format!(
            "/_matrix/client/v3/sync?filter={}",
            encode_component(&filter)
        );
        if let Some(since) = &since {
            // Only a sync from a token waits: the first one answers at once.
            path.push_str(&format!(
                "&since={}&timeout={}",
                encode_component(since),
                self.config.long_poll_ms
            ));
        }
        let sync = self.get(&path)?;
        let next = sync["next_batch"]
            .as_str()
            .ok_or("sync: no next_batch in the answer")?
            .to_string();
        let Some(since) = since else {
            // The first poll takes the token only: what was said before is not answered.
            host::state_set_json(SINCE, &next);
            return Ok(Vec::new());
        };
        let readers = Readers {
            me: &me,
            users: &self.config.users,
            prefix: &self.config.prefix,
        };
        let (mut commands, cut) = commands_in(&sync, &self.config.rooms, &readers);
        for (room, from) in cut {
            let missed = self.page_back(&room, &from, &since, &readers)?;
            commands.splice(0..0, missed);
        }
        host::state_set_json(SINCE, &next);
        Ok(commands)
    }
}

export_source!(MatrixCommands);
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, sender: &str, msgtype: &str, body: &str) -> Value {
        json!({
            "type": "m.room.message", "event_id": id, "sender": sender,
            "origin_server_ts": 1_700_000_000_000u64,
            "content": { "msgtype": msgtype, "body": body },
        })
    }

    fn readers<'a>(users: &'a [String]) -> Readers<'a> {
        Readers {
            me: "@bot:example.org",
            users,
            prefix: "!",
        }
    }

    #[test]
    fn only_prefixed_text_from_others_on_the_list_is_a_command() {
        let room = "!ops:example.org".to_string();
        let sync = json!({ "next_batch": "s2", "rooms": { "join": { &room: { "timeline": {
            "limited": false,
            "events": [
                event("$1", "@alice:example.org", "m.text", "!status db1"),
                event("$2", "@bot:example.org", "m.text", "!status db1"),
                event("$3", "@alice:example.org", "m.notice", "!alerts"),
                event("$4", "@alice:example.org", "m.text", "good morning"),
                event("$5", "@mallory:example.org", "m.text", "!silence host=db1 1h"),
                event("$6", "@alice:example.org", "m.text", "!"),
                { "type": "m.room.member", "sender": "@alice:example.org" },
            ],
        } } } } });
        let users = vec!["@alice:example.org".to_string()];
        let (commands, cut) = commands_in(&sync, std::slice::from_ref(&room), &readers(&users));
        assert!(cut.is_empty());
        assert_eq!(commands.len(), 1);
        let c = &commands[0];
        assert_eq!((c.id.as_str(), c.body.as_str()), ("$1", "!status db1"));
        assert_eq!(c.timestamp_ms, 1_700_000_000_000);
        assert_eq!(c.label("matrix_room"), Some("!ops:example.org"));
        assert_eq!(c.label("matrix_sender"), Some("@alice:example.org"));
        assert_eq!(c.label("matrix_event"), Some("$1"));
        // Without a list, anyone but the bot commands.
        let (everyone, _) = commands_in(&sync, std::slice::from_ref(&room), &readers(&[]));
        let ids: Vec<&str> = everyone.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["$1", "$5"]);
    }

    #[test]
    fn a_cut_timeline_names_where_to_page_back_from_and_other_rooms_are_ignored() {
        let (ours, theirs) = ("!ops:example.org".to_string(), "!other:example.org");
        let sync = json!({ "rooms": { "join": {
            &ours: { "timeline": { "limited": true, "prev_batch": "p1", "events": [] } },
            theirs: { "timeline": { "events": [event("$9", "@alice:example.org", "m.text", "!x")] } },
        } } });
        let (commands, cut) = commands_in(&sync, std::slice::from_ref(&ours), &readers(&[]));
        assert!(commands.is_empty());
        assert_eq!(cut, [(ours, "p1".to_string())]);
    }

    #[test]
    fn the_filter_asks_for_the_rooms_messages_only() {
        let f = sync_filter(&["!ops:example.org".into()]);
        assert_eq!(f["room"]["rooms"][0], "!ops:example.org");
        assert_eq!(f["room"]["timeline"]["types"][0], "m.room.message");
        assert_eq!(f["presence"]["types"].as_array().unwrap().len(), 0);
        assert_eq!(encode_component("!a:b c"), "%21a%3Ab%20c");
    }

    #[test]
    fn bad_settings_are_refused_with_the_field() {
        let config = |v: Value| serde_json::from_value::<Config>(v).unwrap();
        let base = json!({ "homeserver": "https://m.example.org", "rooms": ["!r:example.org"] });
        assert!(MatrixCommands::new(config(base.clone())).is_ok());
        let mut alias = base.clone();
        alias["rooms"] = json!(["#ops:example.org"]);
        assert!(MatrixCommands::new(config(alias))
            .err()
            .unwrap()
            .starts_with("rooms:"));
        let mut user = base.clone();
        user["users"] = json!(["alice"]);
        assert!(MatrixCommands::new(config(user))
            .err()
            .unwrap()
            .starts_with("users:"));
        let mut none = base;
        none["rooms"] = json!([]);
        assert!(MatrixCommands::new(config(none)).is_err());
    }
}
