//! Grouping (`group = { by, wait, interval }` on a sink) against a real Synapse: a burst of
//! alerts becomes one post, and a group in the making survives `kill -9`.

use std::time::Duration;

use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::synapse::Synapse;
use tocsin_tests::{post_accepted, Env};

/// An ingest pipeline posting to `synapse`'s room, grouping by `alertname`.
fn grouped_pipeline(env: &Env, synapse: &Synapse, wait: &str) -> String {
    let token_file = env.path("matrix-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    format!(
        r#"
[source]
plugin = "json"
auth = {{ none = true }}

[[sink]]
name = "room"
plugin = "matrix"
config = {{ homeserver = "{base}", room = "{room}" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ access_token = "file:{token}" }} }}
group = {{ by = ["alertname"], wait = "{wait}", interval = "1h" }}
"#,
        base = synapse.base,
        room = synapse.room,
        port = synapse.port,
        token = token_file.display(),
    )
}

fn disk_full(host: usize) -> serde_json::Value {
    serde_json::json!({
        "id": format!("disk-{host}"),
        "severity": "warning",
        "summary": format!("Disk full on host{host}"),
        "body": "/ is 97 % full",
        "labels": {"alertname": "DiskFull", "host": format!("host{host}"), "status": "firing"},
    })
}

/// Waits until the room has at least one message, then `settle` more; returns them all.
async fn room_after(synapse: &Synapse, settle: Duration) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while synapse.messages().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the room"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(settle).await;
    synapse.messages().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_alerts_for_thirty_hosts_become_one_post_listing_them() {
    let synapse = Synapse::start().await;
    let env = Env::new();
    env.write_pipeline("disks", &grouped_pipeline(&env, &synapse, "3s"));
    let server = env.start().await;
    for host in 0..30 {
        post_accepted(&server.base_url, "disks", disk_full(host)).await;
    }
    let messages = room_after(&synapse, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 1, "one post for the group: {messages:#?}");
    let (body, html) = &messages[0];
    assert!(
        body.starts_with("⚠️ [FIRING:30] alertname=DiskFull\n"),
        "{body}"
    );
    assert!(
        body.contains("- Disk full on host0: / is 97 % full"),
        "{body}"
    );
    assert!(
        body.ends_with("and 10 more"),
        "twenty listed, the rest counted: {body}"
    );
    assert!(html.contains("[FIRING:30] alertname=DiskFull"), "{html}");
    assert_eq!(server.counter("disks", |c| &c.delivered), 30);

    // One of them resolves: the next notification of the group says so, after `interval`
    // (an hour here), so nothing more is posted now.
    let mut resolved = disk_full(3);
    resolved["id"] = "disk-3-resolved".into();
    resolved["labels"]["status"] = "resolved".into();
    post_accepted(&server.base_url, "disks", resolved).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        synapse.messages().await.len(),
        1,
        "the interval holds it back"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_in_its_wait_survives_kill_9_and_is_posted_once_with_every_member() {
    let synapse = Synapse::start().await;
    let env = Env::new();
    env.write_pipeline("disks", &grouped_pipeline(&env, &synapse, "5s"));
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    for host in 0..12 {
        post_accepted(&tocsin.base_url, "disks", disk_full(host)).await;
    }
    // Killed well inside the 5 s wait: the group has been formed, nothing was sent.
    tocsin.kill();
    assert!(
        synapse.messages().await.is_empty(),
        "sent before its wait ended"
    );
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let messages = room_after(&synapse, Duration::from_secs(4)).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let body = &messages[0].0;
    assert!(
        body.starts_with("⚠️ [FIRING:12] alertname=DiskFull\n"),
        "{body}"
    );
    for host in 0..12 {
        assert!(
            body.contains(&format!("Disk full on host{host}:")),
            "host{host} missing: {body}"
        );
    }
    tocsin.kill();
}
