//! sysmetrics reads this machine's /proc through a read-only grant and its disk usage through
//! the host's `disk-usage` import.

use std::time::Duration;

use tocsin_tests::{file_sink, wait_until, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_metrics_are_reported_from_proc_and_disk_usage() {
    let env = Env::new();
    env.mkdir("out");
    let data = env.mkdir("watched");
    env.write_pipeline(
        "system",
        &format!(
            "[source]\nplugin = \"sysmetrics\"\nschedule = \"* * * * * *\"\n\
             config = {{ host = \"test\", disks = [\"{d}\"] }}\n\
             grants = {{ read_dirs = [\"/proc\", \"{d}\"] }}\n\n{}",
            file_sink(&env, "out", "metrics.jsonl"),
            d = data.display()
        ),
    );
    let server = env.start().await;
    wait_until(Duration::from_secs(30), "two polls", || {
        env.read_lines("out/metrics.jsonl").len() >= 4
    })
    .await;
    let lines = env.read_json_lines("out/metrics.jsonl");
    let metric = |line: &serde_json::Value, name: &str| -> Option<f64> {
        line["metrics"]
            .as_array()?
            .iter()
            .find(|m| m[0] == name)
            .and_then(|m| m[1].as_f64())
    };
    let system = lines
        .iter()
        .find(|l| l["labels"].to_string().contains("\"system\""))
        .unwrap();
    let cpu = metric(system, "cpu-percent").expect("cpu-percent");
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    assert!(metric(system, "load-1").unwrap() >= 0.0);
    let mem = metric(system, "memory-used-percent").unwrap();
    assert!((0.0..100.0).contains(&mem), "{mem}");
    let disk = lines
        .iter()
        .find(|l| l["labels"].to_string().contains("\"disk\""))
        .unwrap();
    let used = metric(disk, "disk-used-percent").unwrap();
    assert!((0.0..=100.0).contains(&used), "{used}");
    assert!(metric(disk, "disk-free-bytes").unwrap() > 0.0);
    server.stop().await;
}
