//! A plugin's settings, declared: the JSON Schema of its `Config`, carried inside the
//! component so the host can check a pipeline's `config` before anything runs.
//!
//! The schema lives in `settings.schema.json` next to the plugin's `Cargo.toml`. It is
//! generated from the `Config` type with [`schemars`] (field doc comments become the
//! descriptions, `#[serde(default)]` values the defaults, `deny_unknown_fields` forbids other
//! keys), and [`declare_settings!`](crate::declare_settings) both embeds it in the component,
//! as the custom section [`SETTINGS_SECTION`](crate::SETTINGS_SECTION), and adds a unit test that fails when the committed file
//! and the type drift apart:
//!
//! ```ignore
//! #[derive(serde::Deserialize)]
//! #[cfg_attr(test, derive(schemars::JsonSchema))]
//! #[serde(deny_unknown_fields)]
//! /// Passes messages at or above a severity.
//! struct Config {
//!     /// The lowest severity passed on.
//!     min: String,
//! }
//! tocsin_sdk::declare_settings!(Config);
//! ```
//!
//! `TOCSIN_BLESS=1 cargo test` writes the file from the type. This module (feature
//! `settings`) is for the plugin's native tests only; the component carries bytes, not code.

use std::path::Path;

/// The schema of `T` as tocsin reads it: JSON Schema 2020-12, as [`schemars`] generates it,
/// titled with the plugin's name.
pub fn schema_of<T: schemars::JsonSchema>(plugin: &str) -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).expect("a schema is JSON");
    schema["title"] = plugin.into();
    schema
}

/// Asserts that `settings.schema.json` in `manifest_dir` is the schema of `T` for `plugin`;
/// with `TOCSIN_BLESS` set in the environment, writes it first.
pub fn check_committed<T: schemars::JsonSchema>(plugin: &str, manifest_dir: &str) {
    let path = Path::new(manifest_dir).join("settings.schema.json");
    let generated = serde_json::to_string_pretty(&schema_of::<T>(plugin)).expect("JSON") + "\n";
    if std::env::var_os("TOCSIN_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("settings.schema.json is writable");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not the schema of the plugin's Config: run `TOCSIN_BLESS=1 cargo test` in the \
         plugin's directory and commit the file",
        path.display()
    );
}
