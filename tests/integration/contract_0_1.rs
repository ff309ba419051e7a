//! Plugins built against contract 0.1.0 (binaries kept in `tests/fixtures/contract-0.1.0/`,
//! never rebuilt) run unchanged on this host, alone and mixed with 0.2.0 plugins.

use std::path::PathBuf;
use std::time::Duration;

use tocsin_tests::synapse::Synapse;
use tocsin_tests::{age_file, post_accepted, repo_root, wait_until, Env};

/// A fixture built against 0.1.0, as a pipeline file's `plugin = "…"` (a path).
fn old(name: &str) -> String {
    let path: PathBuf = repo_root().join("tests/fixtures/contract-0.1.0").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path.display().to_string()
}

/// `plugin inspect` names the contract of each, and says the host runs it.
#[test]
fn inspect_names_contract_0_1_and_says_it_fits() {
    for (file, world) in [
        ("json.wasm", "decoder-plugin"),
        ("backup_check.wasm", "source-plugin"),
        ("threshold.wasm", "filter-plugin"),
        ("matrix.wasm", "sink-plugin"),
    ] {
        let out = tocsin_tests::plugin_inspect(&old(file));
        assert!(
            out.contains(&format!("world     tocsin:plugin/{world}@0.1.0")),
            "{out}"
        );
        assert!(out.contains("still runs 0.1.0 plugins"), "{out}");
    }
}

/// backup-check → threshold → matrix + file, every one of them a 0.1.0 build, against a real
/// Synapse: the stale backup is posted once, as before the contract changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_0_1_plugins_posts_to_a_real_matrix_room() {
    let synapse = Synapse::start().await;
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    let backup = env.path("backups/db1-2026-11-20.tar");
    std::fs::write(&backup, vec![0u8; 1024]).unwrap();
    age_file(&backup, Duration::from_secs(3 * 86_400));
    let token_file = env.path("matrix-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    let (backups, out) = (env.path("backups"), env.path("out"));
    env.write_pipeline(
        "nightly",
        &format!(
            r#"
[source]
plugin = "{source}"
schedule = "* * * * * *"
config = {{ dir = "{backups}", pattern = "*.tar", host = "db1" }}
grants = {{ read_dirs = ["{backups}"] }}

[[filter]]
plugin = "{threshold}"
config = {{ metric = "backup-age-seconds", above = {{ warn = 93600, error = 180000 }}, key_labels = ["host"] }}

[[sink]]
name = "room"
plugin = "{matrix}"
config = {{ homeserver = "{base}", room = "{room}" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ access_token = "file:{token}" }} }}

[[sink]]
name = "log"
plugin = "{file}"
config = {{ path = "{out}/alerts.jsonl" }}
grants = {{ write_dirs = ["{out}"] }}
"#,
            source = old("backup_check.wasm"),
            threshold = old("threshold.wasm"),
            matrix = old("matrix.wasm"),
            file = old("file.wasm"),
            backups = backups.display(),
            out = out.display(),
            base = synapse.base,
            room = synapse.room,
            port = synapse.port,
            token = token_file.display(),
        ),
    );
    let server = env.start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    while messages.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the room"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        messages = synapse.messages().await;
    }
    let (body, _) = &messages[0];
    assert!(
        body.starts_with("🔥 ERROR: backup-age-seconds on db1\n"),
        "{body}"
    );
    wait_until(Duration::from_secs(30), "the file sink's line", || {
        !env.read_lines("out/alerts.jsonl").is_empty()
    })
    .await;
    let line = &env.read_json_lines("out/alerts.jsonl")[0];
    assert_eq!(line["severity"], "error");
    assert!(
        line.get("link").is_none(),
        "a 0.1.0 file sink writes what it always wrote: {line}"
    );
    server.stop().await;
}

/// A 0.2.0 decoder's link and key survive a 0.1.0 filter (its outputs inherit them) on the
/// way to a 0.2.0 sink; a 0.1.0 sink beside it gets the same message without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_and_key_pass_through_a_0_1_filter_to_a_0_2_sink() {
    let env = Env::new();
    env.mkdir("out");
    let out = env.path("out");
    env.write_pipeline(
        "mixed",
        &format!(
            r#"
[source]
plugin = "json"
auth = {{ none = true }}

[[filter]]
plugin = "{threshold}"
config = {{ metric = "cpu", above = {{ warn = 80 }}, key_labels = ["host"] }}

[[sink]]
name = "new"
plugin = "file"
config = {{ path = "{out}/new.jsonl" }}
grants = {{ write_dirs = ["{out}"] }}

[[sink]]
name = "old"
plugin = "{file}"
config = {{ path = "{out}/old.jsonl" }}
grants = {{ write_dirs = ["{out}"] }}
"#,
            threshold = old("threshold.wasm"),
            file = old("file.wasm"),
            out = out.display(),
        ),
    );
    let server = env.start().await;
    post_accepted(
        &server.base_url,
        "mixed",
        serde_json::json!({
            "body": "cpu 93", "labels": {"host": "db1"}, "metrics": {"cpu": 93.0},
            "link": "https://grafana.example/d/cpu?var-host=db1", "key": "cpu/db1"
        }),
    )
    .await;
    wait_until(Duration::from_secs(30), "both sinks' lines", || {
        !env.read_lines("out/new.jsonl").is_empty() && !env.read_lines("out/old.jsonl").is_empty()
    })
    .await;
    let new = &env.read_json_lines("out/new.jsonl")[0];
    assert_eq!(
        new["severity"], "warning",
        "the 0.1.0 threshold judged it: {new}"
    );
    assert_eq!(new["link"], "https://grafana.example/d/cpu?var-host=db1");
    assert_eq!(new["key"], "cpu/db1");
    let old_line = &env.read_json_lines("out/old.jsonl")[0];
    assert_eq!(old_line["severity"], "warning");
    assert!(old_line.get("link").is_none(), "{old_line}");
    server.stop().await;
}
