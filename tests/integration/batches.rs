//! Sinks that take several messages per call (contract 0.2.0 `batch-limit`) get them in
//! batches when many are due, each message still delivered exactly once.

use std::collections::HashSet;
use std::time::Duration;

use tocsin_tests::{file_sink, post_accepted, wait_until, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_a_file_sink_in_batches_each_message_once() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "burst",
        &format!(
            "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n{}",
            file_sink(&env, "out", "burst.jsonl")
        ),
    );
    let server = env.start().await;
    let burst: Vec<serde_json::Value> = (0..300)
        .map(|i| serde_json::json!({"id": format!("m{i}"), "body": format!("alert {i}")}))
        .collect();
    post_accepted(&server.base_url, "burst", serde_json::Value::Array(burst)).await;
    wait_until(Duration::from_secs(60), "300 lines", || {
        env.read_lines("out/burst.jsonl").len() >= 300
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = env.read_json_lines("out/burst.jsonl");
    assert_eq!(lines.len(), 300, "no message twice");
    let ids: HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 300, "every message once");
    let batched = lines
        .iter()
        .filter(|l| {
            let key = l["idempotency_key"].as_str().unwrap();
            key.starts_with("sha256:") && key.contains('/')
        })
        .count();
    assert!(
        batched >= 100,
        "a burst of 300 is delivered in batches (lines keyed `<batch key>/<n>`): {batched} were"
    );
    assert_eq!(server.counter("burst", |c| &c.delivered), 300);
    server.stop().await;
}
