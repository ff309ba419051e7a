//! Adding, changing and deleting pipeline files while the engine runs: each change applies to
//! that pipeline only, an invalid edit keeps the previous version, and queues are kept.

use std::time::Duration;

use tocsin::status::PipelineState;
use tocsin_tests::{every_second_backup_source, file_sink, wait_until, Env};

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
        server.state("second") == Some(PipelineState::Stopped)
    })
    .await;
    let frozen = env.read_lines("out/second-v2.jsonl").len();
    let first = env.read_lines("out/first.jsonl").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.read_lines("out/second-v2.jsonl").len(), frozen);
    assert!(env.read_lines("out/first.jsonl").len() > first);
    server.stop().await;
}
