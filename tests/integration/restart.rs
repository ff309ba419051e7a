//! Crash safety of the real binary: messages queued while Matrix is unreachable survive a
//! SIGKILL of tocsin and arrive exactly once when both are back.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tocsin_tests::synapse::Synapse;
use tocsin_tests::{every_second_backup_source, plugins_dir, tocsin_bin, Env};

fn spawn_tocsin(env: &Env) -> Child {
    Command::new(tocsin_bin())
        .arg("run")
        .arg("--pipelines")
        .arg(env.path("pipelines"))
        .arg("--data")
        .arg(env.path("data"))
        .arg("--plugin-dir")
        .arg(plugins_dir())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("tocsin.log")).unwrap())
        .spawn()
        .expect("tocsin starts")
}

/// The tick (seconds) in a backup-check message id `tick-<ms>`.
fn tick_of(body: &str) -> Option<u64> {
    body.split("tick=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_during_an_outage_survive_sigkill_and_arrive_once() {
    let mut synapse = Synapse::start().await;
    let env = Env::new();
    env.mkdir("backups");
    std::fs::write(env.path("backups/x.tar"), b"x").unwrap();
    let token_file = env.path("matrix-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    // No threshold: every tick is a message, and the template puts the tick in the body.
    let pipeline = format!(
        r#"
{source}

[[filter]]
plugin = "hostile"
config = {{ mode = "tag-tick" }}

[[sink]]
name = "room"
plugin = "matrix"
config = {{ homeserver = "{base}", room = "{room}" }}
grants = {{ hosts = ["127.0.0.1:{port}"], secrets = {{ access_token = "file:{token}" }} }}
retry = {{ max_attempts = 1000, initial = "100ms", max = "500ms" }}
"#,
        source = every_second_backup_source(&env, r#"host = "db1""#),
        base = synapse.base,
        room = synapse.room,
        port = synapse.port,
        token = token_file.display(),
    );
    env.write_pipeline("ticks", &pipeline);

    // Matrix goes down; tocsin queues for a few seconds, then is killed.
    synapse.stop();
    let mut tocsin = spawn_tocsin(&env);
    // Long enough for several ticks even when start-up is slow.
    tokio::time::sleep(Duration::from_secs(9)).await;
    tocsin.kill().expect("SIGKILL");
    tocsin.wait().unwrap();

    // tocsin restarts (still no Matrix), then Matrix comes back.
    let mut tocsin = spawn_tocsin(&env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    synapse.launch().await;
    // Stop producing: a new version of the pipeline whose schedule never fires (hot reload),
    // so what is queued drains and nothing new comes. Then SIGTERM, a graceful stop.
    env.write_pipeline(
        "ticks",
        &pipeline.replace("* * * * * *", "0 0 0 1 1 * 2099"),
    );
    let mut seen = 0;
    let mut stable_since = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while stable_since.elapsed() < Duration::from_secs(4) {
        assert!(
            std::time::Instant::now() < deadline,
            "the room never stopped growing"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = synapse.messages().await.len();
        if now != seen {
            (seen, stable_since) = (now, std::time::Instant::now());
        }
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(tocsin.id().to_string())
        .status();
    tocsin.wait().unwrap();

    let bodies: Vec<String> = synapse
        .messages()
        .await
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    let ticks: Vec<u64> = bodies.iter().filter_map(|b| tick_of(b)).collect();
    assert_eq!(
        ticks.len(),
        bodies.len(),
        "every message carries its tick: {bodies:#?}"
    );
    let unique: BTreeSet<u64> = ticks.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ticks.len(),
        "a message arrived twice: {ticks:?}"
    );

    // The first run's ticks (queued while Matrix was down, before the SIGKILL) all arrived:
    // consecutive seconds from the first tick, at least four of them. (A tick polled in the
    // last instant before the kill may be missing: it was never durable, so never promised.)
    let first = *unique.iter().next().expect("messages arrived");
    let run_one: Vec<u64> = unique
        .iter()
        .copied()
        .take_while(|t| *t < first + 6)
        .collect();
    assert!(run_one.len() >= 4, "first run delivered {run_one:?}");
    for pair in run_one.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a tick of the first run is missing: {run_one:?}"
        );
    }

    // Nothing left behind: queues and dead letters are empty.
    let listing = env.cli(&["queue", "ls"]);
    assert!(listing.starts_with("pipeline"), "{listing}");
    // A drained pipeline has nothing stored, so no row; a row would show what is left.
    let row = listing.lines().find(|l| l.starts_with("ticks"));
    assert!(row.is_none(), "queues not drained:\n{listing}");
}
