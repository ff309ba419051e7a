//! Agent → central: while the central tocsin is down, the agent's messages wait in its queue;
//! when it comes up, every message arrives once.

use std::collections::BTreeSet;
use std::time::Duration;

use tocsin_tests::{file_sink, free_port, wait_until, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_wait_while_the_central_instance_is_down_and_arrive_once() {
    let central_port = free_port();
    let agent = Env::new();
    std::fs::write(agent.path("central-token"), "fleet-tok").unwrap();
    agent.write_pipeline(
        "local",
        &format!(
            r#"
[source]
plugin = "json"
auth = {{ none = true }}

[[sink]]
name = "central"
plugin = "forward"
config = {{ central = "http://127.0.0.1:{central_port}", pipeline = "fleet", agent = "db1" }}
grants = {{ hosts = ["127.0.0.1:{central_port}"], secrets = {{ token = "file:{token}" }} }}
retry = {{ max_attempts = 1000, initial = "200ms", max = "1s" }}
"#,
            token = agent.path("central-token").display(),
        ),
    );
    let agent_server = agent.start().await;
    let client = reqwest::Client::new();
    for i in 0..5 {
        let resp = client
            .post(format!("{}/ingest/local", agent_server.base_url))
            .json(&serde_json::json!({"body": format!("event {i}"), "severity": "warning"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    // The central instance is down: the messages wait, and are retried.
    // (Handed over to the sink queue one request at a time; several deliveries run at once.)
    wait_until(
        Duration::from_secs(20),
        "all five waiting, failed attempts",
        || {
            agent_server.queue.depths("local").unwrap().sinks == vec![("central".to_string(), 5)]
                && agent_server.counter("local", |c| &c.retries) >= 2
        },
    )
    .await;
    assert_eq!(agent_server.counter("local", |c| &c.dead_lettered), 0);

    // The central instance comes up on the port the agent points at.
    let central = Env::new();
    central.mkdir("out");
    std::fs::write(central.path("token"), "fleet-tok").unwrap();
    central.write_pipeline(
        "fleet",
        &format!(
            "[source]\nplugin = \"json\"\nauth = {{ bearer = \"file:{}\" }}\n\n{}",
            central.path("token").display(),
            file_sink(&central, "out", "fleet.jsonl")
        ),
    );
    let central_server = central
        .start_with(|s| s.listen = Some(([127, 0, 0, 1], central_port).into()))
        .await;
    wait_until(Duration::from_secs(30), "all five at the centre", || {
        central.read_lines("out/fleet.jsonl").len() >= 5
    })
    .await;
    wait_until(Duration::from_secs(10), "the agent's queue drained", || {
        agent_server.queue.depths("local").unwrap().sinks.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = central.read_json_lines("out/fleet.jsonl");
    let ids: BTreeSet<String> = lines
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert_eq!(ids.len(), 5, "each once: {ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("db1/req-")), "{ids:?}");
    let bodies: BTreeSet<&str> = lines.iter().map(|l| l["body"].as_str().unwrap()).collect();
    assert_eq!(bodies.len(), 5);
    assert!(lines[0]["labels"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(["agent", "db1"])));
    central_server.stop().await;
    agent_server.stop().await;
}
