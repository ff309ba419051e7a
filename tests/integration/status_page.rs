//! The status page in a real browser (headless Chromium) against the real binary with real
//! data: an admin signs in with a token, sees the dead letter, the problem it makes, the recent
//! message and graphs with points for each host; the replay button replays it and it is
//! delivered once; its trace shows it. A read token sees everything but no buttons. Screenshots
//! (desktop and phone width) are saved under `target/screenshots/` for review.

use std::time::Duration;

use serde_json::json;

use tocsin_tests::browser::Browser;
use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{
    agents_pipeline, post_accepted, wait_until, write_api_tokens, Env, ADMIN_TOKEN,
    OPEN_JSON_SOURCE, READ_TOKEN,
};

const WAIT: Duration = Duration::from_secs(30);

async fn dead_letter_ids(base: &str) -> Vec<String> {
    let letters = tocsin_tests::api_get(base, "/dead-letters", READ_TOKEN).await;
    letters
        .as_array()
        .expect("an array")
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

/// Signs in with `token` on a fresh load of the page.
async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser.eval("sessionStorage.clear(); return true").await;
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser
        .wait_for(
            WAIT,
            "the sign-in form",
            "return !document.getElementById('signin').hidden",
        )
        .await;
    let input = browser
        .client
        .find(fantoccini::Locator::Id("token"))
        .await
        .unwrap();
    input.send_keys(token).await.unwrap();
    browser.click("#signin-form button").await;
    browser
        .wait_for(
            WAIT,
            "the page after signing in",
            "return !document.getElementById('main').hidden && \
             document.querySelectorAll('#pipelines tbody tr').length > 0",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_replays_a_dead_letter_from_the_page_and_sees_graphs_per_host() {
    let env = Env::new();
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(400)); // refused for good: dead-lettered at once
    env.write_pipeline(
        "alerts",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            receiver.sink_toml("chat", "{ max_attempts = 1 }")
        ),
    );
    env.write_pipeline("agents", &agents_pipeline(&env));
    let tokens = write_api_tokens(&env);
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", tokens.to_str().unwrap()]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();

    // Real data: samples of two hosts over the last hour, and an alert the chat refuses.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for minute in 0..12u64 {
        for (host, base_cpu) in [("web1", 20.0), ("db1", 55.0)] {
            post_accepted(
                &base,
                "agents",
                json!({
                    "id": format!("{host}-{minute}"),
                    "body": "a sample",
                    "timestamp_ms": now_ms - 5 * 60_000 * (11 - minute),
                    "labels": {"host": host},
                    "metrics": {"cpu-percent": base_cpu + (minute % 4) as f64 * 7.5, "load": 0.4},
                }),
            )
            .await;
        }
    }
    post_accepted(
        &base,
        "alerts",
        json!({"id": "disk-full-web1", "summary": "Disk full on web1", "body": "/var at 99%"}),
    )
    .await;
    for _ in 0..300 {
        if dead_letter_ids(&base).await == ["disk-full-web1"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead_letter_ids(&base).await, ["disk-full-web1"]);
    receiver.set(Behaviour::Accept);

    let browser = Browser::start(1280, 1700).await;
    sign_in(&browser, &base, ADMIN_TOKEN).await;
    // What an admin sees: the dead letter with its buttons, the problem it makes, the recent
    // message in its state, and a graph with points for each host.
    let replay = "#dead-letters tr[data-id='disk-full-web1'] button.replay";
    browser
        .wait_for(
            WAIT,
            "the dead letter with a replay button",
            &format!("return document.querySelector(\"{replay}\") !== null"),
        )
        .await;
    let problems = browser
        .eval("return document.getElementById('problems').innerText")
        .await;
    assert!(
        problems
            .as_str()
            .unwrap()
            .contains("alerts/chat: 1 dead letter"),
        "{problems}"
    );
    let recent = browser
        .eval(
            "const r = document.querySelector(\"#recent tr[data-id='disk-full-web1']\"); \
             return r ? r.innerText : null",
        )
        .await;
    let recent = recent.as_str().expect("the alert among recent messages");
    assert!(
        recent.contains("Disk full on web1") && recent.contains("dead lettered"),
        "{recent}"
    );
    browser
        .wait_for(
            WAIT,
            "a cpu-percent graph with points for web1 and for db1",
            "return ['web1', 'db1'].every(h => { \
               const c = document.querySelector(`.host[data-host='${h}'] .chart[data-metric='cpu-percent']`); \
               const line = c && c.querySelector('polyline'); \
               return c !== null && Number(c.dataset.points) >= 2 && line !== null && \
                 line.getAttribute('points').split(' ').length === Number(c.dataset.points); })",
        )
        .await;
    let shot = browser.screenshot("status-page-desktop").await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "an empty screenshot"
    );

    // The replay button replays: the row goes, the message is delivered once.
    browser.click(replay).await;
    browser
        .wait_for(
            WAIT,
            "the dead letter gone from the page",
            "return document.querySelector(\"#dead-letters tr[data-id='disk-full-web1']\") === null",
        )
        .await;
    wait_until(WAIT, "the replayed alert delivered", || {
        receiver.visible_ids().contains("disk-full-web1")
    })
    .await;
    assert!(dead_letter_ids(&base).await.is_empty());
    // Its trace, from the recent list: refused, dead-lettered, replayed, delivered.
    browser
        .wait_for(
            WAIT,
            "the recent message shown as delivered",
            "const r = document.querySelector(\"#recent tr[data-id='disk-full-web1']\"); \
             return r !== null && r.innerText.includes('delivered')",
        )
        .await;
    browser.click("#recent tr[data-id='disk-full-web1']").await;
    browser
        .wait_for(
            WAIT,
            "the trace of the alert",
            "const t = document.getElementById('trace'); \
             return !t.hidden && ['accepted', 'dead lettered', 'replayed', 'delivered'] \
               .every(s => t.innerText.includes(s))",
        )
        .await;
    let delivered = receiver
        .visible()
        .into_iter()
        .filter(|r| r.id == "disk-full-web1")
        .count();
    assert_eq!(delivered, 1, "delivered once");

    // On a phone: one column, nothing wider than the screen.
    browser.client.set_window_size(390, 1400).await.unwrap();
    browser
        .wait_for(
            WAIT,
            "the page fitting a phone's width",
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
        )
        .await;
    browser.screenshot("status-page-phone").await;

    // A read token sees the dead letters but no buttons.
    receiver.set(Behaviour::Fail(400));
    post_accepted(
        &base,
        "alerts",
        json!({"id": "cpu-hot-db1", "summary": "CPU hot on db1", "body": "97% for 10 min"}),
    )
    .await;
    browser.client.set_window_size(1280, 1700).await.unwrap();
    sign_in(&browser, &base, READ_TOKEN).await;
    browser
        .wait_for(
            WAIT,
            "the new dead letter, for a reader",
            "return document.querySelector(\"#dead-letters tr[data-id='cpu-hot-db1']\") !== null",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#dead-letters button').length")
            .await,
        json!(0)
    );
    let who = browser
        .eval("return document.getElementById('who').innerText")
        .await;
    assert_eq!(who, json!("signed in as board (read)"));
    browser.close().await;
    tocsin.kill();
}

