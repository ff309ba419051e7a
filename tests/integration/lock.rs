//! One process per data directory: a second `tocsin run`, or an operator command, on a data
//! directory a server holds is refused with the holder's pid and the right advice — once, and
//! without calling the healthy store damaged — and the running server goes on. An operator
//! command on a directory that holds no tocsin data says so (exit 2) and creates nothing.

use std::process::Command;
use std::time::Duration;

use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::{tocsin_bin, Env, OPEN_JSON_SOURCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_is_refused_as_in_use_not_as_damaged() {
    let env = Env::new();
    env.write_pipeline(
        "alerts",
        &format!(
            "{OPEN_JSON_SOURCE}{}",
            tocsin_tests::file_sink(&env, "out", "a.jsonl")
        ),
    );
    let port = Port::free();
    let mut first = Tocsin::spawn(&env, &port, &[]);
    first.wait_serving(&env, Duration::from_secs(60)).await;
    let in_use = format!("is in use by another tocsin process (pid {})", first.pid());

    let second = Tocsin::run_args(&mut Command::new(tocsin_bin()), &env, &Port::free())
        .output()
        .expect("tocsin runs");
    // (`dlq` and `queue ls` go through the running server's admin API instead: admin.rs.)
    let purge = Command::new(tocsin_bin())
        .args(["queue", "purge", "alerts", "--data"])
        .arg(env.path("data"))
        .output()
        .expect("tocsin runs");
    for (what, out) in [("run", &second), ("queue purge", &purge)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "tocsin {what}: {stderr}");
        assert_eq!(
            stderr.matches(&in_use).count(),
            1,
            "tocsin {what}: {stderr}"
        );
        assert!(stderr.contains("Stop that process first"), "{stderr}");
        for wrong in ["corrupt", "is damaged", "move the directory aside"] {
            assert!(
                !stderr.contains(wrong),
                "tocsin {what} says {wrong:?}: {stderr}"
            );
        }
    }
    // The first server was not disturbed.
    let health = reqwest::get(format!("{}/healthz", first.base_url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(first.is_running());
    first.terminate(Duration::from_secs(20));
}

#[test]
fn operator_commands_on_a_directory_without_tocsin_data_say_so_and_create_nothing() {
    let env = Env::new();
    let wrong = env.path("wrong/path");
    let commands: [&[&str]; 6] = [
        &["dlq", "ls"],
        &["dlq", "show", "alerts", "sink-0", "1"],
        &["queue", "ls"],
        &["queue", "purge", "alerts"],
        &["status"],
        &["trace", "some-id"],
    ];
    for args in commands {
        let out = Command::new(tocsin_bin())
            .args(args)
            .arg("--data")
            .arg(&wrong)
            .env_remove("TOCSIN_API_TOKEN")
            .output()
            .expect("tocsin runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no tocsin data in {}", wrong.display()))
                && stderr.contains("is --data right?"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a result");
        assert!(!wrong.exists(), "{args:?} created {}", wrong.display());
    }
}
