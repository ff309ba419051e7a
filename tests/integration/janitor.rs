//! Janitor clients, unchanged: `POST /message` (form-encoded as their curl sends it, or JSON)
//! on the main listener or the Janitor listener → a Mastodon status per message, with the
//! summary as spoiler text, the emoji where Janitor put it, and the idempotency key.

use std::time::Duration;

use tocsin_tests::mastodon::FakeMastodon;
use tocsin_tests::{wait_until, Env};

fn janitor_pipeline(env: &Env, mastodon: &FakeMastodon) -> String {
    std::fs::write(env.path("mastodon-token"), "masto-tok").unwrap();
    format!(
        r#"
[source]
plugin = "janitor"
auth = {{ none = true }}

[[sink]]
name = "fediverse"
plugin = "mastodon"
config = {{ instance = "{base}", visibility = "unlisted" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ access_token = "file:{token}" }} }}
retry = {{ initial = "200ms", max = "2s" }}
"#,
        base = mastodon.base,
        port = mastodon.port,
        token = env.path("mastodon-token").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_messages_of_every_type_become_mastodon_statuses() {
    let mastodon = FakeMastodon::start("masto-tok").await;
    let env = Env::new();
    env.write_pipeline("janitor", &janitor_pipeline(&env, &mastodon));
    let server = env
        .start_with(|s| {
            s.janitor_pipeline = Some("janitor".into());
            s.janitor_listen = Some(([127, 0, 0, 1], 0).into());
        })
        .await;
    let janitor_url = server.janitor_url.clone().unwrap();
    // The first delivery meets a busy instance: 429 until a second later.
    mastodon.rate_limit_next(1);

    let client = reqwest::Client::new();
    let cases = [
        ("none", None, "Backup done"),
        ("info", Some("db1"), "Backup done"),
        ("warning", Some("db1"), "Disk 91 %"),
        ("error", None, "Disk 99 %"),
        ("alert", Some("db1"), "Disk full"),
    ];
    for (i, (kind, summary, text)) in cases.iter().enumerate() {
        // Alternate listeners: Janitor clients may use either.
        let url = if i % 2 == 0 {
            &janitor_url
        } else {
            &server.base_url
        };
        let mut form = format!(
            "hostname=db1&message={}&message_type={kind}",
            text.replace(' ', "+")
        );
        if let Some(s) = summary {
            form.push_str(&format!("&summary={s}"));
        }
        // Exactly what `curl -X POST -d "…"` sends.
        let resp = client
            .post(format!("{url}/message"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{kind}: {}", resp.text().await.unwrap());
    }
    let resp = client
        .post(format!("{}/message", server.base_url))
        .json(&serde_json::json!({"hostname": "web1", "message": "Load 12", "summary": "web1", "message_type": "warning"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bad = client
        .post(format!("{janitor_url}/message"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("message=no+host")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("missing `hostname`"));
    // The Janitor listener serves nothing else.
    let other = client
        .post(format!("{janitor_url}/ingest/janitor"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);

    wait_until(Duration::from_secs(30), "six statuses", || {
        mastodon.posts().len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = mastodon.posts();
    assert_eq!(posts.len(), 6, "{posts:#?}");
    // Different messages are delivered side by side (the sink's default concurrency), so
    // they are compared in a fixed order, not in the order they arrived.
    let mut posts = posts;
    posts.sort_by_key(|p| {
        (
            p.body["status"].to_string(),
            p.body["spoiler_text"].to_string(),
        )
    });
    let expected = [
        ("Backup done", Some("ℹ️ db1")),
        ("Backup done", None),
        ("Disk 91 %", Some("⚠️ db1")),
        ("Disk full", Some("🚨 db1")),
        ("Load 12", Some("⚠️ web1")),
        ("🔥 Disk 99 %", None),
    ];
    for (post, (status, spoiler)) in posts.iter().zip(expected) {
        assert_eq!(post.body["status"], status, "{post:?}");
        assert_eq!(post.body["spoiler_text"].as_str(), spoiler, "{post:?}");
        assert_eq!(post.body["visibility"], "unlisted");
        let key = post.idempotency_key.as_deref().unwrap_or_default();
        assert!(key.starts_with("janitor/fediverse/janitor-"), "{key}");
    }
    // The rate-limited attempt was retried under the same key, and posted once.
    let limited = mastodon.rate_limited_keys();
    assert_eq!(limited.len(), 1);
    let posted_under_it = posts
        .iter()
        .filter(|p| p.idempotency_key.as_deref() == Some(limited[0].as_str()))
        .count();
    assert_eq!(posted_under_it, 1, "{limited:?} {posts:#?}");
    server.stop().await;
}
