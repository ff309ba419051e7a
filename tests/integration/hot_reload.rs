//! Adding, changing and deleting pipeline files while the engine runs: each change applies to
//! that pipeline only, an invalid edit keeps the previous version, and queues are kept.

use std::time::Duration;

use tocsin::status::PipelineState;
use tocsin_tests::load::Load;
use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{
    every_second_backup_source, file_sink, post_json_message, wait_until, Env, OPEN_JSON_SOURCE,
};

fn pipeline(env: &Env, output: &str) -> String {
    format!(
        "{}
{}",
        every_second_backup_source(env, ""),
        file_sink(env, "out", output)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_files_are_applied_without_restart() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    env.write_pipeline("first", &pipeline(&env, "first.jsonl"));
    // A broken file at start is reported and does not stop the others.
    env.write_pipeline(
        "broken",
        "[source]\nplugin = \"backup-check\"\nschedule = \"0 61 * * * *\"\n",
    );
    let server = env.start().await;
    match server.state("broken") {
        Some(PipelineState::Failed(reason)) => {
            assert!(
                reason.contains("broken.toml:3:12: source.schedule"),
                "{reason}"
            )
        }
        other => panic!("broken pipeline state: {other:?}"),
    }
    wait_until(Duration::from_secs(20), "first delivers", || {
        !env.read_lines("out/first.jsonl").is_empty()
    })
    .await;

    // Added.
    env.write_pipeline("second", &pipeline(&env, "second.jsonl"));
    wait_until(Duration::from_secs(20), "second starts", || {
        !env.read_lines("out/second.jsonl").is_empty()
    })
    .await;

    // Changed: output moves to another file.
    env.write_pipeline("second", &pipeline(&env, "second-v2.jsonl"));
    wait_until(Duration::from_secs(20), "second reloaded", || {
        !env.read_lines("out/second-v2.jsonl").is_empty()
    })
    .await;

    // An invalid edit: reported, the previous version keeps running.
    env.write_pipeline(
        "first",
        "[source]\nplugin = \"backup-check\"\nschedule = \"never\"\n",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = env.read_lines("out/first.jsonl").len();
    wait_until(Duration::from_secs(20), "first still delivers", || {
        env.read_lines("out/first.jsonl").len() > before
    })
    .await;
    assert_eq!(server.state("first"), Some(PipelineState::Running));

    // Deleted: stops, and the other pipeline is untouched.
    std::fs::remove_file(env.path("pipelines/second.toml")).unwrap();
    wait_until(Duration::from_secs(20), "second stopped", || {
        server.state("second").is_none()
    })
    .await;
    let frozen = env.read_lines("out/second-v2.jsonl").len();
    let first = env.read_lines("out/first.jsonl").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.read_lines("out/second-v2.jsonl").len(), frozen);
    assert!(env.read_lines("out/first.jsonl").len() > first);
    server.stop().await;
}

/// Hot reload under ingest load: the pipeline is changed, broken, deleted and re-added while
/// clients post and its sink queue holds messages. The invalid edit keeps the previous version
/// serving; every acknowledged message is delivered once the sink is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_ingest_load_lose_nothing() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503)); // the queue holds messages through every reload
    let env = Env::new();
    let retry = r#"{ max_attempts = 100000, initial = "50ms", max = "200ms" }"#;
    let version = |n: u32| {
        format!(
            "{OPEN_JSON_SOURCE}[[filter]]\nplugin = \"template\"\n\
             config = {{ summary = \"v{n}\" }}\n\n{}",
            receiver.sink_toml("hook", retry)
        )
    };
    env.write_pipeline("live", &version(1));
    let server = env.start().await;
    let load = Load::start(
        &format!("{}/ingest/live", server.base_url),
        "",
        4,
        Duration::from_millis(5),
    );
    let grows = |what: &str| {
        let before = load.acked().len();
        let what = what.to_string();
        let load = &load;
        async move {
            wait_until(Duration::from_secs(20), &what, || {
                load.acked().len() >= before + 20
            })
            .await
        }
    };
    grows("ingest under version 1").await;

    env.write_pipeline("live", &version(2));
    tokio::time::sleep(Duration::from_millis(800)).await;
    grows("ingest under version 2").await;

    // An invalid edit: the previous version keeps serving.
    env.write_pipeline(
        "live",
        "[source]\nplugin = \"json\"\nschedule = \"nonsense\"\n",
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(server.state("live"), Some(PipelineState::Running));
    grows("ingest after an invalid edit").await;

    // Deleted: ingest answers 404 and nothing is acknowledged; the queues stay.
    std::fs::remove_file(env.path("pipelines/live.toml")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during_delete = load.acked().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        load.acked().len(),
        during_delete,
        "nothing acknowledged while deleted"
    );
    assert!(
        server.queue.depths("live").unwrap().sinks[0].1 > 0,
        "the queue is kept"
    );

    env.write_pipeline("live", &version(3));
    tokio::time::sleep(Duration::from_millis(800)).await;
    grows("ingest after re-adding").await;
    let outcome = load.stop().await;
    assert!(
        outcome.answers.get(&404).copied().unwrap_or(0) > 0,
        "{:?}",
        outcome.answers
    );

    receiver.set(Behaviour::Accept);
    wait_until(
        Duration::from_secs(120),
        "every acknowledged message delivered",
        || outcome.acked.is_subset(&receiver.visible_ids()),
    )
    .await;
    assert!(receiver.visible_duplicates().is_empty());
    let summaries: std::collections::BTreeSet<String> = receiver
        .visible()
        .iter()
        .filter_map(|r| r.body["summary"].as_str().map(str::to_string))
        .collect();
    assert!(
        summaries.contains("v1") && summaries.contains("v2") && summaries.contains("v3"),
        "each version filtered what it took in: {summaries:?}"
    );
    eprintln!(
        "hot reload under load: {} acknowledged, all delivered; answers {:?}",
        outcome.acked.len(),
        outcome.answers
    );
    server.stop().await;
}

/// A pipeline that cannot start because something on the machine is missing (here the file
/// holding its ingest token) is tried again with backoff, without its file changing: creating
/// the secret is enough, no restart and no touch of the pipeline file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_could_not_start_is_tried_again_without_a_file_change() {
    let env = Env::new();
    env.mkdir("out");
    let token = env.path("token-created-later");
    env.write_pipeline(
        "later",
        &format!(
            "[source]\nplugin = \"json\"\nauth = {{ bearer = \"file:{}\" }}\n\n{}",
            token.display(),
            file_sink(&env, "out", "later.jsonl")
        ),
    );
    let server = env.start().await;
    assert!(
        matches!(server.state("later"), Some(PipelineState::Failed(_))),
        "{:?}",
        server.state("later")
    );
    std::fs::write(&token, "later-token-value").unwrap();
    wait_until(
        Duration::from_secs(45),
        "the pipeline runs once its secret exists",
        || matches!(server.state("later"), Some(PipelineState::Running)),
    )
    .await;
    server.stop().await;
}

