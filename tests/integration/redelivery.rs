//! What happens to messages a sink could not deliver: after `max_attempts` they go to dead
//! letters with their last error, where `tocsin dlq` lists, shows and replays them; and a
//! pipeline whose file changes keeps its queued messages for the new version.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use tocsin_tests::{free_port, serve_on_loopback, wait_until, Env};

/// A webhook receiver that fails with 500 until told otherwise, recording what it accepted.
struct Receiver {
    port: u16,
    failing: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
}

async fn receiver() -> Receiver {
    let failing = Arc::new(AtomicBool::new(true));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let (f, a) = (failing.clone(), accepted.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let (f, a) = (f.clone(), a.clone());
            async move {
                if f.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, "down for maintenance")
                } else {
                    a.lock().unwrap().push(body);
                    (StatusCode::OK, "ok")
                }
            }
        }),
    );
    let port = serve_on_loopback(app).await;
    Receiver {
        port,
        failing,
        accepted,
    }
}

fn webhook_pipeline(port: u16, retry: &str) -> String {
    format!(
        r#"
[source]
plugin = "json"
auth = {{ none = true }}

[[sink]]
name = "chat"
plugin = "webhook"
config = {{ url = "http://127.0.0.1:{port}/hook" }}
grants = {{ hosts = ["127.0.0.1:{port}"] }}
retry = {retry}
"#
    )
}

async fn post_message(base: &str, pipeline: &str, id: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/ingest/{pipeline}"))
        .json(&serde_json::json!({"id": id, "body": format!("message {id}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_go_to_dead_letters_and_a_replay_delivers_once() {
    let receiver = receiver().await;
    let env = Env::new();
    env.write_pipeline(
        "alerts",
        &webhook_pipeline(
            receiver.port,
            r#"{ max_attempts = 3, initial = "100ms", max = "200ms" }"#,
        ),
    );
    let server = env.start().await;
    post_message(&server.base_url, "alerts", "m1").await;
    wait_until(Duration::from_secs(20), "a dead letter", || {
        server
            .queue
            .dead_letters("alerts", "chat")
            .is_ok_and(|d| d.len() == 1)
    })
    .await;
    let (seq, letter) = server
        .queue
        .dead_letters("alerts", "chat")
        .unwrap()
        .remove(0);
    assert_eq!(letter.attempts, 3);
    let error = letter.last_error.unwrap();
    assert!(
        error.starts_with("gave up after 3 attempts: HTTP 500: down for maintenance"),
        "{error}"
    );
    assert_eq!(server.counter("alerts", |c| &c.retries), 2);
    server.stop().await;

    // With the server stopped, an operator looks and replays.
    let listing = env.cli(&["dlq", "ls"]);
    assert!(
        listing.contains("alerts") && listing.contains("chat") && listing.contains("HTTP 500"),
        "{listing}"
    );
    let shown = env.cli(&["dlq", "show", "alerts", "chat", &seq.to_string()]);
    assert!(shown.contains("message m1"), "{shown}");
    assert!(env
        .cli(&["dlq", "replay", "alerts", "chat", "--all"])
        .contains("replayed 1"));
    assert!(
        env.cli(&["dlq", "ls", "alerts"]).lines().count() == 1,
        "only the header is left"
    );

    // The receiver is back; the replayed message is delivered once.
    receiver.failing.store(false, Ordering::SeqCst);
    let server = env.start().await;
    wait_until(Duration::from_secs(20), "redelivery", || {
        receiver.accepted.lock().unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.accepted.lock().unwrap().len(), 1);
    assert!(receiver.accepted.lock().unwrap()[0].contains("message m1"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pipeline_keeps_its_queued_messages_for_the_new_version() {
    let receiver = receiver().await;
    receiver.failing.store(false, Ordering::SeqCst);
    let nowhere = free_port();
    let env = Env::new();
    let patient = r#"{ max_attempts = 1000, initial = "100ms", max = "300ms" }"#;
    env.write_pipeline("moving", &webhook_pipeline(nowhere, patient));
    let server = env.start().await;
    for id in ["a", "b", "c"] {
        post_message(&server.base_url, "moving", id).await;
    }
    wait_until(Duration::from_secs(20), "three queued, failing", || {
        server.queue.depths("moving").unwrap().sinks == vec![("chat".to_string(), 3)]
            && server.counter("moving", |c| &c.retries) >= 1
    })
    .await;
    // The operator fixes the URL: the new version delivers what the old one queued, in order.
    env.write_pipeline("moving", &webhook_pipeline(receiver.port, patient));
    wait_until(Duration::from_secs(30), "all three delivered", || {
        receiver.accepted.lock().unwrap().len() == 3
    })
    .await;
    let bodies: Vec<String> = receiver.accepted.lock().unwrap().clone();
    for (body, id) in bodies.iter().zip(["a", "b", "c"]) {
        assert!(body.contains(&format!("message {id}")), "{bodies:?}");
    }
    server.stop().await;
}
