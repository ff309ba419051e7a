//! The shipped plugins are inside the `tocsin` binary: copied alone into an empty directory,
//! it validates and runs a pipeline of `json`, `threshold` and `stdout`; a plugin directory
//! overrides a built-in plugin of the same name; `plugin ls` says which copy each name runs;
//! a digest pin checks the built-in copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tocsin_tests::process::Port;
use tocsin_tests::{plugins_dir, tocsin_bin};

const CPU: &str = r#"[source]
plugin = "json"
auth = { none = true }

[[filter]]
plugin = "threshold"
config = { metric = "cpu-percent", above = { warn = 90.0 }, unit = "percent" }

[[sink]]
name = "console"
plugin = "stdout"
grants = { stdout = true }
"#;

/// An empty directory holding only a copy of the binary; returns (directory, binary).
fn alone() -> (tempfile::TempDir, PathBuf) {
    // The plugins first: the binary embeds what they built.
    plugins_dir();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("tocsin");
    std::fs::copy(tocsin_bin(), &bin).unwrap();
    (dir, bin)
}

/// `tocsin ARGS` in `dir`, with no plugin directory from the environment.
fn tocsin(bin: &Path, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env_remove("TOCSIN_PLUGIN_DIRS")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_alone_runs_a_pipeline_of_shipped_plugins() {
    let (dir, bin) = alone();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    std::fs::write(pipelines.join("cpu.toml"), CPU).unwrap();

    let (ok, out, err) = tocsin(&bin, dir.path(), &["validate", "pipelines"]);
    assert!(ok, "validate:\n{out}{err}");

    let port = Port::free();
    let stdout = dir.path().join("stdout.txt");
    let mut child = Command::new(&bin)
        .args(["run", "--pipelines", "pipelines", "--data", "data"])
        .args(["--listen", &format!("127.0.0.1:{}", port.0)])
        .current_dir(dir.path())
        .env_remove("TOCSIN_PLUGIN_DIRS")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(dir.path().join("log.txt")).unwrap())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/ingest/cpu", port.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let accepted = loop {
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"body": "cpu", "labels": {"host": "db1"}, "metrics": {"cpu-percent": 97}}"#)
            .send()
            .await;
        match answer {
            Ok(r) if r.status() == 202 => break true,
            _ if Instant::now() > deadline => break false,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let log = || std::fs::read_to_string(dir.path().join("log.txt")).unwrap_or_default();
    assert!(accepted, "no 202 within 60 s:\n{}", log());
    let printed = loop {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        if text.contains("cpu-percent is 97 %") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        printed.contains("cpu-percent is 97 % and reached the warning level"),
        "stdout:\n{printed}\nlog:\n{}",
        log()
    );
}

#[test]
fn plugin_ls_shows_built_in_plugins_and_the_copies_that_override_them() {
    let (dir, bin) = alone();
    let (ok, out, err) = tocsin(&bin, dir.path(), &["plugin", "ls", "--json"]);
    assert!(ok, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let json = listed
        .iter()
        .find(|p| p["name"] == "json")
        .expect("json is built in");
    assert_eq!(json["from"], "built in");
    assert_eq!(json["sha256"], sha256_of(&plugins_dir().join("json.wasm")));
    assert!(listed.iter().any(|p| p["name"] == "rate-limit"));
    // Test-only plugins are not shipped.
    assert!(!listed.iter().any(|p| p["name"] == "hostile"), "{out}");

    // An operator's threshold.wasm (here another component, to tell them apart) wins.
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::copy(
        plugins_dir().join("hostile.wasm"),
        own.join("threshold.wasm"),
    )
    .unwrap();
    let (ok, out, err) = tocsin(&bin, dir.path(), &["plugin", "ls", "--plugin-dir", "own"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("threshold "))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("own/threshold.wasm")
            && lines[0].contains(&sha256_of(&own.join("threshold.wasm"))),
        "{out}"
    );
    assert!(
        lines[1].ends_with("built in (overridden by own/threshold.wasm)"),
        "{out}"
    );
    // A pipeline naming `threshold` now runs the operator's copy: the hostile filter, whose
    // settings are not threshold's.
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    std::fs::write(pipelines.join("cpu.toml"), CPU).unwrap();
    let (ok, out, _) = tocsin(
        &bin,
        dir.path(),
        &["validate", "pipelines", "--plugin-dir", "own"],
    );
    assert!(!ok && out.contains("filter[0].config"), "{out}");
    let (ok, out, err) = tocsin(&bin, dir.path(), &["validate", "pipelines"]);
    assert!(ok, "{out}{err}");

    // `inspect` takes a built-in plugin's name.
    let (ok, out, err) = tocsin(&bin, dir.path(), &["plugin", "inspect", "threshold"]);
    assert!(ok, "{err}");
    assert!(out.contains("threshold (built into tocsin)"), "{out}");
    assert!(out.contains("tocsin:plugin/filter-plugin@0.2.1"), "{out}");
}

#[test]
fn a_digest_pin_checks_the_built_in_copy() {
    let (dir, bin) = alone();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir(&pipelines).unwrap();
    let pinned = |sha: &str| {
        CPU.replace(
            "plugin = \"json\"",
            &format!("plugin = \"json\"\nsha256 = \"{sha}\""),
        )
    };
    let good = sha256_of(&plugins_dir().join("json.wasm"));
    std::fs::write(pipelines.join("cpu.toml"), pinned(&good)).unwrap();
    let (ok, out, err) = tocsin(&bin, dir.path(), &["validate", "pipelines"]);
    assert!(ok, "{out}{err}");
    let wrong = "0".repeat(64);
    std::fs::write(pipelines.join("cpu.toml"), pinned(&wrong)).unwrap();
    let (ok, out, _) = tocsin(&bin, dir.path(), &["validate", "pipelines"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "json (built into tocsin) has sha256 {good}, not the pinned {wrong}"
        )),
        "{out}"
    );
}