/// The value of the `/metrics` line that starts with `prefix` (name and labels), if any.
async fn metric(base: &str, prefix: &str) -> Option<f64> {
    let text = tocsin_tests::metrics_text(base).await;
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().parse().unwrap())
}

/// Waits until the metric `prefix` reads `value`.
async fn metric_reaches(base: &str, prefix: &str, value: f64) {
    for _ in 0..50 {
        if metric(base, prefix).await == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{prefix} never reached {value}: {:?}",
        metric(base, prefix).await
    );
}

/// Counters belong to the process, as Prometheus expects: a reload keeps a pipeline's
/// counters in step with its latency histogram; a deleted file's series go away. The real
/// binary, as an operator runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counters_and_a_deleted_pipeline_leaves_the_metrics() {
    let env = Env::new();
    env.mkdir("out");
    let version = |output: &str| format!("{OPEN_JSON_SOURCE}{}", file_sink(&env, "out", output));
    env.write_pipeline("p", &version("v1.jsonl"));
    let port = Port::free();
    let mut server = Tocsin::spawn(&env, &port, &[]);
    server.wait_serving(&env, Duration::from_secs(60)).await;
    let base = server.base_url.clone();
    let delivered = "tocsin_delivered_total{pipeline=\"p\"} ";
    let latencies = "tocsin_delivery_latency_seconds_count{pipeline=\"p\",sink=\"out\"} ";
    for i in 0..4 {
        assert_eq!(post_json_message(&base, "p", &format!("m{i}")).await, 202);
    }
    wait_until(Duration::from_secs(20), "four delivered", || {
        env.read_lines("out/v1.jsonl").len() == 4
    })
    .await;
    metric_reaches(&base, delivered, 4.0).await;
    assert_eq!(metric(&base, latencies).await, Some(4.0));

    // A new version: the counters go on from 4.
    env.write_pipeline("p", &version("v2.jsonl"));
    // Until the new version runs, a post may go to the old one (v1) or get a 503.
    for i in 0.. {
        let id = format!("after-{i}");
        post_json_message(&base, "p", &id).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !env.read_lines("out/v2.jsonl").is_empty() {
            break;
        }
        assert!(i < 100, "the new version never delivered");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = env.read_lines("out/v1.jsonl").len() + env.read_lines("out/v2.jsonl").len();
    metric_reaches(&base, delivered, all as f64).await;
    assert_eq!(metric(&base, latencies).await, Some(all as f64));

    // Deleted: its series go away.
    std::fs::remove_file(env.path("pipelines/p.toml")).unwrap();
    for _ in 0..100 {
        if metric(&base, delivered).await.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = tocsin_tests::metrics_text(&base).await;
    assert!(
        !text.contains("tocsin_delivered_total{pipeline=\"p\"}")
            && !text.contains("tocsin_delivery_latency_seconds_count{pipeline=\"p\""),
        "{text}"
    );
    let (status, _) = server.terminate(Duration::from_secs(20));
    assert!(status.success());
}
