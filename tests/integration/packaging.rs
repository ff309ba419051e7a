//! The systemd unit in `packaging/`: systemd accepts it, it keeps its hardening, and the
//! command line it runs is one the real binary starts with and stops from cleanly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tocsin_tests::process::Port;
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

    assert_unit_verifies(&unit, tocsin_bin());
}

/// `systemd-analyze verify` accepts `unit` (its `ExecStart` pointed at `binary`) without a
/// word; skipped, saying so, where systemd-analyze is not installed.
fn assert_unit_verifies(unit: &str, binary: &Path) {
    let Ok(which) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED the systemd-analyze part: not installed");
        return;
    };
    assert!(which.status.success());
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("tocsin.service");
    std::fs::write(
        &local,
        unit.replace("/usr/bin/tocsin", &binary.display().to_string()),
    )
    .unwrap();
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

/// The unit's `ExecStart` arguments (without the binary), its paths replaced by `paths`
/// (flag, value): the same command line, moved into a test's directories.
fn units_arguments(unit: &str, paths: &[(&str, String)]) -> Vec<String> {
    let mut args = exec_start(unit);
    args.remove(0); // the binary
    for (flag, value) in paths {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1] = value.clone();
    }
    args
}

/// Runs `binary ARGS` (its log to `log`) until it serves `/healthz` on `port`, then stops it
/// with SIGTERM and asserts it exited cleanly.
async fn serve_then_stop(binary: &Path, args: &[String], port: u16, log: &Path) {
    let tail = || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let mut child = Command::new(binary)
        .args(args)
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reqwest::get(&url).await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "not serving:\n{}",
            tail()
        );
        assert!(child.try_wait().unwrap().is_none(), "exited:\n{}", tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", tail());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_command_line_starts_tocsin_and_sigterm_stops_it() {
    let env = Env::new();
    env.write_pipeline(
        "demo",
        "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = { stdout = true }\n",
    );
    let port = Port::free();
    let mut args = units_arguments(
        &unit(),
        &[
            ("--pipelines", env.path("pipelines").display().to_string()),
            ("--plugin-dir", plugins_dir().display().to_string()),
            ("--data", env.path("data").display().to_string()),
            ("--listen", format!("127.0.0.1:{}", port.0)),
        ],
    );
    args.extend(["--queue-budget".to_string(), "3GiB".to_string()]);
    serve_then_stop(tocsin_bin(), &args, port.0, &env.path("tocsin.log")).await;
    // --log-format json: every line of the log is a JSON object.
    let text = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    assert!(!text.is_empty());
    let mut started = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
        let fields = &v["fields"];
        if fields["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("tocsin started"))
        {
            started.push(fields.clone());
        }
    }
    // One start-up line says what the process is and uses.
    assert_eq!(started.len(), 1, "{text}");
    let fields = &started[0];
    for (field, expected) in [
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("pipelines", env.path("pipelines").display().to_string()),
        ("data", env.path("data").display().to_string()),
        ("plugin_dirs", plugins_dir().display().to_string()),
        ("listen", format!("127.0.0.1:{}", port.0)),
        ("queue_budget", "3GiB".to_string()),
    ] {
        assert_eq!(fields[field], expected.as_str(), "{field}: {fields}");
    }
}

/// `rust-toolchain.toml`, the workspace's `rust-version` and README state one Rust version,
/// and it is the newest any dependency declares (wasmtime's), so the first command on a
/// fresh machine is not a toolchain error.
#[test]
fn the_stated_toolchain_is_the_one_the_dependencies_need() {
    let root = repo_root();
    let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = "))
        .expect("a channel")
        .trim_matches('"')
        .to_string();
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--locked"])
        .args(["--filter-platform", &host])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version =
        |text: &str| -> Vec<u64> { text.split('.').map(|n| n.parse().unwrap()).collect() };
    let needed = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["source"].is_null()) // dependencies, not our own crates
        .filter_map(|p| {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            p["rust_version"].as_str().map(|v| (version(v), name))
        })
        .max()
        .expect("some dependency declares a rust-version");
    let ours = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tocsin")
        .and_then(|p| p["rust_version"].as_str())
        .map(version)
        .expect("tocsin declares a rust-version");
    let mut needed_mm = needed.0.clone();
    needed_mm.resize(2, 0);
    let mut ours_mm = ours.clone();
    ours_mm.resize(2, 0);
    assert_eq!(
        ours_mm, needed_mm,
        "rust-version; {} needs {:?}",
        needed.1, needed.0
    );
    assert!(
        version(&channel) >= needed.0,
        "rust-toolchain.toml {channel} < {:?}",
        needed.0
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&channel),
        "README does not state Rust {channel}"
    );
}

