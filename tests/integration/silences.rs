//! Silences: made with the CLI against a running server posting to a real Synapse, and
//! through the admin API with a file sink; what they hold back is announced when they end
//! only if it is still open.

use std::time::Duration;

use serde_json::{json, Value};

use tocsin_tests::process::{cli_with_token, Port, Tocsin};
use tocsin_tests::synapse::Synapse;
use tocsin_tests::{
    api_get, file_sink, post_accepted, wait_until, write_api_tokens, Env, ADMIN_TOKEN,
    OPEN_JSON_SOURCE,
};

/// An alert of `host` about `what`, keyed `what/host`.
fn alert(what: &str, host: &str, status: &str, n: u32) -> Value {
    json!({
        "id": format!("{what}-{host}-{status}-{n}"),
        "key": format!("{what}/{host}"),
        "severity": "error",
        "summary": format!("{what} on {host}"),
        "body": format!("{what} is {status} on {host}"),
        "labels": {"alertname": what, "host": host, "status": status},
    })
}

/// A counter of `/metrics`: the sum of the lines starting with `prefix`.
async fn metric_sum(base: &str, prefix: &str) -> u64 {
    tocsin_tests::metrics_text(base)
        .await
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

const SILENCED: &str =
    "tocsin_stage_events_total{pipeline=\"disks\",stage=\"sink.room\",event=\"silenced\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_from_the_cli_stops_a_hosts_alert_and_its_end_announces_what_is_still_open() {
    let synapse = Synapse::start().await;
    let env = Env::new();
    let token_file = env.path("matrix-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    env.write_pipeline(
        "disks",
        &format!(
            "{OPEN_JSON_SOURCE}[[sink]]\nname = \"room\"\nplugin = \"matrix\"\n\
             config = {{ homeserver = \"{}\", room = \"{}\" }}\n\
             grants = {{ hosts = [\"127.0.0.1:{}\"], secrets = {{ access_token = \"file:{}\" }} }}\n",
            synapse.base,
            synapse.room,
            synapse.port,
            token_file.display()
        ),
    );
    let tokens = write_api_tokens(&env);
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", tokens.to_str().unwrap()]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    let (ok, out, err) = cli_with_token(
        &env,
        Some(ADMIN_TOKEN),
        &[
            "silence",
            "add",
            "host=db1",
            "--for",
            "2h",
            "--comment",
            "kernel upgrade",
        ],
    );
    assert!(ok, "{err}");
    let id = out
        .strip_prefix("silence ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("the new silence's id: {out}"))
        .to_string();
    assert!(
        out.contains("mutes host=db1") && out.contains("(by alice)"),
        "{out}"
    );

    // db1's disk alert opens and stays open; its CPU alert opens and resolves, all inside the
    // silence; db2's is not silenced.
    post_accepted(&base, "disks", alert("DiskFull", "db1", "firing", 1)).await;
    post_accepted(&base, "disks", alert("CPUHigh", "db1", "firing", 1)).await;
    post_accepted(&base, "disks", alert("CPUHigh", "db1", "resolved", 2)).await;
    post_accepted(&base, "disks", alert("DiskFull", "db2", "firing", 1)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while synapse.messages().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "db2's alert never came"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // db2's was handed over after db1's three, so they have been through the silence.
    assert_eq!(metric_sum(&base, SILENCED).await, 3);
    let room = synapse.messages().await;
    assert_eq!(room.len(), 1, "{room:#?}");
    assert!(room[0].0.contains("DiskFull on db2"), "{room:#?}");

    let (ok, listed, err) = cli_with_token(&env, Some(ADMIN_TOKEN), &["silence", "ls"]);
    assert!(ok, "{err}");
    assert!(
        listed.contains(&id) && listed.contains("active") && listed.contains("kernel upgrade"),
        "{listed}"
    );
    let (ok, trace, err) =
        cli_with_token(&env, Some(ADMIN_TOKEN), &["trace", "DiskFull-db1-firing-1"]);
    assert!(ok, "{err}");
    assert!(trace.contains(&format!("silenced by {id}")), "{trace}");

    // The register knows db1's disk alert is open and held back from the room.
    let alerts = api_get(&base, "/alerts?pipeline=disks", ADMIN_TOKEN).await;
    let held: Vec<(&Value, &Value)> = alerts
        .as_array()
        .expect("an array")
        .iter()
        .filter(|a| a["held"]["room"].is_object())
        .map(|a| (&a["identity"], &a["open"]))
        .collect();
    // The CPU alert is kept, resolved, until the silence ends: then it is dropped.
    assert_eq!(
        held,
        [
            (&json!("k:CPUHigh/db1"), &json!(false)),
            (&json!("k:DiskFull/db1"), &json!(true))
        ],
        "{alerts:#?}"
    );

    let (ok, out, err) = cli_with_token(&env, Some(ADMIN_TOKEN), &["silence", "expire", &id[..6]]);
    assert!(ok && out.contains("expired"), "{out}{err}");
    while synapse.messages().await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the still-open alert was not announced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What the release queued went in one commit: given time to arrive, nothing else comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let room = synapse.messages().await;
    assert_eq!(room.len(), 2, "once, and never the CPU alert: {room:#?}");
    assert!(room[1].0.contains("DiskFull on db1"), "{room:#?}");
    let (ok, listed, _) = cli_with_token(&env, Some(ADMIN_TOKEN), &["silence", "ls", "--all"]);
    assert!(ok && listed.contains("expired"), "{listed}");
    tocsin.kill();
}

/// The ids of what the file sink `room` wrote, in order.
fn delivered_ids(env: &Env) -> Vec<String> {
    env.read_json_lines("out/room.jsonl")
        .into_iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Adds a silence through the API; returns its id.
async fn add_silence(base: &str, body: Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/silences"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let made: Value = response.json().await.unwrap();
    assert_eq!(made["created_by"], "alice");
    made["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_end_a_silence_releases_the_resolution_of_what_the_sink_saw_open_and_drops_the_rest()
{
    let env = Env::new();
    let tokens = write_api_tokens(&env);
    env.mkdir("out");
    env.write_pipeline(
        "disks",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            file_sink(&env, "room", "room.jsonl")
        ),
    );
    let server = env
        .start_with(|s| s.api_tokens = Some(tokens.clone()))
        .await;
    let base = server.base_url.clone();
    let delivered = || delivered_ids(&env);
    post_accepted(&base, "disks", alert("DiskFull", "db1", "firing", 1)).await;
    wait_until(Duration::from_secs(30), "the first alert", || {
        delivered().len() == 1
    })
    .await;

    // Bad silences are refused with the reason.
    let refused = reqwest::Client::new()
        .post(format!("{base}/api/v1/silences"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"matchers": ["host=~\".*\""], "duration": "1h", "comment": "all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let why: Value = refused.json().await.unwrap();
    assert!(
        why["error"].as_str().unwrap().contains("every message"),
        "{why}"
    );

    add_silence(
        &base,
        json!({"matchers": ["alertname=~\"Disk.*\""], "duration": "3s", "comment": "maintenance"}),
    )
    .await;
    // Inside the silence: db1 resolves (the sink saw it open), db2 opens and stays open, a
    // message about no alert is dropped.
    post_accepted(&base, "disks", alert("DiskFull", "db1", "resolved", 2)).await;
    post_accepted(&base, "disks", alert("DiskFull", "db2", "firing", 1)).await;
    post_accepted(
        &base,
        "disks",
        json!({"id": "note", "body": "disk note", "labels": {"alertname": "DiskNote"}}),
    )
    .await;
    let silenced =
        "tocsin_stage_events_total{pipeline=\"disks\",stage=\"sink.room\",event=\"silenced\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric_sum(&base, silenced).await < 3 {
        assert!(std::time::Instant::now() < deadline, "not silenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered(), ["DiskFull-db1-firing-1"]);

    // The silence ends by itself: the resolution and the still-open alert are released.
    wait_until(Duration::from_secs(30), "the release", || {
        delivered().len() == 3
    })
    .await;
    let mut released = delivered()[1..].to_vec();
    released.sort();
    assert_eq!(
        released,
        ["DiskFull-db1-resolved-2", "DiskFull-db2-firing-1"]
    );
    server.stop().await;

    // After a restart nothing is released again, and the silence is still listed.
    let server = env
        .start_with(|s| s.api_tokens = Some(tokens.clone()))
        .await;
    let listed = api_get(&server.base_url, "/silences", ADMIN_TOKEN).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["state"], "expired");
    post_accepted(
        &server.base_url,
        "disks",
        alert("DiskFull", "db3", "firing", 1),
    )
    .await;
    wait_until(Duration::from_secs(30), "db3", || delivered().len() == 4).await;
    assert_eq!(delivered().len(), 4, "nothing released twice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_mutes_its_matches_and_releases_what_is_still_open_when_it_closes() {
    let minute_of_day = || {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        ((secs / 60) % 1440) as u32
    };
    if minute_of_day() >= 1437 {
        // Too close to midnight for a range of two minutes: wait for the next day.
        tokio::time::sleep(Duration::from_secs(200)).await;
    }
    let start = minute_of_day();
    let end = start + 2;
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "disks",
        &format!(
            "{OPEN_JSON_SOURCE}{}\n[[maintenance]]\nname = \"reboot\"\ntimes = [\"{}-{}\"]\n\
             match = [\"host=db1\"]\n",
            file_sink(&env, "room", "room.jsonl"),
            hhmm(start),
            hhmm(end)
        ),
    );
    let server = env.start().await;
    let base = server.base_url.clone();
    let delivered = || delivered_ids(&env);
    post_accepted(&base, "disks", alert("DiskFull", "db1", "firing", 1)).await;
    post_accepted(&base, "disks", alert("DiskFull", "db2", "firing", 1)).await;
    wait_until(Duration::from_secs(30), "db2's alert", || {
        delivered() == ["DiskFull-db2-firing-1"]
    })
    .await;
    assert_eq!(metric_sum(&base, SILENCED).await, 1);
    // Closed, the window lets db1's still-open alert through, once.
    wait_until(Duration::from_secs(200), "the window to close", || {
        delivered().len() == 2
    })
    .await;
    assert_eq!(delivered()[1], "DiskFull-db1-firing-1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_critical_alert_inhibits_its_hosts_warnings_until_it_resolves() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "disks",
        &format!(
            "{OPEN_JSON_SOURCE}{}concurrency = 1\n\n[[inhibit]]\nsource = [\"severity=alert\"]\n\
             target = [\"severity=warning\"]\nequal = [\"host\"]\n",
            file_sink(&env, "room", "room.jsonl")
        ),
    );
    let tokens = write_api_tokens(&env);
    let server = env
        .start_with(|s| s.api_tokens = Some(tokens.clone()))
        .await;
    let base = server.base_url.clone();
    let delivered = || delivered_ids(&env);
    let post =
        |what: &'static str, host: &'static str, severity: &'static str, status: &'static str| {
            let base = base.clone();
            async move {
                let mut body = alert(what, host, status, 1);
                body["severity"] = json!(severity);
                post_accepted(&base, "disks", body).await;
            }
        };
    post("NodeDown", "db1", "alert", "firing").await;
    wait_until(Duration::from_secs(30), "the critical alert", || {
        delivered().len() == 1
    })
    .await;
    // db1's warnings are inhibited (counted, held); db2's are not.
    post("DiskSlow", "db1", "warning", "firing").await;
    post("CpuHigh", "db1", "warning", "firing").await;
    post("CpuHigh", "db1", "warning", "resolved").await;
    post("DiskSlow", "db2", "warning", "firing").await;
    wait_until(Duration::from_secs(30), "db2's warning", || {
        delivered().len() == 2
    })
    .await;
    assert_eq!(metric_sum(&base, SILENCED).await, 3);
    assert_eq!(delivered()[1], "DiskSlow-db2-firing-1");
    let alerts = api_get(&base, "/alerts?pipeline=disks", ADMIN_TOKEN).await;
    let held: Vec<(&str, &str)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| {
            let silence = a["held"]["room"]["silence"].as_str()?;
            Some((a["identity"].as_str()?, silence))
        })
        .collect();
    assert_eq!(
        held,
        [
            ("k:CpuHigh/db1", "inhibited by k:NodeDown/db1"),
            ("k:DiskSlow/db1", "inhibited by k:NodeDown/db1")
        ],
        "each hold names its source: {alerts:#}"
    );
    // The source resolves: db1's disk warning, still open, is posted once; the CPU warning
    // that opened and resolved meanwhile never is.
    post("NodeDown", "db1", "alert", "resolved").await;
    wait_until(
        Duration::from_secs(30),
        "the resolution and the release",
        || delivered().len() == 4,
    )
    .await;
    post("Marker", "db9", "info", "firing").await;
    wait_until(Duration::from_secs(30), "the marker", || {
        delivered().len() == 5
    })
    .await;
    assert_eq!(
        delivered(),
        [
            "NodeDown-db1-firing-1",
            "DiskSlow-db2-firing-1",
            "NodeDown-db1-resolved-1",
            "DiskSlow-db1-firing-1",
            "Marker-db9-firing-1"
        ]
    );
    server.stop().await;
}
