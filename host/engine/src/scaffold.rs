//! `tocsin plugin new`: a ready-to-build plugin project, anywhere.
//!
//! The project carries its own copy of the SDK (`vendor/tocsin-sdk`) and of the contract
//! (`wit/`), both embedded in this binary at build time, so it builds with nothing but the
//! package registry, wherever it is moved, and against exactly the contract this tocsin speaks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use include_dir::{include_dir, Dir};

static SDK: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../plugins/sdk");
static WIT: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../../wit");
/// The plugins workspace manifest: where the SDK's `workspace = true` keys get their values.
const PLUGINS_WORKSPACE: &str = include_str!("../../../plugins/Cargo.toml");

const CARGO_TOML: &str = include_str!("../templates/rust/Cargo.toml");
const CARGO_CONFIG: &str = include_str!("../templates/cargo/config.toml");
const README: &str = include_str!("../templates/rust/README.md");
const FILTER: &str = include_str!("../templates/rust/filter.rs");
const SINK: &str = include_str!("../templates/rust/sink.rs");
const SOURCE: &str = include_str!("../templates/rust/source.rs");
// The settings schemas of the three templates' `Config`, titled `{{name}}` (what each
// project's `declare_settings!` test generates; the scaffold test runs it).
const FILTER_SCHEMA: &str = include_str!("../templates/rust/filter.schema.json");
const SINK_SCHEMA: &str = include_str!("../templates/rust/sink.schema.json");
const SOURCE_SCHEMA: &str = include_str!("../templates/rust/source.schema.json");
const PY_README: &str = include_str!("../templates/python/README.md");
const PY_FILTER: &str = include_str!("../templates/python/filter.py");
const PY_SINK: &str = include_str!("../templates/python/sink.py");
const PY_SOURCE: &str = include_str!("../templates/python/source.py");

/// The componentize-py release Python projects are made for (the one the test suite uses).
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The kinds `plugin new` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Polled on a schedule.
    Source,
    /// Between source and sinks.
    Filter,
    /// Delivers messages.
    Sink,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Filter => "filter",
            Kind::Sink => "sink",
        }
    }

    /// The `tocsin test` arguments that run the template on its sample.
    fn try_args(self, lang_is_python: bool) -> &'static str {
        match (self, lang_is_python) {
            (Kind::Filter, _) => "--config '{\"word\": \"disk\"}' --input sample.json",
            (Kind::Sink, false) => "--config '{\"url\": \"https://alerts.example.org/hook\"}' --grant-host alerts.example.org --input sample.json",
            (Kind::Sink, true) => "--config '{\"prefix\": \"ALERT: \"}' --input sample.json",
            (Kind::Source, false) => "--config '{\"text\": \"hello\"}'",
            (Kind::Source, true) => "--config '{\"text\": \"hello\"}'",
        }
    }
}

/// The sample message every project gets, for `tocsin test`.
const SAMPLE: &str = "{\"body\": \"disk almost full on db1\", \"severity\": \"warning\", \"summary\": \"db1\", \"labels\": {\"host\": \"db1\"}}\n";

/// Creates `<parent>/<name>/` with a Python plugin of `kind`, built with componentize-py;
/// returns the project directory.
pub fn new_python_plugin(parent: &Path, name: &str, kind: Kind) -> anyhow::Result<PathBuf> {
    let dir = project_dir(parent, name)?;
    let crate_name = name.replace('-', "_");
    let source = match kind {
        Kind::Filter => PY_FILTER,
        Kind::Sink => PY_SINK,
        Kind::Source => PY_SOURCE,
    };
    let try_it = format!(
        "tocsin test --plugin {crate_name}.wasm {}",
        kind.try_args(true)
    );
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{kind}}", kind.name())
            .replace("{{world}}", &format!("{}-plugin", kind.name()))
            .replace("{{contract}}", tocsin_runtime::CONTRACT_VERSION)
            .replace("{{componentize}}", COMPONENTIZE_PY)
            .replace("{{try}}", &try_it)
    };
    write(&dir, "README.md", &fill(PY_README))?;
    write(&dir, "app.py", &fill(source))?;
    write(&dir, "sample.json", SAMPLE)?;
    write(&dir, ".gitignore", "/.venv\n/bindings\n*.wasm\n")?;
    extract_contract(&dir.join("wit"))?;
    Ok(dir)
}

/// `<parent>/<name>`, refused when the name is not a plugin name or the directory is taken.
fn project_dir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} already exists and is not empty", dir.display());
    }
    Ok(dir)
}

