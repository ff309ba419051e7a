//! `tocsin test PIPELINE`: dry runs of whole pipelines and the behaviour tests written next to
//! them. The shipped pipelines' own behaviour tests run here, so they are part of the suite.

use std::path::Path;
use std::process::{Command, Output};

use tocsin_tests::{age_file, plugins_dir, repo_root, tocsin_bin};

/// Runs `tocsin ARGS` in `dir` with the built plugins and a compile cache shared by the tests.
fn tocsin(dir: &Path, args: &[&str]) -> Output {
    Command::new(tocsin_bin())
        .args(args)
        .current_dir(dir)
        .env("TOCSIN_PLUGIN_DIRS", plugins_dir())
        .env(
            "TOCSIN_CACHE_DIR",
            repo_root().join("target/tocsin-test-cache"),
        )
        .env_remove("MATRIX_TOKEN")
        .env_remove("MASTODON_TOKEN")
        .output()
        .expect("tocsin runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_shipped_pipeline_passes_its_behaviour_tests() {
    let root = repo_root();
    for dir in ["pipelines", "pipelines/with-servers"] {
        // Every shipped pipeline has behaviour tests, so none is shipped untried.
        for pipeline in tocsin_config::pipeline_files(&root.join(dir)).unwrap() {
            let tests = tocsin::behaviour::tests_of(&pipeline);
            assert!(
                tests.is_file(),
                "{} has no {}",
                pipeline.display(),
                tests.display()
            );
        }
        let out = tocsin(&root, &["test", dir]);
        let seen = text(&out);
        assert!(out.status.success(), "tocsin test {dir}:\n{seen}");
        assert!(seen.contains(" passed, 0 failed"), "{seen}");
        assert!(!seen.contains("FAIL"), "{seen}");
    }
}

/// A pipeline in a scratch directory: the json decoder, a file sink, and a webhook sink that
/// only takes errors and carries a secret.
fn scratch_pipeline(dir: &Path) {
    std::fs::write(
        dir.join("alerts.toml"),
        r#"
[source]
plugin = "json"
auth   = { none = true }

[[sink]]
name   = "log"
plugin = "file"
config = { path = "out/alerts.jsonl" }
grants = { write_dirs = ["out"] }

[[sink]]
name   = "pager"
plugin = "webhook"
config = { url = "https://hooks.example.org/page", headers = { x-pager-token = "secret:token" } }
grants = { hosts = ["hooks.example.org"], secrets = { token = "env:PAGER_TOKEN" } }
match  = { severity = ">= error" }
"#,
    )
    .unwrap();
}

#[test]
fn a_dry_run_prints_what_each_sink_would_send_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    scratch_pipeline(dir.path());
    std::fs::write(
        dir.path().join("sample.json"),
        r#"[{"id": "a", "severity": "error", "summary": "db1 down", "body": "no answer"},
            {"id": "b", "severity": "info", "body": "nightly job done"}]"#,
    )
    .unwrap();
    let out = Command::new(tocsin_bin())
        .args(["test", "alerts.toml", "--input", "sample.json"])
        .current_dir(dir.path())
        .env("TOCSIN_PLUGIN_DIRS", plugins_dir())
        .env("TOCSIN_CACHE_DIR", dir.path().join("cache"))
        .env("PAGER_TOKEN", "s3cr3t-pager-token")
        .output()
        .unwrap();
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    for needle in [
        "source (json): 2 messages",
        "sink log ← a",
        "DRY RUN: would write to out/alerts.jsonl:",
        "\"idempotency_key\":\"alerts/log/a\"",
        "sink log ← b",
        "sink pager ← a",
        "DRY RUN: would send\nPOST https://hooks.example.org/page",
        "x-pager-token: REDACTED",
        "sink pager: b not routed here",
        "outcome: delivered (dry run: nothing was sent)",
    ] {
        assert!(seen.contains(needle), "`{needle}` not in:\n{seen}");
    }
    assert!(!seen.contains("s3cr3t-pager-token"), "{seen}");
    assert!(
        !dir.path().join("out").exists(),
        "the dry run wrote into the real grant"
    );
}

