//! Rebuild the `tocsin` binary when what `tocsin plugin new` embeds changes.
fn main() {
    for path in [
        "../../plugins/sdk",
        "../../plugins/Cargo.toml",
        "../../wit",
        "templates",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