/// The alert side of the page: an open alert an admin acknowledges from its row, a silence
/// the admin expires, and a reporter that stopped (`expect`) listed as a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_acknowledges_an_alert_and_expires_a_silence_from_the_page() {
    let env = Env::new();
    env.mkdir("out");
    env.write_pipeline(
        "disks",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            tocsin_tests::file_sink(&env, "room", "room.jsonl")
        ),
    );
    env.write_pipeline(
        "fleet",
        &format!(
            "expect = {{ every = \"1s\", grace = \"0s\", key_labels = [\"host\"] }}\n{OPEN_JSON_SOURCE}{}",
            tocsin_tests::file_sink(&env, "log", "fleet.jsonl")
        ),
    );
    let tokens = write_api_tokens(&env);
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", tokens.to_str().unwrap()]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    post_accepted(
        &base,
        "disks",
        json!({"id": "disk-1", "key": "DiskFull/db1", "severity": "error", "summary": "Disk full on db1",
               "body": "/var at 99%", "labels": {"alertname": "DiskFull", "host": "db1", "status": "firing"}}),
    )
    .await;
    post_accepted(
        &base,
        "fleet",
        json!({"id": "db7-1", "body": "alive", "labels": {"host": "db7"}}),
    )
    .await;
    let silence = reqwest::Client::new()
        .post(format!("{base}/api/v1/silences"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"matchers": ["host=db2"], "duration": "2h", "comment": "kernel upgrade"}))
        .send()
        .await
        .unwrap();
    assert_eq!(silence.status(), 201);
    wait_until(WAIT, "the alert in the register", || {
        env.read_json_lines("out/room.jsonl").len() == 1
    })
    .await;

    let browser = Browser::start(1280, 1400).await;
    sign_in(&browser, &base, ADMIN_TOKEN).await;
    let row = "#alerts tr[data-identity='k:DiskFull/db1']";
    browser
        .wait_for(
            WAIT,
            "the open alert with its acknowledge button",
            &format!("return document.querySelector(\"{row} button.ack\") !== null"),
        )
        .await;
    let silences = browser
        .eval("return document.getElementById('silences').innerText")
        .await;
    assert!(
        silences.as_str().unwrap().contains("host=db2")
            && silences.as_str().unwrap().contains("kernel upgrade"),
        "{silences}"
    );
    // The reporter that stopped is a problem (every 1 s, no grace: absent a second after).
    browser
        .wait_for(
            WAIT,
            "the absent reporter among the problems",
            "return document.getElementById('problems').innerText.includes('fleet: host=db7 has not reported for')",
        )
        .await;
    browser.screenshot("status-page-alerts").await;

    let input = browser
        .client
        .find(fantoccini::Locator::Css(&format!(
            "{row} input.ack-comment"
        )))
        .await
        .unwrap();
    input.send_keys("replacing the disk").await.unwrap();
    browser.click(&format!("{row} button.ack")).await;
    browser
        .wait_for(
            WAIT,
            "the alert shown as acknowledged",
            &format!(
                "const r = document.querySelector(\"{row} td.state\"); \
                 return r !== null && r.innerText.includes('acknowledged by alice: replacing the disk')"
            ),
        )
        .await;
    let alerts = tocsin_tests::api_get(&base, "/alerts?pipeline=disks", READ_TOKEN).await;
    assert_eq!(
        alerts[0]["ack"]["comment"], "replacing the disk",
        "{alerts}"
    );

    browser.click("#silences button.expire").await;
    browser
        .wait_for(
            WAIT,
            "no silence left in force",
            "return !document.getElementById('silences-empty').hidden",
        )
        .await;
    let listed = tocsin_tests::api_get(&base, "/silences", READ_TOKEN).await;
    assert_eq!(listed[0]["state"], "expired", "{listed}");

    // A read token sees the alert and the problem, and no buttons.
    sign_in(&browser, &base, READ_TOKEN).await;
    browser
        .wait_for(
            WAIT,
            "the alert for a reader",
            &format!("return document.querySelector(\"{row}\") !== null"),
        )
        .await;
    let buttons = browser
        .eval("return document.querySelectorAll('#alerts button, #silences button').length")
        .await;
    assert_eq!(buttons, 0);
    browser.close().await;
    tocsin.kill();
}