#[test]
fn a_scheduled_pipeline_without_input_polls_its_source_for_real() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let backup = dir.path().join("backups/db1.tar.zst");
    std::fs::write(&backup, b"backup").unwrap();
    age_file(&backup, std::time::Duration::from_secs(3 * 86_400));
    std::fs::write(
        dir.path().join("backup.toml"),
        r#"
[source]
plugin   = "backup-check"
schedule = "0 0 3 * * *"
config   = { dir = "backups", pattern = "*.tar.zst", host = "db1" }
grants   = { read_dirs = ["backups"] }

[[filter]]
plugin = "threshold"
config = { metric = "backup-age-seconds", above = { warn = 93600, error = 180000 }, key_labels = ["host"] }

[[sink]]
name   = "console"
plugin = "stdout"
grants = { stdout = true }
"#,
    )
    .unwrap();
    let out = tocsin(dir.path(), &["test", "backup.toml"]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    for needle in [
        "source (backup-check): 1 message",
        "\"file\":\"db1.tar.zst\"",
        "filter.0 (threshold): 1 in, 1 out",
        "DRY RUN: would print:\n[error] ERROR: backup-age-seconds on db1",
    ] {
        assert!(seen.contains(needle), "`{needle}` not in:\n{seen}");
    }
    // A fresh backup: the threshold keeps quiet, and the output says nothing reaches a sink.
    age_file(&backup, std::time::Duration::from_secs(60));
    let seen = text(&tocsin(dir.path(), &["test", "backup.toml"]));
    assert!(seen.contains("filter.0 (threshold): 1 in, 0 out"), "{seen}");
    assert!(seen.contains("nothing reaches the sinks"), "{seen}");
}

#[test]
fn failing_behaviour_cases_are_reported_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    scratch_pipeline(dir.path());
    std::fs::write(
        dir.path().join("alerts.test.toml"),
        r#"
[[case]]
name  = "passes: an error goes to the log and the pager"
input = '{"id": "x", "severity": "error", "body": "down"}'
[[case.expect]]
sink = "log"
[[case.expect]]
sink  = "pager"
sends = ["POST https://hooks.example.org/page", "x-pager-token: REDACTED"]

[[case]]
name  = "fails: wrong severity, wrong text, a sink that should stay quiet"
input = '{"id": "y", "severity": "warning", "body": "slow"}'
no_output_from = ["log"]
[[case.expect]]
sink     = "log"
severity = "error"
sends    = ["no such text"]

[[case]]
name  = "fails: the pager was expected but the match keeps it out"
input = '{"id": "z", "severity": "info", "body": "fyi"}'
[[case.expect]]
sink = "pager"

[[case]]
name     = "fails: a refusal was expected"
input    = '{"body": "fine"}'
rejected = 400

[[case]]
name           = "fails: a sink name with a typo is an error, not a vacuous pass"
input          = '{"body": "fine"}'
no_output_from = ["pagr"]
"#,
    )
    .unwrap();
    // Through the pipeline, and through the directory: the same report.
    for target in ["alerts.toml", "."] {
        let out = tocsin(dir.path(), &["test", target]);
        let seen = text(&out);
        assert_eq!(out.status.code(), Some(1), "{seen}");
        for needle in [
            "ok    passes: an error goes to the log and the pager",
            "FAIL  fails: wrong severity",
            "sink `log`, message 1: severity is warning, expected error",
            "sink `log`, message 1: what it would send does not contain \"no such text\"",
            "`log` let 1 message(s) out, expected none: y (warning) slow",
            "sink `pager` got 0 message(s), expected 1",
            "the decoder accepted the request, expected a 400 refusal",
            "`pagr` is not a sink of alerts (its sinks: log, pager)",
            "1 passed, 4 failed",
        ] {
            assert!(seen.contains(needle), "`{needle}` not in:\n{seen}");
        }
    }
}

