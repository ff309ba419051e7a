//! `POST /ingest/{pipeline}`: 202 only once durable; every bad request gets its status and a
//! reason, and nothing of it is queued.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::{file_sink, wait_until, Env, Running};

fn ingest_pipeline(env: &Env, auth: &str, out: &str) -> String {
    format!(
        "[source]\nplugin = \"json\"\nauth = {auth}\nbody_limit = \"4KiB\"\n\n{}",
        file_sink(env, "out", out)
    )
}

async fn post(
    server: &Running,
    pipeline: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    post_to(&server.base_url, pipeline, headers, body).await
}

async fn post_to(
    base_url: &str,
    pipeline: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base_url}/ingest/{pipeline}"))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("tocsin answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn setup() -> Env {
    let env = Env::new();
    env.mkdir("out");
    std::fs::write(env.path("token"), "tok-123\n").unwrap();
    std::fs::write(env.path("gh-secret"), "It's a Secret to Everybody").unwrap();
    let token = env.path("token");
    env.write_pipeline(
        "alerts",
        &ingest_pipeline(
            &env,
            &format!("{{ bearer = \"file:{}\" }}", token.display()),
            "alerts.jsonl",
        ),
    );
    let secret = env.path("gh-secret");
    env.write_pipeline(
        "github",
        &ingest_pipeline(
            &env,
            &format!("{{ github_secret = \"file:{}\" }}", secret.display()),
            "github.jsonl",
        ),
    );
    env
}

