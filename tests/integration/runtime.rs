//! Loading plugins: the compile cache, digest pins, and clear refusals of what is not a
//! tocsin plugin.

use tocsin_runtime::cache::CacheOutcome;
use tocsin_runtime::{PluginKind, Runtime, RuntimeConfig};
use tocsin_tests::plugins_dir;

#[test]
fn a_plugin_is_compiled_once_then_loaded_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let wasm = plugins_dir().join("threshold.wasm");
    let first = Runtime::new(config.clone())
        .unwrap()
        .load(&wasm, None)
        .unwrap();
    assert_eq!(first.cache, CacheOutcome::Compiled);
    assert_eq!(first.kind, PluginKind::Filter);
    // A new runtime (as after a restart) finds the artifact.
    let second = Runtime::new(config).unwrap().load(&wasm, None).unwrap();
    assert_eq!(second.cache, CacheOutcome::Hit);
    assert_eq!(second.sha256, first.sha256);
}

#[test]
fn a_damaged_cache_artifact_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let wasm = plugins_dir().join("stdout.wasm");
    let plugin = Runtime::new(config.clone())
        .unwrap()
        .load(&wasm, None)
        .unwrap();
    let engine_dir = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(
        engine_dir.join(format!("{}.cwasm", plugin.sha256)),
        b"garbage",
    )
    .unwrap();
    let again = Runtime::new(config).unwrap().load(&wasm, None).unwrap();
    assert_eq!(again.cache, CacheOutcome::Compiled);
}

#[test]
fn kinds_are_recognised_from_exports() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    for (name, kind) in [
        ("backup_check", PluginKind::Source),
        ("threshold", PluginKind::Filter),
        ("matrix", PluginKind::Sink),
        ("file", PluginKind::Sink),
    ] {
        let p = rt
            .load(&plugins_dir().join(format!("{name}.wasm")), None)
            .unwrap();
        assert_eq!(p.kind, kind, "{name}");
    }
}

#[test]
fn a_wrong_pin_a_core_module_and_garbage_are_refused_clearly() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let wasm = plugins_dir().join("threshold.wasm");
    let err = rt
        .load(&wasm, Some(&"0".repeat(64)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the pinned"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    // The smallest core module: magic + version 1.
    std::fs::write(&core, [0, b'a', b's', b'm', 1, 0, 0, 0]).unwrap();
    let err = rt.load(&core, None).unwrap_err().to_string();
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho hi\n").unwrap();
    let err = rt.load(&junk, None).unwrap_err().to_string();
    assert!(err.contains("not a WebAssembly file"), "{err}");
}
