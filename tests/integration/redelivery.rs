//! Sinks that are down: attempts follow the configured backoff schedule (durations scaled
//! down to milliseconds), `Retry-After` is honoured, and after `max_attempts` a message goes
//! to its sink's dead letters with the last error, where `tocsin dlq` lists, shows, replays
//! and purges them per pipeline and sink; a replayed message is delivered once. A pipeline
//! whose file changes keeps its queued messages for the new version.

use std::time::Duration;

use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{free_port, post_json_message, wait_until, Env, OPEN_JSON_SOURCE};

fn pipeline(sinks: &[(&str, &Receiver)], retry: &str) -> String {
    let mut text = OPEN_JSON_SOURCE.to_string();
    for (name, receiver) in sinks {
        text.push_str(&receiver.sink_toml(name, retry));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_follows_the_backoff_schedule_then_dead_letters_with_the_last_error() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503));
    let env = Env::new();
    // A policy of minutes scaled to milliseconds: 200 ms doubling up to 800 ms, 6 attempts.
    let retry = r#"{ max_attempts = 6, initial = "200ms", max = "800ms", multiplier = 2.0 }"#;
    env.write_pipeline("alerts", &pipeline(&[("chat", &receiver)], retry));
    let server = env.start().await;
    assert_eq!(
        post_json_message(&server.base_url, "alerts", "m1").await,
        202
    );
    wait_until(Duration::from_secs(20), "a dead letter", || {
        server
            .queue
            .dead_letters("alerts", "chat")
            .is_ok_and(|d| d.len() == 1)
    })
    .await;
    let at: Vec<Duration> = receiver.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 6, "exactly max_attempts attempts");
    // Attempt n+1 comes after the base delay of n (200, 400, 800, 800, 800 ms) with equal
    // jitter: between half of it and all of it, plus the time a call takes.
    for (n, pair) in at.windows(2).enumerate() {
        let base = Duration::from_millis([200, 400, 800, 800, 800][n]);
        let gap = pair[1] - pair[0];
        assert!(
            gap >= base / 2 && gap <= base + Duration::from_millis(700),
            "gap {n}: {gap:?} for a base of {base:?} (all: {at:?})"
        );
    }
    let (_, letter) = server
        .queue
        .dead_letters("alerts", "chat")
        .unwrap()
        .remove(0);
    assert_eq!(letter.attempts, 6);
    let error = letter.last_error.unwrap();
    assert!(
        error.starts_with("gave up after 6 attempts: HTTP 503: receiver told to fail"),
        "{error}"
    );
    assert_eq!(server.counter("alerts", |c| &c.retries), 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_over_the_backoff() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::RateLimit { retry_after_s: 2 });
    let env = Env::new();
    let retry = r#"{ max_attempts = 10, initial = "50ms", max = "100ms" }"#;
    env.write_pipeline("alerts", &pipeline(&[("chat", &receiver)], retry));
    let server = env.start().await;
    assert_eq!(
        post_json_message(&server.base_url, "alerts", "m1").await,
        202
    );
    wait_until(
        Duration::from_secs(10),
        "a first, rate-limited attempt",
        || !receiver.requests().is_empty(),
    )
    .await;
    receiver.set(Behaviour::Accept);
    wait_until(Duration::from_secs(10), "delivered", || {
        receiver.visible_ids().contains("m1")
    })
    .await;
    let at: Vec<Duration> = receiver.requests().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 2, "one retry: {at:?}");
    let gap = at[1] - at[0];
    assert!(
        gap >= Duration::from_secs(2) && gap < Duration::from_millis(3500),
        "the retry waited for Retry-After (2 s), not the 50 ms backoff: {gap:?}"
    );
    server.stop().await;
}

