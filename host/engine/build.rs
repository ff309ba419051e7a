//! Rebuild the `tocsin` binary when what `tocsin plugin new` and `tocsin init` embed changes.
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
}
