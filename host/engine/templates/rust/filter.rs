//! `{{name}}`: a tocsin filter. Messages whose body contains `word` pass; the others are
//! dropped. Change `process` to do what your filter should.

use serde::Deserialize;
use tocsin_sdk::{export_filter, Filter, Message};

/// The stage's `config = { … }` table in the pipeline file. Its schema, settings.schema.json,
/// travels in the component: `tocsin validate` checks pipelines against it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Messages whose body contains this pass.
    word: String,
}

struct Plugin {
    word: String,
}

impl Filter for Plugin {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.word.is_empty() {
            return Err("`word` must not be empty".into());
        }
        Ok(Plugin { word: config.word })
    }

    /// `vec![]` drops the message, `vec![msg]` passes it on, more messages split it.
    fn process(&mut self, msg: Message) -> Result<Vec<Message>, String> {
        Ok(if msg.body.contains(&self.word) {
            vec![msg]
        } else {
            vec![]
        })
    }
}

export_filter!(Plugin);
// Embeds settings.schema.json; its test fails when `Config` changes without it
// (`TOCSIN_BLESS=1` with the unit tests rewrites it).
tocsin_sdk::declare_settings!(Config);

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_sdk::MessageExt;

    #[test]
    fn passes_only_messages_with_the_word() {
        let mut plugin = Plugin::new(Config { word: "disk".into() }).unwrap();
        let out = plugin.process(Message::new("1", 0, "disk almost full")).unwrap();
        assert_eq!(out.len(), 1);
        assert!(plugin.process(Message::new("2", 0, "all good")).unwrap().is_empty());
    }
}
