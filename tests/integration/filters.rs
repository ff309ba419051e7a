//! The shipped filters and the webhook sink, through the real engine: template, dedup and
//! rate-limit (whose memory is durable plugin state), and a webhook receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use tocsin_tests::{file_sink, post_accepted, serve_on_loopback, wait_until, Env};

fn pipeline(env: &Env, filter: &str, out: &str) -> String {
    format!(
        "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n[[filter]]\n{filter}\n\n{}",
        file_sink(env, "out", out)
    )
}

/// One request's messages reach the filter worker together and are handed over in one
/// commit; a filter's state written for one of them must still be seen by the next (the
/// worker's pending state), exactly as when they come one request at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_carries_across_the_messages_of_one_hand_over_batch() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "deduped",
        &pipeline(
            &env,
            "plugin = \"dedup\"\nconfig = { window = \"10m\" }",
            "deduped.jsonl",
        ),
    );
    env.write_pipeline(
        "limited",
        &pipeline(&env, "plugin = \"rate-limit\"\nconfig = { max = 2, per = \"1h\", key = \"{{ labels.host }}\" }", "limited.jsonl"),
    );
    let server = env.start().await;
    let base = server.base_url.clone();
    let mut deduped: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"id": format!("d{i}"), "body": "disk full", "labels": {"host": "db1"}}))
        .collect();
    deduped.push(serde_json::json!({"id": "d9", "body": "disk fine", "labels": {"host": "db1"}}));
    post_accepted(&base, "deduped", serde_json::Value::Array(deduped)).await;
    let mut limited: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::json!({"id": format!("a{i}"), "body": format!("a{i}"), "labels": {"host": "a"}}))
        .collect();
    limited.push(serde_json::json!({"id": "b0", "body": "b0", "labels": {"host": "b"}}));
    post_accepted(&base, "limited", serde_json::Value::Array(limited)).await;
    wait_until(Duration::from_secs(20), "every message handed over", || {
        server.counter("deduped", |c| &c.handed_over) == 4
            && server.counter("limited", |c| &c.handed_over) == 5
    })
    .await;
    wait_until(Duration::from_secs(20), "deliveries", || {
        server.counter("deduped", |c| &c.delivered) == 2
            && server.counter("limited", |c| &c.delivered) == 3
    })
    .await;
    // Sorted: different messages are delivered side by side (the sink's default concurrency).
    let bodies = |file: &str| -> Vec<String> {
        let mut bodies: Vec<String> = env
            .read_json_lines(file)
            .iter()
            .map(|l| l["body"].as_str().unwrap().to_string())
            .collect();
        bodies.sort();
        bodies
    };
    assert_eq!(bodies("out/deduped.jsonl"), ["disk fine", "disk full"]);
    assert_eq!(bodies("out/limited.jsonl"), ["a0", "a1", "b0"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_dedup_and_rate_limit_shape_what_passes() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "templated",
        &pipeline(&env, "plugin = \"template\"\nconfig = { summary = \"{{ labels.host }}\", body = \"{{ body }} ({{ metrics['cpu-percent'] }} %)\", emoji = true }", "templated.jsonl"),
    );
    env.write_pipeline(
        "deduped",
        &pipeline(
            &env,
            "plugin = \"dedup\"\nconfig = { window = \"10m\" }",
            "deduped.jsonl",
        ),
    );
    env.write_pipeline(
        "limited",
        &pipeline(&env, "plugin = \"rate-limit\"\nconfig = { max = 2, per = \"1h\", key = \"{{ labels.host }}\" }", "limited.jsonl"),
    );
    let server = env.start().await;
    let base = server.base_url.clone();

    post_accepted(&base, "templated", serde_json::json!({"severity": "warning", "body": "cpu high", "labels": {"host": "db1"}, "metrics": {"cpu-percent": 93.5}})).await;
    for i in 0..3 {
        // Same content three times (distinct ids), then something new.
        post_accepted(&base, "deduped", serde_json::json!({"id": format!("d{i}"), "body": "disk full", "labels": {"host": "db1"}})).await;
    }
    post_accepted(
        &base,
        "deduped",
        serde_json::json!({"id": "d9", "body": "disk fine", "labels": {"host": "db1"}}),
    )
    .await;
    for i in 0..4 {
        post_accepted(&base, "limited", serde_json::json!({"id": format!("a{i}"), "body": format!("a{i}"), "labels": {"host": "a"}})).await;
    }
    post_accepted(
        &base,
        "limited",
        serde_json::json!({"id": "b0", "body": "b0", "labels": {"host": "b"}}),
    )
    .await;

    wait_until(
        Duration::from_secs(20),
        "every pipeline handed over",
        || {
            server.counter("templated", |c| &c.handed_over) == 1
                && server.counter("deduped", |c| &c.handed_over) == 4
                && server.counter("limited", |c| &c.handed_over) == 5
        },
    )
    .await;
    wait_until(Duration::from_secs(20), "deliveries", || {
        server.counter("templated", |c| &c.delivered) == 1
            && server.counter("deduped", |c| &c.delivered) == 2
            && server.counter("limited", |c| &c.delivered) == 3
    })
    .await;
    let t = &env.read_json_lines("out/templated.jsonl")[0];
    assert_eq!(t["summary"], "⚠️ db1");
    assert_eq!(t["body"], "cpu high (93.5 %)");
    // Sorted: different messages are delivered side by side (the sink's default concurrency).
    let bodies = |file: &str| -> Vec<String> {
        let mut bodies: Vec<String> = env
            .read_json_lines(file)
            .iter()
            .map(|l| l["body"].as_str().unwrap().to_string())
            .collect();
        bodies.sort();
        bodies
    };
    assert_eq!(bodies("out/deduped.jsonl"), ["disk fine", "disk full"]);
    assert_eq!(bodies("out/limited.jsonl"), ["a0", "a1", "b0"]);
    server.stop().await;
}