#[test]
fn behaviour_cases_run_at_a_time_of_their_choosing_to_check_maintenance_windows() {
    let dir = tempfile::tempdir().unwrap();
    scratch_pipeline(dir.path());
    let mut file = std::fs::read_to_string(dir.path().join("alerts.toml")).unwrap();
    file += "\n[[maintenance]]\nname = \"reboots\"\ntimezone = \"Europe/Berlin\"\n\
             weekdays = [\"mon:fri\"]\ntimes = [\"02:00-04:30\"]\nmatch = [\"host=db1\"]\n\
             sinks = [\"pager\"]\n";
    std::fs::write(dir.path().join("alerts.toml"), file).unwrap();
    std::fs::write(
        dir.path().join("alerts.test.toml"),
        r#"
[[case]]
name  = "inside the window: db1 reaches the log, not the pager"
at    = "2026-12-07T02:30:00+01:00"
input = '{"id": "a", "severity": "error", "body": "down", "labels": {"host": "db1"}}'
no_output_from = ["pager"]
[[case.expect]]
sink = "log"

[[case]]
name  = "inside the window: db2 is not matched"
at    = "2026-12-07T02:30:00+01:00"
input = '{"id": "b", "severity": "error", "body": "down", "labels": {"host": "db2"}}'
[[case.expect]]
sink = "log"
[[case.expect]]
sink = "pager"

[[case]]
name  = "after the window: db1 reaches the pager"
at    = "2026-12-07T04:30:00+01:00"
input = '{"id": "c", "severity": "error", "body": "down", "labels": {"host": "db1"}}'
[[case.expect]]
sink = "log"
[[case.expect]]
sink = "pager"
"#,
    )
    .unwrap();
    let out = tocsin(dir.path(), &["test", "alerts.toml"]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("3 passed, 0 failed"), "{seen}");
}

