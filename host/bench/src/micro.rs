//! In-process figures: the cost of a WASM filter stage (alone, in a chain, next to hostile
//! neighbours, by message size) and durable enqueue throughput on the sled store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tocsin_config::{Grants, Limits};
use tocsin_message::{Message, Severity};
use tocsin_queue::{QueueStore, SledStore};
use tocsin_runtime::{Runtime, Stage, StageContext, StateReader};

use crate::report::{stats, Report};
use crate::Args;

struct NoState;
impl StateReader for NoState {
    fn get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

/// A realistic message: 5 strings, 2 labels, 1 metric.
pub fn message(i: usize) -> Message {
    Message {
        id: format!("bench-{i}"),
        timestamp_ms: 1_700_000_000_000 + i as u64,
        severity: Severity::Warning,
        summary: Some("CPU high on web-1".into()),
        body: "cpu-percent is 93.5 and reached the warning level (above 90)".into(),
        labels: vec![
            ("host".into(), "web-1".into()),
            ("check".into(), "cpu".into()),
        ],
        metrics: vec![("cpu-percent".into(), 93.5)],
        payload: None,
        link: None,
        key: None,
    }
}

fn stage(runtime: &Runtime, plugin_dir: &Path, name: &str, config: &str) -> anyhow::Result<Stage> {
    stage_with(runtime, plugin_dir, name, config, Grants::default())
}

fn stage_with(
    runtime: &Runtime,
    plugin_dir: &Path,
    name: &str,
    config: &str,
    grants: Grants,
) -> anyhow::Result<Stage> {
    // Cargo writes a crate `rate-limit` as `rate_limit.wasm`.
    let file = plugin_dir.join(format!("{}.wasm", name.replace('-', "_")));
    let plugin = runtime.load(&file, None)?;
    Ok(Stage::new(
        runtime,
        plugin,
        StageContext {
            pipeline: "bench".into(),
            stage: "filter.0".into(),
            config_json: config.into(),
            grants,
            limits: Limits {
                memory: 64 << 20,
                fuel: 2_000_000_000,
                timeout: Duration::from_secs(1),
            },
            secrets: Arc::new(vec![]),
            state: Arc::new(NoState),
            dry_run: None,
            control: None,
        },
    ))
}

/// Nanoseconds per `process` call on one live instance.
async fn filter_cost(stage: &mut Stage, calls: usize) -> anyhow::Result<f64> {
    let msgs: Vec<Message> = (0..64).map(message).collect();
    // Each call gets its own copy, as a filter worker copies the queued message once for
    // its chain: the copy is part of the per-message cost.
    for m in msgs.iter().cycle().take(10_000) {
        stage.process(m.clone()).await?;
    }
    let start = Instant::now();
    for m in msgs.iter().cycle().take(calls) {
        std::hint::black_box(stage.process(m.clone()).await?);
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

/// Acknowledged (durable) messages per second with `producers` concurrent producers, each
/// appending `batch` messages per commit and waiting for it.
async fn enqueue_rate(producers: usize, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn QueueStore> = SledStore::open(dir.path())?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let msgs: Vec<Message> = (0..batch).map(|i| message(p * 1_000_000 + i)).collect();
            let mut acked = 0usize;
            while Instant::now() < deadline {
                store
                    .append_ingress(&format!("p{}", p % 4), &msgs, &[])
                    .await?;
                acked += batch;
            }
            anyhow::Ok(acked)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Runs the `hostile` filter in `mode` on a thread of its own, call after call (each call is
/// stopped by the sandbox and the next one gets a fresh instance), until `stop`; returns how
/// many calls were stopped.
fn hostile_neighbour(
    runtime: Runtime,
    plugin_dir: PathBuf,
    mode: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let config = format!(r#"{{"mode":"{mode}"}}"#);
            let mut hostile = stage(&runtime, &plugin_dir, "hostile", &config)?;
            let msg = message(0);
            let mut stopped = 0;
            while !stop.load(Ordering::Relaxed) {
                if hostile.process(msg.clone()).await.is_err() {
                    stopped += 1;
                }
            }
            Ok(stopped)
        })
    })
}

/// Microseconds per message through `stages` one after the other, `runs` times.
async fn chain_cost(
    stages: &mut [Stage],
    body_bytes: usize,
    calls: usize,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let msgs: Vec<Message> = (0..16)
        .map(|i| {
            let mut m = message(i);
            if body_bytes > 0 {
                m.body = "x".repeat(body_bytes);
            }
            m
        })
        .collect();
    for m in msgs.iter().cycle().take(calls.min(2_000)) {
        through(stages, m.clone()).await?;
    }
    let mut xs = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        for m in msgs.iter().cycle().take(calls) {
            std::hint::black_box(through(stages, m.clone()).await?);
        }
        xs.push(start.elapsed().as_nanos() as f64 / calls as f64 / 1000.0);
    }
    Ok(xs)
}

/// One message through `stages` as the filter worker takes it: one copy of the queued message,
/// then each stage's outputs go on to the next. Every stage must pass the message on (the
/// chains here do: no state persists between calls, so `dedup` sees each message as new), or
/// the stages after it would not be measured.
async fn through(stages: &mut [Stage], message: Message) -> anyhow::Result<Vec<Message>> {
    let mut current = vec![message];
    for stage in stages.iter_mut() {
        let mut next = Vec::with_capacity(current.len());
        for m in current {
            next.extend(stage.process(m).await?.0);
        }
        anyhow::ensure!(!next.is_empty(), "a stage of the chain dropped the message");
        current = next;
    }
    Ok(current)
}

/// The in-process sections of the report.
pub async fn run(report: &mut Report, args: &Args, runtime: &Runtime) -> anyhow::Result<()> {
    let dir = &args.plugin_dir;
    report.section("WASM filter stage (in process)");
    let pass = r#"{"mode":"pass"}"#;
    for (label, plugin, config) in [
        (
            "filter stage, message passes (`hostile` pass mode)",
            "hostile",
            pass,
        ),
        (
            "filter stage, `threshold`, no change of state (dropped)",
            "threshold",
            r#"{"metric":"cpu-percent","above":{"warn":99}}"#,
        ),
    ] {
        let mut stage = stage(runtime, dir, plugin, config)?;
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(filter_cost(&mut stage, args.calls).await? / 1000.0);
        }
        report.row(format!("{label}: µs per message"), xs, 2, "≤ 2 µs");
    }
    let mut chain = (0..5)
        .map(|_| stage(runtime, dir, "hostile", pass))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let xs = chain_cost(&mut chain, 0, args.calls / 5, args.runs).await?;
    report.row(
        "chain of 5 filters, each passes the message: µs per message",
        xs,
        2,
        "—",
    );
    let mut realistic = vec![
        stage(
            runtime,
            dir,
            "template",
            r#"{"summary":"{{ summary }} ({{ labels.host }})"}"#,
        )?,
        stage(runtime, dir, "dedup", r#"{"window":"10m"}"#)?,
        stage(runtime, dir, "rate-limit", r#"{"max":10000,"per":"10ms"}"#)?,
        stage(
            runtime,
            dir,
            "threshold",
            r#"{"metric":"cpu-percent","above":{"warn":90}}"#,
        )?,
        stage(runtime, dir, "hostile", pass)?,
    ];
    match chain_cost(&mut realistic, 0, args.calls / 5, args.runs).await {
        Ok(xs) => report.row(
            "chain of 5 shipped filters (template → dedup → rate-limit → threshold → pass): µs per message",
            xs,
            2,
            "—",
        ),
        Err(e) => report.note(format!("the shipped-filter chain did not run: {e:#}")),
    }
    for size in [1usize << 10, 16 << 10, 256 << 10, 1 << 20] {
        let mut one = vec![stage(runtime, dir, "hostile", pass)?];
        let calls = (args.calls / (size / 1024).max(1)).clamp(200, args.calls);
        let xs = chain_cost(&mut one, size, calls, args.runs).await?;
        report.row(
            format!(
                "filter stage, passes a {} body: µs per message",
                human_size(size)
            ),
            xs,
            1,
            "—",
        );
    }
    report.note(
        "A message crosses into the guest and back on every call (lowered into linear memory, \
         lifted out): the cost grows with the body from about 1 KiB on.",
    );

    // The same healthy filter while a hostile one misbehaves next to it, each on its own
    // thread: how far does a neighbour that the sandbox keeps stopping move its latency?
    report.section("Hostile neighbours (in process)");
    let quiet = {
        let mut pass_stage = stage(runtime, dir, "hostile", pass)?;
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(filter_cost(&mut pass_stage, args.calls).await? / 1000.0);
        }
        stats(&xs).1
    };
    for (mode, what) in [
        ("loop", "spins until its fuel runs out"),
        ("alloc", "allocates until its memory cap"),
        ("recurse", "recurses until its stack faults"),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let neighbour = hostile_neighbour(runtime.clone(), dir.clone(), mode, stop.clone());
        let mut pass_stage = stage(runtime, dir, "hostile", pass)?;
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(filter_cost(&mut pass_stage, args.calls).await? / 1000.0);
        }
        stop.store(true, Ordering::Relaxed);
        let stopped = neighbour
            .join()
            .map_err(|_| anyhow::anyhow!("the neighbour thread panicked"))??;
        let med = stats(&xs).1;
        report.row(
            format!(
                "filter stage, passes, while a hostile neighbour {what} ({stopped} calls stopped): µs per message (× {:.2} of quiet)",
                med / quiet
            ),
            xs,
            2,
            "—",
        );
    }

