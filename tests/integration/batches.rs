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

/// A burst through a batching sink that must keep order — the whole sink (`concurrency = 1`),
/// or one alert's messages (one `fingerprint`) at the default concurrency — still goes in
/// batches, and the file holds the messages in the order they were posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_must_keep_its_order_is_batched_in_order() {
    for (pipeline, concurrency, fingerprint) in [
        ("strict", "concurrency = 1\n", None),
        ("one-alert", "", Some("disk-db1")),
    ] {
        let env = Env::new();
        env.mkdir("out");
        env.write_pipeline(
            pipeline,
            &format!(
                "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n{}{concurrency}",
                file_sink(&env, "out", "burst.jsonl")
            ),
        );
        let server = env.start().await;
        let burst: Vec<serde_json::Value> = (0..300)
            .map(|i| {
                let mut m =
                    serde_json::json!({"id": format!("m{i}"), "body": format!("alert {i}")});
                if let Some(fp) = fingerprint {
                    m["labels"] = serde_json::json!({ "fingerprint": fp });
                }
                m
            })
            .collect();
        post_accepted(&server.base_url, pipeline, serde_json::Value::Array(burst)).await;
        wait_until(Duration::from_secs(60), "300 lines", || {
            env.read_lines("out/burst.jsonl").len() >= 300
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = env.read_json_lines("out/burst.jsonl");
        let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        let posted: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
        assert_eq!(
            ids, posted,
            "{pipeline}: every message once, in the order posted"
        );
        let batched = lines
            .iter()
            .filter(|l| {
                l["idempotency_key"]
                    .as_str()
                    .unwrap()
                    .starts_with("sha256:")
            })
            .count();
        assert!(
            batched >= 100,
            "{pipeline}: a burst of 300 in order is still delivered in batches: {batched} were"
        );
        server.stop().await;
    }
}