#[test]
fn mistakes_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    scratch_pipeline(d);
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "no such pipeline",
            vec!["test", "missing.toml"],
            vec!["missing.toml does not exist"],
        ),
        (
            "an ingest pipeline needs an input or tests",
            vec!["test", "alerts.toml"],
            vec!["is fed over HTTP: give a request body with --input FILE"],
        ),
        (
            "a sample that cannot be read",
            vec!["test", "alerts.toml", "--input", "nope.json"],
            vec!["cannot read nope.json"],
        ),
    ];
    for (what, args, needles) in cases {
        let out = tocsin(d, &args);
        let seen = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {seen}");
        for needle in needles {
            assert!(seen.contains(needle), "{what}: `{needle}` not in:\n{seen}");
        }
    }

    // A pinned digest that does not match the .wasm: refused before anything runs.
    let plugin = plugins_dir().join("json.wasm");
    std::fs::copy(&plugin, d.join("json.wasm")).unwrap();
    let wrong = "0".repeat(64);
    std::fs::write(
        d.join("pinned.toml"),
        format!(
            "[source]\nplugin = \"json.wasm\"\nsha256 = \"{wrong}\"\nauth = {{ none = true }}\n\n\
             [[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = {{ stdout = true }}\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("sample.json"), r#"{"body": "hi"}"#).unwrap();
    let out = tocsin(d, &["test", "pinned.toml", "--input", "sample.json"]);
    let seen = text(&out);
    assert_eq!(out.status.code(), Some(1), "{seen}");
    assert!(seen.contains("sha256"), "{seen}");
    assert!(seen.contains(&wrong), "{seen}");
    assert!(!seen.contains("DRY RUN"), "{seen}");

    // An invalid pipeline: its diagnostics with file and line.
    std::fs::write(d.join("broken.toml"), "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[sink]]\nname = \"x\"\nplugin = \"stdout\"\ncolour = \"red\"\n").unwrap();
    let seen = text(&tocsin(
        d,
        &["test", "broken.toml", "--input", "sample.json"],
    ));
    assert!(
        seen.contains("broken.toml is not a valid pipeline"),
        "{seen}"
    );
    assert!(seen.contains("broken.toml:8"), "{seen}");

    // A behaviour-test file with a typo in a field: file and line; and one for no pipeline.
    std::fs::write(
        d.join("alerts.test.toml"),
        "[[case]]\nname = \"x\"\ninput = \"{}\"\n\n[[case.expect]]\nsink = \"log\"\nseverty = \"error\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("gone.test.toml"),
        "[[case]]\nname = \"x\"\ninput = \"{}\"\n",
    )
    .unwrap();
    let out = tocsin(d, &["test", "."]);
    let seen = text(&out);
    assert_eq!(out.status.code(), Some(1), "{seen}");
    assert!(seen.contains("alerts.test.toml:7"), "{seen}");
    assert!(seen.contains("unknown field `severty`"), "{seen}");
    assert!(
        seen.contains("tests a pipeline that does not exist") && seen.contains("gone.toml"),
        "{seen}"
    );
    assert!(seen.contains("2 file(s) could not run"), "{seen}");

    // Behaviour-test files are never loaded as pipelines.
    let seen = text(&tocsin(d, &["validate", "."]));
    assert!(!seen.contains("test.toml"), "{seen}");
}

/// A dry run treats a sample as the live endpoint would see it from a client: a form-encoded
/// Janitor post without `--header` is sent as form fields (as `curl -d` sends it), and a note
/// says which content type was assumed.
#[test]
fn a_dry_run_sends_a_sample_as_what_it_looks_like_and_says_so() {
    let root = repo_root();
    let scratch = tempfile::tempdir().unwrap();
    let sample = scratch.path().join("form.txt");
    std::fs::write(
        &sample,
        "hostname=web1&message=This+is+a+test+message&message_type=warning\n",
    )
    .unwrap();
    let out = tocsin(
        &root,
        &[
            "test",
            "pipelines/with-servers/janitor-mastodon.toml",
            "--input",
            sample.to_str().unwrap(),
        ],
    );
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(
        seen.contains("sent as `application/x-www-form-urlencoded`"),
        "{seen}"
    );
    assert!(seen.contains("This is a test message"), "{seen}");
    assert!(!seen.contains("malformed JSON"), "{seen}");
}

/// A grouping sink in a dry run sends once the case's inputs are in: per group one
/// notification (capped by `max_messages`), rendered as the server would send it.
#[test]
fn a_grouping_sink_sends_each_group_as_one_notification_in_behaviour_tests_and_dry_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("disks.toml"),
        r#"
[source]
plugin = "json"
auth = { none = true }

[[sink]]
name   = "room"
plugin = "matrix"
config = { homeserver = "https://matrix.example.org", room = "!ops:example.org" }
grants = { hosts = ["matrix.example.org"], secrets = { access_token = "env:MATRIX_TOKEN" } }
group  = { by = ["alertname"], wait = "30s", max_messages = 2 }
"#,
    )
    .unwrap();
    let alert = |host: &str, name: &str| {
        format!(
            r#"{{"id": "{name}-{host}", "severity": "warning", "summary": "{name} on {host}", "body": "…", "labels": {{"alertname": "{name}", "host": "{host}", "status": "firing"}}}}"#
        )
    };
    std::fs::write(
        dir.path().join("disks.test.toml"),
        format!(
            r#"
[[case]]
name   = "three disks and a load alert: DiskFull as 2 + 1, HighLoad alone"
inputs = ['{}', '{}', '{}', '{}']
[[case.expect]]
sink  = "room"
summary = "DiskFull on db1"
sends = ["[FIRING:2] alertname=DiskFull", "DiskFull on db1", "DiskFull on db2"]
not_sends = ["DiskFull on db3", "HighLoad"]
[[case.expect]]
sink  = "room"
summary = "DiskFull on db2"
[[case.expect]]
sink  = "room"
summary = "DiskFull on db3"
sends = ["[FIRING:3] alertname=DiskFull", "DiskFull on db3"]
[[case.expect]]
sink  = "room"
summary = "HighLoad on db1"
sends = ["[FIRING:1] alertname=HighLoad"]
"#,
            alert("db1", "DiskFull"),
            alert("db2", "DiskFull"),
            alert("db1", "HighLoad"),
            alert("db3", "DiskFull"),
        ),
    )
    .unwrap();
    let out = tocsin(dir.path(), &["test", "disks.toml"]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("1 passed, 0 failed"), "{seen}");

    // A dry run of one request: the group is held, then sent as one notification.
    let sample = dir.path().join("two.json");
    std::fs::write(
        &sample,
        format!(
            "[{}, {}]",
            alert("db1", "DiskFull"),
            alert("db2", "DiskFull")
        ),
    )
    .unwrap();
    let out = tocsin(
        dir.path(),
        &["test", "disks.toml", "--input", sample.to_str().unwrap()],
    );
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(
        seen.contains("sink room: DiskFull-db1 joins its group")
            && seen.contains(
                "sink room ← one group notification of 2 messages: DiskFull-db1, DiskFull-db2"
            )
            && seen.contains("[FIRING:2] alertname=DiskFull"),
        "{seen}"
    );
}