/// A dead letter's attempt count includes the attempt that sent it there: a message refused
/// at its first try shows 1, one that failed three times and was then refused shows 4 — as
/// many as the receiver saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_counts_every_attempt_the_refused_one_included() {
    let (refusing, flaky) = (Receiver::start().await, Receiver::start().await);
    refusing.set(Behaviour::Fail(400));
    flaky.set(Behaviour::Fail(503));
    let env = Env::new();
    let retry = r#"{ max_attempts = 20, initial = "100ms", max = "100ms" }"#;
    env.write_pipeline(
        "alerts",
        &pipeline(&[("refusing", &refusing), ("flaky", &flaky)], retry),
    );
    let server = env.start().await;
    assert_eq!(
        post_json_message(&server.base_url, "alerts", "m1").await,
        202
    );
    wait_until(Duration::from_secs(20), "three failed tries", || {
        flaky.requests().len() >= 3
    })
    .await;
    flaky.set(Behaviour::Fail(400));
    wait_until(Duration::from_secs(20), "two dead letters", || {
        let n = |s: &str| {
            server
                .queue
                .dead_letters("alerts", s)
                .map_or(0, |d| d.len())
        };
        n("refusing") == 1 && n("flaky") == 1
    })
    .await;
    server.stop().await;
    let listing = env.cli(&["dlq", "ls"]);
    let attempts = |sink: &str| -> usize {
        let row = listing
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(sink))
            .unwrap_or_else(|| panic!("no {sink} row in\n{listing}"));
        row.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    assert_eq!(refusing.requests().len(), 1);
    assert_eq!(attempts("refusing"), 1, "{listing}");
    let tries = flaky.requests().len();
    assert!(tries >= 4, "{tries}");
    assert_eq!(attempts("flaky"), tries, "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_replayed_and_purged_per_pipeline_and_sink() {
    let (chat, pager, other) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    for r in [&chat, &pager, &other] {
        r.set(Behaviour::Fail(500));
    }
    let env = Env::new();
    let retry = r#"{ max_attempts = 2, initial = "50ms", max = "100ms" }"#;
    env.write_pipeline(
        "alerts",
        &pipeline(&[("chat", &chat), ("pager", &pager)], retry),
    );
    env.write_pipeline("other", &pipeline(&[("chat", &other)], retry));
    let server = env.start().await;
    for id in ["m1", "m2"] {
        assert_eq!(post_json_message(&server.base_url, "alerts", id).await, 202);
    }
    assert_eq!(
        post_json_message(&server.base_url, "other", "o1").await,
        202
    );
    wait_until(Duration::from_secs(20), "five dead letters", || {
        let n = |p: &str, s: &str| server.queue.dead_letters(p, s).map_or(0, |d| d.len());
        n("alerts", "chat") == 2 && n("alerts", "pager") == 2 && n("other", "chat") == 1
    })
    .await;
    server.stop().await;

    // Listing: all, or one pipeline's.
    let all = env.cli(&["dlq", "ls"]);
    assert_eq!(all.lines().count(), 6, "a header and five letters:\n{all}");
    assert!(all.contains("HTTP 500"), "{all}");
    let alerts = env.cli(&["dlq", "ls", "alerts"]);
    assert_eq!(alerts.lines().count(), 5, "{alerts}");
    assert!(!alerts.contains("other"), "{alerts}");
    let seq = |listing: &str, pipeline: &str, sink: &str| -> String {
        let row = listing
            .lines()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.first() == Some(&pipeline) && cols.get(1) == Some(&sink)
            })
            .unwrap_or_else(|| panic!("no {pipeline}/{sink} row in\n{listing}"));
        row.split_whitespace().nth(2).unwrap().to_string()
    };
    let shown = env.cli(&[
        "dlq",
        "show",
        "alerts",
        "pager",
        &seq(&alerts, "alerts", "pager"),
    ]);
    assert!(shown.contains("\"attempts\": 2"), "{shown}");
    assert!(shown.contains("message m"), "{shown}");

    // Replay one sink of one pipeline; purge another pipeline's.
    assert!(env
        .cli(&["dlq", "replay", "alerts", "chat", "--all"])
        .contains("replayed 2"));
    assert!(env
        .cli(&["dlq", "purge", "other", "chat", "--all"])
        .contains("purged 1"));
    let left = env.cli(&["dlq", "ls"]);
    assert_eq!(left.lines().count(), 3, "only alerts/pager's two:\n{left}");
    assert!(left.lines().skip(1).all(|l| l.contains("pager")), "{left}");

    // The receivers are back: the replayed messages arrive once each; nothing else moves.
    for r in [&chat, &pager, &other] {
        r.set(Behaviour::Accept);
    }
    let server = env.start().await;
    wait_until(Duration::from_secs(20), "m1 and m2 redelivered", || {
        chat.visible_ids().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        chat.requests().iter().filter(|r| r.answered == 200).count(),
        2
    );
    assert!(chat.visible_duplicates().is_empty());
    assert!(pager.visible().is_empty(), "pager's letters stay parked");
    assert!(other.visible().is_empty(), "other's letter was purged");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pipeline_keeps_its_queued_messages_for_the_new_version() {
    let receiver = Receiver::start().await;
    let env = Env::new();
    let patient = r#"{ max_attempts = 1000, initial = "100ms", max = "300ms" }"#;
    let nowhere = format!("127.0.0.1:{}", free_port());
    // Strict order for the whole sink, so "in order" below means queue order.
    let fixed = format!(
        "{}concurrency = 1\n",
        pipeline(&[("chat", &receiver)], patient)
    );
    let broken = fixed.replace(&receiver.host(), &nowhere);
    env.write_pipeline("moving", &broken);
    let server = env.start().await;
    for id in ["a", "b", "c"] {
        assert_eq!(post_json_message(&server.base_url, "moving", id).await, 202);
    }
    wait_until(Duration::from_secs(20), "three queued, failing", || {
        server.queue.depths("moving").unwrap().sinks == vec![("chat".to_string(), 3)]
            && server.counter("moving", |c| &c.retries) >= 1
    })
    .await;
    // The operator fixes the URL: the new version delivers what the old one queued, in order.
    env.write_pipeline("moving", &fixed);
    wait_until(Duration::from_secs(30), "all three delivered", || {
        receiver.visible().len() == 3
    })
    .await;
    let ids: Vec<String> = receiver.visible().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    server.stop().await;
}

/// `concurrency = N` puts up to N deliveries in flight at once (never more), each message is
/// delivered once under its own key; the default is 8; the plugin memory budget bounds the
/// instances a sink adds (here room for 3 sink instances beside the source: 3 in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_concurrency_bounds_the_deliveries_in_flight() {
    const MIB: u64 = 1 << 20;
    for (concurrency, budget, expected) in [
        (None, None, 8usize),
        (Some(1), None, 1),
        (Some(4), None, 4),
        (None, Some(4 * 64 * MIB), 3),
    ] {
        let receiver = Receiver::start().await;
        receiver.set(Behaviour::Hold(Duration::from_millis(1500)));
        let env = Env::new();
        let mut text = pipeline(&[("slow", &receiver)], "{ max_attempts = 3 }");
        if let Some(n) = concurrency {
            text.push_str(&format!("concurrency = {n}\n"));
        }
        env.write_pipeline("alerts", &text);
        let server = env.start_with(|s| s.max_plugin_memory = budget).await;
        let batch: Vec<serde_json::Value> = (0..12)
            .map(|i| serde_json::json!({"id": format!("m{i}"), "body": "held"}))
            .collect();
        let status = reqwest::Client::new()
            .post(format!("{}/ingest/alerts", server.base_url))
            .json(&batch)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202);
        let in_flight = || {
            receiver
                .requests()
                .iter()
                .filter(|r| r.answered == 0)
                .count()
        };
        wait_until(Duration::from_secs(10), "the first round in flight", || {
            in_flight() == expected
        })
        .await;
        // Held for 1.5 s: nothing more may start meanwhile.
        let mut most = 0;
        for _ in 0..10 {
            most = most.max(in_flight());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            most, expected,
            "concurrency {concurrency:?}, budget {budget:?}"
        );
        receiver.set(Behaviour::Accept);
        wait_until(Duration::from_secs(30), "all delivered", || {
            receiver.visible_ids().len() == 12
        })
        .await;
        assert!(receiver.visible_duplicates().is_empty());
        let keys: std::collections::BTreeSet<String> =
            receiver.requests().into_iter().map(|r| r.key).collect();
        assert_eq!(keys.len(), 12, "one idempotency key per message: {keys:?}");
        server.stop().await;
    }
}
