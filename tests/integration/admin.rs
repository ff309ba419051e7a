//! The admin API against the real binary: a dead letter is replayed while the server runs and
//! delivered once; tokens are checked by role and logged by name; `tocsin dlq ls` prints the
//! same listing through the running server as from the store once it stopped.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use tocsin_tests::process::{cli_with_token as cli, log_tail, Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{
    agents_pipeline, wait_until, write_api_tokens as write_tokens, Env, ADMIN_TOKEN,
    OPEN_JSON_SOURCE, READ_TOKEN,
};

async fn api(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1{path}");
    let mut request = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("tocsin answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /api/v1{path}` with the admin token and no body.
async fn admin_post(base: &str, path: &str) -> (u16, Value) {
    api(base, "POST", path, Some(ADMIN_TOKEN), None).await
}

async fn dead_letters(base: &str) -> Vec<Value> {
    let (status, rows) = api(base, "GET", "/dead-letters", Some(READ_TOKEN), None).await;
    assert_eq!(status, 200, "{rows}");
    rows.as_array().unwrap().clone()
}

async fn post_message(base: &str, id: &str) {
    let response = reqwest::Client::new()
        .post(format!("{base}/ingest/alerts"))
        .json(&json!({"id": id, "body": format!("message {id}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_replayed_through_the_api_while_running_and_delivered_once() {
    let env = Env::new();
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503));
    // One attempt: a refused message is dead-lettered at once.
    let sink = receiver.sink_toml("hook", "{ max_attempts = 1 }");
    env.write_pipeline("alerts", &format!("{OPEN_JSON_SOURCE}{sink}"));
    let tokens = write_tokens(&env);
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", tokens.to_str().unwrap()]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    post_message(&base, "disk-full").await;
    post_message(&base, "cpu-hot").await;
    let mut letters = Vec::new();
    for _ in 0..300 {
        letters = dead_letters(&base).await;
        if letters.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(letters.len(), 2, "{letters:?}\n{}", log_tail(&env));
    let disk_full = letters.iter().find(|l| l["id"] == "disk-full").unwrap();
    assert_eq!(disk_full["queue"], "hook");
    assert!(
        disk_full["last_error"].as_str().unwrap().contains("503"),
        "{disk_full}"
    );
    let seq = disk_full["seq"].as_u64().unwrap();

    // The CLI, with the server running, goes through the API.
    let (ok, running_listing, stderr) = cli(&env, Some(READ_TOKEN), &["dlq", "ls"]);
    assert!(ok, "{stderr}");
    assert!(running_listing.contains("disk-full") && running_listing.contains("cpu-hot"));
    let (ok, _, stderr) = cli(&env, None, &["dlq", "ls"]);
    assert!(!ok && stderr.contains("TOCSIN_API_TOKEN"), "{stderr}");

    // Who may do what.
    let replay_path = "/pipelines/alerts/dead-letters/hook/replay";
    let body = json!({"seqs": [seq]});
    let (status, _) = api(&base, "POST", replay_path, None, Some(body.clone())).await;
    assert_eq!(status, 401);
    let (status, answer) = api(
        &base,
        "POST",
        replay_path,
        Some(READ_TOKEN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = api(
        &base,
        "POST",
        replay_path,
        Some(ADMIN_TOKEN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // Replayed while running: delivered, once.
    receiver.set(Behaviour::Accept);
    let (status, answer) = api(&base, "POST", replay_path, Some(ADMIN_TOKEN), Some(body)).await;
    assert_eq!((status, answer), (200, json!({"replayed": 1})));
    wait_until(
        Duration::from_secs(10),
        "the replayed message is delivered",
        || receiver.visible_ids().contains("disk-full"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deliveries = receiver
        .requests()
        .into_iter()
        .filter(|r| r.id == "disk-full" && (200..300).contains(&r.answered))
        .count();
    assert_eq!(deliveries, 1, "delivered once");
    let left: Vec<Value> = dead_letters(&base).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], "cpu-hot");

    // The pipeline view shows the state and the dead letter left.
    let (status, view) = api(&base, "GET", "/pipelines/alerts", Some(READ_TOKEN), None).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "running");
    assert_eq!(view["dead_letters"]["hook"], 1);
    assert!(
        view["counters"]["delivered"].as_u64().unwrap() >= 1,
        "{view}"
    );
    let plugins = view["plugins"].as_array().unwrap();
    let stages: Vec<&str> = plugins
        .iter()
        .map(|p| p["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["sink.hook", "source"], "{view}");
    let source = &plugins[1];
    assert_eq!(source["plugin"], "json");
    let digest = source["sha256"].as_str().unwrap();
    assert!(
        digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{digest}"
    );

    // The access log names the tokens, never their values.
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(log.contains("admin API request"), "{}", log_tail(&env));
    let replays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin API request") && l.contains(replay_path))
        .collect();
    assert!(
        replays
            .iter()
            .any(|l| l.contains("token=alice") && l.contains("status=200")),
        "{replays:#?}"
    );
    assert!(
        replays
            .iter()
            .any(|l| l.contains("token=board") && l.contains("status=403")),
        "{replays:#?}"
    );
    assert!(!log.contains(ADMIN_TOKEN) && !log.contains(READ_TOKEN));

    // The same listing with the server stopped, read from the store.
    let (ok, running_listing, stderr) = cli(&env, Some(READ_TOKEN), &["dlq", "ls"]);
    assert!(ok, "{stderr}");
    let (status, _) = tocsin.terminate(Duration::from_secs(20));
    assert!(status.success());
    assert!(
        !Path::new(&env.path("data/server.json")).exists(),
        "server.json is removed at stop"
    );
    let (ok, stopped_listing, stderr) = cli(&env, None, &["dlq", "ls"]);
    assert!(ok, "{stderr}");
    assert_eq!(running_listing, stopped_listing);
    assert!(stopped_listing.contains("cpu-hot"));

    // Replayed from the store with no server: the trace records it too.
    let (ok, replayed, stderr) = cli(&env, None, &["dlq", "replay", "alerts", "hook", "--all"]);
    assert!(ok, "{stderr}");
    assert!(replayed.contains("replayed 1 message(s)"), "{replayed}");
    let (ok, trace, stderr) = cli(&env, None, &["trace", "cpu-hot"]);
    assert!(ok, "{stderr}");
    let last = trace.lines().last().unwrap_or_default();
    assert!(last.contains("replayed to hook"), "{trace}");
}

/// Without `--api-tokens` the API is off and says how to turn it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_api_is_off_and_says_so() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "alerts",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            tocsin_tests::file_sink(&env, "out", "alerts.jsonl")
        ),
    );
    let server = env.start().await;
    let (status, answer) = api(
        &server.base_url,
        "GET",
        "/pipelines",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        answer["error"].as_str().unwrap().contains("--api-tokens"),
        "{answer}"
    );
    server.stop().await;
}

/// Pause keeps a pipeline stopped across a restart without touching its file; resume starts
/// it again; run-now polls a scheduled source at once; `tocsin status` shows all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_survives_a_restart_resume_starts_and_run_now_polls() {
    let env = Env::new();
    env.mkdir("out");
    env.mkdir("backups");
    env.write_pipeline(
        "alerts",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            tocsin_tests::file_sink(&env, "out", "alerts.jsonl")
        ),
    );
    // Once a year at most: only "run now" makes it poll during the test. The backups
    // directory is empty, which backup-check reports as an error alert.
    let yearly = tocsin_tests::every_second_backup_source(&env, "")
        .replace("\"* * * * * *\"", "\"0 0 0 1 1 *\"");
    env.write_pipeline(
        "backups",
        &format!(
            "{yearly}\n{}",
            tocsin_tests::file_sink(&env, "out", "backups.jsonl")
        ),
    );
    let file_before = std::fs::read_to_string(env.path("pipelines/alerts.toml")).unwrap();
    let tokens = write_tokens(&env);
    let args = ["--api-tokens", tokens.to_str().unwrap()];
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    let (status, answer) = admin_post(&base, "/pipelines/backups/run").await;
    assert_eq!(status, 200, "{answer}");
    wait_until(Duration::from_secs(10), "the polled alert", || {
        env.read_lines("out/backups.jsonl").len() == 1
    })
    .await;
    let (status, _) = admin_post(&base, "/pipelines/alerts/run").await;
    assert_eq!(status, 409, "an ingest pipeline has no schedule");

    let (status, answer) = admin_post(&base, "/pipelines/alerts/pause").await;
    assert_eq!(status, 200, "{answer}");
    let refused = reqwest::Client::new()
        .post(format!("{base}/ingest/alerts"))
        .json(&json!({"body": "while paused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.text().await.unwrap().contains("is paused"));
    let (status, _) = admin_post(&base, "/pipelines/nothing/pause").await;
    assert_eq!(status, 404);

    // Across a restart: still paused, and the file is as it was.
    let (status, _) = tocsin.terminate(Duration::from_secs(20));
    assert!(status.success());
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let (_, view) = api(&base, "GET", "/pipelines/alerts", Some(READ_TOKEN), None).await;
    assert_eq!(view["state"], "paused", "{view}");
    assert_eq!(
        std::fs::read_to_string(env.path("pipelines/alerts.toml")).unwrap(),
        file_before
    );
    let (ok, status_text, stderr) = cli(&env, Some(READ_TOKEN), &["status"]);
    assert!(ok, "{stderr}");
    let alerts_line = status_text
        .lines()
        .find(|l| l.starts_with("alerts "))
        .unwrap();
    assert!(alerts_line.contains("paused"), "{status_text}");
    // What the status page shows as open problems, as text.
    assert!(
        status_text.contains("open problems:\n   ! alerts is paused"),
        "{status_text}"
    );

    let (ok, done, stderr) = cli(&env, Some(ADMIN_TOKEN), &["pipeline", "resume", "alerts"]);
    assert!(ok, "{stderr}");
    assert!(done.contains("resumed"), "{done}");
    let accepted = reqwest::Client::new()
        .post(format!("{base}/ingest/alerts"))
        .json(&json!({"id": "after-resume", "body": "resumed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    wait_until(Duration::from_secs(10), "delivered after resume", || {
        env.read_lines("out/alerts.jsonl").len() == 1
    })
    .await;
    let (ok, _, stderr) = cli(&env, Some(ADMIN_TOKEN), &["pipeline", "resume", "alerts"]);
    assert!(!ok && stderr.contains("not paused"), "{stderr}");
    tocsin.terminate(Duration::from_secs(20));
}

/// The numbers messages carry are kept per host and metric, and the API answers with the
/// series and their points — across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_messages_carry_are_kept_as_series_per_host() {
    let env = Env::new();
    // A threshold-like filter would drop healthy samples; the history takes them before.
    env.write_pipeline("agents", &agents_pipeline(&env));
    let tokens = write_tokens(&env);
    let args = ["--api-tokens", tokens.to_str().unwrap()];
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (i, host) in ["web1", "web1", "web1", "db1"].into_iter().enumerate() {
        let sample = json!({
            "id": format!("sample-{i}"),
            "body": "a sample",
            "timestamp_ms": now_ms - 60_000 * (3 - i as u64),
            "labels": {"host": host},
            "metrics": {"cpu-percent": 10.0 * (i as f64 + 1.0), "load": 0.5},
        });
        let response = reqwest::Client::new()
            .post(format!("{base}/ingest/agents"))
            .json(&sample)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    let series = |base: String| async move {
        let (status, series) = api(
            &base,
            "GET",
            "/pipelines/agents/history",
            Some(READ_TOKEN),
            None,
        )
        .await;
        assert_eq!(status, 200, "{series}");
        let mut names: Vec<String> = series
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}/{}",
                    s["host"].as_str().unwrap(),
                    s["metric"].as_str().unwrap()
                )
            })
            .collect();
        names.sort();
        names
    };
    let mut names = Vec::new();
    // Points are written every second; a loaded machine may take a few.
    for _ in 0..150 {
        names = series(base.clone()).await;
        if names.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        names,
        [
            "db1/cpu-percent",
            "db1/load",
            "web1/cpu-percent",
            "web1/load"
        ]
    );
    let path = "/pipelines/agents/history/points?host=web1&metric=cpu-percent&since=1h";
    let (status, points) = api(&base, "GET", path, Some(READ_TOKEN), None).await;
    assert_eq!(status, 200, "{points}");
    let values: Vec<f64> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["avg"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [10.0, 20.0, 30.0]);
    let (status, answer) = api(
        &base,
        "GET",
        "/pipelines/agents/history/points?metric=x&since=soon",
        Some(READ_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // Kept across a restart.
    let (status, _) = tocsin.terminate(Duration::from_secs(20));
    assert!(status.success());
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let (_, points) = api(&base, "GET", path, Some(READ_TOKEN), None).await;
    assert_eq!(points.as_array().unwrap().len(), 3, "{points}");
    tocsin.terminate(Duration::from_secs(20));
}
