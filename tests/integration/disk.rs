//! Faults of the machine, for real: the queues' filesystem is a small tmpfs that fills up or
//! turns read-only under the running binary. Ingest answers 503 (never a 202 it cannot keep),
//! nothing acknowledged is lost, and tocsin recovers when the space returns — in-process when
//! the free-space reserve caught it, by a restart when sled itself hit `ENOSPC`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use tocsin_tests::process::{log_tail, Port, Tocsin};
use tocsin_tests::receiver::{Behaviour, Receiver};
use tocsin_tests::tmpfs::Tmpfs;
use tocsin_tests::{wait_until, Env, OPEN_JSON_SOURCE};

fn setup(receiver: &Receiver) -> Env {
    let env = Env::new();
    env.write_pipeline(
        "alerts",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            receiver.sink_toml(
                "hook",
                r#"{ max_attempts = 1000, initial = "100ms", max = "1s" }"#
            )
        ),
    );
    env
}

/// Posts one 4 KiB message; returns the status and the answer's text.
async fn post(port: &Port, id: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/ingest/alerts", port.0))
        .json(&json!({ "id": id, "body": "x".repeat(4096) }))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match resp {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Posts until the first answer other than 202 (at most `limit` posts); returns the ids
/// acknowledged and that answer.
async fn fill(
    port: &Port,
    prefix: &str,
    limit: usize,
    acked: &mut BTreeSet<String>,
) -> (u16, String) {
    for n in 0..limit {
        let id = format!("{prefix}{n}");
        let (status, text) = post(port, &id).await;
        if status != 202 {
            return (status, text);
        }
        acked.insert(id);
    }
    panic!("{limit} posts all accepted: the disk never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_ingest_resumes_when_space_returns() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503)); // the sink is down: the queue only grows
    let env = setup(&receiver);
    let Some(disk) = Tmpfs::mount(&env.path("data/queue"), "6m") else {
        return;
    };
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--min-free-space", "2MiB"]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;

    let mut acked = BTreeSet::new();
    let (status, reason) = fill(&port, "a", 5000, &mut acked).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("under the reserve"), "{reason}");
    assert!(!acked.is_empty());

    // Space returns: ingest resumes in the same process.
    disk.resize("64m");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, reason) = post(&port, "after").await;
    assert_eq!(status, 202, "{reason}");
    acked.insert("after".into());
    assert!(tocsin.is_running());

    receiver.set(Behaviour::Accept);
    wait_until(
        Duration::from_secs(60),
        "every acknowledged message delivered",
        || acked.is_subset(&receiver.visible_ids()),
    )
    .await;
    let (status, _) = tocsin.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", log_tail(&env));
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(
        !log.contains("queue store failed"),
        "the reserve kept sled from ENOSPC:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_inside_the_store_stops_tocsin_and_a_restart_with_space_loses_nothing() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503));
    let env = setup(&receiver);
    let Some(disk) = Tmpfs::mount(&env.path("data/queue"), "3m") else {
        return;
    };
    let port = Port::free();
    // No reserve: sled itself runs into the full disk.
    let mut tocsin = Tocsin::spawn(&env, &port, &["--min-free-space", "0"]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let mut acked = BTreeSet::new();
    let (status, reason) = fill(&port, "b", 5000, &mut acked).await;
    assert!(status == 503 || status == 0, "{status}: {reason}");
    let exit = tocsin.wait_exit(Duration::from_secs(10));
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(75),
        "tocsin stops with EX_TEMPFAIL once sled refuses writes"
    );
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(log.contains("queue store failed"), "{log}");

    disk.resize("64m");
    receiver.set(Behaviour::Accept);
    let mut tocsin = Tocsin::spawn(&env, &port, &["--min-free-space", "0"]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(60),
        "every acknowledged message delivered",
        || acked.is_subset(&receiver.visible_ids()),
    )
    .await;
    assert_eq!(post(&port, "after").await.0, 202);
    let (status, _) = tocsin.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", log_tail(&env));
}

/// A read-only filesystem cannot be produced under the running binary here: the kernel
/// refuses to remount read-only while sled holds files open for writing (EBUSY). So the
/// read-only case is tested at start; at run time a write error takes the `ENOSPC` path above,
/// and the storage guard answers 503 as soon as the filesystem reports itself read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_at_start_is_a_clear_error_and_loses_nothing() {
    let receiver = Receiver::start().await;
    receiver.set(Behaviour::Fail(503));
    let env = setup(&receiver);
    let Some(disk) = Tmpfs::mount(&env.path("data/queue"), "64m") else {
        return;
    };
    let port = Port::free();
    let args = ["--min-free-space", "1MiB"];
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let mut acked = BTreeSet::new();
    for n in 0..20 {
        let id = format!("c{n}");
        assert_eq!(post(&port, &id).await.0, 202);
        acked.insert(id);
    }
    let (status, _) = tocsin.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", log_tail(&env));

    disk.read_only(true);
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    let exit = tocsin.wait_exit(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| !s.success()),
        "tocsin refuses to run on a read-only store: {exit:?}"
    );
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(
        log.contains("Read-only file system"),
        "the error names the cause:\n{log}"
    );

    disk.read_only(false);
    receiver.set(Behaviour::Accept);
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(30),
        "every acknowledged message delivered",
        || acked.is_subset(&receiver.visible_ids()),
    )
    .await;
    let (status, _) = tocsin.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status}:\n{}", log_tail(&env));
}

/// The storage guard's read-only check on a filesystem that really is read-only (mounted so
/// before anything holds it open, which is the one way to get one here): the guard refuses
/// with the reason ingest answers, and accepts again once the filesystem is writable.
#[test]
fn the_storage_guard_refuses_a_read_only_filesystem_and_accepts_when_writable() {
    let env = Env::new();
    let Some(disk) = Tmpfs::mount(&env.path("queues-fs"), "16m") else {
        return;
    };
    let store = tocsin_queue::SledStore::open(&env.path("data/queue")).unwrap();
    let guard = tocsin::budget::DiskBudget::new(None, 1 << 20, env.path("queues-fs"), store)
        .for_pipeline("p", None);
    assert_eq!(guard.refusal(), None);
    disk.read_only(true);
    std::thread::sleep(tocsin::budget::MEASURE_EVERY);
    let refusal = guard.refusal().expect("refused while read-only");
    assert!(refusal.contains("read-only"), "{refusal}");
    disk.read_only(false);
    std::thread::sleep(tocsin::budget::MEASURE_EVERY);
    assert_eq!(guard.refusal(), None, "accepting again");
}
