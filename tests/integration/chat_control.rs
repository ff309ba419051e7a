//! Asking the bot, on a real Synapse: `matrix-commands` reads the room, `run-commands` answers
//! through the `control` interface the pipeline grants, the `matrix` sink replies in the room.
//! A user on the list silences a host from the room (the silence is the server's: the next
//! alert of the host is not posted, `tocsin silence ls` shows it), reads a host's numbers and
//! acknowledges an alert; a user not on the list is refused; a SIGKILL between commands loses
//! and repeats none. And a pipeline that does not grant `control` gets nothing of it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use tocsin_tests::process::{cli_with_token, log_tail, Port, Tocsin};
use tocsin_tests::synapse::Synapse;
use tocsin_tests::{
    metric_value, post_accepted, write_api_tokens, Env, ADMIN_TOKEN, OPEN_JSON_SOURCE,
};

/// An alert of `host` about `what`, keyed `what/host`, with a reading.
fn alert(what: &str, host: &str, n: u32, metrics: Value) -> Value {
    json!({
        "id": format!("{what}-{host}-{n}"),
        "key": format!("{what}/{host}"),
        "severity": "error",
        "summary": format!("{what} on {host}"),
        "body": format!("{what} is firing on {host}"),
        "labels": {"alertname": what, "host": host, "status": "firing"},
        "metrics": metrics,
    })
}

