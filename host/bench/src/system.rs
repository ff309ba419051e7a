//! Figures of the real `tocsin` binary over HTTP, and of Alertmanager beside it: durable ingest,
//! ingest → delivered latency, start-up, memory, restart with a million queued messages, and
//! how costs grow with message size and pipeline count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::load::{closed_loop, open_loop, BodyFn, Outcome, Target};
use crate::micro::human_size;
use crate::procs::{
    alertmanager, alertmanager_config, free_port, rss_mib, wait_ready, Process, Tocsin,
};
use crate::receiver::Receiver;
use crate::report::{quantile, stats, Report};
use crate::Args;

/// What every system section shares.
pub struct Bench<'a> {
    /// The command line.
    pub args: &'a Args,
    /// The clock `sent_us` counts from.
    pub clock: Instant,
    /// The webhook receiver both systems deliver to.
    pub receiver: Receiver,
    /// Scratch space.
    pub work: tempfile::TempDir,
}

/// A tocsin message in its JSON schema, `pad` bytes of body, carrying its send time.
fn message_json(n: u64, sent_us: u64, pad: usize) -> String {
    let body = if pad > 0 {
        "x".repeat(pad)
    } else {
        "disk /srv is 93 % full".into()
    };
    format!(
        r#"{{"id":"m-{n}","severity":"warning","summary":"Disk on web-{host}","body":"{body}","labels":{{"host":"web-{host}","sent_us":"{sent_us}"}},"metrics":{{"disk-used-percent":93.0}}}}"#,
        host = n % 50
    )
}

pub(crate) fn single(pad: usize) -> BodyFn {
    Arc::new(move |n, sent_us| Bytes::from(message_json(n, sent_us, pad)))
}

fn batch(size: u64) -> BodyFn {
    Arc::new(move |n, sent_us| {
        let items: Vec<String> = (0..size)
            .map(|i| message_json(n * size + i, sent_us, 0))
            .collect();
        Bytes::from(format!("[{}]", items.join(",")))
    })
}

/// One alert for Alertmanager's `POST /api/v2/alerts`, unique, carrying its send time.
pub(crate) fn alert(n: u64, sent_us: u64) -> Bytes {
    Bytes::from(format!(
        r#"[{{"labels":{{"alertname":"DiskFull","instance":"web-{host}","id":"m-{n}","sent_us":"{sent_us}"}},"annotations":{{"summary":"disk /srv is 93 % full"}}}}]"#,
        host = n % 50
    ))
}

/// The two systems compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    /// tocsin, the webhook sink with its defaults (`concurrency = 8`, order per alert).
    Tocsin,
    /// tocsin, the webhook sink with `concurrency = N` (`--sink-concurrency`; 1 by default:
    /// strict order for the whole sink).
    TocsinSet(u32),
    Alertmanager,
}

impl System {
    fn name(self) -> String {
        match self {
            System::Tocsin => "tocsin".into(),
            System::TocsinSet(n) => format!("tocsin, concurrency = {n}"),
            System::Alertmanager => "Alertmanager".into(),
        }
    }

    /// One message (alert) per request.
    fn single(self) -> BodyFn {
        match self {
            System::Tocsin | System::TocsinSet(_) => single(0),
            System::Alertmanager => Arc::new(alert),
        }
    }

    /// `size` messages (alerts) per request.
    fn batch(self, size: u64) -> BodyFn {
        match self {
            System::Tocsin | System::TocsinSet(_) => batch(size),
            System::Alertmanager => Arc::new(move |n, sent_us| alerts(n, sent_us, size)),
        }
    }
}

/// `count` alerts in one request.
fn alerts(n: u64, sent_us: u64, count: u64) -> Bytes {
    let items: Vec<String> = (0..count)
        .map(|i| {
            let m = n * count + i;
            format!(
                r#"{{"labels":{{"alertname":"DiskFull","instance":"web-{host}","id":"m-{m}","sent_us":"{sent_us}"}},"annotations":{{"summary":"disk /srv is 93 % full"}}}}"#,
                host = m % 50
            )
        })
        .collect();
    Bytes::from(format!("[{}]", items.join(",")))
}

