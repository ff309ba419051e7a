//! The real binary with its queues on real JetStream (`--queue`). On a 3-node cluster with
//! three replicas, under a steady stream of posts, a NATS server is killed, then tocsin itself
//! with SIGKILL; after a restart every message that got a `202` is delivered, each once. And
//! a hot standby (`--queue-standby`) runs nothing while the active node lives, and takes over
//! when it is killed, delivering what the active one had accepted.

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

/// How many times each id reached `out/room.jsonl`.
fn delivered(env: &Env) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in env.read_json_lines("out/room.jsonl") {
        *seen
            .entry(line["id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    seen
}

/// Posts `<prefix><n>` one after another until `stop` holds; the ids answered `202` go to
/// `acked`.
fn keep_posting(
    base: String,
    prefix: &'static str,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<Mutex<bool>>,
) {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut n = 0;
        while !*stop.lock().unwrap() {
            let id = format!("{prefix}{n}");
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
    keep_posting(tocsin.base_url.clone(), "m", acked.clone(), stop.clone());
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
    let delivered = || delivered(&env);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_runs_nothing_then_takes_over_when_the_active_node_is_killed() {
    let nats = Nats::single().await;
    let urls = nats.urls();
    // Two machines' worth of tocsin: data directories apart, the same pipeline files, one
    // JetStream namespace; the sink writes where the test reads.
    let (active_env, standby_env) = (Env::new(), Env::new());
    active_env.mkdir("out");
    let text = pipeline(&active_env);
    active_env.write_pipeline("stream", &text);
    standby_env.write_pipeline("stream", &text);
    let (active_port, standby_port) = (Port::free(), Port::free());
    let mut active = Tocsin::spawn(&active_env, &active_port, &["--queue", &urls]);
    active
        .wait_serving(&active_env, Duration::from_secs(60))
        .await;
    let mut standby = Tocsin::spawn(
        &standby_env,
        &standby_port,
        &["--queue", &urls, "--queue-standby"],
    );
    wait_until(
        Duration::from_secs(30),
        "the standby says it stands by",
        || {
            std::fs::read_to_string(standby_env.path("tocsin.log"))
                .is_ok_and(|l| l.contains("standing by"))
        },
    )
    .await;
    let standby_url = format!("http://127.0.0.1:{}/healthz", standby_port.0);
    assert!(
        reqwest::get(&standby_url).await.is_err(),
        "a standby serves nothing and runs no pipeline"
    );

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(Mutex::new(false));
    keep_posting(active.base_url.clone(), "a", acked.clone(), stop.clone());
    wait_until(
        Duration::from_secs(60),
        "100 posts to the active node",
        || acked.lock().unwrap().len() >= 100,
    )
    .await;
    active.kill();
    *stop.lock().unwrap() = true;
    standby
        .wait_serving(&standby_env, Duration::from_secs(60))
        .await;
    let stop = Arc::new(Mutex::new(false));
    keep_posting(standby.base_url.clone(), "b", acked.clone(), stop.clone());
    wait_until(
        Duration::from_secs(60),
        "50 posts to the new active node",
        || {
            acked
                .lock()
                .unwrap()
                .iter()
                .filter(|id| id.starts_with('b'))
                .count()
                >= 50
        },
    )
    .await;
    *stop.lock().unwrap() = true;
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    wait_until(
        Duration::from_secs(120),
        "every message either node accepted delivered",
        || {
            let seen = delivered(&active_env);
            acked.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    let twice: Vec<(String, usize)> = delivered(&active_env)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    standby.kill();
}
