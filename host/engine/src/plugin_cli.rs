//! `tocsin plugin …`: commands for plugin authors (part of the `tocsin` binary, not the
//! library).

use std::path::Path;
use std::process::ExitCode;

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

/// `tocsin plugin inspect FILE`: what a component is and whether this host can run it.
/// Exit 0 when it fits, 1 with the reason when it does not.
pub fn inspect(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default()).map_err(anyhow::Error::msg)?;
    let found = runtime.inspect(path)?;
    let bytes = std::fs::read(path)?;
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
            eprintln!("error: {} {why}", path.display());
            ExitCode::FAILURE
        }
    })
}

fn to_text(found: &Inspection) -> String {
    let world = match (found.kind, found.contract) {
        (Some(kind), Some(contract)) => format!("{CONTRACT_PACKAGE}/{}@{contract}", kind.world()),
        _ => "none of ours".to_string(),
    };
    let verdict = match (&found.verdict, found.contract) {
        (Ok(()), Some(contract)) if contract.version() != CONTRACT_VERSION => format!(
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
        found.path.display(),
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
        "file": found.path,
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