const BEARER: (&str, &str) = ("authorization", "Bearer tok-123");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_message_is_accepted_once_durable_and_delivered() {
    let env = setup();
    let server = env.start().await;
    let body = json!({"severity": "warning", "summary": "Disk", "body": "/ is 93 % full", "labels": {"host": "db1"}});
    let (status, answer) = post(
        &server,
        "alerts",
        &[BEARER, ("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let id = answer["ids"][0].as_str().unwrap().to_string();
    assert!(id.starts_with("req-"), "{id}");
    wait_until(Duration::from_secs(20), "delivery", || {
        env.read_lines("out/alerts.jsonl").len() == 1
    })
    .await;
    let line = &env.read_json_lines("out/alerts.jsonl")[0];
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["severity"], "warning");
    // The same request again yields the same id, so sinks see the same idempotency key.
    let (_, again) = post(&server, "alerts", &[BEARER], body.to_string()).await;
    assert_eq!(again["ids"][0], id.as_str());
    let health = reqwest::get(format!("{}/healthz", server.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Prometheus metrics of the two requests (the second one, the same message again, is
    // delivered under the same idempotency key, which the file sink skips).
    wait_until(Duration::from_secs(20), "both delivered", || {
        server.counter("alerts", |c| &c.delivered) == 2
    })
    .await;
    assert_eq!(env.read_lines("out/alerts.jsonl").len(), 1);
    let metrics = tocsin_tests::metrics_text(&server.base_url).await;
    for line in [
        "tocsin_messages_in_total{pipeline=\"alerts\"} 2",
        "tocsin_delivered_total{pipeline=\"alerts\"} 2",
        "tocsin_pipeline_up{pipeline=\"alerts\"} 1",
        "tocsin_delivery_latency_seconds_count{pipeline=\"alerts\",sink=\"out\"} 2",
        "tocsin_plugin_traps_total{pipeline=\"github\"} 0",
        // Empty queues are 0, not missing: a rule on `> 0` tells "empty" from "gone".
        "tocsin_queue_depth{pipeline=\"alerts\",queue=\"out\"} 0",
        "tocsin_queue_depth{pipeline=\"alerts\",queue=\"ingress\"} 0",
        "tocsin_dead_letters{pipeline=\"alerts\",queue=\"out\"} 0",
        "tocsin_dead_letters{pipeline=\"alerts\",queue=\"@filters\"} 0",
        "tocsin_queue_depth{pipeline=\"github\",queue=\"ingress\"} 0",
        "tocsin_dead_letters{pipeline=\"github\",queue=\"@filters\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_a_reason_and_nothing_is_queued() {
    let env = setup();
    let server = env.start().await;
    let ok = json!({"body": "fine"}).to_string();
    let case =
        |pipeline, headers: &[(&'static str, &'static str)], body: String, status, reason| {
            (pipeline, headers.to_vec(), body, status, reason)
        };
    let auth_ct: &[(&str, &str)] = &[BEARER, ("content-type", "text/plain")];
    let cases = [
        case(
            "nosuch",
            &[BEARER],
            ok.clone(),
            404,
            "no ingest pipeline named `nosuch`",
        ),
        case(
            "alerts",
            &[],
            ok.clone(),
            401,
            "missing `Authorization: Bearer <token>`",
        ),
        case(
            "alerts",
            &[("authorization", "Bearer wrong")],
            ok.clone(),
            401,
            "wrong bearer token",
        ),
        // A timestamp in seconds, or u64::MAX, would mute time windows: refused with why.
        case(
            "alerts",
            &[BEARER],
            json!({"body": "x", "timestamp_ms": u64::MAX}).to_string(),
            422,
            "outside 2000-01-01 to a day from now",
        ),
        case(
            "alerts",
            &[BEARER],
            json!({"body": "x", "id": "a\r\nb"}).to_string(),
            422,
            "control or bidirectional-formatting characters",
        ),
        case(
            "alerts",
            &[BEARER],
            format!("{{\"body\": \"{}\"}}", "x".repeat(5000)),
            413,
            "limit of 4096 bytes",
        ),
        case(
            "alerts",
            &[BEARER],
            "{\"body\": ".into(),
            400,
            "malformed JSON",
        ),
        case(
            "alerts",
            &[BEARER],
            "{\"bdy\": \"x\"}".into(),
            422,
            "unknown field `bdy`",
        ),
        case(
            "alerts",
            auth_ct,
            ok.clone(),
            415,
            "expected application/json",
        ),
    ];
    for (pipeline, headers, body, want, reason) in cases {
        let (status, answer) = post(&server, pipeline, &headers, body).await;
        assert_eq!(status, want, "{pipeline} {headers:?}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{want}: `{reason}` not in `{error}`"
        );
    }
    // Nothing of those was queued: one good request later, exactly one line is delivered.
    let (status, _) = post(&server, "alerts", &[BEARER], ok).await;
    assert_eq!(status, 202);
    wait_until(Duration::from_secs(20), "delivery", || {
        !env.read_lines("out/alerts.jsonl").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.read_lines("out/alerts.jsonl").len(), 1);
    let depths = server.queue.depths("alerts").unwrap();
    assert_eq!(depths.ingress, 0);
    assert!(depths.dead.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_signatures_are_checked_before_the_decoder() {
    let env = setup();
    let server = env.start().await;
    let body = json!({"body": "push to main", "id": "delivery-1"}).to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
    mac.update(body.as_bytes());
    let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let tampered = format!("{}0", &good[..good.len() - 1]);

    let (status, answer) = post(
        &server,
        "github",
        &[("x-hub-signature-256", &tampered)],
        body.clone(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = post(&server, "github", &[], body.clone()).await;
    assert_eq!(status, 401);
    let (status, answer) = post(
        &server,
        "github",
        &[("x-hub-signature-256", &good)],
        body.clone(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["ids"][0], "delivery-1");
    wait_until(Duration::from_secs(20), "delivery", || {
        !env.read_lines("out/github.jsonl").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.read_lines("out/github.jsonl").len(),
        1,
        "the refused requests queued nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_disk_budget_ingest_answers_503_and_queues_nothing() {
    let env = setup();
    // A budget of one byte: an empty store may be within it (sled writes its files lazily),
    // one stored message is past it. Post until refused; the refusals queue nothing.
    let server = env.start_with(|s| s.queue_budget = Some(1)).await;
    let post = || {
        reqwest::Client::new()
            .post(format!("{}/ingest/alerts", server.base_url))
            .header("authorization", "Bearer tok-123")
            .body(json!({"body": "x"}).to_string())
            .send()
    };
    let mut accepted = 0;
    let refused = loop {
        let resp = post().await.unwrap();
        if resp.status() != 202 {
            break resp;
        }
        accepted += 1;
        assert!(accepted < 10, "the budget never took effect");
        // The store's size is measured at most every MEASURE_EVERY.
        tokio::time::sleep(tocsin::budget::MEASURE_EVERY + Duration::from_millis(200)).await;
    };
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(refused.text().await.unwrap().contains("budget"));
    assert_eq!(
        server.counter("alerts", |c| &c.produced),
        accepted,
        "the refused one was not queued"
    );
    server.stop().await;
}

/// With `--metrics-token`, `/metrics` (which names every pipeline) answers only the bearer
/// of the token; `/healthz` stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_ask_for_a_bearer_token() {
    let env = setup();
    std::fs::write(env.path("metrics-token"), "scrape-me\n").unwrap();
    let token = tocsin_config::SecretRef::File(env.path("metrics-token"));
    let server = env.start_with(|s| s.metrics_token = Some(token)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", server.base_url);
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body = anonymous.text().await.unwrap();
    assert!(!body.contains("alerts"), "{body}");
    let wrong = client.get(&url).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let scraped = client
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped
        .text()
        .await
        .unwrap()
        .contains("pipeline=\"alerts\""));
    let health = client
        .get(format!("{}/healthz", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

/// A known pipeline that is not running answers 503 with its state, which a sender retries
/// (GitHub never retries a 404); requests answered with an error are counted per pipeline and
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_failed_to_start_answers_503_and_rejections_are_counted() {
    let env = setup();
    env.write_pipeline(
        "broken",
        "[source]\nplugin = \"no-such-decoder\"\nauth = { none = true }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n",
    );
    let server = env.start().await;
    let (status, answer) = post(&server, "broken", &[], "{}").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("failed to start"),
        "{answer}"
    );
    let (status, _) = post(&server, "nowhere", &[], "{}").await;
    assert_eq!(status, 404, "an unknown pipeline is still 404");

    assert_eq!(post(&server, "alerts", &[], "{}").await.0, 401);
    assert_eq!(
        post(
            &server,
            "alerts",
            &[("authorization", "Bearer wrong")],
            "{}"
        )
        .await
        .0,
        401
    );
    let json = ("content-type", "application/json");
    assert_eq!(
        post(&server, "alerts", &[BEARER, json], "not json").await.0,
        400
    );
    assert_eq!(
        post(&server, "alerts", &[BEARER, json], r#"{"body": "ok"}"#)
            .await
            .0,
        202
    );
    let metrics = tocsin_tests::metrics_text(&server.base_url).await;
    for line in [
        "tocsin_ingest_rejected_total{pipeline=\"alerts\",status=\"401\"} 2",
        "tocsin_ingest_rejected_total{pipeline=\"alerts\",status=\"400\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    server.stop().await;
}

/// Credentials are for the host: once `auth` is checked, the decoder (third-party code) gets
/// the request without `Authorization`, `Proxy-Authorization` or `Cookie`; other headers pass.
/// The real binary, as an operator runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoder_never_sees_the_credentials() {
    let env = setup();
    let token = env.path("token");
    env.write_pipeline(
        "echo",
        &format!(
            "[source]\nplugin = \"header-echo\"\nauth = {{ bearer = \"file:{}\" }}\n\n{}",
            token.display(),
            file_sink(&env, "out", "echo.jsonl")
        ),
    );
    env.write_pipeline(
        "open",
        &format!(
            "[source]\nplugin = \"header-echo\"\nauth = {{ none = true }}\n\n{}",
            file_sink(&env, "out", "open.jsonl")
        ),
    );
    let port = Port::free();
    let mut server = Tocsin::spawn(&env, &port, &[]);
    server.wait_serving(&env, Duration::from_secs(60)).await;
    let sent = [
        BEARER,
        ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
        ("cookie", "session=s3cr3t"),
        ("x-request-id", "r-17"),
    ];
    for pipeline in ["echo", "open"] {
        let (status, answer) = post_to(&server.base_url, pipeline, &sent, "hello").await;
        assert_eq!(status, 202, "{pipeline}: {answer}");
    }
    for file in ["out/echo.jsonl", "out/open.jsonl"] {
        wait_until(Duration::from_secs(20), "delivery", || {
            !env.read_lines(file).is_empty()
        })
        .await;
        let lines = env.read_json_lines(file);
        // The file sink writes labels as [name, value] pairs.
        let pairs: Vec<(String, String)> =
            serde_json::from_value(lines[0]["labels"].clone()).unwrap();
        let labels: std::collections::BTreeMap<String, String> = pairs.into_iter().collect();
        assert_eq!(
            labels.get("header.x-request-id").map(String::as_str),
            Some("r-17"),
            "{file}: {labels:?}"
        );
        for credential in ["authorization", "proxy-authorization", "cookie"] {
            assert!(
                !labels.contains_key(&format!("header.{credential}")),
                "{file}: the decoder saw {credential}: {labels:?}"
            );
        }
        let stored = lines[0].to_string();
        for secret in ["tok-123", "cHJveHk6c2VjcmV0", "s3cr3t"] {
            assert!(!stored.contains(secret), "{file}: {stored}");
        }
    }
    let (status, _) = server.terminate(Duration::from_secs(20));
    assert!(status.success());
}

/// A body within every limit is never a 500: with `body_limit` at its largest, the decoder's
/// memory and fuel follow it, so a 60 MB body it can hand on is accepted, and bodies past what
/// it can hand on or hold are answered 413 with the reason; none counts as a plugin fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_within_the_body_limit_get_413_never_a_plugin_fault() {
    let env = setup();
    for (name, plugin) in [("big", "json"), ("am", "alertmanager-webhook")] {
        env.write_pipeline(
            name,
            &format!(
                "[source]\nplugin = \"{plugin}\"\nauth = {{ none = true }}\n\
                 body_limit = \"64MiB\"\n\n{}",
                file_sink(&env, "out", &format!("{name}.jsonl"))
            ),
        );
    }
    let port = Port::free();
    let mut server = Tocsin::spawn(&env, &port, &[]);
    server.wait_serving(&env, Duration::from_secs(60)).await;
    let base = server.base_url.clone();
    // 60 MB of JSON escapes, 10 MB once decoded: parsing it takes memory and fuel in
    // proportion to the body (the defaults alone trap: 500 before).
    let escaped = format!(
        "{{\"body\": \"{}\", \"id\": \"escaped\"}}",
        "\\u0041".repeat(10 << 20)
    );
    let (status, answer) = post_to(&base, "big", &[], escaped).await;
    assert_eq!(status, 202, "{answer}");
    // Each of these makes a message larger than one request may make.
    for mb in [30, 50, 60] {
        let body = json!({"body": "x".repeat(mb << 20)}).to_string();
        let (status, answer) = post_to(&base, "big", &[], body).await;
        assert_eq!(status, 413, "{mb} MB: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("16777216 bytes")),
            "{answer}"
        );
    }
    // 60 MB of 150 000 alerts: more than the decoder can hold (or take) at once.
    let alerts: Vec<Value> = (0..150_000)
        .map(|i| {
            json!({"status": "firing", "labels": {"alertname": format!("A{i}")},
                   "annotations": {"summary": "x".repeat(250)},
                   "startsAt": "2026-12-05T00:00:00Z", "fingerprint": format!("{i:016x}")})
        })
        .collect();
    let notification = json!({"version": "4", "groupKey": "g", "status": "firing",
        "receiver": "r", "alerts": alerts})
    .to_string();
    assert!((50 << 20..64 << 20).contains(&notification.len()));
    let (status, answer) = post_to(&base, "am", &[], notification).await;
    assert_eq!(status, 413, "{answer}");
    wait_until(
        Duration::from_secs(20),
        "the escaped body delivered",
        || !env.read_lines("out/big.jsonl").is_empty(),
    )
    .await;
    let metrics = tocsin_tests::metrics_text(&server.base_url).await;
    for pipeline in ["big", "am"] {
        assert!(
            metrics.contains(&format!(
                "tocsin_plugin_traps_total{{pipeline=\"{pipeline}\"}} 0"
            )),
            "{pipeline}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("traps"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let (status, _) = server.terminate(Duration::from_secs(20));
    assert!(status.success());
}
