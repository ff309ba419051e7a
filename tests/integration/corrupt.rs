//! A damaged queue database on start: a clear error naming the directory and the way to
//! recover, within a bound — never a server that hangs or runs on garbage. sled opens a
//! truncated file without complaint and then loops forever on the first read reaching the
//! missing part; the start-up scan turns that into the error.

use std::collections::BTreeSet;
use std::time::Duration;

use tocsin_tests::process::{log_tail, Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::{post_json_message, Env, OPEN_JSON_SOURCE};

const CHECK: [&str; 2] = ["--store-check-timeout", "3s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_database_is_a_clear_error_with_a_documented_recovery() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503)); // everything stays queued
    let env = Env::new();
    let retry = r#"{ max_attempts = 100000, initial = "1s", max = "5s" }"#;
    env.write_pipeline(
        "alerts",
        &format!("{OPEN_JSON_SOURCE}{}", receiver.sink_toml("hook", retry)),
    );
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &CHECK);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let mut acked = BTreeSet::new();
    for n in 0..300 {
        let id = format!("m{n:03}-{}", "x".repeat(400));
        assert_eq!(post_json_message(&base, "alerts", &id).await, 202);
        acked.insert(id);
    }
    let (status, _) = tocsin.terminate(Duration::from_secs(15));
    assert!(status.success());

    // Something outside tocsin cuts the file in half.
    let db = env.path("data/queue/db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let mut tocsin = Tocsin::spawn(&env, &port, &CHECK);
    let exit = tocsin.wait_exit(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| !s.success()),
        "tocsin must refuse the damaged store, not hang or serve: {exit:?}\n{}",
        log_tail(&env)
    );
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    let queue_dir = env.path("data/queue").display().to_string();
    for needle in [
        "queue database in",
        queue_dir.as_str(),
        "is damaged",
        "move that directory aside",
        "A damaged queue database",
    ] {
        assert!(
            log.contains(needle),
            "`{needle}` not in:\n{}",
            log_tail(&env)
        );
    }
    // The operator commands refuse it the same way.
    let out = std::process::Command::new(tocsin_tests::tocsin_bin())
        .args(["queue", "ls", "--data"])
        .arg(env.path("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is damaged"));

    // The documented recovery: move the directory aside and start again.
    std::fs::rename(env.path("data/queue"), env.path("data/queue.damaged")).unwrap();
    let mut tocsin = Tocsin::spawn(&env, &port, &CHECK);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    assert_eq!(post_json_message(&base, "alerts", "after").await, 202);
    let (status, _) = tocsin.terminate(Duration::from_secs(15));
    assert!(status.success());
    assert!(
        env.path("data/queue.damaged/db").exists(),
        "kept for inspection"
    );
}
