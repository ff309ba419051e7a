//! The real `tocsin` binary as a child process: started on a fixed loopback port, killed with
//! SIGKILL or stopped with SIGTERM, its log appended to `tocsin.log` of the environment across
//! restarts.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::{free_port, plugins_dir, tocsin_bin, Env};

/// A running `tocsin run` process.
pub struct Tocsin {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
}

/// The port every start of one test's binary listens on, so clients keep one URL across
/// restarts.
pub struct Port(pub u16);

impl Port {
    /// A free loopback port.
    pub fn free() -> Port {
        Port(free_port())
    }
}

impl Tocsin {
    /// Starts `tocsin run` on the environment's pipelines and data, listening on `port`, with
    /// `extra` arguments; stderr (the log) is appended to `tocsin.log`, stdout (what plugins
    /// granted it print) to `tocsin.stdout`.
    pub fn spawn(env: &Env, port: &Port, extra: &[&str]) -> Tocsin {
        Self::spawn_command(env, port, extra, Command::new(tocsin_bin()))
    }

    /// Like [`Tocsin::spawn`], with the open-files limit set to `nofile` (soft and hard, as
    /// `prlimit` does; systemd's default soft limit is 1024), so tocsin cannot raise it.
    pub fn spawn_with_nofile(env: &Env, port: &Port, extra: &[&str], nofile: u64) -> Tocsin {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(tocsin_bin());
        Self::spawn_command(env, port, extra, command)
    }

    /// Adds `run` and the environment's pipelines, data and plugins, listening on `port`, to
    /// `command` (the binary, or a wrapper running it).
    pub fn run_args<'c>(command: &'c mut Command, env: &Env, port: &Port) -> &'c mut Command {
        command
            .arg("run")
            .arg("--pipelines")
            .arg(env.path("pipelines"))
            .arg("--data")
            .arg(env.path("data"))
            .arg("--plugin-dir")
            .arg(plugins_dir())
            .args(["--listen", &format!("127.0.0.1:{}", port.0)])
    }

    fn spawn_command(env: &Env, port: &Port, extra: &[&str], mut command: Command) -> Tocsin {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(env.path("tocsin.log"))
            .expect("log file");
        let child = Self::run_args(&mut command, env, port)
            .args(extra)
            .stdout(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(env.path("tocsin.stdout"))
                    .expect("stdout file"),
            )
            .stderr(log)
            .spawn()
            .expect("tocsin starts");
        Tocsin {
            child,
            base_url: format!("http://127.0.0.1:{}", port.0),
        }
    }

    /// Waits until `GET /healthz` answers 200; panics (with the log's tail) after `timeout`
    /// or if the process exits first.
    pub async fn wait_serving(&mut self, env: &Env, timeout: Duration) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tocsin exited ({status}) before serving:\n{}",
                    log_tail(env)
                );
            }
            let url = format!("{}/healthz", self.base_url);
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tocsin not serving after {timeout:?}:\n{}",
                log_tail(env)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM; waits up to `bound` for the exit. Returns the exit status and how long it
    /// took, or panics (after a SIGKILL) when the bound passed.
    pub fn terminate(mut self, bound: Duration) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, sent.elapsed());
            }
            if sent.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("tocsin did not exit within {bound:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tocsin {
    /// A test that fails half-way must not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 40 lines of the environment's `tocsin.log`.
pub fn log_tail(env: &Env) -> String {
    let log = std::fs::read_to_string(env.path("tocsin.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs `tocsin ARGS --data DATA` with `TOCSIN_API_TOKEN` set to `token` (unset for `None`),
/// as an operator beside a running server would: whether it succeeded, its stdout, its stderr.
pub fn cli_with_token(env: &Env, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(tocsin_bin());
    command.args(args).arg("--data").arg(env.path("data"));
    command.env_remove("TOCSIN_API_TOKEN");
    if let Some(token) = token {
        command.env("TOCSIN_API_TOKEN", token);
    }
    let out = command.output().expect("tocsin runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
