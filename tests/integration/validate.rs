//! `tocsin validate`: the examples pass; each kind of broken file gives its promised error.

use std::process::Command;

use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::{plugins_dir, repo_root, tocsin_bin};

fn validate(args: &[&str]) -> (bool, String) {
    let out = Command::new(tocsin_bin())
        .arg("validate")
        .args(args)
        .arg("--plugin-dir")
        .arg(plugins_dir())
        .output()
        .expect("tocsin runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_example_pipeline_validates() {
    for dir in ["pipelines", "pipelines/with-servers"] {
        let path = repo_root().join(dir);
        let (ok, out) = validate(&[path.to_str().unwrap()]);
        assert!(ok, "{dir}:\n{out}");
        assert!(out.contains(" 0 invalid"), "{out}");
    }
}

#[test]
fn the_demo_pipeline_validates_with_machine_checks() {
    let path = repo_root().join("pipelines");
    let (ok, out) = validate(&[path.to_str().unwrap(), "--env"]);
    assert!(ok, "{out}");
}

/// Each fixture in tests/fixtures/invalid names, in its first line, what the error must say.
#[test]
fn broken_files_name_file_line_and_field() {
    let dir = repo_root().join("tests/fixtures/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // First line: `# expect: <text that must appear>`
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect:` line", path.display()));
        let (ok, out) = validate(&[path.to_str().unwrap(), "--env"]);
        assert!(!ok, "{} should be invalid:\n{out}", path.display());
        assert!(
            out.contains(expected),
            "{}: expected `{expected}` in:\n{out}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} fixtures");
}

#[test]
fn one_bad_file_does_not_hide_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("tests/fixtures/invalid/bad-cron.toml"),
        dir.path().join("bad.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("good.toml"),
        "[source]\nplugin = \"backup-check\"\nschedule = \"0 0 * * * *\"\nconfig = { dir = \"/tmp\" }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n",
    )
    .unwrap();
    let (ok, out) = validate(&[dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("ok      ") && out.contains("good.toml"),
        "{out}"
    );
    assert!(out.contains("1 valid, 1 invalid"), "{out}");
}

/// `validate` and `run` agree: every broken fixture that `validate` refuses is refused by the
/// real binary too, with the same error in its log, and it goes on serving the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_refuses_each_broken_file_as_validate_does() {
    let env = tocsin_tests::Env::new();
    let mut expected = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("tests/fixtures/invalid")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().unwrap()["# expect: ".len()..].to_string();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        env.write_pipeline(&name, &text);
        expected.push((name, expect));
    }
    env.write_pipeline(
        "good",
        "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n",
    );
    let port = Port::free();
    let mut server = Tocsin::spawn(&env, &port, &[]);
    server
        .wait_serving(&env, std::time::Duration::from_secs(60))
        .await;
    let accepted = tocsin_tests::post_json_message(&server.base_url, "good", "m-1").await;
    assert_eq!(accepted, 202, "the good pipeline serves");
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    for (name, expect) in expected {
        assert!(
            log.lines()
                .any(|l| l.contains(&expect) && l.contains("ERROR")),
            "{name}: `{expect}` not in the log:\n{log}"
        );
    }
    let (status, _) = server.terminate(std::time::Duration::from_secs(20));
    assert!(status.success());
}

/// Settings a plugin's schema lets through but its `init` refuses (a duration that does not
/// parse, a template with a syntax error) fail `validate` at the stage's `config`, as they
/// would fail the pipeline at start: if `validate` says ok, the pipeline starts.
#[test]
fn settings_a_plugin_refuses_at_init_fail_validate_at_their_config() {
    let fixture = repo_root().join("tests/fixtures/invalid/dedup-window.toml");
    let (ok, out) = validate(&[fixture.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "dedup-window.toml:8:10: filter[0].config: plugin failed to start: window `5 parsecs`"
        ),
        "{out}"
    );
    // Every refusing stage is named, not only the first; a scheduled source's `init` waits
    // for `--env` (it reads this machine's directories).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[source]\nplugin = \"backup-check\"\nschedule = \"0 0 * * * *\"\n\
         config = { dir = \"/nonexistent-backups\" }\ngrants = { read_dirs = [\"/nonexistent-backups\"] }\n\n\
         [[filter]]\nplugin = \"rate-limit\"\nconfig = { per = \"fortnightly\", max = 1 }\n\n\
         [[sink]]\nname = \"out\"\nplugin = \"webhook\"\n\
         config = { url = \"http://127.0.0.1:9/\", body = \"{% if %}\" }\ngrants = { hosts = [\"127.0.0.1:9\"] }\n",
    )
    .unwrap();
    let (ok, out) = validate(&[file.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("p.toml:9:10: filter[0].config: plugin failed to start"),
        "{out}"
    );
    assert!(out.contains("fortnightly"), "{out}");
    assert!(
        out.contains("p.toml:14:10: sink[0].config: plugin failed to start"),
        "{out}"
    );
    assert!(!out.contains("source.config"), "{out}");
    assert!(out.contains("0 valid, 1 invalid"), "{out}");
}

/// A plugin that declares no settings schema (as every plugin built before the SDK could)
/// still validates, and `validate` says its `config` went unchecked.
#[test]
fn a_plugin_without_a_settings_schema_is_noted_as_unchecked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[filter]]\nplugin = \"hostile\"\nconfig = { mode = \"pass\" }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\n",
    )
    .unwrap();
    let (ok, out) = validate(&[file.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "filter[0]: plugin `hostile` declares no settings schema; its config is not checked"
        ),
        "{out}"
    );
    assert!(
        !out.contains("source: plugin"),
        "json declares its settings:\n{out}"
    );
}
