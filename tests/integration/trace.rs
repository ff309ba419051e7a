//! `tocsin trace`, against the real binary: a message dropped by `dedup` is traced to that
//! filter; a dead-lettered one shows each attempt's error; a replayed one shows the replay and
//! the delivery; the trace survives a restart.

use std::time::Duration;

use serde_json::json;

use tocsin_tests::process::{cli_with_token, log_tail, Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{post_accepted, wait_until, Env, OPEN_JSON_SOURCE};

/// `tocsin trace ID` on the environment's data: (success, stdout, stderr).
fn trace(env: &Env, token: Option<&str>, id: &str) -> (bool, String, String) {
    cli_with_token(env, token, &["trace", id])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_names_the_filter_that_dropped_and_each_failed_attempt() {
    let env = Env::new();
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503));
    let sink = receiver.sink_toml(
        "hook",
        "{ max_attempts = 3, initial = \"50ms\", max = \"100ms\" }",
    );
    env.write_pipeline(
        "alerts",
        &format!(
            "{OPEN_JSON_SOURCE}[[filter]]\nplugin = \"dedup\"\nconfig = {{ window = \"1h\", key = \"{{{{ body }}}}\" }}\n\n{sink}"
        ),
    );
    std::fs::write(env.path("admin.token"), "trace-admin-0123456789").unwrap();
    std::fs::write(
        env.path("tokens.toml"),
        "[[token]]\nname = \"ops\"\nrole = \"admin\"\nsecret = \"file:admin.token\"\n",
    )
    .unwrap();
    let tokens = env.path("tokens.toml").display().to_string();
    let args = ["--api-tokens", tokens.as_str()];
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    post_accepted(
        &base,
        "alerts",
        json!({"id": "first", "body": "disk full on db1"}),
    )
    .await;
    post_accepted(
        &base,
        "alerts",
        json!({"id": "again", "body": "disk full on db1"}),
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the first message dead-lettered",
        || {
            std::fs::read_to_string(env.path("tocsin.log"))
                .unwrap_or_default()
                .contains("message moved to dead letters")
        },
    )
    .await;
    // Steps are written every 250 ms; a trace through the server sees them at once.
    let token = Some("trace-admin-0123456789");
    let (ok, dropped, stderr) = trace(&env, token, "again");
    assert!(ok, "{stderr}\n{}", log_tail(&env));
    assert!(
        dropped.contains("accepted: POST /ingest/alerts from 127.0.0.1:"),
        "{dropped}"
    );
    assert!(dropped.contains("dropped by filter.0 (dedup)"), "{dropped}");
    assert!(!dropped.contains("queued for"), "{dropped}");

    let (ok, failed, stderr) = trace(&env, token, "first");
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = failed.lines().collect();
    assert!(lines[0].contains("accepted"), "{failed}");
    assert!(lines[1].contains("passed filter.0 (dedup)"), "{failed}");
    assert!(lines[2].contains("queued for hook"), "{failed}");
    for attempt in 1..=2 {
        assert!(
            failed.contains(&format!("hook: attempt {attempt} failed: ")) && failed.contains("503"),
            "{failed}"
        );
    }
    assert!(
        failed.contains("dead-lettered in hook: gave up after 3 attempts"),
        "{failed}"
    );

    // Replayed and delivered, and all of it still there after a restart, read from the store.
    receiver.set(Behaviour::Accept);
    let replayed = reqwest::Client::new()
        .post(format!(
            "{base}/api/v1/pipelines/alerts/dead-letters/hook/replay"
        ))
        .bearer_auth("trace-admin-0123456789")
        .json(&json!({"all": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 200);
    wait_until(
        Duration::from_secs(10),
        "the replayed message delivered",
        || receiver.visible_ids().contains("first"),
    )
    .await;
    let (status, _) = tocsin.terminate(Duration::from_secs(20));
    assert!(status.success());
    let (ok, after, stderr) = trace(&env, None, "first");
    assert!(ok, "{stderr}");
    assert!(after.starts_with(&failed), "{failed}\n---\n{after}");
    let tail: Vec<&str> = after.lines().skip(lines.len()).collect();
    assert!(tail[0].contains("replayed to hook"), "{after}");
    assert!(tail[1].contains("hook: delivered (attempt 1)"), "{after}");

    let (ok, _, stderr) = trace(&env, None, "never-seen");
    assert!(
        !ok && stderr.contains("nothing is known of message `never-seen`"),
        "{stderr}"
    );
}
