//! `dedup`: the same message within a window passes once.
//!
//! "The same" is what the `key` template renders to (default: severity, summary and body, per
//! `host` label). The window is measured on the messages' own timestamps, so a re-run after a
//! crash decides the same way. Seen keys are kept in durable state, pruned as they age out, and
//! capped at [`MAX_KEYS`] (the oldest are forgotten first).
//!
//! ```toml
//! [[filter]]
//! plugin = "dedup"
//! config = { window = "10m", key = "{{ labels.host }}|{{ summary }}" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use tocsin_sdk::host::{state_get_json, state_set_json};
use tocsin_sdk::template::Template;
use tocsin_sdk::{export_filter, Filter, Message};

/// Distinct keys remembered at most.
pub const MAX_KEYS: usize = 2000;
const DEFAULT_KEY: &str = "{{ labels.host }}|{{ severity }}|{{ summary }}|{{ body }}";

/// Drops a message whose key was already seen within a time window.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// How long a key is remembered, such as `"10m"`.
    window: String,
    /// A Jinja template making each message's key; default: host label, severity, summary and body.
    key: Option<String>,
}

struct Dedup {
    window_ms: u64,
    key: Template,
}

impl Filter for Dedup {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        let window = humantime::parse_duration(&c.window)
            .map_err(|e| format!("window `{}`: {e}", c.window))?;
        Ok(Dedup {
            window_ms: window.as_millis() as u64,
            key: Template::compile("key", c.key.as_deref().unwrap_or(DEFAULT_KEY))?,
        })
    }

    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        let key = self.key.render(&msg)?;
        let now = msg.timestamp_ms;
        let mut seen: BTreeMap<String, u64> = state_get_json("seen").unwrap_or_default();
        seen.retain(|_, at| now.saturating_sub(*at) < self.window_ms);
        let duplicate = seen.get(&key).is_some_and(|at| now >= *at);
        if !duplicate {
            seen.insert(key, now);
            while seen.len() > MAX_KEYS {
                let oldest = seen
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    seen.remove(&k);
                }
            }
        }
        state_set_json("seen", &seen);
        Ok(if duplicate { vec![] } else { vec![msg] })
    }
}

export_filter!(Dedup);
tocsin_sdk::declare_settings!(Config);