/// The bot's replies in the room, by the event each answers: (command event, plain body).
async fn replies(synapse: &Synapse) -> Vec<(String, String)> {
    synapse
        .events()
        .await
        .into_iter()
        .filter(|e| e["sender"] == "@alerts:localhost")
        .filter_map(|e| {
            let to = e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()?;
            Some((
                to.to_string(),
                e["content"]["body"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ))
        })
        .collect()
}

/// The bot's posts that answer nothing: the alerts.
async fn alert_posts(synapse: &Synapse) -> Vec<String> {
    synapse
        .events()
        .await
        .into_iter()
        .filter(|e| e["sender"] == "@alerts:localhost")
        .filter(|e| e["content"]["m.relates_to"].is_null())
        .map(|e| {
            e["content"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Waits for the reply to `command` and returns its body.
async fn reply_to(synapse: &Synapse, command: &str, env: &Env) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some((_, body)) = replies(synapse)
            .await
            .into_iter()
            .find(|(to, _)| to == command)
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no reply to {command}\n{}",
            log_tail(env)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the room shows an alert post containing `text`.
async fn posted(synapse: &Synapse, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !alert_posts(synapse).await.iter().any(|b| b.contains(text)) {
        assert!(Instant::now() < deadline, "`{text}` never posted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The command pipeline: `matrix-commands` → `run-commands` (granted `control`) → `matrix`.
fn chat_pipeline(synapse: &Synapse, token_file: &str, control: &str) -> String {
    let grants = format!(
        "grants = {{ hosts = [\"127.0.0.1:{port}\"], secrets = {{ access_token = \"file:{token_file}\" }} }}",
        port = synapse.port,
    );
    format!(
        "[source]\nplugin = \"matrix-commands\"\nschedule = \"* * * * * *\"\n\
         config = {{ homeserver = \"{base}\", rooms = [\"{room}\"], users = [\"@alice:localhost\", \"@mallory:localhost\"] }}\n{grants}\n\n\
         [[filter]]\nplugin = \"run-commands\"\n{control}\n\n\
         [[sink]]\nname = \"room\"\nplugin = \"matrix\"\n\
         config = {{ homeserver = \"{base}\", room = \"{room}\" }}\n{grants}\n",
        base = synapse.base,
        room = synapse.room,
    )
}

/// The alerts pipeline: JSON ingest → the room.
fn hosts_pipeline(synapse: &Synapse, token_file: &str) -> String {
    format!(
        "{OPEN_JSON_SOURCE}[[sink]]\nname = \"room\"\nplugin = \"matrix\"\n\
         config = {{ homeserver = \"{}\", room = \"{}\" }}\n\
         grants = {{ hosts = [\"127.0.0.1:{}\"], secrets = {{ access_token = \"file:{token_file}\" }} }}\n",
        synapse.base, synapse.room, synapse.port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_user_silences_a_host_from_the_room_and_others_are_refused() {
    let synapse = Synapse::start().await;
    let alice = synapse.add_member("alice").await;
    let mallory = synapse.add_member("mallory").await;
    let env = Env::new();
    let token_file = env.path("bot-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    let token_file = token_file.display().to_string();
    env.write_pipeline("hosts", &hosts_pipeline(&synapse, &token_file));
    env.write_pipeline(
        "chat",
        &chat_pipeline(
            &synapse,
            &token_file,
            "grants = { control = { status = [\"*\"], ack = [\"@alice:localhost\"], silence = [\"@alice:localhost\"] } }",
        ),
    );
    let tokens = write_api_tokens(&env);
    let port = Port::free();
    let args = ["--api-tokens", tokens.to_str().unwrap()];
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let polls = "tocsin_polls_total{pipeline=\"chat\"}";
    while metric_value(&base, polls).await < 2.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    post_accepted(
        &base,
        "hosts",
        alert("DiskFull", "db1", 1, json!({"disk-used-percent": 93.5})),
    )
    .await;
    posted(&synapse, "DiskFull on db1").await;

    // db1's numbers and its open alert.
    let status = synapse.say(&alice, "m.text", "!status db1").await;
    let answer = reply_to(&synapse, &status, &env).await;
    assert!(answer.contains("Status of db1"), "{answer}");
    assert!(
        answer.contains("disk-used-percent 93.50 (hosts"),
        "{answer}"
    );
    assert!(answer.contains("DiskFull on db1"), "{answer}");

    // Mallory may ask for status but not silence: refused politely, nothing made.
    let refused = synapse
        .say(&mallory, "m.text", "!silence host=db1 1h")
        .await;
    let answer = reply_to(&synapse, &refused, &env).await;
    assert!(answer.contains("you may not"), "{answer}");
    assert!(answer.contains("@mallory:localhost"), "{answer}");

    let silence = synapse
        .say(&alice, "m.text", "!silence host=db1 1h kernel upgrade")
        .await;
    let answer = reply_to(&synapse, &silence, &env).await;
    assert!(answer.starts_with("Silenced ["), "{answer}");
    let id = answer["Silenced [".len()..answer.find(']').unwrap()].to_string();
    let (ok, listed, err) = cli_with_token(&env, Some(ADMIN_TOKEN), &["silence", "ls"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = listed.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].contains(&id))
        .collect();
    assert_eq!(
        at.len(),
        1,
        "one silence, made by alice's command:\n{listed}"
    );
    assert!(lines[at[0]].contains("host=db1"), "{listed}");
    assert_eq!(
        lines.get(at[0] + 1).map(|l| l.trim()),
        Some("by @alice:localhost: kernel upgrade"),
        "{listed}"
    );

    // Killed; a command said while it is down is answered after the restart, and none of the
    // earlier ones again.
    tocsin.kill();
    let alerts = synapse.say(&alice, "m.text", "!alerts").await;
    let mut tocsin = Tocsin::spawn(&env, &port, &args);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    let answer = reply_to(&synapse, &alerts, &env).await;
    assert!(answer.contains("DiskFull on db1"), "{answer}");
    let alert_id = answer
        .split('[')
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("an alert id in {answer}"))
        .to_string();

    // The next alert of db1 is not posted; db2's, after it, is.
    post_accepted(
        &base,
        "hosts",
        alert("CPUHigh", "db1", 1, json!({"cpu-percent": 99.0})),
    )
    .await;
    post_accepted(
        &base,
        "hosts",
        alert("DiskFull", "db2", 1, json!({"disk-used-percent": 91.0})),
    )
    .await;
    posted(&synapse, "DiskFull on db2").await;
    let posts = alert_posts(&synapse).await;
    assert!(
        !posts.iter().any(|p| p.contains("CPUHigh on db1")),
        "db1 is silenced: {posts:#?}"
    );

    // Acknowledged from the room, by the id `!alerts` gave.
    let ack = synapse
        .say(&alice, "m.text", &format!("!ack {alert_id} on it"))
        .await;
    let answer = reply_to(&synapse, &ack, &env).await;
    assert!(
        answer.starts_with(&format!("Acknowledged [{alert_id}]")),
        "{answer}"
    );
    assert!(
        answer.contains("acknowledged by @alice:localhost"),
        "{answer}"
    );

    // Every command answered once: a few more polls, then count.
    let now = metric_value(&base, polls).await;
    while metric_value(&base, polls).await < now + 3.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = replies(&synapse).await;
    for command in [&status, &refused, &silence, &alerts, &ack] {
        let n = all.iter().filter(|(to, _)| to == command).count();
        assert_eq!(n, 1, "{command} answered {n} times: {all:#?}");
    }
    assert_eq!(all.len(), 5, "{all:#?}");

    // The access log names who asked.
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap();
    let calls: Vec<&str> = log.lines().filter(|l| l.contains("control call")).collect();
    assert!(
        calls.iter().any(|l| l.contains("actor=@alice:localhost")
            && l.contains("action=\"silence\"")
            && l.contains("outcome=ok")),
        "{calls:#?}"
    );
    assert!(
        calls.iter().any(|l| l.contains("actor=@mallory:localhost")
            && l.contains("action=\"silence\"")
            && l.contains("denied")),
        "{calls:#?}"
    );
    tocsin.kill();
}

/// Without `grants.control` the same filter reaches nothing: its answer says it may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grant_a_plugin_gets_nothing_of_control() {
    let synapse = Synapse::start().await;
    let alice = synapse.add_member("alice").await;
    let env = Env::new();
    let token_file = env.path("bot-token");
    std::fs::write(&token_file, &synapse.token).unwrap();
    let token_file = token_file.display().to_string();
    env.write_pipeline("chat", &chat_pipeline(&synapse, &token_file, ""));
    let tokens = write_api_tokens(&env);
    let port = Port::free();
    let mut tocsin = Tocsin::spawn(&env, &port, &["--api-tokens", tokens.to_str().unwrap()]);
    tocsin.wait_serving(&env, Duration::from_secs(60)).await;
    let base = tocsin.base_url.clone();
    while metric_value(&base, "tocsin_polls_total{pipeline=\"chat\"}").await < 2.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for command in ["!status", "!silence host=db1 1h test"] {
        let asked = synapse.say(&alice, "m.text", command).await;
        let answer = reply_to(&synapse, &asked, &env).await;
        assert!(answer.contains("you may not"), "{command}: {answer}");
    }
    let (ok, listed, err) = cli_with_token(&env, Some(ADMIN_TOKEN), &["silence", "ls"]);
    assert!(ok, "{err}");
    assert!(!listed.contains("host=db1"), "{listed}");
    tocsin.kill();
}
