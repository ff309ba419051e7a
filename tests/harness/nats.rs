//! Real NATS servers with JetStream (Debian `nats-server`) on free loopback ports: one server,
//! or a cluster of three, each with its own store directory; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// Where Debian installs it.
pub const NATS_SERVER_BIN: &str = "/usr/sbin/nats-server";

/// One `nats-server` process of a [`Nats`] deployment.
pub struct Node {
    /// Its `server_name`.
    pub name: String,
    /// Its client port.
    pub port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// One server or a cluster; every node killed on drop.
pub struct Nats {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Nats {
    /// One JetStream server.
    pub async fn single() -> Nats {
        Self::start(1).await
    }

    /// A JetStream cluster of three, all routes known to all: R3 streams need every node up
    /// when they are created.
    pub async fn cluster() -> Nats {
        Self::start(3).await
    }

    async fn start(size: usize) -> Nats {
        assert!(
            Path::new(NATS_SERVER_BIN).exists(),
            "{NATS_SERVER_BIN} is missing: apt-get install nats-server (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (port, monitor_port) = (free_port(), free_port());
            let store = dir.path().join(&name);
            let mut config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 max_payload: 8MB\n\
                 jetstream {{ store_dir: \"{}\", max_file_store: 1G, max_memory_store: 64M }}\n",
                store.display()
            );
            if size > 1 {
                let routes: Vec<String> = route_ports
                    .iter()
                    .filter(|p| *p != route_port)
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                config.push_str(&format!(
                    "cluster {{ name: tocsin-test, listen: 127.0.0.1:{route_port}, routes: [{}] }}\n",
                    routes.join(", ")
                ));
            }
            let config_path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config_path, config).unwrap();
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                port,
                monitor_port,
                config: config_path,
                child: None,
            });
        }
        let mut nats = Nats { nodes, dir };
        for i in 0..size {
            nats.start_node(i);
        }
        for i in 0..size {
            nats.wait_ready(i).await;
        }
        nats
    }

    /// Starts node `i` (again, after [`Nats::kill`]: on the same ports and store).
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        node.child = Some(
            Command::new(NATS_SERVER_BIN)
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server starts"),
        );
    }

    /// Waits until node `i` says it is healthy and, in a cluster, knows the JetStream meta
    /// leader (streams cannot be created before).
    pub async fn wait_ready(&self, i: usize) {
        let node = &self.nodes[i];
        let health = format!("http://127.0.0.1:{}/healthz", node.monitor_port);
        let jsz = format!("http://127.0.0.1:{}/jsz", node.monitor_port);
        let clustered = self.nodes.len() > 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success());
            let led = !clustered || {
                let info: Option<serde_json::Value> = match reqwest::get(&jsz).await {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
                info.is_some_and(|i| {
                    i["meta_cluster"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty())
                })
            };
            if healthy && led {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not become healthy; its log:\n{}",
                node.name,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every node's client URL, comma-separated (what `--queue` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// The directory of the configurations, logs and stores.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
