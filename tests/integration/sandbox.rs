//! Hostile plugins are stopped and reported, and another pipeline keeps delivering meanwhile:
//! runaway CPU, memory bombs, deep recursion, 100 MiB outputs, panics, sleeps, state floods,
//! escapes from a directory grant (`..`, absolute, symlink), environment snooping, the server's
//! `control` interface without a grant or in a loop, and sinks reaching for hosts and secrets
//! they were not granted.

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
    // The server's control interface: nothing of it without `grants.control`, and a granted
    // plugin calling it in a loop is stopped.
    env.write_pipeline(
        "controller",
        &hostile_pipeline(&env, "controller", r#"{ mode = "control" }"#, "{}"),
    );
    env.write_pipeline(
        "control-flooder",
        &hostile_pipeline(
            &env,
            "control-flooder",
            r#"{ mode = "control-flood", count = 100 }"#,
            "{}\ngrants = { control = [\"status\"] }",
        ),
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
        (
            "control-flooder",
            "plugin stopped (quota): more than 16 control calls",
        ),
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
        // Granted, it reads the secret; what it hands back (an error that echoes it, as some
        // servers' error pages do) is scrubbed before it is logged or stored.
        ("owner", "LEAKED: REDACTED"),
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
    // An output over the caps discards the instance that built it (and the memory it holds),
    // like a trap.
    for pipeline in ["looping", "bomb", "slow", "panicky", "recursive", "huge"] {
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
    wait_until(Duration::from_secs(20), "the controller delivers", || {
        !env.read_lines("out/controller.jsonl").is_empty()
    })
    .await;
    let told = &env.read_json_lines("out/controller.jsonl")[0]["body"];
    assert_eq!(told, "status=denied silence=denied", "no grant, no control");
    let silences = tocsin::silences::Silences::load(server.queue.clone()).unwrap();
    assert!(silences.snapshot().all().is_empty(), "no silence made");
    // /metrics breaks the failures down per stage.
    let metrics = tocsin_tests::metrics_text(&server.base_url).await;
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

/// A granted `/proc` shows the system-wide figures (the control: `/proc/stat` is read and
/// passed on) and none of the per-process files: `/proc/self/environ`, which holds every
/// `env:` secret of the host, and `/proc/1/cmdline` are not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_proc_shows_system_figures_but_no_process_files() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    let proc_reader = |name: &str, path: &str| {
        hostile_pipeline(
            &env,
            name,
            &format!(r#"{{ mode = "read", path = "{path}" }}"#),
            "{}\ngrants = { read_dirs = [\"/proc\"] }",
        )
    };
    env.write_pipeline("figures", &proc_reader("figures", "/proc/stat"));
    env.write_pipeline("environ", &proc_reader("environ", "/proc/self/environ"));
    env.write_pipeline("cmdline", &proc_reader("cmdline", "/proc/1/cmdline"));
    let server = env.start().await;
    wait_until(Duration::from_secs(30), "the figures read", || {
        !env.read_lines("out/figures.jsonl").is_empty()
    })
    .await;
    let figures = &env.read_json_lines("out/figures.jsonl")[0];
    assert!(
        figures["body"].as_str().unwrap().starts_with("cpu "),
        "{figures}"
    );
    for name in ["environ", "cmdline"] {
        wait_until(Duration::from_secs(30), "a dead letter", || {
            dead_letter_error(&server, name).is_some()
        })
        .await;
        let error = dead_letter_error(&server, name).unwrap();
        assert!(error.contains("failed"), "{name}: {error}");
        assert!(env.read_lines(&format!("out/{name}.jsonl")).is_empty());
    }
    server.stop().await;
}

/// The value of the metric line starting with `prefix` (`name{labels} `), if any.
fn metric(metrics: &str, prefix: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Against the real binary and its text log: a sink that makes 20 000 refused requests per
/// delivery writes at most its stage's log budget (the rest is counted and a notice says how
/// many were suppressed); an error whose second line imitates a host log line stays on one
/// line; a plugin that traps in `init` has its trap counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_flood_or_forge_the_log_and_its_init_trap_counts() {
    use tocsin_tests::process::{log_tail, Port, Tocsin};
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    env.write_pipeline(
        "flooder",
        &hostile_sink_pipeline(
            &env,
            "flooder",
            r#"{ mode = "flood-http", url = "http://169.254.169.254/", count = 20000 }"#,
            r#"{ hosts = ["alerts.example"] }"#,
        ),
    );
    env.write_pipeline(
        "forger",
        &hostile_sink_pipeline(&env, "forger", r#"{ mode = "multiline" }"#, "{}"),
    );
    env.write_pipeline(
        "init-trap",
        &hostile_pipeline(&env, "init-trap", r#"{ mode = "init-panic" }"#, "{}"),
    );
    let port = Port::free();
    let started = std::time::Instant::now();
    let mut server = Tocsin::spawn(&env, &port, &[]);
    server.wait_serving(&env, Duration::from_secs(60)).await;
    let metrics_url = format!("{}/metrics", server.base_url);
    let scrape = || async {
        reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let dropped = "tocsin_plugin_log_lines_dropped_total{pipeline=\"flooder\",stage=\"sink.out\"} ";
    let mut metrics = scrape().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&metrics, dropped).unwrap_or(0) < 30_000 {
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = scrape().await;
    }
    let traps = "tocsin_plugin_traps_total{pipeline=\"init-trap\"} ";
    while metric(&metrics, traps).unwrap_or(0) < 1 {
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = scrape().await;
    }
    let forged_logged = log_mentions(&env, "FORGED").await;
    let (status, _) = server.terminate(Duration::from_secs(20));
    assert!(status.success());
    // The plugin went on asking until the process stopped: the budget covers the whole run.
    let seconds = started.elapsed().as_secs_f64();

    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    let refused = log
        .lines()
        .filter(|l| l.contains("outbound HTTP request refused"))
        .count();
    let budget = tocsin_runtime::log_budget::BURST
        + tocsin_runtime::log_budget::LINES_PER_SECOND * (seconds + 1.0);
    assert!(
        (refused as f64) <= budget,
        "{refused} refusal lines in {seconds:.1} s (budget {budget})"
    );
    assert!(log.contains("suppressed"), "{}", log_tail(&env));
    // The forged line is inside another, escaped, never a line of its own.
    assert!(forged_logged, "{}", log_tail(&env));
    assert!(log.contains("bad request\\n2026-12-05T00:00:00.000000Z ERROR"));
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-05T00:00:00.000000Z")),
        "a forged line reached the log"
    );
}

/// Whether `tocsin.log` mentions `text` within 30 s.
async fn log_mentions(env: &Env, text: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap_or_default();
        if log.contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A plugin's output is checked before it is queued: a timestamp of `u64::MAX` ms (which
/// would mute its key in the `rate-limit` filter for ever) and an id with CR LF and NUL
/// (which would reach keys, headers and logs) are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_timestamps_and_ids_from_a_plugin_are_refused() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    for (name, mode) in [("future", "far-future"), ("crlf", "crlf-id")] {
        env.write_pipeline(
            name,
            &hostile_pipeline(&env, name, &format!(r#"{{ mode = "{mode}" }}"#), "{}"),
        );
    }
    let server = env.start().await;
    for (name, reason) in [
        ("future", "outside 2000-01-01 to 86400 s from now"),
        ("crlf", "control or bidirectional-formatting characters"),
    ] {
        wait_until(Duration::from_secs(30), "a dead letter", || {
            dead_letter_error(&server, name).is_some()
        })
        .await;
        let error = dead_letter_error(&server, name).unwrap();
        assert!(error.contains(reason), "{name}: {error}");
        assert!(!error.contains('\n') && !error.contains('\0'), "{error:?}");
        assert!(env.read_lines(&format!("out/{name}.jsonl")).is_empty());
    }
    server.stop().await;
}

/// A plugin granted stdout that prints 200 MiB per call gets through at most its bounds
/// (1 MiB per call, 1 MiB per second); the rest is dropped and counted, and it delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_stdout_is_bounded_per_call_and_per_second() {
    use tocsin_tests::process::{Port, Tocsin};
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    env.write_pipeline(
        "shouter",
        &hostile_pipeline(
            &env,
            "shouter",
            r#"{ mode = "shout", count = 200 }"#,
            "{ memory = \"64MiB\", timeout = \"10s\", fuel = 100000000000 }\ngrants = { stdout = true }",
        ),
    );
    let started = std::time::Instant::now();
    let mut server = Tocsin::spawn(&env, &Port::free(), &[]);
    server.wait_serving(&env, Duration::from_secs(60)).await;
    wait_until(Duration::from_secs(60), "three deliveries", || {
        env.read_lines("out/shouter.jsonl").len() >= 3
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    server.terminate(Duration::from_secs(20));
    let printed = std::fs::metadata(env.path("tocsin.stdout")).unwrap().len();
    let bound = (seconds + 1.0) * (1 << 20) as f64;
    assert!(
        (printed as f64) <= bound,
        "{printed} bytes printed in {seconds:.1} s"
    );
    assert!(
        printed >= 1 << 20,
        "the first call's share got through: {printed}"
    );
}

/// The plugins' memory caps are budgeted together: with a budget of 200 MiB, a pipeline of
/// three 64 MiB instances starts, a second one of two more does not (with the figures), and
/// the first keeps delivering; deleting the first frees its share, so the second starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugins_memory_caps_are_budgeted_across_pipelines() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    env.write_pipeline(
        "first",
        &hostile_pipeline(&env, "first", r#"{ mode = "pass" }"#, "{}"),
    );
    let second = format!(
        "{}\n[[sink]]\nname = \"more\"\nplugin = \"file\"\nconfig = {{ path = \"{}/more.jsonl\" }}\n\
         grants = {{ write_dirs = [\"{}\"] }}\n",
        every_second_backup_source(&env, "host = \"second\""),
        env.path("out").display(),
        env.path("out").display()
    );
    let server = env
        .start_with(|s| s.max_plugin_memory = Some(200 << 20))
        .await;
    env.write_pipeline("second", &second);
    wait_until(Duration::from_secs(30), "the second refused", || {
        matches!(
            server.state("second"),
            Some(tocsin::status::PipelineState::Failed(_))
        )
    })
    .await;
    let Some(tocsin::status::PipelineState::Failed(reason)) = server.state("second") else {
        unreachable!()
    };
    assert!(reason.contains("over the budget of 200 MiB"), "{reason}");
    assert!(reason.contains("192 MiB"), "{reason}");
    let delivered = env.read_lines("out/first.jsonl").len();
    wait_until(Duration::from_secs(20), "the first delivers on", || {
        env.read_lines("out/first.jsonl").len() > delivered
    })
    .await;
    std::fs::remove_file(env.path("pipelines/first.toml")).unwrap();
    wait_until(Duration::from_secs(60), "the second starts", || {
        server.state("second") == Some(tocsin::status::PipelineState::Running)
    })
    .await;
    server.stop().await;
}

/// A plugin that creates `planted-rel → ../../../../../../../../etc` in its writable grant
/// (harmless inside the sandbox, a trap for host tools that later walk the directory): the
/// link is gone once the call returns. The plugin passes its message on only if the link was
/// made, so a delivery proves there was one to remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_a_plugin_plants_in_a_writable_grant_are_removed() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    let garden = env.mkdir("garden");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    env.write_pipeline(
        "planter",
        &hostile_pipeline(
            &env,
            "planter",
            &format!(r#"{{ mode = "plant", path = "{}" }}"#, garden.display()),
            &format!(
                "{{}}\ngrants = {{ write_dirs = [\"{}\"] }}",
                garden.display()
            ),
        ),
    );
    let server = env.start().await;
    wait_until(Duration::from_secs(30), "two deliveries", || {
        env.read_lines("out/planter.jsonl").len() >= 2
    })
    .await;
    server.stop().await;
    let left: Vec<_> = std::fs::read_dir(&garden)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?} left in the grant");
}

/// The window of acceptable timestamps is the operator's: with `max_timestamp_ahead` of one
/// minute, an output dated an hour ahead (fine by the default day) is refused, one dated ten
/// seconds ahead is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_far_ahead_a_timestamp_may_be_is_configurable() {
    let env = Env::new();
    env.mkdir("backups");
    env.mkdir("out");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    for (name, ms) in [("hour", 3_600_000), ("seconds", 10_000)] {
        env.write_pipeline(
            name,
            &hostile_pipeline(
                &env,
                name,
                &format!(r#"{{ mode = "dated", ms = {ms} }}"#),
                "{}",
            ),
        );
    }
    let server = env
        .start_with(|s| s.max_timestamp_ahead = Some(Duration::from_secs(60)))
        .await;
    wait_until(
        Duration::from_secs(30),
        "the hour-ahead one refused",
        || dead_letter_error(&server, "hour").is_some(),
    )
    .await;
    let error = dead_letter_error(&server, "hour").unwrap();
    assert!(error.contains("to 60 s from now"), "{error}");
    wait_until(
        Duration::from_secs(30),
        "the seconds-ahead one delivered",
        || !env.read_lines("out/seconds.jsonl").is_empty(),
    )
    .await;
    server.stop().await;
}