    sink(report, args, runtime).await?;

    report.section("Durable enqueue on the sled store (in process)");
    for (producers, batch, target) in [
        (1, 1, "—"),
        (16, 1, "—"),
        (64, 1, "≥ 20 k/s"),
        (16, 32, "≥ 100 k/s"),
    ] {
        let mut xs = Vec::new();
        for _ in 0..args.runs {
            xs.push(enqueue_rate(producers, batch, args.seconds).await?);
        }
        report.row(
            format!("durable enqueue (fsync, group commit), {producers} producer(s) × {batch} msg per commit: msgs/s"),
            xs,
            0,
            target,
        );
    }
    Ok(())
}

/// One `webhook` sink instance delivering to the local receiver, one call after another.
pub async fn sink(report: &mut Report, args: &Args, runtime: &Runtime) -> anyhow::Result<()> {
    let dir = &args.plugin_dir;
    report.section("A sink stage (in process)");
    let receiver = crate::receiver::Receiver::start(Instant::now()).await?;
    let mut sink = stage_with(
        runtime,
        dir,
        "webhook",
        &format!(r#"{{"url":"{}"}}"#, receiver.url()),
        Grants {
            hosts: vec![format!("127.0.0.1:{}", receiver.port)],
            ..Grants::default()
        },
    )?;
    let deliveries = (args.calls / 100).max(200);
    let runs = args.runs;
    // On a runtime worker, as the engine's sink tasks run (not on the thread of `block_on`).
    let xs = tokio::spawn(async move {
        let mut xs = Vec::new();
        for run in 0..=runs {
            let start = Instant::now();
            for i in 0..deliveries {
                let m = message(i);
                let (outcome, _) = sink.deliver(&m, &format!("bench/{run}/{i}")).await?;
                anyhow::ensure!(
                    outcome == tocsin_runtime::DeliveryOutcome::Delivered,
                    "the webhook sink answered {outcome:?}"
                );
            }
            if run > 0 {
                xs.push(start.elapsed().as_secs_f64() * 1e6 / deliveries as f64);
            }
        }
        Ok(xs)
    })
    .await??;
    report.row(
        "`webhook` sink, one delivery (HTTP POST over wasi:http to a local receiver, answered 200): µs",
        xs,
        0,
        "≤ 60",
    );
    report.row(
        "the same POST sent by the host itself (hyper, one kept-alive connection, no plugin): µs",
        http_floor(receiver.port, deliveries, args.runs).await?,
        0,
        "—",
    );
    report.note(
        "A sink's call includes its outbound request, sent by the host over the stage's kept-alive \
         connection (the first call opens it), and the guest's wait for the answer. One \
         instance runs one call at a time, so this bounds what one instance delivers; a sink \
         runs up to its `concurrency` (8 by default) side by side.",
    );

    Ok(())
}

/// The floor under a sink's delivery: the webhook's POST (the message as JSON) sent to the
/// same receiver by plain hyper over one kept-alive connection, one after another: what the
/// HTTP round trip alone costs here, without the sandbox.
async fn http_floor(port: u16, posts: usize, runs: usize) -> anyhow::Result<Vec<f64>> {
    let target = crate::load::Target {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        path: "/hook".into(),
        headers: Vec::new(),
    };
    // On a runtime worker, as the sink's loop above.
    tokio::spawn(async move {
        let mut connection = crate::load::Connection::open(target.addr).await?;
        let mut xs = Vec::new();
        for run in 0..=runs {
            let start = Instant::now();
            for i in 0..posts {
                let body = bytes::Bytes::from(serde_json::to_vec(&message(i))?);
                anyhow::ensure!(
                    connection.post(&target, body).await?,
                    "the receiver did not answer 2xx"
                );
            }
            if run > 0 {
                xs.push(start.elapsed().as_secs_f64() * 1e6 / posts as f64);
            }
        }
        Ok(xs)
    })
    .await?
}

/// `1 KiB`, `256 KiB`, `1 MiB`.
pub fn human_size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
