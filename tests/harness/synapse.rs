//! A real Synapse homeserver on a free loopback port, for the Matrix tests.
//!
//! Synapse comes from PyPI (`matrix-synapse`), installed once into a venv under
//! `tests/.cache/synapse-venv` and reused by later runs. Each [`Synapse`] gets its own data
//! directory, a user `alerts` with an access token, and a room; it is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::free_port;

/// The venv with Synapse, created on first use.
pub fn synapse_venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| crate::python::venv("synapse-venv", "synapse", &["matrix-synapse"]))
}

/// A running Synapse with one user and one room.
pub struct Synapse {
    /// The loopback port it listens on.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The `alerts` user's access token.
    pub token: String,
    /// The room tocsin posts to.
    pub room: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Synapse {
    /// Installs (first time), configures and starts Synapse; registers `alerts` and creates a
    /// room.
    pub async fn start() -> Synapse {
        let venv = synapse_venv();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("homeserver.yaml");
        let ok = Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "synapse.app.homeserver",
                "--server-name",
                "localhost",
                "--config-path",
            ])
            .arg(&config)
            .args(["--generate-config", "--report-stats=no", "--data-directory"])
            .arg(dir.path())
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "synapse --generate-config failed");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text
            .replace("port: 8008", &format!("port: {port}"))
            .replace(
                "bind_addresses: ['::1', '127.0.0.1']",
                "bind_addresses: ['127.0.0.1']",
            );
        let extra = "
trusted_key_servers: []
suppress_key_server_warning: true
rc_message: {per_second: 10000, burst_count: 10000}
rc_login:
  address: {per_second: 100, burst_count: 100}
  account: {per_second: 100, burst_count: 100}
  failed_attempts: {per_second: 100, burst_count: 100}
rc_registration: {per_second: 100, burst_count: 100}
";
        std::fs::write(&config, format!("{text}\n{extra}")).unwrap();
        let mut synapse = Synapse {
            port,
            base: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            room: String::new(),
            dir,
            child: None,
        };
        synapse.launch().await;
        let ok = Command::new(venv.join("bin/register_new_matrix_user"))
            .arg("-c")
            .arg(&config)
            .args(["-u", "alerts", "-p", "alertspw", "--no-admin"])
            .arg(&synapse.base)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "register_new_matrix_user failed");
        let login: Value = synapse
            .post(
                "/_matrix/client/v3/login",
                &json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": "alerts"},
                        "password": "alertspw"}),
            )
            .await;
        synapse.token = login["access_token"]
            .as_str()
            .expect("access token")
            .to_string();
        let room: Value = synapse
            .post("/_matrix/client/v3/createRoom", &json!({"name": "alerts"}))
            .await;
        synapse.room = room["room_id"].as_str().expect("room id").to_string();
        synapse
    }

    /// Starts the Synapse process (again, after [`Synapse::stop`]) and waits until it answers.
    pub async fn launch(&mut self) {
        let venv = synapse_venv();
        let log = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = Command::new(venv.join("bin/python"))
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("synapse starts");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let url = format!("{}/_matrix/client/versions", self.base);
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not come up; see {}/stdout.log",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the Synapse process (its data stays), so the sink finds it unreachable.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let token = (!self.token.is_empty()).then_some(self.token.as_str());
        self.post_with(token, path, body).await
    }

    /// Registers another user (password = its name), invites it into the room as the bot
    /// and has it join; returns its access token.
    pub async fn add_member(&self, user: &str) -> String {
        let ok = Command::new(synapse_venv().join("bin/register_new_matrix_user"))
            .arg("-c")
            .arg(self.dir.path().join("homeserver.yaml"))
            .args(["-u", user, "-p", user, "--no-admin"])
            .arg(&self.base)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "register_new_matrix_user {user} failed");
        let login = self
            .post(
                "/_matrix/client/v3/login",
                &json!({"type": "m.login.password",
                        "identifier": {"type": "m.id.user", "user": user},
                        "password": user}),
            )
            .await;
        let token = login["access_token"].as_str().expect("token").to_string();
        let room = urlencode(&self.room);
        self.post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            &json!({"user_id": format!("@{user}:localhost")}),
        )
        .await;
        self.post_as(
            &token,
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            &json!({}),
        )
        .await;
        token
    }

    /// Posts `body` into the room as the holder of `token`, as `msgtype` (`m.text`,
    /// `m.notice`); returns the event id.
    pub async fn say(&self, token: &str, msgtype: &str, body: &str) -> String {
        static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/t{}-{txn}",
            self.base,
            urlencode(&self.room),
            std::process::id()
        );
        let resp: Value = reqwest::Client::new()
            .put(url)
            .bearer_auth(token)
            .json(&json!({"msgtype": msgtype, "body": body}))
            .send()
            .await
            .expect("synapse answers")
            .json()
            .await
            .expect("JSON");
        resp["event_id"].as_str().expect("event id").to_string()
    }

    async fn post_as(&self, token: &str, path: &str, body: &Value) -> Value {
        self.post_with(Some(token), path, body).await
    }

    async fn post_with(&self, token: Option<&str>, path: &str, body: &Value) -> Value {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("synapse answers");
        let status = resp.status();
        let value: Value = resp.json().await.expect("synapse answers JSON");
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    /// The `m.room.message` events of the room, oldest first: (body, formatted_body).
    pub async fn messages(&self) -> Vec<(String, String)> {
        self.events()
            .await
            .iter()
            .map(|e| {
                (
                    e["content"]["body"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["content"]["formatted_body"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// The `m.room.message` events of the room as Synapse gives them (sender, content with
    /// any `m.relates_to`, event id), oldest first.
    pub async fn events(&self) -> Vec<Value> {
        let url = format!(
            "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
            self.base,
            urlencode(&self.room)
        );
        let resp: Value = reqwest::Client::new()
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("synapse answers")
            .json()
            .await
            .expect("JSON");
        let mut out: Vec<Value> = resp["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
