//! `{{name}}`: a tocsin source, polled on its pipeline's `schedule`. It reports one message per
//! tick saying `text`. Change `poll` to look at what your source watches (a granted
//! directory, a host's disk usage, …) and report what it sees.

use serde::Deserialize;
use tocsin_sdk::{export_source, Message, MessageExt, Severity, Source};

/// The stage's `config = { … }` table in the pipeline file. Its schema, settings.schema.json,
/// travels in the component: `tocsin validate` checks pipelines against it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// What each message says.
    text: String,
}

struct Plugin {
    text: String,
}

impl Source for Plugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Plugin { text: config.text })
    }

    /// Called at each scheduled time `tick_ms` (ms since the epoch). Give each message an id
    /// that is the same if this tick is polled again, so a retry is not a second alert.
    fn poll(&mut self, tick_ms: u64) -> Result<Vec<Message>, String> {
        let mut msg = Message::new(format!("{{name}}-{tick_ms}"), tick_ms, self.text.clone());
        msg.severity = Severity::Info;
        msg.summary = Some("{{name}}".into());
        Ok(vec![msg])
    }
}

export_source!(Plugin);
// Embeds settings.schema.json; its test fails when `Config` changes without it
// (`TOCSIN_BLESS=1` with the unit tests rewrites it).
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_tick_with_a_stable_id() {
        let mut plugin = Plugin::new(Config { text: "hello".into() }).unwrap();
        let first = plugin.poll(1000).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].id, plugin.poll(1000).unwrap()[0].id);
    }
}
