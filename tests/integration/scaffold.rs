//! `tocsin plugin new` makes a project (Rust, or Python with componentize-py) that builds as
//! created, outside the repository, and whose README's three commands work as written;
//! `tocsin test --plugin` runs a plugin on a sample (a sink as a dry run, secrets redacted).
//! Errors are clear.

use std::path::Path;
use std::process::{Command, Output};

use tocsin_tests::{plugins_dir, tocsin_bin};

fn tocsin(dir: &Path, args: &[&str]) -> Output {
    Command::new(tocsin_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("tocsin runs")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The commands of the README's `sh` block.
fn readme_commands(project: &Path) -> Vec<String> {
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a sh block");
    block.lines().map(str::to_string).collect()
}

/// Runs the README's commands in `project` as a user would (`sh -c`, this build's `tocsin`
/// first on `PATH`, none of this build's cargo settings); asserts each succeeds and returns
/// all they printed.
fn run_readme_commands(project: &Path) -> String {
    let bin_dir = tocsin_bin().parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut seen = String::new();
    for command in readme_commands(project) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(project)
            .env("PATH", &path)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "`{command}` in {}:\n{}",
            project.display(),
            text(&out)
        );
        seen.push_str(&text(&out));
    }
    seen
}

#[test]
fn new_plugins_build_as_created_and_their_readme_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    // One target directory for the three projects (as a symlink, so the README's paths hold),
    // so the SDK and its dependencies compile once.
    let shared_target = dir.path().join("shared-target");
    std::fs::create_dir_all(&shared_target).unwrap();
    for (kind, expect) in [
        (
            "filter",
            vec![
                "\"body\":\"disk almost full on db1\"",
                "fits this host",
                // The settings it declares, from the schema its component carries.
                "settings  word  a string; required",
            ],
        ),
        (
            "sink",
            vec![
                "DRY RUN: would send",
                "settings  url  a string; required",
                "POST https://alerts.example.org/hook",
                "idempotency-key: test/sink/sample-1",
                "outcome: delivered (dry run: nothing was sent)",
            ],
        ),
        (
            "source",
            vec!["\"body\":\"hello\"", "tocsin:plugin/source-plugin"],
        ),
    ] {
        let name = format!("my-{kind}");
        let out = tocsin(dir.path(), &["plugin", "new", "--kind", kind, &name]);
        assert!(out.status.success(), "{}", text(&out));
        let project = dir.path().join(&name);
        std::os::unix::fs::symlink(&shared_target, project.join("target")).unwrap();
        let seen = run_readme_commands(&project);
        for needle in expect {
            assert!(seen.contains(needle), "{name}: `{needle}` not in:\n{seen}");
        }
    }
}

#[test]
fn new_python_plugins_build_with_componentize_py_and_their_readme_commands_work() {
    let venv = tocsin_tests::python::venv(
        "componentize-py-venv",
        "componentize_py",
        &[tocsin_tests::python::COMPONENTIZE_PY],
    );
    let dir = tempfile::tempdir().unwrap();
    for (kind, expect) in [
        (
            "filter",
            vec![
                "\"body\":\"disk almost full on db1\"",
                "tocsin:plugin/filter-plugin",
            ],
        ),
        (
            "sink",
            vec!["ALERT: disk almost full on db1", "outcome: delivered"],
        ),
        (
            "source",
            vec!["\"body\":\"hello\"", "tocsin:plugin/source-plugin"],
        ),
    ] {
        let name = format!("py-{kind}");
        let out = tocsin(
            dir.path(),
            &["plugin", "new", "--lang", "python", "--kind", kind, &name],
        );
        assert!(out.status.success(), "{}", text(&out));
        let project = dir.path().join(&name);
        let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
        assert!(
            readme.contains(tocsin_tests::python::COMPONENTIZE_PY),
            "the README names the componentize-py the tests use"
        );
        // The README's one-time step (a venv with componentize-py), from the test cache.
        std::os::unix::fs::symlink(&venv, project.join(".venv")).unwrap();
        let seen = run_readme_commands(&project);
        for needle in expect {
            assert!(seen.contains(needle), "{name}: `{needle}` not in:\n{seen}");
        }
    }
}

