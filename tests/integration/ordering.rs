//! Order per alert against the real binary: a sink with `concurrency` goes on delivering other
//! alerts while one alert's "firing" waits for its retry, and that alert's "resolved" is held
//! back until its "firing" is delivered — never overtaking it.

use std::time::Duration;

use serde_json::json;

use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{post_accepted, wait_until, Env};

const WAIT: Duration = Duration::from_secs(30);

/// An Alertmanager webhook payload of `alerts` (fingerprint, status).
fn payload(alerts: &[(&str, &str)]) -> serde_json::Value {
    let alerts: Vec<_> = alerts
        .iter()
        .map(|(fingerprint, status)| {
            json!({
                "status": status,
                "labels": {"alertname": format!("Alert{fingerprint}"), "instance": "db1"},
                "annotations": {"summary": format!("{fingerprint} is {status}")},
                "startsAt": "2026-12-05T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": fingerprint,
            })
        })
        .collect();
    json!({"version": "4", "status": "firing", "receiver": "tocsin", "alerts": alerts})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerts_resolved_never_overtakes_its_firing_while_other_alerts_go() {
    let env = Env::new();
    let receiver = Receiver::start().await;
    // The first alert's "firing" is refused until told otherwise; everything else is taken.
    receiver.set(Behaviour::FailIds("aaaa-firing", 503));
    env.write_pipeline(
        "alerts",
        &format!(
            "[source]\nplugin = \"alertmanager-webhook\"\nauth = {{ none = true }}\n\n{}\
             concurrency = 4\n",
            receiver.sink_toml(
                "hook",
                "{ max_attempts = 1000, initial = \"300ms\", max = \"300ms\" }"
            )
        ),
    );
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let answered = |prefix: &'static str, status: u16| {
        receiver
            .requests()
            .iter()
            .filter(|r| r.id.starts_with(prefix) && r.answered == status)
            .count()
    };

    post_accepted(&base, "alerts", payload(&[("aaaa", "firing")])).await;
    wait_until(WAIT, "the first attempt of aaaa's firing refused", || {
        answered("aaaa-firing", 503) >= 1
    })
    .await;
    // While it waits for its retry: its resolution, and another alert.
    post_accepted(
        &base,
        "alerts",
        payload(&[("aaaa", "resolved"), ("bbbb", "firing")]),
    )
    .await;
    wait_until(WAIT, "bbbb delivered meanwhile", || {
        answered("bbbb-firing", 200) == 1
    })
    .await;
    // Several retries of aaaa's firing later, its resolution has still not been sent.
    let retried = answered("aaaa-firing", 503);
    wait_until(WAIT, "two more retries of aaaa's firing", || {
        answered("aaaa-firing", 503) >= retried + 2
    })
    .await;
    assert!(
        !receiver
            .requests()
            .iter()
            .any(|r| r.id.starts_with("aaaa-resolved")),
        "aaaa's resolved was sent before its firing was delivered"
    );

    receiver.set(Behaviour::Accept);
    wait_until(WAIT, "aaaa's resolved delivered", || {
        answered("aaaa-resolved", 200) == 1
    })
    .await;
    let order: Vec<String> = receiver
        .requests()
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.id.split('-').take(2).collect::<Vec<_>>().join("-"))
        .collect();
    assert_eq!(order, ["bbbb-firing", "aaaa-firing", "aaaa-resolved"]);
    tocsin.kill();
}
