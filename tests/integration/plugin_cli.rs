//! `tocsin plugin inspect`: what a component is, and a clear refusal for a core module, a file
//! that is not wasm, a component of no world of ours and one built for a newer contract.

use std::process::Command;

use sha2::{Digest, Sha256};
use tocsin_tests::{plugins_dir, tocsin_bin};

/// Runs `tocsin plugin inspect ARGS`; returns (success, stdout, stderr).
fn inspect(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(tocsin_bin())
        .args(["plugin", "inspect"])
        .args(args)
        .output()
        .expect("tocsin runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of a built plugin with every `from` in its bytes replaced by `to` (same length), so
/// its names change while it stays a valid component.
fn patched(dir: &std::path::Path, plugin: &str, from: &str, to: &str) -> std::path::PathBuf {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(plugins_dir().join(format!("{plugin}.wasm"))).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from.as_bytes() {
            bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
            hits += 1;
        }
        i += 1;
    }
    assert!(hits > 0, "`{from}` not in {plugin}.wasm");
    let path = dir.join(format!("{plugin}-patched.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn inspect_describes_a_plugin_and_refuses_misfits_clearly() {
    let sink = plugins_dir().join("matrix.wasm");
    let (ok, out, _) = inspect(&[sink.as_os_str()]);
    assert!(ok, "{out}");
    let digest = hex::encode(Sha256::digest(std::fs::read(&sink).unwrap()));
    for needle in [
        "world     tocsin:plugin/sink-plugin@0.2.1",
        "tocsin:plugin/sink@0.2.1",
        "wasi:http/outgoing-handler",
        "verdict   fits this host",
        digest.as_str(),
        // Its settings, from the schema the component carries.
        "settings  homeserver    a string; required",
        "msgtype       one of \"m.notice\", \"m.text\"; default \"m.notice\"",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    let (ok, json, _) = inspect(&[
        plugins_dir().join("threshold.wasm").as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["kind"], "filter");
    assert_eq!(v["fits"], true);
    assert_eq!(v["settings"]["required"], serde_json::json!(["metric"]));
    // A plugin that declares no settings says so.
    let (ok, out, _) = inspect(&[plugins_dir().join("hostile.wasm").as_os_str()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("settings  none declared: a pipeline's `config` for it is not checked"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, [0, b'a', b's', b'm', 1, 0, 0, 0]).unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let newer = patched(
        dir.path(),
        "threshold",
        "tocsin:plugin/filter@0.2.1",
        "tocsin:plugin/filter@0.9.0",
    );
    let foreign = patched(
        dir.path(),
        "stdout",
        "tocsin:plugin/sink@0.2.1",
        "example:other/sink@0.2.1",
    );
    for (file, reason) in [
        (&core, "core WebAssembly module, not a component"),
        (&text, "not a WebAssembly file"),
        (
            &newer,
            "is built for tocsin:plugin@0.9.0; this host speaks tocsin:plugin@0.1.0 and tocsin:plugin@0.2.1",
        ),
        (&foreign, "exports none of the tocsin:plugin interfaces"),
    ] {
        let (ok, out, err) = inspect(&[file.as_os_str()]);
        assert!(!ok, "{} must not fit:\n{out}", file.display());
        assert!(err.contains(reason), "`{reason}` not in:\n{err}{out}");
    }
    let (ok, _, err) = inspect(&[dir.path().join("missing.wasm").as_os_str()]);
    assert!(!ok);
    assert!(err.contains("missing.wasm"), "{err}");
}
