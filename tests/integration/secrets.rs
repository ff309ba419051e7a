//! Secrets never show: not in the log (our crates at trace level), HTTP answers, metrics, dead
//! letters, the output of `tocsin dlq`, `tocsin queue` and `tocsin validate`, or the files of
//! the data directory — through success, refusal and failure paths of the real binary.

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use tocsin_tests::{free_port, plugins_dir, serve_on_loopback, tocsin_bin, wait_until, Env};

/// Distinctive values nobody else would print.
const INGEST_TOKEN: &str = "sekret-ingest-7f3a9c";
const HOOK_TOKEN: &str = "sekret-hook-91b2e4";
const PASTED: &str = "sekret-pasted-55d0aa";

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs_answers_metrics_or_stored_data() {
    // A webhook receiver that refuses everything, so messages end in dead letters.
    let app = axum::Router::new().route(
        "/hook",
        post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    );
    let hook_port = serve_on_loopback(app).await;
    let env = Env::new();
    std::fs::write(env.path("ingest-token"), INGEST_TOKEN).unwrap();
    std::fs::write(env.path("hook-token"), HOOK_TOKEN).unwrap();
    env.write_pipeline(
        "guarded",
        &format!(
            r#"
[source]
plugin = "json"
auth = {{ bearer = "file:{ingest}" }}

[[sink]]
name = "hook"
plugin = "webhook"
config = {{ url = "http://127.0.0.1:{hook_port}/hook", headers = {{ authorization = "secret:token" }} }}
grants = {{ hosts = ["127.0.0.1:{hook_port}"], secrets = {{ token = "file:{hook}" }} }}
retry = {{ max_attempts = 2, initial = "100ms", max = "200ms" }}
"#,
            ingest = env.path("ingest-token").display(),
            hook = env.path("hook-token").display(),
        ),
    );
    // A secret pasted where a reference belongs: reported, never echoed.
    env.write_pipeline(
        "pasted",
        &format!("[source]\nplugin = \"json\"\nauth = {{ bearer = \"{PASTED}\" }}\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n"),
    );
    let port = free_port();
    let mut child = Command::new(tocsin_bin())
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--pipelines")
        .arg(env.path("pipelines"))
        .arg("--data")
        .arg(env.path("data"))
        .arg("--plugin-dir")
        .arg(plugins_dir())
        .env(
            "RUST_LOG",
            "info,tocsin=trace,tocsin_runtime=trace,tocsin_queue=trace,tocsin_config=trace",
        )
        .stdout(std::fs::File::create(env.path("stdout.log")).unwrap())
        .stderr(std::fs::File::create(env.path("stderr.log")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(30), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let mut answers = String::new();
    for (token, body) in [(INGEST_TOKEN, "accepted"), ("wrong-token", "refused")] {
        let resp = client
            .post(format!("{base}/ingest/guarded"))
            .bearer_auth(token)
            .json(&serde_json::json!({"id": body, "body": body}))
            .send()
            .await
            .unwrap();
        let head = format!("{} {:?}", resp.status(), resp.headers());
        answers.push_str(&format!("{head} {}\n", resp.text().await.unwrap()));
    }
    assert!(answers.starts_with("202"), "{answers}");
    // Wait for the dead letter, via the metrics.
    let mut metrics = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !metrics.contains("tocsin_dead_lettered_total{pipeline=\"guarded\"} 1") {
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    child.wait().unwrap();

    let listing = env.cli(&["dlq", "ls"]);
    assert!(listing.contains("HTTP 500: boom"), "{listing}");
    let seq = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let shown = env.cli(&["dlq", "show", "guarded", "hook", &seq]);
    let queues = env.cli(&["queue", "ls"]);
    // `validate` reports on every file, the one with the pasted secret included (whatever its
    // exit status).
    let validated = Command::new(tocsin_tests::tocsin_bin())
        .args(["validate", "--env"])
        .arg(env.path("pipelines"))
        .arg("--plugin-dir")
        .arg(tocsin_tests::plugins_dir())
        .output()
        .expect("validate runs");
    let validated = String::from_utf8_lossy(&validated.stdout).into_owned()
        + &String::from_utf8_lossy(&validated.stderr);
    assert!(validated.contains("guarded"), "{validated}");

    let log = std::fs::read_to_string(env.path("stderr.log")).unwrap()
        + &std::fs::read_to_string(env.path("stdout.log")).unwrap();
    // The log covers the paths where a secret could slip out: start, retries, dead letters.
    for line in [
        "pipeline started",
        "delivery failed; will retry",
        "message moved to dead letters",
    ] {
        assert!(log.contains(line), "`{line}` not in the log");
    }
    assert!(
        log.contains("the value is not shown"),
        "the pasted secret was reported"
    );
    for secret in [INGEST_TOKEN, HOOK_TOKEN, PASTED] {
        for (place, text) in [
            ("log", &log),
            ("answers", &answers),
            ("metrics", &metrics),
            ("dlq ls", &listing),
            ("dlq show", &shown),
            ("queue ls", &queues),
            ("validate", &validated),
        ] {
            assert!(!text.contains(secret), "{secret} leaked into the {place}");
        }
        let hits = files_containing(&env.path("data"), secret.as_bytes());
        assert!(hits.is_empty(), "{secret} stored in {hits:?}");
    }
}
