//! A sink written in Python (`examples/python-sink`, built with componentize-py from PyPI)
//! runs in a pipeline under the same contract as the Rust plugins: it is recognised as a sink,
//! delivers what ingest took in, honours idempotency keys, and reports a bad config.

use std::time::Duration;

use tocsin::status::PipelineState;
use tocsin_tests::python::python_plugins_dir;
use tocsin_tests::{plugins_dir, post_json_message, tocsin_bin, wait_until, Env, OPEN_JSON_SOURCE};

fn pipeline(env: &Env, config_extra: &str) -> String {
    let out = env.path("out").display().to_string();
    format!(
        "{OPEN_JSON_SOURCE}[[sink]]\nname = \"archive\"\nplugin = \"python-jsonl\"\n\
         config = {{ path = \"{out}/archive.jsonl\"{config_extra} }}\n\
         grants = {{ write_dirs = [\"{out}\"] }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sink_delivers_once_per_idempotency_key() {
    let python = python_plugins_dir();
    let inspected = std::process::Command::new(tocsin_bin())
        .args(["plugin", "inspect"])
        .arg(python.join("python_jsonl.wasm"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspected.stdout);
    assert!(inspected.status.success(), "{text}");
    assert!(
        text.contains("world     tocsin:plugin/sink-plugin"),
        "{text}"
    );

    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline("archive", &pipeline(&env, ""));
    env.write_pipeline("broken", &pipeline(&env, ", colour = \"red\""));
    let server = env
        .start_with(|s| s.plugin_dirs = vec![plugins_dir().to_path_buf(), python.to_path_buf()])
        .await;
    for id in ["m1", "m2", "m1"] {
        assert_eq!(
            post_json_message(&server.base_url, "archive", id).await,
            202
        );
    }
    wait_until(Duration::from_secs(30), "both delivered", || {
        server.counter("archive", |c| &c.delivered) == 3
    })
    .await;
    let lines = env.read_json_lines("out/archive.jsonl");
    let mut ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort(); // m1 and m2 are delivered side by side (the sink's default concurrency)
    assert_eq!(ids, ["m1", "m2"], "the repeated m1 was caught by its key");
    let m1 = lines.iter().find(|l| l["id"] == "m1").unwrap();
    assert_eq!(m1["body"], "message m1");
    assert_eq!(m1["idempotency_key"], "archive/archive/m1");

    // Its own config check reaches the operator as the pipeline's failure.
    wait_until(Duration::from_secs(10), "broken fails", || {
        matches!(server.state("broken"), Some(PipelineState::Failed(_)))
    })
    .await;
    let Some(PipelineState::Failed(why)) = server.state("broken") else {
        unreachable!()
    };
    assert!(why.contains("unknown config field(s): colour"), "{why}");
    server.stop().await;
}
