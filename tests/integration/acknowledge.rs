//! Acknowledgement: an operator acknowledges an open alert with the CLI; its reminders stay
//! back (counted), an escalation and its resolution go out saying who acknowledged, and a
//! new episode of the alert is not acknowledged; an acknowledgement with `--for` lapses.

use std::time::Duration;

use serde_json::{json, Value};

use tocsin_tests::process::{cli_with_token, Port, Tocsin};
use tocsin_tests::{
    file_sink, post_accepted, wait_until, write_api_tokens, Env, ADMIN_TOKEN, OPEN_JSON_SOURCE,
};

/// Message `n` of DiskFull on db1 (key `DiskFull/db1`).
fn disk_full(status: &str, severity: &str, n: u32) -> Value {
    json!({
        "id": format!("disk-{n}"),
        "key": "DiskFull/db1",
        "severity": severity,
        "summary": "disk full on db1",
        "body": format!("{status}, message {n}"),
        "labels": {"alertname": "DiskFull", "host": "db1", "status": status},
    })
}

/// (id, acknowledged_by) of what the file sink wrote, in order.
fn delivered(env: &Env) -> Vec<(String, String)> {
    env.read_json_lines("out/room.jsonl")
        .into_iter()
        .map(|m| {
            let by = m["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|pair| pair[0] == "acknowledged_by")
                .and_then(|pair| pair[1].as_str())
                .unwrap_or_default()
                .to_string();
            (m["id"].as_str().unwrap_or_default().to_string(), by)
        })
        .collect()
}

fn pair(id: &str, by: &str) -> (String, String) {
    (id.to_string(), by.to_string())
}

async fn acknowledged_count(base: &str) -> u64 {
    tocsin_tests::metrics_text(base)
        .await
        .lines()
        .find(|l| l.starts_with("tocsin_acknowledged_total{pipeline=\"disks\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_alert_stops_its_reminders_and_what_goes_out_says_who() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "disks",
        &format!(
            "{OPEN_JSON_SOURCE}{}concurrency = 1\n",
            file_sink(&env, "room", "room.jsonl")
        ),
    );
    let tokens = write_api_tokens(&env);
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", tokens.to_str().unwrap()]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let env = &env;
    let count = |n: usize| move || delivered(env).len() == n;

    post_accepted(&base, "disks", disk_full("firing", "error", 1)).await;
    wait_until(Duration::from_secs(30), "the alert", count(1)).await;
    let (ok, listed, err) = cli_with_token(env, Some(ADMIN_TOKEN), &["alerts", "disks"]);
    assert!(
        ok && listed.contains("k:DiskFull/db1") && listed.contains("OPEN"),
        "{listed}{err}"
    );
    let (ok, out, err) = cli_with_token(
        env,
        Some(ADMIN_TOKEN),
        &[
            "ack",
            "disks",
            "k:DiskFull",
            "--comment",
            "replacing the disk",
        ],
    );
    assert!(ok && out.contains("acknowledged by alice"), "{out}{err}");

    // A reminder stays back, counted; an escalation goes out saying who acknowledged.
    post_accepted(&base, "disks", disk_full("firing", "error", 2)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acknowledged_count(&base).await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reminder was not kept back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post_accepted(&base, "disks", disk_full("firing", "alert", 3)).await;
    wait_until(Duration::from_secs(30), "the escalation", count(2)).await;
    post_accepted(&base, "disks", disk_full("resolved", "error", 4)).await;
    wait_until(Duration::from_secs(30), "the resolution", count(3)).await;
    // A new episode is not acknowledged.
    post_accepted(&base, "disks", disk_full("firing", "error", 5)).await;
    wait_until(Duration::from_secs(30), "the new episode", count(4)).await;
    assert_eq!(
        delivered(env),
        [
            pair("disk-1", ""),
            pair("disk-3", "alice"),
            pair("disk-4", "alice"),
            pair("disk-5", "")
        ]
    );
    let (_, listed, _) = cli_with_token(env, Some(ADMIN_TOKEN), &["alerts"]);
    assert!(!listed.contains("acknowledged by"), "{listed}");

    // Through the API, for a second: once it lapsed, reminders go out again.
    let client = reqwest::Client::new();
    let acked: Value = client
        .post(format!("{base}/api/v1/alerts/ack"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"pipeline": "disks", "alert": "k:DiskFull/db1", "comment": "looking", "duration": "1s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(acked["ack"]["by"], "alice", "{acked}");
    let refused = client
        .post(format!("{base}/api/v1/alerts/ack"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"pipeline": "disks", "alert": "k:Nope", "comment": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    post_accepted(&base, "disks", disk_full("firing", "error", 6)).await;
    wait_until(
        Duration::from_secs(30),
        "the reminder after the lapse",
        count(5),
    )
    .await;
    assert_eq!(delivered(env)[4], pair("disk-6", ""));
    tocsin.kill();
}
