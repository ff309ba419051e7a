//! Hostile plugins are stopped and reported, and another pipeline keeps delivering meanwhile.

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

/// The last error of the first `@filters` dead letter of `pipeline`, once there is one.
fn dead_letter_error(server: &tocsin_tests::Running, pipeline: &str) -> Option<String> {
    server
        .queue
        .dead_letters(pipeline, FILTERS_QUEUE)
        .ok()?
        .first()
        .and_then(|(_, env)| env.last_error.clone())
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
    let escape = format!("{}/../../../../etc/passwd", env.path("backups").display());
    env.write_pipeline(
        "escaper",
        &hostile_pipeline(
            &env,
            "escaper",
            &format!(r#"{{ mode = "read", path = "{escape}" }}"#),
            "{}",
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
    for pipeline in ["looping", "bomb", "slow", "panicky"] {
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
