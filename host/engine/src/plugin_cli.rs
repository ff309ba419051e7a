//! `tocsin plugin …`: commands for plugin authors (part of the `tocsin` binary, not the
//! library).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use tocsin_config::plugin_origin::PluginOrigin;
use tocsin_config::settings;
use tocsin_runtime::{Inspection, Runtime, RuntimeConfig, CONTRACT_PACKAGE, CONTRACT_VERSION};

use crate::scaffold::{self, Kind};
use crate::Lang;

/// `tocsin plugin new`: a plugin project in `parent/name`.
pub fn new(parent: &Path, name: &str, kind: Kind, lang: Lang) -> anyhow::Result<ExitCode> {
    let dir = match lang {
        Lang::Rust => scaffold::new_rust_plugin(parent, name, kind)?,
        Lang::Python => scaffold::new_python_plugin(parent, name, kind)?,
    };
    println!(
        "created {}; next: see {}/README.md",
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tocsin plugin inspect FILE|NAME`: what a component is and whether this host can run it —
/// a `.wasm` file, or the name of a plugin built into the binary. Exit 0 when it fits, 1 with
/// the reason when it does not.
pub fn inspect(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default()).map_err(anyhow::Error::msg)?;
    let built_in = path
        .to_str()
        .filter(|_| !path.exists())
        .and_then(|name| tocsin::embedded_plugins::resolver(Vec::new()).embedded(name));
    let origin = match built_in {
        Some(plugin) => PluginOrigin::Embedded(plugin),
        None => PluginOrigin::File(path.to_path_buf()),
    };
    let found = runtime.inspect_from(&origin)?;
    let bytes = origin.read()?;
    let schema = settings::schema_in(&bytes).map_err(anyhow::Error::msg)?;
    if json {
        let mut value = to_json(&found);
        value["settings"] = schema.unwrap_or(serde_json::Value::Null);
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", to_text(&found));
        print!("{}", settings_text(schema.as_ref()));
    }
    Ok(match &found.verdict {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("error: {origin} {why}");
            ExitCode::FAILURE
        }
    })
}

fn to_text(found: &Inspection) -> String {
    let world = match (found.kind, found.contract) {
        (Some(kind), Some(contract)) => {
            // The version it was built against, as its export names it (0.2.0 on a 0.2.1
            // host), else the contract's newest.
            let exported = format!("{CONTRACT_PACKAGE}/{}@", kind.interface());
            let version = found
                .exports
                .iter()
                .find_map(|e| e.strip_prefix(&exported))
                .map_or_else(|| contract.to_string(), str::to_string);
            format!("{CONTRACT_PACKAGE}/{}@{version}", kind.world())
        }
        _ => "none of ours".to_string(),
    };
    let verdict = match (&found.verdict, found.contract) {
        (Ok(()), Some(contract)) if contract == tocsin_runtime::Contract::V0_1 => format!(
            "fits this host, which speaks {CONTRACT_PACKAGE}@{CONTRACT_VERSION} and still runs \
             {contract} plugins (messages it makes carry no link or key; a sink gets one \
             message per call)"
        ),
        (Ok(()), _) => format!("fits this host ({CONTRACT_PACKAGE}@{CONTRACT_VERSION})"),
        (Err(why), _) => format!("does not fit: {why}"),
    };
    let list = |items: &[String]| items.join("\n          ");
    format!(
        "file      {}\nsize      {} bytes ({:.1} KiB)\nsha256    {}\nworld     {world}\n\
         exports   {}\nimports   {}\nverdict   {verdict}\n",
        found.origin,
        found.size,
        found.size as f64 / 1024.0,
        found.sha256,
        list(&found.exports),
        list(&found.imports),
    )
}

/// The `settings` lines of `inspect`: each setting with its type, whether it is required or
/// its default, and its meaning.
fn settings_text(schema: Option<&serde_json::Value>) -> String {
    let Some(schema) = schema else {
        return "settings  none declared: a pipeline's `config` for it is not checked\n".into();
    };
    let rows = settings::settings_rows(schema);
    if rows.is_empty() {
        return "settings  none: it takes no `config`\n".into();
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let label = if i == 0 { "settings  " } else { "          " };
        out += &format!("{label}{:width$}  {}; {}\n", row.name, row.kind, need(row),);
        if !row.description.is_empty() {
            out += &format!("          {:width$}  {}\n", "", row.description);
        }
    }
    out
}

/// "required", "default 5", or "optional".
fn need(row: &settings::SettingRow) -> String {
    match (&row.default, row.required) {
        (_, true) => "required".into(),
        (Some(default), false) => format!("default {default}"),
        (None, false) => "optional".into(),
    }
}

fn to_json(found: &Inspection) -> serde_json::Value {
    serde_json::json!({
        "file": found.origin.to_string(),
        "size": found.size,
        "sha256": found.sha256,
        "kind": found.kind.map(|k| k.interface()),
        "world": found.kind.map(|k| format!("{CONTRACT_PACKAGE}/{}", k.world())),
        "contract": found.contract.map(|c| c.version()),
        "exports": found.exports,
        "imports": found.imports,
        "fits": found.verdict.is_ok(),
        "reason": found.verdict.as_ref().err(),
        "host_contract": format!("{CONTRACT_PACKAGE}@{CONTRACT_VERSION}"),
    })
}

/// One plugin `tocsin plugin ls` lists.
#[derive(Debug, serde::Serialize)]
struct Listed {
    /// The name a pipeline writes (`json`; a file's name without `.wasm`).
    name: String,
    /// The file, or `built in`.
    from: String,
    /// sha256 of the component (hex): what a pipeline pins with `sha256 = "…"`.
    sha256: String,
    /// Its size in bytes.
    size: usize,
    /// The copy a pipeline naming it runs, when an earlier directory has another.
    overridden_by: Option<String>,
}

/// `tocsin plugin ls`: every plugin a pipeline can name — in the plugin directories, in order,
/// then the ones built into the binary — with where it comes from and its sha256; a copy
/// that an earlier one of the same name overrides says so.
pub fn ls(dirs: &[PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut found: Vec<Listed> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push(listed(name, file.display().to_string(), &bytes));
        }
    }
    for plugin in tocsin::embedded_plugins::PLUGINS {
        found.push(listed(plugin.name.into(), "built in".into(), plugin.bytes));
    }
    // A name resolves to its first copy (`rate_limit.wasm` answers to `rate-limit` too).
    for i in 0..found.len() {
        let same = |other: &Listed| other.name.replace('_', "-") == found[i].name.replace('_', "-");
        if let Some(first) = found[..i].iter().find(|other| same(other)) {
            found[i].overridden_by = Some(first.from.clone());
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = found.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
    println!("{:width$}  {:64}  FROM", "NAME", "SHA256");
    for p in &found {
        let from = match &p.overridden_by {
            Some(by) => format!("{} (overridden by {by})", p.from),
            None => p.from.clone(),
        };
        println!("{:width$}  {}  {from}", p.name, p.sha256);
    }
    Ok(ExitCode::SUCCESS)
}

fn listed(name: String, from: String, bytes: &[u8]) -> Listed {
    use sha2::Digest as _;
    Listed {
        name,
        from,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        size: bytes.len(),
        overridden_by: None,
    }
}
