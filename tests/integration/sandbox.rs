//! Hostile plugins are stopped and reported, and another pipeline keeps delivering meanwhile:
//! runaway CPU, memory bombs, deep recursion, 100 MiB outputs, panics, sleeps, state floods,
//! escapes from a directory grant (`..`, absolute, symlink), environment snooping, and sinks
//! reaching for hosts and secrets they were not granted.

use std::time::Duration;

use tocsin_queue::FILTERS_QUEUE;
use tocsin_tests::{every_second_backup_source, file_sink, wait_until, Env};

/// A pipeline polling every second through the `hostile` filter in `mode`.
fn hostile_pipeline(env: &Env, name: &str, hostile_config: &str, limits: &str) -> String {
    format!(
        "filter_retry = {{ max_attempts = 2, initial = \"100ms\", max = \"200ms\" }}

{}
\
         [[filter]]
plugin = \"hostile\"
config = {hostile_config}
limits = {limits}

{}",
        every_second_backup_source(env, &format!("host = \"{name}\"")),
        file_sink(env, "out", &format!("{name}.jsonl")),
    )
}

/// Like [`hostile_pipeline`], with the filter granted read access to `backups/`: it may read
/// there, and must not get out.
fn hostile_reader_pipeline(env: &Env, name: &str, path: &str) -> String {
    let backups = env.path("backups").display().to_string();
    hostile_pipeline(
        env,
        name,
        &format!(r#"{{ mode = "read", path = "{path}" }}"#),
        &format!("{{}}\ngrants = {{ read_dirs = [\"{backups}\"] }}"),
    )
}

/// A pipeline polling every second into the `hostile-sink` sink (named `out`) with `config`
/// and `grants`.
fn hostile_sink_pipeline(env: &Env, name: &str, config: &str, grants: &str) -> String {
    format!(
        "{}\n[[sink]]\nname = \"out\"\nplugin = \"hostile-sink\"\nconfig = {config}\n\
         grants = {grants}\nretry = {{ max_attempts = 1 }}\n",
        every_second_backup_source(env, &format!("host = \"{name}\"")),
    )
}

/// The last error of the first dead letter of `pipeline`'s `queue`, once there is one.
fn dead_letter_in(server: &tocsin_tests::Running, pipeline: &str, queue: &str) -> Option<String> {
    server
        .queue
        .dead_letters(pipeline, queue)
        .ok()?
        .first()
        .and_then(|(_, env)| env.last_error.clone())
}

/// The last error of the first `@filters` dead letter of `pipeline`, once there is one.
fn dead_letter_error(server: &tocsin_tests::Running, pipeline: &str) -> Option<String> {
    dead_letter_in(server, pipeline, FILTERS_QUEUE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_stopped_while_a_healthy_pipeline_delivers() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    env.write_pipeline(
        "healthy",
        &hostile_pipeline(&env, "healthy", r#"{ mode = "pass" }"#, "{}"),
    );
    env.write_pipeline(
        "looping",
        &hostile_pipeline(&env, "looping", r#"{ mode = "loop" }"#, "{}"),
    );
    env.write_pipeline(
        "bomb",
        &hostile_pipeline(
            &env,
            "bomb",
            r#"{ mode = "alloc" }"#,
            r#"{ memory = "16MiB" }"#,
        ),
    );
    env.write_pipeline(
        "slow",
        &hostile_pipeline(
            &env,
            "slow",
            r#"{ mode = "sleep", ms = 10000 }"#,
            r#"{ timeout = "300ms" }"#,
        ),
    );
    env.write_pipeline(
        "reader",
        &hostile_pipeline(
            &env,
            "reader",
            r#"{ mode = "read", path = "/etc/passwd" }"#,
            "{}",
        ),
    );
    // Granted backups/ read-only, it tries to get out: `..`, an absolute path, a symlink
    // planted inside the grant. A read inside the grant is the control: it works.
    let backups = env.path("backups").display().to_string();
    std::os::unix::fs::symlink("/etc/passwd", env.path("backups/link")).unwrap();
    for (name, path) in [
        ("escaper", format!("{backups}/../../../../etc/passwd")),
        ("absolute", "/etc/passwd".to_string()),
        ("symlinker", format!("{backups}/link")),
        ("granted", format!("{backups}/x.tar")),
    ] {
        env.write_pipeline(name, &hostile_reader_pipeline(&env, name, &path));
    }
    env.write_pipeline(
        "recursive",
        &hostile_pipeline(&env, "recursive", r#"{ mode = "recurse" }"#, "{}"),
    );
    // 100 MiB of output, with memory and CPU enough to build it: the host refuses it.
    env.write_pipeline(
        "huge",
        &hostile_pipeline(
            &env,
            "huge",
            r#"{ mode = "huge", count = 100 }"#,
            r#"{ memory = "512MiB", fuel = 100000000000, timeout = "30s" }"#,
        ),
    );
    // Sinks reaching for a host and a secret they were not granted; `owner` is granted the
    // secret (the control: the mechanism works when granted).
    std::fs::write(env.path("token"), "s3cr3t-owner-token").unwrap();
    let token = env.path("token").display().to_string();
    env.write_pipeline(
        "phoning",
        &hostile_sink_pipeline(
            &env,
            "phoning",
            r#"{ mode = "http", url = "http://169.254.169.254/latest/meta-data/" }"#,
            r#"{ hosts = ["alerts.example"] }"#,
        ),
    );
    env.write_pipeline(
        "stealer",
        &hostile_sink_pipeline(
            &env,
            "stealer",
            r#"{ mode = "secret", name = "token" }"#,
            "{}",
        ),
    );
    env.write_pipeline(
        "owner",
        &hostile_sink_pipeline(
            &env,
            "owner",
            r#"{ mode = "secret", name = "token" }"#,
            &format!(r#"{{ secrets = {{ token = "file:{token}" }} }}"#),
        ),
    );
    env.write_pipeline(
        "panicky",
        &hostile_pipeline(&env, "panicky", r#"{ mode = "panic" }"#, "{}"),
    );

    // Merely slow in a host call (sleeping 400 ms) on a tiny CPU budget: fuel counts guest
    // instructions only, so this is not a runaway guest and it delivers.
    env.write_pipeline(
        "leisurely",
        &hostile_pipeline(
            &env,
            "leisurely",
            r#"{ mode = "sleep", ms = 400 }"#,
            r#"{ fuel = 20000000, timeout = "5s" }"#,
        ),
    );
    env.write_pipeline(
        "flooder",
        &hostile_pipeline(&env, "flooder", r#"{ mode = "flood", count = 5000 }"#, "{}"),
    );
    env.write_pipeline(
        "snoop",
        &hostile_pipeline(&env, "snoop", r#"{ mode = "env" }"#, "{}"),
    );

    let server = env.start().await;
    let expectations = [
        ("looping", "plugin stopped (cpu)"),
        ("bomb", "plugin stopped (memory)"),
        ("slow", "plugin stopped (timeout)"),
        ("panicky", "plugin stopped (panic)"),
        (
            "flooder",
            "plugin stopped (quota): more than 1024 state keys",
        ),
        ("reader", "read /etc/passwd failed"),
        ("escaper", "read "),
        ("absolute", "read /etc/passwd failed"),
        ("symlinker", "read "),
        ("recursive", "plugin stopped (memory-fault)"),
        ("huge", "the cap is"),
    ];
    for (pipeline, reason) in expectations {
        wait_until(
            Duration::from_secs(60),
            &format!("{pipeline} dead-lettered"),
            || dead_letter_error(&server, pipeline).is_some(),
        )
        .await;
        let error = dead_letter_error(&server, pipeline).unwrap();
        assert!(
            error.contains(reason),
            "{pipeline}: `{reason}` not in `{error}`"
        );
        assert!(
            env.read_lines(&format!("out/{pipeline}.jsonl")).is_empty(),
            "{pipeline} must deliver nothing"
        );
    }
    wait_until(Duration::from_secs(20), "the granted read delivers", || {
        !env.read_lines("out/granted.jsonl").is_empty()
    })
    .await;
    assert_eq!(
        env.read_json_lines("out/granted.jsonl")[0]["body"],
        "x",
        "a read inside the grant works"
    );
    for (pipeline, reason) in [
        ("phoning", "request denied by the host"),
        ("stealer", "secret `token` is not granted"),
        ("owner", "LEAKED: s3cr3t-owner-token"),
    ] {
        wait_until(
            Duration::from_secs(60),
            &format!("{pipeline} dead-lettered"),
            || dead_letter_in(&server, pipeline, "out").is_some(),
        )
        .await;
        let error = dead_letter_in(&server, pipeline, "out").unwrap();
        assert!(
            error.contains(reason),
            "{pipeline}: `{reason}` not in `{error}`"
        );
    }
    for pipeline in ["looping", "bomb", "slow", "panicky", "recursive"] {
        assert!(
            server.counter(pipeline, |c| &c.plugin_traps) >= 2,
            "{pipeline} traps counted"
        );
    }
    // Every tick brings a new message into each hostile pipeline, so they keep trapping;
    // meanwhile the healthy pipeline delivers one message per tick.
    let traps = server.counter("looping", |c| &c.plugin_traps);
    let delivered = env.read_lines("out/healthy.jsonl").len();
    wait_until(Duration::from_secs(20), "healthy delivers 3 more", || {
        env.read_lines("out/healthy.jsonl").len() >= delivered + 3
    })
    .await;
    assert!(
        server.counter("looping", |c| &c.plugin_traps) > traps,
        "the looping plugin kept being stopped meanwhile"
    );
    // A plugin blocked in a host call is not mistaken for a runaway guest.
    wait_until(Duration::from_secs(20), "the slow plugin delivers", || {
        env.read_lines("out/leisurely.jsonl").len() >= 2
    })
    .await;
    assert_eq!(server.counter("leisurely", |c| &c.plugin_traps), 0);
    // WASI grants nothing by default: no environment variables, no arguments.
    wait_until(Duration::from_secs(20), "the snoop delivers", || {
        !env.read_lines("out/snoop.jsonl").is_empty()
    })
    .await;
    let snooped = &env.read_json_lines("out/snoop.jsonl")[0]["body"];
    assert_eq!(snooped, "vars=[] args=[]");
    // /metrics breaks the failures down per stage.
    let metrics = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (pipeline, event) in [
        ("looping", "trap"),
        ("looping", "dead_letter"),
        ("reader", "error"),
    ] {
        let prefix = format!(
            "tocsin_stage_events_total{{pipeline=\"{pipeline}\",stage=\"filter.0\",event=\"{event}\"}} "
        );
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in:\n{metrics}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{prefix}{count}");
    }
    // Nothing outside the grant leaked into any output.
    for line in env.read_lines("out/healthy.jsonl") {
        assert!(!line.contains("root:"), "leak: {line}");
    }
    server.stop().await;
}
