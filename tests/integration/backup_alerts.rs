//! backup-check → threshold → file: a stale backup alerts once (not once per tick, not again
//! after a restart), and a fresh backup resolves it once.

use std::time::Duration;

use tocsin_tests::{age_file, every_second_backup_source, file_sink, wait_until, Env};

const DAY: Duration = Duration::from_secs(86_400);

fn pipeline(env: &Env) -> String {
    format!(
        "{}
{}
{}",
        every_second_backup_source(env, r#"pattern = "*.tar", host = "db1""#),
        r#"[[filter]]
plugin = "threshold"
config = { metric = "backup-age-seconds", above = { warn = 93600, error = 180000 }, key_labels = ["host"] }
"#,
        file_sink(env, "alerts", "alerts.jsonl"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_backup_alerts_once_and_fresh_backup_resolves_once() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    let backup = env.path("backups/db1-2026-11-20.tar");
    std::fs::write(&backup, vec![0u8; 4096]).unwrap();
    age_file(&backup, 3 * DAY);
    env.write_pipeline("nightly", &pipeline(&env));

    let server = env.start().await;
    wait_until(Duration::from_secs(30), "the first alert", || {
        env.read_lines("out/alerts.jsonl").len() == 1
    })
    .await;
    // Several more ticks of a still-stale backup must not post again.
    let polls = server.counter("nightly", |c| &c.polls);
    wait_until(Duration::from_secs(30), "four more polls", || {
        server.counter("nightly", |c| &c.polls) >= polls + 4
    })
    .await;
    let alerts = env.read_json_lines("out/alerts.jsonl");
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["severity"], "error");
    assert_eq!(alerts[0]["summary"], "ERROR: backup-age-seconds on db1");
    assert!(
        alerts[0]["body"]
            .as_str()
            .unwrap()
            .contains("reached the error level (above 180000)"),
        "{}",
        alerts[0]
    );

    // The threshold's state is durable: a restart does not repeat the alert.
    server.stop().await;
    let server = env.start().await;
    wait_until(Duration::from_secs(30), "three polls after restart", || {
        server.counter("nightly", |c| &c.polls) >= 3
    })
    .await;
    assert_eq!(env.read_lines("out/alerts.jsonl").len(), 1);

    // A fresh backup: exactly one "resolved".
    std::fs::write(env.path("backups/db1-2026-11-24.tar"), vec![0u8; 4096]).unwrap();
    wait_until(Duration::from_secs(30), "the resolved message", || {
        env.read_lines("out/alerts.jsonl").len() == 2
    })
    .await;
    let polls = server.counter("nightly", |c| &c.polls);
    wait_until(Duration::from_secs(30), "three more polls", || {
        server.counter("nightly", |c| &c.polls) >= polls + 3
    })
    .await;
    let alerts = env.read_json_lines("out/alerts.jsonl");
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert_eq!(alerts[1]["severity"], "info");
    assert_eq!(alerts[1]["summary"], "RESOLVED: backup-age-seconds on db1");
    assert!(alerts[1]["labels"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(["status", "resolved"])));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_backup_directory_is_itself_an_alert() {
    let env = Env::new();
    env.mkdir("out");
    env.mkdir("backups");
    env.write_pipeline("nightly", &pipeline(&env));
    // An empty directory: no matching file.
    let server = env.start().await;
    wait_until(Duration::from_secs(30), "the alert", || {
        env.read_lines("out/alerts.jsonl").len() == 1
    })
    .await;
    let alerts = env.read_json_lines("out/alerts.jsonl");
    assert_eq!(alerts[0]["severity"], "error");
    assert!(alerts[0]["body"]
        .as_str()
        .unwrap()
        .contains("no backup matching `*.tar`"));
    server.stop().await;
}
