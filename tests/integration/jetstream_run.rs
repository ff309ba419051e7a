//! The real binary with its queues on real JetStream (`--queue`). On a 3-node cluster with
//! three replicas, under a steady stream of posts, a NATS server is killed, then tocsin itself
//! with SIGKILL; after a restart every message that got a `202` is delivered, each once. And
//! two tocsin nodes on one namespace both take posts while one delivers; killed, it is
//! replaced by the other, and a lost NATS server after it loses nothing: every acknowledged
//! message delivered once, in order per key, each cron tick polled once in the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use tocsin_tests::nats::Nats;
use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::{
    api_get, file_sink, metric_value, wait_until, write_api_tokens, Env, ADMIN_TOKEN,
};

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
                .json(&json!({"id": id, "key": prefix, "body": format!("message {id}")}))
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

/// A scheduled pipeline polling every second, writing to `out/ticks.jsonl` of `out_env`.
fn ticking(out_env: &Env) -> String {
    format!(
        "[source]\nplugin = \"sysmetrics\"\nschedule = \"* * * * * *\"\n\
         config = {{ host = \"tick\", disks = [] }}\n\
         grants = {{ read_dirs = [\"/proc\"] }}\n\n{}",
        file_sink(out_env, "out", "ticks.jsonl")
    )
}

/// Arguments as `Tocsin::spawn` takes them.
fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The ids of `out/room.jsonl` beginning with `prefix`, their numbers in delivery order (each
/// first delivery).
fn delivery_order(env: &Env, prefix: char) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    env.read_json_lines("out/room.jsonl")
        .iter()
        .filter_map(|l| l["id"].as_str()?.strip_prefix(prefix)?.parse().ok())
        .filter(|n| seen.insert(*n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_take_posts_and_one_delivers_in_order_through_a_lost_node_and_server() {
    let mut nats = Nats::cluster().await;
    let urls = nats.urls();
    let args = ["--queue", urls.as_str(), "--queue-replicas", "3"];
    // Two machines' worth of tocsin: data directories apart, the same pipeline files, one
    // JetStream namespace; the sinks write where the test reads.
    let (env_a, env_b) = (Env::new(), Env::new());
    env_a.mkdir("out");
    for env in [&env_a, &env_b] {
        // Several deliveries at once: order is held per key (here, per posting client).
        let stream = pipeline(&env_a).replace(
            "plugin = \"file\"\n",
            "plugin = \"file\"\nconcurrency = 4\n",
        );
        env.write_pipeline("stream", &stream);
        env.write_pipeline("tick", &ticking(&env_a));
    }
    let (port_a, port_b) = (Port::free(), Port::free());
    let with_api = |env: &Env| {
        let tokens = write_api_tokens(env).display().to_string();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--api-tokens".to_string(), tokens]);
        args
    };
    let (args_a, args_b) = (with_api(&env_a), with_api(&env_b));
    let mut node_a = Tocsin::spawn(&env_a, &port_a, &as_strs(&args_a));
    node_a.wait_serving(&env_a, Duration::from_secs(60)).await;
    let mut node_b = Tocsin::spawn(&env_b, &port_b, &as_strs(&args_b));
    node_b.wait_serving(&env_b, Duration::from_secs(60)).await;
    let log_b = std::fs::read_to_string(env_b.path("tocsin.log")).unwrap();
    assert!(log_b.contains("takes ingest and stands by"), "{log_b}");
    assert_eq!(
        metric_value(&node_a.base_url, "tocsin_delivering").await,
        1.0
    );
    assert_eq!(
        metric_value(&node_b.base_url, "tocsin_delivering").await,
        0.0
    );
    // The admin API of the node that does not deliver: reads work, its pipelines are
    // `ingest_only`; a change is refused, naming the node that delivers.
    let listed = api_get(&node_b.base_url, "/pipelines", ADMIN_TOKEN).await;
    let state_of = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["state"].as_str().unwrap().to_string())
    };
    assert_eq!(
        state_of("stream").as_deref(),
        Some("ingest_only"),
        "{listed}"
    );
    let refused = reqwest::Client::new()
        .post(format!("{}/api/v1/silences", node_b.base_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"matchers": ["host=db1"], "duration": "1h", "comment": "maintenance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let why = refused.text().await.unwrap();
    assert!(
        why.contains("takes ingest only") && why.contains(&format!("pid {}", node_a.pid())),
        "{why}"
    );

    // Both nodes take posts, each from its own client (a key of its own).
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(Mutex::new(false));
    keep_posting(node_a.base_url.clone(), "a", acked.clone(), stop.clone());
    keep_posting(node_b.base_url.clone(), "b", acked.clone(), stop.clone());
    let count = |prefix: char| {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|id: &&String| id.starts_with(prefix))
            .count()
    };
    wait_until(Duration::from_secs(90), "100 posts to each node", || {
        count('a') >= 100 && count('b') >= 100
    })
    .await;
    wait_until(
        Duration::from_secs(60),
        "posts to the ingest-only node delivered",
        || !delivery_order(&env_a, 'b').is_empty(),
    )
    .await;
    // The cron pipeline polls on the delivering node only. (Its readings are named by their
    // tick, so a sink would drop a second poll's as a repeat: the poll counters tell.)
    let series = "tocsin_polls_total{pipeline=\"tick\"}";
    assert!(metric_value(&node_a.base_url, series).await > 0.0);
    assert_eq!(metric_value(&node_b.base_url, series).await, 0.0);

    // The delivering node dies mid-stream; the other goes on taking posts and takes over.
    node_a.kill();
    let before = count('b');
    wait_until(Duration::from_secs(60), "node b takes over", || {
        std::fs::read_to_string(env_b.path("tocsin.log"))
            .is_ok_and(|l| l.contains("this process delivers now"))
    })
    .await;
    assert_eq!(
        metric_value(&node_b.base_url, "tocsin_delivering").await,
        1.0
    );
    assert!(
        count('b') > before,
        "node b took posts while nobody delivered"
    );
    // Then a NATS server dies mid-stream: two of three keep the quorum.
    nats.kill(1);
    let before = count('b');
    wait_until(Duration::from_secs(90), "50 more posts to node b", || {
        count('b') >= before + 50
    })
    .await;
    *stop.lock().unwrap() = true;
    let polling_since = std::time::Instant::now();
    while metric_value(&node_b.base_url, series).await == 0.0 {
        assert!(
            polling_since.elapsed() < Duration::from_secs(90),
            "node b does not poll after taking over: {}",
            std::fs::read_to_string(env_b.path("tocsin.log")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each node keeps the trace of what it did: node b took this message in and delivered it.
    let last_b = acked.lock().unwrap().last().cloned().unwrap();
    wait_until(Duration::from_secs(60), "the last post delivered", || {
        delivered(&env_a).contains_key(&last_b)
    })
    .await;
    let trace = api_get(&node_b.base_url, &format!("/trace/{last_b}"), ADMIN_TOKEN)
        .await
        .to_string();
    assert!(
        trace.contains("\"accepted\"") && trace.contains("\"delivered\""),
        "{trace}"
    );

    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    wait_until(
        Duration::from_secs(120),
        "every message either node accepted delivered",
        || {
            let seen = delivered(&env_a);
            acked.iter().all(|id| seen.contains_key(id))
        },
    )
    .await;
    let twice: Vec<(String, usize)> = delivered(&env_a)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    for prefix in ['a', 'b'] {
        let order = delivery_order(&env_a, prefix);
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{prefix}'s posts delivered out of order: {order:?}"
        );
    }
    node_b.kill();
}