#[test]
fn plugin_new_and_test_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bad_kind = tocsin(d, &["plugin", "new", "--kind", "bogus", "x"]);
    assert!(!bad_kind.status.success());
    assert!(
        text(&bad_kind).contains("invalid value 'bogus'"),
        "{}",
        text(&bad_kind)
    );
    let bad_name = tocsin(d, &["plugin", "new", "--kind", "filter", "My_Plugin"]);
    assert!(!bad_name.status.success());
    assert!(
        text(&bad_name).contains("is not a plugin name"),
        "{}",
        text(&bad_name)
    );
    std::fs::create_dir_all(d.join("taken")).unwrap();
    std::fs::write(d.join("taken/keep.txt"), "mine").unwrap();
    let taken = tocsin(d, &["plugin", "new", "--kind", "sink", "taken"]);
    assert!(!taken.status.success());
    assert!(
        text(&taken).contains("already exists and is not empty"),
        "{}",
        text(&taken)
    );
    assert_eq!(
        std::fs::read_to_string(d.join("taken/keep.txt")).unwrap(),
        "mine"
    );

    let threshold = plugins_dir().join("threshold.wasm");
    let threshold = threshold.to_str().unwrap();
    let no_input = tocsin(d, &["test", "--plugin", threshold]);
    assert!(!no_input.status.success());
    assert!(
        text(&no_input).contains("needs a sample: pass --input"),
        "{}",
        text(&no_input)
    );
    let missing = tocsin(d, &["test", "--plugin", threshold, "--input", "nope.json"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("cannot read nope.json"),
        "{}",
        text(&missing)
    );
    std::fs::write(d.join("not-a-message.json"), "{\"text\": 1}").unwrap();
    let wrong = tocsin(
        d,
        &[
            "test",
            "--plugin",
            threshold,
            "--input",
            "not-a-message.json",
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("is not a sample message"),
        "{}",
        text(&wrong)
    );
}

#[test]
fn a_dry_run_sink_shows_its_request_with_secrets_redacted_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("msg.json"),
        r#"{"body": "db1 backup is 3 days old"}"#,
    )
    .unwrap();
    let webhook = plugins_dir().join("webhook.wasm");
    // An address nothing listens on: a real send would fail; the dry run records instead.
    let config =
        r#"{"url": "http://127.0.0.1:9/hook", "headers": {"authorization": "secret:token"}}"#;
    let args = [
        "test",
        "--plugin",
        webhook.to_str().unwrap(),
        "--config",
        config,
        "--grant-host",
        "127.0.0.1:9",
        "--secret",
        "token=Bearer hunter2-very-secret",
        "--input",
        "msg.json",
    ];
    let out = tocsin(dir.path(), &args);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("POST http://127.0.0.1:9/hook"), "{shown}");
    assert!(shown.contains("authorization: REDACTED"), "{shown}");
    assert!(shown.contains("db1 backup is 3 days old"), "{shown}");
    assert!(!shown.contains("hunter2"), "the secret leaked:\n{shown}");
    // A host that is not granted is refused as it would be in a pipeline.
    let denied = tocsin(
        dir.path(),
        &args[..5]
            .iter()
            .chain(&args[7..])
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("request denied by the host"),
        "{}",
        text(&denied)
    );
}

#[test]
fn a_decoder_runs_on_a_request_body_and_gets_the_ids_the_host_would_give() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("body.json"),
        r#"[{"body": "a"}, {"body": "b", "id": "mine"}]"#,
    )
    .unwrap();
    let json = plugins_dir().join("json.wasm");
    let out = tocsin(
        dir.path(),
        &[
            "test",
            "--plugin",
            json.to_str().unwrap(),
            "--input",
            "body.json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let derived = lines[0]["id"].as_str().unwrap();
    assert!(
        derived.starts_with("req-") && derived.ends_with("-0"),
        "{derived}"
    );
    assert_eq!(lines[1]["id"], "mine");
    assert_eq!(lines[1]["body"], "b");
}

/// `tocsin test --plugin` runs a plugin under the limits a pipeline gives its kind: a filter
/// that takes 1.5 s passes as a sink would (30 s) but fails here as it would in a pipeline
/// (filters get 1 s).
#[test]
fn a_trial_uses_the_limits_of_the_plugins_kind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hostile = plugins_dir().join("hostile.wasm");
    std::fs::write(d.join("msg.json"), r#"{"body": "x"}"#).unwrap();
    let out = tocsin(
        d,
        &[
            "test",
            "--plugin",
            hostile.to_str().unwrap(),
            "--config",
            r#"{"mode": "sleep", "ms": 1500}"#,
            "--input",
            "msg.json",
        ],
    );
    let seen = text(&out);
    assert!(!out.status.success(), "{seen}");
    assert!(seen.contains("timeout 1s"), "{seen}");
    assert!(seen.contains("plugin stopped (timeout)"), "{seen}");
}

/// A decoder that reads headers can be tried on its own: `--header` goes with its sample, and
/// the credentials the live endpoint drops are dropped here too.
#[test]
fn a_decoder_trial_takes_headers_as_the_live_endpoint_hands_them_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ping.json"),
        r#"{"zen": "Keep it logically awesome.", "hook_id": 7}"#,
    )
    .unwrap();
    let github = plugins_dir().join("github_webhook.wasm");
    let github = github.to_str().unwrap();
    let trial = |extra: &[&str]| {
        let mut args = vec!["test", "--plugin", github, "--input", "ping.json"];
        args.extend_from_slice(extra);
        tocsin(d, &args)
    };
    let without = trial(&[]);
    assert!(!without.status.success());
    assert!(
        text(&without).contains("missing X-GitHub-Event"),
        "{}",
        text(&without)
    );
    let with = trial(&[
        "--header",
        "X-GitHub-Event: ping",
        "--header",
        "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958",
    ]);
    assert!(with.status.success(), "{}", text(&with));
    let message: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&with.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        message["id"], "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "{message}"
    );

    let echo = plugins_dir().join("header_echo.wasm");
    let out = tocsin(
        d,
        &[
            "test",
            "--plugin",
            echo.to_str().unwrap(),
            "--input",
            "ping.json",
            "--header",
            "X-Request-Id: r-9",
            "--header",
            "Authorization: Bearer not-for-plugins",
            "--header",
            "Cookie: session=s3cr3t",
        ],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("r-9"), "{shown}");
    assert!(
        !shown.contains("not-for-plugins") && !shown.contains("s3cr3t"),
        "{shown}"
    );

    let threshold = plugins_dir().join("threshold.wasm");
    let filter = tocsin(
        d,
        &[
            "test",
            "--plugin",
            threshold.to_str().unwrap(),
            "--input",
            "ping.json",
            "--header",
            "X-A: b",
        ],
    );
    assert!(!filter.status.success());
    assert!(
        text(&filter).contains("--header goes with a decoder's sample"),
        "{}",
        text(&filter)
    );
}