/// An ingest pipeline whose sink takes nothing (`match` on a label no message has): ingest,
/// the durable append and the hand-over run, deliveries do not.
fn ingest_only_pipeline() -> String {
    "[source]\nplugin = \"json\"\nauth = { none = true }\nbody_limit = \"2MiB\"\n\n\
     [[sink]]\nname = \"nowhere\"\nplugin = \"webhook\"\n\
     config = { url = \"http://127.0.0.1:9/none\" }\ngrants = { hosts = [\"127.0.0.1:9\"] }\n\
     match = { labels = { never = \"true\" } }\n"
        .to_string()
}

/// An ingest pipeline delivering every message to `url` through the webhook sink.
pub(crate) fn delivering_pipeline(url: &str, port: u16) -> String {
    format!(
        "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n\
         [[sink]]\nname = \"hook\"\nplugin = \"webhook\"\n\
         config = {{ url = \"{url}\" }}\ngrants = {{ hosts = [\"127.0.0.1:{port}\"] }}\n"
    )
}

pub(crate) fn ingest_target(port: u16, pipeline: &str) -> Target {
    Target {
        addr: ([127, 0, 0, 1], port).into(),
        path: format!("/ingest/{pipeline}"),
        headers: Vec::new(),
    }
}

/// How long a system under test gets to stop on SIGTERM between runs.
pub(crate) const STOP_BOUND: Duration = Duration::from_secs(15);

