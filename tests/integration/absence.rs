//! Absence alerts (`expect`): a reporter that stops raises one alert through the pipeline and
//! one resolution when it returns; a `kill -9` and a restart raise no false absence; a
//! reporter can be forgotten through the API and the CLI. Durations are scaled down (every 3 s,
//! grace 2 s); nothing asserts how long anything took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use tocsin_tests::process::{cli_with_token, Port, Tocsin};
use tocsin_tests::{
    file_sink, file_sink_label, post_accepted, wait_until, write_api_tokens, Env, ADMIN_TOKEN,
};

/// An ingest pipeline expecting every host every 3 s (grace 2 s), writing what it delivers
/// in order to `out/room.jsonl`.
fn pipeline(env: &Env) -> String {
    format!(
        "expect = {{ every = \"3s\", grace = \"2s\", key_labels = [\"host\"], severity = \"warning\" }}\n\
         [source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n{}concurrency = 1\n",
        file_sink(env, "room", "room.jsonl")
    )
}

/// The absence alerts and resolutions delivered: (host, status), in order.
fn absences(env: &Env) -> Vec<(String, String)> {
    env.read_json_lines("out/room.jsonl")
        .into_iter()
        .filter(|m| m["key"].as_str().is_some_and(|k| k.starts_with("absence/")))
        .map(|m| (file_sink_label(&m, "host"), file_sink_label(&m, "status")))
        .collect()
}

fn absence(host: &str, status: &str) -> (String, String) {
    (host.to_string(), status.to_string())
}

/// Posts a report of each of `hosts` every 300 ms until `stop` is set.
fn keep_reporting(base: String, hosts: &'static [&'static str], stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            for host in hosts {
                n += 1;
                // Not asserted: the server may be killed between a check of `stop` and a post.
                let _ = client
                    .post(format!("{base}/ingest/fleet"))
                    .json(&report(host, n))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

fn report(host: &str, n: u32) -> Value {
    json!({"id": format!("{host}-{n}-{}", rand_suffix()), "body": format!("{host} is fine"), "labels": {"host": host}})
}

/// Distinct ids across restarts.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_reporter_raises_one_alert_and_one_resolution_and_a_restart_raises_none() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline("fleet", &pipeline(&env));
    let tokens = write_api_tokens(&env);
    let tokens = tokens.to_str().unwrap().to_string();
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", &tokens]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    // db1 and db3 keep reporting; db2 reports once and stops.
    post_accepted(&base, "fleet", report("db2", 0)).await;
    let stop = Arc::new(AtomicBool::new(false));
    keep_reporting(base.clone(), &["db1", "db3"], stop.clone());
    wait_until(Duration::from_secs(60), "db2's absence alert", || {
        !absences(&env).is_empty()
    })
    .await;
    let alert = env
        .read_json_lines("out/room.jsonl")
        .into_iter()
        .find(|m| m["key"] == "absence/host=db2")
        .unwrap();
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .starts_with("db2: no report for"),
        "{alert}"
    );
    assert_eq!(file_sink_label(&alert, "alertname"), "NoReport");
    assert_eq!(alert["severity"], "warning");

    // The CLI lists it as absent, and the others as reporting.
    let (ok, listed, err) = cli_with_token(&env, Some(ADMIN_TOKEN), &["expected", "ls", "fleet"]);
    assert!(ok, "{err}");
    let line = |host: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("host={host} ")))
            .unwrap_or_else(|| panic!("{host} not listed: {listed}"))
            .to_string()
    };
    assert!(line("db2").contains("ABSENT"), "{listed}");
    assert!(line("db1").contains("absent in"), "{listed}");

    // db2 reports again: its resolution, once.
    post_accepted(&base, "fleet", report("db2", 1)).await;
    wait_until(Duration::from_secs(60), "db2's resolution", || {
        absences(&env).len() == 2
    })
    .await;
    assert_eq!(
        absences(&env),
        [absence("db2", "firing"), absence("db2", "resolved")]
    );

    // kill -9 while db1 and db3 report; down for longer than every + grace.
    tocsin.kill();
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(6)).await;

    // After the restart db1 reports again, db3 and db2 do not: the clock of each starts at
    // the restart, so db2 and db3 are absent once 5 s have passed since it — and db1, which
    // the downtime would have made "late" had it been counted, never is.
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", &tokens]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    keep_reporting(base.clone(), &["db1"], stop.clone());
    wait_until(Duration::from_secs(60), "db2's and db3's absences", || {
        absences(&env).len() == 4
    })
    .await;
    let mut after = absences(&env)[2..].to_vec();
    after.sort();
    assert_eq!(
        after,
        [absence("db2", "firing"), absence("db3", "firing")],
        "all: {:?}",
        absences(&env)
    );

    // db3 is retired: forgetting it resolves its alert; an unknown reporter is a 404.
    let client = reqwest::Client::new();
    let gone = client
        .delete(format!("{base}/api/v1/pipelines/fleet/expected/host=db9"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let (ok, out, err) = cli_with_token(
        &env,
        Some(ADMIN_TOKEN),
        &["expected", "forget", "fleet", "host=db3"],
    );
    assert!(ok && out.contains("no longer expected"), "{out}{err}");
    wait_until(Duration::from_secs(60), "db3's resolution", || {
        absences(&env).len() == 5
    })
    .await;
    assert_eq!(absences(&env)[4], absence("db3", "resolved"));
    let listed: Value = client
        .get(format!("{base}/api/v1/pipelines/fleet/expected"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reporters: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reporter"].as_str().unwrap())
        .collect();
    assert_eq!(reporters, ["host=db1", "host=db2"]);
    stop.store(true, Ordering::Relaxed);
    // db1 never went absent while it reported.
    assert!(
        !absences(&env).contains(&absence("db1", "firing")),
        "{:?}",
        absences(&env)
    );
    tocsin.kill();
}
