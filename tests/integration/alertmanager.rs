//! A real Alertmanager posting to tocsin, tocsin posting to a real Synapse: alerts pushed to
//! Alertmanager appear in the room, then their resolution.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tocsin_tests::alertmanager::Alertmanager;
use tocsin_tests::synapse::Synapse;
use tocsin_tests::Env;

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

async fn wait_for_messages(synapse: &Synapse, n: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = synapse.messages().await;
        if messages.len() >= n {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages: {messages:#?}",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_pushed_to_alertmanager_reach_the_room_then_their_resolution() {
    let synapse = Synapse::start().await;
    let env = Env::new();
    std::fs::write(env.path("matrix-token"), &synapse.token).unwrap();
    std::fs::write(env.path("am-token"), "am-secret").unwrap();
    env.write_pipeline(
        "alertmanager",
        &format!(
            r#"
[source]
plugin = "alertmanager-webhook"
auth = {{ bearer = "file:{am_token}" }}

[[sink]]
name = "ops-room"
plugin = "matrix"
config = {{ homeserver = "{base}", room = "{room}" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ access_token = "file:{matrix_token}" }} }}
"#,
            am_token = env.path("am-token").display(),
            matrix_token = env.path("matrix-token").display(),
            base = synapse.base,
            room = synapse.room,
            port = synapse.port,
        ),
    );
    let server = env.start().await;
    let am = Alertmanager::start(
        &format!("{}/ingest/alertmanager", server.base_url),
        &env.path("am-token"),
    )
    .await;

    let now = SystemTime::now();
    let alert = |ends: SystemTime| {
        json!([{
            "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "db1"},
            "annotations": {"summary": "Disk full on db1", "description": "/ is 99 % full"},
            "startsAt": rfc3339(now - Duration::from_secs(60)),
            "endsAt": rfc3339(ends),
        }])
    };
    am.post_alerts(&alert(now + Duration::from_secs(3600)))
        .await;
    let messages = wait_for_messages(&synapse, 1).await;
    assert!(
        messages[0]
            .0
            .starts_with("🚨 Disk full on db1\n/ is 99 % full"),
        "{messages:#?}"
    );

    // Resolved: Alertmanager sends the resolution at its next group interval.
    am.post_alerts(&alert(SystemTime::now())).await;
    let messages = wait_for_messages(&synapse, 2).await;
    assert!(
        messages[1].0.starts_with("ℹ️ RESOLVED: Disk full on db1"),
        "{messages:#?}"
    );
    // And nothing more: no duplicates of either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(synapse.messages().await.len(), 2);
    server.stop().await;
}
