//! The `matrix-commands` source on a real Synapse: commands written in the room by the users
//! on its list become messages, once each; the bot's own posts, notices, chatter without the
//! prefix, other users and what was said before the pipeline first polled do not. A SIGKILL
//! between two commands neither loses the one said while tocsin was down nor produces the
//! earlier one again (the sync token is committed with the messages). And the `matrix` sink
//! answers a command in reply to it, in its room — which the source does not read back as a
//! command.

use std::time::Duration;

use tocsin_tests::process::{Port, Tocsin};
use tocsin_tests::synapse::Synapse;
use tocsin_tests::{file_sink, metric_value, wait_until, Env};

/// The ids and bodies the file sink wrote, in order.
fn written(env: &Env) -> Vec<(String, String)> {
    env.read_json_lines("out/commands.jsonl")
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_string(),
                l["body"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until the pipeline's source has polled `at_least` times in all.
async fn polled(base: &str, pipeline: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while polls(base, pipeline).await < at_least {
        assert!(
            std::time::Instant::now() < deadline,
            "the source of {pipeline} does not poll"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The polls of the pipeline's source so far.
async fn polls(base: &str, pipeline: &str) -> f64 {
    metric_value(
        base,
        &format!("tocsin_polls_total{{pipeline=\"{pipeline}\"}}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_the_room_are_read_once_across_a_sigkill() {
    let synapse = Synapse::start().await;
    let alice = synapse.add_member("alice").await;
    let mallory = synapse.add_member("mallory").await;
    let env = Env::new();
    env.mkdir("out");
    let token_file = env.path("bot-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    env.write_pipeline(
        "commands",
        &format!(
            "[source]\nplugin = \"matrix-commands\"\nschedule = \"* * * * * *\"\n\
             config = {{ homeserver = \"{base}\", rooms = [\"{room}\"], users = [\"@alice:localhost\"] }}\n\
             grants = {{ hosts = [\"127.0.0.1:{port}\"], secrets = {{ access_token = \"file:{token}\" }} }}\n\n{sink}",
            base = synapse.base,
            room = synapse.room,
            port = synapse.port,
            token = token_file.display(),
            sink = file_sink(&env, "log", "commands.jsonl"),
        ),
    );
    // Said before the pipeline ever polled: history, never answered.
    synapse.say(&alice, "m.text", "!before").await;

    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    polled(&base, "commands", 2.0).await;
    let status = synapse.say(&alice, "m.text", "!status db1").await;
    synapse.say(&alice, "m.text", "good morning").await;
    synapse.say(&alice, "m.notice", "!alerts").await;
    synapse
        .say(&mallory, "m.text", "!silence host=db1 1h")
        .await;
    synapse.say(&synapse.token, "m.text", "!status db2").await;
    wait_until(Duration::from_secs(30), "alice's command written", || {
        written(&env).iter().any(|(id, _)| *id == status)
    })
    .await;
    // Two more polls: whatever else was to come has come.
    polled(&base, "commands", polls(&base, "commands").await + 2.0).await;
    assert_eq!(written(&env), [(status.clone(), "!status db1".to_string())]);
    let messages_in = "tocsin_messages_in_total{pipeline=\"commands\"}";
    assert_eq!(metric_value(&base, messages_in).await, 1.0);

    // Killed; a command said while it is down is read after the restart, the first one not
    // again.
    tocsin.kill();
    let alerts = synapse.say(&alice, "m.text", "!alerts").await;
    let mut tocsin = Tocsin::spawn(&env, &port, &[]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    wait_until(
        Duration::from_secs(30),
        "the command said while down",
        || written(&env).iter().any(|(id, _)| *id == alerts),
    )
    .await;
    let base = tocsin.base_url.clone();
    polled(&base, "commands", polls(&base, "commands").await + 2.0).await;
    assert_eq!(
        metric_value(&base, messages_in).await,
        1.0,
        "the restarted source produced the new command only"
    );
    assert_eq!(
        written(&env),
        [
            (status, "!status db1".to_string()),
            (alerts, "!alerts".to_string())
        ]
    );
    tocsin.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_sink_replies_to_a_command_and_the_reply_is_not_read_as_one() {
    let synapse = Synapse::start().await;
    let alice = synapse.add_member("alice").await;
    let env = Env::new();
    let token_file = env.path("bot-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    let grants = format!(
        "grants = {{ hosts = [\"127.0.0.1:{port}\"], secrets = {{ access_token = \"file:{token}\" }} }}",
        port = synapse.port,
        token = token_file.display(),
    );
    // An echo: each command goes back into the room, answering it.
    env.write_pipeline(
        "echo",
        &format!(
            "[source]\nplugin = \"matrix-commands\"\nschedule = \"* * * * * *\"\n\
             config = {{ homeserver = \"{base}\", rooms = [\"{room}\"] }}\n{grants}\n\n\
             [[sink]]\nname = \"room\"\nplugin = \"matrix\"\n\
             config = {{ homeserver = \"{base}\", room = \"{room}\" }}\n{grants}\n",
            base = synapse.base,
            room = synapse.room,
        ),
    );
    let server = env.start().await;
    polled(&server.base_url, "echo", 2.0).await;
    let asked = synapse.say(&alice, "m.text", "!ping").await;
    let replies = || async {
        synapse
            .events()
            .await
            .into_iter()
            .filter(|e| e["sender"] == "@alerts:localhost")
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while replies().await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer in the room"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A few more polls: the answer (a notice, by the bot, beginning with `!`) is not a command.
    polled(
        &server.base_url,
        "echo",
        polls(&server.base_url, "echo").await + 3.0,
    )
    .await;
    let replies = replies().await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply = &replies[0]["content"];
    assert_eq!(reply["body"], "!ping");
    assert_eq!(reply["msgtype"], "m.notice");
    assert_eq!(
        reply["m.relates_to"]["m.in_reply_to"]["event_id"],
        asked.as_str()
    );
    server.stop().await;
}
