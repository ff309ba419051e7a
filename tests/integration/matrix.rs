//! backup-check → threshold → matrix, against a real Synapse on loopback.

use std::time::Duration;

use tocsin_tests::synapse::Synapse;
use tocsin_tests::{age_file, every_second_backup_source, wait_until, Env};

const DAY: Duration = Duration::from_secs(86_400);

/// The pipeline posting to `synapse`'s room; the token is read from a file secret.
fn matrix_pipeline(env: &Env, synapse: &Synapse, filters: &str, retry: &str) -> String {
    let token_file = env.path("matrix-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    format!(
        r#"
{source}
{filters}
[[sink]]
name = "ops-room"
plugin = "matrix"
config = {{ homeserver = "{base}", room = "{room}" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ access_token = "file:{token}" }} }}
retry = {retry}
"#,
        source = every_second_backup_source(env, r#"pattern = "*.tar", host = "db1""#),
        base = synapse.base,
        room = synapse.room,
        port = synapse.port,
        token = token_file.display(),
    )
}

const THRESHOLD: &str = r#"
[[filter]]
plugin = "threshold"
config = { metric = "backup-age-seconds", above = { warn = 93600, error = 180000 }, key_labels = ["host"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_backup_posts_one_message_to_the_room_and_one_resolved() {
    let synapse = Synapse::start().await;
    let env = Env::new();
    env.mkdir("backups");
    let backup = env.path("backups/db1-2026-11-20.tar");
    std::fs::write(&backup, vec![0u8; 1024]).unwrap();
    age_file(&backup, 3 * DAY);
    env.write_pipeline("nightly", &matrix_pipeline(&env, &synapse, THRESHOLD, "{}"));
    let server = env.start().await;

    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while messages.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no alert reached the room"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        messages = synapse.messages().await;
    }
    // Several more ticks with the backup still stale: still one message.
    let polls = server.counter("nightly", |c| &c.polls);
    wait_until(Duration::from_secs(30), "four more polls", || {
        server.counter("nightly", |c| &c.polls) >= polls + 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = synapse.messages().await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let (body, html) = &messages[0];
    assert!(
        body.starts_with("🔥 ERROR: backup-age-seconds on db1\n"),
        "{body}"
    );
    assert!(
        body.contains("and reached the error level (above 180000)"),
        "{body}"
    );
    assert!(
        html.starts_with("<p><strong>🔥 ERROR: backup-age-seconds on db1</strong></p>"),
        "{html}"
    );

    // A fresh backup: exactly one "resolved" follows.
    std::fs::write(env.path("backups/db1-2026-11-24.tar"), vec![0u8; 1024]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while synapse.messages().await.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no resolved message");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let polls = server.counter("nightly", |c| &c.polls);
    wait_until(Duration::from_secs(30), "three more polls", || {
        server.counter("nightly", |c| &c.polls) >= polls + 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = synapse.messages().await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[1]
            .0
            .starts_with("ℹ️ RESOLVED: backup-age-seconds on db1\n"),
        "{}",
        messages[1].0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_and_an_ungranted_host_are_permanent_failures() {
    let mut synapse = Synapse::start().await;
    synapse.token = "syt_not_a_valid_token".into();
    let env = Env::new();
    env.mkdir("backups");
    env.write_pipeline(
        "nightly",
        &matrix_pipeline(&env, &synapse, "", "{ max_attempts = 5 }"),
    );
    // A second pipeline whose sink may not reach the homeserver's port at all.
    let ungranted = matrix_pipeline(&env, &synapse, "", "{ max_attempts = 5 }").replace(
        &format!("hosts = [\"127.0.0.1:{}\"]", synapse.port),
        "hosts = [\"127.0.0.1:1\"]",
    );
    assert!(ungranted.contains("127.0.0.1:1\""));
    env.write_pipeline("ungranted", &ungranted);
    let server = env.start().await;
    wait_until(Duration::from_secs(60), "a dead letter", || {
        server
            .queue
            .dead_letters("nightly", "ops-room")
            .is_ok_and(|d| !d.is_empty())
    })
    .await;
    let dead = server.queue.dead_letters("nightly", "ops-room").unwrap();
    let error = dead[0].1.last_error.clone().unwrap();
    assert!(error.starts_with("permanent: HTTP 401"), "{error}");
    assert!(
        !error.contains("syt_not_a_valid_token"),
        "the token leaked into {error}"
    );
    // Permanent: the one refused attempt, no retries spent on it.
    assert_eq!(dead[0].1.attempts, 1);

    wait_until(
        Duration::from_secs(60),
        "the ungranted sink's dead letter",
        || {
            server
                .queue
                .dead_letters("ungranted", "ops-room")
                .is_ok_and(|d| !d.is_empty())
        },
    )
    .await;
    let dead = server.queue.dead_letters("ungranted", "ops-room").unwrap();
    let error = dead[0].1.last_error.clone().unwrap();
    assert!(error.contains("request denied by the host"), "{error}");
    server.stop().await;
}