/// A message's link reaches every sink that shows it as a field or a line: `webhook` and
/// `file` as the JSON field `link`, `stdout` at the end of its text line (Matrix and Mastodon
/// render it as a link: their own unit tests).
#[test]
fn a_link_reaches_the_webhook_the_file_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::write(
        dir.path().join("ci.toml"),
        r#"
[source]
plugin = "json"
auth   = { none = true }

[[sink]]
name   = "log"
plugin = "file"
config = { path = "out/ci.jsonl" }
grants = { write_dirs = ["out"] }

[[sink]]
name   = "hook"
plugin = "webhook"
config = { url = "https://hooks.example.org/ci" }
grants = { hosts = ["hooks.example.org"] }

[[sink]]
name   = "console"
plugin = "stdout"
grants = { stdout = true }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ci.test.toml"),
        r#"
[[case]]
name  = "the failed run's page is in every sink's output"
input = '{"id": "run-1", "severity": "error", "summary": "CI failed", "body": "main is red", "link": "https://ci.example/runs/1"}'
[[case.expect]]
sink  = "log"
sends = ['"link":"https://ci.example/runs/1"']
[[case.expect]]
sink  = "hook"
sends = ['"link":"https://ci.example/runs/1"']
[[case.expect]]
sink  = "console"
sends = ["CI failed: main is red () https://ci.example/runs/1"]
"#,
    )
    .unwrap();
    let out = tocsin(dir.path(), &["test", "ci.toml"]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(seen.contains("1 passed, 0 failed"), "{seen}");
}

/// `tocsin init DIR` writes a pipeline per scenario, each disabled, that validates and whose
/// behaviour tests pass as written; it says what comes next and never overwrites a file.
#[test]
fn init_writes_disabled_pipelines_that_validate_and_pass_their_tests() {
    let dir = tempfile::tempdir().unwrap();
    let out = tocsin(dir.path(), &["init", "starter"]);
    let seen = text(&out);
    assert!(out.status.success(), "{seen}");
    assert!(
        seen.contains("tocsin test starter")
            && seen.contains("tocsin validate --env starter")
            && seen.contains("tocsin run --pipelines starter"),
        "{seen}"
    );
    let starter = dir.path().join("starter");
    let pipelines = tocsin_config::pipeline_files(&starter).unwrap();
    assert!(pipelines.len() >= 9, "{pipelines:?}");
    let resolver = tocsin_config::PluginResolver::new(vec![plugins_dir().to_path_buf()]);
    for path in &pipelines {
        let spec = tocsin_config::load_file(path, &resolver, tocsin_config::MachineCheck::Skip)
            .unwrap_or_else(|d| panic!("{}: {d:?}", path.display()));
        assert!(
            spec.disabled,
            "{} starts before its blanks are filled",
            path.display()
        );
        assert!(
            tocsin::behaviour::tests_of(path).is_file(),
            "{}",
            path.display()
        );
    }
    let out = tocsin(dir.path(), &["validate", "starter"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tocsin(dir.path(), &["test", "starter"]);
    let seen = text(&out);
    assert!(
        out.status.success() && seen.contains(" passed, 0 failed"),
        "{seen}"
    );

    // A second init overwrites nothing, and says so.
    let before = std::fs::read_to_string(&pipelines[0]).unwrap();
    std::fs::write(&pipelines[0], "# mine\n").unwrap();
    let out = tocsin(dir.path(), &["init", "starter"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("overwrites nothing"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&pipelines[0]).unwrap(), "# mine\n");
    assert!(before.starts_with("# Written by `tocsin init`"), "{before}");
}
