//! `tocsin plugin …`: commands for plugin authors (part of the `tocsin` binary, not the
//! library).

use std::path::Path;
use std::process::ExitCode;

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
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&found))?);
    } else {
        print!("{}", to_text(&found));
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
    let world = match found.kind {
        Some(kind) => format!("{CONTRACT_PACKAGE}/{}", kind.world()),
        None => "none of ours".to_string(),
    };
    let verdict = match &found.verdict {
        Ok(()) => format!("fits this host ({CONTRACT_PACKAGE}@{CONTRACT_VERSION})"),
        Err(why) => format!("does not fit: {why}"),
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

fn to_json(found: &Inspection) -> serde_json::Value {
    serde_json::json!({
        "file": found.path,
        "size": found.size,
        "sha256": found.sha256,
        "kind": found.kind.map(|k| k.interface()),
        "world": found.kind.map(|k| format!("{CONTRACT_PACKAGE}/{}", k.world())),
        "exports": found.exports,
        "imports": found.imports,
        "fits": found.verdict.is_ok(),
        "reason": found.verdict.as_ref().err(),
        "host_contract": format!("{CONTRACT_PACKAGE}@{CONTRACT_VERSION}"),
    })
}
