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
    // A wait long enough for 30 requests even on a loaded machine.
    env.write_pipeline("disks", &grouped_pipeline(&env, &synapse, "5s"));
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
    env.write_pipeline("disks", &grouped_pipeline(&env, &synapse, "8s"));
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    for host in 0..12 {
        post_accepted(&tocsin.base_url, "disks", disk_full(host)).await;
    }
    // Killed well inside the 8 s wait: the group has been formed, nothing was sent.
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

/// The group's next notification waits for `interval` and says what changed: a resolution
/// among the alerts, and how many still fire. A 0.1.0 sink (built before groups existed) gets
/// each notification as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_changes_go_out_per_interval_and_a_0_1_sink_gets_one_message_per_notification() {
    let env = Env::new();
    env.mkdir("out");
    let out = env.path("out");
    let old_file = tocsin_tests::repo_root().join("tests/fixtures/contract-0.1.0/file.wasm");
    env.write_pipeline(
        "disks",
        &format!(
            r#"
[source]
plugin = "json"
auth = {{ none = true }}

[[sink]]
name = "new"
plugin = "file"
config = {{ path = "{out}/new.jsonl" }}
grants = {{ write_dirs = ["{out}"] }}
group = {{ by = ["alertname"], wait = "1s", interval = "2s" }}

[[sink]]
name = "old"
plugin = "{old}"
config = {{ path = "{out}/old.jsonl" }}
grants = {{ write_dirs = ["{out}"] }}
group = {{ by = ["alertname"], wait = "1s", interval = "2s" }}
"#,
            out = out.display(),
            old = old_file.display(),
        ),
    );
    let server = env.start().await;
    // One request: the three arrive together, whatever the machine's load.
    let three: Vec<serde_json::Value> = (0..3).map(disk_full).collect();
    post_accepted(&server.base_url, "disks", serde_json::Value::Array(three)).await;
    tocsin_tests::wait_until(Duration::from_secs(30), "the first notification", || {
        !env.read_lines("out/old.jsonl").is_empty()
    })
    .await;
    let mut resolved = disk_full(1);
    resolved["id"] = "disk-1-resolved".into();
    resolved["labels"]["status"] = "resolved".into();
    post_accepted(&server.base_url, "disks", resolved).await;
    tocsin_tests::wait_until(Duration::from_secs(30), "the second notification", || {
        env.read_lines("out/old.jsonl").len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The 0.1.0 sink: one line per notification, the group summed up.
    let old = env.read_json_lines("out/old.jsonl");
    assert_eq!(old.len(), 2, "{old:#?}");
    assert_eq!(old[0]["summary"], "[FIRING:3] alertname=DiskFull");
    assert_eq!(old[1]["summary"], "[FIRING:2] alertname=DiskFull");
    assert_eq!(
        old[1]["body"], "- resolved: Disk full on host1: / is 97 % full",
        "the second notification carries only what changed"
    );
    assert_ne!(
        old[0]["idempotency_key"], old[1]["idempotency_key"],
        "each notification has its own key"
    );
    // The 0.2.0 file sink writes a line per alert, each with the group it went out in.
    let new = env.read_json_lines("out/new.jsonl");
    assert_eq!(new.len(), 4, "{new:#?}");
    assert_eq!(new[0]["group"]["firing"], 3);
    assert_eq!(new[0]["group"]["sequence"], 0);
    assert_eq!(new[0]["group"]["labels"][0][1], "DiskFull");
    assert_eq!(new[3]["id"], "disk-1-resolved");
    assert_eq!(new[3]["group"]["firing"], 2);
    assert_eq!(new[3]["group"]["sequence"], 1);
    assert_eq!(
        server.counter("disks", |c| &c.delivered),
        8,
        "4 messages × 2 sinks"
    );
    server.stop().await;
}

/// A group notification in flight at `kill -9` is sent again after the restart with exactly
/// its members under the same idempotency key, and `max_messages` caps each notification:
/// 12 alerts with `max_messages = 5` go out as 5, 5 and 2, the rest right after a full one
/// (not an `interval` later), none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_in_flight_at_kill_9_goes_again_under_its_key_and_the_cap_splits_a_group() {
    use tocsin_tests::receiver::{Behaviour, Receiver};
    let receiver = Receiver::start().await;
    // The first request is held past the kill; nothing answers it in time.
    receiver.set(Behaviour::Hold(Duration::from_secs(25)));
    let env = Env::new();
    env.write_pipeline(
        "disks",
        &format!(
            "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n{}\
             group = {{ by = [\"alertname\"], wait = \"1s\", interval = \"1h\", max_messages = 5 }}\n",
            receiver.sink_toml("hook", "{ max_attempts = 100, initial = \"100ms\" }")
        ),
    );
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let twelve: Vec<serde_json::Value> = (0..12).map(disk_full).collect();
    post_accepted(&tocsin.base_url, "disks", serde_json::Value::Array(twelve)).await;
    tocsin_tests::wait_until(
        Duration::from_secs(30),
        "the first notification sent",
        || !receiver.requests().is_empty(),
    )
    .await;
    tocsin.kill();
    receiver.set(Behaviour::Accept);
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let ids = |r: &tocsin_tests::receiver::Request| -> Vec<String> {
        r.body["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| m["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    tocsin_tests::wait_until(Duration::from_secs(60), "every alert delivered", || {
        let mut seen: Vec<String> = receiver
            .requests()
            .iter()
            .filter(|r| r.answered == 200)
            .flat_map(&ids)
            .collect();
        seen.sort();
        seen.dedup();
        seen.len() == 12
    })
    .await;
    let requests = receiver.requests();
    let first = &requests[0];
    // The notification cut off by the kill, sent again: same key, same members.
    let again: Vec<_> = requests.iter().filter(|r| r.key == first.key).collect();
    assert!(again.len() >= 2, "not sent again: {requests:#?}");
    for r in &again {
        assert_eq!(ids(r), ids(first), "other members under the same key");
    }
    // Three notifications in all, each within the cap, every alert in exactly one.
    let mut keys: Vec<&str> = requests.iter().map(|r| r.key.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let sizes: Vec<usize> = keys
        .iter()
        .map(|k| ids(requests.iter().find(|r| r.key == *k).unwrap()).len())
        .collect();
    assert_eq!(sizes, [5, 5, 2]);
    let mut all: Vec<String> = keys
        .iter()
        .flat_map(|k| ids(requests.iter().find(|r| r.key == *k).unwrap()))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12);
    tocsin.kill();
}