/// One call the receiver saw: Idempotency-Key, X-Token, body.
type Call = (Option<String>, Option<String>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_posts_its_template_with_an_idempotency_key() {
    let received: Arc<Mutex<Vec<Call>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let sink = sink.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                sink.lock()
                    .unwrap()
                    .push((h("idempotency-key"), h("x-token"), body));
                "ok"
            }
        }),
    );
    let port = serve_on_loopback(app).await;

    let env = Env::new();
    std::fs::write(env.path("hook-token"), "t0k").unwrap();
    env.write_pipeline(
        "hooked",
        &format!(
            r#"
[source]
plugin = "json"
auth = {{ none = true }}

[[sink]]
name = "chat"
plugin = "webhook"
config = {{ url = "http://127.0.0.1:{port}/hook", body = '{{"text": {{{{ (emoji ~ body) | tojson }}}}}}', headers = {{ x-token = "secret:hook" }} }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ hook = "file:{token}" }} }}
"#,
            token = env.path("hook-token").display()
        ),
    );
    let server = env.start().await;
    post_accepted(
        &server.base_url,
        "hooked",
        serde_json::json!({"id": "w1", "severity": "error", "body": "down \"now\""}),
    )
    .await;
    wait_until(Duration::from_secs(20), "the webhook call", || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    let (key, token, body) = received.lock().unwrap()[0].clone();
    assert_eq!(key.as_deref(), Some("hooked/chat/w1"));
    assert_eq!(token.as_deref(), Some("t0k"));
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed["text"], "🔥 down \"now\"");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_take_only_what_their_match_routes_to_them() {
    let env = Env::new();
    env.mkdir("out");
    let ops = file_sink(&env, "ops", "ops.jsonl").replace(
        "[[sink]]\n",
        "[[sink]]\nmatch = { severity = \">= error\", labels = { team = \"ops\" } }\n",
    );
    env.write_pipeline(
        "routed",
        &format!(
            "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n{ops}\n{}",
            file_sink(&env, "all", "all.jsonl")
        ),
    );
    let server = env.start().await;
    for (id, severity, team) in [
        ("1", "error", "ops"),
        ("2", "warning", "ops"),
        ("3", "alert", "dev"),
        ("4", "alert", "ops"),
    ] {
        post_accepted(&server.base_url, "routed", serde_json::json!({"id": id, "severity": severity, "body": id, "labels": {"team": team}})).await;
    }
    wait_until(Duration::from_secs(20), "deliveries", || {
        server.counter("routed", |c| &c.delivered) == 6
    })
    .await;
    // Sorted: different messages are delivered side by side (the sink's default concurrency).
    let ids = |file: &str| -> Vec<String> {
        let mut ids: Vec<String> = env
            .read_json_lines(file)
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids("out/ops.jsonl"), ["1", "4"]);
    assert_eq!(ids("out/all.jsonl"), ["1", "2", "3", "4"]);
    server.stop().await;
}

/// 20 messages of one request behind a filter that takes 300 ms each: the first is handed
/// over (and delivered) as soon as it is filtered, not after the whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_filter_does_not_hold_back_the_messages_it_has_finished() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "slow",
        &pipeline(
            &env,
            "plugin = \"hostile\"\nconfig = { mode = \"sleep\", ms = 300 }",
            "slow.jsonl",
        ),
    );
    let server = env.start().await;
    let batch: Vec<serde_json::Value> = (0..20)
        .map(|i| serde_json::json!({"id": format!("m{i}"), "body": "x"}))
        .collect();
    post_accepted(&server.base_url, "slow", serde_json::Value::Array(batch)).await;
    wait_until(Duration::from_secs(30), "the first delivery", || {
        !env.read_lines("out/slow.jsonl").is_empty()
    })
    .await;
    let handed = server.counter("slow", |c| &c.handed_over);
    assert!(
        handed < 20,
        "{handed} were handed over before the first was delivered"
    );
    wait_until(Duration::from_secs(30), "all twenty", || {
        env.read_lines("out/slow.jsonl").len() == 20
    })
    .await;
    server.stop().await;
}
