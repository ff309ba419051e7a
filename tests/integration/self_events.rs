//! The built-in `@tocsin` source against the real binary: a dead letter of another pipeline,
//! more of them, a sink failing for longer than `retrying_for`, an edited file refused — each
//! one alert through the `@tocsin` pipeline's sink, and one resolution when it ends; a
//! `kill -9` and a restart announce nothing twice; the `@tocsin` pipeline's own failing sink
//! never feeds it (no loop). Durations are scaled down (a look every second, retrying for 2 s);
//! nothing asserts how long anything took.

use std::time::Duration;

use serde_json::{json, Value};

use tocsin_tests::process::{cli_with_token, log_tail, Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{
    api_get, file_sink, file_sink_label, post_accepted, wait_until, write_api_tokens, Env,
    ADMIN_TOKEN, OPEN_JSON_SOURCE,
};

/// What the `@tocsin` pipeline delivered about `key`: (status, summary), in order.
fn about(env: &Env, key: &str) -> Vec<(String, String)> {
    env.read_json_lines("out/ops.jsonl")
        .into_iter()
        .filter(|m| m["key"] == key)
        .map(|m| {
            (
                file_sink_label(&m, "status"),
                m["summary"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn statuses(env: &Env, key: &str) -> Vec<String> {
    about(env, key).into_iter().map(|(s, _)| s).collect()
}

const DEAD: &str = "tocsin/dead_letter/alerts/hook";
const RETRYING: &str = "tocsin/sink_retrying/slow/down";
const INVALID: &str = "tocsin/pipeline_invalid/alerts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tocsins_own_trouble_is_announced_once_resolved_once_and_never_loops() {
    let env = Env::new();
    env.mkdir("out");
    let refusing = Receiver::start().await;
    refusing.set(Behaviour::Fail(400));
    let down = Receiver::start().await;
    down.set(Behaviour::Fail(503));
    let alerts = format!(
        "{OPEN_JSON_SOURCE}{}",
        refusing.sink_toml("hook", "{ max_attempts = 1 }")
    );
    env.write_pipeline("alerts", &alerts);
    env.write_pipeline(
        "slow",
        &format!(
            "{OPEN_JSON_SOURCE}{}concurrency = 1\n",
            down.sink_toml(
                "down",
                "{ max_attempts = 1000, initial = \"100ms\", max = \"200ms\" }"
            )
        ),
    );
    // The @tocsin pipeline: a room (the file sink), and a pager that refuses everything — its
    // dead letters must never come back as reports.
    env.write_pipeline(
        "ops",
        &format!(
            "[source]\nplugin = \"@tocsin\"\nconfig = {{ every = \"1s\", retrying_for = \"2s\" }}\n\n{}{}",
            file_sink(&env, "room", "ops.jsonl"),
            refusing.sink_toml("pager", "{ max_attempts = 1 }")
        ),
    );
    let tokens = write_api_tokens(&env);
    let tokens = tokens.to_str().unwrap().to_string();
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", &tokens]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    // A message the hook refuses: one dead letter, one alert.
    post_accepted(
        &base,
        "alerts",
        json!({"id": "disk-full", "body": "disk full on db1"}),
    )
    .await;
    wait_until(Duration::from_secs(60), "the dead-letter alert", || {
        !about(&env, DEAD).is_empty()
    })
    .await;
    let alert = env
        .read_json_lines("out/ops.jsonl")
        .into_iter()
        .find(|m| m["key"] == DEAD)
        .unwrap();
    assert_eq!(file_sink_label(&alert, "alertname"), "TocsinDeadLetters");
    assert_eq!(file_sink_label(&alert, "pipeline"), "alerts");
    assert_eq!(file_sink_label(&alert, "queue"), "hook");
    assert_eq!(alert["severity"], "error");
    let summary = alert["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("alerts/hook: 1 dead letter: ") && summary.contains("400"),
        "{summary}"
    );

    // One more: announced again, with the new count.
    post_accepted(
        &base,
        "alerts",
        json!({"id": "cpu-hot", "body": "cpu hot on db2"}),
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "the second dead-letter alert",
        || about(&env, DEAD).len() == 2,
    )
    .await;
    assert!(about(&env, DEAD)[1]
        .1
        .starts_with("alerts/hook: 2 dead letters"));

    // A sink that keeps failing: announced once it has failed for `retrying_for`; resolved
    // when it delivers.
    post_accepted(
        &base,
        "slow",
        json!({"id": "late", "body": "this one waits"}),
    )
    .await;
    wait_until(Duration::from_secs(60), "the retrying alert", || {
        !about(&env, RETRYING).is_empty()
    })
    .await;
    let (status, summary) = about(&env, RETRYING).remove(0);
    assert_eq!(status, "firing");
    assert!(
        summary.starts_with("slow/down: deliveries failing for") && summary.contains("503"),
        "{summary}"
    );
    down.set(Behaviour::Accept);
    wait_until(
        Duration::from_secs(60),
        "the retrying alert's resolution",
        || about(&env, RETRYING).len() == 2,
    )
    .await;
    assert_eq!(statuses(&env, RETRYING), ["firing", "resolved"]);

    // An edit that breaks the file: the previous version runs, and the alert says so; the
    // status page's problems too. Fixed: resolved.
    env.write_pipeline("alerts", &format!("{alerts}bogus = 1\n"));
    wait_until(Duration::from_secs(60), "the invalid-file alert", || {
        !about(&env, INVALID).is_empty()
    })
    .await;
    let (_, summary) = about(&env, INVALID).remove(0);
    assert!(
        summary.starts_with("alerts: the edited file is refused, the previous version still runs")
            && summary.contains("bogus"),
        "{summary}"
    );
    let problems = api_get(&base, "/problems", ADMIN_TOKEN).await;
    assert!(
        problems.to_string().contains("its edited file is refused"),
        "{problems}"
    );
    env.write_pipeline("alerts", &alerts);
    wait_until(
        Duration::from_secs(60),
        "the invalid file's resolution",
        || about(&env, INVALID).len() == 2,
    )
    .await;
    assert_eq!(statuses(&env, INVALID), ["firing", "resolved"]);

    // kill -9 with the dead letters still there, and a restart: nothing announced twice. The
    // purge after it shows the source ran (its resolution), and that it was the only change.
    tocsin.kill();
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", &tokens]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let (ok, out, err) = cli_with_token(
        &env,
        Some(ADMIN_TOKEN),
        &["dlq", "purge", "alerts", "hook", "--all"],
    );
    assert!(ok, "{out}{err}");
    wait_until(
        Duration::from_secs(60),
        "the dead letters' resolution",
        || about(&env, DEAD).len() == 3,
    )
    .await;
    assert_eq!(statuses(&env, DEAD), ["firing", "firing", "resolved"]);
    assert_eq!(about(&env, DEAD)[2].1, "alerts/hook: no dead letters left");

    // No loop: the pager refused every report, so `ops` has dead letters of its own — and
    // not one report is about `ops`.
    let letters = api_get(&tocsin.base_url, "/dead-letters?pipeline=ops", ADMIN_TOKEN).await;
    assert!(
        !letters.as_array().unwrap().is_empty(),
        "the pager refused the reports: {letters}\n{}",
        log_tail(&env)
    );
    let about_ops: Vec<Value> = env
        .read_json_lines("out/ops.jsonl")
        .into_iter()
        .filter(|m| file_sink_label(m, "pipeline") == "ops")
        .collect();
    assert!(about_ops.is_empty(), "{about_ops:?}");
    tocsin.terminate(Duration::from_secs(20));
}
