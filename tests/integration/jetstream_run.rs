//! The real binary with its queues on a real 3-node JetStream cluster (`--queue`, three
//! replicas): under a steady stream of posts, a NATS server is killed, then tocsin itself
//! with SIGKILL; after a restart every message that got a `202` is delivered, each once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use tocsin_tests::nats::Nats;
use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::{file_sink, wait_until, Env};

/// An ingest pipeline writing what it delivers to `out/room.jsonl`.
fn pipeline(env: &Env) -> String {
    format!(
        "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n{}",
        file_sink(env, "room", "room.jsonl")
    )
}

/// Posts `m<n>` one after another until `stop` holds; the ids answered `202` go to `acked`.
fn keep_posting(base: String, acked: Arc<Mutex<Vec<String>>>, stop: Arc<Mutex<bool>>) {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut n = 0;
        while !*stop.lock().unwrap() {
            let id = format!("m{n}");
            n += 1;
            let sent = client
                .post(format!("{base}/ingest/stream"))
                .json(&json!({"id": id, "body": format!("message {id}")}))
                .send()
                .await;
            if sent.is_ok_and(|r| r.status() == 202) {
                acked.lock().unwrap().push(id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nats_server_and_a_killed_tocsin_lose_nothing_acknowledged() {
    let mut nats = Nats::cluster().await;
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline("stream", &pipeline(&env));
    let urls = nats.urls();
    let args = ["--queue", urls.as_str(), "--queue-replicas", "3"];
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(
        log.contains("JetStream nats://") && log.contains("3 replicas"),
        "the start-up line names the queue store: {log}"
    );

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(Mutex::new(false));
    keep_posting(tocsin.base_url.clone(), acked.clone(), stop.clone());
    let count = || acked.lock().unwrap().len();
    wait_until(Duration::from_secs(60), "100 acknowledged posts", || {
        count() >= 100
    })
    .await;
    // A NATS server dies mid-stream: two of three keep the quorum.
    nats.kill(0);
    let before = count();
    wait_until(
        Duration::from_secs(90),
        "100 more acknowledged posts",
        || count() >= before + 100,
    )
    .await;
    // Then tocsin dies mid-stream, and comes back on the same queues.
    tocsin.kill();
    *stop.lock().unwrap() = true;
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;

    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let delivered = || -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for line in env.read_json_lines("out/room.jsonl") {
            *seen
                .entry(line["id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        seen
    };
    wait_until(
        Duration::from_secs(120),
        "every acknowledged message delivered",
        || {
            let seen = delivered();
            acked.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    let twice: Vec<(String, usize)> = delivered().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    tocsin.kill();
}
