//! The reference page of a plugin (`docs/plugins/NAME.md`), generated from what the plugin
//! itself says: the settings schema its component carries and the documentation at the top of
//! its source. `tests/integration/plugin_reference.rs` keeps the committed pages equal to
//! what this makes, so they cannot drift from the plugins.

use tocsin_config::settings;

/// A plugin's settings as a Markdown table (setting, type, default, meaning), as its
/// reference page in `docs/plugins/` shows them.
pub fn settings_markdown(schema: &serde_json::Value) -> String {
    let rows = settings::settings_rows(schema);
    if rows.is_empty() {
        return "It takes no settings: leave `config` out.\n".into();
    }
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out =
        String::from("| setting | type | default | meaning |\n| --- | --- | --- | --- |\n");
    for row in rows {
        let default = match (&row.default, row.required) {
            (_, true) => "required".to_string(),
            (Some(default), false) => format!("`{default}`"),
            (None, false) => "—".to_string(),
        };
        out += &format!(
            "| `{}` | {} | {} | {} |\n",
            row.name,
            row.kind,
            cell(&default),
            cell(&row.description)
        );
    }
    out
}

/// A plugin's page: its name and kind, its own documentation (the `//!` lines at the top of
/// its `src/lib.rs`, with their first line as the summary) and its settings.
pub fn reference_page(
    name: &str,
    kind: &str,
    crate_docs: &str,
    schema: &serde_json::Value,
) -> String {
    let mut out = format!("# `{name}` ({kind})\n\n");
    out += "<!-- Generated from plugins/";
    out += name;
    out += "/src/lib.rs and its settings schema: TOCSIN_BLESS=1 cargo test -p tocsin-tests --test integration plugin_reference -->\n\n";
    out += crate_docs.trim();
    out += "\n\n## Settings (`config`)\n\n";
    out += &settings_markdown(schema);
    out
}

/// The `//!` documentation at the top of a Rust source file, without the markers.
pub fn crate_docs(source: &str) -> String {
    source
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| {
            l.trim_start_matches("//!")
                .strip_prefix(' ')
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}
