//! The queues on NATS JetStream next to sled: the same delivering pipeline (json → webhook
//! to the bench receiver) on the release binary, its queues in sled, on one JetStream server,
//! and on a cluster of three with three replicas — accepted/s of 16 clients and delivered/s,
//! alternating run by run. Skipped, saying so, when `nats-server` is absent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::closed_loop;
use crate::procs::{free_port, Process};
use crate::report::Report;
use crate::system::{delivering_pipeline, ingest_target, single, Bench, STOP_BOUND};

/// Where Debian installs it.
const NATS_SERVER_BIN: &str = "/usr/sbin/nats-server";

/// Running `nats-server` processes (killed on drop) and their client URLs.
struct Servers {
    _processes: Vec<Process>,
    urls: String,
}

/// `size` JetStream servers (a cluster when more than one) with stores under `dir`.
async fn start_servers(dir: &Path, size: usize) -> anyhow::Result<Servers> {
    let routes: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
    let mut processes = Vec::new();
    let mut urls = Vec::new();
    let mut monitors = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let (port, monitor) = (free_port()?, free_port()?);
        let store = dir.join(format!("n{i}"));
        let mut config = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
             jetstream {{ store_dir: \"{}\" }}\n",
            store.display()
        );
        if size > 1 {
            let others: Vec<String> = routes
                .iter()
                .filter(|r| *r != route)
                .map(|r| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            config.push_str(&format!(
                "cluster {{ name: bench, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                others.join(", ")
            ));
        }
        let path = dir.join(format!("n{i}.conf"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join(format!("n{i}.log")))?;
        let child = Command::new(NATS_SERVER_BIN)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        processes.push(Process { child, port });
        urls.push(format!("nats://127.0.0.1:{port}"));
        monitors.push(monitor);
    }
    // Ready: healthy, and in a cluster with a JetStream meta leader elected.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for monitor in monitors {
        loop {
            let jsz: Option<serde_json::Value> = match client
                .get(format!("http://127.0.0.1:{monitor}/jsz"))
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let led = jsz.is_some_and(|j| {
                size == 1
                    || j["meta_cluster"]["leader"]
                        .as_str()
                        .is_some_and(|l| !l.is_empty())
            });
            if led {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "nats-server did not become ready; see {}",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Servers {
        _processes: processes,
        urls: urls.join(","),
    })
}

impl Bench<'_> {
    /// Accepted/s and delivered/s with the queues in sled, on one JetStream server, and on
    /// three with three replicas.
    pub async fn jetstream(&self, report: &mut Report) -> anyhow::Result<()> {
        report.section("Queues on JetStream next to sled (the tocsin binary)");
        if !Path::new(NATS_SERVER_BIN).exists() {
            report.note(format!(
                "SKIPPED: {NATS_SERVER_BIN} is missing (apt-get install nats-server; `.ci/run` does)"
            ));
            return Ok(());
        }
        let work = self.work.path().join("nats");
        let (one, three) = (work.join("one"), work.join("three"));
        std::fs::create_dir_all(&one)?;
        std::fs::create_dir_all(&three)?;
        let single_server = start_servers(&one, 1).await?;
        let cluster = start_servers(&three, 3).await?;
        let pipeline = delivering_pipeline(&self.receiver.url(), self.receiver.port);
        let setups: [(&str, Option<(&str, &str)>); 3] = [
            ("sled (default)", None),
            (
                "JetStream, 1 server",
                Some((single_server.urls.as_str(), "1")),
            ),
            (
                "JetStream, 3 servers, 3 replicas",
                Some((cluster.urls.as_str(), "3")),
            ),
        ];
        let mut figures = vec![(Vec::new(), Vec::new()); setups.len()];
        for run in 0..self.args.runs {
            for (i, (name, queue)) in setups.iter().enumerate() {
                let mut tocsin = self.tocsin(&format!("queue-{i}"))?;
                tocsin.pipeline("bench", &pipeline)?;
                if let Some((urls, replicas)) = queue {
                    tocsin.env = vec![
                        ("TOCSIN_QUEUE".into(), urls.to_string()),
                        ("TOCSIN_QUEUE_REPLICAS".into(), replicas.to_string()),
                        // Every run on empty streams of its own.
                        ("TOCSIN_QUEUE_NAMESPACE".into(), format!("bench{run}")),
                    ];
                }
                let mut process = self.start(&tocsin).await?;
                let target = ingest_target(process.port, "bench");
                self.receiver.take();
                let start = Instant::now();
                let outcome = closed_loop(&target, 16, self.seconds(), self.clock, single(0)).await;
                let took = self
                    .drained(outcome.ok as usize, start, Duration::from_secs(120))
                    .await;
                let got = self.receiver.take().len() as f64;
                anyhow::ensure!(
                    got as u64 >= outcome.ok,
                    "{name}: {got} of {} accepted messages delivered",
                    outcome.ok
                );
                figures[i].0.push(outcome.rate());
                figures[i].1.push(got / took.as_secs_f64());
                process.stop(STOP_BOUND);
            }
        }
        for (i, (name, _)) in setups.iter().enumerate() {
            let (accepted, delivered) = figures[i].clone();
            report.row(format!("{name}: accepted/s, 16 clients"), accepted, 0, "—");
            report.row(format!("{name}: delivered/s"), delivered, 0, "—");
        }
        report.note(
            "json → webhook to the bench's receiver, one message per request. A 202 on JetStream \
             comes after the servers acknowledged the publish (a quorum of replicas stored it); \
             on sled after fsync. The store's calls wait for their round trips on the caller's \
             thread. The servers, tocsin and the load generator share the same 2 cores; the \
             setups alternate run by run.",
        );
        Ok(())
    }
}
