//! `rate-limit`: at most `max` messages per `per` window (per key), the rest dropped — so a
//! flapping check cannot flood a room.
//!
//! The window slides over the messages' own timestamps; the key template (default: none, one
//! limit for the pipeline) gives each host or check its own budget. Counts live in durable
//! state.
//!
//! ```toml
//! [[filter]]
//! plugin = "rate-limit"
//! config = { max = 10, per = "1h", key = "{{ labels.host }}" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use tocsin_sdk::host::{state_get_json, state_set_json, warn};
use tocsin_sdk::template::Template;
use tocsin_sdk::{export_filter, Filter, Message};

/// Keys remembered at most.
pub const MAX_KEYS: usize = 500;

/// Passes at most `max` messages per `per` (per key, when `key` is set) and drops the rest.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// The most messages passed per window.
    max: usize,
    /// The window, such as `"1m"`.
    per: String,
    /// A Jinja template making the key each limit applies to (one limit per host, say); one limit for all when absent.
    key: Option<String>,
}

struct RateLimit {
    max: usize,
    per_ms: u64,
    key: Option<Template>,
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        if c.max == 0 || c.max > 10_000 {
            return Err("max must be 1..=10000".into());
        }
        let per = humantime::parse_duration(&c.per).map_err(|e| format!("per `{}`: {e}", c.per))?;
        Ok(RateLimit {
            max: c.max,
            per_ms: per.as_millis() as u64,
            key: c.key.map(|k| Template::compile("key", &k)).transpose()?,
        })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        let key = match &self.key {
            Some(t) => t.render(&msg)?,
            None => String::new(),
        };
        let now = msg.timestamp_ms;
        let mut windows: BTreeMap<String, Vec<u64>> = state_get_json("sent").unwrap_or_default();
        for times in windows.values_mut() {
            times.retain(|t| now.saturating_sub(*t) < self.per_ms);
        }
        windows.retain(|_, times| !times.is_empty());
        let times = windows.entry(key.clone()).or_default();
        let allowed = times.len() < self.max;
        if allowed {
            times.push(now);
        } else {
            warn(&format!(
                "rate limit of {} per {} ms reached for `{key}`; message {} dropped",
                self.max, self.per_ms, msg.id
            ));
        }
        while windows.len() > MAX_KEYS {
            let first = windows.keys().next().cloned();
            if let Some(k) = first {
                windows.remove(&k);
            }
        }
        state_set_json("sent", &windows);
        Ok(if allowed { vec![msg] } else { vec![] })
    }
}

export_filter!(RateLimit);
tocsin_sdk::declare_settings!(Config);
