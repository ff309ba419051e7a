//! `docs/plugins/`: one reference page per shipped plugin, generated from what the plugin says
//! of itself — the settings schema its built component carries and the documentation at the
//! top of its source — and an index. The pages cannot drift from the plugins: this test fails
//! when a page differs from what the plugin makes (`TOCSIN_BLESS=1` rewrites them), when a
//! shipped plugin has no schema or no page, and when the component does not carry the schema
//! committed beside its source.

use std::path::Path;

use tocsin::plugin_reference::{crate_docs, reference_page};
use tocsin_runtime::{Runtime, RuntimeConfig};
use tocsin_tests::{plugins_dir, repo_root};

/// The shipped plugins: the plugin workspace's default members, but the SDK.
fn shipped() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo_root().join("plugins/Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|l| l.starts_with("default-members"))
        .expect("plugins/Cargo.toml lists its default members");
    line.split('"')
        .skip(1)
        .step_by(2)
        .filter(|m| *m != "sdk")
        .map(str::to_string)
        .collect()
}

fn write_or_compare(path: &Path, generated: &str, stale: &mut Vec<String>) {
    if std::env::var_os("TOCSIN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, generated).unwrap();
    }
    if std::fs::read_to_string(path).unwrap_or_default() != generated {
        stale.push(path.display().to_string());
    }
}

#[test]
fn every_shipped_plugin_has_a_page_generated_from_its_schema() {
    let root = repo_root();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let plugins = shipped();
    assert!(plugins.len() >= 16, "{plugins:?}");
    let mut stale = Vec::new();
    let mut index = String::from(
        "# Plugins\n\n<!-- Generated: TOCSIN_BLESS=1 cargo test -p tocsin-tests --test \
         integration plugin_reference -->\n\nThe plugins tocsin ships, each with its settings \
         (`config`), what it makes and the grants it needs. `tocsin plugin inspect FILE.wasm` \
         prints the settings of any plugin that declares them; `tocsin validate` checks a \
         pipeline's `config` against them.\n\n| plugin | kind | what it does |\n| --- | --- | --- |\n",
    );
    for name in &plugins {
        let component = plugins_dir().join(format!("{}.wasm", name.replace('-', "_")));
        let bytes = std::fs::read(&component).unwrap();
        let schema = tocsin_config::settings::schema_in(&bytes)
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: the component carries no settings schema"));
        let committed: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("plugins/{name}/settings.schema.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            schema, committed,
            "{name}: the component carries another schema"
        );
        let kind = runtime
            .inspect(&component)
            .unwrap()
            .kind
            .unwrap_or_else(|| panic!("{name} is none of our kinds"))
            .interface();
        let source =
            std::fs::read_to_string(root.join(format!("plugins/{name}/src/lib.rs"))).unwrap();
        let docs = crate_docs(&source);
        assert!(
            !docs.trim().is_empty(),
            "{name}: src/lib.rs has no //! documentation"
        );
        let page = reference_page(name, kind, &docs, &schema);
        write_or_compare(
            &root.join(format!("docs/plugins/{name}.md")),
            &page,
            &mut stale,
        );
        let summary = docs
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        index += &format!("| [`{name}`]({name}.md) | {kind} | {summary} |\n");
    }
    write_or_compare(&root.join("docs/plugins/README.md"), &index, &mut stale);
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; TOCSIN_BLESS=1 cargo test -p tocsin-tests --test integration \
         plugin_reference"
    );
}

#[test]
fn the_plugin_pages_are_linked_from_readme_and_the_pipeline_reference() {
    for doc in ["README.md", "docs/pipeline-reference.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        assert!(
            text.contains("docs/plugins/README.md") || text.contains("plugins/README.md"),
            "{doc} does not link the plugin reference"
        );
    }
}

/// `tocsin validate` refuses broken settings of every shipped plugin, not only one: a key none
/// of them has is named, at its line, with the stage it belongs to.
#[test]
fn validate_refuses_an_unknown_setting_of_every_shipped_plugin() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = "config = { zz_not_a_setting = 1 }";
    let mut expected = Vec::new();
    for name in shipped() {
        let component = plugins_dir().join(format!("{}.wasm", name.replace('-', "_")));
        let kind = runtime
            .inspect(&component)
            .unwrap()
            .kind
            .unwrap()
            .interface();
        let (text, field) = match kind {
            "source" => (
                format!("[source]\nplugin = \"{name}\"\nschedule = \"0 * * * * *\"\n{broken}\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n"),
                "source",
            ),
            "decoder" => (
                format!("[source]\nplugin = \"{name}\"\nauth = {{ none = true }}\n{broken}\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n"),
                "source",
            ),
            "filter" => (
                format!("[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n[[filter]]\nplugin = \"{name}\"\n{broken}\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n"),
                "filter[0]",
            ),
            _ => (
                format!("[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n[[sink]]\nname = \"out\"\nplugin = \"{name}\"\n{broken}\n"),
                "sink[0]",
            ),
        };
        std::fs::write(dir.path().join(format!("{name}.toml")), &text).unwrap();
        let line = text.lines().position(|l| l == broken).unwrap() + 1;
        expected.push(format!(
            "{name}.toml:{line}:12: {field}.config.zz_not_a_setting: unknown setting `zz_not_a_setting`"
        ));
    }
    let out = std::process::Command::new(tocsin_tests::tocsin_bin())
        .arg("validate")
        .arg(dir.path())
        .arg("--plugin-dir")
        .arg(plugins_dir())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    for needle in expected {
        assert!(shown.contains(&needle), "`{needle}` not in:\n{shown}");
    }
    assert!(shown.lines().any(|l| l.starts_with("0 valid, ")), "{shown}");
}