/// Writes `dir/rel`, creating directories.
fn write(dir: &Path, rel: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates `<parent>/<name>/` with a plugin of `kind`; returns the project directory.
pub fn new_rust_plugin(parent: &Path, name: &str, kind: Kind) -> anyhow::Result<PathBuf> {
    let dir = project_dir(parent, name)?;
    let crate_name = name.replace('-', "_");
    let wasm = format!("target/wasm32-wasip2/release/{crate_name}.wasm");
    let try_it = format!("tocsin test --plugin {wasm} {}", kind.try_args(false));
    let schema = match kind {
        Kind::Filter => FILTER_SCHEMA,
        Kind::Sink => SINK_SCHEMA,
        Kind::Source => SOURCE_SCHEMA,
    };
    let (source, example) = match kind {
        Kind::Filter => (FILTER, format!(
            "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n[[filter]]\nplugin = \"{name}\"\nconfig = {{ word = \"disk\" }}\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = {{ stdout = true }}"
        )),
        Kind::Sink => (SINK, format!(
            "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n[[sink]]\nname = \"out\"\nplugin = \"{name}\"\nconfig = {{ url = \"https://alerts.example.org/hook\" }}\ngrants = {{ hosts = [\"alerts.example.org\"] }}"
        )),
        Kind::Source => (SOURCE, format!(
            "[source]\nplugin = \"{name}\"\nschedule = \"0 * * * * *\"\nconfig = {{ text = \"hello\" }}\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = {{ stdout = true }}"
        )),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{kind}}", kind.name())
            .replace("{{contract}}", tocsin_runtime::CONTRACT_VERSION)
            .replace("{{pipeline}}", &example)
            .replace("{{try}}", &try_it)
    };
    let write = |rel: &str, text: &str| write(&dir, rel, text);
    write("Cargo.toml", &fill(CARGO_TOML))?;
    write(".cargo/config.toml", CARGO_CONFIG)?;
    write("README.md", &fill(README))?;
    write("src/lib.rs", &fill(source))?;
    write("settings.schema.json", &fill(schema))?;
    write("example-pipeline.toml", &format!("{example}\n"))?;
    write("sample.json", SAMPLE)?;
    write(".gitignore", "/target\n")?;
    extract_contract(&dir.join("wit"))?;
    let sdk = dir.join("vendor/tocsin-sdk");
    extract(&SDK, &sdk)?;
    std::fs::write(sdk.join("Cargo.toml"), standalone_sdk_manifest()?)?;
    Ok(dir)
}

/// A crate name cargo and wit-bindgen accept, that is also a plugin file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("`{name}` is not a plugin name: use lower-case letters, digits and `-`, starting with a letter (e.g. `disk-watch`)");
    }
    Ok(())
}

fn extract(dir: &Dir<'_>, to: &Path) -> anyhow::Result<()> {
    extract_but(dir, to, &[])
}

/// The contract a new plugin builds against: `wit/` without the frozen older versions
/// (`wit/0.1.0/`), which only the host reads.
fn extract_contract(to: &Path) -> anyhow::Result<()> {
    extract_but(&WIT, to, &["0.1.0"])
}

/// Writes `dir` under `to`, leaving out its subdirectories named in `skip`.
fn extract_but(dir: &Dir<'_>, to: &Path, skip: &[&str]) -> anyhow::Result<()> {
    for file in dir.files() {
        let path = to.join(file.path());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, file.contents())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for sub in dir.dirs() {
        if !skip.iter().any(|s| sub.path() == Path::new(s)) {
            extract_but(sub, to, &[])?;
        }
    }
    Ok(())
}

/// The SDK's manifest with every `workspace = true` replaced by the plugins workspace's value,
/// so the copy builds on its own.
fn standalone_sdk_manifest() -> anyhow::Result<String> {
    let workspace: toml::Table = toml::from_str(PLUGINS_WORKSPACE)?;
    let sdk_manifest = SDK
        .get_file("Cargo.toml")
        .and_then(|f| f.contents_utf8())
        .context("the embedded SDK has no Cargo.toml")?;
    let mut sdk: toml::Table = toml::from_str(sdk_manifest)?;
    let ws = workspace
        .get("workspace")
        .and_then(|w| w.as_table())
        .context("plugins/Cargo.toml has no [workspace]")?;
    let empty = toml::Table::new();
    let ws_package = ws
        .get("package")
        .and_then(|p| p.as_table())
        .unwrap_or(&empty);
    let ws_deps = ws
        .get("dependencies")
        .and_then(|p| p.as_table())
        .unwrap_or(&empty);
    if let Some(package) = sdk.get_mut("package").and_then(|p| p.as_table_mut()) {
        for (key, value) in package.iter_mut() {
            if is_inherited(value) {
                if let Some(v) = ws_package.get(key) {
                    *value = v.clone();
                }
            }
        }
    }
    for section in ["dependencies", "dev-dependencies"] {
        let Some(deps) = sdk.get_mut(section).and_then(|d| d.as_table_mut()) else {
            continue;
        };
        for (name, value) in deps.iter_mut() {
            if !is_inherited(value) {
                continue;
            }
            let mut resolved = match ws_deps.get(name) {
                Some(toml::Value::String(version)) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(version.clone()));
                    t
                }
                Some(toml::Value::Table(t)) => t.clone(),
                _ => {
                    bail!("the SDK inherits `{name}` but the plugins workspace does not define it")
                }
            };
            if let Some(local) = value.as_table() {
                for (k, v) in local {
                    if k != "workspace" {
                        resolved.insert(k.clone(), v.clone());
                    }
                }
            }
            *value = toml::Value::Table(resolved);
        }
    }
    Ok(format!(
        "# The tocsin SDK, copied by `tocsin plugin new` (tocsin {}).\n{}",
        env!("CARGO_PKG_VERSION"),
        toml::to_string(&sdk)?
    ))
}

fn is_inherited(value: &toml::Value) -> bool {
    value
        .as_table()
        .and_then(|t| t.get("workspace"))
        .and_then(|w| w.as_bool())
        == Some(true)
}
