//! Plugins built against contract 0.2.0 (binaries kept in `tests/fixtures/contract-0.2.0/`,
//! never rebuilt) run unchanged on this host: what keeps the contract's next version honest
//! about not breaking them, as `contract_0_1.rs` does for 0.1.0.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tocsin_tests::{post_accepted, repo_root, wait_until, Env};

/// A fixture built against 0.2.0, as a pipeline file's `plugin = "…"` (a path).
fn frozen(name: &str) -> String {
    let path: PathBuf = repo_root().join("tests/fixtures/contract-0.2.0").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path.display().to_string()
}

/// The fixtures are the binaries their README lists, byte for byte: nobody rebuilt them.
#[test]
fn the_fixtures_are_the_frozen_builds() {
    let readme =
        std::fs::read_to_string(repo_root().join("tests/fixtures/contract-0.2.0/README.md"))
            .unwrap();
    for file in [
        "json.wasm",
        "backup_check.wasm",
        "threshold.wasm",
        "file.wasm",
        "matrix.wasm",
    ] {
        let digest = hex::encode(Sha256::digest(std::fs::read(frozen(file)).unwrap()));
        assert!(
            readme.contains(&format!("{digest}  {file}")),
            "{file} is not the build its README lists (sha256 {digest})"
        );
    }
}

/// `plugin inspect` names contract 0.2.0 for each, and says the host runs it.
#[test]
fn inspect_names_contract_0_2_and_says_it_fits() {
    for (file, world) in [
        ("json.wasm", "decoder-plugin"),
        ("backup_check.wasm", "source-plugin"),
        ("threshold.wasm", "filter-plugin"),
        ("file.wasm", "sink-plugin"),
        ("matrix.wasm", "sink-plugin"),
    ] {
        let out = tocsin_tests::plugin_inspect(&frozen(file));
        assert!(
            out.contains(&format!("world     tocsin:plugin/{world}@0.2.0")),
            "{out}"
        );
        assert!(out.contains("verdict   fits this host"), "{out}");
    }
}

/// json → threshold → file, each a frozen 0.2.0 build: the link and key a 0.2.0 decoder
/// reads reach the sink through the filter, the filter judges the metric, and the sink writes
/// what it wrote when it was built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_0_2_plugins_keeps_link_key_and_judgement() {
    let env = Env::new();
    env.mkdir("out");
    let out = env.path("out");
    env.write_pipeline(
        "frozen",
        &format!(
            r#"
[source]
plugin = "{json}"
auth = {{ none = true }}

[[filter]]
plugin = "{threshold}"
config = {{ metric = "cpu", above = {{ warn = 80 }}, key_labels = ["host"] }}

[[sink]]
name = "log"
plugin = "{file}"
config = {{ path = "{out}/alerts.jsonl" }}
grants = {{ write_dirs = ["{out}"] }}
"#,
            json = frozen("json.wasm"),
            threshold = frozen("threshold.wasm"),
            file = frozen("file.wasm"),
            out = out.display(),
        ),
    );
    let server = env.start().await;
    post_accepted(
        &server.base_url,
        "frozen",
        serde_json::json!({
            "body": "cpu 93", "labels": {"host": "db1"}, "metrics": {"cpu": 93.0},
            "link": "https://grafana.example/d/cpu?var-host=db1", "key": "cpu/db1"
        }),
    )
    .await;
    wait_until(Duration::from_secs(30), "the file sink's line", || {
        !env.read_lines("out/alerts.jsonl").is_empty()
    })
    .await;
    let line = &env.read_json_lines("out/alerts.jsonl")[0];
    assert_eq!(
        line["severity"], "warning",
        "the threshold judged it: {line}"
    );
    assert_eq!(line["link"], "https://grafana.example/d/cpu?var-host=db1");
    assert_eq!(line["key"], "cpu/db1");
    server.stop().await;
}