impl Bench<'_> {
    pub(crate) fn seconds(&self) -> Duration {
        Duration::from_secs_f64(self.args.seconds)
    }

    pub(crate) fn tocsin(&self, name: &str) -> anyhow::Result<Tocsin> {
        let dir = self.work.path().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        Tocsin::new(&self.args.tocsin_bin, &self.args.plugin_dir, &dir)
    }

    pub(crate) async fn start(&self, tocsin: &Tocsin) -> anyhow::Result<Process> {
        let port = free_port()?;
        let process = tocsin.spawn(port)?;
        wait_ready(port, "/healthz", Instant::now(), Duration::from_secs(120)).await?;
        let files = std::fs::read_dir(tocsin.dir.join("pipelines"))?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .count();
        let up = pipelines_up(port).await?;
        anyhow::ensure!(
            up == files,
            "{up} of {files} pipelines run; see {}/tocsin.log",
            tocsin.dir.display()
        );
        Ok(process)
    }

    /// Waits until the receiver holds `expected` messages (or `bound` passes); returns when the
    /// last one arrived, measured from `since`.
    pub(crate) async fn drained(
        &self,
        expected: usize,
        since: Instant,
        bound: Duration,
    ) -> Duration {
        let mut last = (self.receiver.count(), since.elapsed());
        while self.receiver.count() < expected && since.elapsed() < bound {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let count = self.receiver.count();
            if count != last.0 {
                last = (count, since.elapsed());
            }
        }
        if self.receiver.count() != last.0 {
            last = (self.receiver.count(), since.elapsed());
        }
        last.1
    }

    /// Durable ingest over HTTP: single-message requests and batches.
    pub async fn ingest(&self, report: &mut Report) -> anyhow::Result<()> {
        report.section("Durable ingest over HTTP (the tocsin binary)");
        let tocsin = self.tocsin("ingest")?;
        tocsin.pipeline("bench", &ingest_only_pipeline())?;
        let process = self.start(&tocsin).await?;
        let target = ingest_target(process.port, "bench");
        for (connections, per_request, target_text) in
            [(64u64, 1u64, "≥ 20 k/s"), (16, 100, "≥ 100 k/s")]
        {
            let body = if per_request == 1 {
                single(0)
            } else {
                batch(per_request)
            };
            let mut xs = Vec::new();
            let mut failed = 0;
            for _ in 0..self.args.runs {
                let outcome = closed_loop(
                    &target,
                    connections as usize,
                    self.seconds(),
                    self.clock,
                    body.clone(),
                )
                .await;
                failed += outcome.failed;
                xs.push(outcome.rate() * per_request as f64);
            }
            let what = if per_request == 1 {
                format!("{connections} clients, 1 message per request, 202 after fsync: requests/s")
            } else {
                format!("{connections} clients, {per_request} messages per request, 202 after fsync: messages/s")
            };
            report.row(what, xs, 0, target_text);
            if failed > 0 {
                report.note(format!("{failed} requests failed in the runs above"));
            }
        }
        report.note(
            "Each 202 comes after the messages are in sled and fsynced (group commit). The \
             pipeline's sink takes nothing (`match` on an absent label), so the figure is ingest, \
             decode, durable append and the filter worker's hand-over, without deliveries. The \
             load generator runs on the same 2 cores.",
        );
        Ok(())
    }

    /// The message trace's cost: the same delivering pipeline with tracing on (the default)
    /// and off (`--trace-retention 0`), alternating run by run: accepted/s and delivered/s of
    /// 16 clients, one message per request.
    pub async fn trace_cost(&self, report: &mut Report) -> anyhow::Result<()> {
        report.section("Message trace: its cost on the hot path");
        let pipeline = delivering_pipeline(&self.receiver.url(), self.receiver.port);
        let on = self.tocsin("trace-on")?;
        on.pipeline("bench", &pipeline)?;
        let mut off = self.tocsin("trace-off")?;
        off.pipeline("bench", &pipeline)?;
        off.env = vec![("TOCSIN_TRACE_RETENTION".into(), "0".into())];
        let mut figures = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
        for _ in 0..self.args.runs {
            for (i, tocsin) in [&on, &off].into_iter().enumerate() {
                let _ = std::fs::remove_dir_all(tocsin.dir.join("data/queue"));
                let mut process = self.start(tocsin).await?;
                let target = ingest_target(process.port, "bench");
                self.receiver.take();
                let start = Instant::now();
                let outcome = closed_loop(&target, 16, self.seconds(), self.clock, single(0)).await;
                let took = self
                    .drained(outcome.ok as usize, start, Duration::from_secs(60))
                    .await;
                let got = self.receiver.take().len() as f64;
                figures[i].0.push(outcome.rate());
                figures[i].1.push(got / took.as_secs_f64());
                process.stop(STOP_BOUND);
            }
        }
        for (i, name) in ["trace on (default)", "trace off (--trace-retention 0)"]
            .into_iter()
            .enumerate()
        {
            let (accepted, delivered) = figures[i].clone();
            report.row(format!("{name}: accepted/s, 16 clients"), accepted, 0, "—");
            report.row(format!("{name}: delivered/s"), delivered, 0, "—");
        }
        report.note(
            "Each message records three steps here (accepted, routed, delivered): an \
             in-memory push each, written to the store as one record per \
             pipeline every 250 ms. The two configurations alternate run by run on the same \
             machine, so drift hits both.",
        );
        Ok(())
    }

    /// A fresh instance of `system` ready to take load: tocsin restarted on its installation
    /// (empty queues after the previous phase drained), Alertmanager started from an empty
    /// directory — its alert groups live on after a phase (until resolved), and thousands of
    /// them would slow the next phase down.
    async fn fresh(
        &self,
        system: System,
        tocsins: &[Tocsin; 2],
    ) -> anyhow::Result<(Process, Target)> {
        match system {
            System::Tocsin | System::TocsinSet(_) => {
                let tocsin = &tocsins[usize::from(system != System::Tocsin)];
                // Every run starts from empty queues: what a saturated run left queued must
                // not be delivered (and timed) in the next one.
                let _ = std::fs::remove_dir_all(tocsin.dir.join("data/queue"));
                let process = self.start(tocsin).await?;
                let target = ingest_target(process.port, "bench");
                Ok((process, target))
            }
            System::Alertmanager => {
                let dir = self.work.path().join("alertmanager");
                let _ = std::fs::remove_dir_all(&dir);
                let process = alertmanager(&dir, &self.receiver.url()).await?;
                let target = Target {
                    addr: ([127, 0, 0, 1], process.port).into(),
                    path: "/api/v2/alerts".into(),
                    headers: Vec::new(),
                };
                Ok((process, target))
            }
        }
    }

    /// Ingest → delivered latency at offered loads, and the delivered throughput, for tocsin
    /// and for Alertmanager, through the same receiver. Each run gets a fresh process and has
    /// the machine to itself (the other system is not running).
    pub async fn side_by_side(&self, report: &mut Report) -> anyhow::Result<()> {
        report.section("Ingest → delivered, tocsin and Alertmanager side by side");
        if !std::path::Path::new(crate::procs::ALERTMANAGER_BIN).exists() {
            report.note(format!(
                "SKIPPED: {} is missing (apt-get install prometheus-alertmanager; `.ci/run` does)",
                crate::procs::ALERTMANAGER_BIN
            ));
            return Ok(());
        }
        let tocsin = [self.tocsin("deliver")?, self.tocsin("deliver-concurrent")?];
        let pipeline = delivering_pipeline(&self.receiver.url(), self.receiver.port);
        tocsin[0].pipeline("bench", &pipeline)?;
        let concurrency = self.args.sink_concurrency;
        tocsin[1].pipeline("bench", &format!("{pipeline}concurrency = {concurrency}\n"))?;
        let all = [
            System::Tocsin,
            System::TocsinSet(concurrency),
            System::Alertmanager,
        ];
        let systems: Vec<System> = all
            .into_iter()
            .filter(|s| *s != System::TocsinSet(0))
            .collect();
        // Medians are kept per system in `all`'s order; a left-out system reads as NaN.
        let slot = |s: System| all.iter().position(|a| *a == s).unwrap_or(0);
        report.note(format!(
            "\"tocsin\" runs the sink with its defaults (`concurrency = 8`, order per alert); \
             \"tocsin, concurrency = {concurrency}\" is the same pipeline with that set on its sink \
             (1: strict order for the whole sink)."
        ));

        // Throughput: 16 clients post for the run's length; delivered/s counts until the last
        // of them reaches the receiver.
        let mut medians = [f64::NAN; 3];
        for system in systems.iter().copied() {
            let (mut accepted, mut delivered, mut lost) = (Vec::new(), Vec::new(), 0u64);
            for _ in 0..self.args.runs {
                let (mut process, target) = self.fresh(system, &tocsin).await?;
                self.receiver.take();
                let start = Instant::now();
                let outcome =
                    closed_loop(&target, 16, self.seconds(), self.clock, system.single()).await;
                let took = self
                    .drained(outcome.ok as usize, start, Duration::from_secs(60))
                    .await;
                let got = self.receiver.take().len() as u64;
                lost += outcome.ok.saturating_sub(got);
                accepted.push(outcome.rate());
                delivered.push(got as f64 / took.as_secs_f64());
                process.stop(STOP_BOUND);
            }
            medians[slot(system)] = stats(&delivered).1;
            let name = system.name();
            report.row(
                format!("{name}: accepted/s, 16 clients, 1 message (alert) per request"),
                accepted,
                0,
                "—",
            );
            report.row(
                format!("{name}: delivered/s to the webhook receiver"),
                delivered,
                0,
                "—",
            );
            if lost > 0 {
                report.note(format!(
                    "{name}: {lost} accepted messages had not arrived 60 s after the runs"
                ));
            }
        }
        report.note(format!(
            "Delivered throughput ÷ Alertmanager's (medians): tocsin × {:.2}, with concurrency = {concurrency} \
             × {:.2}.",
            medians[0] / medians[2],
            medians[1] / medians[2]
        ));

        // Drain: a backlog posted in batches as fast as each accepts it, then how fast it
        // reaches the receiver — the delivery path alone.
        let backlog = self.args.backlog;
        let mut drains = [f64::NAN; 3];
        for system in systems.iter().copied() {
            let mut xs = Vec::new();
            for _ in 0..self.args.runs {
                let (mut process, target) = self.fresh(system, &tocsin).await?;
                self.receiver.take();
                let start = Instant::now();
                let mut posted = 0u64;
                while posted < backlog {
                    let outcome = closed_loop(
                        &target,
                        4,
                        Duration::from_millis(50),
                        self.clock,
                        system.batch(100),
                    )
                    .await;
                    posted += outcome.ok * 100;
                }
                let took = self
                    .drained(posted as usize, start, Duration::from_secs(120))
                    .await;
                let got = self.receiver.take().len();
                xs.push(got as f64 / took.as_secs_f64());
                process.stop(STOP_BOUND);
            }
            drains[slot(system)] = stats(&xs).1;
            report.row(
                format!(
                    "{}: a backlog of {backlog} posted in batches of 100, delivered/s until the last arrives",
                    system.name()
                ),
                xs,
                0,
                "—",
            );
        }
        report.note(format!(
            "Backlog drain ÷ Alertmanager's (medians): tocsin × {:.2}, with concurrency = {concurrency} \
             × {:.2}.",
            drains[0] / drains[2],
            drains[1] / drains[2]
        ));

        // Latency at offered loads (open loop, due times in the bodies).
        for rate in self.args.loads.iter().copied() {
            let mut ratio = [f64::NAN; 3];
            for system in systems.iter().copied() {
                let (mut p50, mut p99, mut max) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..self.args.runs {
                    let (mut process, target) = self.fresh(system, &tocsin).await?;
                    self.receiver.take();
                    let start = Instant::now();
                    let outcome: Outcome = open_loop(
                        &target,
                        rate,
                        64,
                        self.seconds(),
                        self.clock,
                        system.single(),
                    )
                    .await;
                    self.drained(outcome.ok as usize, start, Duration::from_secs(60))
                        .await;
                    let lat = self.receiver.take();
                    p50.push(quantile(&lat, 0.50) as f64 / 1000.0);
                    p99.push(quantile(&lat, 0.99) as f64 / 1000.0);
                    max.push(lat.last().copied().unwrap_or(0) as f64 / 1000.0);
                    process.stop(STOP_BOUND);
                }
                let name = system.name();
                let target_text = if system != System::Alertmanager {
                    "p99 ≤ 5 ms"
                } else {
                    "—"
                };
                ratio[slot(system)] = stats(&p99).1;
                report.row(
                    format!("{name} at {rate:.0}/s offered: p50 ms"),
                    p50,
                    2,
                    "—",
                );
                report.row(
                    format!("{name} at {rate:.0}/s offered: p99 ms"),
                    p99,
                    2,
                    target_text,
                );
                report.row(
                    format!("{name} at {rate:.0}/s offered: max ms"),
                    max,
                    2,
                    "—",
                );
            }
            report.note(format!(
                "At {rate:.0}/s, p99 ÷ Alertmanager's (medians): tocsin × {:.2}, with \
                 concurrency = {concurrency} × {:.2}.",
                ratio[0] / ratio[2],
                ratio[1] / ratio[2]
            ));
        }
        report.note(format!(
            "Alertmanager {}: clustering off (`--cluster.listen-address=`), every alert its own \
             group (`group_by: ['...']`), `group_wait: 0s` (the smallest it accepts), \
             `group_interval: 1s`, one webhook receiver with `max_alerts: 0`; a fresh process \
             for every run. Alertmanager keeps alerts in memory only; tocsin acknowledges after \
             fsync. Its configuration: `{}`",
            alertmanager_version(),
            alertmanager_config("http://127.0.0.1:PORT/hook")
                .lines()
                .map(str::trim_end)
                .collect::<Vec<_>>()
                .join(" ⏎ ")
        ));
        report.note(
            "tocsin: `json` ingest → `webhook` sink, default retry; every run a fresh process on \
             empty queues, stopped with SIGTERM after it. \
             Latency is measured from each request's due time in an open-loop schedule (64 \
             connections) to its arrival at the receiver, so a stalled server is charged for the \
             requests it delayed.",
        );
        Ok(())
    }

    /// Start-up with 20 plugin stages, compile cache cold and warm; idle RSS.
    pub async fn startup(&self, report: &mut Report) -> anyhow::Result<()> {
        report.section("Start-up and memory");
        let tocsin = self.tocsin("startup")?;
        let stages = twenty_stage_pipelines(&tocsin, &self.receiver)?;
        let (mut cold, mut warm, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.args.runs {
            let _ = std::fs::remove_dir_all(tocsin.dir.join("data"));
            std::fs::create_dir_all(tocsin.dir.join("data"))?;
            for (times, measure_rss) in [(&mut cold, false), (&mut warm, true)] {
                let port = free_port()?;
                let since = Instant::now();
                let mut process = tocsin.spawn(port)?;
                let took = wait_ready(port, "/healthz", since, Duration::from_secs(300)).await?;
                let up = pipelines_up(port).await?;
                anyhow::ensure!(
                    up == 7,
                    "only {up} of 7 pipelines started; see {}/tocsin.log",
                    tocsin.dir.display()
                );
                times.push(took.as_secs_f64() * 1000.0);
                if measure_rss {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    rss.push(rss_mib(process.pid()).unwrap_or(0.0));
                }
                process.kill();
            }
        }
        report.row(format!("start-up, {stages} plugin stages in 7 pipelines, compile cache cold: ms until serving"), cold, 0, "—");
        report.row(
            format!("start-up, {stages} plugin stages, compile cache warm: ms until serving"),
            warm,
            0,
            "< 200 ms",
        );
        report.row(
            "idle RSS after start-up, 20 plugin stages: MiB",
            rss,
            1,
            "< 50 MB",
        );
        report.note(
            "Until serving = from spawning the process to the first 200 from /healthz, which the \
             server answers only once every pipeline is loaded and initialised.",
        );
        Ok(())
    }

    /// RSS with a million queued messages, and restart after SIGKILL until ingest answers 202.
    pub async fn queued(&self, report: &mut Report) -> anyhow::Result<()> {
        let n = self.args.queued;
        report.section(&format!("{} queued messages", count_words(n)));
        let tocsin = self.tocsin("queued")?;
        let down = free_port()?; // nothing listens: the sink's first try fails, then waits 1 h
        tocsin.pipeline(
            "bench",
            &format!(
                "[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n\
                 [[sink]]\nname = \"down\"\nplugin = \"webhook\"\n\
                 config = {{ url = \"http://127.0.0.1:{down}/hook\" }}\ngrants = {{ hosts = [\"127.0.0.1:{down}\"] }}\n\
                 retry = {{ initial = \"1h\", max = \"1h\" }}\n"
            ),
        )?;
        let mut process = self.start(&tocsin).await?;
        let target = ingest_target(process.port, "bench");
        let per_request = 500u64;
        let body = batch(per_request);
        let filling = Instant::now();
        let mut acked = 0u64;
        while acked < n {
            let outcome = closed_loop(
                &target,
                8,
                Duration::from_millis(500),
                self.clock,
                body.clone(),
            )
            .await;
            acked += outcome.ok * per_request;
        }
        let fill_rate = acked as f64 / filling.elapsed().as_secs_f64();
        // Let the filter worker hand everything over to the sink queue.
        let settle = Instant::now();
        while queue_depth(process.port, "down").await? < acked
            && settle.elapsed() < Duration::from_secs(300)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let depth = queue_depth(process.port, "down").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_mib(process.pid()).unwrap_or(0.0);
        report.row(
            format!("RSS with {acked} messages queued: MiB"),
            vec![rss],
            1,
            "—",
        );
        report.note(format!(
            "Filled with {per_request}-message requests at {fill_rate:.0} messages/s; {depth} in the sink's queue, on disk {}.",
            human_bytes(dir_size(&tocsin.dir.join("data/queue")))
        ));
        let mut restarts = Vec::new();
        for _ in 0..self.args.runs.min(3) {
            process.kill(); // SIGKILL
            let port = free_port()?;
            let since = Instant::now();
            process = tocsin.spawn(port)?;
            // Serving = an ingest request acknowledged (durably) again.
            let took = loop {
                let probe = closed_loop(
                    &ingest_target(port, "bench"),
                    1,
                    Duration::from_millis(1),
                    self.clock,
                    single(0),
                )
                .await;
                if probe.ok > 0 {
                    break since.elapsed();
                }
                anyhow::ensure!(
                    since.elapsed() < Duration::from_secs(600),
                    "tocsin did not serve again"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            };
            restarts.push(took.as_secs_f64() * 1000.0);
            let after = queue_depth(port, "down").await?;
            anyhow::ensure!(
                after >= depth,
                "after the restart {after} are queued, {depth} before: messages lost"
            );
        }
        report.row(
            format!(
                "restart after SIGKILL with {} queued: ms until ingest acknowledges again",
                count_words(n)
            ),
            restarts,
            0,
            "< 2 s",
        );
        report.note(
            "The restart includes the start-up check that reads every stored record once \
             (RELIABILITY.md, \"A damaged queue database\"); after each restart the sink queue \
             still holds every message (checked, or the benchmark fails).",
        );
        Ok(())
    }

    /// How ingest grows with message size and with the number of pipelines.
    pub async fn scaling(&self, report: &mut Report) -> anyhow::Result<()> {
        report.section("Scaling by message size and by pipeline count");
        let tocsin = self.tocsin("sizes")?;
        tocsin.pipeline("bench", &ingest_only_pipeline())?;
        let process = self.start(&tocsin).await?;
        let target = ingest_target(process.port, "bench");
        for pad in [1usize << 10, 16 << 10, 256 << 10, 1 << 20] {
            let mut xs = Vec::new();
            let mut mb = Vec::new();
            for _ in 0..self.args.runs {
                let outcome =
                    closed_loop(&target, 8, self.seconds(), self.clock, single(pad)).await;
                xs.push(outcome.rate());
                mb.push(outcome.rate() * pad as f64 / (1 << 20) as f64);
            }
            report.row(
                format!("ingest, {} body, 8 clients: requests/s", human_size(pad)),
                xs,
                0,
                "—",
            );
            report.row(
                format!("ingest, {} body, 8 clients: MiB/s", human_size(pad)),
                mb,
                1,
                "—",
            );
        }
        drop(process);
        for pipelines in [1usize, 10, 100] {
            let tocsin = self.tocsin(&format!("pipelines-{pipelines}"))?;
            for i in 0..pipelines {
                tocsin.pipeline(&format!("p{i}"), &ingest_only_pipeline())?;
            }
            // Compile once (the cache is per data directory), then measure warm start-ups.
            drop(self.start(&tocsin).await?);
            let (mut starts, mut rates) = (Vec::new(), Vec::new());
            let mut rss = 0.0;
            for _ in 0..self.args.runs {
                let port = free_port()?;
                let since = Instant::now();
                let process = tocsin.spawn(port)?;
                starts.push(
                    wait_ready(port, "/healthz", since, Duration::from_secs(300))
                        .await?
                        .as_secs_f64()
                        * 1000.0,
                );
                let mut spread = ingest_target(port, "p0");
                let paths: Vec<String> = (0..pipelines).map(|i| format!("/ingest/p{i}")).collect();
                spread.path = paths[0].clone();
                let outcome = spread_loop(&spread, &paths, self).await;
                rates.push(outcome.rate());
                rss = rss_mib(process.pid()).unwrap_or(0.0);
            }
            report.row(
                format!("{pipelines} pipeline(s): start-up, cache warm, ms until serving"),
                starts,
                0,
                "—",
            );
            report.row(
                format!("{pipelines} pipeline(s): ingest requests/s, 64 clients spread over them"),
                rates,
                0,
                "—",
            );
            report.row(
                format!("{pipelines} pipeline(s): RSS after the load, MiB"),
                vec![rss],
                1,
                "—",
            );
        }
        report.note(
            "Every pipeline has its own decoder instance, filter worker and sled tree; ingest \
             requests of all pipelines share one group commit.",
        );
        Ok(())
    }
}

/// 64 clients, each bound to one pipeline (round robin over `paths`).
async fn spread_loop(target: &Target, paths: &[String], bench: &Bench<'_>) -> Outcome {
    let per = (64 / paths.len()).max(1);
    let mut runs = Vec::new();
    for path in paths.iter().take(64) {
        let mut t = target.clone();
        t.path = path.clone();
        let seconds = bench.seconds();
        let clock = bench.clock;
        runs.push(tokio::spawn(async move {
            closed_loop(&t, per, seconds, clock, single(0)).await
        }));
    }
    let mut total = Outcome::default();
    for run in runs {
        if let Ok(o) = run.await {
            total.ok += o.ok;
            total.failed += o.failed;
            total.elapsed = total.elapsed.max(o.elapsed);
        }
    }
    total
}

/// Writes 7 pipelines using 20 plugin stages (16 distinct plugins); returns the stage count.
fn twenty_stage_pipelines(tocsin: &Tocsin, receiver: &Receiver) -> anyhow::Result<usize> {
    let d = &tocsin.dir;
    std::fs::create_dir_all(d.join("pipelines/backups"))?;
    std::fs::create_dir_all(d.join("pipelines/out"))?;
    std::fs::write(d.join("pipelines/token"), "bench-token")?;
    let hook = receiver.url();
    let port = receiver.port;
    let pipelines = [
        ("backup", "[source]\nplugin = \"backup-check\"\nschedule = \"0 0 3 * * *\"\nconfig = { dir = \"backups\", pattern = \"*.tar\", host = \"b\" }\ngrants = { read_dirs = [\"backups\"] }\n\n[[filter]]\nplugin = \"threshold\"\nconfig = { metric = \"backup-age-seconds\", above = { warn = 90000 } }\n\n[[sink]]\nname = \"file\"\nplugin = \"file\"\nconfig = { path = \"out/a.jsonl\" }\ngrants = { write_dirs = [\"out\"] }\n".to_string()),
        ("metrics", format!("[source]\nplugin = \"sysmetrics\"\nschedule = \"0 0 3 * * *\"\nconfig = {{ host = \"b\" }}\ngrants = {{ read_dirs = [\"/proc\"] }}\n\n[[filter]]\nplugin = \"threshold\"\nconfig = {{ metric = \"cpu-percent\", above = {{ warn = 90 }} }}\n\n[[sink]]\nname = \"hook\"\nplugin = \"webhook\"\nconfig = {{ url = \"{hook}\" }}\ngrants = {{ hosts = [\"127.0.0.1:{port}\"] }}\n")),
        ("chain", format!("[source]\nplugin = \"json\"\nauth = {{ none = true }}\n\n[[filter]]\nplugin = \"template\"\nconfig = {{ summary = \"{{{{ summary }}}}\" }}\n\n[[filter]]\nplugin = \"dedup\"\nconfig = {{ window = \"10m\" }}\n\n[[filter]]\nplugin = \"rate-limit\"\nconfig = {{ max = 100, per = \"1m\" }}\n\n[[sink]]\nname = \"hook\"\nplugin = \"webhook\"\nconfig = {{ url = \"{hook}\" }}\ngrants = {{ hosts = [\"127.0.0.1:{port}\"] }}\n")),
        ("github", "[source]\nplugin = \"github-webhook\"\nauth = { github_secret = \"file:token\" }\n\n[[sink]]\nname = \"room\"\nplugin = \"matrix\"\nconfig = { homeserver = \"https://matrix.example.org\", room = \"!r:example.org\" }\ngrants = { hosts = [\"matrix.example.org\"], secrets = { access_token = \"file:token\" } }\n".to_string()),
        ("am", "[source]\nplugin = \"alertmanager-webhook\"\nauth = { none = true }\n\n[[sink]]\nname = \"toot\"\nplugin = \"mastodon\"\nconfig = { instance = \"https://mastodon.example\" }\ngrants = { hosts = [\"mastodon.example\"], secrets = { access_token = \"file:token\" } }\n".to_string()),
        ("janitor", "[source]\nplugin = \"janitor\"\nauth = { none = true }\n\n[[sink]]\nname = \"central\"\nplugin = \"forward\"\nconfig = { central = \"https://alerts.example.org\", pipeline = \"fleet\", agent = \"b\" }\ngrants = { hosts = [\"alerts.example.org\"], secrets = { token = \"file:token\" } }\n".to_string()),
        ("console", "[source]\nplugin = \"json\"\nauth = { none = true }\n\n[[filter]]\nplugin = \"threshold\"\nconfig = { metric = \"x\", above = { warn = 1 } }\n\n[[sink]]\nname = \"out\"\nplugin = \"stdout\"\ngrants = { stdout = true }\n".to_string()),
    ];
    for (name, text) in &pipelines {
        tocsin.pipeline(name, text)?;
    }
    Ok(3 + 3 + 5 + 2 + 2 + 2 + 3)
}

async fn metrics(port: u16) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?)
}

async fn pipelines_up(port: u16) -> anyhow::Result<usize> {
    Ok(metrics(port)
        .await?
        .lines()
        .filter(|l| l.starts_with("tocsin_pipeline_up{") && l.ends_with(" 1"))
        .count())
}

/// The depth of sink `sink`'s queue, from /metrics.
async fn queue_depth(port: u16, sink: &str) -> anyhow::Result<u64> {
    let text = metrics(port).await?;
    let needle = format!("queue=\"{sink}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tocsin_queue_depth{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

pub(crate) fn alertmanager_version() -> String {
    std::process::Command::new(crate::procs::ALERTMANAGER_BIN)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "(version unknown)".into())
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn human_bytes(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

fn count_words(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{} M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{} k", n / 1000)
    } else {
        n.to_string()
    }
}
