//! The systemd unit in `packaging/`: systemd accepts it, it keeps its hardening, and the
//! command line it runs is one the real binary starts with and stops from cleanly.

use std::process::Command;
use std::time::Duration;

use tocsin_tests::process::{log_tail, Port};
use tocsin_tests::{plugins_dir, repo_root, tocsin_bin, Env};

fn unit() -> String {
    std::fs::read_to_string(repo_root().join("packaging/tocsin.service")).unwrap()
}

/// The `ExecStart=` command line, continuation lines joined, split into words.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_unit_is_hardened_and_systemd_accepts_it() {
    let unit = unit();
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=tocsin",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(setting), "`{setting}` missing from the unit");
    }
    // The open-files limit leaves room for the default connection cap besides the
    // descriptors tocsin keeps for its store, plugins and outbound connections.
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE")
        .parse()
        .unwrap();
    let cap = tocsin::settings::HttpLimits::default().max_connections;
    assert_eq!(
        tocsin::http_serve::effective_max_connections(cap, nofile),
        cap,
        "LimitNOFILE={nofile} leaves no room for {cap} connections"
    );
    // The stop timeout leaves room for the shutdown grace.
    let words = exec_start(&unit);
    let grace = words
        .iter()
        .position(|w| w == "--shutdown-grace")
        .map(|i| humantime::parse_duration(&words[i + 1]).unwrap())
        .expect("the unit sets --shutdown-grace");
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(|v| humantime::parse_duration(v).unwrap())
        .expect("TimeoutStopSec");
    assert!(
        stop >= grace + Duration::from_secs(10),
        "{stop:?} vs grace {grace:?}"
    );

    let Ok(which) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED the systemd-analyze part: not installed");
        return;
    };
    assert!(which.status.success());
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("tocsin.service");
    let bin = tocsin_bin().display().to_string();
    std::fs::write(&local, unit.replace("/usr/local/bin/tocsin", &bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_command_line_starts_tocsin_and_sigterm_stops_it() {
    let env = Env::new();
    env.write_pipeline(
        "demo",
        "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = { stdout = true }\n",
    );
    let port = Port::free();
    let mut args = exec_start(&unit());
    args.remove(0); // the binary
                    // The unit's paths, moved into the test's directory.
    for (flag, value) in [
        ("--pipelines", env.path("pipelines").display().to_string()),
        ("--plugin-dir", plugins_dir().display().to_string()),
        ("--data", env.path("data").display().to_string()),
        ("--listen", format!("127.0.0.1:{}", port.0)),
    ] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1] = value;
    }
    let log = std::fs::File::create(env.path("tocsin.log")).unwrap();
    let mut child = Command::new(tocsin_bin())
        .args(&args)
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/healthz", port.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reqwest::get(&url).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "not serving:\n{}",
            log_tail(&env)
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited:\n{}",
            log_tail(&env)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", log_tail(&env));
    // --log-format json: every line of the log is a JSON object.
    let text = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(!text.is_empty());
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}
