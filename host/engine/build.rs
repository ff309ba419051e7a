//! Rebuild the `tocsin` binary when what `tocsin plugin new` and `tocsin init` embed changes,
//! and embed the shipped plugins' components (`src/embedded.rs`).
//!
//! The shipped plugins are the plugin workspace's default members but the SDK; their built
//! components are read from `TOCSIN_EMBED_PLUGINS` when set, else from
//! `plugins/target/wasm32-wasip2/release` (what `make plugins` builds). When one is missing
//! there, this script builds the plugin workspace first (so `cargo install --path host/engine`
//! from a fresh clone gives a binary with its plugins); a plugin that still cannot be built is
//! left out with a warning, and the binary then finds it only in a plugin directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    for path in [
        "../../plugins/sdk",
        "../../plugins/Cargo.toml",
        "../../wit",
        "templates",
        "../../pipelines/with-servers",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=TOCSIN_EMBED_PLUGINS");

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let repo = manifest_dir.join("../..");
    let built = std::env::var_os("TOCSIN_EMBED_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("plugins/target/wasm32-wasip2/release"));

    let shipped = shipped_plugins(&repo.join("plugins/Cargo.toml"));
    let component = |name: &str| built.join(format!("{}.wasm", name.replace('-', "_")));
    let custom_dir = std::env::var_os("TOCSIN_EMBED_PLUGINS").is_some();
    if !custom_dir && shipped.iter().any(|name| !component(name).is_file()) {
        build_plugins(&repo.join("plugins"));
    }

    let mut code = String::from(
        "/// The shipped plugins' components, as built when this binary was.\n\
         pub static PLUGINS: &[tocsin_config::plugin_origin::EmbeddedPlugin] = &[\n",
    );
    let mut missing = Vec::new();
    for name in shipped {
        let file = component(&name);
        println!("cargo:rerun-if-changed={}", file.display());
        if !file.is_file() {
            missing.push(name);
            continue;
        }
        let file = file
            .canonicalize()
            .expect("an existing file has a canonical path");
        writeln!(
            code,
            "    tocsin_config::plugin_origin::EmbeddedPlugin {{ name: {name:?}, bytes: include_bytes!({:?}) }},",
            file.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    if !missing.is_empty() {
        println!(
            "cargo:warning=plugins not built in (no component in {}): {}; build them first (make plugins)",
            built.display(),
            missing.join(", ")
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("embedded_plugins.rs"), code).expect("OUT_DIR is writable");
}

/// `cargo build --release` in the plugin workspace (its own target, wasm32-wasip2), with the
/// same cargo and none of this build's settings that would change it (target dir, flags).
fn build_plugins(workspace: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(workspace)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => println!(
            "cargo:warning=building the plugins in {} failed ({other:?}); is the wasm32-wasip2 \
             target installed (rustup target add wasm32-wasip2)?",
            workspace.display()
        ),
    }
}

/// The default members of the plugin workspace, but the SDK: the plugins tocsin ships.
fn shipped_plugins(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("plugins/Cargo.toml is in the repository");
    let value: toml::Table = toml::from_str(&text).expect("plugins/Cargo.toml is valid TOML");
    value["workspace"]["default-members"]
        .as_array()
        .expect("the plugin workspace lists its default members")
        .iter()
        .filter_map(|member| member.as_str())
        .filter(|member| *member != "sdk")
        .map(str::to_string)
        .collect()
}