/// README's command table names every command of the binary, and `plugin new`'s languages.
#[test]
fn readme_names_every_command_and_plugin_language() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let help = |args: &[&str]| {
        let out = Command::new(tocsin_bin()).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 9, "{top}");
    for command in commands {
        assert!(
            readme.contains(&format!("`tocsin {command} "))
                || readme.contains(&format!("`tocsin {command}`")),
            "README's command table lacks `tocsin {command}`"
        );
    }
    let new = help(&["plugin", "new", "--help"]);
    let languages: Vec<&str> = new
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("--lang"))
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert!(languages.contains(&"python"), "{new}");
    for lang in languages.iter().filter(|l| **l != "rust") {
        assert!(
            readme.contains(&format!("plugin new --lang {lang}")),
            "README lacks `plugin new --lang {lang}`"
        );
    }
}

/// `dpkg ARGS` on the scratch root `root`; its output when it fails.
fn dpkg(root: &Path, args: &[&str]) -> String {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-not-root", "--log=/dev/null"])
        .args(args)
        .output()
        .expect("dpkg runs");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpkg {args:?}:\n{said}");
    said
}

/// `make deb`'s package, made from the binary the tests built: installed with `dpkg -i` into a
/// scratch root, its files are where the unit and a Debian administrator expect them, the
/// examples are configuration files (kept on upgrade), the installed unit verifies, the
/// installed binary starts with the unit's command line and its disabled examples, and a purge
/// leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_and_its_unit_starts_the_installed_binary() {
    if Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no dpkg on this machine (the package is for Debian)");
        return;
    }
    plugins_dir(); // the binary embeds the plugins: build them first
    let bin = tocsin_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let made = Command::new(repo_root().join("packaging/debian/build-deb"))
        .arg(bin)
        .arg(&out)
        .args(["--fast", "--no-strip"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "build-deb (needs cargo-deb: cargo install cargo-deb --locked):\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");

    // A scratch root with an empty package database. libc6 is not in it: --force-depends.
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&root, &["--force-depends", "-i", deb.to_str().unwrap()]);
    assert!(dpkg(&root, &["-s", "tocsin"]).contains("Status: install ok installed"));

    let installed = root.join("usr/bin/tocsin");
    assert_eq!(
        std::fs::read_to_string(root.join("usr/lib/systemd/system/tocsin.service")).unwrap(),
        unit()
    );
    assert!(root.join("usr/lib/tocsin/plugins/README").is_file());
    assert!(root.join("usr/share/doc/tocsin/copyright").is_file());
    let examples: Vec<String> = std::fs::read_dir(root.join("etc/tocsin/pipelines"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        examples.iter().any(|f| f == "nightly-backup-matrix.toml"),
        "{examples:?}"
    );
    let conffiles = dpkg(&root, &["--status", "tocsin"]);
    for example in &examples {
        assert!(
            conffiles.contains(&format!("/etc/tocsin/pipelines/{example}")),
            "{example} is not a conffile:\n{conffiles}"
        );
    }

    // The installed unit verifies, pointing at the installed binary.
    assert_unit_verifies(
        &std::fs::read_to_string(root.join("usr/lib/systemd/system/tocsin.service")).unwrap(),
        &installed,
    );

    // The installed binary, alone, with the unit's command line and the installed examples
    // (all disabled until filled in): it starts, serves, and stops on SIGTERM.
    let (ok, said) = {
        let out = Command::new(&installed)
            .arg("validate")
            .arg(root.join("etc/tocsin/pipelines"))
            .env_remove("TOCSIN_PLUGIN_DIRS")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(ok, "{said}");
    let port = Port::free();
    let args = units_arguments(
        &unit(),
        &[
            (
                "--pipelines",
                root.join("etc/tocsin/pipelines").display().to_string(),
            ),
            (
                "--plugin-dir",
                root.join("usr/lib/tocsin/plugins").display().to_string(),
            ),
            ("--data", dir.path().join("data").display().to_string()),
            ("--listen", format!("127.0.0.1:{}", port.0)),
        ],
    );
    let log = dir.path().join("tocsin.log");
    serve_then_stop(&installed, &args, port.0, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("tocsin started"), "{text}");

    dpkg(&root, &["--purge", "tocsin"]);
    assert!(!installed.exists());
    assert!(!root
        .join("etc/tocsin/pipelines/nightly-backup-matrix.toml")
        .exists());
}
